"""The local model runtime: one object wrapping a causal LM and its tokenizer.

Every entry point takes an optional ``InterventionPlan`` per prompt, applied to the input
embeddings before the model sees them; with no plan the model runs exactly as it would on
token ids. The model, its embeddings and every plan's tensors live on the device and dtype the
settings choose (``runtime.device``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from lethe.runtime.device import Placement
from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import (
    DecodeBatch,
    Decoder,
    GenerationResult,
    Guide,
    SamplingParams,
    StepEvent,
    pad_embeddings,
)
from lethe.runtime.interventions import InterventionPlan, apply_plan
from lethe.runtime.loading import prepare_model, stored_embedding_weight
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.settings import RuntimeSettings

PromptLike = TemplatedPrompt | Sequence[int] | torch.Tensor


@dataclass
class PromptLogprobs:
    """Per-token log-probabilities of a prompt (first entry ``None``) with the top alternatives."""

    tokens: list[int]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[int, float] | None]


class LanguageModel:
    """A frozen causal LM with prompt rendering, generation from embeddings and scoring."""

    def __init__(
        self,
        model: torch.nn.Module,
        tokenizer: object,
        name: str,
        path: Path | None = None,
        fingerprint_weight: Callable[[], torch.Tensor] | None = None,
    ):
        self.model = model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.name = name
        self.path = path
        weight = self.model.get_input_embeddings().weight
        self.embedder = PromptEmbedder(tokenizer, self.model.config.to_dict(), weight, name, fingerprint_weight)
        self._forward_lock = threading.Lock()
        self.forward_passes = 0
        self.decoder = Decoder(
            self.model,
            self.model.get_input_embeddings(),
            self.embedder.decode,
            self.embedder.eos_token_ids(),
            on_forward=self._count_forward,
        )

    @classmethod
    def load(cls, spec: str, settings: RuntimeSettings | None = None, progress: bool = False) -> LanguageModel:
        """Load a built-in name, a Hugging Face folder or a GGUF file onto the settings' device and dtype."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        settings = settings or RuntimeSettings()
        if settings.threads > 0:
            torch.set_num_threads(settings.threads)
        placement = Placement.from_settings(settings)
        folder = prepare_model(spec, settings, progress=progress)
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=placement.dtype).to(placement.device)
        # A rounded (bf16/fp16) copy fingerprints as the stored matrix, so artifacts bind to the weights, not the dtype.
        reference = None if placement.dtype == torch.float32 else lambda: stored_embedding_weight(folder)
        return cls(model, tokenizer, name=spec, path=folder, fingerprint_weight=reference)

    def _count_forward(self, rows: int) -> None:
        with self._forward_lock:
            self.forward_passes += rows

    @property
    def tokenizer(self) -> object:
        """The Hugging Face tokenizer."""
        return self.embedder.tokenizer

    @property
    def fingerprint(self) -> str:
        """Hash of config and embedding matrix; artifacts are bound to it."""
        return self.embedder.fingerprint

    @property
    def device(self) -> torch.device:
        """Where the model runs."""
        return self.embedder.device

    @property
    def dtype(self) -> torch.dtype:
        """The model's floating dtype."""
        return self.embedder.dtype

    @property
    def hidden_size(self) -> int:
        """Width of the input embeddings."""
        return self.embedder.hidden_size

    def chat_prompt(self, messages: Sequence[dict], add_generation_prompt: bool = True) -> TemplatedPrompt:
        """Apply the chat template; see ``PromptEmbedder.chat_prompt``."""
        return self.embedder.chat_prompt(messages, add_generation_prompt)

    def text_prompt(self, text: str) -> TemplatedPrompt:
        """Tokenize a raw completion prompt."""
        return self.embedder.text_prompt(text)

    def embed(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings of token ids."""
        return self.embedder.embed(ids)

    def prompt_embeddings(
        self, prompt: PromptLike, plan: InterventionPlan | None = None, ids: Sequence[int] | None = None
    ) -> torch.Tensor:
        """Embeddings ``(seq_len, hidden)`` of a prompt with ``plan`` applied (ids, templated prompt or embeddings).

        For embeddings, ``ids`` are the tokens the rows stand for (uploaded ``prompt_embeds`` mapped back to the
        vocabulary): with them the plan's entity steps apply to the prompt too, as for the same prompt as text.
        """
        if isinstance(prompt, torch.Tensor) and prompt.is_floating_point():
            embeds = prompt.to(self.device, self.dtype)
            ids = list(ids) if ids is not None else None
        else:
            ids = list(prompt.ids if isinstance(prompt, TemplatedPrompt) else prompt)
            embeds = self.embed(ids)
        return apply_plan(embeds, plan, ids) if plan is not None else embeds

    @staticmethod
    def guide(prompt: PromptLike, plan: InterventionPlan | None, ids: Sequence[int] | None = None) -> Guide | None:
        """What generation must keep doing for ``prompt`` under ``plan`` (``None`` when nothing); ``ids`` as in
        ``prompt_embeddings``."""
        if plan is None or (not plan.entities and not plan.rewrites):
            return None
        if isinstance(prompt, torch.Tensor) and prompt.is_floating_point():
            return Guide(tuple(int(i) for i in ids or ()), plan)
        ids = prompt.ids if isinstance(prompt, TemplatedPrompt) else prompt
        return Guide(tuple(int(i) for i in ids), plan)

    def generate(
        self, prompt: PromptLike, params: SamplingParams | None = None, plan: InterventionPlan | None = None
    ) -> GenerationResult:
        """Generate a completion for one prompt."""
        embeds = self.prompt_embeddings(prompt, plan)
        return self.decoder.generate([embeds], [params or SamplingParams()], [self.guide(prompt, plan)])[0]

    def generate_batch(
        self,
        embeds: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> list[GenerationResult]:
        """Generate for several prompt embeddings at once (``guides`` keep flagged rows' interventions on)."""
        return self.decoder.generate(embeds, params, guides)

    def generate_many(
        self,
        prompts: Sequence[PromptLike],
        plans: Sequence[InterventionPlan | None],
        params: Sequence[SamplingParams],
        batch_size: int | None = None,
    ) -> list[GenerationResult]:
        """Generate for many prompts, each under its own plan (applied to the prompt and kept on while generating)."""
        results: list[GenerationResult] = []
        size = batch_size or max(1, len(prompts))
        for start in range(0, len(prompts), size):
            chunk = range(start, min(start + size, len(prompts)))
            embeds = [self.prompt_embeddings(prompts[i], plans[i]) for i in chunk]
            guides = [self.guide(prompts[i], plans[i]) for i in chunk]
            results.extend(self.decoder.generate(embeds, [params[i] for i in chunk], guides))
        return results

    def decode_steps(
        self,
        embeds: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> Iterator[list[StepEvent]]:
        """Batched decoding of a fixed set of prompts, step by step."""
        return self.decoder.steps(embeds, params, guides)

    def open_batch(self) -> DecodeBatch:
        """A running batch that rows join and leave between steps (the gateway's batcher drives this)."""
        return self.decoder.open()

    def stream(
        self, prompt: PromptLike, params: SamplingParams | None = None, plan: InterventionPlan | None = None
    ) -> Iterator[str]:
        """Generate for one prompt as a stream of text deltas."""
        embeds = self.prompt_embeddings(prompt, plan)
        for events in self.decoder.steps([embeds], [params or SamplingParams()], [self.guide(prompt, plan)]):
            for event in events:
                if event.delta:
                    yield event.delta

    def score(
        self,
        prompts: Sequence[Sequence[int]],
        completions: Sequence[Sequence[int]],
        plans: Sequence[InterventionPlan | None] | None = None,
        batch_size: int = 16,
        grad: bool = False,
    ) -> list[torch.Tensor]:
        """Per-token log-probabilities of each completion after its prompt.

        A plan's prompt corruptions apply to the prompt, its entity steps to the whole sequence (the
        forget entities are corrupted in the teacher-forced completion too), its soft prompts in front.
        """
        if len(prompts) != len(completions):
            raise ValueError("prompts and completions differ in number")
        plans = list(plans) if plans is not None else [None] * len(prompts)
        results: list[torch.Tensor] = []
        for start in range(0, len(prompts), batch_size):
            chunk = range(start, min(start + batch_size, len(prompts)))
            rows, spans = [], []
            for i in chunk:
                completion = list(completions[i])
                if not completion:
                    raise ValueError("a completion to score has no tokens")
                ids = [*prompts[i], *completion]
                row = self.embed(ids)
                plan = plans[i]
                if plan is not None:
                    row = apply_plan(row, plan, ids)
                rows.append(row)
                spans.append((row.shape[0] - len(completion), completion))
            with torch.enable_grad() if grad else torch.no_grad():
                results.extend(self._score_rows(rows, spans))
        return results

    def _score_rows(self, rows: list[torch.Tensor], spans: list[tuple[int, list[int]]]) -> list[torch.Tensor]:
        embeds, mask = pad_embeddings(rows, "right")
        self._count_forward(len(rows))
        hidden = self.model.get_decoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
        head = self.model.get_output_embeddings()
        out = []
        for i, (prompt_len, completion) in enumerate(spans):
            states = hidden[i, prompt_len - 1 : prompt_len - 1 + len(completion)]
            logprobs = torch.log_softmax(head(states).float(), dim=-1)
            index = torch.tensor(completion, device=logprobs.device).unsqueeze(-1)
            out.append(logprobs.gather(-1, index).squeeze(-1))
        return out

    @torch.no_grad()
    def prompt_logprobs(
        self, prompt: Sequence[int], plan: InterventionPlan | None = None, top_n: int = 0
    ) -> PromptLogprobs:
        """Log-probability of every prompt token given the ones before it (echo scoring)."""
        ids = list(prompt)
        embeds = self.prompt_embeddings(ids, plan)
        offset = embeds.shape[0] - len(ids)
        self._count_forward(1)
        logits = self.model(inputs_embeds=embeds.unsqueeze(0)).logits[0].float()
        rows = torch.log_softmax(logits, dim=-1)[offset : offset + len(ids) - 1]
        following = torch.tensor(ids[1:], dtype=torch.long, device=rows.device).unsqueeze(-1)
        token_logprobs: list[float | None] = [None, *rows.gather(-1, following).squeeze(-1).tolist()]
        top: list[dict[int, float] | None] = [None] * len(ids)
        if top_n > 0 and len(ids) > 1:
            values, indices = rows.topk(top_n, dim=-1)
            for position, (v, t) in enumerate(zip(values.tolist(), indices.tolist(), strict=True), start=1):
                top[position] = dict(zip(t, v, strict=True))
        return PromptLogprobs(ids, token_logprobs, top)
