"""Server settings: the contract with the operator (Deployment env) and the local runtime (flags).

Every setting comes from a flag or, when the flag is absent, from an ``MLVISOR_*`` environment
variable, then from the default; a flag always wins. Kept free of FastAPI/sklearn imports so the
CLI can parse and validate settings before paying for the heavy imports.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvisor import api

_BATCHING = api.Batching()
DEFAULT_HOST = "0.0.0.0"
DEFAULT_PORT = api.SERVER_HTTP_PORT
DEFAULT_GRPC_PORT = api.SERVER_GRPC_PORT
DEFAULT_MAX_BATCH_SIZE = _BATCHING.max_batch_size
DEFAULT_MAX_LATENCY_MS = _BATCHING.max_latency_ms
DEFAULT_MAX_BODY_BYTES = 8 * 1024 * 1024
DEFAULT_MAX_ROWS = 10_000
DEFAULT_MAX_QUEUE = 256
DEFAULT_REQUEST_TIMEOUT_SECONDS = 30.0
DEFAULT_LOG_LEVEL = "info"


class SettingsError(ValueError):
    """A flag or environment variable has an unusable value."""


@dataclass(frozen=True)
class Settings:
    model_dir: Path
    """The artifact version directory; with ``model_uri``, where it is downloaded to."""
    model_name: str | None = None
    """V2 model name; None means metadata.name."""
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    grpc_port: int = DEFAULT_GRPC_PORT
    """Port of the V2 gRPC service (inference.GRPCInferenceService); 0 disables it."""
    max_batch_size: int = DEFAULT_MAX_BATCH_SIZE
    """Rows per merged predict call; 1 disables batching (predictions still run off the loop)."""
    max_latency_ms: float = DEFAULT_MAX_LATENCY_MS
    """Longest time the first queued request waits for others to join its batch."""
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES
    max_rows: int = DEFAULT_MAX_ROWS
    """Rows allowed in one request."""
    max_queue: int = DEFAULT_MAX_QUEUE
    """Requests allowed to wait for a predict call; one more is answered 503 with Retry-After."""
    request_timeout_seconds: float = DEFAULT_REQUEST_TIMEOUT_SECONDS
    """Longest a request may take (body upload, queueing, prediction) before it is answered with an error."""
    log_level: str = DEFAULT_LOG_LEVEL
    model_uri: str | None = None
    """An artifact version in an object store or on a web server (s3://, https://): downloaded
    into ``model_dir``, verified, then loaded (:func:`mlvisor.trainer.storage.fetch_artifact`)."""

    def __post_init__(self) -> None:
        if self.model_uri is not None and not self.model_uri.startswith(("s3://", "https://", "http://")):
            raise SettingsError(f"model URI must start with s3://, https:// or http://, got {self.model_uri!r}")
        if not 0 < self.port < 65536:
            raise SettingsError(f"port must be in 1..65535, got {self.port}")
        if not 0 <= self.grpc_port < 65536:
            raise SettingsError(f"gRPC port must be in 1..65535, or 0 to disable gRPC; got {self.grpc_port}")
        if self.grpc_port == self.port:
            raise SettingsError(f"gRPC port and HTTP port must differ; both are {self.port}")
        if self.max_batch_size < 1:
            raise SettingsError(f"max batch size must be >= 1, got {self.max_batch_size}")
        if self.max_latency_ms < 0:
            raise SettingsError(f"max latency must be >= 0 ms, got {self.max_latency_ms}")
        if self.max_body_bytes < 1:
            raise SettingsError(f"max body bytes must be >= 1, got {self.max_body_bytes}")
        if self.max_rows < 1:
            raise SettingsError(f"max rows must be >= 1, got {self.max_rows}")
        if self.max_queue < 1:
            raise SettingsError(f"max queue must be >= 1, got {self.max_queue}")
        if not self.request_timeout_seconds > 0:
            raise SettingsError(f"request timeout must be > 0 seconds, got {self.request_timeout_seconds}")
        if self.log_level.lower() not in {"critical", "error", "warning", "info", "debug", "trace"}:
            raise SettingsError(
                f"log level must be one of critical, error, warning, info, debug, trace; got {self.log_level!r}"
            )


#: setting name -> (environment variable, converter)
ENV: dict[str, tuple[str, Any]] = {
    "model_dir": ("MLVISOR_MODEL_DIR", Path),
    "model_uri": ("MLVISOR_MODEL_URI", str),
    "model_name": ("MLVISOR_MODEL_NAME", str),
    "host": ("MLVISOR_HOST", str),
    "port": ("MLVISOR_PORT", int),
    "grpc_port": ("MLVISOR_GRPC_PORT", int),
    "max_batch_size": ("MLVISOR_MAX_BATCH_SIZE", int),
    "max_latency_ms": ("MLVISOR_MAX_LATENCY_MS", float),
    "max_body_bytes": ("MLVISOR_MAX_BODY_BYTES", int),
    "max_rows": ("MLVISOR_MAX_ROWS", int),
    "max_queue": ("MLVISOR_MAX_QUEUE", int),
    "request_timeout_seconds": ("MLVISOR_REQUEST_TIMEOUT_SECONDS", float),
    "log_level": ("MLVISOR_LOG_LEVEL", str),
}


def resolve(flags: Mapping[str, Any], environ: Mapping[str, str] | None = None) -> Settings:
    """Merge flags (None = not given) over ``MLVISOR_*`` environment variables over defaults."""
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for key, (var, convert) in ENV.items():
        flag = flags.get(key)
        if flag is not None:
            values[key] = convert(flag)
            continue
        raw = environ.get(var)
        if raw is None or raw == "":
            continue
        try:
            values[key] = convert(raw)
        except ValueError as e:
            raise SettingsError(f"{var}={raw!r} is not a valid {convert.__name__}: {e}") from e
    if "model_dir" not in values and values.get("model_uri"):
        values["model_dir"] = download_dir(values["model_uri"])
    if "model_dir" not in values:
        raise SettingsError("no model directory: pass --model-dir or set MLVISOR_MODEL_DIR "
                            "(or, for an object store, --model-uri or MLVISOR_MODEL_URI)")
    return Settings(**values)


def download_dir(uri: str) -> Path:
    """Where a remote model version is downloaded: ``$TMPDIR/mlvisor-model/<version>`` (a pod's
    scratch volume; a restarted container of the same pod finds it there, verified)."""
    import tempfile

    version = uri.rstrip("/").rsplit("/", 1)[-1] or "model"
    return Path(tempfile.gettempdir()) / "mlvisor-model" / version
