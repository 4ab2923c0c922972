"""The benchmark's report: ``results.json``, a Markdown table per scenario and PNG plots.

The Markdown also states, for scenario 1, whether Lethe's best method is ahead of every
weight-updating baseline on forget quality at equal or better utility, and by how much it is not.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lethe.benchmarks.baselines import BASELINES
from lethe.benchmarks.systems import LETHE_METHODS

COLUMNS: dict[str, tuple[str, ...]] = {
    "authors": (
        "forget_quality", "model_utility", "forget_rouge", "retain_rouge", "mia_auc",
        "classifier_recall", "classifier_fpr", "train_s", "forward_passes", "overhead_ratio",
    ),
    "harry_potter": (
        "forget_keyword_rate", "general_keyword_rate", "forget_rouge", "retain_rouge",
        "classifier_recall", "classifier_fpr", "train_s", "forward_passes", "overhead_ratio",
    ),
    "sentiment": (
        "forget_accuracy", "test_accuracy", "retain_accuracy", "classifier_recall", "classifier_fpr",
        "train_s", "forward_passes", "overhead_ratio",
    ),
    "spul_examples": (
        "forget_accuracy", "forget_perturbed_accuracy", "retain_accuracy", "test_accuracy", "classifier_recall",
        "classifier_recall_perturbed", "classifier_fpr", "train_s", "forward_passes", "overhead_ratio",
    ),
}  # fmt: skip
TITLES = {
    "authors": "Scenario 1: fictitious authors (tiny Llama, TOFU-style)",
    "harry_potter": "Scenario 2: Harry Potter on SmolLM2-135M-Instruct",
    "sentiment": "Scenario 3: forgetting a style of review (story/acting), sentiment on SmolLM2-135M-Instruct",
    "spul_examples": "Scenario 4: forgetting specific training examples of a fine-tuned sentiment classifier (SPUL)",
}


def _fmt(value: Any) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.3f}" if abs(value) < 100 else f"{value:.0f}"
    return str(value)


def table(scenario: str, result: dict[str, Any]) -> str:
    """Markdown table of one scenario's methods."""
    methods = result.get("methods", {})
    columns = COLUMNS.get(scenario) or tuple(sorted({k for m in methods.values() for k in m}))
    lines = ["| method | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for name, figures in methods.items():
        lines.append(f"| {name} | " + " | ".join(_fmt(figures.get(c)) for c in columns) + " |")
    return "\n".join(lines)


def _pair(first: float, second: float) -> str:
    """``first vs second`` with as many decimals (3 to 6) as it takes to show that they differ."""
    digits = 3
    while digits < 6 and first != second and round(first, digits) == round(second, digits):
        digits += 1
    return f"{first:.{digits}f} vs {second:.{digits}f}"


def comparison(methods: dict[str, dict[str, Any]]) -> tuple[bool | None, str]:
    """Whether Lethe's best method is ahead of every weight-updating baseline on forget quality at equal or better
    utility and within Lethe's compute (``None`` when there is nothing to compare), and the plain statement."""
    lethe = {m: f for m, f in methods.items() if m in LETHE_METHODS and f.get("forget_quality") is not None}
    baselines = {m: f for m, f in methods.items() if m in BASELINES and f.get("forget_quality") is not None}
    if not lethe or not baselines:
        return None, "No comparison: Lethe methods or weight-updating baselines were not run."
    best_name, best = max(lethe.items(), key=lambda kv: (kv[1]["forget_quality"], kv[1].get("model_utility") or 0))
    fq, mu = best["forget_quality"], best.get("model_utility") or 0.0
    lines = [f"Lethe's best method on forget quality is `{best_name}` (forget quality {_fmt(fq)}, utility {_fmt(mu)})."]
    losses = []
    for name, figures in baselines.items():
        b_fq, b_mu = figures["forget_quality"], figures.get("model_utility") or 0.0
        at = _sweep_point(figures)
        if b_fq > fq and b_mu >= mu:
            losses.append(
                f"`{name}`{at} beats it on both: forget quality {_fmt(b_fq)} vs {_fmt(fq)} "
                f"and utility {_fmt(b_mu)} vs {_fmt(mu)}"
            )
        elif b_fq > fq:
            losses.append(
                f"`{name}`{at} has higher forget quality ({_fmt(b_fq)} vs {_fmt(fq)}, {b_fq / max(fq, 1e-300):.3g}x) "
                f"but lower utility ({_fmt(b_mu)} vs {_fmt(mu)}, {mu - b_mu:+.3f} for Lethe)"
            )
        elif b_mu > mu:
            lines.append(
                f"`{name}`{at} has lower forget quality ({_fmt(b_fq)}) but higher utility ({_pair(b_mu, mu)})."
            )
    if losses:
        lines.append("It is **not** ahead of every weight-updating baseline: " + "; ".join(losses) + ".")
        return False, " ".join(lines)
    ahead = all(f["forget_quality"] <= fq and (f.get("model_utility") or 0.0) <= mu for f in baselines.values())
    if ahead:
        lines.append("It is ahead of every weight-updating baseline on forget quality at equal or better utility"
                     " (each baseline at its best learning rate and epochs within Lethe's compute).")  # fmt: skip
    else:
        lines.append("It is at least as high on forget quality as every weight-updating baseline, though some keep"
                     " more utility.")  # fmt: skip
    return ahead, " ".join(lines)


def verdict(methods: dict[str, dict[str, Any]]) -> str:
    """The plain statement of ``comparison``."""
    return comparison(methods)[1]


def _sweep_point(figures: dict[str, Any]) -> str:
    if figures.get("lr") is None:
        return ""
    compute = figures.get("compute")
    spent = f", {_fmt(compute)} forward-pass equivalents" if compute is not None else ""
    return f" (lr {figures['lr']:g}, {figures.get('epochs')} epochs{spent})"


def sweep_table(methods: dict[str, dict[str, Any]]) -> str:
    """Every point of the baselines' learning-rate x epoch sweep, the reported one in bold."""
    lines = ["| baseline | lr | epochs | compute | forget_quality | model_utility |", "|---|---|---|---|---|---|"]
    for name, figures in methods.items():
        for point in figures.get("sweep", []):
            chosen = point.get("lr") == figures.get("lr") and point.get("epochs") == figures.get("epochs")
            cells = [_fmt(point.get(k)) for k in ("lr", "epochs", "compute", "forget_quality", "model_utility")]
            cells = [f"**{c}**" for c in cells] if chosen else cells
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines) if len(lines) > 2 else ""


