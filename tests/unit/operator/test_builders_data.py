"""Builders for data from URIs: object-store credentials reach only the pods that use them, as
references to the Secret (never values), a pvc:// dataset is mounted read-only, an artifact for an
object store needs no claim unless a search's shards share trials, a remote model is downloaded
by the server pods, and mlvisor upload's pod is as restricted as every other."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pytest

from mlvisor import api
from mlvisor.operator.builders import (
    RUN_AS_ID,
    UPLOAD_MOUNT,
    build_pipeline_server,
    build_server_deployment,
    build_upload_pod,
    build_worker_pod,
    model_uri_for,
    version_of,
)
from mlvisor.operator.plan import SELECT_INDEX, ModelRef, OperatorConfig

CONFIG = OperatorConfig()
K8S = "1.32"
S3_DATA = {"uri": "s3://data/census/train.csv", "target": "income", "credentials": {"secretName": "data-reader"}}
S3_OUTPUT = {"uri": "s3://models/census", "credentials": {"secretName": "model-writer"}}


def job(**spec: Any) -> api.TrainingJob:
    body = {
        "metadata": {"name": "census", "namespace": "ml", "uid": "0123456789abcdef", "generation": 1},
        "spec": {"dataset": S3_DATA, "estimator": {"class": "sklearn.ensemble.RandomForestClassifier"}, **spec},
    }
    return api.TrainingJob.model_validate(body)


def validate(obj: dict[str, Any]) -> None:
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid: {e.message} at {list(e.path)}")


def env(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}


def secret_refs(container: dict[str, Any]) -> dict[str, tuple[str, str, bool]]:
    """variable -> (Secret, key, optional) of every env entry taken from a Secret."""
    return {e["name"]: (e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"],
                        e["valueFrom"]["secretKeyRef"]["optional"])
            for e in container["env"] if "valueFrom" in e and "secretKeyRef" in e["valueFrom"]}


def claims(pod_spec: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {v["name"]: v["persistentVolumeClaim"] for v in pod_spec["volumes"] if "persistentVolumeClaim" in v}


def test_a_plain_job_reading_and_writing_s3_gets_both_secrets_by_reference_and_no_claim() -> None:
    pod = build_worker_pod(job(output=S3_OUTPUT), 0, 1, "v1", CONFIG)
    validate(pod)
    c = pod["spec"]["containers"][0]
    refs = secret_refs(c)
    assert refs == {
        **{f"MLVISOR_DATASET_{k}": ("data-reader", k, k not in api.REQUIRED_CREDENTIAL_KEYS) for k in api.CREDENTIAL_KEYS},
        **{f"MLVISOR_OUTPUT_{k}": ("model-writer", k, k not in api.REQUIRED_CREDENTIAL_KEYS) for k in api.CREDENTIAL_KEYS},
    }
    assert all("value" not in e for e in c["env"] if e["name"] in refs), "never a value, only the reference"
    assert claims(pod["spec"]) == {}, "the artifact goes to the object store: no claim to mount"
    values = env(c)
    assert "MLVISOR_OUTPUT_DIR" not in values and "MLVISOR_DATA_DIR" not in values
    assert all(not k.startswith("AWS_") for k in values), "the plain AWS_* names stay the node's own"


def test_search_shards_get_only_the_dataset_secret_and_share_trials_on_the_claim() -> None:
    j = job(output=S3_OUTPUT, search={"grid": {"max_depth": [2, 3]}}, workers=2)
    shard = build_worker_pod(j, 1, 1, "v1", CONFIG, workers=2)
    select = build_worker_pod(j, SELECT_INDEX, 1, "v1", CONFIG, workers=2)
    for pod in (shard, select):
        validate(pod)
        assert [v["claimName"] for v in claims(pod["spec"]).values()] == [CONFIG.models_claim]
        assert env(pod["spec"]["containers"][0])["MLVISOR_OUTPUT_DIR"] == "/models/ml/census"
    assert {s for s, _, _ in secret_refs(shard["spec"]["containers"][0]).values()} == {"data-reader"}
    assert {s for s, _, _ in secret_refs(select["spec"]["containers"][0]).values()} == {"data-reader", "model-writer"}


def test_a_pvc_dataset_is_mounted_read_only_and_a_job_without_credentials_gets_no_secret() -> None:
    j = job(dataset={"uri": "pvc://datasets/census/train.parquet", "target": "income"})
    pod = build_worker_pod(j, 0, 1, "v1", CONFIG)
    validate(pod)
    c = pod["spec"]["containers"][0]
    assert secret_refs(c) == {}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert claims(pod["spec"])[mounts["/data"]["name"]] == {"claimName": "datasets", "readOnly": True}
    assert mounts["/data"]["readOnly"] is True
    assert env(c)["MLVISOR_DATA_DIR"] == "/data"
    same = build_worker_pod(job(dataset={"uri": f"pvc://{CONFIG.models_claim}/train.csv", "target": "y"}), 0, 1, "v", CONFIG)
    assert len(claims(same["spec"])) == 1, "the output claim is mounted once more, read-only, not twice"


def test_the_artifact_uri_of_an_object_store_output() -> None:
    assert model_uri_for(job(output=S3_OUTPUT), "20261204T101500Z-ab12", CONFIG) == \
        "s3://models/census/20261204T101500Z-ab12/"
    assert version_of("s3://models/census/20261204T101500Z-ab12/") == "20261204T101500Z-ab12"
    assert version_of("https://example.org/models/v7/") == "v7"


def test_a_server_of_an_s3_model_downloads_it_with_the_model_secret_and_mounts_nothing() -> None:
    body = {"metadata": {"name": "census", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"model": {"trainingJobRef": {"name": "census"}, "credentials": {"secretName": "model-reader"}}}}
    server = api.ModelServer.model_validate(body)
    d = build_server_deployment(server, ModelRef("s3://models/census/v1/", "v1"), CONFIG)
    validate(d)
    pod = d["spec"]["template"]["spec"]
    c = pod["containers"][0]
    assert env(c)["MLVISOR_MODEL_URI"] == "s3://models/census/v1/" and "MLVISOR_MODEL_DIR" not in env(c)
    assert {s for s, _, _ in secret_refs(c).values()} == {"model-reader"}
    assert set(secret_refs(c)) == {f"MLVISOR_MODEL_{k}" for k in api.CREDENTIAL_KEYS}
    assert claims(pod) == {}
    # The same server on a volume's model: no secret at all.
    d = build_server_deployment(server, ModelRef("pvc://models/ml/census/v1/", "v1"), CONFIG)
    assert secret_refs(d["spec"]["template"]["spec"]["containers"][0]) == {}


def test_a_pipeline_serves_its_runs_from_the_object_store_with_the_training_output_secret() -> None:
    body = {"metadata": {"name": "census", "namespace": "ml", "uid": "u", "generation": 1},
            "spec": {"training": {"dataset": S3_DATA, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"},
                                  "output": S3_OUTPUT}}}
    pipeline = api.ModelPipeline.model_validate(body)
    ms = build_pipeline_server(pipeline, "s3://models/census/v3/")
    assert ms["spec"]["model"] == {"uri": "s3://models/census/v3/", "credentials": {"secretName": "model-writer"}}
    api.ModelServer.model_validate({**ms, "metadata": {"name": "census"}})


def test_the_upload_pod_is_restricted_and_ends_on_its_own() -> None:
    pod = build_upload_pod("mlvisor-upload-1a2b", "ml", "datasets", "mlvisor:dev", 360)
    validate(pod)
    spec = pod["spec"]
    assert spec["restartPolicy"] == "Never" and spec["activeDeadlineSeconds"] == 360
    assert spec["automountServiceAccountToken"] is False
    psc = spec["securityContext"]
    assert psc["runAsNonRoot"] is True and psc["runAsUser"] == RUN_AS_ID and psc["seccompProfile"] == {"type": "RuntimeDefault"}
    c = spec["containers"][0]
    assert c["securityContext"] == {"allowPrivilegeEscalation": False, "readOnlyRootFilesystem": True,
                                    "runAsNonRoot": True, "capabilities": {"drop": ["ALL"]}}
    mounts = {m["mountPath"]: m["name"] for m in c["volumeMounts"]}
    assert claims(spec)[mounts[UPLOAD_MOUNT]] == {"claimName": "datasets"}
    assert "/tmp" in mounts
