"""Where the forget-set registry lives and who trains: a folder (SQLite) or a shared PostgreSQL database.

``registry`` is a folder for the embedded SQLite registry (one process owns it) or a
``postgresql://`` URL for the shared one (replicas and ``lethe worker`` processes on any machine).
With PostgreSQL each process keeps its own files (audit log, artifact cache, import scratch) in
``state_dir``. These fields are mixed into ``GatewaySettings`` and read by ``lethe worker``.
"""

from __future__ import annotations

import socket
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

POSTGRES_SCHEMES = ("postgresql://", "postgres://")


def is_postgres_url(value: str | Path) -> bool:
    """Whether a ``--registry`` value names a PostgreSQL database rather than a folder."""
    return isinstance(value, str) and value.startswith(POSTGRES_SCHEMES)


def redact_url(url: str) -> str:
    """The URL without its password, for banners and logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    host = parts.hostname or ""
    netloc = f"{parts.username}:***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit((parts.scheme, netloc, parts.path, parts.query, parts.fragment))


class RegistrySettings(BaseSettings):
    """The registry's location and the training workers of this process (``LETHE_`` environment variables)."""

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    registry: Path | str = Field(
        default=Path("~/.cache/lethe/registry"),
        description="Forget-set registry: a folder (SQLite) or a postgresql:// URL (shared by replicas and workers).",
    )
    state_dir: Path | None = Field(
        default=None,
        description="With PostgreSQL: this process's own files (audit log, artifact cache); "
        "default <home>/state/<host>-<port>.",
    )
    workers: int | None = Field(
        default=None, ge=0, description="Training threads of this process (default 1 with a local model, else 0)."
    )
    job_lease_s: float = Field(
        default=30.0, gt=0, description="A running job whose worker sent no heartbeat for this long is requeued."
    )
    job_max_attempts: int = Field(default=3, ge=1, description="Workers that may die on one job before it fails.")

    @field_validator("registry", mode="before")
    @classmethod
    def _folder_or_url(cls, value: object) -> Path | str:
        if isinstance(value, str) and is_postgres_url(value):
            return value
        return Path(str(value)).expanduser()

    @field_validator("state_dir", mode="after")
    @classmethod
    def _expand_state_dir(cls, value: Path | None) -> Path | None:
        return value.expanduser() if value is not None else None

    @property
    def registry_url(self) -> str | None:
        """The PostgreSQL URL, or ``None`` for a SQLite folder."""
        return self.registry if isinstance(self.registry, str) else None

    @property
    def registry_label(self) -> str:
        """The registry for banners and logs (no password)."""
        return redact_url(self.registry) if isinstance(self.registry, str) else str(self.registry)

    def local_dir(self, home: Path, role: str) -> Path:
        """This process's own folder: the SQLite folder itself, else ``state_dir`` or ``home/state/<host>-<role>``."""
        if not isinstance(self.registry, str):
            return self.registry
        if self.state_dir is not None:
            return self.state_dir
        return home / "state" / f"{socket.gethostname()}-{role}"
