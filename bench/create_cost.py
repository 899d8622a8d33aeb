"""What one create, one status write and one Event cost the API server: TrainingJobs (the CRD
as shipped, and without its CEL rules) against suspended Jobs, from bench/operator.py's 16
threads with no operator.

    KUBECONFIG=... .venv/bin/python -P bench/create_cost.py 1000 [--writes] [--pprof DIR]
    KUBECONFIG=... .venv/bin/python -P bench/create_cost.py 1000 --schemas 2

Prints, for each kind, the wall time and the CPU seconds kube-apiserver and etcd used meanwhile
(from /proc). The CRD is put back as shipped at the end. ``--writes`` also measures, on the
objects just created, what the controllers write for each: the status the operator writes when
it starts a TrainingJob (the planner's own, as a merge patch of its status subresource) against
the status the Job controller writes when it starts a Job (active 2, startTime), and one
core/v1 Event about each. bench/README.md, "What a create costs" and "What a status write and
an Event cost".

``--pprof DIR`` (on a plane started with ``--apiserver-arg=--profiling=true``) then takes a CPU
profile of kube-apiserver while 16 threads write one-field status patches to the objects of each
kind, over and over, for ``--seconds`` (default 20): DIR/TrainingJob-status.pprof and
DIR/Job-status.pprof, read with ``go tool pprof -top -cum <the plane's binary> FILE``.
``--schemas ROUNDS`` measures only what the CRD's schema costs a status write: the same
TrainingJobs under the CRD as shipped, without its CEL rules, with a schemaless status (and no
CEL), and schemaless altogether. bench/README.md, "Where a status write goes".
"""

from __future__ import annotations

import argparse
import functools
import importlib.util
import os
import subprocess
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


def replace_crd(document: dict[str, Any]) -> None:
    """Put this form of the TrainingJob CRD in place and give the API server time to rebuild
    the CRD's handler."""
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(document, f)
        f.flush()
        subprocess.run(["kubectl", "replace", "-f", f.name], check=True, capture_output=True)
    time.sleep(3)


@functools.cache
def custom_objects() -> client.CustomObjectsApi:
    """One client for every request (a new one is a new connection pool: a TLS handshake the
    API server would pay in the figures)."""
    return client.CustomObjectsApi()


def status_patch(namespace: str, name: str, body: dict[str, Any]) -> Any:
    """A merge patch of a TrainingJob's status subresource, as the operator writes it."""
    return custom_objects().patch_namespaced_custom_object_status(
        "mlvisor.dev", "v1alpha1", namespace, "trainingjobs", name, body,
        _content_type="application/merge-patch+json")


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
        custom = custom_objects()
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
        custom = custom_objects()
        items = custom.list_namespaced_custom_object("mlvisor.dev", "v1alpha1", namespace, "trainingjobs")["items"]
        for item in items:
            patch = {"status": first_status(item)}
            calls.append(lambda name=item["metadata"]["name"], patch=patch: status_patch(namespace, name, patch))
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


def profile_writes(kind: str, namespace: str, seconds: float, out: Path) -> str:
    """A CPU profile of kube-apiserver (``out``) while one-field status patches go to the
    objects of ``kind`` in ``namespace`` from 16 threads, each a real change."""
    merge = "application/merge-patch+json"
    write: Callable[[str, int], Any]
    if kind == "Job":
        batch = client.BatchV1Api()
        names = [str(i.metadata and i.metadata.name) for i in batch.list_namespaced_job(namespace).items]
        write = lambda name, k: batch.patch_namespaced_job_status(  # noqa: E731
            name, namespace, {"status": {"active": 1 + k % 2}}, _content_type=merge)
    else:
        listed: Any = custom_objects().list_namespaced_custom_object(
            "mlvisor.dev", "v1alpha1", namespace, "trainingjobs")
        names = [str(i["metadata"]["name"]) for i in listed["items"]]
        write = lambda name, k: status_patch(namespace, name, {"status": {"workersSummary": f"{k % 2}/2"}})  # noqa: E731

    def loop(thread: int) -> int:
        """This thread's share of the objects, written over and over until the profile ends."""
        k, done = 1, 0
        while profiler.poll() is None:
            for name in names[thread::bench.THREADS]:
                write(name, k)
                done += 1
            k += 1
        return done

    api0 = cpu_seconds("kube-apiserver")
    with out.open("wb") as f:
        profiler = subprocess.Popen(["kubectl", "get", "--raw", f"/debug/pprof/profile?seconds={seconds:.0f}"],
                                    stdout=f, stderr=subprocess.PIPE)
        with ThreadPoolExecutor(bench.THREADS) as pool:
            done = sum(pool.map(loop, range(bench.THREADS)))
    _, err = profiler.communicate()
    if profiler.returncode != 0:
        raise SystemExit(f"no profile ({err.decode().strip()}): start the plane with --apiserver-arg=--profiling=true")
    api = cpu_seconds("kube-apiserver") - api0
    return (f"{done} one-field status writes profiled into {out}: kube-apiserver {api:.2f} s CPU "
            f"({1000 * api / done:.2f} ms each, the profile's requests in flight at its end included)")


