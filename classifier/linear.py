"""Fitting the TF-IDF + logistic-regression model with scikit-learn, and scoring it without it.

The fitted vocabularies, IDF weights and coefficients are exported into plain arrays; the
serve-time scorer recomputes sublinear TF-IDF with L2 normalization per block exactly as
scikit-learn does, in pure Python over a dict, which is far faster than a sklearn call for one text.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import lru_cache
from typing import TYPE_CHECKING

import numpy as np

from lethe.classifier.entities import EntityMatcher
from lethe.classifier.text import Doc, Ranges, cached_words, char_ngrams, char_ngrams_of, word_ngrams

if TYPE_CHECKING:  # scikit-learn and scipy are needed to train, not to serve
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

Featurizer = Callable[[list[str]], np.ndarray]
WORD_CACHE_SIZE = 65536


@dataclass
class TfidfBlock:
    """One exported TF-IDF block: vocabulary in index order, IDF and coefficient arrays."""

    vocab: list[str]
    idf: np.ndarray
    coef: np.ndarray
    _table: dict[str, tuple[float, float]] = field(init=False, repr=False)

    _index: dict[str, int] = field(init=False, repr=False)
    _word_indices: Callable[[str, int, int], np.ndarray] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.idf = np.ascontiguousarray(self.idf, dtype=np.float64)
        self.coef = np.ascontiguousarray(self.coef, dtype=np.float64)
        weights = (self.idf * self.coef).tolist()
        self._table = dict(zip(self.vocab, zip(self.idf.tolist(), weights, strict=True), strict=True))
        self._index = {gram: i for i, gram in enumerate(self.vocab)}
        self._word_indices = lru_cache(maxsize=WORD_CACHE_SIZE)(self._char_indices)

    def _char_indices(self, word: str, n_min: int, n_max: int) -> np.ndarray:
        index = self._index
        found = [i for g in char_ngrams_of(word, n_min, n_max) if (i := index.get(g)) is not None]
        return np.array(found, dtype=np.int64)

    def clear_cache(self) -> None:
        """Drop the per-word vocabulary-index cache."""
        self._word_indices.cache_clear()  # type: ignore[attr-defined]

    def char_logit(self, words: Sequence[str], n_min: int, n_max: int) -> float:
        """``logit`` of the character n-grams of ``words``, from per-word cached vocabulary indices."""
        if not words:
            return 0.0
        indices = np.concatenate([self._word_indices(w, n_min, n_max) for w in words])
        if indices.size == 0:
            return 0.0
        unique, counts = np.unique(indices, return_counts=True)
        values = (1.0 + np.log(counts)) * self.idf[unique]
        return float(values @ self.coef[unique]) / math.sqrt(float(values @ values))

    def logit(self, grams: Sequence[str]) -> float:
        """This block's contribution to the decision function for a bag of n-grams."""
        table = self._table
        squares = 0.0
        dot = 0.0
        for gram, count in Counter(grams).items():
            entry = table.get(gram)
            if entry is not None:
                tf = 1.0 + math.log(count) if count > 1 else 1.0
                squares += (tf * entry[0]) ** 2
                dot += tf * entry[1]
        return dot / math.sqrt(squares) if squares > 0.0 else 0.0

    def contributions(self, grams: Sequence[str]) -> dict[str, float]:
        """Each in-vocabulary n-gram's share of ``logit`` (summed over its occurrences)."""
        table = self._table
        counts = Counter(grams)
        parts: dict[str, float] = {}
        squares = 0.0
        for gram, count in counts.items():
            entry = table.get(gram)
            if entry is not None:
                tf = 1.0 + math.log(count)
                squares += (tf * entry[0]) ** 2
                parts[gram] = tf * entry[1]
        norm = math.sqrt(squares) if squares > 0.0 else 1.0
        return {g: v / norm for g, v in parts.items()}


@dataclass
class DenseBlock:
    """Standardized external features (e.g. LM mean-pooled hidden states) and their coefficients."""

    mean: np.ndarray
    scale: np.ndarray
    coef: np.ndarray

    def transform(self, features: np.ndarray) -> np.ndarray:
        """Standardize a feature matrix the way the model was trained."""
        return (np.asarray(features, dtype=np.float64) - self.mean) * self.scale

    def logits(self, features: np.ndarray) -> np.ndarray:
        """Contribution of each row to the decision function."""
        return self.transform(features) @ self.coef


@dataclass
class EntityBlock:
    """Fuzzy entity-mention features (multi-word mention, single-word mention) and their coefficients."""

    matcher: EntityMatcher
    coef: np.ndarray

    def logit(self, words: Sequence[str]) -> float:
        """Contribution of the entity features to the decision function."""
        full, single = self.matcher.features(words)
        return full * float(self.coef[0]) + single * float(self.coef[1])


@dataclass
class LinearScorer:
    """The exported model: word and char TF-IDF blocks, entity features, optional dense block, intercept."""

    ranges: Ranges
    word: TfidfBlock
    char: TfidfBlock
    intercept: float
    entity: EntityBlock
    dense: DenseBlock | None = None

    def sparse_logit(self, doc: Doc) -> float:
        """Decision function of the text-only part (everything but the dense block) for one analyzed text."""
        r = self.ranges
        words = doc.words
        return (self.intercept + self.word.logit(word_ngrams(words, r.word_max))
                + self.char.char_logit(words, r.char_min, r.char_max) + self.entity.logit(words))

    def arrays(self) -> dict[str, np.ndarray]:
        """Numeric tensors for safetensors."""
        out = {
            "word_idf": self.word.idf, "word_coef": self.word.coef,
            "char_idf": self.char.idf, "char_coef": self.char.coef,
            "intercept": np.array([self.intercept], dtype=np.float64),
            "entity_coef": self.entity.coef,
        }
        if self.dense is not None:
            out |= {"dense_mean": self.dense.mean, "dense_scale": self.dense.scale, "dense_coef": self.dense.coef}
        return out


