"""End to end: the iris sample trained and served by `mlvisor run`, then abused.

Real processes, real files, real HTTP: predictions go through the local Service port the
status file advertises, with the Triton HTTP client and with plain HTTP. A server killed
with SIGKILL must come back; a server whose model source changes to a broken artifact must
roll back to the last good version and keep answering meanwhile.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np
import pytest

pytestmark = pytest.mark.slow

#: Known iris rows and their classes (setosa 0, versicolor 1, virginica 2).
KNOWN_ROWS = [
    ([5.1, 3.5, 1.4, 0.2], 0),
    ([7.0, 3.2, 4.7, 1.4], 1),
    ([6.3, 3.3, 6.0, 2.5], 2),
]


def _infer_body(rows: list[list[float]]) -> bytes:
    return json.dumps(
        {"inputs": [{"name": "input-0", "shape": [len(rows), 4], "datatype": "FP64",
                     "data": [x for row in rows for x in row]}]}
    ).encode()


def _post(url: str, body: bytes, timeout: float = 10) -> tuple[int, dict]:
    req = urllib.request.Request(url, data=body, method="POST", headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"{}")


def _predict(url: str) -> list[int]:
    code, answer = _post(f"{url}/infer", _infer_body([row for row, _ in KNOWN_ROWS]))
    assert code == 200, answer
    out = next(o for o in answer["outputs"] if o["name"] == "predict")
    return [int(v) for v in out["data"]]


def _server(status: dict, name: str) -> dict:
    return status[f"ModelServer/default/{name}"]


def _ready(name: str, version: str | None = None):
    def check(status: dict) -> dict | None:
        s = _server(status, name)
        if s.get("phase") == "Ready" and s.get("readyReplicas", 0) >= 1 and s.get("url"):
            if version is None or s.get("modelVersion") == version:
                return s
        return None
    return check


def test_iris_sample_trains_serves_and_predicts_over_v2_then_ctrl_c_leaves_nothing(mlvisor_run, samples: Path) -> None:
    run = mlvisor_run(samples / "iris.yaml")
    server = run.wait_for("ModelServer iris Ready", _ready("iris"))
    job = run.status()["TrainingJob/default/iris"]
    assert job["phase"] == "Succeeded" and job["model"]["metrics"]["accuracy"] > 0.9
    assert server["modelVersion"] == job["model"]["version"]
    url = server["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v2/models/iris")
    assert "iris ready at " + url in run.log()

    # Plain HTTP.
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]

    # The Triton clients, as users of the Open Inference Protocol call them: HTTP with its
    # defaults (binary tensors), HTTP with JSON tensors, and gRPC on the address the status gives.
    import tritonclient.grpc as grpcclient
    import tritonclient.http as httpclient

    x = np.array([row for row, _ in KNOWN_ROWS], dtype=np.float64)
    expected = [cls for _, cls in KNOWN_ROWS]
    client = httpclient.InferenceServerClient(urlsplit(url).netloc)
    try:
        assert client.is_server_ready()
        assert client.is_model_ready("iris")
        inp = httpclient.InferInput("input-0", list(x.shape), "FP64")
        inp.set_data_from_numpy(x)  # the default: binary tensor data
        result = client.infer("iris", [inp], outputs=[httpclient.InferRequestedOutput("predict")])
        assert result.as_numpy("predict").tolist() == expected
        assert result.get_response()["outputs"][0]["parameters"]["binary_data_size"] == 8 * len(x)
        inp.set_data_from_numpy(x, binary_data=False)
        result = client.infer("iris", [inp], outputs=[httpclient.InferRequestedOutput("predict", binary_data=False)])
        assert result.as_numpy("predict").tolist() == expected
    finally:
        client.close()
    grpc_address = server["grpcAddress"]
    assert grpc_address.startswith("127.0.0.1:") and grpc_address in run.log()
    g = grpcclient.InferenceServerClient(grpc_address)
    try:
        assert g.is_server_ready() and g.is_model_ready("iris")
        ginp = grpcclient.InferInput("input-0", list(x.shape), "FP64")
        ginp.set_data_from_numpy(x)
        result = g.infer("iris", [ginp])
        assert result.as_numpy("predict").tolist() == expected
        assert result.as_numpy("predict_proba").shape == (len(x), 3)
    finally:
        g.close()
    # curl, as the README shows it.
    curl = subprocess.run(
        ["curl", "-s", "-S", "--fail-with-body", f"{url}/infer", "-H", "content-type: application/json",
         "-d", _infer_body([KNOWN_ROWS[1][0]]).decode()],
        capture_output=True, text=True, timeout=30,
    )
    assert curl.returncode == 0, curl.stderr
    assert next(o for o in json.loads(curl.stdout)["outputs"] if o["name"] == "predict")["data"] == [1]

    # The status file holds exactly what the custom resources' status would (extra fields are refused).
    from mlvisor import api

    status = run.status()
    api.TrainingJobStatus.model_validate(status["TrainingJob/default/iris"])
    api.ModelServerStatus.model_validate(status["ModelServer/default/iris"])

    alive = [p["pid"] for p in run.pids() if p["running"]]
    assert alive, "the server process should be running"
    assert run.interrupt() == 130
    final = run.status()
    assert final["TrainingJob/default/iris"]["phase"] == "Succeeded"
    run.assert_no_orphans()


def test_predict_flag_answers_and_exits_zero(mlvisor_run, samples: Path, tmp_path: Path) -> None:
    request = tmp_path / "request.json"
    request.write_bytes(_infer_body([KNOWN_ROWS[0][0], KNOWN_ROWS[2][0]]))
    run = mlvisor_run(samples / "iris.yaml", args=["--no-table", "--predict", str(request), "--timeout", "120"])
    assert run.wait_exit() == 0, run.explain()
    line = next(ln for ln in run.log().splitlines() if "ModelServer/default/iris: prediction: " in ln)
    answer = json.loads(line.split("prediction: ", 1)[1])
    out = next(o for o in answer["outputs"] if o["name"] == "predict")
    assert out["data"] == [0, 2]
    run.assert_no_orphans()


SERVER = """\
apiVersion: mlvisor.dev/v1alpha1
kind: ModelServer
metadata:
  name: {name}
