"""Prompt embeddings as vLLM wants them: the model family's embedding scale, the model's dtype, spliced JSON.

vLLM feeds ``prompt_embeds`` straight to the decoder, skipping the model's own embedding step
(``embed_input_ids``). Most families look rows up and nothing more; these scale inside that step
(read from vLLM 0.33.0's ``model_executor/models``), so their rows must be scaled here:

- Gemma, Gemma 2, Gemma 3: ``x sqrt(hidden_size)`` (``gemma.py``, ``gemma2.py``, ``gemma3.py``), the
  factor rounded to the model's dtype as vLLM's ``normalizer`` buffer is;
- MiniCPM and MiniCPM3: ``x scale_emb`` (``minicpm.py``).

Granite (all variants), Falcon-H1 and HyperCLOVA X multiply by ``embedding_multiplier`` in their
decoder's forward, after ``prompt_embeds`` come in, so vLLM applies it itself: no scale here.
Families that build more than rows from the token ids (Gemma 3n and Gemma 4 per-layer inputs, the
HRM text model's scale) cannot take prompt embeddings faithfully: proxy mode refuses to start.

Payloads are sent in the model's dtype (its config's ``dtype``, bf16 for float32 checkpoints, as
vLLM serves them on GPUs), and the base64 is spliced into the JSON body as bytes: base64 needs no
escaping, so the megabytes of a long prompt are never re-escaped by ``json.dumps``.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import torch

SQRT_HIDDEN = ("gemma", "gemma2", "gemma3", "gemma3_text")
SCALE_EMB = ("minicpm", "minicpm3")
UNSUPPORTED = ("gemma3n", "gemma3n_text", "gemma4", "gemma4_text", "hrm_text")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class UnsupportedModelFamily(ValueError):
    """The model family's embeddings cannot be sent to vLLM as ``prompt_embeds`` faithfully."""


def text_config(config: Mapping[str, Any]) -> Mapping[str, Any]:
    """The language model's part of a config (multimodal configs nest it under ``text_config``)."""
    nested = config.get("text_config")
    return nested if isinstance(nested, Mapping) else config


def model_dtype(config: Mapping[str, Any], setting: str = "auto") -> torch.dtype:
    """The dtype vLLM serves the model in: ``setting`` if given, else the config's (float32 checkpoints: bf16)."""
    if setting != "auto":
        return DTYPES[setting]
    for part in (text_config(config), config):
        declared = part.get("dtype") or part.get("torch_dtype")
        if declared in ("bfloat16", "float16"):
            return DTYPES[declared]
    return torch.bfloat16


def embedding_scale(config: Mapping[str, Any], dtype: torch.dtype) -> float | None:
    """The factor vLLM's embedding step applies for this family, or None; raises for families it cannot take."""
    text = text_config(config)
    family = str(text.get("model_type") or config.get("model_type") or "")
    if family in UNSUPPORTED:
        raise UnsupportedModelFamily(
            f"model family {family!r} derives more than embedding rows from the token ids inside vLLM, so "
            "prompt embeddings cannot reproduce it; proxy mode does not support it"
        )
    if family in SQRT_HIDDEN:
        return float(torch.tensor(float(text["hidden_size"]) ** 0.5, dtype=dtype))
    if family in SCALE_EMB:
        return float(text.get("scale_emb", 1.0))
    return None


def encode_prompt_embeds(tensor: torch.Tensor) -> str:
    """Base64 of ``torch.save(tensor)``, exactly as vLLM's client example encodes ``prompt_embeds``."""
    return _encoded(tensor).decode("ascii")


def _encoded(tensor: torch.Tensor) -> bytes:
    buffer = io.BytesIO()
    torch.save(tensor.detach().cpu().contiguous(), buffer)
    return base64.b64encode(buffer.getbuffer())


@dataclass(frozen=True)
class UpstreamEmbeddings:
    """How this upstream takes prompt embeddings: its dtype and its family's scale."""

    dtype: torch.dtype
    scale: float | None = None

    @classmethod
    def for_config(cls, config: Mapping[str, Any], dtype_setting: str = "auto") -> UpstreamEmbeddings:
        """From the model's config (raises ``UnsupportedModelFamily`` for families vLLM cannot be fed)."""
        dtype = model_dtype(config, dtype_setting)
        return cls(dtype, embedding_scale(config, dtype))

    def prepare(self, embeds: torch.Tensor) -> torch.Tensor:
        """What the upstream's embedding step would have produced: scaled, in the model's dtype."""
        scaled = embeds * self.scale if self.scale is not None else embeds
        return scaled.to(self.dtype)

    def body(self, payload: dict[str, Any], embeds: torch.Tensor) -> bytes:
        """``payload`` as JSON with ``prompt_embeds`` spliced in (base64 is JSON-safe, nothing to escape)."""
        head = json.dumps(payload, separators=(",", ":")).encode()
        return head[:-1] + b',"prompt_embeds":"' + _encoded(self.prepare(embeds)) + b'"}'
