"""plan_pipeline on virtual time: runs, the gate, the schedule, the strategies, escalation, the tree."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from helpers.pipeline_world import CONFIG, T0, World
from mlvisor import api
from mlvisor.api.labels import LABEL_RUN
from mlvisor.operator.plan import ApplyResource, DeleteResource, RecordEvent
from mlvisor.operator.planners.conditions import to_timestamp
from mlvisor.operator.planners.pipeline import check_pipeline_spec, plan_pipeline
from mlvisor.operator.supervision import Failure, Policy, SupervisorState, Verdict, supervise_exit


def serving(w: World, number: int, score: float = 0.95, at: float | None = None) -> None:
    """Run ``number`` succeeds with ``score``, is promoted, and the ModelServer becomes Ready on it."""
    w.succeed(number, score)
    w.reconcile(at)
    w.server_ready()
    w.reconcile()


def applied(plan, kind: str) -> list[dict]:
    return [a.manifest for a in plan.actions if isinstance(a, ApplyResource) and a.manifest["kind"] == kind]


# ------------------------------------------------------------------ runs and children


def test_creation_starts_run_1_as_an_owned_training_job() -> None:
    w = World()
    plan = w.reconcile(T0)
    (job,) = applied(plan, "TrainingJob")
    meta = job["metadata"]
    assert meta["name"] == "iris-1"
    assert meta["ownerReferences"] == [{"apiVersion": api.API_VERSION, "kind": "ModelPipeline", "name": "iris",
                                        "uid": "pipe-uid-1", "controller": True, "blockOwnerDeletion": True}]
    assert meta["labels"]["mlvisor.dev/pipeline"] == "iris" and meta["labels"]["mlvisor.dev/run"] == "1"
    assert job["spec"]["estimator"]["class"] == "sklearn.tree.DecisionTreeClassifier"
    api.TrainingJob.model_validate(job)  # a valid TrainingJob
    st_ = w.status
    assert st_.phase == api.PipelinePhase.TRAINING and st_.last_run == 1
    assert st_.runs[0].trigger == api.RunTrigger.CREATED and st_.runs[0].phase == api.RunPhase.PENDING
    assert w.cond("Ready").reason == "NoModelPromoted"
    assert w.events(plan) == [("Normal", "RunStarted")]


def test_replays_change_nothing_but_keep_the_children_applied() -> None:
    w = World()
    w.reconcile(T0)
    before = w.body["status"]
    plan = w.reconcile(T0)
    assert w.body["status"] == {**before, "runs": [{**before["runs"][0], "phase": "Running"}]}
    assert w.events(plan) == []
    assert [m["metadata"]["name"] for m in applied(plan, "TrainingJob")] == ["iris-1"]
    plan = w.reconcile(T0 + 1)
    assert w.events(plan) == [] and w.status.last_run == 1


def test_a_successful_run_is_promoted_and_served_by_an_owned_model_server() -> None:
    w = World()
    w.reconcile(T0)
    w.succeed(1, 0.97)
    plan = w.reconcile(T0 + 5)
    (server,) = applied(plan, "ModelServer")
    assert server["metadata"]["name"] == "iris"
    assert server["metadata"]["ownerReferences"][0]["kind"] == "ModelPipeline"
    assert server["spec"]["model"] == {"uri": "pvc://mlvisor-models/default/iris-1/v1/"}
    assert server["spec"]["replicas"] == 2  # spec.serving
    api.ModelServer.model_validate(server)
    st_ = w.status
    assert (st_.serving_run, st_.serving_version, st_.serving_score) == ("iris-1", "v1", 0.97)
    assert st_.runs[0].promoted and st_.runs[0].reason == "Promoted"
    assert st_.phase == api.PipelinePhase.DEPLOYING
    assert ("Normal", "Promoted") in w.events(plan)
    w.server_ready()
    w.reconcile(T0 + 6)
    assert w.status.phase == api.PipelinePhase.SERVING
    assert w.cond("Ready").status == "True" and "v1" in w.cond("Ready").message
    assert w.status.url == "http://iris.default.svc:80/v2/models/iris"
    assert w.cond("Training").status == "False"


def test_serving_spec_changes_reach_the_model_server() -> None:
    w = World()
    w.reconcile(T0)
    serving(w, 1)
    w.set_spec(serving={"replicas": 3, "batching": {"maxBatchSize": 8}})
    plan = w.reconcile(T0 + 10)
    (server,) = applied(plan, "ModelServer")
    assert server["spec"]["replicas"] == 3 and server["spec"]["batching"]["maxBatchSize"] == 8
    assert w.status.last_run == 1, "a serving change is not a new run"


# ------------------------------------------------------------------ the gate


@pytest.mark.parametrize(
    ("promotion", "served", "score", "promoted", "reason"),
    [
        ({"minScore": 0.9}, None, 0.95, True, "Promoted"),
        ({"minScore": 0.9}, None, 0.9, True, "Promoted"),  # reaching it is enough
        ({"minScore": 0.9}, None, 0.85, False, "BelowMinScore"),
        ({"minScore": 0.9}, None, None, False, "NoScore"),
        ({"mustImprove": True}, 0.95, 0.96, True, "Promoted"),
        ({"mustImprove": True}, 0.95, 0.95, False, "NotBetter"),  # beat, not equal
        ({"mustImprove": True}, 0.95, 0.5, False, "NotBetter"),
        ({"mustImprove": False}, 0.95, 0.5, True, "Promoted"),
        ({"minScore": 0.9, "mustImprove": True}, 0.92, 0.91, False, "NotBetter"),
        ({}, None, None, True, "Promoted"),
    ],
)
def test_the_gate(promotion, served, score, promoted, reason) -> None:
    w = World(promotion=promotion)
    w.reconcile(T0)
    number = 1
    if served is not None:
        serving(w, 1, served)
        w.set_spec(promotion=promotion, training={"estimator": {"class": "sklearn.svm.SVC"}})
        w.reconcile(T0 + 20)
        number = 2
    w.succeed(number, score)
    plan = w.reconcile(T0 + 30)
    run = w.run(number)
    assert (run.promoted, run.reason) == (promoted, reason), run.message
    if promoted:
        assert w.status.serving_run == f"iris-{number}"
        assert w.served_uri() == f"pvc://mlvisor-models/default/iris-{number}/v{number}/"
        assert ("Normal", "Promoted") in w.events(plan)
    else:
        assert ("Normal", "NotPromoted") in w.events(plan)
        assert w.status.serving_run == ("iris-1" if served is not None else None)
        if served is not None:
            assert w.served_uri() == "pvc://mlvisor-models/default/iris-1/v1/"
            assert "promotion" in run.message and "v1 stays served" in run.message
        else:
            assert w.server() is None and w.status.phase == api.PipelinePhase.PENDING


# ------------------------------------------------------------------ strategies


@pytest.mark.parametrize("strategy", ["OneForOne", "RestForOne", "OneForAll"])
def test_a_training_failure_retrains_after_the_backoff_and_never_stops_the_server(strategy) -> None:
    w = World(supervision={"strategy": strategy})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision={"strategy": strategy}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)
    w.fail(2)
    plan = w.reconcile(T0 + 20)
    assert w.status.phase == api.PipelinePhase.RESTARTING
    assert [p.child for p in w.status.supervision.pending] == [api.PipelineChild.TRAINING]
    assert to_timestamp(w.status.supervision.next_restart_time) == T0 + 30
    assert plan.requeue_after == pytest.approx(10)
    assert w.deleted(plan) == []
    assert applied(plan, "ModelServer"), "the server keeps being applied, unchanged"
    assert w.cond("Ready").status == "True"
    message = w.cond("Restarting").message
    assert "training (TrainingJob iris-2) failed (reason FailurePolicy, its last pod exited with code 2)" in message
    if strategy == "OneForOne":
        assert "restarting training in 10s" in message
    else:
        assert f"restarting training and serving ({strategy})" in message
        assert "keeps serving version v1" in message
    last = w.status.supervision.last_failure
    assert (last.child, last.resource, last.reason, last.exit_code) == ("training", "TrainingJob iris-2", "FailurePolicy", 2)
    assert w.run(2).phase == api.RunPhase.FAILED and w.run(2).reason == "FailurePolicy"

    plan = w.reconcile(T0 + 29)
    assert not applied(plan, "TrainingJob") and w.status.last_run == 2
    plan = w.reconcile(T0 + 30)
    assert [m["metadata"]["name"] for m in applied(plan, "TrainingJob")] == ["iris-3"]
    assert w.run(3).trigger == api.RunTrigger.RESTART
    assert w.status.supervision.total_restarts == 1 and w.status.supervision.restarts_in_window == 1
    assert w.status.phase == api.PipelinePhase.SERVING
    assert w.served_uri() == "pvc://mlvisor-models/default/iris-1/v1/"
    w.succeed(3, 0.99)
    w.reconcile(T0 + 40)
    assert w.served_uri() == "pvc://mlvisor-models/default/iris-3/v3/", "the restarted run is served once promoted"


@pytest.mark.parametrize(("strategy", "retrains"), [("OneForOne", False), ("RestForOne", False), ("OneForAll", True)])
def test_a_serving_failure_recreates_the_model_server(strategy, retrains) -> None:
    w = World(supervision={"strategy": strategy})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision={"strategy": strategy}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)  # run 2 in progress
    w.running(2)
    old_uid = w.server().uid
    w.server_failed()
    plan = w.reconcile(T0 + 20)
    pending = {p.child for p in w.status.supervision.pending}
    assert api.PipelineChild.SERVING in pending
    assert (api.PipelineChild.TRAINING in pending) == retrains
    if retrains:
        assert w.run(2).phase == api.RunPhase.STOPPED and ("TrainingJob", "iris-2") in w.deleted(plan)
    else:
        assert w.run(2).phase == api.RunPhase.RUNNING and w.deleted(plan) == []
    assert not applied(plan, "ModelServer"), "a failed server waits for its restart"
    assert w.status.supervision.last_failure.resource == "ModelServer iris"

    plan = w.reconcile(T0 + 30)
    assert ("ModelServer", "iris") in w.deleted(plan)
    if retrains:
        assert w.run(3).trigger == api.RunTrigger.RESTART
    plan = w.reconcile(T0 + 31)
    (server,) = applied(plan, "ModelServer")
    assert server["spec"]["model"]["uri"] == "pvc://mlvisor-models/default/iris-1/v1/"
    assert w.server().uid != old_uid
    assert ("Normal", "ServingRestarted") in w.events(plan)
    assert w.status.supervision.pending == []
    assert w.status.supervision.total_restarts == 1


@pytest.mark.parametrize(("strategy", "counted"), [("OneForOne", 2), ("RestForOne", 1), ("OneForAll", 1)])
def test_a_failed_server_restarts_with_training_as_one_group_unless_one_for_one(strategy, counted) -> None:
    w = World(supervision={"strategy": strategy, "maxRestarts": 5})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision={"strategy": strategy, "maxRestarts": 5}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)
    # Both children give up before the pipeline looks again.
    w.fail(2)
    w.server_failed()
    plan = w.reconcile(T0 + 12)
    assert {p.child for p in w.status.supervision.pending} == {api.PipelineChild.TRAINING, api.PipelineChild.SERVING}
    # RestForOne and OneForAll restart serving with training: one group restart, counted once
    # (OTP ignores the exit of a child it already restarted); OneForOne handles each exit alone.
    assert w.status.supervision.total_restarts == counted
    assert [e for e in w.events(plan) if e[1] == "Restarting"] == [("Warning", "Restarting")] * counted


def test_a_deleted_server_is_created_again_only_once_it_is_gone() -> None:
    from helpers.pipeline_world import Child

    w = World(supervision={"strategy": "OneForOne"})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.server_failed()
    w.reconcile(T0 + 10)
    plan = w.reconcile(T0 + 20)
    assert ("ModelServer", "iris") in w.deleted(plan)
    # Its Deployment and pods are still going away: the shell reports it as deleting.
    w.children[("ModelServer", "iris")] = Child("ModelServer", "iris", {"metadata": {"name": "iris"}}, uid="", deleting=True)
    plan = w.reconcile(T0 + 21)
    assert not applied(plan, "ModelServer") and w.deleted(plan) == []
    assert plan.requeue_after == pytest.approx(2.0)
    assert w.cond("Ready").reason == "WaitingForDeletion"
    del w.children[("ModelServer", "iris")]
    plan = w.reconcile(T0 + 23)
    assert applied(plan, "ModelServer") and ("Normal", "ServingRestarted") in w.events(plan)


def test_a_server_that_recovers_before_its_restart_is_not_recreated() -> None:
    w = World(supervision={"strategy": "OneForOne"})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.server_failed()
    w.reconcile(T0 + 10)
    w.server_ready()  # e.g. a new model version arrived: the ModelServer left Failed by itself
    plan = w.reconcile(T0 + 30)
    assert w.deleted(plan) == [] and w.status.supervision.pending == []
    assert w.status.phase == api.PipelinePhase.SERVING


def test_backoff_grows_with_restarts_in_the_window() -> None:
    w = World(supervision={"maxRestarts": 5})
    w.reconcile(T0)
    delays = []
    t = T0
    for number in (1, 2, 3):
        t += 1
        w.fail(number)
        w.reconcile(t)
        delays.append(to_timestamp(w.status.supervision.next_restart_time) - t)
        t += delays[-1]
        w.reconcile(t)
    assert delays == [10, 20, 40]


# ------------------------------------------------------------------ escalation


def test_exceeding_the_intensity_escalates_and_keeps_the_server_serving() -> None:
    w = World(supervision={"maxRestarts": 2})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision={"maxRestarts": 2}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    t = T0 + 10
    w.reconcile(t)
    for number in (2, 3, 4):
        w.fail(number)
        t += 1
        w.reconcile(t)
        if number < 4:
            t = to_timestamp(w.status.supervision.next_restart_time)
            w.reconcile(t)
    st_ = w.status
    assert st_.phase == api.PipelinePhase.FAILED
    failed = w.cond("Failed")
    assert failed.status == "True" and failed.reason == "RestartIntensityExceeded"
    assert "3 restarts within 3600s, maxRestarts is 2" in failed.message
    assert "keeps serving version v1" in failed.message
    assert ("Warning", "RestartIntensityExceeded") in w.events()
    assert w.cond("Ready").status == "True"
    assert w.server() is not None and w.served_uri() == "pvc://mlvisor-models/default/iris-1/v1/"
    # Sticky: nothing starts, the server stays applied.
    plan = w.reconcile(t + 10_000)
    assert not applied(plan, "TrainingJob") and applied(plan, "ModelServer") and w.deleted(plan) == []
    assert w.status.last_run == 4
    # A new generation resumes it: fresh window, the pending training restart happens at once.
    w.set_spec(supervision={"maxRestarts": 5}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    plan = w.reconcile(t + 10_001)
    assert w.cond("Failed").status == "False" and w.cond("Failed").reason == "SpecChanged"
    assert [m["metadata"]["name"] for m in applied(plan, "TrainingJob")] == ["iris-5"]
    assert w.run(5).trigger == api.RunTrigger.RESTART
    assert w.status.supervision.restart_times == []
    assert ("Normal", "Resumed") in w.events(plan)


def test_max_restarts_0_escalates_on_the_first_failure() -> None:
    w = World(supervision={"maxRestarts": 0})
    w.reconcile(T0)
    w.fail(1)
    w.reconcile(T0 + 1)
    assert w.status.phase == api.PipelinePhase.FAILED
    assert "no model is served" in w.cond("Failed").message


def test_a_child_invalid_spec_escalates_at_once() -> None:
    w = World(supervision={"maxRestarts": 5})
    w.reconcile(T0)
    w.fail(1, reason="InvalidSpec", exit_code=None, message="spec.image is empty")
    w.reconcile(T0 + 1)
    assert w.status.phase == api.PipelinePhase.FAILED
    assert w.cond("Failed").reason == "FailurePolicy"
    assert w.status.supervision.last_failure.message == "spec.image is empty"


def test_escalation_by_a_serving_failure_stops_the_run_in_progress() -> None:
    w = World(supervision={"maxRestarts": 0, "strategy": "OneForOne"})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision={"maxRestarts": 0, "strategy": "OneForOne"}, training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)
    w.running(2)
    w.server_failed()
    plan = w.reconcile(T0 + 11)
    assert w.status.phase == api.PipelinePhase.FAILED
    assert w.run(2).phase == api.RunPhase.STOPPED and ("TrainingJob", "iris-2") in w.deleted(plan)
    assert ("ModelServer", "iris") not in w.deleted(plan)
    assert [p.child for p in w.status.supervision.pending] == [api.PipelineChild.SERVING]
    assert w.status.supervision.pending[0].restart_at is None


def test_a_run_started_by_a_lost_write_is_stopped_when_the_retry_escalates() -> None:
    """A training failure restarted by a plan whose status write was lost; before the retry the
    server fails too, and the two exceed the intensity. The run the lost plan started is not
    left training for a failed pipeline: it is recorded, stopped and deleted."""
    sup = {"maxRestarts": 1, "strategy": "OneForOne", "backoff": {"initialSeconds": 0}}
    w = World(supervision=sup)
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.set_spec(supervision=sup, training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)
    w.fail(2)
    lost = w.reconcile(T0 + 11, lose_status=True)
    assert [m["metadata"]["name"] for m in applied(lost, "TrainingJob")] == ["iris-3"]
    w.server_failed()
    plan = w.reconcile(T0 + 12)
    assert w.status.phase == api.PipelinePhase.FAILED
    assert w.run(3).phase == api.RunPhase.STOPPED and ("TrainingJob", "iris-3") in w.deleted(plan)
    assert w.status.last_run == 3
    assert ("ModelServer", "iris") not in w.deleted(plan)


# ------------------------------------------------------------------ failure identity


def test_a_replayed_failure_is_counted_once() -> None:
    w = World(supervision={"maxRestarts": 1})
    w.reconcile(T0)
    w.fail(1)
    w.reconcile(T0 + 1)
    for t in (T0 + 2, T0 + 3, T0 + 4):
        w.reconcile(t)
    assert w.status.supervision.total_restarts == 1 and w.status.phase == api.PipelinePhase.RESTARTING


def test_a_server_that_fails_again_after_recovering_is_a_new_failure() -> None:
    w = World(supervision={"maxRestarts": 5, "strategy": "OneForOne"})
    w.reconcile(T0)
    serving(w, 1, at=T0 + 5)
    w.server_failed()
    w.reconcile(T0 + 10)
    w.server_ready()
    w.reconcile(T0 + 30)
    w.now = T0 + 40
    w.server_failed()  # a new Failed transition of the same ModelServer
    w.reconcile(T0 + 40)
    assert w.status.supervision.total_restarts == 2


def test_a_training_job_that_vanishes_while_running_is_a_failure() -> None:
    w = World()
    w.reconcile(T0)
    w.reconcile(T0 + 1)  # observed: Running
    del w.children[("TrainingJob", "iris-1")]
    w.reconcile(T0 + 2)
    assert w.run(1).phase == api.RunPhase.FAILED and w.run(1).reason == "TrainingJobLost"
    assert w.status.supervision.total_restarts == 1


def test_a_training_job_created_but_not_seen_yet_is_waited_for() -> None:
    w = World()
    plan = w.reconcile(T0)
    w.children.clear()  # the watch has not delivered it yet
    plan = w.reconcile(T0 + 1)
    assert w.status.supervision.total_restarts == 0
    assert [m["metadata"]["name"] for m in applied(plan, "TrainingJob")] == ["iris-1"]


def test_a_training_job_whose_status_write_was_lost_is_adopted() -> None:
    w = World()
    w.reconcile(T0)
    w.body.pop("status")  # the status write after the create was lost
    w.body["status"] = {"lastRun": 0}
    plan = w.reconcile(T0 + 1)
    assert w.status.last_run == 1 and [r.name for r in w.status.runs] == ["iris-1"]
    assert [m["metadata"]["name"] for m in applied(plan, "TrainingJob")] == ["iris-1"]
    assert ("Normal", "RunStarted") not in w.events(plan)


def test_a_failure_whose_restart_write_was_lost_is_counted_when_the_new_run_is_adopted() -> None:
    """With no back-off a failed run is restarted in the reconcile that reads the failure. If that
    reconcile's status write is lost, the retry finds the failed run still in progress in the
    status and the restarted run's TrainingJob beside it: the failure is a restart all the same,
    counted once, and the failed run stays in the history as failed (not stopped, not deleted)."""
    spec = {"supervision": {"strategy": "OneForOne", "maxRestarts": 3, "backoff": {"initialSeconds": 0}}}
    w = World(**spec)
    w.reconcile(T0)
    w.reconcile(T0 + 1)
    w.fail(1)
    lost = w.reconcile(T0 + 2, lose_status=True)
    assert [m["metadata"]["name"] for m in applied(lost, "TrainingJob")] == ["iris-2"]
    plan = w.reconcile(T0 + 3)
    assert w.status.supervision.total_restarts == 1
    assert [(r.number, r.phase) for r in w.status.runs] == [(1, api.RunPhase.FAILED), (2, api.RunPhase.RUNNING)]
    assert w.deleted(plan) == []
    assert w.status.last_run == 2 and not w.status.supervision.pending


def test_two_restarts_whose_writes_were_both_lost_are_both_counted() -> None:
    """Two lost writes in a row, each after a restart: the retry finds runs 2 and 3 it does not
    know. It takes them over one at a time, reading each one's exit before the next: run 2
    failed, so it is a restart, not a run superseded by run 3."""
    spec = {"supervision": {"strategy": "OneForOne", "maxRestarts": 3, "backoff": {"initialSeconds": 0}}}
    w = World(**spec)
    w.reconcile(T0)
    w.fail(1)
    w.reconcile(T0 + 1, lose_status=True)
    w.fail(2)
    lost = w.reconcile(T0 + 2, lose_status=True)
    assert [m["metadata"]["name"] for m in applied(lost, "TrainingJob")] == ["iris-3"]
    plan = w.reconcile(T0 + 3)
    assert w.status.supervision.total_restarts == 2
    assert [(r.number, r.phase) for r in w.status.runs] == [
        (1, api.RunPhase.FAILED), (2, api.RunPhase.FAILED), (3, api.RunPhase.RUNNING)]
    assert w.deleted(plan) == []


# ------------------------------------------------------------------ spec changes and history


def test_a_training_spec_change_supersedes_the_run_in_progress() -> None:
    w = World()
    w.reconcile(T0)
    w.running(1)
    w.reconcile(T0 + 1)
    w.set_spec(training={"estimator": {"class": "sklearn.svm.SVC"}})
    plan = w.reconcile(T0 + 2)
    assert w.run(1).phase == api.RunPhase.STOPPED and w.run(1).reason == "Superseded"
    assert ("TrainingJob", "iris-1") in w.deleted(plan)
    assert w.run(2).trigger == api.RunTrigger.SPEC_CHANGED
    assert applied(plan, "TrainingJob")[0]["spec"]["estimator"]["class"] == "sklearn.svm.SVC"


def test_suspend_is_passed_to_the_run_and_is_not_a_new_run() -> None:
    w = World()
    w.reconcile(T0)
    w.set_spec(training={"suspend": True})
    plan = w.reconcile(T0 + 1)
    assert w.status.last_run == 1
    assert applied(plan, "TrainingJob")[0]["spec"]["suspend"] is True


def test_old_runs_are_deleted_beyond_the_history_limit_but_never_the_served_one() -> None:
    w = World(runHistoryLimit=2, promotion={"mustImprove": True})
    w.reconcile(T0)
    serving(w, 1, 0.99, at=T0 + 1)
    t = T0 + 10
    for number in range(2, 6):  # four worse runs: none promoted
        w.set_spec(runHistoryLimit=2, promotion={"mustImprove": True},
                   training={"estimator": {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"max_depth": number}}})
        w.reconcile(t)
        w.succeed(number, 0.5)
        w.reconcile(t + 1)
        t += 10
    assert [r.name for r in w.status.runs] == ["iris-1", "iris-4", "iris-5"]
    assert set(name for kind, name in w.children if kind == "TrainingJob") == {"iris-1", "iris-4", "iris-5"}


def test_a_rollback_by_the_model_server_is_recorded_and_followed() -> None:
    w = World()
    w.reconcile(T0)
    serving(w, 1, 0.9, at=T0 + 1)
    w.set_spec(training={"estimator": {"class": "sklearn.svm.SVC"}})
    w.reconcile(T0 + 10)
    w.succeed(2, 0.95)
    w.reconcile(T0 + 11)
    assert w.served_uri().endswith("/iris-2/v2/")
    s = w.server()
    s.status = s.status.model_copy(update={
        "phase": api.ServerPhase.ROLLED_BACK,
        "rejected_model_uri": "pvc://mlvisor-models/default/iris-2/v2/",
        "conditions": [*s.status.conditions],
    })
    plan = w.reconcile(T0 + 20)
    assert w.run(2).promoted is False and w.run(2).reason == "RolledBack"
    assert (w.status.serving_run, w.status.serving_version) == ("iris-1", "v1")
    assert applied(plan, "ModelServer")[0]["spec"]["model"]["uri"].endswith("/iris-1/v1/")
    assert ("Warning", "RolledBack") in w.events(plan)
    assert w.status.supervision.total_restarts == 0, "the leaf handled it: no restart in the tree"


# ------------------------------------------------------------------ schedule (virtual time)


DAY = 86400.0
MIDNIGHT = 1_700_006_400.0  # 2023-11-15T00:00:00Z
assert MIDNIGHT % DAY == 0


def test_the_schedule_starts_runs_at_its_times() -> None:
    w = World(schedule="0 3 * * *")
    plan = w.reconcile(MIDNIGHT + 3600)  # 01:00
    assert to_timestamp(w.status.next_run_time) == MIDNIGHT + 3 * 3600
    assert plan.requeue_after == pytest.approx(2 * 3600)
    serving(w, 1, at=MIDNIGHT + 3700)
    w.reconcile(MIDNIGHT + 3 * 3600 - 1)
    assert w.status.last_run == 1
    plan = w.reconcile(MIDNIGHT + 3 * 3600)
    assert w.status.last_run == 2 and w.run(2).trigger == api.RunTrigger.SCHEDULE
    assert to_timestamp(w.status.next_run_time) == MIDNIGHT + DAY + 3 * 3600


def test_a_scheduled_time_during_a_run_is_skipped() -> None:
    w = World(schedule="*/10 * * * *")
    w.reconcile(MIDNIGHT + 1)  # run 1 starts; next at 00:10
    plan = w.reconcile(MIDNIGHT + 600)
    assert w.status.last_run == 1 and ("Normal", "ScheduleSkipped") in w.events(plan)
    assert to_timestamp(w.status.next_run_time) == MIDNIGHT + 1200


def test_missed_times_start_one_run() -> None:
    w = World(schedule="@hourly")
    w.reconcile(MIDNIGHT + 1)
    w.succeed(1, 0.9)
    w.reconcile(MIDNIGHT + 2)
    w.reconcile(MIDNIGHT + 10 * 3600 + 5)  # the operator was down for ten hours
    assert w.status.last_run == 2
    assert to_timestamp(w.status.next_run_time) == MIDNIGHT + 11 * 3600


def test_a_schedule_change_recomputes_the_next_run_time() -> None:
    w = World(schedule="0 3 * * *")
    w.reconcile(MIDNIGHT + 60)
    w.set_spec(schedule="0 1 * * *")
    w.reconcile(MIDNIGHT + 120)
    assert to_timestamp(w.status.next_run_time) == MIDNIGHT + 3600
    w.set_spec()
    w.reconcile(MIDNIGHT + 180)
    assert w.status.next_run_time is None


# ------------------------------------------------------------------ invalid specs


def test_a_name_that_cannot_name_a_service_is_invalid_until_fixed() -> None:
    w = World()
    w.body["metadata"]["name"] = "1iris"
    plan = w.reconcile(T0)
    assert w.status.phase == api.PipelinePhase.FAILED and w.cond("Failed").reason == "InvalidSpec"
    assert "metadata.name" in w.cond("Failed").message
    assert w.events(plan) == [("Warning", "InvalidSpec")] and not applied(plan, "TrainingJob")
    assert w.events(w.reconcile(T0 + 1)) == []


def test_check_pipeline_spec_names_the_training_field() -> None:
    w = World(training={"search": {"grid": {f"p{i}": list(range(10)) for i in range(6)}}})
    problems = check_pipeline_spec(w.pipeline, CONFIG)
    assert problems and problems[0].startswith("spec.training.search.grid")
    w.reconcile(T0)
    assert w.cond("Failed").reason == "InvalidSpec"
    w.set_spec()
    plan = w.reconcile(T0 + 1)
    assert w.cond("Failed").status == "False" and applied(plan, "TrainingJob")


# ------------------------------------------------------------------ the supervision core, one level up


def test_supervise_exit_names_the_children_of_a_supervisor_of_supervisors() -> None:
    policy = Policy(restart=api.RestartType.TRANSIENT, max_restarts=1, period_seconds=60,
                    strategy=api.Strategy.REST_FOR_ONE, children=(0, 1), child_names=("training", "serving"))
    exit_ = Failure(child=0, pod="TrainingJob iris-1", reason="RestartIntensityExceeded", identity="uid-1@t")
    decision, state = supervise_exit(SupervisorState(), exit_, policy, T0)
    assert decision.verdict is Verdict.RESTART and decision.restart == (0, 1)
    assert decision.message.startswith("training (TrainingJob iris-1) failed (reason RestartIntensityExceeded); restarting training and serving (RestForOne)")
    assert state.seen_failures == ("uid-1@t",)
    again, _ = supervise_exit(state, exit_, policy, T0 + 1)
    assert again.verdict is Verdict.DUPLICATE


# ------------------------------------------------------------------ properties


training_outcome = st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(["FailurePolicy", "RestartIntensityExceeded", "DeadlineExceeded"])),
    st.tuples(st.just("succeed"), st.one_of(st.none(), st.floats(0, 1))),
    st.tuples(st.just("vanish"), st.none()),
    st.tuples(st.just("wait"), st.floats(0, 5000)),
    st.tuples(st.just("retrain"), st.integers(0, 10**6)),  # a spec.training change: a new run
)


def play(w: World, kind: str, value, t: float, **spec) -> float:
    """One step of a child's life, as its own controller would report it; returns the new time."""
    current = next((r for r in w.status.runs if r.phase in (api.RunPhase.PENDING, api.RunPhase.RUNNING)), None)
    if kind == "wait":
        return t + value
    if kind == "retrain":
        w.set_spec(training={"randomState": value}, **spec)
    elif current is not None and ("TrainingJob", current.name) in w.children:
        if kind == "fail":
            w.fail(current.number, reason=value)
        elif kind == "succeed":
            w.succeed(current.number, value)
        else:
            del w.children[("TrainingJob", current.name)]
    return t


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    strategy=st.sampled_from(["OneForOne", "RestForOne", "OneForAll"]),
    max_restarts=st.integers(0, 3),
    promotion=st.sampled_from([{}, {"minScore": 0.5}, {"mustImprove": True}]),
    outcomes=st.lists(training_outcome, min_size=1, max_size=12),
)
def test_property_a_working_server_is_never_torn_down_by_a_training_failure(strategy, max_restarts, promotion, outcomes) -> None:
    w = World(supervision={"strategy": strategy, "maxRestarts": max_restarts, "periodSeconds": 3600}, promotion=promotion)
    w.reconcile(T0)
    serving(w, 1, 0.9, at=T0 + 1)
    assert w.status.phase == api.PipelinePhase.SERVING
    promoted = {w.served_uri()}
    t = T0 + 2
    spec = {"supervision": {"strategy": strategy, "maxRestarts": max_restarts, "periodSeconds": 3600}, "promotion": promotion}
    for kind, value in outcomes:
        t = play(w, kind, value, t, **spec) + 1
        plan = w.reconcile(t)
        promoted |= {r.model_uri for r in w.status.runs if r.promoted}
        # The server is never deleted, always applied, never scaled down, only ever given promoted models.
        assert ("ModelServer", "iris") not in w.deleted(plan)
        (server,) = applied(plan, "ModelServer")
        assert server["spec"]["replicas"] == 2
        assert server["spec"]["model"]["uri"] in promoted
        if w.served_uri() != server["spec"]["model"]["uri"]:
            raise AssertionError("the world did not apply the plan")
        w.server_ready()  # the ModelServer serves whatever it was told to (it works throughout)
        assert w.cond("Ready") is None or w.cond("Ready").status == "True" or w.status.phase != api.PipelinePhase.SERVING
        if w.status.phase == api.PipelinePhase.FAILED:
            assert "keeps serving version" in w.cond("Failed").message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(outcomes=st.lists(training_outcome, min_size=1, max_size=10), strategy=st.sampled_from(["OneForOne", "OneForAll"]))
