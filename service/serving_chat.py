"""``POST /v1/chat/completions`` (like vLLM's ``OpenAIServingChat``)."""

from __future__ import annotations

from fastapi import Request
from fastapi.responses import Response

from lethe.service.protocol import UsageInfo
from lethe.service.serving_base import OpenAIServing, json_response


class OpenAIServingChat(OpenAIServing):
    """Chat completions, whole or streamed."""

    endpoint = "chat"

    async def create_chat_completion(self, request: Request) -> Response:
        """Screen the request, generate its one prompt, answer in chat shape."""
        screened = await self.screened(request)
        body = screened.body
        params = self.sampling(screened, self.gateway.settings.max_new_tokens)
        shaper = self.shapes.chat(body.model, body.include_usage())
        if body.stream:
            return await self.stream(screened, shaper, params, opening=[shaper.opening()])
        [completion] = await self.generate_all(screened, shaper.request_id, params)
        usage = UsageInfo.of(screened.prompts[0].prompt_tokens, completion.completion_tokens)
        return json_response(shaper.whole(completion.text, completion.finish_reason, usage))
