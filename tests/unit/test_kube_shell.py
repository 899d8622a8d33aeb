"""The pure parts of the Kubernetes shell: observing pods and Deployments, patch arithmetic, the work queue."""

from __future__ import annotations

import asyncio
import json

import pytest

from mlvisor.operator import api
from mlvisor.operator.kube.adapter import PlanApplier, is_subset, merge_patch
from mlvisor.operator.kube.client import ApiError
from mlvisor.operator.kube.observe import observe_deployment, observe_pod, termination_summary
from mlvisor.operator.kube.queue import WorkQueue
from mlvisor.operator.reconcile.plan import CreatePod, Plan, RecordEvent


def _pod(phase="Running", labels=None, status=None, **meta):
    return {"metadata": {"name": "iris-worker-1-2", "labels": labels or {}, **meta},
            "status": {"phase": phase, **(status or {})}}


def test_a_failed_worker_reports_exit_code_reason_index_and_attempt():
    pod = _pod("Failed", {"mlvisor.dev/worker-index": "1", "mlvisor.dev/attempt": "2"},
               {"containerStatuses": [{"restartCount": 0, "state": {"terminated": {"exitCode": 137, "reason": "OOMKilled"}}}]})
    seen = observe_pod(pod)
    assert (seen.index, seen.attempt, seen.phase, seen.exit_code, seen.reason) == (1, 2, "Failed", 137, "OOMKilled")


