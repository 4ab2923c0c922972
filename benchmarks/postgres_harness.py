"""A throwaway PostgreSQL server for tests and benchmarks of the shared registry.

Debian's ``postgresql`` package (``scripts/install_postgres.sh`` installs it) provides
``initdb`` and ``postgres``. The server refuses to run as root, so as root it runs as the
``postgres`` user. Each ``PostgresServer`` has its own data folder under the system's temporary
folder, listens on a free loopback port with trust authentication (loopback only, for tests),
and can be stopped and started again on the same data and port (an outage).
"""

from __future__ import annotations

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from lethe.benchmarks.server_harness import free_port

SUPERUSER = "lethe"
SERVICE_USER = "postgres"


def postgres_bin() -> Path | None:
    """The folder holding ``initdb`` and ``postgres`` (newest Debian version first, then ``PATH``)."""
    candidates = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"), key=lambda p: int(Path(p).parts[-3]))
    if candidates:
        return Path(candidates[-1]).parent
    found = shutil.which("initdb")
    return Path(found).parent if found else None


def unavailable_reason() -> str | None:
    """Why no test server can be started here, or ``None`` if one can."""
    if postgres_bin() is None:
        return "PostgreSQL is not installed (scripts/install_postgres.sh installs Debian's postgresql package)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam(SERVICE_USER)
        except KeyError:
            return f"running as root without a '{SERVICE_USER}' user to run PostgreSQL as"
    try:
        import psycopg  # noqa: F401
    except ImportError:
        return "psycopg is not installed"
    return None


class PostgresServer:
    """A ``postgres`` process on 127.0.0.1 with its own data folder."""

    def __init__(self) -> None:
        bindir = postgres_bin()
        if bindir is None:
            raise RuntimeError(unavailable_reason() or "PostgreSQL is not installed")
        self.bindir = bindir
        self.folder = Path(tempfile.mkdtemp(prefix="lethe-pg-"))
        self.data = self.folder / "data"
        self.log_path = self.folder / "postgres.log"
        self.port = free_port()
        self.process: subprocess.Popen[bytes] | None = None
        self._user: str | None = None
        if os.geteuid() == 0:
            self._user = SERVICE_USER
            shutil.chown(self.folder, SERVICE_USER)
        self._run([str(bindir / "initdb"), "-D", str(self.data), "-U", SUPERUSER, "--auth=trust", "-E", "UTF8",
                   "--no-sync", "--no-instructions"])  # fmt: skip

    def _run(self, command: list[str]) -> None:
        result = subprocess.run(command, user=self._user, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]} failed: {result.stderr.decode(errors='replace')[-2000:]}")

    def url(self, database: str = "postgres") -> str:
        """A connection URL for ``database``."""
        return f"postgresql://{SUPERUSER}@127.0.0.1:{self.port}/{database}"

    def start(self, timeout: float = 60.0) -> PostgresServer:
        """Start the server (again, after ``stop``) and wait until it accepts connections."""
        import psycopg

        command = [
            str(self.bindir / "postgres"), "-D", str(self.data), "-p", str(self.port), "-k", str(self.folder),
            "-c", "listen_addresses=127.0.0.1", "-c", "max_connections=300",
            # Test data: durability is not the point, speed is.
            "-c", "fsync=off", "-c", "synchronous_commit=off", "-c", "full_page_writes=off",
        ]  # fmt: skip
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child process
        self.process = subprocess.Popen(command, user=self._user, stdout=log, stderr=subprocess.STDOUT)
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"postgres exited with {self.process.returncode}:\n{self.log_tail()}")
            with contextlib.suppress(psycopg.OperationalError):
                psycopg.connect(self.url(), connect_timeout=2).close()
                return self
            time.sleep(0.1)
        raise RuntimeError(f"postgres did not accept connections in {timeout}s:\n{self.log_tail()}")

    def stop(self, timeout: float = 30.0) -> None:
        """Fast shutdown (SIGINT): clients are disconnected, the data stays."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(2)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def create_database(self, prefix: str = "lethe") -> str:
        """A new empty database; its URL."""
        import psycopg

        name = f"{prefix}_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return self.url(name)

    def query(self, url: str, sql: str, params: Any = ()) -> list[tuple[Any, ...]]:
        """Rows of one statement against ``url`` (for checks from outside Lethe)."""
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            cursor = conn.execute(sql, params)
            return cursor.fetchall() if cursor.description else []

    def log_tail(self, chars: int = 3000) -> str:
        """End of the server's log."""
        return self.log_path.read_text(errors="replace")[-chars:] if self.log_path.exists() else ""

    def close(self) -> None:
        """Stop the server and delete its data."""
        self.stop()
        shutil.rmtree(self.folder, ignore_errors=True)
