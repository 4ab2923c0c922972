"""Forget samples as the trainer sees them: rendered prompts, spans, answers and the surrogate target.

The surrogate target is the level a model that never learned the fact would show, estimated
without such a model: the model's own mean log-probability of *wrong answers of the same kind*
to the same question (the row's perturbed answers, else other forget rows' answers) on the
clean prompt. A model that never learned a fact rates its true answer like any other
plausible answer, and its paraphrased true answer like the perturbed ones (truth ratio near 1).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

import numpy as np
import torch

from lethe.runtime.artifact import ForgetSetArtifact, TokenMode
from lethe.runtime.mentions import MentionIndex
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import CharSpan, TemplatedPrompt
from lethe.training.candidates import plans_for
from lethe.training.data import ForgetRow, TrainingDataError
from lethe.training.metrics import render_question
from lethe.training.scope import flagged_spans, with_token_mode

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier


class SampleScores(NamedTuple):
    """Mean token log-probabilities per sample: the answer, the wrong answers, the reference (paraphrased)
    answer, and the wrong answers without their forget mentions (fluency)."""

    answer: np.ndarray
    wrong: np.ndarray
    reference: np.ndarray
    fluency: np.ndarray


@dataclass
class ForgetSample:
    """One forget question, rendered, with its answer, wrong answers, spans and clean scores."""

    prompt: TemplatedPrompt
    messages: list[dict[str, str]]
    embeds: torch.Tensor
    answer: list[int]
    wrong: list[list[int]]
    reference: list[int] = field(default_factory=list)
    spans: dict[str, list[list[CharSpan]]] = field(default_factory=dict)
    target: float = 0.0
    clean_answer: float = 0.0
    clean_wrong: float = float("inf")
    fluency_reference: float = float("inf")


def wrong_answers(rows: Sequence[ForgetRow], index: int, count: int, seed: int) -> list[str]:
    """Wrong answers of the same kind to row ``index``: its perturbed answers, else other rows' answers."""
    row = rows[index]
    if row.perturbed_completions:
        return list(row.perturbed_completions[:count])
    others = sorted({r.completion for r in rows if r.completion != row.completion})
    random.Random(seed * 1_000_003 + index).shuffle(others)
    return others[:count]


def prepare_samples(
    model: LanguageModel,
    rows: Sequence[ForgetRow],
    classifier: ScopeClassifier,
    modes: Sequence[TokenMode],
    wrong_count: int,
    seed: int,
    batch_size: int = 64,
) -> list[ForgetSample]:
    """Render every row, attach its spans per token mode, its clean scores and its surrogate target."""
    encode = model.embedder.encode
    views = {mode: with_token_mode(classifier, mode) for mode in modes}
    samples = []
    for index, row in enumerate(rows):
        prompt, messages = render_question(model, row.prompt)
        wrong = [ids for ids in (encode(w) for w in wrong_answers(rows, index, wrong_count, seed)) if ids]
        sample = ForgetSample(prompt, messages, model.embed(prompt.ids), encode(row.completion), wrong,
                              encode(row.reference_answer))  # fmt: skip
        sample.spans = {mode: flagged_spans(view, messages) for mode, view in views.items()}
        samples.append(sample)
    clean = score_samples(model, samples, None, modes[0], [0], batch_size)
    answer, wrong_scores = clean.answer, clean.wrong
    finite = wrong_scores[np.isfinite(wrong_scores)]
    if not len(finite):
        raise TrainingDataError(
            "the forget set needs wrong answers to estimate the never-trained level: give perturbed_completions "
            "or at least two rows with different completions"
        )
    for sample, a, w in zip(samples, answer, wrong_scores, strict=True):
        sample.clean_answer, sample.clean_wrong = float(a), float(w)
        sample.target = float(w) if np.isfinite(w) else float(finite.mean())
    return samples


def score_samples(
    model: LanguageModel,
    samples: Sequence[ForgetSample],
    artifact: ForgetSetArtifact | None,
    mode: str,
    draws: Sequence[int],
    batch_size: int,
    skip: MentionIndex | None = None,
) -> SampleScores:
    """Mean token log-probabilities of each sample's answer, wrong answers and reference (paraphrased) answer
    under ``artifact``'s served plan (its entity steps reach the answers' tokens too).

    Scores are averaged over the request seeds ``draws``; a sample with no wrong answer gets ``inf``
    as its wrong-answer scores, one with no reference its answer's score. ``artifact=None`` scores the
    bare model. ``fluency`` is the wrong answers' score without their tokens inside ``skip``'s mentions
    (the forget entities and their values, which a corruption of the whole sequence changes on
    purpose): how well-formed the rest of the answer stays.
    """
    if not samples:
        return SampleScores(np.zeros(0), np.zeros(0), np.zeros(0), np.zeros(0))
    prompts, completions, plans, owners = [], [], [], []
    for draw in draws:
        if artifact is not None:
            draw_plans = plans_for(
                artifact,
                [s.prompt for s in samples],
                [s.spans[mode] for s in samples],
                [s.embeds for s in samples],
                draw,
                model.embedder,
            )
        else:
            draw_plans = [None] * len(samples)
        for index, (sample, plan) in enumerate(zip(samples, draw_plans, strict=True)):
            reference = [(2, sample.reference)] if sample.reference and sample.reference != sample.answer else []
            for kind, completion in [(0, sample.answer), *reference] + [(1, w) for w in sample.wrong]:
                prompts.append(sample.prompt.ids)
                completions.append(completion)
                plans.append(plan)
                owners.append((index, kind))
    logprobs = model.score(prompts, completions, plans, batch_size=batch_size)
    totals = np.zeros((len(samples), 4))
    counts = np.zeros((len(samples), 4))
    for (index, kind), values, prompt, completion in zip(owners, logprobs, prompts, completions, strict=True):
        totals[index, kind] += float(values.mean())
        counts[index, kind] += 1
        if kind == 1:
            inside = set()
            if skip is not None:
                found = skip.find([*prompt, *completion])
                inside = {p - len(prompt) for start, end, _ in found for p in range(start, end)}
            kept = [i for i in range(len(completion)) if i not in inside] or list(range(len(completion)))
            totals[index, 3] += float(values[kept].mean())
            counts[index, 3] += 1
    means = totals / np.maximum(counts, 1)
    wrong = np.where(counts[:, 1] > 0, means[:, 1], np.inf)
    reference = np.where(counts[:, 2] > 0, means[:, 2], means[:, 0])
    return SampleScores(means[:, 0], wrong, reference, np.where(counts[:, 3] > 0, means[:, 3], np.inf))
