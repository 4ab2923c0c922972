"""``POST /admin/forget-sets/import``: register a forget set trained elsewhere, from an artifact archive.

The body is the archive itself (``.tar.gz`` or ``.zip``, see ``service.artifact_archive``). It is
unpacked into a scratch folder, loaded and validated like any artifact (JSON and safetensors
only, and bound to this server's embedding matrix by its fingerprint), then written into the
registry and switched on in one step. Any failure is an OpenAI error and leaves the registry as
it was. Works in local and proxy mode alike.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from starlette.concurrency import run_in_threadpool

from lethe.runtime.artifact import FingerprintMismatchError, ForgetSetArtifact
from lethe.service.artifact_archive import ArchiveError, unpack_archive
from lethe.service.errors import CONFLICT, INVALID_REQUEST, APIError, bad_request
from lethe.service.gateway import Gateway, gateway_of
from lethe.service.registry import remove_folder

IMPORT_PATH = "/admin/forget-sets/import"
INVALID_ARTIFACT = (
    "The archive does not hold a valid forget-set artifact: manifest.json, the classifier's JSON and the "
    "safetensors files must be complete and well formed (see the artifact format in the README)."
)
router = APIRouter()
logger = logging.getLogger("lethe.service")


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
        except FingerprintMismatchError:
            message = "The forget set was made for another model: its embedding fingerprint is not the served model's."
            raise bad_request(message, None, "fingerprint_mismatch") from None
        except ArchiveError as exc:
            raise bad_request(f"Invalid artifact archive: {exc}", None, "invalid_archive") from None
        except Exception as exc:  # whatever malformed JSON or tensors make the loader raise: the upload is at fault
            # The loader's message may quote the archive's content; neither the client nor the log gets it.
            logger.debug("an imported artifact did not load: %s", type(exc).__name__)
            raise bad_request(INVALID_ARTIFACT, None, "invalid_artifact") from None
        if registry.get_forget_set(artifact.id) is not None:
            message = "A forget set with the archive's id is already registered."
            raise APIError(409, message, CONFLICT, None, "already_registered")
        try:
            record = manager.import_artifact(artifact, "import")
        except BaseException:
            if registry.get_forget_set(artifact.id) is None:
                remove_folder(registry.artifact_dir(artifact.id))
            raise
        return manager.view(record)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


