"""Verification-report routes (admin key): the report as signed JSON or as a page, and a re-run.

- ``GET /admin/forget-sets/{id}/report``: the signed JSON report (``service.verification_report``);
- ``GET /admin/forget-sets/{id}/report.html``: the same as a self-contained, signed page;
- ``POST /admin/forget-sets/{id}/report``: measure again (needs a local model), optionally on the
  operator's held-out evaluation set (``{"evaluation": {...}, "include_request": false}``), then the report.

``note_action`` is what the other admin routes call to record which admin key registered or toggled a
forget set.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response
from starlette.concurrency import run_in_threadpool

from lethe.runtime.artifact import ArtifactError, ForgetSetArtifact, ForgetSetManifest
from lethe.service.auth import bearer_token
from lethe.service.errors import CONFLICT, APIError, bad_request
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.report_html import render_html
from lethe.service.report_signing import ReportSigner
from lethe.service.report_store import ReportStore
from lethe.service.request_rules import parse_body
from lethe.service.verification_report import ReportRun, build_report

logger = logging.getLogger("lethe.reports")
router = APIRouter(prefix="/admin")
# The page is a document of its own: no script runs in it, nothing loads from elsewhere.
REPORT_PAGE_POLICY = "default-src 'none'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'self'"


@dataclass
class Reports:
    """The report key and files of one gateway."""

    signer: ReportSigner
    store: ReportStore
    running: threading.Lock = field(default_factory=threading.Lock)


def reports_of(request: Request) -> Reports:
    """The gateway's report signer and store (made at first use: the key file is written then)."""
    state = request.app.state
    found = getattr(state, "reports", None)
    if found is None:
        gateway = gateway_of(request)
        root = gateway.forget_sets.registry.root
        found = Reports(ReportSigner.for_registry(root, gateway.settings.report_key), ReportStore(root))
        state.reports = found
    return found


def key_id(request: Request) -> str:
    """The id under which reports name the admin key this request carries."""
    gateway = gateway_of(request)
    return reports_of(request).signer.admin_key_id(None if gateway.keys.open_mode else bearer_token(request))


def note_action(request: Request, forget_set_id: str, event: str) -> None:
    """Record that this request's admin key did ``event`` (registered, enabled, disabled) to a forget set; a
    failure to write is logged, never the caller's failure."""
    try:
        reports_of(request).store.note(forget_set_id, event, key_id(request))
    except Exception as exc:  # the report's bookkeeping never fails the admin action it records
        logger.warning(
            "could not record %s of forget set %s for its report: %s", event, forget_set_id, type(exc).__name__
        )


def _admin(request: Request) -> Gateway:
    gateway = gateway_of(request)
    gateway.keys.check_admin(request)
    return gateway


def _ready_record(gateway: Gateway, forget_set_id: str) -> Any:
    record = gateway.forget_sets.get(forget_set_id)
    if record.state != "ready":
        raise APIError(
            409, f"Forget set '{forget_set_id}' is {record.state}; reports are for ready forget sets.", CONFLICT,
            "id", "not_ready",
        )  # fmt: skip
    return record


def assemble(gateway: Gateway, reports: Reports, forget_set_id: str) -> dict[str, Any]:
    """The signed report of a ready forget set, as it stands now (a JSON object: exactly the bytes signed)."""
    record = _ready_record(gateway, forget_set_id)
    registry = gateway.forget_sets.registry
    job = registry.get_job(record.job_id) if record.job_id else None
    folder = registry.artifact_dir(record.id, record.version)
    try:
        manifest = ForgetSetManifest.model_validate_json((folder / "manifest.json").read_bytes())
    except (OSError, ValueError) as exc:
        raise APIError(409, f"Forget set '{forget_set_id}' has no readable manifest.", CONFLICT, "id",
                       "unloadable") from exc  # fmt: skip
    report = build_report(
        record, job, manifest, reports.store.events(record.id), reports.store.load_figures(record.id),
        record.id in gateway.screen.active,
    )  # fmt: skip
    return reports.signer.sign_json(report.model_dump(mode="json"))


@router.get("/forget-sets/{forget_set_id}/report", response_model=None)
async def get_report(forget_set_id: str, request: Request) -> JSONResponse:
    """The forget set's signed verification report (JSON)."""
    gateway = _admin(request)
    reports = reports_of(request)
    body = await run_in_threadpool(assemble, gateway, reports, forget_set_id)
    await run_in_threadpool(reports.store.save_report, forget_set_id, body)
    return JSONResponse(body)


@router.get("/forget-sets/{forget_set_id}/report.html", response_model=None)
async def get_report_page(forget_set_id: str, request: Request) -> Response:
    """The report as a self-contained HTML page, signed on its last line."""
    gateway = _admin(request)
    reports = reports_of(request)
    body = await run_in_threadpool(assemble, gateway, reports, forget_set_id)
    page = reports.signer.sign_html(render_html(body))
    await run_in_threadpool(reports.store.save_report, forget_set_id, body, page)
    headers = {"Content-Security-Policy": REPORT_PAGE_POLICY, "X-Content-Type-Options": "nosniff"}
    return Response(page, media_type="text/html; charset=utf-8", headers=headers)


def _rerun(gateway: Gateway, reports: Reports, forget_set_id: str, body: ReportRun, by_key: str) -> None:
    from lethe.training.data import TrainingDataError
    from lethe.training.verification import verify_forget_set

    model = gateway.backend.local_model()
    if model is None:
        raise APIError(501, "Measuring a report needs a local model; this gateway has none.",
                       code="verification_unavailable")  # fmt: skip
    record = _ready_record(gateway, forget_set_id)
    artifact: ForgetSetArtifact | None = gateway.screen.active.get(record.id)
    if artifact is None:
        try:
            artifact = gateway.forget_sets.read(gateway.forget_sets.registry.artifact_dir(record.id, record.version))
        except (ArtifactError, OSError) as exc:
            raise APIError(409, f"Forget set '{forget_set_id}' cannot be loaded.", CONFLICT, "id",
                           "unloadable") from exc  # fmt: skip
    if not reports.running.acquire(blocking=False):
        raise APIError(409, "A report is being measured already; retry when it is done.", CONFLICT, None, "busy")
    try:
        figures = verify_forget_set(
            model, artifact, evaluation=body.evaluation, seed=body.seed, reveal_budget=body.reveal_budget
        )
    except TrainingDataError as exc:
        raise bad_request(str(exc), "evaluation", "invalid_evaluation") from None
    finally:
        reports.running.release()
    reports.store.save_figures(record.id, {
        "version": record.version, "figures": figures.model_dump(mode="json"),
        "include_request": body.include_request,
    })  # fmt: skip
    reports.store.note(record.id, "re-verified", by_key)


@router.post("/forget-sets/{forget_set_id}/report", response_model=None)
async def rerun_report(forget_set_id: str, request: Request) -> JSONResponse:
    """Measure the forget set again (optionally on the operator's held-out set) and return the new report."""
    gateway = _admin(request)
    raw = await request.body()
    body = parse_body(raw, ReportRun) if raw.strip() else ReportRun()
    reports = reports_of(request)
    await run_in_threadpool(_rerun, gateway, reports, forget_set_id, body, key_id(request))
    body = await run_in_threadpool(assemble, gateway, reports, forget_set_id)
    await run_in_threadpool(reports.store.save_report, forget_set_id, body)
    return JSONResponse(body)
