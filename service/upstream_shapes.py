"""Response shapes learned from the upstream's own answers, so a flagged request reads like a forwarded one.

In proxy mode an unflagged request is answered by the upstream itself, a flagged one by Lethe
(generated upstream from ``prompt_embeds`` on ``/v1/completions``). Every server version writes
its own fields (vLLM 0.33.0 adds ``stop_reason``, ``token_ids``, ``prompt_token_ids``,
``kv_transfer_params``... with 16-hex ids), so no fixed shape can match them all. Instead, once the
upstream answers, ``learn_shapes`` sends it short chat and completion requests (whole, and streamed
with and without usage: requests any client could send) and keeps each answer as a template: its
keys in order, the values that do not depend on the request (nulls, fingerprints), the response
headers and the form of ids (prefix, length, whether ``X-Request-Id`` names them). A flagged
answer is that template with the request's own values written in: id, created, model, text,
finish and stop reasons, token counts.
"""

from __future__ import annotations

import copy
import json
import logging
import secrets
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from lethe.service.protocol import CompletionLogProbs, UsageInfo
from lethe.service.response_shapes import Choice, Kind
from lethe.service.upstream import HOP_HEADERS, UpstreamClient, sse_events
from lethe.service.upstream_errors import UpstreamError

logger = logging.getLogger("lethe.proxy")
PATHS: dict[Kind, str] = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}
PROBE_TEXT = "Count from one to ten: one, two,"
PROBE_TOKENS = 3
Json = dict[str, Any]


class ShapeProbeError(ValueError):
    """The upstream's answer to a shape probe could not be read as an OpenAI response."""


def _response_headers(headers: Sequence[tuple[str, str]]) -> dict[str, str]:
    """The headers a proxied answer carries over (those the passthrough relays too)."""
    return {k: v for k, v in headers if k.lower() not in HOP_HEADERS and k.lower() not in ("date", "server")}


