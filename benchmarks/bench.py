"""``lethe bench``: unlearning quality, utility and cost of Lethe against the methods people use instead.

Scenarios (``--scenarios``): ``authors`` (1, fictitious authors on tiny Llamas), ``harry_potter`` (2, on
SmolLM2), ``sentiment`` (3, forgetting a style of review on SmolLM2, which a scope classifier cannot
separate) and ``spul_examples`` (4, SPUL's own setting: forgetting specific training examples of a
fine-tuned classifier; SmolLM2, the tiny Llama in ``--quick``). ``--quick`` runs the test-sized
world and smaller budgets so the whole run fits in 10 minutes on 2 CPU cores; the full run uses the
benchmark-sized world and the trainers' default budgets.

Writes ``results.json`` (``{"scenarios": {S: {"methods": {M: {metric: value}}, "meta": {...}}}, "meta": ...}``),
``results.md`` and PNG plots into the output folder. Every number comes from this run.
"""

from __future__ import annotations

import os
import platform
import random
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lethe.benchmarks.baselines import BaselineConfig
from lethe.benchmarks.scenario_common import QUICK_LETHE, Budget, clean
from lethe.benchmarks.systems import ALL_METHODS
from lethe.runtime.settings import RuntimeSettings

SCENARIOS: tuple[str, ...] = ("authors", "harry_potter", "sentiment", "spul_examples")
# SmolLM2 scenarios cost more than the 10 minutes --quick may take on 2 cores; they run when named.
QUICK_SCENARIOS: tuple[str, ...] = ("authors", "spul_examples")
AUTHORS_METHODS: tuple[str, ...] = (ALL_METHODS[0], "retain_reference", *ALL_METHODS[1:])


def machine() -> dict[str, Any]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "python": sys.version.split()[0],
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
    }


def seed_everything(seed: int) -> None:
    """Seed Python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# Learning rates x epochs every weight-updating baseline is trained at (its row: the best within Lethe's compute).
QUICK_SWEEP = tuple((lr, epochs) for lr in (2e-4, 1e-3, 3e-3) for epochs in (5, 15))
FULL_SWEEP = tuple((lr, epochs) for lr in (1e-4, 3e-4, 1e-3, 3e-3) for epochs in (5, 15, 40))


def authors_budget(quick: bool) -> tuple[Budget, dict[str, Any]]:
    """Scenario 1's budget and world options."""
    if quick:
        budget = Budget(
            AUTHORS_METHODS,
            lethe_options=dict(QUICK_LETHE),
            baseline=BaselineConfig(epochs=5, lr=2e-4, batch_size=8),
            max_new_tokens=24,
            latency_prompts=8,
            latency_repeats=5,
            baseline_sweep=QUICK_SWEEP,
        )
        return budget, {"size": "test", "eval_retain": 24, "eval_general": 16, "train_retain": None}
    budget = Budget(
        AUTHORS_METHODS,
        baseline=BaselineConfig(epochs=5, lr=2e-4, batch_size=16),
        max_new_tokens=40,
        latency_prompts=10,
        latency_repeats=3,
        baseline_sweep=FULL_SWEEP,
    )
    return budget, {"size": "bench", "eval_retain": 160, "eval_general": None, "train_retain": 240}


