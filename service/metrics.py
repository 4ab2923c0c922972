"""Prometheus metrics of one gateway (its own registry, so several apps can live in one process).

Labels are route templates, status codes and forget-set ids: never request content.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)


class GatewayMetrics:
    """Counters, gauges and histograms exported on ``/metrics``."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("lethe_requests", "HTTP requests by route and status.", ["route", "status"], registry=r)
        self.latency = Histogram(
            "lethe_request_latency_seconds",
            "HTTP request latency by route.",
            ["route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference = Counter(
            "lethe_inference_requests",
            "Inference requests by route and whether any forget set flagged them.",
            ["route", "flagged"],
            registry=r,
        )
        self.flagged = Counter(
            "lethe_flagged_requests", "Inference requests flagged, per forget set.", ["forget_set"], registry=r
        )
        self.generation_latency = Histogram(
            "lethe_generation_latency_seconds",
            "Time from request to last token, by flagged-ness.",
            ["flagged"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.classifications = Counter(
            "lethe_classifications",
            "Prompts classified against the enabled forget sets (once per prompt of a request).",
            registry=r,
        )
        self.routing_latency = Histogram(
            "lethe_routing_latency_seconds",
            "Tokenizing, classifying and planning a request.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter("lethe_prompt_tokens", "Prompt tokens served.", registry=r)
        self.completion_tokens = Counter("lethe_completion_tokens", "Completion tokens generated.", registry=r)
        self.queue_depth = Gauge("lethe_queue_depth", "Generations waiting for a batch slot.", registry=r)
        self.running = Gauge("lethe_running_generations", "Generations being decoded.", registry=r)
        self.batch_size = Histogram(
            "lethe_batch_size", "Rows per decoding batch.", buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32), registry=r
        )
        self.rejected = Counter("lethe_rejected_requests", "Requests refused because the queue was full.", registry=r)
        self.forget_sets_live = Gauge("lethe_forget_sets_live", "Forget sets applied to requests now.", registry=r)
        self.jobs = Gauge("lethe_training_jobs", "Training jobs by state.", ["state"], registry=r)

    def observe_routing(self, route: str, forget_set_ids: Iterable[str], seconds: float) -> None:
        """Count one routed inference request."""
        ids = list(forget_set_ids)
        self.inference.labels(route, "true" if ids else "false").inc()
        for forget_set_id in ids:
            self.flagged.labels(forget_set_id).inc()
        self.routing_latency.observe(seconds)

    def bind_gauges(self, queue_depth: Callable[[], float], running: Callable[[], float]) -> None:
        """Read queue depth and running generations from the backend at scrape time."""
        self.queue_depth.set_function(queue_depth)
        self.running.set_function(running)

    def render(self) -> bytes:
        """The exposition text."""
        return generate_latest(self.registry)
