"""One forget set's decision function over the shared feature space (``classifier.features``).

``logit = sparse_weight . hashed_ngrams + semantic_weight . semantic + entity_weight . mentions + intercept``,
where ``mentions`` are two binary features: a multi-word entity of the forget set is mentioned (one typo
per long word tolerated), a single-word one is mentioned exactly. The semantic block's standardization
is folded into ``semantic_weight`` and ``intercept`` at export, so scoring is plain dot products.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from lethe.classifier.entities import EntityMatcher
from lethe.classifier.features import BUCKET_DTYPE, Analysis, Hasher, sublinear_l2


def sorted_lookup(keys: np.ndarray, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(position, found)`` of each query in the sorted, non-empty ``keys`` (a position counts where found)."""
    position = np.searchsorted(keys, queries)
    position[position == keys.size] = 0
    return position, keys[position] == queries


def sparse_dot(index: np.ndarray, weight: np.ndarray, doc_index: np.ndarray, doc_value: np.ndarray) -> float:
    """Dot product of a sorted sparse weight vector with a sorted sparse feature vector."""
    if index.size == 0 or doc_index.size == 0:
        return 0.0
    position, hit = sorted_lookup(index, doc_index)
    return float(doc_value[hit] @ weight[position[hit]])


@dataclass
class LinearHead:
    """Weights of one classifier: sparse over hashed n-grams, dense over the semantic vector, entity mentions."""

    sparse_index: np.ndarray
    sparse_weight: np.ndarray
    semantic_weight: np.ndarray
    entity_weight: np.ndarray
    intercept: float
    matcher: EntityMatcher

    def __post_init__(self) -> None:
        order = np.argsort(self.sparse_index, kind="stable")
        self.sparse_index = np.ascontiguousarray(self.sparse_index[order], dtype=BUCKET_DTYPE)
        self.sparse_weight = np.ascontiguousarray(self.sparse_weight[order], dtype=np.float32)
        self.semantic_weight = np.ascontiguousarray(self.semantic_weight, dtype=np.float32)
        self.entity_weight = np.ascontiguousarray(self.entity_weight, dtype=np.float64)
        if self.entity_weight.shape != (2,):
            raise ValueError("entity_weight must have shape (2,)")
        if np.unique(self.sparse_index).size != self.sparse_index.size:
            raise ValueError("sparse_index has repeated buckets")

    def entity_logit(self, words: Sequence[str]) -> float:
        """The entity features' share of the logit."""
        full, single = self.matcher.features(words)
        return full * float(self.entity_weight[0]) + single * float(self.entity_weight[1])

    def logit(self, analysis: Analysis) -> float:
        """Decision function for one analyzed text."""
        doc_index, doc_value = analysis.sparse
        total = self.intercept + sparse_dot(self.sparse_index, self.sparse_weight, doc_index, doc_value)
        if self.semantic_weight.size:
            semantic = analysis.semantic
            if semantic is None:
                raise ValueError("this classifier needs semantic features")
            total += float(semantic @ self.semantic_weight)
        return total + self.entity_logit(analysis.words)

    def word_contributions(self, analysis: Analysis, hasher: Hasher) -> list[float]:
        """Each word's share of the sparse n-gram logit (an n-gram's share split evenly over its words)."""
        words = analysis.words
        per_word = [0.0] * len(words)
        spans = hasher.word_gram_spans(words)
        chars = hasher.char_grams(words)
        for units in ([(g, start, end) for g, start, end in spans],
                      [(int(g), i, i + 1) for i, array in enumerate(chars) for g in array]):  # fmt: skip
            buckets = np.array([g for g, _, _ in units], dtype=BUCKET_DTYPE)
            index, value = sublinear_l2(buckets)
            value_of = dict(zip(index.tolist(), value.tolist(), strict=True))
            count_of = dict(zip(*np.unique(buckets, return_counts=True), strict=True)) if buckets.size else {}
            for bucket, start, end in units:
                share = self._weight(bucket) * value_of[bucket] / int(count_of[bucket]) / (end - start)
                for k in range(start, end):
                    per_word[k] += share
        return per_word

    def _weight(self, bucket: int) -> float:
        position = int(np.searchsorted(self.sparse_index, bucket))
        if position < self.sparse_index.size and self.sparse_index[position] == bucket:
            return float(self.sparse_weight[position])
        return 0.0

    def arrays(self) -> dict[str, np.ndarray]:
        """Numeric tensors for safetensors."""
        return {
            "sparse_index": self.sparse_index,
            "sparse_weight": self.sparse_weight,
            "semantic_weight": self.semantic_weight,
            "entity_weight": self.entity_weight,
            "intercept": np.array([self.intercept], dtype=np.float64),
        }

    @property
    def nbytes(self) -> int:
        """Bytes held by the weight arrays."""
        return sum(int(a.nbytes) for a in self.arrays().values())
