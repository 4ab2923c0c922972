"""What every metric family reads: an evaluation target, its per-row answer scores and its greedy answers.

An ``EvalTarget`` is a ``LanguageModel`` plus an optional function that gives the intervention
plan of each prompt (``through_screen`` builds the one the gateway serves: classifier, then the
forget sets' plans). Scores and answers come from real forward passes and greedy generation.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

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
        verdict = screen.screen(prompt, messages, request_seed, model.embedder)
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


def score_answers(
    target: EvalTarget,
    questions: Sequence[str],
    answers: Sequence[Sequence[str]],
    batch_size: int | None = None,
) -> list[list[torch.Tensor]]:
    """Per-token log-probabilities of each question's candidate answers, after the question's one plan."""
    encode = target.model.embedder.encode
    prompts: list[tuple[int, ...]] = []
    completions: list[list[int]] = []
    plans: list[InterventionPlan | None] = []
    for question, candidates in zip(questions, answers, strict=True):
        prompt, messages = target.render(question)
        plan = target.plan_for(prompt, messages)
        prompts += [prompt.ids] * len(candidates)
        completions += [encode(answer) for answer in candidates]
        plans += [plan] * len(candidates)
    logprobs = target.model.score(prompts, completions, plans, batch_size=batch_size or target.batch_size)
    out, start = [], 0
    for candidates in answers:
        out.append(logprobs[start : start + len(candidates)])
        start += len(candidates)
    return out


def score_rows(target: EvalTarget, rows: Sequence[ForgetRow]) -> list[RowScores]:
    """Score each row's answer, reference answer and perturbed answers (one plan per question)."""
    answers = [[row.completion, row.reference_answer, *row.perturbed_completions] for row in rows]
    scored = score_answers(target, [row.prompt for row in rows], answers)
    return [RowScores(chunk[0], float(chunk[1].mean()), [float(t.mean()) for t in chunk[2:]]) for chunk in scored]


def generate_answers(
    target: EvalTarget, questions: Sequence[str], max_new_tokens: int = 48, batch_size: int = 16
) -> list[str]:
    """Greedy answers to each question under the target's interventions."""
    rendered = [target.render(question) for question in questions]
    plans = [target.plan_for(prompt, messages) for prompt, messages in rendered]
    params = [SamplingParams(max_new_tokens=max_new_tokens)] * len(questions)
    results = target.model.generate_many([p for p, _ in rendered], plans, params, batch_size)
    return [r.text for r in results]


def answer_conversations(
    model: LanguageModel, conversations: Sequence[Messages], screen: ForgetSetScreen | None, max_new_tokens: int,
    request_seed: int = 0,
) -> tuple[list[str], list[bool]]:  # fmt: skip
    """Greedy answers to chat conversations, through ``screen`` when given (every message judged, as the gateway
    does), and whether each conversation got an intervention."""
    prompts = [model.chat_prompt(messages) for messages in conversations]
    plans = []
    for prompt, messages in zip(prompts, conversations, strict=True):
        verdict = screen.screen(prompt, messages, request_seed, model.embedder) if screen is not None else None
        plans.append(verdict.plan if verdict is not None and verdict.flagged else None)
    params = [SamplingParams(max_new_tokens=max_new_tokens) for _ in prompts]
    results = model.generate_many(prompts, plans, params, batch_size=16)
    return [r.text.strip() for r in results], [plan is not None for plan in plans]
