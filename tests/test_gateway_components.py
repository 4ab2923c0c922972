"""Gateway parts on their own, with real components: the SQLite registry and the continuous batcher."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch

from lethe.runtime.generation import DecodeBatch, SamplingParams, StepEvent
from lethe.runtime.model import LanguageModel
from lethe.service.batcher import MicroBatcher, Overloaded
from lethe.service.registry import INTERRUPTED, Registry


def test_registry_records_survive_reopening_and_interrupted_jobs_become_failed(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    record, job = registry.create_training("fs-aaaaaaaaaaaa", "a", "eco", "job-1", {"eco": {"grid": 3}})
    assert record.state == "training" and not record.enabled and job.state == "queued"
    registry.create_training("fs-bbbbbbbbbbbb", "b", "spul", "job-2", {})
    assert registry.job_started("job-1") and not registry.job_started("job-1")
    registry.job_progress("job-1", 0.4, "search")
    registry.close()

    reopened = Registry(tmp_path)
    assert reopened.get_job("job-1").progress == pytest.approx(0.4)
    assert sorted(reopened.recover_interrupted()) == ["job-1", "job-2"]
    for job_id, forget_set_id in (("job-1", "fs-aaaaaaaaaaaa"), ("job-2", "fs-bbbbbbbbbbbb")):
        job = reopened.get_job(job_id)
        assert job.state == "failed" and job.error == INTERRUPTED and job.finished
        record = reopened.get_forget_set(forget_set_id)
        assert record.state == "failed" and not record.enabled
    assert reopened.recover_interrupted() == []
    assert reopened.get_job("job-1").options == {"eco": {"grid": 3}}


def test_a_job_finishing_after_its_forget_set_was_deleted_changes_nothing(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.create_training("fs-cccccccccccc", "c", "eco", "job-3", {})
    registry.job_started("job-3")
    assert registry.delete_forget_set("fs-cccccccccccc")
    assert not registry.job_succeeded("job-3", "fs-cccccccccccc", {"x": 1})
    assert registry.get_job("job-3").state == "cancelled"
    assert registry.get_forget_set("fs-cccccccccccc") is None

    registry.create_training("fs-dddddddddddd", "d", "eco", "job-4", {})
    registry.job_started("job-4")
    assert registry.job_succeeded("job-4", "fs-dddddddddddd", {"forget_quality": 0.5})
    record = registry.get_forget_set("fs-dddddddddddd")
    assert record.state == "ready" and record.enabled and record.metrics == {"forget_quality": 0.5}
    registry.job_ended("job-4", "failed", "too late")  # a finished job stays finished
    assert registry.get_job("job-4").state == "succeeded"


def test_debris_is_collected_and_only_ready_folders_stay(tmp_path: Path) -> None:
    registry = Registry(tmp_path)
    registry.create_training("fs-eeeeeeeeeeee", "e", "eco", "job-5", {})
    registry.job_started("job-5")
    for name in ("fs-eeeeeeeeeeee", "fs-ffffffffffff", ".fs-eeeeeeeeeeee-staging", ".deleted-fs-x-1234"):
        (registry.artifacts / name).mkdir()
        (registry.artifacts / name / "manifest.json").write_text("{}")
    registry.insert_ready("fs-ffffffffffff", "f", "eco", {}, "cli")
    assert sorted(registry.collect_debris()) == [".deleted-fs-x-1234", ".fs-eeeeeeeeeeee-staging", "fs-eeeeeeeeeeee"]
    assert [p.name for p in registry.artifacts.iterdir()] == ["fs-ffffffffffff"]
    assert registry.set_enabled("fs-ffffffffffff", False).enabled is False
    assert registry.set_enabled("fs-nope00000000", True) is None


class HeldBatch(DecodeBatch):
    """The real running batch of ``model``, whose steps wait for ``gate`` and which notes the worker driving it;
    ``poison`` rows make its third step raise."""

    def __init__(self, model: LanguageModel, gate: threading.Event, threads: list[str] | None = None,
                 poison: list[torch.Tensor] | None = None):  # fmt: skip
        super().__init__(model.decoder)
        self.gate, self.poison = gate, poison or []
        self.prompts: list[torch.Tensor] = []
        self.steps = 0
        if threads is not None:
            threads.append(threading.current_thread().name)

    def join(self, prompts, params, guides=None):  # type: ignore[no-untyped-def]
        self.prompts += list(prompts)
        return super().join(prompts, params, guides)

    def step(self) -> list[StepEvent]:
        assert self.gate.wait(30)
        self.steps += 1
        if self.steps == 3 and any(e is p for e in self.prompts for p in self.poison):
            raise RuntimeError("this row cannot go on")
        return super().step()


def _collect(batcher: MicroBatcher, embeds, params, results: dict, key: int, done: threading.Event) -> None:
    parts: list[str] = []

    def sink(item: StepEvent | BaseException) -> None:
        if isinstance(item, BaseException):
            results[key] = item
            done.set()
            return
        parts.append(item.delta)
        if item.finished:
            results[key] = "".join(parts)
            if len(results) == results["expected"]:
                done.set()

    batcher.submit(embeds, params, sink)


def test_requests_join_the_running_batch_mid_decode_and_each_row_equals_its_own_generation(
    tiny_full: LanguageModel,
) -> None:
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    questions = [r["prompt"] for r in build_world(WorldConfig.test()).rows("retain")[:5]]
    prompts = [tiny_full.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    params = [
        SamplingParams(max_new_tokens=24),
        SamplingParams(max_new_tokens=16),
        SamplingParams(max_new_tokens=4),
        SamplingParams(max_new_tokens=16, temperature=1.0, seed=3),
        SamplingParams(max_new_tokens=0),
    ]
    gate = threading.Event()
    batches: list[HeldBatch] = []

    def open_batch() -> HeldBatch:  # the real decoder; its steps wait until every request is queued
        batches.append(HeldBatch(tiny_full, gate))
        return batches[-1]

    sizes: list[int] = []
    batcher = MicroBatcher(open_batch, max_batch_size=8, window_s=0.05, max_pending=8, on_batch=sizes.append)
    batcher.start()
    try:
        results: dict = {"expected": len(prompts) + 1}
        done = threading.Event()
        _collect(batcher, tiny_full.prompt_embeddings(prompts[0]), params[0], results, 0, done)
        deadline = time.monotonic() + 10
        while batcher.running == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.set()
        while (not batches or batches[0].steps < 3) and time.monotonic() < deadline:
            time.sleep(0.001)
        gate.clear()  # the first row is a few tokens in: the others join its batch, not a new one
        for key in range(1, len(prompts)):
            _collect(batcher, tiny_full.prompt_embeddings(prompts[key]), params[key], results, key, done)
        gate.set()
        assert done.wait(60)
    finally:
        gate.set()
        batcher.stop()
    assert len(batches) == 1 and sizes == [1, 5], (len(batches), sizes)
    for key, (prompt, p) in enumerate(zip(prompts, params, strict=True)):
        assert results[key] == tiny_full.generate(prompt, p).text


def test_the_batcher_refuses_work_beyond_its_queue(tiny_full: LanguageModel) -> None:
    prompt = tiny_full.chat_prompt([{"role": "user", "content": "Tell me a story."}])
    embeds = tiny_full.prompt_embeddings(prompt)
    params = SamplingParams(max_new_tokens=8)
    gate = threading.Event()
    batcher = MicroBatcher(lambda: HeldBatch(tiny_full, gate), max_batch_size=1, window_s=0.0, max_pending=1)
    with pytest.raises(Overloaded):
        batcher.submit(embeds, params, lambda item: None)  # not started yet
    batcher.start()
    finished: list[str] = []

    def sink(item: StepEvent | BaseException) -> None:
        if isinstance(item, StepEvent) and item.finished:
            finished.append(item.finish_reason or "")

    try:
        batcher.submit(embeds, params, sink)
        deadline = time.monotonic() + 10
        while batcher.running == 0 and time.monotonic() < deadline:
            time.sleep(0.001)
        assert batcher.running == 1 and batcher.pending == 0
        batcher.submit(embeds, params, sink)
        assert batcher.pending == 1  # the batch is full (one row): it waits
        with pytest.raises(Overloaded):
            batcher.submit(embeds, params, sink)
        gate.set()
        deadline = time.monotonic() + 30
        while len(finished) < 2 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert len(finished) == 2
        batcher.submit(embeds, params, sink)  # room again
    finally:
        gate.set()
        batcher.stop()


def test_a_lone_stream_stays_on_the_first_worker_and_a_full_one_gets_help(tiny_full: LanguageModel) -> None:
    prompt = tiny_full.chat_prompt([{"role": "user", "content": "Hello there."}])
    embeds = tiny_full.prompt_embeddings(prompt)
    params = SamplingParams(max_new_tokens=4)
    threads: list[str] = []
    gate = threading.Event()
    gate.set()
    batcher = MicroBatcher(
        lambda: HeldBatch(tiny_full, gate, threads), max_batch_size=1, window_s=0.0, max_pending=8, workers=2
    )
    batcher.start()

    def run_one() -> threading.Event:
        finished = threading.Event()
        batcher.submit(embeds, params, lambda item: finished.set() if getattr(item, "finished", True) else None)
        return finished

    def wait_for_threads(count: int) -> None:
        deadline = time.monotonic() + 10
        while len(threads) < count and time.monotonic() < deadline:
            time.sleep(0.001)

    try:
        for _ in range(6):
            assert run_one().wait(30)
            deadline = time.monotonic() + 10  # the last event reaches the client just before the worker frees up
            while batcher.running and time.monotonic() < deadline:
                time.sleep(0.001)
        assert threads == ["lethe-decode-0"] * 6
        threads.clear()
        gate.clear()  # worker 0 now holds a full batch (one row)...
        held = run_one()
        wait_for_threads(1)
        second = run_one()  # ...so the next request starts on worker 1 instead of waiting
        wait_for_threads(2)
        assert threads == ["lethe-decode-0", "lethe-decode-1"]
        gate.set()
        assert held.wait(30) and second.wait(30)
    finally:
        gate.set()
        batcher.stop()


def _run_batch(
    batcher: MicroBatcher, embeds: list, params: list[SamplingParams], gate: threading.Event
) -> list[str | BaseException]:
    """Submit every row while ``gate`` holds the decoder, release it, and return each row's text or error."""
    outcomes: list[str | BaseException | None] = [None] * len(embeds)
    texts = [""] * len(embeds)
    finished = threading.Semaphore(0)

    def sink_for(row: int):
        def sink(item: StepEvent | BaseException) -> None:
            if isinstance(item, BaseException):
                outcomes[row] = item
                finished.release()
                return
            texts[row] += item.delta
            if item.finished:
                outcomes[row] = texts[row]
                finished.release()

        return sink

    for row, (e, p) in enumerate(zip(embeds, params, strict=True)):
        batcher.submit(e, p, sink_for(row))
    gate.set()
    for _ in embeds:
        assert finished.acquire(timeout=120)
    return outcomes  # type: ignore[return-value]


