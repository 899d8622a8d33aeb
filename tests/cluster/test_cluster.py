"""The integration scenarios against a real cluster: real API server, scheduler, kubelet, trainer and server.

Skipped unless MLVISOR_E2E_KUBECONFIG names a kubeconfig of a cluster where mlvisor is
deployed (``make e2e`` creates a kind cluster, builds and loads the image, deploys and runs
this). Here nothing is played by the test: pods really run the trainer and the model server,
so failures are provoked the way users hit them (a missing CSV file, a deleted pod, a model
version that does not exist), and what the emulator cannot show is checked for real: schema
validation and immutability at apply time, status pruning, garbage collection.
"""

from __future__ import annotations

import os

import pytest

from integration.world import HttpError, World, eventually

pytestmark = [
    pytest.mark.cluster,
    pytest.mark.skipif(
        not os.environ.get("MLVISOR_E2E_KUBECONFIG"),
        reason="no cluster: set MLVISOR_E2E_KUBECONFIG to a kubeconfig of a cluster with mlvisor deployed (make e2e does it)",
    ),
]

TJ, MS = "TrainingJob", "ModelServer"
TRAIN_TIMEOUT = 300.0


def iris(**more):
    return {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20, "random_state": 0}},
        "supervision": {"maxRestarts": 3, "periodSeconds": 300, "backoff": {"initialSeconds": 1, "factor": 2, "maxSeconds": 5}},
        **more,
    }


def test_a_job_trains_and_a_server_serves_its_model(kube: World, unique: str) -> None:
    kube.create(TJ, unique, iris())
    kube.wait_condition(TJ, unique, "Succeeded", timeout=TRAIN_TIMEOUT)
    status = kube.status(TJ, unique)
    assert status["model"]["uri"].startswith(f"pvc://mlvisor-models/{kube.ns}/{unique}/")
    assert status["observedGeneration"] == 1
    reasons = kube.event_reasons(unique)
    assert "Created" in reasons and "Succeeded" in reasons

    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT)
    server = kube.status(MS, unique)
    assert server["modelVersion"] == status["model"]["version"]
    answer = kube.request(
        "POST",
        f"/api/v1/namespaces/{kube.ns}/services/{unique}:80/proxy/v2/models/{unique}/infer",
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]},
        "application/json",
    )
    assert len(answer["outputs"][0]["data"]) == 1

    kube.delete(MS, unique)
    kube.delete(TJ, unique)
    eventually(lambda: not kube.exists(f"/apis/apps/v1/namespaces/{kube.ns}/deployments/{unique}"), 60, what="GC")


def test_the_schema_rejects_invalid_and_immutable_specs_at_apply_time(kube: World, unique: str) -> None:
    with pytest.raises(HttpError) as bad:
        kube.create(TJ, unique, iris(estimator={"class": "os.system"}))
    assert bad.value.status == 422
    kube.create(TJ, unique, iris(suspend=True))
    with pytest.raises(HttpError) as immutable:
        kube.patch_spec(TJ, unique, {"estimator": {"class": "sklearn.svm.SVC"}})
    assert immutable.value.status == 422 and "immutable" in str(immutable.value)
    kube.delete(TJ, unique)


def test_exit_2_from_the_trainer_fails_the_job_at_once(kube: World, unique: str) -> None:
    kube.create(TJ, unique, iris(dataset={"csv": {"path": "no/such/file.csv", "target": "y"}}))
    kube.wait_condition(TJ, unique, "Failed", timeout=TRAIN_TIMEOUT)
    status = kube.status(TJ, unique)
    assert status["supervision"]["lastFailure"]["exitCode"] == 2
    assert status["supervision"]["totalRestarts"] == 0
    kube.delete(TJ, unique)


def test_a_deleted_worker_is_restarted_and_counted(kube: World, unique: str) -> None:
    kube.create(TJ, unique, iris(estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                            "params": {"n_estimators": 3000}}))
    first = f"{unique}-worker-0-1"
    eventually(lambda: kube.pod(first)["status"].get("phase") == "Running", TRAIN_TIMEOUT, what="worker running")
    kube.request("DELETE", f"/api/v1/namespaces/{kube.ns}/pods/{first}", None, "")
    kube.wait_pod(f"{unique}-worker-0-2", timeout=120)
    assert kube.status(TJ, unique)["supervision"]["totalRestarts"] == 1
    kube.delete(TJ, unique)
    eventually(lambda: kube.live_pods(unique) == set(), 120, what="pods garbage-collected")


def test_a_file_uri_server_gets_invalid_spec(kube: World, unique: str) -> None:
    kube.create(MS, unique, {"model": {"uri": "file:///models/x/v1/"}})
    failed = kube.wait_condition(MS, unique, "Failed", reason="InvalidSpec", timeout=60)
    assert "file://" in failed["message"]
    kube.delete(MS, unique)
