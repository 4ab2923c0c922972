"""Where generations run: the ``Backend`` protocol the routes talk to, and the local implementation.

Request parsing, unlearning routing, errors, metrics and the audit log sit above this layer and
only need ``backend.embedder`` (tokenizer, chat template, embedding matrix). A backend gets a
rendered prompt, the intervention plan (``None`` for unflagged requests, which must be served
exactly as the base model serves them) and sampling parameters.

``LocalBackend`` runs a ``LanguageModel`` in-process behind a ``MicroBatcher``;
``service.proxy_backend.ProxyBackend`` generates on a remote upstream, with prompt embeddings for
flagged requests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

import torch

from lethe.runtime.embedder import PromptEmbedder
from lethe.runtime.generation import SamplingParams, StepEvent
from lethe.runtime.interventions import InterventionPlan
from lethe.runtime.model import LanguageModel, PromptLogprobs
from lethe.runtime.prompt import TemplatedPrompt
from lethe.service.batcher import GenerationHandle, MicroBatcher, Overloaded
from lethe.service.generation_defaults import GenerationDefaults
from lethe.service.protocol import ModelCard
from lethe.service.response_shapes import LETHE_SHAPES, ResponseShapes


@dataclass(frozen=True)
class BackendRequest:
    """One generation: a rendered prompt, or client-supplied embeddings, with an optional plan.

    ``explicit`` names the sampling parameters the client set (the others in ``params`` are
    defaults); ``kind`` is the endpoint it called. A proxy passes on only what the client set.
    """

    prompt: TemplatedPrompt
    params: SamplingParams
    plan: InterventionPlan | None = None
    embeds: torch.Tensor | None = None
    explicit: frozenset[str] = frozenset()
    kind: str = "completions"


@dataclass(frozen=True)
class Delta:
    """A piece of streamed output; the last one has ``finished`` and a finish reason."""

    text: str
    finished: bool = False
    finish_reason: str | None = None
    completion_tokens: int = 0
    stop_reason: str | int | None = None


@dataclass(frozen=True)
class Completion:
    """A whole generated completion; ``token_ids`` are the generated tokens (an end-of-sequence token that ended
    it is not among them: ``ended_by_eos`` says so)."""

    text: str
    finish_reason: str
    completion_tokens: int
    stop_reason: str | int | None = None
    token_ids: tuple[int, ...] = ()
    ended_by_eos: bool = False


@runtime_checkable
class Backend(Protocol):
    """What the routes need from a model server, local or remote."""

    passthrough: bool
    """Whether unflagged requests are forwarded as sent (proxy mode) rather than served here."""

    @property
    def embedder(self) -> PromptEmbedder:
        """Tokenizer, chat template and embedding matrix of the served model."""
        ...

    @property
    def model_id(self) -> str:
        """The model name clients send."""
        ...

    @property
    def context_length(self) -> int | None:
        """Most positions the model handles, if known."""
        ...

    def models(self) -> list[ModelCard]:
        """Served models."""
        ...

    @property
    def response_shapes(self) -> ResponseShapes:
        """How responses served here are written."""
        ...

    @property
    def generation_defaults(self) -> GenerationDefaults:
        """Sampling defaults from the model's generation config."""
        ...

    def embedding_rows(self, embeds: torch.Tensor) -> torch.Tensor:
        """Uploaded ``prompt_embeds`` as rows of the embedding matrix (what the classifiers and plans work on)."""
        ...

    def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        """Text deltas of one generation (raises ``Overloaded`` at the first step when full)."""
        ...

    async def generate(self, request: BackendRequest) -> Completion:
        """One whole generation."""
        ...

    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], plan: InterventionPlan | None, top_n: int
    ) -> PromptLogprobs:
        """Log-probability of each prompt token given the ones before (echo scoring)."""
        ...

    def load(self) -> tuple[int, int]:
        """``(waiting, running)`` generations."""
        ...

    def ready(self) -> bool:
        """True when requests can be served."""
        ...

    def local_model(self) -> LanguageModel | None:
        """The in-process model (for training jobs), if this backend has one."""
        ...

    def start(self) -> None:
        """Start background workers."""
        ...

    def close(self) -> None:
        """Stop background workers."""
        ...


