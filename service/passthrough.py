"""Forwarding unflagged requests to the upstream unchanged.

The client's body goes upstream byte for byte (only the bearer key is swapped for the
upstream's own). The upstream's status, headers and body come back as they are, except that
a 5xx becomes a 502 in OpenAI's error format (a 503 stays a retryable 503). Event streams are
relayed chunk by chunk as they arrive; if the upstream cuts one, the client gets an OpenAI error
event and ``[DONE]`` instead of a silent truncation. A whole (non-streamed) answer must arrive
within ``upstream_timeout_s`` after its headers, else a 504.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping

from starlette.responses import Response, StreamingResponse

from lethe.service import upstream_errors as errors
from lethe.service.errors import APIError
from lethe.service.upstream import HOP_HEADERS, UpstreamClient
from lethe.service.upstream_pool import RawResponse


def forwardable(headers: Mapping[str, str] | list[tuple[str, str]]) -> dict[str, str]:
    """Headers that cross the proxy (hop-by-hop ones, and the client's key, stay on their side)."""
    items = headers.items() if isinstance(headers, Mapping) else headers
    return {k: v for k, v in items if k.lower() not in HOP_HEADERS}


async def forward(upstream: UpstreamClient, path: str, body: bytes, headers: Mapping[str, str]) -> Response:
    """POST ``body`` to the upstream's ``path`` and relay its answer."""
    response = await upstream.pool.post(path, body, forwardable(headers))
    status = response.status
    if status >= 500:
        response.close()
        raise errors.status_error(status)
    # The proxy's own server writes ``date`` and ``server``; the upstream's would be duplicates.
    out_headers = {k: v for k, v in forwardable(response.headers).items() if k.lower() not in ("date", "server")}
    if status == 200 and response.content_type.startswith("text/event-stream"):
        return StreamingResponse(_relay(response), status_code=status, headers=out_headers)
    try:
        async with asyncio.timeout(upstream.timeout_s):
            content = await response.read()
    except TimeoutError:
        response.close()
        raise errors.timed_out() from None
    return Response(content, status_code=status, headers=out_headers)


def _error_event(error: APIError) -> bytes:
    return b"data: " + error.body().json_bytes() + b"\n\ndata: [DONE]\n\n"


async def _relay(response: RawResponse) -> AsyncIterator[bytes]:
    """The upstream's stream as it arrives; a failure mid-way ends it with an error event."""
    tail = b"\n\n"
    try:
        async with contextlib.aclosing(response.chunks()) as chunks:
            async for chunk in chunks:
                if chunk:
                    tail = (tail + chunk)[-2:]
                    yield chunk
    except APIError as error:
        # Close any event the upstream left half-written so the error event parses on its own.
        yield (b"" if tail == b"\n\n" else b"\n\n") + _error_event(error)
    finally:
        response.close()
