"""``lethe serve --upstream URL``: the gateway as a drop-in proxy in front of a hosted model server.

Only the tokenizer, chat template, config and input-embedding matrix are loaded
(``runtime.loading.load_embedder``); forget sets come from ``--forget-set`` folders or
``POST /admin/forget-sets/import``, since there is no model here to train them with.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from runtime.artifact import ForgetSetArtifact
from runtime.settings import LetheSettings


def add_proxy_arguments(serve: argparse.ArgumentParser) -> None:
    """The proxy-mode flags of ``lethe serve``."""
    group = serve.add_argument_group("proxy mode (in front of vLLM or another OpenAI-compatible server)")
    group.add_argument(
        "--upstream", help="upstream base URL, e.g. http://vllm:8000, enables proxy mode (LETHE_UPSTREAM)"
    )
    group.add_argument("--upstream-model", help="the upstream's model name (LETHE_UPSTREAM_MODEL)")
    group.add_argument(
        "--embeddings-from",
        help="built-in name, HF folder or .gguf whose tokenizer and embedding matrix to load (default: --model)",
    )
    group.add_argument(
        "--upstream-prompt-embeds",
        choices=["auto", "yes", "no"],
        help="whether the upstream takes prompt_embeds; auto probes it (LETHE_UPSTREAM_PROMPT_EMBEDS)",
    )
    group.add_argument(
        "--no-embeds-policy",
        choices=["refuse", "text", "block"],
        help="flagged requests when the upstream takes no prompt_embeds (LETHE_NO_EMBEDS_POLICY, default refuse)",
    )
    group.add_argument("--refusal-message", help="answer of the refuse policy (LETHE_REFUSAL_MESSAGE)")
    group.add_argument(
        "--upstream-timeout", type=float, help="seconds to wait for upstream bytes (LETHE_UPSTREAM_TIMEOUT_S)"
    )


def proxy_overrides(args: argparse.Namespace) -> dict[str, Any]:
    """Settings fields from the proxy flags (``None`` where not given)."""
    return {
        "upstream": args.upstream,
        "upstream_model": args.upstream_model,
        "embeddings_from": args.embeddings_from,
        "upstream_prompt_embeds": args.upstream_prompt_embeds,
        "no_embeds_policy": args.no_embeds_policy,
        "refusal_message": args.refusal_message,
        "upstream_timeout_s": args.upstream_timeout,
    }


def serve_proxy(settings: LetheSettings, forget_set_folders: Sequence[Path] = (), log_level: str = "info") -> int:
    """Load the embedder, open the registry and proxy to ``settings.upstream`` until interrupted."""
    import uvicorn

    from runtime.loading import load_embedder
    from service.app import create_app
    from service.gateway import build_gateway
    from service.proxy_backend import ProxyBackend
    from service.serve_cli import check_binding

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for warning in check_binding(settings):
        print(f"lethe: warning: {warning}", file=sys.stderr, flush=True)
    if not settings.upstream_model:
        raise ValueError("proxy mode needs --upstream-model (LETHE_UPSTREAM_MODEL): the upstream's model name")
    if settings.threads > 0:
        import torch

        torch.set_num_threads(settings.threads)
    embedder = load_embedder(settings.embeddings_from or settings.model, settings, progress=True)
    imports = [
        (ForgetSetArtifact.load(f, embedder.fingerprint, embedder.hidden_size), "cli") for f in forget_set_folders
    ]
    gateway = build_gateway(settings, ProxyBackend(settings, embedder), imports)
    app = create_app(gateway)
    print(
        f"lethe: proxying {settings.upstream_model} at {settings.upstream} "
        f"on http://{settings.host}:{settings.port}/v1 "
        f"(embeddings of {embedder.name}, registry {settings.registry})",
        file=sys.stderr,
        flush=True,
    )
    uvicorn.run(app, host=settings.host, port=settings.port, log_level=log_level, timeout_graceful_shutdown=10)
    return 0
