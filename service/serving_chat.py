"""``POST /v1/chat/completions`` (like vLLM's ``OpenAIServingChat``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from lethe.service.protocol import UsageInfo
from lethe.service.response_shapes import Choice
from lethe.service.serving_base import OpenAIServing


class OpenAIServingChat(OpenAIServing):
    """Chat completions, whole or streamed."""

    endpoint = "chat"

    async def create_chat_completion(self, request: Request) -> Response:
        """Screen the request, generate its one prompt, answer in chat shape."""
        screened = await self.screened(request)
        params = self.sampling(screened, self.gateway.settings.max_new_tokens)
        shaper = self.shaper(request, screened)
        if screened.body.stream:
            return await self.stream(screened, shaper, params, opening=shaper.opening())
        [completion] = await self.generate_all(screened, shaper.request_id, params)
        usage = UsageInfo.of(screened.prompts[0].prompt_tokens, completion.completion_tokens)
        choice = Choice(completion.text, completion.finish_reason, completion.stop_reason)
        return self.whole(shaper, [choice], usage)
