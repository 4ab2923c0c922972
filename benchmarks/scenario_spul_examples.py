"""Scenario 4 (``spul_examples``): SPUL's own setting, forget specific training examples of a classifier.

SPUL (Bhaila et al. 2024) forgets *examples the model was trained on*: a fine-tuned classifier
should classify its forget examples as if it had never seen them, and keep its accuracy on the
other training examples and on unseen ones. Here:

1. Data: gensim's Pang & Lee sentences (``scenario_sentiment.load_sentences``, 200 labelled movie
   reviews), shuffled with the seed: ``train`` and ``test`` (never trained on). Rows are the
   sentiment scenario's chat question (``scenario_sentiment.to_row``).
2. Fine-tuning: a copy of the model learns the ``train`` rows (descent on the label's NLL, through
   the baselines' training loop, ``FineTune``), so that it fits its training examples better than
   unseen ones; this fine-tuned model is ``base``. SmolLM2 in the full run, the tiny test Llama in
   ``--quick`` (so the quick version fits the test suite; it learns the training labels but is at
   chance on unseen reviews).
3. Forget set: a random 10 % of the training examples with their labels; the other training examples
   are the retain rows. Lethe's forget set uses the example-level scope (``classifier.scope=examples``)
   and SPUL's classification loss (``spul.labels``: forget examples pushed to the wrong label, retain
   examples kept, KL to the unprompted model), zeroth-order and backprop.
4. GA, GradDiff and NPO each run at every point of the budget's learning-rate sweep (``run_methods``'
   baseline sweep, within Lethe's compute as in every scenario); the row reported is the point with the
   least ``shortfall``: ``max(0, forget_accuracy - 0.5)`` plus the test and retain accuracy lost beyond
   0.02, ties to the lower forget accuracy. Every point's figures are in the row's ``sweep``.

Figures: accuracy (the true label is the more probable label answer, ``label_accuracy``) on the forget
examples, on ``perturbed`` copies of them (typos, casing, one or two words changed to words of the test
reviews, quoted in the same question), on the retain examples and on the test examples; for Lethe, the
classifier's recall on the forget examples, on their perturbations and on the forget examples asked in
another wording, and its false-positive rate on the other examples (retain and test).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any, ClassVar

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field

from lethe.benchmarks.baselines import BaselineConfig, Batch, GradAscent, nll, unlearn
from lethe.benchmarks.bench_metrics import classifier_rates, label_accuracy
from lethe.benchmarks.scenario_common import SMOL_LETHE, Budget, Log, run_methods
from lethe.benchmarks.scenario_sentiment import LABELS, corpus_path, load_sentences, to_row
from lethe.benchmarks.systems import BuildContext, System, build_system
from lethe.classifier.augment import changed_words, variants
from lethe.classifier.dataset import replacement_words
from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow
from lethe.training.metrics import EvalTarget

SCENARIO = "spul_examples"
METHODS: tuple[str, ...] = ("base", "lethe_spul_zo", "lethe_spul_backprop", "ga", "graddiff", "npo")
SWEEP_COLUMNS: tuple[str, ...] = ("forget_accuracy", "retain_accuracy", "test_accuracy")
CHANCE = 0.5
UTILITY_SLACK = 0.02
REWORDED = "Label this movie review as positive or negative: {text}"
INSTRUCTION = "Forget the specific reviews you were trained on."
REMARKS: tuple[str, ...] = (
    "base is the fine-tuned model: it learned every training example (forget and retain), never the test ones.",
    "forget_accuracy: at or below chance (0.5) is forgotten; retain_accuracy and test_accuracy should stay "
    "within 0.02 of base.",
    "ga / graddiff / npo: each at its best point of the learning-rate sweep in this run, within Lethe's compute "
    "(results.json: each row's sweep).",
    "classifier_recall_perturbed: forget examples with typos, casing and one or two changed words; "
    "classifier_fpr: the other examples (retain and test).",
)


class FineTune(GradAscent):
    """Supervised fine-tuning: descent on the answers' NLL, run through the baselines' training loop."""

    name: ClassVar[str] = "finetune"

    def forget_term(self, model: torch.nn.Module, reference: torch.nn.Module, batch: Batch) -> torch.Tensor:
        """The answers' mean token NLL (``unlearn`` minimizes it, so the model learns the rows)."""
        return nll(model, batch)


