"""One cached ``go build`` of a pinned Go module, for the tools the test suite builds itself.

The control plane and node (tests/controlplane) and the S3 server (tests/objectstore) are both
Go binaries built from a module pinned beside their Python code and cached under
``~/.cache/mlvisor/<name>/<key>/<binary>`` (``$XDG_CACHE_HOME`` is honoured, and an environment
variable names another folder), the key hashing the pin files, so an unchanged pin is never
rebuilt. Processes asking at once (pytest-xdist workers) build it once: the others wait on a
lock. The binary appears by one rename, so a build cut short leaves nothing that looks done.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO


class BuildError(RuntimeError):
    """The binary could not be built; the message carries go's own output."""


def source_hash(module_dir: Path, files: Sequence[str]) -> str:
    """12 hex digits over the names and contents of ``files`` in ``module_dir``."""
    h = hashlib.sha256()
    for rel in files:
        h.update(rel.encode())
        h.update((module_dir / rel).read_bytes())
    return h.hexdigest()[:12]


def cache_root(env_var: str, name: str) -> Path:
    """``$env_var`` if set, else ``~/.cache/mlvisor/<name>`` (under ``$XDG_CACHE_HOME`` if set)."""
    base = os.environ.get(env_var)
    if base:
        return Path(base)
    xdg = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(xdg) / "mlvisor" / name


def ensure_built(target: Path, module_dir: Path, package: str, ldflags: str, *, what: str, missing_go: str,
                 log: TextIO) -> Path:
    """``target``, built first with ``go build -o target package`` in ``module_dir`` if missing.

    ``what`` says what is being built (in the log line); ``missing_go`` is the error when go is not
    on PATH. Raises BuildError when go fails.
    """
    if target.exists():
        return target
    go = shutil.which("go")
    if go is None:
        raise BuildError(missing_go)
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / ".build.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if target.exists():  # another process built it while this one waited
            return target
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        print(f"building {what} into {target}", file=log, flush=True)
        t0 = time.monotonic()
        env = dict(os.environ, GOFLAGS="-mod=readonly -buildvcs=false")
        proc = subprocess.run(
            [go, "build", "-trimpath", "-ldflags", ldflags, "-o", str(tmp), package],
            cwd=module_dir, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        )
        if proc.returncode != 0:
            tmp.unlink(missing_ok=True)
            raise BuildError(f"go build failed (exit {proc.returncode}):\n{proc.stdout[-6000:]}")
        os.replace(tmp, target)
        print(f"built {target} in {time.monotonic() - t0:.0f} s", file=log, flush=True)
        return target
