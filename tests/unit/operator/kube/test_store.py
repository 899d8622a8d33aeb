"""The reconcilers' store: slim copies that keep what the planners read, and the operator's own
writes seen before their watch events (no duplicate create, no stale status, no ghost)."""

from __future__ import annotations

import copy

import orjson
import pytest

from helpers.store import store_with
from mlvisor.operator.kube.observe import observe_deployment, observe_pod
from mlvisor.operator.kube.progress import _progress_url
from mlvisor.operator.kube.store import slim_object, slim_pod


def _job(rv: int = 1, phase: str | None = None, owner_uid: str | None = None) -> dict:
    meta = {"name": "iris", "namespace": "ns", "uid": "j1", "resourceVersion": str(rv), "generation": 1,
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
            "annotations": {"kubectl.kubernetes.io/last-applied-configuration": "{...}", "mlvisor.dev/x": "1"}}
    if owner_uid:
        meta["ownerReferences"] = [{"kind": "ModelPipeline", "name": "p", "uid": owner_uid, "controller": True}]
    body = {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": meta, "spec": {"workers": 1}}
    if phase:
        body["status"] = {"phase": phase}
    return body


def _pod(name: str = "iris-worker-0-1", rv: int = 1, phase: str = "Pending", deleting: bool = False,
         state: dict | None = None) -> dict:
    meta = {
        "name": name, "namespace": "ns", "uid": f"uid-{name}", "resourceVersion": str(rv),
        "creationTimestamp": "2026-12-04T00:00:00Z",
        "labels": {"app.kubernetes.io/managed-by": "mlvisor", "mlvisor.dev/worker-index": "0", "mlvisor.dev/attempt": "1"},
        "annotations": {"mlvisor.dev/model-uri": "pvc://m/a/1/"},
        "ownerReferences": [{"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "name": "iris", "uid": "j1", "controller": True}],
        "managedFields": [{"manager": "kubelet"}],
    }
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    return {
        "apiVersion": "v1", "kind": "Pod", "metadata": meta,
        "spec": {"containers": [{"name": "trainer", "image": "x", "env": [{"name": "A", "value": "b" * 500}],
                                 "ports": [{"name": "progress", "containerPort": 8081}]}],
                 "volumes": [{"name": "v", "emptyDir": {}}]},
        "status": {
            "phase": phase, "podIP": "10.0.0.7", "reason": "Evicted", "message": "The node was low on memory.",
            "startTime": "2026-12-04T00:00:02Z",
            "conditions": [{"type": "Ready", "status": "True", "lastTransitionTime": "2026-12-04T00:00:03Z"},
                           {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1",
                            "lastTransitionTime": "2026-12-04T00:00:01Z"}],
            "containerStatuses": [{
                "name": "trainer", "restartCount": 2, "image": "x", "imageID": "sha256:...",
                "state": state or {"terminated": {"exitCode": 137, "reason": "OOMKilled", "message": "fitting"}},
                "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}},
            }],
        },
    }


@pytest.mark.parametrize("state", [None, {"waiting": {"reason": "ImagePullBackOff", "message": "no such image"}}])
def test_a_slim_pod_is_observed_exactly_as_the_whole_pod(state: dict | None) -> None:
    for phase in ("Pending", "Running", "Failed"):
        pod = _pod(phase=phase, state=state)
        slim = slim_pod(pod)
        assert observe_pod(slim) == observe_pod(pod)
        if phase == "Pending":  # the wait and its start are what the planners see
            assert observe_pod(slim).waiting is not None and observe_pod(slim).waiting_since is not None
        assert _progress_url(slim) == _progress_url(pod)
        assert "managedFields" not in slim["metadata"] and "env" not in str(slim) and "volumes" not in str(slim)
    assert _progress_url(slim_pod(_pod(phase="Running"))) == "http://10.0.0.7:8081/progress"


def test_a_slim_object_drops_managed_fields_and_last_applied_but_nothing_a_planner_reads() -> None:
    body = _job(phase="Running")
    slim = slim_object(body)
    assert "managedFields" not in slim["metadata"]
    assert slim["metadata"]["annotations"] == {"mlvisor.dev/x": "1"}
    assert slim["spec"] == body["spec"] and slim["status"] == body["status"]
    deployment = {"kind": "Deployment", "metadata": {"name": "d", "namespace": "ns"},
                  "spec": {"template": {"metadata": {"annotations": {"mlvisor.dev/model-uri": "u"}}}},
                  "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 2}}
    assert observe_deployment(slim_object(deployment)) == observe_deployment(deployment)
    store, _feed = store_with(body)
    body["spec"]["workers"] = 9  # the store keeps its own packed copy, not the body it was fed
    assert store.get("TrainingJob", "ns", "iris")["spec"]["workers"] == 1  # type: ignore[index]


def test_a_created_pod_is_seen_before_its_watch_event_and_the_watch_takes_over() -> None:
    clock = [0.0]
    store, indexes = store_with(_job(), clock=lambda: clock[0])
    assert store.pods("TrainingJob", "ns", "iris") == []
    store.wrote(_pod(rv=5))  # the create's answer
    assert [p["metadata"]["name"] for p in store.pods("TrainingJob", "ns", "iris")] == ["iris-worker-0-1"]
    assert store.pending_writes() == 1
    indexes.put(_pod(rv=6, phase="Running"))  # the watch catches up (and goes beyond)
    (pod,) = store.pods("TrainingJob", "ns", "iris")
    assert pod["status"]["phase"] == "Running" and store.pending_writes() == 0


def test_a_deleted_pod_is_going_away_until_the_watch_drops_it() -> None:
    store, indexes = store_with(_job(), _pod(rv=3, phase="Failed"))
    store.deleted(_pod(rv=4, phase="Failed"))
    (pod,) = store.pods("TrainingJob", "ns", "iris")
    assert observe_pod(pod).deleting  # the DELETE answer carried no deletionTimestamp: marked anyway
    indexes.drop(_pod())  # the watch's DELETED
    assert store.pods("TrainingJob", "ns", "iris") == [] and store.pending_writes() == 0


def test_a_status_write_wins_until_the_watch_has_it_and_a_newer_change_wins_over_it() -> None:
    store, indexes = store_with(_job(rv=10))
    store.wrote(_job(rv=11, phase="Running"))
    got = store.get("TrainingJob", "ns", "iris")
    assert got["status"]["phase"] == "Running" and got["metadata"]["resourceVersion"] == "11"
    indexes.put(_job(rv=12, phase="Succeeded"))  # someone else's later write
    assert store.get("TrainingJob", "ns", "iris")["status"]["phase"] == "Succeeded"
    assert store.pending_writes() == 0


def test_an_own_write_is_trusted_for_ttl_seconds_at_most() -> None:
    clock = [0.0]
    store, _ = store_with(ttl=30.0, clock=lambda: clock[0])
    store.wrote(_pod(rv=5))
    clock[0] = 29.0
    assert len(store.pods("TrainingJob", "ns", "iris")) == 1
    clock[0] = 31.0  # never seen by the watch (deleted by someone else meanwhile): not a ghost for ever
    assert store.pods("TrainingJob", "ns", "iris") == [] and store.pending_writes() == 0


def test_a_deletion_seen_by_the_watch_forgets_the_own_write() -> None:
    store, _ = store_with()
    store.wrote(_pod(rv=5))
    store.forget(_pod(rv=7))
    assert store.pods("TrainingJob", "ns", "iris") == []


def test_a_pipelines_children_are_found_by_owner_uid_including_one_just_created() -> None:
    first = _job(owner_uid="p1")
    second = copy.deepcopy(_job(owner_uid="p1"))
    second["metadata"]["name"] = "iris-2"
    store, _ = store_with(first, _job(owner_uid="other") | {"metadata": {**_job()["metadata"], "name": "x"}})
    assert [j["metadata"]["name"] for j in store.owned("TrainingJob", "ns", "p1")] == ["iris"]
    store.wrote(second)
    assert [j["metadata"]["name"] for j in store.owned("TrainingJob", "ns", "p1")] == ["iris", "iris-2"]


def test_non_numeric_resource_versions_are_caught_up_only_when_equal() -> None:
    store, indexes = store_with()
    job = _job()
    job["metadata"]["resourceVersion"] = "abc"
    store.wrote(job)
    other = copy.deepcopy(job)
    other["metadata"]["resourceVersion"] = "abd"
    indexes.put(other)
    assert store.get("TrainingJob", "ns", "iris")["metadata"]["resourceVersion"] == "abc"
    indexes.put(job)
    assert store.get("TrainingJob", "ns", "iris")["metadata"]["resourceVersion"] == "abc"
    assert store.pending_writes() == 0


def test_a_pod_belongs_to_its_training_job_or_to_the_server_its_label_names() -> None:
    from mlvisor.operator.kube.store import pod_owner

    assert pod_owner(_pod()) == ("TrainingJob", "iris")
    server = {"kind": "Pod", "metadata": {"name": "s-1", "labels": {
        "app.kubernetes.io/component": "server", "app.kubernetes.io/instance": "iris"},
        "ownerReferences": [{"kind": "ReplicaSet", "name": "iris-5d", "apiVersion": "apps/v1", "controller": True}]}}
    assert pod_owner(server) == ("ModelServer", "iris")
    foreign = copy.deepcopy(_pod())
    foreign["metadata"]["ownerReferences"][0]["apiVersion"] = "example.com/v1"  # someone else's TrainingJob kind
    assert pod_owner(foreign) is None


def test_an_own_write_is_let_go_as_soon_as_the_watch_shows_it_not_at_the_next_read() -> None:
    store, indexes = store_with(_job(rv=10))
    store.wrote(_job(rv=11, phase="Running"))
    store.wrote(_pod(rv=5))
    assert store.pending_writes() == 2
    indexes.put(_job(rv=11, phase="Running"))
    indexes.put(_pod(rv=5))
    assert store.pending_writes() == 0  # no read in between


def test_what_a_reader_gets_is_its_own_and_the_kept_copy_is_compact() -> None:
    store, _feed = store_with(_job(rv=3, phase="Running"), _pod(rv=4))
    job = store.get("TrainingJob", "ns", "iris")
    assert job is not None
    job["status"]["phase"] = "Failed"  # a planner's scratch work must not reach the store
    store.pods("TrainingJob", "ns", "iris")[0]["status"]["phase"] = "Failed"
    assert store.get("TrainingJob", "ns", "iris")["status"]["phase"] == "Running"  # type: ignore[index]
    assert store.pods("TrainingJob", "ns", "iris")[0]["status"]["phase"] == "Pending"
    kept = next(iter(store._indexes["Pod"][("TrainingJob", "ns", "iris")].values()))
    assert isinstance(kept, bytes) and len(kept) == len(orjson.dumps(slim_pod(_pod(rv=4))))
