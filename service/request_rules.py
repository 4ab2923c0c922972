"""The one set of rules every inference request passes before it is screened, in both modes.

``RequestRules.parse`` decodes the JSON body (one parser, one error text), validates it against
``service.protocol`` and refuses, with a 400 naming the parameter, every value this server does not
honour: parameters the OpenAI client may send with a harmless value (``n=1``,
``presence_penalty=0``, ``logit_bias={}``...) are accepted, any other value is refused, never
silently ignored. In proxy mode these rules run on flagged and unflagged requests alike, *before*
screening, so no answer depends on whether a forget set flagged the prompt.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from pydantic import BaseModel, ValidationError

from lethe.service.errors import APIError, bad_request, from_validation_error, unsupported
from lethe.service.protocol import (
    MAX_PROMPTS_PER_REQUEST,
    MAX_STOP_SEQUENCES,
    ChatCompletionRequest,
    CompletionRequest,
    InferenceRequest,
    SamplingRequest,
)

Endpoint = Literal["chat", "completions"]
Model = TypeVar("Model", bound=BaseModel)
ENDPOINTS: dict[Endpoint, type[InferenceRequest]] = {"chat": ChatCompletionRequest, "completions": CompletionRequest}


def _reject_constant(name: str) -> float:
    raise ValueError(f"{name} is not valid JSON")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a JSON object body, or raise a 400."""
    if not raw.strip():
        raise bad_request("The request body is empty; a JSON object is expected.", code="invalid_json")
    try:
        value = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise bad_request(
            "We could not parse the JSON body of your request. The body must be a JSON object.", code="invalid_json"
        ) from None
    if not isinstance(value, dict):
        raise bad_request("The JSON body must be an object.", code="invalid_json")
    return value


def lone_surrogate(value: Any) -> bool:
    """Whether any string in a decoded JSON value (keys included) holds a lone UTF-16 surrogate (``"\\ud800"``):
    not Unicode text, and fatal to tokenizers."""
    pending = [value]
    while pending:
        item = pending.pop()
        if isinstance(item, str):
            if not item.isascii():
                try:
                    item.encode("utf-8")
                except UnicodeEncodeError:
                    return True
        elif isinstance(item, dict):
            pending.extend(item.keys())
            pending.extend(item.values())
        elif isinstance(item, list):
            pending.extend(item)
    return False


def parse_body(raw: bytes, model: type[Model]) -> Model:
    """Validate a raw JSON body against ``model``; every failure is a 400 naming the parameter.

    Pydantic's parser refuses lone surrogate escapes, so they only reach the slower explaining path,
    where they are a 400 ``invalid_unicode`` before any model sees them.
    """
    try:
        return model.model_validate_json(raw)  # one pass in pydantic's parser; failures are explained below
    except ValidationError:
        pass
    data = parse_json_object(raw)
    if lone_surrogate(data):
        raise bad_request(
            "The request holds a string that is not valid Unicode (a lone surrogate escape).", code="invalid_unicode"
        )
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None


def empty_prompt(param: str) -> APIError:
    """The 400 for a prompt with nothing in it."""
    return bad_request(f"'{param}' is empty.", param, "empty_prompt")


def prompt_items(body: CompletionRequest) -> list[str] | list[list[int]]:
    """The prompts of a completions request, one item each: texts, token-id lists or encoded embeddings."""
    if body.prompt_embeds is not None:
        return [body.prompt_embeds] if isinstance(body.prompt_embeds, str) else list(body.prompt_embeds)
    prompt = body.prompt
    if prompt is None or isinstance(prompt, str):
        return [prompt or ""]
    if prompt and all(isinstance(p, int) for p in prompt):
        return [prompt]  # type: ignore[list-item]
    return list(prompt)  # type: ignore[arg-type]


