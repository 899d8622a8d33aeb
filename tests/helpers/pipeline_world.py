"""A pipeline and its children on virtual time, for the planner's unit and property tests.

The test plays the TrainingJob and ModelServer controllers: it decides what each child's
status says; the world carries out the pipeline's plans (children applied or deleted, status
stored through a round trip of its wire form, as the shells do).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from typing import Any

from mlvisor import api
from mlvisor.api.labels import ANNOTATION_TRAINING_SPEC_HASH, LABEL_RUN
from mlvisor.operator.plan import (
    ApplyResource,
    DeleteResource,
    ObservedResource,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.planners.conditions import from_timestamp
from mlvisor.operator.planners.pipeline import plan_pipeline

CONFIG = OperatorConfig(image="mlvisor:test")
T0 = 1_700_000_000.0


def pipeline_spec(**more: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "training": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}},
        "serving": {"replicas": 2},
        "supervision": {"strategy": "RestForOne", "maxRestarts": 2, "periodSeconds": 3600,
                        "backoff": {"initialSeconds": 10, "factor": 2, "maxSeconds": 600}},
    }
    for key, value in more.items():
        if isinstance(value, dict) and isinstance(spec.get(key), dict):
            spec[key] = {**spec[key], **value}
        else:
            spec[key] = value
    return spec


@dataclass
class Child:
    kind: str
    name: str
    manifest: dict[str, Any]
    uid: str = field(default_factory=lambda: uuid.uuid4().hex)
    status: api.TrainingJobStatus | api.ModelServerStatus | None = None
    deleting: bool = False

    def observe(self) -> ObservedResource:
        meta = self.manifest["metadata"]
        run = meta.get("labels", {}).get(LABEL_RUN)
        return ObservedResource(
            kind=self.kind, name=self.name, uid=self.uid, run=int(run) if run else None,
            spec_hash=(meta.get("annotations") or {}).get(ANNOTATION_TRAINING_SPEC_HASH),
            status=self.status, deleting=self.deleting,
        )


def condition(type_: str, status: str, reason: str, message: str, t: float) -> api.Condition:
    return api.Condition(type=type_, status=status, reason=reason, message=message,  # type: ignore[arg-type]
                         last_transition_time=from_timestamp(t))


class World:
    def __init__(self, **spec: Any) -> None:
        self.body: dict[str, Any] = {
            "apiVersion": api.API_VERSION, "kind": "ModelPipeline",
            "metadata": {"name": "iris", "namespace": "default", "uid": "pipe-uid-1", "generation": 1},
            "spec": pipeline_spec(**spec),
        }
        self.children: dict[tuple[str, str], Child] = {}
        self.plans: list[Plan] = []
        self.now = T0

    # -- the pipeline --------------------------------------------------------------------
    @property
    def pipeline(self) -> api.ModelPipeline:
        return api.ModelPipeline.model_validate(self.body)

    @property
    def status(self) -> api.ModelPipelineStatus:
        return api.ModelPipelineStatus.model_validate(self.body.get("status") or {})

    def set_spec(self, **spec: Any) -> None:
        self.body["spec"] = pipeline_spec(**spec)
        self.body["metadata"]["generation"] += 1

    def reconcile(self, at: float | None = None, *, lose_status: bool = False) -> Plan:
        """Plan and carry out the plan; ``lose_status``: its children's writes land, its status
        write is lost (the operator died before it, or the API server refused it)."""
        if at is not None:
            self.now = at
        plan = plan_pipeline(self.pipeline, [c.observe() for c in self.children.values()], self.now, CONFIG)
        for action in plan.actions:
            if isinstance(action, ApplyResource):
                m = action.manifest
                key = (m["kind"], m["metadata"]["name"])
                if key in self.children:
                    self.children[key].manifest = m
                else:
                    self.children[key] = Child(m["kind"], m["metadata"]["name"], m)
            elif isinstance(action, DeleteResource):
                self.children.pop((action.kind, action.name), None)
        assert plan.status is not None
        if not lose_status:
            self.body["status"] = plan.status.to_wire()
        self.plans.append(plan)
        return plan

    def cond(self, type_: str) -> api.Condition | None:
        return next((c for c in self.status.conditions if c.type == type_), None)

    # -- the children, played by the test -----------------------------------------------
    def job(self, number: int) -> Child:
        return self.children[("TrainingJob", f"iris-{number}" if number < 10**6 else str(number))]

    def server(self) -> Child | None:
        return self.children.get(("ModelServer", "iris"))

    def served_uri(self) -> str | None:
        s = self.server()
        return s.manifest["spec"]["model"]["uri"] if s else None

    def succeed(self, number: int, score: float | None, version: str | None = None) -> None:
        job = self.job(number)
        version = version or f"v{number}"
        job.status = api.TrainingJobStatus(
            phase=api.TrainingPhase.SUCCEEDED,
            version=version,
            conditions=[condition("Succeeded", "True", "Succeeded", "done", self.now)],
            model=api.ModelInfo(uri=f"pvc://mlvisor-models/default/iris-{number}/{version}/", version=version, score=score),
        )

    def fail(self, number: int, reason: str = "FailurePolicy", exit_code: int | None = 2, message: str = "worker exited with 2") -> None:
        job = self.job(number)
        job.status = api.TrainingJobStatus(
            phase=api.TrainingPhase.FAILED,
            conditions=[condition("Failed", "True", reason, message, self.now)],
            supervision=api.SupervisionStatus(
                last_failure=api.FailureRecord(pod=f"iris-{number}-worker-0-1", exit_code=exit_code, time=from_timestamp(self.now))
            ),
        )

    def running(self, number: int) -> None:
        self.job(number).status = api.TrainingJobStatus(phase=api.TrainingPhase.RUNNING)

    def server_ready(self, ready: bool = True) -> None:
        s = self.server()
        assert s is not None
        uri = self.served_uri()
        version = uri.rstrip("/").rsplit("/", 1)[-1] if uri else None
        s.status = api.ModelServerStatus(
            phase=api.ServerPhase.READY if ready else api.ServerPhase.LOADING,
            model_uri=uri, model_version=version,
            url="http://iris.default.svc:80/v2/models/iris",
            last_good_model_uri=uri if ready else None, last_good_model_version=version if ready else None,
            conditions=[condition("Ready", "True" if ready else "False", "AllReplicasReady" if ready else "NoReplicasReady",
                                  f"2/2 replicas serve model version {version}", self.now)],
        )

    def server_failed(self, reason: str = "RestartIntensityExceeded") -> None:
        s = self.server()
        assert s is not None
        s.status = api.ModelServerStatus(
            phase=api.ServerPhase.FAILED, model_uri=self.served_uri(),
            conditions=[condition("Ready", "False", reason, "down", self.now),
                        condition("Failed", "True", reason, "server pods kept crashing", self.now)],
        )

    def events(self, plan: Plan | None = None) -> list[tuple[str, str]]:
        plans = [plan] if plan is not None else self.plans
        return [(a.type, a.reason) for p in plans for a in p.actions if isinstance(a, RecordEvent)]

    def deleted(self, plan: Plan) -> list[tuple[str, str]]:
        return [(a.kind, a.name) for a in plan.actions if isinstance(a, DeleteResource)]

    def run(self, number: int) -> api.PipelineRun:
        return next(r for r in self.status.runs if r.number == number)
