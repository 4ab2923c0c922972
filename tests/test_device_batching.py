"""Device and dtype choice; continuous batching: rows join and leave a running batch, nobody's tokens change.

Everything runs on the tiny fictitious-authors Llama on the CPU; the same code paths run on CUDA
(``benchmarks/gpu_check.py`` checks them where a GPU exists).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lethe.cli import build_parser
from lethe.runtime.device import Placement
from lethe.runtime.generation import DecodeBatch, SamplingParams
from lethe.runtime.interventions import Corruption, EntityStep, InterventionPlan, corruption_plan, soft_prompt_plan
from lethe.runtime.mentions import MentionIndex
from lethe.runtime.model import LanguageModel
from lethe.runtime.prompt import TemplatedPrompt
from lethe.runtime.settings import RuntimeSettings
from lethe.service.generation_defaults import GenerationDefaults


@pytest.fixture(scope="module")
def rows() -> list[dict]:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    return build_world(WorldConfig.test()).rows("retain")


def _prompt(model: LanguageModel, question: str) -> TemplatedPrompt:
    return model.chat_prompt([{"role": "user", "content": question}])


def _run_to_end(
    batch: DecodeBatch, tokens: dict[int, list[int]], steps: int | None = None, texts: dict[int, str] | None = None
) -> None:
    """Step ``batch`` (``steps`` times, or until it is empty), collecting each row's token ids (and text) by key."""
    done = 0
    while batch and (steps is None or done < steps):
        for event in batch.step():
            if event.token_id is not None:
                tokens.setdefault(event.row, []).append(event.token_id)
            if texts is not None:
                texts[event.row] = texts.get(event.row, "") + event.delta
        done += 1


# Device and dtype ---------------------------------------------------------------------------------


def test_device_and_dtype_flags_reach_the_settings() -> None:
    args = build_parser().parse_args(["--device", "cpu", "--dtype", "bfloat16", "generate", "hi"])
    settings = RuntimeSettings.from_args(args)
    assert (settings.device, settings.dtype) == ("cpu", "bfloat16")
    assert Placement.from_settings(settings) == Placement(torch.device("cpu"), torch.bfloat16)
    auto = Placement.from_settings(RuntimeSettings(device="auto", dtype="auto"))
    cuda = torch.cuda.is_available()
    expected = (torch.device("cuda", 0), torch.bfloat16) if cuda else (torch.device("cpu"), torch.float32)
    assert (auto.device, auto.dtype) == expected
    with pytest.raises(ValueError, match="device must be"):
        RuntimeSettings(device="tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA device"):
            Placement.from_settings(RuntimeSettings(device="cuda:1"))


def test_bfloat16_on_the_cpu_answers_like_float32(
    tiny_full: LanguageModel, authors_paths: dict[str, Path], settings: RuntimeSettings, rows: list[dict]
) -> None:
    cpu_bf16 = settings.model_copy(update={"device": "cpu", "dtype": "bfloat16"})
    half = LanguageModel.load(str(authors_paths["full"]), cpu_bf16)
    assert half.dtype == torch.bfloat16 and half.model.dtype == torch.bfloat16
    assert half.fingerprint == tiny_full.fingerprint  # artifacts bind to the weights, not to the dtype served in
    params = SamplingParams(max_new_tokens=16)
    same = right = 0
    questions = rows[:12]
    for row in questions:
        prompt = _prompt(tiny_full, row["prompt"])
        full, rounded = tiny_full.generate(prompt, params), half.generate(prompt, params)
        same += full.token_ids == rounded.token_ids
        right += row["value"] in rounded.text
    assert right >= 11, f"bfloat16 answered {right}/{len(questions)} questions correctly"
    assert same >= 10, f"bfloat16 greedy tokens equal float32's on {same}/{len(questions)} questions"


def test_generation_defaults_follow_the_flag(tmp_path: Path, tiny_full: LanguageModel) -> None:
    from lethe.service.gateway import local_backend
    from lethe.service.settings import GatewaySettings

    card = {"do_sample": True, "temperature": 0.2, "top_p": 0.9, "max_new_tokens": 300}
    (tmp_path / "generation_config.json").write_text(json.dumps(card))
    auto = GenerationDefaults.choose("auto", tmp_path)
    assert (auto.temperature, auto.top_p, auto.max_tokens) == (0.2, 0.9, 300)
    assert GenerationDefaults.choose("none", tmp_path) == GenerationDefaults()  # temperature 1, top_p 1, no cap
    override = GenerationDefaults.choose('{"temperature": 0.7, "max_new_tokens": null}', tmp_path)
    assert (override.temperature, override.top_p, override.max_tokens) == (0.7, 0.9, None)
    other = tmp_path / "other"
    other.mkdir()
    (other / "generation_config.json").write_text('{"top_p": 0.5}')
    assert GenerationDefaults.choose(str(other), tmp_path) == GenerationDefaults(top_p=0.5)
    for bad in ("[0.7]", "{temperature", str(tmp_path / "missing.json")):
        with pytest.raises(ValueError, match="--generation-defaults"):
            GenerationDefaults.choose(bad, tmp_path)

    args = build_parser().parse_args(["serve", "--generation-defaults", '{"temperature": 0}'])
    backend = local_backend(tiny_full, GatewaySettings.from_args(args))
    assert backend.generation_defaults.temperature == 0.0  # the flag reaches what serving fills in


# Continuous batching ------------------------------------------------------------------------------


