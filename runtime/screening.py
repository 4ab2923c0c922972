"""The screening step of every request: classify against the enabled forget sets, build the plan.

Shared by ``lethe generate``, the gateway (local and proxy modes) and the trainer's
evaluation, so a forget set behaves the same wherever it is applied.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.interventions import NO_INTERVENTION, InterventionPlan
from lethe.runtime.plans import compose_plans, plan_for_flag
from lethe.runtime.prompt import TemplatedPrompt

if TYPE_CHECKING:
    from lethe.classifier import ScopeFlag
    from lethe.runtime.embedder import PromptEmbedder


@dataclass
class Verdict:
    """The screen's verdict on a request: which forget sets flagged it and the composed plan to apply."""

    flags: list[ScopeFlag] = field(default_factory=list)
    plan: InterventionPlan = NO_INTERVENTION

    @property
    def flagged(self) -> bool:
        """True when at least one forget set claimed the request."""
        return bool(self.flags)

    @property
    def forget_set_ids(self) -> list[str]:
        """Ids of the flagging forget sets."""
        return [flag.forget_set_id for flag in self.flags]


class ForgetSetScreen:
    """Holds the enabled forget sets; swaps them atomically so requests never see a half update."""

    def __init__(self, artifacts: Iterable[ForgetSetArtifact] = ()):
        self._lock = threading.Lock()
        self._swap({a.id: a for a in artifacts})

    def _swap(self, sets: Mapping[str, ForgetSetArtifact]) -> None:
        from lethe.classifier import ScopeBank

        # One bank of every live classifier, built once per change, so a request is analyzed once.
        bank = ScopeBank({fid: artifact.classifier for fid, artifact in sets.items()})
        self._state = (sets, bank)

    @classmethod
    def from_folders(cls, folders: Iterable[Path | str], embedder: PromptEmbedder) -> ForgetSetScreen:
        """Load artifact folders, refusing any trained for another base model."""
        return cls(ForgetSetArtifact.load(Path(f), embedder.fingerprint, embedder.hidden_size) for f in folders)

    @property
    def active(self) -> Mapping[str, ForgetSetArtifact]:
        """The current forget sets by id (a snapshot)."""
        return self._state[0]

    def put(self, artifact: ForgetSetArtifact) -> None:
        """Enable (or replace) a forget set."""
        with self._lock:
            self._swap({**self._state[0], artifact.id: artifact})

    def remove(self, forget_set_id: str) -> None:
        """Disable a forget set (no error if absent)."""
        with self._lock:
            self._swap({k: v for k, v in self._state[0].items() if k != forget_set_id})

    def classify(self, messages: Sequence[Mapping[str, object]] | None, text: str | None = None) -> list[ScopeFlag]:
        """Every flagging forget set for a chat (``messages``) or a raw ``text`` prompt (one user message)."""
        sets, bank = self._state
        if not sets:
            return []
        chat = [dict(m) for m in messages] if messages is not None else [{"role": "user", "content": text or ""}]
        return bank.classify(chat)

    def screen(
        self,
        prompt: TemplatedPrompt,
        messages: Sequence[Mapping[str, object]] | None,
        request_seed: int,
        embedder: PromptEmbedder,
    ) -> Verdict:
        """Classify a rendered request and compose the plans of every flagging forget set."""
        flags = self.classify(messages, None if messages is not None else prompt.text)
        return self.decide(flags, prompt, request_seed, embedder)

    def decide(
        self, flags: Sequence[ScopeFlag], prompt: TemplatedPrompt, request_seed: int, embedder: PromptEmbedder
    ) -> Verdict:
        """The verdict for a prompt already classified: the composed plans of the flagging forget sets still live."""
        sets = self._state[0]
        flags = [flag for flag in flags if flag.forget_set_id in sets]
        if not flags:
            return Verdict()
        needs_embeds = any(sets[f.forget_set_id].cluster_centroids is not None for f in flags)
        embeds = embedder.embed(prompt.ids) if needs_embeds else None
        plans = [plan_for_flag(sets[f.forget_set_id], prompt, f.spans, request_seed, embeds, embedder) for f in flags]
        return Verdict(list(flags), compose_plans(plans))
