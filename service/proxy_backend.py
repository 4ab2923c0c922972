"""``ProxyBackend``: the ``Backend`` of proxy mode, generating on a remote upstream (vLLM or another Lethe).

The routes hand it only what needs Lethe's own path (flagged prompts; unflagged requests are
forwarded byte for byte by ``service.passthrough``). A flagged prompt is embedded here with the
model's own embedding matrix, the forget sets' plan is applied by the same runtime code local
mode runs, and the tensor goes upstream as vLLM's ``prompt_embeds`` (base64 of ``torch.save``,
``(seq_len, hidden)``) on ``/v1/completions``; the answer comes back as text deltas that the
routes shape into chat or completion responses, streamed or not.

Whether the upstream takes prompt embeddings is configured (``yes``/``no``) or probed with a
one-token request (``auto``), never assumed. Without them, flagged prompts follow the policy:
``refuse`` (the configured message), ``text`` (corrupted tokens sent as text) or ``block`` (403).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import io
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import InterventionPlan, apply_plan
from lethe.runtime.model import LanguageModel, PromptLogprobs
from lethe.service import upstream_errors as errors
from lethe.service.backend import BackendRequest, Completion, Delta
from lethe.service.errors import PERMISSION, APIError, unsupported
from lethe.service.protocol import ModelCard
from lethe.service.response_shapes import LETHE_SHAPES, ResponseShapes
from lethe.service.settings import GatewaySettings
from lethe.service.text_corruption import corrupted_text, replacement_vocabulary
from lethe.service.upstream import UpstreamClient, sse_events
from lethe.service.upstream_errors import UpstreamError

logger = logging.getLogger("lethe.proxy")
PROBE_RETRY_S = 2.0


def encode_prompt_embeds(tensor: torch.Tensor) -> str:
    """Base64 of ``torch.save(tensor)``, exactly as vLLM's client helper encodes ``prompt_embeds``."""
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


