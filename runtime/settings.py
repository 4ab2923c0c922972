"""The runtime's settings: where prepared models live, which model, how many CPU threads, which device and dtype.

Read from the environment (``LETHE_*``) and overridden by CLI flags. The gateway's settings
(``lethe.service.settings.GatewaySettings``) extend this object, so one settings object
configures a whole process.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Literal, Self

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
    device: str = Field(default="auto", description="auto (CUDA when present), cpu, cuda or cuda:N.")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field(
        default="auto", description="Weights' dtype: auto is bfloat16 on CUDA, float32 on the CPU."
    )
    generation_defaults: str = Field(
        default="auto",
        description="Sampling parameters a request leaves out: auto (the model's generation_config.json), none "
        "(plain OpenAI defaults), a JSON object of overrides, or another generation_config.json.",
    )

    @field_validator("home", mode="after")
    @classmethod
    def _expand_home(cls, value: Path) -> Path:
        return value.expanduser()

    @field_validator("device", mode="after")
    @classmethod
    def _check_device(cls, value: str) -> str:
        value = value.strip().lower()
        if not re.fullmatch(r"auto|cpu|cuda(:\d+)?", value):
            raise ValueError(f"device must be auto, cpu, cuda or cuda:N, not {value!r}")
        return value

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
        names = ("home", "threads", "device", "dtype", "generation_defaults")
        flags = {name: getattr(args, name, None) for name in names}
        values = {**flags, **overrides}
        return cls(**{k: v for k, v in values.items() if v is not None})
