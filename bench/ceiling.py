"""The ceiling: how fast could any TrainingJob controller make pods on this plane?

    KUBECONFIG=... .venv/bin/python -P bench/ceiling.py --n 1000 [--peers jobs,ceiling,mlvisor] [--pod worker|minimal]

Runs bench/operator.py's creation phase (N TrainingJobs from 16 threads, a watch timing each pod)
against the least a TrainingJob controller can do: one watch of TrainingJobs and, for each one
added, its two worker pods created at once (mlvisor's asynchronous client, 32 requests in
flight), and nothing else: no status write, no Event, no pre-flight judgement, no store of pods.
``--pod worker`` creates the pods mlvisor's operator creates (operator/.../builders.py);
``--pod minimal`` the bench's Job pod template instead (a pod with none of the restricted
security context, env or volumes).

The figure is an upper bound for mlvisor's pods/s on the same plane: mlvisor does all of this
and more. ``--peers`` runs, in one invocation on one plane, the Job controller as the plane runs
it (its defaults, or the raised client limit on a plane started with
``--controller-manager-arg=--kube-api-qps=...``), the ceiling and mlvisor's operator, and gives
their ratios. bench/README.md, "The ceiling".
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from kubernetes import config

HERE = Path(__file__).resolve().parent
_spec = importlib.util.spec_from_file_location("bench_operator", HERE / "operator.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


async def controller(namespace: str, pod: str, writes: str) -> None:
    """The least TrainingJob controller: watch, and create two pods per TrainingJob added
    (``writes`` "all": carry out the whole plan mlvisor's planner makes of the new job instead,
    with mlvisor's applier: its pods, its status write and its Event; "status": the same without
    the Event)."""
    import dataclasses
    import time as clock

    from mlvisor import api
    from mlvisor.operator.builders import build_worker_pod, worker_pod_name
    from mlvisor.operator.kube.adapter import PlanApplier
    from mlvisor.operator.kube.client import ApiError, Kube, core_path, group_path
    from mlvisor.operator.kube.connection import connect
    from mlvisor.operator.kube.controllers import parse_resource
    from mlvisor.operator.plan import OperatorConfig, RecordEvent
    from mlvisor.operator.planners.training import plan_training

    kube = Kube(connect(None), max_in_flight=32)
    settings = OperatorConfig()
    jobs = group_path("mlvisor.dev", "v1alpha1", "trainingjobs", namespace)
    pods = core_path("pods", namespace)
    for attempt in range(30):  # a plane whose CRDs were just applied answers 429 for a few seconds
        try:
            listed = await kube.request("GET", jobs, verb="LIST")
            break
        except ApiError as e:
            if e.status != 429 or attempt == 29:
                raise
            await asyncio.sleep(1.0)
    rv = listed["metadata"]["resourceVersion"]
    tasks: set[asyncio.Task[Any]] = set()

    def body(obj: dict[str, Any], job: api.TrainingJob, index: int) -> dict[str, Any]:
        meta = obj["metadata"]
        if pod == "worker":
            return build_worker_pod(job, index, 1, f"{meta['uid'][:8]}-1", settings, workers=2)
        manifest = bench.job("x")["spec"]["template"]
        return {"apiVersion": "v1", "kind": "Pod", "metadata": {
            "name": worker_pod_name(job, index, 1),
            "ownerReferences": [{"apiVersion": obj["apiVersion"], "kind": "TrainingJob", "name": meta["name"],
                                 "uid": meta["uid"], "controller": True, "blockOwnerDeletion": True}]},
            "spec": manifest["spec"]}

    applier = PlanApplier(kube)

    async def plan_and_apply(obj: dict[str, Any], job: api.TrainingJob) -> None:
        plan = plan_training(job, [], clock.time(), settings, preflight=[])
        if writes == "status":  # the plan without its Event
            plan = dataclasses.replace(plan, actions=tuple(a for a in plan.actions if not isinstance(a, RecordEvent)))
        await applier.apply(obj, plan)

    print("ready", flush=True)
    while True:
        async for event in kube.watch(jobs, {"resourceVersion": rv, "allowWatchBookmarks": "true"}, 300):
            obj = event["object"]
            rv = obj["metadata"]["resourceVersion"]
            if event["type"] != "ADDED":
                continue
            job, problem = parse_resource(api.TrainingJob, obj)  # as the operator parses it
            assert job is not None, problem
            work = ([plan_and_apply(obj, job)] if writes != "pods"
                    else [kube.create(pods, body(obj, job, i)) for i in range(2)])
            for one in work:
                task = asyncio.create_task(one)
                tasks.add(task)
                task.add_done_callback(tasks.discard)


def bench_ceiling(n: int, pod: str, timeout: float, writes: str = "pods") -> dict[str, Any]:
    bench.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(bench.REPO / "manifests" / "crds"))
    bench.kubectl("wait", "--for=condition=Established", "crd/trainingjobs.mlvisor.dev", "--timeout=60s")
    namespace = bench.new_namespace("ceiling")
    child = subprocess.Popen([sys.executable, "-P", __file__, "--controller", namespace, "--pod", pod, "--writes", writes],
                             stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "ready"
        cpu0 = bench.cpu_seconds(child.pid)
        result = bench.measure(namespace, n, "TrainingJob", timeout)
        result["controller_cpu_seconds"] = round(bench.cpu_seconds(child.pid) - cpu0, 1)
        result["pod"], result["writes"] = pod, writes
    finally:
        child.terminate()
        child.wait(30)
        bench.delete_namespace(namespace)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--pod", choices=("worker", "minimal"), default="worker")
    parser.add_argument("--writes", choices=("pods", "status", "all"), default="pods",
                        help="what the ceiling controller writes: its two pods (default), or all that mlvisor's "
                             "planner plans for a new job, through mlvisor's applier (pods, status, Event), or "
                             "that without the Event (status)")
    parser.add_argument("--peers", default="jobs,ceiling",
                        help="comma-separated, run in this order on this plane: jobs (the Job controller as the plane "
                             "runs it), ceiling, mlvisor (bench/operator.py's whole mlvisor run, --idle 20)")
    parser.add_argument("--tag", default="")
    parser.add_argument("--controller", help=argparse.SUPPRESS)  # the child process: run the controller
    parser.add_argument("--timeout", type=float, default=600.0)
    args = parser.parse_args()
    if args.controller:
        asyncio.run(controller(args.controller, args.pod, args.writes))
        return 0
    config.load_kube_config()
    out: dict[str, Any] = {"n": args.n, "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                           "load_before": os.getloadavg()[0]}
    for peer in args.peers.split(","):
        if peer == "jobs":
            out["jobs"] = bench.bench_jobs(args.n, args.timeout)
        elif peer == "ceiling":
            out["ceiling"] = bench_ceiling(args.n, args.pod, args.timeout, args.writes)
        elif peer == "mlvisor":
            out["mlvisor"] = bench.bench_mlvisor(args.n, 20.0, args.timeout)
        else:
            parser.error(f"--peers: expected jobs, ceiling or mlvisor, got {peer!r}")
        print(json.dumps({peer: out[peer]}), flush=True)
    speeds = {peer: out[peer]["pods_per_second"] for peer in ("jobs", "ceiling", "mlvisor") if peer in out}
    out["ratios"] = {f"{a}/{b}": round(speeds[a] / speeds[b], 2)
                     for a in speeds for b in speeds if a != b and speeds[b] and (a, b) in
                     {("ceiling", "jobs"), ("mlvisor", "jobs"), ("mlvisor", "ceiling")}}
    out["load_after"] = os.getloadavg()[0]
    print(json.dumps(out["ratios"]), flush=True)
    path = bench.RESULTS / f"ceiling-{args.n}{'-' + args.tag if args.tag else ''}.json"
    path.write_text(json.dumps(out, indent=1) + "\n")
    print(f"written {path.relative_to(bench.REPO)}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
