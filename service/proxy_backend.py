"""``ProxyBackend``: the ``Backend`` of proxy mode, generating on a remote upstream (vLLM or another Lethe).

The routes hand it only what needs Lethe's own path: flagged prompts, and uploaded ``prompt_embeds``
(decoded and checked by the screening step, never forwarded as sent); unflagged requests are
forwarded byte for byte by ``service.passthrough``. A flagged prompt is embedded here with the
model's own embedding matrix, the forget sets' plan is applied by the same runtime code local
mode runs, and the tensor goes upstream as vLLM's ``prompt_embeds`` on ``/v1/completions``, in the
form the upstream's model wants (``service.upstream_embeddings``: scale, dtype). The sampling
parameters the client left out stay out, so the upstream fills them from its generation config
exactly as for forwarded requests; only a chat request's default ``max_tokens`` is written here,
by vLLM's chat rule (the context left, capped by the generation config). The answer comes back as
text deltas that the routes write in the upstream's own response shapes (``service.upstream_shapes``);
surrogate names a substituting plan put in the prompt are written back in them as local mode writes them
back. What local mode also does *while* generating (corrupting generated tokens that continue a forget
entity's mention before they are fed back) cannot be done through vLLM's API, which takes embeddings for
the prompt only.

Whether the upstream takes prompt embeddings is configured (``yes``/``no``) or probed with a
one-token request (``auto``), never assumed. Without them, flagged prompts follow the policy:
``refuse`` (the configured message), ``text`` (the corrupted token ids sent as the prompt) or
``block`` (403).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import logging
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import rewrite
from lethe.runtime.interventions import InterventionPlan, apply_plan
from lethe.runtime.model import LanguageModel, PromptLogprobs
from lethe.service import upstream_errors as errors
from lethe.service.backend import BackendRequest, Completion, Delta
from lethe.service.errors import PERMISSION, APIError, unsupported
from lethe.service.generation_defaults import GenerationDefaults
from lethe.service.protocol import ModelCard
from lethe.service.response_shapes import LETHE_SHAPES, ResponseShapes
from lethe.service.settings import GatewaySettings
from lethe.service.text_corruption import corrupt_token_ids, replacement_vocabulary
from lethe.service.upstream import UpstreamClient, sse_events
from lethe.service.upstream_embeddings import UpstreamEmbeddings
from lethe.service.upstream_errors import UpstreamError
from lethe.service.upstream_shapes import ShapeProbeError, UpstreamShapes, learn_shapes

logger = logging.getLogger("lethe.proxy")
PROBE_RETRY_S = 2.0
Payload = dict[str, Any]


class ProxyBackend:
    """Generations on an upstream OpenAI-compatible server, prompt embeddings for flagged prompts."""

    passthrough = True

    def __init__(
        self,
        settings: GatewaySettings,
        embedder: PromptEmbedder,
        upstream: UpstreamClient | None = None,
        generation_defaults: GenerationDefaults | None = None,
    ):
        if not settings.upstream_model:
            raise ValueError("proxy mode needs the upstream's model name (--upstream-model or LETHE_UPSTREAM_MODEL)")
        self.settings = settings
        self._embedder = embedder
        self.upstream = upstream or UpstreamClient(settings)
        # Raises for model families whose embedding step vLLM cannot be given (refused at start).
        self.embeddings_format = UpstreamEmbeddings.for_config(embedder.config, settings.upstream_dtype)
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self.shapes: UpstreamShapes | None = None
        self._shapes_tried_at = -PROBE_RETRY_S
        self.max_model_len: int | None = None
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
        """The upstream's ``max_model_len`` (from its model card), else ``max_position_embeddings`` of the config."""
        if self.max_model_len is not None:
            return self.max_model_len
        value = self._embedder.config.get("max_position_embeddings")
        return int(value) if value else None

    @property
    def response_shapes(self) -> ResponseShapes:
        """The upstream's own shapes once learned (until then, Lethe's)."""
        return self.shapes or LETHE_SHAPES

    def embedding_rows(self, embeds: torch.Tensor) -> torch.Tensor:
        """Uploaded ``prompt_embeds`` (the upstream's embedding-step output) as rows of the embedding matrix."""
        scale = self.embeddings_format.scale
        return embeds / scale if scale is not None else embeds

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
                if self.prompt_embeds is not None and self.shapes is not None:
                    return
            except UpstreamError as exc:
                logger.warning("upstream %s not reachable yet: %s", self.upstream.base_url, exc.code)
            await asyncio.sleep(PROBE_RETRY_S)

    async def check_upstream(self) -> None:
        """Reach the upstream, read its model card, probe ``prompt_embeds`` if not configured, learn its shapes."""
        status, body = await self.upstream.get_json("/v1/models")
        self.reachable = True
        if status == 200 and isinstance(body, dict):
            cards = [m for m in body.get("data") or [] if isinstance(m, dict)]
            card = next((m for m in cards if m.get("id") == self._model_id), None)
            if card is None:
                logger.warning("the upstream lists %s, not %r", [m.get("id") for m in cards], self._model_id)
            elif isinstance(card.get("max_model_len"), int):
                self.max_model_len = int(card["max_model_len"])
        if self.prompt_embeds is None:
            await self.probe_prompt_embeds()
        if self.shapes is None:
            await self.learn_shapes()

    async def learn_shapes(self) -> UpstreamShapes | None:
        """Learn how the upstream writes its answers, so flagged answers are written the same way (retried at most
        every ``PROBE_RETRY_S``)."""
        now = time.monotonic()
        if now - self._shapes_tried_at < PROBE_RETRY_S:
            return self.shapes
        self._shapes_tried_at = now
        try:
            self.shapes = await learn_shapes(self.upstream, self._model_id)
            logger.info("learned the upstream's response shapes")
        except ShapeProbeError as exc:
            logger.warning("could not learn the upstream's response shapes yet: %s", exc)
        return self.shapes

    async def probe_prompt_embeds(self) -> bool | None:
        """Send a one-token ``prompt_embeds`` request: 200 means supported, a 4xx means not; else unknown."""
        assert self._probe_lock is not None, "start() first"
        async with self._probe_lock:
            if self.prompt_embeds is not None:
                return self.prompt_embeds
            token = self._embedder.encode("Hello")[:1] or [0]
            payload = {"model": self._model_id, "max_tokens": 1, "temperature": 0}
            probe = self.embeddings_format.body(payload, self._embedder.embed(token))
            status, body = await self.upstream.post_json("/v1/completions", probe)
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
        if self.shapes is None:
            await self.learn_shapes()
        if self.prompt_embeds is None or self.shapes is None:
            raise errors.capabilities_unknown()
        return self.prompt_embeds

    # Requests ----------------------------------------------------------------------------------

    def _sampling(self, request: BackendRequest, rows: int, stream: bool) -> Payload:
        """The sampling parameters the client gave, as given; the others are left to the upstream."""
        params, given = request.params, request.explicit
        payload: Payload = {"model": self._model_id}
        if "max_tokens" in given:
            payload["max_tokens"] = params.max_new_tokens
        elif request.kind == "chat":  # vLLM's chat default (its completions endpoint would stop at 16)
            payload["max_tokens"] = self.generation_defaults.cap((self.context_length or rows + 1) - rows)
        if "temperature" in given:
            payload["temperature"] = params.temperature
        if "top_p" in given:
            payload["top_p"] = params.top_p
        if params.seed is not None:
            payload["seed"] = params.seed
        if params.stop:
            payload["stop"] = list(params.stop)
        if stream:
            payload["stream"] = True
            payload["stream_options"] = {"include_usage": True}
        return payload

    def embeddings(self, request: BackendRequest) -> torch.Tensor:
        """The prompt's embedding rows with its plan applied: what local mode feeds its model."""
        embeds = request.embeds if request.embeds is not None else self._embedder.embed(request.prompt.ids)
        embeds = embeds.to(self._embedder.dtype)
        if request.plan is None:
            return embeds
        # The token ids let the plan's entity steps find the forget entities' mentions in the prompt.
        ids = list(request.prompt.ids) if len(request.prompt.ids) == embeds.shape[0] else None
        return apply_plan(embeds, request.plan, ids)

    async def _body(self, request: BackendRequest, stream: bool) -> bytes | str:
        """The upstream request body, or the refusal text to answer with instead."""
        if request.plan is None and request.embeds is None:
            payload = self._sampling(request, len(request.prompt.ids), stream)
            payload["prompt"] = list(request.prompt.ids)  # the very tokens local mode feeds
            return _json(payload)
        if await self._embeds_supported():
            embeds = self.embeddings(request)
            return self.embeddings_format.body(self._sampling(request, int(embeds.shape[0]), stream), embeds)
        if request.plan is None:
            raise unsupported("prompt_embeds", "the upstream model server does not accept them")
        policy = self.settings.no_embeds_policy
        if policy == "block":
            raise APIError(403, "This request is not allowed by the server's policy.", PERMISSION, None, "blocked")
        if policy == "refuse":
            return self.settings.refusal_message
        if self._vocabulary is None:
            self._vocabulary = replacement_vocabulary(self._embedder)
        payload = self._sampling(request, len(request.prompt.ids), stream)
        # Token ids, not text: decoded text would be tokenized again upstream, with a second BOS.
        payload["prompt"] = corrupt_token_ids(request.prompt, request.plan, self._vocabulary, request.params.seed)
        return _json(payload)

    def _refusal(self, text: str) -> Completion:
        return Completion(text, "stop", len(self._embedder.encode(text)))

    async def generate(self, request: BackendRequest) -> Completion:
        """One whole completion from the upstream."""
        body = await self._body(request, stream=False)
        if isinstance(body, str):
            return self._refusal(body)
        self._inflight += 1
        try:
            status, answer = await self.upstream.post_json("/v1/completions", body)
        finally:
            self._inflight -= 1
        if status != 200:
            raise errors.rejected(status)
        try:
            choice = answer["choices"][0]
            usage = answer.get("usage") or {}
            return Completion(
                rewrite(str(choice.get("text") or ""), _rewrites(request)),
                str(choice.get("finish_reason") or "stop"),
                int(usage.get("completion_tokens") or 0),
                choice.get("stop_reason"),
            )
        except (KeyError, IndexError, TypeError, ValueError):
            raise errors.malformed() from None

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        """Text deltas relayed from the upstream's completion stream."""
        body = await self._body(request, stream=True)
        if isinstance(body, str):
            refusal = self._refusal(body)
            yield Delta(refusal.text, True, "stop", refusal.completion_tokens)
            return
        self._inflight += 1
        try:
            response = await self.upstream.open(self.upstream.build("/v1/completions", body))
            try:
                if response.status_code != 200:
                    await response.aread()
                    raise errors.rejected(response.status_code)
                async for delta in rewrite_deltas(_deltas(response), _rewrites(request)):
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