def test_greedy_tokens_do_not_depend_on_batch_company(tiny_full: LanguageModel, rows: list[dict]) -> None:
    questions = [rows[0]["prompt"], "Tell me everything you know about " + rows[5]["person"] + " and the books.",
                 rows[9]["prompt"], "Hi."]  # fmt: skip
    prompts = [_prompt(tiny_full, q) for q in questions]
    assert len({len(p.ids) for p in prompts}) == len(prompts)  # every row a different length
    params = [SamplingParams(max_new_tokens=n) for n in (20, 12, 20, 6)]
    solo = [tiny_full.generate(p, s).token_ids for p, s in zip(prompts, params, strict=True)]
    for members in ([0, 1, 2, 3], [3, 0], [1, 2], [2, 3, 1]):
        batch = tiny_full.open_batch()
        keys = batch.join([tiny_full.prompt_embeddings(prompts[i]) for i in members], [params[i] for i in members])
        tokens: dict[int, list[int]] = {}
        _run_to_end(batch, tokens)
        assert [tokens[k] for k in keys] == [solo[i] for i in members], members


def test_rows_joining_mid_decode_get_their_solo_tokens(tiny_full: LanguageModel, rows: list[dict]) -> None:
    questions = [rows[2]["prompt"], " ".join(rows[i]["prompt"] for i in (14, 15, 16)), rows[30]["prompt"]]
    prompts = [_prompt(tiny_full, q) for q in questions]
    assert len(prompts[1].ids) > len(prompts[0].ids) + 8  # the running row's cache is padded when it joins
    params = [
        SamplingParams(max_new_tokens=24),
        SamplingParams(max_new_tokens=10),
        SamplingParams(max_new_tokens=12, temperature=0.9, top_p=0.95, seed=42),
    ]
    solo = [tiny_full.generate(p, s).token_ids for p, s in zip(prompts, params, strict=True)]
    batch = tiny_full.open_batch()
    tokens: dict[int, list[int]] = {}
    first = batch.join([tiny_full.prompt_embeddings(prompts[0])], [params[0]])
    _run_to_end(batch, tokens, steps=5)
    later = batch.join([tiny_full.prompt_embeddings(p) for p in prompts[1:]], params[1:])
    _run_to_end(batch, tokens, steps=3)
    empty = batch.join([tiny_full.prompt_embeddings(prompts[1])], [SamplingParams(max_new_tokens=0)])
    _run_to_end(batch, tokens)
    assert [tokens[k] for k in [*first, *later]] == solo
    assert empty[0] not in tokens and not batch


def test_a_finished_row_leaves_and_a_cancelled_row_can_be_dropped(tiny_full: LanguageModel, rows: list[dict]) -> None:
    prompts = [_prompt(tiny_full, rows[i]["prompt"]) for i in (3, 7, 11)]
    params = [SamplingParams(max_new_tokens=n) for n in (3, 20, 20)]
    solo = tiny_full.generate(prompts[1], params[1]).token_ids
    batch = tiny_full.open_batch()
    keys = batch.join([tiny_full.prompt_embeddings(p) for p in prompts], params)
    tokens: dict[int, list[int]] = {}
    _run_to_end(batch, tokens, steps=3)
    assert len(batch) == 2  # the three-token row freed its slot at its last step
    batch.leave([keys[2]])
    assert batch.keys == [keys[1]]
    _run_to_end(batch, tokens)
    assert tokens[keys[1]] == solo


def test_a_flagged_row_keeps_its_plan_and_leaves_its_unflagged_company_as_solo(
    tiny_full: LanguageModel, rows: list[dict]
) -> None:
    flagged_row = rows[20]
    prompt = _prompt(tiny_full, flagged_row["prompt"])
    person = flagged_row["person"]
    entity = EntityStep(
        Corruption("rand_noise_top_k", 4.0, 16), MentionIndex.from_surfaces(tiny_full.embedder.encode, [person]), 7,
        tiny_full.embedder.embedding_weight,
    )  # fmt: skip
    mask = [False] * len(prompt.ids)
    mask[len(mask) // 2] = True
    plan = (
        corruption_plan(Corruption("rand_noise_first_n", 2.0, 32), mask, 11)
        .then(InterventionPlan(entities=(entity,), rewrites=((person.split()[0], "Someone"),)))
        .then(soft_prompt_plan(torch.randn(3, tiny_full.hidden_size, generator=torch.Generator().manual_seed(5))))
    )
    params = SamplingParams(max_new_tokens=24)
    flagged_solo = tiny_full.generate(prompt, params, plan)
    assert flagged_solo.token_ids != tiny_full.generate(prompt, params).token_ids  # the plan acts

    others = [_prompt(tiny_full, rows[i]["prompt"]) for i in (1, 40, 60)]
    other_params = [SamplingParams(max_new_tokens=20), SamplingParams(max_new_tokens=20, temperature=0.8, seed=3),
                    SamplingParams(max_new_tokens=8)]  # fmt: skip
    others_solo = [tiny_full.generate(p, s) for p, s in zip(others, other_params, strict=True)]

    batch = tiny_full.open_batch()
    texts: dict[int, str] = {}
    tokens: dict[int, list[int]] = {}
    unflagged = batch.join([tiny_full.prompt_embeddings(p) for p in others[:2]], other_params[:2])
    _run_to_end(batch, tokens, 2, texts)
    flagged = batch.join([tiny_full.prompt_embeddings(prompt, plan)], [params], [tiny_full.guide(prompt, plan)])
    unflagged += batch.join([tiny_full.prompt_embeddings(others[2])], [other_params[2]])
    _run_to_end(batch, tokens, None, texts)
    assert [tokens[k] for k in unflagged] == [s.token_ids for s in others_solo]
    assert [texts[k] for k in unflagged] == [s.text for s in others_solo]
    assert tokens[flagged[0]] == flagged_solo.token_ids and texts[flagged[0]] == flagged_solo.text
