"""The operator's own CPU per TrainingJob, with no API server: a steady yardstick for its code.

    .venv/bin/python -P bench/operator_cpu.py --n 1000 [--rate 200] [--repeat 3] [--profile]

bench/operator.py measures the operator on the real control plane, where the API server's CPU
and the machine's other work move every figure by tens of percent from run to run. This bench
runs the operator's own event path in one process instead: the watch router, the store, the
work queue, the reconcilers, the planner and the plan applier, as ``mlvisor operator`` wires
them (kube/handlers.py), against an in-process stand-in for the API server that answers each
request at once and sends back the watch events the real one would:

- N TrainingJobs (bench/operator.py's, a two-worker search) arrive as ADDED events, ``--rate``
  per second;
- each pod the operator creates comes back as ADDED, and a few milliseconds later as MODIFIED
  with the scheduler's Unschedulable condition (a plane with no node, as in bench/operator.py);
- each status write comes back as the TrainingJob's MODIFIED event;
- every request and every event goes through JSON both ways (orjson), as on the wire.

What it leaves out: HTTP and TLS (aiohttp, the informers' reading of the stream), and the
pre-flight helper (a stand-in answers "no problems"; the operator judges one spec once either
way). So its figure is the part of the operator's CPU that is its own code. It reports the
process's CPU time from the first job to the moment every pod exists and the queue is idle,
per job, with the reconciles, requests and status writes per job, after a first run that is
not counted (it pays for what the operator imports lazily). Separate invocations still differ
by up to 20% on these machines: compare versions in alternating invocations
(``PYTHONPATH=<checkout>/operator`` for the other one).

``--profile`` adds a cProfile of one run (bench/results/operator-cpu-<N>.pstats.txt). Its cost
per Python call overstates small functions (it put the rule validator at a fifth of the run,
which removing it did not save); ``py-spy record -- .venv/bin/python -P bench/operator_cpu.py``
samples without that. bench/README.md, "Echoes, first try (reverted), and the operator's own CPU"
and "Echoes, second try".
"""

from __future__ import annotations

import sys

# This folder holds operator.py, which would shadow the standard library's `operator`.
if sys.path and sys.path[0] == __file__.rpartition("/")[0]:
    del sys.path[0]

import argparse
import asyncio
import cProfile
import importlib.util
import io
import itertools
import json
import pstats
import re
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

import orjson

from mlvisor.operator.kube.client import ApiError

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# bench/operator.py's TrainingJob (a grid search over two workers, replaced at once on failure),
# loaded by path as bench/ceiling.py does: this folder's operator.py is not an importable module.
_spec = importlib.util.spec_from_file_location("bench_operator", HERE / "operator.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)
NAMESPACE = "bench"
_PATH = re.compile(r"^/apis?/(?:[^/]+/)?[^/]+/namespaces/(?P<ns>[^/]+)/(?P<plural>[^/]+)(?:/(?P<name>[^/]+))?(?:/(?P<sub>status))?$")
KINDS = {"pods": "Pod", "events": "Event", "trainingjobs": "TrainingJob", "deployments": "Deployment",
         "services": "Service", "modelservers": "ModelServer", "modelpipelines": "ModelPipeline"}


def _stamp(at: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at))


