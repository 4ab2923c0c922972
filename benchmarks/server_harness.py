"""Real gateway processes for tests and benchmarks.

Each server is ``python -m lethe.cli serve`` on 127.0.0.1 with a free port, its own registry
folder and a log file; it is driven over real HTTP.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx

API_KEY = "test-key-1"
OTHER_API_KEY = "test-key-2"
ADMIN_KEY = "test-admin-key"


def free_port() -> int:
    """A port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class GatewayServer:
    """A ``lethe serve`` subprocess."""

    def __init__(
        self,
        registry: Path,
        model: str = "tiny-authors",
        api_keys: str | None = f"{API_KEY},{OTHER_API_KEY}",
        admin_key: str | None = ADMIN_KEY,
        args: Sequence[str] = (),
        env: dict[str, str] | None = None,
    ):
        self.registry = Path(registry)
        self.model = model
        self.api_keys = api_keys
        self.admin_key = admin_key
        self.args = list(args)
        self.extra_env = dict(env or {})
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = self.registry.parent / f"{self.registry.name}-server.log"

    @property
    def base_url(self) -> str:
        """``http://127.0.0.1:PORT``."""
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 240.0) -> GatewayServer:
        """Start the process and wait until ``/ready`` answers 200."""
        self.port = free_port()
        env = {
            k: v for k, v in os.environ.items() if not k.startswith("LETHE_") or k in ("LETHE_HOME", "LETHE_THREADS")
        }
        if self.api_keys:
            env["LETHE_API_KEYS"] = self.api_keys
        if self.admin_key:
            env["LETHE_ADMIN_KEY"] = self.admin_key
        env.update(self.extra_env)
        command = [
            sys.executable,
            "-m",
            "lethe.cli",
            "serve",
            "--model",
            self.model,
            "--port",
            str(self.port),
            "--registry",
            str(self.registry),
            "--log-level",
            "warning",
            *self.args,
        ]
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"the gateway exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{self.base_url}/ready", timeout=2).status_code == 200:
                    return self
            time.sleep(0.2)
        self.kill()
        raise RuntimeError(f"the gateway did not become ready in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 60.0) -> int:
        """SIGTERM (graceful shutdown) and wait; returns the exit code.

        uvicorn re-raises the signal after a clean shutdown, so death by that SIGTERM counts as 0.
        """
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        code = int(self.process.returncode)
        return 0 if code == -signal.SIGTERM else code

    def kill(self) -> None:
        """SIGKILL: a crash, no shutdown code runs."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()

    def log_tail(self, chars: int = 4000) -> str:
        """End of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def client(self, key: str | None = API_KEY, timeout: float = 120.0) -> httpx.Client:
        """An HTTP client sending ``key`` as a bearer token."""
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        return httpx.Client(base_url=self.base_url, headers=headers, timeout=timeout)

    def admin(self) -> httpx.Client:
        """An HTTP client with the admin key."""
        return self.client(self.admin_key)

    def openai(self, key: str = API_KEY) -> Any:
        """The official OpenAI client pointed at this server."""
        import openai

        return openai.OpenAI(base_url=f"{self.base_url}/v1", api_key=key, max_retries=0, timeout=120)


def wait_for_job(admin: httpx.Client, job_id: str, states: Sequence[str], timeout: float = 300.0) -> dict[str, Any]:
    """Poll a job until it reaches one of ``states``; raises on a bad answer or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: dict[str, Any] = {}
    while time.monotonic() < deadline:
        response = admin.get(f"/admin/jobs/{job_id}")
        if response.status_code != 200:
            raise RuntimeError(f"GET /admin/jobs/{job_id} answered {response.status_code}: {response.text}")
        last = response.json()
        if not 0.0 <= last["progress"] <= 1.0:
            raise ValueError(f"job {job_id} reports progress {last['progress']} outside [0, 1]")
        if last["state"] in states:
            return last
        time.sleep(0.25)
    raise TimeoutError(f"job {job_id} did not reach {states} in {timeout} s: {last}")


PACKAGE_FOLDERS = ("classifier", "runtime", "training", "service", "benchmarks")


def copy_tracked(repo: Path, dest: Path) -> Path:
    """The files git tracks in ``repo``, copied to ``dest`` (returned)."""
    tracked = subprocess.run(["git", "ls-files"], cwd=repo, check=True, capture_output=True, text=True).stdout
    for name in tracked.splitlines():
        source = repo / name
        if source.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, dest / name)
    return dest


def package_shim(source: Path, work: Path) -> Path:
    """A folder holding a ``lethe`` package made of checkout ``source``'s folders (links): put it first on
    ``PYTHONPATH`` and processes import that checkout's code instead of the installed one."""
    package = work / "shim" / "lethe"
    package.mkdir(parents=True)
    for entry in (source / "lethe").iterdir():
        (package / entry.name).symlink_to(entry)
    for name in PACKAGE_FOLDERS:
        (package / name).symlink_to(source / name)
    return package.parent