def test_property_replaying_a_reconcile_changes_nothing(outcomes, strategy) -> None:
    w = World(supervision={"strategy": strategy, "maxRestarts": 2})
    t = T0
    w.reconcile(t)
    for kind, value in outcomes:
        t = play(w, kind, value, t, supervision={"strategy": strategy, "maxRestarts": 2}) + 1
        w.reconcile(t)
        if w.server() is not None:
            w.server_ready()
        w.reconcile(t)  # sees what the first one created (a run's TrainingJob: Pending -> Running)
        before = w.body["status"]
        children = {k: c.manifest for k, c in w.children.items()}
        plan = plan_pipeline(w.pipeline, [c.observe() for c in w.children.values()], t, CONFIG)
        assert plan.status.to_wire() == before
        assert [a for a in plan.actions if isinstance(a, (RecordEvent, DeleteResource))] == []
        assert {(a.manifest["kind"], a.manifest["metadata"]["name"]): a.manifest for a in plan.actions
                if isinstance(a, ApplyResource)}.items() <= children.items()


own_outcome = st.one_of(
    st.tuples(st.just("fail"), st.sampled_from(["FailurePolicy", "RestartIntensityExceeded", "DeadlineExceeded"])),
    st.tuples(st.just("succeed"), st.one_of(st.none(), st.floats(0, 1))),
    st.tuples(st.just("wait"), st.floats(0, 5000)),
)


