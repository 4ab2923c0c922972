"""Entity strings mined from a forget set, and a typo-tolerant matcher for them.

Candidates are runs of capitalized words in the forget prompts (``Elena Marquez``, ``J. R. R.
Tolkien``, ``Miguel de Cervantes``).  A candidate is kept when it is far more frequent in the
forget prompts than in any negative source, so template words and common places drop out.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache

from lethe.classifier.text import normalize_word, word_spans

_STOPWORDS_TEXT = (
    """a an the and or but if then of in on at to for from by with about as into onto over under after before
    during between through against without within what who whom whose which when where why how is are was were
    be been being am do does did done has have had having can could will would shall should may might must
    i you he she it we they me him her us them my your his its our their mine yours this that these those
    there here tell give describe explain please list name show write say know also any some all each
    not no yes so very more most much many such just only too than like could one two three"""
)
_CONNECTORS_TEXT = "de del della der den di da du dos das van von la le el al bin ibn y"
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())
CONNECTORS = frozenset(_CONNECTORS_TEXT.split())
_GAP = re.compile(r"[\s.\-'’]{1,3}")
MIN_RATE_RATIO = 10.0
MAX_ENTITY_WORDS = 6


@dataclass(frozen=True)
class Entity:
    """A mined entity: its normalized words and the surface form seen most often."""

    words: tuple[str, ...]
    surface: str


def capitalized_runs(text: str) -> list[str]:
    """Surface strings of capitalized word runs in ``text`` (leading function words removed)."""
    spans = word_spans(text)
    runs: list[list[int]] = []
    current: list[int] = []
    for i, (start, end) in enumerate(spans):
        word = text[start:end]
        joined = bool(current) and _GAP.fullmatch(text[spans[current[-1]][1] : start]) is not None
        capital = word[0].isupper()
        if (capital and (joined or not current)) or (joined and word.lower() in CONNECTORS):
            current.append(i)
        else:
            if current:
                runs.append(current)
            current = [i] if capital else []
    if current:
        runs.append(current)
    out: list[str] = []
    for run in runs:
        words = [text[spans[i][0] : spans[i][1]] for i in run]
        while words and (normalize_word(words[0]) in STOPWORDS or words[0].lower() in CONNECTORS):
            words.pop(0)
            run = run[1:]
        while words and words[-1].lower() in CONNECTORS:
            words.pop()
            run = run[:-1]
        if words and len(words) <= MAX_ENTITY_WORDS:
            out.append(text[spans[run[0]][0] : spans[run[-1]][1]])
    return out


def _normalized(surface: str) -> tuple[str, ...]:
    return tuple(normalize_word(text_word) for text_word in re.findall(r"[^\W_]+", surface))


def _document_frequency(phrases: Iterable[tuple[str, ...]], texts: Sequence[Sequence[str]]) -> Counter:
    """How many of ``texts`` (normalized word lists) contain each phrase as a contiguous sequence."""
    by_first: dict[str, list[tuple[str, ...]]] = {}
    for p in set(phrases):
        by_first.setdefault(p[0], []).append(p)
    counts: Counter = Counter()
    for words in texts:
        seen: set[tuple[str, ...]] = set()
        for i, w in enumerate(words):
            for p in by_first.get(w, ()):
                if tuple(words[i : i + len(p)]) == p:
                    seen.add(p)
        counts.update(seen)
    return counts


def mine_entities(
    positives: Sequence[str],
    negative_sources: Sequence[Sequence[Sequence[str]]],
    common_words: frozenset[str] = frozenset(),
) -> list[Entity]:
    """Entities of the forget prompts that are rare in every negative source.

    ``negative_sources`` are lists of normalized word lists (e.g. retain prompts, the general pool);
    a candidate is kept when its rate among the positives is at least ``MIN_RATE_RATIO`` times its
    rate in each source.  The last word of a multi-word entity (a surname, usually) is a candidate
    on its own; single-word candidates that are ordinary lowercase words (``common_words``) are not.
    """
    surfaces: dict[tuple[str, ...], Counter] = {}
    for text in positives:
        for surface in capitalized_runs(text):
            words = _normalized(surface)
            if not words or (len(words) == 1 and words[0] in common_words):
                continue
            surfaces.setdefault(words, Counter())[surface] += 1
            last, piece = words[-1], re.findall(r"[^\W_]+", surface)[-1]
            if len(words) > 1 and len(last) >= 3 and last not in STOPWORDS and last not in common_words:
                surfaces.setdefault((last,), Counter())[piece] += 0
    if not surfaces:
        return []
    pos_words = [[normalize_word(w) for w in re.findall(r"[^\W_]+", t)] for t in positives]
    pos_df = _document_frequency(surfaces, pos_words)
    keep = {p for p in surfaces if pos_df[p] > 0}
    for source in negative_sources:
        if not source:
            continue
        neg_df = _document_frequency(keep, source)
        keep = {p for p in keep if pos_df[p] / len(positives) >= MIN_RATE_RATIO * neg_df[p] / len(source)}
    out = []
    for p in sorted(keep):
        counter = surfaces[p]
        surface = max(counter.items(), key=lambda kv: (kv[1], kv[0]))[0] if counter else " ".join(p)
        out.append(Entity(words=p, surface=surface))
    return out


def contains_any(words: Sequence[str], phrases: Iterable[tuple[str, ...]]) -> bool:
    """Whether the normalized word list contains any of the phrases."""
    return _document_frequency(phrases, [words]).total() > 0


def _deletions(word: str) -> set[str]:
    return {word[:i] + word[i + 1 :] for i in range(len(word))}


@dataclass
class EntityMatcher:
    """Finds entity mentions in text, tolerating one edit per word of five letters or more.

    The typo index (every entity word and its one-letter deletions) is built on first use: with many live
    forget sets, a set's own matchers are only needed once a request is flagged for it (its salient spans),
    and the shared bank matcher serves every other request.
    """

    entities: Sequence[Entity]
    fuzzy_min_len: int = 5
    _index_built: dict[str, set[str]] | None = field(init=False, repr=False, default=None, compare=False)
    _by_first: dict[str, list[tuple[str, ...]]] = field(init=False, repr=False)
    _cached_candidates: Callable[[str], frozenset[str]] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._by_first = {}
        self._cached_candidates = lru_cache(maxsize=65536)(self._candidates)
        for entity in self.entities:
            self._by_first.setdefault(entity.words[0], []).append(entity.words)

    @property
    def _index(self) -> dict[str, set[str]]:
        if self._index_built is None:
            index: dict[str, set[str]] = {}
            for entity in self.entities:
                for w in entity.words:
                    index.setdefault(w, set()).add(w)
                    if len(w) >= self.fuzzy_min_len:
                        for d in _deletions(w):
                            index.setdefault(d, set()).add(w)
            self._index_built = index  # built whole, then published: concurrent first uses build the same
        return self._index_built

    def clear_cache(self) -> None:
        """Drop the per-word candidate cache."""
        self._cached_candidates.cache_clear()  # type: ignore[attr-defined]

    def _candidates(self, word: str) -> frozenset[str]:
        """Entity words within the edit budget of ``word`` (an apostrophe-less possessive ``s`` is free)."""
        found = self._near(word)
        if len(word) > self.fuzzy_min_len and word.endswith("s"):
            found |= self._near(word[:-1])
        return frozenset(found)

    def _near(self, word: str) -> set[str]:
        found = set(self._index.get(word, ()))
        if len(word) >= self.fuzzy_min_len:
            for d in _deletions(word):
                found.update(self._index.get(d, ()))
        return {c for c in found if c == word or len(c) >= self.fuzzy_min_len}

    def mentions(self, words: Sequence[str]) -> list[tuple[int, int, tuple[str, ...]]]:
        """Entity mentions among normalized ``words``: word-index ranges ``[i, j)`` and the entity matched."""
        if not self._by_first:
            return []
        candidates = [self._cached_candidates(w) for w in words]
        out: list[tuple[int, int, tuple[str, ...]]] = []
        for i, cands in enumerate(candidates):
            for first in cands:
                for phrase in self._by_first.get(first, ()):
                    j = i + len(phrase)
                    if j <= len(words) and all(phrase[k] in candidates[i + k] for k in range(1, len(phrase))):
                        out.append((i, j, phrase))
        return out

    def match(self, words: Sequence[str]) -> list[tuple[int, int]]:
        """Word-index ranges ``[i, j)`` of entity mentions among normalized ``words``."""
        return [(i, j) for i, j, _ in self.mentions(words)]

    @staticmethod
    def counts_as(words: Sequence[str], mention: tuple[int, int, tuple[str, ...]]) -> int | None:
        """Which entity feature a mention sets: 0 for a multi-word entity, 1 for a single word written exactly."""
        start, end, phrase = mention
        if end - start > 1:
            return 0
        return 1 if words[start] == phrase[0] else None

    def features(self, words: Sequence[str]) -> tuple[float, float]:
        """Two binary features: a multi-word entity is mentioned (typos tolerated); a single-word one, exactly."""
        found = [0.0, 0.0]
        for mention in self.mentions(words):
            column = self.counts_as(words, mention)
            if column is not None:
                found[column] = 1.0
        return found[0], found[1]
