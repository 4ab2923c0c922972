"""The one writer of inference audit lines (and the token and latency metrics that go with them).

Served requests get one line per prompt with ``prompt_hmac`` (HMAC-SHA256 of the rendered prompt's
text under the server's audit key, ``service.audit``) or ``embeds_hmac`` (of an uploaded tensor);
requests proxy mode forwards unchanged get one line with ``body_hmac`` (of the body as sent), since
they are never rendered here. Every line names its key by ``audit_key_id``. No line holds prompt text.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from lethe.service.audit import AuditHasher, AuditLog
from lethe.service.metrics import GatewayMetrics
from lethe.service.screening_step import ScreenedRequest

Status = int | str


@dataclass(frozen=True)
class InferenceAudit:
    """Writes what happened to each inference request, without its text."""

    log: AuditLog
    metrics: GatewayMetrics
    model_id: str
    hasher: AuditHasher

    def served(
        self, screened: ScreenedRequest, request_id: str, status: Status, tokens: Sequence[int], stream: bool
    ) -> None:
        """One line per prompt of a request this gateway served (generated here or on ``prompt_embeds`` upstream);
        ``tokens`` are the completion tokens of each."""
        latency_s = screened.elapsed()
        for index, item in enumerate(screened.prompts):
            self.log.record(
                "inference",
                route=screened.endpoint,
                request_id=request_id,
                model=self.model_id,
                choice=index,
                **item.audit_digest(self.hasher),
                audit_key_id=self.hasher.key_id,
                forget_sets=[f.forget_set_id for f in item.flags],
                prompt_tokens=item.prompt_tokens,
                completion_tokens=tokens[index] if index < len(tokens) else 0,
                latency_ms=round(latency_s * 1000, 2),
                status=status,
                stream=stream,
            )
            self.metrics.prompt_tokens.inc(item.prompt_tokens)
        self.metrics.completion_tokens.inc(sum(tokens))
        self.metrics.generation_latency.labels("true" if screened.flagged else "false").observe(latency_s)

    def forwarded(self, screened: ScreenedRequest, raw: bytes, status: Status) -> None:
        """One line for a request proxy mode forwarded unchanged (no forget set flagged it)."""
        self.log.record(
            "inference",
            route=screened.endpoint,
            model=self.model_id,
            body_hmac=self.hasher.bytes(raw),
            audit_key_id=self.hasher.key_id,
            forget_sets=[],
            forwarded=True,
            latency_ms=round(screened.elapsed() * 1000, 2),
            status=status,
            stream=bool(screened.body.stream),
        )
