"""Which words of a text carry a forget scope: positive-weight n-grams and mined entity mentions."""

from __future__ import annotations

import re
from collections import Counter

from lethe.classifier.entities import EntityMatcher
from lethe.classifier.linear import LinearScorer
from lethe.classifier.text import Doc, char_ngrams_of

_JOIN_GAP = re.compile(r"[\s.\-'’]{0,3}")


def word_contributions(scorer: LinearScorer, doc: Doc) -> list[float]:
    """Each word's share of the n-gram decision function (n-grams split evenly over their words)."""
    words = doc.words
    word_grams, char_grams = doc.grams(scorer.ranges)
    per_word = [0.0] * len(words)
    word_parts = scorer.word.contributions(word_grams)
    word_counts = Counter(word_grams)
    for n in range(1, scorer.ranges.word_max + 1):
        for i in range(len(words) - n + 1):
            gram = " ".join(words[i : i + n])
            value = word_parts.get(gram)
            if value:
                share = value / word_counts[gram] / n
                for k in range(i, i + n):
                    per_word[k] += share
    char_parts = scorer.char.contributions(char_grams)
    char_counts = Counter(char_grams)
    for i, w in enumerate(words):
        for gram in char_ngrams_of(w, scorer.ranges.char_min, scorer.ranges.char_max):
            value = char_parts.get(gram)
            if value:
                per_word[i] += value / char_counts[gram]
    return per_word


def salient_word_mask(
    scorer: LinearScorer, matcher: EntityMatcher, doc: Doc, min_logit: float, relative: float
) -> list[bool]:
    """Words that carry the scope: mentions of mined entities when there are any (as ECO's entity
    mode), otherwise words whose positive contribution is at least ``max(min_logit, relative * best)``."""
    mask = [False] * len(doc.words)
    for start, end in matcher.match(doc.words):
        for k in range(start, end):
            mask[k] = True
    if any(mask):
        return mask
    contributions = word_contributions(scorer, doc)
    if not contributions:
        return mask
    cut = max(min_logit, relative * max(contributions))
    return [c >= cut for c in contributions]


def mask_to_spans(text: str, spans: list[tuple[int, int]], mask: list[bool]) -> list[tuple[int, int]]:
    """Character spans of the masked words, adjacent words (joined by space or name punctuation) merged."""
    out: list[tuple[int, int]] = []
    for (start, end), flagged in zip(spans, mask, strict=True):
        if not flagged:
            continue
        if out and _JOIN_GAP.fullmatch(text[out[-1][1] : start]):
            out[-1] = (out[-1][0], end)
        else:
            out.append((start, end))
    return out
