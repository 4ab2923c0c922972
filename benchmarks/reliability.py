"""``lethe reliability``: load, faults, hostile input and evasion figures in one report (JSON + Markdown).

Runs real gateway processes on loopback over the tiny authors model: a load test with streaming
and plain clients, fuzzing of every route (hypothesis mutations, then Schemathesis from the
server's OpenAPI document, bodies included), hostile but cheap traffic (a degenerate temperature
beside innocent requests, unauthenticated large uploads, the resident memory after thousands of
distinct long prompts), a ``kill -9`` during training followed by a restart, and the evasion
attacks on the scope classifier.  ``--quick`` shrinks every part; ``parts`` picks some.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

from lethe.benchmarks.evasion import run_evasion
from lethe.benchmarks.fuzz import fuzz_gateway, schemathesis_gateway
from lethe.benchmarks.hostile import (
    degenerate_temperature_beside_innocent,
    memory_under_distinct_prompts,
    unauthenticated_uploads,
)
from lethe.benchmarks.loadtest import run_load
from lethe.benchmarks.server_harness import GatewayServer, wait_for_job

MODEL = "tiny-authors"
PARTS = ("load", "fuzz", "hostile", "kill9", "evasion")
IMPORT_PATH = "/admin/forget-sets/import"
API_KEY, ADMIN_KEY = "reliability-key", "reliability-admin"
FAST_OPTIONS: dict[str, Any] = {
    "eco": {"grid": 3, "search_rows": 12, "rounds": 1, "steps_per_round": 1,
            "candidates": ["rand_noise_first_n:64"], "token_modes": ["all"]},
    "evaluate": False,
}  # fmt: skip


def _server(registry: Path, args: list[str] | None = None) -> GatewayServer:
    return GatewayServer(registry, api_keys=API_KEY, admin_key=ADMIN_KEY, args=args or [],
                         env={"LETHE_THREADS": os.environ.get("LETHE_THREADS", "1")})  # fmt: skip


def run_reliability(out: Path, quick: bool = False, parts: tuple[str, ...] = PARTS) -> dict[str, Any]:
    """Run ``parts`` (all by default), write ``reliability.json`` and ``reliability.md`` under ``out``; return the
    report."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world
    from lethe.benchmarks.tiny_models import prepare_tiny_authors, prepare_world
    from lethe.service.settings import GatewaySettings

    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"unknown parts {sorted(unknown)}; known: {', '.join(PARTS)}")
    settings = GatewaySettings()
    prepare_world(settings.worlds_dir, "test")
    prepare_tiny_authors(settings.worlds_dir, "test", "full")
    world = build_world(WorldConfig.test())
    rows = {s: world.rows(s) for s in ("forget", "retain")}
    report: dict[str, Any] = {"quick": quick, "model": MODEL, "parts": list(parts)}
    with tempfile.TemporaryDirectory(prefix="lethe-reliability-") as tmp:
        server = _server(Path(tmp) / "registry", ["--max-new-tokens", "32", "--max-queue-depth", "256"])
        server.extra_env["LETHE_PROMPT_EMBEDS_ANY_ROWS"] = "true"  # also the proxy's upstream, standing in for vLLM
        server.start()
        try:
            with server.admin() as admin:
                body = {"name": "forget-people", "method": "eco", "forget": rows["forget"], "retain": rows["retain"],
                        "options": FAST_OPTIONS}  # fmt: skip
                created = admin.post("/admin/forget-sets", json=body).json()
                job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), 900)
            report["training"] = {"state": job["state"]}
            questions = [r["prompt"] for r in rows["forget"][:8] + rows["retain"][:8]]
            if "load" in parts:
                load = run_load(server.base_url, API_KEY, MODEL, [[{"role": "user", "content": q}] for q in questions],
                                total=24 if quick else 120, concurrency=4 if quick else 16, stream_share=0.5,
                                max_tokens=8 if quick else 16, time_limit_s=120 if quick else 480,
                                pid=server.process.pid)  # fmt: skip
                report["load_local"] = load.as_dict()
                load_args = {"total": load.requests, "concurrency": 4 if quick else 16,
                             "max_tokens": 8 if quick else 16, "time_limit_s": 120 if quick else 480}  # fmt: skip
                report["load_proxy"] = _proxy_load(server, Path(tmp), created["id"], questions, load_args)
            if "fuzz" in parts:
                fuzz = fuzz_gateway(server.base_url, API_KEY, ADMIN_KEY, MODEL, max_examples=10 if quick else 60)
                report["fuzz"] = fuzz.as_dict()
            if "hostile" in parts:
                report.update(_hostile(server, rows, quick))
            if "kill9" in parts:
                report["kill9_during_training"] = _kill_during_training(server, rows)
        finally:
            server.stop()
    if "evasion" in parts:
        report["evasion"] = run_evasion("test")
    out.mkdir(parents=True, exist_ok=True)
    (out / "reliability.json").write_text(json.dumps(report, indent=2))
    (out / "reliability.md").write_text(render_markdown(report))
    return report


