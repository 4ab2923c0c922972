"""Judging chat requests against several active forget sets at once."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from lethe.classifier.model import ScopeClassifier, conversation_docs
from lethe.classifier.text import Doc


@dataclass
class ScopeFlag:
    """One flagged forget set: its score and, per message, the character spans to intervene on."""

    forget_set_id: str
    score: float
    spans: list[list[tuple[int, int]]] = field(default_factory=list)


def message_text(message: Mapping[str, Any]) -> str:
    """The text of a message's content: a string, or the ``text`` parts of a content list joined by newlines.

    Spans returned by ``classify_messages`` index into this string.
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


def classify_messages(classifiers: Mapping[str, ScopeClassifier], messages: list[dict]) -> list[ScopeFlag]:
    """Every forget set whose classifier flags the conversation's user content, with per-message spans.

    Only ``user`` messages are judged (all turns, each alone and joined).  With token_mode ``all``
    every user message is covered whole; with ``salient`` each user message gets its salient spans,
    and if no user message has any, every user message is covered whole.  Other roles get ``[]``.
    """
    users = [i for i, m in enumerate(messages) if m.get("role") == "user"]
    texts = {i: message_text(messages[i]) for i in users}
    user_docs = {i: Doc(texts[i]) for i in users}
    docs = conversation_docs([user_docs[i] for i in users])
    if not docs:
        return []
    flags: list[ScopeFlag] = []
    for set_id, classifier in classifiers.items():
        score = max(classifier.score_docs(docs))
        if score < classifier.threshold:
            continue
        spans: list[list[tuple[int, int]]] = [[] for _ in messages]
        if classifier.config.token_mode == "salient":
            for i in users:
                spans[i] = classifier.salient_doc_spans(user_docs[i])
        if not any(spans):
            for i in users:
                spans[i] = _whole(texts[i])
        flags.append(ScopeFlag(forget_set_id=set_id, score=score, spans=spans))
    return flags


def classify_text(classifiers: Mapping[str, ScopeClassifier], text: str) -> list[ScopeFlag]:
    """``classify_messages`` for a plain completion prompt, treated as one user message."""
    return classify_messages(classifiers, [{"role": "user", "content": text}])
