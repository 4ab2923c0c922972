"""Helpers for the shared-registry tests (no tests here): ``lethe worker`` processes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k in ("LETHE_HOME", "LETHE_THREADS")}
    env.setdefault("LETHE_THREADS", "1")
    return env


class WorkerProcess:
    """A ``lethe worker`` subprocess training for ``model`` from the registry at ``url``."""

    def __init__(self, url: str, state_dir: Path, model: str = "tiny-authors", lease_s: float = 3.0):
        self.url = url
        self.state_dir = Path(state_dir)
        self.model = model
        self.lease_s = lease_s
        self.log_path = self.state_dir.parent / f"{self.state_dir.name}-worker.log"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> WorkerProcess:
        """Start it (it claims jobs as soon as its model is loaded)."""
        command = [
            sys.executable, "-m", "lethe.cli", "worker", "--model", self.model, "--registry", self.url,
            "--state-dir", str(self.state_dir), "--lease-seconds", str(self.lease_s), "--log-level", "info",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(command, env=_env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        return self

    @property
    def pid(self) -> int:
        """The process id."""
        assert self.process is not None
        return self.process.pid

    def kill(self) -> None:
        """SIGKILL: no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def stop(self, timeout: float = 60.0) -> None:
        """SIGTERM and wait (its job, if any, goes back to the queue)."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()

    def log_tail(self, chars: int = 4000) -> str:
        """End of the worker's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""
