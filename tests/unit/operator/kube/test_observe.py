"""Observing pods, Deployments and a pipeline's children: what the planners are told."""

from __future__ import annotations

import pytest

from mlvisor import api
from mlvisor.operator.kube.observe import observe_deployment, observe_pod
from mlvisor.operator.supervision import MessageSource


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


def test_a_container_reports_its_termination_message_a_reason_or_a_trainers_summary():
    failed = {"metadata": {"name": "j-worker-0-1"}, "status": {"phase": "Failed", "containerStatuses": [
        {"restartCount": 0, "state": {"terminated": {"exitCode": 2, "reason": "Error",
                                                     "message": "invalid spec: spec.estimator.params.n_estimator is not a parameter"}}}]}}
    assert observe_pod(failed).message == "invalid spec: spec.estimator.params.n_estimator is not a parameter"
    assert observe_pod(failed).message_source is MessageSource.PROCESS
    ok = {"metadata": {"name": "j-worker-0-1"}, "status": {"phase": "Succeeded", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 0, "reason": "Completed", "message": '{"version": "a"}'}}}]}}
    assert observe_pod(ok).message == '{"version": "a"}'  # the planner reads it as a TerminationSummary
    restarted = {"metadata": {"name": "s-1"}, "status": {"phase": "Running", "containerStatuses": [
        {"restartCount": 1, "state": {"running": {}},
         "lastState": {"terminated": {"exitCode": 4, "reason": "Error", "message": "cannot load the model: y"}}}]}}
    assert observe_pod(restarted).message == "cannot load the model: y"
    assert observe_pod(restarted).message_source is MessageSource.PROCESS
    evicted = {"metadata": {"name": "s-2"}, "status": {"phase": "Failed", "reason": "Evicted",
                                                       "message": "The node was low on resource: memory.",
                                                       "containerStatuses": [{"state": {"terminated": {
                                                           "exitCode": 143, "reason": "Error", "message": "INFO: bye"}}}]}}
    seen = observe_pod(evicted)
    assert (seen.message, seen.message_source) == ("The node was low on resource: memory.", MessageSource.POD)


def test_a_log_tail_the_kubelet_fell_back_to_is_marked_as_such():
    """FallbackToLogsOnError: a SIGKILLed process left no message, the kubelet put its log tail there."""
    tail = 'INFO: fitting\n{"event": "metrics", "msg": "held-out accuracy 0.97"}'
    killed = _pod("Failed", status={"containerStatuses": [{"state": {"terminated": {
        "exitCode": 137, "reason": "Error", "message": tail}}}]})
    seen = observe_pod(killed)
    assert (seen.message, seen.message_source) == (tail, MessageSource.LOGS)
    silent = _pod("Failed", status={"containerStatuses": [{"state": {"terminated": {"exitCode": 137, "reason": "Error"}}}]})
    assert (observe_pod(silent).message, observe_pod(silent).message_source) == (None, None)


@pytest.mark.parametrize("status, waiting", [
    ({"containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff",
                                                   "message": 'Back-off pulling image "mlvisor:typo"'}}}]},
     'ImagePullBackOff: Back-off pulling image "mlvisor:typo"'),
    ({"containerStatuses": [{"state": {"waiting": {"reason": "CreateContainerConfigError",
                                                   "message": 'secret "creds" not found'}}}]},
     'CreateContainerConfigError: secret "creds" not found'),
    ({"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "message": "0/3 nodes are available: 3 Insufficient memory."}]},
     "Unschedulable: 0/3 nodes are available: 3 Insufficient memory."),
    ({"conditions": [{"type": "Initialized", "status": "True"}, {"type": "PodReadyToStartContainers", "status": "True"},
                     {"type": "PodScheduled", "status": "True"}],
      "containerStatuses": [{"state": {"waiting": {"reason": "ContainerCreating"}}}]}, None),
    ({"containerStatuses": [{"state": {"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 10s"}}}]}, None),
])
def test_a_pod_that_cannot_start_says_why_and_one_on_its_way_says_nothing(status, waiting):
    assert observe_pod(_pod("Pending", status=status)).waiting == waiting


@pytest.mark.parametrize("meta, status, since", [
    # The scheduler's mark: its condition's lastTransitionTime.
    ({"creationTimestamp": "2026-12-06T09:59:58Z"},
     {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                      "lastTransitionTime": "2026-12-06T10:00:00Z"}]}, 1796551200.0),
    # A container that waits: since the kubelet took the pod, else since its creation.
    ({"creationTimestamp": "2026-12-06T09:59:58Z"},
     {"startTime": "2026-12-06T10:00:00.250000+00:00",
      "containerStatuses": [{"state": {"waiting": {"reason": "ImagePullBackOff"}}}]}, 1796551200.25),
    ({"creationTimestamp": "2026-12-06T10:00:00Z"},
     {"containerStatuses": [{"state": {"waiting": {"reason": "ErrImagePull"}}}]}, 1796551200.0),
    # Not known: said at once.
    ({}, {"conditions": [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                          "lastTransitionTime": "yesterday"}]}, None),
])
def test_a_pod_says_since_when_it_waits(meta, status, since):
    seen = observe_pod(_pod("Pending", status=status, **meta))
    assert seen.waiting is not None and seen.waiting_since == since


def test_a_pipeline_child_reads_the_same_from_the_cluster_and_from_the_local_runtime():
    # The kube shell observes a child from its JSON body, the local runtime from its parsed
    # resource and status: both go through planners.pipeline.observed_child.
    from mlvisor.operator.kube.observe import observe_child
    from mlvisor.operator.planners.pipeline import observed_child

    wire = {
        "apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "iris-12", "namespace": "default", "uid": "u12", "labels": {"mlvisor.dev/run": "12"},
                     "annotations": {"mlvisor.dev/training-spec-hash": "f00"}},
        "spec": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.linear_model.LogisticRegression"}},
        "status": {"phase": "Succeeded"},
    }
    job = api.TrainingJob.model_validate(wire)
    local = observed_child("TrainingJob", job.metadata.model_dump(mode="json", by_alias=True, exclude_none=True),
                           job.status)
    assert local == observe_child(wire, api.TrainingJobStatus)
    assert (local.run, local.spec_hash, local.status.phase) == (12, "f00", api.TrainingPhase.SUCCEEDED)
    for label in ("0", "x", ""):  # no run number: not a run of this pipeline's schedule
        meta = {"name": "j", "labels": {"mlvisor.dev/run": label}}
        assert observed_child("TrainingJob", meta, None).run is None
