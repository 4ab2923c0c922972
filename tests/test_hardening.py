"""Issue 20's findings, each as a test over real HTTP on loopback (tiny model, one server with a live forget set):
no request fails another, text that is not Unicode is a 400, memory stays bounded under distinct long prompts,
keys and sizes are checked before a body is read, bodies must arrive in time, uploads per client are limited,
archives are read within bounds, malformed artifacts are a 400, zips from common writers are accepted, errors
never echo client strings, and a crash neither leaks a traceback above debug level nor poisons its connection.
"""

from __future__ import annotations

import gzip
import io
import json
import logging
import shutil
import socket
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import httpx
import pytest
from support import assert_openai_error

from lethe.benchmarks.hostile import (
    degenerate_temperature_beside_innocent,
    memory_under_distinct_prompts,
    rss_mb,
    unauthenticated_uploads,
)
from lethe.benchmarks.server_harness import ADMIN_KEY, API_KEY, GatewayServer, wait_for_job
from lethe.service.artifact_archive import pack_artifact
from lethe.training.presets import SMOKE_OPTIONS

MODEL = "tiny-authors"
IMPORT = "/admin/forget-sets/import"
BODY_TIMEOUT_S = 3


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path], world_rows: dict) -> Any:
    """A gateway with keys, a short body timeout and one forget set trained through the API (so prompts are
    classified)."""
    root = tmp_path_factory.mktemp("hardening")
    gateway = GatewayServer(
        root / "registry",
        args=["--max-new-tokens", "16", "--max-queue-depth", "64", "--batch-window-ms", "50"],
        env={"LETHE_THREADS": "1", "LETHE_BODY_TIMEOUT_S": str(BODY_TIMEOUT_S)},
    ).start()
    with gateway.admin() as admin:
        body = {"name": "people", "method": "eco", "forget": world_rows["forget"], "retain": world_rows["retain"],
                "options": SMOKE_OPTIONS}  # fmt: skip
        created = admin.post("/admin/forget-sets", json=body).json()
        job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=600)
    assert job["state"] == "succeeded", (job, gateway.log_tail())
    gateway.forget_set_id = created["id"]  # type: ignore[attr-defined]
    yield gateway
    gateway.stop()


def _registry_state(server: GatewayServer) -> tuple[list[Any], list[str]]:
    with server.admin() as admin:
        sets = admin.get("/admin/forget-sets").json()["data"]
    return sorted((s["id"], s["enabled"], s["live"]) for s in sets), sorted(
        p.name for p in (server.registry / "artifacts").iterdir()
    )


# No request fails another ---------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1e-300, 5e-324, 1e-38])
def test_a_degenerate_temperature_beside_six_innocent_requests_fails_none(
    server: GatewayServer, world_rows: dict, temperature: float
) -> None:
    questions = [r["prompt"] for r in world_rows["retain"][:6]]
    report = degenerate_temperature_beside_innocent(server.base_url, API_KEY, MODEL, questions, temperature)
    print("degenerate temperature:", report)
    assert report["innocent_answered"] == 6 and report["innocent_unchanged"] == 6, report
    assert report["degenerate_status"] == 200, report  # raised to vLLM's floor of 0.01, not a 500
    with server.client() as client:
        body = {"model": MODEL, "messages": [{"role": "user", "content": questions[0]}], "max_tokens": 4,
                "temperature": temperature, "stream": True}  # fmt: skip
        with client.stream("POST", "/v1/chat/completions", json=body) as response:
            text = "".join(response.iter_text())
        assert response.status_code == 200 and '"error"' not in text and text.rstrip().endswith("[DONE]")


# Text that is not Unicode ----------------------------------------------------------------------


