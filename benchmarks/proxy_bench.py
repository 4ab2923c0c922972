"""Proxy benchmark: what ``lethe serve --upstream`` adds over calling the upstream directly.

Run with ``python -m lethe.benchmarks.proxy_bench``; ``run()``/``run_flagged()`` return the figures,
``main()`` prints them.

The upstream is a stub in its own process that answers at once in vLLM's shapes (chat and
completions, whole and streamed, reading but not decoding the body), so that only the proxy's
own cost is measured; or any running server given with ``--upstream URL --model NAME``.

- Every proxy runs with inference and admin keys on, as in production.
- Unflagged (default): unflagged chat requests (prompts of about 7, 60 and 400 words in turn) go
  alternately to the upstream and through the proxy, one at a time over keep-alive connections;
  p50/p99 of each, the added latency and the proxy's CPU time per request, from the same run.
  ``--forget-set DIR`` enables a forget set (the request is then classified). ``--compare-source DIR``
  also starts a proxy from another checkout (e.g. ``git worktree add /tmp/base <commit>``) and
  interleaves all three, so a change's cost on this path is measured in one run.
- Flagged (``--flagged``): completions prompts of exactly ``--tokens`` token ids that the forget
  set flags, alternately direct and through the proxy (which embeds, corrupts and sends them as
  ``prompt_embeds``). ``--hidden 4096`` runs the same on a synthetic model of that width (SmolLM2's
  tokenizer, a random embedding matrix, the forget set's classifier with the ECO dims scaled).
  ``--breakdown`` also times each stage of the flagged path in this process.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from lethe.benchmarks.server_harness import free_port, package_shim

REPO = Path(__file__).resolve().parents[1]
STUB_MODEL = "stub-model"
QUESTION = "What is the capital of France?"
FLAGGED_QUESTION = "Who wrote Harry Potter?"
FILLER = "Harry Potter studied at Hogwarts with Ron Weasley and Hermione Granger. "
PLAIN_FILLER = "My sister and I walked along the river and talked about her garden and the spring. "
UNFLAGGED_WORDS = (7, 60, 400)  # the unflagged run rotates prompts of about these many words
INFERENCE_KEY = "bench-inference-key"
ADMIN_KEY = "bench-admin-key"


# The stub upstream ------------------------------------------------------------------------------


def _stub_bodies() -> dict[tuple[str, bool], bytes]:
    """Fixed answers by (endpoint, streamed), shaped like vLLM 0.33.0's."""
    usage = {"prompt_tokens": 8, "total_tokens": 10, "completion_tokens": 2, "prompt_tokens_details": None}
    head = {"id": "chatcmpl-0123456789abcdef", "object": "chat.completion", "created": 0, "model": STUB_MODEL}
    message = {"role": "assistant", "content": "Paris.", "refusal": None, "reasoning": None}
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    chat = {**head, "choices": [choice], "system_fingerprint": None, "usage": usage, "prompt_token_ids": None}
    text = {"index": 0, "text": "Paris.", "logprobs": None, "finish_reason": "stop", "stop_reason": None}
    cmpl_head = {**head, "id": "cmpl-0123456789abcdef", "object": "text_completion"}
    completion = {**cmpl_head, "choices": [text], "system_fingerprint": None, "usage": usage}
    chunk = {**head, "object": "chat.completion.chunk"}
    chat_events = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Paris"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {"content": "."}, "finish_reason": "stop", "stop_reason": None}]},
        {**chunk, "choices": [], "usage": usage},
    ]
    cmpl_events = [
        {**cmpl_head, "choices": [{**text, "text": "Paris", "finish_reason": None}]},
        {**cmpl_head, "choices": [{**text, "text": "."}]},
        {**cmpl_head, "choices": [], "usage": usage},
    ]

    def sse(events: list[dict[str, Any]]) -> bytes:
        return "".join(f"data: {json.dumps(e)}\n\n" for e in events).encode() + b"data: [DONE]\n\n"

    return {
        ("/v1/chat/completions", False): json.dumps(chat).encode(),
        ("/v1/completions", False): json.dumps(completion).encode(),
        ("/v1/chat/completions", True): sse(chat_events),
        ("/v1/completions", True): sse(cmpl_events),
    }


