"""The OpenAPI document with every request and response body, for generated clients and schema fuzzers.

The routes read their bodies as raw bytes (one strict parser, keys checked before a body is read),
so FastAPI cannot see them; this module declares them: each operation's request body is the
pydantic model the route validates against, its answers the models it writes, every error
OpenAI's error body. The served model's names and the server's limits go into the document
(``model`` is an enum of them, ``max_tokens`` has the server's maximum), so a fuzzer's valid bodies
reach generation and its invalid ones are known to be invalid.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi
from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from lethe.service import admin_protocol as admin
from lethe.service import console_routes as console
from lethe.service import protocol as wire
from lethe.service import verification_report as reports

JSON = "application/json"
REF = "#/components/schemas/{model}"

# (method, path) -> request body model; the import route takes an archive's bytes instead.
REQUESTS: dict[tuple[str, str], type[BaseModel]] = {
    ("post", "/v1/chat/completions"): wire.ChatCompletionRequest,
    ("post", "/v1/completions"): wire.CompletionRequest,
    ("post", "/tokenize"): wire.TokenizeRequest,
    ("post", "/detokenize"): wire.DetokenizeRequest,
    ("post", "/admin/forget-sets"): admin.ForgetSetCreate,
    ("patch", "/admin/forget-sets/{forget_set_id}"): admin.ForgetSetPatch,
    ("post", "/admin/classify"): admin.ClassifyRequest,
    ("post", "/admin/forget-sets/{forget_set_id}/report"): reports.ReportRun,
    ("post", "/admin/try"): console.TryRequest,
}
# (method, path) -> (success status, response model, also streamed as server-sent events)
RESPONSES: dict[tuple[str, str], tuple[str, type[BaseModel], bool]] = {
    ("post", "/v1/chat/completions"): ("200", wire.ChatCompletionResponse, True),
    ("post", "/v1/completions"): ("200", wire.CompletionResponse, True),
    ("get", "/v1/models"): ("200", wire.ModelList, False),
    ("get", "/v1/models/{model_id}"): ("200", wire.ModelCard, False),
    ("post", "/tokenize"): ("200", wire.TokenizeResponse, False),
    ("post", "/detokenize"): ("200", wire.DetokenizeResponse, False),
    ("get", "/tokenizer_info"): ("200", wire.TokenizerInfoResponse, False),
    ("post", "/admin/forget-sets"): ("202", admin.ForgetSetCreated, False),
    ("get", "/admin/forget-sets"): ("200", admin.ForgetSetList, False),
    ("post", "/admin/forget-sets/import"): ("201", admin.ForgetSetView, False),
    ("get", "/admin/forget-sets/{forget_set_id}"): ("200", admin.ForgetSetView, False),
    ("patch", "/admin/forget-sets/{forget_set_id}"): ("200", admin.ForgetSetView, False),
    ("delete", "/admin/forget-sets/{forget_set_id}"): ("200", admin.ForgetSetDeleted, False),
    ("get", "/admin/jobs"): ("200", admin.JobList, False),
    ("get", "/admin/jobs/{job_id}"): ("200", admin.JobView, False),
    ("post", "/admin/jobs/{job_id}/cancel"): ("200", admin.JobView, False),
    ("post", "/admin/classify"): ("200", admin.ClassifyResponse, False),
    ("get", "/admin/forget-sets/{forget_set_id}/report"): ("200", reports.VerificationReport, False),
    ("post", "/admin/forget-sets/{forget_set_id}/report"): ("200", reports.VerificationReport, False),
    ("post", "/admin/try"): ("200", console.TryResponse, False),
}
ARCHIVE_UPLOADS = {("post", "/admin/forget-sets/import")}


def install_openapi(app: FastAPI, model_names: Sequence[str], max_new_tokens: int) -> None:
    """Make ``app.openapi()`` return the document with every body declared (built once, on first use)."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            document = get_openapi(title=app.title, version=app.version, description=app.description, routes=app.routes)
            app.openapi_schema = complete(document, model_names, max_new_tokens)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]


def complete(document: dict[str, Any], model_names: Sequence[str], max_new_tokens: int) -> dict[str, Any]:
    """``document`` with request bodies, response bodies, error bodies and bearer security on every operation."""
    models = [(m, "validation") for m in REQUESTS.values()]
    models += [(m, "serialization") for _, m, _ in RESPONSES.values()]
    models.append((wire.ErrorResponse, "serialization"))
    keys, definitions = models_json_schema(list(dict.fromkeys(models)), ref_template=REF)
    schemas = document.setdefault("components", {}).setdefault("schemas", {})
    schemas.update(definitions.get("$defs", {}))
    _limit_requests(schemas, model_names, max_new_tokens)
    document["components"]["securitySchemes"] = {"bearer": {"type": "http", "scheme": "bearer"}}
    error = {"description": "An error in OpenAI's format", "content": {JSON: {"schema": _ref(wire.ErrorResponse)}}}
    for path, item in document.get("paths", {}).items():
        for method, operation in item.items():
            key = (method, path)
            if key in REQUESTS:
                schema = keys[(REQUESTS[key], "validation")]
                operation["requestBody"] = {"required": True, "content": {JSON: {"schema": schema}}}
            elif key in ARCHIVE_UPLOADS:
                binary = {"schema": {"type": "string", "format": "binary"}}
                content = {"application/gzip": binary, "application/zip": binary}
                operation["requestBody"] = {"required": True, "content": content}
            if key in RESPONSES:
                status, model, streamed = RESPONSES[key]
                content = {JSON: {"schema": keys[(model, "serialization")]}}
                if streamed:
                    content["text/event-stream"] = {"schema": {"type": "string"}}
                operation["responses"] = {status: {"description": "Success", "content": content}}
            operation.setdefault("responses", {})["default"] = error
            operation["responses"].pop("422", None)  # FastAPI's validation shape: never answered here
            if path.startswith(("/v1", "/admin", "/metrics", "/tokeni", "/detokeni")):
                operation["security"] = [{"bearer": []}]
    schemas.pop("HTTPValidationError", None)
    schemas.pop("ValidationError", None)
    return document


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": REF.format(model=model.__name__)}


def _limit_requests(schemas: dict[str, Any], model_names: Sequence[str], max_new_tokens: int) -> None:
    """The served model's names as ``model``'s values and the server's ``max_tokens`` limit."""
    for name in ("ChatCompletionRequest", "CompletionRequest", "TokenizeRequest", "DetokenizeRequest"):
        properties = schemas.get(name, {}).get("properties", {})
        if "model" in properties:
            properties["model"] = {**_without_type(properties["model"]), "enum": list(model_names)}
        for field in ("max_tokens", "max_completion_tokens"):
            if field in properties:
                properties[field] = _capped(properties[field], max_new_tokens)


def _without_type(schema: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in schema.items() if k not in ("type", "anyOf")}


def _capped(schema: dict[str, Any], maximum: int) -> dict[str, Any]:
    """An integer (or nullable integer) schema with ``maximum``."""
    if "anyOf" in schema:
        return {**schema, "anyOf": [_capped(s, maximum) for s in schema["anyOf"]]}
    if schema.get("type") == "integer":
        return {**schema, "maximum": maximum}
    return schema
