"""Scope metrics: which conversations the live forget sets flag, overall and per kind of question.

Recall is the flag rate on prompts in a forget set's scope; the false-positive rate is the flag rate
on the others.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from lethe.runtime.screening import ForgetSetScreen


def flag_rates(screen: ForgetSetScreen, rows: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Overall and per-kind share of conversations (rows ``{"messages", "kind", "id"}``) any live forget set flags."""
    flags = [bool(screen.classify(row["messages"])) for row in rows]
    kinds: dict[str, list[bool]] = {}
    for row, flag in zip(rows, flags, strict=True):
        kinds.setdefault(row.get("kind", "other"), []).append(flag)
    return {
        "prompts": len(rows),
        "flag_rate": float(np.mean(flags)) if flags else float("nan"),
        "by_kind": {kind: {"prompts": len(v), "flag_rate": float(np.mean(v))} for kind, v in sorted(kinds.items())},
        "flagged_ids": [row.get("id") for row, flag in zip(rows, flags, strict=True) if flag],
    }
