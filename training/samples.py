"""Forget samples as the trainer sees them: rendered prompts, spans, answers and the surrogate target.

The surrogate target is the level a model that never learned the fact would show, estimated
without such a model: the model's own mean log-probability of *wrong answers of the same kind*
to the same question (the row's perturbed answers, else other forget rows' answers) on the
clean prompt. A model that never learned a fact rates its true answer like any other
plausible answer.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch

from lethe.runtime.artifact import ForgetSetArtifact, TokenMode
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import CharSpan, TemplatedPrompt
from lethe.training.candidates import plans_for
from lethe.training.data import ForgetRow, TrainingDataError
from lethe.training.metrics import render_question
from lethe.training.scope import flagged_spans, with_token_mode

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier


@dataclass
class ForgetSample:
    """One forget question, rendered, with its answer, wrong answers, spans and clean scores."""

    prompt: TemplatedPrompt
    messages: list[dict[str, str]]
    embeds: torch.Tensor
    answer: list[int]
    wrong: list[list[int]]
    spans: dict[str, list[list[CharSpan]]] = field(default_factory=dict)
    target: float = 0.0
    clean_answer: float = 0.0
    clean_wrong: float = float("inf")


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
        sample = ForgetSample(prompt, messages, model.embed(prompt.ids), encode(row.completion), wrong)
        sample.spans = {mode: flagged_spans(view, messages) for mode, view in views.items()}
        samples.append(sample)
    answer, wrong_scores = score_samples(model, samples, None, modes[0], [0], batch_size)
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
) -> tuple[np.ndarray, np.ndarray]:
    """Mean answer and wrong-answer log-probabilities of each sample under ``artifact``'s served plan.

    Scores are averaged over the request seeds ``draws``; a sample with no wrong answer gets ``inf``
    as its wrong-answer score. ``artifact=None`` scores the bare model.
    """
    if not samples:
        return np.zeros(0), np.zeros(0)
    prompts, completions, plans, owners = [], [], [], []
    for draw in draws:
        if artifact is not None:
            draw_plans = plans_for(
                artifact,
                [s.prompt for s in samples],
                [s.spans[mode] for s in samples],
                [s.embeds for s in samples],
                draw,
            )
        else:
            draw_plans = [None] * len(samples)
        for index, (sample, plan) in enumerate(zip(samples, draw_plans, strict=True)):
            for kind, completion in [(0, sample.answer)] + [(1, w) for w in sample.wrong]:
                prompts.append(sample.prompt.ids)
                completions.append(completion)
                plans.append(plan)
                owners.append((index, kind))
    logprobs = model.score(prompts, completions, plans, batch_size=batch_size)
    totals = np.zeros((len(samples), 2))
    counts = np.zeros((len(samples), 2))
    for (index, kind), values in zip(owners, logprobs, strict=True):
        totals[index, kind] += float(values.mean())
        counts[index, kind] += 1
    means = totals / np.maximum(counts, 1)
    return means[:, 0], np.where(counts[:, 1] > 0, means[:, 1], np.inf)
