"""Users' data on a real control plane: the S3 sample, as a user applies it, against a real S3 server.

The suite's S3 server (versitygw, ``tests/objectstore``) listens on loopback and on the address
pods reach the host at. ``manifests/samples/tabular-s3.yaml`` is applied with its Secret holding
this server's keys: two TrainingJobs (RandomForest, HistGradientBoosting) read census.csv (text
columns, empty cells) from the bucket with the Secret's keys, write their artifacts there, and
two ModelServers download them from there, verified, and answer predictions by column name
(BYTES included) over REST JSON, binary tensors and gRPC, with tritonclient as it comes. A table
whose target has an empty cell fails the job before any fit, naming the column. No value of
the Secret appears in any pod's log, the operator's log, an Event or a status.

Needs a node that resolves a pod's ``secretKeyRef`` env as a kubelet does, and pods that reach
the host: on the suite's own control plane that address is the API server's (the ``kubernetes``
Service's endpoint, where the host serves it to pods); on another cluster (``make e2e``) set
``MLVISOR_E2E_S3_HOST`` to the address its pods reach this machine at.
"""

from __future__ import annotations

import json
import os
import shutil
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest
import yaml

from cluster.conftest import NAMESPACE, OPERATOR_NS, Cluster
from emulator.world import World, eventually
from helpers.paths import REPO

pytestmark = [pytest.mark.cluster]

TJ, MS = "TrainingJob", "ModelServer"
TIMEOUT = 400.0
CENSUS = REPO / "manifests" / "samples" / "data" / "census.csv"
SAMPLE = REPO / "manifests" / "samples" / "tabular-s3.yaml"
BUCKET = "mlvisor-samples"  # the sample's
COLUMNS: dict[str, tuple[str, list[Any]]] = {
    "age": ("FP64", [45.0, None]), "workclass": ("BYTES", ["Private", None]),
    "education": ("BYTES", ["Masters", "HS-grad"]), "marital_status": ("BYTES", ["Married", "Never-married"]),
    "occupation": ("BYTES", ["Exec-managerial", "never seen"]), "hours_per_week": ("INT64", [50, 20]),
    "capital_gain": ("INT64", [15024, 0]), "native_region": ("BYTES", ["Europe", "Asia"])}


def pods_reach_the_host_at(cluster: Cluster) -> str:
    given = os.environ.get("MLVISOR_E2E_S3_HOST")
    if given:
        return given
    if not cluster.built:
        pytest.fail("set MLVISOR_E2E_S3_HOST to the address this cluster's pods reach this machine at "
                    "(the tier's S3 server runs here)")
    return cluster.kubectl("-n", "default", "get", "endpoints", "kubernetes", "-o",
                           "jsonpath={.subsets[0].addresses[0].ip}").stdout.strip()