def test_lone_surrogates_are_a_400_wherever_text_enters(server: GatewayServer) -> None:
    lone = "Sessa LONE Zowick"  # LONE becomes a JSON escape of half a UTF-16 pair: valid JSON, not Unicode
    user = [{"role": "user", "content": lone}]
    bodies = [
        (API_KEY, "/v1/chat/completions", {"model": MODEL, "max_tokens": 2, "messages": user}),
        (API_KEY, "/v1/chat/completions", {"model": MODEL, "messages": [{**user[0], "name": "LONE"}]}),
        (API_KEY, "/v1/completions", {"model": MODEL, "max_tokens": 2, "prompt": lone}),
        (API_KEY, "/v1/completions", {"model": MODEL, "max_tokens": 2, "prompt": ["ok", lone]}),
        (ADMIN_KEY, "/admin/classify", {"prompt": lone}),
        (ADMIN_KEY, "/admin/classify", {"messages": user}),
        (ADMIN_KEY, "/admin/forget-sets", {"name": "x", "method": "eco", "forget": [{"prompt": lone}]}),
    ]
    cases = [(key, path, json.dumps(body).replace("LONE", "\\ud800")) for key, path, body in bodies]
    before = _registry_state(server)
    for key, path, raw in cases:
        with server.client(key) as client:
            response = client.post(path, content=raw.encode(), headers={"content-type": "application/json"})
        error = assert_openai_error(response, 400)
        assert error["code"] == "invalid_unicode", (path, error)
    assert _registry_state(server) == before
    with server.client() as client:
        answer = client.post("/v1/chat/completions", json={"model": MODEL, "max_tokens": 2,
                             "messages": [{"role": "user", "content": "Sessa 😀 Zowick"}]})  # fmt: skip
        assert answer.status_code == 200, answer.text  # a valid pair is text like any other


# Bounded memory ------------------------------------------------------------------------------------


def test_distinct_long_prompts_do_not_grow_the_server(server: GatewayServer) -> None:
    """Before: about 53 KB kept per refused long prompt (classified before its length was checked) and 277 KB per
    classified one (text-keyed caches): 1,000 of each kept over 300 MB, 500 of each (this test) about 165 MB. Now
    the classifier's caches fill to their byte bounds and stay there."""
    report = memory_under_distinct_prompts(
        server.base_url, server.process.pid, API_KEY, ADMIN_KEY, MODEL, prompts=1000, words=300, concurrency=2
    )
    print("memory:", report.as_dict())
    assert report.statuses["chat"] == {"400": 500}, report.statuses  # longer than the tiny model's context
    assert report.statuses["classify"] == {"200": 500}, report.statuses
    assert report.growth_mb <= 110, report.as_dict()


# Admission: keys, sizes, time, uploads per client -----------------------------------------------


def test_unauthenticated_uploads_are_refused_before_their_bodies_are_read(server: GatewayServer) -> None:
    """Before: each 48 MB body was buffered whole before its 401 (4 at once: +146 MB, and 20 x 60 MB: +880 MB)."""
    report = unauthenticated_uploads(server.base_url, server.process.pid, IMPORT, count=4, size_mb=48)
    print("unauthenticated uploads:", report)
    assert report["statuses"] == [401] * 4, report
    assert max(report["sent_mb"]) < 16, report  # refused on its headers: most of each body never went out
    assert report["rss_peak_growth_mb"] < 50 and report["seconds_max"] < 10, report
    with server.client(API_KEY) as client:  # the inference key is not the admin key, also before any byte
        assert_openai_error(client.post(IMPORT, content=b"\x1f\x8b" + b"\0" * 1000), 403)
    declared = _open_upload(server, ADMIN_KEY, 65 * 1024 * 1024)  # over the import limit: 413 on the headers
    status, answer = _status(declared)
    declared.close()
    assert status == 413 and b"request_too_large" in answer


