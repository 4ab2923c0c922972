"""Decoding from input embeddings: greedy and nucleus sampling, stop strings, text deltas, batching.

A batch of prompts (each an embedding matrix of its own length) is left-padded and decoded
together with a KV cache; each row has its own sampling parameters and random generator,
so a row's tokens do not depend on which other rows share its batch.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Literal

import torch

from lethe.runtime.interventions import InterventionPlan, feedback

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to pick tokens: temperature 0 is greedy."""

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int | None = None
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if self.max_new_tokens < 0:
            raise ValueError("max_new_tokens must be >= 0")
        if self.temperature < 0:
            raise ValueError("temperature must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError("top_p must be in (0, 1]")


@dataclass
class GenerationResult:
    """A finished generation."""

    text: str
    token_ids: list[int]
    finish_reason: FinishReason
    prompt_tokens: int

    @property
    def completion_tokens(self) -> int:
        """Number of generated tokens (after stop-string truncation of the text, tokens are kept)."""
        return len(self.token_ids)


@dataclass
class StepEvent:
    """What one row produced in one decoding step."""

    row: int
    delta: str
    finished: bool
    finish_reason: FinishReason | None = None
    token_id: int | None = None


@dataclass(frozen=True)
class Guide:
    """What a row's generation must keep doing: the prompt's token ids and its intervention plan.

    Tokens the model generates that continue a mention of a forget entity are corrupted before they
    are fed back, and a substituted answer's surrogate names are written back as the names asked about.
    """

    prompt_ids: tuple[int, ...]
    plan: InterventionPlan


def rewrite(text: str, pairs: Sequence[tuple[str, str]]) -> str:
    """``text`` with each surrogate name replaced by the name asked about."""
    for surrogate, original in pairs:
        text = text.replace(surrogate, original)
    return text


@dataclass
class _RowState:
    """Per-row decoding state: tokens, text emitted so far, stop handling."""

    params: SamplingParams
    prompt_tokens: int
    decode: Callable[[list[int]], str]
    generator: torch.Generator
    guide: Guide | None = None
    token_ids: list[int] = field(default_factory=list)
    emitted: int = 0
    text: str = ""
    finished: bool = False
    finish_reason: FinishReason | None = None

    @property
    def rewrites(self) -> tuple[tuple[str, str], ...]:
        """Surrogate names to map back in this row's text."""
        return self.guide.plan.rewrites if self.guide is not None else ()

    def push(self, token_id: int | None) -> str:
        """Add a token (``None`` for end of sequence) and return the text that can be shown now."""
        if token_id is None:
            self._finish("stop")
        else:
            self.token_ids.append(token_id)
            self.text = rewrite(self.decode(self.token_ids), self.rewrites)
            cut = _first_stop(self.text, self.params.stop)
            if cut is not None:
                self.text = self.text[:cut]
                self._finish("stop")
            elif len(self.token_ids) >= self.params.max_new_tokens:
                self._finish("length")
        return self._release()

    def _finish(self, reason: FinishReason) -> None:
        self.finished = True
        self.finish_reason = reason

    def _release(self) -> str:
        if self.finished:
            visible = len(self.text)
        else:
            holds = (*self.params.stop, *(surrogate for surrogate, _ in self.rewrites))
            visible = len(self.text) - _held_back(self.text, holds)
            # A trailing replacement character is an incomplete multi-byte sequence: wait for the rest.
            visible = len(self.text[:visible].rstrip("\ufffd"))
        if visible <= self.emitted:
            return ""
        delta = self.text[self.emitted : visible]
        self.emitted = visible
        return delta


def _first_stop(text: str, stops: Sequence[str]) -> int | None:
    positions = [text.find(s) for s in stops if s]
    positions = [p for p in positions if p >= 0]
    return min(positions) if positions else None


def _held_back(text: str, stops: Sequence[str]) -> int:
    """Length of the longest suffix of ``text`` that could begin a stop string."""
    longest = 0
    for stop in stops:
        for size in range(min(len(stop) - 1, len(text)), 0, -1):
            if text.endswith(stop[:size]):
                longest = max(longest, size)
                break
    return longest


def _new_generator(seed: int | None) -> torch.Generator:
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "big") >> 1
    return torch.Generator().manual_seed(seed)


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Choose the next token from one row of logits ``(vocab,)``."""
    if params.temperature == 0:
        return int(torch.argmax(logits))
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = cumulative - sorted_probs < params.top_p
        keep[0] = True
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return int(order[choice])
    return int(torch.multinomial(probs, 1, generator=generator))


def pad_embeddings(rows: Sequence[torch.Tensor], side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(len_i, hidden)`` rows into ``(batch, max_len, hidden)`` padded on ``side``, with a 0/1 mask."""
    width = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, row in enumerate(rows):
        span = slice(width - row.shape[0], width) if side == "left" else slice(0, row.shape[0])
        embeds[i, span] = row
        mask[i, span] = 1
    return embeds, mask


