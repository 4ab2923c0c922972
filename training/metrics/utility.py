"""Utility metrics: what the target still does well outside the forget set.

Model utility is the harmonic mean of {answer probability, ROUGE-L recall, truth ratio} over the
retain and general sets (TOFU's definition; on general sets with answer options the probability is
normalized over the options). A row scored ``None`` is one the target refused to answer (a
guardrail's canned reply): no answer has a probability there, so it counts 0 in every term.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from lethe.training.metrics.memorization import retain_truth_ratio
from lethe.training.metrics.scoring import RowScores


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (0 when any value is 0)."""
    values = [float(v) for v in values]
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def utility_terms(
    split: str, scores: Sequence[RowScores | None], rouge_l: float, options: bool = False
) -> dict[str, float]:
    """``{split}_probability``, ``{split}_rouge_l`` and (with perturbed answers) ``{split}_truth_ratio``.

    ``options``: normalize the probability over the answer options when every row has them.
    """
    with_options = options and all(s is None or s.perturbed for s in scores)
    probabilities = [0.0 if s is None else s.normalized_probability if with_options else s.probability for s in scores]
    terms = {f"{split}_probability": float(np.mean(probabilities)), f"{split}_rouge_l": rouge_l}
    ratios = [
        0.0 if s is None else retain_truth_ratio(np.array([s.truth_ratio]))
        for s in scores
        if s is None or s.truth_ratio is not None
    ]
    if ratios:
        terms[f"{split}_truth_ratio"] = float(np.mean(ratios))
    return terms


def model_utility(terms: dict[str, float]) -> float:
    """The harmonic mean of every utility term."""
    return harmonic_mean(list(terms.values()))
