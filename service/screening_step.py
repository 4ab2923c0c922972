"""The screening step every inference request takes once, in both modes: auth, parse, model, classify, render, decide.

Local mode's routes and proxy mode's fast path (``service.proxy_fast_path``) both call
``ScreeningStep.screen``; in proxy mode the fast path hands its ``ScreenedRequest`` down to the
routes through the ASGI scope, so a flagged request is never screened twice.

- auth and parse: the bearer key, then ``RequestRules`` (the same rules for every request);
- model check: the one place that answers ``model_not_found``;
- classify: the classifiers read what a prompt says (the messages' text, the prompt text, the
  text of token ids, the nearest tokens of uploaded embeddings); with no forget set enabled
  nothing is classified;
- render: the chat template and tokenizer run when the backend needs the tokens (local mode:
  every prompt; proxy mode: only flagged prompts and uploaded embeddings, the rest is forwarded
  as sent);
- decide: each flagging forget set's plan, composed (``runtime.plans``).

A prompt that no forget set flags gets no plan, so the backend serves it exactly as the base
model would. CPU work runs on the step's thread pool, off the event loop, except for small
bodies in proxy mode (classifying a short prompt costs less than a hop to a thread and back).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import torch
from starlette.requests import Request

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.screening import ForgetSetScreen, Verdict
from lethe.service.audit import AuditHasher
from lethe.service.auth import KeyChecker
from lethe.service.backend import Backend, BackendRequest
from lethe.service.errors import APIError, bad_request
from lethe.service.metrics import GatewayMetrics
from lethe.service.prompt_embeds import check_token_rows, decode_prompt_embeds, nearest_tokens, prompt_from_ids
from lethe.service.protocol import ChatCompletionRequest, CompletionRequest, InferenceRequest
from lethe.service.request_rules import Endpoint, RequestRules, empty_prompt, prompt_items

if TYPE_CHECKING:
    from lethe.classifier import ScopeFlag

T = TypeVar("T")
# Proxy mode screens bodies up to this size on the event loop (a short prompt takes about 0.1 ms, less
# than handing it to a worker thread and back); larger ones go to the pool so the loop stays free.
INLINE_SCREEN_BYTES = 16 * 1024


@dataclass
class ScreenedPrompt:
    """One prompt of a request after screening: what the classifiers read, their flags, the render, the plan.

    Exactly one of ``messages`` (chat), ``text``, ``ids`` or ``embeds`` says what the client sent.
    """

    messages: list[dict[str, str]] | None = None
    text: str | None = None
    ids: list[int] | None = None
    embeds: torch.Tensor | None = None
    flags: list[ScopeFlag] = field(default_factory=list)
    prompt: TemplatedPrompt | None = None
    verdict: Verdict = field(default_factory=Verdict)

    @property
    def flagged(self) -> bool:
        """Whether any forget set claimed this prompt."""
        return bool(self.flags)

    @property
    def rendered(self) -> TemplatedPrompt:
        """The rendered prompt (only for prompts the backend serves itself)."""
        assert self.prompt is not None, "this prompt was forwarded, not rendered"
        return self.prompt

    @property
    def prompt_tokens(self) -> int:
        """Tokens of the client's prompt (soft-prompt positions a plan adds are not counted)."""
        return int(self.embeds.shape[0]) if self.embeds is not None else len(self.rendered.ids)

    @property
    def plan(self) -> InterventionPlan | None:
        """The plan to apply: none unless a forget set flagged this prompt."""
        return self.verdict.plan if self.verdict.flagged else None

    def audit_digest(self, hasher: AuditHasher) -> dict[str, str]:
        """What the audit log keeps of the prompt: ``prompt_hmac`` of the rendered text, or ``embeds_hmac``."""
        if self.embeds is not None:
            return {"embeds_hmac": hasher.tensor(self.embeds)}
        return {"prompt_hmac": hasher.text(self.rendered.text)}


