"""Prometheus metrics of the service (GET /metrics): requests by status, image errors by kind, requests refused by a
per-client limit, model batch sizes, request latency, queue depth and the process's memory and CPU, in one registry
per app."""
from __future__ import annotations

import time

BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServiceMetrics:
    """Counters and histograms of one app; `exposition()` is the Prometheus text format."""

    def __init__(self):
        from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)  # process_resident_memory_bytes, CPU seconds, open files (Linux)
        self.requests = Counter("agiqa_requests", "HTTP requests by path and status code", ["path", "status"],
                                registry=self.registry)
        self.image_errors = Counter("agiqa_image_errors", "images that could not be scored, by kind", ["kind"],
                                    registry=self.registry)
        self.images = Counter("agiqa_images_scored", "images scored", registry=self.registry)
        self.batch_size = Histogram("agiqa_batch_size", "images per model batch", buckets=BATCH_BUCKETS,
                                    registry=self.registry)
        self.batch_seconds = Histogram("agiqa_batch_seconds", "model time per batch", buckets=LATENCY_BUCKETS,
                                       registry=self.registry)
        self.latency = Histogram("agiqa_request_seconds", "request latency, by path", ["path"],
                                 buckets=LATENCY_BUCKETS, registry=self.registry)
        self.queue = Gauge("agiqa_queue_images", "images waiting for the model", registry=self.registry)
        self.refusals = Counter("agiqa_client_limited", "requests refused (429) by a per-client limit, by reason: "
                                "in_flight, rate, queue_share", ["reason"], registry=self.registry)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.batch_seconds.observe(seconds)

    def observe_request(self, path: str, status: int, seconds: float) -> None:
        self.requests.labels(path, str(status)).inc()
        self.latency.labels(path).observe(seconds)

    def observe_refusal(self, reason: str) -> None:
        self.refusals.labels(reason).inc()

    def exposition(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class RequestMetrics:
    """ASGI middleware: every answer counted by path (one of `routes`, else "other") and status, with its latency."""

    def __init__(self, app, metrics: ServiceMetrics, routes: tuple[str, ...]):
        self.app, self.metrics, self.routes = app, metrics, routes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        started, status = time.perf_counter(), 500  # 500 unless a response starts (an exception escapes)

        async def sending(message):
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, sending)
        finally:
            path = scope["path"] if scope["path"] in self.routes else "other"
            self.metrics.observe_request(path, status, time.perf_counter() - started)