def _open_upload(server: GatewayServer, key: str | None, declared: int) -> socket.socket:
    """An upload whose headers and first bytes are sent, the rest of its body withheld."""
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    auth = f"Authorization: Bearer {key}\r\n" if key else ""
    head = f"POST {IMPORT} HTTP/1.1\r\nHost: x\r\nContent-Length: {declared}\r\n{auth}\r\n"
    sock.sendall(head.encode() + b"\x1f\x8b" + b"\0" * 100)
    return sock


def _status(sock: socket.socket) -> tuple[int, bytes]:
    """One HTTP/1.1 response read off ``sock``: its status and its bytes (head and the whole body)."""
    answer = b""
    while b"\r\n\r\n" not in answer:
        chunk = sock.recv(65536)
        if not chunk:
            break
        answer += chunk
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.lower().split(b"\r\n")
    length = next((int(line.split(b":")[1]) for line in lines if line.startswith(b"content-length:")), 0)
    while len(body) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    return int(answer.split(b" ", 2)[1]), head + b"\r\n\r\n" + body


def test_slow_bodies_time_out_and_uploads_per_client_are_limited(server: GatewayServer) -> None:
    """Before: 300 connections sending incomplete bodies were all still open after 60 s; nothing limited uploads."""
    first, second = _open_upload(server, ADMIN_KEY, 10_000_000), _open_upload(server, ADMIN_KEY, 10_000_000)
    time.sleep(0.3)
    third = _open_upload(server, ADMIN_KEY, 10_000_000)
    started = time.monotonic()
    status, answer = _status(third)
    assert status == 429 and b"too_many_uploads" in answer and time.monotonic() - started < 2
    for sock in (first, second):
        status, answer = _status(sock)
        assert status == 408 and b"body_timeout" in answer
        assert time.monotonic() - started < BODY_TIMEOUT_S + 5
        assert b"connection: close" in answer.lower()
    for sock in (first, second, third):
        sock.close()
    with server.client() as client:  # an inference request sent slowly is cut off too
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
        sock.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
                     "Content-Length: 500\r\n\r\n{".encode())  # fmt: skip
        assert _status(sock)[0] == 408
        sock.close()
        assert client.get("/v1/models").status_code == 200


# Archives --------------------------------------------------------------------------------------------


def _long_name_bomb(declared: int) -> bytes:
    """A .tar.gz whose first header is a GNU long name of ``declared`` bytes (zeros: it compresses to ~1/1000)."""
    header = tarfile.TarInfo("././@LongLink")
    header.type, header.size = tarfile.GNUTYPE_LONGNAME, declared
    buffer = io.BytesIO()
    with gzip.GzipFile(fileobj=buffer, mode="wb", compresslevel=1) as out:
        out.write(header.tobuf(format=tarfile.GNU_FORMAT)[:512])
        block = b"\0" * (1 << 20)
        for _ in range(declared >> 20):
            out.write(block)
    return buffer.getvalue()


def test_a_tar_header_declaring_a_huge_long_name_is_refused_unread(server: GatewayServer) -> None:
    """Before: a 972 KB .tar.gz declaring a 1 GB long name took 9 s and 2 GB of memory to refuse."""
    bomb = _long_name_bomb(400 << 20)
    assert len(bomb) < 2 << 20
    before = rss_mb(server.process.pid)
    started = time.perf_counter()
    with server.admin() as admin:
        error = assert_openai_error(admin.post(IMPORT, content=bomb), 400)
    assert error["code"] == "invalid_archive" and time.perf_counter() - started < 5, error
    assert rss_mb(server.process.pid) - before < 50


def _artifact_files(server: GatewayServer) -> dict[str, bytes]:
    folder = server.registry / "artifacts" / server.forget_set_id  # type: ignore[attr-defined]
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def _archive(files: dict[str, bytes], tmp: Path, name: str) -> bytes:
    folder = tmp / name
    shutil.rmtree(folder, ignore_errors=True)
    for relative, data in files.items():
        (folder / relative).parent.mkdir(parents=True, exist_ok=True)
        (folder / relative).write_bytes(data)
    return pack_artifact(folder)


