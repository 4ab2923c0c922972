"""The runtime's settings: where prepared models live, which model, how many CPU threads.

Read from the environment (``LETHE_*``) and overridden by CLI flags. The gateway's settings
(``lethe.service.settings.GatewaySettings``) extend this object, so one settings object
configures a whole process.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Self

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict


class RuntimeSettings(BaseSettings):
    """Configuration of model loading shared by the runtime, the trainer, benchmarks and the gateway.

    Every field can be set from the environment with the ``LETHE_`` prefix (``LETHE_HOME``...)
    and overridden by CLI flags.
    """

    model_config = SettingsConfigDict(env_prefix="LETHE_", extra="ignore")

    home: Path = Field(default=Path("~/.cache/lethe"), description="Cache for prepared models and worlds.")
    model: str = Field(default="smollm2", description="Built-in name, HF folder or GGUF file to serve.")
    threads: int = Field(default=0, description="torch CPU threads; 0 keeps torch's default.")

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @property
    def models_dir(self) -> Path:
        """Folder holding prepared built-in models."""
        return self.home / "models"

    @property
    def worlds_dir(self) -> Path:
        """Folder holding generated fictitious-authors worlds and their tiny models."""
        return self.home / "worlds"

    @classmethod
    def from_args(cls, args: argparse.Namespace, **overrides: object) -> Self:
        """Settings from the environment, with the global flags and ``overrides`` (non-None) on top."""
        values = {"home": getattr(args, "home", None), "threads": getattr(args, "threads", None), **overrides}
        return cls(**{k: v for k, v in values.items() if v is not None})
