"""``mlvisor operator``: run the Kubernetes controllers (kopf underneath) until stopped.

Serves all namespaces unless ``--namespace`` is given (repeatable), logs in with the
in-cluster service account when running in a pod and with the current kubeconfig otherwise,
exposes kopf's liveness endpoint and a Prometheus endpoint. kopf and the controllers are
imported inside the command, so ``mlvisor --help`` does not pay for them.
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
from typing import Any


def register(sub: Any) -> None:
    parser = sub.add_parser(
        "operator",
        help="run the Kubernetes operator (TrainingJob, ModelServer and ModelPipeline controllers)",
        description=(
            "Run the mlvisor controllers against the current cluster: the in-cluster service account "
            "inside a pod, the current kubeconfig context otherwise. Runs until SIGINT/SIGTERM."
        ),
    )
    parser.add_argument(
        "--namespace",
        "-n",
        action="append",
        default=[],
        metavar="NS",
        help="serve only this namespace (repeatable); default: all namespaces",
    )
    parser.add_argument("--liveness-port", type=int, default=8080, help="port of /healthz (0 disables; default 8080)")
    parser.add_argument("--metrics-port", type=int, default=9090, help="port of /metrics (0 disables; default 9090)")
    parser.add_argument(
        "--log-format",
        choices=("json", "text"),
        default=os.environ.get("MLVISOR_LOG_FORMAT", "json"),
        help="json: one object per line with resource/namespace/name keys (default); text: for humans",
    )
    parser.add_argument("--verbose", "-v", action="store_true", help="also log kopf's own activity")
    parser.set_defaults(func=run)


#: Allocations between two collections of the youngest generation (CPython's default: 700).
GC_THRESHOLD = 50_000


def _tune_garbage_collector() -> None:
    """Fewer cyclic collections, none of them over the imports.

    The operator decodes lists and watch events into many short-lived dicts, none of them in a
    cycle; at CPython's default threshold each 500-pod page of a list (3 MB of JSON) set off
    hundreds of collections, which scanned the imported modules and the parsed page again and
    again: decoding took 2.5 times as long (bench/README.md, "Memory and restart"). ``gc.freeze`` moves what
    is alive now (the imported modules, pydantic's schemas) out of every future collection.
    """
    import gc

    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 10)


def run(args: argparse.Namespace) -> int:
    from mlvisor.operator.kube import logs, settings

    try:
        options = settings.Options(
            namespaces=tuple(args.namespace),
            liveness_port=args.liveness_port or None,
            metrics_port=args.metrics_port or None,
            log_format=args.log_format,
            verbose=args.verbose,
            config=settings.config_from_env(),
            reconcile_workers=settings.reconcile_workers_from_env(),
            **settings.timeouts_from_env(),
        )
    except ValueError as e:  # an MLVISOR_* variable that does not parse: say which, no traceback
        print(f"mlvisor operator: {e}", file=sys.stderr)
        return 2
    logs.configure_logging(options.log_format, options.verbose)

    from mlvisor.operator.kube.connection import LoginError, connect

    try:
        conn = connect()
    except (LoginError, OSError) as e:
        print(f"mlvisor operator: cannot log in: {e}", file=sys.stderr)
        return 2
    if not conn.via_kubernetes:
        # kopf imports the whole ``kubernetes`` package whenever it is importable (only to recognise
        # its model objects, which the operator never hands it): 12 MB of resident memory. None in
        # sys.modules makes that import fail as if the package were absent (docs/operator.md,
        # "Memory and restart at 10,000").
        sys.modules.setdefault("kubernetes", None)  # type: ignore[arg-type]

    import kopf

    from mlvisor.operator.kube import handlers

    _tune_garbage_collector()
    memo = kopf.Memo(options=options, connection=conn)
    # kopf would name itself "<user>@<host>" through getpass.getuser(), which raises for a uid
    # without a passwd entry (an arbitrary runAsUser, OpenShift's random uids): the operator
    # crash-looped at start on a node whose /etc/passwd has no 10001. The identity is only a
    # label (standalone: no peering), so name it without asking the passwd database.
    identity = f"mlvisor-operator@{socket.gethostname()}"
    kopf.run(
        identity=identity,  # type: ignore[arg-type]  # kopf's Identity: a NewType of str it does not export
        registry=handlers.registry,
        standalone=True,  # one replica with strategy Recreate: no peering objects needed
        clusterwide=not options.namespaces,
        namespaces=options.namespaces,
        liveness_endpoint=(
            f"http://0.0.0.0:{options.liveness_port}/healthz" if options.liveness_port else None
        ),
        memo=memo,
    )
    return 0
