"""The local control loop: the cluster's reconcilers, with processes as pods.

This is the imperative shell for one machine. It keeps the resources and their statuses in
memory (keyed by kind, namespace, name), and on every wake-up it runs, for each resource, the
reconcile the operator runs on a cluster (:func:`mlvisor.operator.reconcilers.reconcile`, one
copy for both): this runtime is its Reader (the resources, the worker processes, the local
Deployment's replicas) and its Writer (``_ProcessWriter``: the plan's actions in order, then
the new status). It wakes when a child changes (exit,
restart, readiness), when a planner's ``requeue_after`` is due, or when a resource file
changes on disk (re-read like a ``kubectl apply`` of the new version). Level-triggered:
reconciling more often than needed is harmless, so every wake-up reconciles everything,
TrainingJobs first so a ModelServer sees its job's fresh ``status.model``, ModelPipelines last
so they see their children's fresh statuses. A pipeline's children (its runs' TrainingJobs,
its ModelServer) are resources like the others, created, patched and deleted by its plans
rather than by the files, and deleted with it (the garbage collector's part).

Nothing here decides policy: restarts, back-off, escalation and rollback are the planners'
and ``supervision.py``'s. The differences from a cluster are said where they are made
(processes.py, kubelet.py, service.py) and in the local runtime docs.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from mlvisor import api
from mlvisor.api.labels import (
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_WORKER_INDEX,
)
from mlvisor.api.progress import PROGRESS_HOST_ENV, PROGRESS_PORT_ENV, PROGRESS_PORT_NAME, ProgressReport
from mlvisor.operator import builders, reconcilers
from mlvisor.operator.local.kubelet import KubeletSettings, LocalDeployment, free_port
from mlvisor.operator.local.processes import LocalProcess, ManifestError, ProcessSpec, process_spec_for_pod
from mlvisor.operator.local.service import LocalService
from mlvisor.operator.plan import (
    ApplyDeployment,
    ApplyResource,
    ApplyService,
    CreatePod,
    DeletePod,
    DeleteResource,
    ObservedDeployment,
    ObservedPod,
    ObservedResource,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.reconcilers import Invalid, Read
from mlvisor.operator.supervision import message_source

Resource = reconcilers.Resource
Key = reconcilers.Key

#: Reconcile order of the kinds: jobs, then the servers that wait for them, then the pipelines over both.
KIND_ORDER = {"TrainingJob": 0, "ModelServer": 1, "ModelPipeline": 2}


def key_of(resource: Resource) -> Key:
    return (resource.kind, resource.metadata.namespace, resource.metadata.name)


def key_str(key: Key) -> str:
    return "/".join(key)


@dataclass(frozen=True)
class RunSettings:
    """How `mlvisor run` maps the cluster onto this machine."""

    data_dir: Path
    """Volumes live in <data-dir>/volumes/<claimName>/, logs in <data-dir>/logs/."""
    python: str = sys.executable
    """Interpreter that replaces the containers' ``python``."""
    extra_env: Mapping[str, str] = field(default_factory=dict)
    """Added to every child's environment (the manifest wins), like a node-level setting."""
    wrappers: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    """Pod component (worker, select, server) -> command put in front of the container's command."""
    kubelet: KubeletSettings = field(default_factory=KubeletSettings)
    stop_grace_seconds: float = 5.0
    """SIGTERM, then SIGKILL after this long, when stopping worker processes."""
    file_poll_seconds: float = 0.5
    """How often the resource files are checked for changes."""


@dataclass(frozen=True)
class Event:
    time: float
    key: Key
    type: str
    reason: str
    message: str
    log: Path | None = None
    """Log file of the pod whose failure the event is about (Warnings), when there is one."""


class Reporter:
    """Receives what a user should see; the CLI's terminal view implements it."""

    def event(self, event: Event) -> None: ...

    def problems(self, lines: Sequence[str]) -> None: ...

    def changed(self, runtime: LocalRuntime) -> None: ...


