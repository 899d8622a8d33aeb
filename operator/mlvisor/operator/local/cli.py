"""`mlvisor run FILE...`: train, serve and supervise resources on this machine, no cluster needed.

The command a user tries first (the README's "run the main job"), and the way the whole flow
is tested end to end. It validates the files exactly like `mlvisor validate`, runs them with
the local runtime (same planners, same supervision core as the Kubernetes controllers), shows
a live table, keeps an optional JSON status file up to date for scripts, and stops every
child on Ctrl-C. Exit codes: 0 all went well; 1 a resource failed, a readiness or prediction
check failed, or --timeout passed; 2 the files are not valid; 130 Ctrl-C; 143 SIGTERM; 129 SIGHUP.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from pathlib import Path
from typing import Any


def default_data_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlvisor"


def _key_value(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {text!r}")
    return key, value


def _wrapper(text: str) -> tuple[str, tuple[str, ...]]:
    component, sep, command = text.partition("=")
    if not sep or component not in ("worker", "select", "server") or not command.strip():
        raise argparse.ArgumentTypeError(
            f"expected COMPONENT=COMMAND with COMPONENT one of worker, select, server; got {text!r}"
        )
    return component, tuple(shlex.split(command))


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"expected a number of seconds >= 0, got {text!r}")
    return value


def register(sub: Any) -> None:
    p = sub.add_parser(
        "run",
        help="train, serve and supervise resources on this machine (no cluster needed)",
        description=(
            "Run TrainingJob, ModelServer and ModelPipeline resources (the YAML you would kubectl apply) as supervised "
            "local processes. Without --exit-after-ready or --predict it keeps serving until Ctrl-C; "
            "edits to the files are applied while it runs."
        ),
    )
    p.add_argument("files", nargs="+", metavar="PATH",
                   help="YAML files of TrainingJob/ModelServer/ModelPipeline documents, folders of them or kustomize "
                        "trees (read as `mlvisor validate` reads them; other kinds are skipped with a note)")
    p.add_argument("--data-dir", type=Path, default=None, metavar="DIR",
                   help=f"volumes, logs and scratch space (default {default_data_dir()})")
    p.add_argument("--status-file", type=Path, metavar="PATH",
                   help="keep a JSON document of every resource's status here (rewritten atomically on change)")
    p.add_argument("--pid-file", type=Path, metavar="PATH",
                   help="keep a JSON list of every process started (pod, pid, running), e.g. to check for leaks")
    p.add_argument("--exit-after-ready", action="store_true",
                   help="exit once every TrainingJob finished and every ModelServer is ready and answers")
    p.add_argument(
        "--predict",
        type=Path,
        metavar="FILE",
        help="once ready, POST this V2 inference request (JSON) to every ModelServer, print the answers, exit",
    )
    p.add_argument(
        "--timeout",
        type=float,
        metavar="SECONDS",
        help="with --exit-after-ready/--predict: give up (exit 1) after this long",
    )
    p.add_argument("--no-table", action="store_true", help="no live table: events and results only")
    p.add_argument(
        "--env",
        type=_key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="add an environment variable to every child process (the manifest's own env wins)",
    )
    p.add_argument(
        "--wrap",
        type=_wrapper,
        action="append",
        default=[],
        metavar="COMPONENT=COMMAND",
        help="run the containers of worker|select|server pods under COMMAND (e.g. 'server=nice -n 5'); "
        "the pod's command is appended",
    )
    p.add_argument(
        "--python",
        default=sys.executable,
        metavar="PATH",
        help="interpreter that replaces the containers' python (default: this one)",
    )
    p.add_argument(
        "--restart-delay",
        type=_seconds,
        default=None,
        metavar="SECONDS",
        help="wait SECONDS before every in-place restart of a crashed server container (default: "
        "a kubelet's back-off: the first restart at once, then 10 s doubling to 300 s, starting "
        "over after 10 minutes of running)",
    )
    p.set_defaults(func=run_command)


def run_command(args: argparse.Namespace) -> int:
    from mlvisor.operator.local.session import Session, SessionOptions
    from mlvisor.operator.resources_cli import load_paths

    data_dir = (args.data_dir or default_data_dir()).expanduser().resolve()
    loaded = load_paths(args.files, data_dir=data_dir)
    for note in loaded.notes:
        print(f"note: {note}", file=sys.stderr)
    if loaded.problems:
        for line in loaded.problems:
            print(line, file=sys.stderr)
        print(
            "mlvisor run: nothing was started; fix the problems above (mlvisor validate FILE checks a file)",
            file=sys.stderr,
        )
        return 2
    if not loaded.found:
        print(
            "mlvisor run: nothing to run: no TrainingJob, ModelServer or ModelPipeline in "
            + ", ".join(map(str, args.files)),
            file=sys.stderr,
        )
        return 2
    resources = loaded.resources
    if args.predict is not None and not args.predict.is_file():
        print(f"--predict {args.predict}: no such file", file=sys.stderr)
        return 2
    options = SessionOptions(
        files=[Path(f) for f in args.files],
        data_dir=data_dir,
        status_file=args.status_file,
        pid_file=args.pid_file,
        exit_after_ready=args.exit_after_ready or args.predict is not None,
        predict=args.predict,
        timeout=args.timeout,
        table=not args.no_table,
        env=dict(args.env),
        wrappers=dict(args.wrap),
        python=args.python,
        restart_delay=args.restart_delay,
    )
    return Session(options, resources, loaded.secrets).main()
