"""Fluency metrics: how ordinary answers read (flagged answers should read like answers, not noise).

- ``loops``: an answer that repeats a word 3-gram three times or more (a degenerate loop);
- ``distinct_2``: unique word bigrams over bigrams (repetition drives it down);
- ``base_perplexity``: the *bare* model's perplexity of the answers given their conversations (gibberish
  drives it up).
"""

from __future__ import annotations

import itertools
import math
from collections import Counter
from collections.abc import Sequence

import numpy as np

from lethe.runtime.model import LanguageModel


def distinct_2(answers: Sequence[str]) -> float:
    """Mean over answers of unique word bigrams / bigrams (1.0: no repetition)."""
    values = []
    for answer in answers:
        bigrams = list(itertools.pairwise(answer.split()))
        if bigrams:
            values.append(len(set(bigrams)) / len(bigrams))
    return float(np.mean(values)) if values else float("nan")


def loops(answer: str) -> bool:
    """Whether an answer repeats a word 3-gram three times or more."""
    words = answer.lower().split()
    counts = Counter(zip(words, words[1:], words[2:], strict=False))
    return bool(counts) and max(counts.values()) >= 3


def loop_rate(answers: Sequence[str]) -> float | None:
    """Share of answers that loop (``None`` without answers)."""
    return float(np.mean([loops(a) for a in answers])) if answers else None


def base_perplexity(
    model: LanguageModel, conversations: Sequence[list[dict[str, str]]], answers: Sequence[str]
) -> float:
    """Perplexity of the answers under the bare model, given their conversations."""
    prompts, completions = [], []
    for messages, answer in zip(conversations, answers, strict=True):
        ids = model.embedder.encode(answer)
        if ids:
            prompts.append(model.chat_prompt(messages).ids)
            completions.append(ids)
    if not completions:
        return float("nan")
    logprobs = model.score(prompts, completions)
    return math.exp(-sum(float(t.sum()) for t in logprobs) / sum(len(t) for t in logprobs))
