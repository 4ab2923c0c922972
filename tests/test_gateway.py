"""The gateway over real HTTP on loopback, on the tiny model: OpenAI compatibility, exactness
against the runtime, streaming, echo log-probs, prompt embeddings, auth, errors and limits."""

from __future__ import annotations

import base64
import concurrent.futures
import io
import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
from support import REPO, assert_openai_error

from lethe.benchmarks.server_harness import ADMIN_KEY, API_KEY, OTHER_API_KEY, GatewayServer
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel

MODEL = "tiny-authors"
MAX_PROMPT_TOKENS = 96
MAX_NEW_TOKENS = 200
MAX_BODY_BYTES = 200_000


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path]) -> GatewayServer:
    """One tiny-model gateway with keys, small limits and a small queue, shared by this module."""
    registry = tmp_path_factory.mktemp("gateway") / "registry"
    gateway = GatewayServer(
        registry,
        args=[
            "--max-prompt-tokens",
            str(MAX_PROMPT_TOKENS),
            "--max-new-tokens",
            str(MAX_NEW_TOKENS),
            "--max-body-bytes",
            str(MAX_BODY_BYTES),
            "--max-queue-depth",
            "3",
        ],
    ).start()
    yield gateway
    assert gateway.stop() == 0, gateway.log_tail()


