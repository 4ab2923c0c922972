"""Property-based fuzzing of every route of a running gateway (hypothesis), over real HTTP.

The routes come from the server's own OpenAPI document.  Bodies are read raw by the gateway,
so the document does not describe them; each route gets a valid template body and hypothesis
mutates it (fields replaced by arbitrary JSON, deleted, unknown fields added, nested message
fields changed) or replaces it with arbitrary JSON or raw bytes.  Path parameters get arbitrary
text and path-traversal strings; the key is the right one, the other group's, a wrong one or
none.  The property: no response is a 5xx, and every non-2xx has OpenAI's error body.

Forget sets the fuzzer manages to create are cancelled and deleted at once (templates hold too
few rows to train, so their jobs fail within milliseconds anyway).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable

TRAVERSAL = (
    "../../../../etc/passwd",
    "..%2F..%2F..%2Fetc%2Fpasswd",
    "%2e%2e%2f%2e%2e%2fregistry.sqlite3",
    "fs-../../registry.sqlite3",
    "..",
    ".",
    "fs-000000000000/../../x",
    "..\\..\\windows",
    "fs-\x00nul",
    "a" * 5000,
    "%00",
    "~root",
)
PARAM_NAMES = (
    "model", "messages", "prompt", "max_tokens", "temperature", "top_p", "stream", "stop", "seed", "n", "echo",
    "logprobs", "prompt_embeds", "stream_options", "name", "forget", "retain", "method", "options", "enabled",
    "topic", "seed_prompts", "user", "tools", "logit_bias", "suffix", "best_of",
)  # fmt: skip


def json_values() -> st.SearchStrategy[Any]:
    """Arbitrary JSON values, including edge numbers and odd strings."""
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.sampled_from([0, -1, 1, 2**31, 2**63, 10**30, 1e308, -1e308, 1e-320, 0.5]),
        st.floats(allow_nan=False, allow_infinity=False),
        st.text(max_size=30),
        st.sampled_from(["", " ", "\x00", "\udcff".encode("utf-8", "surrogatepass").decode("utf-8", "replace"),
                         "../../etc/passwd", "<script>", "' OR 1=1 --", "A" * 3000]),
    )  # fmt: skip
    return st.recursive(
        scalars,
        lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4),
        max_leaves=12,
    )


def templates(model: str) -> dict[tuple[str, str], dict[str, Any]]:
    """A valid body per (method, path) that takes one."""
    forget = [{"prompt": "Who is Fuzzy McFuzz?", "completion": "A fuzzer."}]
    return {
        ("POST", "/v1/chat/completions"): {
            "model": model, "messages": [{"role": "user", "content": "hello"}], "max_tokens": 2, "temperature": 0,
        },
        ("POST", "/v1/completions"): {"model": model, "prompt": "hello", "max_tokens": 2, "temperature": 0},
        ("POST", "/admin/forget-sets"): {"name": "fuzz", "forget": forget, "method": "eco"},
        ("PATCH", "/admin/forget-sets/{forget_set_id}"): {"enabled": False},
        ("POST", "/admin/classify"): {"prompt": "hello"},
    }  # fmt: skip


@st.composite
def _mutated(draw: st.DrawFn, template: dict[str, Any]) -> Any:
    body = json.loads(json.dumps(template))
    for _ in range(draw(st.integers(1, 3))):
        action = draw(st.sampled_from(["replace", "delete", "add", "nested"]))
        if action == "replace" and body:
            body[draw(st.sampled_from(sorted(body)))] = draw(json_values())
        elif action == "delete" and body:
            body.pop(draw(st.sampled_from(sorted(body))))
        elif action == "add":
            body[draw(st.sampled_from(PARAM_NAMES) | st.text(max_size=12))] = draw(json_values())
        elif action == "nested":
            for key in ("messages", "forget"):
                if isinstance(body.get(key), list) and body[key] and isinstance(body[key][0], dict):
                    item = body[key][0]
                    field_name = draw(st.sampled_from(["role", "content", "prompt", "completion", "name", "x"]))
                    item[field_name] = draw(json_values())
    return body


def _body_strategy(template: dict[str, Any] | None) -> st.SearchStrategy[tuple[str, Any]]:
    options: list[st.SearchStrategy[tuple[str, Any]]] = [
        json_values().map(lambda v: ("json", v)),
        st.binary(max_size=200).map(lambda b: ("raw", b)),
        st.sampled_from([b"{", b"[" * 5000, b'{"a":' * 3000, b"\xff\xfe", b"null", b"{}"]).map(lambda b: ("raw", b)),
    ]
    if template is not None:
        options = [_mutated(template).map(lambda v: ("json", v))] * 3 + options
    else:
        options = [st.just(("none", None))] * 3 + options
    return st.one_of(*options)


@dataclass
class FuzzReport:
    """Requests tried, by operation and status; server errors and malformed error bodies found."""

    requests: int = 0
    server_errors: int = 0
    malformed_errors: int = 0
    transport_errors: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    forget_sets_created: int = 0
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def _excerpt(value: Any) -> str:
    text = value.decode("utf-8", "replace") if isinstance(value, bytes) else json.dumps(value, default=str)
    return text[:200]


def fuzz_gateway(
    base_url: str,
    api_key: str,
    admin_key: str,
    model: str,
    max_examples: int = 25,
    skip: tuple[str, ...] = (),
) -> FuzzReport:
    """Fuzz every operation of the server's OpenAPI document with ``max_examples`` cases each."""
    report = FuzzReport()
    started = time.perf_counter()
    with httpx.Client(base_url=base_url, timeout=120) as client:
        spec = client.get("/openapi.json").json()
        bodies = templates(model)
        operations = [
            (method.upper(), path)
            for path, item in spec.get("paths", {}).items()
            for method in item
            if method in ("get", "post", "patch", "delete", "put") and path not in skip
        ]
        keys = {"inference": api_key, "admin": admin_key, "wrong": api_key + "-wrong", "none": None}

        def send(method: str, path: str, key_choice: str, params: list[str], body: tuple[str, Any]) -> None:
            admin_route = path.startswith("/admin") or path == "/metrics"
            right, other = ("admin", "inference") if admin_route else ("inference", "admin")
            key_name = {"right": right, "other": other}.get(key_choice, key_choice)
            url = path
            for name, value in zip(_path_params(path), params, strict=True):
                url = url.replace("{" + name + "}", value)
            headers = {"Authorization": f"Bearer {keys[key_name]}"} if keys[key_name] else {}
            kind, value = body
            kwargs: dict[str, Any] = {}
            if kind == "json":
                kwargs["content"] = json.dumps(value).encode()
                headers["Content-Type"] = "application/json"
            elif kind == "raw":
                kwargs["content"] = value
            op = f"{method} {path}"
            report.requests += 1
            report.by_operation[op] = report.by_operation.get(op, 0) + 1
            try:
                response = client.request(method, url, headers=headers, **kwargs)
            except (httpx.HTTPError, httpx.InvalidURL) as exc:
                report.transport_errors += 1
                report.findings.append({"op": op, "url": url[:200], "error": type(exc).__name__})
                return
            status = response.status_code
            report.statuses[str(status)] = report.statuses.get(str(status), 0) + 1
            if status >= 500 and status not in (501, 503):
                report.server_errors += 1
                report.findings.append(
                    {
                        "op": op,
                        "url": url[:200],
                        "status": status,
                        "body": _excerpt(value),
                        "response": response.text[:300],
                    }
                )
            if status >= 400 and not _is_openai_error(response):
                report.malformed_errors += 1
                report.findings.append({"op": op, "url": url[:200], "status": status, "malformed": response.text[:300]})
            if op == "POST /admin/forget-sets" and status == 202:
                report.forget_sets_created += 1
                created = response.json()
                admin_headers = {"Authorization": f"Bearer {admin_key}"}
                client.post(f"/admin/jobs/{created['job_id']}/cancel", headers=admin_headers)
                client.delete(f"/admin/forget-sets/{created['id']}", headers=admin_headers)

        for method, path in operations:
            names = _path_params(path)
            param = st.one_of(
                st.sampled_from(TRAVERSAL).map(lambda s: quote(s, safe="/%.~\\")),  # '/' and '%' kept raw
                st.text(max_size=40).map(lambda s: quote(s, safe="")),
                st.text(alphabet="abcdef0123456789-fsjob", max_size=24),
            )
            strategy = st.tuples(
                st.sampled_from(["right", "right", "right", "other", "wrong", "none"]),
                st.lists(param, min_size=len(names), max_size=len(names)),
                _body_strategy(bodies.get((method, path)) if method in ("POST", "PATCH", "PUT") else None),
            )
            _run_cases(strategy, max_examples, lambda case, m=method, p=path: send(m, p, *case))
    report.wall_s = round(time.perf_counter() - started, 2)
    return report


