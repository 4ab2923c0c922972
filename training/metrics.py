"""TOFU-style unlearning metrics, computed the way open-unlearning computes them.

Every metric takes an ``EvalTarget``: a ``LanguageModel`` plus an optional function that gives
the intervention plan of each prompt (``through_screen`` builds the one the gateway serves:
classifier, then the forget sets' plans). The benchmark reuses these functions unchanged.

- answer probability: ``exp(mean token log p(answer | question))`` per question;
- truth ratio per question: ``p_perturbed / p_paraphrased`` where each ``p`` is the
  length-normalized probability above and ``p_perturbed`` the geometric mean over the perturbed
  answers; the forget aggregate is ``mean(min(TR, 1/TR))``, the retain one ``mean(max(0, 1 - TR))``;
- forget quality: ``scipy.stats.ks_2samp`` p-value between truth ratios and a reference model's;
- ROUGE-L recall of the greedy answer against the reference answer (word LCS);
- model utility: harmonic mean of {probability, ROUGE-L recall, truth ratio} over the retain
  and general sets (on general sets the probability is normalized over the answer options);
- Min-K% membership inference: AUC between forget and held-out data (0.5 is ideal).
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy import stats

from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.data import ForgetRow

Messages = list[dict[str, str]]
PlanFn = Callable[[TemplatedPrompt, Messages], InterventionPlan | None]


@dataclass
class EvalTarget:
    """A model under evaluation and the intervention each prompt gets (``plan=None``: the bare model)."""

    model: LanguageModel
    plan: PlanFn | None = None
    batch_size: int = 32

    def render(self, question: str) -> tuple[TemplatedPrompt, Messages]:
        """The prompt the gateway would build for one user question, and its messages."""
        return render_question(self.model, question)

    def plan_for(self, prompt: TemplatedPrompt, messages: Messages) -> InterventionPlan | None:
        """The plan of one rendered prompt."""
        return self.plan(prompt, messages) if self.plan is not None else None


def render_question(model: LanguageModel, question: str) -> tuple[TemplatedPrompt, Messages]:
    """Chat-templated prompt for a question (plain text when the model has no template), as ``lethe generate``."""
    messages = [{"role": "user", "content": question}]
    if model.embedder.has_chat_template:
        return model.chat_prompt(messages), messages
    return model.text_prompt(question), messages


def through_screen(model: LanguageModel, screen: ForgetSetScreen, request_seed: int = 0) -> EvalTarget:
    """The serve path: classify each prompt against the screen's forget sets and apply their plans."""

    def plan(prompt: TemplatedPrompt, messages: Messages) -> InterventionPlan | None:
        verdict = screen.screen(prompt, messages, request_seed, model.embed)
        return verdict.plan if verdict.flagged else None

    return EvalTarget(model, plan)


@dataclass
class RowScores:
    """Per-token log-probabilities of one row's answers under one target."""

    answer: torch.Tensor
    reference: float
    perturbed: list[float] = field(default_factory=list)

    @property
    def answer_logprob(self) -> float:
        """Mean token log-probability of the answer."""
        return float(self.answer.mean())

    @property
    def probability(self) -> float:
        """Length-normalized answer probability."""
        return math.exp(self.answer_logprob)

    @property
    def truth_ratio(self) -> float | None:
        """``p_perturbed / p_paraphrased`` (geometric mean over perturbed answers), ``None`` without them."""
        if not self.perturbed:
            return None
        return math.exp(float(np.mean(self.perturbed)) - self.reference)

    @property
    def normalized_probability(self) -> float:
        """Answer probability normalized over the answer and its perturbed options."""
        options = [self.answer_logprob, *self.perturbed]
        return math.exp(self.answer_logprob - float(np.logaddexp.reduce(options)))


