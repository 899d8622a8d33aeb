"""TrainingJob scenarios: the real operator against the emulator, the test playing the kubelet."""

from __future__ import annotations

import json
import time

from emulator.world import World, eventually, stays

TJ = "TrainingJob"


def job_spec(**overrides):
    spec = {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 10}},
        "supervision": {
            "strategy": "OneForOne",
            "maxRestarts": 3,
            "periodSeconds": 60,
            "backoff": {"initialSeconds": 0.2, "factor": 1, "maxSeconds": 0.2},
        },
    }
    for key, value in overrides.items():
        if key == "supervision":
            spec["supervision"] = {**spec["supervision"], **value}
        else:
            spec[key] = value
    return spec


def search_spec(workers: int, strategy: str, **supervision):
    return job_spec(
        search={"grid": {"max_depth": [2, 4, 8], "n_estimators": [5, 10]}, "cv": 2},
        workers=workers,
        supervision={"strategy": strategy, **supervision},
    )


def test_a_job_runs_to_succeeded(world: World, operator) -> None:
    world.create(TJ, "iris", job_spec())
    pod = world.wait_pod("iris-worker-0-1")
    labels = pod["metadata"]["labels"]
    assert labels["app.kubernetes.io/managed-by"] == "mlvisor"
    assert labels["app.kubernetes.io/instance"] == "iris"
    owner = pod["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (TJ, "iris", True)
    assert owner["uid"] == world.get(TJ, "iris")["metadata"]["uid"]
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    assert pod["spec"]["containers"][0]["image"] == "mlvisor:test"
    world.wait_phase(TJ, "iris", "Running")
    world.wait_event("iris", "Created")

    world.run_pod("iris-worker-0-1")
    version = world.status(TJ, "iris")["version"]
    summary = {"version": version, "metrics": {"accuracy": 0.97}, "score_name": "accuracy", "sklearn_version": "1.9.1"}
    world.exit_pod("iris-worker-0-1", 0, message=json.dumps(summary))

    world.wait_condition(TJ, "iris", "Succeeded")
    status = world.status(TJ, "iris")
    assert status["phase"] == "Succeeded"
    assert status["observedGeneration"] == 1
    assert status["model"]["uri"] == f"pvc://mlvisor-models/default/iris/{version}/"
    assert status["model"]["version"] == version
    assert status["model"]["metrics"] == {"accuracy": 0.97}
    assert status["model"]["score"] == 0.97
    assert status["completionTime"]
    world.wait_event("iris", "Succeeded")
    assert operator.metric("mlvisor_reconciles_total", kind=TJ, result="ok") > 0
    assert operator.metric("mlvisor_event_to_action_seconds_count") > 0


def test_exit_1_is_restarted_after_backoff(world: World, operator) -> None:
    world.create(TJ, "crash", job_spec())
    world.wait_pod("crash-worker-0-1")
    world.run_pod("crash-worker-0-1")
    world.exit_pod("crash-worker-0-1", 1)

    world.wait_event("crash", "Restarting")
    world.wait_pod("crash-worker-0-2")  # after the 0.2 s back-off, no event needed: the requeue timer
    # The status patch follows the pod's creation: wait for it rather than race it.
    status = eventually(lambda: (s := world.status(TJ, "crash"))["workers"][0]["attempt"] == 2 and s,
                        what="status showing attempt 2")
    sup = status["supervision"]
    assert sup["restartsInWindow"] == 1 and sup["totalRestarts"] == 1
    assert len(sup["restartTimes"]) == 1
    assert sup["lastFailure"]["exitCode"] == 1 and sup["lastFailure"]["pod"] == "crash-worker-0-1"
    assert status["workers"][0]["attempt"] == 2
    assert world.live_pods("crash") == {"crash-worker-0-1", "crash-worker-0-2"}  # the failed one is kept for logs
    eventually(lambda: operator.metric("mlvisor_restarts_total", kind=TJ) >= 1, what="restarts metric")


def test_exit_2_fails_the_job_at_once(world: World, operator) -> None:
    world.create(TJ, "badspec", job_spec())
    world.wait_pod("badspec-worker-0-1")
    world.exit_pod("badspec-worker-0-1", 2)

    failed = world.wait_condition(TJ, "badspec", "Failed")
    status = world.status(TJ, "badspec")
    assert status["phase"] == "Failed"
    assert status["supervision"]["totalRestarts"] == 0
    assert failed["reason"] != "RestartIntensityExceeded"
    assert any(e["type"] == "Warning" for e in world.events("badspec"))
    stays(lambda: world.live_pods("badspec") == {"badspec-worker-0-1"}, 1.0, "a Failed job starts no pod")


def test_eviction_restarts_without_counting(world: World, operator) -> None:
    world.create(TJ, "evicted", job_spec(supervision={"maxRestarts": 0}))
    world.wait_pod("evicted-worker-0-1")
    world.run_pod("evicted-worker-0-1")
    world.evict_pod("evicted-worker-0-1")

    world.wait_pod("evicted-worker-0-2")
    sup = world.status(TJ, "evicted")["supervision"]
    assert sup["restartsInWindow"] == 0  # maxRestarts 0 would have escalated a counted failure
    assert sup["totalRestarts"] == 1
    assert sup["lastFailure"]["reason"] == "Evicted" and sup["lastFailure"]["action"] == "Ignore"
    assert world.status(TJ, "evicted")["phase"] in ("Running", "Restarting")


def test_one_for_all_restarts_every_worker(world: World, operator) -> None:
    world.create(TJ, "ofa", search_spec(3, "OneForAll"))
    first = {f"ofa-worker-{i}-1" for i in range(3)}
    world.wait_pods("ofa", first)
    for name in first:
        world.run_pod(name)
    world.exit_pod("ofa-worker-1-1", 1)

    second = {f"ofa-worker-{i}-2" for i in range(3)}
    # the running peers are stopped, the failed pod is kept; every worker gets a new attempt
    world.wait_pods("ofa", second | {"ofa-worker-1-1"})
    sup = world.status(TJ, "ofa")["supervision"]
    assert sup["restartsInWindow"] == 1, "a group restart counts once"


def test_rest_for_one_restarts_the_failed_worker_and_those_after_it(world: World, operator) -> None:
    world.create(TJ, "rfo", search_spec(3, "RestForOne"))
    first = {f"rfo-worker-{i}-1" for i in range(3)}
    world.wait_pods("rfo", first)
    for name in first:
        world.run_pod(name)
    world.exit_pod("rfo-worker-1-1", 1)

    world.wait_pods("rfo", {"rfo-worker-0-1", "rfo-worker-1-1", "rfo-worker-1-2", "rfo-worker-2-2"})
    assert world.status(TJ, "rfo")["supervision"]["restartsInWindow"] == 1


def test_fourth_failure_in_the_window_escalates(world: World, operator, cluster) -> None:
    world.create(TJ, "flaky", search_spec(3, "OneForOne", maxRestarts=3, backoff={"initialSeconds": 0, "factor": 1, "maxSeconds": 0}))
    world.wait_pods("flaky", {f"flaky-worker-{i}-1" for i in range(3)})
    for i in (1, 2):
        world.run_pod(f"flaky-worker-{i}-1")
    for attempt in range(1, 5):
        name = f"flaky-worker-0-{attempt}"
        world.wait_pod(name)
        world.run_pod(name)
        world.exit_pod(name, 1)

    failed = world.wait_condition(TJ, "flaky", "Failed", reason="RestartIntensityExceeded")
    assert "3" in failed["message"] and "60" in failed["message"], failed["message"]
    status = world.status(TJ, "flaky")
    assert status["phase"] == "Failed"
    assert status["supervision"]["restartsInWindow"] == 4
    world.wait_event("flaky", "RestartIntensityExceeded")
    # the remaining workers are deleted, highest index first; the failed attempts stay for their logs
    world.wait_pods("flaky", {f"flaky-worker-0-{a}" for a in range(1, 5)})
    deleted = [name for (_, _, name) in cluster.emulator.deletions if name.startswith("flaky-worker-")]
    assert deleted[-2:] == ["flaky-worker-2-1", "flaky-worker-1-1"], deleted
    assert not any(n.startswith("flaky-worker-0-5") for n in world.pods("flaky"))
    eventually(
        lambda: operator.metric("mlvisor_escalations_total", kind=TJ, reason="RestartIntensityExceeded") == 1,
        what="escalations metric",
    )


def test_operator_killed_mid_job_neither_duplicates_nor_double_counts(world: World, operator) -> None:
    world.create(TJ, "resilient", job_spec())
    world.wait_pod("resilient-worker-0-1")
    world.run_pod("resilient-worker-0-1")
    world.exit_pod("resilient-worker-0-1", 1)
    world.wait_pod("resilient-worker-0-2")
    world.run_pod("resilient-worker-0-2")
    eventually(lambda: world.status(TJ, "resilient")["phase"] == "Running", what="Running again")

    operator.kill()
    world.exit_pod("resilient-worker-0-2", 1)  # fails while nobody watches
    operator.start()

    world.wait_pod("resilient-worker-0-3")
    sup = world.status(TJ, "resilient")["supervision"]
    assert (sup["restartsInWindow"], sup["totalRestarts"]) == (2, 2)

    operator.kill()  # and once more, with nothing new to see
    operator.start()
    stays(
        lambda: world.live_pods("resilient") == {f"resilient-worker-0-{a}" for a in (1, 2, 3)}
        and world.status(TJ, "resilient")["supervision"]["totalRestarts"] == 2,
        1.5,
        "a restarted operator creates no pod and counts no failure twice",
    )
    assert [e["reason"] for e in world.events("resilient")].count("Restarting") == 2


def test_deleting_a_job_removes_its_pods(world: World, operator) -> None:
    world.create(TJ, "gone", search_spec(2, "OneForOne"))
    world.wait_pods("gone", {"gone-worker-0-1", "gone-worker-1-1"})
    world.delete(TJ, "gone")
    eventually(lambda: world.live_pods("gone") == set(), what="pods garbage-collected")
    stays(lambda: world.live_pods("gone") == set(), 1.0, "no pod is recreated for a deleted job")


def test_suspend_deletes_running_pods_and_resume_starts_them_again(world: World, operator) -> None:
    world.create(TJ, "pausable", job_spec())
    world.wait_pod("pausable-worker-0-1")
    world.wait_phase(TJ, "pausable", "Running")  # suspend a job that has started, not one being created
    world.run_pod("pausable-worker-0-1")
    world.patch_spec(TJ, "pausable", {"suspend": True})
    world.wait_phase(TJ, "pausable", "Suspended")
    world.wait_pods("pausable", set())
    world.wait_event("pausable", "Suspended")

    world.patch_spec(TJ, "pausable", {"suspend": False})
    world.wait_pod("pausable-worker-0-2")
    assert world.status(TJ, "pausable")["supervision"]["restartsInWindow"] == 0
    world.wait_event("pausable", "Resumed")


def test_active_deadline_fails_the_job(world: World, operator) -> None:
    world.create(TJ, "slow", job_spec(activeDeadlineSeconds=1))
    world.wait_pod("slow-worker-0-1")
    world.run_pod("slow-worker-0-1")
    world.wait_condition(TJ, "slow", "Failed", reason="DeadlineExceeded", timeout=10)
    world.wait_pods("slow", set())


def test_ttl_after_finished_deletes_the_pods(world: World, operator) -> None:
    world.create(TJ, "tidy", job_spec(ttlSecondsAfterFinished=1))
    world.wait_pod("tidy-worker-0-1")
    world.exit_pod("tidy-worker-0-1", 0)
    world.wait_phase(TJ, "tidy", "Succeeded")
    world.wait_pods("tidy", set(), timeout=10)
    assert world.status(TJ, "tidy")["phase"] == "Succeeded"


def test_an_invalid_job_gets_invalid_spec_and_no_pods(world: World, operator) -> None:
    world.create(TJ, "typo", job_spec(estimator={"class": "os.system"}))
    failed = world.wait_condition(TJ, "typo", "Failed", reason="InvalidSpec")
    assert "spec.estimator.class" in failed["message"]
    assert world.status(TJ, "typo")["phase"] == "Failed"
    warning = world.wait_event("typo", "InvalidSpec")
    assert warning["type"] == "Warning"
    stays(lambda: world.pods("typo") == {} and world.event_reasons("typo").count("InvalidSpec") == 1, 1.0,
          "no pod, and one Warning per generation, not a retry loop")
    assert world.status(TJ, "typo")["observedGeneration"] == 1
    assert operator.proc.poll() is None


def test_a_grid_too_large_for_the_operator_gets_invalid_spec(world: World, operator) -> None:
    # passes the CRD schema (each list is short enough) but not the operator's own limit
    grid = {f"p{i}": list(range(10)) for i in range(6)}  # 10**6 combinations
    world.create(TJ, "huge", job_spec(search={"grid": grid, "cv": 2}, workers=2))
    failed = world.wait_condition(TJ, "huge", "Failed", reason="InvalidSpec")
    assert "spec.search.grid" in failed["message"]
    assert world.wait_event("huge", "InvalidSpec")["type"] == "Warning"
    stays(lambda: world.pods("huge") == {}, 0.5, "no pod for an invalid job")


def test_the_preflight_check_refuses_what_scikit_learn_would_refuse_before_any_pod(world: World, operator) -> None:
    """Passes the CRD (params are free-form) but not scikit-learn: InvalidSpec, every problem named, no pod."""
    world.create(TJ, "typos", job_spec(
        estimator={"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimator": 10}},
        search={"grid": {"max_depth": [2]}, "scoring": "acuracy"},
    ))
    failed = world.wait_condition(TJ, "typos", "Failed", reason="InvalidSpec")
    assert "spec.estimator.params.n_estimator is not a parameter" in failed["message"]
    assert "(did you mean 'n_estimators'?)" in failed["message"]
    assert "spec.search.scoring 'acuracy' is not a scikit-learn scorer" in failed["message"]
    warning = world.wait_event("typos", "InvalidSpec")
    assert warning["type"] == "Warning" and "n_estimator" in warning["message"]
    stays(lambda: world.pods("typos") == {}, 1.0, "no pod for a spec scikit-learn refuses")
    assert operator.proc.poll() is None


