"""Proxy mode over real HTTP on loopback: a Lethe proxy in front of a Lethe local-mode upstream.

Two real processes (``lethe serve`` local, and ``lethe serve --upstream`` in front of it, through
a fault-injecting relay): greedy flagged and unflagged answers through the proxy equal local
mode's; the upstream accepts tensors encoded as vLLM's client encodes them; a stopped, hung,
failing or stream-cutting upstream gives the documented 502/504 and the proxy keeps serving;
artifact archives import (proxy and local mode) and hostile ones are refused with the registry
unchanged. The no-prompt-embeds policies run on in-thread servers sharing the test's model.
"""

from __future__ import annotations

import base64
import io
import json
import pickle
import tarfile
import threading
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from proxy_support import FaultRelay, ThreadServer
from support import assert_openai_error
from vllm_stub import VllmStub

from lethe.benchmarks.server_harness import ADMIN_KEY, API_KEY, GatewayServer
from lethe.runtime.artifact import (
    BaseModelInfo,
    EcoParameters,
    ForgetSetArtifact,
    ForgetSetManifest,
    ForgetSetParameters,
    SpulParameters,
    utc_now,
)
from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.service.app import create_app
from lethe.service.artifact_archive import pack_artifact
from lethe.service.backend import Delta
from lethe.service.gateway import build_gateway, local_backend
from lethe.service.generation_defaults import GenerationDefaults
from lethe.service.proxy_backend import ProxyBackend, rewrite_deltas
from lethe.service.settings import GatewaySettings
from lethe.service.text_corruption import corrupt_token_ids, corruption_mask, replacement_vocabulary
from lethe.service.upstream_embeddings import UnsupportedModelFamily, UpstreamEmbeddings, encode_prompt_embeds

MODEL = "tiny-authors"
TIMEOUT_S = 3.0
MAX_IMPORT_BYTES = 3_000_000
MAX_UNPACKED_BYTES = 6_000_000
GREEDY = SamplingParams(max_new_tokens=20)


# Fixtures -----------------------------------------------------------------------------------


def _import(server: GatewayServer, data: bytes) -> httpx.Response:
    with server.admin() as admin:
        return admin.post("/admin/forget-sets/import", content=data, headers={"content-type": "application/gzip"})


def _artifact(tiny: LanguageModel, classifier: Any, forget_set_id: str, fingerprint: str | None = None) -> Any:
    """A forget set built directly: the trained classifier, ECO noise with per-cluster strengths, a soft prompt."""
    generator = torch.Generator().manual_seed(len(forget_set_id))
    hidden = tiny.hidden_size
    manifest = ForgetSetManifest(
        id=forget_set_id,
        name=f"proxy test {forget_set_id}",
        created=utc_now(),
        base_model=BaseModelInfo(name=MODEL, fingerprint=fingerprint or tiny.fingerprint),
        method="eco+spul",
        parameters=ForgetSetParameters(
            token_mode="salient",
            eco=EcoParameters(function="rand_noise_first_n", strength=3.0, dims=64),
            spul=SpulParameters(num_virtual_tokens=3),
        ),
    )
    scale = float(tiny.embedder.embedding_weight.std())
    return ForgetSetArtifact(
        manifest,
        classifier,
        soft_prompt=torch.randn(3, hidden, generator=generator) * scale,
        cluster_centroids=torch.randn(2, hidden, generator=generator),
        cluster_strengths=torch.tensor([3.0, 5.0]),
    )


@pytest.fixture(scope="module")
def launched(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path]) -> dict[str, Any]:
    """The relay, then the upstream (local mode) and proxy processes, starting in the background."""
    root = tmp_path_factory.mktemp("proxy")
    relay = FaultRelay().start()
    threads = {"LETHE_THREADS": "1"}
    # The upstream stands in for vLLM, which takes the proxy's corrupted rows as they are.
    upstream = GatewayServer(root / "upstream", model=MODEL, env={**threads, "LETHE_PROMPT_EMBEDS_ANY_ROWS": "true"})
    proxy = GatewayServer(
        root / "proxy",
        model="unused-in-proxy-mode",
        env={
            **threads,
            "LETHE_UPSTREAM_API_KEY": API_KEY,
            "LETHE_UPSTREAM_DTYPE": "float32",  # the upstream, a local-mode Lethe, runs in float32
            "LETHE_UPSTREAM_TIMEOUT_S": str(TIMEOUT_S),
            "LETHE_MAX_IMPORT_BYTES": str(MAX_IMPORT_BYTES),
            "LETHE_MAX_IMPORT_UNPACKED_BYTES": str(MAX_UNPACKED_BYTES),
        },
        args=["--upstream", f"{relay.url}/v1", "--upstream-model", MODEL, "--embeddings-from", MODEL],
    )
    starting = [threading.Thread(target=server.start) for server in (upstream, proxy)]
    for thread in starting:
        thread.start()
    while not upstream.port:
        time.sleep(0.05)
    relay.target_port = upstream.port
    state = {"root": root, "relay": relay, "upstream": upstream, "proxy": proxy, "starting": starting}
    yield state
    proxy.stop()
    upstream.stop()
    relay.stop()


