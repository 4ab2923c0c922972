"""Continuous (iteration-level) batching of concurrent generations on worker threads.

A worker runs one ``DecodeBatch`` at a time. Between any two decoding steps, requests waiting in
the queue join the running batch (prefilled together, up to ``max_batch_size`` rows) and every
row that finished (or whose client went away) leaves it, so a short request never waits for a
long one to end and a finished row frees its slot at once. Rows are independent (each has its
own generator and positions), so a request's tokens do not depend on its batch company or on
when it joined. An idle worker that takes a request while others are already generating waits
up to ``window_s`` for company, so simultaneous arrivals share one prefill.

Worker ``i`` only takes work while workers ``0..i-1`` are all full (``max_batch_size`` rows, or
a batch that cannot take rows). A lone stream of requests therefore always runs on worker 0 (one
thread, one OpenMP team, warm caches); further workers only start once the first batch is full.
The queue is bounded: ``submit`` raises ``Overloaded`` when it is full.

One row's failure never fails its batch company: when a step (or a join) raises, each row that
has not finished is decoded again on its own, its already delivered steps replayed silently
(every row gets a concrete seed at submission, so a replay draws the same tokens; a replay that
differs fails that row). Only the row that fails alone gets the error.
"""

from __future__ import annotations

import dataclasses
import logging
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import torch

from lethe.runtime.generation import Guide, SamplingParams, StepEvent

logger = logging.getLogger("lethe.batcher")

Sink = Callable[[StepEvent | BaseException], None]


class RunningBatch(Protocol):
    """What the batcher drives: ``lethe.runtime.generation.DecodeBatch`` (``LanguageModel.open_batch``)."""

    def __len__(self) -> int: ...

    @property
    def can_join(self) -> bool: ...

    def join(
        self,
        prompts: Sequence[torch.Tensor],
        params: Sequence[SamplingParams],
        guides: Sequence[Guide | None] | None = None,
    ) -> list[int]: ...

    def step(self) -> list[StepEvent]: ...

    def leave(self, keys: Sequence[int]) -> None: ...


OpenBatch = Callable[[], RunningBatch]


class Overloaded(RuntimeError):
    """The generation queue is full."""


@dataclass
class _Request:
    embeds: torch.Tensor
    params: SamplingParams
    sink: Sink
    guide: Guide | None = None
    enqueued: float = field(default_factory=time.monotonic)
    cancelled: bool = False
    done: bool = False
    delivered: list[int | None] = field(default_factory=list)  # token ids of the steps handed on so far

    def deliver(self, item: StepEvent | BaseException) -> None:
        """Hand an event (or error) to the submitter; a sink that fails marks the row abandoned."""
        try:
            self.sink(item)
        except Exception:  # the consumer went away (e.g. its event loop closed): drop the row
            self.cancelled = True

    def hand_on(self, event: StepEvent) -> None:
        """Deliver one step's event (unless abandoned), remembering its token for a replay."""
        if event.finished:
            self.done = True
        if not self.cancelled:
            self.delivered.append(event.token_id)
            self.deliver(event)

    @property
    def over(self) -> bool:
        """Finished or abandoned: the row needs no more steps."""
        return self.done or self.cancelled


class GenerationHandle:
    """Lets the submitter abandon its request (its row leaves the batch before the next step)."""

    def __init__(self, request: _Request):
        self._request = request

    def cancel(self) -> None:
        """Stop delivering events; the row leaves its batch at the next step."""
        self._request.cancelled = True


