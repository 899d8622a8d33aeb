"""Watch events that change nothing a reconcile reads are dropped; every other one is queued."""

from __future__ import annotations

import copy
from typing import Any

import pytest

from mlvisor.operator.kube.predicates import Changes, pod_projection, resource_projection

JOB: dict[str, Any] = {
    "apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob",
    "metadata": {"name": "j", "namespace": "default", "uid": "u1", "generation": 1, "resourceVersion": "10",
                 "labels": {"team": "a"}, "annotations": {"mlvisor.dev/training-spec-hash": "abc"}},
    "spec": {"dataset": {"builtin": "iris"}},
    "status": {"phase": "Running", "workers": [{"index": 0, "pod": "j-worker-0-1"}]},
}
POD: dict[str, Any] = {
    "metadata": {"name": "j-worker-0-1", "uid": "p1", "resourceVersion": "11",
                 "labels": {"mlvisor.dev/worker-index": "0", "mlvisor.dev/attempt": "1"},
                 "ownerReferences": [{"kind": "TrainingJob", "name": "j", "uid": "u1", "controller": True}]},
    "spec": {"containers": [{"name": "trainer"}]},
    "status": {"phase": "Pending"},
}


def _with(obj: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    out = copy.deepcopy(obj)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node.setdefault(key, {})
    node[last] = value
    return out


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.resourceVersion", "99"),
    ("metadata.managedFields", [{"manager": "kubectl"}]),
    ("metadata.annotations", {"mlvisor.dev/training-spec-hash": "abc", "example.com/owner": "team-b"}),
])
def test_a_resource_change_no_planner_reads_is_unchanged(path: str, value: Any) -> None:
    assert resource_projection(_with(JOB, path, value)) == resource_projection(JOB)


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.generation", 2),
    ("spec.dataset", {"builtin": "wine"}),
    ("status.phase", "Failed"),
    ("metadata.labels", {"team": "b"}),
    ("metadata.annotations", {"mlvisor.dev/training-spec-hash": "def"}),
    ("metadata.ownerReferences", [{"kind": "ModelPipeline", "name": "p", "uid": "x", "controller": True}]),
    ("metadata.deletionTimestamp", "2026-12-04T00:00:00Z"),
])
def test_a_resource_change_a_planner_reads_is_a_change(path: str, value: Any) -> None:
    assert resource_projection(_with(JOB, path, value)) != resource_projection(JOB)


@pytest.mark.parametrize(("path", "value"), [
    ("metadata.resourceVersion", "99"),
    ("metadata.annotations", {"example.com/scraped": "true"}),
    ("status.conditions", [{"type": "Initialized", "status": "False"}]),
    ("status.qosClass", "Burstable"),
])
def test_a_pod_change_no_planner_reads_is_unchanged(path: str, value: Any) -> None:
    assert pod_projection(_with(POD, path, value)) == pod_projection(POD)


@pytest.mark.parametrize(("path", "value"), [
    ("status.phase", "Running"),
    ("status.podIP", "10.244.0.7"),
    # the scheduler's reason is shown as the worker's waiting reason
    ("status.conditions", [{"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "0/1"}]),
    ("status.containerStatuses", [{"name": "trainer", "restartCount": 1, "state": {"running": {}}}]),
    ("metadata.deletionTimestamp", "2026-12-04T00:00:00Z"),
    ("metadata.labels", {"mlvisor.dev/worker-index": "1", "mlvisor.dev/attempt": "1"}),
])
def test_a_pod_change_a_planner_reads_is_a_change(path: str, value: Any) -> None:
    assert pod_projection(_with(POD, path, value)) != pod_projection(POD)


def test_only_the_first_event_of_a_projection_is_queued_and_a_deletion_always_is() -> None:
    changes = Changes()
    same = _with(JOB, "metadata.resourceVersion", "11")
    assert changes.changed(JOB, resource_projection(JOB))
    assert not changes.changed(same, resource_projection(same))
    moved = _with(JOB, "status.phase", "Succeeded")
    assert changes.changed(moved, resource_projection(moved))
    assert changes.changed(JOB, resource_projection(JOB))  # back to an earlier state is a change too
    assert changes.changed(JOB, resource_projection(JOB), deleted=True)
    assert len(changes) == 0
    assert changes.changed(JOB, resource_projection(JOB))  # re-created under the same uid: seen afresh
    other = _with(JOB, "metadata.uid", "u2")
    assert changes.changed(other, resource_projection(other))  # per object
    assert len(changes) == 2
