"""Start the gateway: over a local model (``serve_local``) or in front of an upstream (``serve_proxy``).

Proxy mode loads only the tokenizer, chat template, config and input-embedding matrix
(``runtime.loading.load_embedder``); its forget sets come from ``--forget-set`` folders or
``POST /admin/forget-sets/import``, since there is no model here to train them with.
"""

from __future__ import annotations

import ctypes
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.service.settings import GatewaySettings, check_binding

StartupArtifacts = Callable[[LanguageModel], Iterable[ForgetSetArtifact]]


M_ARENA_MAX = -8  # glibc's mallopt parameter


def limit_malloc_arenas(arenas: int = 2) -> bool:
    """Cap glibc's malloc arenas (by default up to 8 per core, one per allocating thread, each keeping its freed
    memory): the gateway's worker threads otherwise hold tens of MB apiece after a burst of distinct prompts.
    False where the C library is not glibc."""
    try:
        return bool(ctypes.CDLL("libc.so.6").mallopt(M_ARENA_MAX, arenas))
    except (OSError, AttributeError):
        return False


def _prepare_process(settings: GatewaySettings, log_level: str) -> None:
    limit_malloc_arenas()
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in check_binding(settings):
        print(f"lethe: warning: {warning}", file=sys.stderr, flush=True)


def _run(app: object, settings: GatewaySettings, log_level: str, banner: str) -> int:
    import uvicorn

    print(banner, file=sys.stderr, flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
    return 0


def serve_local(
    settings: GatewaySettings,
    forget_set_folders: Sequence[Path] = (),
    startup_artifacts: StartupArtifacts | None = None,
    log_level: str = "info",
) -> int:
    """Load the model, open the registry and serve until interrupted.

    ``startup_artifacts`` is called with the loaded model and returns forget sets to register
    and enable at start (the hook ``lethe serve --demo`` uses); ids already registered are kept.
    """
    from lethe.service.app import create_app
    from lethe.service.gateway import build_gateway, local_backend

    _prepare_process(settings, log_level)
    model = LanguageModel.load(settings.model, settings, progress=True)
    # Artifacts given on the command line are checked now, so a bad one is a clear error before serving.
    imports = [(ForgetSetArtifact.load(f, model.fingerprint, model.hidden_size), "cli") for f in forget_set_folders]
    if startup_artifacts is not None:
        imports += [(artifact, "startup") for artifact in startup_artifacts(model)]
    app = create_app(build_gateway(settings, local_backend(model, settings), imports))
    banner = (
        f"lethe: serving {model.name} on http://{settings.host}:{settings.port}/v1 "
        f"(registry {settings.registry_label})"
    )
    return _run(app, settings, log_level, banner)


def serve_proxy(settings: GatewaySettings, forget_set_folders: Sequence[Path] = (), log_level: str = "info") -> int:
    """Load the embedder, open the registry and proxy to ``settings.upstream`` until interrupted."""
    from lethe.runtime.loading import load_embedder, prepare_model
    from lethe.service.app import create_app
    from lethe.service.gateway import build_gateway
    from lethe.service.generation_defaults import GenerationDefaults
    from lethe.service.proxy_backend import ProxyBackend

    _prepare_process(settings, log_level)
    if not settings.upstream_model:
        raise ValueError("proxy mode needs --upstream-model (LETHE_UPSTREAM_MODEL): the upstream's model name")
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    spec = settings.embeddings_from or settings.model
    embedder = load_embedder(spec, settings, progress=True)
    imports = [
        (ForgetSetArtifact.load(f, embedder.fingerprint, embedder.hidden_size), "cli") for f in forget_set_folders
    ]
    defaults = GenerationDefaults.choose(settings.generation_defaults, prepare_model(spec, settings))
    app = create_app(build_gateway(settings, ProxyBackend(settings, embedder, generation_defaults=defaults), imports))
    banner = (
        f"lethe: proxying {settings.upstream_model} at {settings.upstream} "
        f"on http://{settings.host}:{settings.port}/v1 "
        f"(embeddings of {embedder.name}, registry {settings.registry_label})"
    )
    return _run(app, settings, log_level, banner)
