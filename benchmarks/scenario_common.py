"""Pieces every scenario shares: the run budget, the per-method loop and latency overhead."""

from __future__ import annotations

import gc
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from lethe.benchmarks.baselines import BASELINES, BaselineConfig
from lethe.benchmarks.bench_metrics import serve_once
from lethe.benchmarks.systems import BuildContext, System, build_system
from lethe.runtime.model import LanguageModel
from lethe.training.data import ForgetRow

Log = Callable[[str], None]


@dataclass
class Budget:
    """How much work a scenario may do: the methods, the trainers' options and the evaluation sizes."""

    methods: tuple[str, ...]
    lethe_options: dict[str, Any] = field(default_factory=dict)
    baseline: BaselineConfig = field(default_factory=BaselineConfig)
    max_new_tokens: int = 48
    latency_prompts: int = 8
    latency_repeats: int = 3

    def meta(self) -> dict[str, Any]:
        """The settings a scenario's meta reports: Lethe's options, the baselines' budget and loss settings."""
        losses = {name: cls.Config().model_dump() for name, cls in BASELINES.items() if name in self.methods}
        return {
            "lethe_options": self.lethe_options,
            "baseline_config": self.baseline.model_dump(),
            "baseline_losses": losses,
        }


def clean(value: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``, floats are rounded to 6 significant digits."""
    if isinstance(value, dict):
        return {str(k): clean(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [clean(v) for v in value]
    if isinstance(value, float):
        return float(f"{value:.6g}") if math.isfinite(value) else None
    return value


def run_methods(
    scenario: str,
    model: LanguageModel,
    forget: Sequence[ForgetRow],
    retain: Sequence[ForgetRow],
    budget: Budget,
    evaluate: Callable[[System], dict[str, Any]],
    latency_questions: Sequence[str],
    meta: dict[str, Any],
    *,
    seed: int,
    instruction: str,
    log: Log,
    extra: Sequence[System] = (),
    remarks: Sequence[str] = (),
) -> dict[str, Any]:
    """Build, evaluate and time every method of ``budget``; returns the scenario's ``{"methods", "meta"}``.

    ``meta`` (what the scenario says about its data) gains the budget's settings, the loop's notes and the
    ``remarks`` the Markdown report prints under the scenario's table.
    ``overhead_ratio`` is each system's mean first-token latency over the base model's, measured in
    the same run on the same ``latency_questions``, all systems interleaved (``interleaved_latency``).
    """
    methods: dict[str, dict[str, Any]] = {}
    notes: dict[str, Any] = {}
    context = BuildContext(model, forget, retain, seed, budget.lethe_options, budget.baseline, instruction)
    base = build_system("base", context)
    systems: list[System] = []
    given = {system.name: system for system in extra}
    for name in budget.methods:
        started = time.perf_counter()
        if name in given:
            system = given[name]
        else:
            log(f"[{scenario}] training {name}")
            system = build_system(name, context)
        log(f"[{scenario}] evaluating {system.name}")
        figures = evaluate(system)
        figures["train_s"] = system.train_s
        figures["forward_passes"] = system.forward_passes
        methods[system.name] = figures
        if system.notes:
            notes[system.name] = system.notes
        systems.append(system)
        log(f"[{scenario}] {system.name} done in {time.perf_counter() - started:.1f}s")
    log(f"[{scenario}] timing {len(systems)} systems against the base model")
    latencies = interleaved_latency([base, *systems], latency_questions, budget.latency_repeats)
    reference = latencies.pop(0)
    for system, latency in zip(systems, latencies, strict=True):
        methods[system.name]["latency_ms"] = 1000 * latency
        methods[system.name]["overhead_ratio"] = latency / reference if reference > 0 else None
    notes["base_latency_ms"] = 1000 * reference
    del systems
    gc.collect()
    return {"methods": methods, "meta": {**meta, **budget.meta(), "notes": notes, "remarks": list(remarks)}}


def interleaved_latency(systems: Sequence[System], questions: Sequence[str], repeats: int) -> list[float]:
    """Mean over questions of the median seconds to serve one token, per system.

    Systems take turns request by request (round-robin, the order rotated every round), so a change
    in machine load affects them all alike; a warm-up request per system runs first and is not counted.
    """
    for system in systems:
        serve_once(system, questions[0])
    times: list[list[list[float]]] = [[[] for _ in questions] for _ in systems]
    order = list(range(len(systems)))
    for round_index in range(repeats):
        for q, question in enumerate(questions):
            shift = (round_index * len(questions) + q) % len(order)
            for s in order[shift:] + order[:shift]:
                started = time.perf_counter()
                serve_once(systems[s], question)
                times[s][q].append(time.perf_counter() - started)
    return [float(sum(statistics.median(t) for t in per_q) / len(per_q)) for per_q in times]


# Quick budgets: smaller ECO search and fewer SPUL / baseline steps (documented in the report's meta).
QUICK_LETHE: dict[str, Any] = {
    "eco.grid": 3,
    "eco.search_rows": 16,
    "eco.rounds": 2,
    "eco.steps_per_round": 1,
    "eco.token_modes": ["salient"],
    "spul.steps": 30,
    "spul.check_every": 15,
    "spul.zo_directions": 2,
}
# SmolLM2 scenarios: the quick budget with a finer strength grid and smaller SPUL batches.
SMOL_LETHE: dict[str, Any] = {**QUICK_LETHE, "eco.grid": 4, "spul.batch_size": 4}
