"""What `mlvisor run` shows: a live table of the resources, event lines, the status and pid files.

Output must help a person watching a terminal and must not flood a log file: on a TTY the
table is redrawn in place; otherwise it is printed again only when its content changed.
Events (restarts, escalations, rollbacks) and "ready at URL" lines are printed once each,
above the table. The status file is the machine-readable twin of the table: the same
status documents the custom resources would carry (with local URLs), rewritten atomically
whenever they change.
"""

from __future__ import annotations

import datetime as dt
import json
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from mlvisor.operator.local.runtime import Event, LocalRuntime, Reporter, key_str, write_json_atomic


def _restarts(status: dict[str, Any]) -> str:
    sup = status.get("supervision") or {}
    return f"{sup.get('restartsInWindow', 0)} ({sup.get('totalRestarts', 0)})"


def _score(status: dict[str, Any]) -> str:
    """The headline metric (status.model.score and its name: the search's scoring, else accuracy or r2), short."""
    model = status.get("model") or {}
    if model.get("scoreName") and isinstance(model.get("score"), int | float):
        return f"{model['scoreName']}={model['score']:.3f}"
    metrics = model.get("metrics") or {}
    for name in ("accuracy", "r2", *sorted(metrics)):
        if name in metrics:
            return f"{name}={metrics[name]:.3f}"
    return "-"


def _worker_line(w: dict[str, Any]) -> str:
    name = "select" if w.get("index") == -1 else f"worker {w.get('index')}"
    text = f"{name}: {w.get('phase', 'Pending')} (attempt {w.get('attempt', 1)}"
    if w.get("lastExitCode") is not None:
        text += f", last exit {w['lastExitCode']}"
    text += ")"
    if w.get("trialsDone") is not None:
        total = w.get("trialsTotal")
        text += f" {w['trialsDone']}/{total} trials" if total is not None else f" {w['trialsDone']} trials"
    return text


def _progress(status: dict[str, Any]) -> str:
    """The PROGRESS column: a search's trials done/total (status.progress.summary)."""
    return (status.get("progress") or {}).get("summary") or "-"


def _search_line(progress: dict[str, Any]) -> str | None:
    """search: 7/12 trials, best accuracy 0.9667 (#3), 2 stopped early, about 14 s left."""
    if not progress:
        return None
    text = f"search: {progress.get('trialsDone', 0)}/{progress.get('trialsTotal', 0)} trials"
    if isinstance(progress.get("bestScore"), int | float):
        text += f", best {progress.get('scoring') or 'score'} {progress['bestScore']:.4f} (#{progress.get('bestTrial')})"
    if progress.get("trialsPruned"):
        text += f", {progress['trialsPruned']} stopped early"
    if progress.get("etaSeconds"):
        text += f", about {progress['etaSeconds']} s left"
    return text


def _pipeline_row(name: str, status: dict[str, Any]) -> tuple[str, ...]:
    phase = status.get("phase", "Pending")
    if phase == "Serving" and any(c.get("type") == "Training" and c.get("status") == "True"
                                  for c in status.get("conditions") or []):
        phase = "Serving+Training"
    runs = f"run {status['lastRun']}" if status.get("lastRun") else "-"
    version = status.get("servingVersion") or "-"
    if status.get("servingScore") is not None:
        version += f" ({status['servingScore']:.3f})"
    return (f"mp/{name}", phase, runs, "-", _restarts(status), version, status.get("url", "-"))


def _tree_order(doc: dict[str, Any], owners: dict[str, str]) -> list[tuple[str, int]]:
    """(key, depth): resources of no pipeline first (TrainingJobs, then ModelServers), then each
    pipeline with its children under it (its runs, then its ModelServer)."""
    rank = {"TrainingJob": 0, "ModelServer": 1, "ModelPipeline": 2}

    def order(key: str) -> tuple[int, str]:
        return rank.get(key.split("/", 1)[0], 9), key

    out: list[tuple[str, int]] = []
    for key in sorted((k for k in doc if k not in owners), key=order):
        out.append((key, 0))
        out.extend((child, 1) for child in sorted((c for c, o in owners.items() if o == key and c in doc), key=order))
    return out


