"""From a parsed OpenAI request to routed prompts: render, tokenize, check limits, classify, plan.

This layer uses only the backend's ``PromptEmbedder`` and the ``ForgetSetScreen``, so it is the
same for a local model and a remote upstream. CPU work (tokenizing, the classifiers, decoding
uploaded embeddings) runs on a thread pool, off the event loop.

A request that no forget set flags gets no plan at all, so the backend serves it exactly as the
base model would. Flagged-ness never shows in a response: token counts are those of the
client's prompt (soft-prompt positions are not counted), and limits are checked on them too.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, TypeVar

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import SamplingParams
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.screening import ForgetSetScreen, Verdict
from lethe.service.audit import AuditLog, sha256_tensor, sha256_text, sha256_tokens
from lethe.service.backend import Backend, BackendRequest
from lethe.service.errors import APIError, bad_request
from lethe.service.metrics import GatewayMetrics
from lethe.service.prompt_embeds import decode_prompt_embeds, nearest_token_ids, prompt_from_ids
from lethe.service.schemas import MAX_PROMPTS_PER_REQUEST, ChatCompletionRequest, ChatMessage, CompletionRequest
from lethe.service.settings import GatewaySettings

T = TypeVar("T")
DEFAULT_COMPLETION_MAX_TOKENS = 16


@dataclass
class RoutedPrompt:
    """One prompt ready for the backend, with its routing verdict and audit hash."""

    prompt: TemplatedPrompt
    verdict: Verdict
    sha256: str
    embeds: torch.Tensor | None = None

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the client's prompt."""
        return len(self.prompt.ids) if self.embeds is None else int(self.embeds.shape[0])

    def request(self, params: SamplingParams) -> BackendRequest:
        """The backend request: no plan unless a forget set flagged this prompt."""
        plan = self.verdict.plan if self.verdict.flagged else None
        return BackendRequest(self.prompt, params, plan, self.embeds)


