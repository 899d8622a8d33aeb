"""Operator logs: one JSON object per line with ``resource``, ``namespace`` and ``name`` keys.

Log collectors (Loki, Elasticsearch, Cloud Logging) index JSON fields, so "everything the
operator did to default/iris" is one query. kopf attaches the object it is handling to its
log records (``k8s_ref``); the controllers attach the same shape through ``fields()``. Both
end up under the same three keys. ``--log-format text`` keeps a human-readable line for local runs.
"""

from __future__ import annotations

import datetime
import json
import logging
from typing import Any

_EXTRA = ("worker", "attempt", "pod", "action", "reason", "delay")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        ref = getattr(record, "k8s_ref", None)
        if isinstance(ref, dict):
            kind = ref.get("kind")
            entry["resource"] = str(kind).lower() if kind else None
            entry["namespace"] = ref.get("namespace")
            entry["name"] = ref.get("name")
        for key in _EXTRA:
            value = getattr(record, key, None)
            if value is not None:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps({k: v for k, v in entry.items() if v is not None}, default=str)


class TextFormatter(logging.Formatter):
    def __init__(self) -> None:
        super().__init__("[%(asctime)s] %(name)-24.24s [%(levelname)-7.7s] %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        ref = getattr(record, "k8s_ref", None)
        where = (
            f"{ref.get('namespace')}/{ref.get('name')}"
            if isinstance(ref, dict)
            else ""
        )
        return f"{line} [{where}]" if where else line


def configure_logging(log_format: str, verbose: bool = False) -> None:
    """Route every logger (kopf's, aiohttp's, ours) to stderr in the chosen format."""
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("aiohttp.access", "urllib3", "kubernetes.client.rest"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    if not verbose:
        # kopf logs every watch event and handler call at INFO; keep its warnings and errors.
        logging.getLogger("kopf").setLevel(logging.WARNING)


def fields(resource: str, namespace: str, name: str, **more: Any) -> dict[str, Any]:
    """``extra=`` for a log call about one resource (shaped like kopf's own ``k8s_ref``).

    ``name`` cannot be a plain extra: it is the LogRecord's logger name.
    """
    return {"k8s_ref": {"kind": resource, "namespace": namespace, "name": name}, **more}