def table_lines(doc: dict[str, Any], owners: dict[str, str] | None = None) -> list[str]:
    """The table for a status document: one row per resource, worker progress under jobs.

    ``owners`` maps a child's key to its pipeline's ("TrainingJob/ns/iris-1" -> "ModelPipeline/ns/iris"):
    children are shown under their pipeline, indented, the tree as it is supervised.
    """
    header = ("RESOURCE", "PHASE", "WORKERS/READY", "PROGRESS", "RESTARTS", "SCORE/MODEL", "URL")
    rows: list[tuple[str, ...]] = []
    details: dict[int, list[str]] = {}
    for key, depth in _tree_order(doc, owners or {}):
        status = doc[key]
        kind, _ns, name = key.split("/", 2)
        indent = "  " * depth
        if kind == "ModelPipeline":
            rows.append(_pipeline_row(name, status))
        elif kind == "TrainingJob":
            short = f"{indent}tj/{name}"
            workers = status.get("workersSummary") or "-"
            rows.append((short, status.get("phase", "Pending"), workers, _progress(status), _restarts(status),
                         _score(status), "-"))
            search = _search_line(status.get("progress") or {})
            lines = ([search] if search else []) + [_worker_line(w) for w in status.get("workers") or []]
            if status.get("select"):
                lines.append(_worker_line(status["select"]))
            if status.get("phase") not in ("Succeeded", "Failed") and lines:
                details[len(rows) - 1] = lines
        else:
            short = f"{indent}ms/{name}"
            ready = f"{status.get('readyReplicas', 0)}/{status.get('replicas', 0)}"
            version = status.get("modelVersion") or "-"
            rows.append(
                (short, status.get("phase", "Pending"), ready, "-", _restarts(status), version, status.get("url", "-"))
            )
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    out = ["  ".join(c.ljust(w) for c, w in zip(header, widths, strict=False)).rstrip()]
    for i, r in enumerate(rows):
        out.append("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=False)).rstrip())
        out.extend(f"    {line}" for line in details.get(i, []))
    return out


class TerminalView(Reporter):
    """Prints the table and events; keeps the status and pid files."""

    def __init__(self, table: bool, status_file: Path | None, pid_file: Path | None, out: TextIO = sys.stdout) -> None:
        self.table = table
        self.status_file = status_file
        self.pid_file = pid_file
        self.out = out
        self.tty = out.isatty()
        self._drawn = 0
        self._last_table: list[str] = []
        self._last_doc: dict[str, Any] | None = None
        self._last_pids: dict[str, Any] | None = None
        self._announced: dict[str, str] = {}
        self.doc: dict[str, Any] = {}

    # Lines above the table -------------------------------------------------------------

    def _print_above(self, lines: Sequence[str]) -> None:
        self._erase()
        for line in lines:
            print(line, file=self.out)
        self._draw(self._last_table, force=True)

    def _erase(self) -> None:
        if self.tty and self._drawn:
            self.out.write(f"\x1b[{self._drawn}F\x1b[J")
            self._drawn = 0

    def _draw(self, lines: list[str], force: bool = False) -> None:
        if not self.table or not lines:
            return
        if not self.tty and not force and lines == self._last_table:
            return
        if not self.tty and force:
            return  # non-TTY: never re-print an unchanged table just because an event came
        self._erase()
        if self.tty:
            # A wrapped line would break the cursor arithmetic of the redraw.
            width = shutil.get_terminal_size().columns
            lines = [line if len(line) < width else line[: max(width - 2, 1)] + "…" for line in lines]
        for line in lines:
            print(line, file=self.out)
        if self.tty:
            self._drawn = len(lines)
        self.out.flush()

    def event(self, event: Event) -> None:
        when = dt.datetime.fromtimestamp(event.time).strftime("%H:%M:%S")
        line = f"{when} {event.type} {event.reason} {key_str(event.key)}: {event.message}"
        if event.log is not None:
            line += f" (log: {event.log})"
        self._print_above([line])

    def problems(self, lines: Sequence[str]) -> None:
        self._erase()
        for line in lines:
            print(line, file=sys.stderr)
        self._draw(self._last_table, force=True)

    def say(self, line: str) -> None:
        self._print_above([line])

    # The whole picture ---------------------------------------------------------------

    def changed(self, runtime: LocalRuntime) -> None:
        doc = runtime.status_document()
        self.doc = doc
        for key, status in doc.items():
            url = status.get("url")
            if key.startswith("ModelServer/") and status.get("phase") == "Ready" and url:
                announce = f"{status.get('modelVersion')}@{url}"
                if self._announced.get(key) != announce:
                    self._announced[key] = announce
                    name = key.split("/", 2)[2]
                    grpc = f"; gRPC at {status['grpcAddress']}" if status.get("grpcAddress") else ""
                    self.say(f"{name} ready at {url} (model version {status.get('modelVersion')}){grpc}")
        # The status file comes after the lines it implies, so a script that sees "Ready" in it
        # finds the "ready at" line already in the log.
        if doc != self._last_doc:
            self._last_doc = json.loads(json.dumps(doc))
            if self.status_file is not None:
                write_json_atomic(self.status_file, doc)
        pids = runtime.process_document()
        if self.pid_file is not None and pids != self._last_pids:
            self._last_pids = pids
            write_json_atomic(self.pid_file, pids)
        owners = {"/".join(child): "/".join(owner) for child, owner in runtime.owners.items()}
        lines = table_lines(doc, owners)
        if lines != self._last_table:
            self._draw(lines)
            self._last_table = lines

    def finish(self, summary: Sequence[str]) -> None:
        self._drawn = 0  # leave the last table on screen
        for line in summary:
            print(line, file=self.out)
        self.out.flush()