def _hostile(server: Any, rows: dict[str, list[dict]], quick: bool) -> dict[str, Any]:
    """A degenerate temperature beside six innocent requests, four unauthenticated 48 MB uploads, the memory after
    distinct 300-word prompts (10,000; 600 quick), then Schemathesis over the OpenAPI document (1,500 cases per
    operation with a body, 200 per other operation; 30 and 10 quick)."""
    pid = server.process.pid
    questions = [r["prompt"] for r in rows["retain"][:6]]
    temperature = degenerate_temperature_beside_innocent(server.base_url, API_KEY, MODEL, questions)
    uploads = unauthenticated_uploads(server.base_url, pid, IMPORT_PATH, count=4, size_mb=48)
    memory = memory_under_distinct_prompts(
        server.base_url, pid, API_KEY, ADMIN_KEY, MODEL, prompts=600 if quick else 10_000, words=300, concurrency=2
    )
    schema = schemathesis_gateway(
        server.base_url, API_KEY, ADMIN_KEY, max_examples=10 if quick else 200, body_examples=30 if quick else 1500
    )
    return {
        "degenerate_temperature": temperature,
        "unauthenticated_uploads": uploads,
        "memory_distinct_prompts": memory.as_dict(),
        "schemathesis": {**schema.as_dict(), "findings": schema.findings[:20]},
    }


def _proxy_load(
    upstream: Any, root: Path, forget_set_id: str, questions: list[str], load_args: dict[str, Any]
) -> dict[str, Any]:
    """The same load through a proxy-mode gateway (its own process) in front of the local one."""
    proxy = _server(root / "proxy-registry", [
        "--upstream", f"{upstream.base_url}/v1", "--upstream-model", MODEL, "--embeddings-from", MODEL,
        "--forget-set", str(upstream.registry / "artifacts" / forget_set_id), "--max-queue-depth", "256",
    ])  # fmt: skip
    proxy.extra_env["LETHE_UPSTREAM_API_KEY"] = API_KEY
    try:
        proxy.start()
    except RuntimeError as exc:
        return {"error": str(exc)[-500:]}
    try:
        conversations = [[{"role": "user", "content": q}] for q in questions]
        return run_load(proxy.base_url, API_KEY, MODEL, conversations, stream_share=0.5, pid=proxy.process.pid,
                        **load_args).as_dict()  # fmt: skip
    finally:
        proxy.stop()


def _kill_during_training(server: Any, rows: dict[str, list[dict]]) -> dict[str, Any]:
    with server.admin() as admin:
        created = admin.post("/admin/forget-sets", json={"name": "killed", "method": "eco",
                             "forget": rows["forget"], "retain": rows["retain"]}).json()  # fmt: skip
        wait_for_job(admin, created["job_id"], ("running",), 120)
    server.kill()
    started = time.perf_counter()
    server.start()
    restart_s = time.perf_counter() - started
    with server.admin() as admin:
        job = admin.get(f"/admin/jobs/{created['job_id']}").json()
        record = admin.get(f"/admin/forget-sets/{created['id']}").json()
        admin.delete(f"/admin/forget-sets/{created['id']}")
    with server.client(API_KEY) as client:
        serves = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 4,
                             "messages": [{"role": "user", "content": "hello"}]}).status_code == 200  # fmt: skip
    artifacts = server.registry / "artifacts"
    return {
        "job_state_after_restart": job["state"],
        "job_error": job["error"],
        "forget_set_state": record["state"],
        "forget_set_live": record["live"],
        "half_written_artifact_left": (artifacts / created["id"]).exists()
        or any(p.name.startswith(".") for p in artifacts.iterdir()),
        "serves_after_restart": serves,
        "restart_s": round(restart_s, 2),
    }


