"""The local stand-in for a Deployment, its ReplicaSets and the kubelet: server replicas as processes.

A ModelServer's planner asks for a Deployment (``ApplyDeployment``) and then watches its pods:
their restart counts, last exit codes, readiness and the model each was made for. This
module plays that Deployment on one machine with the same observable behaviour:

- **Pods**: ``spec.replicas`` processes per pod template, each started from the template with
  ``processes.process_spec_for_pod`` and its own free ports on 127.0.0.1 (MLVISOR_HOST,
  MLVISOR_PORT and MLVISOR_GRPC_PORT are overridden: a machine has one network namespace, a
  cluster one per pod).
- **restartPolicy Always**: a replica that exits, or that a probe gives up on, is restarted in
  place: the pod keeps its name, ``restartCount`` goes up and the last termination (exit code,
  reason) is kept, which is exactly what the supervisor counts. Between restarts the kubelet
  waits (CrashLoopBackOff), by the kubelet's own curve (``supervision.crash_loop_delay``): the
  first restart at once, then 10 s doubling to 300 s, the count starting over after a run of
  10 minutes; ``mlvisor run --restart-delay S`` makes every wait S seconds instead. A restart
  window (``maxRestarts`` in ``periodSeconds``) therefore fills as slowly here as on a node.
- **Probes** (HTTP GET against the replica's port, path from the manifest): the startupProbe
  must pass within ``initialDelaySeconds + failureThreshold * periodSeconds`` or the container
  is killed and restarted (it is polled more often than ``periodSeconds``, which only makes
  "ready" show sooner; the deadline is the manifest's); after start-up the readinessProbe
  decides ``ready`` and the livenessProbe, failing for ``failureThreshold * periodSeconds``,
  restarts the container.
- **Roll-out** (a new pod template, e.g. a new model): like RollingUpdate with maxUnavailable 0
  and a surge of all replicas: the new ReplicaSet gets every replica at once, and one old
  replica is stopped for each new replica that is ready. A roll-out that never gets ready
  therefore never removes the replicas that serve, and going back to an earlier template
  (a rollback) re-uses that template's ReplicaSet, whose replicas are still serving.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mlvisor.api.labels import ANNOTATION_MODEL_URI
from mlvisor.operator.local.processes import LocalProcess, ProcessSpec
from mlvisor.operator.plan import ObservedDeployment, ObservedPod
from mlvisor.operator.supervision import KUBELET_BACKOFF, CrashLoopBackOff, crash_loop_delay, message_source


@dataclass(frozen=True)
class KubeletSettings:
    """How the local kubelet restarts and probes server replicas."""

    backoff: CrashLoopBackOff = KUBELET_BACKOFF
    """The wait before each in-place restart: the kubelet's curve, or a fixed one."""
    stop_grace_seconds: float = 5.0
    """SIGTERM first; SIGKILL after this long (terminationGracePeriodSeconds caps it)."""
    poll_seconds: float = 0.2
    """How often a probe runs at most while waiting for a replica to start."""


@dataclass(frozen=True)
class Probe:
    path: str
    period: float = 10.0
    failure_threshold: int = 3
    initial_delay: float = 0.0
    timeout: float = 1.0

    @classmethod
    def from_manifest(cls, probe: Mapping[str, Any] | None) -> Probe | None:
        if not probe:
            return None
        http = probe.get("httpGet")
        if not http:
            return None  # exec/tcp probes are not emulated: treated as passing
        return cls(
            path=str(http.get("path", "/")),
            period=float(probe.get("periodSeconds", 10)),
            failure_threshold=int(probe.get("failureThreshold", 3)),
            initial_delay=float(probe.get("initialDelaySeconds", 0)),
            timeout=float(probe.get("timeoutSeconds", 1)),
        )


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


async def http_probe(port: int, path: str, timeout: float) -> bool:
    """An HTTP GET like the kubelet's: any status 200-399 passes; anything else fails."""
    writer = None
    try:
        reader, writer = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nUser-Agent: kube-probe/mlvisor\r\n\r\n".encode())
        await writer.drain()
        line = await asyncio.wait_for(reader.readline(), timeout)
        parts = line.split()
        return len(parts) >= 2 and 200 <= int(parts[1]) < 400
    except (OSError, TimeoutError, ValueError, asyncio.IncompleteReadError):
        return False
    finally:
        if writer is not None:
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()


