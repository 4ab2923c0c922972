"""The scope classifier of one forget set: its head, entities, calibrated threshold, save and load."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file

from lethe.classifier.config import ClassifierConfig, ClassifierLoadError
from lethe.classifier.entities import Entity, EntityMatcher
from lethe.classifier.features import Analysis, FeatureSpace, FeatureSpec, feature_space
from lethe.classifier.head import LinearHead
from lethe.classifier.salience import mask_to_spans, salient_word_mask
from lethe.classifier.storage import atomic_folder, write_json, write_tensors

FORMAT = "lethe-scope-classifier"
VERSION = 2
JSON_NAME = "classifier.json"
TENSORS_NAME = "classifier.safetensors"
_ARRAYS = ("sparse_index", "sparse_weight", "semantic_weight", "entity_weight", "intercept")


def sigmoid(x: float) -> float:
    """The logistic function, stable for large ``|x|``."""
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    e = math.exp(x)
    return e / (1.0 + e)


def sigmoids(logits: np.ndarray) -> np.ndarray:
    """The logistic function of each logit (``-inf`` gives 0), as ``sigmoid`` computes it one at a time."""
    x = np.asarray(logits, dtype=np.float64)
    e = np.exp(-np.abs(x))
    return np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def conversation_texts(texts: Sequence[str]) -> list[str]:
    """Texts judged for a conversation: every non-empty turn, plus all of them joined when there are several."""
    turns = [t for t in texts if t.strip()]
    return [*turns, "\n".join(turns)] if len(turns) > 1 else turns


class ScopeClassifier:
    """Decides whether a text falls in one forget set's scope, at a conformally calibrated threshold."""

    def __init__(
        self,
        config: ClassifierConfig,
        spec: FeatureSpec,
        head: LinearHead,
        entities: Sequence[Entity],
        calibration: dict[str, Any],
    ) -> None:
        self.config = config
        self.spec = spec
        self.head = head
        self.entities = list(entities)
        self.matcher = EntityMatcher(self.entities)
        self._calibration = dict(calibration)
        self._threshold = float(calibration["threshold"])

    @property
    def space(self) -> FeatureSpace:
        """The shared feature space this classifier reads."""
        return feature_space(self.spec)

    @property
    def threshold(self) -> float:
        """Score at or above which a text is flagged."""
        return self._threshold

    def calibration(self) -> dict[str, Any]:
        """Calibration record: alpha, threshold, sizes, held-out FPR, validation recall..."""
        return dict(self._calibration)

    def clear_caches(self) -> None:
        """Forget the per-word memo tables (normalization, n-gram buckets, entity candidates); for cold benchmarks."""
        from lethe.classifier.text import clear_word_caches

        clear_word_caches()
        self.space.hasher.clear()
        self.matcher.clear_cache()
        self.head.matcher.clear_cache()

    def with_token_mode(self, token_mode: str) -> ScopeClassifier:
        """The same classifier selecting tokens in ``token_mode`` (``all`` or ``salient``)."""
        if self.config.token_mode == token_mode:
            return self
        config = dataclasses.replace(self.config, token_mode=token_mode)  # type: ignore[arg-type]
        return ScopeClassifier(config, self.spec, self.head, self.entities, self._calibration)

    def with_threshold(self, threshold: float) -> ScopeClassifier:
        """The same classifier flagging at ``threshold``."""
        return ScopeClassifier(self.config, self.spec, self.head, self.entities,
                               {**self._calibration, "threshold": threshold})  # fmt: skip

    def analyze(self, text: str) -> Analysis:
        """``text`` analyzed in this classifier's feature space."""
        return self.space.analyze(text)

    def score_analyses(self, analyses: Sequence[Analysis]) -> list[float]:
        """Scores of already analyzed texts."""
        return [sigmoid(self.head.logit(a)) for a in analyses]

    def score(self, text: str) -> float:
        """Probability-like score in [0, 1] that ``text`` is in scope."""
        return self.score_analyses([self.analyze(text)])[0]

    def scores(self, texts: Sequence[str]) -> np.ndarray:
        """Scores of many texts."""
        return np.asarray(self.score_analyses([self.analyze(t) for t in texts]))

    def is_flagged(self, text: str | Sequence[str]) -> bool:
        """Whether a prompt (a string) or a conversation (its turns' texts) is in scope."""
        if isinstance(text, str):
            return self.score(text) >= self._threshold
        return max(self.scores(conversation_texts(list(text))), default=0.0) >= self._threshold

    def salient_analysis_spans(self, analysis: Analysis) -> list[tuple[int, int]]:
        """Salient character spans of an analyzed text."""
        mask = salient_word_mask(self.head, self.matcher, analysis, self.space.hasher,
                                 self.config.salient_min_logit, self.config.salient_relative)  # fmt: skip
        return mask_to_spans(analysis.text, analysis.spans, mask)

    def salient_spans(self, text: str) -> list[tuple[int, int]]:
        """Character spans ``(start, end)`` of ``text`` that carry the forget scope (may be empty)."""
        return self.salient_analysis_spans(self.analyze(text))

    def save(self, folder: Path) -> None:
        """Write ``classifier.json`` and ``classifier.safetensors`` into ``folder`` atomically."""
        manifest = {
            "format": FORMAT,
            "version": VERSION,
            "config": self.config.to_dict(),
            "features": self.spec.to_dict(),
            "calibration": self._calibration,
            "entities": _entities_json(self.entities),
            "feature_entities": _entities_json(self.head.matcher.entities),
        }
        arrays = self.head.arrays()
        arrays["sparse_index"] = arrays["sparse_index"].astype(np.int32)

        def fill(staging: Path) -> None:
            write_json(staging / JSON_NAME, manifest)
            write_tensors(staging / TENSORS_NAME, arrays)

        atomic_folder(Path(folder), fill)

    @classmethod
    def load(cls, folder: Path) -> ScopeClassifier:
        """Read a folder written by ``save``; raises ``ClassifierLoadError`` if it is unusable."""
        folder = Path(folder)
        try:
            manifest = json.loads((folder / JSON_NAME).read_text(encoding="utf-8"))
            arrays = load_file(str(folder / TENSORS_NAME))
        except Exception as exc:  # safetensors raises its own error type for corrupt headers
            raise ClassifierLoadError(f"cannot read classifier in {folder}: {type(exc).__name__}") from exc
        try:
            return cls._from_parts(manifest, arrays)
        except ClassifierLoadError:
            raise
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise ClassifierLoadError(f"malformed classifier in {folder}: {type(exc).__name__}: {exc}") from exc

    @classmethod
    def _from_parts(cls, manifest: Any, arrays: dict[str, np.ndarray]) -> ScopeClassifier:
        if not isinstance(manifest, dict):
            raise ClassifierLoadError("classifier.json must hold a JSON object")
        if manifest.get("format") != FORMAT or manifest.get("version") != VERSION:
            raise ClassifierLoadError(f"not a {FORMAT} v{VERSION} folder (retrain the forget set with this version)")
        if set(arrays) != set(_ARRAYS):
            raise ClassifierLoadError(f"classifier.safetensors holds {sorted(arrays)}, expected {sorted(_ARRAYS)}")
        for name in ("config", "features", "calibration"):
            if not isinstance(manifest.get(name), dict):
                raise ClassifierLoadError(f"classifier.json: {name!r} must be an object")
        spec = FeatureSpec.from_dict(manifest["features"])
        index = arrays["sparse_index"]
        if index.ndim != 1 or index.dtype.kind not in "iu" or (index.size and (index.min() < 0 or
                                                                                index.max() >= spec.sparse_dims)):
            raise ClassifierLoadError("sparse_index must be a 1-D array of buckets inside the feature space")
        weights = [arrays[k].astype(np.float64) for k in _ARRAYS[1:]]
        if not all(np.isfinite(w).all() for w in weights):
            raise ClassifierLoadError("non-finite weights")
        sparse_weight, semantic_weight, entity_weight, intercept = weights
        if sparse_weight.shape != index.shape or intercept.shape != (1,) or entity_weight.shape != (2,):
            raise ClassifierLoadError("classifier arrays disagree in shape")
        if semantic_weight.ndim != 1 or (semantic_weight.size == 0) != (spec.semantic == "none"):
            raise ClassifierLoadError("semantic weights disagree with the feature spec")
        head = LinearHead(
            sparse_index=index,
            sparse_weight=sparse_weight,
            semantic_weight=semantic_weight,
            entity_weight=entity_weight,
            intercept=float(intercept[0]),
            matcher=EntityMatcher(_entities_from_json(manifest["feature_entities"])),
        )
        calibration = dict(manifest["calibration"])
        threshold = float(calibration["threshold"])
        if not 0.0 <= threshold <= 1.0:
            raise ClassifierLoadError("the threshold must lie in [0, 1]")
        entities = _entities_from_json(manifest["entities"])
        return cls(ClassifierConfig.from_dict(manifest["config"]), spec, head, entities, calibration)


def _entities_json(entities: Sequence[Entity]) -> list[dict[str, Any]]:
    return [{"words": list(e.words), "surface": e.surface} for e in entities]


def _entities_from_json(data: Any) -> list[Entity]:
    if not isinstance(data, list):
        raise ClassifierLoadError("entities must be a list")
    out = []
    for e in data:
        if not isinstance(e, dict):
            raise ClassifierLoadError("an entity must be an object")
        words = tuple(str(w) for w in e["words"])
        if not words or not all(words):
            raise ClassifierLoadError("an entity has no words")
        out.append(Entity(words=words, surface=str(e["surface"])))
    return out
