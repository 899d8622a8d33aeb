"""A ModelPipeline's life on the real control plane, driven with kubectl as a user drives it.

The sample pipeline, reading a CSV file that does not exist yet: its first run fails (the
trainer exits 2, the TrainingJob is Failed), the pipeline restarts training after its own
back-off, the file appears on the claim, the second run passes the gate and is served; a third
run that scores worse is refused by mustImprove while the server keeps answering; the oldest
run is deleted by runHistoryLimit; deleting the pipeline garbage-collects every child.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import yaml

from cluster.conftest import NAMESPACE, REPO, Cluster
from cluster.test_cluster import TRAIN_TIMEOUT, _models_folder, built_only
from emulator.world import World, eventually
from helpers.datasets import write_iris_csv

pytestmark = [pytest.mark.cluster]
MP = "ModelPipeline"
BACKOFF = 8


def _pipeline_doc(name: str, csv: str, max_depth: int | None = None) -> dict[str, Any]:
    doc = yaml.safe_load((REPO / "manifests" / "samples" / "pipeline.yaml").read_text())
    doc["metadata"] = {"name": name, "namespace": NAMESPACE}
    spec = doc["spec"]
    spec.pop("schedule")  # a run at 03:00 must not land in the middle of the test
    params: dict[str, Any] = {"random_state": 0} if max_depth is None else {"random_state": 0, "max_depth": max_depth}
    spec["training"]["dataset"] = {"csv": {"path": csv, "target": "species"}}
    spec["training"]["estimator"] = {"class": "sklearn.tree.DecisionTreeClassifier", "params": params}
    spec["supervision"]["backoff"] = {"initialSeconds": BACKOFF, "factor": 1, "maxSeconds": BACKOFF}
    spec["promotion"] = {"mustImprove": True}
    spec["runHistoryLimit"] = 1
    return doc


def _run(status: dict[str, Any], n: int, name: str) -> dict[str, Any] | None:
    return next((r for r in status.get("runs") or [] if r["name"] == f"{name}-{n}"), None)


def _apply(cluster: Cluster, doc: dict[str, Any]) -> None:
    cluster.kubectl("apply", "-f", "-", input=json.dumps(doc))


def test_a_pipeline_restarts_training_serves_gates_and_is_garbage_collected(cluster: Cluster, kube: World,
                                                                            unique: str) -> None:
    built_only(cluster, "the CSV file is written into the claim's folder on the node")
    csv_rel = f"data/{unique}.csv"
    csv = _models_folder(cluster) / csv_rel
    _apply(cluster, _pipeline_doc(unique, csv_rel))

    # Run 1 has no data: its TrainingJob fails (exit 2), the pipeline counts it and waits its back-off.
    def restarting() -> dict[str, Any] | None:
        s = kube.status(MP, unique)
        first = _run(s, 1, unique)
        return s if first and first["phase"] == "Failed" and s.get("phase") == "Restarting" else None

    status = eventually(restarting, TRAIN_TIMEOUT, what="run 1 failed and training restarting")
    failure = status["supervision"]["lastFailure"]
    assert (failure["child"], failure["exitCode"]) == ("training", 2), failure
    assert kube.status("TrainingJob", f"{unique}-1")["phase"] == "Failed"
    write_iris_csv(csv)

    # Run 2 trains on the file, passes the gate, and its model is served by the pipeline's ModelServer.
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Ready", f"--timeout={2 * TRAIN_TIMEOUT:.0f}s",
                    f"modelpipeline/{unique}", timeout=2 * TRAIN_TIMEOUT + 10)
    status = kube.status(MP, unique)
    second = _run(status, 2, unique)
    assert second is not None and second["promoted"] is True
    assert status["servingRun"] == f"{unique}-2" and status["supervision"]["totalRestarts"] == 1
    server = kube.get("ModelServer", unique)
    assert server["metadata"]["ownerReferences"][0]["kind"] == MP
    answer = kube.request(
        "POST", f"/api/v1/namespaces/{NAMESPACE}/services/{unique}:80/proxy/v2/models/{unique}/infer",
        {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, 3.5, 1.4, 0.2]}]},
        "application/json")
    assert answer["outputs"][0]["data"] == [0]

    # The pipeline's ModelServer edited by hand is put back as the pipeline declares it.
    assert kube.get("ModelServer", unique)["spec"]["replicas"] == 1  # spec.serving.replicas
    cluster.kubectl("-n", NAMESPACE, "patch", f"ms/{unique}", "--type=merge", "-p", '{"spec":{"replicas":2}}')
    eventually(lambda: kube.get("ModelServer", unique)["spec"]["replicas"] == 1, 60,
               what="the pipeline putting its ModelServer back")

    # A serving change is applied to the pipeline's ModelServer (merge-patched, not re-created).
    uid = server["metadata"]["uid"]
    cluster.kubectl("-n", NAMESPACE, "patch", f"mp/{unique}", "--type=merge", "-p",
                    '{"spec":{"serving":{"batching":{"maxBatchSize":16,"maxLatencyMs":5}}}}')
    eventually(lambda: kube.get("ModelServer", unique)["spec"]["batching"]["maxBatchSize"] == 16, 60,
               what="the serving change applied to the ModelServer")
    assert kube.get("ModelServer", unique)["metadata"]["uid"] == uid
    served_uri = kube.get("ModelServer", unique)["spec"]["model"]["uri"]

    # Run 3 (a stump) succeeds but scores worse: not promoted, the served model stays.
    _apply(cluster, _pipeline_doc(unique, csv_rel, max_depth=1))

    def third_judged() -> dict[str, Any] | None:
        r = _run(kube.status(MP, unique), 3, unique)
        return r if r and r["phase"] == "Succeeded" else None

    third = eventually(third_judged, 2 * TRAIN_TIMEOUT, what="run 3 judged by the gate")
    assert third["promoted"] is False and third["reason"] == "NotBetter", third
    assert kube.get("ModelServer", unique)["spec"]["model"]["uri"] == served_uri
    assert kube.status(MP, unique)["servingRun"] == f"{unique}-2"
    # runHistoryLimit 1: besides the served run, only the newest finished one is kept.
    eventually(lambda: not kube.exists(kube.cr_path("TrainingJob", f"{unique}-1")), 120,
               what="run 1 deleted by runHistoryLimit")
    assert kube.exists(kube.cr_path("TrainingJob", f"{unique}-2")) and kube.exists(kube.cr_path("TrainingJob", f"{unique}-3"))

    table = cluster.kubectl("-n", NAMESPACE, "get", "mp", unique).stdout
    header = table.splitlines()[0]
    for column in ("PHASE", "READY", "SERVING-VERSION", "SCORE", "RESTARTS", "AGE"):
        assert column in header, header

    kube.delete(MP, unique)
    eventually(lambda: not kube.exists(kube.cr_path("ModelServer", unique))
               and not kube.exists(f"/apis/apps/v1/namespaces/{NAMESPACE}/deployments/{unique}")
               and not any(kube.exists(kube.cr_path("TrainingJob", f"{unique}-{n}")) for n in (2, 3))
               and not kube.live_pods(unique), 180, what="the pipeline's children garbage-collected")
