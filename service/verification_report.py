"""A forget set's verification report: what was asked, who did what when, and what held-out data showed.

The report is assembled from the registry (states and times), the artifact's manifest (base model,
method, the request's summary and the training job's own verification figures), the report store
(which admin key did what, and the figures of the latest re-run), then signed
(``service.report_signing``). Its JSON schema is ``VerificationReport`` (documented in
``docs/verification-report.md``); ``service.report_html`` renders it as a self-contained page.

The forgotten text never appears: the request is a SHA-256 and counts. A topic's name is included only
when the operator asked for it on a re-run (``include_request``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field

from lethe.runtime.artifact import ForgetSetManifest, utc_now
from lethe.service.registry import ForgetSetRecord, JobRecord
from lethe.training.verification import (
    EvaluationSet,
    FluencyFigures,
    LatencyFigures,
    LeakFigures,
    PrivacyFigures,
    RequestSummary,
    ScopeFigures,
    UtilityFigures,
    VerificationFigures,
    merge_figures,
)

REPORT_FORMAT = "lethe.verification-report/1"


class ReportRun(BaseModel):
    """``POST /admin/forget-sets/{id}/report``: measure again, optionally on the operator's held-out set."""

    model_config = {"extra": "forbid"}

    evaluation: EvaluationSet | None = None
    include_request: bool = Field(default=False, description="name the topic in the report (never rows: not stored)")
    seed: int = Field(default=0, description="seed of the fresh re-reveal (offset from the build's seeds)")
    reveal_budget: int = Field(default=48, ge=4, le=512, description="questions of the re-reveal")


class RequestPart(BaseModel):
    """What was requested: a summary without text, where it came from, and the topic if the operator asked."""

    summary: RequestSummary | None = None
    source: str = Field(description="where the summary comes from")
    topic: str | None = Field(default=None, description="only when the operator asked for it")


class KeyEvent(BaseModel):
    """An admin action on the forget set and the key id that made it."""

    event: str
    at: str
    by_key: str


class Lifecycle(BaseModel):
    """When the forget set was registered, trained and enabled, and by which admin key."""

    source: str = Field(description="how it entered the registry: api, startup, cli or import")
    state: str
    registered: str
    registered_by: str | None = None
    job_id: str | None = None
    training_started: str | None = None
    trained: str | None = None
    enabled: bool
    enabled_at: str | None = None
    enabled_by: str | None = None
    live: bool
    events: list[KeyEvent] = Field(default_factory=list)


class Measurement(BaseModel):
    """Which run measured the figures below."""

    at: str
    by: Literal["training job", "re-run"]
    seconds: float
    sources: list[str]
    request_seed: int


class VerificationReport(BaseModel):
    """The report (``GET /admin/forget-sets/{id}/report``)."""

    format: Literal["lethe.verification-report/1"] = REPORT_FORMAT
    created: str
    forget_set_id: str
    name: str
    method: str
    model_fingerprint: str
    model_name: str
    parameters: dict[str, Any]
    request: RequestPart
    lifecycle: Lifecycle
    measured: Measurement | None = Field(description="null: not measured yet (POST .../report measures it)")
    scope: ScopeFigures
    leak_rate: float | None
    utility_delta: float | None
    leak: LeakFigures
    privacy: PrivacyFigures
    utility: UtilityFigures
    fluency: FluencyFigures
    latency: LatencyFigures
    earlier: dict[str, Any] | None = Field(
        default=None, description="the training job's own headline figures, when a re-run replaced them"
    )
    training_figures: dict[str, Any] = Field(
        default_factory=dict, description="the trainer's figures on its own training rows (not held out)"
    )
    notes: list[str] = Field(default_factory=list)
    signature: dict[str, str] | None = None


def _headline(figures: VerificationFigures) -> dict[str, Any]:
    return {
        "measured": figures.measured,
        "recall_heldout": figures.scope.recall_heldout,
        "fpr_heldout": figures.scope.fpr_heldout,
        "leak_rate": figures.leak.rate,
        "utility_delta": figures.utility.delta,
        "sources": figures.sources,
    }


def _lifecycle(record: ForgetSetRecord, job: JobRecord | None, events: list[dict[str, Any]], live: bool) -> Lifecycle:
    history = [KeyEvent.model_validate(e) for e in events]
    registered = next((e for e in history if e.event == "registered"), None)
    toggles = [e for e in history if e.event in ("enabled", "disabled")]
    enabled_at = enabled_by = None
    if record.enabled:
        last = toggles[-1] if toggles and toggles[-1].event == "enabled" else None
        if last is not None:
            enabled_at, enabled_by = last.at, last.by_key
        elif job is not None and job.finished:
            enabled_at, enabled_by = job.finished, "enabled when its training job published it"
        else:
            enabled_at, enabled_by = record.created, f"enabled when imported ({record.source})"
    return Lifecycle(
        source=record.source,
        state=record.state,
        registered=record.created,
        registered_by=registered.by_key if registered is not None else None,
        job_id=job.id if job is not None else None,
        training_started=job.started if job is not None else None,
        trained=job.finished if job is not None and job.state == "succeeded" else None,
        enabled=record.enabled,
        enabled_at=enabled_at,
        enabled_by=enabled_by,
        live=live,
        events=history,
    )


