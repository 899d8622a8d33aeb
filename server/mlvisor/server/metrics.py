"""Prometheus metrics of one server, in a registry of its own (so tests can build many apps).

Per-request cost matters (the server is benchmarked): the request count and latency histogram
are plain Python numbers per (endpoint, status), updated with a bisect, and turned into
Prometheus families only when /metrics is scraped (a collector of our own). The client
library's Histogram.observe took ~2.7 us per request (a lock per bucket walk), as much as
decoding the request. Everything is updated on the event loop's thread. The endpoint label
comes from a few string tests on the path, not from routing again. Recorded by a pure ASGI
middleware (and the raw inference route), so 404s, 413s and 500s are counted like everything else.
"""

from __future__ import annotations

import bisect
import time
from collections.abc import Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.utils import floatToGoString

LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096, 16384)


class _Requests:
    """Count, latency sum and latency buckets (not cumulative; the last is +Inf) of one (endpoint, status)."""

    __slots__ = ("buckets", "count", "sum")

    def __init__(self) -> None:
        self.count = 0
        self.sum = 0.0
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)


class RequestCollector:
    """mlvisor_requests_total and mlvisor_request_duration_seconds, built from the plain counters at scrape time."""

    _LE = [floatToGoString(b) for b in LATENCY_BUCKETS] + ["+Inf"]

    def __init__(self) -> None:
        self.stats: dict[tuple[str, int], _Requests] = {}

    def collect(self) -> Iterator[Any]:
        count = CounterMetricFamily(
            "mlvisor_requests", "HTTP requests answered, by endpoint and status.", labels=["endpoint", "status"])
        latency = HistogramMetricFamily(
            "mlvisor_request_duration_seconds", "Time from request start to response end, by endpoint and status.",
            labels=["endpoint", "status"])
        for (endpoint, status), r in sorted(self.stats.items()):
            labels = [endpoint, str(status)]
            count.add_metric(labels, r.count)
            cumulative, buckets = 0, []
            for le, n in zip(self._LE, r.buckets, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            latency.add_metric(labels, buckets, r.sum)
        yield count
        yield latency


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self._requests = RequestCollector()
        r.register(self._requests)
        self.batch_rows = Histogram(
            "mlvisor_batch_size_rows",
            "Rows per predict call (after micro-batching).",
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.batch_requests = Histogram(
            "mlvisor_batch_requests", "Requests merged into one predict call.", buckets=BATCH_BUCKETS, registry=r
        )
        self.queue_depth = Gauge("mlvisor_queue_depth", "Requests waiting for a predict call.", registry=r)
        self.load_seconds = Gauge(
            "mlvisor_model_load_seconds", "Seconds to load the artifact and run the warm-up prediction.", registry=r
        )
        self.model_ready = Gauge("mlvisor_model_ready", "1 when the model is loaded and warmed up.", registry=r)

    def observe_request(self, endpoint: str, status: int, seconds: float) -> None:
        stats = self._requests.stats
        r = stats.get((endpoint, status))
        if r is None:
            r = stats[(endpoint, status)] = _Requests()
        r.count += 1
        r.sum += seconds
        r.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1

    def observe_batch(self, rows: int, requests: int) -> None:
        self.batch_rows.observe(rows)
        self.batch_requests.observe(requests)


def endpoint_of(path: str) -> str:
    """A bounded label for a request path."""
    if path.startswith("/v2/models/"):
        if path.endswith("/infer"):
            return "infer"
        if path.endswith("/ready"):
            return "model_ready"
        return "model_metadata"
    if path == "/v2/health/ready":
        return "ready"
    if path == "/v2/health/live":
        return "live"
    if path == "/v2" or path == "/v2/":
        return "server_metadata"
    if path.startswith("/v1/models/") and path.endswith(":predict"):
        return "v1_predict"
    if path == "/metrics":
        return "metrics"
    if path in ("/docs", "/openapi.json", "/docs/oauth2-redirect", "/redoc"):
        return "docs"
    return "other"


class MetricsMiddleware:
    """Pure ASGI: times every HTTP request and records its status."""

    def __init__(self, app: Any, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        t0 = time.perf_counter()
        status = 500

        async def send_wrapper(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            self.metrics.observe_request(endpoint_of(scope["path"]), status, time.perf_counter() - t0)
