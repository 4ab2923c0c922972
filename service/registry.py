"""The embedded forget-set registry: SQLite (WAL) for records, ``artifacts/<id>/`` folders for the artifacts.

One process owns the folder (``service.pg_registry`` is the shared registry). Every change is one
transaction; artifact folders are written atomically by ``ForgetSetArtifact.save`` and removed by
renaming them aside first. A forget set is ``ready`` only once its folder exists and its row says
so; anything else found at start-up (artifact folders of interrupted writes, ``.import-*``
scratch folders of interrupted uploads) is debris and is removed by ``collect_debris``. Deleted
ids are remembered, so a forget set imported at start (``--demo``, ``--forget-set``) and deleted
through the API stays deleted across restarts.

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
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from lethe.runtime.artifact import ForgetSetArtifact, utc_now, validate_id

ForgetSetState = Literal["training", "ready", "failed", "cancelled"]
JobState = Literal["queued", "running", "succeeded", "failed", "cancelled"]
ACTIVE_JOB_STATES = ("queued", "running")
INTERRUPTED = "interrupted by a restart"
DELETED_DURING_TRAINING = "the forget set was deleted"
IMPORT_SCRATCH_PREFIX = ".import-"

_SCHEMA_V1 = """
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
# Ids deleted through the API: start-up imports (--demo, --forget-set) do not bring them back.
_SCHEMA_V2 = """
CREATE TABLE IF NOT EXISTS deleted_forget_sets (id TEXT PRIMARY KEY, deleted TEXT NOT NULL);
"""
MIGRATIONS = {1: _SCHEMA_V1, 2: _SCHEMA_V2}
SCHEMA_VERSION = max(MIGRATIONS)


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
    # Which artifact a ready record names: its id here (one folder per id), the archive's hash in PostgreSQL.
    version: str | None = None


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
    """Forget-set and job records with their artifact folders under ``root`` (one process at a time)."""

    shared = False  # no other process changes it: the screen needs no re-sync

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
        self._migrate()

    def _migrate(self) -> None:
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise RuntimeError(f"registry schema version {version} is not supported (expected {SCHEMA_VERSION})")
        for step in range(version + 1, SCHEMA_VERSION + 1):
            # user_version is part of the transaction: a crash leaves the previous version and its tables.
            self._db.executescript(f"BEGIN IMMEDIATE;{MIGRATIONS[step]}PRAGMA user_version={step};COMMIT;")

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

    def artifact_dir(self, forget_set_id: str, version: str | None = None) -> Path:
        """Where a forget set's artifact lives (there is one version per id here)."""
        return self.artifacts / validate_id(forget_set_id)

    # Forget sets -----------------------------------------------------------------------------

    def create_training(
        self,
        forget_set_id: str,
        name: str,
        method: str,
        job_id: str,
        options: dict[str, Any],
        training_input: Mapping[str, Any] | None = None,
        fingerprint: str = "",
    ) -> tuple[ForgetSetRecord, JobRecord]:
        """Record a new forget set in state ``training`` and its ``queued`` job.

        ``training_input`` and ``fingerprint`` are for workers of a shared registry; here the
        rows stay in the memory of the process that trains them and are ignored.
        """
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

    def store_ready(self, artifact: ForgetSetArtifact, source: str) -> str | None:
        """Write an imported artifact and record it ready and enabled; ``None`` if its id is already registered.

        Returns the version the screen keeps (the id: a folder here is never replaced).
        """
        with self._lock:
            if self.get_forget_set(artifact.id) is not None:
                return None
            artifact.save(self.artifact_dir(artifact.id))
            manifest = artifact.manifest
            self.insert_ready(artifact.id, manifest.name, manifest.method, dict(manifest.metrics), source)
            with self._transaction() as db:
                db.execute("DELETE FROM deleted_forget_sets WHERE id = ?", (artifact.id,))
        return artifact.id

    def get_forget_set(self, forget_set_id: str) -> ForgetSetRecord | None:
        """One forget set, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM forget_sets WHERE id = ?", (forget_set_id,)).fetchone()
        return forget_set_record(row) if row else None

    def list_forget_sets(self) -> list[ForgetSetRecord]:
        """Every forget set, oldest first."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM forget_sets ORDER BY created, id").fetchall()
        return [forget_set_record(r) for r in rows]

    def live_versions(self) -> dict[str, str]:
        """Ready and enabled forget sets: id -> the version of their artifact (here the id itself)."""
        return {r.id: r.id for r in self.list_forget_sets() if r.state == "ready" and r.enabled}

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord | None:
        """Switch a ready forget set on or off; ``None`` if it does not exist."""
        with self._transaction() as db:
            db.execute(
                "UPDATE forget_sets SET enabled = ?, updated = ? WHERE id = ?",
                (int(enabled), utc_now(), forget_set_id),
            )
        return self.get_forget_set(forget_set_id)

    def delete_forget_set(self, forget_set_id: str) -> bool:
        """Delete the row (cancelling its active job, remembering the id), then the folder; False if no row."""
        now = utc_now()
        with self._transaction() as db:
            row = db.execute("SELECT job_id FROM forget_sets WHERE id = ?", (forget_set_id,)).fetchone()
            if row is None:
                return False
            db.execute("DELETE FROM forget_sets WHERE id = ?", (forget_set_id,))
            if row["job_id"] is not None:
                db.execute(
                    "UPDATE jobs SET state = 'cancelled', error = ?, finished = ? WHERE id = ?"
                    " AND state IN ('queued', 'running')",
                    (DELETED_DURING_TRAINING, now, row["job_id"]),
                )
            db.execute(
                "INSERT INTO deleted_forget_sets (id, deleted) VALUES (?, ?)"
                " ON CONFLICT (id) DO UPDATE SET deleted = excluded.deleted",
                (forget_set_id, now),
            )
        remove_folder(self.artifact_dir(forget_set_id))
        return True

    def was_deleted(self, forget_set_id: str) -> bool:
        """Whether this id was deleted through the API (and not imported again since)."""
        with self._lock:
            row = self._db.execute("SELECT 1 FROM deleted_forget_sets WHERE id = ?", (forget_set_id,)).fetchone()
        return row is not None

    # Jobs -------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job, or ``None``."""
        with self._lock:
            row = self._db.execute("SELECT * FROM jobs WHERE id = ?", (job_id,)).fetchone()
        return job_record(row) if row else None

    def list_jobs(self, states: tuple[str, ...] | None = None) -> list[JobRecord]:
        """Jobs, oldest first, optionally only in ``states``."""
        with self._lock:
            rows = self._db.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
        jobs = [job_record(r) for r in rows]
        return [j for j in jobs if states is None or j.state in states]

    def job_started(self, job_id: str) -> bool:
        """Move a queued job to ``running``; False if it was not queued any more."""
        with self._transaction() as db:
            changed = db.execute(
                "UPDATE jobs SET state = 'running', started = ? WHERE id = ? AND state = 'queued'",
                (utc_now(), job_id),
            ).rowcount
        return bool(changed)

    def job_progress(self, job_id: str, progress: float, stage: str | None, worker: str | None = None) -> None:
        """Record a running job's progress (0..1) and stage (``worker``: for the shared registry's workers)."""
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

    def publish(
        self, job_id: str, forget_set_id: str, artifact: ForgetSetArtifact, worker: str | None = None
    ) -> str | None:
        """Save a trained artifact and make it ready and enabled; ``None`` (and no folder) if the job was cancelled
        or its forget set deleted meanwhile. Returns the version the screen keeps."""
        folder = self.artifact_dir(forget_set_id)
        artifact.save(folder)
        if self.job_succeeded(job_id, forget_set_id, dict(artifact.manifest.metrics)):
            return forget_set_id
        remove_folder(folder)
        return None

    def job_ended(
        self, job_id: str, state: Literal["failed", "cancelled"], error: str | None, worker: str | None = None
    ) -> None:
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
        """Remove artifact folders no ready forget set owns (interrupted writes, deletes) and the scratch folders
        of interrupted imports; returns their names."""
        ready = {r.id for r in self.list_forget_sets() if r.state == "ready"}
        removed = remove_import_scratch(self.root)
        for entry in self.artifacts.iterdir():
            if entry.name not in ready:
                remove_folder(entry)
                removed.append(entry.name)
        return removed


