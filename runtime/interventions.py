"""Interventions on input embeddings: ECO corruptions on a token mask and prepended soft prompts.

This is the one implementation both the trainer and the gateway execute. A plan is built
per prompt (which corruption, on which tokens, with which noise seed; which soft prompts)
and applied to that prompt's embeddings of shape ``(seq_len, hidden)``.

Corruption strengths are continuous so zeroth-order optimization can tune every function:
- ``rand_noise_first_n``: add ``N(0, strength^2)`` to the first ``dims`` dimensions;
- ``rand_noise_top_k``: add ``N(0, strength^2)`` to the ``dims`` largest-magnitude dimensions;
- ``zero_out_top_k``: scale the ``dims`` largest-magnitude dimensions by ``1 - strength``
  (``strength = 1`` zeroes them, as ECO does);
- ``flip_sign_top_k``: scale them by ``1 - 2 * strength`` (``strength = 1`` flips their sign).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

CorruptionFunction = Literal["rand_noise_first_n", "rand_noise_top_k", "zero_out_top_k", "flip_sign_top_k"]
CORRUPTION_FUNCTIONS: tuple[CorruptionFunction, ...] = (
    "rand_noise_first_n",
    "rand_noise_top_k",
    "zero_out_top_k",
    "flip_sign_top_k",
)


@dataclass(frozen=True)
class Corruption:
    """One ECO corruption: a function, its strength and how many dimensions it touches."""

    function: CorruptionFunction
    strength: float
    dims: int = 1

    def __post_init__(self) -> None:
        if self.function not in CORRUPTION_FUNCTIONS:
            raise ValueError(f"unknown corruption function {self.function!r}")
        if self.dims < 1:
            raise ValueError("a corruption touches at least one dimension")


@dataclass(frozen=True)
class CorruptStep:
    """Corrupt the masked positions of a prompt."""

    corruption: Corruption
    mask: tuple[bool, ...]
    seed: int


@dataclass(frozen=True)
class PrependStep:
    """Prepend soft-prompt vectors ``(num_virtual_tokens, hidden)`` before the prompt."""

    embeddings: torch.Tensor


@dataclass(frozen=True)
class InterventionPlan:
    """What to do to one prompt's embeddings: corruptions first, then soft prompts."""

    corruptions: tuple[CorruptStep, ...] = ()
    soft_prompts: tuple[PrependStep, ...] = field(default=())

    @property
    def is_empty(self) -> bool:
        """True when applying the plan changes nothing."""
        return not self.corruptions and not any(p.embeddings.shape[0] for p in self.soft_prompts)

    @property
    def prefix_length(self) -> int:
        """Number of positions the soft prompts add in front of the prompt."""
        return sum(int(p.embeddings.shape[0]) for p in self.soft_prompts)

    def then(self, other: InterventionPlan) -> InterventionPlan:
        """Compose two plans (both corruptions run before both soft prompts)."""
        return InterventionPlan(self.corruptions + other.corruptions, self.soft_prompts + other.soft_prompts)


NO_INTERVENTION = InterventionPlan()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from the given parts (request, prompt ids, forget-set id...)."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _top_k_dims(embeds: torch.Tensor, dims: int) -> torch.Tensor:
    """0/1 tensor marking, per position, the ``dims`` largest-magnitude dimensions."""
    k = min(dims, embeds.shape[-1])
    index = embeds.detach().abs().topk(k, dim=-1).indices
    return torch.zeros_like(embeds).scatter_(-1, index, 1.0)


def corrupt(embeds: torch.Tensor, step: CorruptStep) -> torch.Tensor:
    """Apply one corruption to the masked rows of ``embeds`` ``(seq_len, hidden)``; returns a new tensor."""
    seq_len, hidden = embeds.shape
    if len(step.mask) != seq_len:
        raise ValueError(f"mask of length {len(step.mask)} for a prompt of {seq_len} tokens")
    rows = torch.tensor(step.mask, dtype=embeds.dtype, device=embeds.device).unsqueeze(-1)
    corruption = step.corruption
    if corruption.function == "rand_noise_first_n":
        dims = min(corruption.dims, hidden)
        # Noise is drawn for every position so a token's noise does not depend on the mask.
        generator = torch.Generator().manual_seed(step.seed)
        noise = torch.randn(seq_len, dims, generator=generator).to(embeds.dtype) * corruption.strength
        delta = torch.zeros_like(embeds)
        delta[:, :dims] = noise
        return embeds + delta * rows
    selected = _top_k_dims(embeds, corruption.dims) * rows
    if corruption.function == "rand_noise_top_k":
        generator = torch.Generator().manual_seed(step.seed)
        noise = torch.randn(seq_len, hidden, generator=generator).to(embeds.dtype) * corruption.strength
        return embeds + noise * selected
    if corruption.function == "zero_out_top_k":
        return embeds - corruption.strength * embeds * selected
    return embeds - 2.0 * corruption.strength * embeds * selected


def apply_plan(embeds: torch.Tensor, plan: InterventionPlan) -> torch.Tensor:
    """Apply every corruption of ``plan`` then prepend its soft prompts; returns ``(P + seq_len, hidden)``."""
    out = embeds
    for step in plan.corruptions:
        out = corrupt(out, step)
    prefixes = [p.embeddings.to(out.dtype) for p in plan.soft_prompts if p.embeddings.shape[0]]
    if prefixes:
        out = torch.cat([*prefixes, out], dim=0)
    return out


def corruption_plan(corruption: Corruption, mask: Sequence[bool], seed: int) -> InterventionPlan:
    """A plan with a single corruption, the shape the trainer evaluates."""
    return InterventionPlan(corruptions=(CorruptStep(corruption, tuple(bool(m) for m in mask), seed),))


def soft_prompt_plan(embeddings: torch.Tensor) -> InterventionPlan:
    """A plan that only prepends ``embeddings``."""
    return InterventionPlan(soft_prompts=(PrependStep(embeddings),))
