"""Proxy-mode inference routes: screen each request, forward the unflagged ones, serve the flagged ones.

Screening reads only what the classifiers need (the messages' text, or the prompt; an uploaded
``prompt_embeds`` tensor is mapped back to its nearest tokens as in local mode). With no forget
set enabled nothing is classified at all. An unflagged request is forwarded to the upstream
unchanged; a flagged one takes the local routes' path (``service.openai_routes``), whose backend
here is the ``ProxyBackend``: strict validation, the chat template, embedding, the forget sets'
interventions, then the upstream on ``prompt_embeds``.

What cannot be read for screening is refused (fail closed) rather than forwarded unread.
"""

from __future__ import annotations

import json
import time
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response

from service import openai_routes
from service.audit import sha256_text
from service.errors import APIError, bad_request
from service.gateway import Gateway, gateway_of
from service.passthrough import forward
from service.prompt_embeds import decode_prompt_embeds, nearest_token_ids, prompt_from_ids
from service.schemas import MAX_PROMPTS_PER_REQUEST

router = APIRouter()


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
    router = gateway.router
    if route == "chat":
        return [f.forget_set_id for f in router.classify(chat_messages(body))]
    ids: list[str] = []
    for text in completion_texts(gateway, body):
        ids += [f.forget_set_id for f in router.classify(None, text)]
    return list(dict.fromkeys(ids))


async def _serve(request: Request, route: str, path: str) -> Response:
    started = time.perf_counter()
    gateway = gateway_of(request)
    gateway.keys.check_inference(request)
    raw = await request.body()
    body = _body(raw)
    _check_model(gateway, body)
    flagged: list[str] = []
    if gateway.router.active:
        flagged = await gateway.pipeline.run(_flags, gateway, route, body)
    if flagged:
        handler = openai_routes.chat_completions if route == "chat" else openai_routes.completions
        return await handler(request)
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


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> Response:
    """Chat completion: forwarded unchanged unless a forget set flags it."""
    return await _serve(request, "chat", "/v1/chat/completions")


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> Response:
    """Legacy completion: forwarded unchanged unless a forget set flags it."""
    return await _serve(request, "completions", "/v1/completions")
