"""The README's guarantees, tested at the level they are promised, over real HTTP on the tiny model.

- An unflagged request with a forget set live is served from the base model's own embeddings: its echo
  log-probs equal the bare runtime's bit for bit, and a seeded sampled answer is the bare runtime's.
- Every key layout (none, inference keys only, both) opens and closes every route group as documented.
- Audit lines hold ids, hashes, counts and flags only: no text, no token ids.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch

from lethe.benchmarks.server_harness import ADMIN_KEY, API_KEY, GatewayServer, wait_for_job
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.training.presets import SMOKE_OPTIONS

MODEL = "tiny-authors"
CANARY = "Quillon Vastremere"  # a made-up name no probe or world row uses


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path]) -> Iterator[dict[str, Any]]:
    """A gateway (keys on) with one trained forget set live."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    world = build_world(WorldConfig.test())
    server = GatewayServer(tmp_path_factory.mktemp("guarantees") / "registry").start()
    with server.admin() as admin:
        body = {"name": "people", "method": "eco", "forget": world.rows("forget"), "retain": world.rows("retain"),
                "options": SMOKE_OPTIONS}  # fmt: skip
        created = admin.post("/admin/forget-sets", json=body).json()
        job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=900)
    assert job["state"] == "succeeded", server.log_tail()
    yield {"server": server, "world": world, "id": created["id"]}
    server.stop()


def _one_thread() -> Any:
    """The servers run one torch thread; the in-process reference computes with one too (same arithmetic)."""
    class Restore:
        def __enter__(self) -> None:
            self.threads = torch.get_num_threads()
            torch.set_num_threads(1)

        def __exit__(self, *exc: object) -> None:
            torch.set_num_threads(self.threads)

    return Restore()


