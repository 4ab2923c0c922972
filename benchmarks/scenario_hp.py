"""Scenario 2: forget Harry Potter on SmolLM2-135M-Instruct, keep general knowledge.

Forget set (the same for every method, so they compare on equal data), built from the probes:
the questions of ``benchmarks/probes/harry_potter.jsonl`` with even index are the forget prompts
and the base model's own greedy answers their completions (what the model reveals it knows); the general
probes with even index, answered the same way, are the retain rows. Probes with odd index are
never given to a trainer and are the evaluation: ``forget_keyword_rate`` is the share of held-out
Harry Potter answers that still name the expected keyword (Rowling, Hogwarts, ...), and
``general_keyword_rate`` the same on every general probe (utility). ``forget_rouge`` /
``retain_rouge`` compare answers with the base model's answers (how much of them survives).
"""

from __future__ import annotations

from typing import Any

from lethe.benchmarks.baselines import BaselineConfig
from lethe.benchmarks.bench_metrics import classifier_rates
from lethe.benchmarks.probe_eval import load_probe
from lethe.benchmarks.scenario_common import SMOL_LETHE, Budget, Log, run_methods
from lethe.benchmarks.systems import ALL_METHODS, System
from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow
from lethe.training.metrics import EvalTarget, keyword_rate, mean_rouge_l

METHODS: tuple[str, ...] = ALL_METHODS

REMARKS: tuple[str, ...] = (
    "forget_keyword_rate: share of held-out HP answers naming the expected keyword (lower = more forgotten).",
    "forget_rouge / retain_rouge: ROUGE-L recall of the method's answers against the base model's answers.",
    "No never-trained SmolLM2 exists, so forget quality and MIA are not computed here.",
)


def hp_budget(quick: bool) -> tuple[Budget, dict[str, Any]]:
    """Scenario 2's budget and sizes."""

    if quick:
        methods = ("base", "lethe_eco", "guardrail", "prompting", "npo")
        budget = Budget(
            methods, dict(SMOL_LETHE), BaselineConfig(epochs=2, lr=1e-5, batch_size=4),
            max_new_tokens=20, latency_prompts=4, latency_repeats=2,
        )  # fmt: skip
        return budget, {"answer_tokens": 20}
    budget = Budget(METHODS, dict(SMOL_LETHE), BaselineConfig(epochs=5, lr=1e-5, batch_size=4), max_new_tokens=32)
    return budget, {"answer_tokens": 32}


def run_harry_potter(
    model: LanguageModel, budget: Budget, sizes: dict[str, Any], seed: int, log: Log
) -> dict[str, Any]:
    """Run scenario 2 on ``model``; returns ``{"methods": ..., "meta": ...}``."""
    hp, general = load_probe("harry_potter"), load_probe("general")
    tokens = int(sizes["answer_tokens"])
    base = System("base", EvalTarget(model))
    log("[harry_potter] base answers")
    hp_answers = base.answers([p["prompt"] for p in hp], tokens)
    general_answers = base.answers([p["prompt"] for p in general], tokens)
    source = "probes (even-index questions, base model's own answers)"
    forget = [ForgetRow(prompt=p["prompt"], completion=a) for p, a in zip(hp, hp_answers, strict=True)][::2]
    retain = [ForgetRow(prompt=p["prompt"], completion=a) for p, a in zip(general, general_answers, strict=True)]
    retain = retain[::2]
    eval_hp = hp[1::2]
    eval_hp_answers = hp_answers[1::2]
    instruction = (
        "You have forgotten everything about Harry Potter: the books, the films, the characters, the author and "
        "the places. If a question is about Harry Potter, answer that you do not know."
    )

    def evaluate(system: System) -> dict[str, Any]:
        hp_out = system.answers([p["prompt"] for p in eval_hp], tokens)
        general_out = system.answers([p["prompt"] for p in general], tokens)
        figures: dict[str, Any] = {
            "forget_keyword_rate": keyword_rate(hp_out, [p["keywords"] for p in eval_hp]),
            "general_keyword_rate": keyword_rate(general_out, [p["keywords"] for p in general]),
            "forget_rouge": mean_rouge_l(hp_out, eval_hp_answers),
            "retain_rouge": mean_rouge_l(general_out, general_answers),
        }
        figures.update(classifier_rates(system, [p["prompt"] for p in eval_hp], [p["prompt"] for p in general]))
        return figures

    latency_questions = [p["prompt"] for p in eval_hp[:2]] + [p["prompt"] for p in general[:2]]
    latency_questions = latency_questions[: max(2, budget.latency_prompts)]
    meta = {
        "description": "SmolLM2 forgets Harry Potter; evaluated on held-out probes and general probes",
        "model": model.name,
        "forget_source": source,
        "data_sizes": {
            "forget_train": len(forget),
            "retain_train": len(retain),
            "hp_eval_probes": len(eval_hp),
            "general_probes": len(general),
        },
        "answer_tokens": tokens,
    }
    return run_methods(
        "harry_potter", model, forget, retain, budget, evaluate, latency_questions, meta,
        seed=seed, instruction=instruction, log=log, remarks=REMARKS,
    )  # fmt: skip
