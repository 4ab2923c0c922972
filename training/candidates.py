"""Candidate forget-set artifacts: what the trainer evaluates at every step.

A candidate is a real ``ForgetSetArtifact`` (same id, classifier and manifest as the one being
trained), so the trainer gets its intervention plans from ``runtime.forget_set.plan_for_flag``,
the function the gateway serves with.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from lethe.runtime.artifact import ForgetSetArtifact, ForgetSetManifest, ForgetSetParameters
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.plans import plan_for_flag
from lethe.runtime.prompt import CharSpan, TemplatedPrompt

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier


@dataclass
class CandidateFactory:
    """Builds candidate artifacts around a fixed manifest and classifier."""

    manifest: ForgetSetManifest
    classifier: ScopeClassifier

    def build(
        self,
        parameters: ForgetSetParameters,
        soft_prompt: torch.Tensor | None = None,
        centroids: torch.Tensor | None = None,
        strengths: torch.Tensor | None = None,
    ) -> ForgetSetArtifact:
        """An artifact with these parameters; its method follows from what it holds."""
        flags = (("eco", parameters.eco is not None), ("spul", soft_prompt is not None))
        parts = [name for name, present in flags if present]
        method = "+".join(parts) or "eco"
        manifest = self.manifest.model_copy(update={"parameters": parameters, "method": method})
        return ForgetSetArtifact(manifest, self.classifier, soft_prompt, centroids, strengths)


def plans_for(
    artifact: ForgetSetArtifact,
    prompts: Sequence[TemplatedPrompt],
    spans: Sequence[list[list[CharSpan]]],
    embeds: Sequence[torch.Tensor],
    request_seed: int,
) -> list[InterventionPlan]:
    """The served plan of each flagged prompt under ``artifact``."""
    return [
        plan_for_flag(artifact, prompt, span, request_seed, embed)
        for prompt, span, embed in zip(prompts, spans, embeds, strict=True)
    ]