@dataclass(frozen=True)
class RequestRules:
    """What this server honours; the same for every request it serves.

    ``echo`` (echo and log-probs served) is False in proxy mode: vLLM refuses ``echo`` and prompt
    log-probs with prompt embeddings, so a flagged prompt could not be echoed; refusing both for
    everyone keeps flagged and unflagged answers alike.
    """

    max_new_tokens: int
    vocab_size: int
    allow_prompt_embeds: bool = True
    any_embedding_rows: bool = False  # accept prompt_embeds rows that stand for no single token
    echo: bool = True

    @staticmethod
    def parse(raw: bytes, endpoint: Endpoint) -> InferenceRequest:
        """The request body, valid against the protocol (types, required fields, no unknown keys), or a 400."""
        return parse_body(raw, ENDPOINTS[endpoint])

    def check(self, body: InferenceRequest) -> None:
        """Raise the 400 of the first value this server does not honour."""
        if isinstance(body, ChatCompletionRequest):
            error = self.chat_violation(body)
        else:
            error = self.completion_violation(body)
        if error is not None:
            raise error

    def _sampling_violation(self, body: SamplingRequest) -> APIError | None:
        if body.n not in (None, 1):
            return unsupported("n", "only n=1")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(body, name) not in (None, 0):
                return unsupported(name, "only 0")
        if body.logit_bias:
            return unsupported("logit_bias")
        if isinstance(body.stop, list) and len(body.stop) > MAX_STOP_SEQUENCES:
            return bad_request(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.", "stop", "invalid_value")
        if body.stream_options is not None and not body.stream:
            return bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        return None

    def _max_tokens_violation(self, max_tokens: int | None) -> APIError | None:
        limit = self.max_new_tokens
        if max_tokens is not None and max_tokens > limit:
            return bad_request(
                f"'max_tokens' is {max_tokens}; this server allows at most {limit}.",
                "max_tokens",
                "max_tokens_exceeded",
            )
        return None

    def chat_violation(self, body: ChatCompletionRequest) -> APIError | None:
        """The first value of a chat request this server does not honour, as a 400."""
        if error := self._sampling_violation(body):
            return error
        if body.logprobs:
            return unsupported("logprobs", "generated-token log-probs")
        if body.top_logprobs not in (None, 0):
            return unsupported("top_logprobs")
        if body.tools:
            return unsupported("tools")
        if body.tool_choice not in (None, "none"):
            return unsupported("tool_choice")
        if body.functions:
            return unsupported("functions")
        if body.function_call not in (None, "none"):
            return unsupported("function_call")
        if body.response_format not in (None, {"type": "text"}):
            return unsupported("response_format", "only {'type': 'text'}")
        if body.max_tokens is not None and body.max_completion_tokens is not None:
            return bad_request("Give either 'max_tokens' or 'max_completion_tokens', not both.", "max_tokens")
        if body.requested_max_tokens() == 0:
            return bad_request("'max_tokens' must be at least 1 for chat completions.", "max_tokens", "invalid_value")
        return self._max_tokens_violation(body.requested_max_tokens())

    def completion_violation(self, body: CompletionRequest) -> APIError | None:
        """The first value of a completions request this server does not honour, as a 400."""
        if error := self._sampling_violation(body):
            return error
        if body.best_of not in (None, 1):
            return unsupported("best_of", "only best_of=1")
        if body.suffix:
            return unsupported("suffix")
        if body.echo and not self.echo:
            return unsupported("echo", "in proxy mode")
        if body.prompt_embeds is not None:
            if body.prompt not in (None, "", []):
                return bad_request("Give either 'prompt' or 'prompt_embeds', not both.", "prompt_embeds")
            if not self.allow_prompt_embeds:
                return unsupported("prompt_embeds", "disabled on this server")
            if body.echo:
                return unsupported("echo", "not with prompt_embeds")
            if body.logprobs is not None:
                return unsupported("logprobs", "not with prompt_embeds")
        elif body.prompt is None:
            return APIError(
                400, "Missing required parameter: 'prompt'.", "invalid_request_error", "prompt", "missing_parameter"
            )
        if body.logprobs is not None and not self.echo:
            return unsupported("logprobs", "in proxy mode")
        if error := self._prompts_violation(body):
            return error
        return self._max_tokens_violation(body.max_tokens)

    def _prompts_violation(self, body: CompletionRequest) -> APIError | None:
        param = "prompt_embeds" if body.prompt_embeds is not None else "prompt"
        items = prompt_items(body)
        if len(items) > MAX_PROMPTS_PER_REQUEST:
            return bad_request(f"At most {MAX_PROMPTS_PER_REQUEST} prompts per request.", param, "too_many_prompts")
        if not items or any(len(item) == 0 for item in items):
            return empty_prompt(param)
        if body.stream and len(items) > 1:
            return unsupported("stream", "streaming takes a single prompt")
        for item in items:
            if isinstance(item, list) and any(not 0 <= i < self.vocab_size for i in item):
                return bad_request(
                    f"Token ids in 'prompt' must be in [0, {self.vocab_size}).", "prompt", "invalid_token_id"
                )
        return None
