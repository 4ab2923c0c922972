"""Proxy mode's fast path: an ASGI layer that screens each inference request once and forwards the unflagged ones.

``ProxyFastPath`` sits inside the body limit and the metrics, ahead of FastAPI's routing. For
``POST /v1/chat/completions`` and ``/v1/completions`` it runs the screening step
(``service.screening_step``: key, the request rules, model, classification) and then:

- unflagged (and no uploaded ``prompt_embeds``): the client's body goes upstream unchanged
  (``service.passthrough``), without FastAPI's request handling, which alone costs more than
  the fraction of a millisecond the proxy may add;
- flagged, or carrying ``prompt_embeds`` (decoded, checked and re-encoded here, never forwarded
  as sent): the ``ScreenedRequest``, with its rendered prompt and plan, goes down to the routes
  in the ASGI scope's state, where the serving classes serve it through the ``ProxyBackend``
  without screening it again.

Every request passes the same rules before it is screened, so whether a forget set flags a prompt
never changes which parameters are accepted. With no forget set enabled nothing is classified.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lethe.service.errors import APIError
from lethe.service.gateway import Gateway
from lethe.service.middleware import replaying
from lethe.service.passthrough import forward
from lethe.service.request_rules import Endpoint
from lethe.service.screening_step import ScreenedRequest
from lethe.service.serving_base import SCREENED

PATHS: dict[str, Endpoint] = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}


def serves(gateway: Gateway) -> bool:
    """Whether ``gateway`` runs in proxy mode (its backend forwards unflagged requests)."""
    return gateway.backend.passthrough


@dataclass(frozen=True)
class _Route:
    """What ``MetricsMiddleware`` labels a request by (FastAPI's matched route has the same ``path``)."""

    path: str


class ProxyFastPath:
    """ASGI layer of proxy mode: screens inference requests, forwards the unflagged ones, hands on the rest."""

    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
        endpoint = PATHS.get(path)
        if endpoint is None:
            await self.app(scope, receive, send)
            return
        raw, replay = await _buffered(receive)
        scope["route"] = _Route(path)
        request = Request(scope, replay)
        try:
            screened = await self.gateway.screening.screen_request(request, raw, endpoint)
        except APIError as exc:
            await exc.response()(scope, replay, send)
            return
        if not screened.forwardable:
            scope.setdefault("state", {})[SCREENED] = screened
            await self.app(scope, replay, send)  # the routes serve it with the ProxyBackend
            return
        try:
            response = await self._forward(screened, raw, request, path)
        except APIError as exc:
            response = exc.response()
        await response(scope, replay, send)

    async def _forward(self, screened: ScreenedRequest, raw: bytes, request: Request, path: str) -> Response:
        """The upstream's answer to the body as sent, audited."""
        gateway = self.gateway
        status: int | str = 500
        try:
            response = await forward(gateway.backend.upstream, path, raw, request.headers)  # type: ignore[attr-defined]
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        finally:
            gateway.inference_audit.forwarded(screened, raw, status)


async def _buffered(receive: Receive) -> tuple[bytes, Receive]:
    """The whole request body, and a ``receive`` that hands it on once more before the real one."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    raw = b"".join(chunks)
    return raw, replaying(raw, receive)
