"""The forget-set registry: SQLite (WAL) for records, ``artifacts/<id>/`` folders for the artifacts.

Every change is one transaction; artifact folders are written atomically by
``ForgetSetArtifact.save`` and removed by renaming them aside first. A forget set is ``ready``
only once its folder exists and its row says so; anything else found on disk at start-up is
debris of an interrupted write and is removed by ``collect_debris``.

Training data is never stored here (it is what the operator wants forgotten), so an interrupted
job cannot be resumed: ``recover_interrupted`` reports it failed.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lethe.runtime.artifact import utc_now, validate_id

ForgetSetState = Literal["training", "ready", "failed", "cancelled"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_JOB_STATES = ("queued", "running")
INTERRUPTED = "interrupted by a restart"
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS forget_sets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    enabled INTEGER NOT NULL DEFAULT 0,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    job_id TEXT,
    source TEXT NOT NULL DEFAULT 'api',
    metrics TEXT NOT NULL DEFAULT '{}',
    error TEXT
);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    forget_set_id TEXT NOT NULL,
    state TEXT NOT NULL,
    progress REAL NOT NULL DEFAULT 0,
    stage TEXT,
    error TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    options TEXT NOT NULL DEFAULT '{}',
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs(state);
"""


@dataclass
class ForgetSetRecord:
    """A row of ``forget_sets``."""

    id: str
    name: str
    method: str
    enabled: bool
    state: ForgetSetState
    created: str
    updated: str
    job_id: str | None
    source: str
    metrics: dict[str, Any] = field(default_factory=dict)
    error: str | None = None


@dataclass
class JobRecord:
    """A row of ``jobs``."""

    id: str
    forget_set_id: str
    state: JobState
    progress: float
    stage: str | None
    error: str | None
    metrics: dict[str, Any]
    options: dict[str, Any]
    created: str
    started: str | None
    finished: str | None


def new_job_id() -> str:
    """A fresh job id."""
    return "job-" + uuid.uuid4().hex[:16]


