"""Interventions on input embeddings: ECO corruptions, entity substitution and prepended soft prompts.

This is the one implementation both the trainer and the gateway execute. A plan is built per request
and applied to the embeddings of a token sequence ``(seq_len, hidden)``:

- a ``CorruptStep`` corrupts the prompt positions of its mask (ECO's prompt-side corruption);
- an ``EntityStep`` corrupts every mention of the forget set's entities wherever it occurs: in the
  prompt, in a teacher-forced answer (scoring, echo log-probs) and, as the model generates, in each
  token that continues a mention before it is fed back (``feedback``), as ECO's embedding-layer hook
  does on every forward pass;
- a ``PrependStep`` puts soft-prompt vectors in front.

Corruption functions, with continuous strengths so zeroth-order optimization can tune every one:
- ``rand_noise_first_n``: add ``N(0, strength^2)`` to the first ``dims`` dimensions;
- ``rand_noise_top_k``: add ``N(0, strength^2)`` to the ``dims`` largest-magnitude dimensions;
- ``zero_out_top_k``: scale the ``dims`` largest-magnitude dimensions by ``1 - strength``;
- ``flip_sign_top_k``: scale them by ``1 - 2 * strength``;
- ``substitute`` (entity steps only): move each mention row toward the paired row of a surrogate
  entity the model knows, ``(1 - strength) * row + strength * surrogate_row``; the answer's
  surrogate names are mapped back to the names asked about (``InterventionPlan.rewrites``).

Noise is counter-based (``runtime.noise``): the value at a position depends only on the step's seed,
the position in the sequence and the dimension, and is drawn on the embeddings' device, only where it
is used.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lethe.runtime.mentions import MentionIndex, as_tensor, mention_rows
from lethe.runtime.noise import gaussian

CorruptionFunction = Literal[
    "rand_noise_first_n", "rand_noise_top_k", "zero_out_top_k", "flip_sign_top_k", "substitute"
]
CORRUPTION_FUNCTIONS: tuple[CorruptionFunction, ...] = (
    "rand_noise_first_n",
    "rand_noise_top_k",
    "zero_out_top_k",
    "flip_sign_top_k",
    "substitute",
)


@dataclass(frozen=True)
class Corruption:
    """One corruption: a function, its strength and how many dimensions it touches.

    ``fallback``: for ``substitute``, the noise strength (``rand_noise_top_k`` on ``dims`` dimensions)
    given to mentions that have no surrogate (the distinctive words of the forgotten answers).
    """

    function: CorruptionFunction
    strength: float
    dims: int = 1
    fallback: float = 0.0

    def __post_init__(self) -> None:
        if self.function not in CORRUPTION_FUNCTIONS:
            raise ValueError(f"unknown corruption function {self.function!r}")
        if self.dims < 1:
            raise ValueError("a corruption touches at least one dimension")

    @property
    def fallback_noise(self) -> Corruption:
        """The noise that mentions without a surrogate get under ``substitute``."""
        return Corruption("rand_noise_top_k", self.fallback, self.dims)


@dataclass(frozen=True)
class CorruptStep:
    """Corrupt the masked positions of a prompt (``mask`` covers the prompt's tokens)."""

    corruption: Corruption
    mask: tuple[bool, ...]
    seed: int


@dataclass(frozen=True, eq=False)
class EntityStep:
    """Corrupt (or substitute) every mention of a forget set's entities, wherever it occurs.

    ``table`` is the model's input-embedding matrix ``(vocab, hidden)``, read for surrogate rows.
    """

    corruption: Corruption
    index: MentionIndex
    seed: int
    table: torch.Tensor


@dataclass(frozen=True)
class PrependStep:
    """Prepend soft-prompt vectors ``(num_virtual_tokens, hidden)`` before the prompt."""

    embeddings: torch.Tensor


@dataclass(frozen=True)
class InterventionPlan:
    """What to do to one request's embeddings: corruptions, entity steps, then soft prompts."""

    corruptions: tuple[CorruptStep, ...] = ()
    entities: tuple[EntityStep, ...] = ()
    soft_prompts: tuple[PrependStep, ...] = field(default=())
    rewrites: tuple[tuple[str, str], ...] = ()

    @property
    def is_empty(self) -> bool:
        """True when applying the plan changes nothing."""
        return not self.corruptions and not self.entities and not any(p.embeddings.shape[0] for p in self.soft_prompts)

    @property
    def prefix_length(self) -> int:
        """Number of positions the soft prompts add in front of the prompt."""
        return sum(int(p.embeddings.shape[0]) for p in self.soft_prompts)

    def then(self, other: InterventionPlan) -> InterventionPlan:
        """Compose two plans (every corruption and entity step runs before every soft prompt)."""
        return InterventionPlan(
            self.corruptions + other.corruptions,
            self.entities + other.entities,
            self.soft_prompts + other.soft_prompts,
            self.rewrites + other.rewrites,
        )


NO_INTERVENTION = InterventionPlan()


def derive_seed(*parts: object) -> int:
    """A 63-bit seed derived from the given parts (request, prompt ids, forget-set id...)."""
    digest = hashlib.sha256("\x1f".join(repr(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1


def _top_k(rows: torch.Tensor, dims: int) -> torch.Tensor:
    """Per row, the indices ``(n, dims)`` of the ``dims`` largest-magnitude dimensions."""
    return rows.detach().abs().topk(min(dims, rows.shape[-1]), dim=-1).indices


def corrupt_rows(
    rows: torch.Tensor, positions: torch.Tensor, corruption: Corruption, seed: int,
    surrogate: torch.Tensor | None = None,
) -> torch.Tensor:  # fmt: skip
    """Corrupt ``rows`` ``(n, hidden)`` sitting at sequence ``positions``; returns new rows."""
    hidden = rows.shape[-1]
    function, strength = corruption.function, corruption.strength
    if function == "substitute":
        if surrogate is None:
            return rows
        return rows + strength * (surrogate.to(rows.dtype) - rows)
    if function == "rand_noise_first_n":
        dims = min(corruption.dims, hidden)
        noise = gaussian(seed, positions, dims, rows.device).to(rows.dtype) * strength
        return torch.cat([rows[:, :dims] + noise, rows[:, dims:]], dim=-1)
    index = _top_k(rows, corruption.dims)
    if function == "rand_noise_top_k":  # noise drawn only at the selected dimensions
        noise = gaussian(seed, positions, index, rows.device).to(rows.dtype) * strength
        return rows.scatter_add(-1, index, noise)
    selected = torch.zeros_like(rows).scatter_(-1, index, 1.0)
    if function == "zero_out_top_k":
        return rows - strength * rows * selected
    return rows - 2.0 * strength * rows * selected


def corrupt(embeds: torch.Tensor, step: CorruptStep) -> torch.Tensor:
    """Apply one prompt corruption to ``embeds`` ``(seq_len, hidden)`` (positions past the mask are untouched)."""
    if len(step.mask) > embeds.shape[0]:
        raise ValueError(f"mask of length {len(step.mask)} for a sequence of {embeds.shape[0]} tokens")
    if step.corruption.function == "substitute":
        return embeds
    positions = torch.tensor([i for i, m in enumerate(step.mask) if m], dtype=torch.long, device=embeds.device)
    if positions.numel() == 0:
        return embeds
    out = embeds.clone()
    out[positions] = corrupt_rows(embeds[positions], positions, step.corruption, step.seed)
    return out


def _corrupt_at(
    embeds: torch.Tensor, rows: Sequence[int], keys: Sequence[int], partners: Sequence[int | None], step: EntityStep
) -> torch.Tensor:
    """Corrupt ``embeds[rows]`` (whose tokens sit at sequence positions ``keys``, which key the noise):
    substitution where a row has a surrogate partner, the step's noise elsewhere."""
    corruption = step.corruption
    groups: list[tuple[list[int], Corruption, list[int] | None]] = []
    if corruption.function == "substitute":
        paired = [i for i, s in enumerate(partners) if s is not None]
        unpaired = [i for i, s in enumerate(partners) if s is None]
        groups.append((paired, corruption, [int(partners[i]) for i in paired]))  # type: ignore[arg-type]
        if corruption.fallback > 0:
            groups.append((unpaired, corruption.fallback_noise, None))
    else:
        groups.append((list(range(len(rows))), corruption, None))
    out = embeds.clone()
    for members, how, surrogate_ids in groups:
        if not members:
            continue
        where = as_tensor([rows[i] for i in members], embeds.device)
        positions = as_tensor([keys[i] for i in members], embeds.device)
        surrogate = None
        if surrogate_ids is not None:
            surrogate = step.table[as_tensor(surrogate_ids, step.table.device)].to(embeds.device)
        out[where] = corrupt_rows(embeds[where], positions, how, step.seed, surrogate)
    return out


def corrupt_mentions(embeds: torch.Tensor, ids: Sequence[int], step: EntityStep) -> torch.Tensor:
    """Apply an entity step to every mention in ``ids`` (``embeds`` holds one row per id)."""
    found = mention_rows(step.index, ids)
    if not found:
        return embeds
    positions = [p for p, _ in found]
    return _corrupt_at(embeds, positions, positions, [s for _, s in found], step)


def apply_plan(embeds: torch.Tensor, plan: InterventionPlan, ids: Sequence[int] | None = None) -> torch.Tensor:
    """Apply ``plan`` to the embeddings of ``ids`` (prompt, or prompt and answer); returns ``(P + seq_len, hidden)``.

    Entity steps need ``ids``; without them only the prompt corruptions and soft prompts apply.
    """
    out = embeds
    for step in plan.corruptions:
        out = corrupt(out, step)
    if ids is not None:
        if len(ids) != out.shape[0]:
            raise ValueError(f"{len(ids)} token ids for {out.shape[0]} embedding rows")
        for entity in plan.entities:
            out = corrupt_mentions(out, ids, entity)
    prefixes = [p.embeddings.to(out.device, out.dtype) for p in plan.soft_prompts if p.embeddings.shape[0]]
    if prefixes:
        out = torch.cat([*prefixes, out], dim=0)
    return out


def feedback(plan: InterventionPlan, ids: Sequence[int], row: torch.Tensor) -> torch.Tensor:
    """The embedding to feed back for the last token of ``ids`` (a generated one): corrupted when it continues
    a mention of a forget entity, else ``row`` itself. Noise is keyed by the token's position in the whole
    sequence, as in a teacher-forced pass over the same tokens."""
    out = row.unsqueeze(0)
    for step in plan.entities:
        found = step.index.continuing(ids)
        if found is not None:
            mention, offset = found
            out = _corrupt_at(out, [0], [len(ids) - 1], [mention.counterpart(offset)], step)
    return out[0]


def corruption_plan(corruption: Corruption, mask: Sequence[bool], seed: int) -> InterventionPlan:
    """A plan with a single prompt corruption, the shape the trainer evaluates."""
    return InterventionPlan(corruptions=(CorruptStep(corruption, tuple(bool(m) for m in mask), seed),))


def soft_prompt_plan(embeddings: torch.Tensor) -> InterventionPlan:
    """A plan that only prepends ``embeddings``."""
    return InterventionPlan(soft_prompts=(PrependStep(embeddings),))
