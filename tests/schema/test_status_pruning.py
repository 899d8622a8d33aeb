"""Every status the operator writes survives the API server's structural pruning.

A real API server silently drops status fields its CRD schema does not declare (kopf's
best-known pitfall; the emulator keeps everything, so the integration tier cannot see it).
These tests drive the planners through the lives the integration scenarios exercise (start,
restart after back-off, escalation, success with artifact metadata, search with a select
step, suspend, deadline, invalid spec; a server loading, ready, rolled back, failed; a pipeline
restarting a run, promoting, refusing a worse run, escalating), take
every status they produce exactly as the Kubernetes shell writes it (``to_wire()``, then the
merge patch the adapter computes, applied), and check that no field path is undeclared in
the generated CRD and that the object still validates against it.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from helpers.crd_validator import openapi_schema, pruned_paths, validate
from mlvisor import api
from mlvisor.api.exits import TerminationSummary
from mlvisor.api.progress import ProgressReport, TrialBrief
from mlvisor.operator.kube.adapter import merge_patch
from mlvisor.operator.plan import (
    ModelRef,
    ObservedDeployment,
    ObservedPod,
    ObservedResource,
    OperatorConfig,
    Plan,
    ReferencedJob,
)
from mlvisor.operator.planners import conditions
from mlvisor.operator.planners.pipeline import plan_pipeline
from mlvisor.operator.planners.serving import plan_serving
from mlvisor.operator.planners.training import plan_training

CONFIG = OperatorConfig(image="mlvisor:test")
T0 = 1_700_000_000.0


def _apply_merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386, as the API server applies the adapter's status patch."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if value is None:
            out.pop(key, None)
        else:
            out[key] = _apply_merge_patch(out.get(key), value)
    return out


class Life:
    """One resource's life: its body on the 'server' as the shell would leave it after each plan."""

    def __init__(self, kind: str, spec: dict[str, Any]) -> None:
        self.kind = kind
        self.body: dict[str, Any] = {
            "apiVersion": api.API_VERSION,
            "kind": kind,
            "metadata": {"name": "iris", "namespace": "default", "uid": "0123456789abcdef", "generation": 1},
            "spec": spec,
        }
        self.written: list[dict[str, Any]] = []

    def model(self) -> Any:
        return api.KINDS[self.kind].model_validate(self.body)

    def write(self, plan: Plan) -> Plan:
        assert plan.status is not None
        patch = merge_patch(self.body.get("status") or {}, plan.status.to_wire())
        if patch:
            self.body["status"] = _apply_merge_patch(self.body.get("status") or {}, patch)
            self.written.append(copy.deepcopy(self.body))
        return plan


def pod(name: str, index: int = 0, attempt: int = 1, phase: str = "Running", **kw: Any) -> ObservedPod:
    return ObservedPod(name=name, index=index, attempt=attempt, phase=phase, **kw)  # type: ignore[arg-type]


def _training_spec(**more: Any) -> dict[str, Any]:
    return {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 10}},
        "supervision": {"maxRestarts": 1, "periodSeconds": 60, "backoff": {"initialSeconds": 1, "factor": 2, "maxSeconds": 4}},
        **more,
    }


