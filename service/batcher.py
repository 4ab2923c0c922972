"""Micro-batching of concurrent generations on worker threads.

A worker takes the oldest waiting request and, when other generations are already waiting or
running (so company is likely), keeps collecting for ``window_s`` or until the batch is full; an
idle server starts a lone request at once. It then decodes the batch with ``decode_steps`` and
hands each step's events to the requests' sinks. Rows are independent (each has its own
generator), so a request's tokens do not depend on its batch-mates.

Worker ``i`` only takes work while workers ``0..i-1`` are all decoding. A lone stream of
requests therefore always runs on worker 0 (one thread, one OpenMP team, warm caches), while a
request that arrives during a long batch starts at once on the next worker instead of waiting
for that batch to end (the decoder cannot add rows to a running batch).
The queue is bounded: ``submit`` raises ``Overloaded`` when it is full.

One row's failure never fails its batch company: when a batch of several rows raises, each row
that has not finished is decoded again on its own, its already delivered steps replayed silently
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
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch

from lethe.runtime.generation import SamplingParams, StepEvent

logger = logging.getLogger("lethe.batcher")

# ``decode_steps(embeds, params)``, or ``(embeds, params, guides)`` when a row's plan must keep acting while it
# generates (``LanguageModel.guide``: entity mentions in generated tokens, surrogate names written back).
DecodeSteps = Callable[..., Iterator[list[StepEvent]]]
Sink = Callable[[StepEvent | BaseException], None]


class Overloaded(RuntimeError):
    """The generation queue is full."""


@dataclass
class _Request:
    embeds: torch.Tensor
    params: SamplingParams
    sink: Sink
    guide: object | None = None
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


class GenerationHandle:
    """Lets the submitter abandon its request (its row's events are then dropped)."""

    def __init__(self, request: _Request):
        self._request = request

    def cancel(self) -> None:
        """Stop delivering events; a batch whose rows are all cancelled stops decoding."""
        self._request.cancelled = True


class MicroBatcher:
    """Bounded queue of generation requests decoded in micro-batches by worker threads."""

    def __init__(
        self,
        decode_steps: DecodeSteps,
        max_batch_size: int = 8,
        window_s: float = 0.005,
        max_pending: int = 64,
        workers: int = 1,
        on_batch: Callable[[int], None] | None = None,
    ):
        if max_batch_size < 1 or workers < 1 or max_pending < 1:
            raise ValueError("batch size, workers and queue depth must be >= 1")
        self._decode_steps = decode_steps
        self.max_batch_size = max_batch_size
        self.window_s = max(0.0, window_s)
        self.max_pending = max_pending
        self.on_batch: Callable[[int], None] = on_batch or (lambda size: None)
        self._waiting: deque[_Request] = deque()
        self._state = threading.Condition()
        self._busy = [False] * workers
        self._running = 0
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
        return self._running

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
        """Stop the workers after their current batch; requests still waiting get an error."""
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
        self, embeds: torch.Tensor, params: SamplingParams, sink: Sink, guide: object | None = None
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

    def _collect(self, index: int) -> list[_Request] | None:
        """Worker ``index``'s next batch (marking it busy), or ``None`` when told to stop."""
        with self._state:
            self._state.wait_for(lambda: self._stopping or (bool(self._waiting) and all(self._busy[:index])))
            if self._stopping:
                return None
            batch = [self._waiting.popleft()]
            company_likely = bool(self._waiting) or self._running > 0
            deadline = time.monotonic() + (self.window_s if company_likely else 0.0)
            while len(batch) < self.max_batch_size:
                if self._waiting:
                    batch.append(self._waiting.popleft())
                    continue
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self._stopping:
                    break
                self._state.wait(remaining)
            self._busy[index] = True
            self._running += len(batch)
            self._state.notify_all()
        return batch

    def _release(self, index: int, rows: int) -> None:
        with self._state:
            self._busy[index] = False
            self._running -= rows
            self._state.notify_all()

    def _work(self, index: int) -> None:
        while True:
            batch = self._collect(index)
            if batch is None:
                return
            try:
                live = [r for r in batch if not r.cancelled]
                if live:
                    self._run(live)
            finally:
                self._release(index, len(batch))

    def _run(self, batch: list[_Request]) -> None:
        self.on_batch(len(batch))
        failure = self._decode(batch, [0] * len(batch))
        if failure is None:
            return
        logger.error("decoding a batch of %d failed: %s", len(batch), type(failure).__name__)
        logger.debug("decoding failure", exc_info=failure)
        if len(batch) == 1:
            self._fail(batch[0], failure)
            return
        for request in batch:  # isolate: each unfinished row alone, its delivered steps replayed silently
            if request.done or request.cancelled:
                continue
            alone = self._decode([request], [len(request.delivered)])
            if alone is not None:
                logger.debug("a row failed alone: %s", type(alone).__name__)
                self._fail(request, alone)

    @staticmethod
    def _fail(request: _Request, error: BaseException) -> None:
        if not request.done and not request.cancelled:
            request.deliver(error)

    def _decode(self, batch: list[_Request], replay: list[int]) -> BaseException | None:
        """Decode ``batch``, delivering each row's events after its first ``replay[row]`` steps (which must repeat
        the tokens already delivered); the exception that stopped it, if any."""
        steps = None
        seen = [0] * len(batch)
        try:
            inputs: list[list[Any]] = [[r.embeds for r in batch], [r.params for r in batch]]
            if any(r.guide is not None for r in batch):
                inputs.append([r.guide for r in batch])
            steps = self._decode_steps(*inputs)
            for events in steps:
                for event in events:
                    request = batch[event.row]
                    step = seen[event.row]
                    seen[event.row] += 1
                    if step < replay[event.row]:
                        if request.delivered[step] != event.token_id:
                            raise RuntimeError("a replayed row drew other tokens than it delivered")
                        continue
                    if event.finished:
                        request.done = True
                    if not request.cancelled:
                        request.delivered.append(event.token_id)
                        request.deliver(event)
                if all(r.done or r.cancelled for r in batch):
                    break
        except Exception as exc:
            return exc
        finally:
            if steps is not None and hasattr(steps, "close"):
                steps.close()
        return None
