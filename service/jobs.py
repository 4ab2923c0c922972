"""Background training jobs: one at a time, on a thread, cancellable, with throttled progress.

The runner knows nothing about forget sets: it calls ``execute(job)`` for each queued job on its
worker thread. ``ForgetSetManager`` supplies ``execute`` (train, save, go live) and records
states in the registry.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("lethe.jobs")


@dataclass
class TrainJob:
    """Everything one training needs; the rows live only in memory, for the job's lifetime."""

    id: str
    forget_set_id: str
    name: str
    method: str
    forget: list[Any]
    retain: list[Any] | None
    config: Any
    topic: str | None = None
    seed_prompts: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)


class ProgressReporter:
    """Turns the trainer's frequent ``(fraction, stage)`` calls into occasional writes."""

    def __init__(self, write: Callable[[float, str | None], None], min_interval_s: float = 0.25):
        self._write = write
        self._interval = min_interval_s
        self._last_time = 0.0
        self._last_stage: str | None = None

    def __call__(self, fraction: float, stage: str | None = None) -> None:
        now = time.monotonic()
        if stage != self._last_stage or fraction >= 1.0 or now - self._last_time >= self._interval:
            self._last_time = now
            self._last_stage = stage
            try:
                self._write(float(fraction), stage)
            except Exception as exc:  # progress must never break a training run
                logger.warning("could not record job progress: %s", type(exc).__name__)


class JobRunner:
    """A FIFO of training jobs executed one by one on a daemon thread."""

    def __init__(self, execute: Callable[[TrainJob], None]):
        self._execute = execute
        self._queue: queue.Queue[TrainJob | None] = queue.Queue()
        self._jobs: dict[str, TrainJob] = {}
        self._lock = threading.Lock()
        self._thread = threading.Thread(target=self._work, name="lethe-train", daemon=True)
        self._started = False
        self.stopping = False
        self.current: str | None = None

    def start(self) -> None:
        """Start the worker thread."""
        if not self._started:
            self._started = True
            self._thread.start()

    def submit(self, job: TrainJob) -> None:
        """Queue a job."""
        with self._lock:
            self._jobs[job.id] = job
        self._queue.put(job)

    def cancel(self, job_id: str) -> bool:
        """Ask a queued or running job to stop; False if this runner does not hold it."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None:
            return False
        job.cancel.set()
        return True

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel every job and stop the worker (a running trainer stops at its next check)."""
        self.stopping = True
        with self._lock:
            jobs = list(self._jobs.values())
        for job in jobs:
            job.cancel.set()
        self._queue.put(None)
        if self._thread.is_alive():
            self._thread.join(timeout)

    def _work(self) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            self.current = job.id
            try:
                self._execute(job)
            except Exception as exc:
                logger.error("job %s crashed: %s", job.id, type(exc).__name__)
            finally:
                self.current = None
                with self._lock:
                    self._jobs.pop(job.id, None)
