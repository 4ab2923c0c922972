"""Reliability and security of the gateway over real HTTP on loopback (tiny model, one server).

Load with streaming and non-streaming clients loses nothing; fuzzing every route finds no 5xx;
pickle payloads in ``prompt_embeds`` never run; path traversal in ids and names touches nothing
outside the registry; every admin route needs the admin key; an unwritable or full artifact
directory fails a job cleanly; evasion rewrites of forgotten questions are still flagged; and
flagged prompt text (a canary) never reaches logs, metrics, the audit log, the registry or error
messages, even at debug log level.  (Kill -9 / restarts during training, cancel and malformed
tensors are covered in test_gateway_unlearning.py and test_gateway.py.)
"""

from __future__ import annotations

import base64
import io
import os
import pickle
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from support import assert_openai_error

from lethe.benchmarks.evasion import evaluate_attacks
from lethe.benchmarks.fuzz import fuzz_gateway
from lethe.benchmarks.loadtest import run_load
from lethe.benchmarks.server_harness import ADMIN_KEY, API_KEY, GatewayServer, wait_for_job
from lethe.training.presets import SMOKE_OPTIONS

MODEL = "tiny-authors"
FAST_OPTIONS = SMOKE_OPTIONS
CANARY = "QX-canary-7731-zebra"


def _train(admin: httpx.Client, rows: dict[str, list[dict]], name: str) -> dict[str, Any]:
    response = admin.post(
        "/admin/forget-sets",
        json={"name": name, "forget": rows["forget"], "retain": rows["retain"], "method": "eco",
              "options": FAST_OPTIONS},
    )  # fmt: skip
    assert response.status_code == 202, response.text
    return response.json()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path], world_rows: dict) -> Any:
    """A gateway logging at debug level, with one forget set (the forget people) trained through the API."""
    root = tmp_path_factory.mktemp("reliability")
    gateway = GatewayServer(
        root / "registry",
        args=["--log-level", "debug", "--max-new-tokens", "16", "--max-body-bytes", "200000",
              "--max-queue-depth", "64"],
        env={"LETHE_THREADS": "1"},
    ).start()  # fmt: skip
    with gateway.admin() as admin:
        created = _train(admin, world_rows, "forget-people")
        job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=600)
    assert job["state"] == "succeeded", (job, gateway.log_tail())
    gateway.forget_set_id = created["id"]  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def _flagged(server: GatewayServer, messages: list[dict[str, str]]) -> bool:
    with server.admin() as admin:
        response = admin.post("/admin/classify", json={"messages": messages})
    assert response.status_code == 200, response.text
    return bool(response.json()["flagged"])


def _registry_state(server: GatewayServer) -> tuple[list[tuple[str, bool, bool, str]], list[str]]:
    with server.admin() as admin:
        sets = admin.get("/admin/forget-sets").json()["data"]
    return (
        sorted((s["id"], s["enabled"], s["live"], s["state"]) for s in sets),
        sorted(p.name for p in (server.registry / "artifacts").iterdir()),
    )


# Load ---------------------------------------------------------------------------------------


def test_load_with_streaming_and_plain_clients_loses_no_request(server: GatewayServer, world_rows: dict) -> None:
    questions = [r["prompt"] for r in world_rows["forget"][:4] + world_rows["retain"][:4]]
    conversations = [[{"role": "user", "content": q}] for q in questions]
    report = run_load(
        server.base_url, API_KEY, MODEL, conversations, total=16, concurrency=4, stream_share=0.5, max_tokens=8,
        time_limit_s=150, pid=server.process.pid,
    )  # fmt: skip
    print("load:", report.as_dict())
    assert report.requests == 16 and report.lost == 0, report
    assert report.completed == 16, report.statuses  # the queue (64) is deep enough for every request
    assert report.streaming == 8
    assert report.latency_p50_s is not None and report.latency_p99_s >= report.latency_p50_s
    assert 0 < report.rss_peak_mb < 4096, report
    with server.client() as client:
        assert client.get("/ready").json()["running"] == 0


# Hostile input ------------------------------------------------------------------------------


