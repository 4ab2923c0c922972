"""Decoding from input embeddings: greedy and nucleus sampling, stop strings, text deltas, batching.

A ``DecodeBatch`` runs rows of prompt embeddings (each of its own length) together with a KV cache;
rows join and leave it between decoding steps. Each row has its own sampling parameters and random
generator, so a row's tokens do not depend on which other rows share its batch, or when they came.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

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

    row: int  # the row's key: its index in ``Decoder.steps``, what ``DecodeBatch.join`` returned
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

    key: int
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


def _new_generator(seed: int | None, device: torch.device) -> torch.Generator:
    if seed is None:
        seed = int.from_bytes(os.urandom(8), "big") >> 1
    return torch.Generator(device=device).manual_seed(seed)


def _sample(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> torch.Tensor:
    """A token id (0-d tensor, on the logits' device) drawn from one row of logits ``(vocab,)``."""
    probs = torch.softmax(logits.float() / params.temperature, dim=-1)
    if params.top_p < 1.0:
        sorted_probs, order = torch.sort(probs, descending=True)
        cumulative = torch.cumsum(sorted_probs, dim=-1)
        keep = cumulative - sorted_probs < params.top_p
        keep[0] = True
        sorted_probs = sorted_probs * keep
        choice = torch.multinomial(sorted_probs / sorted_probs.sum(), 1, generator=generator)
        return order[choice][0]
    return torch.multinomial(probs, 1, generator=generator)[0]


def pick_tokens(
    logits: torch.Tensor, params: Sequence[SamplingParams], generators: Sequence[torch.Generator]
) -> torch.Tensor:
    """The next token of every row of ``logits`` ``(rows, vocab)``, on their device: greedy rows by argmax, the
    others sampled with their own generator (so a row's draw does not depend on the other rows)."""
    chosen = logits.argmax(dim=-1)
    for row, (p, generator) in enumerate(zip(params, generators, strict=True)):
        if p.temperature > 0:
            chosen[row] = _sample(logits[row], p, generator)
    return chosen


def pick_token(logits: torch.Tensor, params: SamplingParams, generator: torch.Generator) -> int:
    """Choose the next token from one row of logits ``(vocab,)``."""
    return int(pick_tokens(logits.unsqueeze(0), [params], [generator])[0])


def pad_embeddings(rows: Sequence[torch.Tensor], side: Literal["left", "right"]) -> tuple[torch.Tensor, torch.Tensor]:
    """Stack ``(len_i, hidden)`` rows into ``(batch, max_len, hidden)`` padded on ``side``, with a 0/1 mask
    (both on the rows' device)."""
    width = max(r.shape[0] for r in rows)
    embeds = rows[0].new_zeros((len(rows), width, rows[0].shape[1]))
    mask = torch.zeros((len(rows), width), dtype=torch.long, device=rows[0].device)
    for i, row in enumerate(rows):
        span = slice(width - row.shape[0], width) if side == "left" else slice(0, row.shape[0])
        embeds[i, span] = row
        mask[i, span] = 1
    return embeds, mask


def _pad_left(tensor: torch.Tensor, width: int, dim: int) -> torch.Tensor:
    """``tensor`` with zeros in front along ``dim`` up to ``width`` entries."""
    missing = width - tensor.shape[dim]
    if missing <= 0:
        return tensor
    pad = [0, 0] * (tensor.dim() - 1 - dim % tensor.dim()) + [missing, 0]
    return torch.nn.functional.pad(tensor, pad)


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
        # Transformers renamed ``past_key_values`` to ``cache`` during 5.x; pass whichever this version takes.
        accepted = inspect.signature(model.forward).parameters
        self._cache_kwarg = "cache" if "cache" in accepted else "past_key_values"

    @property
    def device(self) -> torch.device:
        """Where the model's input embeddings (and so every row's tensors) live."""
        return self.model.get_input_embeddings().weight.device

    @property
    def dtype(self) -> torch.dtype:
        """The input embeddings' dtype."""
        return self.model.get_input_embeddings().weight.dtype

    def open(self) -> DecodeBatch:
        """A new, empty running batch."""
        return DecodeBatch(self)

    def steps(
        self,
        prompts: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> Iterator[list[StepEvent]]:
        """Decode every prompt together; yield, after each step, the events of the rows still running (an event's
        ``row`` is the prompt's index).

        ``guides`` (one per row, or ``None``) keep a flagged row's interventions on while it generates.
        """
        batch = self.open()
        batch.join(prompts, params, guides)
        while batch:
            yield batch.step()

    def forward(self, embeds: torch.Tensor, mask: torch.Tensor, positions: torch.Tensor, cache: object) -> torch.Tensor:
        """One forward pass over ``embeds`` ``(rows, len, hidden)`` with the KV ``cache``; the last position's
        logits ``(rows, vocab)`` as float32, on the device."""
        self.on_forward(int(embeds.shape[0]))
        out = self.model(
            inputs_embeds=embeds,
            attention_mask=mask,
            position_ids=positions,
            use_cache=True,
            logits_to_keep=1,
            **{self._cache_kwarg: cache},
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


class DecodeBatch:
    """A running batch that rows join and leave between decoding steps (iteration-level batching).

    Newcomers are prefilled together and their KV cache is merged into the running one, both left-padded
    to a common width; each row keeps its own attention-mask columns, positions, sampling parameters and
    random generator, so its tokens do not depend on which rows share the batch or when it joined. A row
    that finishes leaves at once, and cache columns no remaining row attends to are dropped. Everything
    stays on the model's device; one step brings only the sampled token ids to the host.
    """

    def __init__(self, decoder: Decoder):
        self._decoder = decoder
        self._rows: list[_RowState] = []  # running rows, in cache order
        self._ending: list[_RowState] = []  # rows asked for no tokens: reported finished at the next step
        self._cache: Any = None
        self._mask: torch.Tensor | None = None  # (rows, width) 0/1 attention mask of the cached positions
        self._positions: torch.Tensor | None = None  # (rows, 1) position of each row's next token
        self._logits: torch.Tensor | None = None  # (rows, vocab) logits each row's next token is picked from
        self._next_key = 0

    def __len__(self) -> int:
        return len(self._rows) + len(self._ending)

    @property
    def keys(self) -> list[int]:
        """Keys of the rows still in the batch."""
        return [state.key for state in (*self._ending, *self._rows)]

    @property
    def can_join(self) -> bool:
        """Whether rows can join now: nothing is running, or the cache holds only plain full-attention layers
        (a sliding-window or linear-attention cache cannot be left-padded)."""
        if self._cache is None:
            return True
        from transformers.cache_utils import DynamicLayer

        return all(type(layer) is DynamicLayer for layer in getattr(self._cache, "layers", [None]))

    @torch.inference_mode()
    def join(
        self,
        prompts: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> list[int]:
        """Add rows (prompt embeddings ``(len, hidden)``), prefilled at once; returns their keys (``StepEvent.row``).

        A failure leaves the running rows as they were.
        """
        decoder = self._decoder
        guides = list(guides) if guides is not None else [None] * len(prompts)
        states = []
        for embeds, p, guide in zip(prompts, params, guides, strict=True):
            generator = _new_generator(p.seed, decoder.device)
            states.append(_RowState(self._next_key, p, int(embeds.shape[0]), decoder.decode, generator, guide))
            self._next_key += 1
        starting = [(s, e) for s, e in zip(states, prompts, strict=True) if s.params.max_new_tokens > 0]
        if starting and not self.can_join:
            raise RuntimeError("rows cannot join a batch whose cache is not plain full attention")
        if starting:
            from transformers import DynamicCache

            embeds, mask = pad_embeddings([e.to(decoder.device, decoder.dtype) for _, e in starting], "left")
            positions = (mask.cumsum(-1) - 1).clamp(min=0)
            cache = DynamicCache(config=decoder.model.config)
            logits = decoder.forward(embeds, mask, positions, cache)
            self._merge([s for s, _ in starting], cache, mask, mask.sum(-1, keepdim=True), logits)
        for state in states:
            if state.params.max_new_tokens == 0:
                state.finished, state.finish_reason = True, "length"
                self._ending.append(state)
        return [state.key for state in states]

    def _merge(
        self, rows: list[_RowState], cache: Any, mask: torch.Tensor, positions: torch.Tensor, logits: torch.Tensor
    ) -> None:
        if not self._rows:
            self._rows, self._cache, self._mask, self._positions, self._logits = rows, cache, mask, positions, logits
            return
        assert self._mask is not None and self._positions is not None and self._logits is not None
        width = max(self._mask.shape[1], mask.shape[1])
        for old, new in zip(self._cache.layers, cache.layers, strict=True):
            old.keys = torch.cat([_pad_left(old.keys, width, -2), _pad_left(new.keys, width, -2)])
            old.values = torch.cat([_pad_left(old.values, width, -2), _pad_left(new.values, width, -2)])
        self._mask = torch.cat([_pad_left(self._mask, width, 1), _pad_left(mask, width, 1)])
        self._positions = torch.cat([self._positions, positions])
        self._logits = torch.cat([self._logits, logits])
        self._rows = [*self._rows, *rows]

    @torch.inference_mode()
    def step(self) -> list[StepEvent]:
        """Pick every running row's next token, report it, let finished rows go and run the others one position
        further."""
        events = [StepEvent(state.key, "", True, "length") for state in self._ending]
        self._ending = []
        if not self._rows:
            return events
        assert self._logits is not None
        rows = self._rows
        chosen = pick_tokens(self._logits, [s.params for s in rows], [s.generator for s in rows])
        eos = self._decoder.eos_ids
        keep = []
        for slot, (state, token) in enumerate(zip(rows, chosen.tolist(), strict=True)):
            produced = None if token in eos else token
            delta = state.push(produced)
            events.append(StepEvent(state.key, delta, state.finished, state.finish_reason, produced))
            if not state.finished:
                keep.append(slot)
        if len(keep) < len(rows):
            self._select(keep)
            chosen = chosen[keep]
        if self._rows:
            self._advance(chosen)
        return events

    def _advance(self, tokens: torch.Tensor) -> None:
        """Feed each running row's new token (a flagged row's entity mentions corrupted first)."""
        assert self._mask is not None and self._positions is not None
        step_embeds = self._decoder.embed(tokens.unsqueeze(-1))
        for slot, state in enumerate(self._rows):
            guide = state.guide
            if guide is not None and guide.plan.entities:
                context = [*guide.prompt_ids, *state.token_ids]
                step_embeds[slot, 0] = feedback(guide.plan, context, step_embeds[slot, 0])
        self._mask = torch.cat([self._mask, self._mask.new_ones((len(self._rows), 1))], dim=-1)
        self._logits = self._decoder.forward(step_embeds, self._mask, self._positions, self._cache)
        self._positions = self._positions + 1

    @torch.inference_mode()
    def leave(self, keys: Sequence[int]) -> None:
        """Drop rows (a cancelled request) before the next step."""
        gone = set(keys)
        self._ending = [state for state in self._ending if state.key not in gone]
        keep = [slot for slot, state in enumerate(self._rows) if state.key not in gone]
        if len(keep) < len(self._rows):
            self._select(keep)

    def _select(self, keep: list[int]) -> None:
        """Keep only the running rows at slots ``keep``; drop cache columns no remaining row attends to."""
        self._rows = [self._rows[slot] for slot in keep]
        if not keep:
            self._cache = self._mask = self._positions = self._logits = None
            return
        assert self._mask is not None and self._positions is not None and self._logits is not None
        index = torch.tensor(keep, device=self._mask.device)
        self._cache.batch_select_indices(index)
        self._mask, self._positions, self._logits = self._mask[index], self._positions[index], self._logits[index]
        first = int(self._mask.any(0).int().argmax())
        if first > 0:
            for layer in self._cache.layers:
                layer.keys, layer.values = layer.keys[..., first:, :], layer.values[..., first:, :]
            self._mask = self._mask[:, first:]
