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
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator

from lethe.runtime.artifact import ForgetSetParameters, SpulParameters
from lethe.runtime.generation import pad_embeddings
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel
from lethe.training.candidates import CandidateFactory, plans_for
from lethe.training.data import ForgetRow
from lethe.training.metrics import render_question
from lethe.training.samples import ForgetSample, score_samples
from lethe.training.scope import flagged_spans

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
    target: Literal["idk", "perturbed"] = "idk"
    idk_answers: list[str] = Field(default_factory=lambda: list(DEFAULT_IDK))
    alpha: float = Field(default=0.5, ge=0)
    beta: float = Field(default=0.5, ge=0)
    steps: int = Field(default=150, ge=0)
    lr: float | None = Field(default=None, gt=0, description="default: 0.05 for backprop (Adam), 0.02 for zo")
    batch_size: int = Field(default=8, ge=1)
    zo_eps: float = Field(default=0.01, gt=0, description="SPSA perturbation, relative to the mean embedding norm")
    zo_directions: int = Field(default=4, ge=1, description="random directions averaged per zo step")
    check_every: int = Field(default=25, ge=1, description="steps between working-set checks")
    tolerance: float = Field(default=0.05, ge=0)
    score_batch_size: int = Field(default=64, ge=1)

    @field_validator("idk_answers")
    @classmethod
    def _some_answers(cls, value: list[str]) -> list[str]:
        if not value or any(not v.strip() for v in value):
            raise ValueError("idk_answers must hold at least one non-empty answer")
        return value

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


def initial_prompt(model: LanguageModel, config: SpulConfig, seed: int) -> torch.Tensor:
    """``(P, hidden)`` start: the init text's embeddings repeated to length ``P``, or scaled Gaussian noise."""
    weight = model.embedder.embedding_weight.detach().float()
    if config.init == "text":
        ids = model.embedder.encode(config.init_text)
        if not ids:
            raise ValueError("spul.init_text encodes to no tokens")
        repeated = (ids * math.ceil(config.num_virtual_tokens / len(ids)))[: config.num_virtual_tokens]
        return weight[torch.tensor(repeated)].clone()
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(config.num_virtual_tokens, weight.shape[1], generator=generator) * float(weight.std())


def answer_log_distributions(
    model: LanguageModel, prompt_embeds: Sequence[torch.Tensor], completions: Sequence[Sequence[int]]
) -> list[torch.Tensor]:
    """Full next-token log-distributions ``(len(completion), vocab)`` over each completion's positions.

    Like ``LanguageModel.score`` but keeping the whole distribution (the KL term needs it);
    gradients flow when the inputs require them.
    """
    rows = [torch.cat([p, model.embed(list(c))], dim=0) for p, c in zip(prompt_embeds, completions, strict=True)]
    embeds, mask = pad_embeddings(rows, "right")
    model._count_forward(len(rows))
    hidden = model.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    head = model.model.get_output_embeddings()
    out = []
    for i, (prompt, completion) in enumerate(zip(prompt_embeds, completions, strict=True)):
        start = prompt.shape[0] - 1
        out.append(torch.log_softmax(head(hidden[i, start : start + len(completion)]).float(), dim=-1))
    return out


@dataclass
class SpulLoss:
    """Computes ``L(P)`` on given batches through the served plans."""

    model: LanguageModel
    factory: CandidateFactory
    parameters: ForgetSetParameters
    centroids: torch.Tensor | None
    strengths: torch.Tensor | None
    config: SpulConfig

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
        total = torch.zeros(())
        if forget:
            plans = self.forget_plans(soft_prompt, [s for s, _ in forget], request_seed)
            logprobs = model.score(
                [s.prompt.ids for s, _ in forget], [t for _, t in forget], plans, len(forget), grad=grad
            )
            forget_loss = -torch.stack([lp.mean() for lp in logprobs]).mean()
            total = total + forget_loss
            parts["forget"] = float(forget_loss.detach())
        if retain and (self.config.alpha > 0 or self.config.beta > 0):
            plans = self.retain_plans(soft_prompt, retain)
            with torch.enable_grad() if grad else torch.no_grad():
                embeds = [model.prompt_embeddings(list(i.prompt_ids), p) for i, p in zip(retain, plans, strict=True)]
                prompted = answer_log_distributions(model, embeds, [i.answer for i in retain])
            nll = torch.stack(
                [
                    -d.gather(-1, torch.tensor(i.answer).unsqueeze(-1)).mean()
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
            total = total + self.config.alpha * nll + self.config.beta * kl
            parts["retain"], parts["kl"] = float(nll.detach()), float(kl.detach())
        parts["total"] = float(total.detach())
        return total, parts


def _retain_items(
    model: LanguageModel, rows: Sequence[ForgetRow], classifier: Any, batch_size: int
) -> list[_RetainItem]:
    items = []
    for row in rows:
        prompt, messages = render_question(model, row.prompt)
        answer = model.embedder.encode(row.completion)
        if answer:
            spans = flagged_spans(classifier, messages)
            items.append(_RetainItem(prompt.ids, answer, spans, prompt, model.embed(prompt.ids)))
    with torch.no_grad():
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
    loss_fn = SpulLoss(model, factory, parameters, centroids, strengths, config)
    retain_items = _retain_items(model, retain, factory.classifier, config.score_batch_size)
    targets = _forget_targets(model, rows, config)
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


def _forget_targets(model: LanguageModel, rows: Sequence[ForgetRow], config: SpulConfig) -> list[list[list[int]]]:
    """Token ids of the allowed forget targets of each row."""
    encode = model.embedder.encode
    idk = [encode(a) for a in config.idk_answers]
    out = []
    for row in rows:
        if config.target == "perturbed" and row.perturbed_completions:
            out.append([encode(p) for p in row.perturbed_completions])
        else:
            out.append(idk)
    return out


class _Optimizer:
    """Adam through backprop, or MeZO-style SPSA with seeded directions (no backward pass)."""

    def __init__(self, prompt: torch.Tensor, config: SpulConfig, scale: float, seed: int):
        self.config = config
        self.seed = seed
        self.count = 0
        self.eps = config.zo_eps * scale / math.sqrt(prompt.shape[1])
        if config.optimizer == "backprop":
            self.prompt = prompt.clone().requires_grad_(True)
            self.adam = torch.optim.Adam([self.prompt], lr=config.learning_rate * scale / math.sqrt(prompt.shape[1]))
        else:
            self.prompt = prompt.clone()

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
            z = torch.randn(self.prompt.shape, generator=generator)
            plus, _ = loss(self.prompt + self.eps * z, False)
            minus, _ = loss(self.prompt - self.eps * z, False)
            gradient = float(plus - minus) / (2 * self.eps)
            update += gradient * z
            totals += [float(plus), float(minus)]
        self.prompt = self.prompt - lr * self.eps * update / self.config.zo_directions
        return {"total": float(np.mean(totals))}
