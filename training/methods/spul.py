"""SPUL (Bhaila et al. 2024): soft-prompt tokens prepended to flagged prompts, alone or on top of ECO.

Adds the soft prompt (a PEFT prompt-tuning adapter in the artifact) and how it was trained. The
algorithm is ``training.spul``; on top of ECO it trains through the corrupted prompt.
"""

from __future__ import annotations

from typing import Any

from lethe.training.candidates import ArtifactParts
from lethe.training.methods.base import Method, Report, Stage, StageInputs
from lethe.training.methods.eco import ECO
from lethe.training.spul import SpulConfig, train_spul


class SpulStage(Stage):
    """Soft-prompt tokens before the flagged prompt."""

    name = "spul"
    Config = SpulConfig
    adds = ("soft prompt",)

    def sample_batch_size(self, config: SpulConfig) -> int:
        """SPUL's scoring batch."""
        return config.score_batch_size

    def train(self, inputs: StageInputs, config: SpulConfig, parts: ArtifactParts, report: Report) -> dict[str, Any]:
        """Train the soft prompt through the served plan of what ``parts`` already hold (``training.spul``)."""
        result = train_spul(
            inputs.model, inputs.factory, inputs.samples, inputs.forget, inputs.retain,
            parts.parameters, parts.centroids, parts.strengths, config, inputs.seed, report,
        )  # fmt: skip
        parts.soft_prompt = result.soft_prompt
        parts.parameters = parts.parameters.model_copy(update={"spul": result.parameters})
        return result.details


SPUL = SpulStage()
METHODS = (
    Method((SPUL,), "SPUL soft prompt before flagged prompts"),
    Method((ECO, SPUL), "ECO corruption, then a SPUL soft prompt trained through it"),
)
