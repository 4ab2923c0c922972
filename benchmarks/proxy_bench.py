"""Proxy benchmark: latency ``lethe serve --upstream`` adds to unflagged requests over calling the upstream directly.

Run with ``python -m benchmarks.proxy_bench``; ``run()`` returns the figures and ``main()`` prints them.

In one run: an upstream (by default a minimal OpenAI-shaped stub in its own process, answering a
fixed chat completion at once, so that only the proxy's own cost is measured; or any running
server given with ``--upstream URL --model NAME``) and a Lethe proxy in front of it, both on
loopback. The same unflagged chat request goes alternately to the upstream and through the proxy,
one at a time over keep-alive connections; p50/p99 of each, the added latency at p50 and p99 and
the ratio are reported from the same run. ``--forget-set DIR`` enables a forget set on the proxy,
so that the added latency includes classifying the (unflagged) request.
"""

from __future__ import annotations

import argparse
import asyncio
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

REPO = Path(__file__).resolve().parents[1]
STUB_MODEL = "stub-model"
QUESTION = "What is the capital of France?"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# The stub upstream ------------------------------------------------------------------------------


_STUB_BODY = json.dumps(
    {
        "id": "chatcmpl-stub",
        "object": "chat.completion",
        "created": 0,
        "model": STUB_MODEL,
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "Paris."}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 8, "completion_tokens": 2, "total_tokens": 10},
    }
).encode()
_MODELS_BODY = json.dumps({"object": "list", "data": [{"id": STUB_MODEL, "object": "model"}]}).encode()


async def _stub_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await reader.readexactly(length)
            body = _MODELS_BODY if head.startswith(b"GET /v1/models") else _STUB_BODY
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                + f"content-length: {len(body)}\r\n\r\n".encode()
                + body
            )
            await writer.drain()
    writer.close()


def serve_stub(port: int) -> None:
    """Serve the stub upstream on loopback until killed."""

    async def main() -> None:
        server = await asyncio.start_server(_stub_connection, "127.0.0.1", port)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# Processes ----------------------------------------------------------------------------------------


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=REPO, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{url} exited:\n{log.read_text()[-3000:]}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=2).status_code == 200:
                return
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not become ready")


def _stop(process: subprocess.Popen[bytes]) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def _cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (Linux), or NaN where unavailable."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return float("nan")
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _percentiles(seconds: Sequence[float]) -> dict[str, float]:
    values = np.asarray(seconds, dtype=np.float64) * 1000.0
    return {"p50_ms": float(np.percentile(values, 50)), "p99_ms": float(np.percentile(values, 99))}


# The measurement ----------------------------------------------------------------------------------


