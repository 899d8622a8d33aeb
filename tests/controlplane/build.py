"""Build the control-plane and node binary from the pinned Go modules, once per machine.

`go build` of ./cmd/mlvisor-k8s (kube-apiserver, kube-controller-manager, kube-scheduler,
etcd, the kubelet and kube-proxy in one multi-call binary) goes to ``~/.cache/mlvisor/controlplane/<key>/mlvisor-k8s``,
where the key names the pinned versions and hashes go.mod, go.sum and the main package, so a
changed pin builds anew and an unchanged one is never rebuilt. The Go module and build caches
(``go env GOMODCACHE GOCACHE``) make a rebuild after a pin change cheap as well.
"""

from __future__ import annotations

import sys
from pathlib import Path

from helpers.gobuild import BuildError, cache_root, ensure_built, source_hash

MODULE_DIR = Path(__file__).resolve().parent
KUBERNETES_VERSION = "v1.33.13"
ETCD_VERSION = "v3.5.21"
BINARY = "mlvisor-k8s"
__all__ = ["BuildError", "binary_path", "ensure_binary"]


def binary_path() -> Path:
    key = source_hash(MODULE_DIR, ("go.mod", "go.sum", "cmd/mlvisor-k8s/main.go"))
    return cache_root("MLVISOR_CONTROLPLANE_CACHE", "controlplane") / \
        f"kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-{key}" / BINARY


def _ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={KUBERNETES_VERSION}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean",
                  f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def ensure_binary(log=sys.stderr) -> Path:
    """The cached binary, built first if missing (once, whoever asks at once). Raises BuildError when go fails."""
    return ensure_built(binary_path(), MODULE_DIR, "./cmd/mlvisor-k8s", _ldflags(), log=log,
                        what=f"the control plane (kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}); "
                             "the first build on a machine takes about 10-20 minutes on 2 cores",
                        missing_go="go is not on PATH: the control plane is built from Go modules (Go 1.24 or later)")


def main() -> int:
    try:
        print(ensure_binary())
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
