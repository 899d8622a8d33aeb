"""plan_serving on virtual time: rollout, readiness, restart counting, rollback and failure."""

from __future__ import annotations

from typing import Any

import pytest

from mlvisor import api
from mlvisor.api.exits import EXIT_MODEL_UNLOADABLE
from mlvisor.operator.plan import (
    ApplyDeployment,
    ApplyService,
    ModelRef,
    ObservedPod,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.planners.conditions import WAITING_REPORTED_AFTER_SECONDS, find_condition
from mlvisor.operator.planners.serving import plan_serving

CONFIG = OperatorConfig()
T0 = 1_700_000_000.0
V1 = ModelRef("pvc://mlvisor-models/ml/iris/aaaa-1/", "aaaa-1")
V2 = ModelRef("pvc://mlvisor-models/ml/iris/bbbb-1/", "bbbb-1")


def make_server(**spec: Any) -> api.ModelServer:
    return api.ModelServer.model_validate(
        {
            "metadata": {"name": "iris", "namespace": "ml", "uid": "u-1", "generation": 1},
            "spec": {"model": {"trainingJobRef": {"name": "iris"}}, "replicas": 2, **spec},
        }
    )


def pod(name: str, model: ModelRef, *, ready: bool = True, restarts: int = 0, **kw: Any) -> ObservedPod:
    kw.setdefault("phase", "Running")
    if restarts:
        kw.setdefault("exit_code", 1)
        kw.setdefault("reason", "Error")
    return ObservedPod(name=name, index=0, ready=ready, restart_count=restarts, model_uri=model.uri, **kw)


class Server:
    def __init__(self, server: api.ModelServer) -> None:
        self.server = server

    def reconcile(self, pods: list[ObservedPod], source: ModelRef | None, now: float) -> Plan:
        plan = plan_serving(self.server, None, pods, source, now, CONFIG)
        assert plan.status is not None
        wire = {**self.server.model_dump(mode="json", by_alias=True, exclude={"status"}), "status": plan.status.to_wire()}
        self.server = api.ModelServer.model_validate(wire)
        return plan

    @property
    def status(self) -> api.ModelServerStatus:
        assert self.server.status is not None
        return self.server.status

    def cond(self, type_: str) -> api.Condition:
        c = find_condition(self.status.conditions, type_)
        assert c is not None, f"no {type_} condition"
        return c


def deployment(plan: Plan) -> dict:
    (d,) = [a.manifest for a in plan.actions if isinstance(a, ApplyDeployment)]
    return d


def served_uri(plan: Plan) -> str:
    return deployment(plan)["spec"]["template"]["metadata"]["annotations"]["mlvisor.dev/model-uri"]


def events(plan: Plan) -> list[tuple[str, str]]:
    return [(a.type, a.reason) for a in plan.actions if isinstance(a, RecordEvent)]


def ready_on(model: ModelRef, n: int = 2, prefix: str = "iris-a") -> list[ObservedPod]:
    return [pod(f"{prefix}-{i}", model) for i in range(n)]


def test_waits_for_the_model() -> None:
    s = Server(make_server())
    plan = s.reconcile([], None, T0)
    assert s.status.phase == api.ServerPhase.PENDING
    ready = s.cond("Ready")
    assert ready.status == "False" and ready.reason == "WaitingForModel"
    assert plan.requeue_after and plan.requeue_after > 0
    assert [type(a) for a in plan.actions] == [ApplyService]


def test_rollout_loading_then_ready() -> None:
    s = Server(make_server(modelName="flowers"))
    plan = s.reconcile([], V1, T0)
    assert served_uri(plan) == V1.uri and deployment(plan)["spec"]["replicas"] == 2
    assert isinstance(plan.actions[0], ApplyService)
    assert ("Normal", "Deploying") in events(plan)
    assert s.status.phase == api.ServerPhase.LOADING
    assert s.status.model_uri == V1.uri and s.status.model_version == "aaaa-1"
    assert s.status.url == "http://iris.ml.svc:80/v2/models/flowers"

    plan = s.reconcile([pod("iris-a-0", V1), pod("iris-a-1", V1, ready=False)], V1, T0 + 5)
    assert s.status.phase == api.ServerPhase.LOADING
    assert s.status.ready_replicas == 1 and s.status.replicas == 2
    assert s.status.last_good_model_uri is None

    plan = s.reconcile(ready_on(V1), V1, T0 + 6)
    assert s.status.phase == api.ServerPhase.READY
    assert s.cond("Ready").status == "True"
    assert s.status.last_good_model_version == "aaaa-1"
    assert events(plan) == []


def test_some_replicas_of_a_good_model_lost_is_degraded() -> None:
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    s.reconcile(ready_on(V1), V1, T0 + 1)
    s.reconcile([pod("iris-a-0", V1), pod("iris-a-1", V1, ready=False)], V1, T0 + 2)
    assert s.status.phase == api.ServerPhase.DEGRADED
    assert s.cond("Degraded").status == "True"
    s.reconcile(ready_on(V1), V1, T0 + 3)
    assert s.status.phase == api.ServerPhase.READY and s.cond("Degraded").status == "False"


def test_restart_counting_counts_every_increment_once_across_replays() -> None:
    s = Server(make_server(supervision={"maxRestarts": 10, "periodSeconds": 300}))
    s.reconcile(ready_on(V1), V1, T0)
    s.reconcile([pod("iris-a-0", V1, restarts=1), pod("iris-a-1", V1)], V1, T0 + 1)
    assert s.status.supervision.restarts_in_window == 1
    plan = s.reconcile([pod("iris-a-0", V1, restarts=3), pod("iris-a-1", V1)], V1, T0 + 2)
    assert s.status.supervision.restarts_in_window == 3  # 1 -> 3 is two failures
    assert events(plan) == [("Warning", "ServerRestarted")] * 2
    for k in range(4):  # the same observation replayed
        again = s.reconcile([pod("iris-a-0", V1, restarts=3), pod("iris-a-1", V1)], V1, T0 + 3 + k)
        assert events(again) == []
    assert s.status.supervision.total_restarts == 3
    assert s.status.supervision.seen_failures == ["iris-a-0#3"]
    # A pod the Deployment replaced after it failed is one more failure.
    s.reconcile([pod("iris-a-0", V1, restarts=3, phase="Failed", ready=False), pod("iris-a-1", V1)], V1, T0 + 9)
    assert s.status.supervision.total_restarts == 4


def test_evicted_server_pods_are_not_counted() -> None:
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    s.reconcile(
        [pod("iris-a-0", V1, phase="Failed", ready=False, reason="Evicted", exit_code=None), pod("iris-a-1", V1)],
        V1,
        T0 + 1,
    )
    assert s.status.supervision.restarts_in_window == 0 and s.status.supervision.total_restarts == 1


def test_intensity_exceeded_rolls_back_to_the_last_good_version() -> None:
    s = Server(make_server(supervision={"maxRestarts": 2, "periodSeconds": 300, "onExhausted": "Rollback"}))
    s.reconcile(ready_on(V1), V1, T0)
    assert s.status.last_good_model_uri == V1.uri
    plan = s.reconcile(ready_on(V1), V2, T0 + 10)  # new version published
    assert served_uri(plan) == V2.uri and s.status.phase == api.ServerPhase.LOADING
    crashing = [pod("iris-b-0", V2, ready=False, restarts=2), *ready_on(V1)]
    s.reconcile(crashing, V2, T0 + 20)
    assert s.status.phase == api.ServerPhase.LOADING
    crashing = [pod("iris-b-0", V2, ready=False, restarts=3), *ready_on(V1)]
    plan = s.reconcile(crashing, V2, T0 + 30)
    assert served_uri(plan) == V1.uri
    assert s.status.phase == api.ServerPhase.ROLLED_BACK
    assert s.status.rejected_model_uri == V2.uri
    assert s.status.model_version == "aaaa-1"
    rolled = s.cond("RolledBack")
    assert rolled.status == "True" and rolled.reason == "RestartIntensityExceeded"
    assert "3 restarts within 300s, maxRestarts is 2" in rolled.message
    assert s.status.supervision.restart_times == []
    assert ("Warning", "RolledBack") in events(plan)

    # The bad model's pods dying on their way out are not counted; the source still
    # points at the rejected version, and it is not deployed again.
    plan = s.reconcile([pod("iris-b-0", V2, ready=False, restarts=7), *ready_on(V1)], V2, T0 + 40)
    assert served_uri(plan) == V1.uri
    assert s.status.phase == api.ServerPhase.ROLLED_BACK
    assert s.status.supervision.restart_times == []
    assert s.cond("Ready").status == "True"

    # A newer version is deployed again.
    v3 = ModelRef("pvc://mlvisor-models/ml/iris/cccc-1/", "cccc-1")
    plan = s.reconcile(ready_on(V1), v3, T0 + 50)
    assert served_uri(plan) == v3.uri and s.status.phase == api.ServerPhase.LOADING
    assert s.cond("RolledBack").status == "False"


def test_intensity_exceeded_without_a_good_version_fails_and_scales_to_zero() -> None:
    s = Server(make_server(supervision={"maxRestarts": 1, "periodSeconds": 60}))
    s.reconcile([], V1, T0)
    plan = s.reconcile([pod("iris-a-0", V1, ready=False, restarts=2)], V1, T0 + 5)
    assert s.status.phase == api.ServerPhase.FAILED
    assert deployment(plan)["spec"]["replicas"] == 0
    assert any(isinstance(a, ApplyService) for a in plan.actions)  # the Service stays
    assert s.cond("Failed").reason == "RestartIntensityExceeded"
    assert s.cond("Ready").status == "False"
    assert ("Warning", "Failed") in events(plan)
    # Sticky: the same model, later, stays at zero.
    plan = s.reconcile([], V1, T0 + 500)
    assert s.status.phase == api.ServerPhase.FAILED and deployment(plan)["spec"]["replicas"] == 0
    assert events(plan) == []
    # A new model version recovers it with a fresh window.
    plan = s.reconcile([], V2, T0 + 600)
    assert s.status.phase == api.ServerPhase.LOADING
    assert deployment(plan)["spec"]["replicas"] == 2 and served_uri(plan) == V2.uri
    assert s.cond("Failed").status == "False"


def test_on_exhausted_fail_never_rolls_back() -> None:
    s = Server(make_server(supervision={"maxRestarts": 0, "onExhausted": "Fail"}))
    s.reconcile(ready_on(V1), V1, T0)
    s.reconcile(ready_on(V1), V2, T0 + 1)
    plan = s.reconcile([pod("iris-b-0", V2, restarts=1, ready=False), *ready_on(V1)], V2, T0 + 2)
    assert s.status.phase == api.ServerPhase.FAILED
    assert served_uri(plan) == V2.uri and deployment(plan)["spec"]["replicas"] == 0


def test_rollback_target_equal_to_current_fails() -> None:
    s = Server(make_server(supervision={"maxRestarts": 0}))
    s.reconcile(ready_on(V1), V1, T0)
    plan = s.reconcile([pod("iris-a-0", V1, restarts=1), pod("iris-a-1", V1)], V1, T0 + 1)
    assert s.status.phase == api.ServerPhase.FAILED
    assert deployment(plan)["spec"]["replicas"] == 0


def test_a_new_generation_unsticks_failed() -> None:
    s = Server(make_server(supervision={"maxRestarts": 0}))
    s.reconcile([], V1, T0)
    s.reconcile([pod("iris-a-0", V1, restarts=1, ready=False)], V1, T0 + 1)
    assert s.status.phase == api.ServerPhase.FAILED
    s.server = s.server.model_copy(
        update={"metadata": s.server.metadata.model_copy(update={"generation": 2})}
    )
    plan = s.reconcile([], V1, T0 + 2)
    assert s.status.phase == api.ServerPhase.LOADING and deployment(plan)["spec"]["replicas"] == 2


def test_file_uris_are_accepted_for_the_local_runtime() -> None:
    s = Server(make_server())
    local = ModelRef("file:///srv/models/iris/v7/", "v7")
    plan = s.reconcile([], local, T0)
    assert served_uri(plan) == local.uri


def test_invalid_names_and_uris_end_in_invalid_spec() -> None:
    srv = api.ModelServer.model_validate(
        {"metadata": {"name": "1iris", "generation": 1}, "spec": {"model": {"uri": V1.uri}}}
    )
    s = Server(srv)
    plan = s.reconcile([], V1, T0)
    assert s.status.phase == api.ServerPhase.FAILED
    assert s.cond("Failed").reason == "InvalidSpec" and "metadata.name" in s.cond("Failed").message
    assert events(plan) == [("Warning", "InvalidSpec")]
    assert not any(isinstance(a, ApplyDeployment | ApplyService) for a in plan.actions)
    assert events(s.reconcile([], V1, T0 + 1)) == []  # no event storm

    s2 = Server(make_server())
    s2.reconcile([], ModelRef("pvc://claim-only/", "x"), T0)
    assert s2.cond("Failed").reason == "InvalidSpec"


@pytest.mark.parametrize("replicas", [0])
def test_scaled_to_zero_by_the_user(replicas: int) -> None:
    s = Server(make_server(replicas=replicas))
    plan = s.reconcile([], V1, T0)
    assert deployment(plan)["spec"]["replicas"] == 0
    assert s.cond("Ready").reason == "ScaledToZero"


UNLOADABLE = "cannot load the model: /models/ml/iris/bbbb-1/model.skops is corrupted or truncated"


def test_a_model_that_cannot_load_rolls_back_on_the_first_exit_with_the_servers_reason() -> None:
    """Exit code 4 (the server's let-it-crash) escalates at once under the default supervision."""
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    s.reconcile([*ready_on(V1), pod("iris-b-0", V2, ready=False)], V2, T0 + 10)
    assert s.status.phase == api.ServerPhase.LOADING
    crashed = pod("iris-b-0", V2, ready=False, restarts=1, exit_code=EXIT_MODEL_UNLOADABLE, message=UNLOADABLE)
    plan = s.reconcile([*ready_on(V1), crashed], V2, T0 + 12)
    assert s.status.phase == api.ServerPhase.ROLLED_BACK
    assert served_uri(plan) == V1.uri and s.status.rejected_model_uri == V2.uri
    rolled = s.cond("RolledBack")
    assert rolled.reason == "ModelUnloadable" and "corrupted or truncated" in rolled.message
    assert ("server pod iris-b-0 cannot load model version bbbb-1: /models/ml/iris/bbbb-1/model.skops is corrupted "
            "or truncated") in rolled.message
    last = s.status.supervision.last_failure
    assert last is not None and last.exit_code == 4 and last.message == UNLOADABLE
    warning = [a for a in plan.actions if isinstance(a, RecordEvent) and a.reason == "RolledBack"]
    assert warning and "corrupted or truncated" in warning[0].message


def test_a_model_that_cannot_load_with_nothing_to_roll_back_to_fails_with_the_reason() -> None:
    s = Server(make_server(replicas=1))
    s.reconcile([pod("iris-b-0", V2, ready=False)], V2, T0)
    crashed = pod("iris-b-0", V2, ready=False, restarts=1, exit_code=4, message=UNLOADABLE)
    plan = s.reconcile([crashed], V2, T0 + 3)
    assert s.status.phase == api.ServerPhase.FAILED
    assert s.cond("Failed").reason == "ModelUnloadable" and "corrupted or truncated" in s.cond("Failed").message
    assert deployment(plan)["spec"]["replicas"] == 0


def test_an_ordinary_crash_quotes_the_log_tail_as_its_last_log_line_in_the_restart_event() -> None:
    s = Server(make_server(replicas=1))
    s.reconcile([pod("iris-a-0", V1)], V1, T0)
    plan = s.reconcile([pod("iris-a-0", V1, restarts=1, message="Traceback...\nMemoryError: out of memory")], V1, T0 + 5)
    (event,) = [a for a in plan.actions if isinstance(a, RecordEvent) and a.reason == "ServerRestarted"]
    assert event.message == (
        "server pod iris-a-0 exited with code 1; restart #1, 1 restarts within 300s, maxRestarts is 5. "
        'It left no termination message; its last log line: "MemoryError: out of memory"'
    )
    assert s.status.phase != api.ServerPhase.ROLLED_BACK


NOT_READY = "not ready: waiting for the model: artifact directory /models/ml/iris/aaaa-1 does not exist"
STARTUP_WORDS = (
    "server pod iris-a-0 was not ready within spec.startupTimeoutSeconds (30 s) and was restarted: "
    "it was waiting for the model: artifact directory /models/ml/iris/aaaa-1 does not exist"
)


def test_a_startup_probe_kill_says_startup_timeout_and_the_servers_reason_once() -> None:
    """The server wrote what it waited for when the kubelet stopped it (exit 143); restarts for
    the same reason do not repeat it, the Ready condition says it, and so does the failure."""
    s = Server(make_server(replicas=1, startupTimeoutSeconds=30, supervision={"maxRestarts": 2, "periodSeconds": 600}))
    s.reconcile([pod("iris-a-0", V1, ready=False)], V1, T0)
    texts = []
    for n in (1, 2):
        killed = pod("iris-a-0", V1, ready=False, restarts=n, exit_code=143, reason="Error", message=NOT_READY)
        plan = s.reconcile([killed], V1, T0 + 40 * n)
        texts += [a.message for a in plan.actions if isinstance(a, RecordEvent) and a.reason == "ServerRestarted"]
    assert texts == [
        f"{STARTUP_WORDS}; restart #1, 1 restarts within 600s, maxRestarts is 2",
        "server pod iris-a-0 was restarted again for the same reason (restart #2); 2 restarts within 600s, maxRestarts is 2",
    ]
    assert s.status.supervision.last_failure.message == NOT_READY
    ready = s.cond("Ready")
    assert ready.status == "False" and ready.message == (
        f"0/1 replicas ready on model version aaaa-1; 2 restarts within 600s, the last: {STARTUP_WORDS}"
    )
    killed = pod("iris-a-0", V1, ready=False, restarts=3, exit_code=143, reason="Error", message=NOT_READY)
    plan = s.reconcile([killed], V1, T0 + 120)
    assert s.status.phase == api.ServerPhase.FAILED
    failed = s.cond("Failed")
    assert failed.reason == "RestartIntensityExceeded"
    assert failed.message.startswith(
        f"model version aaaa-1 failed: {STARTUP_WORDS}; restart intensity exceeded: 3 restarts within 600s, maxRestarts is 2; "
    )
    assert "Finished server process" not in failed.message and "It said" not in failed.message


def test_a_sigterm_without_a_message_names_the_probes_and_quotes_the_tail_as_a_log_line() -> None:
    s = Server(make_server(replicas=1))
    s.reconcile([pod("iris-a-0", V1, ready=False)], V1, T0)
    tail = "INFO:     Application shutdown complete.\nINFO:     Finished server process [21595]"
    plan = s.reconcile([pod("iris-a-0", V1, ready=False, restarts=1, exit_code=143, message=tail)], V1, T0 + 5)
    (event,) = [a.message for a in plan.actions if isinstance(a, RecordEvent) and a.reason == "ServerRestarted"]
    assert event == (
        "server pod iris-a-0 was stopped by signal 15 (SIGTERM, exit 143): not ready within "
        "spec.startupTimeoutSeconds (120 s), a failed livenessProbe, or told to stop from outside; "
        "restart #1, 1 restarts within 300s, maxRestarts is 5. "
        'It left no termination message; its last log line: "INFO:     Finished server process [21595]"'
    )


def test_a_different_reason_is_said_in_full_again() -> None:
    s = Server(make_server(replicas=1))
    s.reconcile([pod("iris-a-0", V1, ready=False)], V1, T0)
    s.reconcile([pod("iris-a-0", V1, ready=False, restarts=1, exit_code=137, message="INFO: loading")], V1, T0 + 5)
    assert s.cond("Ready").message == (
        "0/1 replicas ready on model version aaaa-1; 1 restarts within 300s, the last: server pod iris-a-0 "
        "was killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside"
    )
    plan = s.reconcile([pod("iris-a-0", V1, ready=False, restarts=2, exit_code=1, message="crash: boom")], V1, T0 + 9)
    (event,) = [a.message for a in plan.actions if isinstance(a, RecordEvent) and a.reason == "ServerRestarted"]
    assert event == 'server pod iris-a-0 exited with code 1; restart #2, 2 restarts within 300s, maxRestarts is 5. It said: "crash: boom"'


def test_replicas_that_cannot_start_say_why_in_the_ready_condition() -> None:
    s = Server(make_server(replicas=2))
    waiting = 'ImagePullBackOff: Back-off pulling image "mlvisor:typo"'
    s.reconcile([pod("iris-a-0", V1), pod("iris-a-1", V1, ready=False, phase="Pending", waiting=waiting)], V1, T0)
    assert s.cond("Ready").message == (
        f"1/2 replicas ready on model version aaaa-1; replica pod iris-a-1 cannot start: {waiting}"
    )


def test_a_replica_that_has_only_just_begun_to_wait_is_not_said_to_wait_yet() -> None:
    s = Server(make_server(replicas=2))
    waiting = "Unschedulable: 0/1 nodes are available: 1 Insufficient memory."
    young = pod("iris-a-1", V1, ready=False, phase="Pending", waiting=waiting, waiting_since=T0 - 2)
    plan = s.reconcile([pod("iris-a-0", V1), young], V1, T0)
    assert s.cond("Ready").message == "1/2 replicas ready on model version aaaa-1"
    assert plan.requeue_after == pytest.approx(WAITING_REPORTED_AFTER_SECONDS - 2)
    s.reconcile([pod("iris-a-0", V1), young], V1, T0 - 2 + WAITING_REPORTED_AFTER_SECONDS)
    assert s.cond("Ready").message == (
        f"1/2 replicas ready on model version aaaa-1; replica pod iris-a-1 cannot start: {waiting}"
    )


def test_a_server_whose_training_job_does_not_exist_says_so_in_its_ready_condition() -> None:
    from mlvisor.operator.plan import ReferencedJob

    s = Server(make_server())
    plan = plan_serving(s.server, None, [], None, T0, CONFIG, referenced_job=ReferencedJob(exists=False))
    assert plan.status is not None and plan.status.phase == api.ServerPhase.PENDING
    ready = find_condition(plan.status.conditions, "Ready")
    assert ready is not None and ready.reason == "TrainingJobNotFound"
    assert "spec.model.trainingJobRef.name: there is no TrainingJob ml/iris" in ready.message
    assert events(plan) == [("Warning", "TrainingJobNotFound")]
    # Said once: the next reconcile keeps the condition and posts no second Event.
    s.server = s.server.model_copy(update={"status": plan.status})
    again = plan_serving(s.server, None, [], None, T0 + 15, CONFIG, referenced_job=ReferencedJob(exists=False))
    assert events(again) == []
    # The job appears and runs: back to waiting, quietly.
    running = plan_serving(s.server, None, [], None, T0 + 30, CONFIG, referenced_job=ReferencedJob(True, "Running"))
    assert find_condition(running.status.conditions, "Ready").reason == "WaitingForModel"


def test_a_server_whose_training_job_failed_quotes_the_jobs_reason() -> None:
    from mlvisor.operator.plan import ReferencedJob

    s = Server(make_server())
    job = ReferencedJob(exists=True, phase="Failed", message="worker pod iris-worker-0-1 exited with code 2")
    plan = plan_serving(s.server, None, [], None, T0, CONFIG, referenced_job=job)
    ready = find_condition(plan.status.conditions, "Ready")
    assert ready.reason == "TrainingJobFailed"
    assert ready.message == "the TrainingJob ml/iris failed, so there is no model to serve: worker pod iris-worker-0-1 exited with code 2"
    assert events(plan) == [("Warning", "TrainingJobFailed")]
# ----------------------------------------------------------------------------- scale (kubectl scale, HPA)
def scale(s: Server, replicas: int) -> None:
    """What the scale subresource does: a new spec.replicas, so a new generation."""
    meta = s.server.metadata
    s.server = s.server.model_copy(
        update={
            "spec": s.server.spec.model_copy(update={"replicas": replicas}),
            "metadata": meta.model_copy(update={"generation": (meta.generation or 1) + 1}),
        }
    )


def assert_no_restart_counted(s: Server, plan: Plan) -> None:
    sup = s.status.supervision
    assert sup.restart_times == [] and sup.total_restarts == 0 and sup.restarts_in_window == 0
    assert not [e for e in events(plan) if e[1] in ("ServerRestarted", "RolledBack", "Failed")]


def test_status_selector_is_the_label_selector_of_the_server_pods() -> None:
    s = Server(make_server())
    plan = s.reconcile([], V1, T0)
    labels = deployment(plan)["spec"]["selector"]["matchLabels"]
    assert s.status.selector == ",".join(f"{k}={v}" for k, v in sorted(labels.items()))


def test_scale_up_is_a_rollout_never_a_restart() -> None:
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    assert s.status.phase == api.ServerPhase.READY and s.status.last_ready_replicas == 2
    scale(s, 4)
    plan = s.reconcile(ready_on(V1), V1, T0 + 1)
    assert deployment(plan)["spec"]["replicas"] == 4 and served_uri(plan) == V1.uri
    assert s.status.phase == api.ServerPhase.SCALING
    ready = s.cond("Ready")
    assert ready.status == "True" and ready.reason == "Scaling" and "scaling from 2 to 4" in ready.message
    assert ("Normal", "Scaling") in events(plan)
    assert find_condition(s.status.conditions, "Degraded") is None
    assert_no_restart_counted(s, plan)
    # New pods start; one of them is not ready yet: still scaling, the event is not repeated.
    pods = [*ready_on(V1), pod("iris-a-2", V1), pod("iris-a-3", V1, ready=False, phase="Pending")]
    plan = s.reconcile(pods, V1, T0 + 2)
    assert s.status.phase == api.ServerPhase.SCALING and events(plan) == []
    assert s.status.replicas == 4 and s.status.ready_replicas == 3
    plan = s.reconcile([*ready_on(V1), pod("iris-a-2", V1), pod("iris-a-3", V1)], V1, T0 + 3)
    assert s.status.phase == api.ServerPhase.READY and s.status.last_ready_replicas == 4
    assert events(plan) == [("Normal", "Scaled")]
    assert_no_restart_counted(s, plan)


def test_a_replica_lost_while_scaling_up_is_degraded() -> None:
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    scale(s, 3)
    s.reconcile(ready_on(V1), V1, T0 + 1)
    assert s.status.phase == api.ServerPhase.SCALING
    s.reconcile([pod("iris-a-0", V1), pod("iris-a-1", V1, ready=False)], V1, T0 + 2)
    assert s.status.phase == api.ServerPhase.DEGRADED and s.cond("Degraded").status == "True"


def test_scale_down_pods_stopping_with_sigterm_are_not_failures() -> None:
    s = Server(make_server(replicas=3))
    s.reconcile(ready_on(V1, 3), V1, T0)
    scale(s, 1)
    plan = s.reconcile(ready_on(V1, 3), V1, T0 + 1)
    assert deployment(plan)["spec"]["replicas"] == 1
    assert events(plan) == [("Normal", "Scaled")] and s.status.last_ready_replicas == 1
    # The Deployment deletes two pods; SIGTERM ends them with 143 and the kubelet reports Failed.
    leaving = [pod(f"iris-a-{i}", V1, ready=False, deleting=True, phase="Failed", exit_code=143, reason="Error")
               for i in (1, 2)]
    plan = s.reconcile([pod("iris-a-0", V1), *leaving], V1, T0 + 2)
    assert s.status.phase == api.ServerPhase.READY and s.status.replicas == 1
    assert_no_restart_counted(s, plan)
    assert events(plan) == []


def test_scale_to_zero_and_back_is_scaling_not_degraded() -> None:
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    scale(s, 0)
    plan = s.reconcile([], V1, T0 + 1)
    assert deployment(plan)["spec"]["replicas"] == 0 and s.cond("Ready").reason == "ScaledToZero"
    scale(s, 2)
    plan = s.reconcile([], V1, T0 + 2)
    assert deployment(plan)["spec"]["replicas"] == 2
    assert s.status.phase == api.ServerPhase.SCALING and s.cond("Ready").status == "False"
    plan = s.reconcile(ready_on(V1), V1, T0 + 3)
    assert s.status.phase == api.ServerPhase.READY
    assert_no_restart_counted(s, plan)


def test_a_crash_while_scaling_still_counts() -> None:
    """Scaling is not a pass: a container that really crashes is counted as before."""
    s = Server(make_server())
    s.reconcile(ready_on(V1), V1, T0)
    scale(s, 3)
    s.reconcile(ready_on(V1), V1, T0 + 1)
    plan = s.reconcile([*ready_on(V1), pod("iris-a-2", V1, ready=False, restarts=1)], V1, T0 + 2)
    assert s.status.supervision.total_restarts == 1
    assert ("Warning", "ServerRestarted") in events(plan)


def test_one_rule_resolves_spec_model_for_both_shells() -> None:
    """planners.serving.model_source: what the cluster's store and the local runtime both ask."""
    from mlvisor.operator.plan import ReferencedJob
    from mlvisor.operator.planners.serving import model_source

    by_uri = make_server(model={"uri": "pvc://mlvisor-models/default/iris/v3/"})
    assert model_source(by_uri, False, None) == (ModelRef(uri="pvc://mlvisor-models/default/iris/v3/", version="v3"), None)
    by_ref = make_server(model={"trainingJobRef": {"name": "iris"}})
    assert model_source(by_ref, False, None) == (None, ReferencedJob(exists=False))
    assert model_source(by_ref, True, None) == (None, ReferencedJob(exists=True))
    running = api.TrainingJobStatus.model_validate({"phase": "Running"})
    assert model_source(by_ref, True, running) == (None, ReferencedJob(exists=True, phase="Running"))
    failed = api.TrainingJobStatus.model_validate({"phase": "Failed", "conditions": [
        {"type": "Failed", "status": "True", "reason": "IntensityExceeded", "message": "worker 0 failed 4 times",
         "lastTransitionTime": "2026-12-04T00:00:00Z"}]})
    assert model_source(by_ref, True, failed) == (
        None, ReferencedJob(exists=True, phase="Failed", message="worker 0 failed 4 times"))
    done = api.TrainingJobStatus.model_validate({"phase": "Succeeded", "model": {
        "uri": "pvc://mlvisor-models/default/iris/abc-1/", "version": "abc-1"}})
    assert model_source(by_ref, True, done) == (
        ModelRef(uri="pvc://mlvisor-models/default/iris/abc-1/", version="abc-1"),
        ReferencedJob(exists=True, phase="Succeeded"))
