"""Hostile but cheap traffic against a running gateway, measured: memory under distinct long prompts,
unauthenticated uploads, degenerate sampling parameters beside innocent requests.

Each function drives a real server over loopback and returns plain figures (statuses, seconds, the
server's resident memory); ``lethe reliability`` and the tests call them.
"""

from __future__ import annotations

import concurrent.futures
import random
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from lethe.benchmarks.loadtest import process_rss

MB = 1024 * 1024


def rss_mb(pid: int) -> float:
    """Resident memory of process ``pid`` in MB."""
    return process_rss(pid) / MB


def distinct_prompts(count: int, words: int, seed: int = 0) -> list[str]:
    """``count`` prompts of ``words`` made-up words each, almost no word repeated: the worst case for caches
    keyed by words or texts."""
    rng = random.Random(seed)
    letters = "abcdefghijklmnopqrstuvwxyz"
    return [
        " ".join("".join(rng.choice(letters) for _ in range(rng.randint(3, 7))) for _ in range(words))
        for _ in range(count)
    ]


@dataclass
class MemoryReport:
    """Resident memory before and after a stream of distinct prompts, per route."""

    prompts: int
    words: int
    rss_before_mb: float = 0.0
    rss_after_mb: float = 0.0
    statuses: dict[str, dict[str, int]] = field(default_factory=dict)
    wall_s: float = 0.0

    @property
    def growth_mb(self) -> float:
        """Resident memory gained."""
        return round(self.rss_after_mb - self.rss_before_mb, 1)

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return {**asdict(self), "growth_mb": self.growth_mb}


def memory_under_distinct_prompts(
    base_url: str,
    pid: int,
    api_key: str | None,
    admin_key: str | None,
    model: str,
    prompts: int = 10_000,
    words: int = 300,
    concurrency: int = 4,
) -> MemoryReport:
    """Send ``prompts`` distinct prompts of ``words`` words, half as chat requests (on a small model: refused for
    their length, which must be decided before any classifier reads them) and half to ``/admin/classify`` (each
    one classified); the server's resident memory before (after a warm-up) and after."""
    report = MemoryReport(prompts, words)
    texts = distinct_prompts(prompts + 40, words, seed=prompts)
    chat_headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    admin_headers = {"Authorization": f"Bearer {admin_key}"} if admin_key else {}

    def send(client: httpx.Client, index: int, text: str) -> tuple[str, int]:
        if index % 2 == 0:
            body = {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": 1}
            return "chat", client.post("/v1/chat/completions", json=body, headers=chat_headers).status_code
        return "classify", client.post("/admin/classify", json={"prompt": text}, headers=admin_headers).status_code

    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    with httpx.Client(base_url=base_url, timeout=120, limits=limits) as client:
        for index, text in enumerate(texts[-40:]):  # warm-up: code paths and allocator pools, not counted
            send(client, index, text)
        report.rss_before_mb = round(rss_mb(pid), 1)
        started = time.perf_counter()
        with concurrent.futures.ThreadPoolExecutor(concurrency) as pool:
            for route, status in pool.map(lambda item: send(client, *item), enumerate(texts[:prompts])):
                counts = report.statuses.setdefault(route, {})
                counts[str(status)] = counts.get(str(status), 0) + 1
        report.wall_s = round(time.perf_counter() - started, 1)
    time.sleep(0.5)
    report.rss_after_mb = round(rss_mb(pid), 1)
    return report


def _post_raw(host: str, port: int, path: str, size: int, headers: dict[str, str], timeout: float) -> dict[str, Any]:
    """POST a ``size``-byte body over a raw socket, reading the answer while it is sent; the status (or ``None``),
    how many body bytes went out, seconds taken."""
    started = time.perf_counter()
    head = [f"POST {path} HTTP/1.1", f"Host: {host}:{port}", f"Content-Length: {size}",
            "Content-Type: application/gzip", *(f"{k}: {v}" for k, v in headers.items()), "", ""]  # fmt: skip
    sent = 0
    status: int | None = None
    chunk = b"\x1f\x8b" + b"\0" * (MB - 2)
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall("\r\n".join(head).encode())
        sock.setblocking(False)
        answer = b""
        while sent < size and status is None:
            try:
                sent += sock.send(chunk[: min(len(chunk), size - sent)])
            except BlockingIOError:
                time.sleep(0.001)
            except OSError:
                break
            try:
                answer += sock.recv(65536)
            except BlockingIOError:
                pass
            except OSError:
                break
            if b"\r\n" in answer:
                status = int(answer.split(b" ", 2)[1])
        sock.setblocking(True)
        if status is None:
            try:
                answer += sock.recv(65536)
                status = int(answer.split(b" ", 2)[1]) if answer else None
            except OSError:
                status = None
    return {"status": status, "sent_mb": round(sent / MB, 1), "seconds": round(time.perf_counter() - started, 2)}


def unauthenticated_uploads(
    base_url: str, pid: int, path: str, count: int = 4, size_mb: int = 48, timeout: float = 120.0
) -> dict[str, Any]:
    """``count`` concurrent ``size_mb`` uploads without a key: their statuses, how much of each body the server
    let in before refusing it, and the server's resident memory growth (peak sampled while they run)."""
    host, port = base_url.removeprefix("http://").split(":")
    before = rss_mb(pid)
    peak = before
    with concurrent.futures.ThreadPoolExecutor(count) as pool:
        futures = [pool.submit(_post_raw, host, int(port), path, size_mb * MB, {}, timeout) for _ in range(count)]
        while not all(f.done() for f in futures):
            peak = max(peak, rss_mb(pid))
            time.sleep(0.05)
        results = [f.result() for f in futures]
    time.sleep(0.5)
    after = rss_mb(pid)
    return {
        "uploads": count,
        "size_mb": size_mb,
        "statuses": [r["status"] for r in results],
        "sent_mb": [r["sent_mb"] for r in results],
        "seconds_max": max(r["seconds"] for r in results),
        "rss_peak_growth_mb": round(max(peak, after) - before, 1),
        "rss_kept_growth_mb": round(after - before, 1),
    }


def degenerate_temperature_beside_innocent(
    base_url: str, api_key: str | None, model: str, questions: list[str], degenerate: float = 1e-300
) -> dict[str, Any]:
    """One request with a temperature no softmax survives, sent at the same time as one greedy request per
    question (so they share a micro-batch): every status, and whether each innocent answer equals its answer
    alone."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}

    def chat(client: httpx.Client, question: str, temperature: float) -> httpx.Response:
        body = {"model": model, "messages": [{"role": "user", "content": question}], "max_tokens": 12,
                "temperature": temperature, "seed": 1}  # fmt: skip
        return client.post("/v1/chat/completions", json=body, headers=headers)

    with httpx.Client(base_url=base_url, timeout=120) as client:
        alone = [chat(client, q, 0).json()["choices"][0]["message"]["content"] for q in questions]
        with concurrent.futures.ThreadPoolExecutor(len(questions) + 1) as pool:
            odd = pool.submit(chat, client, questions[0], degenerate)
            innocent = [pool.submit(chat, client, q, 0) for q in questions]
            responses = [f.result() for f in innocent]
            odd_response = odd.result()
    answered = [r.status_code == 200 for r in responses]
    same = [
        r.status_code == 200 and r.json()["choices"][0]["message"]["content"] == text
        for r, text in zip(responses, alone, strict=True)
    ]
    return {
        "degenerate_temperature": degenerate,
        "degenerate_status": odd_response.status_code,
        "innocent": len(questions),
        "innocent_answered": sum(answered),
        "innocent_unchanged": sum(same),
    }
