"""Build the control-plane binary from the pinned Go modules, once per machine.

`go build` of ./cmd/mlvisor-k8s (kube-apiserver, kube-controller-manager, kube-scheduler and
etcd in one multi-call binary) goes to ``~/.cache/mlvisor/controlplane/<key>/mlvisor-k8s``,
where the key names the pinned versions and hashes go.mod, go.sum and the main package, so a
changed pin builds anew and an unchanged one is never rebuilt. The Go module and build caches
(``go env GOMODCACHE GOCACHE``) make a rebuild after a pin change cheap as well.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

MODULE_DIR = Path(__file__).resolve().parent
KUBERNETES_VERSION = "v1.33.13"
ETCD_VERSION = "v3.5.21"
BINARY = "mlvisor-k8s"


class BuildError(RuntimeError):
    """The binary could not be built; the message carries go's own output."""


def _source_hash() -> str:
    h = hashlib.sha256()
    for rel in ("go.mod", "go.sum", "cmd/mlvisor-k8s/main.go"):
        h.update(rel.encode())
        h.update((MODULE_DIR / rel).read_bytes())
    return h.hexdigest()[:12]


def cache_root() -> Path:
    base = os.environ.get("MLVISOR_CONTROLPLANE_CACHE")
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "mlvisor" / "controlplane"


def binary_path() -> Path:
    key = f"kubernetes-{KUBERNETES_VERSION}-etcd-{ETCD_VERSION}-{_source_hash()}"
    return cache_root() / key / BINARY


def _ldflags() -> str:
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    flags = ["-s", "-w"]
    for pkg in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {pkg}.gitVersion={KUBERNETES_VERSION}", f"-X {pkg}.gitMajor={major}",
                  f"-X {pkg}.gitMinor={minor}", f"-X {pkg}.gitTreeState=clean",
                  f"-X {pkg}.buildDate=1970-01-01T00:00:00Z"]
    return " ".join(flags)


def ensure_binary(log=sys.stderr) -> Path:
    """The cached binary, built first if missing. Raises BuildError when go fails."""
    target = binary_path()
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError("go is not on PATH: the control plane is built from Go modules (Go 1.24 or later)")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(f".{BINARY}.{os.getpid()}.tmp")
    print(f"building the control plane (kubernetes {KUBERNETES_VERSION}, etcd {ETCD_VERSION}) into {target}; "
          "the first build on a machine takes about 10-20 minutes on 2 cores", file=log, flush=True)
    t0 = time.monotonic()
    env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false")
    proc = subprocess.run(
        [go, "build", "-trimpath", "-ldflags", _ldflags(), "-o", str(tmp), "./cmd/mlvisor-k8s"],
        cwd=MODULE_DIR, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    if proc.returncode != 0:
        tmp.unlink(missing_ok=True)
        raise BuildError(f"go build failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
    os.replace(tmp, target)
    print(f"built {target} in {time.monotonic() - t0:.0f} s", file=log, flush=True)
    return target


def main() -> int:
    try:
        print(ensure_binary())
    except BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
