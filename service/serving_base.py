"""What every OpenAI endpoint shares (like vLLM's ``OpenAIServing``): screening, token limits, SSE, auditing.

A serving class per endpoint (``serving_chat``, ``serving_completion``, ``serving_models``)
builds on ``OpenAIServing``; the routes in ``service.openai_routes`` only call them.
Nothing in a response says whether it was altered: ids, shapes, token counts and headers are
the same for flagged and unflagged requests.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import ClassVar, TypeVar

from fastapi import Request
from fastapi.responses import Response, StreamingResponse

from lethe.runtime.generation import SamplingParams
from lethe.service.backend import Completion, Delta
from lethe.service.batcher import Overloaded
from lethe.service.errors import SERVER, APIError, bad_request, error_body
from lethe.service.gateway import Gateway
from lethe.service.protocol import UsageInfo
from lethe.service.request_rules import Endpoint
from lethe.service.response_shapes import Choice, ResponseShapes, Shaper
from lethe.service.screening_step import ScreenedRequest

T = TypeVar("T")
# The smallest temperature sampling divides by, as vLLM clamps it (``_MAX_TEMP``): below it the scaled logits of a
# float32 softmax overflow to inf/nan. A request's temperature in (0, MIN_TEMPERATURE) is raised to it.
MIN_TEMPERATURE = 1e-2
SCREENED = "lethe.screened"  # the ASGI scope's state key under which proxy mode's fast path hands its verdict down
DONE = b"data: [DONE]\n\n"


def sse(payload: bytes) -> bytes:
    """One server-sent event."""
    return b"data: " + payload + b"\n\n"


def json_response(body: bytes) -> Response:
    """A 200 with a JSON body already serialized."""
    return Response(body, media_type="application/json")


async def gather(awaitables: Sequence[Awaitable[T]]) -> list[T]:
    """Await all concurrently; the first failure cancels the others and is raised as itself."""
    tasks = [asyncio.ensure_future(a) for a in awaitables]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        raise


def decodable_temperature(temperature: float) -> float:
    """``temperature`` as sampling can divide by it: 0 (greedy) or at least ``MIN_TEMPERATURE``."""
    temperature = float(temperature)
    return MIN_TEMPERATURE if 0 < temperature < MIN_TEMPERATURE else temperature


def failure_status(exc: BaseException) -> int:
    """The status an exception answers with, as the audit log records it (499: the client went away)."""
    if isinstance(exc, asyncio.CancelledError):
        return 499
    if isinstance(exc, Overloaded):
        return 503
    return exc.status if isinstance(exc, APIError) else 500


class OpenAIServing:
    """The shared base of the endpoint classes."""

    endpoint: ClassVar[Endpoint]

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    @property
    def shapes(self) -> ResponseShapes:
        """How this gateway writes responses (the upstream's shapes in proxy mode, once known)."""
        return self.gateway.backend.response_shapes

    async def screened(self, request: Request) -> ScreenedRequest:
        """The request screened once: by proxy mode's fast path (handed down in the scope), else here."""
        handed = request.scope.get("state", {}).get(SCREENED)
        if handed is not None:
            return handed
        return await self.gateway.screening.screen_request(request, await request.body(), self.endpoint)

    def sampling(self, screened: ScreenedRequest, default_max_tokens: int) -> SamplingParams:
        """Sampling parameters; a default ``max_tokens`` shrinks to the context left after the longest prompt."""
        body = screened.body
        defaults = self.gateway.backend.generation_defaults
        max_tokens = body.requested_max_tokens()
        wanted = defaults.cap(min(default_max_tokens, self.gateway.settings.max_new_tokens))
        if max_tokens is not None:
            wanted = max_tokens
        context = self.gateway.backend.context_length
        if context is not None:
            longest = max(item.prompt_tokens for item in screened.prompts)
            room = context - longest
            if max_tokens is None and room >= 1:
                wanted = min(wanted, room)
            elif max_tokens is None or wanted > room:
                raise bad_request(
                    f"The prompt ({longest} tokens) plus 'max_tokens' ({wanted}) exceeds the model's context "
                    f"length of {context}.",
                    "max_tokens" if max_tokens is not None else None,
                    "context_length_exceeded",
                )
        return SamplingParams(
            max_new_tokens=wanted,
            temperature=decodable_temperature(defaults.temperature if body.temperature is None else body.temperature),
            top_p=defaults.top_p if body.top_p is None else float(body.top_p),
            seed=body.seed,
            stop=body.stop_sequences(),
        )

    async def audited(
        self,
        screened: ScreenedRequest,
        request_id: str,
        work: Awaitable[list[T]],
        tokens: Callable[[T], int] = lambda result: getattr(result, "completion_tokens", 0),
    ) -> list[T]:
        """Await ``work`` and write the audit lines, for failures too (with their status)."""
        audit = self.gateway.inference_audit
        try:
            results = await work
        except BaseException as exc:
            audit.served(screened, request_id, failure_status(exc), [0] * len(screened.prompts), False)
            raise
        audit.served(screened, request_id, 200, [tokens(r) for r in results], False)
        return results

    async def generate_all(
        self, screened: ScreenedRequest, request_id: str, params: SamplingParams
    ) -> list[Completion]:
        """Every prompt generated concurrently (they share micro-batches), audited."""
        backend = self.gateway.backend
        work = gather([backend.generate(request) for request in screened.backend_requests(params)])
        return await self.audited(screened, request_id, work)

    def shaper(self, request: Request, screened: ScreenedRequest) -> Shaper:
        """The writer of this request's response (the client's ``X-Request-Id`` is used where the upstream would)."""
        body = screened.body
        return self.shapes.shaper(self.endpoint, body.model, body.include_usage(), request.headers.get("x-request-id"))

    def whole(self, shaper: Shaper, choices: Sequence[Choice], usage: UsageInfo) -> Response:
        """A whole JSON response."""
        return Response(shaper.whole(choices, usage), media_type="application/json", headers=self.shapes.headers(False))

    async def stream(
        self,
        screened: ScreenedRequest,
        shaper: Shaper,
        params: SamplingParams,
        opening: Sequence[bytes] = (),
    ) -> StreamingResponse:
        """SSE response of the request's one prompt; the first step is awaited before the headers go out,
        so a full queue is still a 503."""
        gateway = self.gateway
        item = screened.prompts[0]
        deltas = gateway.backend.stream(screened.backend_requests(params)[0])
        try:
            first = await anext(deltas)
        except BaseException as exc:
            await deltas.aclose()
            gateway.inference_audit.served(screened, shaper.request_id, failure_status(exc), [0], True)
            raise

        async def events() -> AsyncIterator[bytes]:
            status: int | str = 200
            produced = 0
            try:
                for payload in opening:
                    yield sse(payload)
                delta: Delta = first
                while True:
                    produced = delta.completion_tokens
                    finish = Choice("", delta.finish_reason or "stop", delta.stop_reason) if delta.finished else None
                    for chunk in shaper.delta(delta.text, finish):
                        yield sse(chunk)
                    if finish is not None:
                        break
                    delta = await anext(deltas)
                if (usage := shaper.usage(UsageInfo.of(item.prompt_tokens, produced))) is not None:
                    yield sse(usage)
                yield DONE
            except Exception as exc:
                status = 500
                gateway.logger.error("stream %s failed: %s", shaper.request_id, type(exc).__name__)
                generic = error_body("The server had an error while generating.", SERVER, None, "internal_error")
                yield sse((exc.body() if isinstance(exc, APIError) else generic).json_bytes())  # e.g. a cut upstream
                yield DONE
            except BaseException:
                status = "disconnected"
                raise
            finally:
                await deltas.aclose()
                gateway.inference_audit.served(screened, shaper.request_id, status, [produced], True)

        return StreamingResponse(events(), media_type="text/event-stream", headers=self.shapes.headers(True))
