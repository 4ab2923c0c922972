"""What the benchmark measures on one system (a model, plus how each prompt is served).

A ``System`` is anything a user could deploy to answer questions: the bare model, the model
behind Lethe's screen, a weight-edited copy, a refusal guardrail or a system prompt. Every
metric is computed from real forward passes and greedy generations of that system:

- ``forget_quality``: KS-test p-value between the system's truth ratios on the forget rows and
  the never-trained reference's (``training.metrics.privacy``);
- ``model_utility``: harmonic mean of answer probability, ROUGE-L recall and truth ratio over the
  retain and general rows (``training.metrics.utility``);
- ``forget_rouge`` / ``retain_rouge``: mean ROUGE-L recall of greedy answers against the true answers;
- ``mia_auc``: Min-K% (k = 20%) membership-inference AUC of forget rows against held-out rows;
- ``classifier_recall`` / ``classifier_fpr``: share of forget prompts flagged, of other prompts flagged;
- accuracies and keyword rates for the classification and Harry Potter scenarios.

The refusal guardrail serves a canned answer to flagged prompts, so no answer has a probability
under it: its flagged rows count as probability 0 and truth-ratio term 0 in utility, and
``forget_quality`` and ``mia_auc`` are not defined for it (reported as ``None``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lethe.benchmarks.systems import System
from lethe.runtime.generation import SamplingParams
from lethe.training.data import ForgetRow
from lethe.training.metrics import (
    RowScores,
    forget_quality,
    harmonic_mean,
    mean_rouge_l,
    min_k_auc,
    score_answers,
    truth_ratios,
    utility_terms,
)


def rouge(system: System, rows: Sequence[ForgetRow], max_new_tokens: int = 48) -> float:
    """Mean ROUGE-L recall of the system's greedy answers against the rows' completions."""
    texts = system.answers([r.prompt for r in rows], max_new_tokens)
    return mean_rouge_l(texts, [r.completion for r in rows])


def utility(
    system: System, retain: Sequence[ForgetRow], general: Sequence[ForgetRow], max_new_tokens: int = 48
) -> dict[str, float]:
    """Model utility terms and their harmonic mean (``training.metrics.utility``), refused rows scoring 0."""
    parts: dict[str, float] = {}
    for name, rows in (("retain", retain), ("general", general)):
        if rows:
            row_scores = system.scores(rows)
            parts.update(utility_terms(name, row_scores, rouge(system, rows, max_new_tokens), name == "general"))
    parts["model_utility"] = harmonic_mean(list(parts.values()))
    return parts


def ratios_of(row_scores: Sequence[RowScores | None]) -> np.ndarray | None:
    """Truth ratios of scored rows; ``None`` if any row was refused (the ratio is undefined there)."""
    if any(s is None for s in row_scores):
        return None
    return truth_ratios([s for s in row_scores if s is not None])


def tofu_metrics(
    system: System,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    general: Sequence[ForgetRow],
    heldout: Sequence[ForgetRow],
    reference_ratios: np.ndarray | None,
    max_new_tokens: int = 48,
) -> dict[str, Any]:
    """Every TOFU-style figure of one system; ``reference_ratios`` are the never-trained model's on ``forget``."""
    forget_scores = system.scores(forget)
    ratios = ratios_of(forget_scores)
    out: dict[str, Any] = {}
    out["forget_quality"] = (
        forget_quality(ratios, reference_ratios) if ratios is not None and reference_ratios is not None else None
    )
    parts = utility(system, retain, general, max_new_tokens)
    out["model_utility"] = parts.pop("model_utility")
    out["forget_rouge"] = rouge(system, forget, max_new_tokens)
    out["retain_rouge"] = parts["retain_rouge_l"]
    heldout_scores = system.scores(heldout)
    members = [s for s in forget_scores if s is not None]
    nonmembers = [s for s in heldout_scores if s is not None]
    complete = len(members) == len(forget_scores) and len(nonmembers) == len(heldout_scores)
    out["mia_auc"] = min_k_auc(members, nonmembers) if complete and members and nonmembers else None
    out["forget_probability"] = float(np.mean([s.probability for s in members])) if members else 0.0
    out.update({k: v for k, v in parts.items() if k != "retain_rouge_l"})
    return out


def classifier_rates(system: System, positives: Sequence[str], negatives: Sequence[str]) -> dict[str, float]:
    """Recall on forget prompts and false-positive rate on the others, for systems that flag prompts."""
    if system.flags is None:
        return {}
    recall = float(np.mean([system.flags(q) for q in positives])) if positives else float("nan")
    fpr = float(np.mean([system.flags(q) for q in negatives])) if negatives else float("nan")
    return {"classifier_recall": recall, "classifier_fpr": fpr}


def serve_once(system: System, question: str) -> None:
    """Serve one token of one request as the system would: classify, intervene, prefill, decode once.

    The refusal guardrail's flagged requests cost the classifier only.
    """
    if system.refused(question):
        return
    prompt, messages = system.target.render(question)
    embeds = system.model.prompt_embeddings(prompt, system.target.plan_for(prompt, messages))
    system.model.generate_batch([embeds], [SamplingParams(max_new_tokens=1)])


def label_accuracy(system: System, rows: Sequence[ForgetRow], labels: Sequence[str], batch_size: int = 16) -> float:
    """Share of rows whose true label is the more probable label answer under the system (refused rows count wrong).

    Each label is scored as the whole answer (sum of token log-probabilities) after the row's prompt,
    with the system's intervention for that prompt.
    """
    if not rows:
        return float("nan")
    kept = [row for row in rows if not system.refused(row.prompt)]
    scored = score_answers(system.target, [row.prompt for row in kept], [labels] * len(kept), batch_size)
    correct = 0
    for row, logprobs in zip(kept, scored, strict=True):
        totals = [float(t.sum()) for t in logprobs]
        correct += labels[int(np.argmax(totals))] == row.completion
    return correct / len(rows)