def test_an_eviction_is_reported_by_its_pod_reason_not_the_container_error():
    pod = _pod("Failed", status={"reason": "Evicted", "conditions": [{"type": "DisruptionTarget", "status": "True"}],
                                 "containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]})
    seen = observe_pod(pod)
    assert seen.reason == "Evicted" and "DisruptionTarget" in seen.conditions and seen.exit_code == 137


def test_a_restarted_container_reports_its_last_termination_and_count():
    pod = _pod(status={"conditions": [{"type": "Ready", "status": "False"}], "containerStatuses": [
        {"restartCount": 3, "state": {"waiting": {"reason": "CrashLoopBackOff"}},
         "lastState": {"terminated": {"exitCode": 1, "reason": "Error"}}}]})
    seen = observe_pod(pod)
    assert (seen.restart_count, seen.exit_code, seen.reason, seen.ready) == (3, 1, "Error", False)


def test_select_pods_pending_pods_and_deleting_pods():
    assert observe_pod(_pod(labels={"mlvisor.dev/worker-index": "select"})).index == -1
    fresh = observe_pod({"metadata": {"name": "p"}})
    assert (fresh.phase, fresh.exit_code, fresh.reason, fresh.attempt) == ("Pending", None, None, 1)
    assert observe_pod(_pod(deletionTimestamp="2026-01-01T00:00:00Z")).deleting
    assert observe_pod(_pod("Weird")).phase == "Unknown"


def test_a_deployment_reports_counts_and_the_model_it_rolls_out():
    seen = observe_deployment({"metadata": {"name": "iris"}, "spec": {"template": {"metadata": {"annotations": {
        "mlvisor.dev/model-uri": "pvc://m/v2/"}}}}, "status": {"replicas": 2, "readyReplicas": 1, "updatedReplicas": 1}})
    assert (seen.replicas, seen.ready_replicas, seen.updated_replicas, seen.model_uri) == (2, 1, 1, "pvc://m/v2/")
    assert observe_deployment({"metadata": {"name": "x"}}).ready_replicas == 0


def test_termination_summary_reads_the_newest_json_message_of_a_succeeded_pod():
    def done(message, at, phase="Succeeded"):
        return {"status": {"phase": phase, "containerStatuses": [{"state": {"terminated": {"message": message, "finishedAt": at}}}]}}
    pods = [done(json.dumps({"version": "a"}), "2026-01-01T00:00:01Z"), done(json.dumps({"version": "b"}), "2026-01-01T00:00:02Z"),
            done("not json", "2026-01-01T00:00:03Z"), done(json.dumps({"version": "c"}), "2026-01-01T00:00:04Z", "Failed")]
    assert termination_summary(pods) == {"version": "b"}
    assert termination_summary([]) is None


def test_merge_patch_sets_changes_and_nulls_what_went_away():
    old = {"phase": "Restarting", "supervision": {"nextRestartTime": "t", "totalRestarts": 1}, "conditions": [1]}
    new = {"phase": "Running", "supervision": {"totalRestarts": 1}, "conditions": [1, 2]}
    assert merge_patch(old, new) == {"phase": "Running", "supervision": {"nextRestartTime": None}, "conditions": [1, 2]}
    assert merge_patch(new, new) is None


def test_is_subset_ignores_server_defaults_but_not_changes():
    desired = {"spec": {"replicas": 1, "template": {"spec": {"containers": [{"name": "s", "image": "a"}]}}}}
    live = {"spec": {"replicas": 1, "revisionHistoryLimit": 10, "template": {"spec": {"containers": [
        {"name": "s", "image": "a", "terminationMessagePath": "/dev/termination-log"}]}}}, "status": {}}
    assert is_subset(desired, live)
    live["spec"]["template"]["spec"]["containers"][0]["image"] = "b"
    assert not is_subset(desired, live)


def test_the_queue_serialises_coalesces_and_requeues():
    calls: list[tuple[str, bool]] = []
    running = 0
    overlap = False

    async def reconcile(key, since):
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        calls.append((key, since is not None))
        await asyncio.sleep(0.02)
        running -= 1
        return 0.05 if len([c for c in calls if c[0] == key]) == 1 else None

    async def main():
        queue = WorkQueue(reconcile)
        for _ in range(5):
            queue.trigger("a")
        await asyncio.sleep(0.005)
        for _ in range(5):
            queue.trigger("a")  # while running: one more run afterwards, not five
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(main())
    assert not overlap
    # ten triggers -> two runs; the first run's requeue (0.05 s) is superseded by the earlier re-run
    assert [c[0] for c in calls] == ["a", "a"]
    assert calls[0][1] is True  # the first run serves an event


def test_a_failing_reconcile_is_retried_with_backoff():
    attempts = 0

    async def reconcile(key, since):
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("API unreachable")
        return None

    async def main():
        queue = WorkQueue(reconcile, retry_delays=(0.01, 0.02))
        queue.trigger("a")
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(main())
    assert attempts == 3


class _RecordingKube:
    """A stand-in API client: records writes, answers the status patch with a given error."""

    def __init__(self, status_error: int | None) -> None:
        self.status_error = status_error
        self.writes: list[tuple[str, str]] = []

    async def create(self, path, body):
        self.writes.append(("create", path))
        return dict(body)

    async def patch(self, path, body, content_type=None):
        if path.endswith("/status") and self.status_error:
            raise ApiError(self.status_error, "Conflict")
        self.writes.append(("patch", path))
        return dict(body)

    async def delete(self, path, body=None):
        self.writes.append(("delete", path))
        return {}


def _job_body():
    return {
        "apiVersion": "mlvisor.dev/v1alpha1",
        "kind": "TrainingJob",
        "metadata": {"name": "iris", "namespace": "default", "uid": "u1", "resourceVersion": "7"},
        "spec": {},
        "status": {},
    }


@pytest.mark.parametrize("status_error", [None, 409])
async def test_events_are_posted_after_the_status_so_a_conflict_does_not_post_them_twice(status_error):
    kube = _RecordingKube(status_error)
    plan = Plan(
        actions=(
            RecordEvent("Normal", "Created", "created 1 worker"),
            CreatePod({"metadata": {"name": "iris-worker-0-1"}}),
        ),
        status=api.TrainingJobStatus(phase=api.TrainingPhase.RUNNING),
    )
    adapter = PlanApplier(kube)
    if status_error:
        with pytest.raises(ApiError):
            await adapter.apply(_job_body(), plan)
        assert [w for w, _ in kube.writes] == ["create"]  # the pod, and no Event
    else:
        await adapter.apply(_job_body(), plan)
        kinds = [(w, path.rsplit("/", 1)[-1]) for w, path in kube.writes]
        assert kinds == [("create", "pods"), ("patch", "status"), ("create", "events")]


# ------------------------------------------------------------------ a pipeline's children


def test_a_pipeline_child_is_observed_with_its_run_and_status():
    from mlvisor.operator.kube.observe import observe_child

    job = {
        "kind": "TrainingJob",
        "metadata": {"name": "iris-3", "uid": "u3", "labels": {"mlvisor.dev/run": "3"},
                     "annotations": {"mlvisor.dev/training-spec-hash": "abc"}},
        "status": {"phase": "Failed", "conditions": [{"type": "Failed", "status": "True", "reason": "FailurePolicy",
                                                      "lastTransitionTime": "2026-01-01T00:00:00Z"}]},
    }
    seen = observe_child(job, api.TrainingJobStatus)
    assert (seen.kind, seen.name, seen.uid, seen.run, seen.spec_hash) == ("TrainingJob", "iris-3", "u3", 3, "abc")
    assert seen.status.phase == api.TrainingPhase.FAILED and not seen.deleting
    unreadable = observe_child({**job, "status": {"phase": "Exploded"}}, api.TrainingJobStatus)
    assert unreadable.status is None, "a status of another version reads as not reported yet"
    server = observe_child({"kind": "ModelServer", "metadata": {"name": "iris", "deletionTimestamp": "x"}}, api.ModelServerStatus)
    assert server.run is None and server.status is None and server.deleting


class _ChildKube(_RecordingKube):
    def __init__(self, live):
        super().__init__(None)
        self.live = live

    async def get(self, path):
        if self.live is None:
            raise ApiError(404, "NotFound")
        return self.live

    async def delete(self, path, body=None):
        if self.live is None:
            raise ApiError(404, "NotFound")
        return await super().delete(path, body)


def _pipeline_body():
    return {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "ModelPipeline",
            "metadata": {"name": "iris", "namespace": "default", "uid": "p1", "resourceVersion": "1"}, "spec": {}}


def _child(owner_uid=None, replicas=1):
    meta = {"name": "iris", "namespace": "default"}
    if owner_uid:
        meta["ownerReferences"] = [{"kind": "ModelPipeline", "name": "iris", "uid": owner_uid, "controller": True}]
    return {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "ModelServer", "metadata": meta, "spec": {"replicas": replicas}}


async def test_a_pipeline_creates_patches_and_deletes_only_its_own_children():
    from mlvisor.operator.reconcile.plan import ApplyResource, DeleteResource
    from mlvisor.operator.kube.adapter import Applied

    desired = _child("p1", replicas=2)
    kube = _ChildKube(None)
    await PlanApplier(kube).apply_action(_pipeline_body(), ApplyResource(desired), Applied())
    assert kube.writes == [("create", "/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers")]

    kube = _ChildKube(_child("p1", replicas=1))
    await PlanApplier(kube).apply_action(_pipeline_body(), ApplyResource(desired), Applied())
    assert kube.writes == [("patch", "/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers/iris")]

    for foreign in (_child(None), _child("someone-else")):  # a user's ModelServer by that name is never taken over
        kube = _ChildKube(foreign)
        with pytest.raises(ApiError) as e:
            await PlanApplier(kube).apply_action(_pipeline_body(), ApplyResource(desired), Applied())
        assert e.value.status == 409 and kube.writes == []

    kube = _ChildKube(None)  # already gone: done
    await PlanApplier(kube).apply_action(_pipeline_body(), DeleteResource("ModelServer", "iris", "restart"), Applied())
    kube = _ChildKube(_child("p1"))
    await PlanApplier(kube).apply_action(_pipeline_body(), DeleteResource("TrainingJob", "iris-1", "trimmed"), Applied())
    assert kube.writes == [("delete", "/apis/mlvisor.dev/v1alpha1/namespaces/default/trainingjobs/iris-1")]
def test_a_failed_container_reports_its_termination_message_but_a_success_summary_is_not_a_reason():
    failed = {"metadata": {"name": "j-worker-0-1"}, "status": {"phase": "Failed", "containerStatuses": [
        {"restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error",
                                                     "message": "invalid spec: spec.estimator.params.n_estimator is not a parameter"}}}]}}
    assert observe_pod(failed).message == "invalid spec: spec.estimator.params.n_estimator is not a parameter"
    ok = {"metadata": {"name": "j-worker-0-1"}, "status": {"phase": "Succeeded", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": '{"version": "a"}'}}}]}}
    assert observe_pod(ok).message is None
    restarted = {"metadata": {"name": "s-1"}, "status": {"phase": "Running", "containerStatuses": [
        {"restartCount": 1, "state": {"running": {}},
         "lastState": {"terminated": {"exitCode": 4, "reason": "Error", "message": "model x cannot be loaded: y"}}}]}}
    assert observe_pod(restarted).message == "model x cannot be loaded: y"
    evicted = {"metadata": {"name": "s-2"}, "status": {"phase": "Failed", "reason": "Evicted",
                                                       "message": "The node was low on resource: memory."}}
    assert observe_pod(evicted).message == "The node was low on resource: memory."