def test_a_builtin_dataset_unfit_for_the_estimator_gets_invalid_spec_before_any_pod(world: World, operator) -> None:
    """The data of a builtin dataset is known statically: the operator's pre-flight judges it, in the
    trainer's words (the same judge), and never creates the pod that would fail 2 s into the run."""
    from mlvisor import api
    from mlvisor.trainer.preflight import spec_problems

    spec = job_spec(dataset={"builtin": "diabetes"})
    world.create(TJ, "diabetes", spec)
    failed = world.wait_condition(TJ, "diabetes", "Failed", reason="InvalidSpec")
    assert failed["message"] == "; ".join(spec_problems(api.TrainingJobSpec.model_validate(spec)))
    assert failed["message"].startswith("the target looks continuous: 214 distinct values over 442 rows")
    stays(lambda: world.pods("diabetes") == {}, 1.0, "no pod for a classifier on a continuous target")


def test_the_workers_termination_message_is_in_status_condition_and_event(world: World, operator) -> None:
    """What `kubectl describe tj` shows: the trainer's own reason, not only an exit code."""
    said = "invalid spec: column 'price' is not in data/houses.csv; columns are: rooms, area"
    world.create(TJ, "houses", job_spec())
    world.wait_pod("houses-worker-0-1")
    world.exit_pod("houses-worker-0-1", 2, message=said)
    failed = world.wait_condition(TJ, "houses", "Failed", reason="FailurePolicy")
    assert failed["message"].endswith(f'It said: "{said}"')
    status = world.status(TJ, "houses")
    assert status["supervision"]["lastFailure"]["message"] == said
    assert status["supervision"]["lastFailure"]["exitCode"] == 2
    assert said in world.wait_event("houses", "FailurePolicy")["message"]


