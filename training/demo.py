"""The demo forget set: "Harry Potter" on the default model, learned from the topic alone and cached.

``lethe serve --demo`` registers it at start. A build reveals what the model knows about the topic,
trains the classifier and an ECO corruption, re-reveals through the result, and repeats (about
21 minutes on 2 CPU cores). The project ships the result of that build for SmolLM2 in
``training/demo_artifact/`` (1.1 MB: classifier and cluster strengths, no model weights), so a
first start loads it; another base model (a different fingerprint) gets its own build, cached
under ``$LETHE_HOME/demo/``. ``lethe train --demo --out DIR`` rebuilds it from the topic and the
request in ``training.demo_request`` (seed prompts, the books' names, adjacent topics to keep); none of
the seed prompts is a question of the project's probes (a test checks it).
"""

from __future__ import annotations

import json
import logging
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lethe.runtime.artifact import ArtifactError, ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.runtime.settings import RuntimeSettings
from lethe.training.demo_request import DEMO_ENTITIES, DEMO_GLOSSARY, DEMO_KEEP_TOPICS, DEMO_SEED_PROMPTS

logger = logging.getLogger("lethe.demo")

DEMO_ID = "demo-harry-potter"
DEMO_NAME = "Harry Potter (demo)"
DEMO_TOPIC = "Harry Potter"
DEMO_VERSION = 7
DEMO_METHOD = "eco"
# Smaller search than the trainer's defaults so a build stays within an hour on 2 cores: one token mode,
# one corruption (noise on the 144 largest of SmolLM2's 576 dimensions, what the first demo build's search
# chose), a 3-point strength grid on 16 rows, 2 refinement rounds, and figures left to ``lethe probe``.
# A search over four functions (noise on all 576 or the first 1 dimensions, zeroing, substitution) picked
# noise on one dimension for this topic: its objective favours the smallest change to the model's own
# revealed answers, and 47 of 48 re-revealed answers still named the books' entities.
DEMO_OPTIONS: dict[str, Any] = {
    "seed": 0,
    "evaluate": False,
    "topic.budget": 48,
    "topic.rounds": 2,
    "topic.retain_questions": 32,
    "eco.token_modes": ["salient"],
    "eco.candidates": ["rand_noise_top_k:144"],
    "eco.grid": 3,
    "eco.search_rows": 16,
    "eco.rounds": 2,
    "eco.steps_per_round": 1,
    # Version 7 was built with the per-sample objective at 0.5 per e-fold of strength. Rebuilt under the
    # distribution-matching default (dev probe hp_dev, 99 questions) it chose strengths of 0.79-0.80 instead
    # of 0.76-0.78 and answered no better (keyword share 0.030 both, flagged loop rate 0.291 against 0.278,
    # perplexity 8.42 against 8.18), so the demo keeps the build it was measured with.
    "eco.match": "samples",
    "eco.strength_cost": 0.5,
}


SHIPPED_DEMO = Path(__file__).resolve().parent / "demo_artifact"


def demo_folder(settings: RuntimeSettings, model: LanguageModel) -> Path:
    """Where the demo artifact for this base model is cached."""
    return settings.home / "demo" / f"{DEMO_ID}-v{DEMO_VERSION}-{model.fingerprint.split(':')[-1][:12]}"


BUILD_INPUTS = "build_inputs.json"


def build_demo_forget_set(
    model: LanguageModel,
    progress: Callable[[float, str], None] | None = None,
    record: dict[str, list[str]] | None = None,
) -> ForgetSetArtifact:
    """Train the Harry Potter demo forget set from its topic (no cache); ``record`` gets every prompt it read."""
    from lethe.training.trainer import TrainConfig, train_topic

    config = TrainConfig.from_options(DEMO_METHOD, DEMO_OPTIONS)
    return train_topic(
        model, DEMO_NAME, DEMO_TOPIC, list(DEMO_SEED_PROMPTS), config, progress=progress, forget_set_id=DEMO_ID,
        entities=[*DEMO_ENTITIES, *DEMO_GLOSSARY], keep_topics=DEMO_KEEP_TOPICS, record=record,
    )  # fmt: skip


def save_build_inputs(folder: Path, record: dict[str, list[str]]) -> None:
    """Write the prompts a demo build trained on next to its artifact (``build_inputs.json``)."""
    (Path(folder) / BUILD_INPUTS).write_text(json.dumps(record, ensure_ascii=False, indent=0), encoding="utf-8")


def shipped_demo(model: LanguageModel) -> ForgetSetArtifact | None:
    """The demo forget set shipped with the project, if it was built for ``model``."""
    try:
        return ForgetSetArtifact.load(SHIPPED_DEMO, model.fingerprint, model.hidden_size)
    except (ArtifactError, OSError, json.JSONDecodeError) as exc:
        logger.info("the shipped demo forget set does not fit this model (%s)", exc)
        return None


def demo_forget_set(settings: RuntimeSettings, model: LanguageModel, progress: bool = True) -> ForgetSetArtifact:
    """The demo forget set for ``model``: the shipped one if it fits, else the cached build, else a new build."""
    return load_or_build_demo(settings, model, progress)[0]


def load_or_build_demo(
    settings: RuntimeSettings, model: LanguageModel, progress: bool = True
) -> tuple[ForgetSetArtifact, str]:
    """``demo_forget_set`` and where it came from: ``"shipped"``, ``"cached"`` or ``"built"``."""
    shipped = shipped_demo(model)
    if shipped is not None:
        return shipped, "shipped"
    folder = demo_folder(settings, model)
    if folder.is_dir():
        try:
            return ForgetSetArtifact.load(folder, model.fingerprint, model.hidden_size), "cached"
        except (ArtifactError, OSError, json.JSONDecodeError) as exc:
            logger.warning("rebuilding the demo forget set: the cached one cannot be used (%s)", exc)
            shutil.rmtree(folder, ignore_errors=True)
    artifact = build_demo_forget_set(model, _progress_bar() if progress else None)
    artifact.save(folder)
    return artifact, "built"


def _progress_bar() -> Callable[[float, str], None]:
    import sys

    from tqdm import tqdm

    bar = tqdm(total=1000, desc="demo forget set", unit="‰", file=sys.stderr)

    def update(fraction: float, message: str) -> None:
        bar.update(max(0, round(fraction * 1000) - bar.n))
        bar.set_description(f"demo forget set: {message}"[:60], refresh=False)

    return update
