"""The HTTP client to the upstream model server (proxy mode).

One pooled ``httpx.AsyncClient`` per gateway. Only connection attempts are retried (the
transport's ``retries`` covers refused and timed-out connects, where no byte of the request
has left): a request that reached the upstream is never sent twice.

Failures become the OpenAI errors of ``service.upstream_errors``.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any

import httpx

from lethe.service import upstream_errors as errors
from lethe.service.settings import GatewaySettings
from lethe.service.upstream_errors import UpstreamError
from lethe.service.upstream_pool import UpstreamPool

# Headers that describe one hop, or that the proxy sets itself, never copied between client and upstream.
HOP_HEADERS = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "content-length",
        "host",
        "authorization",
        "accept-encoding",
        "content-encoding",
    }
)


def upstream_error(exc: BaseException) -> UpstreamError:
    """The client-facing error for an ``httpx`` failure talking to the upstream."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.timed_out()
    if isinstance(exc, httpx.ConnectError):
        return errors.unavailable()
    return errors.connection_failed()


def stream_error(exc: BaseException) -> UpstreamError:
    """The error for a failure after the upstream's answer began: a timeout (504) or a cut stream (502)."""
    if isinstance(exc, httpx.TimeoutException):
        return errors.timed_out()
    return errors.stream_cut()


class UpstreamClient:
    """A pooled HTTP client for one upstream base URL (``http://host:port``, with or without ``/v1``)."""

    def __init__(self, settings: GatewaySettings, transport: httpx.AsyncBaseTransport | None = None):
        if not settings.upstream:
            raise ValueError("proxy mode needs an upstream URL (--upstream or LETHE_UPSTREAM)")
        base = settings.upstream.rstrip("/")
        self.base_url = base[: -len("/v1")] if base.endswith("/v1") else base
        self.timeout_s = settings.upstream_timeout_s
        self.timeout = httpx.Timeout(
            connect=settings.upstream_connect_timeout_s,
            read=settings.upstream_timeout_s,
            write=settings.upstream_timeout_s,
            pool=settings.upstream_timeout_s,
        )
        limits = httpx.Limits(
            max_connections=settings.upstream_max_connections,
            max_keepalive_connections=settings.upstream_max_connections,
            # Below the 5 s keep-alive of uvicorn (vLLM's server), so an idle connection is dropped here first.
            keepalive_expiry=4.0,
        )
        self.headers = {"accept-encoding": "identity"}
        if settings.upstream_api_key:
            self.headers["authorization"] = f"Bearer {settings.upstream_api_key}"
        retries = settings.upstream_connect_retries
        self._transport = transport or httpx.AsyncHTTPTransport(retries=retries, limits=limits)
        self._client: httpx.AsyncClient | None = None
        self.pool: UpstreamPool = UpstreamPool(
            self.base_url,
            settings.upstream_connect_timeout_s,
            settings.upstream_timeout_s,
            settings.upstream_connect_retries,
            settings.upstream_max_connections,
            {k: v for k, v in self.headers.items() if k != "accept-encoding"},
        )

    @property
    def client(self) -> httpx.AsyncClient:
        """The pooled client (created on first use, inside the serving event loop)."""
        if self._client is None:
            self._client = httpx.AsyncClient(
                base_url=self.base_url, timeout=self.timeout, transport=self._transport, headers=self.headers
            )
        return self._client

    async def aclose(self) -> None:
        """Close pooled connections."""
        await self.pool.aclose()
        if self._client is not None:
            await self._client.aclose()
            self._client = None

    def build(self, path: str, content: bytes, headers: dict[str, str] | None = None) -> httpx.Request:
        """A POST of ``content`` to ``path``."""
        merged = {"content-type": "application/json", **(headers or {})}
        return self.client.build_request("POST", path, content=content, headers=merged)

    async def open(self, request: httpx.Request) -> httpx.Response:
        """Send and return once the status and headers are in (the body is read by the caller)."""
        try:
            return await self.client.send(request, stream=True)
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None

    async def post_json(self, path: str, payload: dict[str, Any] | bytes) -> tuple[int, Any]:
        """POST JSON (a payload, or its bytes) and read the whole answer: ``(status, parsed body or None)``."""
        content = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        response = await self.open(self.build(path, content))
        try:
            raw = await response.aread()
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
        finally:
            await response.aclose()
        try:
            return response.status_code, json.loads(raw)
        except ValueError:
            return response.status_code, None

    async def get_json(self, path: str) -> tuple[int, Any]:
        """GET and read the whole answer: ``(status, parsed body or None)``."""
        try:
            response = await self.client.get(path)
        except httpx.HTTPError as exc:
            raise upstream_error(exc) from None
        try:
            return response.status_code, response.json()
        except ValueError:
            return response.status_code, None


async def sse_events(response: httpx.Response) -> AsyncIterator[dict[str, Any] | None]:
    """The JSON events of an SSE body (``None`` for ``[DONE]``); a cut or malformed stream raises ``UpstreamError``."""
    try:
        async for line in response.aiter_lines():
            if not line.startswith("data:"):
                continue
            data = line[len("data:") :].strip()
            if data == "[DONE]":
                yield None
                return
            try:
                event = json.loads(data)
            except ValueError:
                raise errors.malformed("stream") from None
            yield event
    except httpx.HTTPError as exc:
        raise stream_error(exc) from None
    raise errors.stream_cut()
