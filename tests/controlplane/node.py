"""The process node: a kubelet for the test suite that runs pods as local processes.

It does what a kubelet does that mlvisor depends on, against the real API server, as the
identity ``system:node:<name>`` (so the Node authorizer and NodeRestriction admission decide
what it may touch):

- registers its Node (capacity, addresses, conditions), renews its Lease in
  ``kube-node-lease`` and reports Ready, so the node lifecycle controller keeps it schedulable;
- watches the pods bound to it; each pod's first container runs through
  ``operator/local``'s process runner (``processes.LocalProcess``), the image ignored and the
  command run in this checkout's environment, inside the pod's own network namespace (its IP
  from the node's podCIDR, reported as ``status.podIP``), mount namespace (volumes at their
  mountPaths, a container /dev, the termination-message file, read-only root) and user namespace
  (runAsUser) - see ``launch.py``;
- volumes: PersistentVolumeClaims (through their bound PersistentVolume's folder), emptyDir,
  hostPath, configMap, secret, downwardAPI and projected (with a real bound service-account
  token from the TokenRequest API, refreshed at 80% of its life), so a pod authenticates as
  its ServiceAccount through the in-cluster path of its client library;
- restartPolicy Never / OnFailure / Always with restartCount, lastState, CrashLoopBackOff
  (initial and maximum back-off are flags; a kubelet's are 10 s and 300 s), exit codes and
  termination messages (``FallbackToLogsOnError`` included);
- startup, readiness and liveness probes (httpGet and tcpSocket) with the manifest's periods
  and thresholds, Ready / ContainersReady conditions;
- graceful deletion: SIGTERM to the container's process group, the pod's grace period, SIGKILL,
  then the final delete (as the kubelet's status manager does);
- Events (Started, Killing, Unhealthy, BackOff, FailedMount) and a kubelet endpoint on port
  10250 (mutual TLS with the cluster CA) serving ``containerLogs``, so ``kubectl logs [-p]`` works.

A second task in the same process plays a folder-backed dynamic provisioner for the default
StorageClass ``standard`` under its own identity (see ``provisioner.py``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime
import ipaddress
import json
import logging
import os
import shutil
import signal
import ssl
import sys
import time
from pathlib import Path
from typing import Any

from aiohttp import web

from controlplane import netns, pki
from controlplane.apiclient import STRATEGIC, Api, ApiError
from mlvisor.operator.local.processes import LocalProcess, ManifestError, process_spec_for_pod

log = logging.getLogger("mlvisor.node")
LAUNCHER = Path(__file__).resolve().parent / "launch.py"
KUBELET_PORT = 10250
TERMINATION_MESSAGE_MAX = 4096
FALLBACK_LOG_BYTES = 2048
DEFAULT_TOKEN_SECONDS = 3607


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class PodError(Exception):
    """The pod cannot be started as it is (a volume that cannot be mounted...); says why."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class Probe:
    """One probe of a container, as the kubelet runs it (httpGet or tcpSocket)."""

    def __init__(self, spec: dict[str, Any], container: dict[str, Any], pod_ip: str) -> None:
        self.spec = spec
        self.period = float(spec.get("periodSeconds", 10))
        self.timeout = float(spec.get("timeoutSeconds", 1))
        self.initial_delay = float(spec.get("initialDelaySeconds", 0))
        self.success_threshold = int(spec.get("successThreshold", 1))
        self.failure_threshold = int(spec.get("failureThreshold", 3))
        self.kind = "httpGet" if "httpGet" in spec else "tcpSocket" if "tcpSocket" in spec else "exec" if "exec" in spec else "grpc"
        action = spec.get(self.kind) or {}
        port = action.get("port")
        if isinstance(port, str) and not port.isdigit():
            named = {p.get("name"): p.get("containerPort") for p in container.get("ports") or []}
            port = named.get(port)
        self.port = int(port) if port is not None else None
        self.host = action.get("host") or pod_ip
        self.path = action.get("path", "/")

    def describe(self) -> str:
        if self.kind == "httpGet":
            return f"http-get http://{self.host}:{self.port}{self.path}"
        return f"{self.kind} {self.host}:{self.port}"

    async def check(self) -> tuple[bool, str]:
        if self.port is None or self.kind not in ("httpGet", "tcpSocket"):
            return False, f"{self.kind} probes are not supported by the process node"
        writer = None
        try:
            reader, writer = await asyncio.wait_for(asyncio.open_connection(self.host, self.port), self.timeout)
            if self.kind == "tcpSocket":
                return True, ""
            writer.write(f"GET {self.path} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\nUser-Agent: kube-probe/1.33\r\n"
                         "Accept: */*\r\nConnection: close\r\n\r\n".encode())
            await writer.drain()
            line = await asyncio.wait_for(reader.readline(), self.timeout)
            parts = line.split()
            code = int(parts[1]) if len(parts) >= 2 else 0
            if 200 <= code < 400:
                return True, ""
            return False, f"HTTP probe failed with statuscode: {code}"
        except (OSError, asyncio.TimeoutError, ValueError, asyncio.IncompleteReadError) as e:
            return False, f"Get \"http://{self.host}:{self.port}{self.path}\": {type(e).__name__}: {e}"
        finally:
            if writer is not None:
                writer.close()
                with contextlib.suppress(Exception):
                    await writer.wait_closed()


