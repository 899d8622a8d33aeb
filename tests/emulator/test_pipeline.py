"""ModelPipeline scenarios: the real operator (all three controllers) against the emulator.

The test plays only what a cluster's own machinery would do: the kubelet (worker pods exit
with a code and a termination message) and the ReplicaSet controller (server pods of the
ModelServer's Deployment). Everything in between is the operator: the pipeline creates
TrainingJobs, the TrainingJob controller creates their pods, the pipeline promotes and
creates the ModelServer, whose controller creates the Deployment.
"""

from __future__ import annotations

import json

from emulator.world import ReplicaSetRole, World, eventually, stays

MP, TJ, MS = "ModelPipeline", "TrainingJob", "ModelServer"
ANNOTATION = "mlvisor.dev/model-uri"


def pipeline_spec(n_estimators: int = 10, **more):
    return {
        "training": {
            "dataset": {"builtin": "iris"},
            "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": n_estimators}},
            "supervision": {"maxRestarts": 0, "periodSeconds": 60},  # a failed worker fails its run at once
        },
        "serving": {"replicas": 1},
        "promotion": {"mustImprove": True},
        "supervision": {"strategy": "RestForOne", "maxRestarts": 2, "periodSeconds": 3600,
                        "backoff": {"initialSeconds": 0.3, "factor": 1, "maxSeconds": 0.3}},
        **more,
    }


def finish_run(world: World, run: str, code: int, score: float | None = None) -> dict:
    """The run's only worker exits; on success its termination message carries the score."""
    pod = f"{run}-worker-0-1"
    world.wait_pod(pod)
    world.run_pod(pod)
    message = None
    if code == 0:
        version = eventually(lambda: world.status(TJ, run).get("version"), what=f"{run} version")
        message = json.dumps({"version": version, "metrics": {"accuracy": score}, "score_name": "accuracy"})
    world.exit_pod(pod, code, message=message)
    return world.wait_phase(TJ, run, "Succeeded" if code == 0 else "Failed")


def serve(world: World, rs: ReplicaSetRole, pod: str, uri: str) -> None:
    eventually(lambda: rs.template()["metadata"]["annotations"][ANNOTATION] == uri, what=f"Deployment rolling out {uri}")
    rs.start_pod(pod)
    rs.set_status(replicas=1, ready=1)


def run_names(world: World, name: str) -> list[str]:
    return [r["name"] for r in world.status(MP, name).get("runs") or []]


def test_a_pipeline_restarts_a_failed_run_promotes_serves_and_gates(world: World, operator) -> None:
    world.create(MP, "iris", pipeline_spec())
    job = world.wait_pod("iris-1-worker-0-1") and world.get(TJ, "iris-1")
    owner = job["metadata"]["ownerReferences"][0]
    assert (owner["kind"], owner["name"], owner["controller"]) == (MP, "iris", True)
    assert owner["uid"] == world.get(MP, "iris")["metadata"]["uid"]
    assert job["metadata"]["labels"]["mlvisor.dev/run"] == "1"
    world.wait_phase(MP, "iris", "Training")

    # Run 1 fails (exit 2: FailurePolicy Fail at the TrainingJob's level): the pipeline restarts training.
    finish_run(world, "iris-1", 2)
    world.wait_event("iris", "Restarting")
    world.wait_pod("iris-2-worker-0-1")  # after the 0.3 s back-off
    # The pipeline records run 2 in its status after creating its TrainingJob: wait for it.
    status = eventually(lambda: len((s := world.status(MP, "iris"))["runs"]) >= 2 and s, what="run 2 recorded")
    assert status["supervision"]["totalRestarts"] == 1
    assert status["supervision"]["lastFailure"]["resource"] == "TrainingJob iris-1"
    assert status["supervision"]["lastFailure"]["reason"] == "FailurePolicy"
    assert [(r["name"], r["phase"]) for r in status["runs"]][:1] == [("iris-1", "Failed")]
    assert status["runs"][1]["trigger"] == "Restart"

    # Run 2 succeeds: promoted, the ModelServer is created for its artifact and becomes Ready.
    done = finish_run(world, "iris-2", 0, score=0.97)
    uri = done["model"]["uri"]
    server = eventually(lambda: world.get(MS, "iris"), what="the ModelServer")
    assert server["spec"]["model"] == {"uri": uri}
    assert server["metadata"]["ownerReferences"][0]["kind"] == MP
    rs = ReplicaSetRole(world, "iris")
    eventually(lambda: world.deployment("iris"), what="the Deployment")
    serve(world, rs, "iris-a", uri)
    world.wait_condition(MP, "iris", "Ready")
    status = world.wait_phase(MP, "iris", "Serving")
    assert (status["servingRun"], status["servingVersion"], status["servingScore"]) == ("iris-2", done["model"]["version"], 0.97)
    assert status["url"] == "http://iris.default.svc:80/v2/models/iris"
    world.wait_event("iris", "Promoted")

    # A spec change starts run 3; it scores worse and mustImprove keeps run 2 served.
    world.patch_spec(MP, "iris", {"training": pipeline_spec(n_estimators=5)["training"]})
    eventually(lambda: "iris-3" in run_names(world, "iris"), what="run 3")
    finish_run(world, "iris-3", 0, score=0.5)
    eventually(lambda: world.status(MP, "iris")["runs"][-1].get("reason") == "NotBetter", what="run 3 refused by the gate")
    world.wait_event("iris", "NotPromoted")
    status = world.status(MP, "iris")
    assert status["servingRun"] == "iris-2" and status["phase"] == "Serving"
    assert world.get(MS, "iris")["spec"]["model"]["uri"] == uri
    assert rs.template()["metadata"]["annotations"][ANNOTATION] == uri
    assert operator.metric("mlvisor_reconciles_total", kind=MP, result="ok") > 0
    assert operator.metric("mlvisor_restarts_total", kind=MP) >= 1


