"""What an unlearning method is: an ordered list of stages, each one a config, a training function and its parts.

A stage trains one kind of intervention on top of what the stages before it built (SPUL on an
ECO-corrupted prompt, for example): it reads and extends the run's ``ArtifactParts`` and returns
the details that go into the manifest's metrics under its name. Its name is also the section of
its options (``eco.rounds``, ``spul.steps``) in ``TrainConfig``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

from pydantic import BaseModel

from lethe.runtime.artifact import TokenMode
from lethe.runtime.model import LanguageModel
from lethe.training.candidates import ArtifactPart, ArtifactParts, CandidateFactory
from lethe.training.data import ForgetRow
from lethe.training.samples import ForgetSample

Report = Callable[[float, str | None], None]
DEFAULT_SAMPLE_BATCH = 64


@dataclass(frozen=True)
class StageInputs:
    """What every stage trains on: the model, candidate artifacts, the prepared forget samples and the rows."""

    model: LanguageModel
    factory: CandidateFactory
    samples: Sequence[ForgetSample]
    forget: Sequence[ForgetRow]
    retain: Sequence[ForgetRow]
    seed: int
    known_entities: Sequence[str] = ()
    """Entities the model must keep knowing (retain people, adjacent topics): candidates for substitution."""


class Stage(ABC):
    """One trainable intervention: its options, how it trains and what it adds to the artifact."""

    name: ClassVar[str]
    Config: ClassVar[type[BaseModel]]
    adds: ClassVar[tuple[ArtifactPart, ...]]
    """The parts this stage puts into the artifact; it always adds the first one."""
    progress_weight: ClassVar[float] = 4.0

    def token_modes(self, config: Any, default: TokenMode) -> list[TokenMode]:
        """Token modes the forget samples need spans for when this stage runs first (it picks the mode)."""
        return [default]

    def sample_batch_size(self, config: Any) -> int:
        """Batch size for scoring the forget samples when this stage runs first."""
        return DEFAULT_SAMPLE_BATCH

    @abstractmethod
    def train(self, inputs: StageInputs, config: Any, parts: ArtifactParts, report: Report) -> dict[str, Any]:
        """Train on ``inputs``, write what it learned into ``parts``; returns details for the metrics."""


@dataclass(frozen=True)
class Method:
    """A named unlearning method: its stages, run in order. ``eco+spul`` is ``(ECO, SPUL)``."""

    stages: tuple[Stage, ...]
    summary: str

    @property
    def name(self) -> str:
        """The stage names joined by ``+``."""
        return "+".join(stage.name for stage in self.stages)