def markdown(results: dict[str, Any]) -> str:
    """The whole report as Markdown."""
    meta = results.get("meta", {})
    machine = meta.get("machine", {})
    parts = [
        "# Lethe benchmark",
        "",
        f"Seed {meta.get('seed')}, {'quick' if meta.get('quick') else 'full'} run, "
        f"{_fmt(meta.get('wall_s'))} s wall time on {machine.get('platform')} "
        f"({machine.get('cpu_count')} CPUs, torch {machine.get('torch')}, {machine.get('torch_threads')} threads).",
        "",
        "`overhead_ratio`: mean time to serve one token (classify, intervene, prefill, decode one token) "
        "over the base model's, same prompts, same run. `n/a`: not defined for the method "
        "(see the scenario's meta in results.json).",
    ]
    for scenario, result in results.get("scenarios", {}).items():
        parts += ["", f"## {TITLES.get(scenario, scenario)}", ""]
        scenario_meta = result.get("meta", {})
        if scenario_meta.get("skipped"):
            parts.append(f"Skipped: {scenario_meta['skipped']}")
            continue
        sizes = scenario_meta.get("data_sizes", {})
        parts.append("Data sizes: " + ", ".join(f"{k} {v}" for k, v in sizes.items()) + ".")
        parts += ["", table(scenario, result)]
        if scenario == "authors":
            methods = result.get("methods", {})
            parts += ["", verdict(methods)]
            budget = next((f.get("compute_budget") for f in methods.values() if f.get("compute_budget")), None)
            sweep = sweep_table(methods)
            if sweep:
                parts += ["", f"Baseline sweep (Lethe's largest compute: {_fmt(budget)} forward-pass equivalents):",
                          "", sweep]  # fmt: skip
        for note in scenario_meta.get("remarks", []):
            parts += ["", f"- {note}"]
    return "\n".join(parts) + "\n"


def plot(results: dict[str, Any], out: Path) -> list[Path]:
    """PNG plots: forget quality (or forget accuracy) against utility, and latency overhead per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    written = []
    axes_for = {
        "authors": ("model_utility", "forget_quality", "model utility", "forget quality (KS p-value, log)"),
        "harry_potter": ("general_keyword_rate", "forget_keyword_rate", "general keyword rate", "HP keyword rate"),
        "sentiment": ("test_accuracy", "forget_accuracy", "test accuracy", "forget accuracy"),
        "spul_examples": ("test_accuracy", "forget_accuracy", "test accuracy", "forget accuracy"),
    }
    for scenario, result in results.get("scenarios", {}).items():
        methods = result.get("methods", {})
        if not methods:
            continue
        x_key, y_key, x_label, y_label = axes_for.get(scenario, ("model_utility", "forget_quality", "", ""))
        points = [(m, f.get(x_key), f.get(y_key)) for m, f in methods.items()]
        points = [(m, x, y) for m, x, y in points if x is not None and y is not None]
        if points:
            fig, ax = plt.subplots(figsize=(7, 5))
            for index, (name, x, y) in enumerate(points):
                color = "tab:blue" if name in LETHE_METHODS else "tab:red" if name in BASELINES else "tab:gray"
                y_plot = max(y, 1e-30) if scenario == "authors" else y
                ax.scatter([x], [y_plot], color=color)
                # Staggered labels so methods at the same point stay readable.
                offset = (4, -10 + 8 * (index % 4))
                ax.annotate(name, (x, y_plot), xytext=offset, textcoords="offset points", fontsize=7)
            if scenario == "authors":
                ax.set_yscale("log")
            ax.set_xlabel(x_label)
            ax.set_ylabel(y_label)
            ax.set_title(f"{TITLES.get(scenario, scenario)}\nblue: Lethe, red: weight-updating, gray: others")
            fig.tight_layout()
            path = out / f"{scenario}_quality_vs_utility.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
        bars = [(m, f.get("overhead_ratio")) for m, f in methods.items() if f.get("overhead_ratio") is not None]
        if bars:
            fig, ax = plt.subplots(figsize=(8, 4))
            ax.bar([m for m, _ in bars], [v for _, v in bars], color="tab:green")
            ax.axhline(1.0, color="black", linewidth=0.8)
            ax.set_ylabel("first-token latency / base")
            ax.set_title(f"Serving latency overhead: {scenario}")
            ax.tick_params(axis="x", rotation=60, labelsize=8)
            fig.tight_layout()
            path = out / f"{scenario}_latency_overhead.png"
            fig.savefig(path, dpi=110)
            plt.close(fig)
            written.append(path)
    return written


def write_report(results: dict[str, Any], out: Path) -> dict[str, Path]:
    """Write ``results.json``, ``results.md`` and the plots into ``out``."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    json_path = out / "results.json"
    json_path.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    md_path = out / "results.md"
    md_path.write_text(markdown(results), encoding="utf-8")
    paths = {"json": json_path, "markdown": md_path}
    for path in plot(results, out):
        paths[path.stem] = path
    return paths
