"""A pod manifest played as one local process: the container runtime of `mlvisor run`.

The local runtime carries out the very pod manifests the builders make for Kubernetes, so
what runs on a laptop is what runs in a cluster: the first container's command and args,
its env, its volume mounts. What a node would provide is mapped onto the machine:

- ``python``/``python3`` as the program becomes ``sys.executable`` (the same venv; there is
  no image locally);
- a PersistentVolumeClaim becomes ``<data-dir>/volumes/<claimName>/``, an emptyDir a fresh
  folder under ``<data-dir>/tmp/``, a hostPath its own path;
- any env value or argument that starts with a volumeMount's ``mountPath`` is rewritten to
  the host folder (``/models/default/iris`` -> ``<data-dir>/volumes/mlvisor-models/default/iris``),
  except a scratch volume at ``/tmp``, which becomes the child's ``TMPDIR`` (the host's /tmp
  is not the pod's to shadow: a ``file:///tmp/...`` model must stay where it is);
- ``fieldRef`` env (pod name, namespace, IP) is filled in like the downward API does, and
  ``resourceFieldRef`` env (``limits.cpu``, ``requests.memory``, ...) from the container's
  resources, rounded up by the divisor; an unset limit is this machine's (the node's
  allocatable: ``os.cpu_count()`` CPUs), an unset request its limit, else 0;
- the container's termination message file (``terminationMessagePath``, default
  ``/dev/termination-log``) is a fresh empty file per run whose path the child gets in
  ``MLVISOR_TERMINATION_MESSAGE_PATH``; after the exit its content is the termination
  message, and with ``terminationMessagePolicy: FallbackToLogsOnError`` an empty file on a
  failure falls back to the last lines of this run's log (at most 80 lines / 2048 bytes,
  the kubelet's limits).

Each process runs in its own session (process group), so stopping a pod stops everything it
started (SIGTERM to the group, SIGKILL after a grace period) and no orphan survives. A
process killed by signal N is reported with exit code 128+N and reason Error, as a
container runtime reports it (137 for SIGKILL; OOMKilled is never reported locally).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shlex
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlvisor.api.exits import MAX_TERMINATION_MESSAGE_BYTES, TERMINATION_MESSAGE_ENV

#: Programs replaced by the running interpreter, so children use the same environment.
PYTHON_PROGRAMS = frozenset({"python", "python3", "/usr/bin/python", "/usr/bin/python3",
                             "/usr/local/bin/python", "/usr/local/bin/python3"})

#: Environment variables of the parent that never leak into a child: a pod only gets
#: what its manifest says (plus what a node provides: PATH, HOME, locale...).
_PRIVATE_ENV_PREFIXES = ("MLVISOR_",)
FALLBACK_LOG_LINES = 80
FALLBACK_LOG_BYTES = 2048


class ManifestError(ValueError):
    """The pod manifest cannot be run as a local process (says which field and why)."""


@dataclass(frozen=True)
class ProcessSpec:
    """Everything needed to start one container as a process."""

    argv: tuple[str, ...]
    env: Mapping[str, str]
    """The child's whole environment."""
    cwd: Path
    mounts: Mapping[str, Path] = field(default_factory=dict)
    """mountPath -> host folder, for messages and tests."""
    termination_message_path: Path | None = None
    """Host file playing the container's terminationMessagePath (None: no termination message)."""
    fallback_to_logs: bool = False
    """terminationMessagePolicy FallbackToLogsOnError."""


def _volume_folders(pod: Mapping[str, Any], data_dir: Path, scratch: Path) -> dict[str, Path]:
    folders: dict[str, Path] = {}
    for i, vol in enumerate(pod.get("spec", {}).get("volumes") or []):
        name = vol.get("name")
        if not name:
            raise ManifestError(f"spec.volumes[{i}].name is missing")
        if "persistentVolumeClaim" in vol:
            claim = vol["persistentVolumeClaim"].get("claimName")
            if not claim or "/" in claim or claim.startswith("."):
                raise ManifestError(f"spec.volumes[{i}].persistentVolumeClaim.claimName is invalid: {claim!r}")
            folders[name] = data_dir / "volumes" / claim
        elif "emptyDir" in vol:
            folders[name] = scratch / "volumes" / name
        elif "hostPath" in vol:
            folders[name] = Path(vol["hostPath"]["path"])
        else:
            kinds = sorted(k for k in vol if k != "name")
            raise ManifestError(
                f"spec.volumes[{i}] ({name}): only persistentVolumeClaim, emptyDir and hostPath "
                f"volumes can be mapped to folders locally, got {kinds}"
            )
    return folders


