"""The shared registry: a real PostgreSQL server, two gateway replicas and ``lethe worker`` processes.

Replica A runs in proxy mode (in front of the proxy benchmark's stub upstream, no model to train
with), replica B in local mode with ``--workers 0``; a separate worker process trains. Shown here:
a forget set registered on A, trained by the worker, is flagged on B within 2 s of the job's
success, and disabling it on B unflags it on A within 2 s; a worker killed with ``kill -9``
mid-job leaves nothing live, and another worker finishes the job; a cancel works from the other
replica; PostgreSQL stopped and started under load: replicas keep serving with the forget sets
they hold, admin calls answer 503 in the API's error format meanwhile, everything resumes without
a restart. Underneath, with the database alone: migrations applied once by concurrent starters,
exclusive claims, and a job whose workers keep dying retried a bounded number of times. A change made
behind the notifications' back (a direct UPDATE) is found by the periodic re-sync.

PostgreSQL comes from Debian's ``postgresql`` package (``scripts/install_postgres.sh``, run by
``scripts/setup.sh``); these tests are skipped, saying why, only where it cannot be installed.
"""

from __future__ import annotations

import json
import statistics
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from pg_support import WorkerProcess
from support import assert_openai_error

from lethe.benchmarks.postgres_harness import PostgresServer, unavailable_reason
from lethe.benchmarks.proxy_bench import STUB_MODEL, Stack
from lethe.benchmarks.server_harness import GatewayServer, wait_for_job
from lethe.service.pg_connection import LISTEN_BACKOFF_MAX_S
from lethe.training.presets import SMOKE_OPTIONS

REASON = unavailable_reason()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"no PostgreSQL test server: {REASON}")

MODEL = "tiny-authors"
LEASE_S = 3.0
PROPAGATION_LIMIT_S = 2.0


# Fixtures -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def pg() -> Iterator[PostgresServer]:
    """A PostgreSQL server of its own for this module."""
    server = PostgresServer().start()
    yield server
    server.close()


@pytest.fixture(scope="module")
def stack(
    pg: PostgresServer, tmp_path_factory: pytest.TempPathFactory, authors_paths: dict[str, Path]
) -> Iterator[dict[str, Any]]:
    """One database; replica A (proxy mode), replica B (local mode, --workers 0) and one worker process."""
    root = tmp_path_factory.mktemp("shared")
    url = pg.create_database()
    upstreams = Stack(root)
    stub = upstreams.stub()
    a = GatewayServer(
        root / "a",
        model=MODEL,
        args=["--registry", url, "--state-dir", str(root / "a-state"), "--upstream", stub,
              "--upstream-model", STUB_MODEL, "--embeddings-from", MODEL],
    )  # fmt: skip
    b = GatewayServer(root / "b", model=MODEL, args=["--registry", url, "--state-dir", str(root / "b-state"),
                                                     "--workers", "0"])  # fmt: skip
    worker = WorkerProcess(url, root / "worker-1", lease_s=LEASE_S).start()
    starting = [threading.Thread(target=server.start) for server in (a, b)]
    for thread in starting:
        thread.start()
    for thread in starting:
        thread.join()
    state = {"root": root, "url": url, "a": a, "b": b, "worker": worker, "workers": [worker]}
    yield state
    for process in state["workers"]:
        process.stop()
    for server in (a, b):
        if server.process is not None and server.process.poll() is None:
            server.stop()
    upstreams.close()


