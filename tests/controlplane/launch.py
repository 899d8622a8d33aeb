"""Start one container of the process node: the last step before the container's own command.

The node runs ``ip netns exec <pod netns> unshare --mount --uts --propagation private python
launch.py <config.json>`` with the container's environment. In that fresh mount namespace this
script, still root, makes the file system the pod manifest describes, then becomes the
container's user and execs its command (same pid all the way, so the node's process group
and signals reach the container itself):

- a container ``/dev`` (tmpfs with null, zero, full, random, urandom, tty, shm) and the
  ``terminationMessagePath`` file bound to the node's per-container file;
- every volumeMount bound at its real mountPath (read-only when asked; a missing mount
  point is created on the host, which is the only trace a pod leaves outside its folders);
- ``readOnlyRootFilesystem``: every other mount remounted read-only;
- the hostname set to the pod name;
- ``runAsUser``/``runAsGroup``: a user namespace maps that uid/gid onto the node's user, so
  ``id`` says 10001 and nothing is privileged, while files keep their owners on the host (the
  node cannot chown the checkout for every pod: rootless containers do the same);
- ``allowPrivilegeEscalation: false``: no_new_privs, through ``setpriv``.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

DEVICES = ("null", "zero", "full", "random", "urandom", "tty")
SPECIAL_FS = {"proc", "sysfs", "devtmpfs", "devpts", "tmpfs", "cgroup", "cgroup2", "mqueue", "nsfs"}


def _mount(*args: str) -> None:
    proc = subprocess.run(["mount", *args], capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"process node: mount {' '.join(args)} failed: {proc.stderr.strip()}")


def _ensure_mountpoint(target: Path, is_dir: bool) -> None:
    if target.exists() or target.is_symlink():
        return
    if is_dir:
        target.mkdir(parents=True, exist_ok=True)
    else:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.touch()


def _container_dev(old_dev: Path, termination: tuple[str, str] | None) -> None:
    """A minimal /dev like a container runtime's, with the termination-message file in it."""
    old_dev.mkdir(parents=True, exist_ok=True)
    _mount("--rbind", "/dev", str(old_dev))
    _mount("-t", "tmpfs", "-o", "nosuid,mode=755,size=65536k", "tmpfs", "/dev")
    for name in DEVICES:
        (Path("/dev") / name).touch()
        _mount("--bind", str(old_dev / name), f"/dev/{name}")
    Path("/dev/shm").mkdir()
    _mount("-t", "tmpfs", "-o", "nosuid,nodev,mode=1777,size=65536k", "shm", "/dev/shm")
    for i, name in enumerate(("stdin", "stdout", "stderr")):
        os.symlink(f"/proc/self/fd/{i}", f"/dev/{name}")
    os.symlink("/proc/self/fd", "/dev/fd")
    if termination is not None:
        host, path = termination
        if path.startswith("/dev/"):
            Path(path).parent.mkdir(parents=True, exist_ok=True)
            Path(path).touch()
            _mount("--bind", host, path)
    _mount("--make-rprivate", str(old_dev))
    subprocess.run(["umount", "-l", str(old_dev)], check=False)


def _read_only_everything_but(keep: set[str]) -> None:
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        target = left.split()[4].replace("\\040", " ")
        fstype = right.split()[0]
        if fstype in SPECIAL_FS or target in keep or any(target.startswith(k.rstrip("/") + "/") for k in keep):
            continue
        if target.startswith(("/proc", "/sys", "/dev")):
            continue
        subprocess.run(["mount", "-o", "remount,bind,ro", target], capture_output=True)


def _keep_visible(paths: list[str]) -> dict[str, int]:
    """Open what the pod must still see (the checkout, the interpreter) before anything is mounted.

    A pod's volume may be mounted over an ancestor of the checkout: the operator's emptyDir
    at /tmp hides a checkout cloned under /tmp. Without an image, the checkout *is* the image,
    so it is bound back at its own path from a descriptor opened beforehand (a magic link
    resolves to the directory itself, whatever is mounted over its path since).
    """
    fds: dict[str, int] = {}
    for path in paths:
        if path not in fds and os.path.isdir(path):
            fds[path] = os.open(path, os.O_PATH | os.O_DIRECTORY)
    return fds


def _rebind_hidden(target: str, fds: dict[str, int]) -> None:
    """After mounting over ``target``, bind back every kept path that lies under it."""
    for path, fd in sorted(fds.items()):
        if path != target and path.startswith(target.rstrip("/") + "/") and fd >= 0:
            os.makedirs(path, exist_ok=True)
            proc = subprocess.run(["mount", "--no-canonicalize", "--bind", f"/proc/self/fd/{fd}", path],
                                  capture_output=True, text=True, pass_fds=(fd,))
            if proc.returncode != 0:
                raise SystemExit(f"process node: the volume at {target} hides {path} and binding it back "
                                 f"failed: {proc.stderr.strip()}")
            fds[path] = -1  # bound back once; later mounts over it would be the pod's own choice


def main() -> None:
    config = json.loads(Path(sys.argv[1]).read_text())
    mounts = config["mounts"]  # [{host, path, readOnly}]
    repo = str(Path(__file__).resolve().parents[2])
    kept = _keep_visible([repo, sys.prefix, sys.base_prefix])
    termination = config.get("termination")  # [host file, container path] or None
    for m in mounts:
        _ensure_mountpoint(Path(m["path"]), Path(m["host"]).is_dir())
    if termination and not termination[1].startswith("/dev/"):
        _ensure_mountpoint(Path(termination[1]), False)
    _container_dev(Path(config["scratch"]) / "host-dev", tuple(termination) if termination else None)
    for m in mounts:
        _mount("--bind", m["host"], m["path"])
        if m.get("readOnly"):
            _mount("-o", "remount,bind,ro", m["path"])
        _rebind_hidden(m["path"], kept)
    if termination and not termination[1].startswith("/dev/"):
        _mount("--bind", termination[0], termination[1])
    if config.get("readOnlyRootFilesystem"):
        keep = {m["path"] for m in mounts if not m.get("readOnly")}
        if termination:
            keep.add(termination[1])
        _read_only_everything_but(keep)
    if config.get("hostname"):
        socket.sethostname(config["hostname"][:63])
    os.chdir(config.get("cwd") or "/")

    argv = list(config["argv"])
    if config.get("noNewPrivs"):
        argv = [shutil.which("setpriv") or "setpriv", "--no-new-privs", "--", *argv]
    uid, gid = config.get("uid"), config.get("gid")
    if uid is not None and uid != 0:
        argv = [shutil.which("unshare") or "unshare", "--user", f"--map-user={uid}",
                f"--map-group={gid if gid is not None else uid}", "--", *argv]
    try:
        os.execvp(argv[0], argv)
    except OSError as e:
        print(f"process node: cannot exec {argv[0]}: {e}", file=sys.stderr)
        raise SystemExit(127 if isinstance(e, FileNotFoundError) else 126) from None


if __name__ == "__main__":
    main()
