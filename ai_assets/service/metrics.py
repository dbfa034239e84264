"""The model service's Prometheus metrics."""

from __future__ import annotations

import collections
import time

import prometheus_client as prom


class Metrics:
    """The service's Prometheus metrics, in a registry of its own (one per app)."""

    def __init__(self) -> None:
        self.registry = prom.CollectorRegistry()
        r = self.registry
        self.requests = prom.Counter(
            "ai_assets_service_requests",
            "HTTP requests by endpoint and status",
            ["endpoint", "status"],
            registry=r,
        )
        self.errors = prom.Counter(
            "ai_assets_service_errors",
            "Rejected images and failed requests by kind",
            ["kind"],
            registry=r,
        )
        self.latency = prom.Histogram(
            "ai_assets_service_request_seconds",
            "Request latency, upload to answer",
            ["endpoint"],
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
            registry=r,
        )
        self.batch_size = prom.Histogram(
            "ai_assets_service_batch_size",
            "Images per model call",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256),
            registry=r,
        )
        self.model_calls = prom.Counter(
            "ai_assets_service_model_calls", "Model forward passes", registry=r
        )
        self.images = prom.Counter("ai_assets_service_images", "Images classified", registry=r)
        self.images_per_second = prom.Gauge(
            "ai_assets_service_images_per_second",
            "Images classified per second over the last 10 s",
            registry=r,
        )
        self.queue_depth = prom.Gauge(
            "ai_assets_service_queue_depth", "Images waiting for a model batch", registry=r
        )
        self.ready = prom.Gauge(
            "ai_assets_service_ready", "1 once the model is loaded and warmed", registry=r
        )
        self.info = prom.Info("ai_assets_service_model", "The model served", registry=r)
        self._recent: collections.deque[tuple[float, int]] = collections.deque()

    def classified(self, count: int) -> None:
        now = time.monotonic()
        self.images.inc(count)
        self._recent.append((now, count))
        while self._recent and self._recent[0][0] < now - 10:
            self._recent.popleft()
        self.images_per_second.set(sum(n for _, n in self._recent) / 10)
