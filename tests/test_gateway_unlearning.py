"""Unlearning through the gateway, end to end over real HTTP on the tiny model.

A forget set is registered and trained through the admin API; flagged questions then get the
composed plan (checked against the runtime applying the same artifact) while unflagged ones are
byte-identical to the base model; the forget set survives restarts, can be switched off and
deleted; jobs interrupted by a restart are reported failed and leave nothing behind.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import assert_openai_error

from lethe.benchmarks.server_harness import GatewayServer, wait_for_job
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.service.artifact_archive import pack_artifact
from lethe.service.audit import AuditHasher
from lethe.training.presets import SMOKE_OPTIONS

MODEL = "tiny-authors"
# A small training budget: the end-to-end path matters here, not the quality of the forgetting.
FAST_OPTIONS = SMOKE_OPTIONS
SLOW_OPTIONS: dict[str, Any] = {}  # the defaults: long enough to interrupt a running job
GREEDY = SamplingParams(max_new_tokens=24)


@pytest.fixture(scope="module")
def trained(
    tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path], world_rows: dict[str, list[dict]]
) -> dict[str, Any]:
    """A gateway with one forget set trained through the admin API."""
    root = tmp_path_factory.mktemp("unlearning")
    server = GatewayServer(root / "registry").start()
    with server.admin() as admin:
        response = admin.post(
            "/admin/forget-sets",
            json={
                "name": "forget-authors",
                "forget": world_rows["forget"],
                "retain": world_rows["retain"],
                "method": "eco",
                "options": FAST_OPTIONS,
            },
        )
        assert response.status_code == 202, response.text
        created = response.json()
        assert created["id"].startswith("fs-") and created["job_id"]
        states = []
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            job = admin.get(f"/admin/jobs/{created['job_id']}").json()
            states.append((job["state"], job["progress"]))
            if job["state"] in ("succeeded", "failed", "cancelled"):
                break
            time.sleep(0.2)
    assert job["state"] == "succeeded", (job, server.log_tail())
    shutil.copytree(server.registry / "artifacts" / created["id"], root / "artifact-copy")  # for the import test
    state = {"server": server, "root": root, "id": created["id"], "job": job, "states": states}
    yield state
    state["server"].stop()


def _chat(server: GatewayServer, question: str, **extra: Any) -> dict[str, Any]:
    with server.client() as client:
        response = client.post(
            "/v1/chat/completions",
            json={
                "model": MODEL,
                "messages": [{"role": "user", "content": question}],
                "max_tokens": GREEDY.max_new_tokens,
                "temperature": 0,
                **extra,
            },
        )
    assert response.status_code == 200, response.text
    return response.json()


def _flagged_ids(server: GatewayServer, question: str) -> list[str]:
    with server.admin() as admin:
        response = admin.post("/admin/classify", json={"messages": [{"role": "user", "content": question}]})
    assert response.status_code == 200, response.text
    return [flag["forget_set_id"] for flag in response.json()["flagged"]]


def _screen(trained: dict[str, Any], model: LanguageModel) -> ForgetSetScreen:
    folder = trained["server"].registry / "artifacts" / trained["id"]
    return ForgetSetScreen.from_folders([folder], model.embedder)


def _served_by_runtime(
    model: LanguageModel, screen: ForgetSetScreen, question: str, params: SamplingParams = GREEDY
) -> tuple[str, bool]:
    messages = [{"role": "user", "content": question}]
    prompt = model.chat_prompt(messages)
    verdict = screen.screen(prompt, messages, request_seed=params.seed or 0, embedder=model.embedder)
    return model.generate(prompt, params, verdict.plan if verdict.flagged else None).text, verdict.flagged


def test_the_job_reports_progress_and_its_forget_set_goes_live(trained: dict[str, Any]) -> None:
    job = trained["job"]
    assert job["progress"] == 1.0 and job["forget_set_id"] == trained["id"] and job["error"] is None
    assert isinstance(job["metrics"], dict)
    progress = [p for _, p in trained["states"]]
    assert progress == sorted(progress)
    assert trained["states"][-1][0] == "succeeded"
    with trained["server"].admin() as admin:
        record = admin.get(f"/admin/forget-sets/{trained['id']}").json()
        listed = admin.get("/admin/forget-sets").json()["data"]
    assert record["state"] == "ready" and record["enabled"] and record["live"] and record["method"] == "eco"
    assert [r["id"] for r in listed] == [trained["id"]]
    assert (trained["server"].registry / "artifacts" / trained["id"] / "manifest.json").is_file()


def test_flagged_questions_change_and_unflagged_ones_are_byte_identical(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    server = trained["server"]
    screen = _screen(trained, tiny_full)
    changed = flagged = 0
    for row in world_rows["forget"][:8]:
        ids = _flagged_ids(server, row["prompt"])
        served = _chat(server, row["prompt"])["choices"][0]["message"]["content"]
        expected, runtime_flagged = _served_by_runtime(tiny_full, screen, row["prompt"])
        assert (trained["id"] in ids) == runtime_flagged
        assert served == expected  # exactly the runtime applying the same artifact
        if ids:
            flagged += 1
            base = tiny_full.generate(tiny_full.chat_prompt([{"role": "user", "content": row["prompt"]}]), GREEDY)
            changed += served != base.text
    assert flagged >= 6, flagged
    assert changed >= flagged // 2, (changed, flagged)

    identical = 0
    for row in world_rows["retain"][:12]:
        if _flagged_ids(server, row["prompt"]):
            continue
        prompt = tiny_full.chat_prompt([{"role": "user", "content": row["prompt"]}])
        for params in (GREEDY, SamplingParams(max_new_tokens=24, temperature=1.0, seed=11)):
            served = _chat(server, row["prompt"], temperature=params.temperature, seed=params.seed)
            assert served["choices"][0]["message"]["content"] == tiny_full.generate(prompt, params).text
        identical += 1
    assert identical >= 8, identical


def test_echo_logprobs_of_a_flagged_prompt_apply_its_plan(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    screen = _screen(trained, tiny_full)
    row = next(r for r in world_rows["forget"] if screen.classify(None, r["prompt"] + " " + r["completion"]))
    text = row["prompt"] + " " + row["completion"]
    with trained["server"].client() as client:
        body = client.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": text,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 1,
            },
        ).json()
    prompt = tiny_full.text_prompt(text)
    verdict = screen.screen(prompt, None, request_seed=0, embedder=tiny_full.embedder)
    assert verdict.flagged
    expected = tiny_full.prompt_logprobs(prompt.ids, verdict.plan, 1).token_logprobs
    base = tiny_full.prompt_logprobs(prompt.ids).token_logprobs
    served = body["choices"][0]["logprobs"]["token_logprobs"]
    assert served[1:] == pytest.approx(expected[1:], abs=1e-5)
    assert served[1:] != pytest.approx(base[1:], abs=1e-3)


def test_prompt_embeds_cannot_slip_a_forgotten_question_past_the_classifier(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    import base64
    import io

    import torch

    server = trained["server"]
    question = next(r["prompt"] for r in world_rows["forget"] if _flagged_ids(server, r["prompt"]))
    prompt = tiny_full.text_prompt(question)
    buffer = io.BytesIO()
    torch.save(tiny_full.embed(prompt.ids), buffer)
    body = {"model": MODEL, "max_tokens": 24, "temperature": 0}
    with server.client() as client:
        by_embeds = client.post(
            "/v1/completions", json={**body, "prompt_embeds": base64.b64encode(buffer.getvalue()).decode()}
        )
        by_text = client.post("/v1/completions", json={**body, "prompt": question})
    assert by_embeds.status_code == 200, by_embeds.text
    base = tiny_full.generate(prompt, GREEDY).text
    assert by_text.json()["choices"][0]["text"] != base
    # The rows were classified: the embeddings request's audit line names the forget set like the text's.
    hasher = AuditHasher.for_registry(server.registry)
    lines = [json.loads(line) for line in (server.registry / "audit.jsonl").read_text().splitlines()]
    digest = hasher.tensor(tiny_full.embed(prompt.ids))
    assert [e["forget_sets"] for e in lines if e.get("embeds_hmac") == digest] == [[trained["id"]]]
    # Rows map back to their tokens, so the whole plan applies, entity steps included: the text's answer exactly.
    assert by_embeds.json()["choices"][0]["text"] == by_text.json()["choices"][0]["text"]


def test_flagging_is_invisible_in_responses(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    server = trained["server"]
    flagged_q = next(r["prompt"] for r in world_rows["forget"] if _flagged_ids(server, r["prompt"]))
    plain_q = next(r["prompt"] for r in world_rows["retain"] if not _flagged_ids(server, r["prompt"]))
    with server.client() as client:
        responses = [
            client.post(
                "/v1/chat/completions",
                json={
                    "model": MODEL,
                    "messages": [{"role": "user", "content": q}],
                    "max_tokens": 8,
                    "temperature": 0,
                },
            )
            for q in (flagged_q, plain_q)
        ]
    bodies = [r.json() for r in responses]
    assert set(bodies[0]) == set(bodies[1])
    assert set(bodies[0]["choices"][0]) == set(bodies[1]["choices"][0])
    ignored = {"content-length", "date"}
    assert {k for k in responses[0].headers if k not in ignored} == {
        k for k in responses[1].headers if k not in ignored
    }
    prompt = tiny_full.chat_prompt([{"role": "user", "content": flagged_q}])
    assert bodies[0]["usage"]["prompt_tokens"] == len(prompt)


def test_classify_returns_a_token_mask_over_the_rendered_prompt(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    question = world_rows["forget"][0]["prompt"]
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": question}]
    with trained["server"].admin() as admin:
        body = admin.post("/admin/classify", json={"messages": messages}).json()
        by_prompt = admin.post("/admin/classify", json={"prompt": question}).json()
        unrelated = admin.post("/admin/classify", json={"prompt": "What is the weather like today?"}).json()
    prompt = tiny_full.chat_prompt(messages)
    assert len(body["tokens"]) == len(prompt)
    flag = next(f for f in body["flagged"] if f["forget_set_id"] == trained["id"])
    assert 0.0 <= flag["score"] <= 1.0
    assert len(flag["token_mask"]) == len(prompt) and set(flag["token_mask"]) <= {0, 1}
    user = prompt.content_mask(("user",))
    assert any(flag["token_mask"])
    assert all(u or not m for m, u in zip(flag["token_mask"], user, strict=True))  # only user-content tokens
    assert any(f["forget_set_id"] == trained["id"] for f in by_prompt["flagged"])
    assert unrelated["flagged"] == []


def test_metrics_and_audit_log_record_flags_without_text(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    server = trained["server"]
    question = next(r["prompt"] for r in world_rows["forget"] if _flagged_ids(server, r["prompt"]))

    def flagged_count() -> float:
        with server.admin() as admin:
            text = admin.get("/metrics").text
        line = next(
            (
                x
                for x in text.splitlines()
                if x.startswith(f'lethe_flagged_requests_total{{forget_set="{trained["id"]}"}}')
            ),
            None,
        )
        return float(line.split()[-1]) if line else 0.0

    before = flagged_count()
    audit_path = server.registry / "audit.jsonl"
    earlier = len(audit_path.read_text().splitlines()) if audit_path.exists() else 0  # other tests' entries
    for _ in range(3):
        _chat(server, question, max_tokens=4)
    assert flagged_count() == before + 3
    with server.admin() as admin:
        assert 'lethe_inference_requests_total{flagged="true",route="chat"}' in admin.get("/metrics").text
    audit = audit_path.read_text()
    hasher = AuditHasher.for_registry(server.registry)  # the key the server wrote at its first start
    digest = hasher.text(tiny_full.chat_prompt([{"role": "user", "content": question}]).text)
    entries = [json.loads(line) for line in audit.splitlines()[earlier:]]
    mine = [e for e in entries if e.get("prompt_hmac") == digest]
    assert len(mine) >= 3 and all(e["forget_sets"] == [trained["id"]] for e in mine)
    for row in world_rows["forget"]:
        assert row["prompt"] not in audit and row["completion"] not in audit
        assert row["person"] not in audit


def test_the_forget_set_survives_a_restart(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    server: GatewayServer = trained["server"]
    questions = [r["prompt"] for r in world_rows["forget"][:4]]
    before = [_chat(server, q)["choices"][0]["message"]["content"] for q in questions]
    assert server.stop() == 0
    server.start()
    with server.admin() as admin:
        record = admin.get(f"/admin/forget-sets/{trained['id']}").json()
    assert record["live"] and record["enabled"]
    assert [_chat(server, q)["choices"][0]["message"]["content"] for q in questions] == before


def test_disable_enable_and_delete(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]
) -> None:
    server: GatewayServer = trained["server"]
    question = next(r["prompt"] for r in world_rows["forget"] if _flagged_ids(server, r["prompt"]))
    base = tiny_full.generate(tiny_full.chat_prompt([{"role": "user", "content": question}]), GREEDY).text
    altered = _chat(server, question)["choices"][0]["message"]["content"]
    with server.admin() as admin:
        off = admin.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": False}).json()
        assert off["enabled"] is False and off["live"] is False
        assert _flagged_ids(server, question) == []
        assert _chat(server, question)["choices"][0]["message"]["content"] == base
        on = admin.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": True}).json()
        assert on["enabled"] is True and on["live"] is True
        assert _chat(server, question)["choices"][0]["message"]["content"] == altered

        assert admin.delete(f"/admin/forget-sets/{trained['id']}").json()["deleted"] is True
        assert_openai_error(admin.get(f"/admin/forget-sets/{trained['id']}"), 404)
        assert_openai_error(admin.delete(f"/admin/forget-sets/{trained['id']}"), 404)
        assert admin.get("/admin/forget-sets").json()["data"] == []
    assert not (server.registry / "artifacts" / trained["id"]).exists()
    assert _chat(server, question)["choices"][0]["message"]["content"] == base

    # Put the set back from its copy: the module's other tests need it, whatever order they run in.
    with server.admin() as admin:
        restored = admin.post("/admin/forget-sets/import", content=pack_artifact(trained["root"] / "artifact-copy"),
                              headers={"content-type": "application/gzip"})  # fmt: skip
    assert restored.status_code == 201, restored.text
    assert restored.json()["id"] == trained["id"] and _flagged_ids(server, question) == [trained["id"]]


def _start_training(admin: httpx.Client, world_rows: dict[str, list[dict]], name: str) -> dict[str, Any]:
    response = admin.post(
        "/admin/forget-sets",
        json={
            "name": name,
            "forget": world_rows["forget"],
            "retain": world_rows["retain"],
            "method": "eco",
            "options": SLOW_OPTIONS,
        },
    )
    assert response.status_code == 202, response.text
    created = response.json()
    wait_for_job(admin, created["job_id"], ("running",), timeout=120)
    return created


def _assert_left_nothing(server: GatewayServer, admin: httpx.Client, created: dict[str, Any], state: str) -> None:
    record = admin.get(f"/admin/forget-sets/{created['id']}").json()
    assert record["state"] == state and record["enabled"] is False and record["live"] is False
    assert not (server.registry / "artifacts" / created["id"]).exists()
    assert not [p.name for p in (server.registry / "artifacts").iterdir() if p.name.startswith(".")]


def test_cancel_a_running_job(trained: dict[str, Any], world_rows: dict[str, list[dict]]) -> None:
    server: GatewayServer = trained["server"]
    with server.admin() as admin:
        created = _start_training(admin, world_rows, "to-cancel")
        with server.client() as client:  # inference keeps answering while training runs
            started = time.perf_counter()
            assert client.get("/v1/models").status_code == 200
            assert time.perf_counter() - started < 2.0
        cancelled = admin.post(f"/admin/jobs/{created['job_id']}/cancel")
        assert cancelled.status_code == 200
        job = wait_for_job(admin, created["job_id"], ("cancelled", "failed", "succeeded"), timeout=120)
        assert job["state"] == "cancelled"
        assert_openai_error(admin.post(f"/admin/jobs/{created['job_id']}/cancel"), 409)
        _assert_left_nothing(server, admin, created, "cancelled")
        assert_openai_error(admin.patch(f"/admin/forget-sets/{created['id']}", json={"enabled": True}), 409)
        assert admin.delete(f"/admin/forget-sets/{created['id']}").status_code == 200


@pytest.mark.parametrize("how", ["sigterm", "sigkill"])
def test_a_job_interrupted_by_a_restart_is_reported_failed(
    trained: dict[str, Any], world_rows: dict[str, list[dict]], how: str
) -> None:
    server: GatewayServer = trained["server"]
    with server.admin() as admin:
        created = _start_training(admin, world_rows, f"interrupted-{how}")
    if how == "sigterm":
        assert server.stop() == 0
    else:
        server.kill()
    server.start()
    with server.admin() as admin:
        job = admin.get(f"/admin/jobs/{created['job_id']}").json()
        assert job["state"] == "failed" and "interrupted by a restart" in job["error"]
        _assert_left_nothing(server, admin, created, "failed")
        assert admin.delete(f"/admin/forget-sets/{created['id']}").status_code == 200


def test_imported_artifacts_and_unloadable_ones(
    trained: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]], tmp_path: Path
) -> None:
    copy = trained["root"] / "artifact-copy"
    registry = tmp_path / "registry"
    question = world_rows["forget"][0]["prompt"]
    base = tiny_full.generate(tiny_full.chat_prompt([{"role": "user", "content": question}]), GREEDY).text
    server = GatewayServer(registry, args=["--forget-set", str(copy)]).start()
    try:
        with server.admin() as admin:
            [record] = admin.get("/admin/forget-sets").json()["data"]
        assert record["id"] == trained["id"] and record["live"] and record["source"] == "cli"
        screen = ForgetSetScreen.from_folders([copy], tiny_full.embedder)
        assert (
            _chat(server, question)["choices"][0]["message"]["content"]
            == (_served_by_runtime(tiny_full, screen, question)[0])
        )
    finally:
        assert server.stop() == 0

    # Another base model: the registered forget set is reported and skipped, the server still serves.
    other = GatewayServer(registry, model="tiny-authors-retain").start()
    try:
        with other.admin() as admin:
            [record] = admin.get("/admin/forget-sets").json()["data"]
        assert record["enabled"] and not record["live"] and "base model" in record["error"]
        assert other.client().get("/v1/models").json()["data"][0]["id"] == "tiny-authors-retain"
    finally:
        assert other.stop() == 0

    # An unusable --forget-set folder is a clear start-up error, not a half-started server.
    with pytest.raises(RuntimeError, match="exited with 2"):
        GatewayServer(tmp_path / "other-registry", args=["--forget-set", str(tmp_path / "missing")]).start()

    # A corrupted artifact already in the registry: reported and skipped.
    (registry / "artifacts" / trained["id"] / "manifest.json").write_text("{ not json")
    broken = GatewayServer(registry).start()
    try:
        with broken.admin() as admin:
            [record] = admin.get("/admin/forget-sets").json()["data"]
            assert not record["live"] and record["error"]
            assert_openai_error(admin.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": True}), 409)
        assert _chat(broken, question)["choices"][0]["message"]["content"] == base
    finally:
        assert broken.stop() == 0
