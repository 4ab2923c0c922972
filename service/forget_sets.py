"""Forget-set lifecycle: registry records, artifact folders, the live screen and training jobs.

One lock orders every change that touches both the registry and the screen, so a forget set
is live exactly when its row says ``ready`` and ``enabled`` (a deletion cannot race a job that
is finishing). Start-up recovery marks interrupted jobs failed, removes half-written folders and
loads enabled forget sets; one that fails to load is reported and skipped.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from lethe.runtime.artifact import ArtifactError, ForgetSetArtifact, new_forget_set_id
from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.service.admin_protocol import ForgetSetCreate
from lethe.service.audit import AuditLog
from lethe.service.errors import CONFLICT, APIError, bad_request, not_found
from lethe.service.jobs import JobRunner, ProgressReporter, TrainJob
from lethe.service.registry import INTERRUPTED, ForgetSetRecord, JobRecord, Registry, new_job_id, remove_folder

logger = logging.getLogger("lethe.forget_sets")
MAX_ERROR_CHARS = 500


def _error_text(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


class ForgetSetManager:
    """Creates, trains, lists, toggles and deletes forget sets; keeps the screen in step."""

    def __init__(
        self,
        registry: Registry,
        screen: ForgetSetScreen,
        embedder: PromptEmbedder,
        model: Callable[[], LanguageModel | None],
        audit: AuditLog,
    ):
        self.registry = registry
        self.screen = screen
        self.embedder = embedder
        self._model = model
        self.audit = audit
        self.load_errors: dict[str, str] = {}
        self._lock = threading.RLock()
        self.jobs = JobRunner(self._execute)

    # Start-up ---------------------------------------------------------------------------------

    def start(self, imports: Iterable[tuple[ForgetSetArtifact, str]] = ()) -> None:
        """Recover from the previous run, load enabled forget sets, import ``(artifact, source)`` pairs, start jobs."""
        interrupted = self.registry.recover_interrupted()
        for job_id in interrupted:
            logger.warning("training job %s was interrupted by a restart and is marked failed", job_id)
        for name in self.registry.collect_debris():
            logger.info("removed leftover artifact folder %s", name)
        for record in self.registry.list_forget_sets():
            if record.state == "ready" and record.enabled:
                self._go_live(record.id)
        for artifact, source in imports:
            self.import_artifact(artifact, source)
        self.jobs.start()

    def stop(self) -> None:
        """Stop the training thread; a running job stops at the trainer's next check and is reported failed."""
        self.jobs.stop()

    def read(self, folder: Path) -> ForgetSetArtifact:
        """Load and validate an artifact folder for the served model (``ArtifactError`` if unfit)."""
        return ForgetSetArtifact.load(folder, self.embedder.fingerprint, self.embedder.hidden_size)

    def _go_live(self, forget_set_id: str) -> bool:
        """Load a ready forget set's artifact into the screen; on failure record why and skip it."""
        try:
            artifact = self.read(self.registry.artifact_dir(forget_set_id))
            if artifact.id != forget_set_id:
                raise ArtifactError(f"the folder holds forget set {artifact.id}")
        except (ArtifactError, OSError, ValueError) as exc:
            self.load_errors[forget_set_id] = _error_text(exc)
            self.screen.remove(forget_set_id)
            logger.error("forget set %s could not be loaded and is skipped: %s", forget_set_id, exc)
            return False
        self.load_errors.pop(forget_set_id, None)
        self.screen.put(artifact)
        return True

    def import_artifact(self, artifact: ForgetSetArtifact, source: str) -> ForgetSetRecord:
        """Copy an artifact into the registry (enabled); an id already registered is kept as it is."""
        artifact.check_compatible(self.embedder.fingerprint, self.embedder.hidden_size)
        with self._lock:
            existing = self.registry.get_forget_set(artifact.id)
            if existing is not None:
                logger.info("forget set %s is already registered; keeping the registry's copy", artifact.id)
                return existing
            artifact.save(self.registry.artifact_dir(artifact.id))
            manifest = artifact.manifest
            self.registry.insert_ready(artifact.id, manifest.name, manifest.method, dict(manifest.metrics), source)
            self.screen.put(artifact)
            self.audit.record("forget_set_imported", forget_set_id=artifact.id, source=source)
        record = self.registry.get_forget_set(artifact.id)
        assert record is not None
        return record

    # Training ----------------------------------------------------------------------------------

    def create(self, body: ForgetSetCreate) -> tuple[ForgetSetRecord, JobRecord]:
        """Validate a forget-set request (400 on bad input, before anything is stored) and queue its training."""
        from lethe.training.data import TrainingDataError, parse_rows
        from lethe.training.trainer import TrainConfig

        if self._model() is None:
            raise APIError(501, "Training needs a local model; this gateway has none.", code="training_unavailable")
        if body.forget is None and body.topic is None:
            raise APIError(
                400, "Missing required parameter: 'forget' (or give a 'topic').", "invalid_request_error", "forget",
                "missing_parameter",
            )  # fmt: skip
        try:
            forget = parse_rows(body.forget, "forget") if body.forget is not None else []
            retain = parse_rows(body.retain, "retain", required=False) if body.retain is not None else None
        except TrainingDataError as exc:
            raise bad_request(str(exc), "forget" if str(exc).startswith("forget") else "retain") from None
        try:
            config = TrainConfig.from_options(body.method, dict(body.options or {}))
        except (ValueError, TypeError) as exc:
            raise bad_request(f"Invalid 'options': {exc}", "options", "invalid_options") from None
        name = body.name.strip()
        if not name:
            raise bad_request("'name' must not be blank.", "name")
        forget_set_id, job_id = new_forget_set_id(), new_job_id()
        options = dict(body.options or {})
        with self._lock:
            record, job = self.registry.create_training(forget_set_id, name, body.method, job_id, options)
            self.jobs.submit(
                TrainJob(
                    job_id, forget_set_id, name, body.method, forget, retain, config,
                    topic=body.topic, seed_prompts=list(body.seed_prompts or []),
                )
            )  # fmt: skip
        self.audit.record(
            "forget_set_created",
            forget_set_id=forget_set_id,
            job_id=job_id,
            method=body.method,
            forget_rows=len(forget),
            topic=body.topic is not None,
            retain_rows=len(retain or []),
        )
        return record, job

    def _execute(self, job: TrainJob) -> None:
        """Run one job on the training thread: train, save atomically, go live; or record why not."""
        from lethe.training.trainer import TrainingCancelled, train_forget_set, train_topic

        if job.cancel.is_set() or not self.registry.job_started(job.id):
            return
        self.audit.record("job_started", job_id=job.id, forget_set_id=job.forget_set_id)
        model = self._model()
        folder = self.registry.artifact_dir(job.forget_set_id)
        reporter = ProgressReporter(lambda fraction, stage: self.registry.job_progress(job.id, fraction, stage))
        try:
            if model is None:
                raise RuntimeError("no local model to train on")
            if job.topic is not None:
                artifact = train_topic(
                    model, job.name, job.topic, job.seed_prompts, job.config,
                    progress=reporter, cancel=job.cancel, forget_set_id=job.forget_set_id,
                )  # fmt: skip
            else:
                artifact = train_forget_set(
                    model, job.name, job.forget, job.retain, job.config,
                    progress=reporter, cancel=job.cancel, forget_set_id=job.forget_set_id,
                )  # fmt: skip
            if artifact.id != job.forget_set_id:
                raise ArtifactError(f"the trainer returned forget set {artifact.id}, expected {job.forget_set_id}")
            artifact.check_compatible(self.embedder.fingerprint, self.embedder.hidden_size)
            if job.cancel.is_set():
                raise TrainingCancelled("cancelled")
            with self._lock:
                artifact.save(folder)
                if self.registry.job_succeeded(job.id, job.forget_set_id, dict(artifact.manifest.metrics)):
                    self.screen.put(artifact)
                    self.load_errors.pop(job.forget_set_id, None)
                    self.audit.record("job_succeeded", job_id=job.id, forget_set_id=job.forget_set_id)
                    return
                remove_folder(folder)
                self.audit.record("job_discarded", job_id=job.id, forget_set_id=job.forget_set_id)
        except TrainingCancelled:
            remove_folder(folder)
            if self.jobs.stopping:
                self.registry.job_ended(job.id, "failed", INTERRUPTED)
                self.audit.record("job_failed", job_id=job.id, forget_set_id=job.forget_set_id, error=INTERRUPTED)
            else:
                self.registry.job_ended(job.id, "cancelled", "cancelled by an operator")
                self.audit.record("job_cancelled", job_id=job.id, forget_set_id=job.forget_set_id)
        except Exception as exc:
            remove_folder(folder)
            self.registry.job_ended(job.id, "failed", _error_text(exc))
            logger.error("training job %s failed: %s", job.id, type(exc).__name__)
            logger.debug("training failure", exc_info=exc)
            self.audit.record("job_failed", job_id=job.id, forget_set_id=job.forget_set_id, error=type(exc).__name__)
        finally:
            job.forget.clear()
            if job.retain is not None:
                job.retain.clear()

    def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (a running one stops at the trainer's next check)."""
        job = self.registry.get_job(job_id)
        if job is None:
            raise not_found(f"No job with id '{job_id}'.", "job_id")
        if job.state not in ("queued", "running"):
            raise APIError(409, f"Job '{job_id}' has already {job.state}.", CONFLICT, "job_id", "job_finished")
        self.jobs.cancel(job_id)
        if job.state == "queued":
            self.registry.job_ended(job_id, "cancelled", "cancelled by an operator")
        self.audit.record("job_cancel_requested", job_id=job_id, forget_set_id=job.forget_set_id)
        updated = self.registry.get_job(job_id)
        assert updated is not None
        return updated

    # Listing and toggling ----------------------------------------------------------------------

    def get(self, forget_set_id: str) -> ForgetSetRecord:
        """A forget set, or a 404."""
        record = self.registry.get_forget_set(forget_set_id)
        if record is None:
            raise not_found(f"No forget set with id '{forget_set_id}'.", "id")
        return record

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord:
        """Switch a ready forget set on (loading its artifact) or off; effective for the next request."""
        with self._lock:
            record = self.get(forget_set_id)
            if enabled and record.state != "ready":
                raise APIError(
                    409, f"Forget set '{forget_set_id}' is {record.state}, not ready.", CONFLICT, "enabled", "not_ready"
                )
            if enabled and not self._go_live(forget_set_id):
                raise APIError(
                    409,
                    f"Forget set '{forget_set_id}' cannot be loaded: {self.load_errors.get(forget_set_id)}",
                    CONFLICT,
                    "enabled",
                    "unloadable",
                )
            if not enabled:
                self.screen.remove(forget_set_id)
            updated = self.registry.set_enabled(forget_set_id, enabled)
        self.audit.record("forget_set_enabled" if enabled else "forget_set_disabled", forget_set_id=forget_set_id)
        assert updated is not None
        return updated

    def delete(self, forget_set_id: str) -> None:
        """Remove a forget set from the screen, the registry and the disk (cancelling its job)."""
        with self._lock:
            record = self.get(forget_set_id)
            self.screen.remove(forget_set_id)
            if record.job_id is not None:
                job = self.registry.get_job(record.job_id)
                if job is not None and job.state in ("queued", "running"):
                    self.jobs.cancel(job.id)
                    self.registry.job_ended(job.id, "cancelled", "the forget set was deleted")
            self.registry.delete_forget_set(forget_set_id)
            self.load_errors.pop(forget_set_id, None)
        self.audit.record("forget_set_deleted", forget_set_id=forget_set_id)

    def view(self, record: ForgetSetRecord) -> dict[str, Any]:
        """The API shape of a forget set (``live``: applied to requests right now)."""
        return {
            "id": record.id,
            "object": "forget_set",
            "name": record.name,
            "method": record.method,
            "enabled": record.enabled,
            "state": record.state,
            "live": record.id in self.screen.active,
            "created": record.created,
            "updated": record.updated,
            "job_id": record.job_id,
            "source": record.source,
            "metrics": record.metrics,
            "error": self.load_errors.get(record.id) or record.error,
        }


def job_view(job: JobRecord) -> dict[str, Any]:
    """The API shape of a training job."""
    return {
        "id": job.id,
        "object": "job",
        "state": job.state,
        "progress": job.progress,
        "stage": job.stage,
        "forget_set_id": job.forget_set_id,
        "metrics": job.metrics,
        "error": job.error,
        "options": job.options,
        "created": job.created,
        "started": job.started,
        "finished": job.finished,
    }
