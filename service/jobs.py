"""Training jobs: what one needs (``TrainJob``), how it is trained (``train_artifact``), and the in-process runner.

``JobRunner`` (SQLite registry) runs jobs one at a time on a thread of the serving process, the
rows kept in memory only; it calls ``execute(job)``, which ``ForgetSetManager`` supplies (train,
save, go live) and records states in the registry. With a shared registry, workers
(``service.worker``) rebuild the job from its stored input (``job_from_input``) and train it with
the same ``train_artifact``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lethe.runtime.artifact import ArtifactError

if TYPE_CHECKING:
    from lethe.runtime.artifact import ForgetSetArtifact
    from lethe.runtime.model import LanguageModel

logger = logging.getLogger("lethe.jobs")
MAX_ERROR_CHARS = 500


def error_text(exc: BaseException) -> str:
    """An exception as a job's error: its type and message, cut short."""
    return f"{type(exc).__name__}: {exc}"[:MAX_ERROR_CHARS]


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
    entities: list[str] = field(default_factory=list)
    keep_topics: list[str] = field(default_factory=list)
    cancel: threading.Event = field(default_factory=threading.Event)


def job_from_input(job_id: str, forget_set_id: str, name: str, method: str, data: dict[str, Any]) -> TrainJob:
    """A job rebuilt from its stored training input (``forget``/``retain`` rows or ``topic``, ``options``).

    Raises ``TrainingDataError``, ``ValueError`` or ``TypeError`` if the input does not parse.
    """
    from lethe.training.data import parse_rows
    from lethe.training.trainer import TrainConfig

    forget = parse_rows(data["forget"], "forget") if data.get("forget") is not None else []
    retain = parse_rows(data["retain"], "retain", required=False) if data.get("retain") is not None else None
    config = TrainConfig.from_options(method, dict(data.get("options") or {}))
    return TrainJob(
        job_id, forget_set_id, name, method, forget, retain, config,
        topic=data.get("topic"), seed_prompts=list(data.get("seed_prompts") or []),
        entities=list(data.get("entities") or []), keep_topics=list(data.get("keep_topics") or []),
    )  # fmt: skip


def train_artifact(model: LanguageModel, job: TrainJob, progress: Callable[[float, str], None]) -> ForgetSetArtifact:
    """Train the job's forget set on ``model`` (from rows, or from a topic the model reveals); the artifact is
    checked to be the one asked for and to fit ``model``, and carries its request's summary and verification
    figures (``training.verification``), not saved. Raises ``TrainingCancelled`` if cancelled."""
    from lethe.training.trainer import train_forget_set, train_topic
    from lethe.training.verification import VERIFY_SHARE, attach_verification

    share = 1.0 - VERIFY_SHARE if job.config.verify else 1.0
    training = lambda fraction, stage: progress(share * fraction, stage)  # noqa: E731
    if job.topic is not None:
        artifact = train_topic(
            model, job.name, job.topic, job.seed_prompts, job.config,
            progress=training, cancel=job.cancel, forget_set_id=job.forget_set_id,
            entities=job.entities, keep_topics=job.keep_topics,
        )  # fmt: skip
    else:
        artifact = train_forget_set(
            model, job.name, job.forget, job.retain, job.config,
            progress=training, cancel=job.cancel, forget_set_id=job.forget_set_id,
        )  # fmt: skip
    if artifact.id != job.forget_set_id:
        raise ArtifactError(f"the trainer returned forget set {artifact.id}, expected {job.forget_set_id}")
    artifact.check_compatible(model.fingerprint, model.hidden_size)
    attach_verification(
        model, artifact, job.name, job.forget, job.retain, job.topic, job.seed_prompts, job.config,
        progress=lambda fraction, stage: progress(share + (1.0 - share) * fraction, stage), cancel=job.cancel,
    )  # fmt: skip
    return artifact


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
