"""Training pipeline: validate, split, augment, fit, calibrate, measure."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Any

import numpy as np

from lethe.classifier.calibration import combine, fpr_threshold, recall_threshold
from lethe.classifier.config import ClassifierConfig, ScopeHints
from lethe.classifier.dataset import (
    TrainingData,
    calibration_groups,
    clean_inputs,
    clean_prompts,
    prepare,
    replacement_words,
    training_set,
)
from lethe.classifier.entities import EntityMatcher
from lethe.classifier.features import Analysis, FeatureSpace, FeatureSpec, feature_space
from lethe.classifier.linear import FittedHead, fit_head
from lethe.classifier.model import ScopeClassifier

EXPORT_CHECK_SAMPLES = 64
# Logit gap allowed between the exported head and scikit-learn: weights under PRUNE_BELOW are dropped
# and the rest stored as float32.
EXPORT_TOLERANCE = 5e-2


def _verify_export(fitted: FittedHead, space: FeatureSpace, analyses: list[Analysis]) -> float:
    """Max |exported logit - scikit-learn logit| on a sample; raises if above tolerance."""
    sample = analyses[:: max(1, len(analyses) // EXPORT_CHECK_SAMPLES)][:EXPORT_CHECK_SAMPLES]
    reference = fitted.sklearn_logits(space, sample)
    gap = float(np.max(np.abs(np.array([fitted.head.logit(a) for a in sample]) - reference)))
    if gap > EXPORT_TOLERANCE:
        raise RuntimeError(f"exported scorer disagrees with scikit-learn by {gap:.2e}")
    return gap


def _rate(scores: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(scores >= threshold)) if len(scores) else None


def _calibrate(model: ScopeClassifier, d: TrainingData, config: ClassifierConfig) -> dict[str, Any]:
    """Conformal thresholds, then recall and FPR measured on data no fit or threshold has seen."""
    s, k = d.splits, config.calibration_variants
    surfaces = [e.surface for e in d.train_entities]
    # The examples scope calibrates and validates on perturbations no fit has seen (other seeds, other words).
    examples = config.scope == "examples"
    vocabulary = replacement_words(d.pool_val) if examples else []
    val_seed, val_vocabulary = (config.seed + 1, replacement_words(d.pool_test)) if examples else (config.seed, [])
    groups = calibration_groups(s.pos_cal, surfaces, k, config.seed, vocabulary)
    recall_t = recall_threshold([float(model.scores(g).min()) for g in groups], config.alpha)
    val_neg = s.ret_val + d.hard_val + d.pool_val
    fpr_t = fpr_threshold(model.scores(val_neg).tolist(), config.fpr_target) if val_neg else None
    threshold, both_hold = combine(recall_t, fpr_t, config.prefer)
    test_neg = s.ret_test + d.hard_test + d.pool_test
    val_groups = calibration_groups(s.pos_val, surfaces, k, val_seed, val_vocabulary)
    val_pos = [t for g in val_groups for t in g]
    return {
        "alpha": config.alpha,
        "threshold": threshold,
        "calibration_size": recall_t.calibration_size,
        "calibration_unit": f"forget example; score = min over it, {k} held-out surface variants and {k} "
        "with changed words" if examples else f"held-out forget prompt; score = min over it, {k} surface variants "
        "and its surname-only form",
        "recall_threshold": recall_t.threshold,
        "conformal_rank": recall_t.rank,
        "recall_bound": recall_t.bound,
        "guarantee_met": recall_t.guarantee_met,
        "fpr_target": config.fpr_target,
        "prefer": config.prefer,
        "fpr_threshold": None if fpr_t is None else fpr_t.threshold,
        "fpr_calibration_size": len(val_neg),
        "fpr_bound": None if fpr_t is None else fpr_t.bound,
        "fpr_guarantee_met": bool(fpr_t is not None and fpr_t.guarantee_met and both_hold),
        "heldout_fpr": _rate(model.scores(test_neg), threshold),
        "heldout_negatives": len(test_neg),
        "heldout_retain_fpr": _rate(model.scores(s.ret_test), threshold),
        "heldout_retain_negatives": len(s.ret_test),
        "heldout_hard_fpr": _rate(model.scores(d.hard_test), threshold),
        "heldout_hard_negatives": len(d.hard_test),
        "validation_recall": _rate(model.scores(val_pos), threshold),
        "validation_size": len(s.pos_val),
        "validation_texts": len(val_pos),
    }


def train_scope_classifier(
    forget_prompts: Any,
    retain_prompts: Any = None,
    config: ClassifierConfig | None = None,
    progress: Callable[[float], None] | None = None,
    *,
    hints: ScopeHints | None = None,
    spec: FeatureSpec | None = None,
) -> ScopeClassifier:
    """Train on forget prompts against retain prompts and the built-in pool, then calibrate.

    ``hints`` add a topic's coverage (more positives, named entities, adjacent topics as negatives);
    see ``ScopeHints`` and the package docstring for the protocol.
    """
    config = config or ClassifierConfig()
    hints = hints or ScopeHints()
    report = progress or (lambda _f: None)
    forget, retain = clean_inputs(forget_prompts, retain_prompts)
    extra = clean_prompts(list(hints.positives), "hints.positives", required=False)
    hard = clean_prompts(list(hints.negatives), "hints.negatives", required=False)
    known = set(forget)
    hints = replace(hints, negatives=hard)
    d = prepare(forget + [p for p in extra if p not in known], retain, config, hints)
    report(0.15)
    space = feature_space(spec or FeatureSpec())
    train = training_set(d, config)
    analyses = [space.analyze(t) for t in train.texts]
    report(0.35)
    fitted = fit_head(space, analyses, train.labels, train.weights, EntityMatcher(d.train_entities),
                      config.C, config.max_iter, config.semantic_weight)  # fmt: skip
    export_gap = _verify_export(fitted, space, analyses)
    report(0.8)
    draft = ScopeClassifier(config, space.spec, fitted.head, d.all_entities, {"threshold": 0.5})
    calibration = _calibrate(draft, d, config) | {
        "export_max_abs_logit_error": export_gap,
        "train_positives": int(train.labels.sum()),
        "train_negatives": int(len(train.labels) - train.labels.sum()),
        "forget_prompts": len(forget),
        "extra_positives": len(extra),
        "hard_negatives": len(hard),
        "retain_prompts": len(retain),
        "entities": len(d.all_entities),
        "sparse_weights": int(fitted.head.sparse_index.size),
        "bytes": fitted.head.nbytes,
    }
    result = ScopeClassifier(config, space.spec, fitted.head, d.all_entities, calibration)
    report(1.0)
    return result