@dataclass
class FittedModel:
    """A fitted sklearn pipeline and its exported scorer (training time only)."""

    scorer: LinearScorer
    vectorizers: tuple[TfidfVectorizer, TfidfVectorizer]
    estimator: LogisticRegression

    def design(self, texts: Sequence[str], dense: np.ndarray | None) -> sp.csr_matrix:
        """The sklearn design matrix for ``texts``."""
        import scipy.sparse as sp

        blocks = [v.transform(texts) for v in self.vectorizers]
        blocks.append(sp.csr_matrix(entity_features(self.scorer.entity.matcher, texts)))
        if self.scorer.dense is not None:
            if dense is None:
                raise ValueError("dense features required by this model")
            blocks.append(sp.csr_matrix(self.scorer.dense.transform(dense)))
        return sp.hstack(blocks, format="csr")

    def sklearn_proba(self, texts: Sequence[str], dense: np.ndarray | None = None) -> np.ndarray:
        """Positive-class probability from scikit-learn itself (used to verify the export)."""
        return self.estimator.predict_proba(self.design(texts, dense))[:, 1]


class _WordAnalyzer:
    def __init__(self, n_max: int) -> None:
        self.n_max = n_max

    def __call__(self, text: str) -> list[str]:
        return word_ngrams(cached_words(text), self.n_max)


class _CharAnalyzer:
    def __init__(self, n_min: int, n_max: int) -> None:
        self.n_min, self.n_max = n_min, n_max

    def __call__(self, text: str) -> list[str]:
        return char_ngrams(cached_words(text), self.n_min, self.n_max)


def _vocab_list(vectorizer: TfidfVectorizer) -> list[str]:
    vocab = [""] * len(vectorizer.vocabulary_)
    for gram, index in vectorizer.vocabulary_.items():
        vocab[index] = gram
    return vocab


def entity_features(matcher: EntityMatcher, texts: Sequence[str]) -> np.ndarray:
    """The two entity-mention features of each text."""
    return np.array([matcher.features(cached_words(t)) for t in texts], dtype=np.float64).reshape(len(texts), 2)


def fit_linear(
    texts: Sequence[str],
    labels: np.ndarray,
    ranges: Ranges,
    C: float,
    max_iter: int,
    matcher: EntityMatcher | None = None,
    dense: np.ndarray | None = None,
    dense_weight: float = 1.0,
    sample_weight: np.ndarray | None = None,
) -> FittedModel:
    """Fit word + char TF-IDF, entity-mention (and optional dense) blocks with a logistic regression.

    Without ``sample_weight`` the two classes are balanced.
    """
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from threadpoolctl import threadpool_limits

    vectorizers = (
        TfidfVectorizer(analyzer=_WordAnalyzer(ranges.word_max), sublinear_tf=True, min_df=2, dtype=np.float64),
        TfidfVectorizer(analyzer=_CharAnalyzer(ranges.char_min, ranges.char_max), sublinear_tf=True,
                        min_df=2, dtype=np.float64),
    )
    blocks = [v.fit_transform(texts) for v in vectorizers]
    matcher = matcher or EntityMatcher([])
    blocks.append(sp.csr_matrix(entity_features(matcher, texts)))
    dense_block = None
    if dense is not None:
        dense = np.asarray(dense, dtype=np.float64)
        std = dense.std(axis=0)
        std[std < 1e-12] = 1.0
        scale = dense_weight / math.sqrt(dense.shape[1]) / std
        dense_block = DenseBlock(mean=dense.mean(axis=0), scale=scale, coef=np.zeros(dense.shape[1]))
        blocks.append(sp.csr_matrix(dense_block.transform(dense)))
    design = sp.hstack(blocks, format="csr")
    estimator = LogisticRegression(C=C, class_weight="balanced" if sample_weight is None else None, max_iter=max_iter)
    # Multi-threaded BLAS on these small dense vectors only adds contention (10x slower on 2 busy cores).
    with threadpool_limits(limits=1, user_api="blas"):
        estimator.fit(design, labels, sample_weight=sample_weight)
    coef = estimator.coef_[0].astype(np.float64)
    n_word, n_char = (len(v.vocabulary_) for v in vectorizers)
    if dense_block is not None:
        dense_block.coef = coef[n_word + n_char + 2 :].copy()
    scorer = LinearScorer(
        ranges=ranges,
        word=TfidfBlock(_vocab_list(vectorizers[0]), vectorizers[0].idf_.astype(np.float64), coef[:n_word].copy()),
        char=TfidfBlock(_vocab_list(vectorizers[1]), vectorizers[1].idf_.astype(np.float64),
                        coef[n_word : n_word + n_char].copy()),
        intercept=float(estimator.intercept_[0]),
        entity=EntityBlock(matcher, coef[n_word + n_char : n_word + n_char + 2].copy()),
        dense=dense_block,
    )
    return FittedModel(scorer=scorer, vectorizers=vectorizers, estimator=estimator)
