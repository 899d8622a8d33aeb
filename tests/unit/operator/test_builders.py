"""The builders produce schema-valid, restricted, deterministic children."""

from __future__ import annotations

import json

import kubernetes_validate
import pytest

from mlvisor import api
from mlvisor.operator.builders import (
    DEFAULT_WORKER_RESOURCES,
    RUN_AS_ID,
    build_server_deployment,
    build_server_service,
    build_worker_pod,
    model_uri_for,
    parse_model_uri,
    parse_worker_index,
    version_of,
    worker_index_label,
    worker_pod_name,
)
from mlvisor.operator.plan import SELECT_INDEX, ModelRef, OperatorConfig

CONFIG = OperatorConfig()
K8S = "1.32"


def job(name: str = "iris", **spec: object) -> api.TrainingJob:
    body = {
        "metadata": {"name": name, "namespace": "ml", "uid": "0123456789abcdef", "generation": 1},
        "spec": {
            "dataset": {"builtin": "iris"},
            "estimator": {"class": "sklearn.linear_model.LogisticRegression"},
            **spec,
        },
    }
    return api.TrainingJob.model_validate(body)


def server(name: str = "iris", **spec: object) -> api.ModelServer:
    body = {
        "metadata": {"name": name, "namespace": "ml", "uid": "fedcba9876543210", "generation": 1},
        "spec": {"model": {"trainingJobRef": {"name": "iris"}}, **spec},
    }
    return api.ModelServer.model_validate(body)


def validate(obj: dict) -> None:
    try:
        kubernetes_validate.validate(obj, K8S, strict=True)
    except kubernetes_validate.ValidationError as e:  # keep the failure short
        pytest.fail(f"{obj['kind']} {obj['metadata']['name']} is invalid: {e.message} at {list(e.path)}")


def env_of(container: dict) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def assert_restricted(pod_spec: dict) -> None:
    psc = pod_spec["securityContext"]
    assert psc["runAsNonRoot"] is True
    assert psc["runAsUser"] == RUN_AS_ID and psc["runAsGroup"] == RUN_AS_ID and psc["fsGroup"] == RUN_AS_ID
    assert psc["seccompProfile"] == {"type": "RuntimeDefault"}
    for c in pod_spec["containers"]:
        csc = c["securityContext"]
        assert csc["allowPrivilegeEscalation"] is False
        assert csc["readOnlyRootFilesystem"] is True
        assert csc["capabilities"] == {"drop": ["ALL"]}
    tmp = [v for v in pod_spec["volumes"] if "emptyDir" in v]
    assert tmp, "a read-only root filesystem needs a writable /tmp"
    mounts = {m["mountPath"]: m["name"] for c in pod_spec["containers"] for m in c["volumeMounts"]}
    assert mounts["/tmp"] == tmp[0]["name"]


# --------------------------------------------------------------------------- names and URIs


def test_worker_and_select_names() -> None:
    assert worker_pod_name("iris", 0, 1) == "iris-worker-0-1"
    assert worker_pod_name("iris", 3, 12) == "iris-worker-3-12"
    assert worker_pod_name("iris", SELECT_INDEX, 2) == "iris-select-2"


def test_long_names_are_shortened_deterministically_and_stay_distinct() -> None:
    a = "a" * 60 + "xyz"
    b = "a" * 60 + "xyw"
    na, nb = worker_pod_name(a, 63, 1000), worker_pod_name(b, 63, 1000)
    assert len(na) <= 63 and len(nb) <= 63
    assert na.endswith("-worker-63-1000") and nb.endswith("-worker-63-1000")
    assert na != nb
    assert na == worker_pod_name(a, 63, 1000)
    assert not na.startswith("-")
    assert len(worker_pod_name(a, SELECT_INDEX, 7)) <= 63


def test_worker_index_label_round_trip() -> None:
    for i in (0, 5, SELECT_INDEX):
        assert parse_worker_index(worker_index_label(i)) == i
    assert worker_index_label(SELECT_INDEX) == "select"