class ExamplesSetup(BaseModel):
    """What the scenario runs on: the model, the split sizes, the fine-tuning and the baselines' rate grid."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model: str = Field(description="model to fine-tune (a built-in name)")
    train: int = Field(ge=10, description="training examples (forget + retain)")
    test: int = Field(ge=1, description="held-out examples")
    forget_share: float = Field(default=0.1, gt=0, lt=1, description="share of the training examples to forget")
    retain_eval: int | None = Field(default=None, description="retain examples evaluated (None: all)")
    perturbations: int = Field(default=2, ge=1, description="perturbed copies of each forget example")
    finetune: BaselineConfig


@dataclass
class ExampleSplits:
    """The scenario's rows: training examples split into forget and retain, held-out test examples."""

    forget: list[ForgetRow]
    retain: list[ForgetRow]
    test: list[ForgetRow]
    perturbed: list[ForgetRow] = field(default_factory=list)
    reworded: list[str] = field(default_factory=list)
    """The forget reviews asked in another wording (``REWORDED``)."""

    @property
    def train(self) -> list[ForgetRow]:
        """Every training example (what the model is fine-tuned on)."""
        return [*self.forget, *self.retain]


def example_splits(seed: int, setup: ExamplesSetup) -> ExampleSplits:
    """Seeded split of the sentences into forget / retain / test rows, and perturbed copies of the forget rows.

    The perturbations replace words with words of the *test* reviews (none of them seen by a trainer).
    """
    sentences = load_sentences()
    if setup.train + setup.test > len(sentences):
        raise ValueError(f"train + test exceeds the {len(sentences)} sentences")
    rng = random.Random(seed)
    rng.shuffle(sentences)
    train, test = sentences[: setup.train], sentences[setup.train : setup.train + setup.test]
    n_forget = max(1, round(setup.forget_share * len(train)))
    forget, retain = train[:n_forget], train[n_forget:]
    vocabulary = replacement_words([text for text, _ in test])
    perturbed = []
    for text, label in forget:
        copies = [*variants(text, 1, seed + 101), *changed_words(text, vocabulary, setup.perturbations - 1, seed + 101)]
        perturbed += [to_row(copy, label) for copy in copies if copy != text]
    reworded = [REWORDED.format(text=text) for text, _ in forget]
    return ExampleSplits([to_row(*s) for s in forget], [to_row(*s) for s in retain], [to_row(*s) for s in test],
                         perturbed, reworded)  # fmt: skip


def examples_budget(quick: bool) -> tuple[Budget, ExamplesSetup]:
    """The scenario's budget (Lethe's options, methods, the baselines' sweep) and its setup."""
    options = {
        **SMOL_LETHE,
        "classifier.scope": "examples",
        "classifier.semantic_weight": 0.0,
        "spul.labels": list(LABELS),
        "spul.target": "perturbed",
        "spul.init_text": "Answer with the opposite sentiment.",
        "spul.num_virtual_tokens": 8,
        # Only flagged prompts get the soft prompt, and the example-level scope flags almost no other example:
        # the retain and KL terms guard against false flags, so they weigh less than SPUL's default 0.5.
        "spul.alpha": 0.1,
        "spul.beta": 0.1,
        "spul.lr": 0.1,
        "spul.batch_size": 6,
        "spul.tolerance": 0.2,
        "spul.zo_update": "adam",
    }
    if quick:
        setup = ExamplesSetup(model="tiny-authors", train=80, test=40, perturbations=2,
                              finetune=BaselineConfig(epochs=20, lr=1e-3, batch_size=8))  # fmt: skip
        quick_options = {**options, "spul.steps": 20, "spul.check_every": 10}
        budget = Budget(METHODS, quick_options, BaselineConfig(epochs=5, batch_size=8), latency_prompts=4,
                        latency_repeats=2, baseline_sweep=((1e-4, 5), (1e-3, 5)), sweep_columns=SWEEP_COLUMNS)
        return budget, setup
    setup = ExamplesSetup(model="smollm2", train=120, test=80, retain_eval=40, perturbations=2,
                          finetune=BaselineConfig(epochs=3, lr=3e-5, batch_size=8))  # fmt: skip
    budget = Budget(METHODS, options, BaselineConfig(epochs=5, batch_size=8), latency_prompts=6,
                    baseline_sweep=((1e-5, 5), (3e-5, 5), (1e-4, 5)), sweep_columns=SWEEP_COLUMNS)
    return budget, setup