def test_a_sigkilled_worker_is_said_to_be_killed_not_to_have_said_its_last_log_line(world: World, operator) -> None:
    """What a kubelet reports for a SIGKILLed worker: exit 137, no termination message, so
    FallbackToLogsOnError put the log tail there; and the conditions every pod has."""
    tail = ('{"ts": "2026-12-04T15:53:54.149Z", "level": "info", "event": "fit", "msg": "fitting on 120 rows"}\n'
            '{"ts": "2026-12-04T15:53:54.576Z", "level": "info", "event": "metrics", "msg": "held-out accuracy 0.9667"}')
    world.create(TJ, "torn", job_spec())
    world.wait_pod("torn-worker-0-1")
    container = world.pod("torn-worker-0-1")["spec"]["containers"][0]["name"]
    world.set_pod_status("torn-worker-0-1", {
        "phase": "Failed",
        "conditions": [{"type": t, "status": "True"} for t in ("Initialized", "PodReadyToStartContainers", "PodScheduled")]
        + [{"type": "Ready", "status": "False"}, {"type": "ContainersReady", "status": "False"}],
        "containerStatuses": [{"name": container, "ready": False, "restartCount": 0, "image": "mlvisor:dev", "imageID": "",
                               "state": {"terminated": {"exitCode": 137, "reason": "Error", "message": tail}}}],
    })
    event = world.wait_event("torn", "Restarting")["message"]
    assert event == (
        "worker pod torn-worker-0-1 was killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        "restarting it in 0.2s (1 restarts within 60s, maxRestarts is 3). "
        'It left no termination message; its last log line: "held-out accuracy 0.9667"'
    )
    last = world.status(TJ, "torn")["supervision"]["lastFailure"]
    assert last["message"] == (
        "killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        'it left no termination message; its last log line: "held-out accuracy 0.9667"'
    )
    restarting = world.condition(TJ, "torn", "Restarting")
    assert restarting is None or "Initialized" not in restarting["message"]


