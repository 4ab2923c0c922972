"""Progress reporting and cancellation for a training run.

A run is split into weighted stages; each stage reports its own fraction and the tracker maps
it onto ``0..1`` for the whole run, never going backwards. Every report is also a cancellation
point.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Sequence

ProgressFn = Callable[[float, str], None]


class TrainingCancelled(Exception):
    """The run was cancelled through its ``threading.Event``."""


class ProgressTracker:
    """Maps per-stage fractions onto a monotone overall fraction and checks for cancellation."""

    def __init__(
        self,
        stages: Sequence[tuple[str, float]],
        callback: ProgressFn | None = None,
        cancel: threading.Event | None = None,
    ):
        total = sum(weight for _, weight in stages)
        if total <= 0:
            raise ValueError("progress stages need a positive total weight")
        self._starts: dict[str, tuple[float, float]] = {}
        cursor = 0.0
        for name, weight in stages:
            self._starts[name] = (cursor, weight / total)
            cursor += weight / total
        self._callback = callback
        self._cancel = cancel
        self._last = 0.0

    def check(self) -> None:
        """Raise ``TrainingCancelled`` if cancellation was requested."""
        if self._cancel is not None and self._cancel.is_set():
            raise TrainingCancelled("training was cancelled")

    def update(self, stage: str, fraction: float, message: str | None = None) -> None:
        """Report ``fraction`` (0..1) of ``stage`` done; checks for cancellation first."""
        self.check()
        start, width = self._starts[stage]
        overall = min(1.0, max(self._last, start + width * min(1.0, max(0.0, fraction))))
        self._last = overall
        if self._callback is not None:
            self._callback(overall, message or stage)

    def stage(self, name: str) -> Callable[[float, str | None], None]:
        """A reporter bound to one stage: ``report(fraction, message=None)``."""
        return lambda fraction, message=None: self.update(name, fraction, message)

    def finish(self, message: str = "done") -> None:
        """Report 1.0."""
        self.check()
        self._last = 1.0
        if self._callback is not None:
            self._callback(1.0, message)
