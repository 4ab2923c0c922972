"""Forget-set lifecycle: registry records, artifacts, the live screen and training jobs.

One lock orders every change that touches both the registry and the screen, so a forget set
is live exactly when its row says ``ready`` and ``enabled`` (a deletion cannot race a job that
is finishing). Start-up recovery marks interrupted jobs failed, removes half-written folders and
loads enabled forget sets; one that fails to load is reported and skipped. Forget sets imported
at start (``--demo``, ``--forget-set``) that an operator deleted stay deleted.

With a shared registry (PostgreSQL) other replicas change it too: ``sync`` makes the screen hold
exactly the registry's ready and enabled forget sets (by artifact version), on every change
notification and every few seconds; training is done by workers (``service.worker``), in this
process (``--workers N``) or elsewhere (``lethe worker``), and cancelling goes through the registry.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
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
from lethe.service.jobs import JobRunner, ProgressReporter, TrainJob, error_text, train_artifact
from lethe.service.pg_connection import RegistryUnavailable
from lethe.service.pg_registry import PgRegistry
from lethe.service.registry import INTERRUPTED, ForgetSetRecord, JobRecord, Registry, new_job_id, remove_folder
from lethe.service.registry_store import RegistryStore
from lethe.service.worker import JobWorker, worker_name

logger = logging.getLogger("lethe.forget_sets")
RESYNC_INTERVAL_S = 5.0
STARTUP_SOURCES = ("cli", "startup")
CANCELLED_BY_OPERATOR = "cancelled by an operator"


class ForgetSetManager:
    """Creates, trains, lists, toggles and deletes forget sets; keeps the screen in step with the registry."""

    def __init__(
        self,
        registry: RegistryStore,
        screen: ForgetSetScreen,
        embedder: PromptEmbedder,
        model: Callable[[], LanguageModel | None],
        audit: AuditLog,
        workers: int | None = None,
        lease_s: float = 30.0,
    ):
        self.registry = registry
        self.screen = screen
        self.embedder = embedder
        self._model = model
        self.audit = audit
        self.load_errors: dict[str, str] = {}
        self._live: dict[str, str] = {}  # id -> version in the screen
        self._unloadable: dict[str, str] = {}  # id -> version that failed to load (not retried until it changes)
        self._lock = threading.RLock()
        self._job_counts: dict[str, int] = {}
        self._local = registry if isinstance(registry, Registry) else None
        self._shared = registry if isinstance(registry, PgRegistry) else None
        has_model = model() is not None
        self.workers = workers if workers is not None else int(has_model)
        if self.workers and not has_model:
            raise ValueError("--workers needs a local model to train on; in proxy mode run `lethe worker` processes")
        if self._local is not None and self.workers > 1:
            raise ValueError(
                "with a SQLite registry a gateway trains one job at a time (--workers 0 or 1); "
                "use a postgresql:// registry and `lethe worker` processes to train in parallel"
            )
        self.lease_s = lease_s
        self.jobs = JobRunner(self._execute)
        self._workers: list[JobWorker] = []
        self._stop = threading.Event()
        self._watcher: threading.Thread | None = None

    # Start-up ---------------------------------------------------------------------------------

    def start(self, imports: Iterable[tuple[ForgetSetArtifact, str]] = ()) -> None:
        """Recover from the previous run, load enabled forget sets, import ``(artifact, source)`` pairs, start jobs."""
        interrupted = self.registry.recover_interrupted()
        for job_id in interrupted:
            logger.warning("training job %s was interrupted by a restart and is marked failed", job_id)
        for name in self.registry.collect_debris():
            logger.info("removed leftover artifact folder %s", name)
        self.sync()
        for artifact, source in imports:
            self.import_at_start(artifact, source)
        if self._shared is not None:
            _warm_up_classifiers()
            self._watcher = threading.Thread(target=self._watch, name="lethe-registry-watch", daemon=True)
            self._watcher.start()
            model = self._model()
            for index in range(self.workers if model is not None else 0):
                worker = JobWorker(self._shared, model, self.audit, worker_name(index), self.lease_s, self.sync)
                worker.start()
                self._workers.append(worker)
        elif self.workers:
            self.jobs.start()

    def stop(self) -> None:
        """Stop training (a running job stops at the trainer's next check: failed with SQLite, requeued with
        PostgreSQL) and the registry watcher."""
        self._stop.set()
        for worker in self._workers:
            worker.stop()
        self.jobs.stop()
        if self._watcher is not None:
            self._watcher.join(10)

    def _watch(self) -> None:
        assert self._shared is not None
        shared = self._shared

        def resync() -> None:
            self.sync()
            shared.reap()

        shared.watch(resync, self._stop, RESYNC_INTERVAL_S)

    def read(self, folder: Path) -> ForgetSetArtifact:
        """Load and validate an artifact folder for the served model (``ArtifactError`` if unfit)."""
        return ForgetSetArtifact.load(folder, self.embedder.fingerprint, self.embedder.hidden_size)

    def sync(self) -> None:
        """Make the screen hold exactly the registry's ready and enabled forget sets, in their current versions."""
        with self._lock:
            wanted = self.registry.live_versions()
            for forget_set_id in [i for i in self._live if i not in wanted]:
                self._hide(forget_set_id)
            for forget_set_id, version in wanted.items():
                if version in (self._live.get(forget_set_id), self._unloadable.get(forget_set_id)):
                    continue
                started = time.perf_counter()
                artifact = self._load(forget_set_id, version)
                if artifact is not None:
                    self._show(artifact, version)
                    elapsed_ms = (time.perf_counter() - started) * 1000
                    logger.info("forget set %s is live (version %.12s, %.0f ms)", forget_set_id, version, elapsed_ms)

    def _load(self, forget_set_id: str, version: str | None) -> ForgetSetArtifact | None:
        """Read a ready forget set's artifact; on failure record why, take it off the screen and return ``None``."""
        try:
            artifact = self.read(self.registry.artifact_dir(forget_set_id, version))
            if artifact.id != forget_set_id:
                raise ArtifactError(f"the folder holds forget set {artifact.id}")
        except (ArtifactError, OSError, ValueError) as exc:
            self.load_errors[forget_set_id] = error_text(exc)
            if version is not None:
                self._unloadable[forget_set_id] = version
            self._hide(forget_set_id)
            logger.error("forget set %s could not be loaded and is skipped: %s", forget_set_id, exc)
            return None
        return artifact

    def _show(self, artifact: ForgetSetArtifact, version: str) -> None:
        self.screen.put(artifact)
        self._live[artifact.id] = version
        self._unloadable.pop(artifact.id, None)
        self.load_errors.pop(artifact.id, None)

    def _hide(self, forget_set_id: str) -> None:
        self.screen.remove(forget_set_id)
        self._live.pop(forget_set_id, None)

    def import_at_start(self, artifact: ForgetSetArtifact, source: str) -> ForgetSetRecord | None:
        """Import a start-up artifact (``--demo``, ``--forget-set``) unless an operator deleted that id before."""
        if self.registry.was_deleted(artifact.id):
            logger.warning(
                "forget set %s was deleted through the admin API and is not imported again "
                "(POST /admin/forget-sets/import brings it back)",
                artifact.id,
            )
            return None
        return self.import_artifact(artifact, source)

    def import_artifact(self, artifact: ForgetSetArtifact, source: str) -> ForgetSetRecord:
        """Copy an artifact into the registry (enabled); an id already registered is kept as it is."""
        artifact.check_compatible(self.embedder.fingerprint, self.embedder.hidden_size)
        with self._lock:
            version = None
            if self.registry.get_forget_set(artifact.id) is None:
                version = self.registry.store_ready(artifact, source)
            if version is None:
                logger.info("forget set %s is already registered; keeping the registry's copy", artifact.id)
            else:
                self._show(artifact, version)
                self.audit.record("forget_set_imported", forget_set_id=artifact.id, source=source)
        record = self.registry.get_forget_set(artifact.id)
        assert record is not None
        return record

    # Training ----------------------------------------------------------------------------------

    def create(self, body: ForgetSetCreate) -> tuple[ForgetSetRecord, JobRecord]:
        """Validate a forget-set request (400 on bad input, before anything is stored) and queue its training.

        With a shared registry the job waits for a worker (here or elsewhere) whose model has this
        gateway's fingerprint; otherwise this process trains it.
        """
        from lethe.training.data import TrainingDataError, parse_rows
        from lethe.training.trainer import TrainConfig

        if self._shared is None and self._model() is None:
            raise APIError(501, "Training needs a local model; this gateway has none.", code="training_unavailable")
        if self._shared is None and not self.workers:
            raise APIError(501, "This gateway does not train forget sets (--workers 0).", code="training_unavailable")
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
        stored_input = None
        if self._shared is not None:  # the rows go to a worker through the registry, erased when the job ends
            stored_input = {
                "forget": body.forget, "retain": body.retain, "topic": body.topic,
                "seed_prompts": list(body.seed_prompts or []), "entities": list(body.entities or []),
                "keep_topics": list(body.keep_topics or []), "options": options,
            }  # fmt: skip
        with self._lock:
            record, job = self.registry.create_training(
                forget_set_id, name, body.method, job_id, options, stored_input, self.embedder.fingerprint
            )
            if self._shared is None:
                self.jobs.submit(
                    TrainJob(
                        job_id, forget_set_id, name, body.method, forget, retain, config,
                        topic=body.topic, seed_prompts=list(body.seed_prompts or []),
                        entities=list(body.entities or []), keep_topics=list(body.keep_topics or []),
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
        """Run one job on the in-process training thread (SQLite): train, save atomically, go live; or record why
        not."""
        from lethe.training.trainer import TrainingCancelled

        registry = self._local
        assert registry is not None
        if job.cancel.is_set() or not registry.job_started(job.id):
            return
        self.audit.record("job_started", job_id=job.id, forget_set_id=job.forget_set_id)
        model = self._model()
        folder = registry.artifact_dir(job.forget_set_id)
        reporter = ProgressReporter(lambda fraction, stage: registry.job_progress(job.id, fraction, stage))
        try:
            if model is None:
                raise RuntimeError("no local model to train on")
            artifact = train_artifact(model, job, reporter)
            if job.cancel.is_set():
                raise TrainingCancelled("cancelled")
            with self._lock:
                version = registry.publish(job.id, job.forget_set_id, artifact)
                if version is not None:
                    self._show(artifact, version)
                    self.audit.record("job_succeeded", job_id=job.id, forget_set_id=job.forget_set_id)
                    return
                self.audit.record("job_discarded", job_id=job.id, forget_set_id=job.forget_set_id)
        except TrainingCancelled:
            remove_folder(folder)
            if self.jobs.stopping:
                registry.job_ended(job.id, "failed", INTERRUPTED)
                self.audit.record("job_failed", job_id=job.id, forget_set_id=job.forget_set_id, error=INTERRUPTED)
            else:
                registry.job_ended(job.id, "cancelled", CANCELLED_BY_OPERATOR)
                self.audit.record("job_cancelled", job_id=job.id, forget_set_id=job.forget_set_id)
        except Exception as exc:
            remove_folder(folder)
            registry.job_ended(job.id, "failed", error_text(exc))
            logger.error("training job %s failed: %s", job.id, type(exc).__name__)
            logger.debug("training failure", exc_info=exc)
            self.audit.record("job_failed", job_id=job.id, forget_set_id=job.forget_set_id, error=type(exc).__name__)
        finally:
            job.forget.clear()
            if job.retain is not None:
                job.retain.clear()

    def cancel_job(self, job_id: str) -> JobRecord:
        """Cancel a queued or running job (a running one stops at the trainer's next check, or its worker's next
        heartbeat)."""
        job = self.registry.get_job(job_id)
        if job is None:
            raise not_found(f"No job with id '{job_id}'.", "job_id")
        if job.state not in ("queued", "running"):
            raise APIError(409, f"Job '{job_id}' has already {job.state}.", CONFLICT, "job_id", "job_finished")
        if self._shared is not None:
            updated = self._shared.request_cancel(job_id)
        else:
            self.jobs.cancel(job_id)
            if job.state == "queued":
                self.registry.job_ended(job_id, "cancelled", CANCELLED_BY_OPERATOR)
            updated = self.registry.get_job(job_id)
        self.audit.record("job_cancel_requested", job_id=job_id, forget_set_id=job.forget_set_id)
        assert updated is not None
        return updated

    def job_count(self, state: str) -> int:
        """Jobs in ``state`` (for the metrics gauge); the last known count while the registry is unreachable."""
        with contextlib.suppress(RegistryUnavailable):
            self._job_counts[state] = len(self.registry.list_jobs((state,)))
        return self._job_counts.get(state, 0)

    # Listing and toggling ----------------------------------------------------------------------

    def get(self, forget_set_id: str) -> ForgetSetRecord:
        """A forget set, or a 404."""
        record = self.registry.get_forget_set(forget_set_id)
        if record is None:
            raise not_found(f"No forget set with id '{forget_set_id}'.", "id")
        return record

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord:
        """Switch a ready forget set on (loading its artifact) or off; effective for the next request (with a
        shared registry: on every replica within a notification's delay)."""
        with self._lock:
            record = self.get(forget_set_id)
            artifact = None
            if enabled:
                if record.state != "ready":
                    raise APIError(
                        409, f"Forget set '{forget_set_id}' is {record.state}, not ready.", CONFLICT, "enabled",
                        "not_ready",
                    )  # fmt: skip
                artifact = self._load(forget_set_id, record.version)
                if artifact is None:
                    raise APIError(
                        409,
                        f"Forget set '{forget_set_id}' cannot be loaded: {self.load_errors.get(forget_set_id)}",
                        CONFLICT,
                        "enabled",
                        "unloadable",
                    )
            updated = self.registry.set_enabled(forget_set_id, enabled)
            if updated is None:
                raise not_found(f"No forget set with id '{forget_set_id}'.", "id")
            if artifact is not None and record.version is not None:
                self._show(artifact, record.version)
            else:
                self._hide(forget_set_id)
        self.audit.record("forget_set_enabled" if enabled else "forget_set_disabled", forget_set_id=forget_set_id)
        return updated

    def delete(self, forget_set_id: str) -> None:
        """Remove a forget set from the screen, the registry and the disk (cancelling its job)."""
        with self._lock:
            record = self.get(forget_set_id)
            if record.job_id is not None:
                self.jobs.cancel(record.job_id)  # this process's trainer; workers elsewhere see it at their heartbeat
            if not self.registry.delete_forget_set(forget_set_id):
                raise not_found(f"No forget set with id '{forget_set_id}'.", "id")
            self._hide(forget_set_id)
            self._unloadable.pop(forget_set_id, None)
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


def _warm_up_classifiers() -> None:
    """Load the default feature space now (its semantic table takes about a second), so that the first forget set
    another replica publishes goes live in tens of milliseconds rather than seconds."""
    from lethe.classifier.features import FeatureSpec, feature_space

    feature_space(FeatureSpec())


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
