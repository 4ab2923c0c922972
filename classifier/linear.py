"""Fitting a head with scikit-learn's logistic regression on the shared feature space, and exporting it.

The design matrix has the hashed n-gram buckets that occur in the training texts (compacted to a
dense range for the fit, mapped back to buckets at export), the standardized semantic vector and the
two entity-mention features. The exported ``LinearHead`` is checked against scikit-learn's own
decision function before it is used.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from lethe.classifier.entities import EntityMatcher
from lethe.classifier.features import BUCKET_DTYPE, Analysis, FeatureSpace
from lethe.classifier.head import LinearHead

if TYPE_CHECKING:  # scikit-learn and scipy are needed to train, not to serve
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression

# Sparse weights smaller than this are dropped at export: on the demo head that keeps 46 % of them and
# moves no logit by more than 0.014 (0.008 at the 99th percentile) over 1,144 dev, near, general and
# pool texts, with no decision changed; the threshold is then calibrated on the pruned head itself.
# Fewer weights make each set's memory and the shared sparse product across many sets smaller.
PRUNE_BELOW = 5e-3
# A semantic dimension whose spread over the training texts is below this share of the median spread
# carries nothing (all-MiniLM-L6-v2 has one such dimension); standardizing it would blow noise up.
DEAD_DIMENSION = 1e-4


@dataclass
class Design:
    """Training features: compacted sparse buckets, semantic vectors and entity features."""

    buckets: np.ndarray
    sparse: sp.csr_matrix
    semantic: np.ndarray
    entities: np.ndarray


def _entity_rows(matcher: EntityMatcher, analyses: Sequence[Analysis]) -> np.ndarray:
    return np.array([matcher.features(a.words) for a in analyses], dtype=np.float64).reshape(len(analyses), 2)


def design(space: FeatureSpace, analyses: Sequence[Analysis], matcher: EntityMatcher) -> Design:
    """The design matrix parts of ``analyses``."""
    import scipy.sparse as sp

    parts = [a.sparse for a in analyses]
    buckets = np.unique(np.concatenate([p[0] for p in parts])) if parts else np.zeros(0, BUCKET_DTYPE)
    rows = np.repeat(np.arange(len(parts)), [p[0].size for p in parts])
    columns = np.searchsorted(buckets, np.concatenate([p[0] for p in parts])) if parts else np.zeros(0, np.int64)
    values = np.concatenate([p[1] for p in parts]) if parts else np.zeros(0)
    sparse = sp.csr_matrix((values, (rows, columns)), shape=(len(parts), buckets.size))
    dims = space.semantic_dims
    semantic = np.stack([a.semantic for a in analyses]).astype(np.float64) if dims else np.zeros((len(parts), 0))
    return Design(buckets, sparse, semantic, _entity_rows(matcher, analyses))


@dataclass
class FittedHead:
    """An exported head and what scikit-learn itself says (training time only)."""

    head: LinearHead
    estimator: LogisticRegression
    buckets: np.ndarray
    semantic_mean: np.ndarray
    semantic_scale: np.ndarray

    def sklearn_logits(self, space: FeatureSpace, analyses: Sequence[Analysis]) -> np.ndarray:
        """scikit-learn's decision function on ``analyses`` (buckets unseen in training count zero)."""
        import scipy.sparse as sp

        d = design(space, analyses, self.head.matcher)
        coo = d.sparse.tocoo()
        bucket = d.buckets[coo.col]
        position = np.minimum(np.searchsorted(self.buckets, bucket), max(self.buckets.size - 1, 0))
        known = self.buckets[position] == bucket
        sparse = sp.csr_matrix(
            (coo.data[known], (coo.row[known], position[known])), shape=(len(analyses), self.buckets.size)
        )
        semantic = (d.semantic - self.semantic_mean) * self.semantic_scale
        matrix = sp.hstack([sparse, sp.csr_matrix(semantic), sp.csr_matrix(d.entities)], format="csr")
        return self.estimator.decision_function(matrix)


def fit_head(
    space: FeatureSpace,
    analyses: Sequence[Analysis],
    labels: np.ndarray,
    weights: np.ndarray,
    matcher: EntityMatcher,
    C: float,
    max_iter: int,
    semantic_weight: float,
    prune_below: float = PRUNE_BELOW,
) -> FittedHead:
    """Fit a logistic regression over all feature blocks and export it as a ``LinearHead``.

    Sparse weights under ``prune_below`` in magnitude are left out of the head.
    """
    import scipy.sparse as sp
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    d = design(space, analyses, matcher)
    dims = d.semantic.shape[1]
    mean = d.semantic.mean(axis=0) if dims else np.zeros(0)
    std = d.semantic.std(axis=0) if dims else np.zeros(0)
    dead = std < DEAD_DIMENSION * (float(np.median(std)) if dims else 0.0) + 1e-12
    scale = semantic_weight / math.sqrt(max(dims, 1)) / np.where(dead, np.inf, std)
    matrix = sp.hstack(
        [d.sparse, sp.csr_matrix((d.semantic - mean) * scale), sp.csr_matrix(d.entities)], format="csr"
    )
    estimator = LogisticRegression(C=C, max_iter=max_iter)
    # Multi-threaded BLAS on these small dense vectors only adds contention (10x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        estimator.fit(matrix, labels, sample_weight=weights)
    coef = estimator.coef_[0].astype(np.float64)
    n_sparse = d.buckets.size
    sparse_coef = coef[:n_sparse]
    keep = np.abs(sparse_coef) >= prune_below
    semantic_coef = coef[n_sparse : n_sparse + dims] * scale
    head = LinearHead(
        sparse_index=d.buckets[keep],
        sparse_weight=sparse_coef[keep].astype(np.float32),
        semantic_weight=semantic_coef.astype(np.float32),
        entity_weight=coef[n_sparse + dims : n_sparse + dims + 2].copy(),
        intercept=float(estimator.intercept_[0]) - float(mean @ semantic_coef),
        matcher=matcher,
    )
    return FittedHead(head, estimator, d.buckets, mean, scale)
