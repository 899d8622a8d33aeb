"""Which reconciles each watch event asks for (kube/watches.py), and none before every kind is listed."""

from __future__ import annotations

from typing import Any

from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.store import Store
from mlvisor.operator.kube.watches import KINDS, Router

GROUP = "mlvisor.dev/v1alpha1"


class Queue:
    def __init__(self) -> None:
        self.triggered: list[tuple[str, str, str]] = []

    def trigger(self, key: Any, delay: float = 0.0, *, from_event: bool = True) -> None:
        self.triggered.append(key)


def job(name: str, *, version: str | None = None, phase: str | None = None, pipeline: str | None = None,
        rv: int = 1) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": str(rv)}
    if pipeline:
        meta["ownerReferences"] = [{"apiVersion": GROUP, "kind": "ModelPipeline", "name": pipeline,
                                    "uid": f"uid-{pipeline}", "controller": True}]
    status: dict[str, Any] = {}
    if phase:
        status["phase"] = phase
    if version:
        status["model"] = {"version": version}
    return {"apiVersion": GROUP, "kind": "TrainingJob", "metadata": meta, "spec": {"x": 1}, "status": status}


def server(name: str, job_name: str) -> dict[str, Any]:
    return {"apiVersion": GROUP, "kind": "ModelServer",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": "1"},
            "spec": {"model": {"trainingJobRef": {"name": job_name}}}}


def worker(name: str, job_name: str, phase: str = "Pending", note: str = "") -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "ml", "uid": f"uid-{name}", "resourceVersion": "1",
                         "annotations": {"note": note},
                         "labels": {"app.kubernetes.io/managed-by": "mlvisor"},
                         "ownerReferences": [{"apiVersion": GROUP, "kind": "TrainingJob", "name": job_name,
                                              "uid": f"uid-{job_name}", "controller": True}]},
            "spec": {"containers": [{"name": "trainer"}]}, "status": {"phase": phase}}


def router() -> tuple[Router, Queue, Store]:
    store, queue = Store(), Queue()
    return Router(store, queue, Metrics()), queue, store  # type: ignore[arg-type]


def test_nothing_is_queued_until_every_kind_is_listed_then_every_resource_once() -> None:
    r, queue, store = router()
    r("ADDED", job("a"))
    r("ADDED", server("s", "a"))
    r("ADDED", worker("a-worker-0", "a"))
    assert queue.triggered == [] and store.get("TrainingJob", "ml", "a") is not None
    assert len(store.pods("TrainingJob", "ml", "a")) == 1
    assert r.go_live() == 2
    assert sorted(queue.triggered) == [("ModelServer", "ml", "s"), ("TrainingJob", "ml", "a")]


def test_a_pod_event_queues_its_job_and_one_that_changes_nothing_read_queues_nothing() -> None:
    r, queue, _ = router()
    r.go_live()
    r("ADDED", worker("a-worker-0", "a"))
    r("MODIFIED", worker("a-worker-0", "a", note="an annotation nobody reads"))
    assert queue.triggered == [("TrainingJob", "ml", "a")]
    r("MODIFIED", worker("a-worker-0", "a", phase="Failed"))
    r("DELETED", worker("a-worker-0", "a", phase="Failed"))
    assert queue.triggered == [("TrainingJob", "ml", "a")] * 3


def test_a_new_model_version_queues_the_servers_of_that_job_and_a_child_queues_its_pipeline() -> None:
    r, queue, store = router()
    r("ADDED", server("s", "a"))
    r("ADDED", server("t", "other"))
    r.go_live()
    queue.triggered.clear()
    r("ADDED", job("a", pipeline="p"))
    assert ("ModelServer", "ml", "s") in queue.triggered  # the job appeared
    assert ("ModelPipeline", "ml", "p") in queue.triggered
    queue.triggered.clear()
    r("MODIFIED", job("a", version="v1", phase="Succeeded", pipeline="p", rv=2))
    assert sorted(queue.triggered) == [("ModelPipeline", "ml", "p"), ("ModelServer", "ml", "s"), ("TrainingJob", "ml", "a")]
    queue.triggered.clear()
    r("DELETED", job("a", version="v1", phase="Succeeded", pipeline="p", rv=3))
    assert ("ModelServer", "ml", "s") in queue.triggered and ("ModelServer", "ml", "t") not in queue.triggered
    assert store.get("TrainingJob", "ml", "a") is None