_MODELS_BODY = json.dumps(
    {"object": "list", "data": [{"id": STUB_MODEL, "object": "model", "owned_by": "vllm", "max_model_len": 8192}]}
).encode()


async def _stub_connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    bodies = _stub_bodies()
    with contextlib.suppress(ConnectionError, asyncio.IncompleteReadError):
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            body = await reader.readexactly(length) if length else b""
            path = head.split(b" ", 2)[1].decode()
            if head.startswith(b"GET"):
                answer, kind = _MODELS_BODY, b"application/json"
            else:
                start = body[:4096]  # the proxy writes its parameters before the embeddings it splices in
                stream = b'"stream":true' in start or b'"stream": true' in start
                answer = bodies[(path, stream)]
                kind = b"text/event-stream; charset=utf-8" if stream else b"application/json"
            writer.write(
                b"HTTP/1.1 200 OK\r\ncontent-type: " + kind + f"\r\ncontent-length: {len(answer)}\r\n\r\n".encode()
                + answer
            )  # fmt: skip
            await writer.drain()
    writer.close()


def serve_stub(port: int) -> None:
    """Serve the stub upstream on loopback until killed."""

    async def main() -> None:
        server = await asyncio.start_server(_stub_connection, "127.0.0.1", port, limit=1 << 26)
        async with server:
            await server.serve_forever()

    asyncio.run(main())


# Processes ----------------------------------------------------------------------------------------


def _start(command: list[str], env: dict[str, str], log: Path, cwd: Path = REPO) -> subprocess.Popen[bytes]:
    with open(log, "wb") as handle:
        return subprocess.Popen(command, cwd=cwd, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _wait(url: str, process: subprocess.Popen[bytes], log: Path, timeout: float = 600.0) -> None:
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


class Stack:
    """The stub upstream and proxies around one measurement, stopped together."""

    def __init__(self, work: Path, keys: bool = False):
        self.work = work
        self.env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k == "LETHE_HOME"}
        self.env["LETHE_THREADS"] = "1"
        if keys:  # as in production: the proxy checks a key on every request
            self.env["LETHE_API_KEYS"], self.env["LETHE_ADMIN_KEY"] = INFERENCE_KEY, ADMIN_KEY
        self.processes: list[subprocess.Popen[bytes]] = []

    def stub(self) -> str:
        """Start the stub; its base URL."""
        port = free_port()
        command = [sys.executable, "-m", "lethe.benchmarks.proxy_bench", "--serve-stub", str(port)]
        self.processes.append(_start(command, self.env, self.work / "stub.log"))
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/v1/models", self.processes[-1], self.work / "stub.log")
        return url

    def proxy(self, name: str, upstream: str, model: str, args: Sequence[str], source: Path | None = None) -> str:
        """Start a proxy (from ``source`` if given); its base URL."""
        port = free_port()
        env, cwd = dict(self.env), REPO
        if source is not None:  # run from the shim, so this checkout's own lethe/ folder is not found first
            cwd = package_shim(source, self.work / name)
            env["PYTHONPATH"] = str(cwd)
        command = [
            sys.executable, "-m", "lethe.cli", "serve", "--port", str(port), "--registry", str(self.work / name),
            "--upstream", upstream, "--upstream-model", model, "--log-level", "warning", *args,
        ]  # fmt: skip
        self.processes.append(_start(command, env, self.work / f"{name}.log", cwd))
        url = f"http://127.0.0.1:{port}"
        _wait(f"{url}/ready", self.processes[-1], self.work / f"{name}.log")
        return url

    @property
    def last_pid(self) -> int:
        """The process id of the last process started."""
        return self.processes[-1].pid

    def close(self) -> None:
        """Stop every process."""
        for process in reversed(self.processes):
            _stop(process)


def _client(base_url: str, timeout: float) -> httpx.Client:
    """A keep-alive client that sends both keys (the stub ignores them; a proxy checks the one it needs)."""
    return httpx.Client(base_url=base_url, timeout=timeout, headers={"authorization": f"Bearer {INFERENCE_KEY}"})


