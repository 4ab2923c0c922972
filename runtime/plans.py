"""From a forget set and a flagged prompt to the intervention plan the model runs.

The trainer evaluates candidate parameters through these functions and the gateway serves
through them, so what was optimized is exactly what is served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch

from lethe.runtime.artifact import EcoParameters, ForgetSetArtifact
from lethe.runtime.interventions import (
    NO_INTERVENTION,
    Corruption,
    CorruptStep,
    EntityStep,
    InterventionPlan,
    PrependStep,
    derive_seed,
)
from lethe.runtime.prompt import CharSpan, TemplatedPrompt

if TYPE_CHECKING:
    from lethe.runtime.embedder import PromptEmbedder


def intervention_mask(prompt: TemplatedPrompt, spans_per_message: Sequence[Sequence[CharSpan]] | None) -> list[bool]:
    """Tokens to corrupt: those overlapping the flagged spans, else every user-content token, else all tokens."""
    if spans_per_message:
        mask = prompt.mask_for_spans(spans_per_message)
        if any(mask):
            return mask
    mask = prompt.content_mask(("user",))
    if any(mask):
        return mask
    return [True] * len(prompt.ids)


def cluster_strength(
    centroids: torch.Tensor, strengths: torch.Tensor, embeds: torch.Tensor, mask: Sequence[bool]
) -> float:
    """Strength of the cluster whose centroid is nearest (cosine) to the mean embedding of the masked tokens."""
    feature = mean_masked_embedding(embeds, mask).unsqueeze(0)
    similarity = torch.nn.functional.cosine_similarity(feature, centroids.to(feature.device, torch.float32), dim=-1)
    return float(strengths[int(similarity.argmax())])


def mean_masked_embedding(embeds: torch.Tensor, mask: Sequence[bool]) -> torch.Tensor:
    """The feature clusters are built on: mean embedding of the masked tokens."""
    selected = embeds[torch.tensor(list(mask), dtype=torch.bool, device=embeds.device)]
    return (selected if selected.shape[0] else embeds).float().mean(0)


def eco_step(
    eco: EcoParameters, strength: float, mask: Sequence[bool], forget_set_id: str, prompt_ids: Sequence[int], seed: int
) -> CorruptStep:
    """The corruption step for one prompt, with noise seeded from the forget set, prompt and request seed."""
    return CorruptStep(
        Corruption(eco.function, strength, eco.dims),
        tuple(bool(m) for m in mask),
        derive_seed(forget_set_id, tuple(prompt_ids), seed),
    )


def entity_step(
    artifact: ForgetSetArtifact, embedder: PromptEmbedder, corruption: Corruption, prompt_ids: Sequence[int], seed: int
) -> EntityStep | None:
    """The step that corrupts (or substitutes) every mention of the forget set's entities (``None`` without any)."""
    index = artifact.mentions(embedder.fingerprint, embedder.encode)
    if not index:
        return None
    step_seed = derive_seed(artifact.id, "entities", tuple(prompt_ids), seed)
    return EntityStep(corruption, index, step_seed, embedder.embedding_weight)


def plan_for_flag(
    artifact: ForgetSetArtifact,
    prompt: TemplatedPrompt,
    spans_per_message: Sequence[Sequence[CharSpan]] | None,
    request_seed: int,
    embeds: torch.Tensor | None = None,
    embedder: PromptEmbedder | None = None,
) -> InterventionPlan:
    """The plan a flagged prompt gets from one forget set (corruptions, then soft prompt).

    A forget set whose corruption covers the whole sequence (or substitutes) needs the model's ``embedder``
    to find its entities' mentions.
    """
    params = artifact.manifest.parameters
    corruptions: tuple[CorruptStep, ...] = ()
    entities: tuple[EntityStep, ...] = ()
    rewrites: tuple[tuple[str, str], ...] = ()
    if params.eco is not None:
        mask = intervention_mask(prompt, spans_per_message)
        strength = params.eco.strength
        if artifact.cluster_centroids is not None and artifact.cluster_strengths is not None:
            if embeds is None:
                raise ValueError("per-cluster strengths need the prompt's embeddings")
            centroids = artifact.placed("cluster_centroids", embeds.device, torch.float32)
            assert centroids is not None
            strength = cluster_strength(centroids, artifact.cluster_strengths, embeds, mask)
        corruptions = (eco_step(params.eco, strength, mask, artifact.id, prompt.ids, request_seed),)
        if params.eco.scope == "sequence" or params.eco.function == "substitute":
            if embedder is None:
                raise ValueError(f"forget set {artifact.id} corrupts entity mentions: the plan needs the embedder")
            corruption = Corruption(params.eco.function, strength, params.eco.dims, params.eco.fallback)
            step = entity_step(artifact, embedder, corruption, prompt.ids, request_seed)
            if step is not None:
                entities = (step,)
                if params.eco.function == "substitute" and strength >= 0.5:
                    rewrites = tuple(step.index.rewrites(embedder.decode))
    soft_prompts: tuple[PrependStep, ...] = ()
    if artifact.soft_prompt is not None and artifact.soft_prompt.shape[0]:
        prompt_vectors = artifact.soft_prompt
        if embedder is not None:  # kept on the model's device in its dtype, copied there once per artifact
            prompt_vectors = artifact.placed("soft_prompt", embedder.device, embedder.dtype)
        soft_prompts = (PrependStep(prompt_vectors),)
    return InterventionPlan(corruptions, entities, soft_prompts, rewrites)


def compose_plans(plans: Sequence[InterventionPlan]) -> InterventionPlan:
    """One plan from several forget sets' plans, in order."""
    combined = NO_INTERVENTION
    for plan in plans:
        combined = combined.then(plan)
    return combined