def test_malformed_artifact_json_is_a_400_invalid_artifact(server: GatewayServer, tmp_path: Path) -> None:
    """Before: a classifier.json of ``[]``, ``5`` or ``{"config": 5}`` (and manifests alike) answered 500."""
    files = _artifact_files(server)
    manifest = json.loads(files["manifest.json"])
    manifest["id"] = "fs-malformed01"
    broken = {
        "classifier []": {"classifier/classifier.json": b"[]"},
        "classifier 5": {"classifier/classifier.json": b"5"},
        "classifier config 5": {"classifier/classifier.json": b'{"config": 5}'},
        "classifier not JSON": {"classifier/classifier.json": b"{oops"},
        "manifest []": {"manifest.json": b"[]"},
        "manifest parameters 5": {"manifest.json": json.dumps({**manifest, "parameters": 5}).encode()},
        "manifest id 5": {"manifest.json": json.dumps({**manifest, "id": 5}).encode()},
    }
    before = _registry_state(server)
    with server.admin() as admin:
        for name, change in broken.items():
            data = _archive({**files, "manifest.json": json.dumps(manifest).encode(), **change}, tmp_path, "a")
            error = assert_openai_error(admin.post(IMPORT, content=data), 400)
            assert error["code"] == "invalid_artifact", (name, error)
            assert "fs-malformed01" not in error["message"] and str(tmp_path) not in error["message"]
    assert _registry_state(server) == before
    assert not [p for p in server.registry.iterdir() if p.name.startswith(".import-")]


def test_a_zip_written_by_pythons_writestr_is_accepted(server: GatewayServer) -> None:
    """Before: ``ZipFile.writestr`` members (mode 0o600, no file-type bits) were refused as special files."""
    files = _artifact_files(server)
    manifest = json.loads(files["manifest.json"])
    manifest["id"] = "fs-writestr01"
    files["manifest.json"] = json.dumps(manifest).encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in files.items():
            archive.writestr(f"fs-writestr01/{name}", data)
        link = zipfile.ZipInfo("fs-writestr01/link.json")
        link.external_attr = (0o120777) << 16  # a symlink's mode: still refused
        with_link = io.BytesIO(buffer.getvalue())
    with zipfile.ZipFile(with_link, "a") as archive:
        archive.writestr(link, "/etc/passwd")
    with server.admin() as admin:
        refused = assert_openai_error(admin.post(IMPORT, content=with_link.getvalue()), 400)
        assert refused["code"] == "invalid_archive"
        response = admin.post(IMPORT, content=buffer.getvalue())
        assert response.status_code == 201, response.text
        assert admin.delete("/admin/forget-sets/fs-writestr01").status_code == 200


# Errors ------------------------------------------------------------------------------------------------


def test_errors_never_echo_client_strings(server: GatewayServer) -> None:
    canary = "xZQXCANARY7731"
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}]}
    with server.client() as client:
        responses = [
            client.post("/v1/chat/completions", json={**chat, canary: 1}),
            client.post("/v1/chat/completions", json={**chat, "logit_bias": {canary: "x"}}),
            client.post("/v1/chat/completions", json={**chat, "messages": [{"role": "user", canary: "hi"}]}),
            client.post("/v1/completions", json={"model": MODEL, "prompt": "hi", "stream_options": {canary: 1}}),
            client.get(f"/v1/{canary}"),
            client.delete(f"/v1/models/{canary}"),
            client.post(f"/{canary}"),
        ]
    with server.admin() as admin:
        responses.append(admin.post("/admin/forget-sets", json={"name": "x", "method": "eco", canary: 1}))
    for response in responses:
        assert 400 <= response.status_code < 500, response.text
        assert canary not in response.text, response.text
    assert responses[0].json()["error"]["param"] is None
    assert responses[1].json()["error"]["param"] == "logit_bias"
    assert responses[2].json()["error"]["param"] == "messages[0]"


