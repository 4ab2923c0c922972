"""Training configuration and the error types of the classifier package."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Literal, TypeVar


class ClassifierTrainingError(ValueError):
    """Training data or configuration cannot produce a calibrated classifier."""


class ClassifierLoadError(ValueError):
    """A saved classifier folder is missing, malformed or inconsistent."""


@dataclass(frozen=True)
class ClassifierConfig:
    """Hyper-parameters of a scope classifier (all have working defaults).

    ``scope``: ``topic`` (the default) learns what the forget prompts are about and holds some of them out
    to calibrate; ``examples`` learns the forget prompts themselves (an example-level forget set, such as
    training examples of a classifier): every forget prompt and light perturbations of it (typos, casing,
    one or two changed words) are positives, the retain prompts (the other examples of the same task) and
    their perturbations are contrastive negatives of equal weight, no entity frames are built, and the
    threshold is calibrated on held-out perturbations of the forget prompts. The semantic vector is topic
    evidence: an example-level forget set does better without it (``semantic_weight=0``; on the review
    splits of ``lethe bench``'s ``spul_examples``, 4 seeds: FPR on unseen reviews 0.6 % against 2.5 %,
    the same recall on perturbed forget reviews).
    """

    alpha: float = 0.01
    fpr_target: float = 0.01
    prefer: Literal["recall", "fpr"] = "recall"
    token_mode: Literal["all", "salient"] = "salient"
    seed: int = 0
    word_ngram_max: int = 2
    char_ngram_min: int = 2
    char_ngram_max: int = 5
    C: float = 10.0
    max_iter: int = 2000
    calibration_fraction: float = 0.3
    validation_fraction: float = 0.15
    min_positives: int = 10
    min_calibration: int = 5
    variants_per_prompt: int = 4
    calibration_variants: int = 4
    frames_per_entity: int = 8
    near_misses_per_prompt: int = 2
    retain_heldout_fraction: float = 0.3
    salient_min_logit: float = 1.0
    salient_relative: float = 0.5
    semantic_weight: float = 2.0
    hard_negative_share: float = 0.5
    scope: Literal["topic", "examples"] = "topic"

    def __post_init__(self) -> None:
        checks = {
            "scope must be 'topic' or 'examples'": self.scope in ("topic", "examples"),
            "alpha must be in (0, 1)": 0.0 < self.alpha < 1.0,
            "fpr_target must be in (0, 1)": 0.0 < self.fpr_target < 1.0,
            "token_mode must be 'all' or 'salient'": self.token_mode in ("all", "salient"),
            "prefer must be 'recall' or 'fpr'": self.prefer in ("recall", "fpr"),
            "word_ngram_max must be >= 1": self.word_ngram_max >= 1,
            "char n-gram range must satisfy 1 <= min <= max": 1 <= self.char_ngram_min <= self.char_ngram_max,
            "C must be > 0": self.C > 0,
            "calibration_fraction must be in (0, 1)": 0.0 < self.calibration_fraction < 1.0,
            "validation_fraction must be in [0, 1)": 0.0 <= self.validation_fraction < 1.0,
            "calibration_fraction + validation_fraction must be < 0.9":
                self.calibration_fraction + self.validation_fraction < 0.9,
            "min_calibration must be >= 1": self.min_calibration >= 1,
            "min_positives must be >= 3": self.min_positives >= 3,
            "variants_per_prompt, calibration_variants, frames_per_entity and near_misses_per_prompt must be >= 0":
                min(self.variants_per_prompt, self.calibration_variants, self.frames_per_entity,
                    self.near_misses_per_prompt) >= 0,
            "retain_heldout_fraction must be in [0, 1)": 0.0 <= self.retain_heldout_fraction < 1.0,
            "semantic_weight must be >= 0": self.semantic_weight >= 0,
            "hard_negative_share must be in [0, 1]": 0.0 <= self.hard_negative_share <= 1.0,
        }
        failed = [msg for msg, ok in checks.items() if not ok]
        if failed:
            raise ClassifierTrainingError("invalid ClassifierConfig: " + "; ".join(failed))

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dict."""
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ClassifierConfig:
        """Inverse of ``to_dict``; unknown keys are ignored so older artifacts stay loadable."""
        return known_fields(cls, data)


T = TypeVar("T")


def known_fields(cls: type[T], data: dict[str, Any]) -> T:
    """An instance of the dataclass ``cls`` from ``data``, keys it does not know left out."""
    names = {f.name for f in fields(cls)}  # type: ignore[arg-type]
    return cls(**{k: v for k, v in data.items() if k in names})


@dataclass(frozen=True)
class ScopeHints:
    """What a topic forget set adds to its forget prompts (all optional).

    ``positives``: more in-scope texts (coverage prompts, what the model revealed); split and held out
    like the forget prompts, so they also calibrate. ``entities``: names that belong to the scope (an
    operator's list, names in translations). ``negatives``: out-of-scope texts close to the scope
    (adjacent topics); ``negative_entities``: their names, framed like the scope's entities.
    """

    positives: Sequence[str] = field(default=())
    entities: Sequence[str] = field(default=())
    negatives: Sequence[str] = field(default=())
    negative_entities: Sequence[str] = field(default=())
