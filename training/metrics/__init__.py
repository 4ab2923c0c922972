"""Unlearning metrics, computed the way open-unlearning computes them, one module per family.

- ``scoring``: the target under evaluation (``EvalTarget``, ``through_screen``: the gateway's own
  path), per-row answer scores and greedy answers: what every family reads;
- ``memorization``: answer probability, truth ratio, ROUGE-L recall, keyword rate;
- ``privacy``: forget quality (KS test against a never-trained model) and Min-K% membership inference;
- ``utility``: model utility (harmonic mean over the retain and general sets).

The trainer's before/after figures and the benchmark both call these functions; neither copies them.
"""

from lethe.training.metrics.memorization import (
    answer_probability,
    forget_truth_ratio,
    keyword_rate,
    lcs_length,
    mean_rouge_l,
    retain_truth_ratio,
    rouge_l_recall,
    rouge_tokens,
    split_summary,
    truth_ratios,
)
from lethe.training.metrics.privacy import auc, forget_quality, ks_test, min_k_auc, min_k_score
from lethe.training.metrics.scoring import (
    EvalTarget,
    Messages,
    PlanFn,
    RowScores,
    generate_answers,
    render_question,
    score_answers,
    score_rows,
    through_screen,
)
from lethe.training.metrics.utility import harmonic_mean, model_utility, utility_terms

__all__ = [
    "EvalTarget",
    "Messages",
    "PlanFn",
    "RowScores",
    "answer_probability",
    "auc",
    "forget_quality",
    "forget_truth_ratio",
    "generate_answers",
    "harmonic_mean",
    "keyword_rate",
    "ks_test",
    "lcs_length",
    "mean_rouge_l",
    "min_k_auc",
    "min_k_score",
    "model_utility",
    "render_question",
    "retain_truth_ratio",
    "rouge_l_recall",
    "rouge_tokens",
    "score_answers",
    "score_rows",
    "split_summary",
    "through_screen",
    "truth_ratios",
    "utility_terms",
]
