"""Training pipeline: validate, split, augment, fit, select the feature set, calibrate, measure."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.stats import rankdata

from lethe.classifier.calibration import combine, fpr_threshold, recall_threshold
from lethe.classifier.config import ClassifierConfig, ClassifierTrainingError
from lethe.classifier.dataset import TrainingData, TrainingSet, calibration_groups, clean_inputs, prepare, training_set
from lethe.classifier.entities import EntityMatcher
from lethe.classifier.linear import Featurizer, FittedModel, fit_linear
from lethe.classifier.model import ScopeClassifier
from lethe.classifier.text import Doc, Ranges

EXPORT_CHECK_SAMPLES = 64
EXPORT_TOLERANCE = 1e-6


def _run_featurizer(featurizer: Featurizer, texts: list[str]) -> np.ndarray:
    """Call the featurizer and check it returns one finite row per text."""
    if not callable(featurizer):
        raise ClassifierTrainingError("featurizer must be callable: list[str] -> 2-D array")
    try:
        dense = np.asarray(featurizer(texts), dtype=np.float64)
    except Exception as exc:
        raise ClassifierTrainingError(f"featurizer failed: {type(exc).__name__}: {exc}") from exc
    if dense.ndim != 2 or dense.shape[0] != len(texts) or dense.shape[1] < 1 or not np.isfinite(dense).all():
        raise ClassifierTrainingError(
            f"featurizer must return a finite 2-D array with one row per text, got shape {dense.shape}")
    return dense


def _recall_at_fpr(pos: np.ndarray, neg: np.ndarray, fpr: float = 0.01) -> float:
    if len(neg) == 0:
        return float(np.mean(pos >= 0.5))
    cut = np.quantile(neg, 1.0 - fpr, method="higher")
    return float(np.mean(pos > cut))


def _auc(pos: np.ndarray, neg: np.ndarray) -> float:
    if len(neg) == 0 or len(pos) == 0:
        return 1.0
    ranks = rankdata(np.concatenate([pos, neg]))
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


class _Candidate:
    """A fitted model variant and the classifier wrapping its export."""

    def __init__(self, name: str, fitted: FittedModel, classifier: ScopeClassifier) -> None:
        self.name, self.fitted, self.classifier = name, fitted, classifier

    def scores(self, texts: list[str]) -> np.ndarray:
        """Exported-scorer scores of ``texts``."""
        return np.asarray(self.classifier.score_docs([Doc(t) for t in texts]))


def _verify_export(candidate: _Candidate, texts: list[str], featurizer: Featurizer | None) -> float:
    """Max |exported score - sklearn predict_proba| on a sample; raises if above tolerance."""
    sample = texts[:: max(1, len(texts) // EXPORT_CHECK_SAMPLES)][:EXPORT_CHECK_SAMPLES]
    dense = None
    if candidate.fitted.scorer.dense is not None and featurizer is not None:
        dense = np.asarray(featurizer(sample), dtype=np.float64)
    reference = candidate.fitted.sklearn_proba(sample, dense)
    gap = float(np.max(np.abs(candidate.scores(sample) - reference)))
    if gap > EXPORT_TOLERANCE:
        raise RuntimeError(f"exported scorer disagrees with scikit-learn by {gap:.2e}")
    return gap


def _select(candidates: list[_Candidate], val_pos: list[str], val_neg: list[str]) -> tuple[_Candidate, dict]:
    """The candidate with the best validation recall at 1% FPR, then AUC; ties keep the cheaper n-gram model."""
    best, best_key, selection = candidates[0], None, {}
    for cand in candidates:
        pos_scores, neg_scores = cand.scores(val_pos), cand.scores(val_neg)
        key = (_recall_at_fpr(pos_scores, neg_scores), _auc(pos_scores, neg_scores))
        selection[cand.name] = {"recall_at_1pct_fpr": key[0], "auc": key[1]}
        if best_key is None or key[0] > best_key[0] + 1e-9 or (
            key[0] >= best_key[0] - 1e-9 and key[1] > best_key[1] + 1e-3
        ):
            best, best_key = cand, key
    return best, selection


def _rate(scores: np.ndarray, threshold: float) -> float | None:
    return float(np.mean(scores >= threshold)) if len(scores) else None


def _calibrate(best: _Candidate, d: TrainingData, config: ClassifierConfig, val_pos: list[str]) -> dict[str, Any]:
    """Conformal thresholds, then recall and FPR measured on data no fit or threshold has seen."""
    s, k = d.splits, config.variants_per_prompt
    surfaces = [e.surface for e in d.train_entities]
    group_min = [float(best.scores(g).min()) for g in calibration_groups(s.pos_cal, surfaces, k, config.seed)]
    recall_t = recall_threshold(group_min, config.alpha)
    val_neg = s.ret_val + d.pool_val
    fpr_t = fpr_threshold(best.scores(val_neg).tolist(), config.fpr_target) if val_neg else None
    threshold, both_hold = combine(recall_t, fpr_t)
    test_neg = s.ret_test + d.pool_test
    return {
        "alpha": config.alpha,
        "threshold": threshold,
        "calibration_size": recall_t.calibration_size,
        "calibration_unit": f"held-out forget prompt; score = min over it, {k} surface variants "
        "and its surname-only form",
        "recall_threshold": recall_t.threshold,
        "conformal_rank": recall_t.rank,
        "recall_bound": recall_t.bound,
        "guarantee_met": recall_t.guarantee_met,
        "fpr_target": config.fpr_target,
        "fpr_threshold": None if fpr_t is None else fpr_t.threshold,
        "fpr_calibration_size": len(val_neg),
        "fpr_bound": None if fpr_t is None else fpr_t.bound,
        "fpr_guarantee_met": bool(fpr_t is not None and fpr_t.guarantee_met and both_hold),
        "heldout_fpr": _rate(best.scores(test_neg), threshold),
        "heldout_negatives": len(test_neg),
        "heldout_retain_fpr": _rate(best.scores(s.ret_test), threshold),
        "heldout_retain_negatives": len(s.ret_test),
        "validation_recall": _rate(best.scores(val_pos), threshold),
        "validation_size": len(s.pos_val),
        "validation_texts": len(val_pos),
    }


def train_scope_classifier(
    forget_prompts: Any,
    retain_prompts: Any = None,
    config: ClassifierConfig | None = None,
    featurizer: Featurizer | None = None,
    progress: Callable[[float], None] | None = None,
) -> ScopeClassifier:
    """Train on forget prompts against retain prompts and the built-in pool, then calibrate.

    See the package docstring for the protocol.
    """
    config = config or ClassifierConfig()
    report = progress or (lambda _f: None)
    forget, retain = clean_inputs(forget_prompts, retain_prompts)
    if featurizer is not None:
        _run_featurizer(featurizer, forget[:2])
    d = prepare(forget, retain, config, need_val=featurizer is not None)
    report(0.15)

    train = training_set(d, config)
    surfaces = [e.surface for e in d.train_entities]
    val_pos = [t for g in calibration_groups(d.splits.pos_val, surfaces, config.variants_per_prompt, config.seed)
               for t in g]
    ranges = Ranges(config.word_ngram_max, config.char_ngram_min, config.char_ngram_max)
    matcher = EntityMatcher(d.train_entities)
    candidates = [_fit("ngram", train, ranges, config, matcher, None, None)]
    report(0.45)
    if featurizer is not None:
        dense = _run_featurizer(featurizer, train.texts)
        candidates.append(_fit("ngram+featurizer", train, ranges, config, matcher, dense, featurizer))
        report(0.7)
    best, selection = _select(candidates, val_pos, d.splits.ret_val + d.pool_val)
    export_gap = _verify_export(best, train.texts, featurizer)
    report(0.8)

    calibration = _calibrate(best, d, config, val_pos) | {
        "feature_set": best.name,
        "selection": selection,
        "export_max_abs_error": export_gap,
        "train_positives": int(train.labels.sum()),
        "train_negatives": int(len(train.labels) - train.labels.sum()),
        "forget_prompts": len(forget),
        "retain_prompts": len(retain),
        "entities": len(d.all_entities),
    }
    result = ScopeClassifier(config, best.fitted.scorer, d.all_entities, calibration, featurizer)
    report(1.0)
    return result


def _fit(
    name: str,
    train: TrainingSet,
    ranges: Ranges,
    config: ClassifierConfig,
    matcher: EntityMatcher,
    dense: np.ndarray | None,
    featurizer: Featurizer | None,
) -> _Candidate:
    fitted = fit_linear(train.texts, train.labels, ranges, config.C, config.max_iter, matcher, dense,
                        config.featurizer_weight, train.weights)
    placeholder = {"threshold": 0.5}
    return _Candidate(name, fitted, ScopeClassifier(config, fitted.scorer, [], placeholder, featurizer))