def run_bench(
    out: Path,
    quick: bool = False,
    scenarios: Sequence[str] | None = None,
    seed: int = 0,
    settings: RuntimeSettings | None = None,
    methods: Sequence[str] | None = None,
    log: Callable[[str], None] | None = None,
    baseline: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Run the chosen scenarios, write ``results.json``, ``results.md`` and plots to ``out``; returns the results.

    ``baseline`` overrides ``BaselineConfig`` fields (for example ``lr``, ``epochs``) of every scenario.
    """
    settings = settings or RuntimeSettings()
    scenarios = tuple(scenarios or (QUICK_SCENARIOS if quick else SCENARIOS))
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    unknown = sorted(set(scenarios) - set(SCENARIOS))
    if unknown:
        raise ValueError(f"unknown scenario(s) {unknown} (known: {', '.join(SCENARIOS)})")
    if settings.threads > 0:
        torch.set_num_threads(settings.threads)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results: dict[str, Any] = {"scenarios": {}}
    models: dict[str, Any] = {}
    for scenario in scenarios:
        seed_everything(seed)
        scenario_started = time.perf_counter()
        try:
            result = _run_scenario(scenario, settings, quick, seed, methods, baseline or {}, log, models)
        except ScenarioSkipped as exc:
            result = {"methods": {}, "meta": {"skipped": str(exc)}}
            log(f"[{scenario}] skipped: {exc}")
        result["meta"]["seed"] = seed
        result["meta"]["quick"] = quick
        result["meta"]["wall_s"] = time.perf_counter() - scenario_started
        result["meta"]["machine"] = machine()
        results["scenarios"][scenario] = clean(result)
    results["meta"] = clean(
        {"seed": seed, "quick": quick, "wall_s": time.perf_counter() - started, "machine": machine()}
    )
    from lethe.benchmarks.report import write_report

    write_report(results, out)
    return results


class ScenarioSkipped(RuntimeError):
    """A scenario could not run here (the reason goes into its meta)."""


def _adjust(budget: Budget, methods: Sequence[str] | None, baseline: dict[str, Any]) -> Budget:
    """The scenario's budget, cut to ``methods`` and with the baselines' settings overridden."""
    if methods is not None:
        budget = replace(budget, methods=tuple(m for m in budget.methods if m in set(methods)))
    if not baseline:
        return budget
    # Settings given on the command line replace the sweep: every baseline runs at them alone.
    return replace(budget, baseline=budget.baseline.model_copy(update=baseline), baseline_sweep=())


def _run_scenario(
    scenario: str,
    settings: RuntimeSettings,
    quick: bool,
    seed: int,
    methods: Sequence[str] | None,
    baseline: dict[str, Any],
    log: Callable[[str], None],
    models: dict[str, Any],
) -> dict[str, Any]:
    if scenario == "authors":
        from lethe.benchmarks.scenarios_authors import run_authors

        budget, world = authors_budget(quick)
        return run_authors(
            settings,
            world["size"],
            _adjust(budget, methods, baseline),
            seed,
            log,
            eval_retain=world["eval_retain"],
            eval_general=world["eval_general"],
            train_retain=world["train_retain"],
        )
    if scenario == "spul_examples":
        from lethe.benchmarks.scenario_spul_examples import examples_budget, run_spul_examples

        budget, setup = examples_budget(quick)
        if setup.model not in models:
            models[setup.model] = _load_model(setup.model, settings)
        return run_spul_examples(models[setup.model], _adjust(budget, methods, baseline), setup, seed, log)
    if "smollm2" not in models:
        models["smollm2"] = _load_smollm2(settings)
    smollm2 = models["smollm2"]
    if scenario == "sentiment":
        from lethe.benchmarks.scenario_sentiment import run_sentiment, sentiment_budget

        budget, sizes = sentiment_budget(quick)
        return run_sentiment(smollm2, _adjust(budget, methods, baseline), sizes, seed, log)
    from lethe.benchmarks.scenario_hp import hp_budget, run_harry_potter

    budget, sizes = hp_budget(quick)
    return run_harry_potter(smollm2, _adjust(budget, methods, baseline), sizes, seed, log)


def _load_smollm2(settings: RuntimeSettings) -> Any:
    return _load_model("smollm2", settings)


def _load_model(name: str, settings: RuntimeSettings) -> Any:
    from lethe.runtime.model import LanguageModel

    try:
        return LanguageModel.load(name, settings)
    except Exception as exc:  # the packaged model may be missing on a minimal install
        raise ScenarioSkipped(f"{name} could not be loaded: {type(exc).__name__}: {exc}") from None
