"""vLLM's tokenizer endpoints (``OpenAIServingTokenization``): ``POST /tokenize``, ``POST /detokenize`` and
``GET /tokenizer_info``, behind the inference key.

Clients such as lm-evaluation-harness (``tokenizer_backend=remote``, or ``auto``, which probes
``/tokenizer_info``) count and split prompts with the served model's own tokenizer through them, so
they need no local copy of it. The served tokenizer is the one generation uses: the same ids, the same
chat template. Nothing here is classified or generated.
"""

from __future__ import annotations

import json
from typing import Any

from fastapi import Request
from fastapi.responses import Response

from lethe.service.errors import bad_request
from lethe.service.gateway import Gateway
from lethe.service.protocol import (
    DetokenizeRequest,
    DetokenizeResponse,
    TokenizeRequest,
    TokenizeResponse,
    TokenizerInfoResponse,
)
from lethe.service.request_rules import parse_body
from lethe.service.serving_base import json_response

# Fields of a tokenizer's ``init_kwargs`` that name files on this server: never sent.
_PRIVATE_FIELDS = ("vocab_file", "merges_file", "tokenizer_file", "name_or_path", "special_tokens_map_file")


class OpenAIServingTokenization:
    """Tokenize, detokenize and describe the served model's tokenizer."""

    def __init__(self, gateway: Gateway):
        self.gateway = gateway

    @property
    def _tokenizer(self) -> Any:
        return self.gateway.backend.embedder.tokenizer

    def _check(self, request: Request, model: str | None) -> None:
        self.gateway.keys.check_inference(request)
        if model is not None:
            self.gateway.screening.check_model(model)

    async def create_tokenize(self, request: Request) -> Response:
        """The token ids of a prompt (special tokens by default) or of a chat rendered by the chat template."""
        body = parse_body(await request.body(), TokenizeRequest)
        self._check(request, body.model)
        ids = await self.gateway.screening.run(self._tokenize, body)
        strings = self._tokenizer.convert_ids_to_tokens(ids) if body.return_token_strs else None
        context = self.gateway.backend.context_length or self.gateway.settings.max_prompt_tokens
        answer = TokenizeResponse(count=len(ids), max_model_len=context, tokens=ids, token_strs=strings)
        return json_response(answer.json_bytes())

    def _tokenize(self, body: TokenizeRequest) -> list[int]:
        embedder = self.gateway.backend.embedder
        if body.messages is not None:
            messages = [m.as_template_message() for m in body.messages]
            if body.continue_final_message:
                if not embedder.has_chat_template:
                    raise bad_request("This model has no chat template to continue.", "continue_final_message")
                text = self._tokenizer.apply_chat_template(
                    messages, tokenize=False, add_generation_prompt=False, continue_final_message=True
                )
            else:
                text = embedder.render_chat(messages, add_generation_prompt=body.add_generation_prompt)
            special = bool(body.add_special_tokens)
        else:
            text = body.prompt or ""
            special = body.add_special_tokens is not False
        return [int(i) for i in self._tokenizer(text, add_special_tokens=special)["input_ids"]]

    async def create_detokenize(self, request: Request) -> Response:
        """The text of token ids (special tokens kept, as vLLM decodes them)."""
        body = parse_body(await request.body(), DetokenizeRequest)
        self._check(request, body.model)
        vocab = self.gateway.backend.embedder.vocab_size
        if any(token >= vocab for token in body.tokens):
            raise bad_request(f"Token ids must be in [0, {vocab}).", "tokens", "invalid_token_id")
        text = await self.gateway.screening.run(self._tokenizer.decode, body.tokens)
        return json_response(DetokenizeResponse(prompt=text).json_bytes())

    async def get_tokenizer_info(self, request: Request) -> Response:
        """The tokenizer's configuration: special tokens, chat template, class (file paths left out)."""
        self._check(request, None)
        return json_response(TokenizerInfoResponse(**tokenizer_info(self._tokenizer)).json_bytes())


def tokenizer_info(tokenizer: Any) -> dict[str, Any]:
    """What vLLM's ``/tokenizer_info`` gives: the tokenizer's init arguments made JSON (special tokens as their
    text), its class name and chat template."""
    config = {k: v for k, v in dict(getattr(tokenizer, "init_kwargs", None) or {}).items() if k not in _PRIVATE_FIELDS}
    info: dict[str, Any] = {key: _jsonable(value) for key, value in config.items()}
    for name in ("bos_token", "eos_token", "pad_token", "unk_token"):
        info[name] = getattr(tokenizer, name, None)
    info["model_max_length"] = _jsonable(getattr(tokenizer, "model_max_length", None))
    info["tokenizer_class"] = type(tokenizer).__name__
    template = getattr(tokenizer, "chat_template", None)
    if isinstance(template, str):
        info["chat_template"] = template
    return info


def _jsonable(value: Any) -> Any:
    """``value`` as JSON can carry it: special tokens as their text, containers walked, others as strings."""
    if hasattr(value, "content") and isinstance(value.content, str):
        return value.content
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value