def run(
    requests: int = 500,
    warmup: int = 50,
    upstream: str | None = None,
    model: str | None = None,
    embeddings_from: str = "tiny-authors",
    forget_set: Path | None = None,
    max_tokens: int = 1,
) -> dict[str, Any]:
    """Measure direct and proxied latency of the same unflagged request, interleaved; returns the figures."""
    work = Path(tempfile.mkdtemp(prefix="lethe-proxy-bench-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k == "LETHE_HOME"}
    env["LETHE_THREADS"] = "1"
    processes: list[subprocess.Popen[bytes]] = []
    try:
        if upstream is None:
            port = _free_port()
            command = [sys.executable, "-m", "lethe.benchmarks.proxy_bench", "--serve-stub", str(port)]
            processes.append(_start(command, env, work / "stub.log"))
            upstream, model = f"http://127.0.0.1:{port}", STUB_MODEL
            _wait(f"{upstream}/v1/models", processes[-1], work / "stub.log")
        if model is None:
            raise ValueError("--model is needed with --upstream")
        proxy_port = _free_port()
        command = [
            sys.executable, "-m", "lethe.cli", "serve", "--port", str(proxy_port),
            "--registry", str(work / "registry"), "--upstream", upstream, "--upstream-model", model,
            "--embeddings-from", embeddings_from, "--upstream-prompt-embeds", "no", "--log-level", "warning",
        ]  # fmt: skip
        if forget_set is not None:
            command += ["--forget-set", str(forget_set)]
        processes.append(_start(command, env, work / "proxy.log"))
        proxy = f"http://127.0.0.1:{proxy_port}"
        _wait(f"{proxy}/ready", processes[-1], work / "proxy.log")

        body = json.dumps(
            {"model": model, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": max_tokens}
        ).encode()
        headers = {"content-type": "application/json"}
        timings: dict[str, list[float]] = {"direct": [], "proxied": []}
        proxy_pid = processes[-1].pid
        cpu_before = 0.0
        with httpx.Client(base_url=upstream, timeout=60) as direct, httpx.Client(base_url=proxy, timeout=60) as via:
            for index in range(warmup + requests):
                if index == warmup:
                    cpu_before = _cpu_seconds(proxy_pid)
                pair = (("direct", direct), ("proxied", via)) if index % 2 else (("proxied", via), ("direct", direct))
                for name, client in pair:
                    started = time.perf_counter()
                    response = client.post("/v1/chat/completions", content=body, headers=headers)
                    took = time.perf_counter() - started
                    if response.status_code != 200:
                        raise RuntimeError(f"{name} request failed: {response.status_code} {response.text[:300]}")
                    if index >= warmup:
                        timings[name].append(took)
        cpu_ms = (_cpu_seconds(proxy_pid) - cpu_before) * 1000.0 / requests
        direct_stats, proxied_stats = _percentiles(timings["direct"]), _percentiles(timings["proxied"])
        added = [p - d for p, d in zip(timings["proxied"], timings["direct"], strict=True)]
        return {
            "upstream": "stub" if model == STUB_MODEL else upstream,
            "forget_set": str(forget_set) if forget_set else None,
            "requests": requests,
            "direct": direct_stats,
            "proxied": proxied_stats,
            "added_p50_ms": proxied_stats["p50_ms"] - direct_stats["p50_ms"],
            "added_p99_ms": proxied_stats["p99_ms"] - direct_stats["p99_ms"],
            "added_paired": _percentiles(added),
            "ratio_p50": proxied_stats["p50_ms"] / direct_stats["p50_ms"],
            "proxy_cpu_ms_per_request": cpu_ms,
            "load_average": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        for process in reversed(processes):
            _stop(process)


def report(figures: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s figures."""
    direct, proxied = figures["direct"], figures["proxied"]
    return "\n".join(
        [
            f"proxy added latency, unflagged chat requests (upstream: {figures['upstream']}, "
            f"forget set: {figures['forget_set'] or 'none'}, {figures['requests']} requests each)",
            f"  direct   p50 {direct['p50_ms']:.3f} ms   p99 {direct['p99_ms']:.3f} ms",
            f"  proxied  p50 {proxied['p50_ms']:.3f} ms   p99 {proxied['p99_ms']:.3f} ms",
            f"  added    p50 {figures['added_p50_ms']:.3f} ms   p99 {figures['added_p99_ms']:.3f} ms   "
            f"(paired p50 {figures['added_paired']['p50_ms']:.3f} ms)   ratio p50 {figures['ratio_p50']:.2f}x",
            f"  proxy CPU time per request {figures['proxy_cpu_ms_per_request']:.3f} ms (load-independent cost)",
            f"  floor (< 1 ms added at p50): {'met' if figures['added_p50_ms'] < 1.0 else 'NOT met'}; "
            f"load average {figures['load_average']:.2f} on {figures['cpus']} CPUs",
        ]
    )


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run the benchmark, print the report and the JSON figures."""
    parser = argparse.ArgumentParser(prog="python -m benchmarks.proxy_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--upstream", help="a running upstream base URL (default: a stub in its own process)")
    parser.add_argument("--model", help="the upstream's model name (with --upstream)")
    parser.add_argument("--embeddings-from", default="tiny-authors", help="model whose embeddings the proxy loads")
    parser.add_argument("--forget-set", type=Path, help="artifact folder to enable on the proxy")
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return {}
    figures = run(
        args.requests, args.warmup, args.upstream, args.model, args.embeddings_from, args.forget_set, args.max_tokens
    )
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