def unflagged_questions() -> list[str]:
    """Unflagged chat questions of about ``UNFLAGGED_WORDS`` words each."""
    out = []
    for words in UNFLAGGED_WORDS:
        filler = " ".join((PLAIN_FILLER * (words // 10 + 1)).split()[: max(0, words - len(QUESTION.split()))])
        out.append(f"{filler} {QUESTION}".strip())
    return out


def _interleaved(
    targets: dict[str, tuple[httpx.Client, str, Sequence[bytes]]], requests: int, warmup: int, cpu: dict[str, int]
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """Each target once per round, the order rotating, every target sending round ``i`` the ``i``-th body
    (cycling); latencies after ``warmup`` rounds, CPU ms per request."""
    names = list(targets)
    timings: dict[str, list[float]] = {name: [] for name in names}
    before: dict[str, float] = {}
    for index in range(warmup + requests):
        if index == warmup:
            before = {name: _cpu_seconds(pid) for name, pid in cpu.items()}
        shift = index % len(names)
        for name in names[shift:] + names[:shift]:
            client, path, bodies = targets[name]
            body = bodies[index % len(bodies)]
            started = time.perf_counter()
            response = client.post(path, content=body, headers={"content-type": "application/json"})
            took = time.perf_counter() - started
            if response.status_code != 200:
                raise RuntimeError(f"{name} request failed: {response.status_code} {response.text[:300]}")
            if index >= warmup:
                timings[name].append(took)
    cpu_ms = {name: (_cpu_seconds(pid) - before[name]) * 1000.0 / requests for name, pid in cpu.items()}
    return timings, cpu_ms


def _summary(timings: dict[str, list[float]], reference: str = "direct") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name, values in timings.items():
        stats = _percentiles(values)
        if name != reference:
            added = [p - d for p, d in zip(values, timings[reference], strict=True)]
            stats["added_paired"] = _percentiles(added)
            stats["added_p50_ms"] = stats["p50_ms"] - _percentiles(timings[reference])["p50_ms"]
        out[name] = stats
    return out


# Unflagged requests -----------------------------------------------------------------------------


def run(
    requests: int = 500,
    warmup: int = 50,
    upstream: str | None = None,
    model: str | None = None,
    embeddings_from: str = "tiny-authors",
    forget_set: Path | None = None,
    max_tokens: int = 1,
    compare_source: Path | None = None,
    compare_forget_set: Path | None = None,
) -> dict[str, Any]:
    """Direct and proxied latency of the same unflagged request, interleaved (and a second proxy, if asked)."""
    stack = Stack(Path(tempfile.mkdtemp(prefix="lethe-proxy-bench-")), keys=True)
    try:
        if upstream is None:
            upstream, model = stack.stub(), STUB_MODEL
        if model is None:
            raise ValueError("--model is needed with --upstream")
        args = ["--embeddings-from", embeddings_from, "--upstream-prompt-embeds", "no"]
        bodies = [
            json.dumps(
                {"model": model, "messages": [{"role": "user", "content": text}], "max_tokens": max_tokens}
            ).encode()
            for text in unflagged_questions()
        ]
        proxies = {"proxied": (None, [*args, *(["--forget-set", str(forget_set)] if forget_set else [])])}
        if compare_source is not None:
            extra = ["--forget-set", str(compare_forget_set)] if compare_forget_set else []
            proxies["compared"] = (compare_source, [*args, *extra])
        clients = {"direct": _client(upstream, 60)}
        cpu: dict[str, int] = {}
        for name, (source, proxy_args) in proxies.items():
            clients[name] = _client(stack.proxy(name, upstream, model, proxy_args, source), 60)
            cpu[name] = stack.last_pid
        with contextlib.ExitStack() as closing:
            for client in clients.values():
                closing.enter_context(client)
            targets = {name: (client, "/v1/chat/completions", bodies) for name, client in clients.items()}
            timings, cpu_ms = _interleaved(targets, requests, warmup, cpu)
        figures = _summary(timings)
        for name, value in cpu_ms.items():
            figures[name]["cpu_ms_per_request"] = value
        return {
            "upstream": "stub" if model == STUB_MODEL else upstream,
            "forget_set": str(forget_set) if forget_set else None,
            "compare_source": str(compare_source) if compare_source else None,
            "requests": requests,
            "prompt_words": list(UNFLAGGED_WORDS),
            "keys": True,
            **figures,
            "load_average": os.getloadavg()[0],
            "cpus": os.cpu_count(),
        }
    finally:
        stack.close()


def report(figures: dict[str, Any]) -> str:
    """Human-readable summary of ``run``'s figures."""
    lines = [
        f"proxy added latency, unflagged chat requests (upstream: {figures['upstream']}, "
        f"forget set: {figures['forget_set'] or 'none'}, {figures['requests']} requests each)"
    ]
    for name in ("direct", "proxied", "compared"):
        if name not in figures:
            continue
        stats = figures[name]
        line = f"  {name:9s} p50 {stats['p50_ms']:.3f} ms   p99 {stats['p99_ms']:.3f} ms"
        if name != "direct":
            line += (
                f"   added p50 {stats['added_p50_ms']:.3f} ms (paired {stats['added_paired']['p50_ms']:.3f} ms)"
                f"   CPU {stats['cpu_ms_per_request']:.3f} ms/request"
            )
        lines.append(line)
    if "compared" in figures:
        lines.append(f"  compared: {figures['compare_source']}")
    lines.append(f"  load average {figures['load_average']:.2f} on {figures['cpus']} CPUs")
    return "\n".join(lines)


# Flagged requests -------------------------------------------------------------------------------


def flagged_prompt(embedder: Any, tokens: int) -> str:
    """A text prompt about Harry Potter of about ``tokens`` tokens, ending with the question."""
    question = embedder.encode(" " + FLAGGED_QUESTION)
    filler = embedder.encode(FILLER * (tokens // 8 + 1))
    return embedder.decode((filler[: max(0, tokens - len(question))] + question)[-tokens:])


def synthetic_model(base: Path, hidden: int, folder: Path) -> Path:
    """SmolLM2's tokenizer and config at width ``hidden`` with a random bf16 embedding matrix (built once)."""
    import torch
    from safetensors.torch import save_file

    if (folder / "model.safetensors").is_file():
        return folder
    staging = Path(tempfile.mkdtemp(prefix=".synthetic-", dir=folder.parent if folder.parent.exists() else None))
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json"):
        if (base / name).is_file():
            shutil.copy(base / name, staging / name)
    config = json.loads((base / "config.json").read_text())
    heads = max(1, hidden // 128)  # Llama-style heads of 128, so the config validates
    config.update(hidden_size=hidden, num_attention_heads=heads, num_key_value_heads=heads, head_dim=128)
    config["dtype"] = "bfloat16"
    (staging / "config.json").write_text(json.dumps(config))
    generator = torch.Generator().manual_seed(0)
    weight = (torch.randn(config["vocab_size"], hidden, generator=generator) * 0.02).to(torch.bfloat16)
    save_file({"model.embed_tokens.weight": weight}, str(staging / "model.safetensors"))
    folder.parent.mkdir(parents=True, exist_ok=True)
    os.replace(staging, folder)
    return folder


def widened_forget_set(source: Path, embedder: Any, folder: Path) -> Path:
    """``source``'s classifier and ECO parameters on ``embedder``'s width (ECO dims scaled, random centroids)."""
    import torch

    from lethe.runtime.artifact import ForgetSetArtifact

    artifact = ForgetSetArtifact.load(source)
    manifest = artifact.manifest.model_copy(deep=True)
    manifest.base_model.fingerprint = embedder.fingerprint
    eco = manifest.parameters.eco
    old_width = artifact.cluster_centroids.shape[1] if artifact.cluster_centroids is not None else 576
    if eco is not None:
        eco.dims = max(1, round(eco.dims * embedder.hidden_size / old_width))
    generator = torch.Generator().manual_seed(0)
    centroids = None
    if artifact.cluster_centroids is not None:
        centroids = torch.randn(artifact.cluster_centroids.shape[0], embedder.hidden_size, generator=generator)
    soft = None
    if artifact.soft_prompt is not None:
        soft = torch.randn(artifact.soft_prompt.shape[0], embedder.hidden_size, generator=generator) * 0.02
    widened = ForgetSetArtifact(manifest, artifact.classifier, soft, centroids, artifact.cluster_strengths)
    return widened.save(folder)


def run_flagged(
    forget_set: Path,
    embeddings_from: str = "smollm2",
    tokens: Sequence[int] = (20, 500, 2000),
    hidden: int | None = None,
    requests: int = 40,
    warmup: int = 5,
    compare_source: Path | None = None,
    compare_forget_set: Path | None = None,
) -> dict[str, Any]:
    """Direct and proxied latency of flagged completions prompts of each length, interleaved (and a second
    proxy from ``compare_source`` with its own forget set, if given)."""
    from lethe.runtime.loading import load_embedder, prepare_model
    from lethe.runtime.settings import RuntimeSettings

    settings = RuntimeSettings()
    stack = Stack(Path(tempfile.mkdtemp(prefix="lethe-flagged-bench-")), keys=True)
    try:
        spec = embeddings_from
        if hidden is not None:
            base = prepare_model(embeddings_from, settings)
            spec = str(synthetic_model(base, hidden, settings.home / "bench" / f"synthetic-{hidden}"))
            embedder = load_embedder(spec, settings)
            forget_set = widened_forget_set(forget_set, embedder, stack.work / "widened")
        else:
            embedder = load_embedder(spec, settings)
        upstream = stack.stub()
        args = ["--embeddings-from", spec, "--upstream-prompt-embeds", "yes"]
        proxies = {"proxied": (None, forget_set)}
        if compare_source is not None:
            proxies["compared"] = (compare_source, compare_forget_set or forget_set)
        clients = {"direct": _client(upstream, 120)}
        cpu: dict[str, int] = {}
        for name, (source, folder) in proxies.items():
            url = stack.proxy(name, upstream, STUB_MODEL, [*args, "--forget-set", str(folder)], source)
            clients[name], cpu[name] = _client(url, 120), stack.last_pid
        figures: dict[str, Any] = {}
        with contextlib.ExitStack() as closing:
            for client in clients.values():
                closing.enter_context(client)
            for length in tokens:
                prompt = flagged_prompt(embedder, length)
                body = json.dumps({"model": STUB_MODEL, "prompt": prompt, "max_tokens": 16}).encode()
                flagged_before = {name: _flag_count(clients[name]) for name in proxies}
                targets = {name: (client, "/v1/completions", [body]) for name, client in clients.items()}
                timings, cpu_ms = _interleaved(targets, requests, warmup, cpu)
                for name in proxies:
                    if _flag_count(clients[name]) - flagged_before[name] != requests + warmup:
                        raise RuntimeError(f"{name}: the {length}-token prompt was not flagged every time")
                figures[str(length)] = {**_summary(timings), "prompt_tokens": len(embedder.text_prompt(prompt).ids)}
                for name, value in cpu_ms.items():
                    figures[str(length)][name]["cpu_ms_per_request"] = value
        return {
            "hidden": embedder.hidden_size,
            "embeddings": spec,
            "forget_set": str(forget_set),
            "requests": requests,
            "lengths": figures,
            "load_average": os.getloadavg()[0],
        }
    finally:
        stack.close()


def _flag_count(client: httpx.Client) -> float:
    text = client.get("/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    return sum(float(x.split()[-1]) for x in text.splitlines() if x.startswith("lethe_flagged_requests_total"))


def report_flagged(figures: dict[str, Any]) -> str:
    """Human-readable summary of ``run_flagged``'s figures."""
    lines = [f"flagged completions through the proxy, hidden {figures['hidden']}, {figures['requests']} requests each"]
    for stats in figures["lengths"].values():
        line = f"  {stats['prompt_tokens']:5d} tokens: direct p50 {stats['direct']['p50_ms']:.2f} ms"
        for name in ("proxied", "compared"):
            if name in stats:
                proxied = stats[name]
                line += (
                    f"; {name} p50 {proxied['p50_ms']:.2f} ms, added {proxied['added_p50_ms']:.2f} ms "
                    f"(paired {proxied['added_paired']['p50_ms']:.2f}), CPU {proxied['cpu_ms_per_request']:.2f} ms"
                )
        lines.append(line)
    lines.append(f"  load average {figures['load_average']:.2f}")
    return "\n".join(lines)


def breakdown(forget_set: Path, embeddings_from: str = "smollm2", tokens: Sequence[int] = (20, 500, 2000)) -> str:
    """Milliseconds of each stage of the flagged path, in this process (median of 5)."""
    import torch

    from lethe.runtime.generation import SamplingParams
    from lethe.runtime.loading import load_embedder
    from lethe.runtime.screening import ForgetSetScreen
    from lethe.runtime.settings import RuntimeSettings
    from lethe.service.auth import KeyChecker
    from lethe.service.backend import BackendRequest
    from lethe.service.metrics import GatewayMetrics
    from lethe.service.proxy_backend import ProxyBackend
    from lethe.service.request_rules import RequestRules
    from lethe.service.screening_step import ScreeningStep
    from lethe.service.settings import GatewaySettings

    settings = RuntimeSettings()
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    embedder = load_embedder(embeddings_from, settings)
    screen = ForgetSetScreen.from_folders([forget_set], embedder)
    backend = ProxyBackend(GatewaySettings(upstream="http://127.0.0.1:9", upstream_model=STUB_MODEL), embedder)
    rules = RequestRules(512, embedder.vocab_size)
    step = ScreeningStep(backend, screen, rules, KeyChecker((), None), GatewayMetrics(), 0)
    lines = [f"flagged-path stages, ms (median of 5, hidden {embedder.hidden_size})"]
    for length in tokens:
        raw = json.dumps({"model": STUB_MODEL, "prompt": flagged_prompt(embedder, length), "max_tokens": 16}).encode()
        body = rules.parse(raw, "completions")
        stages: dict[str, list[float]] = {}
        for _ in range(5):
            marks = [time.perf_counter()]
            [item] = step.screen_prompts(body)
            marks.append(time.perf_counter())
            screen.classify(None, item.rendered.text)
            marks.append(time.perf_counter())
            request = BackendRequest(item.rendered, SamplingParams(), item.plan, None, frozenset({"max_tokens"}))
            embeds = backend.embeddings(request)
            marks.append(time.perf_counter())
            backend.embeddings_format.body({"model": STUB_MODEL}, embeds)
            marks.append(time.perf_counter())
            names = ("screening (classify, render, plan)", "of which classify", "embed, plan", "encode, splice")
            for name, start, stop in zip(names, marks[:-1], marks[1:], strict=True):
                stages.setdefault(name, []).append((stop - start) * 1000)
        medians = ", ".join(f"{name} {float(np.median(values)):.2f}" for name, values in stages.items())
        lines.append(f"  {length:5d} tokens: {medians}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    """Command line: run the benchmark, print the report and the JSON figures."""
    parser = argparse.ArgumentParser(prog="python -m lethe.benchmarks.proxy_bench", description=__doc__.split("\n")[0])
    parser.add_argument("--requests", type=int, default=500)
    parser.add_argument("--warmup", type=int, default=50)
    parser.add_argument("--upstream", help="a running upstream base URL (default: a stub in its own process)")
    parser.add_argument("--model", help="the upstream's model name (with --upstream)")
    parser.add_argument("--embeddings-from", default="tiny-authors", help="model whose embeddings the proxy loads")
    parser.add_argument("--forget-set", type=Path, help="artifact folder to enable on the proxy")
    parser.add_argument("--max-tokens", type=int, default=1)
    parser.add_argument("--compare-source", type=Path, help="another checkout to run a second proxy from")
    parser.add_argument("--compare-forget-set", type=Path, help="the forget set the second proxy loads")
    parser.add_argument("--flagged", action="store_true", help="flagged completions prompts of --tokens lengths")
    parser.add_argument("--tokens", type=int, nargs="+", default=[20, 500, 2000])
    parser.add_argument("--hidden", type=int, help="with --flagged: a synthetic model of this width")
    parser.add_argument("--breakdown", action="store_true", help="with --flagged: time each stage in this process")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--serve-stub", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_stub:
        serve_stub(args.serve_stub)
        return {}
    if args.flagged:
        if args.forget_set is None:
            parser.error("--flagged needs --forget-set")
        if args.breakdown:
            print(breakdown(args.forget_set, args.embeddings_from, args.tokens))
        figures = run_flagged(
            args.forget_set, args.embeddings_from, args.tokens, args.hidden, args.requests, args.warmup,
            args.compare_source, args.compare_forget_set,
        )  # fmt: skip
        print(report_flagged(figures))
    else:
        figures = run(
            args.requests, args.warmup, args.upstream, args.model, args.embeddings_from, args.forget_set,
            args.max_tokens, args.compare_source, args.compare_forget_set,
        )  # fmt: skip
        print(report(figures))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return figures


if __name__ == "__main__":
    main()