def test_an_oom_killed_worker_says_so_with_its_memory_limit(world: World, operator) -> None:
    world.create(TJ, "oom", job_spec(resources={"limits": {"memory": "300Mi"}}))
    world.wait_pod("oom-worker-0-1")
    world.exit_pod("oom-worker-0-1", 137, reason="OOMKilled", message="INFO: fitting")
    event = world.wait_event("oom", "Restarting")["message"]
    assert event.startswith(
        "worker pod oom-worker-0-1 was OOM-killed (reason OOMKilled, exit 137): it needed more memory than its "
        "limit of 300Mi; raise spec.resources.limits.memory; restarting it in"
    ), event


def _quiet(operator) -> float:
    """The operator's API requests once they have stopped changing (its last write's echo handled)."""
    def settled() -> float | None:
        before = operator.metric("mlvisor_api_requests_total")
        time.sleep(0.5)
        after = operator.metric("mlvisor_api_requests_total")
        return after if after == before else None
    return eventually(settled, what="the operator to go quiet")


def test_a_change_that_no_reconcile_reads_makes_no_api_call(world: World, operator) -> None:
    """Another tool's annotation on a settled job and on its pod: the watch events are seen and
    dropped (nothing a reconcile reads changed), no GET, no LIST, no write."""
    world.create(TJ, "noop", job_spec())
    world.wait_pod("noop-worker-0-1")
    world.wait_phase(TJ, "noop", "Running")
    requests = _quiet(operator)
    assert requests > 0  # the counter counts: creating the job took requests

    def annotate(path: str) -> None:
        world.request("PATCH", path, {"metadata": {"annotations": {"example.com/owner": "team-a"}}},
                      "application/merge-patch+json")

    for kind, path in ((TJ, world.cr_path(TJ, "noop")), ("Pod", f"/api/v1/namespaces/{world.ns}/pods/noop-worker-0-1")):
        unchanged = operator.metric("mlvisor_watch_events_total", kind=kind, result="unchanged")
        annotate(path)
        eventually(lambda kind=kind, unchanged=unchanged: operator.metric(
            "mlvisor_watch_events_total", kind=kind, result="unchanged") > unchanged,
            what=f"the {kind} annotation's event seen and dropped")
    stays(lambda: operator.metric("mlvisor_api_requests_total") == requests, 1.0, "no API call for a no-op change")

    # The control: a change a reconcile does read (the pod runs) is queued and costs requests.
    world.run_pod("noop-worker-0-1")
    eventually(lambda: operator.metric("mlvisor_api_requests_total") > requests, what="a reconcile for a real change")
