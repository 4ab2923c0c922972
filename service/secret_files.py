"""Server secrets kept in files: made once at random, readable by the owner only."""

from __future__ import annotations

import os
import secrets
from pathlib import Path


def load_or_create_secret(path: Path, nbytes: int = 32) -> bytes:
    """The secret in ``path`` (hex text); at first use, ``nbytes`` random bytes are written there with mode 0600.

    Two processes starting together agree: the file is created exclusively and the loser reads the winner's.
    """
    path = Path(path)
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:
            pass
        else:
            with os.fdopen(fd, "w") as out:
                out.write(secrets.token_hex(nbytes) + "\n")
    return bytes.fromhex(path.read_text().strip())
