"""`mlvisor trials tj/NAME`: every trial of a search as a table, from the artifact or the status.

Where the trials are:

- **the artifact** (``trials.jsonl`` beside the model, every trial: params, fold scores, mean,
  seconds, worker, state: complete, pruned (stopped early), failed or interrupted, and whether
  it was retried). ``mlvisor trials tj/NAME`` finds it under ``--data-dir`` where `mlvisor run`
  keeps volumes (``<data-dir>/volumes/<claim>/<namespace>/<job>/<version>/``, the newest
  version unless ``--version``); ``mlvisor trials PATH`` reads an artifact directory or a
  trials.jsonl file (e.g. on a machine that mounts the cluster's volume);
- **while the search runs**, the same places' work directory (``.work/<version>/``: the
  shards' records, or a Bayesian search's study journal);
- **a TrainingJob's status** (``status.progress.topTrials``, the best few): ``kubectl get tj
  NAME -o json | mlvisor trials -`` on a cluster, where the artifact is on a volume the
  command cannot read.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path
from typing import Any

from mlvisor.operator.local.logs import LogsError, parse_resource


class TrialsError(Exception):
    """Nothing to show; str() says what was looked for and where."""


def register(sub: Any) -> None:
    from mlvisor.operator.local.cli import default_data_dir

    p = sub.add_parser(
        "trials",
        help="print every trial of a search (params, fold scores, score, time, worker)",
        description=(
            "Print the trials of a TrainingJob's search as a table, best first. tj/NAME: the "
            "artifact `mlvisor run` wrote under --data-dir (or, while it runs, the trials so far). "
            "PATH: an artifact directory or its trials.jsonl. -: a TrainingJob as JSON or YAML on "
            "stdin, e.g. `kubectl get tj NAME -o json | mlvisor trials -` (its status keeps the "
            "best few trials; every trial is in trials.jsonl beside the model on its volume)."
        ),
    )
    p.add_argument("source", metavar="tj/NAME|PATH|-")
    p.add_argument("--namespace", "-n", default="default")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help=f"where `mlvisor run` keeps volumes (default {default_data_dir()})")
    p.add_argument("--version", default=None, help="artifact version (default: the newest)")
    p.add_argument("--sort", choices=("score", "trial"), default="score",
                   help="best first (default) or in trial order")
    p.add_argument("--top", type=int, default=None, metavar="N", help="only the first N rows")
    p.add_argument("--json", action="store_true", help="the records as JSON lines instead of a table")
    p.set_defaults(func=run_trials)


def run_trials(args: argparse.Namespace) -> int:
    from mlvisor.operator.local.cli import default_data_dir

    try:
        records, where = load(args.source, args.namespace, (args.data_dir or default_data_dir()).expanduser(),
                              args.version)
    except (TrialsError, LogsError) as e:
        print(f"mlvisor trials: {e}", file=sys.stderr)
        return 1
    records = sort_records(records, args.sort)
    if args.top is not None:
        records = records[: max(0, args.top)]
    if args.json:
        for rec in records:
            print(json.dumps(rec, sort_keys=True))
    else:
        print(f"# {where}")
        for line in table(records):
            print(line)
    return 0


# --------------------------------------------------------------------------- finding them


def load(source: str, namespace: str, data_dir: Path, version: str | None) -> tuple[list[dict[str, Any]], str]:
    """(trial records, where they came from)."""
    if source == "-":
        return from_resource(sys.stdin.read())
    path = Path(source)
    if path.exists():
        return from_path(path)
    target = parse_resource(source, namespace)
    if target.kind != "TrainingJob":
        raise TrialsError(f"{source}: only a TrainingJob (tj/NAME) has trials")
    roots = sorted((data_dir / "volumes").glob(f"*/{target.namespace}/{target.name}"))
    if not roots:
        raise TrialsError(
            f"no artifacts of TrainingJob {target.namespace}/{target.name} under {data_dir / 'volumes'} "
            "(is --data-dir the one `mlvisor run` used? On a cluster: kubectl get tj NAME -o json | mlvisor trials -)")
    return from_job_folder(roots, version)


def from_path(path: Path) -> tuple[list[dict[str, Any]], str]:
    file = path / "trials.jsonl" if path.is_dir() else path
    if not file.is_file():
        raise TrialsError(f"{path}: no trials.jsonl (is it the artifact of a search?)")
    return read_jsonl(file), str(file)


def read_jsonl(file: Path) -> list[dict[str, Any]]:
    out = []
    for line in file.read_text().splitlines():
        if line.strip():
            rec = json.loads(line)
            if not rec.get("started"):
                out.append(rec)
    return out


def from_job_folder(roots: list[Path], version: str | None) -> tuple[list[dict[str, Any]], str]:
    from mlvisor.trainer.artifact import list_versions

    for root in roots:
        versions = list_versions(root)
        if version is not None:
            if version in versions:
                return from_path(root / version)
            continue
        if versions:
            return from_path(root / versions[-1])
    for root in roots:  # no artifact yet: the trials so far
        work = root / ".work"
        candidates = sorted(work.glob("*/")) if work.is_dir() else []
        candidates = [c for c in candidates if version is None or c.name == version]
        for wdir in reversed(candidates):
            records = in_progress(wdir)
            if records is not None:
                return records, f"{wdir} (search in progress)"
    raise TrialsError(f"no trials under {', '.join(map(str, roots))}"
                      + (f" for version {version}" if version else ""))


def in_progress(wdir: Path) -> list[dict[str, Any]] | None:
    shards = sorted(wdir.glob("shard-*-of-*.jsonl"))
    if shards:
        out: list[dict[str, Any]] = []
        for f in shards:
            out.extend(read_jsonl(f))
        return out
    journal = wdir / "study.journal"
    if journal.is_file():
        return study_records(journal)
    return None


def study_records(journal: Path) -> list[dict[str, Any]]:
    """A Bayesian search's trials so far, read from its journal (without the spec: a choice's
    value shows as the JSON text Optuna keeps)."""
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    from mlvisor.trainer.bayes import STUDY_NAME, FlockLock, quiet_optuna

    quiet_optuna()
    storage = JournalStorage(JournalFileBackend(str(journal), lock_obj=FlockLock(journal.with_name(journal.name + ".lock"))))  # type: ignore[arg-type]
    study = optuna.load_study(study_name=STUDY_NAME, storage=storage)
    out = []
    for t in study.get_trials(deepcopy=False):
        folds = t.user_attrs.get("fold_scores") or []
        state = {"COMPLETE": "complete", "PRUNED": "pruned", "RUNNING": "running", "WAITING": "waiting"}.get(
            t.state.name, "interrupted" if t.user_attrs.get("interrupted") else "failed")
        score = t.value if t.state.name == "COMPLETE" else (sum(folds) / len(folds) if folds else None)
        out.append({"trial": t.number, "params": dict(t.params), "score": score, "fold_scores": folds,
                    "seconds": t.user_attrs.get("seconds"), "state": state, "worker": t.user_attrs.get("worker"),
                    "retried": t.user_attrs.get("retry_of") is not None, "retry_of": t.user_attrs.get("retry_of")})
    return out


def from_resource(text: str) -> tuple[list[dict[str, Any]], str]:
    import yaml

    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise TrialsError(f"stdin is not JSON or YAML: {e}") from None
    if not isinstance(doc, dict) or doc.get("kind") != "TrainingJob":
        raise TrialsError("stdin: expected a TrainingJob, e.g. `kubectl get tj NAME -o json | mlvisor trials -`")
    progress = (doc.get("status") or {}).get("progress") or {}
    top = progress.get("topTrials") or []
    name = (doc.get("metadata") or {}).get("name")
    if not top:
        raise TrialsError(f"TrainingJob {name} has no finished trials in status.progress yet")
    records = [{"trial": t.get("trial"), "params": t.get("params") or {}, "score": t.get("score"),
                "state": "complete", "worker": t.get("worker")} for t in top]
    return records, (f"TrainingJob {name}: the best {len(records)} of {progress.get('trialsDone')}/"
                     f"{progress.get('trialsTotal')} trials (status.progress.topTrials; every trial is in "
                     "trials.jsonl beside the model)")


# --------------------------------------------------------------------------- the table


def _score(rec: dict[str, Any]) -> float:
    s = rec.get("score")
    return float(s) if isinstance(s, int | float) and math.isfinite(s) else -math.inf


def sort_records(records: list[dict[str, Any]], by: str) -> list[dict[str, Any]]:
    if by == "trial":
        return sorted(records, key=lambda r: r.get("trial", 0))
    rank = {"complete": 0, "running": 1, "pruned": 2}
    return sorted(records, key=lambda r: (rank.get(r.get("state", "complete"), 3), -_score(r), r.get("trial", 0)))


def _params(params: dict[str, Any]) -> str:
    def short(v: Any) -> str:
        if isinstance(v, float):
            return f"{v:.4g}"
        text = json.dumps(v, sort_keys=True) if not isinstance(v, str) else v
        return text if len(text) <= 40 else text[:37] + "..."

    return " ".join(f"{k}={short(v)}" for k, v in sorted(params.items()))


def table(records: list[dict[str, Any]]) -> list[str]:
    header = ("TRIAL", "STATE", "SCORE", "FOLDS", "SECONDS", "WORKER", "RETRIED", "PARAMS")
    rows = []
    for r in records:
        score = _score(r)
        folds = r.get("fold_scores")
        rows.append((
            f"#{r.get('trial')}",
            str(r.get("state", "complete")),
            f"{score:.4f}" if math.isfinite(score) else "-",
            " ".join(f"{s:.3f}" for s in folds) if folds else "-",
            f"{r['seconds']:.2f}" if isinstance(r.get("seconds"), int | float) else "-",
            "-" if r.get("worker") is None else str(r["worker"]),
            (f"retry of #{r['retry_of']}" if r.get("retry_of") is not None else "yes") if r.get("retried") else "-",
            _params(r.get("params") or {}),
        ))
    widths = [max(len(row[i]) for row in [header, *rows]) for i in range(len(header))]
    return ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in [header, *rows]]