def render_markdown(report: dict[str, Any]) -> str:
    """The report as Markdown tables."""
    lines = ["# Lethe reliability report", ""]
    for mode in ("local", "proxy"):
        load = report.get(f"load_{mode}")
        if not load:
            continue
        if "error" in load:
            lines += [f"## Load ({mode} mode)", "", f"not run: {load['error']}", ""]
            continue
        lines += [f"## Load ({mode} mode, tiny model, loopback)", "",
                  "| requests | streaming | completed | refused | lost | throughput (req/s) | tokens/s | "
                  "p50 latency (s) | p99 latency (s) | peak RSS (MB) |",
                  "|---|---|---|---|---|---|---|---|---|---|",
                  f"| {load['requests']} | {load['streaming']} | {load['completed']} | {load['refused']} | "
                  f"{load['lost']} | {load['throughput_rps']} | {load['tokens_per_s']} | {load['latency_p50_s']} | "
                  f"{load['latency_p99_s']} | {load['rss_peak_mb']} |", ""]  # fmt: skip
    fuzz = report.get("fuzz")
    if fuzz:
        lines += ["## Fuzzing every route (hypothesis)", "",
                  f"{fuzz['requests']} requests over {len(fuzz['by_operation'])} operations: "
                  f"{fuzz['server_errors']} server errors (5xx), {fuzz['malformed_errors']} error bodies not in "
                  f"OpenAI's shape, {fuzz['transport_errors']} transport errors; "
                  f"statuses {fuzz['statuses']}.", ""]  # fmt: skip
    schema = report.get("schemathesis")
    if schema:
        lines += ["## Schemathesis over the OpenAPI document (bodies generated from the declared schemas)", "",
                  f"{schema['cases']} cases, {schema['cases_with_body']} with a body, over "
                  f"{len(schema['by_operation'])} operations: {schema['server_errors']} server errors (5xx), "
                  f"{schema['malformed_errors']} error bodies not in OpenAI's shape, {schema['transport_errors']} "
                  f"transport errors; statuses {schema['statuses']}; {schema['wall_s']} s.", ""]  # fmt: skip
    hostile = {k: report[k] for k in ("degenerate_temperature", "unauthenticated_uploads", "memory_distinct_prompts")
               if k in report}  # fmt: skip
    if hostile:
        lines += ["## Hostile but cheap requests", "", *(f"- {k}: {v}" for k, v in hostile.items()), ""]
    kill = report.get("kill9_during_training")
    if kill:
        lines += ["## kill -9 during training, then restart", "",
                  *(f"- {k}: {v}" for k, v in kill.items()), ""]  # fmt: skip
    evasion = report.get("evasion")
    header = ["| attack | prompts | leak rate before | leak rate after | flag rate on other people (after) |",
              "|---|---|---|---|---|"]  # fmt: skip
    if evasion:
        lines += ["## Evasion (leak rate: share of attack prompts on forgotten people not flagged)", "",
                  "Before: the same classifier trained and attacked with the text hardening of "
                  "`classifier/text.py` switched off, in the same run.", "", *header,
                  *_attack_rows(evasion["attacks"]), ""]  # fmt: skip
    if evasion and evasion.get("heldout_attacks"):
        lines += ["## Held-out evasion (characters in none of the defence's tables, on held-out phrasings)", "",
                  "The attacks above rewrite the training prompts, mostly with characters the hardening maps back; "
                  "these rewrite a paraphrase the classifier never saw, with characters it has no table for "
                  "(`heldout_phrasing` is that paraphrase unattacked).", "", *header,
                  *_attack_rows(evasion["heldout_attacks"]), ""]  # fmt: skip
    return "\n".join(lines)


def _attack_rows(attacks: list[dict[str, Any]]) -> list[str]:
    return [f"| {a['attack']} | {a['prompts']} | {a.get('leak_rate_unhardened', float('nan')):.3f} | "
            f"{a['leak_rate']:.3f} | {a['retain_flag_rate']:.3f} |" for a in attacks]  # fmt: skip
