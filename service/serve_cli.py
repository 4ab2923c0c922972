"""``lethe serve`` (the gateway, with its registry, keys and limits) and ``lethe worker`` (training for a shared
registry)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.service.launch import StartupArtifacts, serve_local, serve_proxy
from lethe.service.settings import GatewaySettings


def register(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe serve`` and ``lethe worker``."""
    register_worker(commands)
    serve = commands.add_parser("serve", help="run the OpenAI-compatible unlearning gateway")
    serve.add_argument("--model", help="built-in name, HF folder or .gguf file (LETHE_MODEL, default smollm2)")
    serve.add_argument(
        "--served-model-name",
        nargs="+",
        metavar="NAME",
        help="names clients use for the model; the first is its id in answers (LETHE_SERVED_MODEL_NAME, "
        "comma-separated; default: the model's own name). Local mode only: a proxy serves the upstream's names",
    )
    serve.add_argument("--host", help="address to bind (LETHE_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (LETHE_PORT, default 8000)")
    add_registry_arguments(serve)
    serve.add_argument(
        "--workers",
        type=int,
        help="training threads here (LETHE_WORKERS; default 1 with a local model, 0 in proxy mode; 0: never train)",
    )
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
    serve.add_argument(
        "--max-prompt-tokens", type=int, help="longest prompt accepted, local mode (LETHE_MAX_PROMPT_TOKENS)"
    )
    serve.add_argument("--max-body-bytes", type=int, help="largest request body (LETHE_MAX_BODY_BYTES)")
    serve.add_argument(
        "--generation-defaults",
        help="sampling parameters a request leaves out: auto (the model's generation_config.json; default), none "
        "(plain OpenAI defaults), a JSON object of overrides or a generation_config.json (LETHE_GENERATION_DEFAULTS)",
    )
    serve.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    add_proxy_arguments(serve)
    serve.set_defaults(handler=_serve)


def _serve(args: argparse.Namespace) -> int:
    settings = GatewaySettings.from_args(
        args,
        model=args.model,
        served_model_name=",".join(args.served_model_name) if args.served_model_name else None,
        host=args.host,
        port=args.port,
        registry=args.registry,
        state_dir=args.state_dir,
        workers=args.workers,
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
    if settings.upstream and settings.served_model_names:
        raise ValueError("--served-model-name is for local mode; in proxy mode clients use the upstream's names")
    if settings.upstream and args.demo:
        raise ValueError("--demo trains on a local model; in proxy mode import a demo artifact with --forget-set DIR")
    if settings.upstream:
        return serve_proxy(settings, args.forget_set, log_level=args.log_level)
    return serve_local(settings, args.forget_set, _demo_hook(settings) if args.demo else None, log_level=args.log_level)


def register_worker(commands: argparse._SubParsersAction) -> None:
    """Add ``lethe worker``."""
    worker = commands.add_parser(
        "worker", help="train the forget sets queued in a shared (PostgreSQL) registry, for one model"
    )
    worker.add_argument("--model", help="built-in name, HF folder or .gguf file the replicas serve (LETHE_MODEL)")
    add_registry_arguments(worker)
    worker.add_argument("--workers", type=int, default=1, help="jobs trained at once in this process (default 1)")
    worker.add_argument(
        "--lease-seconds",
        type=float,
        help="a job whose worker sends no heartbeat for this long goes back to the queue (LETHE_JOB_LEASE_S, 30)",
    )
    worker.add_argument("--log-level", default="info", choices=["debug", "info", "warning", "error"])
    worker.set_defaults(handler=_worker)


def add_registry_arguments(parser: argparse.ArgumentParser) -> None:
    """``--registry`` and ``--state-dir``."""
    parser.add_argument(
        "--registry",
        help="forget-set registry: a folder (SQLite, one process) or postgresql://USER@HOST/DB (LETHE_REGISTRY)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="with PostgreSQL: this process's audit log and artifact cache (LETHE_STATE_DIR)",
    )


def _worker(args: argparse.Namespace) -> int:
    from lethe.service.worker import run_worker

    settings = GatewaySettings.from_args(
        args, model=args.model, registry=args.registry, state_dir=args.state_dir, job_lease_s=args.lease_seconds
    )
    return run_worker(settings, args.workers, log_level=args.log_level)


def _demo_hook(settings: GatewaySettings) -> StartupArtifacts:
    def demo(model: LanguageModel) -> list[ForgetSetArtifact]:
        from lethe.training.demo import demo_forget_set

        print(
            "lethe: loading the demo forget set (shipped for SmolLM2; for another model it is built first, "
            "about 20 minutes on 2 cores)",
            file=sys.stderr,
            flush=True,
        )
        return [demo_forget_set(settings, model)]

    return demo


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
        "--upstream-dtype",
        choices=["auto", "bfloat16", "float16", "float32"],
        help="dtype of prompt_embeds sent upstream; auto: the model config's, bf16 for float32 (LETHE_UPSTREAM_DTYPE)",
    )
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
        "upstream_dtype": args.upstream_dtype,
        "upstream_timeout_s": args.upstream_timeout,
    }