def training_lives() -> list[Life]:
    lives = []

    # restart after back-off, then escalation
    life = Life("TrainingJob", _training_spec(activeDeadlineSeconds=3600))
    life.write(plan_training(life.model(), [], T0, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1")], T0 + 1, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1", phase="Failed", exit_code=1, reason="Error",
                                                message="crash: OSError: no space left on device")], T0 + 2, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1", phase="Failed", exit_code=1)], T0 + 4, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1", phase="Failed", exit_code=1), pod("iris-worker-0-2", attempt=2)], T0 + 5, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1", phase="Failed", exit_code=1), pod("iris-worker-0-2", attempt=2, phase="Failed", exit_code=137, reason="OOMKilled")], T0 + 6, CONFIG))
    lives.append(life)

    # a search: shards, select step, success with metadata (nested best params)
    life = Life("TrainingJob", _training_spec(search={"grid": {"max_depth": [2, 4]}, "cv": 2}, workers=2))
    life.write(plan_training(life.model(), [], T0, CONFIG))
    # the running workers' progress reports, then their final ones (status.progress, workers[].trialsDone)
    top = [TrialBrief(trial=1, score=0.93, params={"max_depth": 4, "nested": {"a": [1, None]}}, worker=0)]
    running = [pod(f"iris-worker-{i}-1", index=i, progress=ProgressReport(worker=i, trials_done=i, trials_total=1,
                                                                         top=top if i else [], eta_seconds=3.5))
               for i in range(2)]
    life.write(plan_training(life.model(), running, T0 + 0.5, CONFIG))
    assert life.body["status"]["progress"]["summary"] == "1/2"
    final = ProgressReport(worker=0, trials_done=1, trials_total=1, top=top, finished=True).to_message()
    shards = [pod(f"iris-worker-{i}-1", index=i, phase="Succeeded", exit_code=0, message=final) for i in range(2)]
    life.write(plan_training(life.model(), shards, T0 + 1, CONFIG))
    life.write(plan_training(life.model(), shards, T0 + 2, CONFIG))
    version = life.body["status"]["version"]
    summary = TerminationSummary(version=version, metrics={"accuracy": 0.97, "f1_macro": 0.96}, score_name="f1_macro",
                                 best_params={"max_depth": 4, "nested": {"a": [1, 2]}}, sklearn_version="1.9.1")
    select = pod("iris-select-1", index=-1, phase="Succeeded", exit_code=0, message=summary.to_message())
    life.write(plan_training(life.model(), [*shards, select], T0 + 3, CONFIG))
    assert life.body["status"]["phase"] == "Succeeded"
    lives.append(life)

    # suspend and resume, deadline exceeded, eviction (ignored failure)
    life = Life("TrainingJob", _training_spec(activeDeadlineSeconds=10))
    life.write(plan_training(life.model(), [], T0, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-1", phase="Failed", reason="Evicted", exit_code=137, conditions=frozenset({"DisruptionTarget"}))], T0 + 1, CONFIG))
    life.body["spec"]["suspend"] = True
    life.write(plan_training(life.model(), [], T0 + 3, CONFIG))
    life.body["spec"]["suspend"] = False
    life.write(plan_training(life.model(), [], T0 + 4, CONFIG))
    life.write(plan_training(life.model(), [pod("iris-worker-0-3", attempt=3)], T0 + 100, CONFIG))
    lives.append(life)

    # invalid spec, as the shell writes it
    life = Life("TrainingJob", _training_spec())
    status = conditions.invalid_spec_status("TrainingJob", 1, "invalid TrainingJob: spec.estimator.class: bad", T0)
    life.write(Plan(status=status))
    lives.append(life)
    return lives


def serving_lives() -> list[Life]:
    v1, v2 = ModelRef("pvc://mlvisor-models/default/iris/v1/", "v1"), ModelRef("pvc://mlvisor-models/default/iris/v2/", "v2")
    lives = []
    for on_exhausted in ("Rollback", "Fail"):
        life = Life("ModelServer", {"model": {"trainingJobRef": {"name": "iris"}},
                                    "supervision": {"maxRestarts": 1, "onExhausted": on_exhausted}})
        life.write(plan_serving(life.model(), None, [], None, T0, CONFIG))
        life.write(plan_serving(life.model(), None, [], v1, T0 + 1, CONFIG))
        dep = ObservedDeployment("iris", replicas=1, ready_replicas=1, updated_replicas=1, model_uri=v1.uri)
        ready = pod("iris-a", ready=True, conditions=frozenset({"Ready"}), model_uri=v1.uri)
        life.write(plan_serving(life.model(), dep, [ready], v1, T0 + 2, CONFIG))
        life.write(plan_serving(life.model(), dep, [ready], v2, T0 + 3, CONFIG))
        dep2 = ObservedDeployment("iris", replicas=2, ready_replicas=1, updated_replicas=1, model_uri=v2.uri)
        for n in (1, 2, 3):
            crashing = pod("iris-b", restart_count=n, exit_code=1, reason="Error", model_uri=v2.uri)
            life.write(plan_serving(life.model(), dep2, [ready, crashing], v2, T0 + 3 + n, CONFIG))
        lives.append(life)
    # a model that cannot load (exit 4, the server's reason), and a job that does not exist
    life = Life("ModelServer", {"model": {"trainingJobRef": {"name": "iris"}}})
    life.write(plan_serving(life.model(), None, [], None, T0, CONFIG, referenced_job=ReferencedJob(exists=False)))
    life.write(plan_serving(life.model(), None, [], v2, T0 + 1, CONFIG))
    unloadable = pod("iris-b", restart_count=1, exit_code=4, reason="Error", model_uri=v2.uri,
                     message="cannot load the model: /models/default/iris/v2: checksum mismatch")
    life.write(plan_serving(life.model(), None, [unloadable], v2, T0 + 2, CONFIG))
    assert life.body["status"]["supervision"]["lastFailure"]["message"].endswith("checksum mismatch")
    lives.append(life)
    life = Life("ModelServer", {"model": {"uri": "pvc://mlvisor-models/default/iris/v1/"}})
    status = conditions.invalid_spec_status("ModelServer", 1, "invalid ModelServer: spec.model.uri: file://", T0)
    life.write(Plan(status=status))
    lives.append(life)
    return lives


def pipeline_lives() -> list[Life]:
    """A pipeline through restart, promotion, a refused run, a serving failure and escalation."""
    spec = {
        "training": _training_spec(),
        "promotion": {"minScore": 0.5, "mustImprove": True},
        "schedule": "0 3 * * *",
        "supervision": {"maxRestarts": 1, "periodSeconds": 3600, "backoff": {"initialSeconds": 5, "factor": 2, "maxSeconds": 60}},
    }
    life = Life("ModelPipeline", spec)
    cond = lambda t, s, r: api.Condition(type=t, status=s, reason=r, message=f"{t} {r}", last_transition_time=conditions.from_timestamp(T0))  # noqa: E731

    def job(n: int, phase: str, score: float | None = None) -> ObservedResource:
        model = api.ModelInfo(uri=f"pvc://mlvisor-models/default/iris-{n}/v{n}/", version=f"v{n}", score=score) if phase == "Succeeded" else None
        failed = [cond("Failed", "True", "FailurePolicy")] if phase == "Failed" else []
        last = api.FailureRecord(pod=f"iris-{n}-worker-0-1", exit_code=2, time=conditions.from_timestamp(T0)) if phase == "Failed" else None
        status = api.TrainingJobStatus(phase=phase, model=model, conditions=failed, supervision=api.SupervisionStatus(last_failure=last))
        return ObservedResource("TrainingJob", f"iris-{n}", uid=f"uid-{n}", run=n, status=status)

    def server(phase: str, version: str, ready: bool) -> ObservedResource:
        conds = [cond("Ready", "True" if ready else "False", "AllReplicasReady" if ready else "NoReplicasReady")]
        if phase == "Failed":
            conds.append(cond("Failed", "True", "RestartIntensityExceeded"))
        status = api.ModelServerStatus(phase=phase, model_uri=f"pvc://mlvisor-models/default/iris-2/{version}/",
                                       model_version=version, url="http://iris.default.svc:80/v2/models/iris", conditions=conds)
        return ObservedResource("ModelServer", "iris", uid="uid-ms", status=status)

    life.write(plan_pipeline(life.model(), [], T0, CONFIG))
    life.write(plan_pipeline(life.model(), [job(1, "Failed")], T0 + 1, CONFIG))
    life.write(plan_pipeline(life.model(), [job(1, "Failed")], T0 + 6, CONFIG))
    life.write(plan_pipeline(life.model(), [job(1, "Failed"), job(2, "Succeeded", 0.9)], T0 + 7, CONFIG))
    life.write(plan_pipeline(life.model(), [job(1, "Failed"), job(2, "Succeeded", 0.9), server("Ready", "v2", True)], T0 + 8, CONFIG))
    life.body["spec"]["training"]["estimator"]["params"]["n_estimators"] = 5
    life.body["metadata"]["generation"] = 2
    life.write(plan_pipeline(life.model(), [job(1, "Failed"), job(2, "Succeeded", 0.9), server("Ready", "v2", True)], T0 + 9, CONFIG))
    kids = [job(1, "Failed"), job(2, "Succeeded", 0.9), job(3, "Succeeded", 0.4), server("Ready", "v2", True)]
    life.write(plan_pipeline(life.model(), kids, T0 + 10, CONFIG))
    kids[-1] = server("Failed", "v2", False)
    life.write(plan_pipeline(life.model(), kids, T0 + 11, CONFIG))
    assert life.body["status"]["phase"] == "Failed", life.body["status"]
    invalid = Life("ModelPipeline", spec)
    invalid.write(Plan(status=conditions.invalid_spec_status("ModelPipeline", 1, "invalid ModelPipeline: spec.schedule: bad", T0)))
    return [life, invalid]


def _bodies(lives: list[Life]) -> list[tuple[str, int, dict[str, Any]]]:
    return [(life.kind, i, body) for life in lives for i, body in enumerate(life.written)]


TRAINING = _bodies(training_lives())
SERVING = _bodies(serving_lives())
PIPELINE = _bodies(pipeline_lives())


def test_the_lives_cover_the_interesting_phases() -> None:
    phases = {(kind, body["status"]["phase"]) for kind, _, body in TRAINING + SERVING + PIPELINE}
    for expected in [("TrainingJob", p) for p in ("Running", "Restarting", "Succeeded", "Failed", "Suspended")] + [
        ("ModelServer", p) for p in ("Pending", "Loading", "Ready", "RolledBack", "Failed")
    ] + [("ModelPipeline", p) for p in ("Training", "Restarting", "Deploying", "Serving", "Failed")]:
        assert expected in phases, f"no {expected} status produced: {sorted(phases)}"


@pytest.mark.parametrize(("kind", "step", "body"), TRAINING + SERVING + PIPELINE, ids=lambda v: v if isinstance(v, str) else None)
def test_no_status_field_would_be_pruned(kind: str, step: int, body: dict[str, Any]) -> None:
    status_schema = openapi_schema(kind)["properties"]["status"]
    assert pruned_paths(status_schema, body["status"], ".status") == []


@pytest.mark.parametrize(("kind", "step", "body"), TRAINING + SERVING + PIPELINE, ids=lambda v: v if isinstance(v, str) else None)
def test_the_written_status_validates_against_the_crd(kind: str, step: int, body: dict[str, Any]) -> None:
    assert validate(kind, body) == []


def test_pruning_is_detected() -> None:
    """The check can fail: a field the schema does not declare is reported."""
    status_schema = openapi_schema("TrainingJob")["properties"]["status"]
    assert pruned_paths(status_schema, {"phase": "Running", "kopf": {"progress": {}}}, ".status") == [".status.kopf"]
