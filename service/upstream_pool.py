"""A lean HTTP/1.1 keep-alive pool for forwarding unflagged requests (the proxy's hot path).

``httpx`` (on ``httpcore``, ``anyio`` and ``h11``) costs several times the CPU of the request it
forwards, which alone would break the proxy's sub-millisecond budget; this pool speaks plain
HTTP/1.1 over asyncio streams for the one thing the hot path does: POST a body, relay the
answer. Everything else (probing, flagged requests on ``prompt_embeds``) uses ``httpx``.

Safety rules match ``service.upstream``: only connecting is retried (nothing of the request
has left then); idle connections are dropped before the upstream's keep-alive runs out and
checked before reuse; failures raise the same ``UpstreamError`` (502/504) as the httpx path.
"""

from __future__ import annotations

import asyncio
import contextlib
import ssl
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from urllib.parse import urlsplit

from lethe.service import upstream_errors as errors

KEEPALIVE_S = 4.0
MAX_HEADER_BYTES = 64 * 1024


@dataclass
class _Connection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = field(default_factory=time.monotonic)

    def usable(self) -> bool:
        """Not closed by the peer, not idle for too long, nothing unread."""
        fresh = time.monotonic() - self.idle_since < KEEPALIVE_S
        return fresh and not self.reader.at_eof() and not self.writer.is_closing()

    def close(self) -> None:
        self.writer.close()


class RawResponse:
    """Status and headers of an upstream answer; the body is read with ``read`` or ``chunks``, once."""

    def __init__(self, pool: UpstreamPool, connection: _Connection, status: int, headers: list[tuple[str, str]]):
        self._pool = pool
        self._connection: _Connection | None = connection
        self.status = status
        self.headers = headers
        lowered = {k.lower(): v for k, v in headers}
        self.content_type = lowered.get("content-type", "")
        self._chunked = "chunked" in lowered.get("transfer-encoding", "").lower()
        self._length = int(lowered["content-length"]) if "content-length" in lowered else None
        self._reusable = "close" not in lowered.get("connection", "").lower()

    async def chunks(self, stream_errors: bool = True) -> AsyncIterator[bytes]:
        """The body as it arrives (chunked, sized or until close); a cut raises ``UpstreamError``."""
        connection = self._connection
        assert connection is not None, "the body was already read"
        reader, timeout = connection.reader, self._pool.read_timeout
        cut = errors.stream_cut if stream_errors else errors.connection_failed
        complete = False
        try:
            if self._chunked:
                while True:
                    line = await asyncio.wait_for(reader.readline(), timeout)
                    if not line.endswith(b"\n"):
                        raise cut()
                    size = int(line.split(b";", 1)[0].strip() or b"x", 16)
                    if size == 0:
                        while (await asyncio.wait_for(reader.readline(), timeout)).strip():
                            pass  # trailers
                        break
                    yield await asyncio.wait_for(reader.readexactly(size), timeout)
                    await asyncio.wait_for(reader.readexactly(2), timeout)
            elif self._length is not None:
                left = self._length
                while left > 0:
                    data = await asyncio.wait_for(reader.read(min(left, 65536)), timeout)
                    if not data:
                        raise cut()
                    left -= len(data)
                    yield data
            else:
                self._reusable = False
                while data := await asyncio.wait_for(reader.read(65536), timeout):
                    yield data
            complete = True
        except TimeoutError:
            raise errors.timed_out() from None
        except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, OSError, ValueError):
            raise cut() from None
        finally:
            if self._connection is connection:  # not already given up by ``close``
                self._connection = None
                self._pool.release(connection, complete and self._reusable)

    async def read(self) -> bytes:
        """The whole body."""
        async with contextlib.aclosing(self.chunks(stream_errors=False)) as chunks:
            return b"".join([chunk async for chunk in chunks])

    def close(self) -> None:
        """Give up on the body (the connection is closed, not reused)."""
        if self._connection is not None:
            self._pool.release(self._connection, False)
            self._connection = None


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one upstream (``http`` or ``https``)."""

    def __init__(
        self,
        base_url: str,
        connect_timeout: float,
        read_timeout: float,
        connect_retries: int = 2,
        max_connections: int = 100,
        headers: dict[str, str] | None = None,
    ):
        parts = urlsplit(base_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"unsupported upstream URL {base_url!r}")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl = ssl.create_default_context() if parts.scheme == "https" else None
        self.prefix = parts.path.rstrip("/")
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.connect_retries = connect_retries
        host_header = self.host if parts.port is None else f"{self.host}:{self.port}"
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"host": host_header, **(headers or {})}.items())
        self._idle: list[_Connection] = []
        self._slots = asyncio.Semaphore(max_connections)

    async def _connect(self) -> _Connection:
        for attempt in range(self.connect_retries + 1):
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection(self.host, self.port, ssl=self.ssl, limit=MAX_HEADER_BYTES),
                    self.connect_timeout,
                )
                return _Connection(reader, writer)
            except TimeoutError:
                if attempt == self.connect_retries:
                    raise errors.timed_out() from None
            except OSError:
                if attempt == self.connect_retries:
                    raise errors.unavailable() from None
            await asyncio.sleep(0.25 * 2**attempt)
        raise errors.unavailable()

    def _take(self) -> _Connection | None:
        while self._idle:
            connection = self._idle.pop()
            if connection.usable():
                return connection
            connection.close()
        return None

    def release(self, connection: _Connection, reusable: bool) -> None:
        """Back to the pool, or closed."""
        self._slots.release()
        if reusable and not connection.writer.is_closing():
            connection.idle_since = time.monotonic()
            self._idle.append(connection)
        else:
            connection.close()

    async def post(self, path: str, body: bytes, headers: dict[str, str]) -> RawResponse:
        """POST ``body`` and return once the status line and headers are in."""
        await self._slots.acquire()
        connection: _Connection | None = None
        try:
            connection = self._take() or await self._connect()
            extra = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
            head = f"POST {self.prefix}{path} HTTP/1.1\r\n{self._fixed}{extra}content-length: {len(body)}\r\n\r\n"
            connection.writer.write(head.encode("latin-1") + body)
            status, response_headers = await asyncio.wait_for(self._head(connection), self.read_timeout)
            return RawResponse(self, connection, status, response_headers)
        except BaseException as exc:
            self._slots.release()
            if connection is not None:
                connection.close()
            if isinstance(exc, TimeoutError):
                raise errors.timed_out() from None
            if isinstance(exc, asyncio.IncompleteReadError | asyncio.LimitOverrunError | OSError | ValueError):
                raise errors.connection_failed() from None
            raise

    async def _head(self, connection: _Connection) -> tuple[int, list[tuple[str, str]]]:
        await connection.writer.drain()
        while True:
            raw = await connection.reader.readuntil(b"\r\n\r\n")
            lines = raw.decode("latin-1").split("\r\n")
            status = int(lines[0].split(" ", 2)[1])
            if status != 100:
                break
        headers = []
        for line in lines[1:]:
            if line:
                name, _, value = line.partition(":")
                headers.append((name.strip(), value.strip()))
        return status, headers

    async def aclose(self) -> None:
        """Close idle connections."""
        while self._idle:
            with contextlib.suppress(Exception):
                self._idle.pop().close()
