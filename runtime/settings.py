"""One settings object for the whole product, read from the environment (``LETHE_*``) and CLI flags."""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class LetheSettings(BaseSettings):
    """Configuration shared by the runtime, the trainer and the gateway.

    Every field can be set from the environment with the ``LETHE_`` prefix
    (``LETHE_HOME``, ``LETHE_API_KEYS``...) and overridden by CLI flags.
    """

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    home: Path = Field(default=Path("~/.cache/lethe"), description="Cache for prepared models and worlds.")
    model: str = Field(default="smollm2", description="Built-in name, HF folder or GGUF file to serve.")
    threads: int = Field(default=0, description="torch CPU threads; 0 keeps torch's default.")

    host: str = "127.0.0.1"
    port: int = 8000
    api_keys: str = Field(default="", description="Comma-separated bearer keys for /v1 routes.")
    admin_key: str = Field(default="", description="Bearer key for /admin routes.")
    registry: Path = Field(default=Path("~/.cache/lethe/registry"), description="Forget-set registry folder.")

    max_body_bytes: int = 8 * 1024 * 1024
    max_prompt_tokens: int = 2048
    max_new_tokens: int = 512
    max_concurrency: int = 4
    max_batch_size: int = 8
    batch_window_ms: float = 5.0
    max_queue_depth: int = Field(default=64, description="Generations waiting for a batch before a 503.")
    decode_workers: int = Field(default=2, ge=1, description="Batches the gateway decodes at the same time.")
    allow_prompt_embeds: bool = Field(default=True, description="Accept vLLM-style prompt_embeds on /v1/completions.")

    upstream: str | None = None
    upstream_model: str | None = None
    upstream_timeout_s: float = 60.0

    @field_validator("home", "registry", mode="after")
    @classmethod
    def _expand(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def api_key_list(self) -> list[str]:
        """The configured inference keys, stripped, without empties."""
        return [k.strip() for k in self.api_keys.split(",") if k.strip()]

    @property
    def models_dir(self) -> Path:
        """Folder holding prepared built-in models."""
        return self.home / "models"

    @property
    def worlds_dir(self) -> Path:
        """Folder holding generated fictitious-authors worlds and their tiny models."""
        return self.home / "worlds"


@lru_cache(maxsize=1)
def get_settings() -> LetheSettings:
    """Settings read once from the environment."""
    return LetheSettings()
