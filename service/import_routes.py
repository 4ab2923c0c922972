"""``POST /admin/forget-sets/import``: register a forget set trained elsewhere, from an artifact archive.

The body is the archive itself (``.tar.gz`` or ``.zip``, see ``service.artifact_archive``). It is
unpacked into a scratch folder, loaded and validated like any artifact (JSON and safetensors
only, and bound to this server's embedding matrix by its fingerprint), then written into the
registry and switched on in one step. Any failure is an OpenAI error and leaves the registry as
it was. Works in local and proxy mode alike.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lethe.runtime.artifact import ArtifactError, FingerprintMismatchError, ForgetSetArtifact
from lethe.service.artifact_archive import ArchiveError, unpack_archive
from lethe.service.errors import CONFLICT, INVALID_REQUEST, APIError, bad_request
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.registry import remove_folder

IMPORT_PATH = "/admin/forget-sets/import"
router = APIRouter()


@router.post(IMPORT_PATH, status_code=201, response_model=None)
async def import_forget_set(request: Request) -> JSONResponse:
    """Import an artifact archive: ``201`` with the forget set, live at once."""
    gateway = gateway_of(request)
    gateway.keys.check_admin(request)
    data = await request.body()
    limit = gateway.settings.max_import_bytes
    if len(data) > limit:
        raise APIError(
            413, f"The archive is larger than the limit of {limit} bytes.", INVALID_REQUEST, None, "request_too_large"
        )
    if not data:
        raise bad_request("The request body must be an artifact archive (.tar.gz or .zip).", None, "invalid_archive")
    view = await run_in_threadpool(import_archive, gateway, data)
    return JSONResponse(view, status_code=201)


def import_archive(gateway: Gateway, data: bytes) -> dict[str, Any]:
    """Unpack, validate and register an archive; returns the forget set's view."""
    manager = gateway.forget_sets
    registry = manager.registry
    scratch = Path(tempfile.mkdtemp(prefix=".import-", dir=registry.root))
    try:
        try:
            folder = unpack_archive(data, scratch / "unpacked", gateway.settings.max_import_unpacked_bytes)
            artifact = ForgetSetArtifact.load(folder, manager.embedder.fingerprint, manager.embedder.hidden_size)
        except FingerprintMismatchError as exc:
            message = f"The forget set does not fit the served model: {exc}"
            raise bad_request(message, None, "fingerprint_mismatch") from None
        except ArchiveError as exc:
            raise bad_request(f"Invalid artifact archive: {exc}", None, "invalid_archive") from None
        except (ArtifactError, OSError, ValueError, KeyError) as exc:
            message = f"Invalid forget-set artifact: {_short(exc, scratch)}"
            raise bad_request(message, None, "invalid_artifact") from None
        if registry.get_forget_set(artifact.id) is not None:
            raise APIError(
                409,
                f"A forget set with id '{artifact.id}' is already registered.",
                CONFLICT,
                None,
                "already_registered",
            )
        try:
            record = manager.import_artifact(artifact, "import")
        except BaseException:
            if registry.get_forget_set(artifact.id) is None:
                remove_folder(registry.artifact_dir(artifact.id))
            raise
        return manager.view(record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _short(exc: BaseException, scratch: Path) -> str:
    """The error without the server's scratch path."""
    return str(exc).replace(str(scratch / "unpacked"), "<archive>").replace(str(scratch), "<archive>")[:300]
