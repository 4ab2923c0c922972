"""Scope on held-out data: which prompts the live forget sets flag, per probe and per kind of question.

The held-out probes (``benchmarks/probes/heldout/``) were written by hand without reading the builder
(see their README): Harry Potter questions of many kinds (direct, by first name, indirect, in French,
German and Spanish, misspelled, inside a longer message, in an earlier or a system turn...), near-topic
questions that must stay answerable, and general questions. ``*_dev`` files may be used while
developing; ``*_test`` files only to measure. Recall is the flag rate on the topic's prompts; the
false-positive rate is the flag rate on the others.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from lethe.runtime.screening import ForgetSetScreen
from lethe.training.metrics import flag_rates

HELDOUT_DIR = Path(__file__).parent / "probes" / "heldout"
# probe name -> whether its prompts are in the demo topic's scope
HELDOUT_PROBES: dict[str, bool] = {"hp_test": True, "near_test": False, "general_test": False}


def load_heldout(name: str) -> list[dict[str, Any]]:
    """Rows ``{"id", "kind", "language", "messages", "keywords"}`` of a held-out probe file."""
    path = HELDOUT_DIR / f"{name}.jsonl"
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def scope_report(screen: ForgetSetScreen, probes: dict[str, bool] | None = None) -> dict[str, Any]:
    """Recall on in-scope probes and false-positive rate on the others, per kind."""
    out: dict[str, Any] = {}
    for name, in_scope in (probes or HELDOUT_PROBES).items():
        rates = flag_rates(screen, load_heldout(name))
        out[name] = {"in_scope": in_scope, ("recall" if in_scope else "fpr"): rates["flag_rate"], **rates}
    return out


def scope_markdown(report: dict[str, Any]) -> str:
    """One table row per probe and kind."""
    rows = ["| probe | kind | prompts | recall / false-positive rate |", "|---|---|---|---|"]
    for name, figures in report.items():
        label = "recall" if figures["in_scope"] else "FPR"
        rows.append(f"| {name} | **all** | {figures['prompts']} | {label} **{figures['flag_rate']:.3f}** |")
        for kind, entry in figures["by_kind"].items():
            rows.append(f"| {name} | {kind} | {entry['prompts']} | {entry['flag_rate']:.3f} |")
    return "\n".join(rows) + "\n"
