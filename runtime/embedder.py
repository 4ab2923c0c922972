"""Tokenizer, chat template and input-embedding matrix: everything needed to build prompt embeddings.

The proxy mode holds only this object; the local mode's ``LanguageModel`` wraps one
around the full model's own embedding layer, so both build identical embeddings.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch

from lethe.runtime.prompt import MessageSpan, TemplatedPrompt, locate_contents, token_range

# Config keys that describe the network's shape; anything else (paths, versions, dtypes,
# quantization notes) may differ between copies of the same weights.
_FINGERPRINT_CONFIG_KEYS = (
    "model_type",
    "vocab_size",
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
    "head_dim",
    "max_position_embeddings",
    "rms_norm_eps",
    "rope_theta",
    "rope_parameters",
    "tie_word_embeddings",
    "hidden_act",
)

Message = Mapping[str, Any]


def model_fingerprint(config: Mapping[str, Any], embedding_weight: torch.Tensor) -> str:
    """Hash of the model's structural config and its input-embedding matrix (as float32)."""
    digest = hashlib.sha256()
    structural = {key: config.get(key) for key in _FINGERPRINT_CONFIG_KEYS if key in config}
    digest.update(json.dumps(structural, sort_keys=True, default=str).encode())
    weight = embedding_weight.detach().to(torch.float32).contiguous().cpu()
    digest.update(weight.numpy().tobytes())
    return "sha256:" + digest.hexdigest()


class PromptEmbedder:
    """Renders prompts, tokenizes them with offsets and maps token ids to input embeddings."""

    def __init__(
        self,
        tokenizer: Any,
        config: Mapping[str, Any],
        embedding_weight: torch.Tensor,
        name: str,
        fingerprint_weight: Callable[[], torch.Tensor] | None = None,
    ):
        """``fingerprint_weight`` gives the float32 matrix to fingerprint when ``embedding_weight`` is a rounded copy
        (a model loaded in bfloat16), so an artifact's binding does not depend on the dtype it is served in."""
        self.tokenizer = tokenizer
        self.config = dict(config)
        self.embedding_weight = embedding_weight
        self.name = name
        self._fingerprint_weight = fingerprint_weight or (lambda: self.embedding_weight)
        self._fingerprint: str | None = None

    @property
    def hidden_size(self) -> int:
        """Width of one embedding vector."""
        return int(self.embedding_weight.shape[1])

    @property
    def vocab_size(self) -> int:
        """Number of rows of the embedding matrix."""
        return int(self.embedding_weight.shape[0])

    @property
    def dtype(self) -> torch.dtype:
        """Floating type of the embeddings."""
        return self.embedding_weight.dtype

    @property
    def device(self) -> torch.device:
        """Where the embedding matrix (and so every prompt's embeddings) lives."""
        return self.embedding_weight.device

    @property
    def fingerprint(self) -> str:
        """Base-model fingerprint (computed once)."""
        if self._fingerprint is None:
            self._fingerprint = model_fingerprint(self.config, self._fingerprint_weight())
        return self._fingerprint

    @property
    def has_chat_template(self) -> bool:
        """Whether the tokenizer carries a chat template."""
        return bool(getattr(self.tokenizer, "chat_template", None))

    def eos_token_ids(self) -> set[int]:
        """Token ids that end a generation."""
        ids: set[int] = set()
        for token in (self.tokenizer.eos_token, "<|endoftext|>", "<|im_end|>", "</s>", "<|eot_id|>"):
            if token is None:
                continue
            token_id = self.tokenizer.convert_tokens_to_ids(token)
            if isinstance(token_id, int) and token_id != self.tokenizer.unk_token_id and token_id >= 0:
                ids.add(token_id)
        return ids

    def render_chat(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> str:
        """The chat as text, through the tokenizer's chat template (or a plain fallback)."""
        if self.has_chat_template:
            return self.tokenizer.apply_chat_template(
                [dict(m) for m in messages], tokenize=False, add_generation_prompt=add_generation_prompt
            )
        lines = [f"{m['role']}: {m['content']}" for m in messages]
        if add_generation_prompt:
            lines.append("assistant:")
        return "\n".join(lines)

    def chat_prompt(self, messages: Sequence[Message], add_generation_prompt: bool = True) -> TemplatedPrompt:
        """Apply the chat template and return the tokens with each message's content span."""
        text = self.render_chat(messages, add_generation_prompt)
        contents = [str(m.get("content") or "") for m in messages]
        roles = [str(m["role"]) for m in messages]
        try:
            char_spans = locate_contents(text, contents)
        except ValueError:
            char_spans = [(0, len(text))] * len(messages)
        return self._tokenize(text, list(zip(roles, char_spans, strict=True)), add_special_tokens=False)

    def text_prompt(self, text: str) -> TemplatedPrompt:
        """Tokenize a raw completion prompt; the whole text counts as one user message."""
        return self._tokenize(text, [("user", (0, len(text)))], add_special_tokens=True)

    def _tokenize(
        self, text: str, spans: list[tuple[str, tuple[int, int]]], add_special_tokens: bool
    ) -> TemplatedPrompt:
        encoded = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        ids = tuple(int(i) for i in encoded["input_ids"])
        offsets = tuple((int(a), int(b)) for a, b in encoded["offset_mapping"])
        messages = tuple(
            MessageSpan(role, start, end, *token_range(offsets, start, end)) for role, (start, end) in spans
        )
        return TemplatedPrompt(text=text, ids=ids, offsets=offsets, messages=messages)

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text`` without special tokens (for completions to score)."""
        return [int(i) for i in self.tokenizer(text, add_special_tokens=False)["input_ids"]]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` without special tokens."""
        return self.tokenizer.decode(list(ids), skip_special_tokens=True)

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """Each token's own text, as OpenAI's legacy logprobs shape wants it (decoded in one batch)."""
        backend = getattr(self.tokenizer, "backend_tokenizer", None)
        if backend is not None:
            return list(backend.decode_batch([[int(i)] for i in ids], skip_special_tokens=False))
        return [self.tokenizer.decode([i]) for i in ids]

    def embed(self, ids: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """Input embeddings of ``ids``: shape ``(len(ids), hidden)`` (or batched for 2-D input)."""
        index = ids if isinstance(ids, torch.Tensor) else torch.tensor(list(ids), dtype=torch.long)
        if index.numel() and (int(index.min()) < 0 or int(index.max()) >= self.vocab_size):
            raise ValueError("token id outside the embedding matrix")
        return torch.nn.functional.embedding(index.to(self.device), self.embedding_weight)
