"""Sampling defaults from the model's ``generation_config.json``, applied as vLLM applies them.

vLLM (``--generation-config auto``, its default; ``ModelConfig.get_diff_sampling_param`` in 0.11.0
and 0.33.0) reads the file through ``GenerationConfig.to_diff_dict()``, so only values that differ
from Transformers' own defaults count, and of those only the sampling keys. A parameter the
request leaves out takes that value, else the plain OpenAI default (temperature 1, top-p 1); a
``max_new_tokens`` caps the default ``max_tokens``.

Both modes use them: local mode fills the parameters the request left out from here; proxy mode
sends a flagged request upstream with the same parameters left out, so the upstream fills them
exactly as it does for the forwarded, unflagged ones (here only the ``max_tokens`` cap applies).

``--generation-defaults`` (``LETHE_GENERATION_DEFAULTS``) chooses them: ``auto`` (the model folder's
``generation_config.json``), ``none`` (plain OpenAI defaults, vLLM's ``--generation-config vllm``), a
JSON object of overrides on top of the model's file (``{"temperature": 0.7}``), or a path to another
``generation_config.json`` (or the folder holding one).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

logger = logging.getLogger("lethe.service")

# Transformers' GenerationConfig defaults: values equal to these are not in ``to_diff_dict()``.
TRANSFORMERS_DEFAULTS: dict[str, Any] = {
    "temperature": 1.0,
    "top_p": 1.0,
    "top_k": 50,
    "min_p": None,
    "repetition_penalty": 1.0,
    "max_new_tokens": None,
}
# The keys vLLM takes from the file (others, such as do_sample or eos_token_id, do not change sampling).
VLLM_SAMPLING_KEYS = (
    "repetition_penalty",
    "presence_penalty",
    "frequency_penalty",
    "temperature",
    "top_k",
    "top_p",
    "min_p",
    "max_new_tokens",
    "skip_special_tokens",
)
HONOURED = ("temperature", "top_p", "max_new_tokens")


@dataclass(frozen=True)
class GenerationDefaults:
    """Temperature, top-p and the ``max_tokens`` cap for requests that leave them out."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int | None = None
    unapplied: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_values(cls, values: dict[str, Any]) -> GenerationDefaults:
        """From a ``generation_config.json`` object."""
        diff = {
            key: values[key]
            for key in VLLM_SAMPLING_KEYS
            if values.get(key) is not None and values[key] != TRANSFORMERS_DEFAULTS.get(key)
        }
        return cls(
            temperature=float(diff.get("temperature", 1.0)),
            top_p=float(diff.get("top_p", 1.0)),
            max_tokens=int(diff["max_new_tokens"]) if "max_new_tokens" in diff else None,
            unapplied={key: value for key, value in diff.items() if key not in HONOURED},
        )

    @classmethod
    def from_folder(cls, folder: Path | None) -> GenerationDefaults:
        """From ``folder/generation_config.json``; plain OpenAI defaults where there is none."""
        return cls.from_values(_file_values(folder))

    @classmethod
    def choose(cls, choice: str, folder: Path | None) -> GenerationDefaults:
        """The defaults ``choice`` names for the model in ``folder`` (see the module's docstring)."""
        choice = choice.strip()
        if choice in ("", "auto"):
            return cls.from_folder(folder)
        if choice in ("none", "vllm", "openai"):
            return cls()
        if choice.startswith("{"):
            try:
                overrides = json.loads(choice)
            except ValueError:
                raise ValueError("--generation-defaults: not a JSON object") from None
            if not isinstance(overrides, dict):
                raise ValueError("--generation-defaults: not a JSON object")
            return cls.from_values({**_file_values(folder), **overrides})
        path = Path(choice).expanduser()
        if path.is_dir():
            path = path / "generation_config.json"
        if not path.is_file():
            raise ValueError("--generation-defaults: expected auto, none, a JSON object or a generation_config.json")
        return cls.from_values(_read(path))

    def describe(self) -> str:
        """The defaults in one line, for the start-up banner."""
        cap = f", max_tokens <= {self.max_tokens}" if self.max_tokens is not None else ""
        return f"temperature {self.temperature:g}, top_p {self.top_p:g}{cap}"

    def cap(self, max_tokens: int) -> int:
        """A default ``max_tokens``, capped by the model's ``max_new_tokens``."""
        return max_tokens if self.max_tokens is None else min(max_tokens, self.max_tokens)


def _file_values(folder: Path | None) -> dict[str, Any]:
    """``folder/generation_config.json`` as a dict (empty when there is none)."""
    path = folder / "generation_config.json" if folder is not None else None
    return _read(path) if path is not None and path.is_file() else {}


def _read(path: Path) -> dict[str, Any]:
    try:
        values = json.loads(path.read_text())
    except (OSError, ValueError):
        logger.warning("%s is unreadable; using plain OpenAI sampling defaults", path)
        return {}
    return values if isinstance(values, dict) else {}