def play_newest(w: World, kind: str, value, t: float) -> float:
    """``play`` for fail, succeed and wait, on the newest TrainingJob that exists (not the
    status's idea of the current run: a world whose status writes are lost has the same
    children, not the same status)."""
    if kind == "wait":
        return t + value
    jobs = [c for (k, _), c in w.children.items() if k == "TrainingJob" and not c.deleting]
    newest = max(jobs, key=lambda c: int(c.manifest["metadata"]["labels"][LABEL_RUN]), default=None)
    if newest is None or (newest.status is not None and newest.status.phase != api.TrainingPhase.RUNNING):
        return t  # nothing runs: nothing to fail or succeed
    number = int(newest.manifest["metadata"]["labels"][LABEL_RUN])
    if kind == "fail":
        w.fail(number, reason=value)
    else:
        w.succeed(number, value)
    return t


def settled(w: World) -> tuple:
    s = w.status
    # The restart times are not compared: a retry records a restart at its own time.
    return (s.phase, s.last_run, [(r.number, r.phase) for r in s.runs], s.supervision.total_restarts,
            len(s.supervision.restart_times), sorted(w.children), s.serving_run)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    steps=st.lists(st.tuples(own_outcome, st.booleans()), min_size=1, max_size=12),
    strategy=st.sampled_from(["OneForOne", "RestForOne", "OneForAll"]),
    max_restarts=st.integers(0, 3),
)
def test_property_a_lost_status_write_loses_no_restart_and_duplicates_no_run(steps, strategy, max_restarts) -> None:
    """The same script twice: once with every status write kept, once with the status writes of
    some reconciles lost (their children's writes land; the next reconcile is the retry). Once
    both have settled they agree on every run, every restart and every child: a lost write is
    retried, never a restart lost or a run started twice. No back-off, and a restart window
    longer than the script: a retry counts a restart at its own time (as OTP counts an exit when
    it handles it), which must not move a restart out of the window or a restart's start.

    Not "vanish": a TrainingJob deleted by someone else after the pipeline saw it, while the
    write that recorded the sighting (Pending -> Running) was lost, looks to the retry like one
    its watch has not delivered yet: it is applied again, not counted as a failure. Nor a spec
    change: a failure read after a change of spec.training (by a retry, or by any reconcile that
    comes late) is judged under the new generation, so a pipeline that a timely read would have
    escalated and then resumed on the change escalates, and waits for the next one."""
    spec = {"supervision": {"strategy": strategy, "maxRestarts": max_restarts, "periodSeconds": 604800,
                            "backoff": {"initialSeconds": 0}}}
    kept, lossy = World(**spec), World(**spec)
    t = T0
    for w in (kept, lossy):
        w.reconcile(t)
    for (kind, value), lose in steps:
        play_newest(lossy, kind, value, t)
        t = play_newest(kept, kind, value, t) + 1
        kept.reconcile(t)
        lossy.reconcile(t, lose_status=lose)
        for w in (kept, lossy):
            if w.server() is not None:
                w.server_ready()
    for w in (kept, lossy):
        w.reconcile(t + 1)
        w.reconcile(t + 1)
    assert settled(lossy) == settled(kept)
    # And settled means settled: one more reconcile changes nothing.
    before = lossy.body["status"]
    plan = plan_pipeline(lossy.pipeline, [c.observe() for c in lossy.children.values()], t + 1, CONFIG)
    assert plan.status.to_wire() == before
    assert [a for a in plan.actions if isinstance(a, (RecordEvent, DeleteResource))] == []
