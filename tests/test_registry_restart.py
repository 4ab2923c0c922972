"""The embedded (SQLite) registry across restarts: old databases migrate, debris of interrupted uploads is removed,
a forget set imported at start (``--forget-set``, ``--demo``) that an operator deleted stays deleted, and the
flags that say who trains are checked at start."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from support import assert_openai_error

from lethe.benchmarks.server_harness import GatewayServer
from lethe.runtime.artifact import ForgetSetArtifact
from lethe.runtime.model import LanguageModel
from lethe.service.artifact_archive import pack_artifact
from lethe.service.registry import MIGRATIONS, SCHEMA_VERSION, Registry


@pytest.fixture(scope="module")
def startup_artifact(tmp_path_factory: pytest.TempPathFactory, tiny_full: LanguageModel) -> Path:
    """A forget set for the tiny model, trained with the smallest budget, saved as a folder."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world
    from lethe.training.data import parse_rows
    from lethe.training.presets import SMOKE_OPTIONS
    from lethe.training.trainer import TrainConfig, train_forget_set

    world = build_world(WorldConfig.test())
    artifact = train_forget_set(
        tiny_full, "startup", parse_rows(world.rows("forget"), "forget"), parse_rows(world.rows("retain"), "retain"),
        TrainConfig.from_options("eco", SMOKE_OPTIONS),
    )  # fmt: skip
    return artifact.save(tmp_path_factory.mktemp("startup") / artifact.id)


def _listed(server: GatewayServer) -> list[dict[str, Any]]:
    with server.admin() as admin:
        return admin.get("/admin/forget-sets").json()["data"]


def test_a_version_1_registry_is_migrated_and_keeps_its_records(tmp_path: Path) -> None:
    db = sqlite3.connect(tmp_path / "registry.sqlite3")
    db.executescript(MIGRATIONS[1] + "PRAGMA user_version=1;")
    db.execute(
        "INSERT INTO forget_sets (id, name, method, state, created, updated) VALUES (?, ?, ?, ?, ?, ?)",
        ("fs-aaaaaaaaaaaa", "old", "eco", "failed", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:00+00:00"),
    )
    db.commit()
    db.close()
    registry = Registry(tmp_path)
    assert registry.get_forget_set("fs-aaaaaaaaaaaa").name == "old"
    assert not registry.was_deleted("fs-aaaaaaaaaaaa") and registry.delete_forget_set("fs-aaaaaaaaaaaa")
    assert registry.was_deleted("fs-aaaaaaaaaaaa")
    registry.close()
    assert sqlite3.connect(tmp_path / "registry.sqlite3").execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_scratch_folders_of_interrupted_imports_are_removed_at_start(tmp_path: Path) -> None:
    registry = tmp_path / "registry"
    scratch = registry / ".import-k1ll3d9x" / "unpacked" / "fs-half"
    scratch.mkdir(parents=True)
    (scratch / "classifier.safetensors").write_bytes(b"\0" * (4 << 20))  # what a kill -9 mid-upload leaves
    (registry / "unrelated.txt").write_text("kept")
    server = GatewayServer(registry).start()
    try:
        assert not list(registry.glob(".import-*"))
        assert (registry / "unrelated.txt").read_text() == "kept"
    finally:
        assert server.stop() == 0


def test_a_deleted_startup_forget_set_stays_deleted_until_imported_again(
    startup_artifact: Path, tmp_path: Path
) -> None:
    artifact_id = ForgetSetArtifact.load(startup_artifact).id
    server = GatewayServer(tmp_path / "registry", args=["--forget-set", str(startup_artifact)]).start()
    try:
        [record] = _listed(server)
        assert record["id"] == artifact_id and record["live"] and record["source"] == "cli"
        with server.admin() as admin:
            assert admin.delete(f"/admin/forget-sets/{artifact_id}").status_code == 200
        assert server.stop() == 0

        server.start()  # the same command line names it again
        assert _listed(server) == []
        assert "deleted through the admin API" in server.log_tail()
        with server.admin() as admin:
            imported = admin.post(
                "/admin/forget-sets/import", content=pack_artifact(startup_artifact),
                headers={"content-type": "application/gzip"},
            )  # fmt: skip
        assert imported.status_code == 201, imported.text
        assert server.stop() == 0

        server.start()  # imported again by an operator: it is back for good
        [record] = _listed(server)
        assert record["id"] == artifact_id and record["live"] and record["source"] == "import"
    finally:
        assert server.stop() == 0


def test_who_trains_is_checked_at_start(tmp_path: Path) -> None:
    worker = subprocess.run(
        [sys.executable, "-m", "lethe.cli", "worker", "--model", "tiny-authors", "--registry", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert worker.returncode == 2 and "needs a shared registry" in worker.stderr
    with pytest.raises(RuntimeError, match="one job at a time"):
        GatewayServer(tmp_path / "parallel", args=["--workers", "2"]).start()
    server = GatewayServer(tmp_path / "no-training", args=["--workers", "0"]).start()
    try:
        with server.admin() as admin:
            response = admin.post("/admin/forget-sets", json={"name": "n", "topic": "t", "method": "eco"})
        assert assert_openai_error(response, 501)["code"] == "training_unavailable"
    finally:
        assert server.stop() == 0
