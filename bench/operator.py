"""mlvisor's TrainingJob controller side by side with the Job controller, on a real control plane.

On a control plane with no node (pods stay Pending, nothing runs: what is measured is the
controllers, not the workloads), N TrainingJobs (a 2-worker grid search: 2 worker pods each)
and N Jobs (parallelism 2, completions 2: 2 pods each, kube-controller-manager's defaults) are
created from 16 client threads, each peer in its own namespace, one after the other:

- pods/s: the peer's pods seen by a watch, divided by the time from the first create to the
  last pod seen;
- create -> first pod: per object, from just before its create call to its first pod seen by
  the watch (p50/p95/p99);
- for mlvisor: the operator process tree's RSS (peak while creating, idle after ``--idle`` s),
  its CPU seconds, and the API server's own request counters (``apiserver_request_total`` from
  its /metrics, WATCH excluded) while creating and while idle, by verb and resource;
  the idle window counts what a settled operator asks of the API server when nothing changes.

Usage (a plane of your own; see tests/controlplane/README.md):

    PYTHONPATH=tests .venv/bin/python -m controlplane up --node none --state-dir build/bench-plane
    KUBECONFIG=build/bench-plane/kubeconfig .venv/bin/python bench/operator.py --n 100

or ``make bench-operator`` (N=100 on a plane it starts in build/bench-plane and stops after).
The operator runs from this checkout (``python -m mlvisor.operator.cli operator``) with the
admin kubeconfig, serving only its namespace. Results: ``bench/results/operator-<N>.json``.
"""

from __future__ import annotations

import sys

# Run as a script, this file's folder comes first on sys.path, and this file would shadow the
# standard library's `operator` (imported by nearly everything): take the folder off first.
if sys.path and sys.path[0] == __file__.rpartition("/")[0]:
    del sys.path[0]

import argparse
import contextlib
import json
import os
import re
import signal
import socket
import statistics
import subprocess
import threading
import time
import urllib.request
import uuid
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from kubernetes import client, config, watch

from mlvisor.operator.planners.conditions import WAITING_REPORTED_AFTER_SECONDS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
THREADS = 16
PAGE = os.sysconf("SC_PAGE_SIZE")
TICKS = os.sysconf("SC_CLK_TCK")


# ------------------------------------------------------------------ process tree


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo.extend(kids.get(p, ()))
    return out


def rss_bytes(pids: list[int]) -> int:
    total = 0
    for p in pids:
        with contextlib.suppress(OSError, IndexError, ValueError), open(f"/proc/{p}/statm") as f:
            total += int(f.read().split()[1]) * PAGE
    return total


