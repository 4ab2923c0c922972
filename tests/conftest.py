"""Shared fixtures: real models, loaded once per test session."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

from lethe.runtime.model import LanguageModel
from lethe.runtime.settings import RuntimeSettings

# LETHE_TEST_THREADS lowers the test process's own threads on a machine busy with other work.
torch.set_num_threads(int(os.environ.get("LETHE_TEST_THREADS", 0)) or max(1, min(2, os.cpu_count() or 1)))
# Servers started by tests run beside this process (and decode two batches at once): one thread each
# keeps the 2-core machine from being oversubscribed, where torch's spinning threads slow everything.
os.environ.setdefault("LETHE_THREADS", "1")


@pytest.fixture(scope="session")
def settings() -> RuntimeSettings:
    """Settings from the environment (LETHE_HOME caches prepared models between runs)."""
    return RuntimeSettings()


@pytest.fixture(scope="session")
def smollm2(settings: RuntimeSettings) -> LanguageModel:
    """The embedded default model, SmolLM2-135M-Instruct."""
    return LanguageModel.load("smollm2", settings)


@pytest.fixture(scope="session")
def authors_paths(settings: RuntimeSettings) -> dict[str, Path]:
    """The test-sized fictitious-authors world: data folder and the full/retain tiny models."""
    from lethe.benchmarks.tiny_models import prepare_tiny_authors, prepare_world

    return {
        "data": prepare_world(settings.worlds_dir, "test"),
        "full": prepare_tiny_authors(settings.worlds_dir, "test", "full"),
        "retain": prepare_tiny_authors(settings.worlds_dir, "test", "retain"),
    }


@pytest.fixture(scope="session")
def tiny_full(authors_paths: dict[str, Path]) -> LanguageModel:
    """The tiny Llama that learned every fictitious author."""
    return LanguageModel.load(str(authors_paths["full"]))


@pytest.fixture(scope="session")
def tiny_retain(authors_paths: dict[str, Path]) -> LanguageModel:
    """The tiny Llama that never saw the forget authors."""
    return LanguageModel.load(str(authors_paths["retain"]))


@pytest.fixture(scope="module")
def world_rows() -> dict[str, list[dict]]:
    """Forget, retain and held-out rows of the test world (built again per module, as each module may change them)."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    world = build_world(WorldConfig.test())
    return {split: world.rows(split) for split in ("forget", "retain", "heldout")}
