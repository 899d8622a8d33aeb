"""TrainingJob scenarios: the real operator against the emulator, the test playing the kubelet."""

from __future__ import annotations

import json

from integration.world import World, eventually, stays

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