@dataclass
class ScreenedRequest:
    """A validated request with its screened prompts, ready to forward (proxy, unflagged) or to serve."""

    endpoint: Endpoint
    body: InferenceRequest
    prompts: list[ScreenedPrompt]
    started: float

    @property
    def flagged(self) -> bool:
        """Whether any prompt was flagged."""
        return any(item.flagged for item in self.prompts)

    @property
    def forget_set_ids(self) -> list[str]:
        """The flagging forget sets, each once, in order."""
        return list(dict.fromkeys(f.forget_set_id for item in self.prompts for f in item.flags))

    @property
    def forwardable(self) -> bool:
        """Whether proxy mode may send the client's body upstream unchanged: unflagged, and no uploaded tensor."""
        return not self.flagged and all(item.embeds is None for item in self.prompts)

    def elapsed(self) -> float:
        """Seconds since the request's screening began."""
        return time.perf_counter() - self.started

    @property
    def explicit(self) -> frozenset[str]:
        """The sampling parameters the client set (the others take the model's generation defaults)."""
        body = self.body
        given = {"max_tokens": body.requested_max_tokens(), "temperature": body.temperature, "top_p": body.top_p}
        return frozenset(name for name, value in given.items() if value is not None)

    def backend_requests(self, params: SamplingParams) -> list[BackendRequest]:
        """One backend request per prompt: the rendered prompt (or uploaded rows), its plan, the parameters."""
        return [
            BackendRequest(item.rendered, params, item.plan, item.embeds, self.explicit, self.endpoint)
            for item in self.prompts
        ]


