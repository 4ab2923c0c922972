"""Continuous-batching benchmark: short requests beside long ones, over real HTTP to a local-mode gateway.

Run with ``python -m lethe.benchmarks.batching_bench [--rounds N] [--out FILE]``; ``main()`` also returns
the figures as a dict.

A ``lethe serve`` subprocess serves the tiny fictitious-authors model on loopback. Requests are raw
completions, greedy, whose prompts repeat an author's name (the tiny model keeps repeating it; only
prompts whose answer runs to 128 tokens are kept): *short* ones ask for 8 tokens, *long* ones for 128.

1. **solo**: short and long requests one at a time: each kind's latency alone;
2. **sequential**: the mixed workload (per round, 32 short and 4 long requests) sent one at a time;
3. **concurrent**: 8 clients at once, 4 sending short requests and 4 sending long ones, each its share
   of the same workload, back to back (a short client sends 8 requests per long one, so short requests
   keep arriving while the long ones run).

Reported: p50/p90 latency of short and long requests alone and under the concurrent load (a short request
should finish in about its solo time, not wait for the long ones), completion tokens per second and
requests per second of the concurrent run against the sequential one (goal: >= 3x), and the machine's
load average. Greedy answers are checked to be the same token counts in every phase.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from lethe.benchmarks.server_harness import GatewayServer

MODEL = "tiny-authors"
SHORT_TOKENS = 8
LONG_TOKENS = 128
CLIENTS_PER_KIND = 4
SHORT_PER_LONG = 8  # a short client sends this many requests per long request, so both kinds overlap throughout


def _prompts() -> list[str]:
    """Candidate prompts the tiny model tends to continue for long when greedy (it repeats the name)."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    people = sorted({row["person"] for row in build_world(WorldConfig.test()).rows("retain")})
    return [f"{person} {person} {person.split()[0]}" for person in people]


