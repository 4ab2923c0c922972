"""The shipped Harry Potter demo forget set: it matches its build settings and the default model."""

from __future__ import annotations

import json
from pathlib import Path

from lethe.runtime.model import LanguageModel
from lethe.runtime.screening import ForgetSetScreen
from lethe.runtime.settings import RuntimeSettings
from lethe.training.demo import DEMO_ID, DEMO_METHOD, DEMO_OPTIONS, SHIPPED_DEMO, demo_folder, demo_forget_set
from lethe.training.trainer import TrainConfig, topic_config


def test_the_shipped_demo_was_built_with_the_current_demo_settings() -> None:
    manifest = json.loads((SHIPPED_DEMO / "manifest.json").read_text())
    config = topic_config(TrainConfig.from_options(DEMO_METHOD, DEMO_OPTIONS))
    expected = json.loads(config.model_dump_json())
    assert manifest["id"] == DEMO_ID
    assert manifest["metrics"]["config"] == expected  # else rebuild: lethe train --demo --out training/demo_artifact


def test_the_default_model_loads_the_shipped_demo_without_building(smollm2: LanguageModel, tmp_path: Path) -> None:
    settings = RuntimeSettings(home=tmp_path)
    artifact = demo_forget_set(settings, smollm2, progress=False)
    assert artifact.id == DEMO_ID
    assert not demo_folder(settings, smollm2).exists()  # nothing was built or cached
    screen = ForgetSetScreen([artifact])
    # Questions that name the books or their people and places. Descriptions without a name ("the boy wizard
    # with the lightning scar") are this classifier's weak kind: 2 of 16 flagged in the held-out probe.
    flagged = [
        "Who wrote Harry Potter?",
        "Who is Hermione Granger?",
        "Tell me about Hogwarts.",
    ]
    for question in flagged:
        assert screen.classify([{"role": "user", "content": question}]), question
    for question in ("What is the capital of France?", "Who wrote Pride and Prejudice?", "How do plants make food?"):
        assert not screen.classify([{"role": "user", "content": question}]), question