@pytest.fixture(scope="module")
def s3(cluster: Cluster, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    from objectstore.server import S3Server

    host = pods_reach_the_host_at(cluster)
    server = S3Server(tmp_path_factory.mktemp("s3") / "root", hosts=("127.0.0.1", host))
    with server:
        server.pod_host = host
        yield server


def secret_texts(s3: Any) -> tuple[str, str]:
    return s3.access_key, s3.secret_key


def test_the_s3_sample_trains_writes_serves_and_answers_by_column_without_printing_the_secret(
        cluster: Cluster, kube: World, s3: Any, unique: str) -> None:
    shutil.copy(CENSUS, s3.bucket(BUCKET) / "census.csv")
    docs = list(yaml.safe_load_all(SAMPLE.read_text()))
    secret, jobs, servers = docs[0], [d for d in docs if d["kind"] == TJ], [d for d in docs if d["kind"] == MS]
    assert secret["kind"] == "Secret" and len(jobs) == 2 and len(servers) == 2
    secret["stringData"] = s3.env(s3.pod_host)
    names = {}
    for doc in docs:  # unique names (an earlier run's may linger), the same files otherwise
        old = doc["metadata"]["name"]
        names[old] = doc["metadata"]["name"] = f"{unique}-{old}"[:63]
    secret_name = secret["metadata"]["name"]  # already the unique one
    for doc in jobs:
        doc["spec"]["dataset"]["credentials"]["secretName"] = secret_name
        doc["spec"]["output"]["credentials"]["secretName"] = secret_name
        doc["spec"]["output"]["uri"] = doc["spec"]["output"]["uri"].replace("/models/", f"/models/{unique}/")
    for doc in servers:
        doc["spec"]["model"]["credentials"]["secretName"] = secret_name
        doc["spec"]["model"]["trainingJobRef"]["name"] = names[doc["spec"]["model"]["trainingJobRef"]["name"]]
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=yaml.safe_dump_all(docs))

    for job in jobs:
        name = job["metadata"]["name"]
        cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={TIMEOUT:.0f}s", f"tj/{name}",
                        timeout=TIMEOUT + 10)
        model = kube.status(TJ, name)["model"]
        assert model["uri"].startswith(f"{job['spec']['output']['uri']}/"), model
        assert model["data"].startswith("1000 rows, 8 features; categorical: "), model
        version_dir = s3.root / BUCKET / "models" / unique / job["spec"]["output"]["uri"].rsplit("/", 1)[1] / \
            model["version"]
        assert (version_dir / "metadata.json").is_file() and (version_dir / "model.skops").is_file()
    for server in servers:
        name = server["metadata"]["name"]
        cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"--timeout={TIMEOUT:.0f}s", f"ms/{name}",
                        timeout=TIMEOUT + 10)
        assert kube.status(MS, name)["modelUri"].startswith("s3://")
        rest, binary, over_grpc = predictions_by_column(kube, name)
        assert rest == binary == over_grpc, f"REST JSON, binary tensors and gRPC disagree: {rest}, {binary}, {over_grpc}"
        assert set(rest) <= {">50K", "<=50K"} and len(rest) == 2

    everything = [cluster.kubectl("-n", NAMESPACE, "get", "events", "-o", "json").stdout,
                  cluster.kubectl("-n", NAMESPACE, "get", "tj,ms", "-o", "json").stdout,
                  cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "json").stdout,
                  cluster.kubectl("-n", OPERATOR_NS, "logs", "deployment/mlvisor-operator", "--tail=-1").stdout]
    for doc in jobs + servers:
        for pod in kube.pods(doc["metadata"]["name"]):
            everything.append(cluster.kubectl("-n", NAMESPACE, "logs", pod, check=False).stdout)
    for text in secret_texts(s3):
        assert not any(text in t for t in everything), "a value of the Secret was printed"


