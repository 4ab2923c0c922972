"""Named option sets for ``TrainConfig.from_options``."""

from __future__ import annotations

from typing import Any

# The smallest budget that still trains a working forget set: for checking a path end to end
# (tests, latency benchmarks), not for the quality of the forgetting.
SMOKE_OPTIONS: dict[str, Any] = {
    "eco": {
        "grid": 3,
        "search_rows": 12,
        "rounds": 1,
        "steps_per_round": 1,
        "candidates": ["rand_noise_first_n:64"],
        "token_modes": ["all"],
    },
    "evaluate": False,
    "verify": False,
}
