"""The operator console at ``/admin/ui``: static files shipped in the package, and ``POST /admin/try``.

The page itself holds nothing private, so it loads without a key (a browser cannot send a header when it
navigates); it asks for the admin key, keeps it in the tab's ``sessionStorage`` and calls the admin API
with it, as any client would. ``POST /admin/try`` (admin key) answers one prompt greedily through the live
forget sets and on the bare model, for the console's "try a prompt" box.
"""

from __future__ import annotations

from functools import lru_cache
from html import escape
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import Response
from pydantic import BaseModel, Field
from starlette.concurrency import run_in_threadpool

from lethe.service.errors import APIError, bad_request, not_found
from lethe.service.gateway import gateway_of
from lethe.service.protocol import StrictModel
from lethe.service.request_rules import parse_body

CONSOLE_DIR = Path(__file__).parent / "console"
CONSOLE_PATH = "/admin/ui"
ASSETS = {"console.js": "text/javascript; charset=utf-8", "console.css": "text/css; charset=utf-8"}
# Scripts and styles from this server only; reports are shown in a sandboxed frame (their styles are inline).
CONSOLE_POLICY = (
    "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; connect-src 'self'; "
    "img-src 'self' data:; frame-src 'self'; form-action 'none'; base-uri 'none'; frame-ancestors 'none'"
)
HEADERS = {"Content-Security-Policy": CONSOLE_POLICY, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
router = APIRouter()


@lru_cache(maxsize=1)
def console_page() -> bytes:
    """``index.html`` with the registered training methods filled in."""
    from lethe.training.methods import DEFAULT_METHOD, METHOD_NAMES

    options = "".join(
        f'<option value="{escape(m)}"{" selected" if m == DEFAULT_METHOD else ""}>{escape(m)}</option>'
        for m in METHOD_NAMES
    )
    return (CONSOLE_DIR / "index.html").read_text(encoding="utf-8").replace("{{METHOD_OPTIONS}}", options).encode()


@router.get(CONSOLE_PATH, include_in_schema=False)
async def console() -> Response:
    """The console page (no key needed to load it; every call it makes needs the admin key)."""
    return Response(console_page(), media_type="text/html; charset=utf-8", headers=HEADERS)


@router.get(CONSOLE_PATH + "/{name}", include_in_schema=False)
async def console_asset(name: str) -> Response:
    """The console's script and style sheet."""
    if name not in ASSETS:
        raise not_found("No such console file.", "name")
    return Response((CONSOLE_DIR / name).read_bytes(), media_type=ASSETS[name], headers=HEADERS)


class TryRequest(StrictModel):
    """``POST /admin/try``: one user prompt."""

    prompt: str = Field(min_length=1, max_length=8000)
    max_tokens: int = Field(default=48, ge=1, le=256)


class TryResponse(BaseModel):
    """``POST /admin/try``: the forget sets that flag the prompt, and the two greedy answers."""

    flagged_by: list[str]
    with_forget_sets: str
    without_forget_sets: str


@router.post("/admin/try")
async def try_prompt(request: Request) -> dict[str, Any]:
    """Greedy answers to one prompt through the live forget sets and on the bare model, with the flagging sets."""
    from lethe.training.data import TrainingDataError
    from lethe.training.metrics import answer_conversations
    from lethe.training.verification import check_fits

    gateway = gateway_of(request)
    gateway.keys.check_admin(request)
    body = parse_body(await request.body(), TryRequest)
    model = gateway.backend.local_model()
    if model is None:
        raise APIError(501, "Trying a prompt needs a local model; this gateway has none.", code="try_unavailable")
    conversation = [[{"role": "user", "content": body.prompt}]]
    try:
        await run_in_threadpool(check_fits, model, conversation, body.max_tokens)
    except TrainingDataError:
        raise bad_request("The prompt plus 'max_tokens' exceeds the model's context.", "prompt",
                          "context_length_exceeded") from None  # fmt: skip
    flags = [flag.forget_set_id for flag in gateway.screen.classify(conversation[0])]
    with_sets = await run_in_threadpool(answer_conversations, model, conversation, gateway.screen, body.max_tokens)
    bare = await run_in_threadpool(answer_conversations, model, conversation, None, body.max_tokens)
    return {"flagged_by": flags, "with_forget_sets": with_sets[0][0], "without_forget_sets": bare[0][0]}