def rewrite_path(value: str, mounts: Mapping[str, Path]) -> str:
    """Map a container path onto the host when it lies under a mount (longest mountPath wins)."""
    for mount in sorted(mounts, key=len, reverse=True):
        base = mount.rstrip("/") or "/"
        if value == base or value.startswith(base.rstrip("/") + "/"):
            rest = value[len(base):].lstrip("/")
            host = mounts[mount]
            return str(host / rest) + ("/" if value.endswith("/") and rest else "")
    return value


def _base_env(parent: Mapping[str, str]) -> dict[str, str]:
    return {k: v for k, v in parent.items() if not k.startswith(_PRIVATE_ENV_PREFIXES)}


def process_spec_for_pod(
    pod: Mapping[str, Any],
    data_dir: Path,
    scratch: Path,
    *,
    python: str = sys.executable,
    extra_env: Mapping[str, str] | None = None,
    env_overrides: Mapping[str, str] | None = None,
    command_prefix: Sequence[str] = (),
    parent_env: Mapping[str, str] | None = None,
    secrets: Mapping[str, Mapping[str, str]] | None = None,
) -> ProcessSpec:
    """Translate a pod manifest into a ProcessSpec; creates the volume folders.

    ``extra_env`` is added like a node-level setting (the manifest wins); ``env_overrides``
    win over the manifest (the runtime's own wiring, e.g. the local port of a server).
    ``command_prefix`` is put in front of the container's command (a wrapper such as
    ``nice`` or a fault injector); it is the user's, not the manifest's.

    ``secrets`` (name -> data, the pod's namespace's Secrets that the files hold) fill
    ``secretKeyRef`` env; a Secret that is not there leaves its variables unset, so the process
    falls back on its own environment (``mlvisor run`` passes the user's AWS_* variables on).
    """
    meta = pod.get("metadata", {})
    containers = pod.get("spec", {}).get("containers") or []
    if not containers:
        raise ManifestError(f"pod {meta.get('name')}: spec.containers is empty")
    c = containers[0]
    command = list(c.get("command") or []) + list(c.get("args") or [])
    if not command:
        raise ManifestError(
            f"pod {meta.get('name')}: spec.containers[0].command is empty; locally there is no "
            "image entrypoint to fall back on"
        )
    folders = _volume_folders(pod, data_dir, scratch)
    mounts: dict[str, Path] = {}
    tmpdir: Path | None = None
    for j, vm in enumerate(c.get("volumeMounts") or []):
        vol = vm.get("name")
        if vol not in folders:
            raise ManifestError(f"spec.containers[0].volumeMounts[{j}]: no volume named {vol!r}")
        host = folders[vol] / vm["subPath"] if vm.get("subPath") else folders[vol]
        host.mkdir(parents=True, exist_ok=True)
        if vm["mountPath"].rstrip("/") == "/tmp":
            # The host's /tmp is shared with everything else (file:/// models may live there),
            # so a scratch volume at /tmp becomes the child's TMPDIR instead of a path rewrite.
            tmpdir = host
            continue
        mounts[vm["mountPath"]] = host

    if command[0] in PYTHON_PROGRAMS:
        command[0] = python
    argv = [rewrite_path(a, mounts) for a in command]

    env = _base_env(os.environ if parent_env is None else parent_env)
    env.update(extra_env or {})
    field_values = {
        "metadata.name": str(meta.get("name", "")),
        "metadata.namespace": str(meta.get("namespace", "default")),
        "status.podIP": "127.0.0.1",
        "status.hostIP": "127.0.0.1",
        "spec.nodeName": "localhost",
        "spec.serviceAccountName": str(pod.get("spec", {}).get("serviceAccountName", "default")),
        "metadata.uid": str(meta.get("uid", "")),
    }
    for i, e in enumerate(c.get("env") or []):
        name = e.get("name")
        if not name:
            raise ManifestError(f"spec.containers[0].env[{i}].name is missing")
        if "value" in e:
            env[name] = rewrite_path(str(e["value"]), mounts)
        elif "valueFrom" in e and "secretKeyRef" in e["valueFrom"]:
            ref = e["valueFrom"]["secretKeyRef"]
            values = (secrets or {}).get(str(ref.get("name")))
            if values is None:
                continue  # not in the files: the process's own environment (AWS_*) stands in
            if ref.get("key") in values:
                env[name] = values[ref["key"]]
            elif not ref.get("optional"):
                raise ManifestError(
                    f"spec.containers[0].env[{i}] ({name}): Secret {ref.get('name')} has no key {ref.get('key')!r}"
                )
        elif "valueFrom" in e and "resourceFieldRef" in e["valueFrom"]:
            env[name] = resource_field_value(c, e["valueFrom"]["resourceFieldRef"])
        elif "valueFrom" in e and "fieldRef" in e["valueFrom"]:
            path = e["valueFrom"]["fieldRef"].get("fieldPath", "")
            if path in field_values:
                env[name] = field_values[path]
            elif path.startswith("metadata.labels['"):
                key = path[len("metadata.labels['"):-2]
                env[name] = str((meta.get("labels") or {}).get(key, ""))
        else:
            env.setdefault(name, "")
    if tmpdir is not None:
        env["TMPDIR"] = str(tmpdir)
    termination = scratch / "termination-log"
    env[TERMINATION_MESSAGE_ENV] = str(termination)
    env.update(env_overrides or {})
    env.setdefault("PYTHONUNBUFFERED", "1")
    cwd = scratch / "work"
    cwd.mkdir(parents=True, exist_ok=True)
    return ProcessSpec(
        argv=tuple(command_prefix) + tuple(argv), env=env, cwd=cwd, mounts=mounts,
        termination_message_path=termination,
        fallback_to_logs=c.get("terminationMessagePolicy") == "FallbackToLogsOnError",
    )


