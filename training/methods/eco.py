"""ECO (Liu et al. 2024): corrupt the embeddings of flagged prompts' forget entities (wherever they occur),
or substitute them with known ones, strength tuned by zeroth-order steps.

Adds the corruption's parameters (function, dims, scope, token mode, median strength, surrogates) and,
when the forget set splits into clusters, their centroids and per-cluster strengths. The algorithm is
``training.eco``.
"""

from __future__ import annotations

from typing import Any

from lethe.runtime.artifact import TokenMode
from lethe.training.candidates import ArtifactParts
from lethe.training.eco import EcoConfig, train_eco
from lethe.training.mention_targets import answer_values, choose_surrogates
from lethe.training.methods.base import Method, Report, Stage, StageInputs


class EcoStage(Stage):
    """Embedding corruption of the flagged prompt tokens."""

    name = "eco"
    Config = EcoConfig
    adds = ("eco parameters", "cluster strengths")

    def token_modes(self, config: EcoConfig, default: TokenMode) -> list[TokenMode]:
        """Every token mode the search may pick."""
        return list(dict.fromkeys(config.token_modes))

    def sample_batch_size(self, config: EcoConfig) -> int:
        """ECO's scoring batch."""
        return config.batch_size

    def train(self, inputs: StageInputs, config: EcoConfig, parts: ArtifactParts, report: Report) -> dict[str, Any]:
        """Search the corruption and tune its strengths (``training.eco.train_eco``)."""
        names = [e.surface for e in inputs.factory.classifier.entities]
        surrogates = choose_surrogates(names, inputs.known_entities, inputs.model.embedder.encode, inputs.seed)
        names_only = config.value_words == "names"
        values = answer_values(inputs.forget, inputs.retain, names, names_only) if config.answer_values else []
        result = train_eco(
            inputs.model, inputs.factory, inputs.samples, config, inputs.seed, report, surrogates, values
        )
        fields = ("token_mode", "eco", "surrogates", "mentions")
        update = {name: getattr(result.parameters, name) for name in fields}
        parts.parameters = parts.parameters.model_copy(update=update)
        parts.centroids, parts.strengths = result.centroids, result.strengths
        return result.details


ECO = EcoStage()
METHODS = (Method((ECO,), "ECO embedding corruption of the flagged prompt tokens"),)
