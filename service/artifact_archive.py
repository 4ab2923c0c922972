"""Forget-set artifact archives (``.tar.gz`` or ``.zip``): packing, and unpacking untrusted uploads safely.

An upload is unpacked member by member into a fresh folder, never with ``extractall``:
- only regular files and folders; links, devices and anything else are refused;
- names are relative, use ``/``, have no ``..``, no empty or hidden parts, and are unique;
- files end in ``.json`` or ``.safetensors`` (nothing pickled can come in);
- sizes are capped per archive (compressed, by the caller) and in total once unpacked, counted
  on the bytes actually written, so a lying header or a compression bomb stops early;
- reading is bounded too: a tar header extension (GNU long name or link, pax records) larger than
  ``MAX_HEADER_BYTES`` is refused before it is read, and sparse members are refused, so a small
  archive cannot make the reader hold a gigabyte-long name in memory;
- zip members whose mode has no file-type bits (what Python's ``ZipFile.writestr`` and many
  writers produce) are regular files; a symlink or device type is refused.

The artifact may sit at the archive's root or in one top-level folder.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO

from lethe.runtime.artifact import MANIFEST

ALLOWED_SUFFIXES = (".json", ".safetensors")
MAX_MEMBERS = 64
MAX_DEPTH = 4
MAX_HEADER_BYTES = 64 * 1024
_CHUNK = 1 << 16
_EXTENSION_TYPES = (
    tarfile.GNUTYPE_LONGNAME, tarfile.GNUTYPE_LONGLINK, tarfile.XHDTYPE, tarfile.XGLTYPE, tarfile.SOLARIS_XHDTYPE
)  # fmt: skip


class ArchiveError(ValueError):
    """The archive is malformed, unsafe or too large."""


@dataclass(frozen=True)
class _Member:
    name: str
    is_dir: bool
    size: int


def pack_artifact(folder: Path, fmt: str = "tar.gz") -> bytes:
    """An archive of an artifact folder, its files under one top-level folder named like it."""
    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.is_file() and not p.is_symlink())
    buffer = io.BytesIO()
    if fmt == "zip":
        with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
            for path in files:
                archive.write(path, f"{folder.name}/{path.relative_to(folder).as_posix()}")
    elif fmt == "tar.gz":
        with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
            for path in files:
                archive.add(path, f"{folder.name}/{path.relative_to(folder).as_posix()}", recursive=False)
    else:
        raise ValueError(f"unknown archive format {fmt!r} (tar.gz or zip)")
    return buffer.getvalue()


def _safe_name(name: str) -> str:
    if not name or "\\" in name or "\x00" in name or name.startswith("/") or (len(name) > 1 and name[1] == ":"):
        raise ArchiveError("an archive member has an absolute or malformed path")
    parts = [p for p in PurePosixPath(name).parts if p != "."]
    if not parts or any(p == ".." or p.startswith(".") for p in parts):
        raise ArchiveError("an archive member has a path outside the artifact (or a hidden name)")
    if len(parts) > MAX_DEPTH:
        raise ArchiveError("an archive member is nested too deep")
    return "/".join(parts)


class _BoundedTarInfo(tarfile.TarInfo):
    """A tar header that refuses, before reading them, oversized header extensions and sparse members."""

    def _proc_member(self, archive: tarfile.TarFile) -> tarfile.TarInfo:  # type: ignore[override]
        if self.type in _EXTENSION_TYPES and self.size > MAX_HEADER_BYTES:
            raise ArchiveError(f"a tar header extension is larger than {MAX_HEADER_BYTES} bytes")
        if self.type == tarfile.GNUTYPE_SPARSE:
            raise ArchiveError("sparse tar members are not accepted")
        return super()._proc_member(archive)  # type: ignore[misc]


def _tar_members(archive: tarfile.TarFile) -> Iterator[tuple[_Member, IO[bytes] | None]]:
    for count, info in enumerate(archive, start=1):
        if count > MAX_MEMBERS:
            raise ArchiveError(f"the archive has more than {MAX_MEMBERS} members")
        if info.isdir():
            yield _Member(info.name, True, 0), None
        elif info.isreg():
            yield _Member(info.name, False, info.size), archive.extractfile(info)
        else:
            raise ArchiveError("the archive holds a link or special file; only regular files are accepted")


def _zip_members(archive: zipfile.ZipFile) -> Iterator[tuple[_Member, IO[bytes] | None]]:
    infos = archive.infolist()
    if len(infos) > MAX_MEMBERS:
        raise ArchiveError(f"the archive has more than {MAX_MEMBERS} members")
    for info in infos:
        kind = stat.S_IFMT(info.external_attr >> 16)
        if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
            raise ArchiveError("the archive holds a link or special file; only regular files are accepted")
        if info.flag_bits & 0x1:
            raise ArchiveError("encrypted archive members are not accepted")
        if info.is_dir():
            yield _Member(info.filename, True, 0), None
        else:
            yield _Member(info.filename, False, info.file_size), archive.open(info)


def unpack_archive(data: bytes, target: Path, max_unpacked: int) -> Path:
    """Unpack an uploaded archive into the empty folder ``target``; returns the artifact folder inside it."""
    target = Path(target)
    try:
        if data[:2] == b"\x1f\x8b":
            with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz", tarinfo=_BoundedTarInfo) as archive:
                _extract(_tar_members(archive), target, max_unpacked)
        elif data[:4] == b"PK\x03\x04":
            with zipfile.ZipFile(io.BytesIO(data)) as archive:
                _extract(_zip_members(archive), target, max_unpacked)
        else:
            raise ArchiveError("the upload is neither a .tar.gz nor a .zip archive")
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, OSError) as exc:
        raise ArchiveError(f"the archive is unreadable ({type(exc).__name__})") from None
    return _artifact_root(target)


def _extract(members: Iterator[tuple[_Member, IO[bytes] | None]], target: Path, max_unpacked: int) -> None:
    total = 0
    seen: set[str] = set()
    for member, handle in members:
        name = _safe_name(member.name)
        if name in seen:
            raise ArchiveError("the archive names a member twice")
        seen.add(name)
        path = target.joinpath(*name.split("/"))
        if member.is_dir:
            path.mkdir(parents=True, exist_ok=True)
            continue
        if not name.endswith(ALLOWED_SUFFIXES):
            raise ArchiveError("the archive may only hold .json and .safetensors files")
        if total + member.size > max_unpacked:
            raise ArchiveError(f"the archive unpacks to more than {max_unpacked} bytes")
        assert handle is not None
        path.parent.mkdir(parents=True, exist_ok=True)
        # O_EXCL|O_NOFOLLOW: never write through anything that was already there.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "wb") as out, handle:
            while chunk := handle.read(_CHUNK):
                total += len(chunk)
                if total > max_unpacked:
                    raise ArchiveError(f"the archive unpacks to more than {max_unpacked} bytes")
                out.write(chunk)


def _artifact_root(target: Path) -> Path:
    if (target / MANIFEST).is_file():
        return target
    entries = list(target.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and (entries[0] / MANIFEST).is_file():
        return entries[0]
    raise ArchiveError(f"the archive holds no {MANIFEST} at its root or in a single top-level folder")