_SUFFIXES = {"m": 1e-3, "": 1.0, "k": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, "P": 1e15, "E": 1e18,
             "Ki": 2.0**10, "Mi": 2.0**20, "Gi": 2.0**30, "Ti": 2.0**40, "Pi": 2.0**50, "Ei": 2.0**60}


def quantity(value: Any) -> float:
    """A Kubernetes quantity ("250m", "2", "1.5", "512Mi", "1e3") as a number."""
    text = str(value).strip()
    for suffix in sorted(_SUFFIXES, key=len, reverse=True):
        if suffix and text.endswith(suffix):
            try:
                return float(text[: -len(suffix)]) * _SUFFIXES[suffix]
            except ValueError:
                break
    try:
        return float(text)
    except ValueError:
        raise ManifestError(f"{value!r} is not a Kubernetes quantity") from None


def resource_field_value(container: Mapping[str, Any], ref: Mapping[str, Any]) -> str:
    """What the downward API puts in an env var with this resourceFieldRef (see the module docstring)."""
    import math

    resource = str(ref.get("resource", ""))
    kind, _, what = resource.partition(".")
    resources = container.get("resources") or {}
    limits, requests = resources.get("limits") or {}, resources.get("requests") or {}
    if kind == "limits":
        raw = limits.get(what)
    elif kind == "requests":
        raw = requests.get(what, limits.get(what))
        if raw is None:
            return "0"
    else:
        raise ManifestError(f"resourceFieldRef.resource {resource!r}: expected limits.<name> or requests.<name>")
    if raw is None:  # no limit: the node's allocatable
        amount = float(os.cpu_count() or 1) if what == "cpu" else float(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    else:
        amount = quantity(raw)
    divisor = quantity(ref.get("divisor") or "1")
    return str(math.ceil(amount / divisor - 1e-9))


def exit_status(returncode: int) -> tuple[int, str]:
    """(exit code, reason) as a container runtime reports a terminated container."""
    if returncode < 0:
        return 128 + (-returncode), "Error"
    return returncode, "Completed" if returncode == 0 else "Error"


@dataclass
class Termination:
    exit_code: int
    reason: str
    finished_at: float
    message: str | None = None
    """The termination message (file content, or the log tail on error with FallbackToLogsOnError)."""


class LocalProcess:
    """One run of a container: started once, observed until it exits, stoppable as a group.

    ``on_exit`` is called (from the event loop) once the process has terminated.
    """

    def __init__(self, name: str, spec: ProcessSpec, log_path: Path,
                 on_exit: Callable[[LocalProcess], None] | None = None, *, log_header: bool = True) -> None:
        self.name = name
        self.log_header = log_header
        """Write a ``--- <time> start: <argv>`` line before each run (a node's container log has none)."""
        self.spec = spec
        self.log_path = log_path
        self.on_exit = on_exit
        self.pid: int | None = None
        self.started_at: float | None = None
        self.termination: Termination | None = None
        self.stopping = False
        self._proc: asyncio.subprocess.Process | None = None
        self._waiter: asyncio.Task[None] | None = None
        self._log_offset = 0

    @property
    def running(self) -> bool:
        return self._proc is not None and self.termination is None

    async def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        term = self.spec.termination_message_path
        if term is not None:  # the kubelet creates an empty file for every run of the container
            term.parent.mkdir(parents=True, exist_ok=True)
            term.write_bytes(b"")
        with open(self.log_path, "ab") as log:
            if self.log_header:
                log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} start: {shlex.join(self.spec.argv)}\n".encode())
                log.flush()
            self._log_offset = log.tell()
            try:
                self._proc = await asyncio.create_subprocess_exec(
                    *self.spec.argv,
                    env=dict(self.spec.env),
                    cwd=self.spec.cwd,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=log,
                    stderr=asyncio.subprocess.STDOUT,
                    start_new_session=True,  # its own process group: stop() reaches grandchildren
                )
            except OSError as e:
                # Like a container whose entrypoint is missing: it terminates at once.
                log.write(f"cannot start: {e}\n".encode())
                self.started_at = time.time()
                # The runtime's error is the message, as a kubelet reports a StartError.
                self.termination = Termination(127 if isinstance(e, FileNotFoundError) else 126,
                                               "StartError", time.time(), f"cannot start: {e}")
                if self.on_exit:
                    asyncio.get_running_loop().call_soon(self.on_exit, self)
                return
        self.pid = self._proc.pid
        self.started_at = time.time()
        self._waiter = asyncio.create_task(self._wait(), name=f"wait-{self.name}")

    async def _wait(self) -> None:
        assert self._proc is not None
        rc = await self._proc.wait()
        code, reason = exit_status(rc)
        # The leader is gone (just reaped, so its group id is still ours): anything it left
        # behind in its group goes with it.
        self._signal_group(signal.SIGKILL)
        self.termination = Termination(code, reason, time.time(), self._termination_message(code))
        if self.on_exit:
            self.on_exit(self)

    def _termination_message(self, exit_code: int) -> str | None:
        """What a kubelet would put in ``terminated.message``."""
        path = self.spec.termination_message_path
        if path is None:
            return None
        try:
            message = path.read_bytes()[:MAX_TERMINATION_MESSAGE_BYTES]
        except OSError:
            message = b""
        if not message.strip() and exit_code != 0 and self.spec.fallback_to_logs:
            try:
                with open(self.log_path, "rb") as f:
                    f.seek(self._log_offset)
                    tail = f.read()
            except OSError:
                tail = b""
            lines = tail.splitlines()[-FALLBACK_LOG_LINES:]
            message = b"\n".join(lines)[-FALLBACK_LOG_BYTES:]
        text = message.decode(errors="replace").strip()
        return text or None

    def _signal_group(self, sig: int) -> None:
        if self.pid is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.pid, sig)

    def kill(self, sig: int = signal.SIGKILL) -> None:
        """Send a signal to the whole group at once (no waiting), if the process still runs.

        Never after it was reaped: its pid, hence its group id, may belong to someone else by then.
        """
        if self.termination is None:
            self._signal_group(sig)

    async def stop(self, grace: float = 5.0) -> None:
        """SIGTERM the group, wait up to ``grace`` seconds, then SIGKILL; returns once it exited."""
        self.stopping = True
        if self._proc is None or self._waiter is None:
            return
        if self.termination is None:
            self._signal_group(signal.SIGTERM)
            try:
                await asyncio.wait_for(asyncio.shield(self._waiter), timeout=grace)
            except TimeoutError:
                self._signal_group(signal.SIGKILL)
        await self._waiter  # _wait() has SIGKILLed what was left of the group