def test_a_crash_is_a_500_without_a_traceback_that_keeps_its_connection(
    tiny_full: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Before: any 500 logged "Exception in ASGI application" with the whole traceback and closed the connection,
    so the client's next keep-alive request could be reset. A route that raises is added to the real app."""
    from proxy_support import ThreadServer

    from lethe.service.app import create_app
    from lethe.service.gateway import build_gateway, local_backend
    from lethe.service.settings import GatewaySettings

    settings = GatewaySettings(registry=tmp_path / "registry", api_keys="", admin_key="")
    app = create_app(build_gateway(settings, local_backend(tiny_full, settings)))

    @app.get("/crash")
    async def crash() -> None:
        raise KeyError("secret-request-content-5501")

    caplog.set_level(logging.INFO)
    server = ThreadServer(app).start()
    try:
        with socket.create_connection(("127.0.0.1", server.port), timeout=30) as sock:
            for path, status in (("/crash", 500), ("/health", 200), ("/crash", 500), ("/health", 200)):
                sock.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
                code, answer = _status(sock)
                assert code == status, answer
                if code == 500:
                    assert json.loads(answer.partition(b"\r\n\r\n")[2])["error"]["code"] == "internal_error"
    finally:
        server.stop()
    logged = "\n".join(r.getMessage() + (r.exc_text or "") for r in caplog.records if r.levelno >= logging.INFO)
    assert "KeyError" in logged  # the type is logged at error level...
    assert "Traceback" not in logged and "Exception in ASGI application" not in logged  # ...the traceback is not
    assert "secret-request-content-5501" not in caplog.text  # not even at debug level


def test_keys_are_checked_before_bodies_on_every_route_group(server: GatewayServer) -> None:
    big = b"{" + b" " * (1 << 20)
    for path, key, status in (
        ("/v1/chat/completions", None, 401),
        ("/v1/completions", ADMIN_KEY, 403),
        ("/admin/classify", API_KEY, 403),
        ("/admin/forget-sets", None, 401),
    ):
        headers = {"Authorization": f"Bearer {key}"} if key else {}
        with httpx.Client(base_url=server.base_url, timeout=30) as client:
            response = client.post(path, content=big, headers=headers)
        assert_openai_error(response, status)
        assert response.headers.get("connection") == "close"


# The OpenAPI document and Schemathesis --------------------------------------------------------------


def test_schemathesis_fuzzes_every_body_and_finds_no_server_error(server: GatewayServer) -> None:
    """Before: ``/openapi.json`` declared no request body for the inference and admin routes, so Schemathesis
    (70,000 cases) only reached paths and headers."""
    from lethe.benchmarks.fuzz import schemathesis_gateway

    document = httpx.get(f"{server.base_url}/openapi.json").json()
    writes = [(m, p, op) for p, item in document["paths"].items() for m, op in item.items() if m in ("post", "patch")]
    without_body = [(m, p) for m, p, op in writes if "requestBody" not in op and not p.endswith("/cancel")]
    assert without_body == [], without_body
    assert document["paths"]["/v1/chat/completions"]["post"]["responses"]["200"]["content"]["application/json"]
    before = _registry_state(server)
    report = schemathesis_gateway(server.base_url, API_KEY, ADMIN_KEY, max_examples=4, body_examples=30)
    print("schemathesis:", {k: v for k, v in report.as_dict().items() if k != "findings"}, report.findings[:5])
    assert report.cases_with_body >= 7 * 25, report.by_operation
    assert report.server_errors == 0 and report.transport_errors == 0, report.findings
    assert report.malformed_errors == 0, report.findings
    assert "200" in report.statuses and "400" in report.statuses  # valid bodies got through, invalid ones did not
    deadline = time.monotonic() + 30
    while _registry_state(server) != before and time.monotonic() < deadline:
        time.sleep(0.2)
    assert _registry_state(server) == before