@pytest.fixture(scope="module")
def trained(stack: dict[str, Any], world_rows: dict[str, list[dict]]) -> dict[str, Any]:
    """A forget set registered on replica A and trained by the worker: when each replica first flagged it."""
    a, b = stack["a"], stack["b"]
    created = _register(a, world_rows, "shared-authors", SMOKE_OPTIONS)
    conversation = _conversation(world_rows)
    with a.admin() as admin_a, b.admin() as admin_b:
        wait_for_job(admin_a, created["job_id"], ("running", "succeeded", "failed", "cancelled"), timeout=300)
        succeeded_at = _until(lambda: _job(admin_a, created["job_id"])["state"] != "running", timeout=900, poll=0.05)
        job = _job(admin_a, created["job_id"])
        assert job["state"] == "succeeded", (job, stack["worker"].log_tail())
        delay_b = _until(lambda: created["id"] in _flagged(admin_b, conversation)) - succeeded_at
        delay_a = _until(lambda: created["id"] in _flagged(admin_a, conversation)) - succeeded_at
    return {**created, "job": job, "conversation": conversation, "delay_a": delay_a, "delay_b": delay_b}


# Helpers ------------------------------------------------------------------------------------


def _register(server: GatewayServer, world_rows: dict[str, list[dict]], name: str, options: dict) -> dict[str, Any]:
    with server.admin() as admin:
        response = admin.post(
            "/admin/forget-sets",
            json={"name": name, "forget": world_rows["forget"], "retain": world_rows["retain"], "method": "eco",
                  "options": options},
        )  # fmt: skip
    assert response.status_code == 202, response.text
    return response.json()


def _job(admin: httpx.Client, job_id: str) -> dict[str, Any]:
    response = admin.get(f"/admin/jobs/{job_id}")
    assert response.status_code == 200, response.text
    return response.json()


def _conversation(world_rows: dict[str, list[dict]]) -> list[dict[str, str]]:
    """Several forget questions in one chat: flagged when any of them is."""
    messages = []
    for row in world_rows["forget"][:6]:
        messages += [{"role": "user", "content": row["prompt"]}, {"role": "assistant", "content": "I see."}]
    return messages[:-1]


def _flagged(admin: httpx.Client, messages: list[dict[str, str]]) -> set[str]:
    response = admin.post("/admin/classify", json={"messages": messages})
    assert response.status_code == 200, response.text
    return {flag["forget_set_id"] for flag in response.json()["flagged"]}