def template_hash(template: Mapping[str, Any]) -> str:
    """Like pod-template-hash: equal templates share a ReplicaSet (so a rollback re-uses one)."""
    return hashlib.sha256(json.dumps(template, sort_keys=True).encode()).hexdigest()[:10]


#: Builds the ProcessSpec of one run of a replica: (pod manifest, HTTP port, gRPC port or 0) -> spec.
SpecFactory = Callable[[Mapping[str, Any], int, int], ProcessSpec]


def _has_grpc_port(template: Mapping[str, Any]) -> bool:
    container = (template.get("spec", {}).get("containers") or [{}])[0]
    return any(p.get("name") == "grpc" for p in container.get("ports") or [])


class ServerPod:
    """One replica: a pod with restartPolicy Always, its container run again and again in place."""

    def __init__(self, name: str, index: int, template: Mapping[str, Any], template_hash: str,
                 make_spec: SpecFactory, log_dir: Path, settings: KubeletSettings,
                 notify: Callable[[], None], on_start: Callable[[LocalProcess], None]) -> None:
        self.name = name
        self.index = index
        self.template = template
        self.template_hash = template_hash
        self.model_uri: str | None = (template.get("metadata", {}).get("annotations") or {}).get(
            ANNOTATION_MODEL_URI
        )
        self._make_spec = make_spec
        self._log_path = log_dir / f"{name}.log"
        self._settings = settings
        self._notify = notify
        self._on_start = on_start
        container = (template.get("spec", {}).get("containers") or [{}])[0]
        self.startup_probe = Probe.from_manifest(container.get("startupProbe"))
        self.readiness_probe = Probe.from_manifest(container.get("readinessProbe"))
        self.liveness_probe = Probe.from_manifest(container.get("livenessProbe"))
        grace = template.get("spec", {}).get("terminationGracePeriodSeconds")
        self._grace = min(float(grace), settings.stop_grace_seconds) if grace is not None else settings.stop_grace_seconds
        self.restart_count = 0
        self.last_exit_code: int | None = None
        self.last_reason: str | None = None
        self.last_message: str | None = None
        self.process: LocalProcess | None = None
        self.port: int | None = None
        self.grpc_port: int | None = None
        self._grpc = _has_grpc_port(template)
        self.ready = False
        self.started = False
        self.stopping = False
        self._exited = asyncio.Event()
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._lifecycle(), name=f"pod-{self.name}")

    async def stop(self) -> None:
        """Stop for good (pod deleted): SIGTERM, grace, SIGKILL; no restart."""
        self.stopping = True
        self._stop.set()
        self._set_ready(False)
        if self._task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    def observe(self) -> ObservedPod:
        return ObservedPod(
            name=self.name,
            index=self.index,
            attempt=1,
            phase="Running" if (self.process is not None or self.restart_count) else "Pending",
            exit_code=self.last_exit_code,
            reason=self.last_reason,
            conditions=frozenset({"Ready"}) if self.ready else frozenset(),
            restart_count=self.restart_count,
            ready=self.ready,
            deleting=self.stopping,
            model_uri=self.model_uri,
            message=self.last_message,
            message_source=message_source(self.last_message, self.last_exit_code),
        )

    def _set_ready(self, ready: bool) -> None:
        if ready != self.ready:
            self.ready = ready
            self._notify()

    async def _sleep(self, seconds: float) -> bool:
        """Sleep unless the pod is stopped or its process exits first; True if it exited/stopped."""
        waiters = [asyncio.ensure_future(self._stop.wait()), asyncio.ensure_future(self._exited.wait())]
        try:
            done, _ = await asyncio.wait(waiters, timeout=max(seconds, 0), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for w in waiters:
                w.cancel()
        return bool(done)

    async def _stopped_within(self, seconds: float) -> bool:
        """Wait ``seconds`` unless the pod is stopped first; True if it was stopped."""
        if seconds <= 0:
            return self._stop.is_set()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)
        return self._stop.is_set()

    async def _lifecycle(self) -> None:
        try:
            await self._run_forever()
        finally:
            if self.process is not None:
                await self.process.stop(self._grace)

    async def _run_forever(self) -> None:
        crashes = 0  # ends in a row, for the back-off
        while not self._stop.is_set():
            self.port = free_port()
            self.grpc_port = free_port() if self._grpc else None
            spec = self._make_spec(
                {**self.template, "metadata": {**self.template.get("metadata", {}), "name": self.name}},
                self.port,
                self.grpc_port or 0,
            )
            self._exited.clear()
            proc = LocalProcess(self.name, spec, self._log_path, on_exit=lambda _p: self._exited.set())
            self.process = proc
            self.started = False
            await proc.start()
            if proc.pid is not None:
                self._on_start(proc)
            self._notify()
            await self._watch(proc)
            self._set_ready(False)
            if self._stop.is_set():
                break
            await proc.stop(self._grace)  # a probe gave up on it, or it exited: make sure it's gone
            assert proc.termination is not None
            ran = proc.termination.finished_at - (proc.started_at or proc.termination.finished_at)
            delay, crashes = crash_loop_delay(self._settings.backoff, crashes, ran)
            self.restart_count += 1
            self.last_exit_code = proc.termination.exit_code
            self.last_reason = proc.termination.reason
            self.last_message = proc.termination.message
            self._notify()
            # Only a stop ends the back-off early: the exit that started it has already happened
            # (waiting on it too returned at once, and restarted a crashed server within ms).
            if await self._stopped_within(delay):
                break

    async def _watch(self, proc: LocalProcess) -> None:
        """Probe the running container until it exits or a probe gives up on it."""
        assert self.port is not None
        t0 = time.monotonic()
        poll = self._settings.poll_seconds
        startup = self.startup_probe
        if startup is not None:
            deadline = t0 + startup.initial_delay + startup.failure_threshold * startup.period
            if await self._sleep(startup.initial_delay):
                return
            while True:
                if await http_probe(self.port, startup.path, startup.timeout):
                    break
                if time.monotonic() >= deadline:
                    return  # startupProbe failed failureThreshold times: the kubelet kills it
                if await self._sleep(min(poll, startup.period)):
                    return
        self.started = True
        self._notify()
        readiness, liveness = self.readiness_probe, self.liveness_probe
        if readiness is None:
            self._set_ready(True)
        period = min(p.period for p in (readiness, liveness) if p is not None) if (readiness or liveness) else 1.0
        # Probe at least every second so readiness shows quickly; deadlines still use the manifest.
        interval = min(period, 1.0)
        unready_since: float | None = None
        dead_since: float | None = None
        first = True
        while True:
            if not first and await self._sleep(interval):
                return
            first = False
            now = time.monotonic()
            if readiness is not None and (now - t0 >= readiness.initial_delay or self.started):
                ok = await http_probe(self.port, readiness.path, readiness.timeout)
                if ok:
                    unready_since = None
                    self._set_ready(True)
                else:
                    unready_since = unready_since or now
                    if not self.ready or now - unready_since >= (readiness.failure_threshold - 1) * readiness.period:
                        self._set_ready(False)
            if liveness is not None and now - t0 >= liveness.initial_delay:
                if await http_probe(self.port, liveness.path, liveness.timeout):
                    dead_since = None
                else:
                    dead_since = dead_since or now
                    if now - dead_since >= liveness.failure_threshold * liveness.period:
                        return  # liveness failed: the kubelet restarts the container


