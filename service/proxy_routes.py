"""Proxy mode's hot path: screen each inference request, forward the unflagged ones, hand on the flagged ones.

``ProxyFastPath`` is an ASGI layer inside the body limit and the metrics, ahead of FastAPI's
routing: an unflagged ``POST /v1/chat/completions`` or ``/v1/completions`` is checked (key,
JSON, model), classified and forwarded to the upstream unchanged without going through
FastAPI's request handling, which alone costs more than the sub-millisecond the proxy may add.
A flagged request falls through to FastAPI, where the local routes (``service.openai_routes``)
serve it with the ``ProxyBackend``: strict validation, the chat template, embedding, the forget
sets' interventions, then the upstream on ``prompt_embeds``.

Screening reads only what the classifiers need (the messages' text, or the prompt; an uploaded
``prompt_embeds`` tensor is mapped back to its nearest tokens as in local mode). With no forget
set enabled nothing is classified at all. What cannot be read for screening is refused (fail
closed) rather than forwarded unread.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Receive, Scope, Send

from lethe.service.audit import sha256_text
from lethe.service.errors import APIError, bad_request
from lethe.service.gateway import Gateway
from lethe.service.middleware import replaying
from lethe.service.passthrough import forward
from lethe.service.prompt_embeds import decode_prompt_embeds, nearest_token_ids, prompt_from_ids
from lethe.service.schemas import MAX_PROMPTS_PER_REQUEST

ROUTES = {"/v1/chat/completions": "chat", "/v1/completions": "completions"}
# Bodies up to this size are classified on the event loop (a short prompt takes about 0.1 ms, less than
# handing it to a worker thread and back); larger ones go to the routing pool so the loop stays free.
INLINE_SCREEN_BYTES = 16 * 1024


def serves(gateway: Gateway) -> bool:
    """Whether ``gateway`` runs in proxy mode (its backend forwards unflagged requests)."""
    return bool(getattr(gateway.backend, "passthrough", False))


def _body(raw: bytes) -> dict[str, Any]:
    try:
        body = json.loads(raw)
    except ValueError:
        raise bad_request("The request body is not valid JSON.", None, "invalid_json") from None
    if not isinstance(body, dict):
        raise bad_request("The request body must be a JSON object.", None, "invalid_json")
    return body


def _check_model(gateway: Gateway, body: dict[str, Any]) -> None:
    model = body.get("model")
    if not isinstance(model, str):
        raise bad_request("Missing required parameter: 'model'.", "model", "missing_parameter")
    if model != gateway.backend.model_id:
        message = f"The requested model does not exist; this server serves {gateway.backend.model_id}."  # not echoed
        raise APIError(404, message, "invalid_request_error", "model", "model_not_found")


def _content_text(content: Any) -> str:
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict):
                raise bad_request("Invalid value for 'messages': unreadable content part.", "messages", "invalid_value")
            if isinstance(part.get("text"), str):
                parts.append(part["text"])
        return "\n".join(parts)
    raise bad_request("Invalid value for 'messages': unreadable content.", "messages", "invalid_value")


def chat_messages(body: dict[str, Any]) -> list[dict[str, str]]:
    """``{"role", "content"}`` per message, as the classifiers read them (``developer`` counts as ``system``)."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad_request("Missing required parameter: 'messages'.", "messages", "missing_parameter")
    out = []
    for message in messages:
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise bad_request("Invalid value for 'messages': each message needs a role.", "messages", "invalid_value")
        role = "system" if message["role"] == "developer" else message["role"]
        out.append({"role": role, "content": _content_text(message.get("content"))})
    return out


