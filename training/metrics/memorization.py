"""Memorization metrics: how much of an answer a target still knows (as open-unlearning computes them).

- answer probability: ``exp(mean token log p(answer | question))`` per question;
- truth ratio per question: ``p_perturbed / p_paraphrased`` where each ``p`` is the length-normalized
  probability above and ``p_perturbed`` the geometric mean over the perturbed answers; the forget
  aggregate is ``mean(min(TR, 1/TR))``, the retain one ``mean(max(0, 1 - TR))``;
- ROUGE-L recall of a greedy answer against the reference answer (word LCS);
- keyword rate: share of answers that still name what they should not.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any

import numpy as np

from lethe.training.metrics.scoring import RowScores


def answer_probability(scores: Sequence[RowScores]) -> float:
    """Mean length-normalized answer probability."""
    return float(np.mean([s.probability for s in scores])) if scores else float("nan")


def truth_ratios(scores: Sequence[RowScores]) -> np.ndarray:
    """Truth ratio of every row that has perturbed answers."""
    return np.array([tr for s in scores if (tr := s.truth_ratio) is not None], dtype=np.float64)


def forget_truth_ratio(ratios: np.ndarray) -> float:
    """Forget-set aggregate ``mean(min(TR, 1/TR))``: 1 when true and false answers are equally likely."""
    return float(np.mean(np.minimum(ratios, 1.0 / (ratios + 1e-10)))) if len(ratios) else float("nan")


def retain_truth_ratio(ratios: np.ndarray) -> float:
    """Retain-set aggregate ``mean(max(0, 1 - TR))``: 1 when the true answer dominates."""
    return float(np.mean(np.maximum(0.0, 1.0 - ratios))) if len(ratios) else float("nan")


def split_summary(scores: Sequence[RowScores], forget: bool) -> dict[str, Any]:
    """Answer probability and truth ratio (aggregate as for a forget or a retain set) of one split."""
    ratios = truth_ratios(scores)
    return {
        "answer_probability": answer_probability(scores),
        "truth_ratio": forget_truth_ratio(ratios) if forget else retain_truth_ratio(ratios),
        "truth_ratio_median": float(np.median(ratios)) if len(ratios) else float("nan"),
        "rows": len(scores),
    }


_WORD = re.compile(r"[a-z0-9]+")


def rouge_tokens(text: str) -> list[str]:
    """ROUGE tokenization: lowercase alphanumeric words (as ``rouge_score``, without stemming)."""
    return _WORD.findall(text.lower())


def lcs_length(a: Sequence[str], b: Sequence[str]) -> int:
    """Length of the longest common subsequence of two token lists."""
    if not a or not b:
        return 0
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b, start=1):
            current.append(previous[j - 1] + 1 if x == y else max(previous[j], current[j - 1]))
        previous = current
    return previous[-1]


def rouge_l_recall(prediction: str, reference: str) -> float:
    """ROUGE-L recall: LCS length over the reference length."""
    ref = rouge_tokens(reference)
    return lcs_length(rouge_tokens(prediction), ref) / len(ref) if ref else 0.0


def mean_rouge_l(predictions: Sequence[str], references: Sequence[str]) -> float:
    """Mean ROUGE-L recall over the pairs with a non-blank reference (``nan`` when there is none)."""
    values = [rouge_l_recall(p, r) for p, r in zip(predictions, references, strict=True) if r.strip()]
    return float(np.mean(values)) if values else float("nan")


def contains_keyword(answer: str, keywords: Sequence[str]) -> bool:
    """Whether any keyword occurs in the answer (case-insensitive)."""
    lowered = answer.lower()
    return any(k.lower() in lowered for k in keywords)


def keyword_rate(texts: Sequence[str], keywords: Sequence[Sequence[str]]) -> float:
    """Share of answers that mention at least one of their expected keywords (case-insensitive)."""
    if not texts:
        return float("nan")
    return float(np.mean([contains_keyword(t, ks) for t, ks in zip(texts, keywords, strict=True)]))