spec:
  model:
    uri: file://{uri}/
  modelName: iris
  replicas: {replicas}
  startupTimeoutSeconds: {startup}
  supervision:
    maxRestarts: {max_restarts}
    periodSeconds: 300
    onExhausted: Rollback
"""


def test_server_killed_with_sigkill_is_restarted_and_answers_again(mlvisor_run, iris_artifact: Path, tmp_path: Path) -> None:
    spec = tmp_path / "server.yaml"
    spec.write_text(SERVER.format(name="kill", uri=iris_artifact, startup=30, max_restarts=3, replicas=1))
    run = mlvisor_run(spec, args=["--no-table", "--restart-delay", "0.1"])
    server = run.wait_for("server Ready", _ready("kill"))
    url = server["url"]
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]
    victims = [p["pid"] for p in run.pids() if p["running"]]
    assert len(victims) == 1

    os.kill(victims[0], signal.SIGKILL)
    again = run.wait_for(
        "a restart counted and the server Ready again",
        lambda s: _server(s, "kill")["supervision"]["totalRestarts"] >= 1 and _ready("kill")(s),
    )
    assert again["supervision"]["lastFailure"]["exitCode"] == 137
    assert again["url"] == url  # the Service port is stable across restarts
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]
    new = [p["pid"] for p in run.pids() if p["running"]]
    assert new and victims[0] not in new
    import subprocess
    import sys

    # the run before the restart, as `kubectl logs --previous` shows it
    previous = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "logs", "ms/kill", "--previous",
                               "--data-dir", str(run.data_dir)], capture_output=True, text=True, timeout=60)
    current = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "logs", "ms/kill",
                              "--data-dir", str(run.data_dir)], capture_output=True, text=True, timeout=60)
    assert previous.returncode == 0 and current.returncode == 0, previous.stderr + current.stderr
    assert previous.stdout.count(" start: ") == 1 and current.stdout.count(" start: ") == 1
    assert "loaded and warmed up" in previous.stdout and previous.stdout != current.stdout
    assert run.interrupt() == 130
    run.assert_no_orphans()


def test_server_switched_to_a_broken_artifact_rolls_back_within_a_minute_and_keeps_answering(
    mlvisor_run, iris_artifact: Path, broken_artifact: Path, tmp_path: Path
) -> None:
    """Under the default supervision (maxRestarts 5 in 300 s, startupTimeoutSeconds 120).

    The broken server exits 4 with its reason (let it crash) and the supervisor escalates on
    that first exit; before, the pod waited out startupTimeoutSeconds six times (~12 min).
    """
    import time

    spec = tmp_path / "server.yaml"
    default_supervision = ("apiVersion: mlvisor.dev/v1alpha1\nkind: ModelServer\nmetadata: {{name: rb}}\n"
                           "spec:\n  model: {{uri: \"file://{uri}/\"}}\n  modelName: iris\n")
    spec.write_text(default_supervision.format(uri=iris_artifact))
    run = mlvisor_run(spec, args=["--no-table"])
    server = run.wait_for("server Ready on v1", _ready("rb", "v1"))
    url = server["url"]
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]

    # Like `kubectl apply` of a new version of the resource: the runtime re-reads the file.
    spec.write_text(default_supervision.format(uri=broken_artifact))
    applied = time.monotonic()
    answers: list[int] = []

    def rolled_back(status: dict) -> dict | None:
        code, _ = _post(f"{url}/infer", _infer_body([KNOWN_ROWS[0][0]]))
        answers.append(code)
        s = _server(status, "rb")
        rolled = any(c["type"] == "RolledBack" and c["status"] == "True" for c in s.get("conditions", []))
        return s if rolled and s.get("modelVersion") == "v1" and s.get("readyReplicas", 0) >= 1 else None

    final = run.wait_for("rolled back to v1", rolled_back, timeout=60)
    took = time.monotonic() - applied
    print(f"rolled back {took:.1f}s after the broken version was applied")  # the figure in docs/reliability.md
    assert final["lastGoodModelVersion"] == "v1"
    assert final.get("rejectedModelUri", "").rstrip("/") == f"file://{broken_artifact}"
    rolled = next(c for c in final["conditions"] if c["type"] == "RolledBack")
    assert rolled["reason"] == "ModelUnloadable" and "corrupted or truncated" in rolled["message"], rolled
    last = final["supervision"]["lastFailure"]
    assert last["exitCode"] == 4 and "corrupted or truncated" in last["message"]
    assert answers and set(answers) == {200}, f"the service stopped answering during the rollback: {answers}"
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]
    assert run.interrupt() == 130
    run.assert_no_orphans()


def test_replicas_changed_in_the_file_scale_without_counting_restarts(mlvisor_run, iris_artifact: Path, tmp_path: Path) -> None:
    """`mlvisor run` picks a new spec.replicas from the file (as kubectl scale changes it on a
    cluster): replicas are added and removed, the URL keeps answering, no restart is counted."""
    spec = tmp_path / "server.yaml"
    spec.write_text(SERVER.format(name="sc", uri=iris_artifact, startup=30, max_restarts=0, replicas=1))
    run = mlvisor_run(spec, args=["--no-table"])
    server = run.wait_for("server Ready with 1 replica", _ready("sc"))
    url = server["url"]
    assert server["selector"] == "app.kubernetes.io/component=server,app.kubernetes.io/instance=sc,app.kubernetes.io/name=mlvisor"

    spec.write_text(SERVER.format(name="sc", uri=iris_artifact, startup=30, max_restarts=0, replicas=2))
    up = run.wait_for(
        "2 replicas ready",
        lambda s: _server(s, "sc") if _server(s, "sc").get("readyReplicas") == 2 and _ready("sc")(s) else None,
        timeout=90,
    )
    assert up["replicas"] == 2 and up["lastReadyReplicas"] == 2
    assert up["supervision"].get("totalRestarts", 0) == 0, up["supervision"]
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]
    assert len([p for p in run.pids() if p["running"]]) == 2

    spec.write_text(SERVER.format(name="sc", uri=iris_artifact, startup=30, max_restarts=0, replicas=1))
    down = run.wait_for(
        "back to 1 replica",
        lambda s: _server(s, "sc") if _server(s, "sc").get("replicas") == 1 and _ready("sc")(s)
        and len([p for p in run.pids() if p["running"]]) == 1 else None,
        timeout=60,
    )
    assert down["supervision"].get("totalRestarts", 0) == 0, down["supervision"]  # maxRestarts 0: one count would fail it
    assert down["phase"] == "Ready"
    assert _predict(url) == [cls for _, cls in KNOWN_ROWS]
    assert run.interrupt() == 130
    run.assert_no_orphans()
