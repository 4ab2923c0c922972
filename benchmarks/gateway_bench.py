"""Gateway benchmark: latency the HTTP gateway adds over the runtime, and throughput under concurrency.

Run with ``python -m benchmarks.gateway_bench``; ``main()`` also returns the figures as a dict.

In one run, on the same model and prompts:
1. a forget set is trained in-process (small budget) and saved;
2. **direct**: each request is routed (``ForgetSetScreen.route``) and generated
   (``LanguageModel.generate``) in this process, one at a time;
3. **gateway**: ``lethe serve --forget-set <artifact>`` runs in a subprocess on loopback and the
   same requests go through ``POST /v1/chat/completions``, one at a time, then from N concurrent
   clients.

Reported: per-request latency p50/p99 for flagged and unflagged requests on both paths, the added
latency (gateway - direct, paired per request) and the ratio; completion tokens per second of the
gateway with N concurrent clients against the gateway and the runtime one request at a time.
Direct and gateway requests run in alternating blocks, never at once, so both see the same
machine load on average. Outputs are checked to be identical on both paths. ``--threads 1``
avoids OpenMP stalls on an oversubscribed machine; the load average is reported.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.service.settings import GatewaySettings
from lethe.training.presets import SMOKE_OPTIONS

REPO = Path(__file__).resolve().parents[1]
BENCH_KEY = "bench-key"
BENCH_ADMIN_KEY = "bench-admin-key"
# The forget set only has to exist and flag prompts; its quality is not what is measured here.
FAST_OPTIONS = SMOKE_OPTIONS


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Server:
    """``lethe serve`` in a subprocess."""

    def __init__(self, model: str, registry: Path, forget_set: Path, threads: int, decode_workers: int):
        self.port = _free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k == "LETHE_HOME"}
        env.update(LETHE_API_KEYS=BENCH_KEY, LETHE_ADMIN_KEY=BENCH_ADMIN_KEY, LETHE_THREADS=str(threads))
        self.log = registry.parent / "server.log"
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "lethe.cli",
                    "serve",
                    "--model",
                    model,
                    "--port",
                    str(self.port),
                    "--registry",
                    str(registry),
                    "--forget-set",
                    str(forget_set),
                    "--log-level",
                    "warning",
                ],
                cwd=REPO,
                env=env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 300.0) -> None:
        """Block until ``/ready`` answers 200."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited:\n{self.log.read_text()[-3000:]}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.url}/ready", timeout=2).status_code == 200:
                    return
            time.sleep(0.2)
        raise RuntimeError("the gateway did not become ready")

    def stop(self) -> None:
        """Graceful shutdown (SIGTERM), then SIGKILL after a minute."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(60)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _train_forget_set(
    model: LanguageModel, forget: list[dict], retain: list[dict], method: str, options: dict[str, Any], folder: Path
) -> Path:
    from lethe.training.data import parse_rows
    from lethe.training.trainer import TrainConfig, train_forget_set

    config = TrainConfig.from_options(method, options)
    artifact = train_forget_set(
        model, "bench", parse_rows(forget, "forget"), parse_rows(retain, "retain"), config, None, None
    )
    return artifact.save(folder / artifact.id)


def _direct(
    model: LanguageModel, screen: ForgetSetScreen, question: str, params: SamplingParams
) -> tuple[str, int, float]:
    started = time.perf_counter()
    messages = [{"role": "user", "content": question}]
    prompt = model.chat_prompt(messages)
    verdict = screen.screen(prompt, messages, request_seed=0, embedder=model.embedder)
    result = model.generate(prompt, params, verdict.plan if verdict.flagged else None)
    return result.text, len(result.token_ids), time.perf_counter() - started


def _gateway(client: httpx.Client, model: str, question: str, max_tokens: int) -> tuple[str, int, float]:
    started = time.perf_counter()
    response = client.post(
        "/v1/chat/completions",
        json={
            "model": model,
            "messages": [{"role": "user", "content": question}],
            "max_tokens": max_tokens,
            "temperature": 0,
        },
    )
    elapsed = time.perf_counter() - started
    response.raise_for_status()
    body = response.json()
    return body["choices"][0]["message"]["content"], int(body["usage"]["completion_tokens"]), elapsed


def run(
    model_spec: str = "tiny-authors",
    requests: int = 24,
    concurrency: int = 8,
    max_tokens: int = 32,
    method: str = "eco",
    options: dict[str, Any] | None = None,
    rounds: int = 3,
    blocks: int = 2,
    decode_workers: int = 2,
) -> dict[str, Any]:
    """Measure both paths and return the figures."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    settings = GatewaySettings()
    threads = settings.threads or int(os.environ.get("LETHE_THREADS", "0") or 0) or min(2, os.cpu_count() or 1)
    import torch

    torch.set_num_threads(threads)
    model = LanguageModel.load(model_spec, settings)
    world = build_world(WorldConfig.test())
    forget_rows, retain_rows = world.rows("forget"), world.rows("retain")
    params = SamplingParams(max_new_tokens=max_tokens)
    with tempfile.TemporaryDirectory(prefix="lethe-bench-") as tmp:
        root = Path(tmp)
        started = time.perf_counter()
        chosen = FAST_OPTIONS if options is None else options
        folder = _train_forget_set(model, forget_rows, retain_rows, method, dict(chosen), root / "artifacts")
        training_s = time.perf_counter() - started
        screen = ForgetSetScreen.from_folders([folder], model.embedder)
        kinds: dict[str, list[str]] = {"flagged": [], "unflagged": []}
        for row in forget_rows + retain_rows:
            flagged = bool(screen.classify([{"role": "user", "content": row["prompt"]}]))
            kinds["flagged" if flagged else "unflagged"].append(row["prompt"])
        questions = {k: (v * requests)[:requests] for k, v in kinds.items() if v}

        server = _Server(model_spec, root / "registry", folder, threads, decode_workers)
        try:
            server.wait_ready()
            headers = {"Authorization": f"Bearer {BENCH_KEY}"}
            admin_headers = {"Authorization": f"Bearer {BENCH_ADMIN_KEY}"}
            with (
                httpx.Client(base_url=server.url, headers=headers, timeout=600) as client,
                httpx.Client(base_url=server.url, headers=admin_headers, timeout=60) as admin,
            ):
                for question in next(iter(questions.values()))[:3]:  # warm-up, both paths
                    _direct(model, screen, question, params)
                    _gateway(client, model_spec, question, max_tokens)
                # Alternating blocks (direct, gateway, direct, gateway...) so both paths see the same machine
                # load on average; whole blocks, because a process's OpenMP threads keep spinning for a while
                # after each request and would slow the other process in a request-by-request interleave.
                direct: dict[str, list[tuple[str, int, float]]] = {k: [] for k in questions}
                gateway: dict[str, list[tuple[str, int, float]]] = {k: [] for k in questions}
                for _ in range(blocks):
                    for kind, qs in questions.items():
                        direct[kind] += [_direct(model, screen, q, params) for q in qs]
                        gateway[kind] += [_gateway(client, model_spec, q, max_tokens) for q in qs]
                all_questions = [q for qs in questions.values() for q in qs]

                def one_client(offset: int) -> int:
                    return sum(
                        _gateway(client, model_spec, all_questions[(offset * 5 + i) % len(all_questions)], max_tokens)[
                            1
                        ]
                        for i in range(rounds)
                    )

                batches_before = _batch_stats(admin.get("/metrics").text)
                with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
                    concurrent_started = time.perf_counter()
                    concurrent_tokens = sum(pool.map(one_client, range(concurrency)))
                    concurrent_s = time.perf_counter() - concurrent_started
                batches_after = _batch_stats(admin.get("/metrics").text)
        finally:
            server.stop()

    direct_tokens = sum(n for results in direct.values() for _, n, _ in results)
    direct_seconds = sum(t for results in direct.values() for _, _, t in results)
    sequential_tokens = sum(n for results in gateway.values() for _, n, _ in results)
    sequential_s = sum(t for results in gateway.values() for _, _, t in results)
    rows = batches_after[1] - batches_before[1]
    batches = batches_after[0] - batches_before[0]
    figures: dict[str, Any] = {
        "model": model_spec,
        "method": method,
        "max_tokens": max_tokens,
        "requests_per_kind": requests * blocks,
        "concurrency": concurrency,
        "threads": threads,
        "decode_workers": decode_workers,
        "training_s": round(training_s, 2),
        "latency": {},
    }
    mismatches = 0
    for kind in questions:
        direct_times = [t for _, _, t in direct[kind]]
        gateway_times = [t for _, _, t in gateway[kind]]
        added = [g - d for g, d in zip(gateway_times, direct_times, strict=True)]
        mismatches += sum(d != g for (d, _, _), (g, _, _) in zip(direct[kind], gateway[kind], strict=True))
        figures["latency"][kind] = {
            "direct": _percentiles(direct_times),
            "gateway": _percentiles(gateway_times),
            "added_ms": _percentiles(added),
            "ratio_p50": float(np.median(gateway_times) / np.median(direct_times)),
        }
    figures["outputs_identical"] = mismatches == 0
    figures["throughput"] = {
        "direct_sequential_tok_s": direct_tokens / direct_seconds,
        "gateway_sequential_tok_s": sequential_tokens / sequential_s,
        "gateway_concurrent_tok_s": concurrent_tokens / concurrent_s,
        "concurrent_over_sequential": (concurrent_tokens / concurrent_s) / (sequential_tokens / sequential_s),
        "concurrent_over_direct": (concurrent_tokens / concurrent_s) / (direct_tokens / direct_seconds),
        "gateway_sequential_over_direct": (sequential_tokens / sequential_s) / (direct_tokens / direct_seconds),
    }
    figures["concurrent_mean_batch_size"] = rows / batches if batches else None
    figures["load_average"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return figures


def _batch_stats(metrics_text: str) -> tuple[float, float]:
    """``(batches, rows)`` decoded so far, from the gateway's ``lethe_batch_size`` histogram."""
    count = total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("lethe_batch_size_count"):
            count = float(line.split()[-1])
        elif line.startswith("lethe_batch_size_sum"):
            total = float(line.split()[-1])
    return count, total


def report(figures: dict[str, Any]) -> str:
    """Human-readable summary."""
    lines = [
        f"gateway benchmark: {figures['model']}, {figures['max_tokens']} tokens/request, greedy, "
        f"{figures['threads']} torch threads, {figures['decode_workers']} decode workers "
        f"(forget set '{figures['method']}' trained in {figures['training_s']} s)",
    ]
    for kind, data in figures["latency"].items():
        lines.append(
            f"  {kind:9s} direct p50 {data['direct']['p50_ms']:8.1f} ms p99 {data['direct']['p99_ms']:8.1f} | "
            f"gateway p50 {data['gateway']['p50_ms']:8.1f} ms p99 {data['gateway']['p99_ms']:8.1f} | "
            f"added p50 {data['added_ms']['p50_ms']:+7.1f} ms p99 {data['added_ms']['p99_ms']:+7.1f} | "
            f"ratio {data['ratio_p50']:.3f}"
        )
    t = figures["throughput"]
    lines += [
        f"  throughput: runtime sequential {t['direct_sequential_tok_s']:.1f} tok/s, gateway sequential "
        f"{t['gateway_sequential_tok_s']:.1f} tok/s, gateway {figures['concurrency']} clients "
        f"{t['gateway_concurrent_tok_s']:.1f} tok/s",
        f"  ratios: concurrent/sequential {t['concurrent_over_sequential']:.2f}x, concurrent/runtime "
        f"{t['concurrent_over_direct']:.2f}x, sequential gateway/runtime {t['gateway_sequential_over_direct']:.3f}x; "
        f"mean batch with {figures['concurrency']} clients {figures['concurrent_mean_batch_size'] or 0:.2f}; "
        f"outputs identical: {figures['outputs_identical']}; load average {figures['load_average']}",
    ]
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the report and return the figures (``argv`` None: the defaults)."""
    parser = argparse.ArgumentParser(prog="gateway_bench", description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny-authors")
    parser.add_argument("--requests", type=int, default=24, help="sequential requests per kind")
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=3, help="requests per concurrent client")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--method", default="eco", choices=["eco", "spul", "eco+spul"])
    parser.add_argument("--options", default=json.dumps(FAST_OPTIONS), help="trainer options as JSON")
    parser.add_argument("--decode-workers", type=int, default=2, help="the gateway's decoding threads")
    parser.add_argument("--threads", type=int, default=None, help="torch threads of both processes (LETHE_THREADS)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON too")
    args = parser.parse_args([] if argv is None else list(argv))
    if args.threads:
        os.environ["LETHE_THREADS"] = str(args.threads)
    figures = run(
        args.model,
        args.requests,
        args.concurrency,
        args.max_tokens,
        args.method,
        json.loads(args.options),
        args.rounds,
        decode_workers=args.decode_workers,
    )
    print(report(figures))
    if args.json:
        print(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main(sys.argv[1:])