def test_model_uris() -> None:
    j = job()
    uri = model_uri_for(j, "01234567-1", CONFIG)
    assert uri == "pvc://mlvisor-models/ml/iris/01234567-1/"
    assert parse_model_uri(uri) == ("mlvisor-models", "ml/iris/01234567-1")
    assert version_of(uri) == "01234567-1"
    assert model_uri_for(job(output={"volumeClaim": "other"}), "v", CONFIG).startswith("pvc://other/")
    assert parse_model_uri("file:///tmp/models/iris/v3/") == (None, "/tmp/models/iris/v3")
    assert version_of("file:///tmp/models/iris/v3/") == "v3"
    for bad in ("s3://bucket/x/", "pvc://claim-only/", "file://relative/x"):
        with pytest.raises(ValueError):
            parse_model_uri(bad)


# --------------------------------------------------------------------------- worker pods


def test_plain_worker_pod() -> None:
    pod = build_worker_pod(job(), 0, 1, "01234567-1", CONFIG)
    validate(pod)
    meta, spec = pod["metadata"], pod["spec"]
    assert meta["name"] == "iris-worker-0-1" and meta["namespace"] == "ml"
    assert meta["labels"] == {
        "app.kubernetes.io/name": "mlvisor",
        "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/component": "worker",
        "app.kubernetes.io/managed-by": "mlvisor",
        "mlvisor.dev/worker-index": "0",
        "mlvisor.dev/attempt": "1",
    }
    assert meta["ownerReferences"] == [
        {
            "apiVersion": "mlvisor.dev/v1alpha1",
            "kind": "TrainingJob",
            "name": "iris",
            "uid": "0123456789abcdef",
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]
    assert spec["restartPolicy"] == "Never"
    assert "activeDeadlineSeconds" not in spec
    assert_restricted(spec)
    (c,) = spec["containers"]
    assert c["name"] == "trainer" and c["image"] == CONFIG.image
    assert c["command"] == ["python", "-m", "mlvisor.trainer"]
    assert c["args"] == ["--worker-index", "0", "--workers", "1"]
    assert c["terminationMessagePolicy"] == "FallbackToLogsOnError"
    assert c["resources"] == DEFAULT_WORKER_RESOURCES
    env = env_of(c)
    assert json.loads(env["MLVISOR_SPEC"]) == job().spec.to_wire()
    assert env["MLVISOR_MODEL_NAME"] == "iris"
    assert env["MLVISOR_MODEL_VERSION"] == "01234567-1"
    assert env["MLVISOR_OUTPUT_DIR"] == "/models/ml/iris"
    assert env["PYTHONUNBUFFERED"] == "1"
    assert "MLVISOR_DATA_DIR" not in env
    claims = [v["persistentVolumeClaim"]["claimName"] for v in spec["volumes"] if "persistentVolumeClaim" in v]
    assert claims == ["mlvisor-models"]


def test_search_worker_and_select_pods() -> None:
    j = job(search={"grid": {"C": [0.1, 1.0, 10.0]}}, workers=3, image="example/trainer:1")
    w = build_worker_pod(j, 2, 4, "v", CONFIG)
    s = build_worker_pod(j, SELECT_INDEX, 1, "v", CONFIG)
    for pod in (w, s):
        validate(pod)
        assert_restricted(pod["spec"])
        assert pod["spec"]["containers"][0]["image"] == "example/trainer:1"
    assert w["spec"]["containers"][0]["args"] == ["--worker-index", "2", "--workers", "3"]
    assert w["metadata"]["labels"]["mlvisor.dev/attempt"] == "4"
    assert s["metadata"]["name"] == "iris-select-1"
    assert s["spec"]["containers"][0]["args"] == ["--select", "--workers", "3"]
    assert s["metadata"]["labels"]["app.kubernetes.io/component"] == "select"
    assert s["metadata"]["labels"]["mlvisor.dev/worker-index"] == "select"


def test_csv_on_the_models_claim_reuses_the_volume_read_only() -> None:
    j = job(dataset={"csv": {"path": "data/train.csv", "target": "y"}})
    pod = build_worker_pod(j, 0, 1, "v", CONFIG)
    validate(pod)
    spec = pod["spec"]
    assert len([v for v in spec["volumes"] if "persistentVolumeClaim" in v]) == 1
    mounts = {m["mountPath"]: m for m in spec["containers"][0]["volumeMounts"]}
    assert mounts["/data"]["name"] == mounts["/models"]["name"]
    assert mounts["/data"]["readOnly"] is True
    assert not mounts["/models"].get("readOnly", False)
    assert env_of(spec["containers"][0])["MLVISOR_DATA_DIR"] == "/data"


def test_csv_on_its_own_claim_gets_its_own_read_only_volume() -> None:
    j = job(dataset={"csv": {"path": "train.csv", "target": "y", "volumeClaim": "datasets"}})
    pod = build_worker_pod(j, 0, 1, "v", CONFIG)
    validate(pod)
    vols = {v["name"]: v for v in pod["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in pod["spec"]["containers"][0]["volumeMounts"]}
    data = vols[mounts["/data"]["name"]]["persistentVolumeClaim"]
    assert data == {"claimName": "datasets", "readOnly": True}
    assert mounts["/data"]["readOnly"] is True


def test_spec_resources_replace_the_defaults() -> None:
    j = job(resources={"requests": {"cpu": 1, "memory": "1Gi"}, "limits": {"memory": "4Gi"}})
    pod = build_worker_pod(j, 0, 1, "v", CONFIG)
    validate(pod)
    assert pod["spec"]["containers"][0]["resources"] == {
        "requests": {"cpu": "1", "memory": "1Gi"},
        "limits": {"memory": "4Gi"},
    }


def test_local_resources_without_uid_get_no_owner_reference() -> None:
    j = api.TrainingJob.model_validate(
        {
            "metadata": {"name": "iris"},
            "spec": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.svm.SVC"}},
        }
    )
    pod = build_worker_pod(j, 0, 1, "v", CONFIG)
    assert "ownerReferences" not in pod["metadata"]
    validate(pod)


# --------------------------------------------------------------------------- server


def test_server_deployment_for_a_pvc_model() -> None:
    s = server(replicas=3, modelName="flowers", batching={"maxBatchSize": 32, "maxLatencyMs": 2.5},
               startupTimeoutSeconds=61)
    uri = "pvc://mlvisor-models/ml/iris/abc-1/"
    d = build_server_deployment(s, ModelRef(uri, "abc-1"), CONFIG)
    validate(d)
    assert d["metadata"]["name"] == "iris"
    assert d["metadata"]["ownerReferences"][0]["kind"] == "ModelServer"
    spec = d["spec"]
    assert spec["replicas"] == 3
    selector = spec["selector"]["matchLabels"]
    assert selector == {
        "app.kubernetes.io/name": "mlvisor",
        "app.kubernetes.io/instance": "iris",
        "app.kubernetes.io/component": "server",
    }
    tmpl = spec["template"]
    assert selector.items() <= tmpl["metadata"]["labels"].items()
    assert tmpl["metadata"]["annotations"] == {
        "mlvisor.dev/model-uri": uri,
        "mlvisor.dev/model-version": "abc-1",
    }
    assert spec["strategy"] == {"type": "RollingUpdate", "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1}}
    assert_restricted(tmpl["spec"])
    (c,) = tmpl["spec"]["containers"]
    assert c["command"] == ["python", "-m", "mlvisor.server"]
    env = env_of(c)
    assert env["MLVISOR_MODEL_DIR"] == "/models/ml/iris/abc-1"
    assert env["MLVISOR_MODEL_NAME"] == "flowers"
    assert env["MLVISOR_PORT"] == "8080" and env["MLVISOR_HOST"] == "0.0.0.0"
    assert env["MLVISOR_MAX_BATCH_SIZE"] == "32" and env["MLVISOR_MAX_LATENCY_MS"] == "2.5"
    assert c["ports"] == [{"name": "http", "containerPort": 8080, "protocol": "TCP"},
                          {"name": "grpc", "containerPort": 8081, "protocol": "TCP"}]
    assert env["MLVISOR_GRPC_PORT"] == "8081"
    assert c["readinessProbe"]["httpGet"] == {"path": "/v2/health/ready", "port": "http"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/v2/health/live", "port": "http"}
    startup = c["startupProbe"]
    assert startup["httpGet"]["path"] == "/v2/health/ready"
    assert startup["periodSeconds"] * startup["failureThreshold"] >= 61
    assert startup["periodSeconds"] * (startup["failureThreshold"] - 1) < 61
    vols = {v["name"]: v for v in tmpl["spec"]["volumes"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    assert mounts["/models"]["readOnly"] is True
    assert vols[mounts["/models"]["name"]]["persistentVolumeClaim"] == {
        "claimName": "mlvisor-models",
        "readOnly": True,
    }


def test_server_deployment_scaled_to_zero_and_file_uri() -> None:
    s = server()
    d = build_server_deployment(s, ModelRef("file:///srv/models/iris/v1/", "v1"), CONFIG, replicas=0)
    validate(d)
    assert d["spec"]["replicas"] == 0
    pod_spec = d["spec"]["template"]["spec"]
    assert not [v for v in pod_spec["volumes"] if "persistentVolumeClaim" in v or "hostPath" in v]
    assert env_of(pod_spec["containers"][0])["MLVISOR_MODEL_DIR"] == "/srv/models/iris/v1"
    assert env_of(pod_spec["containers"][0])["MLVISOR_MODEL_NAME"] == "iris"


def test_server_service() -> None:
    s = server(service={"type": "NodePort", "port": 9000, "grpcPort": 9001})
    svc = build_server_service(s, CONFIG)
    validate(svc)
    assert svc["metadata"]["name"] == "iris"
    assert svc["spec"]["type"] == "NodePort"
    assert svc["spec"]["ports"] == [
        {"name": "http", "port": 9000, "targetPort": "http", "protocol": "TCP"},
        {"name": "grpc", "port": 9001, "targetPort": "grpc", "protocol": "TCP", "appProtocol": "kubernetes.io/h2c"},
    ]
    d = build_server_deployment(s, ModelRef("pvc://c/x/v/", "v"), CONFIG)
    assert svc["spec"]["selector"] == d["spec"]["selector"]["matchLabels"]
    assert [p["name"] for p in d["spec"]["template"]["spec"]["containers"][0]["ports"]] == ["http", "grpc"]


def test_server_without_grpc() -> None:
    """grpcPort 0: no gRPC port on the Service or the pods, and the server does not listen for it."""
    s = server(service={"port": 80, "grpcPort": 0})
    svc = build_server_service(s, CONFIG)
    validate(svc)
    assert [p["name"] for p in svc["spec"]["ports"]] == ["http"]
    d = build_server_deployment(s, ModelRef("pvc://c/x/v/", "v"), CONFIG)
    validate(d)
    (c,) = d["spec"]["template"]["spec"]["containers"]
    assert [p["name"] for p in c["ports"]] == ["http"]
    assert env_of(c)["MLVISOR_GRPC_PORT"] == "0"


def test_server_selector_string_selects_the_deployments_pods() -> None:
    from mlvisor.operator.builders import server_selector_string

    s = server()
    d = build_server_deployment(s, ModelRef("pvc://c/x/v/", "v"), CONFIG)
    parsed = dict(kv.split("=", 1) for kv in server_selector_string(s).split(","))
    assert parsed == d["spec"]["selector"]["matchLabels"]
    assert parsed.items() <= d["spec"]["template"]["metadata"]["labels"].items()


def test_validation_catches_a_broken_object() -> None:
    """The schema check itself can fail: a misspelt field is refused."""
    pod = build_worker_pod(job(), 0, 1, "v", CONFIG)
    pod["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(pod, K8S, strict=True)
