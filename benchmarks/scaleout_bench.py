"""Scale-out benchmark: gateway replicas sharing one PostgreSQL registry.

Run with ``python -m lethe.benchmarks.scaleout_bench [--forget-set DIR]``. It starts a throwaway
PostgreSQL server (``postgres_harness``), the proxy benchmark's stub upstream and two replicas in
proxy mode over the tiny authors model's embeddings, all registering the same forget set (trained
here with the smallest budget unless ``--forget-set`` gives one).

- Propagation: the forget set is switched off and on ``--toggles`` times, alternately on each
  replica; each delay runs from the ``PATCH`` answer to the moment the *other* replica's
  ``/admin/classify`` of a flagged conversation agrees (polled back to back, a few ms apart).
- Throughput: unflagged chat requests from ``--concurrency`` keep-alive connections for
  ``--seconds``, first to one replica, then spread over both (what a load balancer does), the
  forget set on so every request is classified; requests/s, and each replica's CPU seconds per
  request (its capacity per core). A minimal HTTP/1.1 client keeps the load generator's own cost low.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

from lethe.benchmarks.postgres_harness import PostgresServer
from lethe.benchmarks.proxy_bench import QUESTION, STUB_MODEL, Stack, _cpu_seconds
from lethe.benchmarks.server_harness import ADMIN_KEY

EMBEDDINGS = "tiny-authors"


def _forget_set(folder: Path | None, work: Path) -> Path:
    """The artifact folder to register: ``folder``, or one trained now with the smallest budget."""
    if folder is not None:
        return folder
    from lethe.benchmarks.authors_world import WorldConfig, build_world
    from lethe.runtime.model import LanguageModel
    from lethe.training.data import parse_rows
    from lethe.training.presets import SMOKE_OPTIONS
    from lethe.training.trainer import TrainConfig, train_forget_set

    world = build_world(WorldConfig.test())
    artifact = train_forget_set(
        LanguageModel.load(EMBEDDINGS), "scale-out", parse_rows(world.rows("forget"), "forget"),
        parse_rows(world.rows("retain"), "retain"), TrainConfig.from_options("eco", SMOKE_OPTIONS),
    )  # fmt: skip
    return artifact.save(work / artifact.id)


def _conversation() -> list[dict[str, str]]:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    messages = []
    for row in build_world(WorldConfig.test()).rows("forget")[:6]:
        messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "I see."}]
    return messages[:-1]


def propagation(replicas: list[str], forget_set_id: str, toggles: int) -> list[float]:
    """Seconds from each toggle's answer on one replica until the other one's screen agrees."""
    headers = {"Authorization": f"Bearer {ADMIN_KEY}"}
    clients = [httpx.Client(base_url=url, headers=headers, timeout=30) for url in replicas]
    messages = _conversation()

    def flagged(client: httpx.Client) -> bool:
        body = client.post("/admin/classify", json={"messages": messages}).json()
        return forget_set_id in {f["forget_set_id"] for f in body["flagged"]}

    delays = []
    try:
        if not flagged(clients[1]):
            raise RuntimeError("the forget set does not flag its own questions")
        for index in range(toggles):
            here, there = clients[index % 2], clients[(index + 1) % 2]
            enabled = index % 2 == 1
            response = here.patch(f"/admin/forget-sets/{forget_set_id}", json={"enabled": enabled})
            response.raise_for_status()
            started = time.perf_counter()
            while flagged(there) != enabled:
                if time.perf_counter() - started > 30:
                    raise TimeoutError(f"toggle {index} not seen in 30 s")
            delays.append(time.perf_counter() - started)
    finally:
        for client in clients:
            client.close()
    return delays


def _request(port: int) -> bytes:
    body = json.dumps(
        {"model": STUB_MODEL, "messages": [{"role": "user", "content": QUESTION}], "max_tokens": 1}
    ).encode()
    head = (
        f"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\ncontent-type: application/json\r\n"
        f"content-length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


async def _connection(port: int, request: bytes, deadline: float, counts: dict[int, int]) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        while time.perf_counter() < deadline:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            status = int(head.split(b" ", 2)[1])
            length = next(
                int(line.split(b":", 1)[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            counts[status] = counts.get(status, 0) + 1
    finally:
        writer.close()


async def _load(ports: Sequence[int], concurrency: int, seconds: float) -> dict[int, int]:
    counts: dict[int, int] = {}
    deadline = time.perf_counter() + seconds
    requests = {port: _request(port) for port in ports}
    await asyncio.gather(
        *(
            _connection(ports[i % len(ports)], requests[ports[i % len(ports)]], deadline, counts)
            for i in range(concurrency)
        )
    )
    return counts


def _machine_busy() -> tuple[float, float]:
    """CPU time the whole machine spent busy and in total so far, in clock ticks summed over cores (Linux)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = ticks[3] + ticks[4]
    return float(sum(ticks) - idle), float(sum(ticks))


