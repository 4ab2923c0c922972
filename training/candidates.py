"""Candidate forget-set artifacts: what the trainer evaluates at every step.

A candidate is a real ``ForgetSetArtifact`` (same id, classifier and manifest as the one being
trained), so the trainer gets its intervention plans from ``runtime.plans.plan_for_flag``,
the function the gateway serves with. ``ArtifactParts`` are what the training stages put into it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

import torch

from lethe.runtime.artifact import ForgetSetArtifact, ForgetSetManifest, ForgetSetParameters
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.plans import plan_for_flag
from lethe.runtime.prompt import CharSpan, TemplatedPrompt

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier
    from lethe.runtime.embedder import PromptEmbedder

ArtifactPart = Literal["eco parameters", "cluster strengths", "soft prompt"]


@dataclass
class ArtifactParts:
    """What a forget set's interventions are made of, besides its classifier; training stages fill it in turn."""

    parameters: ForgetSetParameters
    centroids: torch.Tensor | None = None
    strengths: torch.Tensor | None = None
    soft_prompt: torch.Tensor | None = None

    def holds(self, part: ArtifactPart) -> bool:
        """Whether ``part`` is present."""
        present = {
            "eco parameters": self.parameters.eco is not None,
            "cluster strengths": self.strengths is not None,
            "soft prompt": self.soft_prompt is not None,
        }
        return present[part]


@dataclass
class CandidateFactory:
    """Builds candidate artifacts around a fixed manifest and classifier.

    ``method_of`` names the method a set of parts stands for (``training.methods.method_holding``):
    the artifact refuses a method whose parts are missing.
    """

    manifest: ForgetSetManifest
    classifier: ScopeClassifier
    method_of: Callable[[ArtifactParts], str]

    def build(
        self,
        parameters: ForgetSetParameters,
        soft_prompt: torch.Tensor | None = None,
        centroids: torch.Tensor | None = None,
        strengths: torch.Tensor | None = None,
    ) -> ForgetSetArtifact:
        """An artifact with these parameters; its method follows from what it holds."""
        return self.artifact(ArtifactParts(parameters, centroids, strengths, soft_prompt))

    def artifact(self, parts: ArtifactParts) -> ForgetSetArtifact:
        """An artifact holding ``parts``, its method named after them."""
        update = {"parameters": parts.parameters, "method": self.method_of(parts)}
        manifest = self.manifest.model_copy(update=update)
        return ForgetSetArtifact(manifest, self.classifier, parts.soft_prompt, parts.centroids, parts.strengths)


def plans_for(
    artifact: ForgetSetArtifact,
    prompts: Sequence[TemplatedPrompt],
    spans: Sequence[list[list[CharSpan]]],
    embeds: Sequence[torch.Tensor],
    request_seed: int,
    embedder: PromptEmbedder,
) -> list[InterventionPlan]:
    """The served plan of each flagged prompt under ``artifact``."""
    return [
        plan_for_flag(artifact, prompt, span, request_seed, embed, embedder)
        for prompt, span, embed in zip(prompts, spans, embeds, strict=True)
    ]