def test_fuzzing_every_route_finds_no_server_error(server: GatewayServer) -> None:
    before = _registry_state(server)
    report = fuzz_gateway(server.base_url, API_KEY, ADMIN_KEY, MODEL, max_examples=6)
    print("fuzz:", report.as_dict())
    assert report.requests >= 6 * 12, report.by_operation
    assert {"POST /v1/chat/completions", "POST /admin/forget-sets", "GET /admin/jobs/{job_id}"} <= set(
        report.by_operation
    )
    assert report.server_errors == 0 and report.transport_errors == 0, report.findings
    assert report.malformed_errors == 0, report.findings
    deadline = time.monotonic() + 30
    while _registry_state(server) != before and time.monotonic() < deadline:
        time.sleep(0.2)  # deletions of fuzz-created sets are synchronous, but jobs may still be finishing
    assert _registry_state(server) == before
    assert httpx.get(f"{server.base_url}/health").status_code == 200


class _WritesAFile:
    """Unpickling this object would create ``path``: the classic ``__reduce__`` payload."""

    def __init__(self, path: str):
        self.path = path

    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (os.system, (f"touch {self.path}",))


class _WritesViaOpen(_WritesAFile):
    def __reduce__(self) -> tuple[Any, tuple[Any, ...]]:
        return (eval, (f"open({self.path!r}, 'w').write('pwned')",))


def _torch_bytes(value: object) -> bytes:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return buffer.getvalue()


def test_pickle_payloads_in_prompt_embeds_never_run(server: GatewayServer, tmp_path: Path, tiny_full: Any) -> None:
    hidden = tiny_full.hidden_size
    markers = [tmp_path / f"pwned-{i}" for i in range(6)]
    good = tiny_full.embed(tiny_full.text_prompt("Tell me a story.").ids)
    zero_stride = torch.randn(hidden).as_strided((10**9, hidden), (0, 1))  # a billion rows over one row of storage
    payloads = {
        "raw pickle, os.system": pickle.dumps(_WritesAFile(str(markers[0]))),
        "raw pickle, eval(open)": pickle.dumps(_WritesViaOpen(str(markers[1]))),
        "torch.save of the payload": _torch_bytes(_WritesAFile(str(markers[2]))),
        "payload next to a valid tensor": _torch_bytes({"t": good, "x": _WritesAFile(str(markers[3]))}),
        "payload in a list with tensors": _torch_bytes([good, _WritesViaOpen(str(markers[4]))]),
        "protocol 0 pickle": pickle.dumps(_WritesAFile(str(markers[5])), protocol=0),
        "float64 tensor": _torch_bytes(torch.randn(3, hidden, dtype=torch.float64)),
        "huge zero-stride view": _torch_bytes(zero_stride),
        "numpy array": pickle.dumps(good.numpy()),
        "a tuple of tensors": _torch_bytes((good, good)),
    }
    with server.client() as client:
        for name, raw in payloads.items():
            body = {"model": MODEL, "prompt_embeds": base64.b64encode(raw).decode(), "max_tokens": 2}
            response = client.post("/v1/completions", json=body)
            error = assert_openai_error(response, 400, "prompt_embeds")
            assert "pwned" not in error["message"] and "system" not in error["message"], name
        assert client.post(
            "/v1/completions",
            json={"model": MODEL, "prompt_embeds": base64.b64encode(_torch_bytes(good)).decode(), "max_tokens": 2},
        ).status_code == 200  # fmt: skip
    time.sleep(0.5)
    assert not [m for m in markers if m.exists()]
    # The payloads are live: unpickling them here does write the file.
    pickle.loads(payloads["raw pickle, os.system"])
    assert markers[0].exists()


