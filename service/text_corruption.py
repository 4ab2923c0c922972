"""The ``text`` policy for upstreams without prompt embeddings: a discrete form of the corruption.

The tokens a plan would corrupt are replaced with random vocabulary tokens (never special
ones), drawn from a generator seeded by the plan's own noise seeds, so the same request gives
the same text every time, in every process. Soft prompts have no discrete form and are dropped.
"""

from __future__ import annotations

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.interventions import InterventionPlan, derive_seed
from lethe.runtime.prompt import TemplatedPrompt


def corruption_mask(prompt: TemplatedPrompt, plan: InterventionPlan) -> list[bool]:
    """Positions any corruption of ``plan`` touches; the user content when the plan has none (soft prompts only)."""
    mask = [False] * len(prompt.ids)
    for step in plan.corruptions:
        if len(step.mask) == len(mask):
            mask = [a or bool(b) for a, b in zip(mask, step.mask, strict=True)]
    if not any(mask):
        mask = list(prompt.content_mask(("user",)))
    return mask if any(mask) else [True] * len(prompt.ids)


def replacement_vocabulary(embedder: PromptEmbedder) -> torch.Tensor:
    """Token ids a replacement may use: the tokenizer's ordinary tokens."""
    size = min(embedder.vocab_size, len(embedder.tokenizer))
    special = set(getattr(embedder.tokenizer, "all_special_ids", []) or [])
    return torch.tensor([i for i in range(size) if i not in special], dtype=torch.long)


def corrupt_token_ids(
    prompt: TemplatedPrompt, plan: InterventionPlan, vocabulary: torch.Tensor, request_seed: int | None
) -> list[int]:
    """``prompt.ids`` with the corrupted positions replaced by seeded random tokens of ``vocabulary``."""
    mask = corruption_mask(prompt, plan)
    seed = derive_seed("text-policy", tuple(step.seed for step in plan.corruptions), prompt.ids, request_seed or 0)
    generator = torch.Generator().manual_seed(seed)
    picks = vocabulary[torch.randint(len(vocabulary), (len(mask),), generator=generator)].tolist()
    return [int(pick) if masked else int(token) for token, pick, masked in zip(prompt.ids, picks, mask, strict=True)]


def corrupted_text(
    embedder: PromptEmbedder,
    prompt: TemplatedPrompt,
    plan: InterventionPlan,
    seed: int | None,
    vocabulary: torch.Tensor | None = None,
) -> str:
    """The prompt text with the corrupted tokens replaced (special tokens of the template kept)."""
    vocabulary = replacement_vocabulary(embedder) if vocabulary is None else vocabulary
    ids = corrupt_token_ids(prompt, plan, vocabulary, seed)
    return embedder.tokenizer.decode(ids, skip_special_tokens=False)
