"""Artifacts as stored in the shared registry: archives named by their SHA-256, cached in each process by that name.

``pack`` writes an artifact as the archive ``POST /admin/forget-sets/import`` reads
(``service.artifact_archive``). ``ArtifactCache`` unpacks an archive the first time its hash is
needed, with the same safe unpacking as an upload, into ``<folder>/<sha256>/`` (via a scratch
folder renamed into place, so a cached folder is always whole); later loads of the same hash read
the folder. Archives are checked against their hash before they are unpacked.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterable
from pathlib import Path

from lethe.runtime.artifact import ForgetSetArtifact
from lethe.service.artifact_archive import pack_artifact, unpack_archive
from lethe.service.registry import remove_folder

SHA256_NAME = re.compile(r"^[0-9a-f]{64}$")
SCRATCH_PREFIX = ".fetch-"


def pack(artifact: ForgetSetArtifact) -> tuple[bytes, str]:
    """The artifact as a ``.tar.gz`` archive and the archive's hex SHA-256."""
    with tempfile.TemporaryDirectory(prefix="lethe-pack-") as scratch:
        data = pack_artifact(artifact.save(Path(scratch) / artifact.id))
    return data, hashlib.sha256(data).hexdigest()


class ArtifactCache:
    """Unpacked artifacts by archive hash under ``folder``."""

    def __init__(self, folder: Path, max_unpacked: int):
        self.folder = Path(folder)
        self.folder.mkdir(parents=True, exist_ok=True)
        self.max_unpacked = max_unpacked

    def path(self, sha256: str) -> Path:
        """Where the artifact of this hash is (or would be) cached."""
        if not SHA256_NAME.match(sha256):
            raise ValueError("not a SHA-256 hex digest")
        return self.folder / sha256

    def get(self, sha256: str, fetch: Callable[[], bytes]) -> Path:
        """The cached folder of ``sha256``, unpacking ``fetch()``'s archive first if it is not cached yet."""
        target = self.path(sha256)
        if target.is_dir():
            return target
        data = fetch()
        if hashlib.sha256(data).hexdigest() != sha256:
            raise ValueError(f"the registry's archive {sha256[:12]} does not match its hash")
        scratch = Path(tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=self.folder))
        try:
            unpacked = unpack_archive(data, scratch / "unpacked", self.max_unpacked)
            try:
                os.replace(unpacked, target)
            except OSError:
                if not target.is_dir():  # another thread or process of this folder cached it first otherwise
                    raise
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        return target

    def collect(self, keep: Iterable[str]) -> list[str]:
        """Remove cached folders whose hash is not in ``keep`` and leftover scratch; returns their names."""
        wanted = set(keep)
        removed = []
        for entry in self.folder.iterdir():
            if entry.name not in wanted:
                remove_folder(entry)
                removed.append(entry.name)
        return removed
