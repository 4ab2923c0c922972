"""Split-conformal thresholds: a recall guarantee from held-out positives, an FPR bound from held-out negatives.

A text is flagged when its score is >= the threshold.  For exchangeable calibration scores:

- ``recall_threshold``: t = s_(k), the k-th smallest positive score with k = floor(alpha (n + 1)); then
  P(new positive scores >= t) >= 1 - k / (n + 1) >= 1 - alpha.  When k = 0 (n < 1/alpha - 1) no finite
  threshold carries the guarantee; the minimum is used and the weaker bound 1 - 1 / (n + 1) reported.
- ``fpr_threshold``: t just above s_(k), the k-th smallest negative score with k = ceil((n + 1)(1 - beta));
  then P(new negative scores >= t) <= 1 - k / (n + 1) <= beta.  With too few negatives the maximum is used.

Recall holds for every t <= the recall threshold and the FPR bound for every t >= the FPR threshold, so
when the two are ordered any point between them keeps both; ``combine`` takes the midpoint in logit space.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

_EPS = 1e-12


@dataclass(frozen=True)
class ConformalThreshold:
    """A threshold, the order statistic it came from, and the finite-sample bound it carries."""

    threshold: float
    rank: int
    calibration_size: int
    bound: float
    guarantee_met: bool


def recall_threshold(scores: Sequence[float], alpha: float) -> ConformalThreshold:
    """Lower conformal quantile of positive scores: recall >= 1 - alpha when ``guarantee_met``."""
    n = len(scores)
    if n == 0:
        raise ValueError("no calibration scores")
    ordered = sorted(scores)
    k = math.floor(alpha * (n + 1) + _EPS)
    rank = max(k, 1)
    return ConformalThreshold(float(ordered[rank - 1]), rank, n, 1.0 - rank / (n + 1), k >= 1)


def fpr_threshold(scores: Sequence[float], beta: float) -> ConformalThreshold:
    """Upper conformal quantile of negative scores: FPR <= beta when ``guarantee_met``."""
    n = len(scores)
    if n == 0:
        raise ValueError("no calibration scores")
    ordered = sorted(scores)
    k = math.ceil((n + 1) * (1.0 - beta) - _EPS)
    rank = min(k, n)
    threshold = float(np.nextafter(ordered[rank - 1], np.inf))
    return ConformalThreshold(threshold, rank, n, 1.0 - rank / (n + 1), k <= n)


def _logit(p: float) -> float:
    p = min(max(p, 1e-15), 1 - 1e-15)
    return math.log(p / (1 - p))


def combine(recall: ConformalThreshold, fpr: ConformalThreshold | None, prefer: str = "recall") -> tuple[float, bool]:
    """The serving threshold and whether both bounds hold at it.

    Ordered thresholds give their logit midpoint (both bounds hold). Otherwise ``prefer`` decides:
    ``recall`` (a miss leaks forgotten knowledge, a false alarm only perturbs one answer) or ``fpr``
    (for a broad topic, whose generated positives include ambiguous ones, keep unrelated questions
    answered as before).
    """
    if fpr is None:
        return recall.threshold, False
    if fpr.threshold <= recall.threshold:
        mid = 0.5 * (_logit(fpr.threshold) + _logit(recall.threshold))
        threshold = min(max(1.0 / (1.0 + math.exp(-mid)), fpr.threshold), recall.threshold)
        return threshold, True
    return (fpr.threshold if prefer == "fpr" else recall.threshold), False
