"""Where a forget set's entities occur in a token sequence, and what to put in their place.

A ``MentionIndex`` holds the token sequences that spell the forget set's entities (each surface form
with and without a leading space, as typed and in lower case) in a trie. It finds every mention in
a whole sequence (the prompt, a teacher-forced answer) and, while a model generates, whether the token
just produced continues a mention. A generated token that only begins a mention is a continuation when
it stops inside a word of it (" Hog" of " Hogwarts"), not when it is a whole word the mention goes on
from (" The" of " The Burrow"): such a word is as likely the start of any other sentence, and corrupting
it wherever it is generated broke every flagged answer. With a surrogate, a mention's rows are paired
with the surrogate's rows position by position (``j = i * m // n`` when the two spellings differ in
length), so a substitution can move each row toward its counterpart.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import torch


@dataclass(frozen=True)
class Mention:
    """One spelling of an entity: its token ids and, with a surrogate, the surrogate's ids."""

    ids: tuple[int, ...]
    surrogate: tuple[int, ...] = ()
    entity: str = ""
    word_ends: tuple[int, ...] = ()
    """Token counts at which a word of the spelling ends, before its last word (``(1,)`` for " The Burrow")."""

    def counterpart(self, offset: int) -> int | None:
        """The surrogate token paired with the mention's ``offset``-th token (``None`` without a surrogate)."""
        if not self.surrogate:
            return None
        return self.surrogate[offset * len(self.surrogate) // len(self.ids)]


@dataclass
class _Node:
    children: dict[int, _Node] = field(default_factory=dict)
    ends: list[int] = field(default_factory=list)
    passing: list[int] = field(default_factory=list)
    word_end: bool = False
    """Some mention through this node ends a word here and goes on with another."""


class MentionIndex:
    """A trie of the token spellings of a forget set's entities."""

    def __init__(self, mentions: Sequence[Mention]):
        self.mentions = [m for m in dict.fromkeys(mentions) if m.ids]
        self._root = _Node()
        for index, mention in enumerate(self.mentions):
            node = self._root
            for depth, token in enumerate(mention.ids, start=1):
                node = node.children.setdefault(token, _Node())
                node.passing.append(index)
                node.word_end = node.word_end or depth in mention.word_ends
            node.ends.append(index)

    def __bool__(self) -> bool:
        return bool(self.mentions)

    @classmethod
    def from_surfaces(
        cls,
        encode: Callable[[str], list[int]],
        entities: Sequence[str],
        surrogates: dict[str, str] | None = None,
    ) -> MentionIndex:
        """Every spelling of ``entities`` (as typed, lower case, with and without a leading space)."""
        surrogates = surrogates or {}
        mentions = []
        for entity in entities:
            stand_in = surrogates.get(entity, "")
            for form, other in ((entity, stand_in), (entity.lower(), stand_in.lower())):
                for prefix in ("", " "):
                    ids = tuple(encode(prefix + form))
                    swap = tuple(encode(prefix + other)) if other else ()
                    words = form.split()
                    ends = tuple(len(encode(prefix + " ".join(words[:k]))) for k in range(1, len(words)))
                    if ids:
                        mentions.append(Mention(ids, swap, entity, ends))
        return cls(mentions)

    def find(self, ids: Sequence[int]) -> list[tuple[int, int, Mention]]:
        """Every complete mention in ``ids``: ``(start, end, mention)``, longest first where they overlap."""
        found: list[tuple[int, int, Mention]] = []
        for start in range(len(ids)):
            node, best = self._root, None
            for position in range(start, len(ids)):
                node = node.children.get(ids[position])  # type: ignore[assignment]
                if node is None:
                    break
                if node.ends:
                    best = (start, position + 1, self.mentions[node.ends[0]])
            if best is not None and (not found or best[0] >= found[-1][1]):
                found.append(best)
        return found

    def continuing(self, ids: Sequence[int], lookback: int = 8) -> tuple[Mention, int] | None:
        """Whether the last token of ``ids`` continues a mention, whole or partial (within a word, see the
        module docstring): the mention and the token's offset in it."""
        for start in range(max(0, len(ids) - lookback), len(ids)):
            node = self._root
            for position in range(start, len(ids)):
                node = node.children.get(ids[position])  # type: ignore[assignment]
                if node is None:
                    break
            else:
                if node is not self._root and (node.ends or not node.word_end):
                    return self.mentions[(node.ends or node.passing)[0]], len(ids) - 1 - start
        return None

    def rewrites(self, decode: Callable[[Sequence[int]], str]) -> list[tuple[str, str]]:
        """``(surrogate text, entity)`` pairs to map a substituted answer back to the names asked about."""
        pairs = {}
        for mention in self.mentions:
            if mention.surrogate:
                text = decode(mention.surrogate).strip()
                if text:
                    pairs.setdefault(text, mention.entity)
        return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def mention_rows(index: MentionIndex, ids: Sequence[int]) -> list[tuple[int, int | None]]:
    """``(position, surrogate token or None)`` of every token inside a mention of ``ids``."""
    rows = []
    for start, end, mention in index.find(ids):
        rows.extend((start + offset, mention.counterpart(offset)) for offset in range(end - start))
    return rows


def as_tensor(values: Sequence[int], device: torch.device) -> torch.Tensor:
    """``values`` as an int64 tensor on ``device``."""
    return torch.tensor(list(values), dtype=torch.long, device=device)
