"""What one create, one status write and one Event cost the API server: TrainingJobs (the CRD
as shipped, and without its CEL rules) against suspended Jobs, from bench/operator.py's 16
threads with no operator.

    KUBECONFIG=... .venv/bin/python -P bench/create_cost.py 1000 [--writes]

Prints, for each kind, the wall time and the CPU seconds kube-apiserver and etcd used meanwhile
(from /proc). The CRD is put back as shipped at the end. ``--writes`` also measures, on the
objects just created, what the controllers write for each: the status the operator writes when
it starts a TrainingJob (the planner's own, as a merge patch of its status subresource) against
the status the Job controller writes when it starts a Job (active 2, startTime), and one
core/v1 Event about each. bench/README.md, "What a create costs" and "What a status write and
an Event cost".
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

HERE = Path(__file__).resolve().parent
CRD = HERE.parent / "manifests" / "crds" / "trainingjobs.mlvisor.dev.yaml"

_spec = importlib.util.spec_from_file_location("bench_operator", HERE / "operator.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def cpu_seconds(component: str) -> float:
    """CPU (user + system) of the plane's processes running ``component``: the plane runs one
    binary for all of them (tests/controlplane), the component its first argument."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 2 or argv[1].decode() != component:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def without_cel(document: dict[str, Any]) -> int:
    """Drop every x-kubernetes-validations list in place; how many rules went."""
    dropped = 0
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            dropped += len(node.pop("x-kubernetes-validations", None) or [])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return dropped


def create(kind: str, n: int, keep: list[str] | None = None) -> str:
    """Create n objects of ``kind`` in a new namespace (kept in ``keep``, if given)."""
    namespace = bench.new_namespace("cost")
    if keep is not None:
        keep.append(namespace)
    make: Callable[[str, dict[str, Any]], Any]
    if kind == "Job":
        bodies = [bench.job(f"j{i}") for i in range(n)]
        for body in bodies:
            body["spec"]["suspend"] = True  # no pods: the create alone
        batch = client.BatchV1Api()
        make = lambda ns, body: batch.create_namespaced_job(ns, body)  # type: ignore[arg-type]  # noqa: E731
    else:
        bodies = [bench.training_job(f"t{i}") for i in range(n)]
        custom = client.CustomObjectsApi()
        make = lambda ns, body: custom.create_namespaced_custom_object(  # noqa: E731
            "mlvisor.dev", "v1alpha1", ns, "trainingjobs", body)
    return timed(f"{kind}s", n, lambda: bench.create_all(namespace, bodies, make))


def first_status(body: dict[str, Any]) -> dict[str, Any]:
    """The status the operator writes when it starts this TrainingJob: its planner's, on the wire."""
    from mlvisor import api
    from mlvisor.operator.plan import OperatorConfig
    from mlvisor.operator.planners.training import plan_training

    plan = plan_training(api.TrainingJob.model_validate(body), [], time.time(), OperatorConfig())
    assert plan.status is not None
    return dict(plan.status.to_wire())


def timed(what: str, n: int, work: Callable[[], Any]) -> str:
    """Run ``work`` (n requests); its wall time and the API server's and etcd's CPU meanwhile."""
    api0, etcd0 = cpu_seconds("kube-apiserver"), cpu_seconds("etcd")
    t0 = time.monotonic()
    work()
    wall = time.monotonic() - t0
    api, etcd = cpu_seconds("kube-apiserver") - api0, cpu_seconds("etcd") - etcd0
    return (f"{n} {what} in {wall:.2f} s ({n / wall:.0f}/s): kube-apiserver {api:.2f} s CPU "
            f"({1000 * api / n:.2f} ms each), etcd {etcd:.2f} s")


def in_threads(calls: list[Callable[[], Any]]) -> None:
    """The calls from the bench's 16 threads, as bench.create_all makes its creates."""
    with ThreadPoolExecutor(bench.THREADS) as pool:
        list(pool.map(lambda call: call(), calls))


def writes(kind: str, namespace: str) -> list[str]:
    """Write each object's first status, then post one Event about each."""
    now = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    merge = "application/merge-patch+json"
    calls: list[Callable[[], Any]] = []
    if kind == "Job":
        batch = client.BatchV1Api()
        items = batch.list_namespaced_job(namespace).items
        status = {"status": {"active": 2, "ready": 0, "terminating": 0, "startTime": now,
                             "uncountedTerminatedPods": {}}}
        for item in items:
            calls.append(lambda name=item.metadata.name: batch.patch_namespaced_job_status(
                name, namespace, status, _content_type=merge))
        refs = [("batch/v1", "Job", i.metadata.name, i.metadata.uid) for i in items]
    else:
        custom = client.CustomObjectsApi()
        items = custom.list_namespaced_custom_object("mlvisor.dev", "v1alpha1", namespace, "trainingjobs")["items"]
        for item in items:
            patch = {"status": first_status(item)}
            calls.append(lambda name=item["metadata"]["name"], patch=patch: custom.patch_namespaced_custom_object_status(
                "mlvisor.dev", "v1alpha1", namespace, "trainingjobs", name, patch, _content_type=merge))
        refs = [("mlvisor.dev/v1alpha1", "TrainingJob", i["metadata"]["name"], i["metadata"]["uid"]) for i in items]
    out = [timed(f"{kind} status writes", len(calls), lambda: in_threads(calls))]
    core = client.CoreV1Api()

    def event(ref: tuple[str, str, str, str], i: int) -> Callable[[], Any]:
        api_version, obj_kind, name, uid = ref
        body = {"metadata": {"name": f"{name}.{i:x}", "namespace": namespace},
                "involvedObject": {"apiVersion": api_version, "kind": obj_kind, "name": name,
                                   "namespace": namespace, "uid": uid},
                "type": "Normal", "reason": "Created", "message": f"version {uid[:8]}-1: started 2 worker pod(s)",
                "source": {"component": "bench"}, "firstTimestamp": now, "lastTimestamp": now, "count": 1}
        return lambda: core.create_namespaced_event(namespace, body)

    events = [event(ref, i) for i, ref in enumerate(refs)]
    out.append(timed(f"Events about {kind}s", len(events), lambda: in_threads(events)))
    return out


def main() -> int:
    args = [a for a in sys.argv[1:] if a != "--writes"]
    n = int(args[0]) if args else 1000
    config.load_kube_config()
    made: list[str] = []
    print("TrainingJob (CRD as shipped):", create("TrainingJob", n, made), flush=True)
    print("Job (suspended):            ", create("Job", n, made), flush=True)
    if "--writes" in sys.argv:
        for kind, namespace in zip(("TrainingJob", "Job"), made, strict=True):
            for line in writes(kind, namespace):
                print(f"{kind}:", line, flush=True)
    document = yaml.safe_load(CRD.read_text())
    rules = without_cel(document)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(document, f)
        f.flush()
        subprocess.run(["kubectl", "replace", "-f", f.name], check=True, capture_output=True)
        try:
            time.sleep(3)  # the API server rebuilds the CRD's handler
            print(f"TrainingJob (without its {rules} CEL rules):", create("TrainingJob", n), flush=True)
        finally:
            subprocess.run(["kubectl", "apply", "-f", str(CRD)], check=True, capture_output=True)
    print("TrainingJob (CRD as shipped, again):", create("TrainingJob", n), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