def test_a_deployment_event_queues_its_server_and_a_service_event_nothing() -> None:
    r, queue, store = router()
    r.go_live()
    owner = [{"apiVersion": GROUP, "kind": "ModelServer", "name": "s", "uid": "uid-s", "controller": True}]
    meta = {"namespace": "ml", "name": "s", "uid": "d", "ownerReferences": owner}
    r("ADDED", {"kind": "Deployment", "metadata": meta, "spec": {}, "status": {}})
    r("ADDED", {"kind": "Service", "metadata": {**meta, "uid": "v"}, "spec": {}})
    assert queue.triggered == [("ModelServer", "ml", "s")]
    assert store.get("Service", "ml", "s") is not None


def test_every_kind_the_store_keeps_is_watched() -> None:
    assert {k.kind for k in KINDS} == {"TrainingJob", "ModelServer", "ModelPipeline", "Pod", "Deployment", "Service"}
    assert all(k.labels for k in KINDS if k.kind in ("Pod", "Deployment", "Service"))


def test_a_pod_that_vanished_during_a_watch_gap_still_queues_its_job() -> None:
    # After a 410 the informer lists again and hands over what vanished as DELETED with only a name.
    r, queue, store = router()
    r.go_live()
    r("ADDED", worker("a-worker-0", "a"))
    queue.triggered.clear()
    r("DELETED", {"kind": "Pod", "metadata": {"namespace": "ml", "name": "a-worker-0", "uid": "uid-a-worker-0"}})
    assert queue.triggered == [("TrainingJob", "ml", "a")]
    assert store.pods("TrainingJob", "ml", "a") == []


def test_the_echo_of_a_resources_own_write_does_not_queue_it_again_and_anything_else_does() -> None:
    r, queue, store = router()
    r.go_live()
    own = ("TrainingJob", "ml", "a")
    pod = worker("a-worker-0", "a")
    store.wrote(pod, by=own)  # the job's reconcile created it: the answer had resourceVersion 1
    r("ADDED", pod)
    assert queue.triggered == []
    r("MODIFIED", {**worker("a-worker-0", "a", phase="Failed"), "metadata": {**pod["metadata"], "resourceVersion": "2"}})
    assert queue.triggered == [own]  # the kubelet's change, not the operator's
    queue.triggered.clear()
    status = job("a", phase="Running", rv=5)
    store.wrote(status, by=own)  # its own status write
    r("MODIFIED", status)
    assert queue.triggered == []
    # someone else's write at a newer version is news, and so is an echo the store no longer holds
    r("MODIFIED", job("a", phase="Running", version="v", rv=6))
    assert queue.triggered == [own]


def test_the_echo_of_a_pipelines_write_still_queues_the_job_it_created_and_reaches_the_pipeline_otherwise() -> None:
    r, queue, store = router()
    r.go_live()
    created = job("a", pipeline="p", rv=3)
    store.wrote(created, by=("ModelPipeline", "ml", "p"))  # the pipeline's reconcile created the job
    r("ADDED", created)
    # the job itself has never been reconciled; the pipeline's planner has no fixed-point proof
    # (watches.ECHO_FREE), so its own echoes still queue it
    assert queue.triggered == [("TrainingJob", "ml", "a"), ("ModelPipeline", "ml", "p")]
    queue.triggered.clear()
    own_status = job("a", phase="Running", version="v", pipeline="p", rv=4)
    store.wrote(own_status, by=("TrainingJob", "ml", "a"))
    r("MODIFIED", own_status)
    assert queue.triggered == [("ModelPipeline", "ml", "p")]  # the parent hears of its child's new status


def test_a_servers_own_writes_still_queue_it() -> None:
    r, queue, store = router()
    r.go_live()
    owner = [{"apiVersion": GROUP, "kind": "ModelServer", "name": "s", "uid": "uid-s", "controller": True}]
    created = {"kind": "Deployment", "metadata": {"namespace": "ml", "name": "s", "uid": "d", "resourceVersion": "7",
                                                   "ownerReferences": owner}, "spec": {}, "status": {}}
    store.wrote(created, by=("ModelServer", "ml", "s"))
    r("ADDED", created)
    assert queue.triggered == [("ModelServer", "ml", "s")]
    queue.triggered.clear()
    r("MODIFIED", {**created, "metadata": {**created["metadata"], "resourceVersion": "8"}, "status": {"readyReplicas": 1}})
    assert queue.triggered == [("ModelServer", "ml", "s")]  # its controller's change, too
