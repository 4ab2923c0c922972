"""Weight-updating unlearning baselines in plain torch: one class per method, each with its own loss settings.

Each baseline fine-tunes a *copy* of the model's weights (the original stays frozen and is the
NPO reference) on the forget rows, and, where the method has one, a retain term on retain rows.
Losses follow open-unlearning's implementations (``src/trainer/unlearn/``), and so does the class
tree: a method that adds to another one's loss derives from it.

- ``GradAscent`` (``ga``): ``L = -NLL(forget)``;
- ``GradDiff`` (``graddiff``): ``L = -gamma * NLL(forget) + alpha * NLL(retain)``;
- ``NPO`` (``npo``, Zhang et al. 2024): ``L = gamma * -(2/beta) * log sigmoid(-beta * (log p_theta(y|x) -
  log p_ref(y|x))) + alpha * NLL(retain)`` with sequence log-probabilities (sums over answer tokens);
- ``SimNPO`` (``simnpo``, Fan et al. 2024): ``L = gamma * -(2/beta) * log sigmoid(beta * (NLL(y|x) / |y| -
  delta)) + alpha * NLL(retain)`` (length-normalized, reference-free).

NLL is the mean token cross-entropy of the answer given the chat-templated question, the same
rendering every other method is evaluated on. ``BaselineConfig`` is the optimization budget they
share (the benchmark's ``--baseline-lr`` / ``--baseline-epochs``); each class's ``Config`` holds
its loss weights. Adding a baseline is a class here and its line in ``BASELINES``.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field

from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow
from lethe.training.metrics import render_question

Batch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class BaselineConfig(BaseModel):
    """The optimization budget every weight-updating baseline shares."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    epochs: int = Field(default=5, ge=1, description="passes over the forget rows")
    lr: float = Field(default=1e-5, gt=0, description="AdamW learning rate")
    batch_size: int = Field(default=8, ge=1, description="forget rows per step (as many retain rows)")
    weight_decay: float = Field(default=0.01, ge=0)
    seed: int = Field(default=0, description="row order and retain draws")


class GradAscentConfig(BaseModel):
    """Gradient ascent has no loss settings."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class GradDiffConfig(GradAscentConfig):
    """Weights of the forget and retain terms."""

    gamma: float = Field(default=1.0, ge=0, description="weight of the forget term")
    alpha: float = Field(default=1.0, ge=0, description="weight of the retain NLL")


class NPOConfig(GradDiffConfig):
    """NPO's inverse temperature."""

    beta: float = Field(default=0.1, gt=0)


class SimNPOConfig(GradDiffConfig):
    """SimNPO's temperature and margin (and its smaller forget weight)."""

    gamma: float = Field(default=0.125, ge=0, description="weight of the forget term")
    beta: float = Field(default=4.5, gt=0)
    delta: float = Field(default=0.0, description="margin on the length-normalized NLL")


@dataclass
class BaselineResult:
    """The unlearned copy, wrapped as a ``LanguageModel``, with its cost."""

    model: LanguageModel
    train_s: float
    steps: int
    forward_passes: int


def _encode(model: LanguageModel, rows: Sequence[ForgetRow]) -> list[tuple[list[int], list[int]]]:
    eos_id = getattr(model.tokenizer, "eos_token_id", None)
    end = [int(eos_id)] if eos_id is not None else []
    out = []
    for row in rows:
        prompt, _ = render_question(model, row.prompt)
        answer = model.embedder.encode(row.completion) + end
        out.append((list(prompt.ids), answer))
    return out


