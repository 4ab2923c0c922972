"""The shared forget-set registry in PostgreSQL: records, jobs and the artifacts themselves.

Replicas and ``lethe worker`` processes on any machine share it; nothing else is shared (no disk).

- Forget sets and artifacts: an artifact is stored as the archive ``/admin/forget-sets/import``
  reads, named by its SHA-256 (``artifacts``); a ready forget set names its archive. Each process
  unpacks an archive once into its own cache (``service.artifact_cache``).
- Changes: every transaction that changes what is live sends ``NOTIFY lethe_forget_sets``;
  each replica ``LISTEN``s and re-syncs its screen (``watch``), and re-syncs every few seconds
  anyway in case a notification was lost.
- Jobs: a queued job keeps its training input (the rows) until it ends, when the input is erased.
  Workers ``claim`` jobs with ``FOR UPDATE SKIP LOCKED`` (only jobs for their model's
  fingerprint), ``heartbeat`` while training and ``publish`` the artifact, the forget set's state
  and the job's success in one transaction, so a worker that dies never leaves anything
  half-written live. ``reap`` (run by every replica and worker) puts a job whose worker sent no
  heartbeat for its lease back in the queue, until it has been tried ``max_attempts`` times;
  then it fails with an error saying so. Cancelling sets a flag the worker sees at its next
  heartbeat, so it works from any replica.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from psycopg.rows import dict_row
from psycopg.types.json import Jsonb

from lethe.runtime.artifact import ForgetSetArtifact, utc_now, validate_id
from lethe.service.artifact_cache import ArtifactCache, pack
from lethe.service.pg_connection import PgConnections, RegistryUnavailable, listen
from lethe.service.pg_schema import migrate
from lethe.service.registry import (
    DELETED_DURING_TRAINING,
    ForgetSetRecord,
    JobRecord,
    forget_set_record,
    job_record,
    remove_import_scratch,
)
from lethe.service.registry_settings import redact_url

logger = logging.getLogger("lethe.registry")
CHANNEL = "lethe_forget_sets"
CANCELLED_BY_OPERATOR = "cancelled by an operator"
Heartbeat = Literal["ok", "cancel", "lost"]

# Jobs whose worker missed its lease: requeued, or failed once they have used their attempts.
_EXPIRED = """
SELECT id, attempts, max_attempts, lease_s, cancel_requested FROM jobs
WHERE state = 'running' AND heartbeat < now() - make_interval(secs => lease_s)
FOR UPDATE SKIP LOCKED
"""
_CLAIM = """
UPDATE jobs SET state = 'running', worker = %(worker)s, heartbeat = now(), lease_s = %(lease)s,
    attempts = attempts + 1, started = coalesce(started, %(now)s), progress = 0, stage = NULL
