"""Helpers the tests share (no tests here): OpenAI error checks; the server harness is shipped code."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]


def assert_openai_error(response: httpx.Response, status: int, param: str | None = "<any>") -> dict[str, Any]:
    """The response has ``status`` and an OpenAI error body (optionally naming ``param``)."""
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"]
    if param != "<any>":
        assert error["param"] == param, error
    return error