def test_path_traversal_in_ids_and_names_touches_nothing_outside_the_registry(server: GatewayServer) -> None:
    victim = server.registry.parent / "victim.txt"
    victim.write_text("keep me")
    outside_before = sorted(p.name for p in server.registry.parent.iterdir())
    before = _registry_state(server)
    ids = [
        "../victim.txt",
        "..%2Fvictim.txt",
        "%2e%2e%2fvictim.txt",
        "..%2F..%2Fregistry%2Fregistry.sqlite3",
        "fs-../../victim.txt",
        "artifacts%2F..%2F..%2Fvictim.txt",
        "..",
        "%2e%2e",
        "fs-%00",
        "fs-" + "a" * 4000,
    ]
    with server.admin() as admin:
        for value in ids:
            for method, path, body in (
                ("GET", f"/admin/forget-sets/{value}", None),
                ("PATCH", f"/admin/forget-sets/{value}", {"enabled": True}),
                ("DELETE", f"/admin/forget-sets/{value}", None),
                ("GET", f"/admin/jobs/{value}", None),
                ("POST", f"/admin/jobs/{value}/cancel", None),
            ):
                response = admin.request(method, path, json=body)
                assert response.status_code in (404, 405, 400, 414), (method, path, response.status_code)
                if response.status_code != 414:
                    assert_openai_error(response, response.status_code)
        # A traversal name is only a label: the artifact folder is named by the server-made id.
        name = "../../victim.txt"
        response = admin.post(
            "/admin/forget-sets",
            json={"name": name, "forget": [{"prompt": "Who is X?", "completion": "Y."}], "method": "eco"},
        )
        if response.status_code == 202:
            created = response.json()
            assert created["id"].startswith("fs-") and "/" not in created["id"]
            wait_for_job(admin, created["job_id"], ("failed", "succeeded", "cancelled"), timeout=60)
            assert admin.delete(f"/admin/forget-sets/{created['id']}").status_code == 200
        else:
            assert_openai_error(response, 400)
    assert victim.read_text() == "keep me"
    assert sorted(p.name for p in server.registry.parent.iterdir()) == outside_before
    assert _registry_state(server) == before


def test_every_admin_route_needs_the_admin_key(server: GatewayServer) -> None:
    spec = httpx.get(f"{server.base_url}/openapi.json").json()
    routes = [(m.upper(), p) for p, item in spec["paths"].items() for m in item if p.startswith("/admin")]
    assert len(routes) >= 9
    before = _registry_state(server)
    headers_by_case = {
        "none": ({}, 401),
        "wrong": ({"Authorization": f"Bearer {ADMIN_KEY}x"}, 401),
        "prefix": ({"Authorization": f"Bearer {ADMIN_KEY[:-1]}"}, 401),
        "case": ({"Authorization": f"Bearer {ADMIN_KEY.upper()}"}, 401),
        "no scheme": ({"Authorization": ADMIN_KEY}, 401),
        "empty bearer": ({"Authorization": "Bearer"}, 401),
        "inference key": ({"Authorization": f"Bearer {API_KEY}"}, 403),
    }
    fs_id = server.forget_set_id  # type: ignore[attr-defined]
    with httpx.Client(base_url=server.base_url, timeout=60) as client:
        for method, path in routes:
            url = path.replace("{forget_set_id}", fs_id).replace("{job_id}", "job-x")
            body = {"enabled": False} if method == "PATCH" else {"prompt": "x"}
            for headers, status in headers_by_case.values():
                response = client.request(method, url, headers=headers, json=body if method != "GET" else None)
                assert_openai_error(response, status)
        for headers, status in headers_by_case.values():
            assert_openai_error(client.get("/metrics", headers=headers), status)
    assert _registry_state(server) == before


# Faults -------------------------------------------------------------------------------------


def _lock_directory(folder: Path) -> Any:
    """Make ``folder`` refuse new entries, even for root (chattr +i), else by permissions; returns the undo."""
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(folder)], check=True)
        return lambda: subprocess.run(["chattr", "-i", str(folder)], check=True)
    folder.chmod(0o555)
    return lambda: folder.chmod(0o755)


