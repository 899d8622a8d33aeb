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
--cpus N               MLVISOR_CPUS              CPUs for cross-validation folds (default 1;
                                                 pods: their CPU limit, else request)
(none)                 MLVISOR_PROGRESS_PORT     a search worker serves GET /progress here
(none)                 MLVISOR_PROGRESS_HOST     ... on this address (default 0.0.0.0)
--log-format F                                   json (default) or text: the messages only
=====================  ========================  ===========================================

Exit codes: 0 success; 2 invalid spec or data (``api.EXIT_INVALID_SPEC``: never worth
retrying, the last log line says why); 143 stopped by SIGTERM (see below); 1 anything else (a
crash; the traceback is logged). On 1, 2 and 143 the reason is also written to the pod's
termination message (``/dev/termination-log``, or ``MLVISOR_TERMINATION_MESSAGE_PATH``), when that file exists;
on 0 after an artifact is written, a JSON summary of its metadata (metrics, best params),
which is how the operator fills status.model without reading the volume; on 0 after a search
worker's trials, its final progress report (``mlvisor.api.progress``), which is how the
operator's status.progress gets the last trials of a worker that finished between two polls.
Log lines are JSON on stderr (see :mod:`mlvisor.trainer.logs`); stdout gets only the artifact
path, once written.

SIGTERM (the kubelet stopping a deleted or preempted pod, a restart of the job's workers) stops
the run where it is: a handler raises :class:`Terminated`, which unwinds like an error (a
half-written artifact directory is removed on the way out; a search shard keeps only whole
result lines), and the run exits 143, what a process killed by SIGTERM reports, so the
operator sees the termination it asked for. A handler is needed: in a pod the trainer is PID 1
of its PID namespace, and the kernel does not deliver a signal to PID 1 whose action is the
default, so without one SIGTERM was ignored and the pod ran on until the grace period's SIGKILL.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from mlvisor.api.exits import (
    EXIT_CRASH,
    EXIT_INVALID_SPEC,
    EXIT_OK,
    EXIT_SIGTERM,
    TerminationSummary,
    write_termination_message,
)
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.spec import InvalidSpec, LoadedSpec, load_spec_file, load_spec_json