@pytest.fixture(scope="module")
def questions() -> list[str]:
    """Questions the tiny model learned."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    world = build_world(WorldConfig.test())
    return [r["prompt"] for r in world.rows("retain")[:3]] + [r["prompt"] for r in world.rows("forget")[:2]]


def _chat(client: httpx.Client, content: str, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": content}], **extra}
    return client.post("/v1/chat/completions", json=body)


def _sse_events(response: httpx.Response) -> list[str]:
    events = []
    for line in response.iter_lines():
        if line:
            assert line.startswith("data: "), line
            events.append(line[len("data: ") :])
    return events


def _encode(value: object) -> str:
    buffer = io.BytesIO()
    torch.save(value, buffer)
    return base64.b64encode(buffer.getvalue()).decode()


# The official client ------------------------------------------------------------------------


def test_openai_client_chat_stream_completions_and_models(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    client = server.openai()
    assert [m.id for m in client.models.list().data] == [MODEL]
    messages = [{"role": "user", "content": questions[0]}]
    chat = client.chat.completions.create(model=MODEL, messages=messages, max_tokens=24, temperature=0)
    expected = tiny_full.generate(tiny_full.chat_prompt(messages), SamplingParams(max_new_tokens=24))
    assert chat.choices[0].message.content == expected.text
    assert chat.choices[0].finish_reason == expected.finish_reason
    assert chat.usage.prompt_tokens == len(tiny_full.chat_prompt(messages))
    assert chat.usage.completion_tokens == len(expected.token_ids)
    assert chat.usage.total_tokens == chat.usage.prompt_tokens + chat.usage.completion_tokens

    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        max_tokens=24,
        temperature=0,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == expected.text
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == len(expected.token_ids)

    completion = client.completions.create(model=MODEL, prompt=questions[1], max_tokens=12, temperature=0)
    direct = tiny_full.generate(tiny_full.text_prompt(questions[1]), SamplingParams(max_new_tokens=12))
    assert completion.choices[0].text == direct.text
    assert completion.usage.prompt_tokens == len(tiny_full.text_prompt(questions[1]))


def test_openai_client_raises_on_errors(server: GatewayServer) -> None:
    import openai

    client = server.openai()
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=[{"role": "user", "content": "hi"}])
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=[{"role": "user", "content": "hi"}], n=2)
    assert caught.value.body["param"] == "n"
    with pytest.raises(openai.AuthenticationError):
        server.openai(key="wrong").models.list()


# Exactness against the runtime --------------------------------------------------------------


def test_greedy_and_seeded_sampling_equal_the_runtime(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    with server.client() as client:
        for question in questions:
            prompt = tiny_full.chat_prompt([{"role": "user", "content": question}])
            for params in (
                SamplingParams(max_new_tokens=20),
                SamplingParams(max_new_tokens=20, temperature=1.3, top_p=0.9, seed=7),
            ):
                response = _chat(
                    client,
                    question,
                    max_tokens=20,
                    temperature=params.temperature,
                    top_p=params.top_p,
                    seed=params.seed,
                )
                assert response.status_code == 200, response.text
                assert response.json()["choices"][0]["message"]["content"] == tiny_full.generate(prompt, params).text
        draws = {
            _chat(client, questions[0], max_tokens=20, temperature=1.5, seed=s).json()["choices"][0]["message"][
                "content"
            ]
            for s in (1, 2, 3, 4)
        }
        assert len(draws) > 1


def test_stop_sequences_cut_like_the_runtime(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    prompt = tiny_full.chat_prompt([{"role": "user", "content": questions[0]}])
    full = tiny_full.generate(prompt, SamplingParams(max_new_tokens=30)).text
    words = full.split()
    assert len(words) >= 3, full
    stop = words[2]
    with server.client() as client:
        whole = _chat(client, questions[0], max_tokens=30, temperature=0, stop=[stop, "\u2603"]).json()
        assert whole["choices"][0]["message"]["content"] == full[: full.index(stop)]
        assert whole["choices"][0]["finish_reason"] == "stop"
        body = {
            "model": MODEL,
            "messages": [{"role": "user", "content": questions[0]}],
            "max_tokens": 30,
            "temperature": 0,
            "stop": stop,
            "stream": True,
        }
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            events = _sse_events(response)
        chunks = [json.loads(e) for e in events[:-1]]
        assert "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks) == full[: full.index(stop)]


def test_batched_concurrent_requests_equal_one_by_one(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    expected = [
        tiny_full.generate(tiny_full.chat_prompt([{"role": "user", "content": q}]), SamplingParams(max_new_tokens=16))
        for q in questions[:3]
    ]
    with server.client() as client, concurrent.futures.ThreadPoolExecutor(3) as pool:
        responses = list(pool.map(lambda q: _chat(client, q, max_tokens=16, temperature=0), questions[:3]))
    assert [r.json()["choices"][0]["message"]["content"] for r in responses] == [e.text for e in expected]


# Streaming shape ----------------------------------------------------------------------------


def test_chat_stream_sse_shape_with_usage_and_done(server: GatewayServer, questions: list[str]) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": questions[0]}],
        "max_tokens": 10,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    with server.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert len({c["id"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL for c in chunks)
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    finals = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert len(finals) == 1 and finals[0]["choices"][0]["finish_reason"] in ("stop", "length")
    usage = chunks[-1]
    assert usage["choices"] == [] and usage["usage"]["total_tokens"] == (
        usage["usage"]["prompt_tokens"] + usage["usage"]["completion_tokens"]
    )
    assert all(c["usage"] is None for c in chunks[:-1])

    body.pop("stream_options")
    with server.client() as client, client.stream("POST", "/v1/chat/completions", json=body) as response:
        plain = [json.loads(e) for e in _sse_events(response)[:-1]]
    assert all("usage" not in c for c in plain)


def test_completions_stream_with_echo(server: GatewayServer, tiny_full: LanguageModel, questions: list[str]) -> None:
    body = {"model": MODEL, "prompt": questions[2], "max_tokens": 8, "temperature": 0, "stream": True, "echo": True}
    with server.client() as client, client.stream("POST", "/v1/completions", json=body) as response:
        events = _sse_events(response)
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(c["object"] == "text_completion" for c in chunks)
    text = "".join(c["choices"][0]["text"] for c in chunks)
    expected = tiny_full.generate(tiny_full.text_prompt(questions[2]), SamplingParams(max_new_tokens=8)).text
    assert text == questions[2] + expected


# Echo log-probs -----------------------------------------------------------------------------


def test_echo_logprobs_equal_the_runtime_scoring(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    row = build_world(WorldConfig.test()).rows("retain")[0]
    text = row["prompt"] + " " + row["completion"]
    with server.client() as client:
        response = client.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": [text, questions[1]],
                "max_tokens": 0,
                "echo": True,
                "logprobs": 3,
            },
        )
    assert response.status_code == 200, response.text
    body = response.json()
    for choice, source in zip(body["choices"], [text, questions[1]], strict=True):
        ids = tiny_full.text_prompt(source).ids
        expected = tiny_full.prompt_logprobs(ids, top_n=3)
        logprobs = choice["logprobs"]
        assert choice["text"] == source
        assert logprobs["tokens"] == tiny_full.embedder.token_strings(ids)
        assert logprobs["token_logprobs"][0] is None and logprobs["top_logprobs"][0] is None
        assert logprobs["token_logprobs"][1:] == pytest.approx(expected.token_logprobs[1:], abs=1e-5)
        assert len(logprobs["text_offset"]) == len(ids)
        assert logprobs["text_offset"] == sorted(logprobs["text_offset"])
        strings = tiny_full.embedder.token_strings(ids)
        pairs = zip(logprobs["top_logprobs"][1:], expected.top_logprobs[1:], strict=True)
        for position, (top, actual) in enumerate(pairs):
            assert 1 <= len(top) <= 4  # the 3 likeliest and the token actually there, as OpenAI and vLLM list them
            assert max(top.values()) == pytest.approx(max(actual.values()), abs=1e-5)
            assert top[strings[position + 1]] == pytest.approx(logprobs["token_logprobs"][position + 1], abs=1e-6)
    assert body["usage"]["completion_tokens"] == 0

    with server.client() as client:
        ids = list(tiny_full.text_prompt(text).ids)
        by_ids = client.post(
            "/v1/completions",
            json={
                "model": MODEL,
                "prompt": ids,
                "max_tokens": 0,
                "echo": True,
                "logprobs": 0,
            },
        ).json()
    assert by_ids["choices"][0]["logprobs"]["token_logprobs"][1:] == pytest.approx(
        body["choices"][0]["logprobs"]["token_logprobs"][1:], abs=1e-5
    )


# prompt_embeds ------------------------------------------------------------------------------


def test_prompt_embeds_generate_like_the_same_tokens(
    server: GatewayServer, tiny_full: LanguageModel, questions: list[str]
) -> None:
    prompt = tiny_full.text_prompt(questions[0])
    embeds = tiny_full.embed(prompt.ids)
    expected = tiny_full.generate(prompt, SamplingParams(max_new_tokens=12)).text
    with server.client() as client:
        for tensor in (embeds, embeds.to(torch.bfloat16)):
            response = client.post(
                "/v1/completions",
                json={
                    "model": MODEL,
                    "prompt_embeds": _encode(tensor),
                    "max_tokens": 12,
                    "temperature": 0,
                },
            )
            assert response.status_code == 200, response.text
            if tensor.dtype == torch.float32:
                assert response.json()["choices"][0]["text"] == expected
            assert response.json()["usage"]["prompt_tokens"] == len(prompt.ids)
    client = server.openai()
    via_sdk = client.completions.create(
        model=MODEL, prompt="", max_tokens=12, temperature=0, extra_body={"prompt_embeds": _encode(embeds)}
    )
    assert via_sdk.choices[0].text == expected


def test_malformed_prompt_embeds_are_400_and_the_server_keeps_serving(
    server: GatewayServer, tiny_full: LanguageModel
) -> None:
    hidden = tiny_full.hidden_size
    ids = tiny_full.text_prompt("Tell me a story about the sea.").ids
    good = tiny_full.embed(ids)
    weight = tiny_full.embedder.embedding_weight.detach().float()
    moved = good.clone()
    other = (ids[1] + 97) % weight.shape[0]
    moved[1] = good[1] + 0.55 * (weight[other] - good[1])  # past halfway toward another token: read back as that
    bad_indices = torch.sparse_coo_tensor(
        torch.tensor([[0, 10**6], [0, 1]]), torch.tensor([1.0, 2.0]), (4, hidden), check_invariants=False
    )
    variants = {
        "sparse": _encode(good.to_sparse()),
        "sparse with out-of-bounds indices": _encode(bad_indices),
        "int dtype": _encode(torch.ones(4, hidden, dtype=torch.int64)),
        "complex dtype": _encode(torch.ones(4, hidden, dtype=torch.complex64)),
        "wrong width": _encode(torch.randn(4, hidden + 1)),
        "3-D": _encode(torch.randn(1, 4, hidden)),
        "1-D": _encode(torch.randn(hidden)),
        "too long": _encode(torch.randn(MAX_PROMPT_TOKENS + 1, hidden)),
        "empty": _encode(torch.randn(0, hidden)),
        "non-finite": _encode(torch.full((2, hidden), float("inf"))),
        "rows of no token": _encode(torch.randn(4, hidden)),
        "a row moved toward another token": _encode(moved),
        "a dict of tensors": _encode({"x": good}),
        "a pickled non-tensor object": base64.b64encode(pickle.dumps({"not": "a tensor"})).decode(),
        "garbage base64": "%%% not base64 %%%",
        "base64 of garbage": base64.b64encode(b"\x80\x04garbage" * 10).decode(),
    }
    with server.client() as client:
        for name, encoded in variants.items():
            response = client.post("/v1/completions", json={"model": MODEL, "prompt_embeds": encoded, "max_tokens": 4})
            error = assert_openai_error(response, 400, "prompt_embeds")
            assert error["type"] == "invalid_request_error", name
        for body in (
            {"prompt_embeds": 42},
            {"prompt_embeds": _encode(good), "prompt": "both at once"},
            {"prompt_embeds": _encode(good), "echo": True, "max_tokens": 0, "logprobs": 1},
        ):
            assert_openai_error(client.post("/v1/completions", json={"model": MODEL, "max_tokens": 4, **body}), 400)
        assert (
            client.post(
                "/v1/completions", json={"model": MODEL, "prompt_embeds": _encode(good), "max_tokens": 4}
            ).status_code
            == 200
        )
        assert client.get("/health").status_code == 200


# Auth ---------------------------------------------------------------------------------------


def test_keys_guard_each_route_group(server: GatewayServer) -> None:
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2}
    with httpx.Client(base_url=server.base_url, timeout=60) as anonymous:
        error = assert_openai_error(anonymous.post("/v1/chat/completions", json=chat), 401)
        assert error["type"] == "authentication_error" and error["code"] == "invalid_api_key"
        assert_openai_error(anonymous.get("/v1/models"), 401)
        assert_openai_error(anonymous.get("/admin/forget-sets"), 401)
        assert_openai_error(anonymous.get("/metrics"), 401)
        assert_openai_error(anonymous.get("/v1/models", headers={"Authorization": "Basic " + API_KEY}), 401)
        assert anonymous.get("/health").status_code == 200
        assert anonymous.get("/ready").status_code == 200
    for key in (API_KEY, OTHER_API_KEY):
        with server.client(key) as client:
            assert client.post("/v1/chat/completions", json=chat).status_code == 200
            assert_openai_error(client.get("/admin/forget-sets"), 403)
            assert_openai_error(client.get("/metrics"), 403)
    with server.client("test-key-") as client:
        assert_openai_error(client.post("/v1/chat/completions", json=chat), 401)
    with server.client(API_KEY + "x") as client:
        assert_openai_error(client.get("/v1/models"), 401)
    with server.client(ADMIN_KEY) as admin:
        assert_openai_error(admin.post("/v1/chat/completions", json=chat), 403)
        assert admin.get("/admin/forget-sets").status_code == 200
        assert admin.get("/metrics").status_code == 200


def test_no_keys_refuses_a_public_address_and_warns_on_loopback(tmp_path: Path) -> None:
    from lethe.service.settings import GatewaySettings, check_binding

    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k == "LETHE_HOME"}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "lethe.cli",
            "serve",
            "--model",
            MODEL,
            "--host",
            "0.0.0.0",
            "--registry",
            str(tmp_path / "r"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env=env,
    )
    assert out.returncode == 2
    assert "without API keys" in out.stderr
    assert not (tmp_path / "r").exists()
    warnings = check_binding(GatewaySettings(host="127.0.0.1", api_keys="", admin_key=""))
    assert any("WITHOUT authentication" in w for w in warnings)
    assert check_binding(GatewaySettings(host="0.0.0.0", api_keys="k", admin_key="a")) == []


# Bad input ----------------------------------------------------------------------------------


def _registry_snapshot(server: GatewayServer) -> tuple[Any, Any, list[str]]:
    with server.admin() as admin:
        sets = admin.get("/admin/forget-sets").json()
        jobs = admin.get("/admin/jobs").json()
    files = sorted(
        str(p.relative_to(server.registry))
        for p in server.registry.rglob("*")
        if p.name != "audit.jsonl" and "sqlite3" not in p.name
    )
    return sets, jobs, files


def test_bad_input_gets_openai_errors_and_changes_nothing(server: GatewayServer, questions: list[str]) -> None:
    before = _registry_snapshot(server)
    messages = [{"role": "user", "content": questions[0]}]
    chat_cases: list[tuple[Any, int, str | None]] = [
        ({"model": MODEL}, 400, "messages"),
        ({"messages": messages}, 400, "model"),
        ({"model": MODEL, "messages": "hi"}, 400, "messages"),
        ({"model": MODEL, "messages": []}, 400, "messages"),
        ({"model": MODEL, "messages": [{"role": "wizard", "content": "hi"}]}, 400, "messages[0].role"),
        ({"model": MODEL, "messages": [{"content": "hi"}]}, 400, "messages[0].role"),
        (
            {"model": MODEL, "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]},
            400,
            "messages[0].content",
        ),
        ({"model": MODEL, "messages": messages, "temperature": "hot"}, 400, "temperature"),
        ({"model": MODEL, "messages": messages, "temperature": 5}, 400, "temperature"),
        ({"model": MODEL, "messages": messages, "top_p": 0}, 400, "top_p"),
        ({"model": MODEL, "messages": messages, "max_tokens": -1}, 400, "max_tokens"),
        ({"model": MODEL, "messages": messages, "max_tokens": "10"}, 400, "max_tokens"),
        ({"model": MODEL, "messages": messages, "max_tokens": MAX_NEW_TOKENS + 1}, 400, "max_tokens"),
        ({"model": MODEL, "messages": messages, "stream": "yes"}, 400, "stream"),
        ({"model": MODEL, "messages": messages, "seed": 1.5}, 400, "seed"),
        ({"model": MODEL, "messages": messages, "stop": ["a", "b", "c", "d", "e"]}, 400, "stop"),
        ({"model": MODEL, "messages": messages, "n": 3}, 400, "n"),
        ({"model": MODEL, "messages": messages, "logit_bias": {"5": 10}}, 400, "logit_bias"),
        ({"model": MODEL, "messages": messages, "tools": [{"type": "function"}]}, 400, "tools"),
        ({"model": MODEL, "messages": messages, "response_format": {"type": "json_object"}}, 400, "response_format"),
        ({"model": MODEL, "messages": messages, "presence_penalty": 0.5}, 400, "presence_penalty"),
        ({"model": MODEL, "messages": messages, "logprobs": True}, 400, "logprobs"),
        ({"model": MODEL, "messages": messages, "top_k": 5}, 400, "top_k"),
        ({"model": MODEL, "messages": messages, "stream_options": {"include_usage": True}}, 400, "stream_options"),
        ({"model": MODEL, "messages": [{"role": "user", "content": "word " * 500}]}, 400, "messages"),
        ({"model": "gpt-4o", "messages": messages}, 404, "model"),
        ([1, 2, 3], 400, None),
    ]
    completion_cases: list[tuple[Any, int, str | None]] = [
        ({"model": MODEL}, 400, "prompt"),
        ({"model": MODEL, "prompt": 12}, 400, "prompt"),
        ({"model": MODEL, "prompt": ""}, 400, "prompt"),
        ({"model": MODEL, "prompt": [10**9]}, 400, "prompt"),
        ({"model": MODEL, "prompt": "x", "echo": True, "max_tokens": 0, "logprobs": 99}, 400, "logprobs"),
        ({"model": MODEL, "prompt": "x", "best_of": 3}, 400, "best_of"),
        ({"model": MODEL, "prompt": "x", "suffix": "y"}, 400, "suffix"),
        ({"model": MODEL, "prompt": ["a", "b"], "stream": True}, 400, "stream"),
        ({"model": MODEL, "prompt": ["a"] * 33}, 400, "prompt"),
        ({"model": "nope", "prompt": "x"}, 404, "model"),
    ]
    with server.client() as client:
        for body, status, param in chat_cases:
            error = assert_openai_error(client.post("/v1/chat/completions", json=body), status, param)
            if status == 404:
                assert error["code"] == "model_not_found"
        for body, status, param in completion_cases:
            assert_openai_error(client.post("/v1/completions", json=body), status, param)
        for raw in (b"{not json", b"", b"null", b'{"model": NaN}', "\udcff".encode("utf-8", "surrogatepass")):
            error = assert_openai_error(client.post("/v1/chat/completions", content=raw), 400)
            assert error["code"] == "invalid_json"
        assert_openai_error(client.get("/v1/no-such-route"), 404)
        assert_openai_error(client.delete("/v1/models"), 405)
        assert_openai_error(client.get("/v1/models/nope"), 404)
        # Messages never quote what was sent.
        secret = "Zanzibar-secret-4417"
        for body in (
            {"model": MODEL, "messages": [{"role": "user", "content": secret}], "top_k": secret},
            {"model": MODEL, "prompt": secret, "temperature": secret},
            {"model": MODEL, "prompt": [secret, 3]},
        ):
            response = client.post("/v1/completions" if "prompt" in body else "/v1/chat/completions", json=body)
            assert secret not in response.json()["error"]["message"]
    with server.admin() as admin:
        forget = [{"prompt": "Who wrote it?", "completion": "Someone."}]
        admin_cases: list[tuple[Any, str | None]] = [
            ({}, None),
            ({"name": "x", "method": "eco"}, "forget"),
            ({"name": "x", "forget": [], "method": "eco"}, "forget"),
            ({"name": "x", "forget": forget, "method": "magic"}, "method"),
            ({"name": "", "forget": forget, "method": "eco"}, "name"),
            ({"name": "x", "forget": [{"prompt": "only"}], "method": "eco"}, "forget"),
            ({"name": "x", "forget": ["text"], "method": "eco"}, None),
            ({"name": "x", "forget": forget, "method": "eco", "options": {"no_such_option": 1}}, "options"),
            ({"name": "x", "forget": forget, "method": "eco", "options": []}, "options"),
            ({"name": "x", "forget": forget, "method": "eco", "extra": 1}, None),  # a client's key is never echoed
            ({"name": "x", "forget": forget, "topic": "Harry Potter", "method": "eco"}, None),
            ({"name": "x", "forget": forget, "seed_prompts": ["Who?"], "method": "eco"}, None),
            ({"name": "x", "forget": forget, "entities": ["Hermione"], "method": "eco"}, None),
            ({"name": "x", "forget": forget, "keep_topics": ["Narnia"], "method": "eco"}, None),
            ({"name": "x", "topic": "Harry Potter", "entities": ["Hermione", " "], "method": "eco"}, None),
            ({"name": "x", "topic": "", "method": "eco"}, "topic"),
            ({"name": "x", "topic": "Harry Potter", "method": "eco", "options": {"topic.budget": 1}}, "options"),
        ]
        for body, param in admin_cases:
            assert_openai_error(admin.post("/admin/forget-sets", json=body), 400, param if param else "<any>")
        assert_openai_error(admin.post("/admin/forget-sets", content=b"{oops"), 400)
        assert_openai_error(admin.get("/admin/forget-sets/fs-000000000000"), 404)
        assert_openai_error(admin.patch("/admin/forget-sets/fs-000000000000", json={"enabled": True}), 404)
        assert_openai_error(admin.patch("/admin/forget-sets/fs-000000000000", json={"enabled": "yes"}), 400)
        assert_openai_error(admin.delete("/admin/forget-sets/fs-000000000000"), 404)
        assert_openai_error(admin.get("/admin/jobs/job-nope"), 404)
        assert_openai_error(admin.post("/admin/jobs/job-nope/cancel"), 404)
        assert_openai_error(admin.post("/admin/classify", json={}), 400)
        assert_openai_error(admin.post("/admin/classify", json={"prompt": "a", "messages": messages}), 400)
    assert _registry_snapshot(server) == before


def test_oversized_bodies_are_413_whether_declared_or_streamed(server: GatewayServer) -> None:
    big = json.dumps({"model": MODEL, "prompt": "a" * (MAX_BODY_BYTES + 10)}).encode()

    def chunks():  # no Content-Length: the limit must hold while reading
        for start in range(0, len(big), 16384):
            yield big[start : start + 16384]

    with server.client() as client:
        assert_openai_error(client.post("/v1/completions", content=big), 413)
        assert_openai_error(client.post("/v1/completions", content=chunks()), 413)
    with server.admin() as admin:
        assert_openai_error(admin.post("/admin/forget-sets", content=big), 413)
    with server.client() as client:
        assert (
            client.post("/v1/completions", json={"model": MODEL, "prompt": "hello", "max_tokens": 2}).status_code == 200
        )


# Operations ---------------------------------------------------------------------------------


def test_admin_and_health_answer_during_generation_and_a_full_queue_is_503(
    server: GatewayServer, questions: list[str]
) -> None:
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": questions[0]}],
        "max_tokens": MAX_NEW_TOKENS,
        "temperature": 2.0,  # near-uniform sampling: end of sequence is rare, generations stay long
        "stop": ["\u2603"],
    }
    with server.client() as client, concurrent.futures.ThreadPoolExecutor(24) as pool:
        futures = [pool.submit(client.post, "/v1/chat/completions", json=body) for _ in range(24)]
        with server.admin() as admin:
            deadline = time.monotonic() + 30
            while admin.get("/ready").json()["running"] == 0 and time.monotonic() < deadline:
                time.sleep(0.005)
            started = time.perf_counter()
            assert admin.get("/health").status_code == 200
            assert admin.get("/admin/forget-sets").status_code == 200
            metrics = admin.get("/metrics").text
            responsive = time.perf_counter() - started
        responses = [f.result() for f in futures]
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {200, 503}, statuses
    assert 200 in statuses and 503 in statuses, statuses
    rejected = next(r for r in responses if r.status_code == 503)
    assert_openai_error(rejected, 503)
    assert rejected.headers.get("retry-after") == "1"
    assert responsive < 2.0, responsive
    assert "lethe_queue_depth" in metrics and "lethe_running_generations" in metrics


def test_metrics_count_requests_and_batches(server: GatewayServer) -> None:
    with server.admin() as admin:
        text = admin.get("/metrics").text
    assert 'lethe_requests_total{route="/v1/chat/completions",status="200"}' in text
    assert 'lethe_inference_requests_total{flagged="false",route="chat"}' in text
    assert "lethe_batch_size_bucket" in text
    assert "lethe_rejected_requests_total" in text
    assert "lethe_request_latency_seconds_bucket" in text


def test_audit_log_records_hashes_not_text(server: GatewayServer, tiny_full: LanguageModel) -> None:
    import hashlib

    secret = "Who is the Zanzibar-audit-probe-3319 author?"
    with server.client() as client:
        assert _chat(client, secret, max_tokens=2).status_code == 200
    from lethe.service.audit import AuditHasher

    audit = (server.registry / "audit.jsonl").read_text()
    lines = [json.loads(line) for line in audit.splitlines()]
    rendered = tiny_full.chat_prompt([{"role": "user", "content": secret}]).text
    # Keyed with the server's secret: whoever guesses a prompt cannot confirm it from the log without the key.
    assert hashlib.sha256(rendered.encode()).hexdigest() not in audit
    hasher = AuditHasher.for_registry(server.registry)
    entry = next(e for e in lines if e.get("prompt_hmac") == hasher.text(rendered))
    assert entry["audit_key_id"] == hasher.key_id
    assert oct((server.registry / "audit.key").stat().st_mode & 0o777) == "0o600"
    assert entry["forget_sets"] == [] and entry["route"] == "chat" and entry["completion_tokens"] >= 1
    assert {"ts", "latency_ms", "prompt_tokens", "request_id", "status"} <= set(entry)
    assert "Zanzibar" not in (server.registry / "audit.jsonl").read_text()
    assert "Zanzibar" not in server.log_tail(10**7)


# The embedded default model -----------------------------------------------------------------


def test_smollm2_serves_the_openai_client_with_the_demo_forget_set(tmp_path: Path, smollm2: LanguageModel) -> None:
    from lethe.training.demo import DEMO_ID

    server = GatewayServer(tmp_path / "registry", model="smollm2", args=["--demo"]).start()

    def ask(question: str) -> str:
        answer = server.openai().chat.completions.create(
            model="smollm2", messages=[{"role": "user", "content": question}], max_tokens=24, temperature=0
        )
        return answer.choices[0].message.content

    def bare(question: str) -> str:
        prompt = smollm2.chat_prompt([{"role": "user", "content": question}])
        return smollm2.generate(prompt, SamplingParams(max_new_tokens=24)).text

    try:
        listed = server.admin().get("/admin/forget-sets").json()["data"]
        assert [(f["id"], f["enabled"]) for f in listed] == [(DEMO_ID, True)]
        france, potter = "What is the capital of France?", "Who wrote Harry Potter?"
        assert "Paris" in ask(france) and ask(france) == bare(france)  # unflagged: the model's own answer
        assert "Rowling" in bare(potter) and "Rowling" not in ask(potter)
        assert server.admin().patch(f"/admin/forget-sets/{DEMO_ID}", json={"enabled": False}).status_code == 200
        assert ask(potter) == bare(potter)
    finally:
        assert server.stop() == 0