def _complete(client: httpx.Client, prompt: str, max_tokens: int) -> tuple[float, int]:
    """One greedy completion: ``(latency in seconds, completion tokens)``."""
    body = {"model": MODEL, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    response = client.post("/v1/completions", json=body)
    latency = time.perf_counter() - started
    if response.status_code != 200:
        raise RuntimeError(f"the gateway answered {response.status_code}: {response.text[:300]}")
    return latency, int(response.json()["usage"]["completion_tokens"])


def _percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def _summary(latencies: Sequence[float]) -> dict[str, float]:
    return {"p50_s": statistics.median(latencies), "p90_s": _percentile(latencies, 0.9), "n": len(latencies)}


def _workload(prompts: Sequence[str], rounds: int) -> list[list[tuple[str, int]]]:
    """Each client's requests: clients ``0..3`` send ``8 * rounds`` short ones, ``4..7`` ``rounds`` long ones."""
    clients = []
    for client in range(2 * CLIENTS_PER_KIND):
        short = client < CLIENTS_PER_KIND
        tokens, count = (SHORT_TOKENS, rounds * SHORT_PER_LONG) if short else (LONG_TOKENS, rounds)
        clients.append([(prompts[(client * count + r) % len(prompts)], tokens) for r in range(count)])
    return clients


def run(rounds: int = 6, server_args: Sequence[str] = ()) -> dict[str, Any]:
    """Start a gateway, run the three phases and return the figures."""
    candidates = _prompts()
    with tempfile.TemporaryDirectory(prefix="lethe-batching-") as work:
        server = GatewayServer(Path(work) / "registry", model=MODEL, args=list(server_args)).start()
        try:
            with server.client() as client:
                for prompt in candidates[:3]:  # warm-up: weights, kernels, tokenizer caches
                    _complete(client, prompt, SHORT_TOKENS)
                tried = {p: _complete(client, p, LONG_TOKENS) for p in candidates}
                prompts = [p for p, (_, tokens) in tried.items() if tokens == LONG_TOKENS]
                if len(prompts) < CLIENTS_PER_KIND:
                    raise RuntimeError(f"only {len(prompts)} prompts run to {LONG_TOKENS} tokens")
                workload = _workload(prompts, rounds)
                solo_long = [tried[p] for p in prompts]
                solo_short = [_complete(client, p, SHORT_TOKENS) for p in prompts]
                mixed = [request for client in workload for request in client]
                started = time.perf_counter()
                sequential = [_complete(client, p, n) for p, n in mixed]
                sequential_s = time.perf_counter() - started
            results: list[list[tuple[float, int]]] = [[] for _ in workload]
            barrier = threading.Barrier(len(workload))

            def drive(index: int) -> None:
                with server.client() as own:
                    barrier.wait()
                    results[index] = [_complete(own, p, n) for p, n in workload[index]]

            started = time.perf_counter()
            with concurrent.futures.ThreadPoolExecutor(len(workload)) as pool:
                list(pool.map(drive, range(len(workload))))
            concurrent_s = time.perf_counter() - started
        finally:
            server.stop()
    short_load = [lat for index in range(CLIENTS_PER_KIND) for lat, _ in results[index]]
    long_load = [lat for index in range(CLIENTS_PER_KIND, len(workload)) for lat, _ in results[index]]
    sequential_tokens = sum(tokens for _, tokens in sequential)
    concurrent_tokens = sum(tokens for client in results for _, tokens in client)
    requests = len(mixed)
    figures: dict[str, Any] = {
        "model": MODEL,
        "clients": len(workload),
        "rounds": rounds,
        "max_tokens": {"short": SHORT_TOKENS, "long": LONG_TOKENS},
        "mean_completion_tokens": {
            "short": statistics.mean(t for _, t in solo_short),
            "long": statistics.mean(t for _, t in solo_long),
        },
        "short_solo": _summary([lat for lat, _ in solo_short]),
        "short_under_load": _summary(short_load),
        "long_solo": _summary([lat for lat, _ in solo_long]),
        "long_under_load": _summary(long_load),
        "sequential": {"seconds": sequential_s, "tokens": sequential_tokens, "requests": requests},
        "concurrent": {"seconds": concurrent_s, "tokens": concurrent_tokens, "requests": requests},
        "load_average": os.getloadavg()[0],
        "cpus": os.cpu_count(),
    }
    figures["short_p50_ratio_to_solo"] = figures["short_under_load"]["p50_s"] / figures["short_solo"]["p50_s"]
    figures["tokens_per_s"] = {
        "sequential": sequential_tokens / sequential_s,
        "concurrent": concurrent_tokens / concurrent_s,
    }
    figures["throughput_ratio"] = figures["tokens_per_s"]["concurrent"] / figures["tokens_per_s"]["sequential"]
    figures["requests_per_s_ratio"] = sequential_s / concurrent_s
    return figures


def report(figures: dict[str, Any]) -> str:
    """The figures as a few readable lines."""
    short_solo, short_load = figures["short_solo"]["p50_s"], figures["short_under_load"]["p50_s"]
    long_solo, long_load = figures["long_solo"]["p50_s"], figures["long_under_load"]["p50_s"]
    tokens = figures["tokens_per_s"]
    return "\n".join([
        f"{figures['clients']} clients on {figures['model']} ({figures['rounds']} long or "
        f"{figures['rounds'] * SHORT_PER_LONG} short requests each; max_tokens "
        f"{SHORT_TOKENS}/{LONG_TOKENS}, mean completion tokens {figures['mean_completion_tokens']['short']:.1f}/"
        f"{figures['mean_completion_tokens']['long']:.1f}); load average {figures['load_average']:.1f} on "
        f"{figures['cpus']} CPUs",
        f"short requests p50: solo {short_solo * 1000:.0f} ms, beside long ones {short_load * 1000:.0f} ms "
        f"({figures['short_p50_ratio_to_solo']:.2f}x solo)",
        f"long requests p50: solo {long_solo * 1000:.0f} ms, under load {long_load * 1000:.0f} ms",
        f"throughput: sequential {tokens['sequential']:.0f} tokens/s, concurrent {tokens['concurrent']:.0f} tokens/s "
        f"({figures['throughput_ratio']:.2f}x; requests/s {figures['requests_per_s_ratio']:.2f}x)",
    ])  # fmt: skip


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Run the benchmark, print the figures (JSON on the last line) and write them to ``--out`` if given."""
    parser = argparse.ArgumentParser(
        prog="python -m lethe.benchmarks.batching_bench", description=(__doc__ or "").split("\n")[0]
    )
    parser.add_argument("--rounds", type=int, default=6, help="requests per long client, x8 per short one (default 6)")
    parser.add_argument("--out", type=Path, help="write the figures as JSON here")
    parser.add_argument("server_args", nargs="*", help="extra `lethe serve` flags, after --")
    args = parser.parse_args(argv)
    os.environ.setdefault("LETHE_THREADS", "1")
    figures = run(args.rounds, args.server_args)
    print(report(figures), file=sys.stderr)
    print(json.dumps(figures))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
