"""Judging chat requests against every live forget set at once.

Every message the model will see is judged (system, developer, user, assistant and tool turns): each
turn alone and, when there are several, all of them joined, so that a topic named in an earlier turn
scopes the later turns that only refer back to it. A conversation is analyzed once for all forget sets
(``classifier.bank``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from lethe.classifier.bank import HeadBank
from lethe.classifier.features import Analysis, FeatureSpace
from lethe.classifier.model import ScopeClassifier, conversation_texts, sigmoids


@dataclass
class ScopeFlag:
    """One flagged forget set: its score and, per message, the character spans to intervene on."""

    forget_set_id: str
    score: float
    spans: list[list[tuple[int, int]]] = field(default_factory=list)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message's content: a string, or the ``text`` parts of a content list joined by newlines.

    Spans returned by ``ScopeBank.classify`` index into this string.
    """
    content = message.get("content")
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(str(part.get("text", "")) for part in content
                         if isinstance(part, Mapping) and part.get("type") == "text")
    raise TypeError(f"unsupported message content type {type(content).__name__}")


def _whole(text: str) -> list[tuple[int, int]]:
    return [(0, len(text))] if text.strip() else []


class ScopeBank:
    """The classifiers of the live forget sets, grouped by feature space, each group scored as one bank."""

    def __init__(self, classifiers: Mapping[str, ScopeClassifier]):
        self.classifiers = dict(classifiers)
        self._order = {set_id: i for i, set_id in enumerate(self.classifiers)}
        groups: dict[Any, list[str]] = {}
        for set_id, classifier in self.classifiers.items():
            groups.setdefault(classifier.spec, []).append(set_id)
        self._groups: list[tuple[FeatureSpace, list[str], HeadBank, np.ndarray]] = []
        for ids in groups.values():
            space = self.classifiers[ids[0]].space
            bank = HeadBank(space, [self.classifiers[i].head for i in ids])
            thresholds = np.array([self.classifiers[i].threshold for i in ids])
            self._groups.append((space, ids, bank, thresholds))

    def __len__(self) -> int:
        return len(self.classifiers)

    @property
    def nbytes(self) -> int:
        """Bytes held by the stacked weights of every group."""
        return sum(bank.nbytes for _, _, bank, _ in self._groups)

    def _best_logits(self, texts: Sequence[str]) -> list[tuple[list[str], np.ndarray, np.ndarray]]:
        """Per group: its set ids, each set's best logit over the judged texts, and its thresholds."""
        judged = conversation_texts(texts)
        out = []
        for space, ids, bank, thresholds in self._groups:
            analyses = [space.analyze(t) for t in judged]
            best = np.max([bank.logits(a) for a in analyses], axis=0) if analyses else np.full(len(ids), -np.inf)
            out.append((ids, best, thresholds))
        return out

    def scores(self, texts: Sequence[str]) -> dict[str, float]:
        """Each forget set's score for a conversation given as turn texts (the best over the judged texts)."""
        out: dict[str, float] = {}
        for ids, best, _ in self._best_logits(texts):
            out.update(zip(ids, sigmoids(best).tolist(), strict=True))
        return out

    def classify(self, messages: Sequence[Mapping[str, Any]]) -> list[ScopeFlag]:
        """Every forget set that flags the conversation, with per-message spans to intervene on.

        With token mode ``all`` every message is covered whole; with ``salient`` each message gets its
        salient spans, and if none has any, every user message (else every message) is covered whole.
        Only the flagged sets are visited one by one, so a thousand live sets cost one vector comparison.
        """
        texts = [message_text(m) for m in messages]
        flagged: list[tuple[str, float]] = []
        for ids, best, thresholds in self._best_logits(texts):
            probabilities = sigmoids(best)
            flagged += [(ids[k], float(probabilities[k])) for k in np.flatnonzero(probabilities >= thresholds)]
        flagged.sort(key=lambda pair: self._order[pair[0]])
        flags: list[ScopeFlag] = []
        analyses: dict[tuple[Any, int], Analysis] = {}
        for set_id, score in flagged:
            classifier = self.classifiers[set_id]
            spans: list[list[tuple[int, int]]] = [[] for _ in messages]
            if classifier.config.token_mode == "salient":
                for i, text in enumerate(texts):
                    if text.strip():
                        key = (classifier.spec, i)
                        if key not in analyses:
                            analyses[key] = classifier.analyze(text)
                        spans[i] = classifier.salient_analysis_spans(analyses[key])
            if not any(spans):
                users = [i for i, m in enumerate(messages) if m.get("role") == "user" and texts[i].strip()]
                for i in users or range(len(messages)):
                    spans[i] = _whole(texts[i])
            flags.append(ScopeFlag(forget_set_id=set_id, score=score, spans=spans))
        return flags


def classify_messages(classifiers: Mapping[str, ScopeClassifier], messages: list[dict]) -> list[ScopeFlag]:
    """``ScopeBank(classifiers).classify(messages)`` (build a bank once to judge many requests)."""
    return ScopeBank(classifiers).classify(messages)


def classify_text(classifiers: Mapping[str, ScopeClassifier], text: str) -> list[ScopeFlag]:
    """``classify_messages`` for a plain completion prompt, treated as one user message."""
    return classify_messages(classifiers, [{"role": "user", "content": text}])