def _until(condition: Callable[[], bool], timeout: float = 30.0, poll: float = 0.02) -> float:
    """Poll ``condition`` until true; the monotonic time it became true (raises after ``timeout``)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return time.monotonic()
        time.sleep(poll)
    raise TimeoutError(f"condition not met in {timeout} s")


def _job_row(pg: PostgresServer, url: str, job_id: str) -> dict[str, Any]:
    columns = ("state", "worker", "attempts", "input", "cancel_requested")
    [row] = pg.query(url, f"SELECT {', '.join(columns)} FROM jobs WHERE id = %s", (job_id,))
    return dict(zip(columns, row, strict=True))


def _audit(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (folder / "audit.jsonl").read_text().splitlines()]


# Replicas and workers -----------------------------------------------------------------------


def test_registered_on_a_trained_by_the_worker_flagged_on_b_then_disabled_on_b_unflagged_on_a(
    stack: dict[str, Any], trained: dict[str, Any], pg: PostgresServer
) -> None:
    a, b = stack["a"], stack["b"]
    # Other tests toggle the same set on the shared stack: only this test's audit entries count below.
    earlier = {name: len(_audit(stack["root"] / name)) for name in ("a-state", "b-state")}
    print(f"flagged after the job's success: replica B {trained['delay_b']:.3f} s, A {trained['delay_a']:.3f} s")
    assert trained["delay_b"] < PROPAGATION_LIMIT_S, trained
    assert trained["delay_a"] < PROPAGATION_LIMIT_S, trained
    # Job records are shared: the other replica reports the same job; the rows are erased once it ended.
    with b.admin() as admin_b:
        job_on_b = admin_b.get(f"/admin/jobs/{trained['job_id']}").json()
        record_on_b = admin_b.get(f"/admin/forget-sets/{trained['id']}").json()
    assert job_on_b["state"] == "succeeded" and job_on_b["progress"] == 1.0
    assert record_on_b["state"] == "ready" and record_on_b["enabled"] and record_on_b["live"]
    assert _job_row(pg, stack["url"], trained["job_id"])["input"] is None

    with a.admin() as admin_a, b.admin() as admin_b:
        off = admin_b.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": False})
        disabled_at = time.monotonic()
        assert off.status_code == 200 and off.json()["live"] is False
        delay = _until(lambda: trained["id"] not in _flagged(admin_a, trained["conversation"])) - disabled_at
        print(f"disabled on B, unflagged on A after {delay:.3f} s")
        assert delay < PROPAGATION_LIMIT_S
        assert admin_a.get(f"/admin/forget-sets/{trained['id']}").json()["live"] is False
        on = admin_a.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": True})
        assert on.status_code == 200 and on.json()["live"] is True
        _until(lambda: trained["id"] in _flagged(admin_b, trained["conversation"]), timeout=PROPAGATION_LIMIT_S)

    # The audit log stays per process: each one wrote what it did.
    audit_a, audit_b = _audit(stack["root"] / "a-state"), _audit(stack["root"] / "b-state")
    events_a = [e["event"] for e in audit_a if e.get("forget_set_id") == trained["id"]]
    events_b = [e["event"] for e in audit_b if e.get("forget_set_id") == trained["id"]]
    events_worker = [e["event"] for e in _audit(stack["root"] / "worker-1")]
    assert "forget_set_created" in events_a and "forget_set_created" not in events_b
    toggled_a = [e["event"] for e in audit_a[earlier["a-state"] :]]
    toggled_b = [e["event"] for e in audit_b[earlier["b-state"] :]]
    assert "forget_set_disabled" in toggled_b and "forget_set_disabled" not in toggled_a
    assert "job_succeeded" in events_worker


def test_toggles_reach_the_other_replica_within_two_seconds(stack: dict[str, Any], trained: dict[str, Any]) -> None:
    """20 toggles on alternating replicas, each seen by the other (README figures: 100 with lethe bench)."""
    delays = []
    with stack["a"].admin() as admin_a, stack["b"].admin() as admin_b:
        for index in range(20):
            here, there = (admin_a, admin_b) if index % 2 == 0 else (admin_b, admin_a)
            enabled = index % 2 == 1  # starts enabled: off, on, off...
            assert here.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": enabled}).status_code == 200
            started = time.monotonic()

            def seen_there(there: httpx.Client = there, enabled: bool = enabled) -> bool:
                return (trained["id"] in _flagged(there, trained["conversation"])) == enabled

            delays.append(_until(seen_there) - started)
    print(f"toggles: median {statistics.median(delays):.3f} s, max {max(delays):.3f} s")
    assert max(delays) < PROPAGATION_LIMIT_S, delays
    assert statistics.median(delays) < 0.5, delays


def test_a_change_without_a_notification_is_picked_up_by_the_periodic_resync(
    stack: dict[str, Any], trained: dict[str, Any], pg: PostgresServer
) -> None:
    from lethe.service.forget_sets import RESYNC_INTERVAL_S

    # An operator's direct UPDATE sends no NOTIFY: only the re-sync every RESYNC_INTERVAL_S finds it.
    pg.query(stack["url"], "UPDATE forget_sets SET enabled = FALSE WHERE id = %s", (trained["id"],))
    changed = time.monotonic()
    with stack["a"].admin() as admin_a, stack["b"].admin() as admin_b:
        for admin in (admin_a, admin_b):
            _until(lambda admin=admin: trained["id"] not in _flagged(admin, trained["conversation"]), timeout=30)
        assert time.monotonic() - changed < RESYNC_INTERVAL_S + PROPAGATION_LIMIT_S
        assert admin_a.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": True}).status_code == 200
        _until(lambda: trained["id"] in _flagged(admin_b, trained["conversation"]), timeout=PROPAGATION_LIMIT_S)


def test_kill_9_of_the_worker_mid_job_another_worker_finishes_it(
    stack: dict[str, Any], trained: dict[str, Any], world_rows: dict[str, list[dict]], pg: PostgresServer
) -> None:
    url, a, b = stack["url"], stack["a"], stack["b"]
    first: WorkerProcess = stack["worker"]
    created = _register(b, world_rows, "outlives-its-worker", SMOKE_OPTIONS)
    with b.admin() as admin:
        _until(lambda: admin.get(f"/admin/jobs/{created['job_id']}").json()["progress"] > 0, timeout=300, poll=0.1)
    assert _job_row(pg, url, created["job_id"])["state"] == "running"
    first.kill()

    # Nothing of the dead worker's job is live or stored; after its lease it is queued again.
    def consistent_and_not_live() -> None:
        with a.admin() as admin_a, b.admin() as admin_b:
            for admin in (admin_a, admin_b):
                record = admin.get(f"/admin/forget-sets/{created['id']}").json()
                assert record["state"] == "training" and not record["enabled"] and not record["live"]
                assert created["id"] not in _flagged(admin, trained["conversation"])
        assert pg.query(url, "SELECT artifact_sha256 FROM forget_sets WHERE id = %s", (created["id"],)) == [(None,)]
        assert pg.query(url, "SELECT count(*) FROM artifacts") == [(1,)]  # the first test's forget set only

    consistent_and_not_live()
    _until(lambda: _job_row(pg, url, created["job_id"])["state"] == "queued", timeout=LEASE_S + 15, poll=0.1)
    consistent_and_not_live()
    assert _job_row(pg, url, created["job_id"])["input"] is not None  # kept for the next attempt

    second = WorkerProcess(url, stack["root"] / "worker-2", lease_s=LEASE_S).start()
    stack["workers"].append(second)
    stack["worker"] = second
    with b.admin() as admin:
        job = wait_for_job(admin, created["job_id"], ("succeeded", "failed", "cancelled"), timeout=900)
    assert job["state"] == "succeeded", (job, second.log_tail())
    row = _job_row(pg, url, created["job_id"])
    assert row["attempts"] == 2 and row["worker"].split(":")[1] == str(second.pid) and row["input"] is None
    with a.admin() as admin_a:
        _until(lambda: admin_a.get(f"/admin/forget-sets/{created['id']}").json()["live"], PROPAGATION_LIMIT_S)
    assert pg.query(url, "SELECT count(*) FROM artifacts") == [(2,)]
    assert [e["event"] for e in _audit(stack["root"] / "worker-2")].count("job_succeeded") == 1


def test_cancel_from_the_other_replica(
    stack: dict[str, Any], world_rows: dict[str, list[dict]], pg: PostgresServer
) -> None:
    a, b = stack["a"], stack["b"]
    created = _register(a, world_rows, "to-cancel", {})  # the default budget: long enough to cancel mid-run
    with b.admin() as admin_b:
        wait_for_job(admin_b, created["job_id"], ("running",), timeout=120)
        cancelled = admin_b.post(f"/admin/jobs/{created['job_id']}/cancel")
        assert cancelled.status_code == 200, cancelled.text
        job = wait_for_job(admin_b, created["job_id"], ("cancelled", "failed", "succeeded"), timeout=60)
        assert job["state"] == "cancelled" and job["error"] == "cancelled by an operator"
        assert_openai_error(admin_b.post(f"/admin/jobs/{created['job_id']}/cancel"), 409)
    with a.admin() as admin_a:
        record = admin_a.get(f"/admin/forget-sets/{created['id']}").json()
    assert record["state"] == "cancelled" and not record["live"]
    assert _job_row(pg, stack["url"], created["job_id"])["input"] is None
    # The worker is free again: a queued job gets cancelled at once.
    queued = _register(b, world_rows, "queued-then-cancelled", {})
    with a.admin() as admin_a:
        response = admin_a.post(f"/admin/jobs/{queued['job_id']}/cancel")
        assert response.status_code == 200
        wait_for_job(admin_a, queued["job_id"], ("cancelled",), timeout=60)


def test_postgres_stopped_and_restarted_under_load(
    stack: dict[str, Any], trained: dict[str, Any], pg: PostgresServer
) -> None:
    a, b = stack["a"], stack["b"]
    pids = (a.process.pid, b.process.pid)
    statuses: Counter[tuple[str, int]] = Counter()
    flags: Counter[tuple[str, bool]] = Counter()
    stop = threading.Event()

    def load(server: GatewayServer, name: str) -> None:
        body = {"model": STUB_MODEL if server is a else MODEL, "max_tokens": 2, "temperature": 0,
                "messages": [{"role": "user", "content": "What is the capital of France?"}]}  # fmt: skip
        with server.client() as client, server.admin() as admin:
            while not stop.is_set():
                statuses[(name, client.post("/v1/chat/completions", json=body).status_code)] += 1
                flags[(name, trained["id"] in _flagged(admin, trained["conversation"]))] += 1

    with ThreadPoolExecutor(4) as pool:
        running = [pool.submit(load, server, name) for server, name in ((a, "a"), (b, "b"), (a, "a"), (b, "b"))]
        time.sleep(1.0)
        pg.stop()
        outage_started = time.monotonic()
        with a.admin() as admin_a, b.admin() as admin_b:
            for admin in (admin_a, admin_b):
                for response in (
                    admin.get("/admin/forget-sets"),
                    admin.get(f"/admin/jobs/{trained['job_id']}"),
                    admin.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": False}),
                    admin.post("/admin/forget-sets", json={"name": "x", "topic": "x", "method": "eco"}),
                ):
                    error = assert_openai_error(response, 503)
                    assert error["code"] == "registry_unavailable" and response.headers["retry-after"]
            time.sleep(max(0.0, 4.0 - (time.monotonic() - outage_started)))
            pg.start()
            restarted = time.monotonic()
            _until(lambda: admin_a.get("/admin/forget-sets").status_code == 200, timeout=15)
            _until(lambda: admin_b.get("/admin/forget-sets").status_code == 200, timeout=15)
            resumed = time.monotonic() - restarted
            # The listeners reconnected: a change on one replica reaches the other again.
            assert admin_a.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": False}).status_code == 200
            toggled = time.monotonic()
            delay = _until(lambda: trained["id"] not in _flagged(admin_b, trained["conversation"])) - toggled
            assert admin_b.patch(f"/admin/forget-sets/{trained['id']}", json={"enabled": True}).status_code == 200
            _until(lambda: trained["id"] in _flagged(admin_a, trained["conversation"]), timeout=PROPAGATION_LIMIT_S)
        stop.set()
        for future in running:
            future.result()
    assert {status for (_, status) in statuses} == {200}, statuses
    assert statuses[("a", 200)] > 10 and statuses[("b", 200)] > 10, statuses
    # The forget set stayed live through the outage, except for the toggle made on purpose after it.
    assert flags[("a", True)] > 10 and flags[("b", True)] > 10, flags
    print(f"outage: {sum(statuses.values())} requests answered 200; admin back {resumed:.2f} s after the restart")
    # The admin API is back on a fresh connection at once; a listener may still sit out its reconnection backoff,
    # so the first change after the restart can take that much longer to reach the other replica.
    assert resumed < 10 and delay < LISTEN_BACKOFF_MAX_S + PROPAGATION_LIMIT_S, (resumed, delay)
    assert (a.process.pid, b.process.pid) == pids and a.process.poll() is None and b.process.poll() is None
    assert stack["worker"].process.poll() is None  # the worker rode it out too


# The database alone -------------------------------------------------------------------------


def test_migrations_are_applied_once_by_concurrent_starters(pg: PostgresServer, tmp_path: Path) -> None:
    from lethe.service.pg_registry import PgRegistry
    from lethe.service.pg_schema import SCHEMA_VERSION

    url = pg.create_database()
    with ThreadPoolExecutor(8) as pool:
        registries = list(pool.map(lambda i: PgRegistry(url, tmp_path / f"r{i}", 1 << 20), range(8)))
    for registry in registries:
        registry.close()
    assert pg.query(url, "SELECT version FROM lethe_schema_migrations") == [(v,) for v in range(1, SCHEMA_VERSION + 1)]
    pg.query(url, "INSERT INTO lethe_schema_migrations (version) VALUES (%s)", (SCHEMA_VERSION + 1,))
    with pytest.raises(RuntimeError, match="newer than this Lethe"):
        PgRegistry(url, tmp_path / "late", 1 << 20)


def test_claims_are_exclusive_and_for_the_workers_model(pg: PostgresServer, tmp_path: Path) -> None:
    from lethe.service.pg_registry import PgRegistry

    registry = PgRegistry(pg.create_database(), tmp_path, 1 << 20)
    for index in range(12):
        registry.create_training(f"fs-{index:012d}", "n", "eco", f"job-{index}", {}, {"topic": "t"}, "model-x")
    registry.create_training("fs-other0000000", "n", "eco", "job-other", {}, {"topic": "t"}, "model-y")

    def claim_all(worker: int) -> list[str]:
        claimed = []
        while (job := registry.claim(f"w{worker}", "model-x", 30.0)) is not None:
            claimed.append(job.job.id)
        return claimed

    with ThreadPoolExecutor(6) as pool:
        claims = [job for jobs in pool.map(claim_all, range(6)) for job in jobs]
    assert sorted(claims) == sorted(f"job-{i}" for i in range(12))  # each once, none for the other model
    assert registry.get_job("job-other").state == "queued"
    registry.close()


def test_a_job_whose_workers_keep_dying_is_retried_then_fails_clearly(pg: PostgresServer, tmp_path: Path) -> None:
    from lethe.service.pg_registry import PgRegistry

    registry = PgRegistry(pg.create_database(), tmp_path, 1 << 20, max_attempts=3)
    registry.create_training("fs-doomed000000", "doomed", "eco", "job-doomed", {}, {"topic": "t"}, "fp")
    for attempt in (1, 2, 3):
        claimed = registry.claim(f"dies-{attempt}", "fp", 0.3)  # claims, then never heartbeats again
        assert claimed is not None and claimed.job.id == "job-doomed"
        assert registry.reap() == []  # still within its lease
        time.sleep(0.5)
        assert registry.reap() == ["job-doomed"]
        assert registry.heartbeat("job-doomed", f"dies-{attempt}") == "lost"
        expected = "queued" if attempt < 3 else "failed"
        assert registry.get_job("job-doomed").state == expected
    job = registry.get_job("job-doomed")
    assert "abandoned 3 times" in job.error and "not retried after 3 attempts" in job.error
    record = registry.get_forget_set("fs-doomed000000")
    assert record.state == "failed" and not record.enabled and record.error == job.error
    assert registry.claim("anyone", "fp", 30.0) is None
    registry.close()


def test_a_worker_that_lost_its_job_publishes_nothing(
    pg: PostgresServer, stack: dict[str, Any], trained: dict[str, Any], tmp_path: Path
) -> None:
    from lethe.runtime.artifact import ForgetSetArtifact
    from lethe.service.pg_registry import PgRegistry

    artifact = ForgetSetArtifact.load(next((stack["root"] / "a-state" / "artifacts").glob("[0-9a-f]*")))
    url = pg.create_database()
    registry = PgRegistry(url, tmp_path, 1 << 28)
    registry.create_training(artifact.id, "n", "eco", "job-late", {}, {"topic": "t"}, "fp")
    assert registry.claim("slow", "fp", 0.3) is not None
    time.sleep(0.5)
    assert registry.reap() == ["job-late"] and registry.claim("fresh", "fp", 30.0) is not None
    assert registry.publish("job-late", artifact.id, artifact, "slow") is None  # the lease ran out: not its job
    assert registry.live_versions() == {} and pg.query(url, "SELECT count(*) FROM artifacts") == [(0,)]
    assert registry.heartbeat("job-late", "slow") == "lost"
    version = registry.publish("job-late", artifact.id, artifact, "fresh")
    assert registry.live_versions() == {artifact.id: version}
    assert registry.get_job("job-late").state == "succeeded"
    registry.close()
