"""How upstream failures look to clients (proxy mode): one named constructor per failure.

- connection refused or reset: ``502 upstream_unavailable``;
- a response cut short, a malformed answer, an upstream that refuses the gateway: ``502 upstream_error``
  (``upstream_stream_cut`` once a stream has begun);
- no connection, no first byte or no next byte within the timeouts: ``504 upstream_timeout``;
- upstream 5xx: ``502 upstream_error`` (an upstream 503 or 429 stays a retryable 503).
"""

from __future__ import annotations

from lethe.service.errors import INVALID_REQUEST, OVERLOADED, SERVER, APIError


class UpstreamError(APIError):
    """The upstream could not be reached or answered wrongly (a 502 or 504 for the client)."""


def unavailable() -> UpstreamError:
    """No connection could be made (refused, reset, unresolvable)."""
    return UpstreamError(502, "The upstream model server is unreachable.", SERVER, None, "upstream_unavailable")


def timed_out() -> UpstreamError:
    """No connection, first byte or next byte within the timeouts."""
    return UpstreamError(504, "The upstream model server did not answer in time.", SERVER, None, "upstream_timeout")


def connection_failed() -> UpstreamError:
    """The connection broke before an answer began."""
    return UpstreamError(502, "The connection to the upstream model server failed.", SERVER, None, "upstream_error")


def stream_cut() -> UpstreamError:
    """The answer began, then stopped before its end."""
    return UpstreamError(502, "The upstream model server cut the stream short.", SERVER, None, "upstream_stream_cut")


def malformed(what: str = "answer") -> UpstreamError:
    """The upstream's ``what`` (answer, stream) could not be read."""
    return UpstreamError(502, f"The upstream model server sent a malformed {what}.", SERVER, None, "upstream_error")


def failed_while_generating() -> UpstreamError:
    """The upstream reported an error inside its stream."""
    return UpstreamError(502, "The upstream model server failed while generating.", SERVER, None, "upstream_error")


def capabilities_unknown() -> UpstreamError:
    """Whether the upstream takes prompt embeddings could not be found out yet."""
    message = "The upstream model server's capabilities are unknown; retry shortly."
    return UpstreamError(502, message, SERVER, None, "upstream_error")


def refused_gateway(status: int) -> UpstreamError:
    """The upstream refused the gateway's own credentials or request (401, 403, 404...)."""
    message = f"The upstream model server refused the gateway (HTTP {status})."
    return UpstreamError(502, message, SERVER, None, "upstream_error")


def status_error(status: int) -> APIError:
    """The client-facing error for an upstream 5xx (503 stays a retryable 503)."""
    if status == 503:
        return APIError(
            503,
            "The upstream model server is overloaded; retry shortly.",
            OVERLOADED,
            None,
            "upstream_overloaded",
            {"Retry-After": "1"},
        )
    if status == 504:
        return UpstreamError(504, "The upstream model server timed out.", SERVER, None, "upstream_timeout")
    return UpstreamError(502, f"The upstream model server failed (HTTP {status}).", SERVER, None, "upstream_error")


def rejected(status: int) -> APIError:
    """What the client sees when the upstream refuses the gateway's request for a flagged prompt."""
    if status >= 500 or status == 429:
        return status_error(503 if status == 429 else status)
    if status in (400, 413, 422):
        return APIError(
            400, "The upstream model server rejected the request.", INVALID_REQUEST, None, "upstream_rejected"
        )
    return refused_gateway(status)
