"""A search worker's progress: counted as trials finish, logged, and served at ``GET /progress``.

The tracker counts the trials this process is responsible for (its shard in a pod; every trial
under ``mlvisor train``), keeps the best few, estimates the time left from the mean trial time,
and says so three ways:

- a ``progress`` log line after every trial, e.g. ``trial 7/12: #5 accuracy 0.9583; best 0.9667
  (#3); 2 stopped early; about 14 s left`` (``mlvisor train`` shows it on stderr);
- ``GET /progress`` on ``MLVISOR_PROGRESS_PORT`` (``mlvisor.api.progress``): a stdlib HTTP server
  in a daemon thread, answering from memory (it never touches the trials' files), which the
  operator and ``mlvisor run`` poll every few seconds;
- the final report, which the entry point writes as the worker's termination message.

Nothing here can fail a search: a port that cannot be bound is logged and the trials go on.
"""

from __future__ import annotations

import math
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from mlvisor.api.progress import PROGRESS_PATH, TOP_TRIALS, ProgressReport, TrialBrief, merge_top
from mlvisor.trainer.logs import EventLog


class ProgressTracker:
    """Progress of the trials one trainer process runs (thread-safe: the HTTP thread reads it)."""

    def __init__(self, log: EventLog, *, total: int | None = None, worker: int | None = None,
                 scoring: str | None = None, parallel: int = 1) -> None:
        self.log = log
        self.total = total
        """Trials this process is responsible for (None: a Bayesian worker, whose share the study decides)."""
        self.worker = worker
        self.scoring = scoring
        self.parallel = max(1, parallel)
        """Workers sharing a Bayesian study (they finish its remaining trials together)."""
        self.done = 0
        self.pruned = 0
        self.top: list[TrialBrief] = []
        self.seconds: list[float] = []
        self.study_done: int | None = None
        self.study_total: int | None = None
        self._lock = threading.Lock()
        self._server: ThreadingHTTPServer | None = None

    # ------------------------------------------------------------------ counting

    def add(self, result: Any, *, resumed: bool = False) -> None:
        """A trial of this process finished (``resumed``: recorded by an earlier attempt)."""
        with self._lock:
            self.done += 1
            if result.state == "pruned":
                self.pruned += 1
            if result.seconds and result.state in ("complete", "pruned"):
                self.seconds.append(result.seconds)
            if result.state == "complete" and math.isfinite(result.score):
                brief = TrialBrief(trial=result.index, score=result.score, params=result.params,
                                   worker=result.worker)
                self.top = merge_top([brief], self.top)
        if not resumed:
            self._log_line(result)

    def study(self, done: int, total: int, top: list[TrialBrief]) -> None:
        """A Bayesian worker's latest look at the whole study."""
        with self._lock:
            self.study_done, self.study_total = done, total
            self.top = merge_top(top, self.top)

    def eta_seconds(self) -> float | None:
        with self._lock:
            return self._eta()

    def _eta(self) -> float | None:
        if not self.seconds:
            return None
        mean = sum(self.seconds) / len(self.seconds)
        if self.study_total is not None and self.study_done is not None:
            left = max(0, self.study_total - self.study_done)
            return left * mean / self.parallel
        if self.total is None:
            return None
        return max(0, self.total - self.done) * mean

    def report(self, finished: bool = False) -> ProgressReport:
        with self._lock:
            eta = 0.0 if finished else self._eta()
            return ProgressReport(
                worker=self.worker, trials_done=self.done, trials_total=self.total,
                trials_pruned=self.pruned, study_done=self.study_done, study_total=self.study_total,
                top=list(self.top[:TOP_TRIALS]), eta_seconds=None if eta is None else round(eta, 1),
                scoring=self.scoring, finished=finished,
            )

    def _log_line(self, result: Any) -> None:
        with self._lock:
            done, pruned, top, eta = self.done, self.pruned, list(self.top), self._eta()
            total = self.study_total if self.study_total is not None else self.total
            counted = self.study_done if self.study_done is not None else done
        scoring = self.scoring or "score"
        head = f"trial {counted}/{total}" if total is not None else f"trial {counted}"
        if result.state == "complete":
            what = f"#{result.index} {scoring} {result.score:.4f}"
        elif result.state == "pruned":
            what = f"#{result.index} stopped early after {len(result.fold_scores)} folds ({scoring} {result.score:.4f} so far)"
        else:
            what = f"#{result.index} {result.state}"
        parts = [f"{head}: {what}"]
        if top:
            parts.append(f"best {top[0].score:.4f} (#{top[0].trial})")
        if pruned:
            parts.append(f"{pruned} stopped early")
        if eta is not None:
            parts.append(f"about {eta:.0f} s left")
        self.log.info("progress", "; ".join(parts), done=counted, total=total, pruned=pruned,
                      best=top[0].score if top else None, eta_seconds=None if eta is None else round(eta, 1))

    # ------------------------------------------------------------------ serving

    def serve(self, host: str, port: int) -> None:
        """Answer ``GET /progress`` on ``host:port`` from a daemon thread (until :meth:`close`)."""
        tracker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != PROGRESS_PATH:
                    self.send_error(404, f"only {PROGRESS_PATH} is served here")
                    return
                body = tracker.report().model_dump_json().encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # polled every few seconds: not worth a log line each

        try:
            server = ThreadingHTTPServer((host, port), Handler)
        except OSError as e:
            self.log.warning("progress", f"cannot serve progress on {host}:{port} ({e}); the search "
                             "goes on, its progress shows when it finishes")
            return
        server.daemon_threads = True
        self._server = server
        threading.Thread(target=server.serve_forever, name="progress", daemon=True).start()
        self.log.info("progress_endpoint", f"progress at http://{host}:{server.server_address[1]}{PROGRESS_PATH}",
                      port=server.server_address[1])

    @property
    def port(self) -> int | None:
        return None if self._server is None else int(self._server.server_address[1])

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
