"""Admin routes (admin key): forget sets, training jobs, scope checks.

Mutations run on a worker thread (SQLite commits, artifact folders) so inference keeps flowing.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lethe.service.admin_protocol import ClassifyRequest, ForgetSetCreate, ForgetSetPatch
from lethe.service.errors import not_found
from lethe.service.forget_sets import job_view
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.report_routes import note_action
from lethe.service.request_rules import parse_body

router = APIRouter(prefix="/admin")


def _admin(request: Request) -> Gateway:
    gateway = gateway_of(request)
    gateway.keys.check_admin(request)
    return gateway


@router.post("/forget-sets", status_code=202, response_model=None)
async def create_forget_set(request: Request) -> JSONResponse:
    """Validate a forget set and start training it in the background: ``202 {"id", "job_id"}``."""
    gateway = _admin(request)
    body = parse_body(await request.body(), ForgetSetCreate)
    record, job = await run_in_threadpool(gateway.forget_sets.create, body)
    note_action(request, record.id, "registered")
    return JSONResponse(
        {"id": record.id, "job_id": job.id, "object": "forget_set", "state": record.state}, status_code=202
    )


@router.get("/forget-sets")
async def list_forget_sets(request: Request) -> dict[str, Any]:
    """Every registered forget set."""
    gateway = _admin(request)
    records = await run_in_threadpool(gateway.forget_sets.registry.list_forget_sets)
    return {"object": "list", "data": [gateway.forget_sets.view(r) for r in records]}


@router.get("/forget-sets/{forget_set_id}")
async def get_forget_set(forget_set_id: str, request: Request) -> dict[str, Any]:
    """One forget set."""
    gateway = _admin(request)
    record = await run_in_threadpool(gateway.forget_sets.get, forget_set_id)
    return gateway.forget_sets.view(record)


@router.patch("/forget-sets/{forget_set_id}")
async def patch_forget_set(forget_set_id: str, request: Request) -> dict[str, Any]:
    """Enable or disable a forget set, effective for the next request."""
    gateway = _admin(request)
    body = parse_body(await request.body(), ForgetSetPatch)
    record = await run_in_threadpool(gateway.forget_sets.set_enabled, forget_set_id, body.enabled)
    note_action(request, record.id, "enabled" if body.enabled else "disabled")
    return gateway.forget_sets.view(record)


@router.delete("/forget-sets/{forget_set_id}")
async def delete_forget_set(forget_set_id: str, request: Request) -> dict[str, Any]:
    """Remove a forget set (and cancel its training if it is still running)."""
    gateway = _admin(request)
    await run_in_threadpool(gateway.forget_sets.delete, forget_set_id)
    return {"id": forget_set_id, "object": "forget_set", "deleted": True}


@router.get("/jobs")
async def list_jobs(request: Request) -> dict[str, Any]:
    """Every training job."""
    gateway = _admin(request)
    jobs = await run_in_threadpool(gateway.forget_sets.registry.list_jobs)
    return {"object": "list", "data": [job_view(j) for j in jobs]}


@router.get("/jobs/{job_id}")
async def get_job(job_id: str, request: Request) -> dict[str, Any]:
    """A training job's state, progress (0..1), metrics and error."""
    gateway = _admin(request)
    job = await run_in_threadpool(gateway.forget_sets.registry.get_job, job_id)
    if job is None:
        raise not_found(f"No job with id '{job_id}'.", "job_id")
    return job_view(job)


@router.post("/jobs/{job_id}/cancel")
async def cancel_job(job_id: str, request: Request) -> dict[str, Any]:
    """Cancel a queued or running job (a running one is reported cancelled once the trainer stops)."""
    gateway = _admin(request)
    job = await run_in_threadpool(gateway.forget_sets.cancel_job, job_id)
    return job_view(job)


@router.post("/classify")
async def classify(request: Request) -> dict[str, Any]:
    """Which live forget sets flag a chat or prompt, with scores and token masks over the rendered prompt."""
    gateway = _admin(request)
    body = parse_body(await request.body(), ClassifyRequest)
    messages = [m.as_template_message() for m in body.messages] if body.messages is not None else None
    return await gateway.screening.explain(messages, body.prompt)
