"""The scope classifier: scoring, conversation scoring, salient spans, save and load."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from lethe.classifier.config import ClassifierConfig, ClassifierLoadError
from lethe.classifier.entities import Entity, EntityMatcher
from lethe.classifier.linear import DenseBlock, EntityBlock, Featurizer, LinearScorer, TfidfBlock
from lethe.classifier.salience import mask_to_spans, salient_word_mask
from lethe.classifier.storage import atomic_folder, write_json, write_tensors
from lethe.classifier.text import Doc, Ranges, char_ngrams_of

FORMAT = "lethe-scope-classifier"
VERSION = 1
JSON_NAME = "classifier.json"
TENSORS_NAME = "classifier.safetensors"


def _sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


class ScopeClassifier:
    """Decides whether a text falls in one forget set's scope, at a conformally calibrated threshold."""

    def __init__(
        self,
        config: ClassifierConfig,
        scorer: LinearScorer,
        entities: Sequence[Entity],
        calibration: dict[str, Any],
        featurizer: Featurizer | None = None,
    ) -> None:
        if scorer.dense is not None and featurizer is None:
            raise ClassifierLoadError("this classifier uses LM features: pass the featurizer it was trained with")
        self.config = config
        self.scorer = scorer
        self.entities = list(entities)
        self.matcher = EntityMatcher(self.entities)
        self._calibration = dict(calibration)
        self._threshold = float(calibration["threshold"])
        self.featurizer = featurizer if scorer.dense is not None else None

    @property
    def threshold(self) -> float:
        """Score at or above which a text is flagged."""
        return self._threshold

    @property
    def uses_featurizer(self) -> bool:
        """Whether scoring calls the external featurizer."""
        return self.scorer.dense is not None

    def calibration(self) -> dict[str, Any]:
        """Calibration record: alpha, threshold, sizes, held-out FPR, validation recall, feature set..."""
        return dict(self._calibration)

    def clear_caches(self) -> None:
        """Forget the per-word memo tables (n-grams, vocabulary indices, entity candidates); for cold benchmarks."""
        char_ngrams_of.cache_clear()
        self.scorer.char.clear_cache()
        self.scorer.entity.matcher.clear_cache()
        self.matcher.clear_cache()

    def _dense_logits(self, texts: list[str]) -> np.ndarray:
        assert self.scorer.dense is not None and self.featurizer is not None
        features = np.asarray(self.featurizer(texts), dtype=np.float64)
        if features.shape != (len(texts), self.scorer.dense.mean.shape[0]):
            raise ValueError(f"featurizer returned shape {features.shape}, expected "
                             f"({len(texts)}, {self.scorer.dense.mean.shape[0]})")
        return self.scorer.dense.logits(features)

    def score_docs(self, docs: Sequence[Doc]) -> list[float]:
        """Scores of already analyzed texts (lets several classifiers share one analysis)."""
        logits = [self.scorer.sparse_logit(d) for d in docs]
        if self.scorer.dense is not None and docs:
            logits = (np.asarray(logits) + self._dense_logits([d.text for d in docs])).tolist()
        return [_sigmoid(x) for x in logits]

    def score(self, text: str) -> float:
        """Probability-like score in [0, 1] that ``text`` is in scope."""
        return self.score_docs([Doc(text)])[0]

    def score_conversation(self, user_contents: list[str]) -> float:
        """Score of a chat judged over all its user turns (each turn alone and all turns together)."""
        return max(self.score_docs(conversation_docs([Doc(c) for c in user_contents])), default=0.0)

    def is_flagged(self, text: str | list[str]) -> bool:
        """Whether a prompt (a string) or a conversation's user contents (a list) is in scope."""
        score = self.score(text) if isinstance(text, str) else self.score_conversation(text)
        return score >= self._threshold

    def salient_doc_spans(self, doc: Doc) -> list[tuple[int, int]]:
        """Salient character spans of an analyzed text."""
        mask = salient_word_mask(self.scorer, self.matcher, doc,
                                 self.config.salient_min_logit, self.config.salient_relative)
        return mask_to_spans(doc.text, doc.spans, mask)

    def salient_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of ``text`` that carry the forget scope (may be empty)."""
        return self.salient_doc_spans(Doc(text))

    def save(self, folder: Path) -> None:
        """Write ``classifier.json`` and ``classifier.safetensors`` into ``folder`` atomically."""
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "calibration": self._calibration,
            "ranges": [self.scorer.ranges.word_max, self.scorer.ranges.char_min, self.scorer.ranges.char_max],
            "word_vocab": self.scorer.word.vocab,
            "char_vocab": self.scorer.char.vocab,
            "entities": _entities_json(self.entities),
            "feature_entities": _entities_json(self.scorer.entity.matcher.entities),
            "dense_dim": None if self.scorer.dense is None else int(self.scorer.dense.mean.shape[0]),
        }

        def fill(staging: Path) -> None:
            write_json(staging / JSON_NAME, manifest)
            write_tensors(staging / TENSORS_NAME, self.scorer.arrays())

        atomic_folder(Path(folder), fill)

    @classmethod
    def load(cls, folder: Path, featurizer: Featurizer | None = None) -> ScopeClassifier:
        """Read a folder written by ``save``; raises ``ClassifierLoadError`` if it is unusable."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
            arrays = load_file(str(folder / TENSORS_NAME))
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise ClassifierLoadError(f"cannot read classifier in {folder}: {exc}") from exc
        try:
            return cls._from_parts(manifest, arrays, featurizer)
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ClassifierLoadError):
                raise
            raise ClassifierLoadError(f"malformed classifier in {folder}: {exc!r}") from exc

    @classmethod
    def _from_parts(
        cls, manifest: dict[str, Any], arrays: dict[str, np.ndarray], featurizer: Featurizer | None
    ) -> ScopeClassifier:
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ClassifierLoadError(f"not a {FORMAT} v{VERSION} folder")

        def block(prefix: str) -> TfidfBlock:
            vocab = [str(g) for g in manifest[f"{prefix}_vocab"]]
            idf, coef = arrays[f"{prefix}_idf"].astype(np.float64), arrays[f"{prefix}_coef"].astype(np.float64)
            if not (len(vocab) == idf.shape[0] == coef.shape[0]) or idf.ndim != 1 or coef.ndim != 1:
                raise ClassifierLoadError(f"{prefix} vocabulary and arrays disagree in size")
            return TfidfBlock(vocab, idf, coef)

        dense = None
        if manifest.get("dense_dim") is not None:
            dim = int(manifest["dense_dim"])
            parts = [arrays[k].astype(np.float64) for k in ("dense_mean", "dense_scale", "dense_coef")]
            if any(p.shape != (dim,) for p in parts):
                raise ClassifierLoadError("dense arrays disagree with dense_dim")
            dense = DenseBlock(*parts)
        entity_coef = arrays["entity_coef"].astype(np.float64)
        if entity_coef.shape != (2,):
            raise ClassifierLoadError("entity_coef must have shape (2,)")
        word_max, char_min, char_max = (int(x) for x in manifest["ranges"])
        scorer = LinearScorer(
            ranges=Ranges(word_max, char_min, char_max),
            word=block("word"),
            char=block("char"),
            intercept=float(arrays["intercept"][0]),
            entity=EntityBlock(EntityMatcher(_entities_from_json(manifest["feature_entities"])), entity_coef),
            dense=dense,
        )
        if not all(np.isfinite(a).all() for a in scorer.arrays().values()):
            raise ClassifierLoadError("non-finite weights")
        entities = _entities_from_json(manifest["entities"])
        calibration = dict(manifest["calibration"])
        float(calibration["threshold"])
        return cls(ClassifierConfig.from_dict(manifest["config"]), scorer, entities, calibration, featurizer)


def conversation_docs(turns: Sequence[Doc]) -> list[Doc]:
    """Docs judged for a conversation: every non-empty user turn, plus all of them joined when there are several."""
    docs = [d for d in turns if d.text.strip()]
    if len(docs) > 1:
        docs.append(Doc("\n".join(d.text for d in docs)))
    return docs


def _entities_json(entities: Sequence[Entity]) -> list[dict[str, Any]]:
    return [{"words": list(e.words), "surface": e.surface} for e in entities]


def _entities_from_json(data: list[dict[str, Any]]) -> list[Entity]:
    out = []
    for e in data:
        words = tuple(str(w) for w in e["words"])
        if not words or not all(words):
            raise ClassifierLoadError("an entity has no words")
        out.append(Entity(words=words, surface=str(e["surface"])))
    return out
