"""Request bodies of the OpenAI and admin routes, validated strictly (unknown keys are errors).

Parameters the OpenAI client may send with a harmless value (``n=1``, ``presence_penalty=0``,
``logit_bias={}``...) are accepted; any other value of them is refused by ``unsupported_values``
with a 400 that names the parameter, never silently ignored.
"""

from __future__ import annotations

import json
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, StrictInt, ValidationError, model_validator

from lethe.service.errors import APIError, bad_request, from_validation_error, unsupported

MAX_STOP_SEQUENCES = 4
MAX_PROMPTS_PER_REQUEST = 32
MAX_ECHO_LOGPROBS = 20
SEED_BOUND = 2**63

Model = TypeVar("Model", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class TextPart(_Strict):
    """A ``{"type": "text", "text": ...}`` content part."""

    type: Literal["text"]
    text: str


class ChatMessage(_Strict):
    """One chat message; content is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines, as the classifier reads them)."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def as_template_message(self) -> dict[str, str]:
        """``{"role", "content"}`` for the chat template (``developer`` is rendered as ``system``)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(_Strict):
    """``stream_options``."""

    include_usage: bool = False


class _SamplingRequest(_Strict):
    model: str
    max_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    temperature: Annotated[float, Field(ge=0, le=2)] | None = None
    top_p: Annotated[float, Field(gt=0, le=1)] | None = None
    stop: str | list[str] | None = None
    seed: Annotated[StrictInt, Field(ge=-SEED_BOUND, lt=SEED_BOUND)] | None = None
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    n: StrictInt | None = None
    user: str | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    logit_bias: dict[str, float] | None = None

    def stop_sequences(self) -> tuple[str, ...]:
        """``stop`` as a tuple of non-empty strings."""
        if self.stop is None:
            return ()
        stops = [self.stop] if isinstance(self.stop, str) else list(self.stop)
        return tuple(s for s in stops if s)

    def include_usage(self) -> bool:
        """Whether a streamed response ends with a usage chunk."""
        return bool(self.stream_options and self.stream_options.include_usage)

    def _common_unsupported(self) -> APIError | None:
        if self.n not in (None, 1):
            return unsupported("n", "only n=1")
        for name in ("presence_penalty", "frequency_penalty"):
            if getattr(self, name) not in (None, 0):
                return unsupported(name, "only 0")
        if self.logit_bias:
            return unsupported("logit_bias")
        if isinstance(self.stop, list) and len(self.stop) > MAX_STOP_SEQUENCES:
            return bad_request(f"'stop' takes at most {MAX_STOP_SEQUENCES} sequences.", "stop", "invalid_value")
        if self.stream_options is not None and not self.stream:
            return bad_request("'stream_options' is only allowed when 'stream' is true.", "stream_options")
        return None


class ChatCompletionRequest(_SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None

    def unsupported_values(self) -> APIError | None:
        """The first parameter set to a value this server cannot honour, as a 400."""
        if error := self._common_unsupported():
            return error
        if self.logprobs:
            return unsupported("logprobs", "generated-token log-probs")
        if self.top_logprobs not in (None, 0):
            return unsupported("top_logprobs")
        if self.tools:
            return unsupported("tools")
        if self.tool_choice not in (None, "none"):
            return unsupported("tool_choice")
        if self.functions:
            return unsupported("functions")
        if self.function_call not in (None, "none"):
            return unsupported("function_call")
        if self.response_format not in (None, {"type": "text"}):
            return unsupported("response_format", "only {'type': 'text'}")
        if self.max_tokens is not None and self.max_completion_tokens is not None:
            return bad_request("Give either 'max_tokens' or 'max_completion_tokens', not both.", "max_tokens")
        return None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


PromptField = str | list[str] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(_SamplingRequest):
    """``POST /v1/completions`` (legacy), with vLLM's ``prompt_embeds``."""

    prompt: PromptField | None = None
    prompt_embeds: str | list[str] | None = None
    echo: bool | None = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_ECHO_LOGPROBS)] | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None

    def unsupported_values(self) -> APIError | None:
        """The first parameter set to a value this server cannot honour, as a 400."""
        if error := self._common_unsupported():
            return error
        if self.best_of not in (None, 1):
            return unsupported("best_of", "only best_of=1")
        if self.suffix:
            return unsupported("suffix")
        if self.prompt_embeds is not None:
            if self.prompt not in (None, "", []):
                return bad_request("Give either 'prompt' or 'prompt_embeds', not both.", "prompt_embeds")
            if self.echo:
                return unsupported("echo", "not with prompt_embeds")
            if self.logprobs is not None:
                return unsupported("logprobs", "not with prompt_embeds")
        elif self.prompt is None:
            return APIError(
                400, "Missing required parameter: 'prompt'.", "invalid_request_error", "prompt", "missing_parameter"
            )
        if self.logprobs is not None and not (self.echo and self.max_tokens == 0):
            return unsupported("logprobs", "only prompt log-probs, with echo=true and max_tokens=0")
        if self.stream and self.logprobs is not None:
            return unsupported("logprobs", "not with stream=true")
        return None


class ForgetSetCreate(_Strict):
    """``POST /admin/forget-sets``."""

    name: str = Field(min_length=1, max_length=128)
    forget: list[dict[str, Any]] | None = Field(default=None, min_length=1, max_length=20000)
    topic: str | None = Field(default=None, min_length=1, max_length=500)
    seed_prompts: list[str] | None = Field(default=None, max_length=200)
    retain: list[dict[str, Any]] | None = Field(default=None, max_length=20000)
    method: Literal["eco", "spul", "eco+spul"]
    options: dict[str, Any] | None = None

    @model_validator(mode="after")
    def _forget_or_topic(self) -> ForgetSetCreate:
        if self.forget is not None and self.topic is not None:
            raise ValueError("give 'forget' (rows) or 'topic' (the model reveals what it knows), not both")
        if self.seed_prompts is not None and self.topic is None:
            raise ValueError("'seed_prompts' go with 'topic'")
        return self


class ForgetSetPatch(_Strict):
    """``PATCH /admin/forget-sets/{id}``."""

    enabled: bool


class ClassifyRequest(_Strict):
    """``POST /admin/classify``: a chat or a raw prompt."""

    messages: list[ChatMessage] | None = Field(default=None, min_length=1)
    prompt: str | None = None

    @model_validator(mode="after")
    def _one_of(self) -> ClassifyRequest:
        if (self.messages is None) == (self.prompt is None):
            raise ValueError("give exactly one of 'messages' or 'prompt'")
        return self


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


def parse_body(raw: bytes, model: type[Model]) -> Model:
    """Validate a raw JSON body against ``model``; every failure is a 400 naming the parameter."""
    data = parse_json_object(raw)
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise from_validation_error(exc) from None