def cpu_seconds(pid: int) -> float:
    """utime + stime of ``pid`` and of its children it has waited for."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return sum(int(fields[i]) for i in (11, 12, 13, 14)) / TICKS


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid, self.every, self.peak = pid, every, 0
        self._halt = threading.Event()

    def run(self) -> None:
        while not self._halt.wait(self.every):
            self.peak = max(self.peak, rss_bytes(tree(self.pid)))

    def stop(self) -> None:
        self._halt.set()
        self.join()


# ------------------------------------------------------------------ API server


_SAMPLE = re.compile(r'^apiserver_request_total\{([^}]*)\} ([0-9.e+]+)$')
_LABEL = re.compile(r'(\w+)="([^"]*)"')


def apiserver_requests(api: client.ApiClient) -> Counter[tuple[str, str, str, str]]:
    """apiserver_request_total by (verb, resource, subresource, code), WATCH excluded."""
    method, url, headers, body, post = api.param_serialize("GET", "/metrics", auth_settings=["BearerToken"])
    response = api.call_api(method, url, headers, body, post)
    response.read()
    counts: Counter[tuple[str, str, str, str]] = Counter()
    for line in response.data.decode().splitlines():
        m = _SAMPLE.match(line)
        if not m:
            continue
        labels = dict(_LABEL.findall(m.group(1)))
        if labels.get("verb") in ("WATCH", "CONNECT"):
            continue
        key = (labels.get("verb", ""), labels.get("resource", ""), labels.get("subresource", ""), labels.get("code", ""))
        counts[key] += int(float(m.group(2)))
    return counts


def delta(after: Counter[Any], before: Counter[Any], resources: set[str]) -> dict[str, int]:
    """Requests made between two snapshots: 'VERB resource[/subresource]', with ' (code)' unless 2xx."""
    out: Counter[str] = Counter()
    for k in after:
        verb, resource, sub, code = k
        if resource in resources and after[k] - before.get(k, 0) > 0:
            name = f"{verb} {resource}{'/' + sub if sub else ''}{'' if code.startswith('2') else f' ({code})'}"
            out[name] += after[k] - before.get(k, 0)
    return dict(sorted(out.items()))


# ------------------------------------------------------------------ pods seen


class PodWatch(threading.Thread):
    """First time each pod of a namespace is seen, grouped by its owner (``owner_of(pod)``)."""

    def __init__(self, namespace: str, owner_of: Callable[[Any], str | None]) -> None:
        super().__init__(daemon=True)
        self.namespace, self.owner_of = namespace, owner_of
        self.seen: dict[str, tuple[float, str]] = {}
        self.ready = threading.Event()
        self._watch = watch.Watch()
        self._stopped = threading.Event()
        self.changed = threading.Condition()

    def run(self) -> None:
        core = client.CoreV1Api()
        # A watch can end with an error (410 Gone: at 10,000 jobs a burst of writes outran the
        # API server's watch cache between the LIST and the WATCH, and the bench waited 25 minutes
        # for events that never came): list again and go on, the listed pods counted as seen.
        while not self._stopped.is_set():
            try:
                listed = core.list_namespaced_pod(self.namespace)
                for pod in listed.items:
                    self._see(pod)
                self.ready.set()
                self._follow(core, listed.metadata.resource_version)
            except Exception as e:  # stop() ends the stream mid-chunk
                if not self._stopped.is_set():
                    print(f"pod watch: {e}; listing again", file=sys.stderr, flush=True)
                    time.sleep(0.5)

    def _see(self, pod: Any) -> None:
        now = time.monotonic()
        owner = self.owner_of(pod)
        if owner is None or pod.metadata.name in self.seen:
            return
        with self.changed:
            self.seen[pod.metadata.name] = (now, owner)
            self.changed.notify_all()

    def _follow(self, core: client.CoreV1Api, rv: str) -> None:
        for event in self._watch.stream(core.list_namespaced_pod, self.namespace, resource_version=rv,
                                        timeout_seconds=3600):
            if event["type"] == "ERROR":
                raise RuntimeError(f"watch error: {event['raw_object']}")
            self._see(event["object"])

    def wait_for(self, count: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        with self.changed:
            while len(self.seen) < count:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.changed.wait(left)
        return True

    def stop(self) -> None:
        self._stopped.set()
        self._watch.stop()


class StatusChanges(threading.Thread):
    """How many times a TrainingJob's status really changed (a watch event with a new status).

    A status write that changes nothing leaves no event (the API server does not bump the
    resourceVersion of an unchanged object), so status writes minus these changes is the number
    of writes that changed nothing.
    """

    def __init__(self, namespace: str) -> None:
        super().__init__(daemon=True)
        self.namespace, self.changes = namespace, 0
        self.ready = threading.Event()
        self._watch = watch.Watch()
        self._last: dict[str, Any] = {}
        self._stopped = False
        self.interrupted = False
        """The watch ended early: ``changes`` misses what happened after."""

    def run(self) -> None:
        custom = client.CustomObjectsApi()
        rv = custom.list_namespaced_custom_object("mlvisor.dev", "v1alpha1", self.namespace,
                                                  "trainingjobs")["metadata"]["resourceVersion"]
        self.ready.set()
        try:
            for event in self._watch.stream(custom.list_namespaced_custom_object, "mlvisor.dev", "v1alpha1",
                                            self.namespace, "trainingjobs", resource_version=rv,
                                            timeout_seconds=3600):
                if event["type"] == "ERROR":
                    raise RuntimeError(f"watch error: {event['raw_object']}")
                obj = event["object"]
                name, status = obj["metadata"]["name"], obj.get("status")
                if event["type"] == "MODIFIED" and status != self._last.get(name):
                    self.changes += 1
                self._last[name] = status
            if not self._stopped:  # the server closed it (a slow watcher is cut off without an ERROR)
                raise RuntimeError("the API server ended the watch")
        except Exception as e:  # stop() ends the stream mid-chunk
            if not self._stopped:
                # Changes in a gap cannot be counted: say so rather than report the gap's writes
                # as writes that changed nothing.
                self.interrupted = True
                print(f"status watch: {e}; its change count is incomplete", file=sys.stderr, flush=True)

    def stop(self) -> None:
        self._stopped = True
        self._watch.stop()


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {}
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else [values[0]] * 99
    return {"p50": round(qs[49], 3), "p95": round(qs[94], 3), "p99": round(qs[98], 3), "max": round(max(values), 3)}


# ------------------------------------------------------------------ peers


def training_job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
        "spec": {
            "dataset": {"builtin": "iris"},
            "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0}},
            "search": {"grid": {"max_depth": [2, 4, 8], "n_estimators": [20, 50]}, "cv": 3, "scoring": "accuracy"},
            "workers": 2,
            # a failed worker is replaced at once (the replacement figures time the controller, not a back-off)
            "supervision": {"backoff": {"initialSeconds": 0}, "maxRestarts": 100, "periodSeconds": 60},
        },
    }


def job(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "batch/v1", "kind": "Job", "metadata": {"name": name},
        "spec": {
            "parallelism": 2, "completions": 2, "backoffLimit": 3,
            "template": {"spec": {"restartPolicy": "Never", "containers": [
                {"name": "worker", "image": "python:3.11-slim", "command": ["python", "-c", "pass"]}]}},
        },
    }


def _owner_training(pod: Any) -> str | None:
    for ref in pod.metadata.owner_references or []:
        if ref.kind == "TrainingJob" and ref.controller:
            return str(ref.name)
    return None


def _owner_job(pod: Any) -> str | None:
    for ref in pod.metadata.owner_references or []:
        if ref.kind == "Job" and ref.controller:
            return str(ref.name)
    return None


def create_all(namespace: str, bodies: list[dict[str, Any]], create: Callable[[str, dict[str, Any]], Any]) -> dict[str, float]:
    """Create every body from THREADS threads; the time just before each create call, by name."""
    started: dict[str, float] = {}

    def one(body: dict[str, Any]) -> None:
        started[body["metadata"]["name"]] = time.monotonic()
        create(namespace, body)

    with ThreadPoolExecutor(THREADS) as pool:
        list(pool.map(one, bodies))
    return started


def measure(namespace: str, n: int, kind: str, timeout: float) -> dict[str, Any]:
    """Create N objects of ``kind`` (TrainingJob or Job) and time their pods."""
    if kind == "TrainingJob":
        custom = client.CustomObjectsApi()
        bodies = [training_job(f"tj-{i:05d}") for i in range(n)]

        def create(ns: str, body: dict[str, Any]) -> Any:
            return custom.create_namespaced_custom_object("mlvisor.dev", "v1alpha1", ns, "trainingjobs", body)

        owner_of = _owner_training
    else:
        batch = client.BatchV1Api()
        bodies = [job(f"job-{i:05d}") for i in range(n)]

        def create(ns: str, body: dict[str, Any]) -> Any:
            return batch.create_namespaced_job(ns, body)

        owner_of = _owner_job
    pods = PodWatch(namespace, owner_of)
    pods.start()
    pods.ready.wait(30)
    t0 = time.monotonic()
    started = create_all(namespace, bodies, create)
    created_in = time.monotonic() - t0
    complete = pods.wait_for(2 * n, timeout)
    pods.stop()
    seen = dict(pods.seen)
    last = max((t for t, _ in seen.values()), default=t0)
    first_pod: dict[str, float] = {}
    for t, owner in seen.values():
        first_pod[owner] = min(first_pod.get(owner, t), t)
    latencies = [first_pod[name] - started[name] for name in started if name in first_pod]
    return {
        "kind": kind, "n": n, "pods": len(seen), "complete": complete,
        "create_seconds": round(created_in, 2),
        "pods_seconds": round(last - t0, 2),
        "pods_per_second": round(len(seen) / (last - t0), 1) if seen else 0.0,
        "create_to_first_pod": percentiles(latencies),
    }


def kubectl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["kubectl", *args], capture_output=True, text=True, check=check, timeout=300)


#: --keep: leave the namespaces (a plane thrown away after a large N: deleting 30,000 objects
#: at kube-controller-manager's 20 requests/s takes 25 minutes).
KEEP_NAMESPACES = False


def delete_namespace(name: str, timeout: float = 1800) -> None:
    """Delete it and wait: the namespace controller's own requests must not count in the next run.

    At N=1,000 the Job controller's namespace takes minutes to go (the namespace controller and
    the garbage collector delete 3,000 objects at kube-controller-manager's 20 requests/s).
    """
    if KEEP_NAMESPACES:
        return
    with contextlib.suppress(subprocess.TimeoutExpired):
        subprocess.run(["kubectl", "delete", "namespace", name, "--wait=true", f"--timeout={int(timeout)}s"],
                       capture_output=True, text=True, timeout=timeout + 30)


def new_namespace(prefix: str) -> str:
    name = f"{prefix}-{uuid.uuid4().hex[:6]}"
    client.CoreV1Api().create_namespace({"metadata": {"name": name}})
    # The ServiceAccount admission plugin refuses pods until the namespace's default SA exists.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        with contextlib.suppress(client.ApiException):
            client.CoreV1Api().read_namespaced_service_account("default", name)
            return name
        time.sleep(0.2)
    raise RuntimeError(f"namespace {name}: no default ServiceAccount after 60 s")


class Operator:
    """``mlvisor operator -n NAMESPACE`` from this checkout, its log in bench/results/."""

    def __init__(self, namespace: str, log: Path, source: Path | None = None) -> None:
        self.log = log
        self._out = open(log, "wb")
        env = dict(os.environ)
        if source is not None:  # another checkout's source roots first (a "before" figure)
            env["PYTHONPATH"] = os.pathsep.join(str(source / root) for root in ("operator", "server", "trainer"))
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.metrics_port = sock.getsockname()[1]
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "mlvisor.operator.cli", "operator", "-n", namespace, "--liveness-port", "0",
             "--metrics-port", str(self.metrics_port), "--log-format", "text"],
            stdout=self._out, stderr=subprocess.STDOUT, cwd=source or REPO, env=env,
        )

    def own_requests(self) -> int | None:
        """The operator's own count of its API requests (mlvisor_api_requests_total; None: not counted)."""
        by_verb = self.own_counters("mlvisor_api_requests_total")
        return int(sum(by_verb.values())) if by_verb else None

    def own_counters(self, name: str) -> dict[str, float]:
        """One of the operator's counters by its label values (e.g. requests by verb, reconciles by kind)."""
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=10) as r:
                text = r.read().decode()
        except OSError:
            return {}
        out: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(name + "{"):
                labels, _, value = line.rpartition(" ")
                out[labels[len(name) + 1:-1]] = out.get(labels[len(name) + 1:-1], 0.0) + float(value)
        return out

    def holds_scikit_learn(self) -> bool:
        """True if scikit-learn's compiled modules are mapped into the operator process itself."""
        with open(f"/proc/{self.proc.pid}/maps") as f:
            return "/sklearn/" in f.read()

    def wait_started(self, timeout: float = 120, settle: float = 2) -> None:
        deadline = time.monotonic() + timeout
        # Started, and its pre-flight helper ready (scikit-learn): this bench measures creation,
        # not start-up, whichever order an operator version does the two in.
        while not ("mlvisor operator started" in (log := self.log.read_text(errors="replace"))
                   and ("pre-flight check ready" in log or "will be judged when they come" in log)):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not start:\n{self.log.read_text(errors='replace')[-3000:]}")
            time.sleep(0.1)
        time.sleep(settle)  # the watches start right after the startup handlers

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self._out.close()