def schemaless(document: dict[str, Any], part: str) -> None:
    """Replace the schema of ``part`` (spec or status) by one that keeps anything."""
    properties = document["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
    properties[part] = {"type": "object", "x-kubernetes-preserve-unknown-fields": True}


def loosen(*steps: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], None]:
    def apply(document: dict[str, Any]) -> None:
        for step in steps:
            step(document)
    return apply


SCHEMAS: dict[str, Callable[[dict[str, Any]], None]] = {
    "as shipped": loosen(),
    "without CEL": loosen(without_cel),
    "status schemaless, without CEL": loosen(lambda d: schemaless(d, "status"), without_cel),
    "schemaless (spec and status)": loosen(lambda d: schemaless(d, "status"), lambda d: schemaless(d, "spec")),
}


def under_schema(form: str, n: int) -> str:
    """n TrainingJobs created under the CRD in ``form`` (a key of SCHEMAS), then a first status
    and two one-field status writes each; the namespace is deleted, and waited for, after."""
    document = yaml.safe_load(CRD.read_text())
    SCHEMAS[form](document)
    replace_crd(document)
    made: list[str] = []
    created = create("TrainingJob", n, made)
    namespace = made[0]
    listed: Any = custom_objects().list_namespaced_custom_object(
        "mlvisor.dev", "v1alpha1", namespace, "trainingjobs")

    def patch(name: str, body: dict[str, Any]) -> Callable[[], Any]:
        return lambda: status_patch(namespace, name, body)

    first = [patch(i["metadata"]["name"], {"status": first_status(i)}) for i in listed["items"]]
    one = [patch(i["metadata"]["name"], {"status": {"workersSummary": f"{k}/2"}})
           for i in listed["items"] for k in (1, 2)]
    lines = [created, timed("first statuses", len(first), lambda: in_threads(first)),
             timed("one-field status writes", len(one), lambda: in_threads(one))]
    subprocess.run(["kubectl", "delete", "namespace", namespace, "--timeout=300s"], check=True, capture_output=True)
    return "\n  ".join(lines)


def schemas(n: int, rounds: int) -> None:
    """What the CRD's schema costs a status write: each form of SCHEMAS in turn (forwards, then
    backwards), ``rounds`` times; the CRD is put back as shipped at the end."""
    forms = list(SCHEMAS)
    try:
        for r in range(rounds):
            for form in forms if r % 2 == 0 else forms[::-1]:
                print(f"round {r + 1}, {form}:\n  {under_schema(form, n)}", flush=True)
    finally:
        subprocess.run(["kubectl", "apply", "-f", str(CRD)], check=True, capture_output=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", type=int, nargs="?", default=1000)
    parser.add_argument("--writes", action="store_true", help="also a status write and an Event per object")
    parser.add_argument("--pprof", type=Path, metavar="DIR", help="also profile kube-apiserver during status writes")
    parser.add_argument("--seconds", type=float, default=20.0, help="the length of each --pprof profile")
    parser.add_argument("--schemas", type=int, metavar="ROUNDS",
                        help="only this: a status write under the CRD as shipped and looser forms of it, ROUNDS rounds")
    args = parser.parse_args()
    n = args.n
    config.load_kube_config()
    if args.schemas:
        schemas(n, args.schemas)
        return 0
    made: list[str] = []
    print("TrainingJob (CRD as shipped):", create("TrainingJob", n, made), flush=True)
    print("Job (suspended):            ", create("Job", n, made), flush=True)
    if args.writes:
        for kind, namespace in zip(("TrainingJob", "Job"), made, strict=True):
            for line in writes(kind, namespace):
                print(f"{kind}:", line, flush=True)
    if args.pprof is not None:
        args.pprof.mkdir(parents=True, exist_ok=True)
        for kind, namespace in zip(("TrainingJob", "Job"), made, strict=True):
            print(f"{kind}:", profile_writes(kind, namespace, args.seconds, args.pprof / f"{kind}-status.pprof"), flush=True)
    document = yaml.safe_load(CRD.read_text())
    rules = without_cel(document)
    try:
        replace_crd(document)
        print(f"TrainingJob (without its {rules} CEL rules):", create("TrainingJob", n), flush=True)
    finally:
        subprocess.run(["kubectl", "apply", "-f", str(CRD)], check=True, capture_output=True)
    print("TrainingJob (CRD as shipped, again):", create("TrainingJob", n), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
