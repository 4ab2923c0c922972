"""What the benchmark measures on one system (a model, plus how each prompt is served).

A ``System`` is anything a user could deploy to answer questions: the bare model, the model
behind Lethe's screen, a weight-edited copy, a refusal guardrail or a system prompt. Every
metric is computed from real forward passes and greedy generations of that system:

- ``forget_quality``: KS-test p-value between the system's truth ratios on the forget rows and
  the never-trained reference's (``training.metrics.forget_quality``);
- ``model_utility``: harmonic mean of answer probability, ROUGE-L recall and truth ratio over the
  retain and general rows (``training.metrics.model_utility``'s definition);
- ``forget_rouge`` / ``retain_rouge``: mean ROUGE-L recall of greedy answers against the true answers;
- ``mia_auc``: Min-K% (k = 20%) membership-inference AUC of forget rows against held-out rows;
- ``classifier_recall`` / ``classifier_fpr``: share of forget prompts flagged, of other prompts flagged;
- accuracies and keyword rates for the classification and Harry Potter scenarios.

The refusal guardrail serves a canned answer to flagged prompts, so no answer has a probability
under it: its flagged rows count as probability 0 and truth-ratio term 0 in utility, and
``forget_quality`` and ``mia_auc`` are not defined for it (reported as ``None``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import TemplatedPrompt
from lethe.training.data import ForgetRow
from lethe.training.metrics import (
    EvalTarget,
    Messages,
    RowScores,
    forget_quality,
    harmonic_mean,
    min_k_auc,
    retain_truth_ratio,
    rouge_l_recall,
    score_rows,
    truth_ratios,
)

REFUSAL = "I'm sorry, but I can't help with that."


class PromptedTarget(EvalTarget):
    """An ``EvalTarget`` whose every question is preceded by a fixed system message (the prompting baseline)."""

    def __init__(self, model: LanguageModel, system_prompt: str, batch_size: int = 32):
        super().__init__(model, None, batch_size)
        self.system_prompt = system_prompt

    def render(self, question: str) -> tuple[TemplatedPrompt, Messages]:
        """The chat prompt with the system message first (plain text joined when there is no template)."""
        messages = [{"role": "system", "content": self.system_prompt}, {"role": "user", "content": question}]
        if self.model.embedder.has_chat_template:
            return self.model.chat_prompt(messages), messages
        return self.model.text_prompt(f"{self.system_prompt}\n\n{question}"), messages


@dataclass
class System:
    """One way of serving answers: an evaluation target, and optionally a refusal gate or a flagging function."""

    name: str
    target: EvalTarget
    refuse: Callable[[str], bool] | None = None
    flags: Callable[[str], bool] | None = None
    train_s: float | None = None
    forward_passes: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def model(self) -> LanguageModel:
        """The language model behind the system."""
        return self.target.model

    def refused(self, question: str) -> bool:
        """Whether the guardrail answers this question with the canned refusal."""
        return self.refuse is not None and self.refuse(question)


def answers(system: System, questions: Sequence[str], max_new_tokens: int = 48, batch_size: int = 16) -> list[str]:
    """Greedy answers of the system to each question (canned refusal where its guardrail fires)."""
    model = system.model
    params = SamplingParams(max_new_tokens=max_new_tokens)
    out: list[str | None] = [REFUSAL if system.refused(q) else None for q in questions]
    pending = [i for i, text in enumerate(out) if text is None]
    embeds = []
    for i in pending:
        prompt, messages = system.target.render(questions[i])
        embeds.append(model.prompt_embeddings(prompt, system.target.plan_for(prompt, messages)))
    for start in range(0, len(pending), batch_size):
        chunk = embeds[start : start + batch_size]
        results = model.generate_batch(chunk, [params] * len(chunk))
        for index, result in zip(pending[start : start + batch_size], results, strict=True):
            out[index] = result.text
    return [text or "" for text in out]


def scores(system: System, rows: Sequence[ForgetRow]) -> list[RowScores | None]:
    """Row scores under the system; ``None`` for rows its guardrail refuses (no answer has a probability)."""
    kept = [i for i, row in enumerate(rows) if not system.refused(row.prompt)]
    scored = score_rows(system.target, [rows[i] for i in kept]) if kept else []
    out: list[RowScores | None] = [None] * len(rows)
    for i, row_scores in zip(kept, scored, strict=True):
        out[i] = row_scores
    return out


def rouge(system: System, rows: Sequence[ForgetRow], max_new_tokens: int = 48) -> float:
    """Mean ROUGE-L recall of the system's greedy answers against the rows' completions."""
    if not rows:
        return float("nan")
    texts = answers(system, [r.prompt for r in rows], max_new_tokens)
    return float(np.mean([rouge_l_recall(t, r.completion) for t, r in zip(texts, rows, strict=True)]))


def utility(
    system: System, retain: Sequence[ForgetRow], general: Sequence[ForgetRow], max_new_tokens: int = 48
) -> dict[str, float]:
    """Model utility as ``training.metrics.model_utility`` defines it, with refused rows scoring 0."""
    parts: dict[str, float] = {}
    for name, rows in (("retain", retain), ("general", general)):
        if not rows:
            continue
        row_scores = scores(system, rows)
        with_options = all(s is None or s.perturbed for s in row_scores)
        if name == "general" and with_options:
            probs = [0.0 if s is None else s.normalized_probability for s in row_scores]
        else:
            probs = [0.0 if s is None else s.probability for s in row_scores]
        parts[f"{name}_probability"] = float(np.mean(probs))
        parts[f"{name}_rouge_l"] = rouge(system, rows, max_new_tokens)
        terms = [
            0.0 if s is None else retain_truth_ratio(np.array([s.truth_ratio]))
            for s in row_scores
            if s is None or s.truth_ratio is not None
        ]
        if terms:
            parts[f"{name}_truth_ratio"] = float(np.mean(terms))
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
    forget_scores = scores(system, forget)
    ratios = ratios_of(forget_scores)
    out: dict[str, Any] = {}
    out["forget_quality"] = (
        forget_quality(ratios, reference_ratios) if ratios is not None and reference_ratios is not None else None
    )
    parts = utility(system, retain, general, max_new_tokens)
    out["model_utility"] = parts.pop("model_utility")
    out["forget_rouge"] = rouge(system, forget, max_new_tokens)
    out["retain_rouge"] = parts["retain_rouge_l"]
    heldout_scores = scores(system, heldout)
    members = [s for s in forget_scores if s is not None]
    nonmembers = [s for s in heldout_scores if s is not None]
    complete = len(members) == len(forget_scores) and len(nonmembers) == len(heldout_scores)
    out["mia_auc"] = min_k_auc(members, nonmembers) if complete and members and nonmembers else None
    scored = [s for s in forget_scores if s is not None]
    out["forget_probability"] = float(np.mean([s.probability for s in scored])) if scored else 0.0
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
    model = system.model
    encoded = [model.embedder.encode(label) for label in labels]
    kept = [i for i, row in enumerate(rows) if not system.refused(row.prompt)]
    prompts, completions, plans = [], [], []
    for i in kept:
        prompt, messages = system.target.render(rows[i].prompt)
        plan = system.target.plan_for(prompt, messages)
        for ids in encoded:
            prompts.append(prompt.ids)
            completions.append(ids)
            plans.append(plan)
    logprobs = model.score(prompts, completions, plans, batch_size=batch_size) if prompts else []
    correct = 0
    for j, i in enumerate(kept):
        totals = [float(t.sum()) for t in logprobs[j * len(labels) : (j + 1) * len(labels)]]
        correct += labels[int(np.argmax(totals))] == rows[i].completion
    return correct / len(rows)


def keyword_rate(texts: Sequence[str], keywords: Sequence[Sequence[str]]) -> float:
    """Share of answers that mention at least one of their expected keywords (case-insensitive)."""
    if not texts:
        return float("nan")
    hits = [any(k.lower() in t.lower() for k in ks) for t, ks in zip(texts, keywords, strict=True)]
    return float(np.mean(hits))
