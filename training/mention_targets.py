"""What ECO corrupts wherever it occurs: the forget set's entities, the distinctive words of its answers,
and, for substitution, a same-kind surrogate the model knows for each entity.

The distinctive words of the forgotten answers (``answer_values``: a birthplace, a book title, a year)
are the facts themselves. A model that never learned them rates a true answer like a perturbed one;
the full model keeps preferring a value it has seen even when the person is hidden, so these words
are corrupted too, in the prompt, in a scored answer and in generated tokens.

Surrogates for substitution: for each forget entity, a same-kind entity the model knows.

A model that never learned a person does not answer "I don't know" about them: it confabulates from
the people it does know. Substitution makes the served model do the same, by moving a forget
entity's token embeddings toward those of a surrogate the model knows (``runtime.interventions``).

Candidates are the entities the model is meant to keep (a rows forget set's retain people, a topic's
adjacent-topic names). Each multi-word forget entity gets a multi-word candidate, preferring one
spelled with the same number of tokens, picked by a hash of the entity and the seed, so the choice is
stable across requests, restarts and conversations; a candidate serves one entity only. A forget
entity that is one word of a multi-word one (a surname) gets the same word of that entity's surrogate.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from itertools import pairwise
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from lethe.training.data import ForgetRow


def _rank(seed: int, entity: str, candidate: str) -> int:
    return int.from_bytes(hashlib.blake2b(f"{seed}\x00{entity}\x00{candidate}".encode(), digest_size=8).digest(), "big")


def choose_surrogates(
    entities: Sequence[str], candidates: Sequence[str], encode: Callable[[str], list[int]], seed: int
) -> dict[str, str]:
    """``{forget entity: surrogate}`` for every entity that can get one (see the module docstring)."""
    forget = {e.strip() for e in entities if e and e.strip()}
    pool = [c.strip() for c in dict.fromkeys(candidates) if c and c.strip() and c.strip() not in forget]
    multi = sorted((e for e in forget if len(e.split()) > 1), key=lambda e: (-len(e), e))
    available = [c for c in pool if len(c.split()) > 1]
    chosen: dict[str, str] = {}
    for entity in multi:
        if not available:
            break
        length = len(encode(" " + entity))
        best = min(available, key=lambda c: (abs(len(encode(" " + c)) - length), _rank(seed, entity, c)))
        chosen[entity] = best
        available.remove(best)
    for entity, surrogate in list(chosen.items()):
        words, swaps = entity.split(), surrogate.split()
        for position in (0, -1):
            part = words[position]
            if part in forget and part not in chosen:
                chosen[part] = swaps[position]
    return chosen


def named_entities(prompts: Sequence[str], others: Sequence[str]) -> list[str]:
    """Names the ``prompts`` mention that ``others`` and general text do not (a retain set's people, say)."""
    from lethe.classifier.entities import mine_entities
    from lethe.classifier.pool import common_words, load_pool
    from lethe.classifier.text import cached_words

    if not prompts:
        return []
    sources = [[cached_words(t) for t in others], [cached_words(t) for t in load_pool().train]]
    return [e.surface for e in mine_entities(list(prompts), sources, common_words())]


_WORD = re.compile(r"[^\W_]+")


def _content_grams(text: str, stopwords: frozenset[str]) -> set[str]:
    words = _WORD.findall(text)
    grams = {w for w in words if w.lower() not in stopwords and len(w) >= 3}
    grams |= {f"{a} {b}" for a, b in pairwise(words) if a.lower() not in stopwords and b.lower() not in stopwords}
    return grams


def answer_values(
    forget: Sequence[ForgetRow], retain: Sequence[ForgetRow], entities: Sequence[str], names_only: bool = False
) -> list[str]:
    """Content words and word pairs of the forget answers that no retain answer and no general text uses.

    Names already among ``entities`` (or their words) are left out: they are handled as entities.
    ``names_only`` keeps the words and pairs that name something: one word capitalized, of three letters
    or more and outside the common words, or a number. A topic's answers are the model's own revealed
    text, whose other unshared words are ordinary vocabulary ("wonderful", "castle").
    """
    from lethe.classifier.entities import STOPWORDS
    from lethe.classifier.pool import common_words, load_pool

    forget_grams = set().union(*(_content_grams(r.completion, STOPWORDS) for r in forget))
    forget_grams |= set().union(*(_content_grams(r.reference_answer, STOPWORDS) for r in forget))
    kept_texts = [t for r in retain for t in (r.completion, r.reference_answer)] + list(load_pool().train)
    shared = set().union(*(_content_grams(t, STOPWORDS) for t in kept_texts)) if kept_texts else set()
    named = {w for e in entities for w in (e, *e.split())}
    values = {g for g in forget_grams - shared if g not in named and not set(g.split()) <= named}
    if names_only:
        common = common_words()
        values = {g for g in values if any(_names_something(w, common) for w in g.split())}
    return sorted(values, key=lambda v: (-len(v), v))


def _names_something(word: str, common: frozenset[str]) -> bool:
    from lethe.classifier.text import normalize_word

    if any(c.isdigit() for c in word):
        return True
    plain = normalize_word(word)
    ordinary = plain in common or (plain.endswith("s") and plain[:-1] in common)
    return word[:1].isupper() and len(plain) >= 3 and not ordinary
