"""``POST /v1/completions`` (like vLLM's ``OpenAIServingCompletion``).

Text, token-id and embedding prompts; ``echo`` and ``logprobs`` in every combination the legacy
OpenAI API and vLLM take, as evaluation harnesses use them (lm-evaluation-harness scores with
``max_tokens=1, echo=true, logprobs=1``): the echoed prompt's tokens first (the first one has no
log-prob), then the generated ones, each with its log-probability under the served model (through
the forget sets' plan for a flagged prompt) and ``top_logprobs`` of up to ``logprobs + 1`` entries:
the ``logprobs`` likeliest tokens and the token actually there. An end-of-sequence token that ended a
generation is listed too (its text is empty in ``text``), as vLLM lists it.

Log-probs are the model's own (before temperature and top-p), as vLLM reports them by default; they are
computed by scoring the prompt and the generated tokens together once generation is done, so a
stream with ``logprobs`` sends its text once the completion is scored.
"""

from __future__ import annotations

from collections.abc import Sequence

from fastapi import Request
from fastapi.responses import Response

from lethe.runtime.model import PromptLogprobs
from lethe.service.backend import Completion
from lethe.service.protocol import CompletionLogProbs, CompletionRequest, UsageInfo
from lethe.service.response_shapes import Choice, Shaper
from lethe.service.screening_step import ScreenedPrompt, ScreenedRequest
from lethe.service.serving_base import DONE, OpenAIServing, gather, sse

DEFAULT_COMPLETION_MAX_TOKENS = 16


class OpenAIServingCompletion(OpenAIServing):
    """Legacy completions, whole or streamed, with echo and log-probs."""

    endpoint = "completions"

    async def create_completion(self, request: Request) -> Response:
        """Screen the request, generate every prompt, score it if asked, answer in completion shape."""
        screened = await self.screened(request)
        body = screened.body
        assert isinstance(body, CompletionRequest)
        params = self.sampling(screened, DEFAULT_COMPLETION_MAX_TOKENS)
        shaper = self.shaper(request, screened)
        echoed = [self._echo(body, item) for item in screened.prompts]
        if body.stream and body.logprobs is None:
            return await self.stream(screened, shaper, params, opening=shaper.delta(echoed[0]))
        if params.max_new_tokens > 0:
            results = await self.generate_all(screened, shaper.request_id, params)
        else:
            results = [Completion("", "length", 0) for _ in screened.prompts]
            self.gateway.inference_audit.served(screened, shaper.request_id, 200, [0] * len(results), False)
        logprobs: list[CompletionLogProbs | None] = [None] * len(results)
        if body.logprobs is not None:
            logprobs = await self._logprobs(screened, results, int(body.logprobs), bool(body.echo))
        choices = [
            Choice(prefix + result.text, result.finish_reason, result.stop_reason, logprobs=scored)
            for prefix, result, scored in zip(echoed, results, logprobs, strict=True)
        ]
        usage = UsageInfo.of(
            sum(item.prompt_tokens for item in screened.prompts), sum(r.completion_tokens for r in results)
        )
        if body.stream:
            return self.replayed_stream(shaper, choices, usage)
        return self.whole(shaper, choices, usage)

    @staticmethod
    def _echo(body: CompletionRequest, item: ScreenedPrompt) -> str:
        return item.rendered.text if body.echo else ""

    def replayed_stream(self, shaper: Shaper, choices: Sequence[Choice], usage: UsageInfo) -> Response:
        """An already scored completion as a stream: its text (with its log-probs) in one chunk, the finish, usage."""
        [choice] = choices
        chunks = [*shaper.delta(choice.text, logprobs=choice.logprobs), *shaper.delta("", finish=choice)]
        if (tail := shaper.usage(usage)) is not None:
            chunks.append(tail)
        payload = b"".join(sse(chunk) for chunk in chunks) + DONE
        return Response(payload, media_type="text/event-stream", headers=self.shapes.headers(True))

    async def _logprobs(
        self, screened: ScreenedRequest, results: list[Completion], top_n: int, echo: bool
    ) -> list[CompletionLogProbs | None]:
        """Each prompt and its generated tokens scored together (one pass each, on the scoring pool)."""
        backend = self.gateway.backend
        eos = sorted(backend.embedder.eos_token_ids())
        sequences = []
        for item, result in zip(screened.prompts, results, strict=True):
            ended = [eos[0]] if result.ended_by_eos and eos else []
            sequences.append([*item.rendered.ids, *result.token_ids, *ended])
        scoring = [
            backend.prompt_logprobs(ids, item.plan, top_n)
            for ids, item in zip(sequences, screened.prompts, strict=True)
        ]
        scored_all = await gather(scoring)
        out: list[CompletionLogProbs | None] = []
        for item, result, scored in zip(screened.prompts, results, scored_all, strict=True):
            if result.ended_by_eos:
                _settle_eos(scored, set(eos))
            start = 0 if echo else len(item.rendered.ids)
            out.append(self._legacy(scored, start))
        return out

    def _legacy(self, scored: PromptLogprobs, start: int) -> CompletionLogProbs:
        """Positions ``start`` on in the legacy shape: token strings, log-probs, top entries with the chosen token,
        offsets into the returned text."""
        embedder = self.gateway.backend.embedder
        ids = scored.tokens[start:]
        strings = embedder.token_strings(ids)
        top: list[dict[str, float] | None] = []
        for token, logprob, entry in zip(ids, scored.token_logprobs[start:], scored.top_logprobs[start:], strict=True):
            if logprob is None:
                top.append(None)
                continue
            candidates = {**(entry or {}), token: logprob}
            merged: dict[str, float] = {}
            for string, value in zip(embedder.token_strings(list(candidates)), candidates.values(), strict=True):
                merged[string] = max(value, merged.get(string, float("-inf")))
            top.append(merged)
        offsets, at = [], 0
        for string in strings:
            offsets.append(at)
            at += len(string)
        return CompletionLogProbs(
            tokens=strings, token_logprobs=scored.token_logprobs[start:], top_logprobs=top, text_offset=offsets
        )


def _settle_eos(scored: PromptLogprobs, eos: set[int]) -> None:
    """The end-of-sequence token that ended a generation was not reported; it was scored as the model's first
    one. Where another end-of-sequence token is likelier at that position (so sampling most likely drew it), that
    one is listed."""
    last = scored.top_logprobs[-1] or {}
    likelier = [(value, token) for token, value in last.items() if token in eos]
    if likelier:
        value, token = max(likelier)
        current = scored.token_logprobs[-1]
        if current is None or value > current:
            scored.tokens[-1] = token
            scored.token_logprobs[-1] = value