class ApiServer:
    """Answers the operator's requests at once and sends the watch events they cause (to ``router``)."""

    def __init__(self, router: Any, schedule_after: float) -> None:
        self.router = router
        self.schedule_after = schedule_after
        self.objects: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.requests: Counter[str] = Counter()
        self.status_writes = 0
        self._rv = itertools.count(1)
        self._uid = itertools.count(1)

    def _send(self, type_: str, body: dict[str, Any]) -> None:
        wire = orjson.dumps(body)
        asyncio.get_running_loop().call_soon(lambda: self.router(type_, orjson.loads(wire)))

    def _answer(self, body: dict[str, Any]) -> dict[str, Any]:
        return dict(orjson.loads(orjson.dumps(body)))

    def add(self, body: dict[str, Any]) -> dict[str, Any]:
        kind, meta = body["kind"], body["metadata"]
        meta.setdefault("namespace", NAMESPACE)
        meta.update(uid=f"uid-{next(self._uid)}", resourceVersion=str(next(self._rv)), generation=1,
                    creationTimestamp=_stamp(time.time()))
        if kind == "Pod":
            body["status"] = {"phase": "Pending", "qosClass": "Burstable"}
        self.objects[(kind, meta["namespace"], meta["name"])] = body
        if kind != "Event":
            self._send("ADDED", body)
        if kind == "Pod":
            asyncio.get_running_loop().call_later(self.schedule_after, self._unschedulable, meta["namespace"], meta["name"])
        return body

    def _unschedulable(self, namespace: str, name: str) -> None:
        pod = self.objects.get(("Pod", namespace, name))
        if pod is None:
            return
        pod["metadata"]["resourceVersion"] = str(next(self._rv))
        pod["status"]["conditions"] = [{
            "type": "PodScheduled", "status": "False", "reason": "Unschedulable", "lastProbeTime": None,
            "lastTransitionTime": _stamp(time.time()),
            "message": "0/0 nodes are available: no nodes available to schedule pods.",
        }]
        self._send("MODIFIED", pod)

    # ------------------------------------------------------------------ the client's interface

    async def request(self, method: str, path: str, *, body: Any = None, **_: Any) -> dict[str, Any]:
        await asyncio.sleep(0)  # a request is an await on the real client: other work runs meanwhile
        self.requests[method] += 1
        m = _PATH.match(path)
        if m is None:
            raise ValueError(f"the stand-in does not know {path}")
        kind, namespace, name = KINDS[m["plural"]], m["ns"], m["name"]
        body = orjson.loads(orjson.dumps(body)) if body is not None else None
        if method == "POST":
            if (kind, namespace, body["metadata"]["name"]) in self.objects:
                raise ApiError(409, "Conflict", "already exists")
            return self._answer(self.add(body))
        if method == "PATCH" and m["sub"] == "status":
            obj = self.objects[(kind, namespace, name)]
            expected = (body.get("metadata") or {}).get("resourceVersion")
            if expected is not None and expected != obj["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", "the object has been modified")
            obj["status"] = _merged(obj.get("status") or {}, body.get("status") or {})
            obj["metadata"]["resourceVersion"] = str(next(self._rv))
            self.status_writes += 1
            self._send("MODIFIED", obj)
            return self._answer(obj)
        raise ValueError(f"the stand-in does not answer {method} {path}")

    async def create(self, path: str, body: Any) -> dict[str, Any]:
        return await self.request("POST", path, body=body)

    async def patch(self, path: str, body: Any, content_type: str = "") -> dict[str, Any]:
        return await self.request("PATCH", path, body=body)


