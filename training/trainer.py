"""``train_forget_set``: scope classifier, the method's stages, before/after figures, one artifact.

The method (``training.methods``) is a list of stages run in order (ECO, SPUL, or ECO then SPUL),
each adding its parts to the artifact. The base model's weights never change. Candidates are
evaluated through ``runtime.plans.plan_for_flag`` (see ``training.candidates``), and the
after-figures through ``ForgetSetScreen``: the classifier decides, per prompt, whether the
learned interventions apply, exactly as in the gateway.

Noise seeds while training are derived from a fixed training id (``lethe-train-<seed>``), so the
learned tensors do not depend on the artifact's id; the after-figures use the real id, whose
noise the optimizer never saw.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from lethe.runtime.artifact import (
    BaseModelInfo,
    ForgetSetArtifact,
    ForgetSetManifest,
    ForgetSetParameters,
    new_forget_set_id,
    utc_now,
    validate_id,
)
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.candidates import ArtifactParts, CandidateFactory
from lethe.training.config import TrainConfig
from lethe.training.data import ForgetRow, TrainingDataError, TrainingError, parse_rows
from lethe.training.mention_targets import named_entities
from lethe.training.methods import StageInputs, get_method, method_holding
from lethe.training.metrics import EvalTarget, RowScores, render_question, score_rows, split_summary, through_screen
from lethe.training.progress import ProgressTracker, TrainingCancelled
from lethe.training.samples import prepare_samples
from lethe.training.scope import with_token_mode
from lethe.training.topic import TOPIC_CLASSIFIER_DEFAULTS, TopicRequest, train_topic_forget_set

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier, ScopeHints

__all__ = ["TrainConfig", "TrainingCancelled", "TrainingError", "train_forget_set", "train_topic"]


def _as_rows(rows: Sequence[ForgetRow | Mapping[str, Any]] | None, source: str, required: bool) -> list[ForgetRow]:
    if rows is None and required:
        raise TrainingDataError(f"{source} rows are required")
    if rows is not None and (isinstance(rows, str | bytes) or not isinstance(rows, Sequence)):
        raise TrainingDataError(f"{source} must be a list of rows, got {type(rows).__name__}")
    items = [r.model_dump() if isinstance(r, ForgetRow) else r for r in rows or ()]
    return parse_rows(items, source, required=required)


def check_model(model: Any, row: ForgetRow) -> None:
    """Refuse a model the trainer cannot use (it must embed prompts and score completions)."""
    missing = [name for name in ("score", "prompt_embeddings", "embed", "embedder") if not hasattr(model, name)]
    if missing or not isinstance(model, LanguageModel):
        raise TrainingError(
            f"training needs a local language model that can embed prompts and score answers; got a "
            f"{type(model).__name__} (lacking {', '.join(missing) or 'scoring through LanguageModel'})"
        )
    try:
        prompt, _ = render_question(model, row.prompt)
        embeds = model.prompt_embeddings(prompt)
    except Exception as exc:
        raise TrainingError(f"the model cannot embed prompts: {type(exc).__name__}: {exc}") from None
    if embeds.dim() != 2 or embeds.shape != (len(prompt.ids), model.hidden_size) or not embeds.is_floating_point():
        raise TrainingError(f"the model cannot embed prompts: got embeddings of shape {tuple(embeds.shape)}")
    if not bool(torch.isfinite(embeds).all()):
        raise TrainingError("the model cannot embed prompts: its input embeddings are not finite")


def train_forget_set(
    model: LanguageModel,
    name: str,
    forget: list[ForgetRow],
    retain: list[ForgetRow] | None,
    config: TrainConfig,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    forget_set_id: str | None = None,
    classifier: ScopeClassifier | None = None,
    hints: ScopeHints | None = None,
) -> ForgetSetArtifact:
    """Train a forget set's classifier and interventions; returns the artifact (not yet saved).

    ``classifier``: reuse an already trained scope classifier (e.g. to retrain the interventions
    of an existing forget set with another method) instead of training one. ``hints``: what the
    classifier learns besides the forget prompts (a topic's coverage, see ``ScopeHints``).
    Raises ``TrainingDataError`` / ``TrainingError`` on bad input before any work and
    ``TrainingCancelled`` when ``cancel`` is set; progress goes monotonically from 0 to 1.
    """
    started = time.perf_counter()
    forget_rows = _as_rows(forget, "forget", required=True)
    retain_rows = _as_rows(retain, "retain", required=False)
    if not isinstance(config, TrainConfig):
        raise TrainingError(f"config must be a TrainConfig, got {type(config).__name__}")
    if not name or not name.strip():
        raise TrainingError("the forget set needs a name")
    check_model(model, forget_rows[0])
    artifact_id = validate_id(forget_set_id) if forget_set_id is not None else new_forget_set_id()
    passes_before = model.forward_passes
    method = get_method(config.method)
    stages = [("classifier", 1.0), ("samples", 0.3), ("before", 0.5 if config.evaluate else 0.0)]
    stages += [(stage.name, stage.progress_weight) for stage in method.stages]
    stages += [("after", 0.5 if config.evaluate else 0.0)]
    tracker = ProgressTracker(stages, progress, cancel)
    tracker.update("classifier", 0.0, "classifier")

    if classifier is None:
        classifier = _train_classifier(forget_rows, retain_rows, config, tracker, hints)
    template = ForgetSetManifest(
        id=f"lethe-train-{abs(config.seed)}",
        name=name.strip(),
        created=utc_now(),
        base_model=BaseModelInfo(name=model.name, fingerprint=model.fingerprint),
        method=config.method,
        parameters=ForgetSetParameters(),
    )
    factory = CandidateFactory(template, classifier, method_holding)
    first, first_config = method.stages[0], config.section(method.stages[0])
    modes = first.token_modes(first_config, classifier.config.token_mode)
    with torch.no_grad():
        batch_size = first.sample_batch_size(first_config)
        samples = prepare_samples(model, forget_rows, classifier, modes, config.wrong_answers, config.seed, batch_size)
    tracker.update("samples", 1.0, "samples")

    metrics: dict[str, Any] = {"seed": config.seed, "config": config.model_dump(mode="json")}
    if config.evaluate:
        with torch.no_grad():
            metrics["before"] = _figures(EvalTarget(model), forget_rows, retain_rows)
        tracker.update("before", 1.0, "before")

    parts = ArtifactParts(ForgetSetParameters(token_mode=classifier.config.token_mode))
    known = [*named_entities([r.prompt for r in retain_rows], [r.prompt for r in forget_rows]),
             *(hints.negative_entities if hints is not None else ())]  # fmt: skip
    inputs = StageInputs(model, factory, samples, forget_rows, retain_rows, config.seed, known)
    for stage in method.stages:
        metrics[stage.name] = stage.train(inputs, config.section(stage), parts, tracker.stage(stage.name))
        if not parts.holds(stage.adds[0]):
            raise TrainingError(f"the {stage.name} stage added no {stage.adds[0]}")
    tracker.check()

    update = {"id": artifact_id, "method": config.method, "parameters": parts.parameters}
    manifest = template.model_copy(update=update)
    scope = with_token_mode(classifier, parts.parameters.token_mode)
    final = ForgetSetArtifact(manifest, scope, parts.soft_prompt, parts.centroids, parts.strengths)
    metrics["classifier"] = classifier.calibration()
    if config.evaluate:
        with torch.no_grad():
            target = through_screen(model, ForgetSetScreen([final]), config.eval_request_seed)
            metrics["after"] = _figures(target, forget_rows, retain_rows)
            metrics["flag_rate"] = _flag_rates(final, forget_rows, retain_rows)
            metrics["change"] = _changes(metrics["before"], metrics["after"])
        tracker.update("after", 1.0, "after")
    metrics["wall_time_s"] = round(time.perf_counter() - started, 3)
    metrics["forward_passes"] = model.forward_passes - passes_before
    final.manifest.metrics = metrics
    tracker.finish()
    return final


def topic_config(config: TrainConfig) -> TrainConfig:
    """``config`` with a topic's defaults where it leaves them unset: ``TOPIC_CLASSIFIER_DEFAULTS`` and ECO's
    ``value_words="names"`` (a topic's answers are the model's own text)."""
    update: dict[str, Any] = {"classifier": {**TOPIC_CLASSIFIER_DEFAULTS, **config.classifier}}
    if "value_words" not in config.eco.model_fields_set:
        update["eco"] = config.eco.model_copy(update={"value_words": "names"})
    return config.model_copy(update=update)


def train_topic(
    model: LanguageModel,
    name: str,
    topic: str,
    seed_prompts: Sequence[str],
    config: TrainConfig,
    progress: Callable[[float, str], None] | None = None,
    cancel: threading.Event | None = None,
    *,
    forget_set_id: str | None = None,
    entities: Sequence[str] = (),
    keep_topics: Sequence[str] = (),
    record: dict[str, list[str]] | None = None,
) -> ForgetSetArtifact:
    """A forget set from a topic: reveal what the model knows, then train as ``train_forget_set`` does.

    ``entities`` (names that belong to the topic) and ``keep_topics`` (adjacent topics that must stay
    answerable) are optional; the run starts from a topic's defaults (``topic_config``).
    ``record`` collects the prompts the build trained on (see ``train_topic_forget_set``).
    """
    check_model(model, ForgetRow(prompt=topic or "?", completion="?"))
    config = topic_config(config)

    def train(
        forget: list[ForgetRow], retain: list[ForgetRow], hints: ScopeHints, report: Callable[[float, str], None]
    ) -> ForgetSetArtifact:
        return train_forget_set(
            model, name, forget, retain, config, report, cancel, forget_set_id=forget_set_id, hints=hints
        )

    def clean(items: Sequence[str]) -> list[str]:
        return [p.strip() for p in items if p and p.strip()]

    request = TopicRequest(topic, clean(seed_prompts), clean(entities), clean(keep_topics))
    return train_topic_forget_set(model, name, request, train, config.topic, config.seed, progress, cancel, record)


def _train_classifier(
    forget: list[ForgetRow],
    retain: list[ForgetRow],
    config: TrainConfig,
    tracker: ProgressTracker,
    hints: ScopeHints | None,
) -> ScopeClassifier:
    from lethe.classifier import ClassifierTrainingError, train_scope_classifier

    try:
        return train_scope_classifier(
            [r.prompt for r in forget],
            [r.prompt for r in retain] or None,
            config.classifier_config(),
            progress=lambda fraction: tracker.update("classifier", fraction, "classifier"),
            hints=hints,
        )
    except ClassifierTrainingError as exc:
        raise TrainingDataError(f"cannot train the scope classifier: {exc}") from None


def _figures(target: EvalTarget, forget: list[ForgetRow], retain: list[ForgetRow]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for split, rows in (("forget", forget), ("retain", retain)):
        if rows:
            scores = score_rows(target, rows)
            out[split] = split_summary(scores, forget=split == "forget")
            out[split]["truth_ratios"] = _ratios(scores)
    return out


def _ratios(scores: Sequence[RowScores]) -> list[float | None]:
    return [None if (tr := s.truth_ratio) is None else round(tr, 6) for s in scores]


def _flag_rates(artifact: ForgetSetArtifact, forget: list[ForgetRow], retain: list[ForgetRow]) -> dict[str, float]:
    screen = ForgetSetScreen([artifact])
    out = {}
    for split, rows in (("forget", forget), ("retain", retain)):
        if rows:
            flags = [bool(screen.classify([{"role": "user", "content": r.prompt}])) for r in rows]
            out[split] = float(np.mean(flags))
    return out


def _changes(before: dict[str, Any], after: dict[str, Any]) -> dict[str, float]:
    out = {}
    for split in ("forget", "retain"):
        if split in before and split in after:
            b, a = before[split]["answer_probability"], after[split]["answer_probability"]
            out[f"{split}_answer_probability_relative"] = (a - b) / b if b else float("nan")
    return out
