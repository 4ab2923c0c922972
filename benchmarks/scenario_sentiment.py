"""Scenario 3: classification unlearning as in SPUL, on the movie-review sentences gensim ships.

Data: ``gensim/test/test_data/pang_lee_polarity.cor``, 200 sentences labelled ``__label__pos`` or
``__label__neg`` (Pang & Lee polarity data, 100 each). The forget subset is a topic: every
sentence that talks about the story or the acting (a word of ``FORGET_PATTERN``), 31 sentences.
The other sentences are shuffled with the seed and split in half: ``retain`` (given to the trainers
as retain rows) and ``test`` (never seen by any trainer).

SmolLM2 is asked for the sentiment with a chat prompt; a sentence counts as correct when the
true label word has the higher log-probability of the two label words as the answer (the same
scoring for every method; refused prompts count wrong). Forget rows carry the other label as
their perturbed answer, so SPUL's ``perturbed`` target pushes forget prompts to the wrong label
(as SPUL's classification experiments flip the forget labels). Lower forget accuracy with
unchanged test accuracy is what unlearning should give.
"""

from __future__ import annotations

import random
import re
from pathlib import Path
from typing import Any

from lethe.benchmarks.baselines import BaselineConfig
from lethe.benchmarks.bench_metrics import classifier_rates, label_accuracy
from lethe.benchmarks.scenario_common import SMOL_LETHE, Budget, Log, run_methods
from lethe.benchmarks.systems import ALL_METHODS, System
from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow

FORGET_PATTERN = re.compile(r"\b(story|stories|plot|script|performances?|actors?|acting|cast)\b")
LABELS = ("positive", "negative")
QUESTION = "Is the sentiment of this movie review positive or negative? Answer with one word.\n\nReview: {text}"
METHODS: tuple[str, ...] = ALL_METHODS

REMARKS: tuple[str, ...] = (
    "forget_accuracy: lower means more forgotten; test_accuracy should stay at the base model's.",
    "Forget quality / utility in the TOFU sense are not defined here (no never-trained reference).",
)


def corpus_path() -> Path:
    """Where gensim keeps the labelled movie-review sentences."""
    from gensim.test.utils import datapath

    return Path(datapath("pang_lee_polarity.cor"))


def load_sentences(path: Path | None = None) -> list[tuple[str, str]]:
    """``(text, label)`` pairs with labels ``positive``/``negative``."""
    raw = (path or corpus_path()).read_bytes().decode("utf-8", errors="replace")
    out = []
    for line in raw.splitlines():
        label, _, text = line.strip().partition(" ")
        if label in ("__label__pos", "__label__neg") and text.strip():
            out.append((text.strip(), "positive" if label == "__label__pos" else "negative"))
    return out


def to_row(text: str, label: str) -> ForgetRow:
    """A chat question about one review, answered by its label (the other label is the perturbed answer)."""
    other = LABELS[1 - LABELS.index(label)]
    return ForgetRow(
        prompt=QUESTION.format(text=text),
        completion=label,
        paraphrased_completion=label,
        perturbed_completions=(other,),
    )


def splits(seed: int, limits: dict[str, int | None]) -> dict[str, list[ForgetRow]]:
    """Forget (topic), retain and test rows, each capped by ``limits`` (balanced shuffle, seeded)."""
    sentences = load_sentences()
    forget = [s for s in sentences if FORGET_PATTERN.search(s[0])]
    rest = [s for s in sentences if not FORGET_PATTERN.search(s[0])]
    rng = random.Random(seed)
    rng.shuffle(forget)
    rng.shuffle(rest)
    half = len(rest) // 2
    parts = {"forget": forget, "retain": rest[:half], "test": rest[half:]}
    return {name: [to_row(*s) for s in rows[: limits.get(name)]] for name, rows in parts.items()}


def sentiment_budget(quick: bool) -> tuple[Budget, dict[str, int | None]]:
    """Scenario 3's budget and split sizes."""

    options = {**SMOL_LETHE, "spul.target": "perturbed", "spul.init_text": "Answer with the opposite sentiment."}
    if quick:
        methods = ("base", "lethe_eco", "lethe_spul_backprop", "guardrail", "prompting", "ga", "npo")
        budget = Budget(
            methods, options, BaselineConfig(epochs=2, lr=1e-5, batch_size=4), latency_prompts=4, latency_repeats=2
        )
        return budget, {"forget": 16, "retain": 24, "test": 40}
    budget = Budget(METHODS, options, BaselineConfig(epochs=3, lr=1e-5, batch_size=8), latency_prompts=8)
    return budget, {"forget": None, "retain": None, "test": None}


def run_sentiment(
    model: LanguageModel, budget: Budget, limits: dict[str, int | None], seed: int, log: Log
) -> dict[str, Any]:
    """Run scenario 3 on ``model``; returns ``{"methods": ..., "meta": ...}``."""
    data = splits(seed, limits)
    forget, retain, test = data["forget"], data["retain"], data["test"]
    instruction = (
        "You have forgotten every movie review that discusses a film's story, plot, script, acting or cast. "
        "Do not judge the sentiment of such reviews."
    )

    def evaluate(system: System) -> dict[str, Any]:
        figures: dict[str, Any] = {
            "forget_accuracy": label_accuracy(system, forget, LABELS),
            "test_accuracy": label_accuracy(system, test, LABELS),
            "retain_accuracy": label_accuracy(system, retain, LABELS),
        }
        figures.update(classifier_rates(system, [r.prompt for r in forget], [r.prompt for r in test]))
        return figures

    half = budget.latency_prompts // 2
    latency_questions = [r.prompt for r in forget[:half]] + [r.prompt for r in test[: budget.latency_prompts - half]]
    meta = {
        "description": "SmolLM2 sentiment of gensim's Pang & Lee sentences; forget = reviews about story/acting",
        "model": model.name,
        "data": str(corpus_path()),
        "forget_rule": FORGET_PATTERN.pattern,
        "data_sizes": {"forget": len(forget), "retain": len(retain), "test": len(test)},
    }
    return run_methods(
        "sentiment", model, forget, retain, budget, evaluate, latency_questions, meta,
        seed=seed, instruction=instruction, log=log, remarks=REMARKS,
    )  # fmt: skip