if TYPE_CHECKING:
    from mlvisor.trainer.job import RunOptions


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, so that no ``except Exception`` on the way swallows it."""


def _terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second SIGTERM must not interrupt the unwinding
    raise Terminated


def _stop_on_sigterm() -> None:
    try:
        signal.signal(signal.SIGTERM, _terminate)
    except ValueError:  # not the main thread (an embedding caller): it handles signals itself
        pass


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
    parser.add_argument("--cpus", metavar="N", type=int, default=None,
                        help="cross-validation folds run at once (env MLVISOR_CPUS, which pods get from "
                             "their CPU limit or request; default 1)")
    parser.add_argument("--log-format", choices=("json", "text"), default=None,
                        help="json: one JSON object per line on stderr (default); text: the messages only")


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
    data_dir = args.data_dir or Path(env.get("MLVISOR_DATA_DIR") or ".")
    spec_file = getattr(args, "spec", None)
    if spec_file is not None:
        loaded = load_spec_file(spec_file, data_dir)
    elif env.get("MLVISOR_SPEC", "").strip():
        loaded = load_spec_json(env["MLVISOR_SPEC"], data_dir=data_dir)
    else:
        raise InvalidSpec("no spec: pass --spec FILE or set MLVISOR_SPEC to the spec's JSON")
    output = args.output or (Path(env["MLVISOR_OUTPUT_DIR"]) if env.get("MLVISOR_OUTPUT_DIR") else None)
    if output is None and loaded.spec.output.uri is not None:
        # The artifact goes to an object store: it is written in a scratch folder first.
        import tempfile

        output = Path(tempfile.mkdtemp(prefix="mlvisor-artifact-"))
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
    cpus = getattr(args, "cpus", None)
    if cpus is not None and cpus < 1:
        raise InvalidSpec(f"--cpus is {cpus}; expected at least 1")
    if cpus is None:  # the downward API says 0 for a pod that requests no CPU: one, then
        cpus = max(1, _env_int(env, "MLVISOR_CPUS") or 1)
    from mlvisor.api.progress import PROGRESS_HOST_ENV, PROGRESS_PORT_ENV

    progress_port = _env_int(env, PROGRESS_PORT_ENV)
    return RunOptions(
        spec=loaded.spec,
        output=output,
        name=args.name or env.get("MLVISOR_MODEL_NAME", "").strip() or loaded.name or "model",
        version=version or new_version(),
        data_dir=data_dir,
        worker_index=worker_index,
        workers=workers,
        select=select,
        output_uri=loaded.spec.output.uri,
        env=env,
        n_jobs=cpus or 1,
        progress_port=progress_port,
        progress_host=env.get(PROGRESS_HOST_ENV, "").strip() or "0.0.0.0",
    )


def execute(args: argparse.Namespace, env: Mapping[str, str] | None = None,
            log: EventLog | None = None) -> int:
    """Run the trainer for parsed ``args``; returns the exit code (never raises)."""
    env = os.environ if env is None else env
    log = log or EventLog(text=getattr(args, "log_format", None) == "text")
    progress = None
    _stop_on_sigterm()
    try:
        opts = options_from_args(args, env)
        if opts.worker_index is not None:
            log.context["worker"] = opts.worker_index
        elif opts.select:
            log.context["step"] = "select"
        log.info("start", f"training {opts.name} version {opts.version}: "
                 f"{opts.spec.estimator.class_} on "
                 f"{opts.spec.dataset.builtin or (opts.spec.dataset.csv and opts.spec.dataset.csv.path) or opts.spec.dataset.uri}",
                 name=opts.name, version=opts.version)
        from mlvisor.trainer.job import make_tracker, run

        progress = make_tracker(opts, log)
        with log.capturing_warnings():
            path = run(opts, log, progress)
    except InvalidSpec as e:
        log.error("invalid_spec", str(e), exit_code=EXIT_INVALID_SPEC)
        write_termination_message(f"invalid spec: {e}", env)
        return EXIT_INVALID_SPEC
    except KeyboardInterrupt:
        log.error("interrupted", "interrupted", exit_code=130)
        return 130
    except Terminated:
        log.error("terminated", "stopped by SIGTERM before the run finished; what it wrote is whole or removed",
                  exit_code=EXIT_SIGTERM)
        write_termination_message("terminated: stopped by SIGTERM before the run finished", env)
        return EXIT_SIGTERM
    except Exception as e:
        log.error("crash", f"{type(e).__name__}: {e}", exit_code=EXIT_CRASH,
                  traceback=traceback.format_exc())
        write_termination_message(f"crash: {type(e).__name__}: {e}", env)
        return EXIT_CRASH
    if path is not None:
        write_termination_message(success_summary(path), env)
        if opts.output_uri is not None:
            from mlvisor.trainer.storage import artifact_uri

            print(artifact_uri(opts.output_uri, opts.version), flush=True)
        else:
            print(path, flush=True)
    elif progress is not None:  # a search worker: its final numbers, for status.progress
        write_termination_message(progress.report(finished=True).to_message(), env)
    return EXIT_OK


def success_summary(artifact: Path) -> str:
    """What the operator puts in status.model: it cannot read the artifact volume, only this.

    A compact JSON subset of metadata.json (snake_case, as the planner reads it) that fits
    the kubelet's 4096-byte termination message; bestParams are dropped if they would not.
    """
    from mlvisor.trainer.artifact import read_metadata

    meta = read_metadata(artifact)
    return TerminationSummary(
        version=meta.version,
        metrics=meta.metrics,
        score_name=meta.score_name,
        best_params=meta.best_params,
        sklearn_version=meta.sklearn_version,
        data=meta.dataset.description if meta.dataset.source != "builtin" and meta.dataset.description else None,
    ).to_message()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m mlvisor.trainer",
        description="Run one TrainingJob worker: the whole job, one search shard, or the select step.",
        epilog="Exit codes: 0 ok; 2 invalid spec or data (do not retry); 143 stopped by SIGTERM; 1 crash.",
    )
    add_run_arguments(parser, spec_positional=False)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:  # argparse: 2 on usage errors, 0 on --help
        return int(e.code or 0)
    return execute(args)


if __name__ == "__main__":
    sys.exit(main())
