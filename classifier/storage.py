"""Atomic folder writes: build the folder under a temporary name, then swap it into place."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json(path: Path, data: Any) -> None:
    """Write JSON and flush it to disk."""
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle, ensure_ascii=False, separators=(",", ":"))
        handle.flush()
        os.fsync(handle.fileno())


def write_tensors(path: Path, tensors: dict[str, np.ndarray]) -> None:
    """Write contiguous numpy arrays as safetensors."""
    save_file({k: np.ascontiguousarray(v) for k, v in tensors.items()}, str(path))


def atomic_folder(folder: Path, fill: Callable[[Path], None]) -> None:
    """Create ``folder`` with the files ``fill`` writes into a temporary sibling, then swap it in.

    On any error the temporary folder is removed and an existing ``folder`` is left untouched.
    """
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tag = uuid.uuid4().hex[:12]
    staging = folder.parent / f".{folder.name}.tmp-{tag}"
    backup = folder.parent / f".{folder.name}.old-{tag}"
    staging.mkdir()
    try:
        fill(staging)
        _fsync_dir(staging)
        if folder.exists():
            os.replace(folder, backup)
            try:
                os.replace(staging, folder)
            except BaseException:
                os.replace(backup, folder)
                raise
            shutil.rmtree(backup, ignore_errors=True)
        else:
            os.replace(staging, folder)
        _fsync_dir(folder.parent)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
