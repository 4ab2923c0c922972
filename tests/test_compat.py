"""Issue 19: the gateway works with the tools users already run, over real HTTP on loopback (tiny model).

- ``/v1/completions`` with ``echo`` and ``logprobs`` in every combination, equal to the runtime's own scoring;
- vLLM's ``/tokenize``, ``/detokenize`` and ``/tokenizer_info`` behind the inference key;
- ``--served-model-name`` aliases;
- registration refused with the reason, before anything is stored;
- the real lm-evaluation-harness (``local-completions``, ``tokenizer_backend=auto``, so no local tokenizer), a
  multiple-choice and a ``generate_until`` task from local files, with and without a forget set: its
  log-likelihoods equal the runtime's and the forgotten people's score drops while the others' does not move.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import REPO, assert_openai_error

from lethe.benchmarks.server_harness import API_KEY, GatewayServer, wait_for_job
from lethe.runtime.generation import SamplingParams
from lethe.runtime.model import LanguageModel
from lethe.training.presets import SMOKE_OPTIONS

ALIASES = ("tiny", "tiny-authors")
MODEL = ALIASES[0]


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path], world_rows: dict) -> Any:
    """A gateway serving the tiny model under two names, with one forget set (the forget people) registered and
    trained through the admin API."""
    root = tmp_path_factory.mktemp("compat")
    gateway = GatewayServer(
        root / "registry", args=["--served-model-name", *ALIASES, "--max-new-tokens", "32"], env={"LETHE_THREADS": "1"}
    ).start()
    with gateway.admin() as admin:
        body = {"name": "people", "method": "eco", "forget": world_rows["forget"], "retain": world_rows["retain"],
                "options": SMOKE_OPTIONS}  # fmt: skip
        created = admin.post("/admin/forget-sets", json=body)
        assert created.status_code == 202, created.text
        job = wait_for_job(admin, created.json()["job_id"], ("succeeded", "failed", "cancelled"), timeout=600)
    assert job["state"] == "succeeded", (job, gateway.log_tail())
    gateway.forget_set_id = created.json()["id"]  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def _switch(server: GatewayServer, enabled: bool) -> None:
    with server.admin() as admin:
        response = admin.patch(f"/admin/forget-sets/{server.forget_set_id}", json={"enabled": enabled})  # type: ignore[attr-defined]
        assert response.status_code == 200, response.text


# echo x logprobs x max_tokens x stream -----------------------------------------------------------------


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("max_tokens", [0, 5])
@pytest.mark.parametrize("echo", [False, True])
@pytest.mark.parametrize("logprobs", [None, 0, 2])
def test_completions_echo_and_logprobs_in_every_combination(
    server: GatewayServer, tiny_full: LanguageModel, world_rows: dict, echo: bool, logprobs: int | None,
    max_tokens: int, stream: bool,
) -> None:  # fmt: skip
    """Before: any ``logprobs`` other than echo's prompt scoring with ``max_tokens=0`` was a 400 (lm-eval sends
    ``max_tokens=1``), and ``top_logprobs`` left out the token actually there."""
    _switch(server, False)  # the bare model, so the runtime is the reference
    try:
        question = world_rows["retain"][3]["prompt"]
        body: dict[str, Any] = {"model": MODEL, "prompt": question, "max_tokens": max_tokens, "temperature": 0,
                                "echo": echo, "stream": stream}  # fmt: skip
        if logprobs is not None:
            body["logprobs"] = logprobs
        with server.client() as client:
            response = client.post("/v1/completions", json=body)
        assert response.status_code == 200, response.text
        choice = _choice(response, stream)
    finally:
        _switch(server, True)
    prompt = tiny_full.text_prompt(question)
    generated = tiny_full.generate(prompt, SamplingParams(max_new_tokens=max_tokens)) if max_tokens else None
    expected_text = (prompt.text if echo else "") + (generated.text if generated else "")
    assert choice["text"] == expected_text
    if logprobs is None:
        assert choice["logprobs"] is None
        return
    new_ids = list(generated.token_ids) if generated else []
    if generated is not None and generated.finish_reason == "stop" and len(new_ids) < max_tokens:
        new_ids.append(min(tiny_full.embedder.eos_token_ids()))  # the end-of-sequence token that ended it is listed
    ids = [*prompt.ids, *new_ids]
    reference = tiny_full.prompt_logprobs(ids, top_n=logprobs)
    start = 0 if echo else len(prompt.ids)
    scored = choice["logprobs"]
    strings = tiny_full.embedder.token_strings(ids[start:])
    assert scored["tokens"] == strings
    assert len(scored["token_logprobs"]) == len(scored["top_logprobs"]) == len(scored["text_offset"]) == len(strings)
    for position, (value, top) in enumerate(zip(scored["token_logprobs"], scored["top_logprobs"], strict=True)):
        expected = reference.token_logprobs[start + position]
        if expected is None:
            assert value is None and top is None
            continue
        assert value == pytest.approx(expected, abs=1e-4)
        assert strings[position] in top and top[strings[position]] == pytest.approx(value, abs=1e-6)
        assert 1 <= len(top) <= logprobs + 1
        assert max(top.values()) == pytest.approx(
            max([expected, *(reference.top_logprobs[start + position] or {}).values()]), abs=1e-4
        )


def _choice(response: httpx.Response, stream: bool) -> dict[str, Any]:
    """The one choice of a whole answer, or of a stream put back together (text joined, log-probs concatenated)."""
    if not stream:
        return response.json()["choices"][0]
    events = [line[len("data: ") :] for line in response.text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    text, logprobs = "", None
    for event in events[:-1]:
        for choice in json.loads(event)["choices"]:
            text += choice["text"]
            if choice.get("logprobs"):
                logprobs = logprobs or {"tokens": [], "token_logprobs": [], "top_logprobs": [], "text_offset": []}
                for key in logprobs:
                    logprobs[key] += choice["logprobs"][key]
    return {"text": text, "logprobs": logprobs}


# vLLM's tokenizer endpoints ----------------------------------------------------------------------------


def test_tokenizer_endpoints_answer_with_the_served_tokenizer(server: GatewayServer, tiny_full: LanguageModel) -> None:
    """Before: 404 (lm-eval's ``tokenizer_backend=auto`` then looked for the tokenizer on the hub)."""
    tokenizer = tiny_full.embedder.tokenizer
    text = "Where was Sessa Zowick born?"
    with server.client() as client:
        plain = client.post("/tokenize", json={"prompt": text, "add_special_tokens": False}).json()
        assert plain["tokens"] == tokenizer(text, add_special_tokens=False)["input_ids"]
        assert plain["count"] == len(plain["tokens"]) and plain["token_strs"] is None
        special = client.post("/tokenize", json={"model": MODEL, "prompt": text, "return_token_strs": True}).json()
        assert special["tokens"] == list(tiny_full.text_prompt(text).ids)
        assert special["token_strs"] == tokenizer.convert_ids_to_tokens(special["tokens"])
        assert special["max_model_len"] == tiny_full.embedder.config["max_position_embeddings"]
        chat = client.post("/tokenize", json={"messages": [{"role": "user", "content": text}]}).json()
        assert chat["tokens"] == list(tiny_full.chat_prompt([{"role": "user", "content": text}]).ids)
        back = client.post("/detokenize", json={"model": MODEL, "tokens": plain["tokens"]}).json()
        assert back == {"prompt": text}
        info = client.get("/tokenizer_info").json()
        assert info["eos_token"] == tokenizer.eos_token and info["chat_template"] == tokenizer.chat_template
        assert info["tokenizer_class"] == type(tokenizer).__name__
        assert not any(isinstance(v, str) and "/" in v and Path(v).exists() for v in info.values())  # no paths
        assert_openai_error(client.post("/detokenize", json={"tokens": [10**9]}), 400, "tokens")
        assert_openai_error(client.post("/tokenize", json={"model": "nope", "prompt": "x"}), 404, "model")
        assert_openai_error(client.post("/tokenize", json={"prompt": "x", "messages": []}), 400)
    with server.client(None) as anonymous:
        for method, path in (("POST", "/tokenize"), ("POST", "/detokenize"), ("GET", "/tokenizer_info")):
            assert_openai_error(anonymous.request(method, path, json={"prompt": "x"}), 401)
    with server.admin() as admin:
        assert_openai_error(admin.get("/tokenizer_info"), 403)


def test_served_model_names_are_aliases(server: GatewayServer) -> None:
    """Before: a model served from a folder was named by its full path, with no other name."""
    with server.client() as client:
        assert [m["id"] for m in client.get("/v1/models").json()["data"]] == list(ALIASES)
        for name in ALIASES:
            answer = client.post("/v1/completions", json={"model": name, "prompt": "Where", "max_tokens": 2})
            assert answer.status_code == 200 and answer.json()["model"] == name
            assert client.get(f"/v1/models/{name}").json()["id"] == name
        assert_openai_error(client.post("/v1/completions", json={"model": "other", "prompt": "x"}), 404, "model")


# Registration -------------------------------------------------------------------------------------------


def test_registration_is_refused_with_its_reason_before_anything_is_stored(
    server: GatewayServer, world_rows: dict
) -> None:
    """Before: the README's one-row example was accepted (202) and its job failed later ("too few distinct forget
    prompts: 1 < min_positives=10")."""
    forget = world_rows["forget"]
    cases = [
        ({"forget": forget[:1]}, "forget", "too few distinct forget prompts"),
        ({"forget": [{**r, "prompt": forget[0]["prompt"]} for r in forget[:12]]}, "forget", "too few distinct"),
        ({"forget": [{"completion": "x"}] * 12}, "forget", "'prompt' is missing"),
        ({"forget": [{"prompt": " ", "completion": "x"}] * 12}, "forget", "must not be empty"),
        ({"forget": forget, "retain": forget[:2]}, "forget", "also appear in forget_prompts"),
        ({"forget": forget, "retain": [{"prompt": "x"}]}, "retain", "'completion' is missing"),
        ({"forget": forget, "options": {"eco": {"rounds": 0}}}, "options", "greater than or equal to 1"),
    ]
    with server.admin() as admin:
        before = (admin.get("/admin/forget-sets").json(), admin.get("/admin/jobs").json())
        for change, param, reason in cases:
            body = {"name": "refused", "method": "eco", **change}
            error = assert_openai_error(admin.post("/admin/forget-sets", json=body), 400, param)
            assert reason in error["message"], (change, error)
        assert (admin.get("/admin/forget-sets").json(), admin.get("/admin/jobs").json()) == before


# lm-evaluation-harness, the real one --------------------------------------------------------------------


def _write_tasks(folder: Path, rows: dict[str, list[dict]]) -> list[str]:
    """Multiple-choice (the right answer among three wrong ones, all in the same words) and short-answer tasks
    over the forget and the retain people, as lm-eval task files."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(REPO / "examples" / "lm-eval" / "answers.py", folder / "answers.py")
    names = []
    for split, split_rows in (("forget", rows["forget"][:16]), ("retain", rows["retain"][:16])):
        with open(folder / f"{split}_mc.jsonl", "w") as out:
            for row in split_rows:
                choices = [row["paraphrased_completion"], *row["perturbed_completions"][:3]]
                out.write(json.dumps({"question": row["prompt"], "choices": choices, "answer": 0}) + "\n")
        with open(folder / f"{split}_short.jsonl", "w") as out:
            for row in split_rows:
                out.write(json.dumps({"question": row["prompt"], "answer": row["value"]}) + "\n")
        for kind in ("mc", "short"):
            template = (REPO / "examples" / "lm-eval" / f"lethe_general_{kind}.yaml").read_text()
            task = template.replace("lethe_general_", f"authors_{split}_").replace("general_", f"{split}_")
            task = task.replace("Question: {{question}}\\nAnswer:", "{{question}}")
            (folder / f"authors_{split}_{kind}.yaml").write_text(task)
            names.append(f"authors_{split}_{kind}")
    return names


def _model_args(server: GatewayServer) -> dict[str, Any]:
    return {
        "model": MODEL,
        "base_url": f"{server.base_url}/v1/completions",
        "tokenizer_backend": "auto",  # probes /tokenizer_info and /tokenize: no local tokenizer
        "auth_token": API_KEY,
        "max_retries": 1,
        "timeout": 120,
    }


def test_lm_evaluation_harness_runs_end_to_end_with_and_without_the_forget_set(
    server: GatewayServer, tiny_full: LanguageModel, world_rows: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before: every multiple-choice request of lm-eval 0.4.13 was a 400 and ``tokenizer_backend=auto`` fell back
    to the hub."""
    import lm_eval
    from lm_eval.api.instance import Instance
    from lm_eval.api.registry import get_model
    from lm_eval.tasks import TaskManager

    monkeypatch.setenv("OPENAI_API_KEY", API_KEY)  # lm-eval's completions requests carry it as the bearer key
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    tasks = _write_tasks(tmp_path / "tasks", world_rows)
    monkeypatch.chdir(tmp_path / "tasks")  # the task files name their data files relative to where lm-eval runs
    scores: dict[str, dict[str, float]] = {}
    for enabled in (True, False):
        _switch(server, enabled)
        try:
            results = lm_eval.simple_evaluate(
                model="local-completions", model_args=_model_args(server), tasks=tasks, batch_size=1,
                task_manager=TaskManager(include_path=str(tmp_path / "tasks")),
            )  # fmt: skip
        finally:
            _switch(server, True)
        label = "with the forget set" if enabled else "without"
        scores[label] = {
            task: round(next(v for k, v in results["results"][task].items() if k in ("acc,none", "contains,none")), 3)
            for task in tasks
        }
    print("lm-eval scores:", json.dumps(scores, indent=1))
    without, with_set = scores["without"], scores["with the forget set"]
    assert without["authors_retain_mc"] == with_set["authors_retain_mc"]  # never flagged: the base model's answers
    assert without["authors_retain_short"] == with_set["authors_retain_short"]
    assert with_set["authors_forget_short"] < without["authors_forget_short"]

    # The harness's own request and parsing path (its model class, remote tokenizer), against the runtime.
    _switch(server, False)
    try:
        lm = get_model("local-completions")(**_model_args(server))
        pairs = [(row["prompt"], " " + row["paraphrased_completion"]) for row in world_rows["retain"][:6]]
        requests = [Instance("loglikelihood", {}, pair, index) for index, pair in enumerate(pairs)]
        answers = lm.loglikelihood(requests)
    finally:
        _switch(server, True)
    for (context, continuation), (loglikelihood, greedy) in zip(pairs, answers, strict=True):
        context_ids = tiny_full.embedder.encode(context)
        whole = tiny_full.embedder.encode(context + continuation)
        reference = tiny_full.prompt_logprobs(whole, top_n=1)
        expected = reference.token_logprobs[len(context_ids) :]
        assert loglikelihood == pytest.approx(sum(expected), abs=1e-3)
        argmax = [max(top, key=top.get) for top in reference.top_logprobs[len(context_ids) :]]
        assert greedy == (argmax == whole[len(context_ids) :])
