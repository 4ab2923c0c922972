"""How response bodies and stream chunks are written, behind one interface per endpoint.

The serving classes say *what* to answer (text, finish reason, usage); a shaper writes it. Lethe's
own shapes (``LETHE_SHAPES``) are the ``service.protocol`` models. Proxy mode writes a flagged
request's answer in the upstream's own shapes instead (``service.upstream_shapes``), learned from
the upstream's answers, so that it cannot be told apart from a forwarded one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from typing import ClassVar, Protocol

from lethe.service.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatResponseMessage,
    CompletionChoice,
    CompletionResponse,
    DeltaMessage,
    UsageInfo,
)

_NO_USAGE = {"usage"}


class ChatShaper(Protocol):
    """Writes one chat completion's body, or its stream chunks."""

    request_id: str

    def whole(self, text: str, finish_reason: str, usage: UsageInfo) -> bytes:
        """The whole response."""
        ...

    def opening(self) -> bytes:
        """The first chunk (the assistant's role)."""
        ...

    def piece(self, text: str) -> bytes:
        """A chunk carrying generated text."""
        ...

    def finish(self, finish_reason: str) -> bytes:
        """The chunk that ends the choice."""
        ...

    def usage(self, usage: UsageInfo) -> bytes | None:
        """The usage chunk, if the client asked for one."""
        ...


class CompletionShaper(Protocol):
    """Writes one completion's body, or its stream chunks."""

    request_id: str

    def whole(self, choices: Sequence[CompletionChoice], usage: UsageInfo) -> bytes:
        """The whole response."""
        ...

    def piece(self, text: str) -> bytes:
        """A chunk carrying text."""
        ...

    def finish(self, finish_reason: str) -> bytes:
        """The chunk that ends the choice."""
        ...

    def usage(self, usage: UsageInfo) -> bytes | None:
        """The usage chunk, if the client asked for one."""
        ...


class ResponseShapes(Protocol):
    """Makes a shaper per request, and says which headers a stream goes out with."""

    stream_headers: dict[str, str]

    def chat(self, model: str, include_usage: bool) -> ChatShaper:
        """A shaper for one chat completion."""
        ...

    def completion(self, model: str, include_usage: bool) -> CompletionShaper:
        """A shaper for one completion."""
        ...


class LetheChatShaper:
    """Chat bodies and chunks as ``service.protocol`` defines them."""

    def __init__(self, model: str, include_usage: bool):
        self.request_id = f"chatcmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def whole(self, text: str, finish_reason: str, usage: UsageInfo) -> bytes:
        """The whole response."""
        choice = ChatCompletionChoice(index=0, message=ChatResponseMessage(content=text), finish_reason=finish_reason)
        response = ChatCompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=[choice], usage=usage
        )
        return response.json_bytes()

    def _chunk(self, choices: list[ChatCompletionStreamChoice], usage: UsageInfo | None = None) -> bytes:
        chunk = ChatCompletionChunk(
            id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage
        )
        return chunk.json_bytes(exclude=None if self.include_usage else _NO_USAGE)

    def opening(self) -> bytes:
        """The role chunk."""
        return self._chunk([ChatCompletionStreamChoice(delta=DeltaMessage(role="assistant", content=""))])

    def piece(self, text: str) -> bytes:
        """A content chunk."""
        return self._chunk([ChatCompletionStreamChoice(delta=DeltaMessage(content=text))])

    def finish(self, finish_reason: str) -> bytes:
        """An empty delta with the finish reason."""
        return self._chunk([ChatCompletionStreamChoice(delta=DeltaMessage(), finish_reason=finish_reason)])

    def usage(self, usage: UsageInfo) -> bytes | None:
        """``choices: []`` with the usage, when asked for."""
        return self._chunk([], usage) if self.include_usage else None


class LetheCompletionShaper:
    """Completion bodies and chunks as ``service.protocol`` defines them."""

    def __init__(self, model: str, include_usage: bool):
        self.request_id = f"cmpl-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def _response(self, choices: Sequence[CompletionChoice], usage: UsageInfo | None = None) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=list(choices), usage=usage
        )

    def whole(self, choices: Sequence[CompletionChoice], usage: UsageInfo) -> bytes:
        """The whole response."""
        return self._response(choices, usage).json_bytes()

    def _chunk(self, choices: Sequence[CompletionChoice], usage: UsageInfo | None = None) -> bytes:
        return self._response(choices, usage).json_bytes(exclude=None if self.include_usage else _NO_USAGE)

    def piece(self, text: str) -> bytes:
        """A text chunk."""
        return self._chunk([CompletionChoice(index=0, text=text)])

    def finish(self, finish_reason: str) -> bytes:
        """An empty text with the finish reason."""
        return self._chunk([CompletionChoice(index=0, text="", finish_reason=finish_reason)])

    def usage(self, usage: UsageInfo) -> bytes | None:
        """``choices: []`` with the usage, when asked for."""
        return self._chunk([], usage) if self.include_usage else None


class LetheShapes:
    """Lethe's own shapes (local mode, and proxy mode until the upstream's are known)."""

    stream_headers: ClassVar[dict[str, str]] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def chat(self, model: str, include_usage: bool) -> LetheChatShaper:
        """A Lethe chat shaper."""
        return LetheChatShaper(model, include_usage)

    def completion(self, model: str, include_usage: bool) -> LetheCompletionShaper:
        """A Lethe completion shaper."""
        return LetheCompletionShaper(model, include_usage)


LETHE_SHAPES = LetheShapes()
