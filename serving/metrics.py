"""Prometheus metrics for ``/metrics``: request latency by route and status, inference latency and
request counts per model, micro-batch queue depth.

Each app has its own registry (tests build many apps in one process; the global registry would
refuse the second). With several uvicorn worker processes each worker answers for itself; scrape
them individually or run one worker per container, as the intranet deployments do.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class _ModelsCollector(Collector):
    """Read at scrape time from the manager, so gauges are never stale and cost nothing between scrapes."""

    def __init__(self, models: Callable[[], Any]) -> None:
        self._models = models

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depth = GaugeMetricFamily(
            "hazardlens_batch_queue_depth",
            "Images submitted to a model's micro-batcher and not yet answered",
            labels=["model", "version"],
        )
        in_flight = GaugeMetricFamily(
            "hazardlens_model_in_flight", "Requests holding a lease on a model", labels=["model", "version"]
        )
        loaded = GaugeMetricFamily(
            "hazardlens_model_loaded",
            "Models loaded in this worker (1 per model)",
            labels=["model", "version", "role", "engine"],
        )
        manager = self._models()
        for m in manager.loaded() if manager is not None else []:
            labels = [m["name"], m["version"]]
            depth.add_metric(labels, m["queue_depth"])
            in_flight.add_metric(labels, m["in_flight"])
            loaded.add_metric([*labels, m["role"], str(m["engine"])], 1)
        yield depth
        yield in_flight
        yield loaded


class Metrics:
    """The app's metrics; also the model manager's observer (``inference``, ``swapped``)."""

    def __init__(self, models: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.request_seconds = Histogram(
            "hazardlens_http_request_duration_seconds",
            "HTTP request latency by route template and status",
            ["method", "route", "status"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.inference_seconds = Histogram(
            "hazardlens_inference_duration_seconds",
            "Time from handing an image to a model until its detections are back (queue + batched forward pass)",
            ["model", "version"],
            registry=self.registry,
            buckets=_LATENCY_BUCKETS,
        )
        self.model_requests = Counter(
            "hazardlens_model_requests_total",
            "Images run through each model",
            ["model", "version"],
            registry=self.registry,
        )
        self.model_swaps = Counter(
            "hazardlens_model_swaps_total", "Production model changes in this worker", ["model"], registry=self.registry
        )
        self.registry.register(_ModelsCollector(models))

    def inference(self, name: str, version: str, seconds: float, images: int) -> None:
        self.inference_seconds.labels(name, version).observe(seconds)
        self.model_requests.labels(name, version).inc(images)

    def swapped(self, name: str, old: str | None, new: str | None) -> None:
        self.model_swaps.labels(name).inc()

    def render(self) -> tuple[bytes, str]:
        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class MetricsMiddleware:
    """Times every HTTP request, labelled by route *template* (``/v1/findings/{finding_id}/review``),
    so that ids in paths do not explode the number of series. Installed outermost."""

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            route = scope.get("route")
            template = getattr(route, "path", None) or "unmatched"
            self.metrics.request_seconds.labels(scope.get("method", ""), template, str(status)).observe(
                time.perf_counter() - start
            )


__all__ = ["Metrics", "MetricsMiddleware"]