def _fill_directory(folder: Path, backup: Path) -> Any:
    """Put ``folder`` on a tmpfs with its current content and 16 KiB to spare (a nearly full disk, less than an
    artifact: 256 KiB became room enough for a test-world artifact once heads dropped their smallest weights);
    returns the undo.

    Root only (mount); the content is copied in, so the server sees the same files.
    """
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    shutil.copytree(folder, backup)
    used = sum(-(-p.stat().st_size // 4096) * 4096 + 4096 for p in backup.rglob("*"))
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={used + 16 * 1024}", "tmpfs", str(folder)], capture_output=True
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.decode()[:200]}")
    shutil.copytree(backup, folder, dirs_exist_ok=True)
    return lambda: subprocess.run(["umount", "-l", str(folder)], check=True)


@pytest.mark.parametrize("fault", ["unwritable", "full"])
def test_an_unwritable_or_full_artifact_directory_fails_the_job_cleanly(
    server: GatewayServer, world_rows: dict, fault: str, tmp_path: Path
) -> None:
    artifacts = server.registry / "artifacts"
    before = _registry_state(server)
    question = [{"role": "user", "content": world_rows["forget"][0]["prompt"]}]
    assert _flagged(server, question)
    undo = _lock_directory(artifacts) if fault == "unwritable" else _fill_directory(artifacts, tmp_path / "backup")
    try:
        with server.admin() as admin:
            created = _train(admin, world_rows, f"doomed-{fault}")
            job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=600)
            assert job["state"] == "failed", job
            expected = "PermissionError" if fault == "unwritable" else "No space left"
            assert expected in job["error"], job
            record = admin.get(f"/admin/forget-sets/{created['id']}").json()
            assert record["state"] == "failed" and not record["enabled"] and not record["live"]
            assert not (artifacts / created["id"]).exists()
            assert not [p.name for p in artifacts.iterdir() if p.name.startswith(".")]  # no half-written folder
            # The server serves, and the forget set already live stays live (and loadable from disk).
            assert _flagged(server, question)
            with server.client() as client:
                chat = {"model": MODEL, "messages": question, "max_tokens": 4}
                assert client.post("/v1/chat/completions", json=chat).status_code == 200
            fs_id = server.forget_set_id  # type: ignore[attr-defined]
            assert admin.patch(f"/admin/forget-sets/{fs_id}", json={"enabled": False}).status_code == 200
            assert admin.patch(f"/admin/forget-sets/{fs_id}", json={"enabled": True}).json()["live"]
    finally:
        undo()
    with server.admin() as admin:
        assert admin.delete(f"/admin/forget-sets/{created['id']}").status_code == 200
    assert _registry_state(server) == before


# Evasion ------------------------------------------------------------------------------------


def test_normalization_undoes_spelling_tricks_and_keeps_spans_on_the_raw_text() -> None:
    from lethe.classifier.text import normalized_words, word_spans

    for text in ("Where was $e$$@ Zow!ck born?", "Where was S e s s a  Z o w i c k born?",
                 "Where was S.e.s.s.a Z-o-w-i-c-k born?", "Where was Se\u200bssa Zo\u200bwick born?",
                 "Where was \u0405\u0435ssa Z\u043ewi\u0441k born?"):  # fmt: skip
        assert normalized_words(text) == ["where", "was", "sessa", "zowick", "born"], text
        spans = word_spans(text)
        assert text[spans[0][0] : spans[0][1]] == "Where" and text[spans[-1][0] : spans[-1][1]] == "born"
    # Ordinary text keeps its words: numbers, exclamations, real Cyrillic, initials with spaces.
    assert normalized_words("Hello! It's 1984, I. J. Smith.") == ["hello", "it", "s", "1984", "i", "j", "smith"]
    assert normalized_words("\u0441\u043e\u0431\u0430\u043a\u0430") == ["\u0441\u043e\u0431\u0430\u043a\u0430"]


