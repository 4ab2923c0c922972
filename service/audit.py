"""The audit log: one JSON line per inference request and admin action.

It records a prompt's SHA-256, never its text, with the forget sets that flagged it, token
counts and latency. Lines go to a file (appended and flushed under a lock) and to the
``lethe.audit`` logger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import logging
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("lethe.audit")


def sha256_text(text: str) -> str:
    """Hex SHA-256 of a text's UTF-8 bytes (``prompt_sha256``: the rendered prompt's text)."""
    return hashlib.sha256(text.encode("utf-8", "surrogatepass")).hexdigest()


def sha256_tensor(tensor: torch.Tensor) -> str:
    """Hex SHA-256 of an embeddings prompt, its float32 bytes and shape (``embeds_sha256``)."""
    digest = hashlib.sha256(repr(tuple(tensor.shape)).encode())
    digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
    return digest.hexdigest()


class AuditLog:
    """Append-only JSON-lines log."""

    def __init__(self, path: Path | None):
        self.path = path
        self._lock = threading.Lock()
        self._handle = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            self._handle = open(path, "a", encoding="utf-8")  # noqa: SIM115 - kept open for the app's lifetime

    def record(self, event: str, **fields: Any) -> None:
        """Write one entry (``fields`` must hold no prompt text)."""
        entry = {"ts": dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds"), "event": event, **fields}
        line = json.dumps(entry, sort_keys=True, default=str)
        logger.debug(line)
        if self._handle is None:
            return
        with self._lock:
            self._handle.write(line + "\n")
            self._handle.flush()

    def close(self) -> None:
        """Close the file."""
        with self._lock:
            if self._handle is not None:
                self._handle.close()
                self._handle = None