def _batch(items: Sequence[tuple[list[int], list[int]]], pad_id: int, device: torch.device) -> Batch:
    width = max(len(p) + len(a) for p, a in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(items):
        sequence = prompt + answer
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        labels[row, len(prompt) : len(sequence)] = torch.tensor(answer)
    return ids.to(device), mask.to(device), labels.to(device)


def sequence_logprobs(model: torch.nn.Module, batch: Batch) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probability and answer length of each row of a batch."""
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * valid).sum(-1), valid.sum(-1)


def nll(model: torch.nn.Module, batch: Batch) -> torch.Tensor:
    """Mean token cross-entropy of the answers of a batch."""
    total, length = sequence_logprobs(model, batch)
    return -(total.sum() / length.sum())


class GradAscent:
    """``ga``: push the forget answers' likelihood down, nothing else."""

    name: ClassVar[str] = "ga"
    Config: ClassVar[type[GradAscentConfig]] = GradAscentConfig
    passes_per_forget_row: ClassVar[int] = 1

    def __init__(self, config: GradAscentConfig | None = None):
        config = config or self.Config()
        if not isinstance(config, self.Config):
            raise ValueError(f"{self.name} takes a {self.Config.__name__}, got {type(config).__name__}")
        self.config = config

    def forget_term(self, model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The unweighted forget term on one forget batch."""
        return -nll(model, batch)

    @property
    def forget_weight(self) -> float:
        """The forget term's weight in the loss."""
        return 1.0

    @property
    def retain_weight(self) -> float | None:
        """The retain NLL's weight, ``None`` when the method has no retain term."""
        return None


class GradDiff(GradAscent):
    """``graddiff``: gradient ascent on the forget rows, descent on the retain rows."""

    name = "graddiff"
    Config = GradDiffConfig
    config: GradDiffConfig

    @property
    def forget_weight(self) -> float:
        """``gamma``."""
        return self.config.gamma

    @property
    def retain_weight(self) -> float | None:
        """``alpha``."""
        return self.config.alpha


class NPO(GradDiff):
    """``npo``: negative preference optimization against the frozen original."""

    name = "npo"
    Config = NPOConfig
    config: NPOConfig
    passes_per_forget_row = 2

    def forget_term(self, model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``-(2/beta) * log sigmoid(-beta * (log p_theta - log p_ref))`` over sequence log-probabilities."""
        total, _ = sequence_logprobs(model, batch)
        with torch.no_grad():
            ref_total, _ = sequence_logprobs(reference, batch)
        beta = self.config.beta
        return -(2.0 / beta) * F.logsigmoid(-beta * (total - ref_total)).mean()


class SimNPO(GradDiff):
    """``simnpo``: NPO on the length-normalized NLL with a margin, no reference model."""

    name = "simnpo"
    Config = SimNPOConfig
    config: SimNPOConfig

    def forget_term(self, model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """``-(2/beta) * log sigmoid(beta * (NLL / |y| - delta))``."""
        total, length = sequence_logprobs(model, batch)
        beta = self.config.beta
        return -(2.0 / beta) * F.logsigmoid(beta * (-total / length - self.config.delta)).mean()


BASELINES: dict[str, type[GradAscent]] = {cls.name: cls for cls in (GradAscent, GradDiff, NPO, SimNPO)}


def baseline(name: str, config: GradAscentConfig | None = None) -> GradAscent:
    """The named baseline with its loss settings (its ``Config``'s defaults when ``config`` is ``None``)."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r} (known: {', '.join(BASELINES)})")
    return BASELINES[name](config)


def unlearn(
    base: LanguageModel,
    method: str | GradAscent,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    config: BaselineConfig | None = None,
) -> BaselineResult:
    """Fine-tune a copy of ``base``'s weights with ``method``'s loss; ``base`` itself is not modified."""
    method = baseline(method) if isinstance(method, str) else method
    if not forget:
        raise ValueError("a baseline needs forget rows")
    config = config or BaselineConfig()
    started = time.perf_counter()
    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # Trained in float32 on the base model's device (bf16 weights round most Adam steps away), served in its dtype.
    model = copy.deepcopy(base.model).float()
    device = base.device
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    forget_items, retain_items = _encode(base, forget), _encode(base, retain)
    retain_weight = method.retain_weight if retain_items else None
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    steps = passes = 0
    for _epoch in range(config.epochs):
        order = list(range(len(forget_items)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chunk = [forget_items[i] for i in order[start : start + config.batch_size]]
            loss = method.forget_weight * method.forget_term(model, base.model, _batch(chunk, pad_id, device))
            passes += len(chunk) * method.passes_per_forget_row
            if retain_weight is not None:
                retain_chunk = rng.sample(retain_items, min(len(chunk), len(retain_items)))
                loss = loss + retain_weight * nll(model, _batch(retain_chunk, pad_id, device))
                passes += len(retain_chunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
    model.to(base.dtype).eval()
    wrapped = LanguageModel(model, tokenizer, name=f"{base.name}+{method.name}", path=base.path)
    return BaselineResult(wrapped, time.perf_counter() - started, steps, passes)
