"""ASGI layers around the app: admission before any body is read, a guard for crashes, per-route metrics.

``AdmissionMiddleware`` decides on the headers alone, before a byte of the body is read: the key a
route needs (``service.auth.key_kind``), the size the body declares, the uploads a client already
has in flight. Then it reads the body within the size limit and a time limit, and hands the app
the buffered body. A refused request whose body was not read ends with ``Connection: close``.

``ErrorGuardMiddleware`` turns an exception no handler took into a 500 in OpenAI's format, logs its
type only (the traceback, without exception messages, at debug level) and does not re-raise, so
the server keeps the connection: Starlette's own last-resort handler re-raises, and uvicorn then
logs the whole traceback and closes the connection under the next keep-alive request.
"""

from __future__ import annotations

import asyncio
import logging
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field

from starlette.requests import HTTPConnection
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lethe.service.auth import KeyChecker, key_kind
from lethe.service.errors import INVALID_REQUEST, OVERLOADED, SERVER, APIError, error_body
from lethe.service.metrics import GatewayMetrics
from lethe.service.protocol import ErrorResponse

logger = logging.getLogger("lethe.service")


async def _send_json(
    send: Send, status: int, body: ErrorResponse, close: bool = False, extra: dict[str, str] | None = None
) -> None:
    payload = body.json_bytes()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in (extra or {}).items()]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})


def replaying(body: bytes, receive: Receive) -> Receive:
    """A ``receive`` that hands on an already read ``body`` once, then the real messages (disconnects)."""
    replayed = False

    async def replay() -> Message:
        nonlocal replayed
        if not replayed:
            replayed = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return replay


@dataclass(frozen=True)
class AdmissionLimits:
    """What a request must keep to: body sizes (per path), the time to send a body, uploads per client."""

    max_body_bytes: int
    path_limits: dict[str, int] = field(default_factory=dict)
    body_timeout_s: float = 60.0
    upload_paths: frozenset[str] = frozenset()
    uploads_per_client: int = 2


class AdmissionMiddleware:
    """Key, declared size and upload slots checked on the headers; then the body read within its limits."""

    def __init__(self, app: ASGIApp, keys: KeyChecker, limits: AdmissionLimits):
        self.app = app
        self.keys = keys
        self.limits = limits
        self._uploads: Counter[str] = Counter()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope.get("path", "")
        declared = _content_length(scope)
        pending_body = (declared is None and _chunked(scope)) or bool(declared)
        kind = key_kind(path)
        if kind is not None:
            try:
                self.keys.check(kind, HTTPConnection(scope))
            except APIError as exc:
                await _send_json(send, exc.status, exc.body(), close=pending_body, extra=exc.headers)
                return
        limit = self.limits.path_limits.get(path, self.limits.max_body_bytes)
        if declared is not None and declared > limit:
            await _too_large(send, limit)
            return
        if path not in self.limits.upload_paths:
            await self._admit(scope, receive, send, limit)
            return
        client = (scope.get("client") or ("unknown", 0))[0]
        if self._uploads[client] >= self.limits.uploads_per_client:
            message = f"At most {self.limits.uploads_per_client} uploads per client at a time; retry when one is done."
            body = error_body(message, OVERLOADED, None, "too_many_uploads")
            await _send_json(send, 429, body, close=pending_body, extra={"Retry-After": "1"})
            return
        self._uploads[client] += 1
        try:
            await self._admit(scope, receive, send, limit)
        finally:
            self._uploads[client] -= 1
            if self._uploads[client] <= 0:
                del self._uploads[client]

    async def _admit(self, scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        chunks: list[bytes] = []
        size = 0
        deadline = time.monotonic() + self.limits.body_timeout_s
        while True:
            try:
                async with asyncio.timeout(max(0.0, deadline - time.monotonic())):
                    message = await receive()
            except TimeoutError:
                seconds = self.limits.body_timeout_s
                message_text = f"The request body did not arrive within {seconds:g} seconds."
                await _send_json(send, 408, error_body(message_text, INVALID_REQUEST, None, "body_timeout"), True)
                return
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _too_large(send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        chunks.clear()
        await self.app(scope, replaying(body, receive), send)


async def _too_large(send: Send, limit: int) -> None:
    message = f"The request body is larger than the limit of {limit} bytes."
    await _send_json(send, 413, error_body(message, INVALID_REQUEST, None, "request_too_large"), close=True)


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return value
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    if value is None:
        return None
    try:
        return int(value)
    except ValueError:
        return None


def _chunked(scope: Scope) -> bool:
    return b"chunked" in (_header(scope, b"transfer-encoding") or b"").lower()


class ErrorGuardMiddleware:
    """The last resort: an unhandled exception is a 500 in OpenAI's format, logged by type, never re-raised."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracking(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, receive, tracking)
        except Exception as exc:
            route = getattr(scope.get("route"), "path", None) or "an unmatched path"
            # Type only: an exception's message could quote request content; the frames at debug level.
            logger.error("internal error on %s %s: %s", scope.get("method"), route, type(exc).__name__)
            if logger.isEnabledFor(logging.DEBUG):
                frames = "".join(traceback.format_tb(exc.__traceback__))
                logger.debug("internal error %s at:\n%s", type(exc).__name__, frames)
            if not started:
                body = error_body("The server had an internal error.", SERVER, None, "internal_error")
                await _send_json(send, 500, body)


class MetricsMiddleware:
    """Counts requests and observes latency per route template (unmatched paths share one label)."""

    def __init__(self, app: ASGIApp, metrics: GatewayMetrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500

        async def record_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, record_status)
        finally:
            route = scope.get("route")
            label = getattr(route, "path", None) or "unmatched"
            self.metrics.requests.labels(label, str(status)).inc()
            self.metrics.latency.labels(label).observe(time.perf_counter() - started)