def test_evasion_rewrites_of_forgotten_questions_are_still_flagged(server: GatewayServer, world_rows: dict) -> None:
    forget, controls = world_rows["forget"][::4], world_rows["heldout"][::4]
    results = {
        r.attack: r
        for r in evaluate_attacks(
            lambda messages: _flagged(server, messages),
            forget,
            controls,
            ["leetspeak_symbols", "spacing", "zero_width", "homoglyphs", "case_mangling", "surname_only",
             "split_turns", "paraphrase"],
        )
    }  # fmt: skip
    print("evasion:", {name: (r.leak_rate, r.retain_flag_rate) for name, r in results.items()})
    assert results["none"].leak_rate == 0.0
    for name in ("leetspeak_symbols", "spacing", "zero_width", "homoglyphs", "case_mangling", "split_turns"):
        assert results[name].leak_rate <= 0.15, results[name]
    for result in results.values():
        assert result.retain_flag_rate <= 0.15, result  # hardening does not flag other people


# Privacy ------------------------------------------------------------------------------------


def test_flagged_prompt_text_never_reaches_logs_metrics_audit_or_errors(
    server: GatewayServer, world_rows: dict
) -> None:
    question = world_rows["forget"][1]["prompt"]
    secret = f"{question} {CANARY}"
    person = world_rows["forget"][1]["person"]
    messages = [{"role": "user", "content": secret}]
    assert _flagged(server, messages)
    errors: list[str] = []
    with server.client() as client:
        for extra in ({}, {"stream": True}, {"seed": 3, "temperature": 0.8}):
            response = client.post(
                "/v1/chat/completions", json={"model": MODEL, "messages": messages, "max_tokens": 4, **extra}
            )
            assert response.status_code == 200
        plain = {"model": MODEL, "prompt": secret, "max_tokens": 4}
        assert client.post("/v1/completions", json=plain).status_code == 200
        echo = {"model": MODEL, "prompt": secret, "max_tokens": 0, "echo": True, "logprobs": 1}
        assert client.post("/v1/completions", json=echo).status_code == 200
        # Refused requests carrying the flagged text: bad parameters, too long, unknown model, bad types.
        for body in (
            {"model": MODEL, "messages": messages, "temperature": 9},
            {"model": MODEL, "messages": messages, "max_tokens": 10**6},
            {"model": MODEL, "messages": [{"role": "user", "content": secret * 40}]},
            {"model": "nope-" + CANARY, "messages": messages},
            {"model": MODEL, "messages": [{"role": CANARY, "content": secret}]},
            {"model": MODEL, "prompt": [secret, 5]},
            {"model": MODEL, "messages": messages, "unknown_param": secret},  # the name is echoed, never the value
        ):
            path = "/v1/completions" if "prompt" in body else "/v1/chat/completions"
            response = client.post(path, json=body)
            assert 400 <= response.status_code < 500, response.text
            errors.append(response.text)
        errors.append(client.post("/v1/chat/completions", content=secret.encode()).text)  # not JSON
        # URL paths are in the access log by design (no prompt travels in a URL), but error bodies never echo them.
        assert "path-marker-5512" not in client.get("/v1/models/path-marker-5512").text
    with server.admin() as admin:
        # A training job over canary data that fails: its error must not quote the data.
        failing = admin.post(
            "/admin/forget-sets",
            json={"name": "canary-job", "method": "eco", "forget": [{"prompt": secret, "completion": CANARY}]},
        )
        if failing.status_code == 202:
            job = wait_for_job(admin, failing.json()["job_id"], ("failed", "succeeded", "cancelled"), timeout=60)
            errors.append(str(job))
            admin.delete(f"/admin/forget-sets/{failing.json()['id']}")
        else:
            errors.append(failing.text)
        metrics = admin.get("/metrics").text
        jobs = admin.get("/admin/jobs").text
    time.sleep(0.5)  # let the log flush
    log = server.log_path.read_text(errors="replace")
    assert "DEBUG" in log  # the server really logged at debug level
    audit = (server.registry / "audit.jsonl").read_text()
    # The registry database (artifacts hold the classifier's entity names by design; the database holds no text).
    database = b"".join(p.read_bytes() for p in server.registry.glob("registry.sqlite3*"))
    places = {"log": log, "metrics": metrics, "audit": audit, "jobs": jobs, "errors": "\n".join(errors)}
    for place, text in places.items():
        assert CANARY not in text, place
        assert question not in text, place
        assert person not in text, place
    assert CANARY.encode() not in database and person.encode() not in database
