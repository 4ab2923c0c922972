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
    baseline_sweep: tuple[tuple[float, int], ...] = ()
    """``(lr, epochs)`` points every weight-updating baseline is trained at; its reported row is the point with
    the best forget quality whose compute stays within the largest Lethe method's (see ``pick_sweep_point``)."""
    sweep_rank: Callable[[dict[str, Any]], Any] | None = None
    """How the scenario ranks a sweep point's figures, best highest (default: forget quality, then utility)."""
    sweep_columns: tuple[str, ...] = ("forget_quality", "model_utility")
    """The figures of every sweep point kept in the baseline's ``sweep`` list."""

    def meta(self) -> dict[str, Any]:
        """The settings a scenario's meta reports: Lethe's options, the baselines' budget and loss settings."""
        losses = {name: cls.Config().model_dump() for name, cls in BASELINES.items() if name in self.methods}
        return {
            "lethe_options": self.lethe_options,
            "baseline_config": self.baseline.model_dump(),
            "baseline_losses": losses,
            "baseline_sweep": [{"lr": lr, "epochs": epochs} for lr, epochs in self.baseline_sweep],
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
        if name in BASELINES and budget.baseline_sweep:
            system, figures = sweep_baseline(name, context, budget, evaluate, methods, log, scenario)
        else:
            if name in given:
                system = given[name]
            else:
                log(f"[{scenario}] training {name}")
                system = build_system(name, context)
            log(f"[{scenario}] evaluating {system.name}")
            figures = evaluate(system)
            figures["train_s"] = system.train_s
            figures["forward_passes"] = system.forward_passes
            figures["compute"] = compute_of(name, system.forward_passes)
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


# A backward pass costs about two forward passes: the baselines' rows count three times, Lethe's
# zeroth-order training runs forward passes only (SPUL backprop's rows are counted as the baselines').
BACKWARD_COST = 2.0


def compute_of(name: str, forward_passes: int | None) -> float | None:
    """Forward-pass equivalents a method's training spent."""
    if forward_passes is None:
        return None
    backprop = name in BASELINES or name.endswith("backprop") or name == "lethe_eco_spul"
    return float(forward_passes) * (1.0 + BACKWARD_COST if backprop else 1.0)


def pick_sweep_point(
    points: Sequence[dict[str, Any]], budget_compute: float | None, rank: Callable[[dict[str, Any]], Any] | None = None
) -> dict[str, Any]:
    """The sweep point reported for a baseline: the best by ``rank`` (default: forget quality, then utility)
    within ``budget_compute``."""
    affordable = [p for p in points if budget_compute is None or (p["compute"] or 0.0) <= budget_compute]
    pool = affordable or [min(points, key=lambda p: p["compute"] or 0.0)]
    return max(pool, key=rank or (lambda p: (p.get("forget_quality") or 0.0, p.get("model_utility") or 0.0)))


def sweep_baseline(
    name: str,
    context: BuildContext,
    budget: Budget,
    evaluate: Callable[[System], dict[str, Any]],
    done: dict[str, dict[str, Any]],
    log: Log,
    scenario: str,
) -> tuple[System, dict[str, Any]]:
    """Train and evaluate a baseline at every sweep point; returns the reported point's system and figures."""
    from dataclasses import replace

    lethe_compute = [f["compute"] for m, f in done.items() if m.startswith("lethe_") and f.get("compute")]
    budget_compute = max(lethe_compute) if lethe_compute else None
    points: list[dict[str, Any]] = []
    kept: System | None = None  # only the reported point's model stays in memory
    for lr, epochs in budget.baseline_sweep:
        log(f"[{scenario}] training {name} at lr {lr:g}, {epochs} epochs")
        config = context.baseline_config.model_copy(update={"lr": lr, "epochs": epochs})
        system = build_system(name, replace(context, baseline_config=config))
        figures = evaluate(system)
        figures.update(train_s=system.train_s, forward_passes=system.forward_passes, lr=lr, epochs=epochs,
                       compute=compute_of(name, system.forward_passes))  # fmt: skip
        points.append(figures)
        if pick_sweep_point(points, budget_compute, budget.sweep_rank) is figures:
            kept = system
        del system
        gc.collect()
    assert kept is not None
    columns = ("lr", "epochs", "compute", *budget.sweep_columns)
    sweep = [{k: p.get(k) for k in columns} for p in points]
    chosen = pick_sweep_point(points, budget_compute, budget.sweep_rank)
    return kept, {**chosen, "sweep": sweep, "compute_budget": budget_compute}


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
