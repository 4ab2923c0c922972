"""Scenario 2: forget Harry Potter on SmolLM2-135M-Instruct, keep general knowledge.

Training data (the same for every method, so they compare on equal data): the project's own probes,
``benchmarks/probes/harry_potter.jsonl`` (forget prompts) and ``general.jsonl`` (retain prompts), with the
base model's own greedy answers as completions (what the model reveals it knows). Evaluation is on the
held-out probes no method or builder ever read (``benchmarks/probes/heldout/hp_test.jsonl`` and
``general_test.jsonl``, written independently): ``forget_keyword_rate`` is the share of held-out Harry
Potter answers that still name an expected keyword (Rowling, Hogwarts, ...), ``general_keyword_rate``
the same on the held-out general questions (utility). ``forget_rouge`` / ``retain_rouge`` compare
answers with the base model's answers (how much of them survives).
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


def _single_turn(row: dict[str, Any]) -> dict[str, Any]:
    """A held-out probe row as ``{"prompt", "keywords", "kind"}`` (its last user message)."""
    return {"prompt": row["messages"][-1]["content"], "keywords": row.get("keywords", []), "kind": row.get("kind")}


def run_harry_potter(
    model: LanguageModel, budget: Budget, sizes: dict[str, Any], seed: int, log: Log
) -> dict[str, Any]:
    """Run scenario 2 on ``model``; returns ``{"methods": ..., "meta": ...}``."""
    hp, general_train = load_probe("harry_potter"), load_probe("general")
    eval_hp = [_single_turn(p) for p in load_probe("hp_test") if len(p["messages"]) == 1]
    general = [_single_turn(p) for p in load_probe("general_test")]
    tokens = int(sizes["answer_tokens"])
    base = System("base", EvalTarget(model))
    log("[harry_potter] base answers")
    hp_answers = base.answers([p["prompt"] for p in hp], tokens)
    retain_answers = base.answers([p["prompt"] for p in general_train], tokens)
    eval_hp_answers = base.answers([p["prompt"] for p in eval_hp], tokens)
    general_answers = base.answers([p["prompt"] for p in general], tokens)
    source = "the project's probes with the base model's own answers; evaluation on the held-out probes"
    forget = [ForgetRow(prompt=p["prompt"], completion=a) for p, a in zip(hp, hp_answers, strict=True)]
    retain = [ForgetRow(prompt=p["prompt"], completion=a)
              for p, a in zip(general_train, retain_answers, strict=True)]  # fmt: skip
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
            "hp_eval_probes (held out, single-turn)": len(eval_hp),
            "general_probes (held out)": len(general),
        },
        "answer_tokens": tokens,
    }
    return run_methods(
        "harry_potter", model, forget, retain, budget, evaluate, latency_questions, meta,
        seed=seed, instruction=instruction, log=log, remarks=REMARKS,
    )  # fmt: skip
