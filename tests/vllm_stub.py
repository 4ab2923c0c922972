"""A test upstream that answers like vLLM's OpenAI server, generating with a real (tiny) model.

It follows vLLM 0.33.0, read from its PyPI wheel (``pip download vllm==0.33.0 --no-deps``); the
paths below are inside that wheel. It records every request it receives, so tests can assert
that nothing reached it.

- ``prompt_embeds`` decode: ``vllm/renderers/embed_utils.py`` (``safe_load_prompt_embeds``):
  ``b64decode(validate=True)``, ``torch.load(weights_only=True, map_location="cpu")`` under
  sparse-invariant checks, made dense, a leading batch dimension squeezed, refused unless 2-D of
  the model's width, cast to the model's dtype (floating types only). Without
  ``--enable-prompt-embeds`` they are refused.
- Completions: ``vllm/renderers/online_renderer.py`` (``render_completion``,
  ``preprocess_completion``): ``echo`` and ``prompt_logprobs`` are refused with prompt embeddings,
  ``suffix`` too; embeddings come first, then ``prompt`` items, and *both* are generated.
  ``vllm/entrypoints/openai/completion/protocol.py``: ``max_tokens`` defaults to 16, at most 1,024
  prompts (``VLLM_MAX_COMPLETION_PROMPTS``), ``stream_options`` only with ``stream``, unknown keys are
  ignored (``OpenAIBaseModel``: ``extra="allow"``). ``.../completion/serving.py``: ``n`` choices per
  prompt (index ``prompt * n + j``), ids ``cmpl-`` + 16 hex (``vllm/utils/__init__.py``
  ``random_uuid``) or ``X-Request-Id``; chunks ``model_dump_json(exclude_unset=True)``, a usage chunk
  (``exclude_none=True``) with ``include_usage``, then ``[DONE]``; whole answers ``model_dump()``.
- Chat: ``vllm/entrypoints/openai/chat_completion/serving.py`` and ``protocol.py``: a role chunk,
  text chunks, a final chunk with the finish and stop reasons, the usage chunk
  (``exclude_unset=True, exclude_none=True``); the default ``max_tokens`` is the context left
  (``vllm/entrypoints/serve/utils/api_utils.py`` ``get_max_tokens``).
- Sampling defaults: ``vllm/config/model.py`` (``get_diff_sampling_param``): the generation config's
  temperature, top-p and ``max_new_tokens`` for parameters the request leaves out.
- Errors: ``{"error": {"message", "type": "BadRequestError", "param", "code": 400}}``
  (``vllm/entrypoints/serve/engine/protocol.py``, ``.../exception_handling/error_response.py``).
- Model card: ``owned_by: "vllm"``, ``root``, ``parent``, ``max_model_len``, ``permission``.

Only what Lethe's tests exercise is reproduced: text generation (greedy or seeded sampling with
temperature and top-p, stop strings, ``n``), no log-probs, tools or multimodal input.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import secrets
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ConfigDict, Field, model_serializer
from starlette.concurrency import iterate_in_threadpool, run_in_threadpool

from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel

VLLM_VERSION = "0.33.0"
MAX_COMPLETION_PROMPTS = 1024


def random_uuid() -> str:
    """``vllm.utils.random_uuid``: 16 hex characters."""
    return f"{secrets.randbits(64):016x}"


# vLLM's response models (the fields it writes, in its order) --------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="allow")


class _Head(_Model):
    """The fields every response and chunk starts with."""

    id: str
    object: str
    created: int
    model: str


class _WithoutEmptyToolCalls(_Model):
    """vLLM drops an empty ``tool_calls`` list from messages and deltas."""

    @model_serializer(mode="wrap")
    def _serialize(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if len(data.get("tool_calls", [])) == 0:
            data.pop("tool_calls", None)
        return data


class UsageInfo(_Model):
    prompt_tokens: int = 0
    total_tokens: int = 0
    completion_tokens: int | None = 0
    prompt_tokens_details: dict[str, Any] | None = None
    completion_tokens_details: dict[str, Any] | None = None


class CompletionResponseChoice(_Model):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None
    routed_experts: str | None = None
    weight_versions: list[Any] | None = None


class CompletionResponse(_Head):
    object: str = "text_completion"
    choices: list[CompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


class CompletionResponseStreamChoice(_Model):
    index: int
    text: str
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    prompt_token_ids: list[int] | None = None
    token_ids: list[int] | None = None
    weight_versions: list[Any] | None = None


class CompletionStreamResponse(_Head):
    object: str = "text_completion"
    choices: list[CompletionResponseStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
    metrics: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None


class ChatMessage(_WithoutEmptyToolCalls):
    role: str
    content: str | None = None
    refusal: str | None = None
    annotations: Any = None
    audio: Any = None
    function_call: Any = None
    tool_calls: list[Any] = Field(default_factory=list)
    reasoning: str | None = None


class ChatCompletionResponseChoice(_Model):
    index: int
    message: ChatMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = "stop"
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    routed_experts: str | None = None
    weight_versions: list[Any] | None = None


class ChatCompletionResponse(_Head):
    object: str = "chat.completion"
    choices: list[ChatCompletionResponseChoice]
    service_tier: str | None = None
    system_fingerprint: str | None = None
    usage: UsageInfo
    prompt_logprobs: list[Any] | None = None
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    kv_transfer_params: dict[str, Any] | None = None
    ec_transfer_params: dict[str, Any] | None = None
    metrics: dict[str, Any] | None = None


class DeltaMessage(_WithoutEmptyToolCalls):
    role: str | None = None
    content: str | None = None
    reasoning: str | None = None
    tool_calls: list[Any] = Field(default_factory=list)


class ChatCompletionResponseStreamChoice(_Model):
    index: int
    delta: DeltaMessage
    logprobs: dict[str, Any] | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None
    token_ids: list[int] | None = None
    weight_versions: list[Any] | None = None


class ChatCompletionStreamResponse(_Head):
    object: str = "chat.completion.chunk"
    choices: list[ChatCompletionResponseStreamChoice]
    usage: UsageInfo | None = None
    system_fingerprint: str | None = None
    prompt_token_ids: list[int] | None = None
    prompt_text: str | None = None
    metrics: dict[str, Any] | None = None
    kv_transfer_params: dict[str, Any] | None = None


class BadRequest(Exception):
    """A 400 as vLLM writes it."""

    def __init__(self, message: str, param: str | None = None):
        super().__init__(message)
        self.message, self.param = message, param

    def response(self) -> JSONResponse:
        body = {"error": {"message": self.message, "type": "BadRequestError", "param": self.param, "code": 400}}
        return JSONResponse(body, status_code=400)


# The server ---------------------------------------------------------------------------------------


@dataclass
class Recorded:
    """One request the stub received, and the sampling it generated with (one entry per generated prompt)."""

    path: str
    body: dict[str, Any]
    headers: dict[str, str]
    raw: bytes = b""
    sampling: list[SamplingParams] = field(default_factory=list)
    embeds_dtypes: list[torch.dtype] = field(default_factory=list)


@dataclass
class _Output:
    text: str
    token_ids: list[int]
    finish_reason: str


class VllmStub:
    """vLLM's OpenAI server for one model, on ``LanguageModel`` (see the module docstring for what it follows)."""

    def __init__(
        self,
        model: LanguageModel,
        served_name: str,
        max_model_len: int = 512,
        dtype: torch.dtype = torch.float32,
        generation_config: dict[str, Any] | None = None,
        enable_prompt_embeds: bool = True,
    ):
        self.model = model
        self.name = served_name
        self.max_model_len = max_model_len
        self.dtype = dtype
        self.defaults = dict(generation_config or {})
        self.enable_prompt_embeds = enable_prompt_embeds
        self.requests: list[Recorded] = []
        self._lock = threading.Lock()
        self.app = self._build()

    # Requests in ---------------------------------------------------------------------------------

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/v1/models")
        async def models() -> JSONResponse:
            card = {
                "id": self.name, "object": "model", "created": int(time.time()), "owned_by": "vllm",
                "root": str(self.model.path), "parent": None, "max_model_len": self.max_model_len,
                "permission": [{
                    "id": f"modelperm-{random_uuid()}", "object": "model_permission", "created": int(time.time()),
                    "allow_create_engine": False, "allow_sampling": True, "allow_logprobs": True,
                    "allow_search_indices": False, "allow_view": True, "allow_fine_tuning": False,
                    "organization": "*", "group": None, "is_blocking": False,
                }],
            }  # fmt: skip
            return JSONResponse({"object": "list", "data": [card]})

        @app.post("/v1/completions")
        async def completions(request: Request) -> Any:
            return await self._serve(request, self._completion)

        @app.post("/v1/chat/completions")
        async def chat(request: Request) -> Any:
            return await self._serve(request, self._chat)

        return app

    async def _serve(self, request: Request, handler: Any) -> Any:
        raw = await request.body()
        body = json.loads(raw)
        recorded = Recorded(request.url.path, body, dict(request.headers), raw)
        self.requests.append(recorded)
        try:
            return await handler(body, recorded, request.headers.get("x-request-id"))
        except BadRequest as exc:
            return exc.response()

    def _default(self, body: dict[str, Any], name: str) -> float:
        """The request's value, else the generation config's, else vLLM's neutral 1.0."""
        value = body.get(name)
        return float(value if value is not None else self.defaults.get(name, 1.0))

    def _sampling(self, body: dict[str, Any], max_tokens: int) -> SamplingParams:
        stop = body.get("stop") or []
        return SamplingParams(
            max_new_tokens=max_tokens,
            temperature=self._default(body, "temperature"),
            top_p=self._default(body, "top_p"),
            seed=body.get("seed"),
            stop=tuple([stop] if isinstance(stop, str) else stop),
        )

    def load_prompt_embeds(self, encoded: str, recorded: Recorded) -> torch.Tensor:
        """``safe_load_prompt_embeds`` of vLLM 0.33.0 (the dtype as sent is recorded)."""
        if not self.enable_prompt_embeds:
            raise BadRequest("You must set `--enable-prompt-embeds` to input `prompt_embeds`.", "prompt_embeds")
        try:
            payload = base64.b64decode(encoded, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise BadRequest(str(exc)) from None
        with torch.sparse.check_sparse_tensor_invariants():
            try:
                tensor = torch.load(io.BytesIO(payload), weights_only=True, map_location=torch.device("cpu"))
            except Exception as exc:
                raise BadRequest(
                    f"`prompt_embeds` could not be deserialized: {str(exc)[:200]}", "prompt_embeds"
                ) from None
            if not isinstance(tensor, torch.Tensor):
                raise BadRequest("`prompt_embeds` must be a tensor.", "prompt_embeds")
            tensor = tensor.to_dense()
        if tensor.dim() > 2:
            tensor = tensor.squeeze(0)
        if tensor.dim() != 2:
            raise BadRequest(f"`prompt_embeds` must be a 2D tensor; got shape {tuple(tensor.shape)}.", "prompt_embeds")
        if tensor.shape[1] != self.model.hidden_size:
            raise BadRequest(
                f"`prompt_embeds` hidden_size {tensor.shape[1]} does not match the model's hidden_size "
                f"{self.model.hidden_size}.",
                "prompt_embeds",
            )
        recorded.embeds_dtypes.append(tensor.dtype)
        if tensor.dtype != self.dtype:
            if not tensor.is_floating_point():
                raise BadRequest(f"`prompt_embeds` dtype {tensor.dtype} is not a floating-point type.", "prompt_embeds")
            tensor = tensor.to(self.dtype)
        return tensor

    def _completion_inputs(self, body: dict[str, Any], recorded: Recorded) -> list[torch.Tensor | list[int]]:
        prompt, embeds = body.get("prompt"), body.get("prompt_embeds")
        if (prompt is None or prompt == "") and (embeds is None or embeds == []):
            raise BadRequest("Either prompt or prompt_embeds must be provided and non-empty.", "prompt")
        if isinstance(embeds, list) and len(embeds) > MAX_COMPLETION_PROMPTS:
            raise BadRequest(f"prompt_embeds list length {len(embeds)} exceeds the maximum.", "prompt_embeds")
        if body.get("stream_options") and not body.get("stream"):
            raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
        if body.get("suffix") is not None and embeds is not None:
            raise BadRequest("suffix is not supported with prompt_embeds", "suffix")
        if body.get("echo") and embeds is not None:
            raise BadRequest("Echo is unsupported with prompt embeds.")
        if body.get("prompt_logprobs") is not None and embeds is not None:
            raise BadRequest("prompt_logprobs is not compatible with prompt embeds.")
        inputs: list[torch.Tensor | list[int]] = []
        for item in [embeds] if isinstance(embeds, str) else embeds or []:
            inputs.append(self.load_prompt_embeds(item, recorded))
        if prompt is not None and prompt != "":
            if isinstance(prompt, str) or all(isinstance(p, int) for p in prompt):
                prompt = [prompt]
            for item in prompt:
                tokens = self.model.embedder.text_prompt(item).ids if isinstance(item, str) else item
                inputs.append(list(tokens))
        return inputs

    # Generation ----------------------------------------------------------------------------------

    def _embeds(self, source: torch.Tensor | list[int]) -> torch.Tensor:
        if isinstance(source, torch.Tensor):
            return source.to(self.model.embedder.dtype)
        return self.model.embed(source)

    def _steps(
        self, source: torch.Tensor | list[int], params: SamplingParams
    ) -> Iterator[tuple[str, int | None, str | None]]:
        with self._lock:
            for events in self.model.decode_steps([self._embeds(source)], [params]):
                for event in events:
                    yield event.delta, event.token_id, event.finish_reason if event.finished else None

    def _generate(self, source: torch.Tensor | list[int], params: SamplingParams) -> _Output:
        text, ids, finish = "", [], "stop"
        for delta, token, reason in self._steps(source, params):
            text += delta
            ids += [token] if token is not None else []
            finish = reason or finish
        return _Output(text, ids, finish)

    @staticmethod
    def _length(source: torch.Tensor | list[int]) -> int:
        return int(source.shape[0]) if isinstance(source, torch.Tensor) else len(source)

    def _max_tokens(self, body: dict[str, Any], length: int, chat: bool) -> int:
        given = body.get("max_completion_tokens") if chat else None
        given = given if given is not None else body.get("max_tokens", None if chat else 16)
        if length > self.max_model_len:
            raise BadRequest(f"Input length ({length}) exceeds model's maximum context length ({self.max_model_len}).")
        fallback = given if given is not None else self.defaults.get("max_new_tokens")
        return min(v for v in (self.max_model_len - length, fallback) if v is not None)

    # Endpoints -----------------------------------------------------------------------------------

    async def _completion(self, body: dict[str, Any], recorded: Recorded, request_id: str | None) -> Any:
        inputs = self._completion_inputs(body, recorded)
        n = int(body.get("n") or 1)
        rid, created = f"cmpl-{request_id or random_uuid()}", int(time.time())
        jobs = [
            (i, s, self._sampling(body, self._max_tokens(body, self._length(s), False))) for i, s in enumerate(inputs)
        ]
        recorded.sampling = [params for _, _, params in jobs for _ in range(n)]
        if body.get("stream"):
            return StreamingResponse(
                self._completion_stream(body, jobs, n, rid, created), media_type="text/event-stream"
            )
        choices, prompt_tokens, completion_tokens = [], 0, 0
        for _, source, params in jobs:
            prompt_tokens += self._length(source)
            for _ in range(n):
                out = await run_in_threadpool(self._generate, source, params)
                completion_tokens += len(out.token_ids)
                choices.append(
                    CompletionResponseChoice(index=len(choices), text=out.text, finish_reason=out.finish_reason)
                )
        usage = UsageInfo(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )
        response = CompletionResponse(id=rid, created=created, model=self.name, choices=choices, usage=usage)
        return JSONResponse(response.model_dump())

    async def _completion_stream(
        self, body: dict[str, Any], jobs: list[Any], n: int, rid: str, created: int
    ) -> AsyncIterator[str]:
        prompt_tokens = completion_tokens = 0
        for prompt_index, source, params in jobs:
            prompt_tokens += self._length(source)
            for j in range(n):
                async for delta, token, reason in iterate_in_threadpool(self._steps(source, params)):
                    completion_tokens += token is not None
                    if not delta and reason is None:
                        continue
                    choice = CompletionResponseStreamChoice(
                        index=prompt_index * n + j, text=delta, logprobs=None, finish_reason=reason,
                        stop_reason=None, prompt_token_ids=None, token_ids=None, weight_versions=None,
                    )  # fmt: skip
                    chunk = CompletionStreamResponse(
                        id=rid, object="text_completion", created=created, model=self.name, choices=[choice],
                        kv_transfer_params=None,
                    )  # fmt: skip
                    yield f"data: {chunk.model_dump_json(exclude_unset=True)}\n\n"
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = UsageInfo(
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                total_tokens=prompt_tokens + completion_tokens,
            )
            chunk = CompletionStreamResponse(id=rid, created=created, model=self.name, choices=[], usage=usage)
            yield f"data: {chunk.model_dump_json(exclude_unset=False, exclude_none=True)}\n\n"
        yield "data: [DONE]\n\n"

    def _chat_ids(self, body: dict[str, Any]) -> list[int]:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise BadRequest("messages must be a non-empty list", "messages")
        rendered = []
        for message in messages:
            content = message.get("content")
            if isinstance(content, list):
                content = "\n".join(part.get("text", "") for part in content if part.get("type") == "text")
            rendered.append({"role": message["role"], "content": content or ""})
        return list(self.model.chat_prompt(rendered).ids)

    async def _chat(self, body: dict[str, Any], recorded: Recorded, request_id: str | None) -> Any:
        if body.get("stream_options") and not body.get("stream"):
            raise BadRequest("Stream options can only be defined when `stream=True`.", "stream_options")
        ids = self._chat_ids(body)
        params = self._sampling(body, self._max_tokens(body, len(ids), True))
        recorded.sampling = [params]
        rid, created = f"chatcmpl-{request_id or random_uuid()}", int(time.time())
        if body.get("stream"):
            return StreamingResponse(self._chat_stream(body, ids, params, rid, created), media_type="text/event-stream")
        out = await run_in_threadpool(self._generate, ids, params)
        choice = ChatCompletionResponseChoice(
            index=0, message=ChatMessage(role="assistant", content=out.text), finish_reason=out.finish_reason
        )
        usage = UsageInfo(
            prompt_tokens=len(ids), completion_tokens=len(out.token_ids), total_tokens=len(ids) + len(out.token_ids)
        )
        response = ChatCompletionResponse(id=rid, created=created, model=self.name, choices=[choice], usage=usage)
        return JSONResponse(response.model_dump())

    async def _chat_stream(
        self, body: dict[str, Any], ids: list[int], params: SamplingParams, rid: str, created: int
    ) -> AsyncIterator[str]:
        def dump(chunk: ChatCompletionStreamResponse) -> str:
            return f"data: {chunk.model_dump_json(exclude_unset=True, exclude_none=not chunk.choices)}\n\n"

        head = {"id": rid, "object": "chat.completion.chunk", "created": created, "model": self.name}
        role = ChatCompletionResponseStreamChoice(
            index=0, delta=DeltaMessage(role="assistant", content=""), logprobs=None, finish_reason=None
        )
        yield dump(ChatCompletionStreamResponse(**head, choices=[role], prompt_token_ids=None, prompt_text=None))
        produced = 0
        async for delta, token, reason in iterate_in_threadpool(self._steps(ids, params)):
            produced += token is not None
            if reason is None:
                if not delta:
                    continue
                choice = ChatCompletionResponseStreamChoice(
                    index=0, delta=DeltaMessage(content=delta), logprobs=None, finish_reason=None, token_ids=None
                )
            else:
                choice = ChatCompletionResponseStreamChoice(
                    index=0, delta=DeltaMessage(content=delta), logprobs=None, finish_reason=reason,
                    stop_reason=None, token_ids=None, weight_versions=None,
                )  # fmt: skip
            yield dump(ChatCompletionStreamResponse(**head, choices=[choice], kv_transfer_params=None))
        if (body.get("stream_options") or {}).get("include_usage"):
            usage = UsageInfo(prompt_tokens=len(ids), completion_tokens=produced, total_tokens=len(ids) + produced)
            yield dump(
                ChatCompletionStreamResponse(**head, choices=[], usage=usage, system_fingerprint=None, metrics=None)
            )
        yield "data: [DONE]\n\n"
