"""Weight-updating unlearning baselines in plain torch, with their published losses.

Each baseline fine-tunes a *copy* of the model's weights (the original stays frozen and is the
NPO reference) on the forget rows, and, where the method has one, a retain term on retain rows.
Losses follow open-unlearning's implementations:

- ``ga`` (gradient ascent): ``L = -NLL(forget)``;
- ``graddiff`` (gradient difference): ``L = -gamma * NLL(forget) + alpha * NLL(retain)``;
- ``npo`` (Zhang et al. 2024): ``L = gamma * -(2/beta) * log sigmoid(-beta * (log p_theta(y|x) - log p_ref(y|x)))
  + alpha * NLL(retain)`` with sequence log-probabilities (sums over answer tokens);
- ``simnpo`` (Fan et al. 2024): ``L = gamma * -(2/beta) * log sigmoid(beta * (NLL(y|x) / |y| - delta))
  + alpha * NLL(retain)`` (length-normalized, reference-free).

NLL is the mean token cross-entropy of the answer given the chat-templated question, the same
rendering every other method is evaluated on.
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow
from lethe.training.metrics import render_question

Baseline = Literal["ga", "graddiff", "npo", "simnpo"]
BASELINES: tuple[Baseline, ...] = ("ga", "graddiff", "npo", "simnpo")


@dataclass(frozen=True)
class BaselineConfig:
    """Optimization settings shared by the weight-updating baselines (open-unlearning's loss weights)."""

    epochs: int = 5
    lr: float = 1e-5
    batch_size: int = 8
    weight_decay: float = 0.01
    npo_beta: float = 0.1
    simnpo_beta: float = 4.5
    simnpo_delta: float = 0.0
    simnpo_gamma: float = 0.125
    alpha: float = 1.0
    gamma: float = 1.0
    seed: int = 0


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


def _batch(items: Sequence[tuple[list[int], list[int]]], pad_id: int) -> tuple[torch.Tensor, ...]:
    width = max(len(p) + len(a) for p, a in items)
    ids = torch.full((len(items), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(items), width), dtype=torch.long)
    labels = torch.full((len(items), width), -100, dtype=torch.long)
    for row, (prompt, answer) in enumerate(items):
        sequence = prompt + answer
        ids[row, : len(sequence)] = torch.tensor(sequence)
        mask[row, : len(sequence)] = 1
        labels[row, len(prompt) : len(sequence)] = torch.tensor(answer)
    return ids, mask, labels


def sequence_logprobs(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
    """Summed answer log-probability and answer length of each row of a batch."""
    ids, mask, labels = batch
    logits = model(input_ids=ids, attention_mask=mask).logits[:, :-1].float()
    targets = labels[:, 1:]
    valid = targets != -100
    logprobs = torch.log_softmax(logits, dim=-1).gather(-1, targets.clamp(min=0).unsqueeze(-1)).squeeze(-1)
    return (logprobs * valid).sum(-1), valid.sum(-1)


def _nll(model: torch.nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    total, length = sequence_logprobs(model, batch)
    return -(total.sum() / length.sum())


def forget_loss(
    method: Baseline,
    model: torch.nn.Module,
    reference: torch.nn.Module,
    batch: tuple[torch.Tensor, ...],
    config: BaselineConfig,
) -> torch.Tensor:
    """The forget term of a baseline's loss on one forget batch."""
    if method in ("ga", "graddiff"):
        return -_nll(model, batch)
    total, length = sequence_logprobs(model, batch)
    if method == "npo":
        with torch.no_grad():
            ref_total, _ = sequence_logprobs(reference, batch)
        return -(2.0 / config.npo_beta) * F.logsigmoid(-config.npo_beta * (total - ref_total)).mean()
    if method == "simnpo":
        per_token_nll = -total / length
        beta = config.simnpo_beta
        return -(2.0 / beta) * F.logsigmoid(beta * (per_token_nll - config.simnpo_delta)).mean()
    raise ValueError(f"unknown baseline {method!r} (known: {', '.join(BASELINES)})")


def unlearn(
    base: LanguageModel,
    method: Baseline,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    config: BaselineConfig | None = None,
) -> BaselineResult:
    """Fine-tune a copy of ``base``'s weights with ``method``'s loss; ``base`` itself is not modified."""
    if method not in BASELINES:
        raise ValueError(f"unknown baseline {method!r} (known: {', '.join(BASELINES)})")
    if not forget:
        raise ValueError("a baseline needs forget rows")
    config = config or BaselineConfig()
    started = time.perf_counter()
    tokenizer = base.tokenizer
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    model = copy.deepcopy(base.model)
    for parameter in model.parameters():
        parameter.requires_grad_(True)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    forget_items, retain_items = _encode(base, forget), _encode(base, retain)
    uses_retain = method != "ga" and bool(retain_items)
    weight = {"graddiff": config.gamma, "npo": config.gamma, "simnpo": config.simnpo_gamma}.get(method, 1.0)
    rng = random.Random(config.seed)
    torch.manual_seed(config.seed)
    steps = passes = 0
    for _epoch in range(config.epochs):
        order = list(range(len(forget_items)))
        rng.shuffle(order)
        for start in range(0, len(order), config.batch_size):
            chunk = [forget_items[i] for i in order[start : start + config.batch_size]]
            batch = _batch(chunk, pad_id)
            loss = weight * forget_loss(method, model, base.model, batch, config)
            passes += len(chunk) * (2 if method == "npo" else 1)
            if uses_retain:
                retain_chunk = rng.sample(retain_items, min(len(chunk), len(retain_items)))
                loss = loss + config.alpha * _nll(model, _batch(retain_chunk, pad_id))
                passes += len(retain_chunk)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            steps += 1
    model.eval()
    wrapped = LanguageModel(model, tokenizer, name=f"{base.name}+{method}", path=base.path)
    return BaselineResult(wrapped, time.perf_counter() - started, steps, passes)