def test_a_failing_row_fails_alone_and_its_batch_company_is_answered(tiny_full: LanguageModel) -> None:
    """Issue 20: a temperature the decoder cannot divide by (1e-300 overflows its softmax) used to fail the
    whole micro-batch; a row failing mid-way (after the company delivered tokens) too."""
    from lethe.benchmarks.authors_world import WorldConfig, build_world

    questions = [r["prompt"] for r in build_world(WorldConfig.test()).rows("retain")[:6]]
    prompts = [tiny_full.chat_prompt([{"role": "user", "content": q}]) for q in questions]
    embeds = [tiny_full.prompt_embeddings(p) for p in prompts]
    innocent = [
        SamplingParams(max_new_tokens=6),
        SamplingParams(max_new_tokens=12, temperature=0.7, seed=11),
        SamplingParams(max_new_tokens=3),
        SamplingParams(max_new_tokens=12, temperature=1.0, seed=5, top_p=0.9),
        SamplingParams(max_new_tokens=9),
        SamplingParams(max_new_tokens=12, temperature=1.3),  # no seed: a replay must still draw the same tokens
    ]
    expected = [tiny_full.generate(p, s).text for p, s in zip(prompts[:5], innocent[:5], strict=True)]
    gate = threading.Event()
    poison: list[torch.Tensor] = []
    sizes: list[int] = []
    # The real decoder; a batch holding the poisoned row breaks at its 3rd step.
    batcher = MicroBatcher(
        lambda: HeldBatch(tiny_full, gate, poison=poison), max_batch_size=8, window_s=0.2, max_pending=16,
        on_batch=sizes.append,
    )  # fmt: skip
    batcher.start()
    try:
        degenerate = SamplingParams(max_new_tokens=6, temperature=1e-300)
        outcomes = _run_batch(batcher, [*embeds, embeds[0]], [*innocent, degenerate], gate)
        assert sizes[0] == 7, sizes  # one batch: the degenerate row and six innocent ones
        assert isinstance(outcomes[6], RuntimeError)  # "probability tensor contains inf/nan": that row only
        assert outcomes[:5] == expected
        assert isinstance(outcomes[5], str) and outcomes[5]

        gate.clear()
        sizes.clear()
        poison.append(embeds[2].clone())
        outcomes = _run_batch(batcher, [*embeds, poison[0]], [*innocent, SamplingParams(max_new_tokens=12)], gate)
        assert sizes[0] == 7, sizes
        assert isinstance(outcomes[6], RuntimeError)
        assert outcomes[:5] == expected  # replayed after the failure: the same tokens, each delivered once
        assert isinstance(outcomes[5], str) and outcomes[5]
    finally:
        gate.set()
        batcher.stop()


def test_a_stored_topic_job_keeps_its_entities_and_adjacent_topics() -> None:
    """What a worker reads back from the registry is what the admin API was given (issue 14: the request's names
    and adjacent topics reach the topic trainer)."""
    from lethe.service.jobs import job_from_input

    data = {"topic": "Harry Potter", "seed_prompts": ["Who is Harry?"], "entities": ["Hermione Granger", "Hogwarts"],
            "keep_topics": ["The Chronicles of Narnia"], "options": {}}  # fmt: skip
    job = job_from_input("job-1", "fs-1", "hp", "eco", data)
    assert (job.topic, job.seed_prompts) == ("Harry Potter", ["Who is Harry?"])
    assert job.entities == ["Hermione Granger", "Hogwarts"] and job.keep_topics == ["The Chronicles of Narnia"]
