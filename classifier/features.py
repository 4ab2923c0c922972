"""One analysis of a text, shared by every forget set's classifier: hashed n-grams and a semantic vector.

Every scope classifier reads the same feature space, so a request is analyzed once however many
forget sets are live (``classifier.bank`` then scores all of them with one sparse product):

- **word n-grams** (orders 1..``word_ngram_max``) and **character n-grams** of each word, function words
  (``the``, ``how``, ``which``...) left out so that the length and style of a question are no evidence
  (orders ``char_ngram_min..char_ngram_max``, space-padded as scikit-learn's ``char_wb``), hashed with
  CRC-32 into ``2 ** hash_bits`` buckets per block; sublinear term frequency ``1 + log(tf)``, each block
  L2-normalized;
- a **semantic** vector (``classifier.semantic``): the mean of static token embeddings distilled from
  all-MiniLM-L6-v2, so that words the forget set never contained but that mean the same (``wizard
  school`` for ``Hogwarts``) still count as evidence.

Per-word hashing is memoized in a cache bounded in bytes; nothing is memoized per text.
"""

from __future__ import annotations

import zlib
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import Any

import numpy as np

from lethe.classifier.cache import ByteBoundedCache
from lethe.classifier.config import known_fields
from lethe.classifier.entities import STOPWORDS
from lethe.classifier.text import normalized_words, word_spans

WORD_CACHE_BYTES = 16 * 1024 * 1024


# Bucket indices are int32 everywhere (features, heads, the bank): half the memory of int64 per weight.
BUCKET_DTYPE = np.int32
MAX_HASH_BITS = 30


@dataclass(frozen=True)
class FeatureSpec:
    """The feature space a classifier was trained in (stored with it; scoring must use the same)."""

    word_ngram_max: int = 2
    char_ngram_min: int = 2
    char_ngram_max: int = 5
    hash_bits: int = 20
    semantic: str = "minilm-static-v1"

    def __post_init__(self) -> None:
        if not 1 <= self.hash_bits <= MAX_HASH_BITS:
            raise ValueError(f"hash_bits must be in [1, {MAX_HASH_BITS}] (buckets are stored as int32)")

    @property
    def buckets(self) -> int:
        """Buckets per hashed block."""
        return 1 << self.hash_bits

    @property
    def sparse_dims(self) -> int:
        """Width of the sparse part: the word block, then the character block."""
        return 2 * self.buckets

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FeatureSpec:
        """Inverse of ``to_dict``."""
        return known_fields(cls, data)


def _hash(text: str, salt: bytes) -> int:
    return zlib.crc32(text.encode("utf-8"), zlib.crc32(salt))


_WORD_SALT, _CHAR_SALT = b"w", b"c"


class Hasher:
    """Maps words and n-grams of one ``FeatureSpec`` to bucket indices (memoized per word)."""

    def __init__(self, spec: FeatureSpec):
        self.spec = spec
        self._mask = spec.buckets - 1
        self._per_word = ByteBoundedCache(self._word_indices, WORD_CACHE_BYTES)

    def _word_indices(self, word: str) -> tuple[int, np.ndarray]:
        spec, mask = self.spec, self._mask
        padded = f" {word} "
        size = len(padded)
        grams: list[str] = []
        for n in range(spec.char_ngram_min, spec.char_ngram_max + 1):
            if n >= size:
                grams.append(padded)
                break
            grams.extend(padded[i : i + n] for i in range(size - n + 1))
        chars = np.fromiter((spec.buckets + (_hash(g, _CHAR_SALT) & mask) for g in grams), BUCKET_DTYPE, len(grams))
        return _hash(word, _WORD_SALT) & mask, chars

    def word(self, word: str) -> tuple[int, np.ndarray]:
        """The word's unigram bucket and its character n-gram buckets (offset into the character block)."""
        return self._per_word(word)

    def word_gram_spans(self, words: Sequence[str]) -> list[tuple[int, int, int]]:
        """``(bucket, start, end)`` of the word n-grams of ``words``: unigrams of content words (from the
        per-word cache), and longer n-grams that hold at least one content word."""
        out = [(self.word(w)[0], i, i + 1) for i, w in enumerate(words) if w not in STOPWORDS]
        mask = self._mask
        for n in range(2, self.spec.word_ngram_max + 1):
            out.extend(
                (_hash(" ".join(words[i : i + n]), _WORD_SALT) & mask, i, i + n)
                for i in range(len(words) - n + 1)
                if any(w not in STOPWORDS for w in words[i : i + n])
            )
        return out

    def char_grams(self, words: Sequence[str]) -> list[np.ndarray]:
        """Character n-gram buckets of each word (empty for function words)."""
        empty = np.zeros(0, BUCKET_DTYPE)
        return [empty if w in STOPWORDS else self.word(w)[1] for w in words]

    def clear(self) -> None:
        """Drop the per-word memo."""
        self._per_word.clear()


