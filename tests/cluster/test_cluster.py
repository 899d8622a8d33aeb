"""The user's path on a real Kubernetes control plane: install, apply, wait, get, predict, break things.

Runs on the cluster built from Go modules (tests/controlplane: real kube-apiserver,
controller-manager, scheduler and etcd, and a node whose kubelet, kube-proxy, containerd and
runc run mlvisor's image built from its Dockerfile), or on kind through ``make e2e``. Nothing
here plays a controller or the kubelet: pods really run the trainer and the model server from
the image, the API server validates with the generated CRDs and their CEL rules, the garbage
collector deletes children, the Deployment controller restarts servers, and every call the
operator makes is authorized by its ClusterRole as its ServiceAccount.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import yaml

from cluster.conftest import NAMESPACE, OPERATOR_NS, OPERATOR_SA, REPO, Cluster
from emulator.world import HttpError, World, eventually

pytestmark = [pytest.mark.cluster]

TJ, MS = "TrainingJob", "ModelServer"
IMAGE = "mlvisor:dev"  # what the manifests run; on the suite's node and on kind it is never pulled
TRAIN_TIMEOUT = 240.0
SERVE_TIMEOUT = 240.0
ROW = [5.1, 3.5, 1.4, 0.2]


def iris(**more: Any) -> dict[str, Any]:
    return {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 20, "random_state": 0}},
        "supervision": {"maxRestarts": 3, "periodSeconds": 300, "backoff": {"initialSeconds": 1, "factor": 2, "maxSeconds": 5}},
        **more,
    }


def _schema_cases() -> Any:
    """The invalid-resource cases of the schema tier (tests/schema/test_crds.py), loaded by path."""
    path = REPO / "tests" / "schema" / "test_crds.py"
    spec = importlib.util.spec_from_file_location("schema_cases_for_cluster", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


CASES = _schema_cases()


def server_pods(kube: World, name: str) -> list[dict[str, Any]]:
    return [p for p in kube.pods(name).values() if "worker" not in p["metadata"]["name"]
            and not p["metadata"].get("deletionTimestamp")]


def predict_on_pod(pod: dict[str, Any], model: str, row: list[float] = ROW) -> dict[str, Any]:
    port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p.get("name") == "http")
    body = {"inputs": [{"name": "input-0", "shape": [1, len(row)], "datatype": "FP64", "data": row}]}
    req = urllib.request.Request(f"http://{pod['status']['podIP']}:{port}/v2/models/{model}/infer",
                                 data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return json.loads(r.read())


def built_only(cluster: Cluster, why: str) -> None:
    if not cluster.built:
        pytest.skip(f"needs the suite's own control plane ({why}); on kind this is not reachable from the test")


# ---------------------------------------------------------------------------------- install


def test_the_install_is_established_and_the_operator_runs_as_its_service_account(cluster: Cluster, kube: World) -> None:
    for crd in ("trainingjobs.mlvisor.dev", "modelservers.mlvisor.dev"):
        got = json.loads(cluster.kubectl("get", f"crd/{crd}", "-o", "json").stdout)
        conditions = {c["type"]: c["status"] for c in got["status"]["conditions"]}
        assert conditions.get("Established") == "True" and conditions.get("NamesAccepted") == "True", conditions
    pods = json.loads(cluster.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
    running = [p for p in pods if p["status"].get("phase") == "Running"]
    assert len(running) == 1, [p["metadata"]["name"] for p in pods]
    assert running[0]["spec"]["serviceAccountName"] == "mlvisor-operator"
    assert running[0]["spec"]["nodeName"], "the operator pod was scheduled onto a node and runs there"
    if cluster.built:
        # The operator's calls reach the API server as its ServiceAccount (the token the node
        # mounted at the in-cluster path), so RBAC decides every one of them.
        eventually(lambda: any(e["user"]["username"] == OPERATOR_SA for e in cluster.audit()), 60,
                   what="a request of the operator's ServiceAccount in the audit log")


def test_pod_security_restricted_is_enforced_where_the_samples_run(cluster: Cluster) -> None:
    ns = json.loads(cluster.kubectl("get", "namespace", NAMESPACE, "-o", "json").stdout)
    assert ns["metadata"]["labels"].get("pod-security.kubernetes.io/enforce") == "restricted"
    # The admission plugin is really on: a pod that breaks the standard is refused at once.
    bad = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "privileged-probe", "namespace": NAMESPACE},
           "spec": {"containers": [{"name": "c", "image": "busybox"}]}}  # no securityContext: baseline, not restricted
    refused = cluster.kubectl("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0 and "violates PodSecurity" in refused.stderr, refused.stderr


def test_a_pod_whose_volume_appears_later_starts_once_it_exists(cluster: Cluster, unique: str) -> None:
    # What a first `kubectl apply` of a new namespace and its workload meets on any cluster: a
    # ConfigMap, Secret or claim a pod mounts may appear a moment after the pod. The kubelet
    # retries the mount (Warning FailedMount, the pod stays ContainerCreating) until it can.
    restricted = {"runAsNonRoot": True, "runAsUser": 10001, "seccompProfile": {"type": "RuntimeDefault"}}
    pod = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": unique, "namespace": NAMESPACE},
           "spec": {"restartPolicy": "Never", "securityContext": restricted,
                    "containers": [{"name": "c", "image": IMAGE, "imagePullPolicy": "IfNotPresent",
                                    "command": ["python", "-c", "print(open('/cfg/greeting').read())"],
                                    "volumeMounts": [{"name": "cfg", "mountPath": "/cfg"}],
                                    "securityContext": {"allowPrivilegeEscalation": False,
                                                        "capabilities": {"drop": ["ALL"]}}}],
                    "volumes": [{"name": "cfg", "configMap": {"name": unique}}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(pod))
    try:
        def failed_mount() -> bool:
            events = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "events", "-o", "json",
                                                "--field-selector", f"involvedObject.name={unique}").stdout)["items"]
            return any(e["reason"] == "FailedMount" and unique in e["message"] for e in events)

        eventually(failed_mount, 60, what="a FailedMount Warning for the missing ConfigMap")
        got = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pod", unique, "-o", "json").stdout)
        assert got["status"]["phase"] == "Pending", got["status"]
        cluster.kubectl("-n", NAMESPACE, "create", "configmap", unique, "--from-literal=greeting=hello from later")
        eventually(lambda: json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pod", unique, "-o", "json").stdout)
                   ["status"].get("phase") == "Succeeded", 60, what="the pod ran once its ConfigMap existed")
        assert "hello from later" in cluster.kubectl("-n", NAMESPACE, "logs", unique).stdout
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod,configmap", unique, "--ignore-not-found", "--wait=false")


# ---------------------------------------------------------------------------------- schema


@pytest.mark.parametrize(("base", "field", "value", "named"), CASES.INVALID, ids=[f"{b}:{f}" for b, f, _, _ in CASES.INVALID])
def test_the_api_server_rejects_each_invalid_resource_naming_the_field(cluster: Cluster, base: str, field: str,
                                                                       value: Any, named: str, unique: str,
                                                                       tmp_path: Path) -> None:
    doc = {"job": CASES._job, "server": CASES._server, "pipeline": CASES._pipeline}[base]()
    CASES._set(doc, field, value)
    doc["metadata"] = {"name": unique, "namespace": NAMESPACE}
    # JSON, not YAML: kubectl reads YAML 1.1, where the case's `target: y` would be a boolean.
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(doc))
    applied = cluster.kubectl("apply", "-f", str(path), check=False)
    assert applied.returncode != 0, f"the API server accepted {field}={value!r}"
    assert named in applied.stderr, applied.stderr
    # mlvisor validate names the same field.
    validated = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "validate", str(path)],
                               capture_output=True, text=True)
    assert validated.returncode == 1 and named in validated.stderr


def test_training_fields_are_immutable_on_update_but_suspend_is_not(cluster: Cluster, kube: World, unique: str) -> None:
    kube.create(TJ, unique, iris(suspend=True))
    with pytest.raises(HttpError) as immutable:
        kube.patch_spec(TJ, unique, {"estimator": {"class": "sklearn.svm.SVC"}})
    assert immutable.value.status == 422 and "spec.estimator is immutable" in str(immutable.value)
    changed = cluster.kubectl("patch", "tj", unique, "--type=merge", "-p", '{"spec":{"testSize":0.3}}', check=False)
    assert changed.returncode != 0 and "spec.testSize is immutable" in changed.stderr
    kube.patch_spec(TJ, unique, {"supervision": {"maxRestarts": 7}})
    assert kube.get(TJ, unique)["spec"]["supervision"]["maxRestarts"] == 7
    kube.delete(TJ, unique)


EXPLAINED = ["trainingjob.spec.supervision.maxRestarts", "trainingjob.spec.supervision.failurePolicy",
             "trainingjob.spec.search", "trainingjob.status.supervision", "modelserver.spec.supervision",
             "modelserver.spec.model.trainingJobRef", "modelserver.status.lastGoodModelUri"]


@pytest.mark.parametrize("path", EXPLAINED)
def test_kubectl_explain_shows_the_descriptions_written_in_api_py(cluster: Cluster, path: str) -> None:
    kind, *fields = path.split(".")
    crd = yaml.safe_load((REPO / "manifests" / "crds" / f"{kind}s.mlvisor.dev.yaml").read_text())
    node = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    for f in fields:
        node = node["properties"][f]
        node = node.get("items", node) if node.get("type") == "array" and f != fields[-1] else node
    expected = " ".join(node["description"].split())
    out = " ".join(cluster.kubectl("explain", path).stdout.split())
    assert expected[:200] in out, f"kubectl explain {path}:\n{out}\nexpected:\n{expected}"


# ---------------------------------------------------------------------------------- the samples


def _apply_sample(cluster: Cluster, name: str) -> None:
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", str(REPO / "manifests" / "samples" / name))


def test_the_samples_train_serve_and_answer_on_the_server_pod_ip(cluster: Cluster, kube: World) -> None:
    _apply_sample(cluster, "iris.yaml")
    _apply_sample(cluster, "search.yaml")
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={TRAIN_TIMEOUT:.0f}s",
                    "trainingjob/iris", "trainingjob/iris-search", timeout=TRAIN_TIMEOUT + 10)
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"--timeout={SERVE_TIMEOUT:.0f}s",
                    "modelserver/iris", timeout=SERVE_TIMEOUT + 10)
    job = kube.status(TJ, "iris")
    assert job["model"]["uri"].startswith(f"pvc://mlvisor-models/{NAMESPACE}/iris/") and job["model"]["score"] > 0.8
    search = kube.status(TJ, "iris-search")
    assert search["model"]["bestParams"], search["model"]
    assert {p for p in kube.pods("iris-search")} == {"iris-search-worker-0-1", "iris-search-worker-1-1", "iris-search-select-1"}

    table = cluster.kubectl("-n", NAMESPACE, "get", "tj,ms").stdout
    header_tj, header_ms = [line for line in table.splitlines() if line.startswith("NAME")][:2]
    for column in ("PHASE", "WORKERS", "RESTARTS", "SCORE", "SUCCEEDED", "AGE"):
        assert column in header_tj, header_tj
    for column in ("PHASE", "READY", "REPLICAS", "MODEL-VERSION", "URL"):
        assert column in header_ms, header_ms
    assert "Succeeded" in table and "Ready" in table

    pods = server_pods(kube, "iris")
    assert len(pods) == 1 and pods[0]["status"].get("podIP")
    if cluster.built:  # on kind, pod IPs live inside the node container's network
        answer = predict_on_pod(pods[0], "iris")
        assert answer["model_name"] == "iris" and answer["outputs"][0]["data"] == [0]
    via_service = kube.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/services/iris:80/proxy/v2/models/iris/infer",
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}, "application/json")
    assert via_service["outputs"][0]["data"] == [0]
    # The Service's EndpointSlice (kube-controller-manager) points at the ready server pod.
    slices = kube.request("GET", f"/apis/discovery.k8s.io/v1/namespaces/{NAMESPACE}/endpointslices"
                          "?labelSelector=kubernetes.io%2Fservice-name%3Diris", None, "")["items"]
    addresses = {a for s in slices for e in s.get("endpoints") or [] if (e.get("conditions") or {}).get("ready")
                 for a in e["addresses"]}
    assert addresses == {pods[0]["status"]["podIP"]}


def test_kubectl_logs_shows_the_trainer_output(cluster: Cluster, kube: World) -> None:
    eventually(lambda: kube.status(TJ, "iris").get("phase") == "Succeeded", TRAIN_TIMEOUT, what="the iris sample")
    logs = cluster.kubectl("-n", NAMESPACE, "logs", "iris-worker-0-1").stdout
    assert '"event"' in logs, logs[-2000:]


# ---------------------------------------------------------------------------------- conditions


def _wait_in_background(cluster: Cluster, *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen([shutil.which("kubectl") or "kubectl", "-n", NAMESPACE, "wait", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=dict(os.environ, KUBECONFIG=cluster.kubeconfig))


def _finish(proc: subprocess.Popen[str], timeout: float) -> str:
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, f"kubectl wait failed: {out}{err}"
    return out


def test_kubectl_wait_works_for_every_training_job_condition(cluster: Cluster, kube: World, unique: str) -> None:
    slow = iris(estimator={"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 1500}},
                supervision={"maxRestarts": 3, "periodSeconds": 300, "backoff": {"initialSeconds": 4, "factor": 1, "maxSeconds": 4}})
    restarting = _wait_in_background(cluster, "--for=condition=Restarting", "--timeout=200s", f"tj/{unique}")
    kube.create(TJ, unique, slow)
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Created", "--timeout=60s", f"tj/{unique}")
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Running", "--timeout=120s", f"tj/{unique}")
    first = f"{unique}-worker-0-1"
    eventually(lambda: kube.pod(first)["status"].get("phase") == "Running", TRAIN_TIMEOUT, what="worker running")
    kube.request("DELETE", f"/api/v1/namespaces/{NAMESPACE}/pods/{first}", None, "")
    _finish(restarting, 200)
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={TRAIN_TIMEOUT:.0f}s",
                    f"tj/{unique}", timeout=TRAIN_TIMEOUT + 10)
    status = kube.status(TJ, unique)
    assert status["supervision"]["totalRestarts"] == 1
    assert set(kube.pods(unique)) == {f"{unique}-worker-0-2"}  # the deleted one is gone, its replacement stays

    # Suspending a running job stops its workers (the operator deletes their pods) and resumes later.
    suspended = f"{unique}-s"
    kube.create(TJ, suspended, slow)
    eventually(lambda: kube.pod(f"{suspended}-worker-0-1")["status"].get("phase") == "Running", TRAIN_TIMEOUT,
               what="worker running")
    cluster.kubectl("-n", NAMESPACE, "patch", f"tj/{suspended}", "--type=merge", "-p", '{"spec":{"suspend":true}}')
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Suspended", "--timeout=60s", f"tj/{suspended}")
    eventually(lambda: not kube.live_pods(suspended), 60, what="the suspended job's pods deleted")

    failed = f"{unique}-f"
    kube.create(TJ, failed, iris(dataset={"csv": {"path": "no/such/file.csv", "target": "y"}}))
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Failed", f"--timeout={TRAIN_TIMEOUT:.0f}s",
                    f"tj/{failed}", timeout=TRAIN_TIMEOUT + 10)
    status = kube.status(TJ, failed)
    assert status["supervision"]["lastFailure"]["exitCode"] == 2 and status["supervision"]["totalRestarts"] == 0
    for name in (unique, suspended, failed):
        kube.delete(TJ, name)
    eventually(lambda: not any(kube.live_pods(n) for n in (unique, suspended, failed)), 120, what="pods garbage-collected")


def test_grpc_kubectl_scale_and_an_hpa_on_a_model_server(cluster: Cluster, kube: World, unique: str) -> None:
    """tritonclient.grpc on the pod's gRPC port; the scale subresource from kubectl and from the
    HPA controller of the real kube-controller-manager; neither counts as a restart."""
    import numpy as np
    import tritonclient.grpc as grpcclient

    built_only(cluster, "pod IPs are reachable from the test only on the suite's own node")
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    status = kube.status(MS, unique)
    assert status["grpcAddress"].startswith(f"{unique}.{NAMESPACE}.svc") and status["grpcAddress"].endswith(":8081")
    ports = {p["name"]: p["port"] for p in kube.service(unique)["spec"]["ports"]}
    assert ports == {"http": 80, "grpc": 8081}, ports

    (pod,) = server_pods(kube, unique)
    grpc_port = next(p["containerPort"] for p in pod["spec"]["containers"][0]["ports"] if p["name"] == "grpc")
    client = grpcclient.InferenceServerClient(f"{pod['status']['podIP']}:{grpc_port}")
    try:
        assert client.is_server_ready() and client.is_model_ready(unique)
        x = grpcclient.InferInput("input-0", [2, 4], "FP64")
        x.set_data_from_numpy(np.array([ROW, [6.7, 3.0, 5.2, 2.3]], dtype=np.float64))
        result = client.infer(unique, [x], outputs=[grpcclient.InferRequestedOutput("predict")])
        rest = predict_on_pod(pod, unique, [6.7, 3.0, 5.2, 2.3])["outputs"][0]["data"]
        assert result.as_numpy("predict").tolist() == [0, *rest]
    finally:
        client.close()

    # kubectl scale writes the scale subresource; the operator rolls it out, no restart counted.
    cluster.kubectl("-n", NAMESPACE, "scale", f"ms/{unique}", "--replicas=2")
    eventually(lambda: kube.get("ModelServer", unique)["status"].get("replicas") == 2
               and len(server_pods(kube, unique)) == 2, SERVE_TIMEOUT, what="two server pods after kubectl scale")
    selector = cluster.kubectl("-n", NAMESPACE, "get", f"ms/{unique}", "-o", "jsonpath={.status.selector}").stdout
    assert selector and len(kube.request("GET", f"/api/v1/namespaces/{NAMESPACE}/pods?labelSelector={quote(selector)}",
                                         None, "")["items"]) == 2, selector

    # An HPA targets the ModelServer: below minReplicas, the HPA controller scales it up itself
    # (before any metric is read, so no metrics-server is needed for this step).
    hpa = {"apiVersion": "autoscaling/v2", "kind": "HorizontalPodAutoscaler",
           "metadata": {"name": unique, "namespace": NAMESPACE},
           "spec": {"scaleTargetRef": {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "ModelServer", "name": unique},
                    "minReplicas": 3, "maxReplicas": 3,
                    "metrics": [{"type": "Resource", "resource": {"name": "cpu", "target": {
                        "type": "Utilization", "averageUtilization": 70}}}]}}
    cluster.kubectl("apply", "-f", "-", input=json.dumps(hpa))
    try:
        eventually(lambda: kube.get("ModelServer", unique)["spec"]["replicas"] == 3, 90,
                   what="the HPA controller raising spec.replicas to minReplicas")
        eventually(lambda: kube.get("ModelServer", unique)["status"].get("replicas") == 3, SERVE_TIMEOUT,
                   what="three server replicas after the HPA")
        hpa_status = cluster.kubectl("-n", NAMESPACE, "get", f"hpa/{unique}", "-o", "json").stdout
        assert json.loads(hpa_status)["status"].get("currentReplicas") in (2, 3), hpa_status
    finally:
        cluster.kubectl("-n", NAMESPACE, "delete", f"hpa/{unique}", check=False)
    assert kube.status(MS, unique).get("supervision", {}).get("totalRestarts", 0) == 0
    kube.delete(MS, unique)
    kube.delete(TJ, unique)
    eventually(lambda: not kube.live_pods(unique), 120, what="server and worker pods garbage-collected")


def test_a_killed_server_restarts_under_its_deployment_and_counts_degraded_then_ready(cluster: Cluster, kube: World,
                                                                                      unique: str) -> None:
    built_only(cluster, "the server's container is killed through the node's containerd")
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1,
                             "supervision": {"maxRestarts": 5, "periodSeconds": 300}})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    (pod,) = server_pods(kube, unique)
    degraded = _wait_in_background(cluster, "--for=condition=Degraded", "--timeout=120s", f"ms/{unique}")
    time.sleep(1)  # kubectl wait has read the current state and watches from there
    container = pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")
    cluster.ctr("tasks", "kill", "--signal", "SIGKILL", container)
    _finish(degraded, 130)
    kube.wait_condition(MS, unique, "Ready", timeout=SERVE_TIMEOUT)
    after = kube.pod(pod["metadata"]["name"])  # the same pod: the kubelet restarted the container in place
    cs = after["status"]["containerStatuses"][0]
    assert cs["restartCount"] == 1 and cs["lastState"]["terminated"]["exitCode"] == 137
    eventually(lambda: kube.status(MS, unique).get("supervision", {}).get("totalRestarts") == 1, 60,
               what="the restart counted in the ModelServer's window")
    assert predict_on_pod(after, unique)["outputs"][0]["data"] == [0]
    # A new Service port is applied to the live Service (merge-patched, not re-created).
    uid = kube.service(unique)["metadata"]["uid"]
    kube.patch_spec(MS, unique, {"service": {"port": 8090}})
    eventually(lambda: kube.service(unique)["spec"]["ports"][0]["port"] == 8090, 60, what="the Service port patched")
    ports = {p["name"]: p["port"] for p in kube.service(unique)["spec"]["ports"]}
    assert ports == {"http": 8090, "grpc": 8081}, ports  # the gRPC port (default 8081) stays beside it
    assert kube.service(unique)["metadata"]["uid"] == uid
    kube.delete(MS, unique)
    eventually(lambda: not kube.exists(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{unique}")
               and not kube.exists(f"/api/v1/namespaces/{NAMESPACE}/services/{unique}")
               and not server_pods(kube, unique), 120, what="Deployment, Service and pods garbage-collected")
    kube.delete(TJ, unique)
    eventually(lambda: not kube.live_pods(unique), 120, what="worker pods garbage-collected")


def _models_folder(cluster: Cluster) -> Path:
    claim = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pvc", "mlvisor-models", "-o", "json").stdout)
    pv = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    return Path(pv["spec"]["hostPath"]["path"])


def test_a_broken_model_rolls_back_to_the_last_good_version(cluster: Cluster, kube: World, unique: str) -> None:
    built_only(cluster, "a broken artifact is written into the claim's folder on the node")
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1, "startupTimeoutSeconds": 60,
                             "supervision": {"maxRestarts": 1, "periodSeconds": 600, "onExhausted": "Rollback"}})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    good = kube.status(MS, unique)
    version = good["modelVersion"]
    folder = _models_folder(cluster) / NAMESPACE / unique
    broken = folder / f"{version}-broken"
    shutil.copytree(folder / version, broken)
    (broken / "model.skops").write_bytes((broken / "model.skops").read_bytes()[:100])
    rolled = _wait_in_background(cluster, "--for=condition=RolledBack", "--timeout=240s", f"ms/{unique}")
    kube.patch_spec(MS, unique, {"model": {"trainingJobRef": None,
                                           "uri": f"pvc://mlvisor-models/{NAMESPACE}/{unique}/{version}-broken/"}})
    _finish(rolled, 250)
    status = kube.status(MS, unique)
    assert status["modelVersion"] == version and status["rejectedModelUri"].endswith(f"{version}-broken/")
    kube.wait_condition(MS, unique, "Ready", timeout=SERVE_TIMEOUT)
    # The pods that serve now are the good version's, and they answer.
    pods = server_pods(kube, unique)
    assert pods and all(p["status"]["podIP"] for p in pods)
    assert predict_on_pod(eventually(lambda: next((p for p in server_pods(kube, unique)
                                                   if (p["status"].get("containerStatuses") or [{}])[0].get("ready")), None),
                                     60, what="a ready server pod"), unique)["outputs"][0]["data"] == [0]
    kube.delete(MS, unique)
    kube.delete(TJ, unique)


def test_a_file_uri_server_gets_invalid_spec_and_kubectl_wait_sees_failed(cluster: Cluster, kube: World, unique: str) -> None:
    kube.create(MS, unique, {"model": {"uri": "file:///models/x/v1/"}})
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Failed", "--timeout=60s", f"ms/{unique}")
    failed = kube.condition(MS, unique, "Failed")
    assert failed is not None and failed["reason"] == "InvalidSpec" and "file://" in failed["message"]
    assert "InvalidSpec" in kube.event_reasons(unique)
    kube.delete(MS, unique)


# ---------------------------------------------------------------------------------- the operator itself


def test_the_operator_deleted_mid_job_resumes_without_duplicates(cluster: Cluster, kube: World, unique: str) -> None:
    spec = iris(search={"grid": {"max_depth": [2, 4], "n_estimators": [300, 600]}, "cv": 3}, workers=2)
    kube.create(TJ, unique, spec)
    eventually(lambda: any(p["status"].get("phase") == "Running" for p in kube.pods(unique).values()),
               TRAIN_TIMEOUT, what="a worker running")
    operator = json.loads(cluster.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
    cluster.kubectl("-n", OPERATOR_NS, "delete", "pod", operator[0]["metadata"]["name"], "--wait=false")
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={TRAIN_TIMEOUT:.0f}s",
                    f"tj/{unique}", timeout=TRAIN_TIMEOUT + 10)
    names = set(kube.pods(unique))
    assert names == {f"{unique}-worker-0-1", f"{unique}-worker-1-1", f"{unique}-select-1"}, names
    status = kube.status(TJ, unique)
    assert status["supervision"]["totalRestarts"] == 0
    created = [e for e in kube.events(unique) if e["reason"] == "Created"]
    assert sum(e.get("count", 1) for e in created) == 1, created
    new = json.loads(cluster.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
    assert [p["metadata"]["name"] for p in new] != [operator[0]["metadata"]["name"]]
    kube.delete(TJ, unique)
