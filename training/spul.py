"""SPUL: learn soft-prompt tokens that make flagged prompts behave as if the model never saw the forget set.

Loss on a step's batches (the soft prompt ``P`` is the only thing that changes)::

    L(P) = L_forget + alpha * L_retain + beta * KL(p_model || p_prompted)

- ``L_forget``: mean token NLL of the forget *target* after ``[P; forget prompt]`` (with the
  ECO corruption too when the method is ``eco+spul``), the target being a generic
  "I don't know"-style answer or one of the question's perturbed answers;
- ``L_retain``: mean token NLL of the true retain answers after ``[P; retain prompt]``, so a
  falsely flagged prompt still gets its answer;
- ``KL``: per answer position of the retain rows, KL from the bare model's next-token
  distribution to the prompted one.

Optimizers: ``backprop`` (Adam; gradients flow through the frozen model into ``P`` only) and
``zo`` (MeZO-style SPSA: ``P +/- eps * z`` with ``z`` regenerated from a seed, two forward
evaluations per direction, no backward pass and inference memory). Iterative refinement: every
``check_every`` steps all forget samples are scored through the served plan and those whose
answer log-probability is at the surrogate never-trained level (see ``training.samples``)
leave the working set; training stops when it is empty.

Classification (``labels`` set: the forget set is a classifier's examples, each completion one of
the labels): the same three terms over the model's distribution over the labels, the forget
examples pushed to a wrong label or to the uniform distribution (``training.spul_labels``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lethe.runtime.artifact import ForgetSetParameters, SpulParameters
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel
from lethe.training.candidates import CandidateFactory, plans_for
from lethe.training.data import ForgetRow
from lethe.training.metrics import render_question
from lethe.training.samples import ForgetSample, score_samples
from lethe.training.scope import flagged_spans
from lethe.training.spul_labels import LabelTask, answer_log_distributions

Report = Callable[[float, str | None], None]
DEFAULT_IDK = ("I don't know.", "I have no information about that.", "I'm not sure about that.")
DEFAULT_INIT_TEXT = "You have never heard of the person in this question, so you do not know the answer."


class SpulConfig(BaseModel):
    """Soft-prompt training settings."""

    model_config = ConfigDict(extra="forbid")

    num_virtual_tokens: int = Field(default=20, ge=1, le=256)
    init: Literal["text", "random"] = "text"
    init_text: str = DEFAULT_INIT_TEXT
    optimizer: Literal["zo", "backprop"] = "backprop"
    target: Literal["idk", "perturbed", "uniform"] = Field(
        default="idk",
        description="forget target: an idk answer, a perturbed (wrong) answer, or with labels the uniform label "
        "distribution",
    )
    labels: list[str] = Field(
        default_factory=list,
        description="class labels of a classification forget set: SPUL then trains on the label distribution "
        "(target 'perturbed' or 'uniform')",
    )
    idk_answers: list[str] = Field(default_factory=lambda: list(DEFAULT_IDK))
    alpha: float = Field(default=0.5, ge=0)
    beta: float = Field(default=0.5, ge=0)
    steps: int = Field(default=150, ge=0)
    lr: float | None = Field(default=None, gt=0, description="default: 0.05 for backprop (Adam), 0.02 for zo")
    batch_size: int = Field(default=8, ge=1)
    zo_eps: float = Field(default=0.01, gt=0, description="SPSA perturbation, relative to the mean embedding norm")
    zo_directions: int = Field(default=4, ge=1, description="random directions averaged per zo step")
    zo_update: Literal["sgd", "adam"] = Field(
        default="sgd",
        description="how zo applies its gradient estimate: a plain step, or Adam's (as backprop does; ZO-Adam)",
    )
    check_every: int = Field(default=25, ge=1, description="steps between working-set checks")
    tolerance: float = Field(default=0.05, ge=0)
    score_batch_size: int = Field(default=64, ge=1)

    @field_validator("idk_answers")
    @classmethod
    def _some_answers(cls, value: list[str]) -> list[str]:
        if not value or any(not v.strip() for v in value):
            raise ValueError("idk_answers must hold at least one non-empty answer")
        return value

    @model_validator(mode="after")
    def _target_fits_labels(self) -> SpulConfig:
        if self.labels and self.target == "idk":
            raise ValueError("with labels the target must be 'perturbed' or 'uniform'")
        if self.target == "uniform" and not self.labels:
            raise ValueError("the 'uniform' target needs labels")
        return self

    @property
    def learning_rate(self) -> float:
        """The step size actually used."""
        if self.lr is not None:
            return self.lr
        return 0.05 if self.optimizer == "backprop" else 0.02


@dataclass
class SpulResult:
    """The trained soft prompt and what happened while training it."""

    soft_prompt: torch.Tensor
    parameters: SpulParameters
    details: dict[str, Any]


@dataclass
class _RetainItem:
    prompt_ids: tuple[int, ...]
    answer: list[int]
    spans: list[list[tuple[int, int]]]
    prompt: Any
    embeds: torch.Tensor
    clean: torch.Tensor | None = None
    """The bare model's log-distributions over the answer's positions, or over the labels (classification)."""
    label: int = -1


def initial_prompt(model: LanguageModel, config: SpulConfig, seed: int) -> torch.Tensor:
    """``(P, hidden)`` start: the init text's embeddings repeated to length ``P``, or scaled Gaussian noise."""
    weight = model.embedder.embedding_weight.detach().float()
    if config.init == "text":
        ids = model.embedder.encode(config.init_text)
        if not ids:
            raise ValueError("spul.init_text encodes to no tokens")
        repeated = (ids * math.ceil(config.num_virtual_tokens / len(ids)))[: config.num_virtual_tokens]
        return weight[torch.tensor(repeated, device=weight.device)].clone()
    generator = torch.Generator().manual_seed(seed)  # drawn on the CPU: the same start on every device
    noise = torch.randn(config.num_virtual_tokens, weight.shape[1], generator=generator)
    return noise.to(weight.device) * float(weight.std())


