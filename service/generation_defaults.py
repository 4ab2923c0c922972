"""Sampling defaults from the model's ``generation_config.json``, applied as vLLM applies them.

vLLM (``--generation-config auto``, its default; ``ModelConfig.get_diff_sampling_param`` in 0.11.0
and 0.33.0) reads the file through ``GenerationConfig.to_diff_dict()``, so only values that differ
from Transformers' own defaults count, and of those only the sampling keys. A parameter the
request leaves out takes that value, else the plain OpenAI default (temperature 1, top-p 1); a
``max_new_tokens`` caps the default ``max_tokens``.

Both modes use them: local mode fills the parameters the request left out from here; proxy mode
sends a flagged request upstream with the same parameters left out, so the upstream fills them
exactly as it does for the forwarded, unflagged ones.
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
        path = folder / "generation_config.json" if folder is not None else None
        if path is None or not path.is_file():
            return cls()
        try:
            values = json.loads(path.read_text())
        except (OSError, ValueError):
            logger.warning("%s is unreadable; using plain OpenAI sampling defaults", path)
            return cls()
        return cls.from_values(values if isinstance(values, dict) else {})

    def cap(self, max_tokens: int) -> int:
        """A default ``max_tokens``, capped by the model's ``max_new_tokens``."""
        return max_tokens if self.max_tokens is None else min(max_tokens, self.max_tokens)