@dataclass
class ScreeningStep:
    """Authenticates, validates, classifies, renders and plans each inference request, once."""

    backend: Backend
    screen: ForgetSetScreen
    rules: RequestRules
    keys: KeyChecker
    metrics: GatewayMetrics
    max_prompt_tokens: int
    threads: int = 2

    def __post_init__(self) -> None:
        # Local mode renders every prompt (its model needs the tokens); proxy mode forwards unflagged ones as sent.
        self.render_all = not self.backend.passthrough
        self._pool = ThreadPoolExecutor(max_workers=max(1, self.threads), thread_name_prefix="lethe-screen")

    @property
    def embedder(self) -> PromptEmbedder:
        """The served model's tokenizer, chat template and embedding matrix."""
        return self.backend.embedder

    def close(self) -> None:
        """Stop the thread pool."""
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def run(self, function: Callable[..., T], *args: Any) -> T:
        """Run CPU-bound work on the step's thread pool."""
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)

    # The step ------------------------------------------------------------------------------------

    async def screen_request(self, request: Request, raw: bytes, endpoint: Endpoint) -> ScreenedRequest:
        """Auth, parse, model check, then classify, render and decide every prompt of the request."""
        started = time.perf_counter()
        self.keys.check_inference(request)
        body = self.rules.parse(raw, endpoint)
        self.check_model(body.model)
        self.rules.check(body)
        if self.render_all or len(raw) > INLINE_SCREEN_BYTES:
            prompts = await self.run(self.screen_prompts, body)
        else:
            prompts = self.screen_prompts(body)
        screened = ScreenedRequest(endpoint, body, prompts, started)
        seconds = screened.elapsed() / len(prompts)
        for item in prompts:
            self.metrics.observe_routing(endpoint, [f.forget_set_id for f in item.flags], seconds)
        return screened

    def check_model(self, model: str) -> None:
        """404 unless ``model`` is served here (the requested name is never echoed)."""
        if model == self.backend.model_id:
            return
        served = [card.id for card in self.backend.models()]
        if model not in served:
            message = f"The requested model does not exist; this server serves {', '.join(served)}."
            raise APIError(404, message, "invalid_request_error", "model", "model_not_found")

    def screen_prompts(self, body: InferenceRequest) -> list[ScreenedPrompt]:
        """Classify, render and decide each prompt of a validated request."""
        if isinstance(body, ChatCompletionRequest):
            items = [ScreenedPrompt(messages=[m.as_template_message() for m in body.messages])]
        else:
            items = [self._completion_prompt(body, item) for item in prompt_items(body)]
        for item in items:  # lengths are checked before anything is classified
            if self.render_all or item.embeds is not None:
                self._render(item)
        for item in items:
            self._classify(item)
            if item.flagged or self.render_all or item.embeds is not None:
                self._render(item)
                item.verdict = self._decide(item, body.seed or 0)
        return items

    def _completion_prompt(self, body: CompletionRequest, item: str | list[int]) -> ScreenedPrompt:
        if body.prompt_embeds is not None:
            assert isinstance(item, str)
            decoded = decode_prompt_embeds(item, self.embedder.hidden_size, self._embeds_limit(), self.embedder.dtype)
            embeds = self.backend.embedding_rows(decoded)
            ids, ratios = nearest_tokens(self.embedder, embeds)
            if not self.rules.any_embedding_rows:
                check_token_rows(ratios)
            return ScreenedPrompt(embeds=embeds, prompt=prompt_from_ids(self.embedder, ids))
        if isinstance(item, str):
            return ScreenedPrompt(text=item)
        return ScreenedPrompt(ids=item, prompt=prompt_from_ids(self.embedder, item))

    def _embeds_limit(self) -> int:
        if self.render_all:
            return self.max_prompt_tokens
        return self.backend.context_length or self.max_prompt_tokens  # proxy mode: the upstream's limit

    def _classify(self, item: ScreenedPrompt) -> None:
        if not self.screen.active:
            return
        self.metrics.classifications.inc()
        if item.messages is not None:
            item.flags = self.screen.classify(item.messages)
        else:
            item.flags = self.screen.classify(None, item.text if item.text is not None else item.rendered.text)

    def _render(self, item: ScreenedPrompt) -> None:
        if item.prompt is None:
            item.prompt = self._template(item)
        self._check_length(item)

    def _template(self, item: ScreenedPrompt) -> TemplatedPrompt:
        """The chat template applied to the messages, or the text tokenized: the one render of a prompt."""
        if item.messages is not None:
            return self.embedder.chat_prompt(item.messages)
        return self.embedder.text_prompt(item.text or "")

    def _check_length(self, item: ScreenedPrompt) -> None:
        """Local mode's prompt limit (proxy mode leaves prompt length to the upstream, flagged or not)."""
        param = "messages" if item.messages is not None else "prompt_embeds" if item.embeds is not None else "prompt"
        tokens = item.prompt_tokens
        if tokens < 1:
            raise empty_prompt(param)
        if self.render_all and tokens > self.max_prompt_tokens:
            raise bad_request(
                f"The prompt has {tokens} tokens; this server allows at most {self.max_prompt_tokens}.",
                param,
                "context_length_exceeded",
            )

    def _decide(self, item: ScreenedPrompt, seed: int) -> Verdict:
        """The composed plan of every forget set that flagged the rendered prompt (classified already)."""
        return self.screen.decide(item.flags, item.rendered, seed, self.embedder)

    # The operator's view ---------------------------------------------------------------------------

    async def explain(self, messages: Sequence[dict[str, str]] | None, text: str | None) -> dict[str, Any]:
        """Operator view of screening: each flagging forget set, its score and token mask over the rendered prompt."""
        return await self.run(self._explain, messages, text)

    def _explain(self, messages: Sequence[dict[str, str]] | None, text: str | None) -> dict[str, Any]:
        from lethe.runtime.plans import intervention_mask

        item = ScreenedPrompt(messages=list(messages)) if messages is not None else ScreenedPrompt(text=text or "")
        prompt = self._template(item)
        if len(prompt.ids) > self.max_prompt_tokens:
            raise bad_request(
                "The prompt is longer than the server's prompt-token limit.", None, "context_length_exceeded"
            )
        self._classify(item)
        flagged = [
            {
                "forget_set_id": flag.forget_set_id,
                "score": float(flag.score),
                "token_mask": [int(m) for m in intervention_mask(prompt, flag.spans)],
            }
            for flag in item.flags
        ]
        return {"flagged": flagged, "tokens": self.embedder.token_strings(prompt.ids)}
