"""What the service needs of a forget-set registry, and opening the one ``--registry`` names.

Two implementations: ``registry.Registry`` (a folder: SQLite and artifact folders, one process)
and ``pg_registry.PgRegistry`` (a ``postgresql://`` URL: shared by replicas and workers, artifacts
stored in the database). ``ForgetSetManager`` and the admin routes use only this interface; the
shared registry adds the job-queue operations its workers use (claim, heartbeat, reap...).
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.service.registry import ForgetSetRecord, JobRecord, Registry

if TYPE_CHECKING:
    from lethe.service.settings import GatewaySettings


class RegistryStore(Protocol):
    """Forget-set and job records with their artifacts; ``root`` is this process's own folder."""

    root: Path
    shared: bool  # True: other processes change it too, so the screen re-syncs from it

    def close(self) -> None:
        """Release the database."""

    def artifact_dir(self, forget_set_id: str, version: str | None = None) -> Path:
        """A local folder holding the forget set's artifact (``version``: which one, default the current)."""

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
        """Record a forget set in training and its queued job."""

    def store_ready(self, artifact: ForgetSetArtifact, source: str) -> str | None:
        """Store an imported artifact, ready and enabled; its version, or ``None`` if the id is taken."""

    def get_forget_set(self, forget_set_id: str) -> ForgetSetRecord | None:
        """One forget set, or ``None``."""

    def list_forget_sets(self) -> list[ForgetSetRecord]:
        """Every forget set, oldest first."""

    def live_versions(self) -> dict[str, str]:
        """Ready and enabled forget sets: id -> version of their artifact."""

    def set_enabled(self, forget_set_id: str, enabled: bool) -> ForgetSetRecord | None:
        """Switch a forget set on or off; ``None`` if it does not exist."""

    def delete_forget_set(self, forget_set_id: str) -> bool:
        """Delete a forget set and cancel its active job; False if it did not exist."""

    def was_deleted(self, forget_set_id: str) -> bool:
        """Whether the id was deleted through the API and not imported again."""

    def get_job(self, job_id: str) -> JobRecord | None:
        """One job, or ``None``."""

    def list_jobs(self, states: tuple[str, ...] | None = None) -> list[JobRecord]:
        """Jobs, oldest first, optionally only in ``states``."""

    def job_progress(self, job_id: str, progress: float, stage: str | None, worker: str | None = None) -> None:
        """Record a running job's progress."""

    def publish(
        self, job_id: str, forget_set_id: str, artifact: ForgetSetArtifact, worker: str | None = None
    ) -> str | None:
        """Store a trained artifact and mark the job succeeded, atomically; its version or ``None``."""

    def job_ended(
        self, job_id: str, state: Literal["failed", "cancelled"], error: str | None, worker: str | None = None
    ) -> None:
        """Mark an active job failed or cancelled, its forget set likewise."""

    def recover_interrupted(self) -> list[str]:
        """At start: jobs a previous run of this process left behind, now failed."""

    def collect_debris(self) -> list[str]:
        """At start: remove leftovers of interrupted writes and uploads."""


def open_registry(settings: GatewaySettings) -> RegistryStore:
    """The registry ``settings.registry`` names: a SQLite folder or a PostgreSQL database."""
    url = settings.registry_url
    if url is None:
        return Registry(Path(settings.registry))
    from lethe.service.pg_registry import PgRegistry

    return PgRegistry(
        url,
        settings.local_dir(settings.home, str(settings.port)),
        settings.max_import_unpacked_bytes,
        settings.job_max_attempts,
    )