class ProxyBackend:
    """Generations on an upstream OpenAI-compatible server, prompt embeddings for flagged prompts."""

    passthrough = True
    response_shapes: ResponseShapes = LETHE_SHAPES

    def __init__(self, settings: GatewaySettings, embedder: PromptEmbedder, upstream: UpstreamClient | None = None):
        if not settings.upstream_model:
            raise ValueError("proxy mode needs the upstream's model name (--upstream-model or LETHE_UPSTREAM_MODEL)")
        self.settings = settings
        self._embedder = embedder
        self.upstream = upstream or UpstreamClient(settings)
        self._model_id = settings.upstream_model
        configured = settings.upstream_prompt_embeds
        self.prompt_embeds: bool | None = None if configured == "auto" else configured == "yes"
        self.reachable = False
        self._probe_lock: asyncio.Lock | None = None
        self._probe_task: asyncio.Task[None] | None = None
        self._inflight = 0
        self._started = False
        self._created = int(time.time())
        self._vocabulary: torch.Tensor | None = None

    # Backend protocol: description ---------------------------------------------------------------

    @property
    def embedder(self) -> PromptEmbedder:
        """Tokenizer, chat template and embedding matrix (the only part of the model held here)."""
        return self._embedder

    @property
    def model_id(self) -> str:
        """The upstream's model name."""
        return self._model_id

    @property
    def context_length(self) -> int | None:
        """``max_position_embeddings`` of the model config."""
        value = self._embedder.config.get("max_position_embeddings")
        return int(value) if value else None

    def models(self) -> list[ModelCard]:
        """The one upstream model flagged prompts can be served for."""
        return [ModelCard(id=self._model_id, created=self._created, owned_by="lethe-proxy")]

    def load(self) -> tuple[int, int]:
        """Nothing waits here; ``running`` counts requests in flight upstream."""
        return 0, self._inflight

    def ready(self) -> bool:
        """True once started and the upstream has answered at least once."""
        return self._started and self.reachable

    def local_model(self) -> LanguageModel | None:
        """None: proxy mode holds no model (forget sets are imported, not trained here)."""
        return None

    # Lifecycle ---------------------------------------------------------------------------------

    def start(self) -> None:
        """Check the upstream (and probe for prompt embeddings) in the background until it answers."""
        self._started = True
        self._probe_lock = asyncio.Lock()
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._probe_task = loop.create_task(self._probe_until_known())

    def close(self) -> None:
        """Stop probing and close the pooled connections."""
        self._started = False
        if self._probe_task is not None:
            self._probe_task.cancel()
        with contextlib.suppress(RuntimeError):
            asyncio.get_running_loop().create_task(self.upstream.aclose())

    async def _probe_until_known(self) -> None:
        while True:
            try:
                await self.check_upstream()
                if self.prompt_embeds is not None:
                    return
            except UpstreamError as exc:
                logger.warning("upstream %s not reachable yet: %s", self.upstream.base_url, exc.code)
            await asyncio.sleep(PROBE_RETRY_S)

    async def check_upstream(self) -> None:
        """Reach the upstream, warn if it does not list the model, and probe ``prompt_embeds`` if not configured."""
        status, body = await self.upstream.get_json("/v1/models")
        self.reachable = True
        if status == 200 and isinstance(body, dict):
            names = [m.get("id") for m in body.get("data") or [] if isinstance(m, dict)]
            if self._model_id not in names:
                logger.warning("the upstream lists %s, not %r", names, self._model_id)
        if self.prompt_embeds is None:
            await self.probe_prompt_embeds()

    async def probe_prompt_embeds(self) -> bool | None:
        """Send a one-token ``prompt_embeds`` request: 200 means supported, a 4xx means not; else unknown."""
        assert self._probe_lock is not None, "start() first"
        async with self._probe_lock:
            if self.prompt_embeds is not None:
                return self.prompt_embeds
            token = self._embedder.encode("Hello")[:1] or [0]
            payload = {
                "model": self._model_id,
                "prompt_embeds": encode_prompt_embeds(self._embedder.embed(token)),
                "max_tokens": 1,
                "temperature": 0,
            }
            status, body = await self.upstream.post_json("/v1/completions", payload)
            self.reachable = True
            if status == 200:
                self.prompt_embeds = True
            elif status in (401, 403, 404):
                logger.error(
                    "the upstream answers HTTP %s to the gateway: check --upstream-model and LETHE_UPSTREAM_API_KEY",
                    status,
                )
            elif 400 <= status < 500 and status not in (408, 429):
                self.prompt_embeds = False
                detail = body.get("error", {}).get("message") if isinstance(body, dict) else None
                logger.warning(
                    "the upstream refuses prompt_embeds (HTTP %s: %s); flagged requests follow the %r policy",
                    status,
                    str(detail)[:200],
                    self.settings.no_embeds_policy,
                )
            else:
                logger.warning("prompt_embeds probe inconclusive (HTTP %s); will retry", status)
            if self.prompt_embeds:
                logger.info("the upstream takes prompt_embeds: flagged requests are served by embedding")
            return self.prompt_embeds

    async def _embeds_supported(self) -> bool:
        if self.prompt_embeds is None:
            await self.probe_prompt_embeds()
        if self.prompt_embeds is None:
            raise errors.capabilities_unknown()
        return self.prompt_embeds

    # Requests ----------------------------------------------------------------------------------

    def _sampling(self, params: SamplingParams, stream: bool) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "model": self._model_id,
            "max_tokens": params.max_new_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
        }
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def embeddings(self, request: BackendRequest) -> torch.Tensor:
        """The prompt's embeddings with its plan applied: what local mode feeds its model."""
        embeds = request.embeds if request.embeds is not None else self._embedder.embed(request.prompt.ids)
        embeds = embeds.to(self._embedder.dtype)
        return apply_plan(embeds, request.plan) if request.plan is not None else embeds

    async def _payload(self, request: BackendRequest, stream: bool) -> dict[str, Any] | str:
        """The upstream request body, or the refusal text to answer with instead."""
        payload = self._sampling(request.params, stream)
        if request.plan is None and request.embeds is None:
            payload["prompt"] = list(request.prompt.ids)  # unflagged: the very tokens local mode feeds
            return payload
        if await self._embeds_supported():
            payload["prompt_embeds"] = encode_prompt_embeds(self.embeddings(request))
            return payload
        if request.plan is None:
            raise unsupported("prompt_embeds", "the upstream model server does not accept them")
        policy = self.settings.no_embeds_policy
        if policy == "block":
            raise APIError(403, "This request is not allowed by the server's policy.", PERMISSION, None, "blocked")
        if policy == "refuse":
            return self.settings.refusal_message
        if self._vocabulary is None:
            self._vocabulary = replacement_vocabulary(self._embedder)
        payload["prompt"] = corrupted_text(
            self._embedder, request.prompt, request.plan, request.params.seed, self._vocabulary
        )
        return payload

    def _refusal(self, text: str) -> Completion:
        return Completion(text, "stop", len(self._embedder.encode(text)))

    async def generate(self, request: BackendRequest) -> Completion:
        """One whole completion from the upstream."""
        payload = await self._payload(request, stream=False)
        if isinstance(payload, str):
            return self._refusal(payload)
        self._inflight += 1
        try:
            status, body = await self.upstream.post_json("/v1/completions", payload)
        finally:
            self._inflight -= 1
        if status != 200:
            raise errors.rejected(status)
        try:
            choice = body["choices"][0]
            usage = body.get("usage") or {}
            return Completion(
                str(choice.get("text") or ""),
                str(choice.get("finish_reason") or "stop"),
                int(usage.get("completion_tokens") or 0),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise errors.malformed() from None

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        """Text deltas relayed from the upstream's completion stream."""
        payload = await self._payload(request, stream=True)
        if isinstance(payload, str):
            refusal = self._refusal(payload)
            yield Delta(refusal.text, False, None, refusal.completion_tokens)
            yield Delta("", True, "stop", refusal.completion_tokens)
            return
        self._inflight += 1
        try:
            response = await self.upstream.open(self.upstream.build("/v1/completions", json.dumps(payload).encode()))
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise errors.rejected(response.status_code)
                async for delta in _deltas(response):
                    yield delta
            finally:
                await response.aclose()
        finally:
            self._inflight -= 1

    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], plan: InterventionPlan | None, top_n: int
    ) -> PromptLogprobs:
        """Not available: vLLM refuses ``echo``/``prompt_logprobs`` with prompt embeddings."""
        raise unsupported("echo", "prompt log-probs of this prompt are not available through the upstream")


async def _deltas(response: Any) -> AsyncIterator[Delta]:
    """Deltas of an upstream ``/v1/completions`` stream; the last carries the finish reason and token count."""
    produced = 0
    finish: str | None = None
    usage_tokens: int | None = None
    async for event in sse_events(response):
        if event is None:
            if finish is None:
                break
            yield Delta("", True, finish, usage_tokens if usage_tokens is not None else produced)
            return
        if "error" in event:
            raise errors.failed_while_generating()
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            usage_tokens = int(usage["completion_tokens"])
        for choice in event.get("choices") or []:
            text = str(choice.get("text") or "")
            if text:
                produced += 1
                yield Delta(text, False, None, produced)
            if choice.get("finish_reason"):
                finish = str(choice["finish_reason"])
    raise errors.stream_cut()
