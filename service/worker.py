"""Training workers of the shared registry: claim a job, keep its lease, train, publish atomically.

A ``JobWorker`` is a thread; ``lethe worker`` runs some in their own process, and ``lethe serve
--workers N`` runs N inside a replica that has a local model. Each loop: requeue jobs whose
worker died (``reap``), claim the oldest queued job for this model's fingerprint, train it while a
lease thread heartbeats, publish the artifact in one transaction. A cancel asked on any replica
reaches the lease thread at its next heartbeat; a job that is no longer this worker's (its lease
ran out and someone requeued it, or its forget set was deleted) is dropped without writing
anything. A worker stopped on purpose hands its job back to the queue.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from lethe.runtime.model import LanguageModel
from lethe.service.audit import AuditLog
from lethe.service.jobs import ProgressReporter, TrainJob, error_text, job_from_input, train_artifact
from lethe.service.pg_connection import RegistryUnavailable
from lethe.service.pg_registry import CANCELLED_BY_OPERATOR, ClaimedJob, PgRegistry
from lethe.training.progress import TrainingCancelled

logger = logging.getLogger("lethe.worker")
POLL_S = 1.0
MAX_HEARTBEAT_INTERVAL_S = 2.0
AUDIT_FILE = "audit.jsonl"


class Lease:
    """Heartbeats a claimed job on a thread; cancels the training when asked to or when the job is no longer ours."""

    def __init__(self, registry: PgRegistry, job: TrainJob, worker: str, lease_s: float):
        self.registry = registry
        self.job = job
        self.worker = worker
        self.interval = min(MAX_HEARTBEAT_INTERVAL_S, lease_s / 3)
        self.lost = False
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=f"lethe-lease-{job.id}", daemon=True)

    def __enter__(self) -> Lease:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join(10)

    def _beat(self) -> None:
        while not self._done.wait(self.interval):
            try:
                status = self.registry.heartbeat(self.job.id, self.worker)
            except RegistryUnavailable:
                continue  # keep training; the lease is renewed once the database is back, or the job is requeued
            if status == "lost":
                logger.warning("job %s is no longer this worker's; dropping it", self.job.id)
                self.lost = True
            if status != "ok":
                self.job.cancel.set()
                return


class JobWorker:
    """One training thread over the shared registry, for ``model``."""

    def __init__(
        self, registry: PgRegistry, model: LanguageModel, audit: AuditLog, name: str, lease_s: float,
        on_published: Callable[[], None] | None = None,
    ):  # fmt: skip
        self.registry = registry
        self.model = model
        self.audit = audit
        self.name = name
        self.lease_s = lease_s
        self.on_published = on_published
        self.current: TrainJob | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lethe-worker-{name}", daemon=True)

    def start(self) -> None:
        """Start claiming jobs."""
        self._thread.start()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop claiming; a running job stops at the trainer's next check and goes back to the queue."""
        self._stop.set()
        job = self.current
        if job is not None:
            job.cancel.set()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.registry.reap()
                claimed = self.registry.claim(self.name, self.model.fingerprint, self.lease_s)
            except RegistryUnavailable:
                self._stop.wait(POLL_S * 2)
                continue
            except Exception as exc:  # the loop must survive anything one round raises
                logger.error("worker %s could not claim a job: %s", self.name, type(exc).__name__)
                self._stop.wait(POLL_S * 2)
                continue
            if claimed is None:
                self._stop.wait(POLL_S)
                continue
            try:
                self._train(claimed)
            except Exception as exc:  # a bug here must not end the worker; the job's lease runs out
                logger.error("worker %s crashed on job %s: %s", self.name, claimed.job.id, type(exc).__name__)
                logger.debug("worker failure", exc_info=exc)

    def _train(self, claimed: ClaimedJob) -> None:
        record = claimed.job
        try:
            job = job_from_input(record.id, record.forget_set_id, claimed.name, claimed.method, claimed.input)
        except Exception as exc:
            self._record_end(record.id, record.forget_set_id, "failed", f"unusable training input ({error_text(exc)})")
            return
        self.current = job
        if self._stop.is_set():
            job.cancel.set()
        self._audit("job_started", job, attempt=claimed.attempt)
        report = ProgressReporter(lambda share, stage: self.registry.job_progress(job.id, share, stage, self.name))

        with Lease(self.registry, job, self.name, self.lease_s) as lease:
            try:
                artifact = train_artifact(self.model, job, report)
                if job.cancel.is_set():
                    raise TrainingCancelled("cancelled")
                version = self._until_written(
                    lease, lambda: self.registry.publish(job.id, job.forget_set_id, artifact, self.name)
                )
                self._audit("job_succeeded" if version else "job_discarded", job)
                if version and self.on_published is not None:
                    self.on_published()
            except TrainingCancelled:
                if lease.lost:
                    self._audit("job_dropped", job)
                elif self._stop.is_set():
                    self._until_written(lease, lambda: self.registry.release(job.id, self.name))
                    self._audit("job_released", job)
                else:
                    self._record_end(job.id, job.forget_set_id, "cancelled", CANCELLED_BY_OPERATOR, lease)
            except Exception as exc:
                logger.error("training job %s failed: %s", job.id, type(exc).__name__)
                logger.debug("training failure", exc_info=exc)
                if not lease.lost:
                    self._record_end(job.id, job.forget_set_id, "failed", error_text(exc), lease)
            finally:
                self.current = None
                job.forget.clear()
                if job.retain is not None:
                    job.retain.clear()

    def _record_end(self, job_id: str, forget_set_id: str, state: Any, error: str, lease: Lease | None = None) -> None:
        self._until_written(lease, lambda: self.registry.job_ended(job_id, state, error, self.name))
        self.audit.record(f"job_{state}", job_id=job_id, forget_set_id=forget_set_id, worker=self.name)

    def _until_written(self, lease: Lease | None, write: Callable[[], Any]) -> Any:
        """Run a registry write, retrying while the database is down (unless the job stopped being ours)."""
        while True:
            try:
                return write()
            except RegistryUnavailable:
                if (lease is not None and lease.lost) or (self._stop.is_set() and lease is None):
                    return None
                logger.warning("registry unreachable; retrying the end of job in 1 s")
                time.sleep(1.0)

    def _audit(self, event: str, job: TrainJob, **fields: Any) -> None:
        self.audit.record(event, job_id=job.id, forget_set_id=job.forget_set_id, worker=self.name, **fields)


