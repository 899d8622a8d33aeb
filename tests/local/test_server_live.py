"""The real server process against a real V2 client (tritonclient[http]).

Starts ``python -m mlvisor.server`` on 127.0.0.1 with a free port, the way the operator
does (settings from the environment), and drives it with tritonclient using JSON tensors
(``binary_data=False``): health, metadata, infer with predict and predict_proba, errors,
and a graceful SIGTERM.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from helpers.artifacts import build_artifact

tritonhttp = pytest.importorskip("tritonclient.http")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, proc: subprocess.Popen, url: str, model, X: np.ndarray, log: Path) -> None:
        self.proc, self.url, self.model, self.X, self.log = proc, url, model, X, log


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    root = tmp_path_factory.mktemp("artifact")
    path, model, X = build_artifact(root)
    port = _free_port()
    env = dict(os.environ, MLVISOR_MODEL_DIR=str(path), MLVISOR_HOST="127.0.0.1", MLVISOR_PORT=str(port),
               MLVISOR_MAX_ROWS="500", MLVISOR_GRPC_PORT="0")
    log = root / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlvisor.server"], env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"127.0.0.1:{port}"
    client = tritonhttp.InferenceServerClient(url)
    deadline = time.monotonic() + 60
    try:
        while True:
            try:
                if client.is_server_ready():
                    break
            except Exception:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.05)
        yield Server(proc, url, model, X, log)
    finally:
        client.close()
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)


@pytest.fixture
def client(server: Server) -> Iterator[tritonhttp.InferenceServerClient]:
    c = tritonhttp.InferenceServerClient(server.url)
    yield c
    c.close()


def _input(x: np.ndarray, name: str = "input-0", dtype: str = "FP64"):
    i = tritonhttp.InferInput(name, list(x.shape), dtype)
    i.set_data_from_numpy(x, binary_data=False)
    return i


def test_health_and_metadata(client, server: Server) -> None:
    assert client.is_server_live()
    assert client.is_server_ready()
    assert client.is_model_ready("iris")
    assert client.is_model_ready("iris", "v1")
    assert not client.is_model_ready("iris", "v9")
    assert not client.is_model_ready("other")
    meta = client.get_server_metadata()
    assert meta["name"] == "mlvisor"
    m = client.get_model_metadata("iris")
    assert m["versions"] == ["v1"] and m["inputs"][0] == {"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}
    assert client.get_model_metadata("iris", "v1") == m


def test_infer_predict_and_proba(client, server: Server) -> None:
    X = server.X[::10].astype(np.float64)
    outputs = [tritonhttp.InferRequestedOutput("predict", binary_data=False),
               tritonhttp.InferRequestedOutput("predict_proba", binary_data=False)]
    res = client.infer("iris", [_input(X)], outputs=outputs, request_id="r-1")
    assert res.get_response()["id"] == "r-1" and res.get_response()["model_version"] == "v1"
    assert np.array_equal(res.as_numpy("predict"), server.model.predict(X))
    assert np.array_equal(res.as_numpy("predict_proba"), server.model.predict_proba(X))
    only = client.infer("iris", [_input(X)], model_version="v1",
                        outputs=[tritonhttp.InferRequestedOutput("predict_proba", binary_data=False)])
    assert only.as_numpy("predict") is None
    assert only.as_numpy("predict_proba").shape == (len(X), 3)


def test_infer_float32_input(client, server: Server) -> None:
    X = server.X[:3].astype(np.float32)
    res = client.infer("iris", [_input(X, dtype="FP32")],
                       outputs=[tritonhttp.InferRequestedOutput("predict", binary_data=False)])
    assert np.array_equal(res.as_numpy("predict"), server.model.predict(X.astype(np.float64)))


@pytest.mark.parametrize(
    "case,status,message",
    [
        ("features", "400", "expected 4 features, got 3"),
        ("name", "400", "unknown input 'x'"),
        ("output", "400", "unknown output 'transform'"),
        ("model", "404", "model 'nope' not found"),
        ("version", "404", "version '7' of model 'iris' not found"),
        ("rows", "400", "the limit per request is 500"),
    ],
)
def test_errors_reach_the_client(client, server: Server, case: str, status: str, message: str) -> None:
    X = server.X[:2]
    model, version, inputs = "iris", "", [_input(X)]
    outputs = [tritonhttp.InferRequestedOutput("predict", binary_data=False)]
    if case == "features":
        inputs = [_input(X[:, :3])]
    elif case == "name":
        inputs = [_input(X, name="x")]
    elif case == "output":
        outputs = [tritonhttp.InferRequestedOutput("transform", binary_data=False)]
    elif case == "model":
        model = "nope"
    elif case == "version":
        version = "7"
    elif case == "rows":
        inputs = [_input(np.ones((501, 4)))]
    with pytest.raises(InferenceServerException) as err:
        client.infer(model, inputs, model_version=version, outputs=outputs)
    assert err.value.status() == status, err.value
    assert message in err.value.message()


def test_metrics_and_docs(server: Server) -> None:
    import httpx

    text = httpx.get(f"http://{server.url}/metrics").text
    assert 'mlvisor_requests_total{endpoint="infer",status="200"}' in text
    assert httpx.get(f"http://{server.url}/docs").status_code == 200


def test_sigterm_is_graceful(server: Server) -> None:
    """Runs last in this module: the server shuts down cleanly on SIGTERM.

    uvicorn re-raises the captured signal after its graceful shutdown, so the exit status
    is "killed by SIGTERM" (-15), as for any process that honours the signal's default.
    """
    server.proc.send_signal(signal.SIGTERM)
    assert server.proc.wait(30) in (0, -signal.SIGTERM), server.log.read_text()
    log = server.log.read_text()
    assert "Application shutdown complete" in log
