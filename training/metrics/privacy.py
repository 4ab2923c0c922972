"""Privacy metrics: can one tell the unlearned target from a model that never saw the forget set?

- forget quality: ``scipy.stats.ks_2samp`` p-value between the target's truth ratios on the forget
  rows and those of a model trained without them (1 when indistinguishable);
- Min-K% membership inference: AUC between forget (member) and held-out rows; 0.5 is ideal.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy import stats

from lethe.training.metrics.scoring import RowScores


def ks_test(ratios: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value between two truth-ratio samples."""
    result = stats.ks_2samp(ratios, reference)
    return float(result.statistic), float(result.pvalue)


def forget_quality(ratios: np.ndarray, reference: np.ndarray) -> float:
    """Forget quality: KS-test p-value against the truth ratios of a model never trained on the forget set."""
    return ks_test(ratios, reference)[1]


def min_k_score(token_logprobs: torch.Tensor, k: float = 0.2) -> float:
    """Min-K% score: mean of the lowest ``k`` fraction of token log-probabilities (higher: more member-like)."""
    values = token_logprobs.flatten().sort().values
    count = max(1, math.ceil(k * values.numel()))
    return float(values[:count].mean())


def auc(positives: Sequence[float], negatives: Sequence[float]) -> float:
    """Probability that a random positive scores above a random negative (ties count half)."""
    pos, neg = np.asarray(positives, dtype=np.float64), np.asarray(negatives, dtype=np.float64)
    if not len(pos) or not len(neg):
        return float("nan")
    greater = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    return float(greater / (len(pos) * len(neg)))


def min_k_auc(members: Sequence[RowScores], nonmembers: Sequence[RowScores], k: float = 0.2) -> float:
    """Min-K% membership-inference AUC of forget (members) against held-out rows; 0.5 is ideal."""
    return auc([min_k_score(s.answer, k) for s in members], [min_k_score(s.answer, k) for s in nonmembers])
