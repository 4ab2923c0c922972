"""``POST /v1/completions`` (like vLLM's ``OpenAIServingCompletion``).

Text, token-id and embedding prompts, and prompt log-probs (``echo``) for evaluation harnesses.
"""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from lethe.service.protocol import CompletionLogProbs, CompletionRequest, UsageInfo
from lethe.service.response_shapes import Choice, Shaper
from lethe.service.screening_step import ScreenedPrompt, ScreenedRequest
from lethe.service.serving_base import OpenAIServing, gather

DEFAULT_COMPLETION_MAX_TOKENS = 16


class OpenAIServingCompletion(OpenAIServing):
    """Legacy completions, whole or streamed, and prompt log-probs for evaluation harnesses."""

    endpoint = "completions"

    async def create_completion(self, request: Request) -> Response:
        """Screen the request, generate every prompt (or score it), answer in completion shape."""
        screened = await self.screened(request)
        body = screened.body
        assert isinstance(body, CompletionRequest)
        params = self.sampling(screened, DEFAULT_COMPLETION_MAX_TOKENS)
        shaper = self.shaper(request, screened)
        if body.logprobs is not None:
            return await self._echo_logprobs(screened, shaper)
        echoed = [self._echo(body, item) for item in screened.prompts]
        if body.stream:
            return await self.stream(screened, shaper, params, opening=shaper.delta(echoed[0]))
        results = await self.generate_all(screened, shaper.request_id, params)
        choices = [
            Choice(prefix + result.text, result.finish_reason, result.stop_reason)
            for prefix, result in zip(echoed, results, strict=True)
        ]
        usage = UsageInfo.of(
            sum(item.prompt_tokens for item in screened.prompts), sum(r.completion_tokens for r in results)
        )
        return self.whole(shaper, choices, usage)

    @staticmethod
    def _echo(body: CompletionRequest, item: ScreenedPrompt) -> str:
        return item.rendered.text if body.echo else ""

    async def _echo_logprobs(self, screened: ScreenedRequest, shaper: Shaper) -> Response:
        """Prompt log-probs in the legacy shape (``max_tokens=0``, ``echo=true``), as harnesses use for scoring."""
        body = screened.body
        assert isinstance(body, CompletionRequest)
        top_n = int(body.logprobs or 0)
        backend = self.gateway.backend
        scoring = gather([backend.prompt_logprobs(item.rendered.ids, item.plan, top_n) for item in screened.prompts])
        scored_all = await self.audited(screened, shaper.request_id, scoring, tokens=lambda _: 0)
        embedder = backend.embedder
        choices = []
        for item, scored in zip(screened.prompts, scored_all, strict=True):
            top: list[dict[str, float] | None] = []
            for entry in scored.top_logprobs:
                if entry is None:
                    top.append(None if not top else {})
                    continue
                merged: dict[str, float] = {}
                for string, value in zip(embedder.token_strings(list(entry)), entry.values(), strict=True):
                    merged[string] = max(value, merged.get(string, float("-inf")))
                top.append(merged)
            logprobs = CompletionLogProbs(
                tokens=embedder.token_strings(item.rendered.ids),
                token_logprobs=scored.token_logprobs,
                top_logprobs=top,
                text_offset=[start for start, _ in item.rendered.offsets],
            )
            choices.append(Choice(item.rendered.text, "length", logprobs=logprobs))
        usage = UsageInfo.of(sum(item.prompt_tokens for item in screened.prompts), 0)
        return self.whole(shaper, choices, usage)
