"""Structured progress lines of the trainer, so ``kubectl logs`` of a worker tells a story.

Every line is one JSON object on **stderr** (stdout is kept for the artifact path a human
run prints at the end)::

    {"ts": "2026-11-25T10:15:00.123Z", "level": "info", "event": "trial",
     "msg": "trial 3 of 12: accuracy 0.9583", "worker": 1, "trial": 3, ...}

``event`` is a fixed word (dataset_loaded, split, shard, fold, trial, progress, best_so_far,
trial_retried, trial_failed, shard_done, select, refit, metrics, artifact_written,
invalid_spec, crash, warning); ``msg`` is the same fact in words; the remaining keys are the
numbers behind it. A search's ``progress`` line follows every trial: ``trial 7/12: #5 accuracy
0.9583; best 0.9667 (#3); about 14 s left``. ``mlvisor train`` at a terminal (or
``--log-format text``) writes only the messages. Python warnings raised while
training (ConvergenceWarning and friends) are routed here too, so the stream stays one
JSON object per line.
"""

from __future__ import annotations

import datetime as dt
import json
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO


class EventLog:
    """Writes trainer events as JSON lines; ``context`` keys (e.g. worker) go on every line."""

    def __init__(self, stream: TextIO | None = None, *, text: bool = False, **context: Any) -> None:
        self._stream = stream
        self.text = text
        """Write only the messages (``mlvisor train --log-format text``), for a person at a terminal."""
        self.context: dict[str, Any] = dict(context)

    @property
    def stream(self) -> TextIO:
        # Resolved per write, so pytest's capsys (which swaps sys.stderr) sees the lines.
        return self._stream if self._stream is not None else sys.stderr

    def emit(self, event: str, msg: str, level: str = "info", **fields: Any) -> None:
        now = dt.datetime.now(dt.UTC)
        line = {
            "ts": now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond // 1000:03d}Z",
            "level": level,
            "event": event,
            "msg": msg,
            **self.context,
            **fields,
        }
        if self.text:
            prefix = "" if level == "info" else f"{level}: "
            self.stream.write(f"{prefix}{msg}\n")
        else:
            self.stream.write(json.dumps(line, default=_jsonable, allow_nan=True) + "\n")
        self.stream.flush()

    def info(self, event: str, msg: str, **fields: Any) -> None:
        self.emit(event, msg, "info", **fields)

    def warning(self, event: str, msg: str, **fields: Any) -> None:
        self.emit(event, msg, "warning", **fields)

    def error(self, event: str, msg: str, **fields: Any) -> None:
        self.emit(event, msg, "error", **fields)

    @contextmanager
    def capturing_warnings(self) -> Iterator[None]:
        """Route Python warnings to this log as ``warning`` events for the duration."""
        previous = warnings.showwarning

        def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
                 file: TextIO | None = None, line: str | None = None) -> None:
            self.warning("warning", f"{category.__name__}: {message}".strip(),
                         category=category.__name__)

        warnings.showwarning = show
        try:
            yield
        finally:
            warnings.showwarning = previous


def _jsonable(value: Any) -> Any:
    """numpy scalars and other odd values in log fields: make them JSON, never fail a log line."""
    item = getattr(value, "item", None)
    if callable(item):
        try:
            return item()
        except (TypeError, ValueError):
            pass
    return str(value)