class LocalDeployment:
    """A Deployment played locally: ReplicaSets by template hash, roll-out as described above."""

    def __init__(
        self,
        name: str,
        namespace: str,
        make_spec: SpecFactory,
        log_dir: Path,
        settings: KubeletSettings,
        notify: Callable[[], None],
        on_start: Callable[[LocalProcess], None],
    ) -> None:
        self.name = name
        self.namespace = namespace
        self._make_spec = make_spec
        self._log_dir = log_dir
        self._settings = settings
        self._notify = notify
        self._on_start = on_start
        self.manifest: dict[str, Any] | None = None
        self.current_hash: str | None = None
        self.replica_sets: dict[str, list[ServerPod]] = {}
        self._stopping: set[asyncio.Task[None]] = set()

    @property
    def desired(self) -> int:
        if self.manifest is None:
            return 0
        return int(self.manifest.get("spec", {}).get("replicas", 1))

    def apply(self, manifest: dict[str, Any]) -> None:
        self.manifest = manifest
        template = manifest["spec"]["template"]
        h = template_hash(template)
        if h != self.current_hash:
            self.current_hash = h
            # Newest last: dicts keep insertion order, and a re-used template moves to the end.
            self.replica_sets[h] = self.replica_sets.pop(h, [])
        self.reconcile()

    def pods(self) -> list[ServerPod]:
        return [p for pods in self.replica_sets.values() for p in pods]

    def ready_ports(self) -> list[int]:
        return [p.port for p in self.pods() if p.ready and p.port is not None and not p.stopping]

    def ready_grpc_ports(self) -> list[int]:
        return [p.grpc_port for p in self.pods() if p.ready and p.grpc_port is not None and not p.stopping]

    def reconcile(self) -> None:
        """Bring the ReplicaSets to the roll-out rule; called on apply and on every pod change."""
        if self.manifest is None or self.current_hash is None:
            return
        template = self.manifest["spec"]["template"]
        current = self.replica_sets[self.current_hash]
        while len(current) < self.desired:
            index = self._free_index(current)
            pod = ServerPod(
                # <deployment>-<template hash>-<replica index>-<random>: the index lets
                # `mlvisor logs ms/NAME --worker N` find replica N's log.
                name=f"{self.name}-{self.current_hash}-{index}-{secrets.token_hex(3)[:5]}",
                index=index,
                template=template,
                template_hash=self.current_hash,
                make_spec=self._make_spec,
                log_dir=self._log_dir,
                settings=self._settings,
                notify=self._notify,
                on_start=self._on_start,
            )
            current.append(pod)
            pod.start()
        while len(current) > self.desired:
            self._delete(current, max(current, key=lambda p: (not p.ready, p.index)))
        ready_new = sum(1 for p in current if p.ready)
        keep_old = max(0, self.desired - ready_new)
        old = [p for h, pods in self.replica_sets.items() if h != self.current_hash for p in pods]
        # Stop the old replicas that serve nothing first, then the newest.
        old.sort(key=lambda p: (p.ready, -p.index), reverse=True)
        for pod in old[keep_old:]:
            self._delete(self._set_of(pod), pod)

    def delete_pod(self, name: str) -> bool:
        for pods in self.replica_sets.values():
            for pod in pods:
                if pod.name == name:
                    self._delete(pods, pod)
                    self.reconcile()
                    return True
        return False

    def _set_of(self, pod: ServerPod) -> list[ServerPod]:
        return self.replica_sets[pod.template_hash]

    @staticmethod
    def _free_index(pods: list[ServerPod]) -> int:
        used = {p.index for p in pods}
        return next(i for i in range(len(pods) + 1) if i not in used)

    def _delete(self, pods: list[ServerPod], pod: ServerPod) -> None:
        pods.remove(pod)
        task = asyncio.create_task(pod.stop(), name=f"stop-{pod.name}")
        self._stopping.add(task)
        def stopped(t: asyncio.Task[None]) -> None:
            self._stopping.discard(t)
            self._notify()

        task.add_done_callback(stopped)

    def observe(self) -> tuple[ObservedDeployment, list[ObservedPod]]:
        pods = self.pods()
        current = self.replica_sets.get(self.current_hash or "", [])
        template = (self.manifest or {}).get("spec", {}).get("template", {})
        deployment = ObservedDeployment(
            name=self.name,
            replicas=len(pods),
            ready_replicas=sum(1 for p in pods if p.ready),
            updated_replicas=len(current),
            model_uri=(template.get("metadata", {}).get("annotations") or {}).get(ANNOTATION_MODEL_URI),
        )
        return deployment, [p.observe() for p in pods]

    async def stop(self) -> None:
        """Delete every replica (the Deployment is gone) and wait until they all exited."""
        for pods in self.replica_sets.values():
            for pod in list(pods):
                self._delete(pods, pod)
        self.manifest = None
        if self._stopping:
            await asyncio.gather(*list(self._stopping), return_exceptions=True)
