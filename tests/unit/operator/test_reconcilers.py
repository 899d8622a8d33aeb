"""The one reconcile both shells run (mlvisor.operator.reconcilers), over a store and a writer of the test's.

The cluster's backend (kube/controllers.py) and the local runtime's (local/runtime.py) are
exercised by the emulator, cluster and local tiers; here the reconcile itself: what it reads,
what it hands the writer, and that nothing is written for a resource that is gone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

import pytest

from mlvisor import api
from mlvisor.operator import plan as p
from mlvisor.operator.reconcilers import Invalid, Key, Read, Reader, Writer, reconcile

CONFIG = p.OperatorConfig()
NOW = 1_700_000_000.0


def job(**spec: Any) -> api.TrainingJob:
    return api.TrainingJob.model_validate({
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u-job", "generation": 1},
        "spec": {"dataset": {"builtin": "iris"},
                 "estimator": {"class": "sklearn.ensemble.RandomForestClassifier"}, **spec},
    })


def server(**model: Any) -> api.ModelServer:
    return api.ModelServer.model_validate({
        "metadata": {"name": "iris", "namespace": "ml", "uid": "u-server", "generation": 1},
        "spec": {"model": model or {"trainingJobRef": {"name": "iris"}}},
    })


class World:
    """A Reader of the test's: resources by key, and what each question was asked with."""

    def __init__(self, *resources: api.TrainingJob | api.ModelServer | api.ModelPipeline | Invalid,
                 pods: Sequence[p.ObservedPod] = (), preflight: Sequence[str] = (),
                 jobs: dict[str, api.TrainingJobStatus | None] | None = None) -> None:
        self.resources: dict[Key, Any] = {}
        for r in resources:
            if isinstance(r, Invalid):
                self.resources[(r.kind, "ml", "bad")] = r
            else:
                self.resources[(r.kind, r.metadata.namespace, r.metadata.name)] = Read(r, source=f"body of {r.kind}")
        self.pods = list(pods)
        self.problems = list(preflight)
        self.jobs = jobs or {}
        self.asked: list[str] = []

    async def resource(self, key: Key) -> Read | Invalid | None:
        return self.resources.get(key)

    async def workers(self, read: Read) -> Sequence[p.ObservedPod]:
        self.asked.append(f"workers of {read.source}")
        return self.pods

    async def preflight(self, read: Read) -> Sequence[str]:
        self.asked.append(f"preflight of {read.source}")
        return self.problems

    def server_children(self, read: Read) -> tuple[p.ObservedDeployment | None, Sequence[p.ObservedPod]]:
        self.asked.append(f"children of {read.source}")
        return None, []

    def training_job(self, namespace: str, name: str) -> tuple[bool, api.TrainingJobStatus | None]:
        self.asked.append(f"job {namespace}/{name}")
        return name in self.jobs, self.jobs.get(name)

    def pipeline_children(self, read: Read) -> Sequence[p.ObservedResource]:
        self.asked.append(f"children of {read.source}")
        return []


class Recorder:
    """A Writer of the test's: keeps what it was handed."""

    def __init__(self) -> None:
        self.applied: list[tuple[Read, p.Plan]] = []
        self.invalids: list[Invalid] = []

    async def apply(self, read: Read, plan: p.Plan) -> None:
        self.applied.append((read, plan))

    async def invalid(self, invalid: Invalid) -> None:
        self.invalids.append(invalid)


def run(world: World, writer: Writer, key: Key) -> tuple[str, float | None]:
    def clock() -> float:
        world.asked.append("clock")
        return NOW

    reader: Reader = world
    return asyncio.run(reconcile(reader, writer, key, clock, CONFIG))


def test_a_new_job_is_planned_from_its_workers_and_the_preflight_and_its_plan_goes_to_the_writer() -> None:
    world, writer = World(job()), Recorder()
    outcome, _ = run(world, writer, ("TrainingJob", "ml", "iris"))
    assert outcome == "ok"
    # the planner's now is read once its inputs are in (a progress poll or a judgement takes time)
    assert world.asked == ["workers of body of TrainingJob", "preflight of body of TrainingJob", "clock"]
    ((read, plan),) = writer.applied
    assert read.source == "body of TrainingJob"  # the writer gets what the reader read (the body it guards with)
    assert [a.manifest["metadata"]["name"] for a in plan.actions if isinstance(a, p.CreatePod)] == ["iris-worker-0-1"]
    assert plan.status is not None and plan.status.to_wire()["phase"] == "Running"


def test_a_job_the_preflight_refuses_fails_without_a_pod() -> None:
    world, writer = World(job(), preflight=["spec.estimator.params.n_estimator: not a parameter"]), Recorder()
    run(world, writer, ("TrainingJob", "ml", "iris"))
    ((_, plan),) = writer.applied
    assert not any(isinstance(a, p.CreatePod) for a in plan.actions)
    wire = plan.status.to_wire() if plan.status else {}
    assert wire["phase"] == "Failed"
    assert "n_estimator" in str(wire["conditions"])


def test_a_resource_that_is_gone_is_neither_planned_nor_written() -> None:
    world, writer = World(), Recorder()
    assert run(world, writer, ("TrainingJob", "ml", "iris")) == ("gone", None)
    assert world.asked == [] and writer.applied == [] and writer.invalids == []


def test_an_invalid_resource_goes_to_the_writers_invalid_and_is_not_planned() -> None:
    bad = Invalid("ModelServer", "invalid ModelServer: spec.model.uri: ...", source="its body")
    world, writer = World(bad), Recorder()
    assert run(world, writer, ("ModelServer", "ml", "bad")) == ("invalid", None)
    assert writer.invalids == [bad] and writer.applied == [] and world.asked == []


@pytest.mark.parametrize(("jobs", "serves"), [
    ({}, None),  # no such job: waits, says so
    ({"iris": api.TrainingJobStatus.model_validate({"phase": "Running"})}, None),
    ({"iris": api.TrainingJobStatus.model_validate({"phase": "Succeeded", "model": {
        "uri": "pvc://mlvisor-models/ml/iris/abc-1/", "version": "abc-1"}})}, "pvc://mlvisor-models/ml/iris/abc-1/"),
])
def test_a_server_serves_what_its_job_reports_as_the_reader_tells_it(jobs: dict[str, Any], serves: str | None) -> None:
    world, writer = World(server(), jobs=jobs), Recorder()
    run(world, writer, ("ModelServer", "ml", "iris"))
    assert world.asked == ["children of body of ModelServer", "job ml/iris", "clock"]
    ((_, plan),) = writer.applied
    deployments = [a.manifest for a in plan.actions if isinstance(a, p.ApplyDeployment)]
    if serves is None:
        assert deployments == []
        reason = {c["type"]: c.get("reason") for c in plan.status.to_wire()["conditions"]} if plan.status else {}
        assert reason.get("Ready") == ("TrainingJobNotFound" if not jobs else "WaitingForModel")
    else:
        (d,) = deployments
        assert d["spec"]["template"]["metadata"]["annotations"]["mlvisor.dev/model-uri"] == serves


def test_a_server_by_uri_asks_for_no_job() -> None:
    world, writer = World(server(uri="pvc://mlvisor-models/ml/iris/v3/")), Recorder()
    run(world, writer, ("ModelServer", "ml", "iris"))
    assert world.asked == ["children of body of ModelServer", "clock"]
