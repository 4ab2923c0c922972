"""Bearer-key checks for the inference and admin routes, in constant time.

- No key configured at all: open mode (the CLI then binds to loopback only).
- Inference keys configured: ``/v1`` needs one of them.
- Admin routes need the admin key; with inference keys but no admin key, they are disabled.
A valid key of the other kind is a 403, an unknown or missing key a 401.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

from lethe.service.errors import AUTHENTICATION, PERMISSION, APIError

KeyKind = Literal["inference", "admin"]
# Routes of the inference key besides ``/v1``: vLLM's tokenizer endpoints.
INFERENCE_PATHS = ("/tokenize", "/detokenize", "/tokenizer_info")
CONSOLE_PATH = "/admin/ui"  # the operator console's page and files (``service.console_routes``)


class HasHeaders(Protocol):
    """A request, or anything else with its headers (the ASGI layers check keys before a body is read)."""

    @property
    def headers(self) -> Mapping[str, str]: ...


def key_kind(path: str) -> KeyKind | None:
    """Which key a path needs: ``/v1`` and the tokenizer endpoints the inference key, ``/admin`` and ``/metrics``
    the admin key; health, readiness, the OpenAPI document and the console's static files none."""
    if path.startswith("/v1/") or path == "/v1" or path in INFERENCE_PATHS:
        return "inference"
    if path == CONSOLE_PATH or path.startswith(CONSOLE_PATH + "/"):
        return None  # the console's static page holds nothing private; every call it makes carries the admin key
    if path.startswith("/admin/") or path == "/admin" or path == "/metrics":
        return "admin"
    return None


def _matches(candidate: bytes, keys: Sequence[bytes]) -> bool:
    """Whether ``candidate`` equals any key; every key is compared so timing does not tell which."""
    found = False
    for key in keys:
        found |= hmac.compare_digest(candidate, key)
    return found


def bearer_token(request: HasHeaders) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if any."""
    header = request.headers.get("authorization")
    if not header:
        return None
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


@dataclass(frozen=True)
class KeyChecker:
    """Which keys open which routes."""

    api_keys: tuple[bytes, ...]
    admin_key: bytes | None

    @classmethod
    def from_strings(cls, api_keys: Sequence[str], admin_key: str | None) -> KeyChecker:
        """Build from configured strings (empties ignored)."""
        return cls(tuple(k.encode() for k in api_keys if k), admin_key.encode() if admin_key else None)

    @property
    def open_mode(self) -> bool:
        """True when no key is configured at all."""
        return not self.api_keys and self.admin_key is None

    def check(self, kind: KeyKind, request: HasHeaders) -> None:
        """Raise a 401/403 unless the request carries a key of ``kind``."""
        if kind == "admin":
            self.check_admin(request)
        else:
            self.check_inference(request)

    def check_inference(self, request: HasHeaders) -> None:
        """Raise a 401/403 unless the request may call the inference routes."""
        if not self.api_keys:
            return
        token = _token_bytes(request)
        if token is not None and _matches(token, self.api_keys):
            return
        if token is not None and self.admin_key is not None and _matches(token, (self.admin_key,)):
            raise APIError(
                403, "The admin key cannot call inference routes; use an API key.", PERMISSION, code="wrong_key_kind"
            )
        raise _unauthorized(token)

    def check_admin(self, request: HasHeaders) -> None:
        """Raise a 401/403 unless the request may call the admin routes (and ``/metrics``)."""
        if self.open_mode:
            return
        token = _token_bytes(request)
        if self.admin_key is None:
            raise APIError(
                403,
                "The admin API is disabled: no admin key is configured (LETHE_ADMIN_KEY).",
                PERMISSION,
                code="admin_disabled",
            )
        if token is not None and _matches(token, (self.admin_key,)):
            return
        if token is not None and _matches(token, self.api_keys):
            raise APIError(
                403, "An API key cannot call admin routes; use the admin key.", PERMISSION, code="wrong_key_kind"
            )
        raise _unauthorized(token)


def _token_bytes(request: HasHeaders) -> bytes | None:
    token = bearer_token(request)
    return token.encode() if token is not None else None


def _unauthorized(token: bytes | None) -> APIError:
    message = (
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'."
        if token is None
        else "Incorrect API key provided."
    )
    return APIError(401, message, AUTHENTICATION, code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})
