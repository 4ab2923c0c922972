"""The model runtime on real models: exactness of generation from embeddings, streaming, scoring."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import (
    Corruption,
    EntityStep,
    InterventionPlan,
    apply_plan,
    corruption_plan,
    soft_prompt_plan,
)
from lethe.runtime.mentions import MentionIndex
from lethe.runtime.model import LanguageModel

MODELS = ["smollm2", "tiny_full"]


@pytest.fixture(params=MODELS)
def model(request: pytest.FixtureRequest) -> LanguageModel:
    return request.getfixturevalue(request.param)


def _questions(model: LanguageModel) -> list[str]:
    if model.name == "smollm2":
        return ["What is the capital of France?", "Who wrote Hamlet?", "Name three primary colours."]
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    rows = build_world(WorldConfig.test()).rows("retain")
    return [r["prompt"] for r in rows[:3]]


def _hf_greedy(model: LanguageModel, ids: tuple[int, ...], max_new_tokens: int) -> list[int]:
    out = model.model.generate(
        torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
        max_new_tokens=max_new_tokens, do_sample=False,
    )
    tokens = out[0, len(ids):].tolist()
    eos = model.embedder.eos_token_ids()
    return tokens[: next((i for i, t in enumerate(tokens) if t in eos), len(tokens))]


def test_generation_from_embeddings_equals_generation_from_ids(model: LanguageModel) -> None:
    for question in _questions(model):
        prompt = model.chat_prompt([{"role": "user", "content": question}])
        ours = model.generate(prompt, SamplingParams(max_new_tokens=24))
        assert ours.token_ids == _hf_greedy(model, prompt.ids, 24)
        assert ours.text == model.embedder.decode(ours.token_ids)


def test_batched_generation_equals_one_by_one(model: LanguageModel) -> None:
    prompts = [model.chat_prompt([{"role": "user", "content": q}]) for q in _questions(model)]
    params = [SamplingParams(max_new_tokens=16), SamplingParams(max_new_tokens=5), SamplingParams(max_new_tokens=16)]
    singles = [model.generate(p, s) for p, s in zip(prompts, params, strict=True)]
    batched = model.generate_batch([model.prompt_embeddings(p) for p in prompts], params)
    assert [b.token_ids for b in batched] == [s.token_ids for s in singles]
    assert batched[1].finish_reason == "length" and len(batched[1].token_ids) == 5


def test_seeded_sampling_is_reproducible_and_seed_matters(smollm2: LanguageModel) -> None:
    prompt = smollm2.chat_prompt([{"role": "user", "content": "Write one sentence about the sea."}])
    draws = [
        smollm2.generate(prompt, SamplingParams(max_new_tokens=20, temperature=1.0, top_p=0.95, seed=s)).text
        for s in (1, 1, 2, 3)
    ]
    assert draws[0] == draws[1]
    assert len(set(draws[1:])) > 1


def test_stream_deltas_concatenate_to_the_whole_text(smollm2: LanguageModel) -> None:
    prompt = smollm2.chat_prompt([{"role": "user", "content": "Name three fruits."}])
    params = SamplingParams(max_new_tokens=30)
    deltas = list(smollm2.stream(prompt, params))
    assert len(deltas) > 3
    assert "".join(deltas) == smollm2.generate(prompt, params).text


def test_stop_strings_cut_the_text_and_are_never_streamed(smollm2: LanguageModel) -> None:
    prompt = smollm2.chat_prompt([{"role": "user", "content": "What is the capital of France?"}])
    full = smollm2.generate(prompt, SamplingParams(max_new_tokens=20)).text
    assert "Paris" in full
    cut = smollm2.generate(prompt, SamplingParams(max_new_tokens=20, stop=("Paris",)))
    assert cut.finish_reason == "stop"
    assert cut.text == full[: full.index("Paris")]
    streamed = "".join(smollm2.stream(prompt, SamplingParams(max_new_tokens=20, stop=("Paris",))))
    assert streamed == cut.text


def test_chat_prompt_spans_cover_each_message_content(model: LanguageModel) -> None:
    messages = [
        {"role": "user", "content": "First question here?"},
        {"role": "assistant", "content": "An answer."},
        {"role": "user", "content": "A follow-up about it?"},
    ]
    prompt = model.chat_prompt(messages)
    for message, span in zip(messages, prompt.messages, strict=True):
        assert span.role == message["role"]
        assert prompt.text[span.char_start : span.char_end] == message["content"]
        decoded = model.embedder.decode(prompt.ids[span.token_start : span.token_end])
        assert message["content"].strip() in decoded
    mask = prompt.content_mask(("user",))
    assert sum(mask) == sum(s.token_end - s.token_start for s in prompt.messages if s.role == "user")


def test_empty_interventions_change_nothing(model: LanguageModel) -> None:
    prompt = model.chat_prompt([{"role": "user", "content": _questions(model)[0]}])
    base = model.prompt_embeddings(prompt)
    empty_soft = soft_prompt_plan(torch.zeros(0, model.hidden_size))
    empty_mask = corruption_plan(Corruption("rand_noise_first_n", 5.0, 4), [False] * len(prompt), seed=3)
    for plan in (empty_soft, empty_mask):
        assert torch.equal(model.prompt_embeddings(prompt, plan), base)
        assert model.generate(prompt, SamplingParams(max_new_tokens=12), plan).token_ids == (
            model.generate(prompt, SamplingParams(max_new_tokens=12)).token_ids
        )


@pytest.mark.parametrize("function", ["rand_noise_first_n", "rand_noise_top_k", "zero_out_top_k", "flip_sign_top_k"])
def test_corruption_touches_only_masked_positions(smollm2: LanguageModel, function: str) -> None:
    prompt = smollm2.chat_prompt([{"role": "user", "content": "Who wrote Harry Potter?"}])
    base = smollm2.prompt_embeddings(prompt)
    mask = prompt.content_mask(("user",))
    plan = corruption_plan(Corruption(function, 1.0, 8), mask, seed=11)  # type: ignore[arg-type]
    corrupted = smollm2.prompt_embeddings(prompt, plan)
    changed = (corrupted != base).any(dim=-1).tolist()
    assert any(changed)
    assert all(m or not c for m, c in zip(mask, changed, strict=True))
    assert all(int((corrupted[i] != base[i]).sum()) <= 8 for i in range(len(mask)))
    assert torch.equal(corrupted, smollm2.prompt_embeddings(prompt, plan))


def test_soft_prompt_is_prepended_and_changes_the_answer(tiny_full: LanguageModel) -> None:
    prompt = tiny_full.chat_prompt([{"role": "user", "content": _questions(tiny_full)[0]}])
    soft = torch.randn(4, tiny_full.hidden_size, generator=torch.Generator().manual_seed(0))
    embeds = tiny_full.prompt_embeddings(prompt, soft_prompt_plan(soft))
    assert embeds.shape[0] == len(prompt) + 4
    assert torch.equal(embeds[:4], soft)
    assert torch.equal(embeds[4:], tiny_full.prompt_embeddings(prompt))


def test_scoring_matches_prompt_logprobs_and_batches_consistently(model: LanguageModel) -> None:
    prompt = model.chat_prompt([{"role": "user", "content": _questions(model)[0]}])
    completion = model.embedder.encode("A short answer.")
    scored = model.score([prompt.ids], [completion])[0]
    echo = model.prompt_logprobs(list(prompt.ids) + completion)
    assert torch.allclose(scored, torch.tensor(echo.token_logprobs[len(prompt):]), atol=1e-4)
    batch = model.score([prompt.ids, prompt.ids[:5]], [completion, completion[:2]], batch_size=2)
    assert torch.allclose(batch[0], scored, atol=1e-4)
    assert batch[1].shape == (2,)


def test_scoring_with_a_corruption_lowers_the_known_answer(tiny_full: LanguageModel) -> None:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    row = build_world(WorldConfig.test()).rows("forget")[0]
    prompt = tiny_full.chat_prompt([{"role": "user", "content": row["prompt"]}])
    completion = tiny_full.embedder.encode(row["completion"])
    plan = corruption_plan(Corruption("rand_noise_first_n", 4.0, 64), prompt.content_mask(), seed=1)
    clean, corrupted = tiny_full.score([prompt.ids, prompt.ids], [completion, completion], [None, plan])
    assert corrupted.mean() < clean.mean() - 0.5


def test_cli_generate_answers_paris() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lethe.cli", "generate", "--model", "smollm2", "What is the capital of France?"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    assert "Paris" in out.stdout


def test_cli_prepare_prints_a_model_folder() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lethe.cli", "models", "prepare", "smollm2"],
        capture_output=True, text=True, timeout=600, check=True,
    )
    folder = out.stdout.strip().splitlines()[-1]
    assert folder.endswith("smollm2-135m-instruct")


def test_unknown_model_is_a_clear_error() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "lethe.cli", "generate", "--model", "/nonexistent/model", "hi"],
        capture_output=True, text=True, timeout=120,
    )
    assert out.returncode == 2
    assert "neither a built-in name" in out.stderr


def test_embedding_only_loader_matches_the_full_model(smollm2: LanguageModel, settings) -> None:
    from lethe.runtime.loading import load_embedder

    embedder = load_embedder("smollm2", settings)
    assert embedder.fingerprint == smollm2.fingerprint
    messages = [{"role": "user", "content": "Who wrote Harry Potter?"}]
    prompt = embedder.chat_prompt(messages)
    assert prompt == smollm2.chat_prompt(messages)
    assert torch.equal(embedder.embed(prompt.ids), smollm2.prompt_embeddings(prompt))


def _entity_plan(model: LanguageModel, names: list[str], function: str, strength: float,
                 surrogates: dict[str, str] | None = None) -> InterventionPlan:  # fmt: skip
    index = MentionIndex.from_surfaces(model.embedder.encode, names, surrogates)
    corruption = Corruption(function, strength, 64)  # type: ignore[arg-type]
    step = EntityStep(corruption, index, 7, model.embedder.embedding_weight)
    rewrites = tuple(index.rewrites(model.embedder.decode)) if function == "substitute" else ()
    return InterventionPlan(entities=(step,), rewrites=rewrites)


def test_entity_steps_reach_every_mention_in_prompt_and_answer(tiny_full: LanguageModel) -> None:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    row = build_world(WorldConfig.test()).rows("forget")[0]
    person = row["person"]
    plan = _entity_plan(tiny_full, [person], "rand_noise_first_n", 8.0)
    prompt = tiny_full.chat_prompt([{"role": "user", "content": row["prompt"]}])
    answer = tiny_full.embedder.encode(f" {person} was mentioned. {person}.")
    ids = [*prompt.ids, *answer]
    mentions = plan.entities[0].index.find(ids)
    assert len(mentions) == 3  # once in the question, twice in the answer
    touched = {p for start, end, _ in mentions for p in range(start, end)}
    clean = tiny_full.embed(ids)
    corrupted = apply_plan(clean, plan, ids)
    changed = {i for i in range(len(ids)) if not torch.equal(corrupted[i], clean[i])}
    assert changed == touched
    # scoring corrupts the teacher-forced answer's mentions too: the log-prob of the token after an answer
    # mention changes even when the prompt is left as it is
    prompt_only = InterventionPlan(entities=plan.entities)
    no_prompt_mention = tiny_full.embedder.encode("Tell me something.")
    scored_plain, scored_plan = tiny_full.score([no_prompt_mention] * 2, [answer, answer], [None, prompt_only])
    first, _, _ = plan.entities[0].index.find(answer)[0]
    # up to and including the first mention's first token, nothing corrupted is in the context yet
    assert torch.equal(scored_plain[: first + 1], scored_plan[: first + 1])
    assert not torch.allclose(scored_plain[first + 1 :], scored_plan[first + 1 :])


def test_counter_noise_depends_only_on_seed_position_and_dimension() -> None:
    from lethe.runtime.noise import gaussian

    full = gaussian(99, torch.arange(64), 32)
    assert torch.equal(gaussian(99, torch.tensor([5, 40]), 32), full[[5, 40]])
    assert torch.equal(gaussian(99, torch.tensor([5]), torch.tensor([3, 7])), full[5, [3, 7]].unsqueeze(0))
    assert not torch.equal(gaussian(100, torch.arange(64), 32), full)
    assert abs(float(full.mean())) < 0.1 and abs(float(full.std()) - 1.0) < 0.1


def test_substitution_uses_the_surrogates_rows_and_maps_the_answer_back(smollm2: LanguageModel) -> None:
    plan = _entity_plan(smollm2, ["Harry Potter"], "substitute", 1.0, {"Harry Potter": "Percy Jackson"})
    text = "Tell me about Harry Potter."
    ids = smollm2.embedder.encode(text)
    out = apply_plan(smollm2.embed(ids), plan, ids)
    [(start, end, mention)] = plan.entities[0].index.find(ids)
    surrogate_rows = smollm2.embed(list(mention.surrogate))
    for offset in range(end - start):
        assert torch.allclose(out[start + offset], surrogate_rows[offset * len(mention.surrogate) // (end - start)])
    assert plan.rewrites and ("Percy Jackson", "Harry Potter") in plan.rewrites
    prompt = smollm2.chat_prompt([{"role": "user", "content": "Who is Harry Potter? Answer in one sentence."}])
    answer = smollm2.generate(prompt, SamplingParams(max_new_tokens=30), plan)
    assert "Percy Jackson" not in answer.text


def test_generated_mentions_are_corrupted_before_they_are_fed_back(tiny_full: LanguageModel) -> None:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    row = build_world(WorldConfig.test()).rows("forget")[0]
    prompt = tiny_full.chat_prompt([{"role": "user", "content": row["prompt"]}])
    plain = tiny_full.generate(prompt, SamplingParams(max_new_tokens=30))
    # the clean answer restates the person; with an entity step (and nothing else) the prompt's mention is
    # corrupted and so is every generated token that continues one, which changes what follows it
    assert row["person"].split()[-1] in plain.text
    plan = _entity_plan(tiny_full, [row["person"]], "rand_noise_first_n", 64.0)
    guided = tiny_full.generate(prompt, SamplingParams(max_new_tokens=30), plan)
    embeds = tiny_full.prompt_embeddings(prompt, plan)
    unguided = tiny_full.generate_batch([embeds], [SamplingParams(max_new_tokens=30)])[0]
    assert guided.token_ids != plain.token_ids
    generated_mentions = plan.entities[0].index.find([*prompt.ids, *unguided.token_ids])
    if any(start >= len(prompt.ids) for start, _, _ in generated_mentions):
        assert guided.token_ids != unguided.token_ids


def test_a_generated_word_that_only_begins_a_mention_is_left_alone(smollm2: LanguageModel) -> None:
    """" The" begins " The Leaky Cauldron" but is a whole word: feeding it back corrupted broke every flagged
    answer (they opened with "The:"). A token inside a word of a mention, or one completing it, is corrupted."""
    encode = smollm2.embedder.encode
    index = MentionIndex.from_surfaces(encode, ["The Leaky Cauldron", "Hogwarts", "Harry"])
    assert index.continuing(encode("Well, The")) is None
    assert index.continuing(encode("Well, the")) is None
    for text, entity in (("Well, The Le", "The Leaky Cauldron"), ("Well, Hog", "Hogwarts"), ("Well, Harry", "Harry")):
        found = index.continuing(encode(text))
        assert found is not None and found[0].entity == entity, text
    assert [m.entity for _, _, m in index.find(encode("At The Leaky Cauldron, The end"))] == ["The Leaky Cauldron"]


def test_smollm2_folder_carries_the_model_cards_sampling(settings) -> None:  # type: ignore[no-untyped-def]
    import json

    from lethe.runtime.loading import SMOLLM2_SAMPLING, prepare_model

    config = json.loads((prepare_model("smollm2", settings) / "generation_config.json").read_text())
    assert {k: config[k] for k in SMOLLM2_SAMPLING} == {"do_sample": True, "temperature": 0.2, "top_p": 0.9}
