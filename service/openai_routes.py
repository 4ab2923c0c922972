"""OpenAI-compatible routes: ``/v1/chat/completions``, ``/v1/completions``, ``/v1/models``.

Every request is routed through the enabled forget sets before it reaches the backend. Nothing
in a response says whether it was altered: ids, shapes, token counts and headers are the same.
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any, TypeVar

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, StreamingResponse

from lethe.service.backend import BackendRequest, Completion, Delta
from lethe.service.batcher import Overloaded
from lethe.service.errors import SERVER, APIError, bad_request, error_body, unsupported
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.inference import DEFAULT_COMPLETION_MAX_TOKENS, RoutedPrompt
from lethe.service.schemas import ChatCompletionRequest, CompletionRequest, parse_body

router = APIRouter()
T = TypeVar("T")
ChunkMaker = Callable[[str | None, str | None], dict[str, Any]]


def _sse(payload: dict[str, Any] | str) -> str:
    return f"data: {payload if isinstance(payload, str) else json.dumps(payload)}\n\n"


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """The served model."""
    gateway = gateway_of(request)
    gateway.keys.check_inference(request)
    return {"object": "list", "data": [_model_card(c.id, c.created, c.owned_by) for c in gateway.backend.models()]}


@router.get("/v1/models/{model_id:path}")
async def get_model(model_id: str, request: Request) -> dict[str, Any]:
    """One served model, or a 404."""
    gateway = gateway_of(request)
    gateway.keys.check_inference(request)
    for card in gateway.backend.models():
        if card.id == model_id:
            return _model_card(card.id, card.created, card.owned_by)
    served = ", ".join(card.id for card in gateway.backend.models())
    message = f"The requested model does not exist; this server serves {served}."  # the id is not echoed
    raise APIError(404, message, "invalid_request_error", "model", "model_not_found")


def _model_card(model_id: str, created: int, owned_by: str) -> dict[str, Any]:
    return {"id": model_id, "object": "model", "created": created, "owned_by": owned_by}


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(request: Request) -> JSONResponse | StreamingResponse:
    """Chat completion, streamed or whole."""
    started = time.perf_counter()
    gateway = gateway_of(request)
    gateway.keys.check_inference(request)
    body = parse_body(await request.body(), ChatCompletionRequest)
    if error := body.unsupported_values():
        raise error
    gateway.pipeline.check_model(body.model)
    max_tokens = body.requested_max_tokens()
    if max_tokens == 0:
        raise bad_request("'max_tokens' must be at least 1 for chat completions.", "max_tokens", "invalid_value")
    gateway.pipeline.check_max_tokens(max_tokens)
    routed = await gateway.pipeline.route_chat(body)
    params = gateway.pipeline.sampling(body, max_tokens, gateway.settings.max_new_tokens, [routed])
    request_id = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    if body.stream:

        def chunk(text: str | None, finish: str | None, first: bool = False) -> dict[str, Any]:
            delta: dict[str, Any] = {}
            if first:
                delta = {"role": "assistant", "content": ""}
            elif text is not None:
                delta = {"content": text}
            payload = {
                "id": request_id,
                "object": "chat.completion.chunk",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}],
            }
            if body.include_usage():
                payload["usage"] = None
            return payload

        usage_chunk = {
            "id": request_id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": body.model,
            "choices": [],
        }
        return await _stream(
            gateway,
            "chat",
            request_id,
            routed,
            routed.request(params),
            [chunk(None, None, first=True)],
            chunk,
            usage_chunk if body.include_usage() else None,
            started,
        )
    [completion] = await _audited(
        gateway, "chat", request_id, [routed], started, _generate_all(gateway, [routed.request(params)])
    )
    return JSONResponse(
        {
            "id": request_id,
            "object": "chat.completion",
            "created": created,
            "model": body.model,
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": completion.text},
                    "logprobs": None,
                    "finish_reason": completion.finish_reason,
                }
            ],
            "usage": _usage(routed.prompt_tokens, completion.completion_tokens),
        }
    )


@router.post("/v1/completions", response_model=None)
async def completions(request: Request) -> JSONResponse | StreamingResponse:
    """Legacy completions: text or token prompts, ``prompt_embeds``, and echo log-probs."""
    started = time.perf_counter()
    gateway = gateway_of(request)
    gateway.keys.check_inference(request)
    body = parse_body(await request.body(), CompletionRequest)
    if error := body.unsupported_values():
        raise error
    gateway.pipeline.check_model(body.model)
    if body.prompt_embeds is not None and not gateway.settings.allow_prompt_embeds:
        raise unsupported("prompt_embeds", "disabled on this server")
    if body.stream and _prompt_count(body) > 1:
        raise unsupported("stream", "streaming takes a single prompt")
    gateway.pipeline.check_max_tokens(body.max_tokens)
    routed = await gateway.pipeline.route_completion(body)
    params = gateway.pipeline.sampling(body, body.max_tokens, DEFAULT_COMPLETION_MAX_TOKENS, routed)
    request_id = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    echo = bool(body.echo)
    if body.logprobs is not None:
        return await _echo_logprobs(gateway, body, routed, request_id, created, started)
    if body.stream:
        item = routed[0]

        def chunk(text: str | None, finish: str | None) -> dict[str, Any]:
            payload = {
                "id": request_id,
                "object": "text_completion",
                "created": created,
                "model": body.model,
                "choices": [{"index": 0, "text": text or "", "logprobs": None, "finish_reason": finish}],
            }
            if body.include_usage():
                payload["usage"] = None
            return payload

        usage_chunk = {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": [],
        }
        prefix = [chunk(item.prompt.text, None)] if echo else []
        return await _stream(
            gateway,
            "completions",
            request_id,
            routed[0],
            item.request(params),
            prefix,
            chunk,
            usage_chunk if body.include_usage() else None,
            started,
        )
    results = await _audited(
        gateway,
        "completions",
        request_id,
        routed,
        started,
        _generate_all(gateway, [item.request(params) for item in routed]),
    )
    choices = [
        {
            "index": index,
            "text": (item.prompt.text if echo else "") + result.text,
            "logprobs": None,
            "finish_reason": result.finish_reason,
        }
        for index, (item, result) in enumerate(zip(routed, results, strict=True))
    ]
    prompt_tokens = sum(item.prompt_tokens for item in routed)
    completion_tokens = sum(r.completion_tokens for r in results)
    return JSONResponse(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, completion_tokens),
        }
    )


def _prompt_count(body: CompletionRequest) -> int:
    value: Any = body.prompt_embeds if body.prompt_embeds is not None else body.prompt
    if value is None or isinstance(value, str):
        return 1
    if value and all(isinstance(v, int) for v in value):
        return 1
    return len(value)


async def _gather(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Await all concurrently; the first failure cancels the others and is raised as itself."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


async def _audited(
    gateway: Gateway,
    route: str,
    request_id: str,
    routed: Sequence[RoutedPrompt],
    started: float,
    work: Awaitable[list[T]],
    tokens: Callable[[T], int] = lambda result: getattr(result, "completion_tokens", 0),
) -> list[T]:
    """Await ``work`` and write the audit lines, for failures too (with their status)."""
    try:
        results = await work
    except BaseException as exc:
        status = 503 if isinstance(exc, Overloaded) else exc.status if isinstance(exc, APIError) else 500
        if isinstance(exc, asyncio.CancelledError):
            status = 499  # the client went away
        gateway.pipeline.audit_request(
            route, request_id, routed, time.perf_counter() - started, status, [0] * len(routed), False
        )
        raise
    gateway.pipeline.audit_request(
        route, request_id, routed, time.perf_counter() - started, 200, [tokens(r) for r in results], False
    )
    return results


async def _generate_all(gateway: Gateway, requests: Sequence[BackendRequest]) -> list[Completion]:
    """Generate every request concurrently (they share micro-batches)."""
    return await _gather([gateway.backend.generate(r) for r in requests])


async def _echo_logprobs(
    gateway: Gateway,
    body: CompletionRequest,
    routed: list[RoutedPrompt],
    request_id: str,
    created: int,
    started: float,
) -> JSONResponse:
    """Prompt log-probs in the legacy shape (``max_tokens=0``, ``echo=true``), as harnesses use for scoring."""
    top_n = int(body.logprobs or 0)
    embedder = gateway.pipeline.embedder
    plans = [item.verdict.plan if item.verdict.flagged else None for item in routed]
    scoring = _gather(
        [
            gateway.backend.prompt_logprobs(item.prompt.ids, plan, top_n)
            for item, plan in zip(routed, plans, strict=True)
        ]
    )
    scored_all = await _audited(gateway, "completions", request_id, routed, started, scoring, tokens=lambda _: 0)
    choices = []
    for index, (item, scored) in enumerate(zip(routed, scored_all, strict=True)):
        top: list[dict[str, float] | None] = []
        for entry in scored.top_logprobs:
            if entry is None:
                top.append(None if not top else {})
                continue
            strings = embedder.token_strings(list(entry))
            merged: dict[str, float] = {}
            for string, value in zip(strings, entry.values(), strict=True):
                merged[string] = max(value, merged.get(string, float("-inf")))
            top.append(merged)
        choices.append(
            {
                "index": index,
                "text": item.prompt.text,
                "logprobs": {
                    "tokens": embedder.token_strings(item.prompt.ids),
                    "token_logprobs": scored.token_logprobs,
                    "top_logprobs": top,
                    "text_offset": [start for start, _ in item.prompt.offsets],
                },
                "finish_reason": "length",
            }
        )
    prompt_tokens = sum(item.prompt_tokens for item in routed)
    return JSONResponse(
        {
            "id": request_id,
            "object": "text_completion",
            "created": created,
            "model": body.model,
            "choices": choices,
            "usage": _usage(prompt_tokens, 0),
        }
    )


async def _stream(
    gateway: Gateway,
    route: str,
    request_id: str,
    routed: RoutedPrompt,
    backend_request: BackendRequest,
    prefix: list[dict[str, Any]],
    chunk: ChunkMaker,
    usage_chunk: dict[str, Any] | None,
    started: float,
) -> StreamingResponse:
    """SSE response; the first step is awaited before the headers go out, so a full queue is still a 503."""
    deltas = gateway.backend.stream(backend_request)
    try:
        first = await anext(deltas)
    except BaseException:
        await deltas.aclose()
        raise

    async def events() -> AsyncIterator[str]:
        status: int | str = 200
        produced = 0
        try:
            for payload in prefix:
                yield _sse(payload)
            delta: Delta = first
            while True:
                if delta.text:
                    yield _sse(chunk(delta.text, None))
                produced = delta.completion_tokens
                if delta.finished:
                    yield _sse(chunk(None, delta.finish_reason or "stop"))
                    break
                delta = await anext(deltas)
            if usage_chunk is not None:
                yield _sse({**usage_chunk, "usage": _usage(routed.prompt_tokens, produced)})
            yield _sse("[DONE]")
        except Exception as exc:
            status = 500
            gateway.logger.error("stream %s failed: %s", request_id, type(exc).__name__)
            generic = error_body("The server had an error while generating.", SERVER, None, "internal_error")
            yield _sse(exc.body() if isinstance(exc, APIError) else generic)  # e.g. an upstream cutting the stream
            yield _sse("[DONE]")
        except BaseException:
            status = "disconnected"
            raise
        finally:
            await deltas.aclose()
            gateway.pipeline.audit_request(
                route,
                request_id,
                [routed],
                time.perf_counter() - started,
                status,
                [produced],
                True,  # type: ignore[arg-type]
            )

    return StreamingResponse(
        events(), media_type="text/event-stream", headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
    )
