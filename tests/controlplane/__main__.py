"""``python -m controlplane build|up|down|status`` (run with tests/ on PYTHONPATH; the Makefile does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controlplane import build, cluster


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build (or find) the control-plane binary; prints its path")
    upp = sub.add_parser("up", help="start the control plane in the background (idempotent)")
    upp.add_argument("--node", choices=("process", "none"), default="process",
                     help="process: one process node runs pods; none: pods stay Pending (tests play the kubelet)")
    upp.add_argument("--crashloop-initial", default=None, help="the node's first CrashLoopBackOff wait, seconds")
    for q in (upp, sub.add_parser("down", help="stop everything, leave no process behind"),
              sub.add_parser("status", help="say whether it runs and where its kubeconfig is")):
        q.add_argument("--state-dir", type=Path, default=cluster.DEFAULT_STATE)
    args = p.parse_args()
    try:
        if args.verb == "build":
            print(build.ensure_binary())
        elif args.verb == "up":
            extra = (f"--crashloop-initial={args.crashloop_initial}",) if args.crashloop_initial else ()
            cluster.up(args.state_dir, node=args.node == "process", node_args=extra)
        elif args.verb == "down":
            cluster.down(args.state_dir)
        else:
            plane = cluster.current(args.state_dir)
            print(f"running: KUBECONFIG={plane.kubeconfig}" if plane else "not running")
            return 0 if plane else 3
    except (build.BuildError, cluster.ControlPlaneError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
