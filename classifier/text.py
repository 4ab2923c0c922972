"""Text normalization and the n-gram analyzers shared by training and serving.

Words are runs of letters and digits in the raw text; each keeps its character span so that
feature weights can be mapped back to the text.  Normalization is per word: NFKD with accents
stripped, case folded, and leetspeak digits mapped to letters in mixed letter/digit words.
"""

from __future__ import annotations

import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property, lru_cache

WORD_PATTERN = re.compile(r"[^\W_]+")
_LEET = str.maketrans({"0": "o", "1": "i", "3": "e", "4": "a", "5": "s", "7": "t", "8": "b"})


def normalize_word(word: str) -> str:
    """Case-fold, strip accents and undo leetspeak in one word."""
    if word.isascii():
        w = word.lower()
    else:
        w = "".join(c for c in unicodedata.normalize("NFKD", word) if not unicodedata.combining(c)).casefold()
    if not w.isalpha() and not w.isdigit():
        digits = sum(c.isdigit() for c in w)
        if digits <= len(w) - digits:
            w = w.translate(_LEET)
    return w


def word_spans(text: str) -> list[tuple[int, int]]:
    """Character spans of the words of ``text``."""
    return [m.span() for m in WORD_PATTERN.finditer(text)]


def normalized_words(text: str) -> list[str]:
    """The normalized words of ``text``, in order."""
    return [normalize_word(m.group()) for m in WORD_PATTERN.finditer(text)]


@lru_cache(maxsize=65536)
def cached_words(text: str) -> tuple[str, ...]:
    """``normalized_words`` memoized for training, where the pool and augmentations are analyzed repeatedly."""
    return tuple(normalized_words(text))


def word_ngrams(words: Sequence[str], n_max: int) -> list[str]:
    """Word n-grams of order 1..n_max, joined by a space."""
    out = list(words)
    for n in range(2, n_max + 1):
        out.extend(" ".join(words[i : i + n]) for i in range(len(words) - n + 1))
    return out


@lru_cache(maxsize=200_000)
def char_ngrams_of(word: str, n_min: int, n_max: int) -> tuple[str, ...]:
    """Character n-grams of one space-padded word (sklearn's ``char_wb`` scheme), memoized per word."""
    padded = f" {word} "
    size = len(padded)
    out: list[str] = []
    for n in range(n_min, n_max + 1):
        if n >= size:
            out.append(padded)
            break
        out.extend(padded[i : i + n] for i in range(size - n + 1))
    return tuple(out)


def char_ngrams(words: Sequence[str], n_min: int, n_max: int) -> list[str]:
    """Character n-grams of every word."""
    out: list[str] = []
    for w in words:
        out.extend(char_ngrams_of(w, n_min, n_max))
    return out


@dataclass(frozen=True)
class Ranges:
    """The n-gram orders a model uses."""

    word_max: int
    char_min: int
    char_max: int


class Doc:
    """One analyzed text: normalized words, their spans, and n-gram lists cached per range."""

    def __init__(self, text: str) -> None:
        self.text = text
        self._grams: dict[Ranges, tuple[list[str], list[str]]] = {}

    @cached_property
    def words(self) -> list[str]:
        """Normalized words."""
        return normalized_words(self.text)

    @cached_property
    def spans(self) -> list[tuple[int, int]]:
        """Character spans of the words in the raw text."""
        return word_spans(self.text)

    def grams(self, ranges: Ranges) -> tuple[list[str], list[str]]:
        """Word and character n-grams for ``ranges``."""
        cached = self._grams.get(ranges)
        if cached is None:
            cached = (word_ngrams(self.words, ranges.word_max),
                      char_ngrams(self.words, ranges.char_min, ranges.char_max))
            self._grams[ranges] = cached
        return cached