class PodRunner:
    """One pod on this node, from its binding to its final deletion."""

    def __init__(self, node: Node, pod: dict[str, Any]) -> None:
        self.node = node
        self.pod = pod
        meta = pod["metadata"]
        self.uid: str = meta["uid"]
        self.ns: str = meta["namespace"]
        self.name: str = meta["name"]
        self.dir = node.state_dir / "pods" / self.uid
        spec = pod["spec"]
        self.container: dict[str, Any] = spec["containers"][0]
        self.cname: str = self.container["name"]
        self.restart_policy: str = spec.get("restartPolicy", "Always")
        prior = next((c for c in (pod.get("status", {}).get("containerStatuses") or []) if c.get("name") == self.cname), {})
        self.restart_count = int(prior.get("restartCount", 0))
        self.pod_ip: str | None = None
        self.netns: str | None = None
        self.process: LocalProcess | None = None
        self.state: dict[str, Any] = {"waiting": {"reason": "ContainerCreating"}}
        self.last_state: dict[str, Any] = {}
        self.ready = False
        self.started = False
        self.phase = "Pending"
        self.message: str | None = None
        self.reason: str | None = None
        self.start_time = now_iso()
        self.deleting = asyncio.Event()
        self.exited = asyncio.Event()
        self.done = asyncio.Event()
        self._grace: float = float(spec.get("terminationGracePeriodSeconds", 30))
        self._dirty = False
        self._writer: asyncio.Task[None] | None = None
        self._task: asyncio.Task[None] | None = None
        self._token_tasks: list[asyncio.Task[None]] = []
        self._start_failures = 0

    # ----- the API side -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        now = now_iso()
        initialized = self.phase != "Pending" or self.process is not None
        conds = [
            {"type": "PodReadyToStartContainers", "status": "True" if self.pod_ip else "False", "lastTransitionTime": now},
            {"type": "Initialized", "status": "True", "lastTransitionTime": self.start_time},
            {"type": "ContainersReady", "status": "True" if self.ready else "False", "lastTransitionTime": now,
             **({} if self.ready else {"reason": "ContainersNotReady",
                                       "message": f"containers with unready status: [{self.cname}]"})},
            {"type": "Ready", "status": "True" if self.ready else "False", "lastTransitionTime": now,
             **({} if self.ready else {"reason": "ContainersNotReady",
                                       "message": f"containers with unready status: [{self.cname}]"})},
        ]
        if not initialized:
            conds = conds[:2]
        state = {k: None for k in ("waiting", "running", "terminated")} | self.state
        last = {k: None for k in ("waiting", "running", "terminated")} | self.last_state
        cs = {
            "name": self.cname, "image": self.container.get("image", ""), "imageID": "",
            "containerID": f"process://{self.process.pid}" if self.process and self.process.pid else None,
            "ready": self.ready, "started": self.started, "restartCount": self.restart_count,
            "state": state, "lastState": last,
        }
        status: dict[str, Any] = {
            "phase": self.phase, "conditions": conds, "containerStatuses": [cs],
            "hostIP": self.node.node_ip, "hostIPs": [{"ip": self.node.node_ip}], "startTime": self.start_time,
            "reason": self.reason, "message": self.message,
        }
        if self.pod_ip:
            status["podIP"] = self.pod_ip
            status["podIPs"] = [{"ip": self.pod_ip}]
        return status

    def push(self) -> None:
        """Write the status soon; writes are serialised and coalesced per pod."""
        self._dirty = True
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._write_loop(), name=f"status-{self.name}")

    async def _write_loop(self) -> None:
        while self._dirty:
            self._dirty = False
            try:
                await self.node.api.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{self.name}/status",
                                            {"metadata": {"uid": self.uid}, "status": self.status()},
                                            content_type=STRATEGIC)
            except ApiError as e:
                if e.status in (404, 409):
                    return  # gone (or replaced by a pod with a new uid)
                log.warning("status of %s/%s: %s", self.ns, self.name, e)
                self._dirty = True
                await asyncio.sleep(0.5)
            except Exception as e:  # noqa: BLE001 - a lost connection: try again
                log.warning("status of %s/%s: %s", self.ns, self.name, e)
                self._dirty = True
                await asyncio.sleep(0.5)

    async def flush(self) -> None:
        while self._writer is not None and not self._writer.done():
            await asyncio.shield(self._writer)

    async def event(self, type_: str, reason: str, message: str) -> None:
        await self.node.event(self.pod, type_, reason, message, field_path=f"spec.containers{{{self.cname}}}")

    # ----- life -----------------------------------------------------------------------------

    def start(self) -> None:
        self._task = asyncio.create_task(self._life(), name=f"pod-{self.ns}-{self.name}")

    def request_delete(self, grace: float | None) -> None:
        if grace is not None:
            self._grace = min(self._grace, grace)
        self.deleting.set()

    async def _life(self) -> None:
        try:
            await self._run()
        except Exception:
            log.exception("pod %s/%s", self.ns, self.name)
        finally:
            for t in self._token_tasks:
                t.cancel()
            if self.process is not None and self.process.running:
                await self.process.stop(self._grace)
            await asyncio.to_thread(self._teardown_network)
            if self.deleting.is_set():
                await self._finalize_delete()
            self.done.set()

    async def _run(self) -> None:
        spec = self.pod["spec"]
        extra = spec.get("initContainers") or []
        if extra:
            self.phase, self.reason = "Failed", "NotSupported"
            self.message = "the process node does not run initContainers"
            self.push()
            await self.event("Warning", "Failed", self.message)
            return
        self.push()
        # As the kubelet's volume manager does, a volume that cannot be set up yet (the
        # namespace's kube-root-ca.crt not yet published, a claim not yet bound, a secret
        # created a moment later) is retried with a back-off until it can, or the pod goes.
        while True:
            try:
                await self._setup()
                break
            except (PodError, ManifestError) as e:
                if not await self._wait_after(e, setup=True):
                    return
        delay = self.node.backoff_initial
        while not self.deleting.is_set():
            try:
                ran = await self._run_once()
            except (PodError, ManifestError) as e:  # a config error is retried too (CreateContainerConfigError)
                if not await self._wait_after(e, setup=False):
                    return
                continue
            if self.deleting.is_set():
                break
            code = int(self.state.get("terminated", {}).get("exitCode", 1))
            restart = self.restart_policy == "Always" or (self.restart_policy == "OnFailure" and code != 0)
            if not restart:
                self.phase = "Succeeded" if code == 0 else "Failed"
                self.push()
                return
            if ran >= 600:
                delay = self.node.backoff_initial
            self.last_state = self.state
            self.restart_count += 1
            self.state = {"waiting": {"reason": "CrashLoopBackOff",
                                      "message": f"back-off {delay:g}s restarting failed container={self.cname} "
                                                 f"pod={self.name}_{self.ns}({self.uid})"}}
            self.push()
            await self.event("Warning", "BackOff", "Back-off restarting failed container "
                             f"{self.cname} in pod {self.name}_{self.ns}({self.uid})")
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self.deleting.wait(), delay)
            delay = min(delay * 2, self.node.backoff_max)

    async def _wait_after(self, e: Exception, *, setup: bool) -> bool:
        """Report ``e`` in the container state and an Event, then back off; False once deleted."""
        reason = e.reason if isinstance(e, PodError) else "CreateContainerConfigError"
        self.state = {"waiting": {"reason": "ContainerCreating" if setup else reason, "message": str(e)}}
        self.push()
        await self.event("Warning", reason if reason in ("FailedMount", "FailedCreatePodSandBox") else "Failed", str(e))
        self._start_failures += 1
        delay = min(0.5 * 2 ** (self._start_failures - 1), 8.0)
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(self.deleting.wait(), delay)
        return not self.deleting.is_set()

    async def _setup(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.pod_ip is None:
            self.pod_ip, self.netns = await self.node.allocate_ip(self)
        for t in self._token_tasks:  # a failed earlier attempt may have started some
            t.cancel()
        self._token_tasks.clear()
        self.folders = await self._volumes()
        self._start_failures = 0
        self.state = {"waiting": {"reason": "ContainerCreating"}}
        self.push()

    async def _volumes(self) -> dict[str, Path]:
        folders: dict[str, Path] = {}
        api = self.node.api
        for vol in self.pod["spec"].get("volumes") or []:
            name = vol["name"]
            target = self.dir / "volumes" / name
            if "emptyDir" in vol:
                target.mkdir(parents=True, exist_ok=True)
                target.chmod(0o777)
                folders[name] = target
            elif "hostPath" in vol:
                path = Path(vol["hostPath"]["path"])
                if vol["hostPath"].get("type") in ("DirectoryOrCreate",):
                    path.mkdir(parents=True, exist_ok=True)
                folders[name] = path
            elif "persistentVolumeClaim" in vol:
                claim = vol["persistentVolumeClaim"]["claimName"]
                try:
                    pvc = await api.get(f"/api/v1/namespaces/{self.ns}/persistentvolumeclaims/{claim}")
                except ApiError as e:
                    raise PodError("FailedMount", f"persistentvolumeclaim \"{claim}\" not found ({e.status})") from None
                pv_name = pvc.get("spec", {}).get("volumeName")
                if not pv_name or pvc.get("status", {}).get("phase") != "Bound":
                    raise PodError("FailedMount", f"persistentvolumeclaim \"{claim}\" is not bound")
                pv = await api.get(f"/api/v1/persistentvolumes/{pv_name}")
                source = pv["spec"].get("hostPath") or pv["spec"].get("local")
                if not source:
                    raise PodError("FailedMount", f"persistentvolume {pv_name} is neither hostPath nor local: "
                                   "the process node mounts only folders")
                folders[name] = Path(source["path"])
            elif "configMap" in vol or "secret" in vol or "downwardAPI" in vol or "projected" in vol:
                target.mkdir(parents=True, exist_ok=True)
                sources = vol["projected"].get("sources", []) if "projected" in vol else [vol]
                for src in sources:
                    await self._project(src, target)
                folders[name] = target
            else:
                kinds = sorted(k for k in vol if k != "name")
                raise PodError("FailedMount", f"volume {name}: {kinds} volumes are not supported by the process node")
        return folders

    async def _project(self, src: dict[str, Any], target: Path) -> None:
        api = self.node.api
        if "serviceAccountToken" in src:
            sat = src["serviceAccountToken"]
            seconds = int(sat.get("expirationSeconds", DEFAULT_TOKEN_SECONDS))
            path = target / sat.get("path", "token")
            await self._write_token(sat, seconds, path)
            self._token_tasks.append(asyncio.create_task(self._refresh_token(sat, seconds, path)))
        elif "configMap" in src or "secret" in src:
            kind = "configMap" if "configMap" in src else "secret"
            ref = src[kind]
            name = ref.get("name") or ref.get("secretName")
            plural = "configmaps" if kind == "configMap" else "secrets"
            try:
                obj = await api.get(f"/api/v1/namespaces/{self.ns}/{plural}/{name}")
            except ApiError as e:
                if ref.get("optional"):
                    return
                raise PodError("FailedMount", f"{kind} \"{name}\" not found ({e.status})") from None
            data: dict[str, bytes] = {k: v.encode() for k, v in (obj.get("data") or {}).items()}
            if kind == "secret":
                import base64
                data = {k: base64.b64decode(v) for k, v in (obj.get("data") or {}).items()}
            items = ref.get("items") or [{"key": k, "path": k} for k in data]
            for item in items:
                if item["key"] in data:
                    p = target / item["path"]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_bytes(data[item["key"]])
        elif "downwardAPI" in src:
            meta = self.pod["metadata"]
            for item in src["downwardAPI"].get("items") or []:
                path = (item.get("fieldRef") or {}).get("fieldPath", "")
                value = {"metadata.namespace": self.ns, "metadata.name": self.name, "metadata.uid": self.uid}.get(path)
                if value is None and path in ("metadata.labels", "metadata.annotations"):
                    d = meta.get(path.split(".")[1]) or {}
                    value = "\n".join(f'{k}="{v}"' for k, v in sorted(d.items()))
                if value is not None:
                    p = target / item["path"]
                    p.parent.mkdir(parents=True, exist_ok=True)
                    p.write_text(value)

    async def _write_token(self, sat: dict[str, Any], seconds: int, path: Path) -> None:
        sa = self.pod["spec"].get("serviceAccountName") or "default"
        body = {"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest", "spec": {
            "audiences": [sat["audience"]] if sat.get("audience") else None,
            "expirationSeconds": seconds,
            "boundObjectRef": {"apiVersion": "v1", "kind": "Pod", "name": self.name, "uid": self.uid},
        }}
        try:
            answer = await self.node.api.request("POST", f"/api/v1/namespaces/{self.ns}/serviceaccounts/{sa}/token", body)
        except ApiError as e:
            raise PodError("FailedMount", f"serviceaccount token for {self.ns}/{sa}: {e}") from None
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(answer["status"]["token"])
        os.replace(tmp, path)

    async def _refresh_token(self, sat: dict[str, Any], seconds: int, path: Path) -> None:
        while True:
            await asyncio.sleep(seconds * 0.8)
            with contextlib.suppress(PodError):
                await self._write_token(sat, seconds, path)

    def _launch_config(self, argv: tuple[str, ...], run_dir: Path, termination: Path) -> Path:
        pod_sc = self.pod["spec"].get("securityContext") or {}
        sc = self.container.get("securityContext") or {}
        mounts = []
        for vm in self.container.get("volumeMounts") or []:
            host = self.folders[vm["name"]]
            if vm.get("subPath"):
                host = host / vm["subPath"]
                host.mkdir(parents=True, exist_ok=True)
            mounts.append({"host": str(host), "path": vm["mountPath"], "readOnly": bool(vm.get("readOnly"))})
        config = {
            "argv": list(argv),
            "mounts": mounts,
            "termination": [str(termination), self.container.get("terminationMessagePath") or "/dev/termination-log"],
            "scratch": str(run_dir),
            "readOnlyRootFilesystem": bool(sc.get("readOnlyRootFilesystem")),
            "noNewPrivs": sc.get("allowPrivilegeEscalation") is False,
            "uid": sc.get("runAsUser", pod_sc.get("runAsUser")),
            "gid": sc.get("runAsGroup", pod_sc.get("runAsGroup")),
            "hostname": self.name,
            "cwd": self.container.get("workingDir") or "/",
        }
        path = run_dir / "launch.json"
        path.write_text(json.dumps(config))
        return path

    async def _run_once(self) -> float:
        """Run the container once; returns how long it ran. Sets self.state to terminated."""
        cdir = self.dir / "containers" / self.cname
        cdir.mkdir(parents=True, exist_ok=True)
        log_path = cdir / f"{self.restart_count}.log"
        termination = cdir / "termination-log"
        termination.write_bytes(b"")
        base_env = {
            "PATH": os.environ.get("PATH", "/usr/local/bin:/usr/bin:/bin"),
            "HOME": "/", "HOSTNAME": self.name, "LANG": "C.UTF-8",
            "KUBERNETES_SERVICE_HOST": self.node.node_ip, "KUBERNETES_SERVICE_PORT": str(self.node.api_port),
            "KUBERNETES_SERVICE_PORT_HTTPS": str(self.node.api_port),
        }
        pod = dict(self.pod)
        pod["spec"] = dict(pod["spec"], containers=[self.container])
        spec = process_spec_for_pod(
            pod, self.node.state_dir, self.dir, parent_env=base_env, volume_folders=self.folders, rewrite_paths=False,
            field_values={"status.podIP": self.pod_ip or "", "status.hostIP": self.node.node_ip,
                          "spec.nodeName": self.node.name},
        )
        uid_check = self.pod["spec"].get("securityContext", {}) | (self.container.get("securityContext") or {})
        if uid_check.get("runAsNonRoot") and uid_check.get("runAsUser") in (None, 0):
            # The kubelet refuses what the image would run as root; without an image, no uid is root.
            raise PodError("CreateContainerConfigError",
                           "container has runAsNonRoot and image will run as root (no runAsUser)")
        config = self._launch_config(spec.argv, cdir, termination)
        wrapped = (self.node.ip_cmd, "netns", "exec", self.netns or "", self.node.unshare_cmd, "--mount", "--uts",
                   "--propagation", "private", sys.executable, str(LAUNCHER), str(config))
        from mlvisor.operator.local.processes import ProcessSpec
        proc = LocalProcess(f"{self.ns}/{self.name}", ProcessSpec(argv=wrapped, env=spec.env, cwd=Path("/")),
                            log_path, on_exit=lambda _p: self.exited.set(), log_header=False)
        self.exited.clear()
        self.process = proc
        self.started = False
        self.ready = False
        await proc.start()
        started_at = now_iso()
        self.state = {"running": {"startedAt": started_at}}
        self.phase = "Running"
        self.push()
        await self.event("Normal", "Started", f"Started container {self.cname}")
        reason = await self._probe_until_exit(proc)
        if proc.running:
            await self.event("Normal", "Killing", f"Stopping container {self.cname}" if reason is None
                             else f"Container {self.cname} {reason}, will be restarted")
            await proc.stop(self._grace)
        await self.exited.wait()
        term = proc.termination
        assert term is not None
        self.ready = False
        self.started = False
        message = termination.read_bytes()[:TERMINATION_MESSAGE_MAX].decode(errors="replace")
        if not message and term.exit_code != 0 and self.container.get("terminationMessagePolicy") == "FallbackToLogsOnError":
            with contextlib.suppress(OSError):
                data = log_path.read_bytes()[-FALLBACK_LOG_BYTES:]
                message = "\n".join(data.decode(errors="replace").splitlines()[-80:])
        terminated: dict[str, Any] = {"exitCode": term.exit_code, "reason": term.reason, "startedAt": started_at,
                                      "finishedAt": now_iso(), "containerID": f"process://{proc.pid}"}
        if message:
            terminated["message"] = message
        self.state = {"terminated": terminated}
        self.push()
        return term.finished_at - (proc.started_at or term.finished_at)

    async def _probe_until_exit(self, proc: LocalProcess) -> str | None:
        """Probe as the kubelet does until the container exits (None) or a probe kills it (why)."""
        c = self.container
        ip = self.pod_ip or "127.0.0.1"
        startup = Probe(c["startupProbe"], c, ip) if c.get("startupProbe") else None
        readiness = Probe(c["readinessProbe"], c, ip) if c.get("readinessProbe") else None
        liveness = Probe(c["livenessProbe"], c, ip) if c.get("livenessProbe") else None
        killed: asyncio.Future[str] = asyncio.get_running_loop().create_future()

        async def loop(probe: Probe, which: str) -> None:
            successes = failures = 0
            await asyncio.sleep(probe.initial_delay)
            while True:
                ok, why = await probe.check()
                if ok:
                    successes, failures = successes + 1, 0
                    if which == "Startup" and successes >= probe.success_threshold:
                        return
                    if which == "Readiness" and successes >= probe.success_threshold and not self.ready:
                        self.ready = True
                        self.push()
                else:
                    successes, failures = 0, failures + 1
                    await self.event("Warning", "Unhealthy", f"{which} probe failed: {why}")
                    if failures >= probe.failure_threshold:
                        if which == "Readiness":
                            if self.ready:
                                self.ready = False
                                self.push()
                        elif not killed.done():
                            killed.set_result(f"failed {which.lower()} probe")
                            return
                await asyncio.sleep(probe.period)

        async def supervise() -> None:
            if startup is not None:
                await loop(startup, "Startup")
            self.started = True
            if readiness is None:
                self.ready = True
            self.push()
            tasks = [asyncio.create_task(loop(p, w)) for p, w in ((readiness, "Readiness"), (liveness, "Liveness")) if p]
            try:
                await asyncio.gather(*tasks)
            finally:
                for t in tasks:
                    t.cancel()

        sup = asyncio.create_task(supervise())
        exited = asyncio.create_task(self.exited.wait())
        deleting = asyncio.create_task(self.deleting.wait())
        try:
            await asyncio.wait({exited, deleting, killed}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (sup, exited, deleting):
                t.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await sup
        if killed.done() and not self.exited.is_set():
            return killed.result()
        return None

    def _teardown_network(self) -> None:
        if self.netns is not None:
            netns.kill_all(self.netns)
            netns.delete(self.netns)
            self.node.release_ip(self)
            self.netns = None

    async def _finalize_delete(self) -> None:
        """The kubelet's last word on a deleted pod: terminal status, then delete with grace 0."""
        if self.phase not in ("Succeeded", "Failed"):
            if "terminated" not in self.state:
                # Never started (a mount that failed, a back-off wait): nothing ran to the end.
                self.state = {"terminated": {"exitCode": 0 if "waiting" in self.state else 137,
                                             "reason": "ContainerStatusUnknown", "finishedAt": now_iso()}}
            code = int(self.state["terminated"].get("exitCode", 0))
            self.phase = "Succeeded" if code == 0 else "Failed"
        self.ready = False
        self.push()
        await self.flush()
        with contextlib.suppress(ApiError):
            await self.node.api.request("DELETE", f"/api/v1/namespaces/{self.ns}/pods/{self.name}",
                                        {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                         "preconditions": {"uid": self.uid}})


class Node:
    def __init__(self, args: argparse.Namespace) -> None:
        self.name: str = args.name
        self.node_ip: str = args.node_ip
        self.state_dir = Path(args.state_dir)
        self.pki = self.state_dir / "pki"
        self.api_url: str = args.api_url
        self.api_port = int(args.api_url.rsplit(":", 1)[1])
        self.backoff_initial: float = args.crashloop_initial
        self.backoff_max: float = args.crashloop_max
        self.capacity = {"cpu": args.cpu, "memory": args.memory, "pods": str(args.max_pods),
                         "ephemeral-storage": "100Gi"}
        self.api = Api(self.api_url, self.pki, "node")
        self.pods: dict[str, PodRunner] = {}
        self.ip_cmd = shutil.which("ip") or "/usr/sbin/ip"
        self.unshare_cmd = shutil.which("unshare") or "/usr/bin/unshare"
        self.cidr: ipaddress.IPv4Network | None = None
        self._ips: dict[str, str] = {}  # ip -> pod uid
        self._events: dict[tuple[str, str, str], dict[str, Any]] = {}

    # ----- node object ---------------------------------------------------------------------

    def _node_status(self) -> dict[str, Any]:
        now = now_iso()
        cond = [
            {"type": t, "status": "False", "reason": r, "message": m, "lastHeartbeatTime": now, "lastTransitionTime": now}
            for t, r, m in (("MemoryPressure", "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
                            ("DiskPressure", "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
                            ("PIDPressure", "KubeletHasSufficientPID", "kubelet has sufficient PID available"))
        ] + [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "process node is posting ready status",
              "lastHeartbeatTime": now, "lastTransitionTime": now}]
        return {
            "capacity": self.capacity, "allocatable": self.capacity, "conditions": cond,
            "addresses": [{"type": "InternalIP", "address": self.node_ip}, {"type": "Hostname", "address": self.name}],
            "daemonEndpoints": {"kubeletEndpoint": {"Port": KUBELET_PORT}},
            "nodeInfo": {"kubeletVersion": "v1.33.13", "kubeProxyVersion": "", "operatingSystem": "linux",
                         "architecture": "amd64", "containerRuntimeVersion": "process://mlvisor-node",
                         "osImage": "mlvisor process node", "kernelVersion": os.uname().release,
                         "machineID": "", "systemUUID": "", "bootID": ""},
        }

    async def register(self) -> None:
        body = {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": {
            "kubernetes.io/hostname": self.name, "kubernetes.io/os": "linux", "kubernetes.io/arch": "amd64",
            "node.kubernetes.io/instance-type": "process"}}, "spec": {}, "status": self._node_status()}
        try:
            await self.api.request("POST", "/api/v1/nodes", body)
        except ApiError as e:
            if e.status != 409:
                raise
        await self._report_status()
        while True:
            node = await self.api.get(f"/api/v1/nodes/{self.name}")
            cidr = node.get("spec", {}).get("podCIDR")
            if cidr:
                self.cidr = ipaddress.ip_network(cidr)
                return
            await asyncio.sleep(0.2)

    async def _report_status(self) -> None:
        await self.api.request("PATCH", f"/api/v1/nodes/{self.name}/status", {"status": self._node_status()},
                               content_type=STRATEGIC)

    async def heartbeat(self) -> None:
        path = f"/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases/{self.name}"
        node = await self.api.get(f"/api/v1/nodes/{self.name}")
        owner = [{"apiVersion": "v1", "kind": "Node", "name": self.name, "uid": node["metadata"]["uid"]}]
        last_status = 0.0
        while True:
            micro = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
            try:
                try:
                    await self.api.request("PATCH", path, {"spec": {"renewTime": micro, "holderIdentity": self.name,
                                                                    "leaseDurationSeconds": 40}},
                                           content_type="application/merge-patch+json")
                except ApiError as e:
                    if e.status != 404:
                        raise
                    await self.api.request("POST", "/apis/coordination.k8s.io/v1/namespaces/kube-node-lease/leases", {
                        "metadata": {"name": self.name, "namespace": "kube-node-lease", "ownerReferences": owner},
                        "spec": {"holderIdentity": self.name, "leaseDurationSeconds": 40, "renewTime": micro}})
                if time.monotonic() - last_status > 30:
                    await self._report_status()
                    last_status = time.monotonic()
            except Exception as e:  # noqa: BLE001 - keep beating
                log.warning("heartbeat: %s", e)
            await asyncio.sleep(10)

    # ----- pod IPs --------------------------------------------------------------------------

    async def allocate_ip(self, runner: PodRunner) -> tuple[str, str]:
        assert self.cidr is not None
        hosts = list(self.cidr.hosts())[1:]  # .1 is the bridge (gateway)
        for addr in hosts:
            ip = str(addr)
            if ip != self.node_ip and ip not in self._ips:
                self._ips[ip] = runner.uid
                name = f"{netns.PREFIX}{int(addr) - int(self.cidr.network_address)}"
                try:
                    await asyncio.to_thread(netns.create, name, ip, 16, self.node_ip)
                except netns.NetworkError as e:
                    del self._ips[ip]
                    raise PodError("FailedCreatePodSandBox", f"pod network: {e}") from None
                return ip, name
        raise PodError("FailedCreatePodSandBox", f"no free IP in {self.cidr}")

    def release_ip(self, runner: PodRunner) -> None:
        if runner.pod_ip and self._ips.get(runner.pod_ip) == runner.uid:
            del self._ips[runner.pod_ip]

    # ----- events ---------------------------------------------------------------------------

    async def event(self, obj: dict[str, Any], type_: str, reason: str, message: str, field_path: str = "") -> None:
        meta = obj["metadata"]
        key = (meta["uid"], reason, message)
        now = now_iso()
        known = self._events.get(key)
        try:
            if known is not None:
                known["count"] += 1
                await self.api.request("PATCH", f"/api/v1/namespaces/{meta['namespace']}/events/{known['name']}",
                                       {"count": known["count"], "lastTimestamp": now},
                                       content_type="application/merge-patch+json")
                return
            name = f"{meta['name']}.{time.time_ns():x}"
            await self.api.request("POST", f"/api/v1/namespaces/{meta['namespace']}/events", {
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {"kind": "Pod", "apiVersion": "v1", "namespace": meta["namespace"],
                                   "name": meta["name"], "uid": meta["uid"], "fieldPath": field_path or None},
                "reason": reason, "message": message[:1024], "type": type_, "count": 1,
                "firstTimestamp": now, "lastTimestamp": now,
                "source": {"component": "kubelet", "host": self.name},
                "reportingComponent": "kubelet", "reportingInstance": self.name,
            })
            self._events[key] = {"name": name, "count": 1}
            if len(self._events) > 5000:
                self._events.clear()
        except Exception as e:  # noqa: BLE001 - events are best effort, as in the kubelet
            log.debug("event: %s", e)

    # ----- pods -----------------------------------------------------------------------------

    async def sync_pods(self) -> None:
        async for kind, pod in self.api.watch("/api/v1/pods", fieldSelector=f"spec.nodeName={self.name}"):
            if kind == "SYNCED":
                continue
            uid = pod["metadata"]["uid"]
            runner = self.pods.get(uid)
            if kind == "DELETED":
                if runner is not None:
                    runner.request_delete(0)
                continue
            deletion = pod["metadata"].get("deletionTimestamp")
            terminal = pod.get("status", {}).get("phase") in ("Succeeded", "Failed")
            if runner is None:
                if deletion and terminal or deletion and not pod.get("status", {}).get("containerStatuses"):
                    asyncio.create_task(self._delete_finished(pod))
                    continue
                if terminal:
                    continue
                runner = PodRunner(self, pod)
                self.pods[uid] = runner
                runner.start()
                runner.done_task = asyncio.create_task(self._forget(runner))  # type: ignore[attr-defined]
            else:
                runner.pod = pod
            if deletion:
                runner.request_delete(pod["metadata"].get("deletionGracePeriodSeconds"))

    async def _forget(self, runner: PodRunner) -> None:
        await runner.done.wait()
        # Keep terminated pods' logs reachable until the pod object itself is gone.
        if runner.deleting.is_set():
            self.pods.pop(runner.uid, None)

    async def _delete_finished(self, pod: dict[str, Any]) -> None:
        meta = pod["metadata"]
        with contextlib.suppress(ApiError):
            await self.api.request("DELETE", f"/api/v1/namespaces/{meta['namespace']}/pods/{meta['name']}",
                                   {"kind": "DeleteOptions", "apiVersion": "v1", "gracePeriodSeconds": 0,
                                    "preconditions": {"uid": meta["uid"]}})

    async def stop_all(self) -> None:
        for r in list(self.pods.values()):
            r.request_delete(2)
        await asyncio.gather(*(r.done.wait() for r in list(self.pods.values())), return_exceptions=True)

    # ----- the kubelet endpoint -------------------------------------------------------------

    def _runner_by_name(self, ns: str, name: str) -> PodRunner | None:
        found = [r for r in self.pods.values() if r.ns == ns and r.name == name]
        return found[-1] if found else None

    async def container_logs(self, request: web.Request) -> web.StreamResponse:
        ns, name, container = request.match_info["ns"], request.match_info["pod"], request.match_info["container"]
        runner = self._runner_by_name(ns, name)
        if runner is None or runner.cname != container:
            return web.Response(status=404, text=f"pod {ns}/{name} container {container} is not on this node")
        # The newest run that started is the "current" container (while a crashed one waits
        # out its back-off, that is the crashed one); the run before it is the previous one.
        cdir = runner.dir / "containers" / container
        n = runner.restart_count
        while n >= 0 and not (cdir / f"{n}.log").exists():
            n -= 1
        if request.query.get("previous") == "true":
            n -= 1
        path = cdir / f"{n}.log"
        if n < 0 or not path.exists():
            return web.Response(status=400, text=f"previous terminated container \"{container}\" in pod \"{name}\" not found")
        data = path.read_bytes()
        if "tailLines" in request.query:
            lines = data.splitlines(keepends=True)
            data = b"".join(lines[-int(request.query["tailLines"]):]) if int(request.query["tailLines"]) else b""
        if "limitBytes" in request.query:
            data = data[:int(request.query["limitBytes"])]
        if request.query.get("follow") != "true":
            return web.Response(body=data, content_type="text/plain")
        resp = web.StreamResponse()
        resp.content_type = "text/plain"
        await resp.prepare(request)
        await resp.write(data)
        offset = path.stat().st_size
        while True:
            size = path.stat().st_size
            if size > offset:
                with open(path, "rb") as f:
                    f.seek(offset)
                    await resp.write(f.read(size - offset))
                offset = size
            elif runner.process is None or not runner.process.running or runner.restart_count != n:
                break
            await asyncio.sleep(0.2)
        return resp

    async def serve_kubelet_api(self) -> web.AppRunner:
        pki.issue_serving(self.pki, "kubelet", f"system:node:{self.name}", ips=(self.node_ip, "127.0.0.1"),
                          dns=(self.name, "localhost"))
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "kubelet.crt"), str(self.pki / "kubelet.key"))
        ctx.verify_mode = ssl.CERT_REQUIRED
        app = web.Application()
        app.router.add_get("/containerLogs/{ns}/{pod}/{container}", self.container_logs)
        app.router.add_get("/healthz", lambda _r: web.Response(text="ok"))
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, self.node_ip, KUBELET_PORT, ssl_context=ctx).start()
        return runner