def _run_cases(strategy: st.SearchStrategy[Any], max_examples: int, action: Callable[[Any], None]) -> None:
    @settings(
        max_examples=max_examples,
        database=None,
        derandomize=True,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def run(case: Any) -> None:
        action(case)

    run()


def _path_params(path: str) -> list[str]:
    import re

    return [m.split(":")[0] for m in re.findall(r"{([^}]+)}", path)]


def _is_openai_error(response: httpx.Response) -> bool:
    try:
        body = response.json()
    except ValueError:
        return False
    return (
        isinstance(body, dict)
        and set(body) == {"error"}
        and isinstance(body["error"], dict)
        and {"message", "type", "param", "code"} <= set(body["error"])
    )


@dataclass
class SchemaFuzzReport:
    """Schemathesis cases generated from the server's OpenAPI document: how many, how many carried a body, what
    came back."""

    cases: int = 0
    cases_with_body: int = 0
    server_errors: int = 0
    malformed_errors: int = 0
    transport_errors: int = 0
    by_operation: dict[str, int] = field(default_factory=dict)
    statuses: dict[str, int] = field(default_factory=dict)
    findings: list[dict[str, Any]] = field(default_factory=list)
    wall_s: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict."""
        return asdict(self)


def schemathesis_gateway(
    base_url: str,
    api_key: str,
    admin_key: str,
    max_examples: int = 100,
    body_examples: int | None = None,
    negative_share: float = 0.5,
    skip: tuple[str, ...] = ("/admin/forget-sets/import",),
) -> SchemaFuzzReport:
    """Schemathesis over every operation of the server's own OpenAPI document (bodies generated from the declared
    request schemas, valid and invalid, as many as ``body_examples`` per operation that takes a body, else
    ``max_examples``), split between valid and invalid cases by ``negative_share``, with the key each route group
    needs. Forget sets a case manages to create are cancelled and deleted at once."""
    import schemathesis
    from schemathesis.generation import GenerationMode

    report = SchemaFuzzReport()
    started = time.perf_counter()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    admin_headers = {"Authorization": f"Bearer {admin_key}"}

    def modes(examples: int) -> list[tuple[GenerationMode, int]]:
        split = [(GenerationMode.POSITIVE, max(1, round(examples * (1 - negative_share))))]
        if negative_share > 0:
            split.append((GenerationMode.NEGATIVE, max(1, round(examples * negative_share))))
        return split

    with httpx.Client(base_url=base_url, timeout=120) as client:
        for result in schema.get_all_operations():
            operation = result.ok()
            if operation.path in skip:
                continue
            op = f"{operation.method.upper()} {operation.path}"
            admin_route = operation.path.startswith("/admin") or operation.path == "/metrics"
            headers = admin_headers if admin_route else {"Authorization": f"Bearer {api_key}"}

            def send(case: Any, op: str = op, headers: dict[str, str] = headers) -> None:
                kwargs = case.as_transport_kwargs(base_url=base_url, headers=headers)
                report.cases += 1
                report.by_operation[op] = report.by_operation.get(op, 0) + 1
                has_body = any(kwargs.get(k) is not None for k in ("json", "data", "content"))
                report.cases_with_body += has_body
                body = kwargs.pop("json", None)
                content = json.dumps(body).encode() if body is not None else kwargs.pop("data", None)
                request_headers = {**(kwargs.get("headers") or {}), **headers}
                if body is not None:
                    request_headers["Content-Type"] = "application/json"
                try:
                    response = client.request(
                        kwargs["method"], kwargs["url"], params=kwargs.get("params"), headers=request_headers,
                        content=content,
                    )  # fmt: skip
                except (httpx.HTTPError, httpx.InvalidURL, UnicodeError) as exc:
                    report.transport_errors += 1
                    report.findings.append({"op": op, "error": type(exc).__name__})
                    return
                status = response.status_code
                report.statuses[str(status)] = report.statuses.get(str(status), 0) + 1
                if status >= 500 and status not in (501, 503):
                    report.server_errors += 1
                    report.findings.append({"op": op, "status": status, "body": _excerpt(body or content or b"")})
                if status >= 400 and not _is_openai_error(response):
                    report.malformed_errors += 1
                    report.findings.append({"op": op, "status": status, "malformed": response.text[:300]})
                if op == "POST /admin/forget-sets" and status == 202:
                    created = response.json()
                    client.post(f"/admin/jobs/{created['job_id']}/cancel", headers=admin_headers)
                    client.delete(f"/admin/forget-sets/{created['id']}", headers=admin_headers)

            examples = body_examples if body_examples is not None and len(operation.body) else max_examples
            for mode, count in modes(examples):
                try:
                    _run_cases(operation.as_strategy(generation_mode=mode), count, send)
                except Unsatisfiable:  # nothing invalid to send (an operation without parameters or body)
                    continue
    report.wall_s = round(time.perf_counter() - started, 2)
    return report
