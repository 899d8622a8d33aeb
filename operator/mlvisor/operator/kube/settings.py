"""Operator-process options and the kopf settings they imply, chosen and explained in one place.

``Options`` is what ``mlvisor operator`` was started with (flags and environment);
``apply_settings`` writes the kopf settings every production kopf operator ends up setting
explicitly (docs/operator.md says why): watch timeouts so a silently dead watch is re-opened,
our own annotation prefix and finalizer name, and event posting limited to warnings.
No kopf import at module level, so ``mlvisor --help`` stays fast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

from mlvisor.operator.plan import OperatorConfig

PREFIX = "mlvisor.dev"


@dataclass(frozen=True)
class Options:
    namespaces: tuple[str, ...] = ()
    """Namespaces to serve; empty: all namespaces (cluster-wide)."""
    liveness_port: int | None = 8080
    """Port of kopf's liveness endpoint (/healthz); None: no endpoint."""
    metrics_port: int | None = 9090
    """Port of the Prometheus /metrics endpoint; None: not served."""
    log_format: str = "json"
    """json (one object per line with resource/namespace/name keys) or text."""
    verbose: bool = False
    watch_server_timeout: float = 300.0
    """Asks the API server to end each watch after this many seconds (kopf then re-lists)."""
    watch_client_timeout: float = 330.0
    """Client-side cut of a watch that went silent without being closed (kopf#585, #957, Twingate#642)."""
    watch_connect_timeout: float = 30.0
    request_timeout: float = 60.0
    """Every non-watch API request of kopf and of the controllers."""
    reconcile_workers: int = 64
    """Most reconciles at once (MaxConcurrentReconciles); the rest wait holding only their key.

    Twice the API client's requests in flight (32): more reconciles than that only wait for the
    client while holding their parsed resource and plan (bench/README.md: 512 -> 64 took idle RSS
    at 1,000 jobs from 125 to 107 MB with pods/s unchanged)."""
    config: OperatorConfig = field(default_factory=OperatorConfig)


def config_from_env(environ: Any = None) -> OperatorConfig:
    """OperatorConfig from MLVISOR_* environment variables (the Deployment sets MLVISOR_IMAGE)."""
    env = os.environ if environ is None else environ
    defaults = OperatorConfig()
    return OperatorConfig(
        image=env.get("MLVISOR_IMAGE") or defaults.image,
        image_pull_policy=env.get("MLVISOR_IMAGE_PULL_POLICY") or defaults.image_pull_policy,
        models_claim=env.get("MLVISOR_MODELS_CLAIM") or defaults.models_claim,
    )


def _float_env(name: str, default: float) -> float:
    value = os.environ.get(name)
    if not value:
        return default
    try:
        return float(value)
    except ValueError:
        raise ValueError(f"{name}: expected a number of seconds, got {value!r}") from None


def timeouts_from_env() -> dict[str, float]:
    """Watch timeouts can be tuned without a new image (MLVISOR_WATCH_SERVER_TIMEOUT, ...)."""
    return {
        "watch_server_timeout": _float_env("MLVISOR_WATCH_SERVER_TIMEOUT", Options.watch_server_timeout),
        "watch_client_timeout": _float_env("MLVISOR_WATCH_CLIENT_TIMEOUT", Options.watch_client_timeout),
        "watch_connect_timeout": _float_env("MLVISOR_WATCH_CONNECT_TIMEOUT", Options.watch_connect_timeout),
        "request_timeout": _float_env("MLVISOR_REQUEST_TIMEOUT", Options.request_timeout),
    }


def reconcile_workers_from_env() -> int:
    """MLVISOR_RECONCILE_WORKERS: more is faster in a burst and holds more memory (bench/README.md)."""
    value = os.environ.get("MLVISOR_RECONCILE_WORKERS")
    if not value:
        return Options.reconcile_workers
    if not value.strip().isdigit() or int(value) < 1:
        raise ValueError(f"MLVISOR_RECONCILE_WORKERS: expected a whole number of at least 1, got {value!r}")
    return int(value)


def apply_settings(settings: Any, options: Options) -> None:
    """Configure a ``kopf.OperatorSettings`` for mlvisor."""
    import kopf

    # The API server parses timeoutSeconds as an integer: kopf sends the number as given, and
    # "300.0" was refused with 400 (strconv.ParseInt) on every watch of a real API server.
    settings.watching.server_timeout = max(1, round(options.watch_server_timeout))
    settings.watching.client_timeout = options.watch_client_timeout
    settings.watching.connect_timeout = options.watch_connect_timeout
    settings.networking.request_timeout = options.request_timeout
    settings.networking.connect_timeout = options.watch_connect_timeout
    # mlvisor registers no timers, daemons or delete handlers, so kopf never adds this
    # finalizer; the name is set anyway so nothing kopf-branded ever lands on a resource.
    settings.persistence.finalizer = f"{PREFIX}/finalizer"
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(prefix=PREFIX)
    # The controllers post their own Events for every decision; kopf adds only its warnings.
    settings.posting.level = logging.WARNING
    settings.posting.reporting_component = "mlvisor-operator"
    settings.posting.event_name_prefix = "mlvisor-"
