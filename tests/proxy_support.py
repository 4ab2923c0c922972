"""Helpers for the proxy tests (no tests here): a fault-injecting TCP relay and in-thread servers.

``FaultRelay`` sits between the proxy and its real upstream and, on command, stops listening
(connection refused), swallows requests (a hung upstream), cuts responses after a number of
body bytes, or answers 500. It relays bytes; it knows nothing of Lethe.

``ThreadServer`` runs a real uvicorn server for an app on a loopback port in a thread of the
test process (for proxies and upstreams that share the test's already-loaded model).
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from typing import Any

import uvicorn

from lethe.benchmarks.server_harness import free_port

MODES = ("pass", "down", "hang", "cut", "error500")


class FaultRelay:
    """A loopback TCP relay to ``target_port`` with switchable faults."""

    def __init__(self, cut_body_bytes: int = 400):
        self.port = free_port()
        self.target_port: int | None = None
        self.mode = "pass"
        self.cut_body_bytes = cut_body_bytes
        self.connections = 0
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-relay")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FaultRelay:
        """Start listening."""
        self._thread.start()
        self._call(self._listen())
        return self

    def stop(self) -> None:
        """Close everything and stop the thread."""
        self._call(self._close_all(listener=True))
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)

    def set_mode(self, mode: str) -> None:
        """Switch fault mode; open connections are closed so the next request sees the new mode."""
        assert mode in MODES, mode
        self._call(self._switch(mode))
        time.sleep(0.1)

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port, reuse_address=True)

    async def _close_all(self, listener: bool) -> None:
        for writer in list(self._writers):
            writer.close()
        self._writers.clear()
        if listener and self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def _switch(self, mode: str) -> None:
        self.mode = mode
        await self._close_all(listener=mode == "down")
        if mode != "down" and self._server is None:
            await self._listen()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self._writers.add(writer)
        mode = self.mode
        try:
            if mode == "hang":
                while await reader.read(65536):
                    pass
                return
            if mode == "error500":
                await _read_request(reader)
                body = b'{"detail": "upstream exploded"}'
                writer.write(
                    b"HTTP/1.1 500 Internal Server Error\r\ncontent-type: application/json\r\n"
                    + f"content-length: {len(body)}\r\nconnection: close\r\n\r\n".encode()
                    + body
                )
                await writer.drain()
                return
            if self.target_port is None:
                return
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
            self._writers.add(up_writer)
            upward = asyncio.ensure_future(_pump(reader, up_writer))
            try:
                await self._downward(up_reader, writer, mode)
            finally:
                upward.cancel()
                up_writer.close()
        except (ConnectionError, OSError):
            pass
        finally:
            writer.close()
            self._writers.discard(writer)

    async def _downward(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, mode: str) -> None:
        sent = 0
        seen = b""
        limit: int | None = None
        while data := await source.read(65536):
            if mode == "cut":
                if limit is None:
                    seen += data
                    end = seen.find(b"\r\n\r\n")
                    if end >= 0:
                        limit = end + 4 + self.cut_body_bytes
                if limit is not None and sent + len(data) >= limit:
                    sink.write(data[: limit - sent])
                    await sink.drain()
                    return
            sink.write(data)
            sent += len(data)
            await sink.drain()


async def _pump(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, OSError):
        while data := await source.read(65536):
            sink.write(data)
            await sink.drain()


async def _read_request(reader: asyncio.StreamReader) -> None:
    head = await reader.readuntil(b"\r\n\r\n")
    for line in head.split(b"\r\n"):
        if line.lower().startswith(b"content-length:"):
            await reader.readexactly(int(line.split(b":", 1)[1]))


class ThreadServer:
    """A uvicorn server for ``app`` on a free loopback port, in a thread of this process."""

    def __init__(self, app: Any):
        self.port = free_port()
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self._thread = threading.Thread(target=self.server.run, daemon=True, name=f"server-{self.port}")

    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 60.0) -> ThreadServer:
        """Start and wait until the server accepts requests."""
        self._thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if time.monotonic() > deadline or not self._thread.is_alive():
                raise RuntimeError("the in-thread server did not start")
            time.sleep(0.05)
        return self

    def stop(self) -> None:
        """Graceful shutdown."""
        self.server.should_exit = True
        self._thread.join(15)