@dataclass(frozen=True)
class IdForm:
    """How the upstream names responses: ``prefix`` + a random hex part of ``length``, or + ``X-Request-Id``."""

    prefix: str
    length: int
    uses_request_id: bool = False

    @classmethod
    def of(cls, example: str) -> IdForm:
        """The form of an id the upstream chose itself."""
        prefix, dash, suffix = example.rpartition("-")
        return cls(prefix + dash, len(suffix))

    def new(self, request_id: str | None) -> str:
        """A fresh id (the client's ``X-Request-Id`` where the upstream would use it)."""
        if request_id and self.uses_request_id:
            return self.prefix + request_id
        return self.prefix + secrets.token_hex((self.length + 1) // 2)[: self.length]


@dataclass(frozen=True)
class StreamTemplates:
    """The chunks of one streamed answer: role chunk (chat), a text chunk, the final chunk, the usage chunk."""

    opening: Json | None
    piece: Json
    final: Json
    usage: Json | None

    @classmethod
    def of(cls, events: list[Json], kind: Kind) -> StreamTemplates:
        """Split a probe's events by what they carry."""
        choices = [e for e in events if e.get("choices")]
        if not choices:
            raise ShapeProbeError("a streamed probe answer carried no choices")
        opening = choices[0] if kind == "chat" and "role" in (choices[0]["choices"][0].get("delta") or {}) else None
        texts = [e for e in choices if e is not opening]
        finals = [e for e in texts if e["choices"][0].get("finish_reason")]
        pieces = [e for e in texts if not e["choices"][0].get("finish_reason")]
        if not finals:
            raise ShapeProbeError("a streamed probe answer never finished")
        final = finals[-1]
        piece = pieces[0] if pieces else _without_finish(final)
        usage = next((e for e in events if not e.get("choices") and isinstance(e.get("usage"), dict)), None)
        return cls(opening, piece, final, usage)


def _without_finish(final: Json) -> Json:
    piece = copy.deepcopy(final)
    piece["choices"][0]["finish_reason"] = None
    return piece


@dataclass(frozen=True)
class KindShapes:
    """Everything learned about one endpoint's answers."""

    whole: Json
    streams: dict[bool, StreamTemplates]  # by include_usage
    ids: IdForm


class TemplateShaper:
    """Writes one answer by filling the upstream's templates with this request's values."""

    def __init__(self, kind: Kind, shapes: KindShapes, model: str, include_usage: bool, request_id: str | None):
        self.kind = kind
        self.shapes = shapes
        self.stream = shapes.streams[include_usage]
        self.request_id = shapes.ids.new(request_id)
        self.created = int(time.time())
        self.model = model

    def _filled(self, template: Json) -> Json:
        body = copy.deepcopy(template)
        for key, value in (("id", self.request_id), ("created", self.created), ("model", self.model)):
            if key in body:
                body[key] = value
        return body

    def _choice(self, template: Json, index: int, text: str | None, finish: Choice | None) -> Json:
        choice = copy.deepcopy(template)
        choice["index"] = index
        if text is not None:
            holder = choice.get("message", choice.get("delta")) if self.kind == "chat" else choice
            key = "content" if self.kind == "chat" else "text"
            if isinstance(holder, dict) and key in holder:
                holder[key] = text
        if "finish_reason" in choice:
            choice["finish_reason"] = finish.finish_reason if finish is not None else None
        if "stop_reason" in choice:
            choice["stop_reason"] = finish.stop_reason if finish is not None else None
        return choice

    @staticmethod
    def _usage(body: Json, usage: UsageInfo) -> None:
        counts = body.get("usage")
        if isinstance(counts, dict):
            for key, value in usage.model_dump().items():
                if key in counts:
                    counts[key] = value

    @staticmethod
    def _json(body: Json) -> bytes:
        return json.dumps(body, ensure_ascii=False, separators=(",", ":")).encode()

    def whole(self, choices: Sequence[Choice], usage: UsageInfo) -> bytes:
        """The upstream's whole answer with these choices and counts."""
        body = self._filled(self.shapes.whole)
        template = body["choices"][0]
        body["choices"] = [self._choice(template, i, c.text, c) for i, c in enumerate(choices)]
        self._usage(body, usage)
        return self._json(body)

    def _chunk(self, template: Json, text: str | None, finish: Choice | None) -> bytes:
        body = self._filled(template)
        body["choices"] = [self._choice(body["choices"][0], 0, text, finish)]
        return self._json(body)

    def opening(self) -> list[bytes]:
        """The upstream's role chunk, for chat."""
        opening = self.stream.opening
        return [self._chunk(opening, None, None)] if opening is not None else []

    def delta(self, text: str, finish: Choice | None = None, logprobs: CompletionLogProbs | None = None) -> list[bytes]:
        """A text chunk; at the end, the final chunk with the last text if the upstream's final chunk carries
        text (vLLM's does), else a text chunk and then the final chunk (Lethe's final delta is empty).
        (Log-probs are refused for every request in proxy mode, so none come here.)"""
        if logprobs is not None:
            raise ValueError("log-probs are not served in proxy mode")
        piece = [self._chunk(self.stream.piece, text, None)] if text else []
        if finish is None:
            return piece
        if self._carries_text(self.stream.final):
            return [self._chunk(self.stream.final, text, finish)]
        return [*piece, self._chunk(self.stream.final, None, finish)]

    def _carries_text(self, template: Json) -> bool:
        choice = template["choices"][0]
        return "content" in (choice.get("delta") or {}) if self.kind == "chat" else "text" in choice

    def usage(self, usage: UsageInfo) -> bytes | None:
        """The upstream's usage chunk, when the client asked for usage."""
        if self.stream.usage is None:
            return None
        body = self._filled(self.stream.usage)
        self._usage(body, usage)
        return self._json(body)


@dataclass(frozen=True)
class UpstreamShapes:
    """The upstream's answer shapes for both endpoints, and its response headers."""

    kinds: dict[Kind, KindShapes]
    whole_headers: dict[str, str]
    stream_headers: dict[str, str]

    def shaper(self, kind: Kind, model: str, include_usage: bool, request_id: str | None) -> TemplateShaper:
        """A shaper writing in the upstream's shapes."""
        return TemplateShaper(kind, self.kinds[kind], model, include_usage, request_id)

    def headers(self, stream: bool) -> dict[str, str]:
        """The upstream's own response headers."""
        return dict(self.stream_headers if stream else self.whole_headers)


async def _probe(
    upstream: UpstreamClient, kind: Kind, model: str, stream: bool | None, request_id: str | None = None
) -> tuple[list[Json], dict[str, str]]:
    """One probe request (``stream``: None whole, else streamed with ``include_usage=stream``)."""
    payload: Json = {"model": model, "max_tokens": PROBE_TOKENS, "temperature": 0}
    if kind == "chat":
        payload["messages"] = [{"role": "user", "content": PROBE_TEXT}]
    else:
        payload["prompt"] = PROBE_TEXT
    if stream is not None:
        payload["stream"] = True
        if stream:
            payload["stream_options"] = {"include_usage": True}
    headers = {"x-request-id": request_id} if request_id else None
    response = await upstream.open(upstream.build(PATHS[kind], json.dumps(payload).encode(), headers))
    try:
        if response.status_code != 200:
            await response.aread()
            raise ShapeProbeError(f"the upstream answered a {kind} probe with HTTP {response.status_code}")
        found = _response_headers(list(response.headers.items()))
        if stream is None:
            return [json.loads(await response.aread())], found
        return [event async for event in sse_events(response) if event is not None], found
    finally:
        await response.aclose()


async def learn_shapes(upstream: UpstreamClient, model: str) -> UpstreamShapes:
    """Ask the upstream for short answers of every kind and keep their shapes (raises ``ShapeProbeError``)."""
    kinds: dict[Kind, KindShapes] = {}
    whole_headers: dict[str, str] = {}
    stream_headers: dict[str, str] = {}
    try:
        for kind in ("chat", "completions"):
            [whole], whole_headers = await _probe(upstream, kind, model, None)
            streams = {}
            for include_usage in (True, False):
                events, stream_headers = await _probe(upstream, kind, model, include_usage)
                streams[include_usage] = StreamTemplates.of(events, kind)
            marker = uuid.uuid4().hex
            [named], _ = await _probe(upstream, kind, model, None, request_id=marker)
            ids = IdForm.of(str(whole["id"]))
            if str(named.get("id", "")).endswith(marker):
                ids = IdForm(str(named["id"])[: -len(marker)], ids.length, uses_request_id=True)
            kinds[kind] = KindShapes(whole, streams, ids)
    except (KeyError, IndexError, TypeError, ValueError, UpstreamError) as exc:
        if isinstance(exc, ShapeProbeError):
            raise
        raise ShapeProbeError(f"unreadable probe answer ({type(exc).__name__})") from None
    return UpstreamShapes(kinds, whole_headers, stream_headers)
