"""A bounded load test: concurrent streaming and non-streaming chat clients (httpx async) on loopback.

Bounded in count (``total`` requests) and in time (no request starts after ``time_limit_s``).
Every request ends in one of: a complete 200 (a JSON body with a choice, or an SSE stream that
ends with ``data: [DONE]``), a clean refusal (an OpenAI error body, e.g. 503 when the queue is
full), or *lost* (a transport error, a truncated stream, a malformed body).  The goal is zero
lost.  The server process's resident memory (with its children) is sampled throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx


def process_rss(pid: int) -> int:
    """Resident memory of a process and its children, in bytes (psutil, else /proc)."""
    try:
        import psutil

        proc = psutil.Process(pid)
        total = proc.memory_info().rss
        for child in proc.children(recursive=True):
            with contextlib.suppress(psutil.Error):
                total += child.memory_info().rss
        return int(total)
    except ImportError:  # pragma: no cover - psutil is installed with the dev extras
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except Exception:
        return 0
    return 0


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (nearest rank) of ``values``; None when empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(0, min(len(ordered) - 1, round(q / 100.0 * len(ordered) + 0.5) - 1))
    return ordered[rank]


@dataclass
class LoadReport:
    """Figures of one load run."""

    requests: int
    completed: int
    refused: int
    lost: int
    streaming: int
    wall_s: float
    throughput_rps: float
    tokens_per_s: float
    latency_p50_s: float | None
    latency_p99_s: float | None
    ttft_p50_s: float | None
    rss_start_mb: float
    rss_peak_mb: float
    rss_end_mb: float
    statuses: dict[str, int] = field(default_factory=dict)
    lost_reasons: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


async def _one(
    client: httpx.AsyncClient, model: str, messages: list[dict[str, str]], stream: bool, max_tokens: int
) -> tuple[str, float, float | None, int, str | None]:
    """One request: (outcome, latency, time to first token, completion tokens, why lost)."""
    body: dict[str, Any] = {"model": model, "messages": messages, "max_tokens": max_tokens, "temperature": 0}
    started = time.perf_counter()
    try:
        if not stream:
            response = await client.post("/v1/chat/completions", json=body)
            elapsed = time.perf_counter() - started
            data = response.json()
            if response.status_code == 200:
                if not data.get("choices") or "message" not in data["choices"][0]:
                    return "lost", elapsed, None, 0, "200 without a choice"
                return "200", elapsed, None, int(data["usage"]["completion_tokens"]), None
            if set(data) == {"error"}:
                return str(response.status_code), elapsed, None, 0, None
            return "lost", elapsed, None, 0, f"{response.status_code} without an error body"
        body["stream"] = True
        body["stream_options"] = {"include_usage": True}
        first: float | None = None
        tokens = 0
        async with client.stream("POST", "/v1/chat/completions", json=body) as response:
            if response.status_code != 200:
                data = json.loads(await response.aread())
                ok = set(data) == {"error"}
                return (
                    (str(response.status_code) if ok else "lost"),
                    time.perf_counter() - started,
                    None,
                    0,
                    None if ok else "error without body",
                )
            done = False
            async for line in response.aiter_lines():
                if not line:
                    continue
                if not line.startswith("data: "):
                    return "lost", time.perf_counter() - started, first, tokens, "malformed SSE line"
                payload = line[len("data: ") :]
                if payload == "[DONE]":
                    done = True
                    break
                chunk = json.loads(payload)
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
                if first is None and chunk.get("choices") and chunk["choices"][0]["delta"].get("content"):
                    first = time.perf_counter() - started
        elapsed = time.perf_counter() - started
        if not done:
            return "lost", elapsed, first, tokens, "stream ended without [DONE]"
        return "200", elapsed, first, tokens, None
    except (httpx.HTTPError, json.JSONDecodeError, KeyError, ValueError) as exc:
        return "lost", time.perf_counter() - started, None, 0, type(exc).__name__


async def _run(
    base_url: str,
    api_key: str,
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    total: int,
    concurrency: int,
    stream_share: float,
    max_tokens: int,
    time_limit_s: float,
    pid: int | None,
) -> LoadReport:
    peak = start_rss = process_rss(pid) if pid else 0
    sampling = True

    async def sample() -> None:
        nonlocal peak
        while sampling:
            if pid:
                peak = max(peak, process_rss(pid))
            await asyncio.sleep(0.05)

    sampler = asyncio.create_task(sample())
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    outcomes: list[tuple[str, float, float | None, int, str | None, bool]] = []
    began = time.perf_counter()
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {api_key}"}
    stride = max(1, round(1 / stream_share)) if stream_share > 0 else 0

    async with httpx.AsyncClient(base_url=base_url, headers=headers, timeout=300, limits=limits) as client:

        async def worker() -> None:
            while time.perf_counter() - began < time_limit_s:
                try:
                    i = queue.get_nowait()
                except asyncio.QueueEmpty:
                    return
                stream = bool(stride) and i % stride == 0
                result = await _one(client, model, conversations[i % len(conversations)], stream, max_tokens)
                outcomes.append((*result, stream))

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - began
    sampling = False
    await sampler
    end_rss = process_rss(pid) if pid else 0
    peak = max(peak, end_rss)
    statuses: dict[str, int] = {}
    for outcome, *_ in outcomes:
        statuses[outcome] = statuses.get(outcome, 0) + 1
    ok = [o for o in outcomes if o[0] == "200"]
    latencies = [o[1] for o in ok]
    ttfts = [o[2] for o in ok if o[2] is not None]
    lost = [o for o in outcomes if o[0] == "lost"]
    return LoadReport(
        requests=len(outcomes),
        completed=len(ok),
        refused=len(outcomes) - len(ok) - len(lost),
        lost=len(lost),
        streaming=sum(o[5] for o in outcomes),
        wall_s=round(wall, 3),
        throughput_rps=round(len(ok) / wall, 3) if wall else 0.0,
        tokens_per_s=round(sum(o[3] for o in ok) / wall, 2) if wall else 0.0,
        latency_p50_s=_round(percentile(latencies, 50)),
        latency_p99_s=_round(percentile(latencies, 99)),
        ttft_p50_s=_round(percentile(ttfts, 50)),
        rss_start_mb=round(start_rss / 2**20, 1),
        rss_peak_mb=round(peak / 2**20, 1),
        rss_end_mb=round(end_rss / 2**20, 1),
        statuses=statuses,
        lost_reasons=sorted({o[4] or "" for o in lost}),
    )


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def run_load(
    base_url: str,
    api_key: str,
    model: str,
    conversations: Sequence[list[dict[str, str]]],
    total: int = 40,
    concurrency: int = 8,
    stream_share: float = 0.5,
    max_tokens: int = 16,
    time_limit_s: float = 120.0,
    pid: int | None = None,
) -> LoadReport:
    """Send ``total`` chat requests from ``concurrency`` clients (every ``1/stream_share``-th streams)."""
    return asyncio.run(
        _run(base_url, api_key, model, conversations, total, concurrency, stream_share, max_tokens, time_limit_s, pid)
    )
