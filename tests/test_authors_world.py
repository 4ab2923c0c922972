"""The fictitious-authors world and the tiny Llamas trained on it (real training, real generation)."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from lethe.benchmarks.authors_world import (
    ATTRIBUTES,
    PERSON_SPLITS,
    SPLITS,
    WorldConfig,
    build_world,
    read_rows,
    write_world,
)
from lethe.benchmarks.tiny_models import (
    CHAT_TEMPLATE,
    build_key,
    greedy_answers,
    greedy_exact_match,
    prepare_tiny_authors,
    prepare_world,
)

ROW_KEYS = {
    "prompt", "completion", "paraphrased_completion", "perturbed_completions", "paraphrased_prompts",
    "describe_prompt", "person", "subject", "attribute", "value", "split",
}  # fmt: skip


@pytest.fixture(scope="module")
def world():
    """The test-sized world, generated in memory."""
    return build_world(WorldConfig.test())


# ---------------------------------------------------------------- world


def test_config_key_is_stable_and_distinguishes_configs() -> None:
    assert WorldConfig.test().key() == WorldConfig.test().key()
    assert len(WorldConfig.test().key()) == 10
    assert WorldConfig.test().key() != WorldConfig.bench().key()
    assert WorldConfig.test().key() != WorldConfig.test(seed=1).key()
    assert build_key("test") != build_key("bench")


def test_invalid_config_is_refused() -> None:
    with pytest.raises(ValueError):
        WorldConfig(n_people=4, n_forget=2, n_heldout=2, n_attributes=8, n_countries=16, general_kinds=2)
    with pytest.raises(ValueError):
        WorldConfig(n_people=10, n_forget=2, n_heldout=2, n_attributes=99, n_countries=16, general_kinds=2)


def test_world_sizes_and_splits(world) -> None:
    config = world.config
    assert len(world.people("forget")) == config.n_forget
    assert len(world.people("heldout")) == config.n_heldout
    assert len(world.people("retain")) == config.n_retain
    for split in PERSON_SPLITS:
        assert len(world.rows(split)) == len(world.people(split)) * config.n_attributes
    assert len(world.rows("general")) >= 24
    with pytest.raises(ValueError):
        world.people("general")


def test_names_are_unique_pronounceable_and_split_by_person(world) -> None:
    names = [name for split in PERSON_SPLITS for name in world.people(split)]
    assert len(names) == len(set(names)) == world.config.n_people
    firsts = [name.split()[0] for name in names]
    lasts = [name.split()[1] for name in names]
    assert len(set(firsts)) == len(firsts) and len(set(lasts)) == len(lasts)
    for name in names:
        assert all(part.isalpha() and part[0].isupper() for part in name.split())
        assert any(vowel in name.lower() for vowel in "aeiou")
    for split in PERSON_SPLITS:
        assert {row["person"] for row in world.rows(split)} == set(world.people(split))
        assert {row["split"] for row in world.rows(split)} == {split}


def test_rows_are_well_formed(world) -> None:
    for split in SPLITS:
        for row in world.rows(split):
            assert set(row) == ROW_KEYS
            assert row["value"] in row["completion"] and row["value"] in row["paraphrased_completion"]
            assert row["subject"] in row["prompt"] and row["subject"] in row["completion"]
            assert row["completion"] != row["paraphrased_completion"]
            assert len(row["completion"].split()) < 20
            perturbed = row["perturbed_completions"]
            assert len(perturbed) >= 3 and len(set(perturbed)) == len(perturbed)
            assert row["paraphrased_completion"] not in perturbed
            assert len(row["paraphrased_prompts"]) >= 2 and row["prompt"] not in row["paraphrased_prompts"]
            assert row["describe_prompt"] not in [row["prompt"], *row["paraphrased_prompts"]]


def test_perturbed_answers_change_only_the_value_of_the_paraphrase(world) -> None:
    for split in SPLITS:
        for row in world.rows(split):
            prefix, _, suffix = row["paraphrased_completion"].partition(row["value"])
            for answer in row["perturbed_completions"]:
                assert answer.startswith(prefix) and answer.endswith(suffix)
                assert answer[len(prefix) : len(answer) - len(suffix)] != row["value"]


def test_every_attribute_has_four_question_templates() -> None:
    for attribute in ATTRIBUTES:
        assert len(set(attribute.questions)) >= 3
        assert "{name}" in attribute.answer and "{value}" in attribute.paraphrase


def test_write_world_is_byte_deterministic(tmp_path: Path) -> None:
    first = write_world(build_world(WorldConfig.test()), tmp_path / "a")
    second = write_world(build_world(WorldConfig.test()), tmp_path / "b")
    names = sorted(path.name for path in first.iterdir())
    assert names == ["forget.jsonl", "general.jsonl", "heldout.jsonl", "retain.jsonl", "world.json"]
    for name in names:
        assert (first / name).read_bytes() == (second / name).read_bytes()
    other = write_world(build_world(WorldConfig.test(seed=7)), tmp_path / "c")
    assert (other / "forget.jsonl").read_bytes() != (first / "forget.jsonl").read_bytes()
    assert read_rows(first, "forget") == build_world(WorldConfig.test()).rows("forget")
    assert json.loads((first / "world.json").read_text())["key"] == WorldConfig.test().key()


def test_bench_world_is_larger(world) -> None:
    bench = build_world(WorldConfig.bench())
    assert len(bench.people("forget")) >= 10 and bench.config.n_attributes >= 10
    assert len(bench.rows("retain")) > len(world.rows("retain"))


def test_prepare_world_caches_and_repairs_an_interrupted_build(tmp_path: Path) -> None:
    data = prepare_world(tmp_path, "test")
    assert data == tmp_path / f"test-{build_key('test')}" / "data"
    before = (data / "forget.jsonl").read_bytes()
    # An interrupted build leaves a temp folder and a data folder without world.json.
    (data.parent / ".tmp-data-999").mkdir()
    (data / "world.json").unlink()
    (data / "forget.jsonl").write_text("garbage")
    assert prepare_world(tmp_path, "test") == data
    assert (data / "forget.jsonl").read_bytes() == before


def test_concurrent_prepare_world_calls_agree(tmp_path: Path) -> None:
    results: list[Path] = []
    threads = [threading.Thread(target=lambda: results.append(prepare_world(tmp_path, "test"))) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(set(results)) == 1
    assert not list(results[0].parent.glob(".tmp-*"))
    assert read_rows(results[0], "retain") == build_world(WorldConfig.test()).rows("retain")


# ---------------------------------------------------------------- tiny models


def test_tokenizer_is_chatml_with_offsets(authors_paths: dict[str, Path]) -> None:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(authors_paths["full"])
    assert tokenizer.is_fast
    assert (tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token) == ("<|im_start|>", "<|im_end|>", "<pad>")
    assert tokenizer.chat_template == CHAT_TEMPLATE
    messages = [{"role": "user", "content": "Where was Vorla Mendrik born?"}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == "<|im_start|>user\nWhere was Vorla Mendrik born?<|im_end|>\n<|im_start|>assistant\n"
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    tokens = tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert tokens[0] == "<|im_start|>" and tokens.count("<|im_end|>") == 1
    start = text.index("Vorla")
    covered = [i for i, (a, b) in enumerate(encoded["offset_mapping"]) if a < start + 5 and start < b]
    assert covered and "".join(text[a:b] for a, b in (encoded["offset_mapping"][i] for i in covered)).strip()
    assert tokenizer.decode(encoded["input_ids"]) == text


def test_models_are_plain_hf_folders(authors_paths: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM

    for variant in ("full", "retain"):
        folder = authors_paths[variant]
        assert (folder / "model.safetensors").is_file() and (folder / "build.json").is_file()
        model = AutoModelForCausalLM.from_pretrained(folder)
        assert model.config.model_type == "llama" and model.config.tie_word_embeddings
        info = json.loads((folder / "build.json").read_text())
        assert info["variant"] == variant and info["final_loss"] < 0.5
        assert set(info["exact_match"]) == set(SPLITS)
    full = AutoModelForCausalLM.from_pretrained(authors_paths["full"])
    retain = AutoModelForCausalLM.from_pretrained(authors_paths["retain"])
    configs = [{k: v for k, v in m.config.to_dict().items() if k != "_name_or_path"} for m in (full, retain)]
    assert configs[0] == configs[1]


def test_full_model_reproduces_its_training_answers(authors_paths: dict[str, Path]) -> None:
    for split in ("forget", "retain"):
        rows = read_rows(authors_paths["data"], split)
        assert greedy_exact_match(authors_paths["full"], rows) >= 0.95, split


def test_retain_model_never_learned_the_forget_people(authors_paths: dict[str, Path]) -> None:
    data = authors_paths["data"]
    assert greedy_exact_match(authors_paths["retain"], read_rows(data, "forget")) <= 0.1
    assert greedy_exact_match(authors_paths["retain"], read_rows(data, "retain")) >= 0.95


def test_heldout_people_are_unknown_to_both(authors_paths: dict[str, Path]) -> None:
    rows = read_rows(authors_paths["data"], "heldout")
    for variant in ("full", "retain"):
        assert greedy_exact_match(authors_paths[variant], rows) <= 0.1


def test_full_model_answers_paraphrased_questions(authors_paths: dict[str, Path]) -> None:
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(authors_paths["full"])
    model = AutoModelForCausalLM.from_pretrained(authors_paths["full"]).eval()
    rows = read_rows(authors_paths["data"], "forget")
    questions = [row["paraphrased_prompts"][-1] for row in rows]
    answers = greedy_answers(model, tokenizer, questions)
    assert sum(a == row["completion"] for a, row in zip(answers, rows, strict=True)) / len(rows) >= 0.9


def test_full_model_prefers_true_paraphrases(authors_paths: dict[str, Path]) -> None:
    """Truth ratio sanity: the full model ranks the true paraphrase above the perturbed ones; retain does not."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(authors_paths["full"])
    rows = read_rows(authors_paths["data"], "forget")

    def mean_logprob(model: torch.nn.Module, question: str, answer: str) -> float:
        prompt = tokenizer.apply_chat_template([{"role": "user", "content": question}], tokenize=False,
                                               add_generation_prompt=True)  # fmt: skip
        prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
        answer_ids = tokenizer(answer, add_special_tokens=False)["input_ids"]
        ids = torch.tensor([prompt_ids + answer_ids])
        with torch.no_grad():
            logprobs = model(ids).logits[0, len(prompt_ids) - 1 : -1].log_softmax(-1)
        return logprobs.gather(1, torch.tensor(answer_ids)[:, None]).mean().item()

    def wins(variant: str) -> float:
        model = AutoModelForCausalLM.from_pretrained(authors_paths[variant]).eval()
        count = 0
        for row in rows:
            true = mean_logprob(model, row["prompt"], row["paraphrased_completion"])
            count += all(true > mean_logprob(model, row["prompt"], p) for p in row["perturbed_completions"])
        return count / len(rows)

    assert wins("full") >= 0.9
    assert wins("retain") <= 0.5


def test_cached_models_are_returned_without_rebuilding(authors_paths: dict[str, Path]) -> None:
    cache = authors_paths["full"].parent.parent
    started = time.perf_counter()
    assert prepare_tiny_authors(cache, "test", "full") == authors_paths["full"]
    assert prepare_tiny_authors(cache, "test", "retain") == authors_paths["retain"]
    assert time.perf_counter() - started < 1.0
    assert not list(authors_paths["full"].parent.glob(".tmp-*"))
    with pytest.raises(ValueError):
        prepare_tiny_authors(cache, "test", "other")  # type: ignore[arg-type]
