"""The gateway's parts wired together: backend, screen, forget sets, screening step, keys, metrics, audit."""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from fastapi import Request

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.service.audit import AuditHasher, AuditLog
from lethe.service.auth import KeyChecker
from lethe.service.backend import Backend, LocalBackend
from lethe.service.forget_sets import ForgetSetManager
from lethe.service.generation_defaults import GenerationDefaults
from lethe.service.inference_audit import InferenceAudit
from lethe.service.metrics import GatewayMetrics
from lethe.service.registry_store import open_registry
from lethe.service.request_rules import RequestRules
from lethe.service.screening_step import ScreeningStep
from lethe.service.settings import GatewaySettings

AUDIT_FILE = "audit.jsonl"


@dataclass
class Gateway:
    """Everything a request handler needs."""

    settings: GatewaySettings
    backend: Backend
    screen: ForgetSetScreen
    forget_sets: ForgetSetManager
    screening: ScreeningStep
    keys: KeyChecker
    metrics: GatewayMetrics
    audit: AuditLog
    inference_audit: InferenceAudit
    startup_artifacts: list[tuple[ForgetSetArtifact, str]] = field(default_factory=list)
    logger: logging.Logger = field(default_factory=lambda: logging.getLogger("lethe.service"))

    def start(self) -> None:
        """Recover the registry, load forget sets, start the workers (before the first request)."""
        self.forget_sets.start(self.startup_artifacts)
        self.startup_artifacts = []
        self.backend.start()
        self.metrics.forget_sets_live.set_function(lambda: len(self.screen.active))
        for state in ("queued", "running", "succeeded", "failed", "cancelled"):
            self.metrics.jobs.labels(state).set_function(lambda state=state: self.forget_sets.job_count(state))

    def stop(self) -> None:
        """Stop workers and close files."""
        self.forget_sets.stop()
        self.backend.close()
        self.screening.close()
        self.audit.close()
        self.forget_sets.registry.close()


def build_gateway(
    settings: GatewaySettings,
    backend: Backend,
    startup_artifacts: Iterable[tuple[ForgetSetArtifact, str]] = (),
) -> Gateway:
    """Assemble a gateway around ``backend`` with the registry under ``settings.registry``.

    ``startup_artifacts`` are ``(artifact, source)`` pairs (``--forget-set`` folders, a demo
    forget set...) copied into the registry and enabled at start, unless their id is already
    registered.
    """
    metrics = GatewayMetrics()
    registry = open_registry(settings)
    audit = AuditLog(registry.root / AUDIT_FILE)
    screen = ForgetSetScreen()
    model = backend.local_model
    manager = ForgetSetManager(
        registry, screen, backend.embedder, model, audit, workers=settings.workers, lease_s=settings.job_lease_s
    )
    keys = KeyChecker.from_strings(settings.api_key_list, settings.admin_key or None)
    screening = ScreeningStep(
        backend, screen, request_rules(settings, backend), keys, metrics, settings.max_prompt_tokens,
        threads=max(1, settings.max_concurrency),
    )  # fmt: skip
    gateway = Gateway(
        settings=settings,
        backend=backend,
        screen=screen,
        forget_sets=manager,
        screening=screening,
        keys=keys,
        metrics=metrics,
        audit=audit,
        inference_audit=InferenceAudit(
            audit, metrics, backend.model_id, AuditHasher.for_registry(registry.root, settings.audit_key)
        ),
        startup_artifacts=list(startup_artifacts),
    )
    metrics.bind_gauges(lambda: backend.load()[0], lambda: backend.load()[1])
    if isinstance(backend, LocalBackend):
        backend.batcher.on_batch = metrics.batch_size.observe
    return gateway


def request_rules(settings: GatewaySettings, backend: Backend) -> RequestRules:
    """What this gateway honours: the settings' limits, and no echo in proxy mode (vLLM cannot echo embeddings)."""
    return RequestRules(
        max_new_tokens=settings.max_new_tokens,
        vocab_size=backend.embedder.vocab_size,
        allow_prompt_embeds=settings.allow_prompt_embeds,
        any_embedding_rows=settings.prompt_embeds_any_rows,
        echo=not backend.passthrough,
    )


def local_backend(model: LanguageModel, settings: GatewaySettings) -> LocalBackend:
    """A ``LocalBackend`` sized from settings."""
    return LocalBackend(
        model,
        max_batch_size=settings.max_batch_size,
        batch_window_s=settings.batch_window_ms / 1000.0,
        max_pending=settings.max_queue_depth,
        decode_workers=settings.decode_workers,
        scoring_threads=max(1, settings.max_concurrency),
        generation_defaults=GenerationDefaults.choose(settings.generation_defaults, model.path),
        served_names=settings.served_model_names,
    )


def gateway_of(request: Request) -> Gateway:
    """The gateway serving this request."""
    return request.app.state.gateway
