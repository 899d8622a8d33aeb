"""plan_training on virtual time: a small simulated cluster plays the kubelet.

Each test drives a World (pods by name; CreatePod adds a Pending pod, DeletePod marks it
terminating) through plan_training, feeding back the status after a trip through its wire
form, exactly as a shell persists it, and asserts on actions and status.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mlvisor import api
from mlvisor.api.exits import TerminationSummary
from mlvisor.api.labels import LABEL_ATTEMPT, LABEL_WORKER_INDEX
from mlvisor.operator.builders import parse_worker_index
from mlvisor.operator.plan import (
    SELECT_INDEX,
    CreatePod,
    DeletePod,
    ObservedPod,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.planners.conditions import (
    WAITING_REPORTED_AFTER_SECONDS,
    find_condition,
    invalid_spec_status,
    to_timestamp,
    waiting_due,
)
from mlvisor.operator.planners.training import plan_training

CONFIG = OperatorConfig()
T0 = 1_700_000_000.25
ALIVE = ("Pending", "Running", "Unknown")


def make_job(*, workers: int = 1, grid: dict | None = None, **spec: Any) -> api.TrainingJob:
    body: dict[str, Any] = {
        "metadata": {"name": "iris", "namespace": "ml", "uid": "0123456789abcdef", "generation": 1},
        "spec": {
            "dataset": {"builtin": "iris"},
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
            "workers": workers,
            **spec,
        },
    }
    if grid is not None or workers > 1:
        body["spec"]["search"] = {"grid": grid or {"C": [0.01, 0.1, 1.0, 10.0, 100.0]}}
    return api.TrainingJob.model_validate(body)


def supervision(**kw: Any) -> dict[str, Any]:
    return {"supervision": kw}


class World:
    """Pods as a shell would observe them, and the job as the API server stores it."""

    def __init__(self, job: api.TrainingJob) -> None:
        self.job = job
        self.pods: dict[str, ObservedPod] = {}
        self.plans: list[Plan] = []

    # the kubelet and the user
    def set(self, name: str, **changes: Any) -> None:
        self.pods[name] = dataclasses.replace(self.pods[name], **changes)

    def run(self, name: str) -> None:
        self.set(name, phase="Running")

    def succeed(self, name: str, message: str | None = None) -> None:
        self.set(name, phase="Succeeded", exit_code=0, reason="Completed", message=message)

    def fail(self, name: str, code: int | None = 1, reason: str | None = "Error", **kw: Any) -> None:
        self.set(name, phase="Failed", exit_code=code, reason=reason, **kw)

    def finish_deletions(self) -> None:
        for name in [n for n, p in self.pods.items() if p.deleting]:
            del self.pods[name]

    def alive(self) -> list[ObservedPod]:
        return [p for p in self.pods.values() if p.phase in ALIVE]

    # the shell
    def observe(self) -> list[ObservedPod]:
        return sorted(self.pods.values(), key=lambda p: p.name)

    def reconcile(self, now: float, *, lose_status: bool = False, **kw: Any) -> Plan:
        """Plan and carry the plan out; ``lose_status``: its pod writes land, its status write is
        lost (the API server timed out), so the job keeps the status it had."""
        plan = plan_training(self.job, self.observe(), now, CONFIG, **kw)
        self.plans.append(plan)
        for a in plan.actions:
            if isinstance(a, CreatePod):
                meta = a.manifest["metadata"]
                assert meta["name"] not in self.pods, f"{meta['name']} created twice"
                self.pods[meta["name"]] = ObservedPod(
                    name=meta["name"],
                    index=parse_worker_index(meta["labels"][LABEL_WORKER_INDEX]),
                    attempt=int(meta["labels"][LABEL_ATTEMPT]),
                )
            elif isinstance(a, DeletePod) and a.name in self.pods:
                self.set(a.name, deleting=True)
        assert plan.status is not None
        if lose_status:
            return plan
        # The status goes through its wire form, as it does through the API server.
        wire = {**self.job.model_dump(mode="json", by_alias=True, exclude={"status"}), "status": plan.status.to_wire()}
        self.job = api.TrainingJob.model_validate(wire)
        return plan

    @property
    def status(self) -> api.TrainingJobStatus:
        assert self.job.status is not None
        return self.job.status


def creates(plan: Plan) -> list[str]:
    return [a.manifest["metadata"]["name"] for a in plan.actions if isinstance(a, CreatePod)]


def deletes(plan: Plan) -> list[str]:
    return [a.name for a in plan.actions if isinstance(a, DeletePod)]


def events(plan: Plan) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in plan.actions if isinstance(a, RecordEvent)]


def cond(status: api.TrainingJobStatus, type_: str) -> api.Condition:
    c = find_condition(status.conditions, type_)
    assert c is not None, f"no {type_} condition in {[c.type for c in status.conditions]}"
    return c


def worker(status: api.TrainingJobStatus, index: int) -> api.WorkerStatus:
    if index == SELECT_INDEX:
        assert status.select is not None
        return status.select
    return status.workers[index]


# --------------------------------------------------------------------------- happy paths


def test_first_reconcile_creates_the_worker_and_fixes_the_version() -> None:
    w = World(make_job())
    plan = w.reconcile(T0)
    assert creates(plan) == ["iris-worker-0-1"]
    assert events(plan) == [("Normal", "Created")]
    st_ = w.status
    assert st_.version == "01234567-1"
    assert st_.phase == api.TrainingPhase.RUNNING
    assert st_.observed_generation == 1
    assert to_timestamp(st_.start_time) == T0
    assert cond(st_, "Created").status == "True" and cond(st_, "Running").status == "True"
    assert st_.workers_summary == "0/1"
    args = plan.actions[0].manifest["spec"]["containers"][0]["args"]
    assert args == ["--worker-index", "0", "--workers", "1"]


def test_replaying_the_first_reconcile_creates_nothing_and_changes_nothing() -> None:
    job = make_job(workers=2)
    first = plan_training(job, [], T0, CONFIG)
    again = plan_training(job.model_copy(update={"status": first.status}), [], T0 + 3, CONFIG)
    assert len(creates(first)) == 2
    assert again.actions == ()
    assert again.status == first.status


def test_plain_job_succeeds_with_the_summary_its_trainer_left() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    assert w.reconcile(T0 + 1).actions == ()
    assert w.status.workers[0].phase == api.WorkerPhase.RUNNING
    summary = TerminationSummary(version="01234567-1", metrics={"accuracy": 0.97, "f1_macro": 0.96},
                                 score_name="accuracy", sklearn_version="1.9.1")
    w.succeed("iris-worker-0-1", message=summary.to_message())
    plan = w.reconcile(T0 + 30)
    st_ = w.status
    assert st_.phase == api.TrainingPhase.SUCCEEDED
    assert st_.model is not None
    assert st_.model.uri == "pvc://mlvisor-models/ml/iris/01234567-1/"
    assert st_.model.version == "01234567-1"
    assert st_.model.metrics == {"accuracy": 0.97, "f1_macro": 0.96}
    assert st_.model.score == 0.97 and st_.model.sklearn_version == "1.9.1"
    assert to_timestamp(st_.completion_time) == T0 + 30
    assert cond(st_, "Succeeded").status == "True" and cond(st_, "Running").status == "False"
    assert events(plan) == [("Normal", "Succeeded")]
    assert st_.workers_summary == "1/1"
    assert creates(plan) == [] and deletes(plan) == []


def test_succeeded_without_metadata_leaves_metrics_empty() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    w.reconcile(T0 + 5)
    assert w.status.model is not None and w.status.model.metrics == {} and w.status.model.score is None


# --------------------------------------------------------------------------- restarts


def test_exit_1_restarts_after_backoff_with_attempt_2() -> None:
    w = World(make_job(**supervision(backoff={"initialSeconds": 4, "factor": 2, "maxSeconds": 60})))
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.reconcile(T0 + 1)
    w.fail("iris-worker-0-1", code=1)
    plan = w.reconcile(T0 + 10)
    assert creates(plan) == []
    assert deletes(plan) == []  # the failed pod is kept for its logs
    assert plan.requeue_after == pytest.approx(4)
    assert events(plan) == [("Warning", "Restarting")]
    restart_msg = next(a.message for a in plan.actions if isinstance(a, RecordEvent))
    assert "1 restarts within 60s, maxRestarts is 3" in restart_msg
    st_ = w.status
    assert st_.phase == api.TrainingPhase.RESTARTING
    assert st_.workers[0].phase == api.WorkerPhase.RESTARTING
    assert to_timestamp(st_.workers[0].restart_at) == T0 + 14
    assert to_timestamp(st_.supervision.next_restart_time) == T0 + 14
    assert st_.supervision.restarts_in_window == 1 and st_.supervision.total_restarts == 1
    assert st_.supervision.last_failure is not None and st_.supervision.last_failure.exit_code == 1
    assert cond(st_, "Restarting").status == "True"

    early = w.reconcile(T0 + 13.5)
    assert creates(early) == [] and early.requeue_after == pytest.approx(0.5)

    due = w.reconcile(T0 + 14)
    assert creates(due) == ["iris-worker-0-2"]
    assert w.status.workers[0].attempt == 2 and w.status.workers[0].pod == "iris-worker-0-2"
    assert w.status.phase == api.TrainingPhase.RUNNING
    assert cond(w.status, "Restarting").status == "False"
    assert w.status.workers[0].last_exit_code == 1


def test_exit_2_fails_at_once_by_failure_policy() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=2)
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == []
    assert w.status.phase == api.TrainingPhase.FAILED
    assert cond(w.status, "Failed").reason == "FailurePolicy"
    assert events(plan) == [("Warning", "FailurePolicy")]
    assert w.status.workers[0].phase == api.WorkerPhase.FAILED
    assert w.status.supervision.restart_times == []


def test_eviction_restarts_at_once_without_counting() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.fail("iris-worker-0-1", code=None, reason="Evicted")
    plan = w.reconcile(T0 + 1)
    assert creates(plan) == ["iris-worker-0-2"]
    assert w.status.supervision.restart_times == []
    assert w.status.supervision.total_restarts == 1
    assert w.status.supervision.last_failure.action == api.FailureAction.IGNORE


def test_disruption_target_condition_is_ignored_too() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=137, reason="Error", conditions=frozenset({"DisruptionTarget"}))
    assert creates(w.reconcile(T0 + 1)) == ["iris-worker-0-2"]
    assert w.status.supervision.restarts_in_window == 0


def three_workers(strategy: str) -> World:
    w = World(
        make_job(workers=3, **supervision(strategy=strategy, backoff={"initialSeconds": 5, "maxSeconds": 5}))
    )
    w.reconcile(T0)
    for i in range(3):
        w.run(f"iris-worker-{i}-1")
    w.reconcile(T0 + 1)
    return w


@pytest.mark.parametrize(
    ("strategy", "restarted", "kept"),
    [
        ("OneForOne", [1], [0, 2]),
        ("OneForAll", [0, 1, 2], []),
        ("RestForOne", [1, 2], [0]),
    ],
)
def test_strategies_restart_the_right_workers(strategy: str, restarted: list[int], kept: list[int]) -> None:
    w = three_workers(strategy)
    w.fail("iris-worker-1-1", code=1)
    plan = w.reconcile(T0 + 2)
    assert sorted(deletes(plan)) == [f"iris-worker-{i}-1" for i in restarted if i != 1]
    for i in restarted:
        assert w.status.workers[i].phase == api.WorkerPhase.RESTARTING
    for i in kept:
        assert w.status.workers[i].phase == api.WorkerPhase.RUNNING
    assert w.status.supervision.restarts_in_window == 1  # a group restart counts once
    # The killed peers report failures; they are the supervisor's doing, not counted.
    for i in restarted:
        if i != 1:
            w.fail(f"iris-worker-{i}-1", code=137, reason="Error")
    w.reconcile(T0 + 3)
    assert w.status.supervision.restarts_in_window == 1
    w.finish_deletions()
    plan = w.reconcile(T0 + 7)
    assert sorted(creates(plan)) == [f"iris-worker-{i}-2" for i in restarted]
    for i in kept:
        assert w.status.workers[i].attempt == 1


def test_one_for_all_reruns_a_worker_that_already_succeeded() -> None:
    w = three_workers("OneForAll")
    w.succeed("iris-worker-0-1")
    w.reconcile(T0 + 2)
    assert w.status.workers[0].phase == api.WorkerPhase.SUCCEEDED
    w.fail("iris-worker-2-1", code=1)
    w.reconcile(T0 + 3)
    assert w.status.workers[0].phase == api.WorkerPhase.RESTARTING
    w.finish_deletions()
    plan = w.reconcile(T0 + 8)
    assert "iris-worker-0-2" in creates(plan)


def test_new_attempt_waits_until_the_old_pod_is_gone() -> None:
    w = three_workers("OneForAll")
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(T0 + 2)  # deletes workers 1 and 2, which keep terminating
    plan = w.reconcile(T0 + 7)
    assert creates(plan) == ["iris-worker-0-2"]  # its old pod is finished; the others are not
    assert plan.requeue_after is not None
    assert all(len([p for p in w.alive() if p.index == i]) <= 1 for i in range(3))
    w.finish_deletions()
    plan = w.reconcile(T0 + 8)
    assert sorted(creates(plan)) == ["iris-worker-1-2", "iris-worker-2-2"]


def test_fourth_failure_in_window_escalates_and_stops_the_rest_highest_index_first() -> None:
    w = World(make_job(workers=3, **supervision(maxRestarts=3, periodSeconds=60, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    for i in range(3):
        w.run(f"iris-worker-{i}-1")
    t = T0
    for attempt in range(1, 4):
        t += 5
        w.fail(f"iris-worker-0-{attempt}", code=1)
        plan = w.reconcile(t)
        assert creates(plan) == [f"iris-worker-0-{attempt + 1}"]
        w.run(f"iris-worker-0-{attempt + 1}")
    assert w.status.supervision.restarts_in_window == 3
    w.fail("iris-worker-0-4", code=1)
    plan = w.reconcile(t + 5)
    assert creates(plan) == []
    assert deletes(plan) == ["iris-worker-2-1", "iris-worker-1-1"]
    st_ = w.status
    assert st_.phase == api.TrainingPhase.FAILED
    failed = cond(st_, "Failed")
    assert failed.reason == "RestartIntensityExceeded"
    assert "4 restarts within 60s, maxRestarts is 3" in failed.message
    assert events(plan) == [("Warning", "RestartIntensityExceeded")]
    assert len(st_.supervision.restart_times) == 4  # maxRestarts + 1
    # Terminal and sticky: nothing starts again, whatever happens to the pods.
    w.finish_deletions()
    for k in range(3):
        later = w.reconcile(t + 100 + k * 1000)
        assert creates(later) == []
        assert w.status.phase == api.TrainingPhase.FAILED


def _escalated_world() -> tuple[World, float]:
    """A 2-worker search job whose worker 0 exceeded maxRestarts 0 (failed at once)."""
    w = World(make_job(workers=2, **supervision(maxRestarts=0, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.run("iris-worker-1-1")
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(T0 + 5)
    w.finish_deletions()
    assert w.status.phase == api.TrainingPhase.FAILED
    return w, T0 + 5


def _edit_spec(w: World, **spec: Any) -> None:
    """What kubectl apply does: a new spec and a new generation, status untouched."""
    body = w.job.model_dump(mode="json", by_alias=True)
    body["spec"].update(spec)
    body["metadata"]["generation"] += 1
    w.job = api.TrainingJob.model_validate(body)


def test_a_failed_job_starts_a_new_run_when_its_spec_changes() -> None:
    w, t = _escalated_world()
    old_version = w.status.version
    _edit_spec(w, supervision={"maxRestarts": 2, "backoff": {"initialSeconds": 0}})
    plan = w.reconcile(t + 30)
    # Every worker starts again at attempt+1 (the failed pod iris-worker-0-1 is kept for its logs).
    assert sorted(creates(plan)) == ["iris-worker-0-2", "iris-worker-1-2"]
    assert "iris-worker-0-1" in w.pods
    st_ = w.status
    assert st_.phase == api.TrainingPhase.RUNNING
    assert st_.version == "01234567-2" != old_version
    assert st_.supervision.restart_times == [] and st_.completion_time is None
    assert cond(st_, "Failed").status == "False" and cond(st_, "Failed").reason == "SpecChanged"
    assert ("Normal", "NewRun") in events(plan)
    # The new run is supervised with the new intensity, and finishes.
    w.fail("iris-worker-0-2", code=1)
    assert creates(w.reconcile(t + 31)) == ["iris-worker-0-3"]  # maxRestarts 2 now: restarted
    assert w.status.supervision.restarts_in_window == 1
    for name in ("iris-worker-0-3", "iris-worker-1-2"):
        w.succeed(name)
    assert creates(w.reconcile(t + 40)) == ["iris-select-1"]
    w.succeed("iris-select-1")
    w.reconcile(t + 50)
    assert w.status.phase == api.TrainingPhase.SUCCEEDED
    assert w.status.model is not None and w.status.model.version == "01234567-2"


def test_changing_only_ttl_or_suspend_does_not_rerun_a_failed_job() -> None:
    w, t = _escalated_world()
    _edit_spec(w, ttlSecondsAfterFinished=3600)
    assert creates(w.reconcile(t + 30)) == []
    _edit_spec(w, suspend=True)
    assert creates(w.reconcile(t + 40)) == []
    assert w.status.phase == api.TrainingPhase.FAILED
    assert cond(w.status, "Failed").status == "True"
    # A replay of the same generation after a real change does not start a second new run.
    _edit_spec(w, suspend=False, image="example.org/mlvisor:fixed")
    first = w.reconcile(t + 50)
    assert len(creates(first)) == 2
    assert creates(w.reconcile(t + 51)) == []


def test_a_job_that_failed_before_running_starts_when_fixed() -> None:
    s = invalid_spec_status("TrainingJob", 1, "spec.estimator.class: must start with sklearn.", T0)
    w = World(make_job().model_copy(update={"status": s}))
    assert creates(w.reconcile(T0 + 1)) == []  # same generation: still failed
    _edit_spec(w, testSize=0.25)
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == ["iris-worker-0-1"]
    assert w.status.phase == api.TrainingPhase.RUNNING and w.status.version == "01234567-2"


def test_failures_spread_beyond_the_period_never_escalate() -> None:
    w = World(make_job(**supervision(maxRestarts=1, periodSeconds=10, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    t = T0
    for attempt in range(1, 6):
        t += 10.000001
        w.fail(f"iris-worker-0-{attempt}", code=1)
        assert creates(w.reconcile(t)) == [f"iris-worker-0-{attempt + 1}"]
    assert w.status.phase == api.TrainingPhase.RUNNING
    assert w.status.supervision.total_restarts == 5


def test_the_window_boundary_survives_the_trip_through_status() -> None:
    """OTP counts a restart exactly periodSeconds old: the stored time must compare exactly."""
    w = World(make_job(**supervision(maxRestarts=1, periodSeconds=10, backoff={"initialSeconds": 0})))
    t1 = T0 + 0.123457
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(t1)
    w.fail("iris-worker-0-2", code=1)
    w.reconcile(t1 + 10)  # exactly on the boundary: still inside the window -> escalate
    assert w.status.phase == api.TrainingPhase.FAILED
    assert cond(w.status, "Failed").reason == "RestartIntensityExceeded"


def test_temporary_workers_are_never_restarted() -> None:
    w = World(make_job(**supervision(restart="Temporary")))
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(T0 + 1)
    assert cond(w.status, "Failed").reason == "TemporaryChildFailed"


def test_permanent_workers_restart_after_success_until_the_window_is_exceeded() -> None:
    w = World(make_job(**supervision(restart="Permanent", maxRestarts=1, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    assert creates(w.reconcile(T0 + 1)) == ["iris-worker-0-2"]
    w.succeed("iris-worker-0-2")
    w.reconcile(T0 + 2)
    assert cond(w.status, "Failed").reason == "RestartIntensityExceeded"


def test_a_replayed_failure_is_counted_once() -> None:
    w = World(make_job(**supervision(backoff={"initialSeconds": 30, "maxSeconds": 30})))
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=1)
    first = w.reconcile(T0 + 1)
    for k in range(5):  # the operator restarts and sees the same failed pod again
        again = w.reconcile(T0 + 2 + k)
        assert creates(again) == [] and events(again) == []
    assert w.status.supervision.total_restarts == 1
    assert w.status.supervision.restart_times == first.status.supervision.restart_times


def test_a_running_pod_that_vanishes_is_a_failure() -> None:
    w = World(make_job(**supervision(backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.reconcile(T0 + 1)
    del w.pods["iris-worker-0-1"]
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == ["iris-worker-0-2"]
    assert w.status.supervision.last_failure.reason == "PodLost"


def test_a_pending_pod_that_vanishes_is_a_failure_not_a_wait_for_ever() -> None:
    # The status names the pod only after its create succeeded, and pods are listed fresh:
    # a Pending pod missing from the list was deleted (kubectl delete, an eviction before
    # scheduling). Waiting for it left the job Running for ever on a real API server.
    w = World(make_job(**supervision(backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    assert w.status.workers[0].phase == "Pending"
    del w.pods["iris-worker-0-1"]
    early = w.reconcile(T0 + 1)  # as a replay of observations from before the create would be
    assert creates(early) == [] and early.requeue_after is not None and early.requeue_after <= 9.0
    plan = w.reconcile(T0 + 10)
    assert creates(plan) == ["iris-worker-0-2"]
    assert w.status.supervision.last_failure.reason == "PodLost"
    assert w.status.supervision.total_restarts == 1


def test_a_pod_created_before_a_lost_status_write_is_adopted() -> None:
    w = World(make_job(**supervision(backoff={"initialSeconds": 5})))
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(T0 + 1)
    stale_job = w.job
    w.reconcile(T0 + 6)  # creates attempt 2 ...
    w.job = stale_job  # ... but the status patch was lost
    w.run("iris-worker-0-2")
    plan = w.reconcile(T0 + 7)
    assert creates(plan) == []
    assert w.status.workers[0].attempt == 2 and w.status.workers[0].phase == api.WorkerPhase.RUNNING


def test_an_adopted_pod_that_already_finished_is_read_in_the_same_reconcile() -> None:
    # The fault tier's case (an API proxy that hangs requests): the status write of the plan
    # that created the select step's pod was lost, and the pod succeeded before the retry.
    # The retry adopts it and reads its exit at once: no later reconcile is needed (none comes
    # when the operator drops the echo of its own status write).
    w = World(make_job(workers=2))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    w.succeed("iris-worker-1-1")
    assert creates(w.reconcile(T0 + 1, lose_status=True)) == ["iris-select-1"]
    assert w.status.select is None
    w.succeed("iris-select-1")
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == []
    assert w.status.phase == api.TrainingPhase.SUCCEEDED
    assert w.status.select.pod == "iris-select-1" and w.status.select.phase == api.WorkerPhase.SUCCEEDED
    assert ("Normal", "Succeeded") in events(plan)


def test_an_adopted_pod_that_failed_restarts_before_any_new_pod_is_created() -> None:
    # Two lost status writes in a row: the retry adopts a worker that has failed meanwhile
    # and escalates; the other worker's next attempt is never created (a create before the
    # failure was read would leave a pod the failed job does not stop).
    w = World(make_job(workers=2, **supervision(restart="Permanent", maxRestarts=2, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    assert creates(w.reconcile(T0 + 1, lose_status=True)) == ["iris-worker-0-2"]
    w.succeed("iris-worker-0-2")
    w.succeed("iris-worker-1-1")
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == [] and w.status.phase == api.TrainingPhase.FAILED
    assert cond(w.status, "Failed").reason == "RestartIntensityExceeded"


def test_a_chain_of_adopted_pods_is_read_to_its_end_in_one_reconcile() -> None:
    # Three status writes lost in a row, each plan restarting the worker (Permanent: a success
    # restarts too) and creating its next attempt: the retry reads every one of them.
    w = World(make_job(**supervision(restart="Permanent", maxRestarts=10, backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    for attempt in (1, 2, 3):
        w.succeed(f"iris-worker-0-{attempt}")
        assert creates(w.reconcile(T0 + attempt, lose_status=True)) == [f"iris-worker-0-{attempt + 1}"]
    w.succeed("iris-worker-0-4")
    plan = w.reconcile(T0 + 5)
    assert creates(plan) == ["iris-worker-0-5"]
    assert w.status.workers[0].attempt == 5 and w.status.supervision.total_restarts == 4
    settled = plan_training(w.job, w.observe(), T0 + 5, CONFIG)
    assert settled.actions == () and settled.status == w.job.status


def test_an_attempt_whose_pod_is_still_going_away_waits_for_its_name() -> None:
    # A plan whose status write was lost created attempt 2 of both workers (OneForAll); a second
    # lost plan stopped worker 1's. The retry must not create a pod of that name until it is gone.
    w = World(make_job(workers=2, **supervision(strategy="OneForAll", restart="Permanent", maxRestarts=2,
                                                backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    w.succeed("iris-worker-1-1")
    assert sorted(creates(w.reconcile(T0 + 1, lose_status=True))) == ["iris-worker-0-2", "iris-worker-1-2"]
    w.succeed("iris-worker-0-2")
    w.reconcile(T0 + 2, lose_status=True)
    assert w.pods["iris-worker-1-2"].deleting
    plan = w.reconcile(T0 + 3)
    assert "iris-worker-1-2" not in creates(plan)
    assert plan.requeue_after is not None
    w.finish_deletions()
    assert "iris-worker-1-2" in creates(w.reconcile(T0 + 4))


def test_an_alive_pod_of_an_older_attempt_is_deleted() -> None:
    w = World(make_job(**supervision(backoff={"initialSeconds": 0}, failurePolicy=[])))
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=1)
    w.reconcile(T0 + 1)
    # An old attempt shows up running again (a replayed or stale watch event).
    w.pods["iris-worker-0-1"] = dataclasses.replace(w.pods["iris-worker-0-1"], phase="Running")
    plan = w.reconcile(T0 + 2)
    assert deletes(plan) == ["iris-worker-0-1"]
    assert w.status.supervision.total_restarts == 1


# --------------------------------------------------------------------------- search


def test_search_runs_the_select_step_after_every_shard() -> None:
    w = World(make_job(workers=2, **supervision(backoff={"initialSeconds": 3, "maxSeconds": 3})))
    plan = w.reconcile(T0)
    assert creates(plan) == ["iris-worker-0-1", "iris-worker-1-1"]
    w.succeed("iris-worker-0-1")
    assert creates(w.reconcile(T0 + 1)) == []
    assert w.status.workers_summary == "1/2"
    w.succeed("iris-worker-1-1")
    plan = w.reconcile(T0 + 2)
    assert creates(plan) == ["iris-select-1"]
    assert ("Normal", "Selecting") in events(plan)
    select = next(a for a in plan.actions if isinstance(a, CreatePod)).manifest
    assert select["spec"]["containers"][0]["args"] == ["--select", "--workers", "2"]
    assert w.status.phase == api.TrainingPhase.RUNNING

    w.fail("iris-select-1", code=1)
    w.reconcile(T0 + 3)
    assert w.status.select.phase == api.WorkerPhase.RESTARTING
    assert [x.phase for x in w.status.workers] == [api.WorkerPhase.SUCCEEDED] * 2  # OneForOne
    assert creates(w.reconcile(T0 + 6)) == ["iris-select-2"]
    w.succeed("iris-select-2")
    plan = w.reconcile(T0 + 9)
    assert w.status.phase == api.TrainingPhase.SUCCEEDED
    assert w.status.model.version == "01234567-1"


def test_select_failure_under_one_for_all_reruns_every_shard() -> None:
    w = World(make_job(workers=2, **supervision(strategy="OneForAll", backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    w.succeed("iris-worker-1-1")
    w.reconcile(T0 + 1)
    w.fail("iris-select-1", code=1)
    plan = w.reconcile(T0 + 2)
    assert sorted(creates(plan)) == ["iris-worker-0-2", "iris-worker-1-2"]
    assert w.status.select.phase == api.WorkerPhase.RESTARTING
    w.succeed("iris-worker-0-2")
    w.succeed("iris-worker-1-2")
    assert creates(w.reconcile(T0 + 3)) == ["iris-select-2"]


def test_more_workers_than_trials_runs_one_worker_per_trial() -> None:
    w = World(make_job(workers=5, grid={"C": [0.1, 1.0]}))
    plan = w.reconcile(T0)
    assert creates(plan) == ["iris-worker-0-1", "iris-worker-1-1"]
    args = plan.actions[0].manifest["spec"]["containers"][0]["args"]
    assert args == ["--worker-index", "0", "--workers", "2"]
    assert w.status.workers_summary == "0/2"


# --------------------------------------------------------------------------- time and lifecycle


def test_active_deadline_fails_the_job() -> None:
    w = World(make_job(workers=2, activeDeadlineSeconds=100))
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.run("iris-worker-1-1")
    plan = w.reconcile(T0 + 40)
    assert plan.requeue_after == pytest.approx(CONFIG.progress_poll_seconds)  # polling the running search
    plan = w.reconcile(T0 + 97)
    assert plan.requeue_after == pytest.approx(3)  # the deadline comes sooner than the next poll
    plan = w.reconcile(T0 + 100)
    assert deletes(plan) == ["iris-worker-1-1", "iris-worker-0-1"]
    assert w.status.phase == api.TrainingPhase.FAILED
    assert cond(w.status, "Failed").reason == "DeadlineExceeded"
    assert "activeDeadlineSeconds" in cond(w.status, "Failed").message


def test_suspend_and_resume() -> None:
    w = World(make_job(workers=2, **supervision(backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.succeed("iris-worker-1-1")
    w.reconcile(T0 + 1)
    w.job = w.job.model_copy(update={"spec": w.job.spec.model_copy(update={"suspend": True})})
    plan = w.reconcile(T0 + 2)
    assert deletes(plan) == ["iris-worker-0-1"]
    assert ("Normal", "Suspended") in events(plan)
    assert w.status.phase == api.TrainingPhase.SUSPENDED
    assert cond(w.status, "Suspended").status == "True"
    assert w.status.workers[0].phase == api.WorkerPhase.STOPPED
    assert w.status.workers[1].phase == api.WorkerPhase.SUCCEEDED
    w.fail("iris-worker-0-1", code=143, reason="Error")  # killed by the delete: not a failure
    again = w.reconcile(T0 + 3)
    assert creates(again) == [] and events(again) == []
    w.finish_deletions()

    w.job = w.job.model_copy(update={"spec": w.job.spec.model_copy(update={"suspend": False})})
    plan = w.reconcile(T0 + 50)
    assert creates(plan) == ["iris-worker-0-2"]
    assert ("Normal", "Resumed") in events(plan)
    assert w.status.phase == api.TrainingPhase.RUNNING
    assert cond(w.status, "Suspended").status == "False"
    assert w.status.supervision.total_restarts == 0 and w.status.supervision.restart_times == []
    assert to_timestamp(w.status.start_time) == T0 + 50


def test_created_suspended_starts_at_attempt_1_on_resume() -> None:
    w = World(make_job(suspend=True))
    plan = w.reconcile(T0)
    assert creates(plan) == [] and w.status.phase == api.TrainingPhase.SUSPENDED
    assert w.status.start_time is None
    w.job = w.job.model_copy(update={"spec": w.job.spec.model_copy(update={"suspend": False})})
    assert creates(w.reconcile(T0 + 5)) == ["iris-worker-0-1"]


def test_ttl_after_finished_deletes_the_pods() -> None:
    w = World(make_job(ttlSecondsAfterFinished=30))
    w.reconcile(T0)
    w.succeed("iris-worker-0-1")
    plan = w.reconcile(T0 + 10)
    assert plan.requeue_after == pytest.approx(30)
    assert deletes(w.reconcile(T0 + 39)) == []
    plan = w.reconcile(T0 + 40)
    assert deletes(plan) == ["iris-worker-0-1"]
    assert w.status.phase == api.TrainingPhase.SUCCEEDED and w.status.model is not None


def test_an_invalid_spec_fails_without_pods() -> None:
    grid = {f"p{i}": list(range(10)) for i in range(6)}  # 10^6 combinations
    w = World(make_job(workers=2, grid=grid))
    plan = w.reconcile(T0)
    assert creates(plan) == []
    assert w.status.phase == api.TrainingPhase.FAILED
    failed = cond(w.status, "Failed")
    assert failed.reason == "InvalidSpec" and "spec.search.grid" in failed.message
    assert events(plan) == [("Warning", "InvalidSpec")]
    assert creates(w.reconcile(T0 + 10)) == []


def test_invalid_spec_status_for_an_unparseable_body() -> None:
    s = invalid_spec_status("TrainingJob", 4, "spec.estimator.class: must start with sklearn.", T0)
    assert isinstance(s, api.TrainingJobStatus)
    assert s.phase == api.TrainingPhase.FAILED and s.observed_generation == 4
    assert cond(s, "Failed").reason == "InvalidSpec"
    # A job with that status is terminal for the planner, too.
    job = make_job().model_copy(update={"status": s})
    assert creates(plan_training(job, [], T0 + 1, CONFIG)) == []


# --------------------------------------------------------------------------- properties

EVENT = st.one_of(
    st.tuples(st.just("tick"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 20.0, 70.0])),
    st.tuples(st.just("run"), st.integers(0, 3)),
    st.tuples(st.just("succeed"), st.integers(0, 3)),
    st.tuples(
        st.just("fail"),
        st.integers(0, 3),
        st.sampled_from([(1, "Error"), (2, "Error"), (137, "OOMKilled"), (None, "Evicted")]),
    ),
    st.tuples(st.just("gone"), st.integers(0, 3)),
    st.tuples(st.just("vanish"), st.integers(0, 3)),
    st.tuples(st.just("lose")),
    st.tuples(st.just("all succeed")),
)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(["OneForOne", "OneForAll", "RestForOne"]),
    restart=st.sampled_from(["Permanent", "Transient", "Temporary"]),
    workers=st.integers(1, 3),
    max_restarts=st.integers(0, 3),
    initial=st.sampled_from([0.0, 1.0, 5.0]),
    script=st.lists(EVENT, max_size=25),
)
def test_property_replays_never_change_status_nor_duplicate_pods(
    strategy: str, restart: str, workers: int, max_restarts: int, initial: float, script: list
) -> None:
    w = World(
        make_job(
            workers=workers,
            **supervision(
                strategy=strategy,
                restart=restart,
                maxRestarts=max_restarts,
                periodSeconds=30,
                backoff={"initialSeconds": initial, "maxSeconds": 10},
            ),
        )
    )
    now = T0
    terminal_seen = False
    lose_next = False
    w.reconcile(now)
    for event in script:
        kind = event[0]
        if kind == "lose":
            lose_next = True  # the next reconcile's status write is lost
            continue
        live = sorted(w.alive(), key=lambda p: p.name)
        if kind == "tick":
            now += event[1]
        elif kind in ("run", "succeed", "fail", "vanish") and live:
            pod = live[event[1] % len(live)]
            if kind == "run":
                w.run(pod.name)
            elif kind == "succeed":
                w.succeed(pod.name)
            elif kind == "fail":
                w.fail(pod.name, code=event[2][0], reason=event[2][1])
            else:
                del w.pods[pod.name]
        elif kind == "gone":
            w.finish_deletions()
        elif kind == "all succeed":
            for pod in live:
                w.succeed(pod.name)

        observed = w.observe()
        before = w.job
        lost, lose_next = lose_next, False
        plan = w.reconcile(now, lose_status=lost)
        if lost:
            # The shell retries a reconcile whose status write failed: the next step is that
            # retry, on whatever the world has become by then (pods that ran, finished, vanished).
            continue

        # 1. A replay of the same observation changes nothing and creates nothing.
        replay = plan_training(w.job, observed, now, CONFIG)
        assert replay.status == w.job.status
        assert creates(replay) == []
        assert set(deletes(replay)) <= set(deletes(plan)) | {p.name for p in observed if p.phase in ALIVE}
        assert [a for a in replay.actions if isinstance(a, RecordEvent)] == []
        # ... and the world after the plan was carried out is its fixed point: planning on it
        # again (the echo of its own writes) does nothing, writes nothing and asks for no wake-up
        # sooner than the plan did (the queue keeps the earliest), so the shell need not
        # reconcile for those echoes.
        settled = plan_training(w.job, w.observe(), now, CONFIG)
        assert settled.actions == () and settled.status == w.job.status, (settled.actions, plan.actions)
        if settled.requeue_after is not None:
            assert plan.requeue_after is not None and plan.requeue_after <= settled.requeue_after

        # 2. Never two live pods for one worker index.
        for index in {p.index for p in w.pods.values()}:
            assert len([p for p in w.alive() if p.index == index]) <= 1, w.observe()

        # 3. The restart history stays bounded.
        assert len(w.status.supervision.restart_times) <= max_restarts + 1

        # 4. Finished is final.
        if terminal_seen:
            assert creates(plan) == []
            assert w.status.phase == before.status.phase
        terminal_seen = w.status.phase in (api.TrainingPhase.SUCCEEDED, api.TrainingPhase.FAILED)


def test_the_workers_own_reason_reaches_the_condition_the_event_and_last_failure() -> None:
    said = "invalid spec: spec.estimator.params.n_estimator is not a parameter of sklearn.ensemble.RandomForestClassifier (did you mean 'n_estimators'?)"
    w = World(make_job())
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=2, message=said)
    plan = w.reconcile(T0 + 1)
    failed = cond(w.status, "Failed")
    assert failed.reason == "FailurePolicy" and failed.message.endswith(f'It said: "{said}"')
    (event,) = [a for a in plan.actions if isinstance(a, RecordEvent) and a.type == "Warning"]
    assert said in event.message
    assert w.status.supervision.last_failure is not None and w.status.supervision.last_failure.message == said


KILLED_TAIL = (
    '{"ts": "2026-12-04T15:53:54.150Z", "level": "info", "event": "fitted", "msg": "fitted in 0.00s"}\n'
    '{"ts": "2026-12-04T15:53:54.576Z", "level": "info", "event": "metrics", "msg": "held-out accuracy 0.9667"}'
)


def test_a_sigkilled_worker_is_said_to_be_killed_and_its_log_tail_is_only_its_last_log_line() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.run("iris-worker-0-1")
    w.fail("iris-worker-0-1", code=137, reason="Error", message=KILLED_TAIL)
    plan = w.reconcile(T0 + 1)
    (event,) = [a for a in plan.actions if isinstance(a, RecordEvent) and a.type == "Warning"]
    assert event.message == (
        "worker pod iris-worker-0-1 was killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        "restarting it in 1s (1 restarts within 60s, maxRestarts is 3). "
        'It left no termination message; its last log line: "held-out accuracy 0.9667"'
    )
    assert cond(w.status, "Restarting").message == event.message
    assert w.status.supervision.last_failure.message == (
        "killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        'it left no termination message; its last log line: "held-out accuracy 0.9667"'
    )


def test_an_oom_killed_worker_names_its_memory_limit() -> None:
    w = World(make_job(resources={"limits": {"memory": "512Mi"}}))
    w.reconcile(T0)
    w.fail("iris-worker-0-1", code=137, reason="OOMKilled", message=KILLED_TAIL)
    w.reconcile(T0 + 1)
    assert cond(w.status, "Restarting").message.startswith(
        "worker pod iris-worker-0-1 was OOM-killed (reason OOMKilled, exit 137): it needed more memory than its "
        "limit of 512Mi; raise spec.resources.limits.memory; restarting it in"
    )
    w2 = World(make_job())
    w2.reconcile(T0)
    w2.fail("iris-worker-0-1", code=137, reason="OOMKilled")
    w2.reconcile(T0 + 1)
    assert "its limit of 2Gi" in w2.status.supervision.last_failure.message  # the default worker limit


def test_a_failed_pods_everyday_conditions_are_not_in_the_words() -> None:
    w = World(make_job())
    w.reconcile(T0)
    everyday = frozenset({"Initialized", "PodReadyToStartContainers", "PodScheduled"})
    w.fail("iris-worker-0-1", code=1, conditions=everyday, message="crash: ValueError: boom")
    w.reconcile(T0 + 1)
    message = cond(w.status, "Restarting").message
    assert message.startswith("worker pod iris-worker-0-1 exited with code 1; restarting it in")
    assert not any(c in message for c in everyday)


def test_a_worker_that_cannot_start_says_why_in_the_running_condition_once_it_has_waited() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.set("iris-worker-0-1", phase="Pending", waiting='ImagePullBackOff: Back-off pulling image "mlvisor:typo"',
          waiting_since=T0 + 0.5)
    plan = w.reconcile(T0 + 1)
    # A moment's wait is not news (it would cost a status write per pod): the planner comes back
    # when the pod has waited WAITING_REPORTED_AFTER_SECONDS.
    assert cond(w.status, "Running").message == "0/1 workers succeeded"
    assert plan.requeue_after == pytest.approx(WAITING_REPORTED_AFTER_SECONDS - 0.5)
    plan = w.reconcile(T0 + 0.5 + WAITING_REPORTED_AFTER_SECONDS)
    assert cond(w.status, "Running").message == (
        '0/1 workers succeeded; worker 0 (pod iris-worker-0-1) cannot start: ImagePullBackOff: '
        'Back-off pulling image "mlvisor:typo"'
    )
    assert plan.requeue_after is None
    w.set("iris-worker-0-1", phase="Running", waiting=None, waiting_since=None)
    w.reconcile(T0 + WAITING_REPORTED_AFTER_SECONDS + 1)
    assert cond(w.status, "Running").message == "0/1 workers succeeded"


def test_workers_that_wait_together_are_said_in_one_status_write() -> None:
    w = World(make_job(workers=3))
    w.reconcile(T0)
    before = w.status.model_dump()
    # The scheduler marks the workers a moment apart (its timestamps are whole seconds).
    for name, since in (("iris-worker-0-1", T0), ("iris-worker-1-1", T0 + 1)):
        w.set(name, waiting="Unschedulable: 0/1 nodes are available", waiting_since=since)
        w.reconcile(T0 + 1.5)
        assert w.status.model_dump() == before  # nothing to write yet
    w.reconcile(T0 + WAITING_REPORTED_AFTER_SECONDS)
    message = cond(w.status, "Running").message
    assert "worker 0 (pod iris-worker-0-1) cannot start: Unschedulable" in message
    assert "worker 1 (pod iris-worker-1-1) cannot start: Unschedulable" in message
    assert "worker 2" not in message
    # One that starts to wait after the others were said is said at once: the job already waits.
    w.set("iris-worker-2-1", waiting="Unschedulable: 0/1 nodes are available",
          waiting_since=T0 + WAITING_REPORTED_AFTER_SECONDS + 1)
    w.reconcile(T0 + WAITING_REPORTED_AFTER_SECONDS + 1)
    assert "worker 2 (pod iris-worker-2-1) cannot start: Unschedulable" in cond(w.status, "Running").message


def test_a_waiting_pod_whose_wait_has_no_start_is_said_at_once() -> None:
    w = World(make_job())
    w.reconcile(T0)
    w.set("iris-worker-0-1", waiting="Unschedulable: 0/1 nodes are available")
    w.reconcile(T0 + 1)
    assert cond(w.status, "Running").message.endswith("cannot start: Unschedulable: 0/1 nodes are available")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.floats(min_value=-30, max_value=30), min_size=1, max_size=4), st.floats(min_value=0, max_value=30))
def test_waiting_is_said_when_the_longest_wait_is_due_and_never_later_than_the_grace(
        since: list[float], now: float) -> None:
    pods = [ObservedPod(name=f"p{i}", index=i, waiting="Unschedulable", waiting_since=s) for i, s in enumerate(since)]
    due, later = waiting_due(pods, now)
    assert due == (now - min(since) >= WAITING_REPORTED_AFTER_SECONDS)
    if due:
        assert later is None
    else:
        assert later is not None and 0 < later <= WAITING_REPORTED_AFTER_SECONDS
        assert later == pytest.approx(min(min(since) + WAITING_REPORTED_AFTER_SECONDS - now,
                                          WAITING_REPORTED_AFTER_SECONDS))


# --------------------------------------------------------------------------- search progress

from mlvisor.api.progress import ProgressReport, TrialBrief  # noqa: E402


def report(worker: int, done: int, total: int | None, *top: tuple[int, float], eta: float | None = None,
           pruned: int = 0, finished: bool = False, study_done: int | None = None) -> ProgressReport:
    return ProgressReport(
        worker=worker, trials_done=done, trials_total=total, trials_pruned=pruned, eta_seconds=eta,
        top=[TrialBrief(trial=t, score=s, params={"C": t}, worker=worker) for t, s in top],
        scoring="accuracy", finished=finished, study_done=study_done)


def test_progress_adds_the_workers_counts_and_merges_their_best_trials() -> None:
    w = World(make_job(workers=2))  # 5 trials: shards of 3 and 2
    w.reconcile(T0)
    w.set("iris-worker-0-1", phase="Running", progress=report(0, 2, 3, (4, 0.9), (0, 0.8), eta=12.4))
    w.set("iris-worker-1-1", phase="Running", progress=report(1, 1, 2, (1, 0.95), eta=30, pruned=1))
    plan = w.reconcile(T0 + 5)
    prog = w.status.progress
    assert prog is not None
    assert (prog.trials_done, prog.trials_total, prog.summary) == (3, 5, "3/5")
    assert (prog.best_score, prog.best_trial, prog.best_params) == (0.95, 1, {"C": 1})
    assert [t.trial for t in prog.top_trials] == [1, 4, 0]
    assert prog.eta_seconds == 30 and prog.trials_pruned == 1 and prog.scoring == "accuracy"
    assert [(x.trials_done, x.trials_total) for x in w.status.workers] == [(2, 3), (1, 2)]
    assert plan.requeue_after == pytest.approx(CONFIG.progress_poll_seconds)
    # the same reports again: the same status, so the shell writes nothing
    before = w.status.to_wire()
    w.reconcile(T0 + 10)
    assert w.status.to_wire() == before


def test_progress_never_goes_back_and_a_finished_worker_gives_its_final_numbers() -> None:
    w = World(make_job(workers=2, **supervision(backoff={"initialSeconds": 0})))
    w.reconcile(T0)
    w.set("iris-worker-0-1", phase="Running", progress=report(0, 2, 3, (4, 0.9)))
    w.set("iris-worker-1-1", phase="Running", progress=report(1, 1, 2, (1, 0.7)))
    w.reconcile(T0 + 5)
    # worker 0 dies and its next attempt has not reported yet; worker 1 finished between polls
    w.fail("iris-worker-0-1", code=137)
    w.succeed("iris-worker-1-1", message=report(1, 2, 2, (1, 0.7), (3, 0.91), finished=True).to_message())
    w.reconcile(T0 + 6)
    prog = w.status.progress
    assert prog is not None and prog.trials_done == 4 and prog.best_trial == 3
    w.finish_deletions()
    w.reconcile(T0 + 7)
    w.set("iris-worker-0-2", phase="Running", progress=report(0, 1, 3))  # stale: resumes from its file next
    w.reconcile(T0 + 8)
    assert w.status.progress.trials_done == 4 and w.status.workers[0].trials_done == 2
    w.succeed("iris-worker-0-2", message=report(0, 3, 3, (4, 0.9), finished=True).to_message())
    plan = w.reconcile(T0 + 9)
    assert creates(plan) == ["iris-select-1"]
    prog = w.status.progress
    assert (prog.trials_done, prog.summary, prog.eta_seconds) == (5, "5/5", 0)
    assert [t.trial for t in prog.top_trials] == [3, 4, 1]
    assert plan.requeue_after != pytest.approx(CONFIG.progress_poll_seconds)  # nothing to poll: only the select pod


def test_a_bayesian_search_counts_the_study_and_a_new_run_starts_progress_over() -> None:
    job = make_job(workers=2)
    spec = job.spec.to_wire()
    spec["search"] = {"method": "Bayesian", "nTrials": 10, "cv": 3,
                      "distributions": {"C": {"loguniform": {"low": 0.01, "high": 100}}}}
    w = World(api.TrainingJob.model_validate({**job.model_dump(mode="json", by_alias=True), "spec": spec}))
    w.reconcile(T0)
    w.set("iris-worker-0-1", phase="Running", progress=report(0, 2, None, (0, 0.9), study_done=5))
    w.set("iris-worker-1-1", phase="Running", progress=report(1, 2, None, (0, 0.9), study_done=4))
    w.reconcile(T0 + 5)
    assert w.status.progress.summary == "5/10"  # the study knows of trials a worker has not reported yet
    w.fail("iris-worker-0-1", code=2, message="invalid spec: nope")
    w.reconcile(T0 + 6)
    assert w.status.phase == api.TrainingPhase.FAILED and w.status.progress.trials_done == 5
    spec["supervision"] = {"maxRestarts": 5}
    w.job = api.TrainingJob.model_validate({**w.job.model_dump(mode="json", by_alias=True), "spec": spec,
                                            "metadata": {**w.job.metadata.model_dump(), "generation": 2}})
    w.reconcile(T0 + 7)
    assert w.status.phase == api.TrainingPhase.RUNNING
    assert w.status.progress.summary == "0/10" and w.status.progress.best_score is None
    assert all(x.trials_done is None for x in w.status.workers)


def test_the_plan_never_changes_the_status_it_was_given() -> None:
    """The planner works on a copy (``Model.clone``): the job's status as read stays as read,
    nested lists and models included, while the plan's status moves on."""
    world = World(make_job(workers=2))
    world.reconcile(T0)
    world.run("iris-worker-0-1")
    world.reconcile(T0 + 1)
    world.fail("iris-worker-1-1", code=1)
    before = world.job.model_dump(mode="json")
    plan = plan_training(world.job, world.observe(), T0 + 10, CONFIG)
    assert world.job.model_dump(mode="json") == before
    assert plan.status is not None and plan.status.to_wire() != before["status"]
    copy = world.status.clone()
    assert copy == world.status and copy is not world.status
    copy.workers[0].phase = api.WorkerPhase.FAILED
    copy.conditions.clear()
    assert world.job.model_dump(mode="json") == before
