"""The audit log: one JSON line per inference request and admin action.

It records a prompt's keyed hash (HMAC-SHA256 under the server's audit key), never its text,
with the forget sets that flagged it, token counts and latency. A plain hash would let anyone who
reads the log and can guess a prompt confirm it was sent; the key makes that take the key too.
The key is ``LETHE_AUDIT_KEY`` or, by default, a random one the server writes once to
``<registry>/audit.key`` (mode 0600); the operator rotates it by replacing either and restarting.
Each line names the key it was hashed under by ``audit_key_id``. Lines go to a file (appended and
flushed under a lock) and to the ``lethe.audit`` logger.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import logging
import os
import secrets
import threading
from pathlib import Path
from typing import Any

import torch

logger = logging.getLogger("lethe.audit")


AUDIT_KEY_FILE = "audit.key"


class AuditHasher:
    """HMAC-SHA256 of prompts, tensors and bodies under the server's audit key."""

    def __init__(self, key: bytes):
        if len(key) < 16:
            raise ValueError("the audit key must be at least 16 bytes")
        self._key = key
        self.key_id = hmac.new(key, b"lethe-audit-key-id", hashlib.sha256).hexdigest()[:16]

    @classmethod
    def for_registry(cls, root: Path, configured: str = "") -> AuditHasher:
        """The configured key, else ``root/audit.key`` (32 random bytes written at first use, mode 0600)."""
        if configured:
            return cls(configured.encode())
        path = Path(root) / AUDIT_KEY_FILE
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            except FileExistsError:
                pass  # another process wrote it first
            else:
                with os.fdopen(fd, "w") as out:
                    out.write(secrets.token_hex(32) + "\n")
        return cls(bytes.fromhex(path.read_text().strip()))

    def text(self, text: str) -> str:
        """Hex HMAC of a text's UTF-8 bytes (``prompt_hmac``: the rendered prompt's text)."""
        return self.bytes(text.encode("utf-8", "surrogatepass"))

    def tensor(self, tensor: torch.Tensor) -> str:
        """Hex HMAC of an embeddings prompt, its shape and float32 bytes (``embeds_hmac``)."""
        digest = hmac.new(self._key, repr(tuple(tensor.shape)).encode(), hashlib.sha256)
        digest.update(tensor.detach().to(torch.float32).contiguous().numpy().tobytes())
        return digest.hexdigest()

    def bytes(self, raw: bytes) -> str:
        """Hex HMAC of raw bytes (``body_hmac``: a forwarded body as sent)."""
        return hmac.new(self._key, raw, hashlib.sha256).hexdigest()


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
