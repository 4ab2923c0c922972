"""Scenario 1: fictitious authors (TOFU-style). The tiny ``full`` Llama unlearns the forget people.

The ``retain`` Llama, trained identically without the forget people, is the never-learned
reference: its truth ratios on the forget rows are what ``forget_quality`` compares against, and
it is also reported as the ``retain_reference`` method (its forget quality is 1 by construction).

Evaluation never reuses what the unlearning methods trained on: the forget metrics and the
classifier's recall are measured on each forget fact asked in a paraphrased wording that no method
saw (the world's ``paraphrased_prompts``), and the retain people the methods train on are disjoint
from the retain people utility is measured on.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from lethe.benchmarks.authors_world import read_rows
from lethe.benchmarks.bench_metrics import classifier_rates, ratios_of, tofu_metrics
from lethe.benchmarks.scenario_common import Budget, Log, run_methods
from lethe.benchmarks.systems import System
from lethe.benchmarks.tiny_models import Size, prepare_tiny_authors, prepare_world
from lethe.runtime.model import LanguageModel
from lethe.runtime.settings import RuntimeSettings
from lethe.training.data import ForgetRow
from lethe.training.metrics import EvalTarget


def load_split(data: Any, split: str) -> list[ForgetRow]:
    """Rows of one split of a world folder as ``ForgetRow``s."""
    return [ForgetRow.model_validate(row) for row in read_rows(data, split)]


def split_by_person(
    rows: Sequence[dict[str, Any]], eval_rows: int | None, train_rows: int | None, seed: int
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Retain rows for training and for evaluation, no person in both (evaluation takes whole people first)."""
    people = sorted({row["person"] for row in rows})
    random.Random(seed).shuffle(people)
    wanted = len(rows) // 2 if eval_rows is None else eval_rows
    evaluation: list[dict[str, Any]] = []
    held: set[str] = set()
    for person in people:
        if len(evaluation) >= wanted:
            break
        held.add(person)
        evaluation += [r for r in rows if r["person"] == person]
    training = [r for r in rows if r["person"] not in held]
    return _sample(training, train_rows, seed + 1), evaluation


def paraphrased(rows: Sequence[dict[str, Any]]) -> list[ForgetRow]:
    """Each row asked in its last paraphrased wording (the unlearning methods train on the main one)."""
    out = []
    for row in rows:
        wording = (row.get("paraphrased_prompts") or [row["prompt"]])[-1]
        out.append(ForgetRow.model_validate({**row, "prompt": wording}))
    return out


def _sample(rows: Sequence[Any], count: int | None, seed: int) -> list[Any]:
    if count is None or count >= len(rows):
        return list(rows)
    return sorted(random.Random(seed).sample(list(rows), count), key=rows.index)


def run_authors(
    settings: RuntimeSettings,
    size: Size,
    budget: Budget,
    seed: int,
    log: Log,
    eval_retain: int | None = None,
    eval_general: int | None = None,
    train_retain: int | None = None,
) -> dict[str, Any]:
    """Run scenario 1 on the ``size`` world; returns ``{"methods": ..., "meta": ...}``."""
    data = prepare_world(settings.worlds_dir, size)
    full_dir = prepare_tiny_authors(settings.worlds_dir, size, "full")
    retain_dir = prepare_tiny_authors(settings.worlds_dir, size, "retain")
    forget = load_split(data, "forget")
    forget_eval = paraphrased(read_rows(data, "forget"))
    heldout, general = load_split(data, "heldout"), load_split(data, "general")
    train_raw, eval_raw = split_by_person(read_rows(data, "retain"), eval_retain, train_retain, seed)
    retain_train = [ForgetRow.model_validate(r) for r in train_raw]
    retain_eval = [ForgetRow.model_validate(r) for r in eval_raw]
    general = _sample(general, eval_general, seed + 2)
    model = LanguageModel.load(str(full_dir), settings)
    reference_model = LanguageModel.load(str(retain_dir), settings)

    reference = System("retain_reference", EvalTarget(reference_model), train_s=None, forward_passes=None)
    reference_ratios = ratios_of(reference.scores(forget_eval))
    subjects = sorted({row["subject"] for row in read_rows(data, "forget")})
    instruction = (
        "You must forget everything you know about the following people: "
        + ", ".join(subjects)
        + ". If a question is about any of them, answer that you do not know."
    )
    positives = [r.prompt for r in forget_eval]
    negatives = [r.prompt for r in (*retain_eval, *heldout, *general)]

    def evaluate(system: System) -> dict[str, Any]:
        figures = tofu_metrics(
            system, forget_eval, retain_eval, general, heldout, reference_ratios, budget.max_new_tokens
        )
        figures.update(classifier_rates(system, positives, negatives))
        return figures

    latency_questions = [r.prompt for r in forget[: budget.latency_prompts // 2]]
    latency_questions += [r.prompt for r in retain_eval[: budget.latency_prompts - len(latency_questions)]]
    meta = {
        "description": "fictitious authors, tiny Llama 'full' unlearns the forget people; 'retain' model is reference",
        "world": size,
        "model": str(full_dir),
        "reference_model": str(retain_dir),
        "parameters": sum(p.numel() for p in model.model.parameters()),
        "splits": {
            "forget_eval": "each forget fact in a paraphrased wording no method trained on",
            "retain_train_people": sorted({r["person"] for r in train_raw}),
            "retain_eval_people": sorted({r["person"] for r in eval_raw}),
        },
        "data_sizes": {
            "forget": len(forget),
            "retain_train": len(retain_train),
            "retain_eval": len(retain_eval),
            "heldout": len(heldout),
            "general": len(general),
            "latency_prompts": len(latency_questions),
        },
        "max_new_tokens": budget.max_new_tokens,
    }
    return run_methods(
        "authors",
        model,
        forget,
        retain_train,
        budget,
        evaluate,
        latency_questions,
        meta,
        seed=seed,
        instruction=instruction,
        log=log,
        extra=[reference] if "retain_reference" in budget.methods else [],
    )