class Registry:
    """Forget-set and job records with their artifact folders under ``root``."""

    def __init__(self, root: Path):
        self.root = Path(root).expanduser()
        self.artifacts = self.root / "artifacts"
        self.artifacts.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        self._db = sqlite3.connect(self.root / "registry.sqlite3", check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA busy_timeout=5000")
        self._db.executescript(_SCHEMA)
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version == 0:
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        elif version != SCHEMA_VERSION:
            raise RuntimeError(f"registry schema version {version} is not supported (expected {SCHEMA_VERSION})")

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            else:
                self._db.execute("COMMIT")

    def close(self) -> None:
        """Close the database."""
        with self._lock:
            self._db.close()

    def artifact_dir(self, forget_set_id: str) -> Path:
        """Where a forget set's artifact lives."""
        return self.artifacts / validate_id(forget_set_id)

    # Forget sets -----------------------------------------------------------------------------

    def create_training(
        self, forget_set_id: str, name: str, method: str, job_id: str, options: dict[str, Any]
    ) -> tuple[ForgetSetRecord, JobRecord]:
        """Record a new forget set in state ``training`` and its ``queued`` job."""
        now = utc_now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO forget_sets (id, name, method, enabled, state, created, updated, job_id, source)"
                " VALUES (?, ?, ?, 0, 'training', ?, ?, ?, 'api')",
                (validate_id(forget_set_id), name, method, now, now, job_id),
            )
            db.execute(
                "INSERT INTO jobs (id, forget_set_id, state, progress, created, options)"
                " VALUES (?, ?, 'queued', 0, ?, ?)",
                (job_id, forget_set_id, now, json.dumps(options)),
            )
        record, job = self.get_forget_set(forget_set_id), self.get_job(job_id)
        assert record is not None and job is not None
        return record, job

    def insert_ready(self, forget_set_id: str, name: str, method: str, metrics: dict[str, Any], source: str) -> None:
        """Record an imported, ready and enabled forget set (its folder must already be in place)."""
        now = utc_now()
        with self._transaction() as db:
            db.execute(
                "INSERT INTO forget_sets (id, name, method, enabled, state, created, updated, source, metrics)"
                " VALUES (?, ?, ?, 1, 'ready', ?, ?, ?, ?)",
                (validate_id(forget_set_id), name, method, now, now, source, json.dumps(metrics, default=str)),
            )

    def get_forget_set(self, forget_set_id: str) -> ForgetSetRecord | None:
        """One forget set, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM forget_sets WHERE id = ?", (forget_set_id,)).fetchone()
        return _forget_set(row) if row else None

    def list_forget_sets(self) -> list[ForgetSetRecord]:
        """Every forget set, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM forget_sets ORDER BY created, id").fetchall()
        return [_forget_set(r) for r in rows]

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord | None:
        """Switch a ready forget set on or off; ``None`` if it does not exist."""
        with self._transaction() as db:
            db.execute(
                "UPDATE forget_sets SET enabled = ?, updated = ? WHERE id = ?",
                (int(enabled), utc_now(), forget_set_id),
            )
        return self.get_forget_set(forget_set_id)

    def delete_forget_set(self, forget_set_id: str) -> bool:
        """Delete the row, then the folder (renamed aside first); False if there was no row."""
        with self._transaction() as db:
            deleted = db.execute("DELETE FROM forget_sets WHERE id = ?", (forget_set_id,)).rowcount
        remove_folder(self.artifact_dir(forget_set_id))
        return bool(deleted)

    # Jobs -------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return _job(row) if row else None

    def list_jobs(self, states: tuple[str, ...] | None = None) -> list[JobRecord]:
        """Jobs, oldest first, optionally only in ``states``."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
        jobs = [_job(r) for r in rows]
        return [j for j in jobs if states is None or j.state in states]

    def job_started(self, job_id: str) -> bool:
        """Move a queued job to ``running``; False if it was not queued any more."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'running', started = ? WHERE id = ? AND state = 'queued'",
                (utc_now(), job_id),
            ).rowcount
        return bool(changed)

    def job_progress(self, job_id: str, progress: float, stage: str | None) -> None:
        """Record a running job's progress (0..1) and stage."""
        with self._transaction() as db:
            db.execute(
                "UPDATE jobs SET progress = ?, stage = ? WHERE id = ? AND state = 'running'",
                (min(1.0, max(0.0, progress)), stage, job_id),
            )

    def job_succeeded(self, job_id: str, forget_set_id: str, metrics: dict[str, Any]) -> bool:
        """Mark the job done and its forget set ready and enabled, in one transaction.

        Returns False if the job was cancelled or its forget set deleted meanwhile (the job is
        then recorded cancelled); the caller discards the artifact folder.
        """
        now = utc_now()
        encoded = json.dumps(metrics, default=str)
        with self._transaction() as db:
            job = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if job is None or job["state"] != "running":
                return False
            changed = db.execute(
                "UPDATE forget_sets SET state = 'ready', enabled = 1, updated = ?, metrics = ?, error = NULL"
                " WHERE id = ? AND state = 'training'",
                (now, encoded, forget_set_id),
            ).rowcount
            if not changed:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', finished = ?, error = ? WHERE id = ?",
                    (now, "the forget set was deleted during training", job_id),
                )
                return False
            db.execute(
                "UPDATE jobs SET state = 'succeeded', progress = 1, finished = ?, metrics = ?, error = NULL"
                " WHERE id = ?",
                (now, encoded, job_id),
            )
        return True

    def job_ended(self, job_id: str, state: Literal["failed", "cancelled"], error: str | None) -> None:
        """Mark a job failed or cancelled, and its forget set likewise (never enabled)."""
        now = utc_now()
        with self._transaction() as db:
            row = db.execute("SELECT forget_set_id FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return
            db.execute(
                "UPDATE jobs SET state = ?, error = ?, finished = ? WHERE id = ? AND state IN ('queued', 'running')",
                (state, error, now, job_id),
            )
            db.execute(
                "UPDATE forget_sets SET state = ?, enabled = 0, error = ?, updated = ?"
                " WHERE id = ? AND state = 'training'",
                (state, error, now, row["forget_set_id"]),
            )

    def recover_interrupted(self) -> list[str]:
        """At start-up: jobs left queued or running by a previous process become failed; returns their ids."""
        now = utc_now()
        with self._transaction() as db:
            rows = db.execute("SELECT id, forget_set_id FROM jobs WHERE state IN ('queued', 'running')").fetchall()
            for row in rows:
                db.execute(
                    "UPDATE jobs SET state = 'failed', error = ?, finished = ? WHERE id = ?",
                    (INTERRUPTED, now, row["id"]),
                )
            db.execute(
                "UPDATE forget_sets SET state = 'failed', enabled = 0, error = ?, updated = ? WHERE state = 'training'",
                (INTERRUPTED, now),
            )
        return [row["id"] for row in rows]

    def collect_debris(self) -> list[str]:
        """Remove artifact folders no ready forget set owns (interrupted writes, deletes); returns their names."""
        ready = {r.id for r in self.list_forget_sets() if r.state == "ready"}
        removed = []
        for entry in self.artifacts.iterdir():
            if entry.name not in ready:
                remove_folder(entry)
                removed.append(entry.name)
        return removed


def remove_folder(folder: Path) -> None:
    """Rename ``folder`` aside (so it vanishes at once) and delete it."""
    if not folder.exists() and not folder.is_symlink():
        return
    if folder.is_symlink() or folder.is_file():
        folder.unlink(missing_ok=True)
        return
    retired = folder.with_name(f".deleted-{folder.name}-{uuid.uuid4().hex[:8]}")
    try:
        os.replace(folder, retired)
    except FileNotFoundError:
        return
    shutil.rmtree(retired, ignore_errors=True)


def _forget_set(row: sqlite3.Row) -> ForgetSetRecord:
    return ForgetSetRecord(
        id=row["id"],
        name=row["name"],
        method=row["method"],
        enabled=bool(row["enabled"]),
        state=row["state"],
        created=row["created"],
        updated=row["updated"],
        job_id=row["job_id"],
        source=row["source"],
        metrics=json.loads(row["metrics"] or "{}"),
        error=row["error"],
    )


def _job(row: sqlite3.Row) -> JobRecord:
    return JobRecord(
        id=row["id"],
        forget_set_id=row["forget_set_id"],
        state=row["state"],
        progress=float(row["progress"]),
        stage=row["stage"],
        error=row["error"],
        metrics=json.loads(row["metrics"] or "{}"),
        options=json.loads(row["options"] or "{}"),
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
    )
