"""Carrying out a plan: merge-patch arithmetic, events after the status, a pipeline's children."""

from __future__ import annotations

import pytest

from helpers.store import store_with
from mlvisor import api
from mlvisor.operator.kube.adapter import PlanApplier, is_subset, merge_patch
from mlvisor.operator.kube.client import ApiError
from mlvisor.operator.plan import CreatePod, Plan, RecordEvent


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


class _ChildKube(_RecordingKube):
    def __init__(self, live):
        super().__init__(None)
        self.live = live

    def applier(self) -> PlanApplier:
        """An applier whose store holds the live child (as the watch would), if any."""
        store, _ = store_with(*([self.live] if self.live else []))
        return PlanApplier(self, store=store)

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
    from mlvisor.operator.kube.adapter import Applied
    from mlvisor.operator.plan import ApplyResource, DeleteResource

    desired = _child("p1", replicas=2)
    kube = _ChildKube(None)
    await kube.applier().apply_action(_pipeline_body(), ApplyResource(desired), Applied())
    assert kube.writes == [("create", "/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers")]

    kube = _ChildKube(_child("p1", replicas=1))
    await kube.applier().apply_action(_pipeline_body(), ApplyResource(desired), Applied())
    assert kube.writes == [("patch", "/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers/iris")]

    for foreign in (_child(None), _child("someone-else")):  # a user's ModelServer by that name is never taken over
        kube = _ChildKube(foreign)
        with pytest.raises(ApiError) as e:
            await kube.applier().apply_action(_pipeline_body(), ApplyResource(desired), Applied())
        assert e.value.status == 409 and kube.writes == []

    kube = _ChildKube(None)  # already gone: done
    await kube.applier().apply_action(_pipeline_body(), DeleteResource("ModelServer", "iris", "restart"), Applied())
    kube = _ChildKube(_child("p1"))
    await kube.applier().apply_action(_pipeline_body(), DeleteResource("TrainingJob", "iris-1", "trimmed"), Applied())
    assert kube.writes == [("delete", "/apis/mlvisor.dev/v1alpha1/namespaces/default/trainingjobs/iris-1")]