def score_rows(target: EvalTarget, rows: Sequence[ForgetRow]) -> list[RowScores]:
    """Score each row's answer, reference answer and perturbed answers (one plan per question)."""
    encode = target.model.embedder.encode
    prompts: list[tuple[int, ...]] = []
    completions: list[list[int]] = []
    plans: list[InterventionPlan | None] = []
    layout: list[tuple[int, int, int]] = []
    for row in rows:
        prompt, messages = target.render(row.prompt)
        plan = target.plan_for(prompt, messages)
        answers = [row.completion, row.reference_answer, *row.perturbed_completions]
        layout.append((len(completions), len(answers), len(row.perturbed_completions)))
        for answer in answers:
            prompts.append(prompt.ids)
            completions.append(encode(answer))
            plans.append(plan)
    logprobs = target.model.score(prompts, completions, plans, batch_size=target.batch_size)
    out = []
    for start, count, _ in layout:
        chunk = logprobs[start : start + count]
        out.append(RowScores(chunk[0], float(chunk[1].mean()), [float(t.mean()) for t in chunk[2:]]))
    return out


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


def ks_test(ratios: np.ndarray, reference: np.ndarray) -> tuple[float, float]:
    """KS statistic and p-value between two truth-ratio samples."""
    result = stats.ks_2samp(ratios, reference)
    return float(result.statistic), float(result.pvalue)


def forget_quality(ratios: np.ndarray, reference: np.ndarray) -> float:
    """Forget quality: KS-test p-value against the truth ratios of a model never trained on the forget set."""
    return ks_test(ratios, reference)[1]


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


def generate_answers(
    target: EvalTarget, rows: Sequence[ForgetRow], max_new_tokens: int = 48, batch_size: int = 16
) -> list[str]:
    """Greedy answers to each row's question under the target's interventions."""
    model = target.model
    params = SamplingParams(max_new_tokens=max_new_tokens)
    embeds = []
    for row in rows:
        prompt, messages = target.render(row.prompt)
        embeds.append(model.prompt_embeddings(prompt, target.plan_for(prompt, messages)))
    texts: list[str] = []
    for start in range(0, len(embeds), batch_size):
        chunk = embeds[start : start + batch_size]
        texts.extend(r.text for r in model.generate_batch(chunk, [params] * len(chunk)))
    return texts


def rouge_recalls(target: EvalTarget, rows: Sequence[ForgetRow], max_new_tokens: int = 48) -> np.ndarray:
    """ROUGE-L recall of the greedy answer of every row against its completion."""
    answers = generate_answers(target, rows, max_new_tokens)
    return np.array([rouge_l_recall(a, r.completion) for a, r in zip(answers, rows, strict=True)])


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


def harmonic_mean(values: Sequence[float]) -> float:
    """Harmonic mean (0 when any value is 0)."""
    values = [float(v) for v in values]
    if not values or any(v <= 0 for v in values):
        return 0.0
    return len(values) / sum(1.0 / v for v in values)


def split_summary(scores: Sequence[RowScores], forget: bool) -> dict[str, Any]:
    """Answer probability and truth ratio (aggregate as for a forget or a retain set) of one split."""
    ratios = truth_ratios(scores)
    return {
        "answer_probability": answer_probability(scores),
        "truth_ratio": forget_truth_ratio(ratios) if forget else retain_truth_ratio(ratios),
        "truth_ratio_median": float(np.median(ratios)) if len(ratios) else float("nan"),
        "rows": len(scores),
    }


def model_utility(
    target: EvalTarget, retain: Sequence[ForgetRow], general: Sequence[ForgetRow] = (), max_new_tokens: int = 48
) -> dict[str, float]:
    """Harmonic mean of probability, ROUGE-L recall and truth ratio over the retain and general sets."""
    parts: dict[str, float] = {}
    for name, rows in (("retain", retain), ("general", general)):
        if not rows:
            continue
        scores = score_rows(target, rows)
        with_options = all(s.perturbed for s in scores)
        parts[f"{name}_probability"] = (
            float(np.mean([s.normalized_probability for s in scores]))
            if name == "general" and with_options
            else answer_probability(scores)
        )
        parts[f"{name}_rouge_l"] = float(np.mean(rouge_recalls(target, rows, max_new_tokens)))
        ratios = truth_ratios(scores)
        if len(ratios):
            parts[f"{name}_truth_ratio"] = retain_truth_ratio(ratios)
    parts["model_utility"] = harmonic_mean(list(parts.values()))
    return parts