def _request(manifest: ForgetSetManifest, include_topic: bool) -> RequestPart:
    stored = manifest.metrics.get("request")
    topic = manifest.metrics.get("topic") if isinstance(manifest.metrics.get("topic"), dict) else None
    name = str(topic["topic"]) if include_topic and topic is not None and topic.get("topic") else None
    if isinstance(stored, dict):
        return RequestPart(summary=RequestSummary.model_validate(stored), source="the training job", topic=name)
    if topic is not None:
        summary = RequestSummary(
            kind="topic",
            sha256=None,
            forget_rows=int(topic.get("forget_rows", 0)),
            retain_rows=int(topic.get("retain_rows", 0)),
            seed_prompts=int(topic.get("seed_prompts", 0)),
        )
        return RequestPart(summary=summary, source="the artifact's topic build record (no request hash)", topic=name)
    return RequestPart(summary=RequestSummary(kind="import", sha256=None), source="imported: the request is unknown")


def _training_figures(manifest: ForgetSetManifest) -> dict[str, Any]:
    metrics = manifest.metrics
    keep = ("flag_rate", "change", "wall_time_s", "forward_passes")
    return {key: metrics[key] for key in keep if key in metrics}


def _parameters(manifest: ForgetSetManifest) -> dict[str, Any]:
    parameters = manifest.parameters.model_dump(mode="json", exclude={"surrogates", "mentions", "extra"})
    parameters["surrogates"] = len(manifest.parameters.surrogates)
    parameters["mentions"] = len(manifest.parameters.mentions)
    return parameters


def build_report(
    record: ForgetSetRecord,
    job: JobRecord | None,
    manifest: ForgetSetManifest,
    events: list[dict[str, Any]],
    rerun: dict[str, Any] | None,
    live: bool,
) -> VerificationReport:
    """The unsigned report of a forget set. ``rerun``: the stored re-run (``figures``, ``include_request``), used
    when it measured this artifact version."""
    job_figures = manifest.metrics.get("verification")
    measured_by: Literal["training job", "re-run"] = "training job"
    figures = VerificationFigures.model_validate(job_figures) if isinstance(job_figures, dict) else None
    earlier = None
    include_topic = False
    if rerun is not None and rerun.get("version") == record.version:
        if figures is not None:
            earlier = _headline(figures)
        later = VerificationFigures.model_validate(rerun["figures"])
        figures, measured_by = (merge_figures(figures, later) if figures is not None else later), "re-run"
        include_topic = bool(rerun.get("include_request"))
    notes = []
    if figures is None:
        reason = manifest.metrics.get("verification_error")
        notes.append(
            f"Not measured yet{f' (the job could not: {reason})' if reason else ''}: "
            "POST /admin/forget-sets/{id}/report measures it, optionally on an operator's held-out set."
        )
    if figures is not None and figures.carried:
        notes.append(
            f"Carried over from the training job's run ({earlier['measured'] if earlier else 'earlier'}), which had "
            f"held-out data this re-run did not: {', '.join(figures.carried)}."
        )
    if figures is not None and figures.scope.recall_heldout is None:
        notes.append(
            "No held-out in-scope prompts: scope recall needs an operator's evaluation set or rows with "
            "paraphrased prompts."
        )
    empty = VerificationFigures(
        measured="",
        seconds=0.0,
        scope=ScopeFigures(recall_heldout=None, fpr_heldout=None),
        leak=LeakFigures(),
        privacy=PrivacyFigures(),
        utility=UtilityFigures(),
        fluency=FluencyFigures(),
        latency=LatencyFigures(),
    )
    shown = figures or empty
    return VerificationReport(
        created=utc_now(),
        forget_set_id=record.id,
        name=record.name,
        method=manifest.method,
        model_fingerprint=manifest.base_model.fingerprint,
        model_name=manifest.base_model.name,
        parameters=_parameters(manifest),
        request=_request(manifest, include_topic),
        lifecycle=_lifecycle(record, job, events, live),
        measured=Measurement(
            at=shown.measured,
            by=measured_by,
            seconds=shown.seconds,
            sources=shown.sources,
            request_seed=shown.request_seed,
        )
        if figures is not None
        else None,
        scope=shown.scope,
        leak_rate=shown.leak.rate,
        utility_delta=shown.utility.delta,
        leak=shown.leak,
        privacy=shown.privacy,
        utility=shown.utility,
        fluency=shown.fluency,
        latency=shown.latency,
        earlier=earlier,
        training_figures=_training_figures(manifest),
        notes=notes,
    )
