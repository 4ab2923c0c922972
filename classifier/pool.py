"""The built-in general negative pool shipped in ``classifier/data/`` and its fixed split."""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from lethe.classifier.text import WORD_PATTERN, normalize_word

DATA_DIR = Path(__file__).parent / "data"
POOL_FILES = ("news.txt", "wiki.txt", "questions.txt")


@dataclass(frozen=True)
class NegativePool:
    """General negatives split by content hash: 70% train, 15% validation, 15% test."""

    train: tuple[str, ...]
    validation: tuple[str, ...]
    test: tuple[str, ...]


def _bucket(text: str) -> int:
    """A stable bucket in [0, 100) from the text's hash."""
    return int.from_bytes(hashlib.blake2b(text.encode("utf-8"), digest_size=4).digest(), "big") % 100


@lru_cache(maxsize=1)
def load_pool() -> NegativePool:
    """Read the shipped pool; the split depends only on each sentence's text."""
    parts: dict[str, list[str]] = {"train": [], "validation": [], "test": []}
    for name in POOL_FILES:
        for line in (DATA_DIR / name).read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if not line:
                continue
            b = _bucket(line)
            parts["train" if b < 70 else "validation" if b < 85 else "test"].append(line)
    return NegativePool(**{k: tuple(v) for k, v in parts.items()})


@lru_cache(maxsize=1)
def common_words(min_count: int = 2) -> frozenset[str]:
    """Ordinary words, which alone are no evidence of an entity: words written in lowercase at least
    ``min_count`` times in the pool, and every whole word of BERT's uncased vocabulary (MiniLM's, about
    20,000 frequent English words and common names such as ``stone``, ``riddle`` or ``harry``)."""
    counts: Counter[str] = Counter()
    for part in (load_pool().train, load_pool().validation, load_pool().test):
        for text in part:
            counts.update(normalize_word(w) for w in WORD_PATTERN.findall(text) if w[0].islower())
    return frozenset(w for w, c in counts.items() if c >= min_count) | _vocabulary_words()


def _vocabulary_words() -> frozenset[str]:
    from lethe.classifier.semantic import SemanticModelUnavailable, minilm_folder

    try:
        lines = (minilm_folder() / "vocab.txt").read_text(encoding="utf-8").splitlines()
    except (SemanticModelUnavailable, OSError):
        return frozenset()
    return frozenset(w for w in lines if len(w) >= 3 and w.isalpha() and w.isascii())