def worker_name(index: int) -> str:
    """A name unique to this process and thread: host, pid and index."""
    return f"{socket.gethostname()}:{os.getpid()}:{index}"


def run_worker(settings: Any, count: int, log_level: str = "info") -> int:
    """``lethe worker``: train the shared registry's jobs for ``settings.model`` on ``count`` threads until stopped."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    url = settings.registry_url
    if url is None:
        raise ValueError("lethe worker needs a shared registry: --registry postgresql://USER@HOST/DB")
    if count < 1:
        raise ValueError("--workers must be at least 1 for lethe worker")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    model = LanguageModel.load(settings.model, settings, progress=True)
    local = settings.local_dir(settings.home, "worker")
    registry = PgRegistry(url, local, settings.max_import_unpacked_bytes, settings.job_max_attempts)
    audit = AuditLog(local / AUDIT_FILE)
    workers = [JobWorker(registry, model, audit, worker_name(i), settings.job_lease_s) for i in range(count)]
    for worker in workers:
        worker.start()
    print(
        f"lethe: worker training {model.name} jobs from {settings.registry_label} on {count} thread(s)",
        file=sys.stderr,
        flush=True,
    )
    stop.wait()
    for worker in workers:
        worker.stop()
    audit.close()
    registry.close()
    return 0
