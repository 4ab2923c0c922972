"""The OpenAI wire format: request and response bodies of ``/v1`` (shaped like vLLM's ``entrypoints/openai/protocol``).

Requests are validated strictly (unknown keys and wrong types are errors); which *values* this
server honours is decided by ``service.request_rules``, the same rules for every request.
Responses are built from these models only, so each shape (ids, objects, usage, chunks) is
written in one place. The error body is here too; ``service.errors`` raises it.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StrictInt, model_serializer, model_validator

MAX_STOP_SEQUENCES = 4
MAX_PROMPTS_PER_REQUEST = 32
MAX_MESSAGES = 512
MAX_CONTENT_PARTS = 64
MAX_ECHO_LOGPROBS = 20
SEED_BOUND = 2**63

# Requests ----------------------------------------------------------------------------------------


class StrictModel(BaseModel):
    """A request body: unknown keys and loosely typed values are refused."""

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class TextPart(StrictModel):
    """A ``{"type": "text", "text": ...}`` content part (the only part type: anything else is refused)."""

    type: Literal["text"]
    text: str


class ChatMessage(StrictModel):
    """One chat message; content is a string or a list of text parts."""

    role: Literal["system", "developer", "user", "assistant"]
    content: str | Annotated[list[TextPart], Field(max_length=MAX_CONTENT_PARTS)] | None = None
    name: str | None = None

    def text(self) -> str:
        """The content as one string (text parts joined by newlines): what the classifiers and the template read."""
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "\n".join(part.text for part in self.content)

    def as_template_message(self) -> dict[str, str]:
        """``{"role", "content"}`` for the chat template (``developer`` is rendered as ``system``)."""
        return {"role": "system" if self.role == "developer" else self.role, "content": self.text()}


class StreamOptions(StrictModel):
    """``stream_options``."""

    include_usage: bool = False


class SamplingRequest(StrictModel):
    """What chat and completion requests share: the model, sampling, stop, streaming."""

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
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    def requested_max_tokens(self) -> int | None:
        """The client's limit on generated tokens, if it gave one."""
        return self.max_tokens


class ChatCompletionRequest(SamplingRequest):
    """``POST /v1/chat/completions``."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: Annotated[StrictInt, Field(ge=0)] | None = None
    logprobs: bool | None = None
    top_logprobs: StrictInt | None = None
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    response_format: dict[str, Any] | None = None

    def requested_max_tokens(self) -> int | None:
        """``max_completion_tokens`` or ``max_tokens``."""
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


PromptField = str | list[str] | list[StrictInt] | list[list[StrictInt]]


class CompletionRequest(SamplingRequest):
    """``POST /v1/completions`` (legacy), with vLLM's ``prompt_embeds``."""

    prompt: PromptField | None = None
    prompt_embeds: str | list[str] | None = None
    echo: bool | None = False
    logprobs: Annotated[StrictInt, Field(ge=0, le=MAX_ECHO_LOGPROBS)] | None = None
    best_of: StrictInt | None = None
    suffix: str | None = None


InferenceRequest = ChatCompletionRequest | CompletionRequest


class TokenizeRequest(StrictModel):
    """``POST /tokenize`` (vLLM's): a text ``prompt``, or chat ``messages`` rendered by the chat template."""

    model: str | None = None
    prompt: str | None = None
    messages: Annotated[list[ChatMessage], Field(min_length=1, max_length=MAX_MESSAGES)] | None = None
    add_special_tokens: bool | None = None
    add_generation_prompt: bool = True
    continue_final_message: bool = False
    return_token_strs: bool | None = False

    @model_validator(mode="after")
    def _prompt_or_messages(self) -> TokenizeRequest:
        if (self.prompt is None) == (self.messages is None):
            raise ValueError("give exactly one of 'prompt' or 'messages'")
        if self.add_generation_prompt and self.continue_final_message:
            raise ValueError("'add_generation_prompt' and 'continue_final_message' cannot both be true")
        return self


class DetokenizeRequest(StrictModel):
    """``POST /detokenize`` (vLLM's)."""

    model: str | None = None
    tokens: Annotated[list[Annotated[StrictInt, Field(ge=0)]], Field(max_length=1_000_000)]


# Responses ---------------------------------------------------------------------------------------


class ResponseModel(BaseModel):
    """A response body (serialized as compact JSON)."""

    def json_bytes(self, exclude: set[str] | None = None) -> bytes:
        """The body as UTF-8 JSON bytes."""
        return self.model_dump_json(exclude=exclude).encode()


class UsageInfo(ResponseModel):
    """Token counts of a response (those of the client's prompt: added soft-prompt positions are not counted)."""

    prompt_tokens: int
    completion_tokens: int
    total_tokens: int

    @classmethod
    def of(cls, prompt_tokens: int, completion_tokens: int) -> UsageInfo:
        """Usage with its total."""
        return cls(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
        )


class ChatResponseMessage(ResponseModel):
    """The assistant's message of a whole chat completion."""

    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(ResponseModel):
    """One choice of a whole chat completion."""

    index: int
    message: ChatResponseMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletionResponse(ResponseModel):
    """A whole chat completion."""

    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: UsageInfo


class DeltaMessage(ResponseModel):
    """What one chunk adds to the message: the role first, then content; the final chunk's delta is empty."""

    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _without_nulls(self, handler: Any) -> dict[str, Any]:
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionStreamChoice(ResponseModel):
    """One choice of a chat chunk."""

    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(ResponseModel):
    """One server-sent event of a streamed chat completion (``usage`` only when the client asked for it)."""

    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionStreamChoice]
    usage: UsageInfo | None = None


class CompletionLogProbs(ResponseModel):
    """Legacy log-probs of a completion choice (here: of the echoed prompt)."""

    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class CompletionChoice(ResponseModel):
    """One choice of a completion, whole or streamed."""

    index: int
    text: str
    logprobs: CompletionLogProbs | None = None
    finish_reason: str | None = None


class CompletionResponse(ResponseModel):
    """A whole completion, or (with ``usage`` unset and excluded) one streamed chunk of it."""

    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class ModelCard(ResponseModel):
    """An entry of ``GET /v1/models``."""

    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "lethe"


class ModelList(ResponseModel):
    """``GET /v1/models``."""

    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeResponse(ResponseModel):
    """``/tokenize``'s answer: the ids, their count, the model's context length (and the token strings if asked)."""

    count: int
    max_model_len: int
    tokens: list[int]
    token_strs: list[str] | None = None


class DetokenizeResponse(ResponseModel):
    """``/detokenize``'s answer."""

    prompt: str


class TokenizerInfoResponse(ResponseModel):
    """``GET /tokenizer_info``: the tokenizer's configuration (special tokens, chat template...), as vLLM gives it."""

    model_config = ConfigDict(extra="allow")

    tokenizer_class: str


class ErrorInfo(ResponseModel):
    """What went wrong: a message that never quotes request content, the OpenAI error type, parameter and code."""

    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(ResponseModel):
    """``{"error": {"message", "type", "param", "code"}}``."""

    error: ErrorInfo