class Decoder:
    """Runs batched decoding steps over a Hugging Face causal LM."""

    def __init__(
        self,
        model: torch.nn.Module,
        embed: Callable[[torch.Tensor], torch.Tensor],
        decode: Callable[[list[int]], str],
        eos_ids: set[int],
        on_forward: Callable[[int], None] | None = None,
    ):
        self.model = model
        self.embed = embed
        self.decode = decode
        self.eos_ids = eos_ids
        self.on_forward = on_forward or (lambda rows: None)

    @torch.inference_mode()
    def steps(
        self,
        prompts: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> Iterator[list[StepEvent]]:
        """Decode every prompt; yield, after each step, the events of the rows still running.

        ``guides`` (one per row, or ``None``) keep a flagged row's interventions on while it generates.
        """
        from transformers import DynamicCache

        guides = list(guides) if guides is not None else [None] * len(prompts)
        states = [
            _RowState(p, int(e.shape[0]), self.decode, _new_generator(p.seed), g)
            for e, p, g in zip(prompts, params, guides, strict=True)
        ]
        events = [StepEvent(i, "", True, "length") for i, s in enumerate(states) if s.params.max_new_tokens == 0]
        for event in events:
            states[event.row].finished = True
            states[event.row].finish_reason = "length"
        if events:
            yield events
        active = [i for i, s in enumerate(states) if not s.finished]
        if not active:
            return
        embeds, mask = pad_embeddings([prompts[i] for i in active], "left")
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        cache = DynamicCache(config=self.model.config)
        logits = self._forward(embeds, mask, positions, cache)
        while active:
            next_ids: list[int] = []
            step_events: list[StepEvent] = []
            for slot, row in enumerate(active):
                state = states[row]
                token = pick_token(logits[slot], state.params, state.generator)
                produced = None if token in self.eos_ids else token
                delta = state.push(produced)
                step_events.append(StepEvent(row, delta, state.finished, state.finish_reason, produced))
                next_ids.append(token)
            yield step_events
            keep = [slot for slot, row in enumerate(active) if not states[row].finished]
            if not keep:
                return
            if len(keep) < len(active):
                cache.batch_select_indices(torch.tensor(keep))
                mask = mask[keep]
                positions = positions[keep]
                active = [active[slot] for slot in keep]
                next_ids = [next_ids[slot] for slot in keep]
            mask = torch.cat([mask, torch.ones((len(active), 1), dtype=torch.long)], dim=-1)
            positions = positions[:, -1:] + 1
            step_embeds = self.embed(torch.tensor(next_ids, dtype=torch.long).unsqueeze(-1))
            for slot, row in enumerate(active):
                guide = states[row].guide
                if guide is not None and guide.plan.entities:
                    context = [*guide.prompt_ids, *states[row].token_ids]
                    step_embeds[slot, 0] = feedback(guide.plan, context, step_embeds[slot, 0])
            logits = self._forward(step_embeds, mask, positions, cache)

    def _forward(
        self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object
    ) -> torch.Tensor:
        self.on_forward(int(embeds.shape[0]))
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            cache=cache,
            use_cache=True,
            logits_to_keep=1,
        )
        return out.logits[:, -1, :].float()

    def generate(
        self,
        prompts: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> list[GenerationResult]:
        """Decode every prompt to completion."""
        finished: dict[int, GenerationResult] = {}
        texts = [""] * len(prompts)
        tokens: list[list[int]] = [[] for _ in prompts]
        for events in self.steps(prompts, params, guides):
            for event in events:
                texts[event.row] += event.delta
                if event.token_id is not None:
                    tokens[event.row].append(event.token_id)
                if event.finished:
                    finished[event.row] = GenerationResult(
                        text=texts[event.row],
                        token_ids=tokens[event.row],
                        finish_reason=event.finish_reason or "stop",
                        prompt_tokens=int(prompts[event.row].shape[0]),
                    )
        return [finished[i] for i in range(len(prompts))]
