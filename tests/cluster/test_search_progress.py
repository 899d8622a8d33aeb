"""A search's progress through the real operator and a real API server, the test playing the kubelet.

The node-less plane of the fault tier (``bare``): the operator runs as a process, and the test
gives a worker pod an IP on the loopback network (127.x.y.z, so nothing else on the machine is
on its port) where a real progress endpoint (the trainer's ``ProgressTracker``) answers
``GET /progress`` on the port the pod declares. What is checked is what a user sees:
``kubectl get tj`` (the PROGRESS printer column) and status.progress moving while the workers
run, no status write while nothing new is reported, the workers' final reports taken from their
termination messages, and ``kubectl wait`` working as before.
"""

from __future__ import annotations

import io
import os
import random
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cluster.bare import summary
from emulator.conftest import Operator
from emulator.world import World, eventually, stays
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.progress import ProgressTracker
from mlvisor.trainer.search import TrialResult

pytestmark = [pytest.mark.cluster]

TJ = "TrainingJob"
SPEC: dict[str, Any] = {
    "dataset": {"builtin": "iris"},
    "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"},
    "search": {"method": "Random", "nTrials": 6, "cv": 3,
               "distributions": {"max_depth": {"randint": {"low": 1, "high": 8}}}},
    "workers": 2,
}


def kubectl(kubeconfig: Path, *args: str) -> str:
    done = subprocess.run([shutil.which("kubectl") or "kubectl", *args], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ, KUBECONFIG=str(kubeconfig)))
    assert done.returncode == 0, done.stderr
    return done.stdout


def progress_column(kubeconfig: Path, name: str) -> str:
    header, row = kubectl(kubeconfig, "-n", "faults", "get", "tj", name).splitlines()[:2]
    start = header.index("PROGRESS")  # by position: an empty cell is blank, not a token
    end = header.index(header[start:].split()[1], start + 1)
    return row[start:end].strip()


def bind(world: World, pod: str) -> None:
    """Bind the pod to a node, as the scheduler would if the plane had one: then the scheduler
    stops marking it Unschedulable (a pod status change the job would rightly report)."""
    world.request("POST", f"/api/v1/namespaces/{world.ns}/pods/{pod}/binding",
                  {"apiVersion": "v1", "kind": "Binding", "metadata": {"name": pod},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": "test-node"}}, "application/json")


def result(trial: int, score: float, worker: int) -> TrialResult:
    return TrialResult(trial, {"max_depth": trial + 1}, score, [score] * 3, 0.5, worker=worker)


def test_kubectl_get_shows_a_search_progress_polled_from_its_running_workers(bare: Any, tmp_path: Path) -> None:
    plane, world = bare
    world: World
    name = f"progress-{random.randrange(16**6):06x}"
    op = Operator(plane.kubeconfig, tmp_path)
    op.start()
    ip = f"127.{random.randrange(1, 255)}.{random.randrange(1, 255)}.{random.randrange(2, 255)}"
    tracker = ProgressTracker(EventLog(stream=io.StringIO()), total=3, worker=0, scoring="accuracy")
    try:
        world.create(TJ, name, SPEC)
        eventually(lambda: {f"{name}-worker-0-1", f"{name}-worker-1-1"} <= set(world.pods(name)), 60,
                   what="both worker pods created")
        for i in range(2):
            bind(world, f"{name}-worker-{i}-1")
        pod = world.pod(f"{name}-worker-0-1")
        (port,) = [p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "progress"]
        tracker.serve(ip, port)
        assert tracker.port == port, f"{ip}:{port} is taken"
        world.run_pod(f"{name}-worker-0-1")
        world.set_pod_status(f"{name}-worker-0-1", {"podIP": ip, "podIPs": [{"ip": ip}]})
        world.run_pod(f"{name}-worker-1-1")  # no IP yet: nothing to ask, nothing reported

        tracker.add(result(4, 0.91, 0))
        tracker.add(result(2, 0.94, 0))
        eventually(lambda: progress_column(plane.kubeconfig, name) == "2/6", 60, what="PROGRESS 2/6 in kubectl get tj")
        progress = world.status(TJ, name)["progress"]
        assert (progress["bestScore"], progress["bestTrial"], progress["bestParams"]) == (0.94, 2, {"max_depth": 3})
        assert [t["trial"] for t in progress["topTrials"]] == [2, 4]

        # nothing new to report: polled every few seconds, and the job is not written to
        version = world.get(TJ, name)["metadata"]["resourceVersion"]
        stays(lambda: world.get(TJ, name)["metadata"]["resourceVersion"] == version, 12,
              "a status write although no worker reported anything new")

        tracker.add(result(0, 0.97, 0))
        eventually(lambda: progress_column(plane.kubeconfig, name) == "3/6", 60, what="PROGRESS 3/6")
        assert world.status(TJ, name)["progress"]["bestTrial"] == 0

        # the workers finish; what each said last is its termination message
        world.exit_pod(f"{name}-worker-0-1", 0, message=tracker.report(finished=True).to_message())
        other = ProgressTracker(EventLog(stream=io.StringIO()), total=3, worker=1, scoring="accuracy")
        for trial, score in ((1, 0.5), (3, 0.99), (5, 0.6)):
            other.add(result(trial, score, 1))
        world.exit_pod(f"{name}-worker-1-1", 0, message=other.report(finished=True).to_message())
        eventually(lambda: f"{name}-select-1" in world.pods(name), 60, what="the select step started")
        # The select pod is created before the status that reports the workers' final words is
        # written (one reconcile, two API calls): wait for the status too.
        eventually(lambda: world.status(TJ, name)["progress"]["summary"] == "6/6", 60,
                   what="progress 6/6 from the workers' termination messages")
        progress = world.status(TJ, name)["progress"]
        assert (progress["summary"], progress["etaSeconds"], progress["bestTrial"]) == ("6/6", 0, 3)
        assert [w["trialsDone"] for w in world.status(TJ, name)["workers"]] == [3, 3]
        version = world.status(TJ, name)["version"]
        bind(world, f"{name}-select-1")
        world.run_pod(f"{name}-select-1")
        world.exit_pod(f"{name}-select-1", 0, message=summary(version))
        kubectl(plane.kubeconfig, "-n", "faults", "wait", "--for=condition=Succeeded", "--timeout=60s", f"tj/{name}")
        assert progress_column(plane.kubeconfig, name) == "6/6"
    finally:
        tracker.close()
        op.stop()
    world.delete(TJ, name)