def remove_import_scratch(root: Path) -> list[str]:
    """Remove the ``.import-*`` scratch folders an interrupted upload left in ``root``; returns their names."""
    removed = []
    for entry in root.glob(IMPORT_SCRATCH_PREFIX + "*"):
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


def _json(value: Any) -> dict[str, Any]:
    """A JSON column: text in SQLite, already decoded in PostgreSQL."""
    if isinstance(value, str):
        return json.loads(value or "{}")
    return dict(value or {})


def forget_set_record(row: Mapping[str, Any] | sqlite3.Row) -> ForgetSetRecord:
    """A ``forget_sets`` row of either registry as a record."""
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
        metrics=_json(row["metrics"]),
        error=row["error"],
        version=row["artifact_sha256"] if "artifact_sha256" in row.keys() else row["id"],  # noqa: SIM118 - sqlite3.Row
    )


def job_record(row: Mapping[str, Any] | sqlite3.Row) -> JobRecord:
    """A ``jobs`` row of either registry as a record."""
    return JobRecord(
        id=row["id"],
        forget_set_id=row["forget_set_id"],
        state=row["state"],
        progress=float(row["progress"]),
        stage=row["stage"],
        error=row["error"],
        metrics=_json(row["metrics"]),
        options=_json(row["options"]),
        created=row["created"],
        started=row["started"],
        finished=row["finished"],
    )