@pytest.fixture(scope="module")
def stack(launched: dict[str, Any], tiny_full: LanguageModel, world_rows: dict[str, list[dict]]) -> dict[str, Any]:
    """Both processes ready, with a forget set (built while they started) imported into the proxy."""
    from lethe.classifier import ClassifierConfig, train_scope_classifier

    fast = ClassifierConfig(seed=0, variants_per_prompt=1, frames_per_entity=2, near_misses_per_prompt=1)
    classifier = train_scope_classifier(
        [r["prompt"] for r in world_rows["forget"]], [r["prompt"] for r in world_rows["retain"]], fast
    )
    artifact = _artifact(tiny_full, classifier, "fs-proxy-first")
    artifact.save(launched["root"] / artifact.id)
    for thread in launched["starting"]:
        thread.join()
    for server in (launched["upstream"], launched["proxy"]):
        assert server.process is not None and server.process.poll() is None, server.log_tail()
    imported = _import(launched["proxy"], pack_artifact(launched["root"] / artifact.id))
    assert imported.status_code == 201, imported.text
    return {**launched, "tiny": tiny_full, "classifier": classifier, "artifacts": [artifact]}


def _questions(world_rows: dict[str, list[dict]]) -> tuple[list[str], list[str]]:
    return [r["prompt"] for r in world_rows["forget"][:3]], [r["prompt"] for r in world_rows["retain"][:3]]


def _chat_body(question: str, params: SamplingParams = GREEDY, model: str = MODEL, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": question}],
        "max_tokens": params.max_new_tokens,
        "temperature": params.temperature,
        **extra,
    }
    if params.seed is not None:
        body["seed"] = params.seed
    return body


def _chat(
    server_url: str, question: str, params: SamplingParams = GREEDY, model: str = MODEL, **extra: Any
) -> httpx.Response:
    with httpx.Client(base_url=server_url, headers={"Authorization": f"Bearer {API_KEY}"}, timeout=60) as client:
        return client.post("/v1/chat/completions", json=_chat_body(question, params, model, **extra))


