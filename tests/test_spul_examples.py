"""SPUL's own setting (issue 21): forgetting specific training examples of a classifier.

- the example-level scope (``ClassifierConfig(scope="examples")``) flags the forget examples and their
  perturbations, not the other examples of the task, where the topic scope flags them all;
- SPUL's classification loss reads the label distribution (one pass per prompt for one-token labels,
  the same numbers as scoring each label), its forget term pushes to a wrong or uniform label;
- through the runtime's ``ForgetSetScreen`` (the gateway's ``screening_step`` calls the same
  ``classify`` and ``decide``, and the local backend generates with ``prompt_embeddings`` and ``guide``
  as ``LanguageModel.generate`` does), a request quoting a forget example gets the soft prompt and any
  other review is answered exactly as by the bare model, for chat and completions prompts alike;
- ``lethe bench --quick`` runs the ``spul_examples`` scenario (tiny Llama).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from lethe.benchmarks.bench import QUICK_SCENARIOS, run_bench
from lethe.benchmarks.scenario_sentiment import LABELS
from lethe.benchmarks.scenario_spul_examples import REWORDED, ExampleSplits, example_splits, examples_budget
from lethe.classifier import ClassifierConfig, ClassifierTrainingError, train_scope_classifier
from lethe.classifier.dataset import split_inputs
from lethe.runtime.generation import SamplingParams
from lethe.runtime.interventions import soft_prompt_plan
from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.runtime.settings import RuntimeSettings
from lethe.training.data import TrainingDataError
from lethe.training.metrics import render_question
from lethe.training.spul_labels import LabelTask
from lethe.training.trainer import TrainConfig, train_forget_set


@pytest.fixture(scope="module")
def data() -> ExampleSplits:
    """The full scenario's split: 12 forget, 108 retain and 80 test reviews, 24 perturbed forget reviews."""
    return example_splits(0, examples_budget(quick=False)[1])


def _rate(classifier: Any, prompts: list[str]) -> float:
    return sum(classifier.is_flagged(p) for p in prompts) / len(prompts)


def test_examples_scope_flags_the_examples_and_their_perturbations_only(data: ExampleSplits) -> None:
    forget, retain = [r.prompt for r in data.forget], [r.prompt for r in data.retain]
    examples = train_scope_classifier(forget, retain, ClassifierConfig(scope="examples"))
    assert _rate(examples, forget) == 1.0
    assert _rate(examples, [r.prompt for r in data.perturbed]) >= 0.9
    assert _rate(examples, data.reworded) >= 0.9
    assert _rate(examples, [r.prompt for r in data.test]) <= 0.05
    assert "changed words" in examples.calibration()["calibration_unit"]
    # The same examples as a topic: every review of the task looks like the forget set.
    topic = train_scope_classifier(forget, retain, ClassifierConfig())
    assert _rate(topic, [r.prompt for r in data.test]) >= 0.5


def test_examples_scope_trains_on_every_forget_prompt() -> None:
    forget = [f"Review number {i}: a film about {w}." for i, w in enumerate(("boats", "trains", "cats"))]
    retain = [f"Another review: a film about {w}." for w in ("dogs", "rain", "war", "love")]
    with pytest.raises(ClassifierTrainingError, match="min_positives"):
        split_inputs(forget, retain, ClassifierConfig())
    splits = split_inputs(forget, retain, ClassifierConfig(scope="examples"))
    assert sorted(splits.pos_train) == sorted(forget) == sorted(splits.pos_cal) == sorted(splits.pos_val)
    assert sorted(splits.ret_train + splits.ret_val + splits.ret_test) == sorted(retain)
    with pytest.raises(ClassifierTrainingError, match="scope"):
        ClassifierConfig(scope="sentences")  # type: ignore[arg-type]


def test_label_options_are_checked() -> None:
    config = TrainConfig.from_options("spul", {"spul.labels": ["positive", "negative"], "spul.target": "uniform"})
    assert config.spul.labels == ["positive", "negative"]
    assert TrainConfig.from_options("spul", {"classifier.scope": "examples"}).classifier_config().scope == "examples"
    with pytest.raises(ValueError, match="target must be"):
        TrainConfig.from_options("spul", {"spul.labels": ["positive", "negative"]})
    with pytest.raises(ValueError, match="needs labels"):
        TrainConfig.from_options("spul", {"spul.target": "uniform"})


def test_label_distribution_and_losses(smollm2: LanguageModel, data: ExampleSplits) -> None:
    task = LabelTask.build(smollm2, LABELS, "perturbed")
    assert all(len(label) == 1 for label in task.labels)
    prompts = [render_question(smollm2, r.prompt)[0].ids for r in data.forget[:3]]
    soft = soft_prompt_plan(torch.randn(4, smollm2.hidden_size, generator=torch.Generator().manual_seed(0)) * 0.05)
    plans = [None, soft, soft]
    fast = task.logprobs(smollm2, prompts, plans, grad=False)
    scores = smollm2.score(
        [p for p in prompts for _ in LABELS], [list(label) for _ in prompts for label in task.labels],
        [plan for plan in plans for _ in LABELS],
    )  # fmt: skip
    each = torch.log_softmax(torch.stack([s.sum() for s in scores]).view(3, 2), dim=-1)
    torch.testing.assert_close(fast, each, atol=1e-4, rtol=1e-4)
    assert not torch.allclose(fast[0], fast[1])  # the soft prompt is in front of the second prompt

    true = torch.tensor([0, 1])
    logq = torch.log(torch.tensor([[0.9, 0.1], [0.5, 0.5]]))
    torch.testing.assert_close(task.forget_loss(logq, true), -(logq[0, 1] + logq[1, 0]) / 2)
    uniform = LabelTask(task.labels, "uniform")
    assert float(uniform.forget_loss(logq[1:], true[1:])) == pytest.approx(0.0, abs=1e-6)
    assert float(uniform.forget_loss(logq[:1], true[:1])) > 0.5
    assert task.forgotten(logq, [1, 0], 0.05).tolist() == [True, False]
    assert uniform.forgotten(logq, [0, 1], 0.05).tolist() == [False, True]
    with pytest.raises(TrainingDataError, match=r"not one of spul\.labels") as error:
        task.index(smollm2.embedder.encode("neutral"), "forget row 3")
    assert "neutral" not in str(error.value)