def _rewrites(request: BackendRequest) -> tuple[tuple[str, str], ...]:
    """Surrogate names the plan put in the prompt, to be written back as the names asked about."""
    return request.plan.rewrites if request.plan is not None else ()


def _pending(text: str, names: Sequence[str]) -> int:
    """How many trailing characters of ``text`` could still grow into one of ``names``."""
    return max((size for name in names for size in range(1, len(name)) if text.endswith(name[:size])), default=0)


async def rewrite_deltas(deltas: AsyncIterator[Delta], pairs: Sequence[tuple[str, str]]) -> AsyncIterator[Delta]:
    """The upstream's deltas with surrogate names written back (as local mode's decoder does), holding back a
    tail that could still become one."""
    if not pairs:
        async for delta in deltas:
            yield delta
        return
    names = [surrogate for surrogate, _ in pairs]
    received, emitted = "", 0
    async for delta in deltas:
        received += delta.text
        text = rewrite(received, pairs)
        visible = len(text) if delta.finished else len(text) - _pending(text, names)
        yield dataclasses.replace(delta, text=text[emitted:visible] if visible > emitted else "")
        emitted = max(emitted, visible)


def _json(payload: Payload) -> bytes:
    return json.dumps(payload, separators=(",", ":")).encode()


async def _deltas(response: Any) -> AsyncIterator[Delta]:
    """Deltas of an upstream ``/v1/completions`` stream.

    The chunk that carries the finish reason is held back until ``[DONE]``, so that the last delta has
    its text, finish and stop reasons and the upstream's token count together, as the upstream's own
    final chunk does.
    """
    produced = 0
    final: tuple[str, str, Any] | None = None
    usage_tokens: int | None = None
    async for event in sse_events(response):
        if event is None:
            if final is None:
                break
            text, finish, stop_reason = final
            yield Delta(text, True, finish, usage_tokens if usage_tokens is not None else produced, stop_reason)
            return
        if "error" in event:
            raise errors.failed_while_generating()
        usage = event.get("usage")
        if isinstance(usage, dict) and usage.get("completion_tokens") is not None:
            usage_tokens = int(usage["completion_tokens"])
        for choice in event.get("choices") or []:
            text = str(choice.get("text") or "")
            produced += bool(text)
            if choice.get("finish_reason"):
                final = (text, str(choice["finish_reason"]), choice.get("stop_reason"))
            elif text:
                yield Delta(text, False, None, produced)
    raise errors.stream_cut()
