"""Where verification reports keep their state: ``<registry>/reports/<forget set id>/``.

- ``events.jsonl``: which admin key registered, enabled, disabled or re-verified the forget set, and when
  (a key id, never the key);
- ``figures.json``: the latest re-run's figures (``POST /admin/forget-sets/{id}/report``), with the artifact
  version they measured;
- ``report.json`` and ``report.html``: the last report served, as signed.

A job's own figures live in the artifact's manifest (``metrics.verification``), so they travel with it.
With a PostgreSQL registry this folder is the process's own (``state_dir``): events and re-runs are
those this replica saw.
"""

from __future__ import annotations

import json
import os
import tempfile
import threading
from pathlib import Path
from typing import Any

from lethe.runtime.artifact import utc_now, validate_id

REPORTS_DIR = "reports"


class ReportStore:
    """Report files of every forget set under one folder."""

    def __init__(self, root: Path):
        self.root = Path(root) / REPORTS_DIR
        self._lock = threading.Lock()

    def folder(self, forget_set_id: str) -> Path:
        """One forget set's folder (not created)."""
        return self.root / validate_id(forget_set_id)

    def note(self, forget_set_id: str, event: str, by_key: str) -> None:
        """Record that ``by_key`` did ``event`` to a forget set now."""
        folder = self.folder(forget_set_id)
        line = json.dumps({"event": event, "at": utc_now(), "by_key": by_key}, sort_keys=True)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            with open(folder / "events.jsonl", "a", encoding="utf-8") as out:
                out.write(line + "\n")

    def events(self, forget_set_id: str) -> list[dict[str, Any]]:
        """The recorded events, oldest first."""
        path = self.folder(forget_set_id) / "events.jsonl"
        if not path.is_file():
            return []
        return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]

    def save_figures(self, forget_set_id: str, payload: dict[str, Any]) -> None:
        """Keep a re-run's figures (replacing the previous re-run's)."""
        self._write(self.folder(forget_set_id) / "figures.json", json.dumps(payload, sort_keys=True).encode())

    def load_figures(self, forget_set_id: str) -> dict[str, Any] | None:
        """The latest re-run's figures, if any."""
        path = self.folder(forget_set_id) / "figures.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def save_report(self, forget_set_id: str, report: dict[str, Any], html: bytes | None = None) -> None:
        """Keep the last signed report served (JSON, and the page when one was rendered)."""
        folder = self.folder(forget_set_id)
        self._write(folder / "report.json", json.dumps(report, indent=1, ensure_ascii=False).encode())
        if html is not None:
            self._write(folder / "report.html", html)

    def _write(self, path: Path, data: bytes) -> None:
        """Write a file atomically (a reader never sees half of it)."""
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd, temporary = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
            try:
                with os.fdopen(fd, "wb") as out:
                    out.write(data)
                os.replace(temporary, path)
            except BaseException:
                Path(temporary).unlink(missing_ok=True)
                raise