@pytest.fixture(scope="module")
def examples_artifact(tiny_full: LanguageModel, data: ExampleSplits) -> Any:
    """A SPUL forget set of 12 reviews on the tiny Llama: example-level scope, classification loss, a few steps."""
    options = {"seed": 0, "evaluate": False, "classifier.scope": "examples", "spul.labels": list(LABELS),
               "spul.target": "perturbed", "spul.steps": 4, "spul.batch_size": 4, "spul.num_virtual_tokens": 4}
    return train_forget_set(tiny_full, "reviews", data.forget, data.retain, TrainConfig.from_options("spul", options))


def test_spul_label_loss_trains_through_the_screen(examples_artifact: Any) -> None:
    details = examples_artifact.manifest.metrics["spul"]
    assert details["steps_run"] >= 1 and details["target"] == "perturbed"
    assert {"forget", "retain", "kl"} <= set(details["loss_history"][0])
    assert "mean_true_label_probability" in details["working_set_checks"][0]
    assert examples_artifact.soft_prompt.shape[0] == 4


def test_a_request_quoting_a_forget_example_gets_the_soft_prompt(
    tiny_full: LanguageModel, data: ExampleSplits, examples_artifact: Any
) -> None:
    screen = ForgetSetScreen([examples_artifact])
    embedder = tiny_full.embedder
    params = SamplingParams(max_new_tokens=6)
    review = data.forget[0].prompt.split("Review: ", 1)[1]
    quoting = [data.reworded[0], REWORDED.format(text=review.upper())]
    for text in quoting:
        messages = [{"role": "user", "content": text}]
        chat = screen.screen(tiny_full.chat_prompt(messages), messages, 0, embedder)
        completion = screen.screen(tiny_full.text_prompt(text), None, 0, embedder)
        for verdict in (chat, completion):
            assert verdict.forget_set_ids == [examples_artifact.id]
            assert len(verdict.plan.soft_prompts) == 1
            assert torch.equal(verdict.plan.soft_prompts[0].embeddings, examples_artifact.soft_prompt)
    for row in data.test[:6]:
        text = REWORDED.format(text=row.prompt.split("Review: ", 1)[1])
        messages = [{"role": "user", "content": text}]
        prompt = tiny_full.chat_prompt(messages)
        chat = screen.screen(prompt, messages, 0, embedder)
        completion = screen.screen(tiny_full.text_prompt(text), None, 0, embedder)
        assert not chat.flagged and not completion.flagged
        served = tiny_full.generate(prompt, params, chat.plan)
        assert served.token_ids == tiny_full.generate(prompt, params).token_ids


def test_quick_bench_runs_spul_examples(tmp_path: Path, settings: RuntimeSettings) -> None:
    assert "spul_examples" in QUICK_SCENARIOS
    settings = settings.model_copy(update={"threads": 1})
    results = run_bench(tmp_path, quick=True, scenarios=["spul_examples"], seed=0, settings=settings)
    scenario = results["scenarios"]["spul_examples"]
    methods, meta = scenario["methods"], scenario["meta"]
    assert list(methods) == ["base", "lethe_spul_zo", "lethe_spul_backprop", "ga", "graddiff", "npo"]
    base = methods["base"]
    # Fine-tuning made the model fit its training examples better than unseen ones.
    assert base["forget_accuracy"] == 1.0 and base["retain_accuracy"] >= 0.95
    assert base["test_accuracy"] <= base["retain_accuracy"] - 0.2
    for name in ("lethe_spul_zo", "lethe_spul_backprop"):
        figures = methods[name]
        assert figures["classifier_recall"] == 1.0 and figures["classifier_recall_perturbed"] >= 0.8
        assert figures["classifier_fpr"] <= 0.05
        # Unflagged examples are served by the bare fine-tuned model.
        assert abs(figures["test_accuracy"] - base["test_accuracy"]) <= 0.02
        assert abs(figures["retain_accuracy"] - base["retain_accuracy"]) <= 0.02
    assert methods["lethe_spul_backprop"]["forget_accuracy"] < base["forget_accuracy"]
    for name in ("ga", "graddiff", "npo"):  # each at the best of its two learning rates
        points = methods[name]["sweep"]
        assert [p["lr"] for p in points] == [1e-4, 1e-3]
        assert {"forget_accuracy", "retain_accuracy", "test_accuracy"} <= set(points[0])
        assert methods[name]["lr"] in (1e-4, 1e-3)
    assert meta["pretrained"]["train_accuracy"] < base["retain_accuracy"]
    assert "Scenario 4" in (tmp_path / "results.md").read_text()
