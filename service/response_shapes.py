"""How response bodies and stream chunks are written, behind one interface.

The serving classes say *what* to answer (choices, finish reasons, usage); a shaper writes it.
Lethe's own shapes (``LETHE_SHAPES``) are the ``service.protocol`` models. In proxy mode a
flagged request is answered in the upstream's own shapes instead (``service.upstream_shapes``,
learned from the upstream's answers), so that it cannot be told apart from a forwarded one.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar, Literal, Protocol

from lethe.service.protocol import (
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionResponse,
    ChatCompletionStreamChoice,
    ChatResponseMessage,
    CompletionChoice,
    CompletionLogProbs,
    CompletionResponse,
    DeltaMessage,
    UsageInfo,
)

Kind = Literal["chat", "completions"]
_NO_USAGE = {"usage"}


@dataclass(frozen=True)
class Choice:
    """One generated choice, as the serving classes hand it to a shaper."""

    text: str
    finish_reason: str
    stop_reason: str | int | None = None
    logprobs: CompletionLogProbs | None = None


class Shaper(Protocol):
    """Writes one response: whole, or as stream chunks."""

    request_id: str

    def whole(self, choices: Sequence[Choice], usage: UsageInfo) -> bytes:
        """The whole response body."""
        ...

    def opening(self) -> list[bytes]:
        """Chunks before any text (a chat stream's role chunk)."""
        ...

    def delta(self, text: str, finish: Choice | None = None, logprobs: CompletionLogProbs | None = None) -> list[bytes]:
        """The chunks for new text (with its tokens' ``logprobs``, completions only); with ``finish``, the choice
        ends here (its own text is ignored)."""
        ...

    def usage(self, usage: UsageInfo) -> bytes | None:
        """The usage chunk, if the client asked for one."""
        ...


class ResponseShapes(Protocol):
    """Makes a shaper per request, and says which headers responses go out with."""

    def shaper(self, kind: Kind, model: str, include_usage: bool, request_id: str | None) -> Shaper:
        """A shaper for one response; ``request_id`` is the client's ``X-Request-Id``, if it sent one."""
        ...

    def headers(self, stream: bool) -> dict[str, str]:
        """Headers of a whole (JSON) or streamed (SSE) response."""
        ...


class LetheShaper:
    """Bodies and chunks as ``service.protocol`` defines them."""

    def __init__(self, kind: Kind, model: str, include_usage: bool):
        self.kind = kind
        self.request_id = f"{'chatcmpl' if kind == 'chat' else 'cmpl'}-{uuid.uuid4().hex}"
        self.created = int(time.time())
        self.model = model
        self.include_usage = include_usage

    def whole(self, choices: Sequence[Choice], usage: UsageInfo) -> bytes:
        """A chat completion or a completion."""
        if self.kind == "chat":
            chat = [
                ChatCompletionChoice(
                    index=i, message=ChatResponseMessage(content=c.text), finish_reason=c.finish_reason
                )
                for i, c in enumerate(choices)
            ]
            return ChatCompletionResponse(
                id=self.request_id, created=self.created, model=self.model, choices=chat, usage=usage
            ).json_bytes()
        return self._completion(
            [
                CompletionChoice(index=i, text=c.text, logprobs=c.logprobs, finish_reason=c.finish_reason)
                for i, c in enumerate(choices)
            ],
            usage,
        ).json_bytes()

    def _completion(self, choices: list[CompletionChoice], usage: UsageInfo | None = None) -> CompletionResponse:
        return CompletionResponse(
            id=self.request_id, created=self.created, model=self.model, choices=choices, usage=usage
        )

    def _chunk(
        self, delta: DeltaMessage | str, finish_reason: str | None = None, logprobs: CompletionLogProbs | None = None
    ) -> bytes:
        if isinstance(delta, DeltaMessage):
            choice = ChatCompletionStreamChoice(delta=delta, finish_reason=finish_reason)
            chunk = ChatCompletionChunk(id=self.request_id, created=self.created, model=self.model, choices=[choice])
            return chunk.json_bytes(exclude=None if self.include_usage else _NO_USAGE)
        choices = [CompletionChoice(index=0, text=delta, logprobs=logprobs, finish_reason=finish_reason)]
        return self._completion(choices).json_bytes(exclude=None if self.include_usage else _NO_USAGE)

    def opening(self) -> list[bytes]:
        """A chat stream's role chunk."""
        return [self._chunk(DeltaMessage(role="assistant", content=""))] if self.kind == "chat" else []

    def delta(self, text: str, finish: Choice | None = None, logprobs: CompletionLogProbs | None = None) -> list[bytes]:
        """A text chunk (with its tokens' log-probs), then (at the end) a chunk with an empty delta and the finish
        reason."""
        piece = DeltaMessage(content=text) if self.kind == "chat" else text
        chunks = [self._chunk(piece, None, logprobs)] if text or logprobs is not None else []
        if finish is not None:
            chunks.append(self._chunk(DeltaMessage() if self.kind == "chat" else "", finish.finish_reason))
        return chunks

    def usage(self, usage: UsageInfo) -> bytes | None:
        """``choices: []`` with the usage, when asked for."""
        if not self.include_usage:
            return None
        if self.kind == "chat":
            return ChatCompletionChunk(
                id=self.request_id, created=self.created, model=self.model, choices=[], usage=usage
            ).json_bytes()
        return self._completion([], usage).json_bytes()


class LetheShapes:
    """Lethe's own shapes (local mode, and proxy mode until the upstream's are known)."""

    stream_headers: ClassVar[dict[str, str]] = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}

    def shaper(self, kind: Kind, model: str, include_usage: bool, request_id: str | None = None) -> LetheShaper:
        """A Lethe shaper (local mode ignores ``X-Request-Id``)."""
        return LetheShaper(kind, model, include_usage)

    def headers(self, stream: bool) -> dict[str, str]:
        """No-cache, unbuffered streams; whole responses carry only their content type."""
        return dict(self.stream_headers) if stream else {}


LETHE_SHAPES = LetheShapes()
