"""Prometheus metrics of the operator: what it reconciled, restarted, escalated and rolled back, and how fast.

One registry per operator process (not the global default one, so tests and a second
operator in the same interpreter never collide), served on ``--metrics-port`` by
prometheus-client's own HTTP server thread. Counters are bumped by the controllers right
after the action they count was carried out, never when it was merely planned.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

#: Seconds from a Kubernetes event to the first API write it caused (pod created/deleted, status).
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


@dataclass
class Metrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        self.reconciles = Counter(
            "mlvisor_reconciles",
            "Reconciles by resource kind and result (ok, invalid, gone, error).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.restarts = Counter(
            "mlvisor_restarts",
            "Restarts carried out: worker pods recreated (TrainingJob), restarts counted (ModelServer).",
            ["kind"],
            registry=self.registry,
        )
        self.escalations = Counter(
            "mlvisor_escalations",
            "Supervisors that gave up: phase Failed, by kind and reason.",
            ["kind", "reason"],
            registry=self.registry,
        )
        self.rollbacks = Counter(
            "mlvisor_rollbacks",
            "ModelServers rolled back to their last good model version.",
            registry=self.registry,
        )
        self.api_requests = Counter(
            "mlvisor_api_requests",
            "Requests the reconcilers made to the API server, by verb (kopf's own watches not included).",
            ["verb"],
            registry=self.registry,
        )
        self.watch_events = Counter(
            "mlvisor_watch_events",
            "Watch events by object kind and what became of them: queued (a reconcile), "
            "unchanged (nothing a reconcile reads changed: dropped, no API call), echo (exactly a "
            "TrainingJob's own write: that job is not reconciled again for it).",
            ["kind", "result"],
            registry=self.registry,
        )
        self.event_to_action = Histogram(
            "mlvisor_event_to_action_seconds",
            "From a Kubernetes event to the first API write the operator made for it.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )

    def serve(self, port: int, addr: str = "0.0.0.0") -> None:
        """Serve /metrics from a daemon thread."""
        start_http_server(port, addr=addr, registry=self.registry)
