"""Which words of a text carry a forget scope: mentions of its entities, else its strongest n-gram words."""

from __future__ import annotations

import re

from lethe.classifier.entities import EntityMatcher
from lethe.classifier.features import Analysis, Hasher
from lethe.classifier.head import LinearHead

_JOIN_GAP = re.compile(r"[\s.\-'’]{0,3}")


def salient_word_mask(
    head: LinearHead, matcher: EntityMatcher, analysis: Analysis, hasher: Hasher, min_logit: float, relative: float
) -> list[bool]:
    """Words that carry the scope: mentions of mined entities when there are any (as ECO's entity
    mode), otherwise words whose positive contribution is at least ``max(min_logit, relative * best)``."""
    words = analysis.words
    mask = [False] * len(words)
    for start, end in matcher.match(words):
        for k in range(start, end):
            mask[k] = True
    if any(mask):
        return mask
    contributions = head.word_contributions(analysis, hasher)
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