def throughput(replicas: dict[int, int], stub_pid: int, concurrency: int, seconds: float) -> dict[str, Any]:
    """Requests/s over the replicas ``{port: pid}`` (connections spread evenly), CPU ms per request of the replicas,
    of the load generator and the stub, and how busy the whole machine was."""
    asyncio.run(_load(list(replicas), concurrency, min(2.0, seconds)))  # warm-up
    pids = [*replicas.values(), stub_pid]
    cpu_before = {pid: _cpu_seconds(pid) for pid in pids}
    own_before, busy_before = time.process_time(), _machine_busy()
    started = time.perf_counter()
    counts = asyncio.run(_load(list(replicas), concurrency, seconds))
    elapsed = time.perf_counter() - started
    busy_after = _machine_busy()
    total = max(1, sum(counts.values()))
    cpu = {pid: _cpu_seconds(pid) - cpu_before[pid] for pid in pids}
    return {
        "replicas": len(replicas),
        "requests": sum(counts.values()),
        "statuses": {str(k): v for k, v in counts.items()},
        "requests_per_s": sum(counts.values()) / elapsed,
        "gateway_cpu_ms_per_request": 1000 * sum(cpu[pid] for pid in replicas.values()) / total,
        "load_generator_cpu_ms_per_request": 1000 * (time.process_time() - own_before) / total,
        "stub_cpu_ms_per_request": 1000 * cpu[stub_pid] / total,
        "machine_busy_share": (busy_after[0] - busy_before[0]) / max(1.0, busy_after[1] - busy_before[1]),
        "load_average": os.getloadavg()[0],
    }


def run(
    forget_set: Path | None, toggles: int, concurrency: int, seconds: float, work: Path, repeats: int = 3
) -> dict[str, Any]:
    """Start everything, measure, stop everything; the figures."""
    folder = _forget_set(forget_set, work)
    pg = PostgresServer().start()
    stack = Stack(work)
    try:
        url = pg.create_database()
        upstream = stack.stub()
        replicas: dict[int, int] = {}
        urls = []
        for name in ("a", "b"):
            base = stack.proxy(
                name, upstream, STUB_MODEL,
                ["--registry", url, "--state-dir", str(work / f"{name}-state"), "--embeddings-from", EMBEDDINGS,
                 "--forget-set", str(folder), "--admin-key", ADMIN_KEY],
            )  # fmt: skip
            urls.append(base)
            replicas[int(base.rsplit(":", 1)[1])] = stack.last_pid
        forget_set_id = json.loads((folder / "manifest.json").read_text())["id"]
        delays = propagation(urls, forget_set_id, toggles)
        ports = list(replicas)
        stub_pid = stack.processes[0].pid
        rounds = [
            (throughput({ports[0]: replicas[ports[0]]}, stub_pid, concurrency, seconds),
             throughput(replicas, stub_pid, concurrency, seconds))
            for _ in range(repeats)
        ]  # fmt: skip
        # The middle round by requests/s of each configuration: the machine's other load varies between runs.
        one = sorted((r[0] for r in rounds), key=lambda f: f["requests_per_s"])[repeats // 2]
        two = sorted((r[1] for r in rounds), key=lambda f: f["requests_per_s"])[repeats // 2]
    finally:
        stack.close()
        pg.close()
    ordered = sorted(delays)
    return {
        "toggles": len(delays),
        "propagation_p50_ms": 1000 * statistics.median(delays),
        "propagation_p99_ms": 1000 * ordered[min(len(ordered) - 1, round(0.99 * len(ordered)) - 1)],
        "propagation_max_ms": 1000 * ordered[-1],
        "one_replica": one,
        "two_replicas": two,
        "speedup": two["requests_per_s"] / one["requests_per_s"],
        "rounds_requests_per_s": [[r[0]["requests_per_s"], r[1]["requests_per_s"]] for r in rounds],
        "cpu_count": os.cpu_count(),
    }


def report(figures: dict[str, Any]) -> str:
    """The figures as text."""
    lines = [
        f"propagation over {figures['toggles']} toggles: p50 {figures['propagation_p50_ms']:.0f} ms, "
        f"p99 {figures['propagation_p99_ms']:.0f} ms, max {figures['propagation_max_ms']:.0f} ms"
    ]
    for key in ("one_replica", "two_replicas"):
        f = figures[key]
        lines.append(
            f"{f['replicas']} replica(s): {f['requests_per_s']:.0f} req/s; CPU ms/request: gateways "
            f"{f['gateway_cpu_ms_per_request']:.2f}, load generator {f['load_generator_cpu_ms_per_request']:.2f}, "
            f"stub {f['stub_cpu_ms_per_request']:.2f}; machine busy {100 * f['machine_busy_share']:.0f}% "
            f"(load average {f['load_average']:.1f})"
        )
    lines.append(f"two replicas / one: x{figures['speedup']:.2f} on {figures['cpu_count']} cores")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run the benchmark, print the report, optionally write the JSON figures."""
    parser = argparse.ArgumentParser(
        prog="python -m lethe.benchmarks.scaleout_bench", description=__doc__.split("\n")[0]
    )
    parser.add_argument(
        "--forget-set", type=Path, help="artifact folder for the tiny authors model (default: train one)"
    )
    parser.add_argument("--toggles", type=int, default=100)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="length of each throughput run")
    parser.add_argument("--repeats", type=int, default=3, help="throughput runs of each configuration, alternating")
    parser.add_argument("--work", type=Path, help="folder for logs and state (default: a temporary one)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    import tempfile

    work = args.work or Path(tempfile.mkdtemp(prefix="lethe-scaleout-"))
    work.mkdir(parents=True, exist_ok=True)
    figures = run(args.forget_set, args.toggles, args.concurrency, args.seconds, work, args.repeats)
    print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
