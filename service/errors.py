"""OpenAI-shaped errors: ``{"error": {"message", "type", "param", "code"}}`` for every failure.

Messages never quote request content: they name the parameter and the rule it broke.
"""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from pydantic import ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from lethe.service.protocol import ErrorInfo, ErrorResponse

logger = logging.getLogger("lethe.service")

INVALID_REQUEST = "invalid_request_error"
AUTHENTICATION = "authentication_error"
PERMISSION = "permission_error"
NOT_FOUND = "not_found_error"
CONFLICT = "conflict_error"
SERVER = "server_error"
OVERLOADED = "overloaded_error"


class APIError(Exception):
    """An error the client sees as an OpenAI error body with ``status``."""

    def __init__(
        self,
        status: int,
        message: str,
        type: str = INVALID_REQUEST,
        param: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.param = param
        self.code = code
        self.headers = headers

    def body(self) -> ErrorResponse:
        """The body of this error."""
        return error_body(self.message, self.type, self.param, self.code)

    def response(self) -> Response:
        """This error as a JSON response."""
        return Response(
            self.body().json_bytes(), status_code=self.status, headers=self.headers, media_type="application/json"
        )


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> ErrorResponse:
    """``{"error": {...}}`` as OpenAI writes it."""
    return ErrorResponse(error=ErrorInfo(message=message, type=type, param=param, code=code))


def bad_request(message: str, param: str | None = None, code: str | None = None) -> APIError:
    """A 400 ``invalid_request_error``."""
    return APIError(400, message, INVALID_REQUEST, param, code)


def not_found(message: str, param: str | None = None, code: str = "not_found") -> APIError:
    """A 404."""
    return APIError(404, message, NOT_FOUND if code == "not_found" else INVALID_REQUEST, param, code)


def unsupported(param: str, detail: str | None = None) -> APIError:
    """A 400 naming an OpenAI parameter (or value) this server does not implement (``param`` is always ours)."""
    message = f"Unsupported parameter: '{param}'" + (f" ({detail})" if detail else "") + " is not supported here."
    return APIError(400, message, INVALID_REQUEST, param, "unsupported_parameter")


def _location(loc: tuple[Any, ...]) -> tuple[str, bool]:
    """``loc`` as ``messages[0].content``, cut before the first part that is not a name this server knows;
    and whether all of ``loc`` was kept.

    A dict's keys (``logit_bias``, ``options``, rows of a forget set) and unknown keys are the
    client's strings: they never appear in an error.
    """
    parts: list[str] = []
    names = known_parameter_names()
    for item in loc:
        if isinstance(item, int):
            parts.append(f"[{item}]")
        elif isinstance(item, str) and item in names:
            parts.append(("." if parts else "") + item)
        else:
            return "".join(parts), False
    return "".join(parts), True


# Parameters of OpenAI's and vLLM's APIs this server knows by name but does not take: an error may name them.
KNOWN_FOREIGN_PARAMETERS = frozenset(
    {
        "top_k", "min_p", "repetition_penalty", "length_penalty", "min_tokens", "ignore_eos", "use_beam_search",
        "chat_template", "chat_template_kwargs", "documents", "add_generation_prompt", "continue_final_message",
        "guided_json", "guided_regex", "guided_choice", "guided_grammar", "structured_outputs", "prompt_logprobs",
        "skip_special_tokens", "spaces_between_special_tokens", "include_stop_str_in_output", "truncate_prompt_tokens",
        "bad_words", "allowed_token_ids", "stop_token_ids", "return_tokens_as_token_ids", "priority", "request_id",
        "modalities", "audio", "prediction", "reasoning_effort", "service_tier", "store", "metadata",
        "web_search_options", "verbosity", "prompt_cache_key", "safety_identifier", "image_url", "tool_calls",
    }
)  # fmt: skip


def known_parameter_names() -> frozenset[str]:
    """Every field name of the request models (``service.protocol`` and the admin bodies) and the known foreign
    parameters: the only names an error may repeat."""
    from pydantic import BaseModel

    names: set[str] = set(KNOWN_FOREIGN_PARAMETERS)
    pending: list[type] = [BaseModel]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        if cls.__module__.startswith("lethe.service"):
            names.update(getattr(cls, "model_fields", {}))
    return frozenset(names)


def from_validation_error(exc: ValidationError | RequestValidationError) -> APIError:
    """The first pydantic error as a 400 that names the parameter, without echoing the input."""
    errors = exc.errors()
    if not errors:
        return bad_request("Invalid request body.")
    first = errors[0]
    loc = tuple(x for x in first.get("loc", ()) if x not in ("body",))
    # Union members show up in ``loc`` as type names; keep only the field path.
    loc = tuple(x for x in loc if not (isinstance(x, str) and ("[" in x or x in _TYPE_TAGS)))
    path, complete = _location(loc)
    param = path or None
    kind = first.get("type", "")
    if kind == "extra_forbidden":
        if complete:
            return APIError(400, f"Unsupported parameter: '{param}'.", INVALID_REQUEST, param, "unsupported_parameter")
        # The unknown key is the client's string: say only where it was found.
        where = f"in '{param}'" if param else "at the top level of the body"
        message = f"Unsupported parameter {where}: this server does not know that key."
        return APIError(400, message, INVALID_REQUEST, param, "unsupported_parameter")
    if kind == "missing":
        return APIError(400, f"Missing required parameter: '{param}'.", INVALID_REQUEST, param, "missing_parameter")
    message = str(first.get("msg", "invalid value"))
    where = f"'{param}'" if param else "the request body"
    return APIError(400, f"Invalid value for {where}: {message}.", INVALID_REQUEST, param, "invalid_value")


_TYPE_TAGS = {"str", "int", "float", "bool", "list", "dict", "function-after", "function-before", "function-wrap"}


_STATUS_TYPES = {
    400: (INVALID_REQUEST, None),
    401: (AUTHENTICATION, "invalid_api_key"),
    403: (PERMISSION, "forbidden"),
    404: (NOT_FOUND, "not_found"),
    405: (INVALID_REQUEST, "method_not_allowed"),
    409: (CONFLICT, "conflict"),
    413: (INVALID_REQUEST, "request_too_large"),
    415: (INVALID_REQUEST, "unsupported_media_type"),
    429: (OVERLOADED, "rate_limited"),
    503: (OVERLOADED, "overloaded"),
}


def install_error_handlers(app: FastAPI) -> None:
    """Render every error (ours, routing, validation) as an OpenAI error body; crashes are
    ``service.middleware.ErrorGuardMiddleware``'s."""

    @app.exception_handler(APIError)
    async def _api_error(request: Request, exc: APIError) -> Response:
        return exc.response()

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> Response:
        return from_validation_error(exc).response()

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> Response:
        kind, code = _STATUS_TYPES.get(exc.status_code, (INVALID_REQUEST if exc.status_code < 500 else SERVER, None))
        # Paths are the client's strings: never echoed.
        if exc.status_code == 404:
            message = "Unknown route: no endpoint of this server has that path."
        elif exc.status_code == 405:
            message = "That method is not allowed on this route."
        else:
            message = str(exc.detail)
        return APIError(exc.status_code, message, kind, None, code, dict(exc.headers or {})).response()