@dataclass
class SpulLoss:
    """Computes ``L(P)`` on given batches through the served plans."""

    model: LanguageModel
    factory: CandidateFactory
    parameters: ForgetSetParameters
    centroids: torch.Tensor | None
    strengths: torch.Tensor | None
    config: SpulConfig
    task: LabelTask | None = None

    def forget_plans(
        self, soft_prompt: torch.Tensor, samples: Sequence[ForgetSample], request_seed: int
    ) -> list[InterventionPlan]:
        """Served plans (corruption if any, then the soft prompt) for forget samples."""
        artifact = self.factory.build(self.parameters, soft_prompt, self.centroids, self.strengths)
        mode = self.parameters.token_mode
        return plans_for(
            artifact,
            [s.prompt for s in samples],
            [s.spans[mode] for s in samples],
            [s.embeds for s in samples],
            request_seed,
            self.model.embedder,
        )

    def retain_plans(self, soft_prompt: torch.Tensor, items: Sequence[_RetainItem]) -> list[InterventionPlan]:
        """What a falsely flagged retain prompt gets from the soft prompt alone."""
        artifact = self.factory.build(self.parameters.model_copy(update={"eco": None}), soft_prompt)
        prompts, spans, embeds = [i.prompt for i in items], [i.spans for i in items], [i.embeds for i in items]
        return plans_for(artifact, prompts, spans, embeds, 0, self.model.embedder)

    def __call__(
        self,
        soft_prompt: torch.Tensor,
        forget: Sequence[tuple[ForgetSample, list[int]]],
        retain: Sequence[_RetainItem],
        request_seed: int,
        grad: bool,
    ) -> tuple[torch.Tensor, dict[str, float]]:
        """Total loss and its parts."""
        model = self.model
        parts: dict[str, float] = {}
        total = torch.zeros((), device=model.device)
        if forget:
            plans = self.forget_plans(soft_prompt, [s for s, _ in forget], request_seed)
            prompts = [s.prompt.ids for s, _ in forget]
            if self.task is not None:
                true = torch.tensor([self.task.index(t, "a forget row") for _, t in forget], device=model.device)
                logq = self.task.logprobs(model, prompts, plans, grad, self.config.score_batch_size)
                forget_loss = self.task.forget_loss(logq, true)
            else:
                logprobs = model.score(prompts, [t for _, t in forget], plans, len(forget), grad=grad)
                forget_loss = -torch.stack([lp.mean() for lp in logprobs]).mean()
            total = total + forget_loss
            parts["forget"] = float(forget_loss.detach())
        if retain and (self.config.alpha > 0 or self.config.beta > 0):
            nll, kl = self._retain_terms(soft_prompt, retain, grad)
            total = total + self.config.alpha * nll + self.config.beta * kl
            parts["retain"], parts["kl"] = float(nll.detach()), float(kl.detach())
        parts["total"] = float(total.detach())
        return total, parts

    def _retain_terms(
        self, soft_prompt: torch.Tensor, retain: Sequence[_RetainItem], grad: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The retain NLL and the KL to the bare model, over answer tokens or, with labels, over the labels."""
        model = self.model
        plans = self.retain_plans(soft_prompt, retain)
        if self.task is not None:
            logq = self.task.logprobs(model, [i.prompt_ids for i in retain], plans, grad, self.config.score_batch_size)
            clean = torch.stack([i.clean for i in retain if i.clean is not None])
            labels = torch.tensor([i.label for i in retain], device=logq.device)
            return self.task.retain_loss(logq, labels), self.task.kl(clean, logq)
        with torch.enable_grad() if grad else torch.no_grad():
            embeds = [model.prompt_embeddings(list(i.prompt_ids), p) for i, p in zip(retain, plans, strict=True)]
            prompted = answer_log_distributions(model, embeds, [i.answer for i in retain])
        nll = torch.stack(
            [
                -d.gather(-1, torch.tensor(i.answer, device=d.device).unsqueeze(-1)).mean()
                for d, i in zip(prompted, retain, strict=True)
            ]
        ).mean()
        kl = torch.stack(
            [
                (i.clean.exp() * (i.clean - d)).sum(-1).mean()
                for d, i in zip(prompted, retain, strict=True)
                if i.clean is not None
            ]
        ).mean()
        return nll, kl


def _retain_items(
    model: LanguageModel, rows: Sequence[ForgetRow], classifier: Any, batch_size: int, task: LabelTask | None = None
) -> list[_RetainItem]:
    items = []
    for index, row in enumerate(rows):
        prompt, messages = render_question(model, row.prompt)
        answer = model.embedder.encode(row.completion)
        if answer:
            spans = flagged_spans(classifier, messages)
            item = _RetainItem(prompt.ids, answer, spans, prompt, model.embed(prompt.ids))
            if task is not None:
                item.label = task.index(answer, f"retain row {index}")
            items.append(item)
    with torch.no_grad():
        if task is not None:
            clean = task.logprobs(model, [i.prompt_ids for i in items], [None] * len(items), False, batch_size)
            for item, distribution in zip(items, clean, strict=True):
                item.clean = distribution
            return items
        for start in range(0, len(items), batch_size):
            chunk = items[start : start + batch_size]
            clean = answer_log_distributions(model, [c.embeds for c in chunk], [c.answer for c in chunk])
            for item, distribution in zip(chunk, clean, strict=True):
                item.clean = distribution
    return items


def train_spul(
    model: LanguageModel,
    factory: CandidateFactory,
    samples: Sequence[ForgetSample],
    rows: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    parameters: ForgetSetParameters,
    centroids: torch.Tensor | None,
    strengths: torch.Tensor | None,
    config: SpulConfig,
    seed: int,
    report: Report,
) -> SpulResult:
    """Train the soft prompt (on top of the ECO corruption in ``parameters``, if any)."""
    rng = random.Random(seed)
    mode = parameters.token_mode
    task = LabelTask.build(model, config.labels, config.target) if config.labels else None
    loss_fn = SpulLoss(model, factory, parameters, centroids, strengths, config, task)
    retain_items = _retain_items(model, retain, factory.classifier, config.score_batch_size, task)
    targets = _forget_targets(model, rows, config)
    true_labels = [task.index(s.answer, f"forget row {i}") for i, s in enumerate(samples)] if task else []
    draws = [0, 1] if parameters.eco is not None and parameters.eco.function.startswith("rand_noise") else [0]
    soft_prompt = initial_prompt(model, config, seed)
    scale = float(model.embedder.embedding_weight.detach().float().norm(dim=-1).mean())
    optimizer = _Optimizer(soft_prompt, config, scale, seed)
    goal = np.array([s.target for s in samples])
    working = np.ones(len(samples), dtype=bool)
    history: list[dict[str, Any]] = []
    checks: list[dict[str, Any]] = []
    step = 0

    def check(prompt: torch.Tensor, at_step: int) -> np.ndarray:
        if task is not None:
            return _label_check(loss_fn, task, prompt, samples, true_labels, draws, checks, at_step)
        args = (model, factory, parameters, centroids, strengths, prompt, samples, goal, draws, config, checks)
        return _check(*args, at_step, mode)

    for step in range(config.steps):
        if step % config.check_every == 0:
            working = check(soft_prompt, step)
            if not working.any():
                break
        forget_batch = [
            (samples[i], rng.choice(targets[i]))
            for i in rng.sample(list(np.flatnonzero(working)), min(config.batch_size, int(working.sum())))
        ]
        retain_batch = rng.sample(retain_items, min(config.batch_size, len(retain_items))) if retain_items else []
        parts = optimizer.step(lambda p, grad, fb=forget_batch, rb=retain_batch, s=step: loss_fn(p, fb, rb, s, grad))
        soft_prompt = optimizer.prompt
        if step % max(1, config.steps // 20) == 0:
            history.append({"step": step, **parts})
        report((step + 1) / max(1, config.steps), f"spul: step {step + 1}/{config.steps}")
    working = check(soft_prompt, step + 1)
    details = {
        "optimizer": config.optimizer,
        "target": config.target,
        "num_virtual_tokens": config.num_virtual_tokens,
        "init": config.init,
        "learning_rate": config.learning_rate,
        "steps_run": step + 1 if config.steps else 0,
        "loss_history": history,
        "working_set_checks": checks,
        "unforgotten": int(working.sum()),
        "retain_rows": len(retain_items),
    }
    spul = SpulParameters(num_virtual_tokens=config.num_virtual_tokens, optimizer=config.optimizer, init=config.init)
    return SpulResult(soft_prompt.detach().clone(), spul, details)


def _check(
    model: LanguageModel,
    factory: CandidateFactory,
    parameters: ForgetSetParameters,
    centroids: torch.Tensor | None,
    strengths: torch.Tensor | None,
    soft_prompt: torch.Tensor,
    samples: Sequence[ForgetSample],
    goal: np.ndarray,
    draws: list[int],
    config: SpulConfig,
    log: list[dict[str, Any]],
    step: int,
    mode: str,
) -> np.ndarray:
    """Score every forget sample through the served plan; the unforgotten ones form the working set."""
    artifact = factory.build(parameters, soft_prompt.detach(), centroids, strengths)
    with torch.no_grad():
        answer = score_samples(model, samples, artifact, mode, draws, config.score_batch_size).answer
    working = answer > goal + config.tolerance
    log.append({"step": step, "working_set": int(working.sum()), "mean_answer_logprob": float(answer.mean())})
    return working


def _label_check(
    loss: SpulLoss,
    task: LabelTask,
    soft_prompt: torch.Tensor,
    samples: Sequence[ForgetSample],
    true: Sequence[int],
    draws: list[int],
    log: list[dict[str, Any]],
    step: int,
) -> np.ndarray:
    """Label distributions of every forget sample through the served plan (mean over ``draws``); the
    samples not yet forgotten (``LabelTask.forgotten``) form the working set."""
    prompts = [s.prompt.ids for s in samples]
    with torch.no_grad():
        draws_logq = [
            task.logprobs(loss.model, prompts, loss.forget_plans(soft_prompt.detach(), samples, draw), False,
                          loss.config.score_batch_size)
            for draw in draws
        ]  # fmt: skip
    logq = torch.log(torch.stack(draws_logq).exp().mean(dim=0))
    working = ~task.forgotten(logq, true, loss.config.tolerance)
    true_q = logq.cpu()[torch.arange(len(true)), torch.tensor(list(true))].exp()
    log.append({"step": step, "working_set": int(working.sum()), "mean_true_label_probability": float(true_q.mean())})
    return working


def _forget_targets(model: LanguageModel, rows: Sequence[ForgetRow], config: SpulConfig) -> list[list[list[int]]]:
    """Token ids of the allowed forget targets of each row (with labels: its true label, which the loss reads)."""
    encode = model.embedder.encode
    idk = [encode(a) for a in config.idk_answers]
    out = []
    for row in rows:
        if config.labels:
            out.append([encode(row.completion)])
        elif config.target == "perturbed" and row.perturbed_completions:
            out.append([encode(p) for p in row.perturbed_completions])
        else:
            out.append(idk)
    return out


class _Optimizer:
    """Adam through backprop, or MeZO-style SPSA with seeded directions (no backward pass), whose gradient
    estimate takes a plain step or, with ``zo_update="adam"``, the same Adam step as backprop (ZO-Adam)."""

    def __init__(self, prompt: torch.Tensor, config: SpulConfig, scale: float, seed: int):
        self.config = config
        self.seed = seed
        self.count = 0
        self.eps = config.zo_eps * scale / math.sqrt(prompt.shape[1])
        adam = config.optimizer == "backprop" or config.zo_update == "adam"
        self.prompt = prompt.clone().requires_grad_(adam)
        if adam:
            self.adam = torch.optim.Adam([self.prompt], lr=config.learning_rate * scale / math.sqrt(prompt.shape[1]))

    def step(self, loss: Callable[[torch.Tensor, bool], tuple[torch.Tensor, dict[str, float]]]) -> dict[str, float]:
        """One update; returns the loss parts (at the current prompt for backprop, the mean of +/- for zo)."""
        self.count += 1
        if self.config.optimizer == "backprop":
            self.adam.zero_grad()
            value, parts = loss(self.prompt, True)
            value.backward()
            self.adam.step()
            return parts
        return self._zo_step(loss)

    @torch.no_grad()
    def _zo_step(self, loss: Callable[[torch.Tensor, bool], tuple[torch.Tensor, dict[str, float]]]) -> dict[str, float]:
        lr = self.config.learning_rate
        totals: list[float] = []
        update = torch.zeros_like(self.prompt)
        for direction in range(self.config.zo_directions):
            generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.count * 101 + direction)
            z = torch.randn(self.prompt.shape, generator=generator).to(self.prompt.device)
            plus, _ = loss(self.prompt + self.eps * z, False)
            minus, _ = loss(self.prompt - self.eps * z, False)
            gradient = float(plus - minus) / (2 * self.eps)
            update += gradient * z
            totals += [float(plus), float(minus)]
        if self.config.zo_update == "adam":
            self.prompt.grad = update / self.config.zo_directions
            with torch.enable_grad():
                self.adam.step()
        else:
            self.prompt = self.prompt - lr * self.eps * update / self.config.zo_directions
        return {"total": float(np.mean(totals))}
