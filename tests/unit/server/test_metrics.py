"""The request metrics, kept as plain numbers and exposed at scrape time, read as the client library's would."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from mlvisor.server.metrics import LATENCY_BUCKETS, ServerMetrics

OBSERVED = [("infer", 200, 0.0001), ("infer", 200, 0.01), ("infer", 200, 0.0100001), ("infer", 200, 3.0),
            ("infer", 400, 0.002), ("ready", 200, 20.0), ("infer", 200, 0.0005)]


def samples(registry: CollectorRegistry) -> dict:
    out = {}
    for family in text_string_to_metric_families(generate_latest(registry).decode()):
        for s in family.samples:
            if s.name.startswith("mlvisor_request") and not s.name.endswith("_created"):
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def test_the_plain_counters_expose_what_the_client_library_would() -> None:
    ours = ServerMetrics()
    reference = CollectorRegistry()
    count = Counter("mlvisor_requests", "x", ["endpoint", "status"], registry=reference)
    latency = Histogram("mlvisor_request_duration_seconds", "x", ["endpoint", "status"], buckets=LATENCY_BUCKETS,
                        registry=reference)
    for endpoint, status, seconds in OBSERVED:
        ours.observe_request(endpoint, status, seconds)
        count.labels(endpoint, str(status)).inc()
        latency.labels(endpoint, str(status)).observe(seconds)
    got, want = samples(ours.registry), samples(reference)
    assert got == want
    assert got[("mlvisor_requests_total", (("endpoint", "infer"), ("status", "200")))] == 5
