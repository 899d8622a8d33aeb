"""`mlvisor logs RESOURCE [--worker N] [--previous]`: `kubectl logs` for the local runtime.

`mlvisor run` writes every pod's output to ``<data-dir>/logs/<namespace>/<kind>-<name>/<pod>.log``
(each run of a container appended, after a ``--- <time> start: <command>`` line). This
command finds the right file without the user having to know that layout:

- a TrainingJob (``tj/NAME``): worker N's newest attempt (``--worker select`` for the select
  step of a search); ``--previous`` the attempt before it, as the failed attempt of a restarted
  worker is usually what one wants to read;
- a ModelServer (``ms/NAME``): replica N's newest pod, the current run of its container;
  ``--previous`` the run before the last in-place restart (``kubectl logs --previous``).

When the newest attempt or run has written nothing yet (a worker whose new attempt just
started, a replica the kubelet just restarted), the one before it is shown instead, and stderr
says which: right after a failure, the failed run is what there is to read.

It reads files only; it works while `mlvisor run` runs and after it stopped.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

KINDS = {
    "tj": "TrainingJob", "trainingjob": "TrainingJob", "trainingjobs": "TrainingJob",
    "ms": "ModelServer", "modelserver": "ModelServer", "modelservers": "ModelServer",
}
_RUN_HEADER = re.compile(rb"^--- (\S+) start: ", re.MULTILINE)
_HEADER_LINE = re.compile(rb"^--- \S+ start: [^\n]*\n?", re.MULTILINE)


class LogsError(Exception):
    """Nothing to show; str() says what was looked for and where."""


@dataclass(frozen=True)
class Shown:
    """What `mlvisor logs` prints: a file, the part of it to show, and which part that is."""

    path: Path
    text: bytes
    note: str | None = None
    """Said on stderr when the run shown is not the newest (the newest wrote nothing yet)."""


@dataclass(frozen=True)
class Target:
    kind: str
    namespace: str
    name: str


def parse_resource(text: str, namespace: str) -> Target:
    """``tj/iris``, ``trainingjob/iris``, ``ModelServer/default/iris``."""
    parts = text.split("/")
    if len(parts) == 3:
        kind, namespace, name = parts
    elif len(parts) == 2:
        kind, name = parts
    else:
        raise LogsError(f"resource {text!r}: expected KIND/NAME, e.g. tj/iris or ms/iris")
    resolved = KINDS.get(kind.lower())
    if resolved is None or not name:
        raise LogsError(f"resource {text!r}: kind must be tj (TrainingJob) or ms (ModelServer), got {kind!r}")
    return Target(resolved, namespace, name)


def log_dir(data_dir: Path, target: Target) -> Path:
    return data_dir / "logs" / target.namespace / f"{target.kind.lower()}-{target.name}"


def _attempts(folder: Path, job: str, worker: str) -> list[tuple[int, Path]]:
    pattern = re.compile(
        rf"^{re.escape(job)}-select-(\d+)\.log$" if worker == "select"
        else rf"^{re.escape(job)}-worker-{re.escape(worker)}-(\d+)\.log$"
    )
    found = [(int(m.group(1)), p) for p in folder.glob("*.log") if (m := pattern.match(p.name))]
    return sorted(found)


def _wrote_nothing(run: bytes) -> bool:
    """Only the ``--- <time> start:`` line (or nothing) so far."""
    return not _HEADER_LINE.sub(b"", run).strip()


def _started(run: bytes) -> str:
    m = _RUN_HEADER.match(run)
    return m.group(1).decode(errors="replace") if m else "?"


def find_log(data_dir: Path, target: Target, worker: str, previous: bool) -> Shown:
    """The log to show, and a note when it is not the newest one."""
    folder = log_dir(data_dir, target)
    if not folder.is_dir():
        raise LogsError(
            f"no logs of {target.kind} {target.namespace}/{target.name} under {folder} "
            "(is --data-dir the one `mlvisor run` used?)"
        )
    if target.kind == "TrainingJob":
        attempts = _attempts(folder, target.name, worker)
        what = "the select step" if worker == "select" else f"worker {worker}"
        if not attempts:
            raise LogsError(f"no log of {what} of TrainingJob {target.namespace}/{target.name} in {folder}")
        if previous and len(attempts) < 2:
            raise LogsError(f"{what} of TrainingJob {target.namespace}/{target.name} has had one attempt only: "
                            "there is no previous one")
        number, path = attempts[-2 if previous else -1]
        data = path.read_bytes()
        if not previous and _wrote_nothing(data):
            earlier = [(n, p, d) for n, p in reversed(attempts[:-1]) if not _wrote_nothing(d := p.read_bytes())]
            if earlier:
                shown, shown_path, shown_data = earlier[0]
                return Shown(shown_path, shown_data,
                             f"attempt {number} of {what} has written nothing yet; showing attempt {shown}, before it")
        return Shown(path, data)
    if not worker.isdigit():
        raise LogsError(f"--worker of a ModelServer is a replica index (0, 1, ...), got {worker!r}")
    pods = [
        p
        for p in folder.glob("*.log")
        if re.match(rf"^{re.escape(target.name)}-[0-9a-f]+-{worker}-[0-9a-f]+\.log$", p.name)
    ]
    if not pods:
        raise LogsError(f"no log of replica {worker} of ModelServer {target.namespace}/{target.name} in {folder}")
    path = max(pods, key=lambda p: p.stat().st_mtime)
    data = path.read_bytes()
    starts = [m.start() for m in _RUN_HEADER.finditer(data)] or [0]
    chunks = [data[a:b] for a, b in zip(starts, [*starts[1:], len(data)], strict=True)]
    if previous:
        if len(chunks) < 2:
            raise LogsError(
                f"replica {worker} of ModelServer {target.namespace}/{target.name} has not been "
                "restarted: there is no previous run"
            )
        return Shown(path, chunks[-2])
    if _wrote_nothing(chunks[-1]):
        written = [r for r in reversed(chunks[:-1]) if not _wrote_nothing(r)]
        if written:
            return Shown(
                path,
                written[0],
                f"the current run of replica {worker} (started {_started(chunks[-1])}) has written nothing "
                f"yet; showing the run before it (started {_started(written[0])})",
            )
    return Shown(path, chunks[-1])


def register(sub: Any) -> None:
    from mlvisor.operator.local.cli import default_data_dir

    p = sub.add_parser(
        "logs",
        help="print the log of a worker or server replica that `mlvisor run` started",
        description=(
            "Print a pod's log from a `mlvisor run` data directory: a TrainingJob worker's newest attempt "
            "(--previous: the one before), or a ModelServer replica's current container run (--previous: "
            "the run before its last restart). When the newest has written nothing yet, the one before "
            "it is shown. The file's path, and which run is shown, go to stderr."
        ),
    )
    p.add_argument("resource", metavar="RESOURCE", help="tj/NAME or ms/NAME (or KIND/NAMESPACE/NAME)")
    p.add_argument(
        "--worker",
        default="0",
        metavar="N",
        help="worker index (TrainingJob; 'select' for the select step) or replica index (ModelServer); default 0",
    )
    p.add_argument("--previous", action="store_true", help="the previous attempt (worker) or container run (replica)")
    p.add_argument("--namespace", "-n", default="default", help="default: default")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help=f"the data directory `mlvisor run` used (default {default_data_dir()})",
    )
    p.set_defaults(func=run_logs)


def run_logs(args: argparse.Namespace) -> int:
    from mlvisor.operator.local.cli import default_data_dir

    data_dir = (args.data_dir or default_data_dir()).expanduser()
    try:
        shown = find_log(data_dir, parse_resource(args.resource, args.namespace), args.worker, args.previous)
    except LogsError as e:
        print(f"mlvisor logs: {e}", file=sys.stderr)
        return 1
    print(f"==> {shown.path} <==", file=sys.stderr)
    if shown.note:
        print(f"mlvisor logs: {shown.note}", file=sys.stderr)
    sys.stdout.buffer.write(shown.text)
    sys.stdout.flush()
    return 0