def test_an_escalated_pipeline_keeps_serving_and_its_children_go_with_it(world: World, operator) -> None:
    world.create(MP, "tree", pipeline_spec(supervision={"maxRestarts": 1, "periodSeconds": 3600,
                                                          "backoff": {"initialSeconds": 0.2, "factor": 1, "maxSeconds": 0.2}}))
    uri = finish_run(world, "tree-1", 0, score=0.9)["model"]["uri"]
    rs = ReplicaSetRole(world, "tree")
    eventually(lambda: world.deployment("tree"), what="the Deployment")
    serve(world, rs, "tree-a", uri)
    world.wait_phase(MP, "tree", "Serving")

    world.patch_spec(MP, "tree", {"training": pipeline_spec(n_estimators=7)["training"]})
    eventually(lambda: "tree-2" in run_names(world, "tree"), what="run 2")
    finish_run(world, "tree-2", 1)  # counted: restart 1 of 1
    world.wait_pod("tree-3-worker-0-1")
    finish_run(world, "tree-3", 1)  # the second restart in the window: escalation

    failed = world.wait_condition(MP, "tree", "Failed", reason="RestartIntensityExceeded")
    assert "2 restarts within 3600s, maxRestarts is 1" in failed["message"]
    assert "keeps serving version" in failed["message"]
    assert world.wait_event("tree", "RestartIntensityExceeded")["type"] == "Warning"
    status = world.wait_phase(MP, "tree", "Failed")
    assert status["servingRun"] == "tree-1"
    # Never tear down a working server because training failed.
    stays(
        lambda: world.get(MS, "tree")["spec"]["model"]["uri"] == uri
        and world.deployment("tree")["spec"]["replicas"] == 1
        and rs.template()["metadata"]["annotations"][ANNOTATION] == uri
        and world.condition(MP, "tree", "Ready")["status"] == "True"
        and not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/trainingjobs/tree-4"),
        1.0,
        "the server keeps serving run 1 and no run starts",
    )
    eventually(lambda: operator.metric("mlvisor_escalations_total", kind=MP, reason="RestartIntensityExceeded") == 1,
               what="escalations metric")

    world.delete(MP, "tree")
    eventually(
        lambda: not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers/tree")
        and not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/trainingjobs/tree-1")
        and not world.exists("/apis/apps/v1/namespaces/default/deployments/tree"),
        what="children garbage-collected",
    )


def test_an_invalid_pipeline_gets_invalid_spec_and_no_children(world: World, operator) -> None:
    spec = pipeline_spec()
    spec["training"]["search"] = {"grid": {f"p{i}": list(range(10)) for i in range(6)}}  # a million trials
    world.create(MP, "huge", spec)
    failed = world.wait_condition(MP, "huge", "Failed", reason="InvalidSpec")
    assert "spec.training.search.grid" in failed["message"]
    # The Warning is posted after the status patch: wait for it before asserting there is one.
    assert world.wait_event("huge", "InvalidSpec")["type"] == "Warning"
    stays(lambda: not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/trainingjobs/huge-1")
          and world.event_reasons("huge").count("InvalidSpec") == 1, 1.0, "no run, one Warning")


def test_a_model_server_that_gives_up_is_recreated_by_the_pipeline(world: World, operator) -> None:
    spec = pipeline_spec(supervision={"strategy": "OneForOne", "maxRestarts": 2, "periodSeconds": 3600,
                                      "backoff": {"initialSeconds": 0.3, "factor": 1, "maxSeconds": 0.3}})
    spec["serving"]["supervision"] = {"maxRestarts": 0}  # its first crash exceeds its intensity: nothing to roll back to
    world.create(MP, "leaf", spec)
    uri = finish_run(world, "leaf-1", 0, score=0.9)["model"]["uri"]
    first = eventually(lambda: world.get(MS, "leaf"), what="the ModelServer")["metadata"]["uid"]
    rs = ReplicaSetRole(world, "leaf")
    eventually(lambda: world.deployment("leaf"), what="the Deployment")
    rs.start_pod("leaf-a", ready=False)
    rs.crash("leaf-a", 1)
    world.wait_condition(MS, "leaf", "Failed", reason="RestartIntensityExceeded")

    # The pipeline sees its serving child exit and deletes it after its back-off; it creates
    # the new one only once the old one's pods are gone (the test plays the garbage collector:
    # its pod has no ReplicaSet here), so the new one does not count the old pod's restarts.
    eventually(lambda: not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers/leaf"),
               what="the failed ModelServer deleted")
    stays(lambda: not world.exists("/apis/mlvisor.dev/v1alpha1/namespaces/default/modelservers/leaf"), 0.5,
          "no new ModelServer while the old one's pod exists")
    rs.delete_pod("leaf-a")
    world.wait_event("leaf", "ServingRestarted")
    second = eventually(lambda: world.get(MS, "leaf")["metadata"]["uid"], what="a new ModelServer")
    assert second != first
    assert world.get(MS, "leaf")["spec"]["model"] == {"uri": uri}
    status = world.status(MP, "leaf")
    assert status["supervision"]["totalRestarts"] == 1
    assert status["supervision"]["lastFailure"]["resource"] == "ModelServer leaf"
    assert status["lastRun"] == 1, "OneForOne: serving restarts alone, no retraining"
    eventually(lambda: world.deployment("leaf")["spec"]["replicas"] == 1, what="the new ModelServer's Deployment")
