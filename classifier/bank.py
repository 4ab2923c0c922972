"""Every live forget set's classifier scored at once: one analysis per text, one sparse product for all heads.

The heads' sparse weights are stacked by bucket, their semantic weights into one matrix, their entities
into one index. A bucket that at least half of the heads weigh is a row of a dense ``(buckets, heads)``
block (4 bytes per head, no more than the 8 a compressed entry takes); the others stay in a compressed
table (for each bucket, the heads that weigh it and how much). Scoring a text is one small matrix
product over its dense rows and a gather-and-``np.bincount`` over its compressed ones, so the cost grows
with the text and the heads that share its rare buckets, and common buckets cost one BLAS call.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from lethe.classifier.entities import Entity, EntityMatcher
from lethe.classifier.features import BUCKET_DTYPE, Analysis, FeatureSpace
from lethe.classifier.head import LinearHead, sorted_lookup


class HeadBank:
    """Logits of many heads trained in one feature space."""

    def __init__(self, space: FeatureSpace, heads: Sequence[LinearHead]):
        self.space = space
        self.size = len(heads)
        self.intercepts = np.array([h.intercept for h in heads], dtype=np.float64)
        dims = space.semantic_dims
        self.semantic = np.stack([h.semantic_weight for h in heads]) if heads and dims else np.zeros((len(heads), 0))
        self._stack_sparse(heads)
        self._index_entities(heads)

    def _stack_sparse(self, heads: Sequence[LinearHead]) -> None:
        buckets = np.concatenate([h.sparse_index for h in heads]) if heads else np.zeros(0, BUCKET_DTYPE)
        owners = np.concatenate([np.full(h.sparse_index.size, i, np.int32) for i, h in enumerate(heads)]) \
            if heads else np.zeros(0, np.int32)  # fmt: skip
        weights = np.concatenate([h.sparse_weight for h in heads]) if heads else np.zeros(0, np.float32)
        order = np.argsort(buckets, kind="stable")
        buckets, owners, weights = buckets[order], owners[order], weights[order]
        unique, counts = np.unique(buckets, return_counts=True)
        hot = counts * 2 >= max(self.size, 2)
        in_hot = np.repeat(hot, counts)
        self._dense_buckets = unique[hot]
        self._dense = np.zeros((self._dense_buckets.size, self.size), dtype=np.float32)
        self._dense[np.repeat(np.arange(self._dense_buckets.size), counts[hot]), owners[in_hot]] = weights[in_hot]
        self._owners, self._weights = owners[~in_hot], weights[~in_hot]
        self._buckets = unique[~hot]
        self._starts = np.append(0, np.cumsum(counts[~hot])).astype(np.int64)

    def _index_entities(self, heads: Sequence[LinearHead]) -> None:
        phrases: dict[tuple[str, ...], list[int]] = {}
        entities: dict[tuple[str, ...], Entity] = {}
        for i, head in enumerate(heads):
            for entity in head.matcher.entities:
                phrases.setdefault(entity.words, []).append(i)
                entities.setdefault(entity.words, entity)
        self._phrase_heads = {p: np.array(sorted(set(owners)), dtype=np.int64) for p, owners in phrases.items()}
        self._matcher = EntityMatcher(list(entities.values()))
        self._entity_weights = np.stack([h.entity_weight for h in heads]) if heads else np.zeros((0, 2))

    @property
    def nbytes(self) -> int:
        """Bytes held by the stacked weights (not counting the entity index)."""
        arrays = (self._buckets, self._starts, self._owners, self._weights, self._dense_buckets, self._dense,
                  self.semantic, self.intercepts)
        return sum(int(a.nbytes) for a in arrays)

    def logits(self, analysis: Analysis) -> np.ndarray:
        """``(size,)`` decision values of every head for one analyzed text."""
        out = self.intercepts.copy()
        if not self.size:
            return out
        doc_index, doc_value = analysis.sparse
        if self._dense_buckets.size:
            position, matched = sorted_lookup(self._dense_buckets, doc_index)
            if matched.any():
                out += doc_value[matched] @ self._dense[position[matched]]
        if self._buckets.size:
            position, matched = sorted_lookup(self._buckets, doc_index)
            rows, values = position[matched], doc_value[matched]
            starts, ends = self._starts[rows], self._starts[rows + 1]
            lengths = ends - starts
            if lengths.sum():
                offsets = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) + np.arange(lengths.sum())
                contributions = self._weights[offsets] * np.repeat(values, lengths)
                out += np.bincount(self._owners[offsets], weights=contributions, minlength=self.size)
        if self.semantic.shape[1]:
            semantic = analysis.semantic
            assert semantic is not None
            out += self.semantic @ semantic
        out += self._entity_logits(analysis.words)
        return out

    def _entity_logits(self, words: Sequence[str]) -> np.ndarray:
        flags = np.zeros((self.size, 2))
        for mention in self._matcher.mentions(words):
            column = EntityMatcher.counts_as(words, mention)
            if column is not None:
                flags[self._phrase_heads[mention[2]], column] = 1.0
        return (flags * self._entity_weights).sum(axis=1)


def stack_heads(space: FeatureSpace, heads: Mapping[str, LinearHead]) -> tuple[list[str], HeadBank]:
    """Ids in bank order and the bank of ``heads``."""
    ids = list(heads)
    return ids, HeadBank(space, [heads[i] for i in ids])
