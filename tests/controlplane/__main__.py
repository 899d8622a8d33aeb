"""``python -m controlplane build|image|up|down|status`` (run with tests/ on PYTHONPATH; the Makefile does)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from controlplane import build, cluster, images, kubenode


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m controlplane", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build (or find) the control-plane binary and the node's images; prints their paths")
    sub.add_parser("image", help="build (or find) mlvisor's image from the Dockerfile; prints its archive")
    upp = sub.add_parser("up", help="start the control plane in the background (idempotent)")
    upp.add_argument("--node", choices=("kubelet", "none"), default="kubelet",
                     help="kubelet: one node (kubelet, kube-proxy, containerd) runs pods; "
                          "none: pods stay Pending (tests play the kubelet)")
    upp.add_argument("--crashloop-max", default=None,
                     help="the kubelet's longest CrashLoopBackOff wait, e.g. 10s (default 300s)")
    upp.add_argument("--controller-manager-arg", action="append", default=[], metavar="FLAG",
                     help="one more kube-controller-manager flag, e.g. --kube-api-qps=1000 (repeatable)")
    upp.add_argument("--apiserver-arg", action="append", default=[], metavar="FLAG",
                     help="one more kube-apiserver flag, after the plane's own, e.g. --profiling=true (repeatable)")
    for q in (upp, sub.add_parser("down", help="stop everything, leave no process behind"),
              sub.add_parser("status", help="say whether it runs and where its kubeconfig is")):
        q.add_argument("--state-dir", type=lambda s: Path(s).resolve(), default=cluster.DEFAULT_STATE)
    args = p.parse_args()
    try:
        if args.verb == "build":
            print(build.ensure_binary())
            print(images.ensure_pause())
            print(images.ensure_image())
        elif args.verb == "image":
            print(images.ensure_image())
        elif args.verb == "up":
            cluster.up(args.state_dir, node=args.node == "kubelet", crashloop_max=args.crashloop_max,
                       controller_manager_args=tuple(args.controller_manager_arg),
                       apiserver_args=tuple(args.apiserver_arg))
        elif args.verb == "down":
            cluster.down(args.state_dir)
        else:
            plane = cluster.current(args.state_dir)
            print(f"running: KUBECONFIG={plane.kubeconfig}" if plane else "not running")
            return 0 if plane else 3
    except (build.BuildError, cluster.ControlPlaneError, images.ImageError, kubenode.NodeError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