class WorkerRun:
    """A worker (or select) pod: one process, restartPolicy Never."""

    def __init__(self, manifest: dict[str, Any], process: LocalProcess, progress_port: int | None = None) -> None:
        self.manifest = manifest
        self.process = process
        labels = manifest["metadata"].get("labels", {})
        self.index = builders.parse_worker_index(labels.get(LABEL_WORKER_INDEX, "0"))
        self.attempt = int(labels.get(LABEL_ATTEMPT, "1"))
        self.deleting = False
        self.progress_port = progress_port
        """A search worker's own port for GET /progress (its pod declares one)."""
        self.progress: ProgressReport | None = None
        self.polled_at = 0.0

    def observe(self) -> ObservedPod:
        t = self.process.termination
        if t is None:
            phase = "Running" if self.process.pid is not None else "Pending"
        else:
            phase = "Succeeded" if t.exit_code == 0 else "Failed"
        return ObservedPod(
            name=self.process.name,
            index=self.index,
            attempt=self.attempt,
            phase=phase,  # type: ignore[arg-type]
            exit_code=None if t is None else t.exit_code,
            reason=None if t is None else t.reason,
            deleting=self.deleting,
            message=None if t is None else t.message,
            message_source=None if t is None else message_source(t.message, t.exit_code),
            progress=self.progress,
        )


