"""What the trainer needs from the scope classifier: token-mode variants and per-prompt spans.

Spans come from ``classify_messages`` itself, through a view of the classifier that flags every
prompt, so a training prompt gets exactly the spans the gateway would give it once flagged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from lethe.runtime.artifact import TokenMode
from lethe.runtime.prompt import CharSpan

if TYPE_CHECKING:
    from lethe.classifier import ScopeClassifier

_VIEW_ID = "training-view"


def with_token_mode(classifier: ScopeClassifier, token_mode: TokenMode) -> ScopeClassifier:
    """The same classifier (weights, threshold, calibration) selecting tokens in ``token_mode``."""
    return classifier.with_token_mode(token_mode)


def _flag_everything(classifier: ScopeClassifier) -> ScopeClassifier:
    return classifier.with_threshold(float("-inf"))


def flagged_spans(classifier: ScopeClassifier, messages: list[dict[str, str]]) -> list[list[CharSpan]]:
    """Per-message spans the classifier selects for ``messages`` if they are flagged."""
    from lethe.classifier import classify_messages

    flags = classify_messages({_VIEW_ID: _flag_everything(classifier)}, messages)
    return flags[0].spans if flags else [[] for _ in messages]