def fail_worker(core: client.CoreV1Api, namespace: str, pod: str) -> None:
    """What a kubelet reports when the worker's process exits 1: the pod Failed (no node here to say it)."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    core.patch_namespaced_pod_status(pod, namespace, {"status": {"phase": "Failed", "containerStatuses": [{
        "name": "trainer", "image": "mlvisor:bench", "imageID": "", "ready": False, "restartCount": 0,
        "state": {"terminated": {"exitCode": 1, "reason": "Error", "startedAt": stamp, "finishedAt": stamp}}}]}})


def replacements(namespace: str, jobs: list[str], at_once: bool, timeout: float) -> dict[str, Any]:
    """Fail worker 0 of each job and time until its replacement (attempt 2) is seen by a watch.

    ``at_once``: all failures sent together from THREADS threads (a burst); else one at a time,
    each after the previous replacement was seen (the latency of one failure among N live jobs).
    """
    core = client.CoreV1Api()
    targets = set(jobs)

    def replacement_of(pod: Any) -> str | None:
        owner = pod.metadata.name.rpartition("-worker-0-")[0]
        return owner if pod.metadata.name.endswith("-worker-0-2") and owner in targets else None

    pods = PodWatch(namespace, replacement_of)
    pods.start()
    pods.ready.wait(30)
    failed_at: dict[str, float] = {}

    def one(name: str) -> None:
        failed_at[name] = time.monotonic()
        fail_worker(core, namespace, f"{name}-worker-0-1")

    t0 = time.monotonic()
    complete = True
    if at_once:
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(one, jobs))
        complete = pods.wait_for(len(jobs), timeout)
    else:
        for i, name in enumerate(jobs):
            one(name)
            if not pods.wait_for(i + 1, min(timeout, 60)):
                complete = False
                break
    pods.stop()
    seen = {owner: t for t, owner in pods.seen.values()}
    latencies = [seen[name] - failed_at[name] for name in failed_at if name in seen]
    return {"failed": len(failed_at), "replaced": len(latencies), "complete": complete,
            "all_replaced_seconds": round(max(seen.values(), default=t0) - t0, 3) if latencies else None,
            "failure_to_replacement": percentiles(latencies)}


MLVISOR_RESOURCES = {"trainingjobs", "pods", "events", "deployments", "services", "modelservers", "modelpipelines"}


def bench_mlvisor(n: int, idle: float, timeout: float, source: Path | None = None,
                  profile: Path | None = None) -> dict[str, Any]:
    api = client.ApiClient()
    kubectl("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "manifests" / "crds"))
    kubectl("wait", "--for=condition=Established", "crd/trainingjobs.mlvisor.dev", "--timeout=60s")
    namespace = new_namespace("bench-mlvisor")
    RESULTS.mkdir(parents=True, exist_ok=True)
    operator = Operator(namespace, RESULTS / f"operator-{n}.log", source)
    try:
        operator.wait_started()
        rss_started = rss_bytes(tree(operator.proc.pid))
        sampler = RssSampler(operator.proc.pid)
        sampler.start()
        cpu0 = cpu_seconds(operator.proc.pid)
        changes = StatusChanges(namespace)
        changes.start()
        changes.ready.wait(30)
        before = apiserver_requests(api)
        own_before = operator.own_counters("mlvisor_api_requests_total")
        reconciles_before = operator.own_counters("mlvisor_reconciles_total")
        profiler = None
        if profile is not None:  # py-spy samples the operator while it creates (collapsed stacks)
            spy = Path(sys.executable).parent / "py-spy"
            profiler = subprocess.Popen([str(spy) if spy.exists() else "py-spy", "record", "--pid", str(operator.proc.pid), "--rate", "200",
                                         "--format", "raw", "--nonblocking", "--threads", "-o", str(profile)],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            time.sleep(1)
        result = measure(namespace, n, "TrainingJob", timeout)
        if profiler is not None:
            time.sleep(3)  # the last status writes
            profiler.send_signal(signal.SIGINT)
            profiler.wait(60)
        settle = time.monotonic()
        time.sleep(min(idle, 10))  # the last statuses land
        during = apiserver_requests(api)
        own_during = {k: int(v - own_before.get(k, 0)) for k, v in operator.own_counters("mlvisor_api_requests_total").items()}
        reconciles = int(sum(operator.own_counters("mlvisor_reconciles_total").values())
                         - sum(reconciles_before.values()))
        cpu_busy = cpu_seconds(operator.proc.pid) - cpu0
        sampler.stop()
        time.sleep(max(0.0, idle - (time.monotonic() - settle)))
        rss_idle = rss_bytes(tree(operator.proc.pid))
        idle_start = apiserver_requests(api)
        time.sleep(min(idle, 30))
        idle_end = apiserver_requests(api)
        own_before_noop = operator.own_requests()
        # A reconcile that should change nothing: a metadata-only change (an annotation) to every
        # TrainingJob queues each once; what the operator asks of the API server then is its cost.
        custom = client.CustomObjectsApi()
        with ThreadPoolExecutor(THREADS) as pool:
            list(pool.map(lambda i: custom.patch_namespaced_custom_object(
                "mlvisor.dev", "v1alpha1", namespace, "trainingjobs", f"tj-{i:05d}",
                {"metadata": {"annotations": {"bench.mlvisor.dev/touched": "1"}}}), range(n)))
        time.sleep(min(idle, 15))
        touched_end = apiserver_requests(api)
        noop = delta(touched_end, idle_end, MLVISOR_RESOURCES)
        noop["PATCH trainingjobs"] = noop.get("PATCH trainingjobs", 0) - n  # the bench's own
        noop = {k: v for k, v in noop.items() if v}
        changes.stop()
        own_after_noop = operator.own_requests()
        # Failure -> replacement (back-off 0): 20 workers one at a time, then 10% of the jobs at once.
        names = [f"tj-{i:05d}" for i in range(n)]
        one_by_one = replacements(namespace, names[1::max(1, n // 20)][:20], at_once=False, timeout=timeout)
        burst = replacements(namespace, [x for x in names[::10] if x not in set(names[1::max(1, n // 20)][:20])],
                             at_once=True, timeout=timeout)
        requests = delta(during, before, MLVISOR_RESOURCES)
        writes = sum(v for k, v in delta(touched_end, before, {"trainingjobs"}).items()
                     if k == "PATCH trainingjobs/status")
        result.update(
            rss_started_mb=round(rss_started / 2**20, 1),
            rss_peak_mb=round(max(sampler.peak, rss_idle) / 2**20, 1),
            rss_idle_mb=round(rss_idle / 2**20, 1),
            idle_processes=len(tree(operator.proc.pid)),
            operator_holds_scikit_learn=operator.holds_scikit_learn(),
            cpu_seconds=round(cpu_busy, 1),
            requests=requests,
            operator_requests=own_during,
            reconciles=reconciles,
            operator_requests_per_reconcile=round(sum(own_during.values()) / reconciles, 2) if reconciles else None,
            status_writes=writes,
            status_changes=None if changes.interrupted else changes.changes,
            status_writes_that_changed_nothing=None if changes.interrupted else writes - changes.changes,
            idle_requests=delta(idle_end, idle_start, MLVISOR_RESOURCES),
            idle_window_seconds=min(idle, 30),
            noop_reconcile_requests=noop,
            noop_operator_requests=(None if own_before_noop is None or own_after_noop is None
                                    else own_after_noop - own_before_noop),
            replacement_one_at_a_time=one_by_one,
            replacement_burst=burst,
            noop_requests_per_reconcile=round(
                sum(v for k, v in noop.items() if k.split()[1].split("/")[0] in ("trainingjobs", "pods")) / n, 2),
        )
        # An operator restart: the new process lists everything and reconciles every job once.
        # Settled = every job reconciled and no reconcile for 5 s; what it wrote meanwhile is the cost.
        # First let the old process finish (the replacements' aftermath: their pods' Unschedulable
        # conditions, said once a pod has waited WAITING_REPORTED_AFTER_SECONDS): a restart is
        # measured from quiet, or it would count the old one's work.
        quiet_for = WAITING_REPORTED_AFTER_SECONDS + 5
        waited, last_seen, quiet = time.monotonic(), operator.own_requests(), time.monotonic()
        while time.monotonic() - quiet < quiet_for and time.monotonic() - waited < 120:
            time.sleep(0.5)
            seen = operator.own_requests()
            if seen != last_seen:
                last_seen, quiet = seen, time.monotonic()
        operator.stop()
        before_restart = apiserver_requests(api)
        t0 = time.monotonic()
        operator = Operator(namespace, RESULTS / f"operator-{n}-restart.log", source)
        operator.wait_started(settle=0)
        last_count, last_change = -1.0, time.monotonic()
        while time.monotonic() - t0 < timeout:
            count = sum(v for k, v in operator.own_counters("mlvisor_reconciles_total").items()
                        if 'kind="TrainingJob"' in k)
            if count != last_count:
                last_count, last_change = count, time.monotonic()
            elif count >= n and time.monotonic() - last_change >= 5:
                break
            time.sleep(0.1)
        restart_requests = delta(apiserver_requests(api), before_restart, MLVISOR_RESOURCES)
        result.update(
            restart_settled_seconds=round(last_change - t0, 2),
            restart_reconciles=int(last_count),
            restart_operator_requests=operator.own_requests(),
            restart_requests={k: v for k, v in restart_requests.items() if v},
        )
        return result
    finally:
        operator.stop()
        delete_namespace(namespace)


def bench_jobs(n: int, timeout: float) -> dict[str, Any]:
    namespace = new_namespace("bench-jobs")
    try:
        return measure(namespace, n, "Job", timeout)
    finally:
        delete_namespace(namespace)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=100, help="TrainingJobs and Jobs each (default 100)")
    parser.add_argument("--only", choices=("mlvisor", "jobs"), help="one peer only")
    parser.add_argument("--idle", type=float, default=60.0,
                        help="seconds after the last pod before the idle RSS is taken (default 60)")
    parser.add_argument("--timeout", type=float, default=600.0, help="longest wait for all pods of a peer")
    parser.add_argument("--source", type=Path, help="run the operator from this checkout (a before/after figure)")
    parser.add_argument("--tag", default="", help="added to the result file's name")
    parser.add_argument("--profile", action="store_true",
                        help="py-spy the operator while it creates: bench/results/operator-<N>-<tag>.profile.txt "
                             "(collapsed stacks; bench/profile_top.py summarises them)")
    parser.add_argument("--keep", action="store_true",
                        help="leave the benches' namespaces in place (then throw the control plane away)")
    args = parser.parse_args()
    global KEEP_NAMESPACES
    KEEP_NAMESPACES = args.keep
    config.load_kube_config()
    results: dict[str, Any] = {"n": args.n, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_before": os.getloadavg()[0]}
    if args.only in (None, "jobs"):
        results["jobs"] = bench_jobs(args.n, args.timeout)
        print(json.dumps(results["jobs"]), flush=True)
    if args.only in (None, "mlvisor"):
        profile = RESULTS / f"operator-{args.n}{'-' + args.tag if args.tag else ''}.profile.txt" if args.profile else None
        results["mlvisor"] = bench_mlvisor(args.n, args.idle, args.timeout, args.source, profile)
        print(json.dumps(results["mlvisor"]), flush=True)
    if "jobs" in results and "mlvisor" in results and results["jobs"]["pods_per_second"]:
        results["ratio_pods_per_second"] = round(
            results["mlvisor"]["pods_per_second"] / results["jobs"]["pods_per_second"], 2)
    results["load_after"] = os.getloadavg()[0]
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"operator-{args.n}{'-' + args.only if args.only else ''}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(results, indent=1) + "\n")
    print(f"written {out.relative_to(REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