def test_unflagged_echo_logprobs_are_the_base_models_bits(live: dict[str, Any], tiny_full: LanguageModel) -> None:
    server, world = live["server"], live["world"]
    prompts = [row["prompt"] + " " + row["completion"] for row in world.rows("retain")[:3]]
    with server.client() as client:
        for prompt in prompts:
            body = {"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
            served = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
            with _one_thread():
                ids = tiny_full.text_prompt(prompt).ids
                reference = tiny_full.prompt_logprobs(list(ids)).token_logprobs
                independent = _transformers_logprobs(tiny_full, list(ids))
            assert served == reference  # exact floats, not approximately
            # and the runtime's scoring itself is the base model's: Hugging Face's forward pass on the token ids
            assert served[0] is None and served[1:] == pytest.approx(independent, abs=1e-5)


def _transformers_logprobs(model: LanguageModel, ids: list[int]) -> list[float]:
    """Each token's log-probability from the Hugging Face model called on ``input_ids`` (none of our embedding,
    intervention or scoring code)."""
    with torch.no_grad():
        logits = model.decoder.model(input_ids=torch.tensor([ids])).logits[0].float()
    logp = torch.log_softmax(logits, dim=-1)
    return [float(logp[i, ids[i + 1]]) for i in range(len(ids) - 1)]


def test_unflagged_seeded_samples_are_the_base_models(live: dict[str, Any], tiny_full: LanguageModel) -> None:
    server, world = live["server"], live["world"]
    question = world.rows("retain")[0]["prompt"]
    body = {"model": MODEL, "messages": [{"role": "user", "content": question}], "temperature": 1.5,
            "top_p": 1.0, "seed": 1234, "max_tokens": 24}  # fmt: skip
    with server.client() as client:
        served = client.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    with _one_thread():
        prompt = tiny_full.chat_prompt([{"role": "user", "content": question}])
        reference = tiny_full.generate(prompt, SamplingParams(max_new_tokens=24, temperature=1.5, seed=1234)).text
    assert served == reference


def test_flagged_requests_do_change_what_the_model_sees(live: dict[str, Any], tiny_full: LanguageModel) -> None:
    """The counterpart: the same comparison for a forget question differs, so the checks above can fail."""
    server, world = live["server"], live["world"]
    row = world.rows("forget")[0]
    prompt = row["prompt"] + " " + row["completion"]
    with server.client() as client:
        body = {"model": MODEL, "prompt": prompt, "max_tokens": 0, "echo": True, "logprobs": 1}
        served = client.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["token_logprobs"]
    with _one_thread():
        reference = tiny_full.prompt_logprobs(list(tiny_full.text_prompt(prompt).ids)).token_logprobs
    assert served != reference


# (route, method, body) per route group
ROUTES = {
    "inference": ("/v1/models", "GET", None),
    "admin": ("/admin/forget-sets", "GET", None),
    "metrics": ("/metrics", "GET", None),
}
LAYOUTS = {
    # layout: {route group: {key sent: expected status}}
    "none": {"inference": {None: 200}, "admin": {None: 200}, "metrics": {None: 200}},
    "inference_only": {
        "inference": {None: 401, API_KEY: 200, "wrong": 401},
        "admin": {None: 403, API_KEY: 403, "wrong": 403},
        "metrics": {None: 403, API_KEY: 403},
    },
    "both": {
        "inference": {None: 401, API_KEY: 200, ADMIN_KEY: 403, "wrong": 401},
        "admin": {None: 401, API_KEY: 403, ADMIN_KEY: 200, "wrong": 401},
        "metrics": {None: 401, API_KEY: 403, ADMIN_KEY: 200},
    },
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_key_layout_against_every_route_group(layout: str, tmp_path: Path, authors_paths: Any) -> None:
    api_keys = None if layout == "none" else API_KEY
    admin_key = ADMIN_KEY if layout == "both" else None
    server = GatewayServer(tmp_path / "registry", api_keys=api_keys, admin_key=admin_key).start()
    try:
        for group, expected in LAYOUTS[layout].items():
            path, method, body = ROUTES[group]
            for key, status in expected.items():
                headers = {"Authorization": f"Bearer {key}"} if key else {}
                response = httpx.request(method, server.base_url + path, headers=headers, json=body, timeout=60)
                assert response.status_code == status, (layout, group, key, response.text)
                if status >= 400:
                    assert set(response.json()) == {"error"}
        # writes are closed the same way as reads
        if layout == "inference_only":
            write = httpx.post(server.base_url + "/admin/forget-sets", json={"name": "x"}, timeout=60,
                               headers={"Authorization": f"Bearer {API_KEY}"})  # fmt: skip
            assert write.status_code == 403
    finally:
        server.stop()


_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$")


def _audit_value_ok(value: Any) -> bool:
    if value is None or isinstance(value, bool | int | float):
        return True
    if isinstance(value, str):
        return bool(_ID.match(value)) or bool(re.fullmatch(r"[0-9a-f]{16,128}", value)) or len(value) <= 40
    if isinstance(value, list):
        return all(isinstance(v, str) and _ID.match(v) for v in value)  # forget-set ids, never token ids
    return False


def test_audit_lines_hold_no_text_and_no_token_ids(live: dict[str, Any]) -> None:
    server, world = live["server"], live["world"]
    person = world.rows("forget")[0]["person"]
    flagged = f"Where was {person} born? My friend {CANARY} asked."
    with server.client() as client:
        for content in (flagged, f"What is {CANARY}'s favourite colour?"):
            body = {"model": MODEL, "messages": [{"role": "user", "content": content}], "max_tokens": 4}
            assert client.post("/v1/chat/completions", json=body).status_code == 200
        body = {"model": MODEL, "prompt": flagged, "max_tokens": 0, "echo": True, "logprobs": 1}
        assert client.post("/v1/completions", json=body).status_code == 200
    audit = (server.registry / "audit.jsonl").read_text(encoding="utf-8")
    assert CANARY not in audit and person not in audit
    lines = [json.loads(line) for line in audit.splitlines() if line.strip()]
    inference = [line for line in lines if line.get("event") == "inference"]
    assert len(inference) >= 3 and any(line.get("forget_sets") == [live["id"]] for line in inference)
    for line in lines:
        for key, value in line.items():
            assert _audit_value_ok(value), (key, value)


def test_the_upstream_sees_an_unflagged_clients_exact_bytes(live: dict[str, Any], tiny_full: LanguageModel) -> None:
    """Proxy mode forwards an unflagged request byte for byte (spacing, key order, seed and all)."""
    from proxy_support import ThreadServer
    from vllm_stub import VllmStub

    from lethe.service.upstream_shapes import PROBE_TEXT

    stub = VllmStub(tiny_full, "upstream-tiny")
    upstream = ThreadServer(stub.app).start()
    artifact = live["server"].registry / "artifacts" / live["id"]
    proxy = GatewayServer(live["server"].registry.parent / "proxy-registry", args=[
        "--upstream", upstream.url, "--upstream-model", "upstream-tiny", "--embeddings-from", MODEL,
        "--forget-set", str(artifact)])  # fmt: skip
    try:
        proxy.start()
        question = live["world"].rows("retain")[1]["prompt"]
        raw = ('{ "seed":77 ,"model": "upstream-tiny","temperature": 2.0, "max_tokens": 12, '
               f'"messages":[{{"content": {json.dumps(question)}, "role":"user"}}] }}').encode()  # fmt: skip
        headers = {"Authorization": f"Bearer {API_KEY}", "content-type": "application/json"}
        proxied = httpx.post(proxy.base_url + "/v1/chat/completions", content=raw, headers=headers, timeout=120)
        assert proxied.status_code == 200, proxied.text
        # The gateway's own start-up probes (prompt_embeds support, answer shapes) may land around it: skip those.
        forwarded = [r for r in stub.requests if r.path == "/v1/chat/completions" and PROBE_TEXT not in r.raw.decode()]
        assert [r.raw for r in forwarded] == [raw]
        direct = httpx.post(upstream.url + "/v1/chat/completions", content=raw, timeout=120)
        assert proxied.json()["choices"] == direct.json()["choices"]  # same seeded sample
    finally:
        proxy.stop()
        upstream.stop()