class LocalBackend:
    """A ``LanguageModel`` in this process: micro-batched generation, scoring on a thread pool."""

    passthrough = False
    response_shapes: ResponseShapes = LETHE_SHAPES

    def __init__(
        self,
        model: LanguageModel,
        max_batch_size: int = 8,
        batch_window_s: float = 0.005,
        max_pending: int = 64,
        decode_workers: int = 2,
        scoring_threads: int = 2,
        on_batch: Callable[[int], None] | None = None,
        generation_defaults: GenerationDefaults | None = None,
        served_names: Sequence[str] = (),
    ):
        self.model = model
        self.served_names = list(served_names) or [model.name]
        self.generation_defaults = generation_defaults or GenerationDefaults()
        self.batcher = MicroBatcher(
            model.open_batch, max_batch_size, batch_window_s, max_pending, decode_workers, on_batch
        )
        self._scoring = ThreadPoolExecutor(max_workers=max(1, scoring_threads), thread_name_prefix="lethe-score")
        self._scoring_inflight = 0
        self._max_pending = max_pending
        self._created = int(time.time())

    @property
    def embedder(self) -> PromptEmbedder:
        """The model's embedder."""
        return self.model.embedder

    @property
    def model_id(self) -> str:
        """The model's first served name (by default the name it was loaded under)."""
        return self.served_names[0]

    @property
    def context_length(self) -> int | None:
        """``max_position_embeddings`` of the model config."""
        value = self.model.embedder.config.get("max_position_embeddings")
        return int(value) if value else None

    def models(self) -> list[ModelCard]:
        """The local model, once per served name (aliases, like vLLM's ``--served-model-name``)."""
        return [ModelCard(id=name, created=self._created) for name in self.served_names]

    def start(self) -> None:
        """Start the decoding workers."""
        self.batcher.start()

    def close(self) -> None:
        """Stop the decoding workers and the scoring pool."""
        self.batcher.stop()
        self._scoring.shutdown(wait=False, cancel_futures=True)

    def ready(self) -> bool:
        """True while the decoding workers run."""
        return self.batcher.alive

    def load(self) -> tuple[int, int]:
        """Waiting and running generations (plus scoring requests in flight)."""
        return self.batcher.pending, self.batcher.running + self._scoring_inflight

    def local_model(self) -> LanguageModel:
        """The served model."""
        return self.model

    def embedding_rows(self, embeds: torch.Tensor) -> torch.Tensor:
        """Uploaded embeddings are fed to the model as they are: they are rows already."""
        return embeds

    def _submit(self, request: BackendRequest, sink: Callable[[StepEvent | BaseException], None]) -> GenerationHandle:
        """Embed the prompt with its plan applied and queue it, with the guide that keeps the plan on while it
        generates."""
        source = request.embeds if request.embeds is not None else request.prompt
        ids = request.prompt.ids  # for uploaded embeddings: the tokens they were mapped back to
        embeds = self.model.prompt_embeddings(source, request.plan, ids)
        return self.batcher.submit(embeds, request.params, sink, self.model.guide(source, request.plan, ids))

    async def stream(self, request: BackendRequest) -> AsyncIterator[Delta]:
        """Submit to the batcher and relay its events from the worker thread to this event loop."""
        loop = asyncio.get_running_loop()
        events: asyncio.Queue[StepEvent | BaseException] = asyncio.Queue()

        def sink(item: StepEvent | BaseException) -> None:
            loop.call_soon_threadsafe(events.put_nowait, item)

        handle = self._submit(request, sink)
        produced = 0
        try:
            while True:
                item = await events.get()
                if isinstance(item, BaseException):
                    raise item
                if item.token_id is not None:
                    produced += 1
                yield Delta(item.delta, item.finished, item.finish_reason, produced)
                if item.finished:
                    return
        finally:
            handle.cancel()

    async def generate(self, request: BackendRequest) -> Completion:
        """One whole completion; text is gathered on the worker thread, the event loop wakes once."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[Completion] = loop.create_future()
        parts: list[str] = []
        token_ids: list[int] = []

        def settle(value: Completion | BaseException) -> None:
            if done.done():
                return
            if isinstance(value, BaseException):
                done.set_exception(value)
            else:
                done.set_result(value)

        def sink(item: StepEvent | BaseException) -> None:
            if isinstance(item, BaseException):
                loop.call_soon_threadsafe(settle, item)
                return
            parts.append(item.delta)
            if item.token_id is not None:
                token_ids.append(item.token_id)
            if item.finished:
                reason = item.finish_reason or "stop"
                ended_by_eos = item.token_id is None and reason == "stop"
                completion = Completion(
                    "".join(parts), reason, len(token_ids), token_ids=tuple(token_ids), ended_by_eos=ended_by_eos
                )
                loop.call_soon_threadsafe(settle, completion)

        handle = self._submit(request, sink)
        try:
            return await done
        finally:
            handle.cancel()

    async def prompt_logprobs(
        self, prompt_ids: Sequence[int], plan: InterventionPlan | None, top_n: int
    ) -> PromptLogprobs:
        """``LanguageModel.prompt_logprobs`` on the scoring pool (bounded like the generation queue)."""
        if self._scoring_inflight >= self._max_pending:
            raise Overloaded("too many scoring requests in flight")
        self._scoring_inflight += 1
        try:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(self._scoring, self.model.prompt_logprobs, list(prompt_ids), plan, top_n)
        finally:
            self._scoring_inflight -= 1
