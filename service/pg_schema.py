"""The shared registry's PostgreSQL schema: numbered migrations, applied once, safe when processes start together.

``migrate`` takes a transaction-scoped advisory lock before it looks at the version table, so
replicas and workers starting at the same moment apply each migration exactly once and in order;
the others wait for the lock and then find nothing left to do. A database written by a newer Lethe
(a version this code does not know) is refused rather than used.
"""

from __future__ import annotations

import psycopg

# Any constant works; it only has to be the same for every Lethe process using the database.
MIGRATION_LOCK = 0x1E7E_0001

MIGRATIONS: dict[int, str] = {
    1: """
CREATE TABLE forget_sets (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL,
    method TEXT NOT NULL,
    enabled BOOLEAN NOT NULL DEFAULT FALSE,
    state TEXT NOT NULL,
    created TEXT NOT NULL,
    updated TEXT NOT NULL,
    job_id TEXT,
    source TEXT NOT NULL DEFAULT 'api',
    metrics JSONB NOT NULL DEFAULT '{}',
    error TEXT,
    artifact_sha256 TEXT
);
CREATE TABLE artifacts (
    sha256 TEXT PRIMARY KEY,
    archive BYTEA NOT NULL,
    created TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TABLE jobs (
    id TEXT PRIMARY KEY,
    forget_set_id TEXT NOT NULL,
    state TEXT NOT NULL,
    progress DOUBLE PRECISION NOT NULL DEFAULT 0,
    stage TEXT,
    error TEXT,
    metrics JSONB NOT NULL DEFAULT '{}',
    options JSONB NOT NULL DEFAULT '{}',
    created TEXT NOT NULL,
    started TEXT,
    finished TEXT,
    fingerprint TEXT NOT NULL,
    input JSONB,
    worker TEXT,
    heartbeat TIMESTAMPTZ,
    lease_s DOUBLE PRECISION,
    attempts INTEGER NOT NULL DEFAULT 0,
    max_attempts INTEGER NOT NULL DEFAULT 3,
    cancel_requested BOOLEAN NOT NULL DEFAULT FALSE
);
CREATE INDEX jobs_queued ON jobs (created, id) WHERE state = 'queued';
CREATE INDEX jobs_running ON jobs (heartbeat) WHERE state = 'running';
CREATE TABLE deleted_forget_sets (id TEXT PRIMARY KEY, deleted TEXT NOT NULL);
""",
}
SCHEMA_VERSION = max(MIGRATIONS)


def migrate(conn: psycopg.Connection) -> int:
    """Bring the schema to ``SCHEMA_VERSION`` (``conn`` in autocommit mode); returns the version found before."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
        conn.execute(
            "CREATE TABLE IF NOT EXISTS lethe_schema_migrations ("
            " version INTEGER PRIMARY KEY, applied TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        row = conn.execute("SELECT coalesce(max(version), 0) FROM lethe_schema_migrations").fetchone()
        found = int(row[0]) if row else 0
        if found > SCHEMA_VERSION:
            raise RuntimeError(
                f"the registry's schema is version {found}, newer than this Lethe knows ({SCHEMA_VERSION}); "
                "upgrade Lethe"
            )
        for version in sorted(v for v in MIGRATIONS if v > found):
            conn.execute(MIGRATIONS[version])
            conn.execute("INSERT INTO lethe_schema_migrations (version) VALUES (%s)", (version,))
    return found