def _content(response: httpx.Response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["choices"][0]["message"]["content"]


def _stream_events(response: httpx.Response) -> list[str]:
    return [line[len("data: ") :] for line in response.iter_lines() if line.startswith("data: ")]


def _local(
    tiny: LanguageModel, artifacts: list[Any], question: str, params: SamplingParams = GREEDY
) -> tuple[str, bool]:
    """What local mode serves: the runtime routing through the same artifacts and generating."""
    screen = ForgetSetScreen(artifacts)
    messages = [{"role": "user", "content": question}]
    prompt = tiny.chat_prompt(messages)
    verdict = screen.screen(prompt, messages, request_seed=params.seed or 0, embedder=tiny.embedder)
    return tiny.generate(prompt, params, verdict.plan if verdict.flagged else None).text, verdict.flagged


# Equality with local mode -------------------------------------------------------------------


def test_flagged_and_unflagged_answers_equal_local_mode(
    stack: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    tiny, artifacts, proxy = stack["tiny"], stack["artifacts"], stack["proxy"]
    forget, retain = _questions(world_rows)
    changed = 0
    for question in forget + retain:
        expected, flagged = _local(tiny, artifacts, question)
        assert flagged == (question in forget), question
        assert _content(_chat(proxy.base_url, question)) == expected
        if flagged:
            changed += expected != _local(tiny, [], question)[0]
    assert changed >= 1  # the forget set really alters flagged answers

    # Seeded sampling too: noise and sampling are both seeded from the request.
    seeded = SamplingParams(max_new_tokens=16, temperature=0.9, seed=11)
    assert _content(_chat(proxy.base_url, forget[0], seeded)) == _local(tiny, artifacts, forget[0], seeded)[0]

    # Unflagged answers are the upstream's own, byte for byte (forwarded unchanged).
    direct = _chat(stack["upstream"].base_url, retain[0])
    assert _content(direct) == _content(_chat(proxy.base_url, retain[0]))


def test_streams_equal_local_mode_and_completions_work(
    stack: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    tiny, artifacts, proxy = stack["tiny"], stack["artifacts"], stack["proxy"]
    forget, retain = _questions(world_rows)
    with proxy.client() as client:
        for question in (forget[0], retain[0]):
            body = _chat_body(question, stream=True, stream_options={"include_usage": True})
            with client.stream("POST", "/v1/chat/completions", json=body) as response:
                assert response.status_code == 200
                events = _stream_events(response)
            assert events[-1] == "[DONE]"
            chunks = [json.loads(e) for e in events[:-1]]
            assert all(c["object"] == "chat.completion.chunk" for c in chunks)
            text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
            assert text == _local(tiny, artifacts, question)[0]
            assert chunks[-1]["usage"]["completion_tokens"] >= 1

        # Legacy completions: flagged text prompt served by embedding, like local mode.
        prompt = tiny.text_prompt(forget[1])
        screen = ForgetSetScreen(artifacts)
        verdict = screen.screen(prompt, None, request_seed=0, embedder=tiny.embedder)
        assert verdict.flagged
        expected = tiny.generate(prompt, SamplingParams(max_new_tokens=12), verdict.plan).text
        response = client.post(
            "/v1/completions", json={"model": MODEL, "prompt": forget[1], "max_tokens": 12, "temperature": 0}
        )
        assert response.status_code == 200, response.text
        assert response.json()["choices"][0]["text"] == expected

    # The official client works through the proxy.
    sdk = proxy.openai()
    assert [m.id for m in sdk.models.list().data] == [MODEL]
    answer = sdk.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": retain[1]}], max_tokens=20, temperature=0
    )
    assert answer.choices[0].message.content == _local(tiny, artifacts, retain[1])[0]


def _metric(server: GatewayServer, name: str) -> float:
    """A counter's value on ``/metrics`` (0 before its first increment)."""
    with server.admin() as admin:
        text = admin.get("/metrics").text
    return sum(float(line.split()[-1]) for line in text.splitlines() if line.startswith(name))


def test_a_flagged_request_is_classified_once(stack: dict[str, Any], world_rows: dict[str, list[dict]]) -> None:
    proxy, tiny, artifacts = stack["proxy"], stack["tiny"], stack["artifacts"]
    forget, retain = _questions(world_rows)
    flagged_total = f'lethe_flagged_requests_total{{forget_set="{artifacts[0].id}"}}'
    for question, flagged in ((forget[0], True), (retain[0], False)):
        classified, flags = _metric(proxy, "lethe_classifications_total"), _metric(proxy, flagged_total)
        assert _content(_chat(proxy.base_url, question)) == _local(tiny, artifacts, question)[0]
        assert _metric(proxy, flagged_total) == flags + flagged
        # The fast path's verdict is handed down to the route that serves the flagged request: one classification.
        assert _metric(proxy, "lethe_classifications_total") == classified + 1


def test_upstream_errors_pass_through_and_unknown_models_are_404(stack: dict[str, Any]) -> None:
    proxy, upstream = stack["proxy"], stack["upstream"]
    bad = {"model": MODEL, "messages": [{"role": "user", "content": "Hello there"}], "n": 3}
    with proxy.client() as client, upstream.client() as direct:
        through, straight = client.post("/v1/chat/completions", json=bad), direct.post("/v1/chat/completions", json=bad)
        assert through.status_code == straight.status_code == 400
        assert through.json() == straight.json()
        assert_openai_error(client.post("/v1/chat/completions", json={**bad, "model": "other"}), 404, "model")
        assert_openai_error(client.post("/v1/chat/completions", content=b"{nope"), 400)


def test_vllm_client_encoding_is_accepted_by_the_upstream(stack: dict[str, Any]) -> None:
    tiny, upstream = stack["tiny"], stack["upstream"]
    prompt = tiny.text_prompt("Where was the author born?")
    embeds = tiny.embed(prompt.ids)
    expected = tiny.generate(prompt, SamplingParams(max_new_tokens=10)).text
    with upstream.client() as client:
        for tensor in (embeds, embeds.to(torch.bfloat16)):
            # vLLM's examples/online_serving/prompt_embed_inference_with_openai_client.py, verbatim.
            buffer = io.BytesIO()
            torch.save(tensor, buffer)
            buffer.seek(0)
            encoded = base64.b64encode(buffer.read()).decode("utf-8")
            assert torch.equal(torch.load(io.BytesIO(base64.b64decode(encode_prompt_embeds(tensor)))), tensor)
            response = client.post(
                "/v1/completions",
                json={"model": MODEL, "prompt_embeds": encoded, "max_tokens": 10, "temperature": 0},
            )
            assert response.status_code == 200, response.text
            if tensor.dtype == torch.float32:
                assert response.json()["choices"][0]["text"] == expected


# Faults --------------------------------------------------------------------------------------


def _timed_chat(url: str, question: str, **extra: Any) -> tuple[httpx.Response, float]:
    started = time.monotonic()
    response = _chat(url, question, **extra)
    return response, time.monotonic() - started


def test_stopped_hung_and_failing_upstreams_give_502_504_and_the_proxy_recovers(
    stack: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    relay, proxy, tiny, artifacts = stack["relay"], stack["proxy"], stack["tiny"], stack["artifacts"]
    forget, retain = _questions(world_rows)
    try:
        relay.set_mode("down")  # connection refused
        for question in (retain[0], forget[0]):
            response, took = _timed_chat(proxy.base_url, question)
            assert assert_openai_error(response, 502)["code"] == "upstream_unavailable"
            assert took < 5.0

        relay.set_mode("hang")  # accepts, never answers
        before = relay.connections
        results: dict[str, Any] = {}
        waiter = threading.Thread(target=lambda: results.update(hung=_timed_chat(proxy.base_url, retain[1])))
        waiter.start()
        time.sleep(0.3)
        with proxy.client() as client:  # the proxy still answers while a request hangs upstream
            assert client.get("/v1/models").status_code == 200
            assert httpx.get(f"{proxy.base_url}/health", timeout=2).status_code == 200
        waiter.join(15)
        response, took = results["hung"]
        assert assert_openai_error(response, 504)["code"] == "upstream_timeout"
        assert TIMEOUT_S - 0.2 <= took < TIMEOUT_S + 3
        assert relay.connections - before == 1  # a request that reached the upstream is never retried

        relay.set_mode("error500")
        for question in (retain[0], forget[0]):
            error = assert_openai_error(_chat(proxy.base_url, question), 502)
            assert error["code"] == "upstream_error" and error["type"] == "server_error"
    finally:
        relay.set_mode("pass")
    assert _content(_chat(proxy.base_url, forget[0])) == _local(tiny, artifacts, forget[0])[0]
    assert _content(_chat(proxy.base_url, retain[0])) == _local(tiny, artifacts, retain[0])[0]


def test_a_cut_stream_ends_with_an_error_event(stack: dict[str, Any], world_rows: dict[str, list[dict]]) -> None:
    relay, proxy = stack["relay"], stack["proxy"]
    forget, retain = _questions(world_rows)
    params = SamplingParams(max_new_tokens=40)
    try:
        relay.set_mode("cut")
        with proxy.client() as client:
            for question in (retain[0], forget[0]):
                body = _chat_body(question, params, stream=True)
                with client.stream("POST", "/v1/chat/completions", json=body) as response:
                    assert response.status_code == 200
                    events = _stream_events(response)
                assert events[-1] == "[DONE]"
                error = json.loads(events[-2])["error"]
                assert error["code"] == "upstream_stream_cut" and set(error) == {"message", "type", "param", "code"}
                assert len(events) >= 3  # some of the answer arrived before the cut
            relay.cut_body_bytes = 60  # a whole answer is cut too: a 502, not a truncated body
            relay.set_mode("cut")
            assert assert_openai_error(_chat(proxy.base_url, retain[0], params), 502)["code"] in (
                "upstream_error",
                "upstream_stream_cut",
            )
    finally:
        relay.cut_body_bytes = 400
        relay.set_mode("pass")
    assert _chat(proxy.base_url, retain[0]).status_code == 200


# Importing artifacts -------------------------------------------------------------------------


def _tar(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, bytes]:
    return tarfile.TarInfo(name), data


def _registry_state(server: GatewayServer) -> tuple[list[Any], list[str]]:
    with server.admin() as admin:
        listing = admin.get("/admin/forget-sets").json()["data"]
    return listing, sorted(p.name for p in (server.registry / "artifacts").iterdir())


def test_import_hostile_archives_are_refused_and_change_nothing(stack: dict[str, Any]) -> None:
    proxy, root = stack["proxy"], stack["root"]
    good = root / stack["artifacts"][0].id
    manifest = (good / "manifest.json").read_bytes()
    clf_json = (good / "classifier" / "classifier.json").read_bytes()
    before = _registry_state(proxy)
    link = tarfile.TarInfo("fs-x/manifest.json")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    hard = tarfile.TarInfo("fs-x/classifier/classifier.json")
    hard.type, hard.linkname = tarfile.LNKTYPE, "fs-x/manifest.json"
    wrong = json.loads(manifest)
    wrong["base_model"]["fingerprint"] = "sha256:" + "0" * 64
    wrong["id"] = "fs-wrong-model"
    hostile = {
        "traversal": _tar([_file("../evil.json", b"{}"), _file("fs-x/manifest.json", manifest)]),
        "absolute": _tar([_file("/tmp/lethe-evil.json", b"{}")]),
        "symlink": _tar([(link, None)]),
        "hardlink": _tar([_file("fs-x/manifest.json", manifest), (hard, None)]),
        "pickle": _tar([_file("fs-x/manifest.json", manifest), _file("fs-x/classifier/model.pkl", pickle.dumps(1))]),
        "pickle-disguised": _tar(
            [
                _file("fs-x/manifest.json", manifest),
                _file("fs-x/classifier/classifier.json", clf_json),
                _file("fs-x/classifier/classifier.safetensors", pickle.dumps({"a": 1})),
            ]
        ),
        "bomb": _tar([_file("fs-x/manifest.json", b" " * (MAX_UNPACKED_BYTES + 10))]),
        "not-an-archive": b"hello, this is not an archive",
        "no-manifest": _tar([_file("fs-x/notes.json", b"{}")]),
        "wrong-fingerprint": _wrong_fingerprint(good, wrong),
    }
    for name, data in hostile.items():
        error = assert_openai_error(_import(proxy, data), 400)
        assert error["code"] in ("invalid_archive", "invalid_artifact", "fingerprint_mismatch"), (name, error)
        if name == "wrong-fingerprint":
            assert error["code"] == "fingerprint_mismatch"
        assert "/etc" not in error["message"] and str(proxy.registry) not in error["message"], error
    assert not Path("/tmp/lethe-evil.json").exists() and not (proxy.registry.parent / "evil.json").exists()
    oversized = _import(proxy, b"\x1f\x8b" + b"\0" * (MAX_IMPORT_BYTES + 1))
    assert assert_openai_error(oversized, 413)["code"] == "request_too_large"
    with httpx.Client(base_url=proxy.base_url, headers={"Authorization": f"Bearer {API_KEY}"}) as user:
        assert user.post("/admin/forget-sets/import", content=pack_artifact(good)).status_code in (401, 403)
    assert _registry_state(proxy) == before
    assert not [p for p in proxy.registry.iterdir() if p.name.startswith(".import-")]


def _wrong_fingerprint(good: Path, manifest: dict[str, Any]) -> bytes:
    files = {p.relative_to(good).as_posix(): p.read_bytes() for p in good.rglob("*") if p.is_file()}
    files["manifest.json"] = json.dumps(manifest).encode()
    return _tar([_file(f"fs-wrong/{name}", data) for name, data in sorted(files.items())])


def test_import_in_proxy_and_local_mode_serves_like_local_mode(
    stack: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    proxy, upstream, tiny = stack["proxy"], stack["upstream"], stack["tiny"]
    forget, retain = _questions(world_rows)
    second = _artifact(tiny, stack["classifier"], "fs-imported")
    folder = second.save(stack["root"] / "fs-imported")

    # Proxy mode: a tar.gz; both forget sets now flag, their plans compose.
    response = _import(proxy, pack_artifact(folder, "tar.gz"))
    assert response.status_code == 201, response.text
    view = response.json()
    assert view["id"] == "fs-imported" and view["live"] and view["source"] == "import"
    assert assert_openai_error(_import(proxy, pack_artifact(folder)), 409)["code"] == "already_registered"
    both = [*stack["artifacts"], ForgetSetArtifact.load(folder)]
    proxied = _content(_chat(proxy.base_url, forget[2]))
    assert proxied == _local(tiny, both, forget[2])[0]
    assert _content(_chat(proxy.base_url, retain[2])) == _local(tiny, both, retain[2])[0]

    # Local mode: a zip into the upstream gateway; served directly it gives the proxy's answers.
    zipped = pack_artifact(folder, "zip")
    assert zipfile.is_zipfile(io.BytesIO(zipped))
    with upstream.admin() as admin:
        for first in stack["artifacts"]:  # in the proxy's order, so the plans compose alike
            response = admin.post("/admin/forget-sets/import", content=pack_artifact(stack["root"] / first.id, "zip"))
            assert response.status_code == 201, response.text
        assert admin.post("/admin/forget-sets/import", content=zipped).status_code == 201
        try:
            assert _content(_chat(upstream.base_url, forget[2])) == proxied
        finally:
            for forget_set_id in ("fs-imported", stack["artifacts"][0].id):
                assert admin.delete(f"/admin/forget-sets/{forget_set_id}").status_code == 200
    with proxy.admin() as admin:
        assert admin.delete("/admin/forget-sets/fs-imported").status_code == 200


# Policies for upstreams without prompt embeddings -------------------------------------------


@pytest.fixture(scope="module")
def plain_upstream(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> ThreadServer:
    """A local-mode gateway that refuses prompt_embeds, in a thread over the test's model."""
    settings = GatewaySettings(registry=tmp_path_factory.mktemp("plain") / "registry", allow_prompt_embeds=False)
    server = ThreadServer(create_app(build_gateway(settings, local_backend(stack["tiny"], settings)))).start()
    yield server
    server.stop()


def _policy_proxy(stack: dict[str, Any], upstream: ThreadServer, policy: str, folder: Path) -> ThreadServer:
    settings = GatewaySettings(
        registry=folder,
        upstream=upstream.url,
        upstream_model=stack["tiny"].name,  # the in-thread upstream serves the model under its path
        no_embeds_policy=policy,
        refusal_message="I cannot discuss that.",
        upstream_timeout_s=TIMEOUT_S,
        upstream_dtype="float32",
    )
    backend = ProxyBackend(settings, stack["tiny"].embedder)
    gateway = build_gateway(settings, backend, [(a, "cli") for a in stack["artifacts"]])
    server = ThreadServer(create_app(gateway)).start()
    deadline = time.monotonic() + 20
    while backend.prompt_embeds is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.prompt_embeds is False  # probed, not assumed
    return server


def test_policies_without_prompt_embeds(
    stack: dict[str, Any], plain_upstream: ThreadServer, world_rows: dict[str, list[dict]], tmp_path: Path
) -> None:
    tiny, artifacts = stack["tiny"], stack["artifacts"]
    forget, retain = _questions(world_rows)
    name = tiny.name
    servers = {p: _policy_proxy(stack, plain_upstream, p, tmp_path / p) for p in ("refuse", "block", "text")}
    try:
        for server in servers.values():  # unflagged requests are forwarded whatever the policy
            assert _content(_chat(server.url, retain[0], model=name)) == _local(tiny, [], retain[0])[0]

        assert _content(_chat(servers["refuse"].url, forget[0], model=name)) == "I cannot discuss that."
        with httpx.Client(base_url=servers["refuse"].url, timeout=30) as client:
            streamed = _chat_body(forget[0], model=name, stream=True)
            with client.stream("POST", "/v1/chat/completions", json=streamed) as response:
                events = _stream_events(response)
            text = "".join(json.loads(e)["choices"][0]["delta"].get("content") or "" for e in events[:-1])
            assert text == "I cannot discuss that." and events[-1] == "[DONE]"

        blocked = assert_openai_error(_chat(servers["block"].url, forget[0], model=name), 403)
        assert blocked["code"] == "blocked" and forget[0] not in blocked["message"]

        # text: the selected tokens replaced by seeded random tokens, their ids forwarded (no re-tokenizing).
        messages = [{"role": "user", "content": forget[0]}]
        prompt = tiny.chat_prompt(messages)
        plan = ForgetSetScreen(artifacts).screen(prompt, messages, request_seed=0, embedder=tiny.embedder).plan
        vocabulary = replacement_vocabulary(tiny.embedder)
        ids = corrupt_token_ids(prompt, plan, vocabulary, None)
        assert ids == corrupt_token_ids(prompt, plan, vocabulary, None)
        mask = corruption_mask(prompt, plan)
        assert [a for a, m in zip(ids, mask, strict=True) if not m] == [
            a for a, m in zip(prompt.ids, mask, strict=True) if not m
        ]
        assert ids != list(prompt.ids)
        expected = tiny.generate(ids, GREEDY).text
        text_url = servers["text"].url
        first, again = (_content(_chat(text_url, forget[0], model=name)) for _ in range(2))
        assert first == again == expected
    finally:
        for server in servers.values():
            server.stop()


# Against a vLLM-faithful upstream (tests/vllm_stub.py) ---------------------------------------

VLLM_NAME = "tiny-vllm"
STUB_GENERATION_CONFIG = {"temperature": 0.6, "top_p": 0.9, "max_new_tokens": 24}


def _stub_proxy(
    stack: dict[str, Any], upstream: ThreadServer, folder: Path, **overrides: Any
) -> tuple[ThreadServer, ProxyBackend]:
    """An in-thread proxy (no keys, loopback) in front of ``upstream`` with the module's forget set."""
    settings = GatewaySettings(
        registry=folder, upstream=upstream.url, upstream_model=VLLM_NAME, upstream_timeout_s=TIMEOUT_S, **overrides
    )
    defaults = GenerationDefaults.from_values(STUB_GENERATION_CONFIG)
    backend = ProxyBackend(settings, stack["tiny"].embedder, generation_defaults=defaults)
    gateway = build_gateway(settings, backend, [(a, "cli") for a in stack["artifacts"]])
    server = ThreadServer(create_app(gateway)).start()
    deadline = time.monotonic() + 30
    while (backend.prompt_embeds is None or backend.shapes is None) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert backend.prompt_embeds is not None and backend.shapes is not None
    return server, backend


@pytest.fixture(scope="module")
def vllm(stack: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The vLLM stub on the test's tiny model (bf16 like vLLM on a GPU) and a proxy in front of it."""
    stub = VllmStub(stack["tiny"], VLLM_NAME, dtype=torch.bfloat16, generation_config=STUB_GENERATION_CONFIG)
    upstream = ThreadServer(stub.app).start()
    proxy, backend = _stub_proxy(stack, upstream, tmp_path_factory.mktemp("vllm") / "registry")
    yield {"stub": stub, "upstream": upstream, "proxy": proxy, "backend": backend}
    proxy.stop()
    upstream.stop()


def _encode(tensor: Any) -> str:
    buffer = io.BytesIO()
    torch.save(tensor, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


def _post(url: str, path: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(base_url=url, timeout=60) as client:
        return client.post(path, json=body, headers=headers)


def test_the_stub_upstream_does_what_vllm_does(stack: dict[str, Any], vllm: dict[str, Any]) -> None:
    tiny, url = stack["tiny"], vllm["upstream"].url
    embeds = tiny.embed(tiny.text_prompt("Where was the author born?").ids)
    body = {"model": VLLM_NAME, "max_tokens": 4, "temperature": 0}
    # Both prompt and prompt_embeds: vLLM generates for both; n choices per prompt.
    both = _post(url, "/v1/completions", {**body, "prompt": "Hello", "prompt_embeds": _encode(embeds)})
    assert both.status_code == 200 and len(both.json()["choices"]) == 2
    several = _post(url, "/v1/completions", {**body, "prompt_embeds": [_encode(embeds)] * 2, "n": 2})
    assert [c["index"] for c in several.json()["choices"]] == [0, 1, 2, 3]
    assert _post(url, "/v1/completions", {**body, "prompt_embeds": _encode(embeds[None])}).status_code == 200
    for refused in (
        {"prompt_embeds": _encode(embeds), "echo": True},
        {"prompt_embeds": _encode(embeds), "prompt_logprobs": 1},
        {"prompt_embeds": _encode(torch.randn(3, tiny.hidden_size + 1))},
        {"prompt_embeds": _encode(torch.ones(3, tiny.hidden_size, dtype=torch.int64))},
    ):
        answer = _post(url, "/v1/completions", {**body, **refused})
        assert answer.status_code == 400 and answer.json()["error"]["type"] == "BadRequestError"
    whole = _post(url, "/v1/chat/completions", {**body, "messages": [{"role": "user", "content": "Hi"}]}).json()
    assert len(whole["id"]) == len("chatcmpl-") + 16 and "stop_reason" in whole["choices"][0]
    with httpx.Client(base_url=url, timeout=60) as client:
        streamed = {**body, "prompt": "Hello", "stream": True, "stream_options": {"include_usage": True}}
        with client.stream("POST", "/v1/completions", json=streamed) as response:
            events = _stream_events(response)
    assert events[-1] == "[DONE]" and json.loads(events[-2])["choices"] == []
    whole_usage = _post(url, "/v1/completions", {**body, "prompt": "Hello"}).json()["usage"]
    assert json.loads(events[-2])["usage"] == {k: v for k, v in whole_usage.items() if v is not None}


def _shape(value: Any) -> Any:
    """A JSON value's structure: keys in order and value types, without the values."""
    if isinstance(value, dict):
        return [(key, _shape(item)) for key, item in value.items()]
    if isinstance(value, list):
        return [_shape(item) for item in value[:1]]
    return type(value).__name__


def _id_form(identifier: str) -> tuple[str, int]:
    prefix, _, suffix = identifier.rpartition("-")
    return prefix, len(suffix)


def _answer(url: str, path: str, body: dict[str, Any]) -> dict[str, Any]:
    """Status, headers (names, content type) and body structure of an answer, whole or streamed."""
    with httpx.Client(base_url=url, timeout=60) as client, client.stream("POST", path, json=body) as response:
        raw = response.read().decode()
    headers = sorted(k for k in response.headers if k not in ("date", "content-length"))
    events = [line[len("data: ") :] for line in raw.splitlines() if line.startswith("data: ")]
    bodies = [json.loads(e) for e in events if e != "[DONE]"] if body.get("stream") else [json.loads(raw)]
    shapes = [_shape(b) for b in bodies]
    return {
        "status": response.status_code,
        "headers": headers,
        "content-type": response.headers.get("content-type"),
        "shapes": [shape for i, shape in enumerate(shapes) if i == 0 or shape != shapes[i - 1]],  # text chunks once
        "ids": sorted({_id_form(b["id"]) for b in bodies if "id" in b}),
        "done": events[-1:] == ["[DONE]"],
        "errors": [b for b in bodies if "error" in b],
    }


def test_flagged_and_unflagged_requests_cannot_be_told_apart(
    vllm: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    stub, proxy = vllm["stub"], vllm["proxy"]
    forget, retain = _questions(world_rows)
    refused = [
        {"n": 2}, {"logprobs": True}, {"logit_bias": {"5": 10}}, {"tools": [{"type": "function"}]},
        {"presence_penalty": 0.5}, {"response_format": {"type": "json_object"}}, {"surprise": 1}, {"max_tokens": 99999},
    ]  # fmt: skip
    for extra in refused:
        answers = [
            _post(proxy.url, "/v1/chat/completions", _chat_body(q, model=VLLM_NAME, **extra))
            for q in (forget[0], retain[0])
        ]
        assert answers[0].status_code == answers[1].status_code == 400, extra
        assert answers[0].json() == answers[1].json()
    for extra in ({"echo": True, "logprobs": 1, "max_tokens": 0}, {"best_of": 2}, {"suffix": "x"}):
        answers = [
            _post(proxy.url, "/v1/completions", {"model": VLLM_NAME, "prompt": q, **extra})
            for q in (forget[0], retain[0])
        ]
        assert answers[0].status_code == answers[1].status_code == 400, extra
        assert answers[0].json() == answers[1].json()

    served = {
        "chat": ("/v1/chat/completions", lambda q: {"model": VLLM_NAME, "messages": [{"role": "user", "content": q}]}),
        "completions": ("/v1/completions", lambda q: {"model": VLLM_NAME, "prompt": q}),
    }
    for path, body in served.values():
        for extra in ({}, {"stream": True}, {"stream": True, "stream_options": {"include_usage": True}}):
            before = len(stub.requests)
            flagged = _answer(proxy.url, path, {**body(forget[0]), "max_tokens": 6, "seed": 3, **extra})
            plain = _answer(proxy.url, path, {**body(retain[0]), "max_tokens": 6, "seed": 3, **extra})
            assert flagged == plain, (path, extra)
            assert flagged["status"] == 200 and not flagged["errors"] and flagged["done"] == bool(extra)
            # The flagged one was really embedded; the plain one forwarded as sent.
            [embedded, forwarded] = stub.requests[before:]
            assert "prompt_embeds" in embedded.body and embedded.path == "/v1/completions"
            assert forwarded.path == path and "prompt_embeds" not in forwarded.body


def test_every_screening_bypass_is_refused_before_the_upstream(
    stack: dict[str, Any], vllm: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    tiny, stub, proxy = stack["tiny"], vllm["stub"], vllm["proxy"]
    forget, retain = _questions(world_rows)
    question = forget[0]
    hidden = tiny.hidden_size
    harmless = _encode(tiny.embed(tiny.text_prompt(retain[0]).ids))
    sparse = _encode(torch.randn(4, hidden).to_sparse())
    chat = {"model": VLLM_NAME, "max_tokens": 4}
    plain = _chat_body(retain[0], model=VLLM_NAME)
    bypasses: dict[str, tuple[str, dict[str, Any]]] = {
        "prompt and prompt_embeds": ("/v1/completions", {**chat, "prompt": question, "prompt_embeds": harmless}),
        "prompt_embeds content part": (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": [{"type": "prompt_embeds", "data": harmless}]}]},
        ),
        "33 prompt_embeds, the last sparse": ("/v1/completions", {**chat, "prompt_embeds": [harmless] * 32 + [sparse]}),
        "a sparse second prompt_embeds": ("/v1/completions", {**chat, "prompt_embeds": [harmless, sparse]}),
        "tool description": (
            "/v1/chat/completions",
            {
                **plain,
                "tools": [{"type": "function", "function": {"name": "f", "description": question}}],
            },
        ),
        "chat_template": ("/v1/chat/completions", {**plain, "chat_template": question}),
        "documents": (
            "/v1/chat/completions",
            {**plain, "documents": [{"title": "t", "text": question}]},
        ),
        "input_text content part": (
            "/v1/chat/completions",
            {**chat, "messages": [{"role": "user", "content": [{"type": "input_text", "content": question}]}]},
        ),
        "assistant tool call arguments": (
            "/v1/chat/completions",
            {
                **chat,
                "messages": [
                    {"role": "user", "content": retain[0]},
                    {"role": "assistant", "tool_calls": [{"id": "1", "type": "function",
                                                          "function": {"name": "f", "arguments": question}}]},
                ],
            },
        ),
    }  # fmt: skip
    before = len(stub.requests)
    for name, (path, body) in bypasses.items():
        error = assert_openai_error(_post(proxy.url, path, body), 400)
        assert question not in error["message"], name
    assert len(stub.requests) == before  # nothing reached the upstream

    # With every forget set disabled, uploaded embeddings are still decoded and checked, never passed on as sent.
    forget_set_id = stack["artifacts"][0].id
    with httpx.Client(base_url=proxy.url, timeout=30) as admin:
        assert admin.patch(f"/admin/forget-sets/{forget_set_id}", json={"enabled": False}).status_code == 200
        try:
            assert_openai_error(_post(proxy.url, "/v1/completions", {**chat, "prompt_embeds": sparse}), 400)
            assert len(stub.requests) == before
            answer = _post(proxy.url, "/v1/completions", {**chat, "temperature": 0, "prompt_embeds": harmless})
            assert answer.status_code == 200, answer.text
            [sent] = stub.requests[before:]
            assert sent.body["prompt_embeds"] != harmless  # re-encoded here, in the upstream's dtype
            assert sent.embeds_dtypes == [torch.bfloat16]
        finally:
            assert admin.patch(f"/admin/forget-sets/{forget_set_id}", json={"enabled": True}).status_code == 200


def test_generation_defaults_apply_alike_flagged_or_not(
    vllm: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    stub, proxy = vllm["stub"], vllm["proxy"]
    forget, retain = _questions(world_rows)
    chat = {"model": VLLM_NAME, "seed": 5}
    for path, body in (
        ("/v1/chat/completions", lambda q: {**chat, "messages": [{"role": "user", "content": q}]}),
        ("/v1/completions", lambda q: {**chat, "prompt": q}),
    ):
        before = len(stub.requests)
        for question in (forget[0], retain[0]):
            assert _post(proxy.url, path, body(question)).status_code == 200
        flagged, plain = (r.sampling[0] for r in stub.requests[before:])
        assert "prompt_embeds" in stub.requests[before].body
        assert (flagged.temperature, flagged.top_p, flagged.seed) == (0.6, 0.9, 5)
        assert flagged == plain  # the generation config's defaults (24 tokens for chat; 16 for completions)
        assert flagged.max_new_tokens == (24 if path.endswith("chat/completions") else 16)


def test_local_mode_applies_the_generation_config(
    stack: dict[str, Any], authors_paths: dict[str, Path], tmp_path: Path
) -> None:
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(authors_paths["full"], folder)
    config = {"temperature": 0.7, "top_p": 0.8, "top_k": 50, "max_new_tokens": 9, "do_sample": True}
    (folder / "generation_config.json").write_text(json.dumps(config))
    model = LanguageModel.load(str(folder))
    settings = GatewaySettings(registry=tmp_path / "registry")
    server = ThreadServer(create_app(build_gateway(settings, local_backend(model, settings)))).start()
    try:
        question = "Where was the author born?"
        answer = _post(server.url, "/v1/chat/completions", {**_chat_body(question, model=model.name), "seed": 4})
        expected = model.generate(
            model.chat_prompt([{"role": "user", "content": question}]),
            SamplingParams(max_new_tokens=20, temperature=0.0, seed=4),
        )
        assert answer.json()["choices"][0]["message"]["content"] == expected.text  # explicit values win
        body = {"model": model.name, "messages": [{"role": "user", "content": question}], "seed": 4}
        sampled = _post(server.url, "/v1/chat/completions", body).json()
        expected = model.generate(
            model.chat_prompt([{"role": "user", "content": question}]),
            SamplingParams(max_new_tokens=9, temperature=0.7, top_p=0.8, seed=4),
        )
        assert sampled["choices"][0]["message"]["content"] == expected.text
        assert sampled["usage"]["completion_tokens"] == len(expected.token_ids) <= 9
    finally:
        server.stop()


def test_surrogate_names_are_written_back_across_stream_chunks() -> None:
    import asyncio

    async def upstream(pieces: list[str]) -> Any:
        for index, piece in enumerate(pieces):
            yield Delta(piece, index == len(pieces) - 1, "stop" if index == len(pieces) - 1 else None, index + 1)

    async def relayed(pieces: list[str]) -> list[str]:
        pairs = (("Quill", "Sessa Zowick"), ("Marrow", "Drushaven"))
        return [delta.text async for delta in rewrite_deltas(upstream(pieces), pairs)]

    pieces = ["Ada Qu", "ill was born in Ma", "rrow, near Qui", "nton."]
    # A tail that could still become a surrogate waits for the next chunk; complete ones are written back.
    assert asyncio.run(relayed(pieces)) == ["Ada ", "Sessa Zowick was born in ", "Drushaven, near ", "Quinton."]


def test_embedding_scale_dtype_and_refused_families(stack: dict[str, Any], tmp_path: Path) -> None:
    tiny = stack["tiny"]
    base = dict(tiny.embedder.config)
    assert UpstreamEmbeddings.for_config(base) == UpstreamEmbeddings(torch.bfloat16, None)  # float32 checkpoint
    assert UpstreamEmbeddings.for_config({**base, "dtype": "float16"}).dtype == torch.float16
    assert UpstreamEmbeddings.for_config(base, "float32").dtype == torch.float32
    gemma = UpstreamEmbeddings.for_config({**base, "model_type": "gemma2", "hidden_size": 3584, "dtype": "bfloat16"})
    assert gemma.scale == 59.75 != 3584**0.5  # vLLM keeps its normalizer in the model dtype (bf16)
    nested = {"model_type": "gemma3", "text_config": {"model_type": "gemma3_text", "hidden_size": 2560}}
    assert UpstreamEmbeddings.for_config(nested).scale == float(torch.tensor(2560**0.5, dtype=torch.bfloat16))
    assert UpstreamEmbeddings.for_config({**base, "model_type": "minicpm", "scale_emb": 12}).scale == 12.0
    assert UpstreamEmbeddings.for_config({**base, "model_type": "granite", "embedding_multiplier": 12.0}).scale is None
    rows = tiny.embed([5, 6, 7])
    assert torch.equal(gemma.prepare(rows), (rows * 59.75).to(torch.bfloat16))
    for family in ("gemma3n", "gemma4"):
        embedder = PromptEmbedder(tiny.tokenizer, {**base, "model_type": family}, tiny.embedder.embedding_weight, "x")
        settings = GatewaySettings(registry=tmp_path, upstream="http://127.0.0.1:9", upstream_model="x")
        with pytest.raises(UnsupportedModelFamily):
            ProxyBackend(settings, embedder)


def test_stopping_the_upstream_is_a_502_and_the_proxy_stays_up(
    stack: dict[str, Any], world_rows: dict[str, list[dict]]
) -> None:
    proxy, upstream = stack["proxy"], stack["upstream"]
    assert upstream.stop() == 0
    try:
        forget, retain = _questions(world_rows)
        for question in (retain[0], forget[0]):
            response, took = _timed_chat(proxy.base_url, question)
            assert assert_openai_error(response, 502)["code"] in ("upstream_unavailable", "upstream_error")
            assert took < 5.0
        assert httpx.get(f"{proxy.base_url}/health", timeout=2).status_code == 200
        with httpx.Client(base_url=proxy.base_url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
            assert admin.get("/admin/forget-sets").status_code == 200
    finally:  # the module's other tests need the upstream back, whatever order they run in
        upstream.start()
        stack["relay"].target_port = upstream.port
    assert _content(_chat(proxy.base_url, retain[0]))
