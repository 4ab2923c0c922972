"""A tokenized prompt that remembers where each message's content sits, in characters and tokens."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

CharSpan = tuple[int, int]


@dataclass(frozen=True)
class MessageSpan:
    """Where one message's content lies in the rendered prompt."""

    role: str
    char_start: int
    char_end: int
    token_start: int
    token_end: int


@dataclass(frozen=True)
class TemplatedPrompt:
    """A rendered prompt: its text, token ids, per-token character offsets and message spans."""

    text: str
    ids: tuple[int, ...]
    offsets: tuple[CharSpan, ...]
    messages: tuple[MessageSpan, ...]

    def __len__(self) -> int:
        return len(self.ids)

    def content_mask(self, roles: Sequence[str] = ("user",)) -> list[bool]:
        """Token mask covering the whole content of every message whose role is in ``roles``."""
        mask = [False] * len(self.ids)
        for message in self.messages:
            if message.role in roles:
                for position in range(message.token_start, message.token_end):
                    mask[position] = True
        return mask

    def mask_for_spans(self, spans_per_message: Sequence[Sequence[CharSpan]]) -> list[bool]:
        """Token mask of the tokens overlapping the given character spans.

        ``spans_per_message[i]`` holds spans relative to the start of message ``i``'s
        content; a token is selected when its characters overlap any span.
        """
        if len(spans_per_message) > len(self.messages):
            raise ValueError(f"{len(spans_per_message)} span lists for {len(self.messages)} messages")
        absolute = [
            (message.char_start + start, message.char_start + end)
            for message, spans in zip(self.messages, spans_per_message, strict=False)
            for start, end in spans
            if end > start
        ]
        mask = [False] * len(self.ids)
        if not absolute:
            return mask
        # Merge the spans, then sweep tokens and spans together (both in character order).
        merged: list[list[int]] = []
        for start, end in sorted(absolute):
            if merged and start <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], end)
            else:
                merged.append([start, end])
        cursor = 0
        for position, (token_start, token_end) in enumerate(self.offsets):
            if token_end <= token_start:
                continue
            while cursor < len(merged) and merged[cursor][1] <= token_start:
                cursor += 1
            if cursor < len(merged) and merged[cursor][0] < token_end:
                mask[position] = True
        return mask


def locate_contents(text: str, contents: Sequence[str]) -> list[CharSpan]:
    """Character span of each content string in ``text``, searched in order.

    Raises ``ValueError`` when a content cannot be found, which happens only with
    chat templates that rewrite the content (the caller then falls back to
    treating the whole prompt as one span).
    """
    spans: list[CharSpan] = []
    cursor = 0
    for content in contents:
        if not content:
            spans.append((cursor, cursor))
            continue
        start = text.find(content, cursor)
        if start < 0:
            raise ValueError("message content not found verbatim in the rendered chat template")
        spans.append((start, start + len(content)))
        cursor = start + len(content)
    return spans


def token_range(offsets: Sequence[CharSpan], char_start: int, char_end: int) -> tuple[int, int]:
    """Half-open token index range of the tokens overlapping ``[char_start, char_end)``."""
    selected = [
        index for index, (start, end) in enumerate(offsets) if end > start and start < char_end and char_start < end
    ]
    if not selected:
        return (0, 0)
    return (selected[0], selected[-1] + 1)