def sublinear_l2(indices: Sequence[int] | np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unique buckets of ``indices`` (sorted) with values ``1 + log(count)``, L2-normalized."""
    if len(indices) == 0:
        return np.zeros(0, BUCKET_DTYPE), np.zeros(0)
    unique, counts = np.unique(np.asarray(indices, dtype=BUCKET_DTYPE), return_counts=True)
    values = 1.0 + np.log(counts) if counts.max() > 1 else counts.astype(np.float64)
    return unique, values / np.sqrt(float(values @ values))


class Analysis:
    """One text analyzed in one feature space: normalized words with their spans, hashed features, semantics."""

    def __init__(self, text: str, hasher: Hasher, semantic: Any | None):
        self.text = text
        self._hasher = hasher
        self._semantic = semantic

    @cached_property
    def words(self) -> list[str]:
        """Normalized words."""
        return normalized_words(self.text)

    @cached_property
    def spans(self) -> list[tuple[int, int]]:
        """Character spans of the words in the raw text."""
        return word_spans(self.text)

    @cached_property
    def sparse(self) -> tuple[np.ndarray, np.ndarray]:
        """Sorted unique bucket indices and their values (word block, then character block)."""
        words = self.words
        word_idx, word_val = sublinear_l2([g for g, _, _ in self._hasher.word_gram_spans(words)])
        chars = self._hasher.char_grams(words)
        char_idx, char_val = sublinear_l2(np.concatenate(chars) if chars else np.zeros(0, BUCKET_DTYPE))
        return np.concatenate([word_idx, char_idx]), np.concatenate([word_val, char_val])

    @cached_property
    def semantic(self) -> np.ndarray | None:
        """Unit semantic vector of the normalized words, or ``None`` when the space has none."""
        if self._semantic is None:
            return None
        return self._semantic.encode_words(self.words)


class FeatureSpace:
    """Analyzes texts for one ``FeatureSpec``; shared by every classifier trained in that spec."""

    def __init__(self, spec: FeatureSpec, semantic: Any | None):
        if (spec.semantic != "none") != (semantic is not None):
            raise ValueError(f"feature spec asks for semantic={spec.semantic!r}")
        self.spec = spec
        self.hasher = Hasher(spec)
        self.semantic = semantic

    @property
    def semantic_dims(self) -> int:
        """Width of the semantic vector (0 without one)."""
        return 0 if self.semantic is None else int(self.semantic.dims)

    def analyze(self, text: str) -> Analysis:
        """The analysis of ``text`` (computed lazily, once per part)."""
        return Analysis(text, self.hasher, self.semantic)


_SPACES: dict[FeatureSpec, FeatureSpace] = {}


def feature_space(spec: FeatureSpec) -> FeatureSpace:
    """The process-wide feature space of ``spec`` (its semantic table loaded or distilled once)."""
    space = _SPACES.get(spec)
    if space is None:
        from lethe.classifier.semantic import static_embedder

        semantic = None if spec.semantic == "none" else static_embedder(spec.semantic)
        space = _SPACES.setdefault(spec, FeatureSpace(spec, semantic))
    return space