class InferencePipeline:
    """Validates limits and routes prompts through the enabled forget sets."""

    def __init__(
        self,
        backend: Backend,
        screen: ForgetSetScreen,
        settings: GatewaySettings,
        metrics: GatewayMetrics,
        audit: AuditLog,
        threads: int = 2,
    ):
        self.backend = backend
        self.screen = screen
        self.settings = settings
        self.metrics = metrics
        self.audit = audit
        self._pool = ThreadPoolExecutor(max_workers=max(1, threads), thread_name_prefix="lethe-route")

    @property
    def embedder(self) -> PromptEmbedder:
        """The served model's embedder."""
        return self.backend.embedder

    def close(self) -> None:
        """Stop the routing pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound work on the routing pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    # Checks ------------------------------------------------------------------------------------

    def check_model(self, model: str) -> None:
        """404 unless ``model`` is served here."""
        served = [card.id for card in self.backend.models()]
        if model not in served:
            # The requested name is not quoted: error messages never echo request content.
            message = f"The requested model does not exist; this server serves {', '.join(served)}."
            raise APIError(404, message, "invalid_request_error", "model", "model_not_found")

    def check_max_tokens(self, max_tokens: int | None) -> None:
        """400 when an explicit ``max_tokens`` exceeds the server's limit (checked before any work)."""
        limit = self.settings.max_new_tokens
        if max_tokens is not None and max_tokens > limit:
            raise bad_request(
                f"'max_tokens' is {max_tokens}; this server allows at most {limit}.",
                "max_tokens",
                "max_tokens_exceeded",
            )

    def sampling(
        self,
        request: ChatCompletionRequest | CompletionRequest,
        max_tokens: int | None,
        default_max_tokens: int,
        routed: Sequence[RoutedPrompt],
    ) -> SamplingParams:
        """Sampling parameters; a default ``max_tokens`` shrinks to the context left after the longest prompt."""
        self.check_max_tokens(max_tokens)
        wanted = min(default_max_tokens, self.settings.max_new_tokens) if max_tokens is None else max_tokens
        context = self.backend.context_length
        if context is not None:
            longest = max(item.prompt_tokens for item in routed)
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
            temperature=1.0 if request.temperature is None else float(request.temperature),
            top_p=1.0 if request.top_p is None else float(request.top_p),
            seed=request.seed,
            stop=request.stop_sequences(),
        )

    def _check_length(self, tokens: int, param: str) -> None:
        if tokens < 1:
            raise bad_request(f"'{param}' is empty.", param, "empty_prompt")
        if tokens > self.settings.max_prompt_tokens:
            raise bad_request(
                f"The prompt has {tokens} tokens; this server allows at most {self.settings.max_prompt_tokens}.",
                param,
                "context_length_exceeded",
            )

    # Routing -----------------------------------------------------------------------------------

    def _route(
        self,
        prompt: TemplatedPrompt,
        messages: list[dict[str, str]] | None,
        seed: int | None,
        embeds: torch.Tensor | None,
        sha256: str,
    ) -> RoutedPrompt:
        verdict = self.screen.screen(prompt, messages, request_seed=seed or 0, embed=self.embedder.embed)
        return RoutedPrompt(prompt, verdict, sha256, embeds)

    def _route_chat(self, messages: Sequence[ChatMessage], seed: int | None) -> RoutedPrompt:
        rendered = [m.as_template_message() for m in messages]
        prompt = self.embedder.chat_prompt(rendered)
        self._check_length(len(prompt.ids), "messages")
        return self._route(prompt, rendered, seed, None, sha256_text(prompt.text))

    def _route_text(self, text: str, seed: int | None) -> RoutedPrompt:
        prompt = self.embedder.text_prompt(text)
        self._check_length(len(prompt.ids), "prompt")
        return self._route(prompt, None, seed, None, sha256_text(text))

    def _route_ids(self, ids: Sequence[int], seed: int | None) -> RoutedPrompt:
        self._check_length(len(ids), "prompt")
        vocab = self.embedder.vocab_size
        if any(not 0 <= i < vocab for i in ids):
            raise bad_request(f"Token ids in 'prompt' must be in [0, {vocab}).", "prompt", "invalid_token_id")
        prompt = prompt_from_ids(self.embedder, list(ids))
        return self._route(prompt, None, seed, None, sha256_tokens(list(ids)))

    def _route_embeds(self, encoded: str, seed: int | None) -> RoutedPrompt:
        embeds = decode_prompt_embeds(
            encoded, self.embedder.hidden_size, self.settings.max_prompt_tokens, self.embedder.dtype
        )
        self._check_length(int(embeds.shape[0]), "prompt_embeds")
        prompt = prompt_from_ids(self.embedder, nearest_token_ids(self.embedder, embeds))
        return self._route(prompt, None, seed, embeds, sha256_tensor(embeds))

    async def route_chat(self, request: ChatCompletionRequest) -> RoutedPrompt:
        """Render and route a chat request."""
        started = time.perf_counter()
        routed = await self.run(self._route_chat, request.messages, request.seed)
        self.metrics.observe_routing("chat", routed.verdict.forget_set_ids, time.perf_counter() - started)
        return routed

    async def route_completion(self, request: CompletionRequest) -> list[RoutedPrompt]:
        """Tokenize (or decode embeddings of) every prompt of a completions request and route each."""
        started = time.perf_counter()
        routed = await self.run(self._route_completion, request)
        for item in routed:
            self.metrics.observe_routing(
                "completions", item.verdict.forget_set_ids, (time.perf_counter() - started) / len(routed)
            )
        return routed

    def _route_completion(self, request: CompletionRequest) -> list[RoutedPrompt]:
        seed = request.seed
        if request.prompt_embeds is not None:
            items = [request.prompt_embeds] if isinstance(request.prompt_embeds, str) else request.prompt_embeds
            _check_count(len(items), "prompt_embeds")
            return [self._route_embeds(item, seed) for item in items]
        prompt = request.prompt
        if isinstance(prompt, str):
            return [self._route_text(prompt, seed)]
        assert prompt is not None
        if not prompt:
            raise bad_request("'prompt' is empty.", "prompt", "empty_prompt")
        if all(isinstance(p, int) for p in prompt):
            return [self._route_ids(prompt, seed)]  # type: ignore[arg-type]
        _check_count(len(prompt), "prompt")
        if all(isinstance(p, str) for p in prompt):
            return [self._route_text(p, seed) for p in prompt]  # type: ignore[arg-type]
        return [self._route_ids(p, seed) for p in prompt]  # type: ignore[arg-type]

    async def classify(self, messages: Sequence[ChatMessage] | None, text: str | None) -> dict[str, Any]:
        """Operator view of routing: each flagging forget set, its score and token mask over the rendered prompt."""
        return await self.run(self._classify, messages, text)

    def _classify(self, messages: Sequence[ChatMessage] | None, text: str | None) -> dict[str, Any]:
        from lethe.runtime.plans import intervention_mask

        if messages is not None:
            rendered = [m.as_template_message() for m in messages]
            prompt = self.embedder.chat_prompt(rendered)
            flags = self.screen.classify(rendered)
        else:
            prompt = self.embedder.text_prompt(text or "")
            flags = self.screen.classify(None, text or "")
        if len(prompt.ids) > self.settings.max_prompt_tokens:
            raise bad_request(
                "The prompt is longer than the server's prompt-token limit.", None, "context_length_exceeded"
            )
        flagged = [
            {
                "forget_set_id": flag.forget_set_id,
                "score": float(flag.score),
                "token_mask": [int(m) for m in intervention_mask(prompt, flag.spans)],
            }
            for flag in flags
        ]
        return {"flagged": flagged, "tokens": self.embedder.token_strings(prompt.ids)}

    def audit_request(
        self,
        route: str,
        request_id: str,
        routed: Sequence[RoutedPrompt],
        latency_s: float,
        status: int,
        completion_tokens: Sequence[int],
        stream: bool,
    ) -> None:
        """One audit line per prompt: hash, flagging forget sets, token counts, latency. Never the text."""
        for index, item in enumerate(routed):
            self.audit.record(
                "inference",
                route=route,
                request_id=request_id,
                model=self.backend.model_id,
                choice=index,
                prompt_sha256=item.sha256,
                forget_sets=item.verdict.forget_set_ids,
                prompt_tokens=item.prompt_tokens,
                completion_tokens=completion_tokens[index] if index < len(completion_tokens) else 0,
                latency_ms=round(latency_s * 1000, 2),
                status=status,
                stream=stream,
            )
            self.metrics.prompt_tokens.inc(item.prompt_tokens)
        self.metrics.completion_tokens.inc(sum(completion_tokens))
        flagged = "true" if any(item.verdict.flagged for item in routed) else "false"
        self.metrics.generation_latency.labels(flagged).observe(latency_s)


def _check_count(count: int, param: str) -> None:
    if count > MAX_PROMPTS_PER_REQUEST:
        raise bad_request(f"At most {MAX_PROMPTS_PER_REQUEST} prompts per request.", param, "too_many_prompts")
    if count < 1:
        raise bad_request(f"'{param}' is empty.", param, "empty_prompt")