def shortfall(figures: dict[str, Any], base: dict[str, Any]) -> float:
    """How far a system is from the goal: forget accuracy above chance plus test and retain accuracy lost
    beyond ``UTILITY_SLACK`` (0 when the goal is met)."""
    lost = sum(max(0.0, base[k] - figures[k] - UTILITY_SLACK) for k in ("test_accuracy", "retain_accuracy"))
    return max(0.0, figures["forget_accuracy"] - CHANCE) + lost


def run_spul_examples(
    model: LanguageModel, budget: Budget, setup: ExamplesSetup, seed: int, log: Log
) -> dict[str, Any]:
    """Fine-tune ``model`` on the training examples, then run every method of ``budget`` on the fine-tuned copy."""
    data = example_splits(seed, setup)
    log(f"[{SCENARIO}] fine-tuning {model.name} on {len(data.train)} examples")
    tuned = unlearn(model, FineTune(), data.train, [], setup.finetune.model_copy(update={"seed": seed}))
    fitted = tuned.model
    retain_eval = _subset(data.retain, setup.retain_eval, seed)
    others = [r.prompt for r in (*retain_eval, *data.test)]

    def evaluate(system: System) -> dict[str, Any]:
        if system is base:
            return dict(base_figures)
        figures: dict[str, Any] = {
            "forget_accuracy": label_accuracy(system, data.forget, LABELS),
            "forget_perturbed_accuracy": label_accuracy(system, data.perturbed, LABELS),
            "retain_accuracy": label_accuracy(system, retain_eval, LABELS),
            "test_accuracy": label_accuracy(system, data.test, LABELS),
        }
        if system.flags is not None:
            figures.update(classifier_rates(system, [r.prompt for r in data.forget], others))
            figures["classifier_recall_perturbed"] = _flag_rate(system, [r.prompt for r in data.perturbed])
            figures["classifier_recall_reworded"] = _flag_rate(system, data.reworded)
        return figures

    before = System("pretrained", EvalTarget(model))
    log(f"[{SCENARIO}] evaluating the model before fine-tuning")
    pretrained = {"train_accuracy": label_accuracy(before, [*data.forget, *retain_eval], LABELS),
                  "test_accuracy": label_accuracy(before, data.test, LABELS)}  # fmt: skip
    context = BuildContext(fitted, data.forget, data.retain, seed, budget.lethe_options, budget.baseline, INSTRUCTION)
    base = build_system("base", context)
    base.notes.append(f"fine-tuned: {tuned.steps} steps, {tuned.train_s:.0f}s")
    log(f"[{SCENARIO}] evaluating the fine-tuned model")
    base_figures = evaluate(System("fine-tuned", base.target))
    budget = replace(budget, sweep_rank=lambda p: (-shortfall(p, base_figures), -p["forget_accuracy"]))
    half = budget.latency_prompts // 2
    latency = [r.prompt for r in data.forget[:half]] + [r.prompt for r in data.test[: budget.latency_prompts - half]]
    meta = {
        "description": "forget specific training examples of a fine-tuned sentiment classifier (SPUL's setting)",
        "model": model.name,
        "data": str(corpus_path()),
        "setup": setup.model_dump(mode="json"),
        "data_sizes": {"forget": len(data.forget), "perturbed": len(data.perturbed), "retain": len(data.retain),
                       "retain_evaluated": len(retain_eval), "test": len(data.test)},
        "pretrained": pretrained,
        "finetune": {"steps": tuned.steps, "train_s": tuned.train_s, "forward_passes": tuned.forward_passes},
    }  # fmt: skip
    return run_methods(
        SCENARIO, fitted, data.forget, data.retain, budget, evaluate, latency, meta,
        seed=seed, instruction=INSTRUCTION, log=log, extra=[base], remarks=REMARKS,
    )  # fmt: skip


def _flag_rate(system: System, prompts: Sequence[str]) -> float:
    assert system.flags is not None
    return float(np.mean([system.flags(p) for p in prompts])) if prompts else float("nan")


def _subset(rows: Sequence[ForgetRow], count: int | None, seed: int) -> list[ForgetRow]:
    if count is None or count >= len(rows):
        return list(rows)
    return random.Random(seed + 1).sample(list(rows), count)