def rest_infer(ip: str, port: int, name: str, columns: dict[str, tuple[str, list[Any]]]) -> list[Any]:
    body = {"inputs": [{"name": n, "shape": [len(v)], "datatype": t, "data": v} for n, (t, v) in columns.items()]}
    req = urllib.request.Request(f"http://{ip}:{port}/v2/models/{name}/infer", data=json.dumps(body).encode(),
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        return list(next(o["data"] for o in json.loads(r.read())["outputs"] if o["name"] == "predict"))


def predictions_by_column(kube: World, name: str) -> list[list[Any]]:
    """One input per column, named as in the model's metadata, over REST JSON (urllib),
    tritonclient.http (binary tensors, its default) and tritonclient.grpc, on the server pod's IP.
    tritonclient has no null for a string: those rows fill workclass in (a missing age is NaN)."""
    import numpy as np
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    pods = [p for p in kube.pods(name).values() if "worker" not in p["metadata"]["name"]
            and not p["metadata"].get("deletionTimestamp") and p["status"].get("podIP")]
    assert pods, f"no server pod of {name} with an IP"
    pod = pods[0]
    ports = {p["name"]: p["containerPort"] for p in pod["spec"]["containers"][0]["ports"]}
    ip = pod["status"]["podIP"]
    with urllib.request.urlopen(f"http://{ip}:{ports['http']}/v2/models/{name}", timeout=10) as r:
        inputs = [(i["name"], i["datatype"]) for i in json.loads(r.read())["inputs"]]
    assert inputs == [(n, t) for n, (t, _) in COLUMNS.items()], inputs

    with_nulls = rest_infer(ip, ports["http"], name, COLUMNS)
    assert len(with_nulls) == 2 and set(with_nulls) <= {">50K", "<=50K"}, with_nulls
    filled = {**COLUMNS, "workclass": ("BYTES", ["Private", "Self-emp"])}
    rest = rest_infer(ip, ports["http"], name, filled)

    def tensors(module: Any) -> list[Any]:
        out = []
        for n, (t, values) in filled.items():
            if t == "BYTES":
                array = np.array([v.encode() for v in values], dtype=np.object_)
            else:
                array = np.array([np.nan if v is None else v for v in values],
                                 dtype=np.float64 if t == "FP64" else np.int64)
            inp = module.InferInput(n, [len(values)], t)
            inp.set_data_from_numpy(array)
            out.append(inp)
        return out

    http = httpclient.InferenceServerClient(f"{ip}:{ports['http']}")
    grpc = grpcclient.InferenceServerClient(f"{ip}:{ports['grpc']}")
    try:
        binary = http.infer(name, tensors(httpclient)).as_numpy("predict")
        over_grpc = grpc.infer(name, tensors(grpcclient)).as_numpy("predict")
    finally:
        http.close()
        grpc.close()
    assert binary is not None and over_grpc is not None

    def text(values: Any) -> list[Any]:
        return [v.decode() if isinstance(v, bytes) else v for v in values.tolist()]

    return [rest, text(binary), text(over_grpc)]


def test_a_table_whose_target_has_an_empty_cell_fails_before_any_fit_naming_the_column(
        cluster: Cluster, kube: World, s3: Any, unique: str) -> None:
    lines = CENSUS.read_text().splitlines()
    lines[5] = lines[5].rsplit(",", 1)[0] + ","  # row 5: no income
    (s3.bucket(unique) / "holes.csv").write_text("\n".join(lines) + "\n")
    cluster.kubectl("-n", NAMESPACE, "create", "secret", "generic", unique,
                    *(f"--from-literal={k}={v}" for k, v in s3.env(s3.pod_host).items()))
    kube.create(TJ, unique, {"dataset": {"uri": f"s3://{unique}/holes.csv", "target": "income",
                                         "credentials": {"secretName": unique}},
                             "estimator": {"class": "sklearn.ensemble.HistGradientBoostingClassifier"}})
    failed = kube.wait_condition(TJ, unique, "Failed", timeout=TIMEOUT)
    assert failed["reason"] == "FailurePolicy", failed  # the worker exited 2 (invalid spec): never retried
    assert "column 'income' has missing values" in failed["message"] and "every row needs a target" in failed["message"]
    events = cluster.kubectl("-n", NAMESPACE, "get", "events", "-o", "json").stdout
    for text in secret_texts(s3):
        assert text not in failed["message"] and text not in events
    eventually(lambda: kube.status(TJ, unique).get("phase") == "Failed", 30, what="phase Failed")


def test_mlvisor_upload_puts_a_csv_on_the_claim_and_the_tabular_sample_trains_and_serves_it(
        cluster: Cluster, kube: World, unique: str) -> None:
    """The README's way to get a local file onto a claim: ``mlvisor upload`` (a short-lived
    restricted pod, the file through the exec channel), then ``manifests/samples/tabular.yaml``
    as it is, but for unique names and path."""
    import subprocess
    import sys

    target = f"pvc://mlvisor-models/datasets/{unique}/census.csv"
    up = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "upload", str(CENSUS), target,
                         "-n", NAMESPACE, "--kubeconfig", cluster.kubeconfig, "--timeout", "240"],
                        capture_output=True, text=True, timeout=300)
    assert up.returncode == 0, up.stdout + up.stderr
    docs = list(yaml.safe_load_all((REPO / "manifests" / "samples" / "tabular.yaml").read_text()))
    job, server = docs
    assert job["kind"] == TJ and server["kind"] == MS
    job["spec"]["dataset"]["uri"] = target
    job["metadata"]["name"] = server["metadata"]["name"] = server["spec"]["model"]["trainingJobRef"]["name"] = unique
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=yaml.safe_dump_all(docs))
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={TIMEOUT:.0f}s", f"tj/{unique}",
                    timeout=TIMEOUT + 10)
    assert kube.status(TJ, unique)["model"]["data"].startswith("1000 rows, 7 features; categorical: ")
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"--timeout={TIMEOUT:.0f}s", f"ms/{unique}",
                    timeout=TIMEOUT + 10)
    leftovers = cluster.kubectl("-n", NAMESPACE, "get", "pods", "-o", "name").stdout
    assert "mlvisor-upload-" not in leftovers, leftovers  # the upload pod is gone