WHERE id = (
    SELECT id FROM jobs WHERE state = 'queued' AND fingerprint = %(fingerprint)s AND NOT cancel_requested
    ORDER BY created, id FOR UPDATE SKIP LOCKED LIMIT 1
)
RETURNING *
"""


@dataclass
class ClaimedJob:
    """A job a worker now owns, with what it needs to train it."""

    job: JobRecord
    name: str
    method: str
    input: dict[str, Any]
    attempt: int


class PgRegistry:
    """The registry in a PostgreSQL database, shared by every replica and worker; ``root`` is this process's folder."""

    shared = True

    def __init__(self, url: str, root: Path, max_unpacked: int, max_attempts: int = 3, connect_wait_s: float = 30.0):
        self.url = url
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.max_attempts = max_attempts
        self.cache = ArtifactCache(self.root / "artifacts", max_unpacked)
        self._db = PgConnections(url)
        self._open(connect_wait_s)

    def _open(self, wait_s: float) -> None:
        """Apply migrations, waiting up to ``wait_s`` for the database to accept connections."""
        deadline = time.monotonic() + wait_s
        while True:
            try:
                with self._db.transaction() as conn:
                    migrate(conn)
                return
            except RegistryUnavailable:
                if time.monotonic() > deadline:
                    raise ValueError(f"cannot reach the registry database at {redact_url(self.url)}") from None
                time.sleep(0.5)

    def close(self) -> None:
        """Close the connections."""
        self._db.close()

    def watch(self, on_change: Callable[[], None], stop: threading.Event, interval: float) -> None:
        """Call ``on_change`` after every change notification and every ``interval`` s, until ``stop`` (blocks)."""
        listen(self.url, CHANNEL, on_change, stop, interval)

    # Forget sets -----------------------------------------------------------------------------

    def artifact_dir(self, forget_set_id: str, version: str | None = None) -> Path:
        """The local folder of the forget set's artifact ``version`` (default: its current one), fetched into the
        cache on first use."""
        if version is None:
            with self._db.transaction() as conn:
                row = conn.execute(
                    "SELECT artifact_sha256 FROM forget_sets WHERE id = %s", (validate_id(forget_set_id),)
                ).fetchone()
            version = row[0] if row is not None else None
        if version is None:
            return self.cache.folder / f".none-{validate_id(forget_set_id)}"
        sha = version
        return self.cache.get(sha, lambda: self._archive(sha))

    def _archive(self, sha256: str) -> bytes:
        with self._db.transaction() as conn:
            row = conn.execute("SELECT archive FROM artifacts WHERE sha256 = %s", (sha256,)).fetchone()
        if row is None:
            raise FileNotFoundError(f"the registry holds no archive {sha256[:12]}")
        return bytes(row[0])

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
        """Record a new forget set in state ``training`` and its ``queued`` job, with the input a worker trains on."""
        now = utc_now()
        with self._db.transaction() as conn:
            conn.execute(
                "INSERT INTO forget_sets (id, name, method, enabled, state, created, updated, job_id, source)"
                " VALUES (%s, %s, %s, FALSE, 'training', %s, %s, %s, 'api')",
                (validate_id(forget_set_id), name, method, now, now, job_id),
            )
            conn.execute(
                "INSERT INTO jobs (id, forget_set_id, state, created, options, fingerprint, input, max_attempts)"
                " VALUES (%s, %s, 'queued', %s, %s, %s, %s, %s)",
                (job_id, forget_set_id, now, Jsonb(options), fingerprint, Jsonb(dict(training_input or {})),
                 self.max_attempts),
            )  # fmt: skip
        record, job = self.get_forget_set(forget_set_id), self.get_job(job_id)
        assert record is not None and job is not None
        return record, job

    def store_ready(self, artifact: ForgetSetArtifact, source: str) -> str | None:
        """Store an imported artifact, ready and enabled; ``None`` if its id is already registered.

        Returns the archive's hash (the version replicas load)."""
        data, sha = pack(artifact)
        manifest = artifact.manifest
        now = utc_now()
        with self._db.transaction() as conn:
            inserted = conn.execute(
                "INSERT INTO forget_sets (id, name, method, enabled, state, created, updated, source, metrics,"
                " artifact_sha256) VALUES (%s, %s, %s, TRUE, 'ready', %s, %s, %s, %s, %s) ON CONFLICT (id) DO NOTHING",
                (validate_id(artifact.id), manifest.name, manifest.method, now, now, source,
                 Jsonb(dict(manifest.metrics)), sha),
            ).rowcount  # fmt: skip
            if not inserted:
                return None
            conn.execute(
                "INSERT INTO artifacts (sha256, archive) VALUES (%s, %s) ON CONFLICT (sha256) DO NOTHING", (sha, data)
            )
            conn.execute("DELETE FROM deleted_forget_sets WHERE id = %s", (artifact.id,))
            _notify(conn, artifact.id)
        self.cache.get(sha, lambda: data)
        return sha

    def get_forget_set(self, forget_set_id: str) -> ForgetSetRecord | None:
        """One forget set, or ``None``."""
        with self._db.transaction() as conn:
            row = (
                conn.cursor(row_factory=dict_row)
                .execute("SELECT * FROM forget_sets WHERE id = %s", (forget_set_id,))
                .fetchone()
            )
        return forget_set_record(row) if row else None

    def list_forget_sets(self) -> list[ForgetSetRecord]:
        """Every forget set, oldest first."""
        with self._db.transaction() as conn:
            rows = conn.cursor(row_factory=dict_row).execute("SELECT * FROM forget_sets ORDER BY created, id")
            return [forget_set_record(r) for r in rows.fetchall()]

    def live_versions(self) -> dict[str, str]:
        """Ready and enabled forget sets: id -> the hash of their artifact's archive."""
        with self._db.transaction() as conn:
            rows = conn.execute(
                "SELECT id, artifact_sha256 FROM forget_sets"
                " WHERE state = 'ready' AND enabled AND artifact_sha256 IS NOT NULL"
            ).fetchall()
        return {r[0]: r[1] for r in rows}

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord | None:
        """Switch a forget set on or off for every replica; ``None`` if it does not exist."""
        with self._db.transaction() as conn:
            row = (
                conn.cursor(row_factory=dict_row)
                .execute(
                    "UPDATE forget_sets SET enabled = %s, updated = %s WHERE id = %s RETURNING *",
                    (enabled, utc_now(), forget_set_id),
                )
                .fetchone()
            )
            if row is not None:
                _notify(conn, forget_set_id)
        return forget_set_record(row) if row else None

    def delete_forget_set(self, forget_set_id: str) -> bool:
        """Delete a forget set (cancelling its active job, remembering the id, dropping an unshared archive)."""
        now = utc_now()
        with self._db.transaction() as conn:
            owner = conn.execute("SELECT job_id FROM forget_sets WHERE id = %s", (forget_set_id,)).fetchone()
            if owner is not None and owner[0] is not None:
                # The job row first, as publish and the other job transitions lock it: no deadlock between them.
                conn.execute("SELECT 1 FROM jobs WHERE id = %s FOR UPDATE", (owner[0],))
            row = conn.execute(
                "DELETE FROM forget_sets WHERE id = %s RETURNING job_id, artifact_sha256", (forget_set_id,)
            ).fetchone()
            if row is None:
                return False
            job_id, sha = row
            if job_id is not None:
                _end_job(conn, job_id, "cancelled", DELETED_DURING_TRAINING)
            conn.execute(
                "INSERT INTO deleted_forget_sets (id, deleted) VALUES (%s, %s)"
                " ON CONFLICT (id) DO UPDATE SET deleted = excluded.deleted",
                (forget_set_id, now),
            )
            if sha is not None:
                conn.execute(
                    "DELETE FROM artifacts WHERE sha256 = %s"
                    " AND NOT EXISTS (SELECT 1 FROM forget_sets WHERE artifact_sha256 = %s)",
                    (sha, sha),
                )
            _notify(conn, forget_set_id)
        return True

    def was_deleted(self, forget_set_id: str) -> bool:
        """Whether this id was deleted through the API (and not imported again since)."""
        with self._db.transaction() as conn:
            row = conn.execute("SELECT 1 FROM deleted_forget_sets WHERE id = %s", (forget_set_id,)).fetchone()
        return row is not None

    # Jobs -------------------------------------------------------------------------------------

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job, or ``None``."""
        with self._db.transaction() as conn:
            row = conn.cursor(row_factory=dict_row).execute("SELECT * FROM jobs WHERE id = %s", (job_id,)).fetchone()
        return job_record(row) if row else None

    def list_jobs(self, states: tuple[str, ...] | None = None) -> list[JobRecord]:
        """Jobs, oldest first, optionally only in ``states``."""
        with self._db.transaction() as conn:
            cursor = conn.cursor(row_factory=dict_row)
            if states is None:
                rows = cursor.execute("SELECT * FROM jobs ORDER BY created, id").fetchall()
            else:
                rows = cursor.execute(
                    "SELECT * FROM jobs WHERE state = ANY(%s) ORDER BY created, id", (list(states),)
                ).fetchall()
        return [job_record(r) for r in rows]

    def claim(self, worker: str, fingerprint: str, lease_s: float) -> ClaimedJob | None:
        """Take the oldest queued job for this model, if any; the caller must heartbeat within ``lease_s``."""
        with self._db.transaction() as conn:
            row = (
                conn.cursor(row_factory=dict_row)
                .execute(_CLAIM, {"worker": worker, "lease": lease_s, "now": utc_now(), "fingerprint": fingerprint})
                .fetchone()
            )
            if row is None:
                return None
            owner = conn.execute(
                "SELECT name, method FROM forget_sets WHERE id = %s", (row["forget_set_id"],)
            ).fetchone()
            if owner is None:
                _end_job(conn, row["id"], "cancelled", DELETED_DURING_TRAINING)
                return None
        return ClaimedJob(job_record(row), owner[0], owner[1], dict(row["input"] or {}), int(row["attempts"]))

    def heartbeat(self, job_id: str, worker: str) -> Heartbeat:
        """Renew a worker's lease: ``ok``, ``cancel`` (an operator asked) or ``lost`` (no longer this worker's)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "UPDATE jobs SET heartbeat = now() WHERE id = %s AND state = 'running' AND worker = %s"
                " RETURNING cancel_requested",
                (job_id, worker),
            ).fetchone()
        if row is None:
            return "lost"
        return "cancel" if row[0] else "ok"

    def job_progress(self, job_id: str, progress: float, stage: str | None, worker: str | None = None) -> None:
        """Record a running job's progress (0..1) and stage, if ``worker`` still owns it."""
        with self._db.transaction() as conn:
            conn.execute(
                "UPDATE jobs SET progress = %s, stage = %s WHERE id = %s AND state = 'running'"
                " AND (%s::text IS NULL OR worker = %s)",
                (min(1.0, max(0.0, progress)), stage, job_id, worker, worker),
            )

    def publish(
        self, job_id: str, forget_set_id: str, artifact: ForgetSetArtifact, worker: str | None = None
    ) -> str | None:
        """In one transaction: store the archive, make the forget set ready and enabled, mark the job succeeded.

        ``None`` (nothing stored) if ``worker`` no longer owns the job, it was cancelled, or its
        forget set was deleted. Returns the archive's hash.
        """
        data, sha = pack(artifact)
        now = utc_now()
        with self._db.transaction() as conn:
            job = conn.execute(
                "SELECT state, worker, cancel_requested FROM jobs WHERE id = %s FOR UPDATE", (job_id,)
            ).fetchone()
            if job is None or job[0] != "running" or (worker is not None and job[1] != worker):
                return None
            if job[2]:
                _end_job(conn, job_id, "cancelled", CANCELLED_BY_OPERATOR)
                return None
            metrics = Jsonb(dict(artifact.manifest.metrics))
            changed = conn.execute(
                "UPDATE forget_sets SET state = 'ready', enabled = TRUE, updated = %s, metrics = %s, error = NULL,"
                " artifact_sha256 = %s WHERE id = %s AND state = 'training'",
                (now, metrics, sha, forget_set_id),
            ).rowcount
            if not changed:
                _end_job(conn, job_id, "cancelled", DELETED_DURING_TRAINING)
                return None
            conn.execute(
                "INSERT INTO artifacts (sha256, archive) VALUES (%s, %s) ON CONFLICT (sha256) DO NOTHING", (sha, data)
            )
            conn.execute(
                "UPDATE jobs SET state = 'succeeded', progress = 1, finished = %s, metrics = %s, error = NULL,"
                " input = NULL WHERE id = %s",
                (now, metrics, job_id),
            )
            _notify(conn, forget_set_id)
        return sha

    def job_ended(
        self, job_id: str, state: Literal["failed", "cancelled"], error: str | None, worker: str | None = None
    ) -> None:
        """Mark an active job failed or cancelled (if ``worker`` still owns it), its forget set likewise."""
        with self._db.transaction() as conn:
            _end_job(conn, job_id, state, error, worker)

    def release(self, job_id: str, worker: str) -> None:
        """A worker stopping on purpose hands its job back to the queue (the attempt is not counted)."""
        with self._db.transaction() as conn:
            row = conn.execute(
                "SELECT cancel_requested FROM jobs WHERE id = %s AND state = 'running' AND worker = %s FOR UPDATE",
                (job_id, worker),
            ).fetchone()
            if row is None:
                return
            if row[0]:
                _end_job(conn, job_id, "cancelled", CANCELLED_BY_OPERATOR)
                return
            conn.execute(
                "UPDATE jobs SET state = 'queued', worker = NULL, heartbeat = NULL, progress = 0, stage = NULL,"
                " attempts = greatest(attempts - 1, 0) WHERE id = %s",
                (job_id,),
            )

    def request_cancel(self, job_id: str) -> JobRecord | None:
        """Cancel a queued job now, or ask a running one's worker to stop; ``None`` if there is no such job."""
        with self._db.transaction() as conn:
            row = conn.execute("SELECT state FROM jobs WHERE id = %s FOR UPDATE", (job_id,)).fetchone()
            if row is None:
                return None
            if row[0] == "queued":
                _end_job(conn, job_id, "cancelled", CANCELLED_BY_OPERATOR)
            elif row[0] == "running":
                conn.execute("UPDATE jobs SET cancel_requested = TRUE WHERE id = %s", (job_id,))
        return self.get_job(job_id)

    def reap(self) -> list[str]:
        """Requeue (or fail, after ``max_attempts``) running jobs whose worker's lease ran out; returns their ids."""
        with self._db.transaction() as conn:
            expired = conn.execute(_EXPIRED).fetchall()
            for job_id, attempts, max_attempts, lease_s, cancel_requested in expired:
                if cancel_requested:
                    _end_job(conn, job_id, "cancelled", CANCELLED_BY_OPERATOR)
                elif attempts >= max_attempts:
                    error = (
                        f"training was abandoned {attempts} times: its worker stopped sending heartbeats for "
                        f"{lease_s:g} s each time; not retried after {max_attempts} attempts"
                    )
                    _end_job(conn, job_id, "failed", error)
                else:
                    conn.execute(
                        "UPDATE jobs SET state = 'queued', worker = NULL, heartbeat = NULL, progress = 0, stage = NULL"
                        " WHERE id = %s",
                        (job_id,),
                    )
        for job_id, attempts, max_attempts, *_ in expired:
            logger.warning("job %s lost its worker (attempt %d of %d)", job_id, attempts, max_attempts)
        return [row[0] for row in expired]

    def recover_interrupted(self) -> list[str]:
        """Nothing to do at start: jobs belong to workers, and ``reap`` requeues those whose worker died."""
        return []

    def collect_debris(self) -> list[str]:
        """Remove import scratch folders and cached archives no forget set names any more; returns their names."""
        with self._db.transaction() as conn:
            rows = conn.execute("SELECT artifact_sha256 FROM forget_sets WHERE artifact_sha256 IS NOT NULL").fetchall()
        return remove_import_scratch(self.root) + self.cache.collect(r[0] for r in rows)


def _notify(conn: Any, forget_set_id: str) -> None:
    """Tell every replica what changed (delivered when the transaction commits)."""
    conn.execute("SELECT pg_notify(%s, %s)", (CHANNEL, forget_set_id))


def _end_job(
    conn: Any, job_id: str, state: Literal["failed", "cancelled"], error: str | None, worker: str | None = None
) -> None:
    """End an active job (erasing its training input) and its training forget set, inside ``conn``'s transaction."""
    row = conn.execute(
        "UPDATE jobs SET state = %s, error = %s, finished = %s, input = NULL, worker = coalesce(%s, worker)"
        " WHERE id = %s AND state IN ('queued', 'running') AND (%s::text IS NULL OR worker = %s)"
        " RETURNING forget_set_id",
        (state, error, utc_now(), worker, job_id, worker, worker),
    ).fetchone()
    if row is None:
        return
    conn.execute(
        "UPDATE forget_sets SET state = %s, enabled = FALSE, error = %s, updated = %s WHERE id = %s"
        " AND state = 'training'",
        (state, error, utc_now(), row[0]),
    )
    _notify(conn, row[0])
