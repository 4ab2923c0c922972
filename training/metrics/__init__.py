"""Unlearning metrics, computed the way open-unlearning computes them, one module per family.

- ``scoring``: the target under evaluation (``EvalTarget``, ``through_screen``: the gateway's own
  path), per-row answer scores and greedy answers: what every family reads;
- ``memorization``: answer probability, truth ratio, ROUGE-L recall, keyword rate;
- ``privacy``: forget quality (KS test against a never-trained model) and Min-K% membership inference;
- ``utility``: model utility (harmonic mean over the retain and general sets);
- ``fluency``: loop rate, distinct-2 and the bare model's perplexity of answers;
- ``scope``: flag rates of the live forget sets (recall on in-scope prompts, false positives on the others).

The trainer's before/after figures, the verification report and the benchmark all call these functions;
none copies them.
"""

from lethe.training.metrics.fluency import base_perplexity, distinct_2, loop_rate, loops
from lethe.training.metrics.memorization import (
    answer_probability,
    contains_keyword,
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
from lethe.training.metrics.scope import flag_rates
from lethe.training.metrics.scoring import (
    EvalTarget,
    Messages,
    PlanFn,
    RowScores,
    answer_conversations,
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
    "answer_conversations",
    "answer_probability",
    "auc",
    "base_perplexity",
    "contains_keyword",
    "distinct_2",
    "flag_rates",
    "forget_quality",
    "forget_truth_ratio",
    "generate_answers",
    "harmonic_mean",
    "keyword_rate",
    "ks_test",
    "lcs_length",
    "loop_rate",
    "loops",
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