async def amain(args: argparse.Namespace) -> None:
    from controlplane.provisioner import Provisioner

    node = Node(args)
    # Processes a crashed earlier node left in pod namespaces are not ours to keep.
    for stale in netns.namespaces():
        netns.kill_all(stale)
        netns.delete(stale)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    async with node.api, Api(args.api_url, node.pki, "provisioner") as prov_api:
        await node.register()
        kubelet_api = await node.serve_kubelet_api()
        provisioner = Provisioner(prov_api, node.state_dir / "volumes")
        tasks = [asyncio.create_task(node.heartbeat()), asyncio.create_task(node.sync_pods()),
                 asyncio.create_task(provisioner.run())]
        log.info("node %s ready (podCIDR %s)", node.name, node.cidr)
        stopper = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait([stopper, *tasks], return_when=asyncio.FIRST_COMPLETED)
        for t in done:
            if t is not stopper and t.exception():
                log.error("node task failed", exc_info=t.exception())
        for t in tasks:
            t.cancel()
        await node.stop_all()
        await kubelet_api.cleanup()


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m controlplane.node")
    p.add_argument("--state-dir", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--node-ip", required=True)
    p.add_argument("--api-url", required=True)
    p.add_argument("--crashloop-initial", type=float, default=10.0, help="first CrashLoopBackOff wait (kubelet: 10 s)")
    p.add_argument("--crashloop-max", type=float, default=300.0, help="longest CrashLoopBackOff wait (kubelet: 300 s)")
    p.add_argument("--cpu", default="8")
    p.add_argument("--memory", default="32Gi")
    p.add_argument("--max-pods", type=int, default=250)
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    asyncio.run(amain(args))


if __name__ == "__main__":
    main()