def _merged(old: Any, patch: Any) -> Any:
    """RFC 7386 merge patch."""
    if not isinstance(patch, dict):
        return patch
    out = dict(old) if isinstance(old, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _merged(out.get(key), value)
    return out


class _NoProblems:
    """The pre-flight judge's stand-in: every spec is fine (the operator asks once per distinct spec)."""

    def judge(self, spec: Any, salvage: bool = False) -> list[str]:
        return []

    def close(self) -> None:
        pass


async def run_once(n: int, rate: float, schedule_after: float, workers: int) -> dict[str, Any]:
    from mlvisor.operator.kube.controllers import Controllers, retry_delay
    from mlvisor.operator.kube.metrics import Metrics
    from mlvisor.operator.kube.queue import WorkQueue
    from mlvisor.operator.kube.store import Store
    from mlvisor.operator.kube.watches import Router
    from mlvisor.operator.plan import OperatorConfig

    metrics, store = Metrics(), Store()
    controllers = Controllers(None, OperatorConfig(), metrics, judge=_NoProblems(), store=store)  # type: ignore[arg-type]
    queue = WorkQueue(controllers.reconcile, retryable=retry_delay, workers=workers)
    router = Router(store, queue, metrics)
    api = ApiServer(router, schedule_after)
    controllers.kube = api  # type: ignore[assignment]
    controllers.applier.kube = api  # type: ignore[assignment]
    router.go_live()

    reconciles = 0
    inner = controllers.reconcile

    async def counted(key: Any, since: float | None) -> float | None:
        nonlocal reconciles
        reconciles += 1
        return await inner(key, since)

    queue._reconcile = counted
    loop = asyncio.get_running_loop()
    started_cpu, started = time.process_time(), time.perf_counter()
    for i in range(n):
        api.add(bench.training_job(f"tj-{i:05d}"))
        due = started + (i + 1) / rate
        delay = due - time.perf_counter()
        await asyncio.sleep(max(0.0, delay))
    while True:  # every pod created and scheduled-or-not, and no reconcile running or waiting
        await asyncio.sleep(0.01)
        pods = sum(1 for key in api.objects if key[0] == "Pod")
        busy = any(slot.running or slot.waiting for slot in queue._slots.values())
        if pods >= 2 * n and not busy and loop.time() - started > schedule_after:
            break
    cpu, wall = time.process_time() - started_cpu, time.perf_counter() - started
    await queue.close()
    return {
        "cpu_s": round(cpu, 3), "wall_s": round(wall, 3), "cpu_ms_per_job": round(1000 * cpu / n, 3),
        "reconciles_per_job": round(reconciles / n, 2),
        "requests_per_job": {k: round(v / n, 2) for k, v in sorted(api.requests.items())},
        "status_writes_per_job": round(api.status_writes / n, 2),
        "pods": sum(1 for key in api.objects if key[0] == "Pod"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="TrainingJobs (default 1000)")
    parser.add_argument("--rate", type=float, default=200.0, help="TrainingJobs added per second (default 200)")
    parser.add_argument("--schedule-after", type=float, default=0.005,
                        help="seconds from a pod's ADDED to the scheduler's Unschedulable (default 0.005)")
    parser.add_argument("--workers", type=int, default=64, help="reconciles at once (the operator's default 64)")
    parser.add_argument("--repeat", type=int, default=3, help="runs, each in a fresh operator state (default 3)")
    parser.add_argument("--profile", action="store_true", help="cProfile one more run: bench/results/operator-cpu-<N>.pstats.txt")
    parser.add_argument("--tag", default="", help="a name for the result file: bench/results/operator-cpu-<N>-<tag>.json")
    args = parser.parse_args()

    import gc

    import mlvisor.operator.kube.controllers  # noqa: F401  (imports outside the measured time)

    gc.freeze()
    gc.set_threshold(50_000, 20, 10)  # as `mlvisor operator` runs (kube/cli.py)
    # a first, uncounted run: the first reconciles import what the operator imports lazily
    asyncio.run(run_once(min(args.n, 200), args.rate, args.schedule_after, args.workers))
    runs = [asyncio.run(run_once(args.n, args.rate, args.schedule_after, args.workers)) for _ in range(args.repeat)]
    for run in runs:
        print(json.dumps(run))
    per_job = [r["cpu_ms_per_job"] for r in runs]
    summary = {"n": args.n, "rate": args.rate, "runs": runs, "cpu_ms_per_job_median": statistics.median(per_job),
               "cpu_ms_per_job_min": min(per_job)}
    print(f"operator CPU per TrainingJob: median {summary['cpu_ms_per_job_median']:.3f} ms, "
          f"min {summary['cpu_ms_per_job_min']:.3f} ms over {len(runs)} runs of {args.n}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / f"operator-cpu-{args.n}{'-' + args.tag if args.tag else ''}.json"
    out.write_text(json.dumps(summary, indent=2) + "\n")
    if args.profile:
        profiler = cProfile.Profile()
        profiler.enable()
        asyncio.run(run_once(args.n, args.rate, args.schedule_after, args.workers))
        profiler.disable()
        text = io.StringIO()
        stats = pstats.Stats(profiler, stream=text).strip_dirs()
        stats.sort_stats("tottime").print_stats(40)
        stats.sort_stats("cumulative").print_stats(60)
        path = RESULTS / f"operator-cpu-{args.n}{'-' + args.tag if args.tag else ''}.pstats.txt"
        path.write_text(text.getvalue())
        print(f"profile: {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