class LocalRuntime:
    """Runs resources from files until told to stop; statuses readable at any time."""

    def __init__(self, files: Sequence[Path], settings: RunSettings, config: OperatorConfig | None = None,
                 reporter: Reporter | None = None) -> None:
        self.files = [Path(f) for f in files]
        self.settings = settings
        # Polling a local process costs no API server anything: progress is shown every 2 s.
        self.config = config or OperatorConfig(image="local", progress_poll_seconds=2.0)
        self.reporter = reporter or Reporter()
        self.resources: dict[Key, Resource] = {}
        self.statuses: dict[Key, api.Model] = {}
        self.workers_of: dict[Key, dict[str, WorkerRun]] = {}
        self.deployments: dict[Key, LocalDeployment] = {}
        self.services: dict[Key, LocalService] = {}
        self.grpc_services: dict[Key, LocalService] = {}
        self.requeue_at: dict[Key, float] = {}
        self.owners: dict[Key, Key] = {}
        """Child -> its controller (a pipeline's TrainingJobs and ModelServer)."""
        self._conflicts: set[Key] = set()
        self.processes: list[LocalProcess] = []
        """Every process ever started in this run (for the pid file and the leak check)."""
        self._wake = asyncio.Event()
        self._mtimes: dict[Path, float] = {}
        self.secrets: dict[tuple[str, str], dict[str, str]] = {}
        """The Secrets of the files, (namespace, name) -> data: what a pod's secretKeyRef env gets."""
        self._next_file_check = 0.0
        self._run_id = f"{os.getpid()}-{uuid.uuid4().hex[:6]}"
        self._scratch = settings.data_dir / "tmp" / self._run_id
        self._background: set[asyncio.Task[Any]] = set()
        self.steps = 0
        """Reconciles of every resource done so far (0: no status is known yet)."""

    # ------------------------------------------------------------------ resources

    def load(self, resources: Sequence[Resource], secrets: dict[tuple[str, str], dict[str, str]] | None = None) -> None:
        """Take the initial resources (already validated, e.g. by load_resources) and the files' Secrets."""
        self.secrets = dict(secrets or {})
        self._apply_resources(list(resources))
        for f in self._watched():
            with contextlib.suppress(OSError):
                self._mtimes[f] = f.stat().st_mtime_ns

    def _watched(self) -> list[Path]:
        """The files and folders whose change is a change of the resources (folders hold files)."""
        from mlvisor.operator.resources_cli import source_files

        return source_files(self.files)

    def _apply_resources(self, resources: list[Resource]) -> list[str]:
        """Create, update or delete resources like `kubectl apply` of the whole set (prune)."""
        problems: list[str] = []
        incoming = {key_of(r): r for r in resources}
        for key, new in incoming.items():
            old = self.resources.get(key)
            if old is None:
                meta = new.metadata.model_copy(update={"uid": new.metadata.uid or str(uuid.uuid4()), "generation": 1})
                self.resources[key] = new.model_copy(update={"metadata": meta, "status": None})
                continue
            if old.spec.to_wire() == new.spec.to_wire():
                continue
            if isinstance(new, api.TrainingJob):
                assert isinstance(old, api.TrainingJob)
                before, after = old.spec.to_wire(), new.spec.to_wire()
                changed = [f for f in api.IMMUTABLE_TRAINING_FIELDS if before.get(f) != after.get(f)]
                if changed:
                    problems.extend(
                        f"TrainingJob {key[1]}/{key[2]}: {api.immutable_field_message(f)} (change refused, "
                        "the running job is kept)"
                        for f in changed
                    )
                    continue
            meta = old.metadata.model_copy(update={"generation": (old.metadata.generation or 1) + 1})
            self.resources[key] = new.model_copy(update={"metadata": meta, "status": None})
        for key in [k for k in self.resources if k not in incoming and k not in self.owners]:
            self._delete_resource(key)
        self._wake.set()
        return problems

    def _delete_resource(self, key: Key) -> None:
        for child in [c for c, owner in self.owners.items() if owner == key]:
            self._delete_resource(child)  # the garbage collector's part: dependents go with their owner
        self.owners.pop(key, None)
        self.resources.pop(key, None)
        self.statuses.pop(key, None)
        self.requeue_at.pop(key, None)
        for run in self.workers_of.pop(key, {}).values():
            self._spawn(run.process.stop(self.settings.stop_grace_seconds))
        dep = self.deployments.pop(key, None)
        if dep is not None:
            self._spawn(dep.stop())
        for services in (self.services, self.grpc_services):
            svc = services.pop(key, None)
            if svc is not None:
                self._spawn(svc.close())

    def _check_files(self, now: float) -> None:
        if now < self._next_file_check:
            return
        self._next_file_check = now + self.settings.file_poll_seconds
        changed = False
        watched = set(self._watched())
        for f in watched:
            try:
                m = f.stat().st_mtime_ns
            except OSError:
                continue
            if self._mtimes.get(f) != m:
                self._mtimes[f] = m
                changed = True
        if set(self._mtimes) - watched:  # a file of a folder was removed
            self._mtimes = {f: m for f, m in self._mtimes.items() if f in watched}
            changed = True
        if not changed:
            return
        from mlvisor.operator.resources_cli import load_paths

        loaded = load_paths(self.files, data_dir=self.settings.data_dir)
        if loaded.problems:
            self.reporter.problems(["a resource file changed but is not valid; keeping the running resources:",
                                    *loaded.problems])
            return
        resources: list[Resource] = loaded.resources
        self.secrets = dict(loaded.secrets)  # as on a cluster: running pods keep the values they started with
        problems = self._apply_resources(resources)
        if problems:
            self.reporter.problems(problems)

    # ------------------------------------------------------------------ the loop

    def wake(self) -> None:
        self._wake.set()

    def resource_with_status(self, key: Key) -> Resource:
        r = self.resources[key]
        return r.model_copy(update={"status": self.statuses.get(key)})

    async def step(self) -> None:
        """One reconcile of every resource (TrainingJobs first)."""
        now = time.time()
        self._check_files(now)
        for key in sorted(self.resources, key=lambda k: (KIND_ORDER.get(k[0], 9), k)):
            if key not in self.resources:
                continue
            try:
                await reconcilers.reconcile(self, _ProcessWriter(self), key, lambda: now, self.config)
            except ManifestError as e:
                self.reporter.problems([f"{key_str(key)}: {e}"])
        self.steps += 1
        self.reporter.changed(self)

    async def run(self, done: Callable[[], bool], stop: asyncio.Event) -> None:
        """Reconcile until ``done()`` is true or ``stop`` is set; children keep running."""
        self._scratch.mkdir(parents=True, exist_ok=True)
        while not stop.is_set():
            self._wake.clear()
            await self.step()
            if done():
                return
            now = time.time()
            deadlines = [t for t in self.requeue_at.values() if t is not None]
            timeout = self.settings.file_poll_seconds
            if deadlines:
                timeout = min(timeout, max(0.0, min(deadlines) - now))
            waiters = [asyncio.ensure_future(self._wake.wait()), asyncio.ensure_future(stop.wait())]
            try:
                await asyncio.wait(waiters, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for w in waiters:
                    w.cancel()

    async def shutdown(self) -> None:
        """Stop every child (SIGTERM, grace, SIGKILL) and wait until all are gone."""
        tasks = []
        for runs in self.workers_of.values():
            for run in runs.values():
                tasks.append(run.process.stop(self.settings.stop_grace_seconds))
        for dep in self.deployments.values():
            tasks.append(dep.stop())
        for svc in [*self.services.values(), *self.grpc_services.values()]:
            tasks.append(svc.close())
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        # Belt and braces: any process still running is killed with its group.
        self.kill_all()
        shutil.rmtree(self._scratch, ignore_errors=True)

    def kill_all(self) -> None:
        """SIGKILL every process group of the run now (shutdown() still waits for them)."""
        for p in self.processes:
            p.kill()

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # ------------------------------------------------------------------ planners

    def host_folder(self, uri: str) -> Path:
        """Where a model URI lives on this machine (pvc://claim/path -> <data-dir>/volumes/claim/path)."""
        claim, path = builders.parse_model_uri(uri)
        if claim is None:
            return Path(path)
        return self.settings.data_dir / "volumes" / claim / path

    # The Reader of the reconcilers (mlvisor.operator.reconcilers): this runtime's own world.

    async def resource(self, key: Key) -> Read | Invalid | None:
        """The resource with its status; every one is valid (the files were judged when loaded)."""
        return Read(self.resource_with_status(key), key) if key in self.resources else None

    async def workers(self, read: Read) -> list[ObservedPod]:
        key = key_of(read.resource)
        await self._poll_progress(key)
        return [run.observe() for run in self.workers_of.get(key, {}).values()]

    async def preflight(self, read: Read) -> Sequence[str]:
        """None: `mlvisor run` judged every TrainingJob with the trainer's judge when it loaded the
        files, with the data folder (so a CSV too), and runs nothing it refuses."""
        return ()

    def server_children(self, read: Read) -> tuple[ObservedDeployment | None, list[ObservedPod]]:
        dep = self.deployments.get(key_of(read.resource))
        return (None, []) if dep is None or dep.manifest is None else dep.observe()

    def training_job(self, namespace: str, name: str) -> tuple[bool, api.TrainingJobStatus | None]:
        key = ("TrainingJob", namespace, name)
        status = self.statuses.get(key)
        return key in self.resources, status if isinstance(status, api.TrainingJobStatus) else None

    def pipeline_children(self, read: Read) -> list[ObservedResource]:
        from mlvisor.operator.planners.pipeline import observed_child

        key = key_of(read.resource)
        observed = []
        for child in sorted(c for c, owner in self.owners.items() if owner == key):
            status = self.statuses.get(child)
            meta = self.resources[child].metadata.model_dump(mode="json", by_alias=True, exclude_none=True)
            observed.append(observed_child(
                child[0], meta, status if isinstance(status, api.TrainingJobStatus | api.ModelServerStatus) else None))
        return observed

    async def _poll_progress(self, key: Key) -> None:
        """Ask the job's running search workers for their reports, each at most once a poll period."""
        from mlvisor.operator.local.progress import fetch_progress

        now = time.monotonic()
        due = {name: run for name, run in self.workers_of.get(key, {}).items()
               if run.progress_port is not None and run.process.running and not run.deleting
               and now - run.polled_at >= 0.8 * self.config.progress_poll_seconds}
        if not due:
            return
        for run in due.values():
            run.polled_at = now
        reports = await fetch_progress({name: run.progress_port for name, run in due.items() if run.progress_port})
        for name, report in reports.items():
            due[name].progress = report

    def _apply_child(self, owner: Key, manifest: dict[str, Any]) -> None:
        """ApplyResource: create the child resource, or bring its spec to the manifest's."""
        kind, name = manifest["kind"], manifest["metadata"]["name"]
        key = (kind, owner[1], name)
        new = api.KINDS[kind].model_validate({**manifest, "metadata": {**manifest["metadata"], "namespace": owner[1]}})
        old = self.resources.get(key)
        if old is not None and self.owners.get(key) != owner:
            if key not in self._conflicts:
                self._conflicts.add(key)
                self.reporter.problems([f"{key_str(owner)}: {key_str(key)} exists and is not its child: rename or delete it"])
            return
        if old is None:
            meta = new.metadata.model_copy(update={"uid": str(uuid.uuid4()), "generation": 1})
            self.resources[key] = new.model_copy(update={"metadata": meta, "status": None})
            self.owners[key] = owner
            self._wake.set()
        elif old.spec.to_wire() != new.spec.to_wire():
            meta = old.metadata.model_copy(update={"generation": (old.metadata.generation or 1) + 1})
            self.resources[key] = new.model_copy(update={"metadata": meta, "status": None})
            self._wake.set()

    def _delete_child(self, owner: Key, kind: str, name: str) -> None:
        key = (kind, owner[1], name)
        if self.owners.get(key) == owner:
            self._delete_resource(key)
            self._wake.set()

    async def _carry_out(self, key: Key, plan: Plan) -> None:
        for action in plan.actions:
            if isinstance(action, CreatePod):
                await self._create_worker(key, action.manifest)
            elif isinstance(action, DeletePod):
                self._delete_pod(key, action.name)
            elif isinstance(action, ApplyDeployment):
                self._apply_deployment(key, action.manifest)
            elif isinstance(action, ApplyService):
                await self._apply_service(key, action.manifest)
            elif isinstance(action, ApplyResource):
                self._apply_child(key, action.manifest)
            elif isinstance(action, DeleteResource):
                self._delete_child(key, action.kind, action.name)
            elif isinstance(action, RecordEvent):
                log = self.failure_log(key, plan.status) if action.type == "Warning" else None
                self.reporter.event(Event(time.time(), key, action.type, action.reason, action.message, log))
        if plan.status is not None:
            self.statuses[key] = plan.status
        if plan.requeue_after is not None:
            self.requeue_at[key] = time.time() + max(0.0, plan.requeue_after)
        else:
            self.requeue_at.pop(key, None)

    # ------------------------------------------------------------------ children

    def _wrapper(self, manifest: Mapping[str, Any]) -> tuple[str, ...]:
        component = manifest.get("metadata", {}).get("labels", {}).get(LABEL_COMPONENT, "")
        return self.settings.wrappers.get(component, ())

    def _log_dir(self, key: Key) -> Path:
        return self.settings.data_dir / "logs" / key[1] / f"{key[0].lower()}-{key[2]}"

    def log_path(self, key: Key, pod: str) -> Path:
        """Where the output of a pod of this resource goes (every run of its container, appended)."""
        return self._log_dir(key) / f"{pod}.log"

    def failure_log(self, key: Key, status: Any) -> Path | None:
        """The log of the pod named in status.supervision.lastFailure, if it exists."""
        last = getattr(getattr(status, "supervision", None), "last_failure", None)
        pod = getattr(last, "pod", None)  # a pipeline's last failure names a child resource, not a pod
        if not pod:
            return None
        path = self.log_path(key, pod)
        return path if path.is_file() else None

    def _started(self, process: LocalProcess) -> None:
        self.processes.append(process)
        self.wake()

    async def _create_worker(self, key: Key, manifest: dict[str, Any]) -> None:
        runs = self.workers_of.setdefault(key, {})
        name = manifest["metadata"]["name"]
        if name in runs:
            return  # create-if-absent, as the Kubernetes shell does
        container = (manifest.get("spec", {}).get("containers") or [{}])[0]
        progress_port = None
        overrides: dict[str, str] = {}
        if any(p.get("name") == PROGRESS_PORT_NAME for p in container.get("ports") or []):
            # one network namespace for every process here: each worker gets its own port
            progress_port = free_port()
            overrides = {PROGRESS_PORT_ENV: str(progress_port), PROGRESS_HOST_ENV: "127.0.0.1"}
        spec = process_spec_for_pod(
            manifest,
            self.settings.data_dir,
            self._scratch / name,
            python=self.settings.python,
            extra_env=self.settings.extra_env,
            env_overrides=overrides,
            command_prefix=self._wrapper(manifest),
            secrets=self._secrets_in(key[1]),
        )
        process = LocalProcess(name, spec, self._log_dir(key) / f"{name}.log", on_exit=lambda _p: self.wake())
        runs[name] = WorkerRun(manifest, process, progress_port)
        await process.start()
        if process.pid is not None:
            self._started(process)

    def _secrets_in(self, namespace: str) -> dict[str, dict[str, str]]:
        return {name: data for (ns, name), data in self.secrets.items() if ns == namespace}

    def _delete_pod(self, key: Key, name: str) -> None:
        runs = self.workers_of.get(key, {})
        run = runs.pop(name, None)
        if run is not None:
            run.deleting = True
            self._spawn(run.process.stop(self.settings.stop_grace_seconds))
            self.wake()
            return
        dep = self.deployments.get(key)
        if dep is not None:
            dep.delete_pod(name)

    def _server_spec(self, key: Key) -> Callable[[Mapping[str, Any], int, int], ProcessSpec]:
        def make(pod: Mapping[str, Any], port: int, grpc_port: int) -> ProcessSpec:
            return process_spec_for_pod(
                pod,
                self.settings.data_dir,
                self._scratch / pod["metadata"]["name"],
                python=self.settings.python,
                extra_env=self.settings.extra_env,
                env_overrides={
                    "MLVISOR_HOST": "127.0.0.1",
                    "MLVISOR_PORT": str(port),
                    "MLVISOR_GRPC_PORT": str(grpc_port),
                },
                command_prefix=self._wrapper(pod),
                secrets=self._secrets_in(key[1]),
            )

        return make

    def _apply_deployment(self, key: Key, manifest: dict[str, Any]) -> None:
        dep = self.deployments.get(key)
        if dep is None:
            dep = LocalDeployment(
                name=manifest["metadata"]["name"],
                namespace=key[1],
                make_spec=self._server_spec(key),
                log_dir=self._log_dir(key),
                settings=self.settings.kubelet,
                notify=lambda: self._deployment_changed(key),
                on_start=self._started,
            )
            self.deployments[key] = dep
        dep.apply(manifest)

    def _deployment_changed(self, key: Key) -> None:
        dep = self.deployments.get(key)
        if dep is not None:
            dep.reconcile()
        self.wake()

    async def _apply_service(self, key: Key, manifest: Mapping[str, Any]) -> None:
        if key not in self.services:
            svc = LocalService(key[2], endpoints=lambda: self._ready_ports(key))
            await svc.start()
            self.services[key] = svc
        wants_grpc = any(p.get("name") == "grpc" for p in manifest.get("spec", {}).get("ports", []))
        grpc_svc = self.grpc_services.get(key)
        if wants_grpc and grpc_svc is None:
            grpc_svc = LocalService(key[2], endpoints=lambda: self._ready_grpc_ports(key), http=False)
            await grpc_svc.start()
            self.grpc_services[key] = grpc_svc
        elif not wants_grpc and grpc_svc is not None:
            del self.grpc_services[key]
            self._spawn(grpc_svc.close())

    def _ready_ports(self, key: Key) -> list[int]:
        dep = self.deployments.get(key)
        return dep.ready_ports() if dep is not None else []

    def _ready_grpc_ports(self, key: Key) -> list[int]:
        dep = self.deployments.get(key)
        return dep.ready_grpc_ports() if dep is not None else []

    # ------------------------------------------------------------------ what users see

    def local_url(self, key: Key) -> str | None:
        """status.url with the cluster host replaced by the local Service's address."""
        status = self.statuses.get(key)
        svc = self.services.get(key)
        url = getattr(status, "url", None)
        if svc is None or svc.port is None:
            return None
        path = urlsplit(url).path if url else ""
        if not path:
            server = self.resources[key]
            assert isinstance(server, api.ModelServer)
            path = f"/v2/models/{server.spec.model_name or server.metadata.name}"
        return f"http://127.0.0.1:{svc.port}{path}"

    def local_grpc_address(self, key: Key) -> str | None:
        """status.grpcAddress with the cluster host replaced by the local gRPC Service's address."""
        svc = self.grpc_services.get(key)
        if svc is None or svc.port is None:
            return None
        return f"127.0.0.1:{svc.port}"

    def status_document(self) -> dict[str, Any]:
        """{"<Kind>/<ns>/<name>": status wire} with local URLs: the status file's content."""
        doc: dict[str, Any] = {}
        for key in sorted(self.resources):
            status = self.statuses.get(key)
            wire = status.model_dump(mode="json", by_alias=True, exclude_none=True) if status is not None else {}
            if key[0] in ("ModelServer", "ModelPipeline"):
                # A pipeline's URL is its ModelServer's: the one named like it.
                url = self.local_url(("ModelServer", key[1], key[2]) if key[0] == "ModelPipeline" else key)
                if url is not None and wire:
                    wire["url"] = url
                else:
                    wire.pop("url", None)
                grpc = self.local_grpc_address(key)
                if grpc is not None and wire:
                    wire["grpcAddress"] = grpc
                else:
                    wire.pop("grpcAddress", None)
            doc[key_str(key)] = wire
        return doc

    def process_document(self) -> dict[str, Any]:
        """Every process of the run: pod name, pid, whether it still runs."""
        return {
            "processes": [
                {
                    "pod": p.name,
                    "pid": p.pid,
                    "running": p.running,
                    "startedAt": p.started_at,
                    "exitCode": None if p.termination is None else p.termination.exit_code,
                }
                for p in self.processes
            ]
        }


class _ProcessWriter:
    """The :class:`~mlvisor.operator.reconcilers.Writer` of the local runtime: plans become processes."""

    def __init__(self, runtime: LocalRuntime) -> None:
        self.runtime = runtime

    async def apply(self, read: Read, plan: Plan) -> None:
        await self.runtime._carry_out(key_of(read.resource), plan)

    async def invalid(self, invalid: Invalid) -> None:
        # Not reached: every resource here was judged when its file was loaded.
        self.runtime.reporter.problems([invalid.message])


def write_json_atomic(path: Path, doc: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
