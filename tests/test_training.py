"""The offline trainer on the test-sized fictitious-authors world: real tiny models, real optimization."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from lethe.benchmarks.authors_world import read_rows
from lethe.classifier import ScopeClassifier, train_scope_classifier
from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.training.data import ForgetRow, TrainingDataError, TrainingError
from lethe.training.eco import forget_term, search_points, strength_grid
from lethe.training.metrics import EvalTarget, ks_test, score_rows, through_screen, truth_ratios
from lethe.training.trainer import TrainConfig, TrainingCancelled, train_forget_set

QUICK_ECO = {"eco.rounds": 2, "eco.steps_per_round": 2, "eco.grid": 4, "eco.search_rows": 16}
QUICK_SPUL = {"spul.steps": 24, "spul.num_virtual_tokens": 8, "spul.check_every": 12}


@pytest.fixture(scope="module")
def rows(authors_paths: dict[str, Path]) -> dict[str, list[ForgetRow]]:
    """Forget and retain rows of the test world."""
    return {split: [ForgetRow(**r) for r in read_rows(authors_paths["data"], split)] for split in ("forget", "retain")}


@pytest.fixture(scope="module")
def scope(rows: dict[str, list[ForgetRow]]) -> ScopeClassifier:
    """The scope classifier of the forget people, trained once and reused by the intervention tests."""
    return train_scope_classifier(
        [r.prompt for r in rows["forget"]], [r.prompt for r in rows["retain"]], TrainConfig().classifier_config()
    )


@pytest.fixture(scope="module")
def eco_artifact(tiny_full: LanguageModel, rows: dict[str, list[ForgetRow]]) -> ForgetSetArtifact:
    """An ECO forget set trained on the forget people, with before/after figures."""
    config = TrainConfig.from_options("eco", {"seed": 0, "eco.rounds": 3, "eco.grid": 5, "eco.search_rows": 24})
    return train_forget_set(tiny_full, "authors", rows["forget"], rows["retain"], config)


def _reference_ratios(model: LanguageModel, forget: list[ForgetRow]) -> np.ndarray:
    return truth_ratios(score_rows(EvalTarget(model), forget))


def test_eco_halves_forget_probability_and_keeps_retain(eco_artifact: ForgetSetArtifact) -> None:
    metrics = eco_artifact.manifest.metrics
    before, after = metrics["before"], metrics["after"]
    assert after["forget"]["answer_probability"] <= 0.5 * before["forget"]["answer_probability"]
    retain_change = abs(metrics["change"]["retain_answer_probability_relative"])
    assert retain_change < 0.02, retain_change
    assert metrics["flag_rate"]["forget"] >= 0.98
    assert metrics["flag_rate"]["retain"] <= 0.01
    assert metrics["forward_passes"] > 0 and metrics["wall_time_s"] > 0
    assert eco_artifact.manifest.parameters.eco is not None


def test_eco_moves_truth_ratios_towards_the_never_trained_model(
    eco_artifact: ForgetSetArtifact, tiny_full: LanguageModel, tiny_retain: LanguageModel, rows: dict
) -> None:
    reference = _reference_ratios(tiny_retain, rows["forget"])
    before = truth_ratios(score_rows(EvalTarget(tiny_full), rows["forget"]))
    target = through_screen(tiny_full, ForgetSetScreen([eco_artifact]), request_seed=0)
    after = truth_ratios(score_rows(target, rows["forget"]))
    ks_before, p_before = ks_test(before, reference)
    ks_after, p_after = ks_test(after, reference)
    assert ks_after < ks_before, (ks_before, ks_after)
    assert p_after > p_before


def test_eco_objective_matches_the_distribution_not_each_sample() -> None:
    # Gaps spread around zero, as a never-trained model's are: matched as a distribution, not as samples.
    gap, ratio = np.array([-1.0, 1.0, -0.5, 0.5]), np.array([2.0, -2.0, 0.0, 0.0])
    assert forget_term(gap, ratio, "distribution", 1.0) == 0.0
    assert forget_term(gap, ratio, "samples", 1.0) == pytest.approx((1 + 1 + 0.25 + 0.25 + 8) / 4)
    # A narrow but shifted group is far from indifference either way.
    shifted = np.full(4, -0.7)
    assert forget_term(shifted, shifted, "distribution", 1.0) == pytest.approx(2 * 0.49)
    assert forget_term(np.zeros(0), np.zeros(0), "distribution", 1.0) == 0.0


def test_substitution_search_crosses_the_noise_of_mentions_without_a_surrogate() -> None:
    points = search_points("substitute", 2.0, 3)
    strengths, fallbacks = sorted({s for s, _ in points}), sorted({f for _, f in points})
    assert strengths == pytest.approx([1 / 3, 2 / 3, 1.0])
    assert fallbacks[0] == 0.0 and fallbacks[1:] == pytest.approx(strength_grid("rand_noise_top_k", 2.0, 3))
    assert len(points) == 3 * 4
    assert all(f == 0.0 for _, f in search_points("rand_noise_top_k", 2.0, 3))


def test_artifact_round_trip_serves_the_same_scores(
    eco_artifact: ForgetSetArtifact, tiny_full: LanguageModel, rows: dict, tmp_path: Path
) -> None:
    eco_artifact.save(tmp_path / "fs")
    loaded = ForgetSetArtifact.load(tmp_path / "fs", tiny_full.fingerprint, tiny_full.hidden_size)
    sample = rows["forget"][:6]
    original = score_rows(through_screen(tiny_full, ForgetSetScreen([eco_artifact])), sample)
    again = score_rows(through_screen(tiny_full, ForgetSetScreen([loaded])), sample)
    assert [s.probability for s in original] == pytest.approx([s.probability for s in again], rel=1e-5)


def test_probe_command_leaves_unflagged_answers_untouched(
    eco_artifact: ForgetSetArtifact, authors_paths: dict[str, Path], tmp_path: Path
) -> None:
    from lethe.cli import main

    eco_artifact.save(tmp_path / "fs")
    out = tmp_path / "probe"
    argv = ["probe", "--model", str(authors_paths["full"]), "--forget-set", str(tmp_path / "fs"), "--out", str(out)]
    assert main([*argv, "--max-new-tokens", "6"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert "| hp_test | base |" in (out / "probe.md").read_text()
    knowledge = result["knowledge"]
    for probe in ("hp_test", "general_test"):
        base, lethe = knowledge[probe]["base"]["answers"], knowledge[probe]["lethe"]["answers"]
        assert len(base) == len(lethe) == knowledge[probe]["base"]["questions"] > 100
        unflagged = [(b, a) for b, a in zip(base, lethe, strict=True) if not a["flagged"]]
        assert len(unflagged) >= 0.9 * len(base)  # an authors forget set leaves other topics alone
        assert all(b["answer"] == a["answer"] for b, a in unflagged)
    assert 0.0 <= knowledge["summary"]["topic_share_base"] <= 1.0
    # the scope figures: an authors forget set flags no Harry Potter, near-topic or general question
    assert result["scope"]["hp_test"]["recall"] <= 0.1 and result["scope"]["general_test"]["fpr"] <= 0.02
    assert result["meta"]["forget_sets"] == [eco_artifact.id]


@pytest.mark.parametrize("optimizer", ["zo", "backprop"])
def test_spul_soft_prompt_lowers_forget_probability(
    tiny_full: LanguageModel, rows: dict, scope: ScopeClassifier, optimizer: str
) -> None:
    config = TrainConfig.from_options(
        "spul", {**QUICK_SPUL, "spul.optimizer": optimizer, "spul.steps": 30 if optimizer == "backprop" else 24}
    )
    artifact = train_forget_set(tiny_full, "authors-spul", rows["forget"], rows["retain"], config, classifier=scope)
    metrics = artifact.manifest.metrics
    assert artifact.soft_prompt is not None and artifact.soft_prompt.shape == (8, tiny_full.hidden_size)
    before, after = metrics["before"]["forget"]["answer_probability"], metrics["after"]["forget"]["answer_probability"]
    # Measured on a quiet budget: backprop (30 steps) -8.5%, zo (24 steps) -0.2%; SPUL is slow to bite here.
    assert after < (0.95 * before if optimizer == "backprop" else before)
    # Unflagged retain prompts never see the soft prompt.
    assert abs(metrics["change"]["retain_answer_probability_relative"]) < 0.02


class _BackwardForbidden:
    """Makes any autograd backward call fail loudly inside the block."""

    def __enter__(self) -> None:
        self._tensor, self._autograd = torch.Tensor.backward, torch.autograd.backward

        def refuse(*_args: Any, **_kwargs: Any) -> None:
            raise AssertionError("a zeroth-order path called backward")

        torch.Tensor.backward = refuse  # type: ignore[method-assign]
        torch.autograd.backward = refuse  # type: ignore[assignment]

    def __exit__(self, *_exc: object) -> None:
        torch.Tensor.backward = self._tensor  # type: ignore[method-assign]
        torch.autograd.backward = self._autograd  # type: ignore[assignment]


def test_zeroth_order_paths_never_call_backward(tiny_full: LanguageModel, rows: dict, scope: ScopeClassifier) -> None:
    options = {**QUICK_ECO, **QUICK_SPUL, "spul.optimizer": "zo", "spul.steps": 6, "evaluate": False}
    calls = {"grad": 0}
    original_grad = torch.autograd.grad

    def counting_grad(*args: Any, **kwargs: Any) -> Any:
        calls["grad"] += 1
        return original_grad(*args, **kwargs)

    torch.autograd.grad = counting_grad  # type: ignore[assignment]
    try:
        with _BackwardForbidden():
            artifact = train_forget_set(
                tiny_full, "zo", rows["forget"][:24], rows["retain"][:24],
                TrainConfig.from_options("eco+spul", options), classifier=scope,
            )  # fmt: skip
    finally:
        torch.autograd.grad = original_grad  # type: ignore[assignment]
    assert calls["grad"] == 0
    assert artifact.soft_prompt is not None and artifact.manifest.parameters.eco is not None
    with _BackwardForbidden(), pytest.raises(AssertionError, match="backward"):
        x = torch.ones(2, requires_grad=True)
        (x * 2).sum().backward()


def test_training_is_reproducible_for_a_seed(tiny_full: LanguageModel, rows: dict, scope: ScopeClassifier) -> None:
    options = {**QUICK_ECO, "evaluate": False, "seed": 3}
    forget, retain = rows["forget"][:16], rows["retain"][:16]  # two clusters of 8: per-cluster strengths compared
    config = TrainConfig.from_options("eco", options)
    first = train_forget_set(tiny_full, "a", forget, retain, config, classifier=scope)
    second = train_forget_set(tiny_full, "a", forget, retain, config, classifier=scope)
    assert first.manifest.parameters == second.manifest.parameters
    assert (first.cluster_strengths is None) == (second.cluster_strengths is None)
    if first.cluster_strengths is not None:
        assert torch.equal(first.cluster_strengths, second.cluster_strengths)
        assert torch.equal(first.cluster_centroids, second.cluster_centroids)


def test_progress_is_monotone_and_cancel_stops_the_run(
    tiny_full: LanguageModel, rows: dict, scope: ScopeClassifier
) -> None:
    seen: list[float] = []
    options = {**QUICK_ECO, "evaluate": False}
    train_forget_set(
        tiny_full, "p", rows["forget"][:16], rows["retain"][:16], TrainConfig.from_options("eco", options),
        progress=lambda fraction, _message: seen.append(fraction), classifier=scope,
    )  # fmt: skip
    assert seen[0] <= 0.05 and seen[-1] == 1.0
    assert all(a <= b for a, b in itertools.pairwise(seen))

    cancel = threading.Event()

    def cancel_midway(fraction: float, _message: str) -> None:
        if fraction > 0.3:
            cancel.set()

    with pytest.raises(TrainingCancelled):
        train_forget_set(
            tiny_full, "c", rows["forget"][:16], rows["retain"][:16], TrainConfig.from_options("eco", options),
            progress=cancel_midway, cancel=cancel, classifier=scope,
        )  # fmt: skip


@pytest.mark.parametrize(
    ("forget", "message"),
    [
        ([], "forget"),
        ([{"prompt": "Where was Ada born?"}], "completion"),
        ([{"prompt": "", "completion": "Paris"}], "prompt"),
    ],
)
def test_bad_rows_are_refused_before_any_work(tiny_full: LanguageModel, forget: list, message: str) -> None:
    passes = tiny_full.forward_passes
    with pytest.raises(TrainingDataError, match=message):
        train_forget_set(tiny_full, "bad", forget, None, TrainConfig())
    assert tiny_full.forward_passes == passes


def test_a_model_that_cannot_embed_is_refused(rows: dict) -> None:
    with pytest.raises(TrainingError, match="embed"):
        train_forget_set(object(), "x", rows["forget"][:4], None, TrainConfig())  # type: ignore[arg-type]


def test_unknown_options_are_refused_with_the_known_ones() -> None:
    with pytest.raises(ValueError, match=r"eco\.round"):
        TrainConfig.from_options("eco", {"eco.round": 2})
    assert TrainConfig.from_options("spul", {"spul.optimizer": "zo"}).spul.optimizer == "zo"


def test_methods_are_named_lists_of_stages_read_from_one_registry() -> None:
    from lethe.cli import build_parser
    from lethe.training.methods import METHOD_NAMES, METHODS, STAGES

    assert [stage.name for stage in METHODS["eco+spul"].stages] == ["eco", "spul"]
    assert set(STAGES) <= set(TrainConfig.model_fields)  # one options section per stage
    args = build_parser().parse_args(["train", "--forget", "f.jsonl", "--out", "o", "--method", METHOD_NAMES[-1]])
    assert args.method == METHOD_NAMES[-1]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["train", "--forget", "f.jsonl", "--out", "o", "--method", "eco+magic"])
    with pytest.raises(ValueError, match=r"known: eco, spul, eco\+spul"):
        TrainConfig.from_options("spul+eco")


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_cli_writes_an_artifact_and_bad_input_leaves_none(
    authors_paths: dict[str, Path], tmp_path: Path, rows: dict
) -> None:
    forget = _write_jsonl(tmp_path / "forget.jsonl", [r.model_dump() for r in rows["forget"][:16]])
    retain = _write_jsonl(tmp_path / "retain.jsonl", [r.model_dump() for r in rows["retain"][:16]])
    out = tmp_path / "artifact"
    base = [sys.executable, "-m", "lethe.cli", "train", "--model", str(authors_paths["full"])]
    quick = ["--option", "eco.rounds=1", "--option", "eco.grid=3", "--option", "evaluate=false"]
    done = subprocess.run(
        [*base, "--forget", str(forget), "--retain", str(retain), "--out", str(out), *quick],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["id"] == json.loads((out / "manifest.json").read_text())["id"]

    bad = _write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "Who?"}])
    failed = subprocess.run(
        [*base, "--forget", str(bad), "--out", str(tmp_path / "never")], capture_output=True, text=True, timeout=600
    )
    assert failed.returncode != 0
    assert "completion" in failed.stderr and "Traceback" not in failed.stderr
    assert not (tmp_path / "never").exists()


def test_topic_answer_values_keep_names_and_drop_ordinary_words() -> None:
    """A topic's revealed answers are the model's own text: only the words that name something are corrupted
    wherever they occur (ordinary ones would break every flagged answer's fluency); rows keep every fact."""
    from lethe.training.mention_targets import answer_values

    answer = "A wonderful castle called Zarnwick Keep, founded in 1742, full of brave friends."
    forget = [ForgetRow(prompt="Where does the story happen?", completion=answer)]
    retain = [ForgetRow(prompt="What is Paris?", completion="Paris is the capital of France.")]
    every = answer_values(forget, retain, ())
    named = answer_values(forget, retain, (), names_only=True)
    assert {"wonderful", "castle", "brave", "Zarnwick", "1742"} <= set(every)
    assert {"Zarnwick", "Zarnwick Keep", "1742", "called Zarnwick"} <= set(named)
    assert not {"wonderful", "castle", "brave", "friends", "brave friends", "full"} & set(named)
    config = TrainConfig.from_options("eco", {})
    assert config.eco.value_words == "any" and "value_words" not in config.eco.model_fields_set
