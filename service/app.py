"""The FastAPI application: routes, error rendering, body limit, metrics, start-up and shutdown."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import Response

from lethe.service import admin_routes, console_routes, import_routes, openai_routes, proxy_fast_path, report_routes
from lethe.service.batcher import Overloaded
from lethe.service.errors import OVERLOADED, APIError, install_error_handlers
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.middleware import AdmissionLimits, AdmissionMiddleware, ErrorGuardMiddleware, MetricsMiddleware
from lethe.service.openapi import install_openapi


def create_app(gateway: Gateway) -> FastAPI:
    """An app serving ``gateway``; its lifespan starts and stops the gateway's workers."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        gateway.start()
        try:
            yield
        finally:
            gateway.stop()

    app = FastAPI(
        title="Lethe",
        description="Inference-time unlearning gateway (OpenAI-compatible).",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.gateway = gateway
    install_error_handlers(app)
    install_openapi(app, [card.id for card in gateway.backend.models()], gateway.settings.max_new_tokens)

    @app.exception_handler(Overloaded)
    async def _overloaded(request: Request, exc: Overloaded) -> Response:
        gateway.metrics.rejected.inc()
        return APIError(
            503, "The server is overloaded; retry shortly.", OVERLOADED, None, "overloaded", {"Retry-After": "1"}
        ).response()

    openai_routes.install_serving(app.state, gateway)
    app.include_router(openai_routes.router)
    app.include_router(import_routes.router)
    app.include_router(admin_routes.router)
    app.include_router(report_routes.router)
    app.include_router(console_routes.router)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: the process answers."""
        return {"status": "ok"}

    @app.get("/ready", response_model=None)
    async def ready(request: Request) -> dict[str, Any] | Response:
        """Readiness: the generation workers run."""
        current = gateway_of(request)
        if not current.backend.ready():
            return APIError(503, "The model workers are not running.", OVERLOADED, None, "not_ready").response()
        waiting, running = current.backend.load()
        return {"status": "ready", "model": current.backend.model_id, "waiting": waiting, "running": running}

    @app.get("/metrics")
    async def metrics(request: Request) -> Response:
        """Prometheus metrics (admin key, since per-forget-set counts would tell users they were flagged)."""
        current = gateway_of(request)
        current.keys.check_admin(request)
        return Response(current.metrics.render(), media_type=current.metrics.content_type)

    # The last added is the outermost: the guard sees every crash, metrics see admission's refusals too, and
    # proxy mode's fast path gets bodies already admitted.
    if proxy_fast_path.serves(gateway):
        app.add_middleware(proxy_fast_path.ProxyFastPath, gateway=gateway)
    settings = gateway.settings
    limits = AdmissionLimits(
        max_body_bytes=settings.max_body_bytes,
        path_limits={import_routes.IMPORT_PATH: settings.max_import_bytes},
        body_timeout_s=settings.body_timeout_s,
        upload_paths=frozenset({import_routes.IMPORT_PATH}),
        uploads_per_client=settings.uploads_per_client,
    )
    app.add_middleware(AdmissionMiddleware, keys=gateway.keys, limits=limits)
    app.add_middleware(MetricsMiddleware, metrics=gateway.metrics)
    app.add_middleware(ErrorGuardMiddleware)
    return app
