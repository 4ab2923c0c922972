"""``lethe serve``: the gateway over a local model, with its registry, keys and limits."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

from runtime.artifact import ForgetSetArtifact
from runtime.model import LanguageModel
from runtime.settings import LetheSettings
from service.proxy_serve import add_proxy_arguments, proxy_overrides, serve_proxy

StartupArtifacts = Callable[[LanguageModel], Iterable[ForgetSetArtifact]]


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe serve``."""
    serve = commands.add_parser("serve", help="run the OpenAI-compatible unlearning gateway")
    serve.add_argument("--model", help="built-in name, HF folder or .gguf file (LETHE_MODEL, default smollm2)")
    serve.add_argument("--host", help="address to bind (LETHE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LETHE_PORT, default 8000)")
    serve.add_argument("--registry", type=Path, help="forget-set registry folder (LETHE_REGISTRY)")
    serve.add_argument("--api-keys", help="comma-separated inference keys (prefer LETHE_API_KEYS: flags show in ps)")
    serve.add_argument("--admin-key", help="admin key (prefer LETHE_ADMIN_KEY)")
    serve.add_argument(
        "--forget-set",
        action="append",
        default=[],
        type=Path,
        metavar="DIR",
        help="import a forget-set artifact folder at start (repeatable)",
    )
    serve.add_argument(
        "--demo",
        action="store_true",
        help="also serve the Harry Potter demo forget set (built from the topic on first use, then cached)",
    )
    serve.add_argument("--max-batch-size", type=int, help="rows per decoding batch (LETHE_MAX_BATCH_SIZE)")
    serve.add_argument(
        "--batch-window-ms", type=float, help="how long a batch waits for company (LETHE_BATCH_WINDOW_MS)"
    )
    serve.add_argument("--max-queue-depth", type=int, help="waiting generations before a 503 (LETHE_MAX_QUEUE_DEPTH)")
    serve.add_argument("--decode-workers", type=int, help="batches decoded at once (LETHE_DECODE_WORKERS)")
    serve.add_argument("--max-new-tokens", type=int, help="largest max_tokens accepted (LETHE_MAX_NEW_TOKENS)")
    serve.add_argument("--max-prompt-tokens", type=int, help="longest prompt accepted (LETHE_MAX_PROMPT_TOKENS)")
    serve.add_argument("--max-body-bytes", type=int, help="largest request body (LETHE_MAX_BODY_BYTES)")
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_proxy_arguments(serve)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    from service.cli import settings_from_args

    settings = settings_from_args(
        args,
        model=args.model,
        host=args.host,
        port=args.port,
        registry=args.registry,
        api_keys=args.api_keys,
        admin_key=args.admin_key,
        max_batch_size=args.max_batch_size,
        batch_window_ms=args.batch_window_ms,
        max_queue_depth=args.max_queue_depth,
        decode_workers=args.decode_workers,
        max_new_tokens=args.max_new_tokens,
        max_prompt_tokens=args.max_prompt_tokens,
        max_body_bytes=args.max_body_bytes,
        **proxy_overrides(args),
    )
    if settings.upstream and args.demo:
        raise ValueError("--demo trains on a local model; in proxy mode import a demo artifact with --forget-set DIR")
    if settings.upstream:
        return serve_proxy(settings, args.forget_set, log_level=args.log_level)
    return serve(settings, args.forget_set, _demo_hook(settings) if args.demo else None, log_level=args.log_level)


def _demo_hook(settings: LetheSettings) -> StartupArtifacts:
    def demo(model: LanguageModel) -> list[ForgetSetArtifact]:
        from training.demo import demo_forget_set

        print(
            "lethe: loading the demo forget set (shipped for SmolLM2; for another model it is built first, "
            "about 20 minutes on 2 cores)",
            file=sys.stderr,
            flush=True,
        )
        return [demo_forget_set(settings, model)]

    return demo


def is_loopback(host: str) -> bool:
    """Whether ``host`` only accepts connections from this machine."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_binding(settings: LetheSettings) -> list[str]:
    """Refuse to expose an unauthenticated server; return warnings to print."""
    warnings = []
    if not settings.api_key_list:
        if not is_loopback(settings.host):
            raise ValueError(
                f"refusing to listen on {settings.host} without API keys: set LETHE_API_KEYS (or --api-keys), "
                "or bind a loopback address such as 127.0.0.1"
            )
        warnings.append(f"no API keys configured: serving WITHOUT authentication, on loopback ({settings.host}) only")
        if not settings.admin_key:
            warnings.append("no admin key configured: the admin API is open to local callers")
    elif not settings.admin_key:
        warnings.append("no admin key configured (LETHE_ADMIN_KEY): the admin API and /metrics are disabled")
    return warnings


def serve(
    settings: LetheSettings,
    forget_set_folders: Sequence[Path] = (),
    startup_artifacts: StartupArtifacts | None = None,
    log_level: str = "info",
) -> int:
    """Load the model, open the registry and serve until interrupted.

    ``startup_artifacts`` is called with the loaded model and returns forget sets to register
    and enable at start (the hook ``lethe serve --demo`` uses); ids already registered are kept.
    """
    import uvicorn

    from service.app import create_app
    from service.gateway import build_gateway, local_backend

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in check_binding(settings):
        print(f"lethe: warning: {warning}", file=sys.stderr, flush=True)
    model = LanguageModel.load(settings.model, settings, progress=True)
    # Artifacts given on the command line are checked now, so a bad one is a clear error before serving.
    imports = [(ForgetSetArtifact.load(f, model.fingerprint, model.hidden_size), "cli") for f in forget_set_folders]
    if startup_artifacts is not None:
        imports += [(artifact, "startup") for artifact in startup_artifacts(model)]
    gateway = build_gateway(settings, local_backend(model, settings), imports)
    app = create_app(gateway)
    print(
        f"lethe: serving {model.name} on http://{settings.host}:{settings.port}/v1 (registry {settings.registry})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
    return 0