class MicroBatcher:
    """Bounded queue of generation requests, decoded by worker threads in running batches rows join and leave."""

    def __init__(
        self,
        open_batch: OpenBatch,
        max_batch_size: int = 8,
        window_s: float = 0.005,
        max_pending: int = 64,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or workers < 1 or max_pending < 1:
            raise ValueError("batch size, workers and queue depth must be >= 1")
        self._open_batch = open_batch
        self.max_batch_size = max_batch_size
        self.window_s = max(0.0, window_s)
        self.max_pending = max_pending
        self.on_batch: Callable[[int], None] = on_batch or (lambda size: None)
        self._waiting: deque[_Request] = deque()
        self._state = threading.Condition()
        self._rows = [0] * workers  # rows each worker is decoding
        self._closed = [False] * workers  # a worker whose batch cannot take rows now
        self._workers = [
            threading.Thread(target=self._work, args=(i,), name=f"lethe-decode-{i}", daemon=True)
            for i in range(workers)
        ]
        self._started = False
        self._stopping = False

    @property
    def pending(self) -> int:
        """Requests waiting for a batch."""
        return len(self._waiting)

    @property
    def running(self) -> int:
        """Rows being decoded."""
        return sum(self._rows)

    @property
    def alive(self) -> bool:
        """True while every worker thread runs."""
        return self._started and not self._stopping and all(w.is_alive() for w in self._workers)

    def start(self) -> None:
        """Start the worker threads."""
        if not self._started:
            self._started = True
            for worker in self._workers:
                worker.start()

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the workers once their running rows finish; requests still waiting get an error."""
        with self._state:
            self._stopping = True
            left = list(self._waiting)
            self._waiting.clear()
            self._state.notify_all()
        for request in left:
            request.deliver(Overloaded("the server is shutting down"))
        for worker in self._workers:
            if worker.is_alive():
                worker.join(timeout)

    def submit(
        self, embeds: torch.Tensor, params: SamplingParams, sink: Sink, guide: Guide | None = None
    ) -> GenerationHandle:
        """Queue one prompt's embeddings (and its generation guide, if any); events (or an exception) go to
        ``sink`` from a worker thread."""
        if params.seed is None:  # the decoder would draw one anyway; fixing it here lets a failed batch be replayed
            params = dataclasses.replace(params, seed=secrets.randbits(63))
        request = _Request(embeds, params, sink, guide)
        with self._state:
            if self._stopping or not self._started:
                raise Overloaded("the generation workers are not running")
            if len(self._waiting) >= self.max_pending:
                raise Overloaded(f"{len(self._waiting)} generations are already waiting")
            self._waiting.append(request)
            self._state.notify_all()
        return GenerationHandle(request)

    def _full(self, index: int) -> bool:
        return self._closed[index] or self._rows[index] >= self.max_batch_size

    def _may_take(self, index: int) -> bool:
        """Whether worker ``index`` may take waiting work: every worker before it is full."""
        return bool(self._waiting) and all(self._full(j) for j in range(index))

    def _collect(self, index: int) -> list[_Request] | None:
        """An idle worker's first rows (marking them its own), or ``None`` when told to stop."""
        with self._state:
            self._state.wait_for(lambda: self._stopping or self._may_take(index))
            if self._stopping:
                return None
            taken = [self._waiting.popleft()]
            company_likely = bool(self._waiting) or self.running > 0
            deadline = time.monotonic() + (self.window_s if company_likely else 0.0)
            while len(taken) < self.max_batch_size:
                if self._waiting:
                    taken.append(self._waiting.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._state.wait(remaining)
            self._set_rows(index, len(taken))
        return taken

    def _take_more(self, index: int, rows: int, can_join: bool) -> list[_Request]:
        """Waiting requests a running worker adds to its batch of ``rows`` rows now (none when it cannot)."""
        with self._state:
            was_full = self._full(index)
            self._closed[index] = not can_join
            taken: list[_Request] = []
            if can_join and not self._stopping and all(self._full(j) for j in range(index)):
                while self._waiting and rows + len(taken) < self.max_batch_size:
                    taken.append(self._waiting.popleft())
            self._rows[index] = rows + len(taken)
            if self._full(index) != was_full or not self._rows[index]:  # at every step otherwise: wake no one
                self._state.notify_all()
        return taken

    def _set_rows(self, index: int, rows: int) -> None:
        """Record worker ``index``'s row count (under the lock) and wake workers that wait on it."""
        self._rows[index] = rows
        if rows == 0:
            self._closed[index] = False
        self._state.notify_all()

    def _work(self, index: int) -> None:
        while True:
            taken = self._collect(index)
            if taken is None:
                return
            try:
                self._run(index, taken)
            except Exception:  # never lose the worker thread
                logger.exception("decode worker %d failed", index)
            finally:
                with self._state:
                    self._set_rows(index, 0)

    def _run(self, index: int, newcomers: list[_Request]) -> None:
        """Decode until the batch is empty and nothing more may join, taking waiting requests at every step."""
        batch = self._open_batch()
        rows: dict[int, _Request] = {}
        while True:
            joining = [r for r in newcomers if not r.cancelled]
            if joining:
                try:  # a failed join leaves the running rows as they were: only the newcomers are isolated
                    keys = batch.join([r.embeds for r in joining], [r.params for r in joining],
                                      [r.guide for r in joining])  # fmt: skip
                except Exception as failure:
                    self._isolate(index, joining, failure)
                else:
                    rows.update(zip(keys, joining, strict=True))
                    self.on_batch(len(batch))
            if rows:
                try:
                    for event in batch.step():
                        rows[event.row].hand_on(event)
                except Exception as failure:
                    self._isolate(index, [r for r in rows.values() if not r.over], failure)
                    batch, rows = self._open_batch(), {}
                gone = [key for key, request in rows.items() if request.over]
                batch.leave([key for key in gone if not rows[key].done])
                for key in gone:
                    del rows[key]
            newcomers = self._take_more(index, len(rows), batch.can_join)
            if not rows and not newcomers:
                return

    def _isolate(self, index: int, requests: list[_Request], failure: BaseException) -> None:
        """After a failed step: decode each unfinished row alone; only a row that fails alone gets an error."""
        logger.error("decoding a batch of %d failed: %s", len(requests), type(failure).__name__)
        logger.debug("decoding failure", exc_info=failure)
        if len(requests) == 1:
            self._fail(requests[0], failure)
            return
        with self._state:
            self._closed[index] = True  # decoding rows one by one: the next worker takes new work meanwhile
            self._state.notify_all()
        for request in requests:
            alone = self._decode_alone(request)
            if alone is not None:
                logger.debug("a row failed alone: %s", type(alone).__name__)
                self._fail(request, alone)

    @staticmethod
    def _fail(request: _Request, error: BaseException) -> None:
        if not request.over:
            request.deliver(error)

    def _decode_alone(self, request: _Request) -> BaseException | None:
        """Decode one row in a batch of its own, its delivered steps replayed silently (they must draw the same
        tokens); the exception that stopped it, if any."""
        replay = len(request.delivered)
        seen = 0
        try:
            batch = self._open_batch()
            batch.join([request.embeds], [request.params], [request.guide])
            while batch and not request.over:
                for event in batch.step():
                    step, seen = seen, seen + 1
                    if step < replay:
                        if request.delivered[step] != event.token_id:
                            raise RuntimeError("a replayed row drew other tokens than it delivered")
                        continue
                    request.hand_on(event)
        except Exception as exc:
            return exc
        return None