def completion_texts(gateway: Gateway, body: dict[str, Any]) -> list[str]:
    """The text of each prompt of a completions request, as local mode classifies it."""
    embedder = gateway.backend.embedder
    settings = gateway.settings
    if body.get("prompt_embeds") is not None:
        items = body["prompt_embeds"]
        items = [items] if isinstance(items, str) else items
        if not isinstance(items, list) or not all(isinstance(i, str) for i in items):
            raise bad_request("Invalid value for 'prompt_embeds'.", "prompt_embeds", "invalid_value")
        decoded = [
            decode_prompt_embeds(i, embedder.hidden_size, settings.max_prompt_tokens, embedder.dtype)
            for i in items[:MAX_PROMPTS_PER_REQUEST]
        ]
        return [prompt_from_ids(embedder, nearest_token_ids(embedder, e)).text for e in decoded]
    prompt = body.get("prompt")
    if isinstance(prompt, str):
        return [prompt]
    if isinstance(prompt, list) and prompt:
        if all(isinstance(p, int) and not isinstance(p, bool) for p in prompt):
            prompt = [prompt]
        texts = []
        for item in prompt:
            if isinstance(item, str):
                texts.append(item)
            elif isinstance(item, list) and all(isinstance(i, int) and 0 <= i < embedder.vocab_size for i in item):
                texts.append(prompt_from_ids(embedder, item).text)
            else:
                raise bad_request("Invalid value for 'prompt'.", "prompt", "invalid_value")
        return texts
    raise bad_request("Missing required parameter: 'prompt'.", "prompt", "missing_parameter")


def _flags(gateway: Gateway, route: str, body: dict[str, Any]) -> list[str]:
    """Ids of the forget sets that flag this request."""
    screen = gateway.screen
    if route == "chat":
        return [f.forget_set_id for f in screen.classify(chat_messages(body))]
    ids: list[str] = []
    for text in completion_texts(gateway, body):
        ids += [f.forget_set_id for f in screen.classify(None, text)]
    return list(dict.fromkeys(ids))


@dataclass(frozen=True)
class _Route:
    """What ``MetricsMiddleware`` labels a request by (FastAPI's matched route has the same ``path``)."""

    path: str


class ProxyFastPath:
    """ASGI layer of proxy mode: forwards unflagged inference requests itself, passes everything else on."""

    def __init__(self, app: ASGIApp, gateway: Gateway):
        self.app = app
        self.gateway = gateway

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "") if scope["type"] == "http" and scope.get("method") == "POST" else ""
        route = ROUTES.get(path)
        if route is None:
            await self.app(scope, receive, send)
            return
        raw, replay = await _buffered(receive)
        try:
            response = await self._screen_and_forward(Request(scope, replay), raw, route, path)
        except APIError as exc:
            response = exc.response()
        if response is None:
            await self.app(scope, replay, send)  # flagged: FastAPI's local routes serve it
            return
        scope["route"] = _Route(path)
        await response(scope, replay, send)

    async def _screen_and_forward(self, request: Request, raw: bytes, route: str, path: str) -> Response | None:
        """The upstream's answer to an unflagged request; ``None`` when a forget set flags it."""
        started = time.perf_counter()
        gateway = self.gateway
        gateway.keys.check_inference(request)
        body = _body(raw)
        _check_model(gateway, body)
        if gateway.screen.active:
            if len(raw) <= INLINE_SCREEN_BYTES:
                flagged = _flags(gateway, route, body)
            else:
                flagged = await gateway.pipeline.run(_flags, gateway, route, body)
            if flagged:
                return None
        gateway.metrics.observe_routing(route, [], time.perf_counter() - started)
        status: int | str = 500
        try:
            response = await forward(gateway.backend.upstream, path, raw, request.headers)  # type: ignore[attr-defined]
            status = response.status_code
            return response
        except APIError as exc:
            status = exc.status
            raise
        finally:
            gateway.audit.record(
                "inference",
                route=route,
                model=gateway.backend.model_id,
                prompt_sha256=sha256_text(raw.decode("utf-8", "replace")),
                forget_sets=[],
                forwarded=True,
                latency_ms=round((time.perf_counter() - started) * 1000, 2),
                status=status,
                stream=bool(body.get("stream")),
            )


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
