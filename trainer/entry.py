"""Flags and environment of a trainer run, and the mapping of outcomes to exit codes.

Shared by the pod entry point (``python -m mlvisor.trainer``) and the human command
(``mlvisor train FILE``), so both behave identically. Every flag can also come from an
environment variable (the flag wins); the operator and the local runtime set the variables:

=====================  ========================  ===========================================
flag                   variable                  meaning
=====================  ========================  ===========================================
--spec FILE            MLVISOR_SPEC (JSON)       TrainingJob document or bare spec
--output DIR           MLVISOR_OUTPUT_DIR        artifact root; the artifact is DIR/<version>/
--name NAME            MLVISOR_MODEL_NAME        default: metadata.name, else "model"
--version V            MLVISOR_MODEL_VERSION     default: UTC timestamp + random suffix
--data-dir DIR         MLVISOR_DATA_DIR          root of dataset.csv.path (default: cwd)
--worker-index I       MLVISOR_WORKER_INDEX      run shard I only
--workers N            MLVISOR_WORKERS           shard count (default: spec.workers)
--select               MLVISOR_STEP=select       the select step of a search
=====================  ========================  ===========================================

Exit codes: 0 success; 2 invalid spec or data (``api.EXIT_INVALID_SPEC``: never worth
retrying, the last log line says why); 1 anything else (a crash; the traceback is logged).
On 1 and 2 the reason is also written to the pod's termination message
(``/dev/termination-log``, or ``MLVISOR_TERMINATION_MESSAGE_PATH``), when that file exists;
on 0 after an artifact is written, a JSON summary of its metadata (metrics, best params),
which is how the operator fills status.model without reading the volume.
Log lines are JSON on stderr (see :mod:`mlvisor.trainer.logs`); stdout gets only the artifact
path, once written.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlvisor.operator.api import EXIT_INVALID_SPEC
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.spec import InvalidSpec, LoadedSpec, load_spec_file, load_spec_json
from mlvisor.trainer.termination import write_termination_message

if TYPE_CHECKING:
    from mlvisor.trainer.job import RunOptions

EXIT_OK = 0
EXIT_CRASH = 1


def add_run_arguments(parser: argparse.ArgumentParser, spec_positional: bool) -> None:
    if spec_positional:
        parser.add_argument("spec", metavar="FILE", type=Path,
                            help="TrainingJob YAML or JSON (a whole document or a bare spec)")
    else:
        parser.add_argument("--spec", metavar="FILE", type=Path, default=None,
                            help="TrainingJob YAML or JSON; env MLVISOR_SPEC holds the spec as JSON")
    parser.add_argument("--output", "-o", metavar="DIR", type=Path, default=None,
                        help="artifact root; the artifact goes to DIR/<version>/ (env MLVISOR_OUTPUT_DIR)")
    parser.add_argument("--name", default=None,
                        help="model name (env MLVISOR_MODEL_NAME; default metadata.name, else 'model')")
    parser.add_argument("--version", dest="model_version", metavar="V", default=None,
                        help="artifact version, shared by all shards and the select step of a run "
                             "(env MLVISOR_MODEL_VERSION; default: a UTC timestamp)")
    parser.add_argument("--data-dir", metavar="DIR", type=Path, default=None,
                        help="root that dataset.csv.path is relative to (env MLVISOR_DATA_DIR; default: cwd)")
    parser.add_argument("--worker-index", metavar="I", type=int, default=None,
                        help="run search shard I only (env MLVISOR_WORKER_INDEX)")
    parser.add_argument("--workers", metavar="N", type=int, default=None,
                        help="number of shards (env MLVISOR_WORKERS; default spec.workers)")
    parser.add_argument("--select", action="store_true", default=None,
                        help="run the select step of a search (env MLVISOR_STEP=select)")


def _env_int(env: Mapping[str, str], name: str) -> int | None:
    raw = env.get(name, "").strip()
    if not raw:
        return None
    try:
        return int(raw)
    except ValueError:
        raise InvalidSpec(f"{name} is {raw!r}; expected an integer") from None


def options_from_args(args: argparse.Namespace, env: Mapping[str, str]) -> RunOptions:
    """Flags first, then environment; InvalidSpec for anything missing or malformed."""
    from mlvisor.trainer.job import RunOptions, new_version

    loaded: LoadedSpec
    spec_file = getattr(args, "spec", None)
    if spec_file is not None:
        loaded = load_spec_file(spec_file)
    elif env.get("MLVISOR_SPEC", "").strip():
        loaded = load_spec_json(env["MLVISOR_SPEC"])
    else:
        raise InvalidSpec("no spec: pass --spec FILE or set MLVISOR_SPEC to the spec's JSON")
    output = args.output or (Path(env["MLVISOR_OUTPUT_DIR"]) if env.get("MLVISOR_OUTPUT_DIR") else None)
    if output is None:
        raise InvalidSpec("no output directory: pass --output DIR or set MLVISOR_OUTPUT_DIR")
    worker_index = args.worker_index if args.worker_index is not None else _env_int(env, "MLVISOR_WORKER_INDEX")
    workers = args.workers if args.workers is not None else _env_int(env, "MLVISOR_WORKERS")
    step = env.get("MLVISOR_STEP", "").strip()
    if step not in ("", "train", "select"):
        raise InvalidSpec(f"MLVISOR_STEP is {step!r}; expected 'select' or unset")
    select = bool(args.select) or step == "select"
    version = args.model_version or env.get("MLVISOR_MODEL_VERSION", "").strip() or None
    shared_run = select or (worker_index is not None and loaded.spec.search is not None)
    if version is None and shared_run:
        raise InvalidSpec(
            "--version/MLVISOR_MODEL_VERSION is required with --worker-index or --select: all "
            "shards and the select step of a run must write to the same version"
        )
    data_dir = args.data_dir or Path(env.get("MLVISOR_DATA_DIR") or ".")
    return RunOptions(
        spec=loaded.spec,
        output=output,
        name=args.name or env.get("MLVISOR_MODEL_NAME", "").strip() or loaded.name or "model",
        version=version or new_version(),
        data_dir=data_dir,
        worker_index=worker_index,
        workers=workers,
        select=select,
    )


def execute(args: argparse.Namespace, env: Mapping[str, str] | None = None,
            log: EventLog | None = None) -> int:
    """Run the trainer for parsed ``args``; returns the exit code (never raises)."""
    env = os.environ if env is None else env
    log = log or EventLog()
    try:
        opts = options_from_args(args, env)
        if opts.worker_index is not None:
            log.context["worker"] = opts.worker_index
        elif opts.select:
            log.context["step"] = "select"
        log.info("start", f"training {opts.name} version {opts.version}: "
                 f"{opts.spec.estimator.class_} on "
                 f"{opts.spec.dataset.builtin or (opts.spec.dataset.csv and opts.spec.dataset.csv.path)}",
                 name=opts.name, version=opts.version)
        from mlvisor.trainer.job import run

        with log.capturing_warnings():
            path = run(opts, log)
    except InvalidSpec as e:
        log.error("invalid_spec", str(e), exit_code=EXIT_INVALID_SPEC)
        write_termination_message(f"invalid spec: {e}", env)
        return EXIT_INVALID_SPEC
    except KeyboardInterrupt:
        log.error("interrupted", "interrupted", exit_code=130)
        return 130
    except Exception as e:
        log.error("crash", f"{type(e).__name__}: {e}", exit_code=EXIT_CRASH,
                  traceback=traceback.format_exc())
        write_termination_message(f"crash: {type(e).__name__}: {e}", env)
        return EXIT_CRASH
    if path is not None:
        write_termination_message(success_summary(path), env)
        print(path, flush=True)
    return EXIT_OK


def success_summary(artifact: Path) -> str:
    """What the operator puts in status.model: it cannot read the artifact volume, only this.

    A compact JSON subset of metadata.json (snake_case, as the planner reads it) that fits
    the kubelet's 4096-byte termination message; bestParams are dropped if they would not.
    """
    from mlvisor.trainer.artifact import read_metadata

    meta = read_metadata(artifact)
    summary = {
        "version": meta.version,
        "metrics": meta.metrics,
        "score_name": meta.score_name,
        "best_params": meta.best_params,
        "sklearn_version": meta.sklearn_version,
    }
    text = json.dumps(summary, separators=(",", ":"), default=str)
    if len(text) > 4000:
        summary["best_params"] = None
        text = json.dumps(summary, separators=(",", ":"), default=str)
    return text


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlvisor.trainer",
        description="Run one TrainingJob worker: the whole job, one search shard, or the select step.",
        epilog="Exit codes: 0 ok; 2 invalid spec or data (do not retry); 1 crash.",
    )
    add_run_arguments(parser, spec_positional=False)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
