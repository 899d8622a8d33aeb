"""The server's HTTP contract in-process: V2 routes, V1 predict, readiness, errors, metrics."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from helpers.artifacts import build_artifact
from helpers.inprocess import serve as _serve
from helpers.inprocess import wait_ready as _wait_ready
from mlvisor.server.app import create_app
from mlvisor.server.settings import Settings


class Served:
    def __init__(self, client: httpx.AsyncClient, model, X: np.ndarray, app) -> None:
        self.client, self.model, self.X, self.app = client, model, X, app


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[Served]:
    path, model, X = build_artifact(tmp_path)
    async for client, app in _serve(path, max_rows=200, max_body_bytes=64 * 1024):
        await _wait_ready(client)
        yield Served(client, model, X, app)


def v2(rows, outputs=None, **extra) -> dict:
    rows = np.asarray(rows, dtype=float)
    body = {"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}]}
    if outputs is not None:
        body["outputs"] = [{"name": o} for o in outputs]
    body.update(extra)
    return body


# ----------------------------------------------------------------------------- health and metadata
async def test_health_and_metadata(served: Served) -> None:
    c = served.client
    assert (await c.get("/v2/health/live")).json() == {"live": True}
    assert (await c.get("/v2/health/ready")).json() == {"ready": True}
    meta = (await c.get("/v2")).json()
    assert meta["name"] == "mlvisor" and "version" in meta and meta["extensions"] == ["binary_tensor_data"]
    m = (await c.get("/v2/models/iris")).json()
    assert m["name"] == "iris" and m["versions"] == ["v1"] and m["platform"]
    assert m["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o["name"] for o in m["outputs"]] == ["predict", "predict_proba"]
    assert m["parameters"]["feature_names"][0] == "sepal length (cm)"
    assert (await c.get("/v2/models/iris/versions/v1")).json() == m
    assert (await c.get("/v2/models/iris/ready")).json() == {"name": "iris", "ready": True}
    assert (await c.get("/v2/models/iris/versions/v1/ready")).status_code == 200


@pytest.mark.parametrize(
    "method,path",
    [
        ("GET", "/v2/models/nope"),
        ("GET", "/v2/models/nope/ready"),
        ("POST", "/v2/models/nope/infer"),
        ("GET", "/v2/models/iris/versions/v2"),
        ("GET", "/v2/models/iris/versions/v2/ready"),
        ("POST", "/v2/models/iris/versions/v0/infer"),
        ("POST", "/v1/models/nope:predict"),
        ("GET", "/no/such/path"),
        ("GET", "/V2/health/live"),
    ],
)
async def test_unknown_model_version_or_path_is_404(served: Served, method: str, path: str) -> None:
    r = await served.client.request(method, path, json=v2(served.X[:1]))
    assert r.status_code == 404, r.text
    assert set(r.json()) == {"error"}
    if "nope" in path:
        assert "'nope' not found" in r.json()["error"]
    if "versions" in path:
        assert "version" in r.json()["error"] and "'v1'" in r.json()["error"]


async def test_wrong_method_is_405_with_error_body(served: Served) -> None:
    r = await served.client.get("/v2/models/iris/infer")
    assert r.status_code == 405 and "not allowed" in r.json()["error"]


async def test_docs_and_openapi(served: Served) -> None:
    assert (await served.client.get("/docs")).status_code == 200
    spec = (await served.client.get("/openapi.json")).json()
    assert "/v2/models/{name}/infer" in spec["paths"] and "/v1/models/{name}:predict" in spec["paths"]


# ----------------------------------------------------------------------------- inference
async def test_infer_matches_model(served: Served) -> None:
    X = served.X[::7]
    r = await served.client.post("/v2/models/iris/infer", json=v2(X, id="abc"))
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["model_name"] == "iris" and body["model_version"] == "v1" and body["id"] == "abc"
    pred, proba = body["outputs"]
    assert pred == {"name": "predict", "shape": [len(X)], "datatype": "INT64", "data": served.model.predict(X).tolist()}
    assert proba["name"] == "predict_proba" and proba["shape"] == [len(X), 3] and proba["datatype"] == "FP64"
    assert np.array_equal(np.reshape(proba["data"], (len(X), 3)), served.model.predict_proba(X))


async def test_infer_requested_outputs_in_order_and_versioned_path(served: Served) -> None:
    X = served.X[:3]
    r = await served.client.post("/v2/models/iris/versions/v1/infer", json=v2(X, ["predict_proba"]))
    assert [o["name"] for o in r.json()["outputs"]] == ["predict_proba"]
    r = await served.client.post("/v2/models/iris/infer", json=v2(X, ["predict_proba", "predict"]))
    assert [o["name"] for o in r.json()["outputs"]] == ["predict_proba", "predict"]
    assert "id" not in r.json()


async def test_nested_data_and_integer_datatype(served: Served) -> None:
    X = np.array([[5, 3, 1, 0], [7, 3, 6, 2]])
    body = {"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "INT64", "data": X.tolist()}],
            "outputs": [{"name": "predict"}]}
    r = await served.client.post("/v2/models/iris/infer", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == served.model.predict(X.astype(float)).tolist()


async def test_v1_predict(served: Served) -> None:
    X = served.X[:5]
    r = await served.client.post("/v1/models/iris:predict", json={"instances": X.tolist()})
    assert r.status_code == 200, r.text
    assert r.json() == {"predictions": served.model.predict(X).tolist()}


BAD_V2 = [
    (b"{not json", "malformed JSON"),
    (b"", "empty request body"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"id": "1"}', "missing required field 'inputs'"),
    (b'{"inputs": []}', "expected exactly one input tensor"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64"}]}', "missing required field 'data'"),
    (b'{"inputs": [{"name": "x", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}]}', "unknown input 'x'"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FLOAT", "data": [1,2,3,4]}]}', "unknown datatype 'FLOAT'"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "BYTES", "data": ["a","b","c","d"]}]}', "BYTES is not accepted"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 3], "datatype": "FP64", "data": [1,2,3]}]}', "expected 4 features, got 3"),
    (b'{"inputs": [{"name": "input-0", "shape": [4], "datatype": "FP64", "data": [1,2,3,4]}]}', "must have shape [N, 4]"),
    (b'{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [1,2,3,4]}]}', "needs 8 values, data has 4"),
    (b'{"inputs": [{"name": "input-0", "shape": ["1", 4], "datatype": "FP64", "data": [1,2,3,4]}]}', "list of non-negative integers"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,"2",3,4]}]}', "value '2' at position 1 (row 0, feature 1) is a string, not a number"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,null,3,4]}]}', "value null at position 1 (row 0, feature 1) is null, not a number"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,"abc",1.4,0.2]}]}', "value 'abc' at position 1"),
    (b'{"inputs": {"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}}', "'inputs' must be a list of tensors, got object"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "INT32", "data": [5.1,3,1,0]}]}', "value 5.1 at position 0 (row 0, feature 0) is not an integer"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "UINT8", "data": [5,300,1,0]}]}', "value 300 at position 1 (row 0, feature 1) is out of range; UINT8 takes integers in 0..255"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "UINT8", "data": [5,3,-1,0]}]}', "value -1 at position 2 (row 0, feature 2) is out of range"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5,3,1,true]}]}', "value true at position 3 (row 0, feature 3) is a boolean"),
    (b'{"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": [[1,2,3,4],[1,2]]}]}', "ragged"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": "1,2,3,4"}]}', "must be a list of numbers"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,Infinity,3,4]}]}', "infinite value at row 0, feature 1"),
    (b'{"inputs": [{"name": "input-0", "shape": [0, 4], "datatype": "FP64", "data": []}]}', "empty input"),
    (b'{"inputs": [{"name": "input-0", "shape": [201, 4], "datatype": "FP64", "data": []}]}', "201 rows; the limit per request is 200"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}], "outputs": [{"name": "transform"}]}', "unknown output 'transform'"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}], "outputs": [{"name": "predict", "parameters": {"binary_data": 1}}]}', "binary_data of output 'predict' must be true or false, got 1"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}], "parameters": {"binary_data_output": "yes"}}', "binary_data_output must be true or false"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [[[[1,2,3,4]]]]}]}', "nested 4 levels deep; shape [1, 4] allows at most 2"),
    (b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1,2,3,4]}], "id": 5}', "'id' must be a string"),
]


@pytest.mark.parametrize("body,message", BAD_V2)
async def test_bad_v2_requests_are_400_with_message(served: Served, body: bytes, message: str) -> None:
    r = await served.client.post("/v2/models/iris/infer", content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"]
    assert message in r.json()["error"]


@pytest.mark.parametrize(
    "body,message",
    [
        ({"instances": []}, "empty input"),
        ({"rows": [[1, 2, 3, 4]]}, "missing required field 'instances'"),
        ({"instances": [[1, 2, 3]]}, "expected 4 features, got 3"),
        ({"instances": [1, 2, 3, 4]}, "list of rows"),
        ({"instances": [["a", 2, 3, 4]]}, "value 'a' at position 0 (row 0, feature 0) is a string, not a number"),
        ({"instances": [[1, 2, 3, True]]}, "value true at position 3 (row 0, feature 3) is a boolean"),
        ({"instances": [[[1, 2], [3, 4]]]}, "each a list of numbers (not of lists)"),
    ],
)
async def test_bad_v1_requests_are_400(served: Served, body: dict, message: str) -> None:
    r = await served.client.post("/v1/models/iris:predict", json=body)
    assert r.status_code == 400 and message in r.json()["error"], r.text


async def test_body_over_limit_is_413(served: Served) -> None:
    big = orjson.dumps(v2(np.ones((150, 4)) * 1.123456789012, padding="x" * 70_000))
    r = await served.client.post("/v2/models/iris/infer", content=big)
    assert r.status_code == 413 and "exceeds the limit of 65536 bytes" in r.json()["error"]

    async def chunks():  # no Content-Length: the limit is enforced while streaming
        for _ in range(20):
            yield b" " * 8192

    r = await served.client.post("/v2/models/iris/infer", content=chunks())
    assert r.status_code == 413, r.text


async def test_nan_accepted_by_forest_refused_by_linear(tmp_path: Path) -> None:
    from sklearn.linear_model import LogisticRegression

    nan_body = b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [5.1, NaN, 1.4, 0.2]}]}'
    path, model, _ = build_artifact(tmp_path / "rf")
    async for client, _app in _serve(path):
        await _wait_ready(client)
        r = await client.post("/v2/models/iris/infer", content=nan_body)
        assert r.status_code == 200, r.text
        x = np.array([[5.1, np.nan, 1.4, 0.2]])
        assert r.json()["outputs"][0]["data"] == model.predict(x).tolist()
    path, model, _ = build_artifact(tmp_path / "lr", LogisticRegression(max_iter=500))
    async for client, _app in _serve(path):
        await _wait_ready(client)
        r = await client.post("/v2/models/iris/infer", content=nan_body)
        assert r.status_code == 400
        assert "NaN at row 0, feature 1" in r.json()["error"] and "LogisticRegression" in r.json()["error"]


@pytest.mark.parametrize("kind", ["string_labels", "regression", "logistic"])
async def test_other_model_kinds(tmp_path: Path, kind: str) -> None:
    from sklearn.ensemble import ExtraTreesRegressor
    from sklearn.linear_model import LogisticRegression

    if kind == "string_labels":
        path, model, X = build_artifact(tmp_path, string_labels=True)
        dtype = "BYTES"
    elif kind == "regression":
        path, model, X = build_artifact(tmp_path, ExtraTreesRegressor(n_estimators=10, random_state=0), dataset="diabetes")
        dtype = "FP64"
    else:
        path, model, X = build_artifact(tmp_path, LogisticRegression(max_iter=500))
        dtype = "INT64"
    async for client, _app in _serve(path):
        await _wait_ready(client)
        rows = X[:6]
        r = await client.post("/v2/models/iris/infer", json=v2(rows))
        assert r.status_code == 200, r.text
        out = r.json()["outputs"]
        assert out[0]["datatype"] == dtype
        assert out[0]["data"] == model.predict(rows).tolist()
        if hasattr(model, "predict_proba"):
            assert np.array_equal(np.reshape(out[1]["data"], out[1]["shape"]), model.predict_proba(rows))
        else:
            assert len(out) == 1
            r = await client.post("/v2/models/iris/infer", json=v2(rows, ["predict_proba"]))
            assert r.status_code == 400 and "has outputs: predict" in r.json()["error"]


# ----------------------------------------------------------------------------- readiness
async def test_missing_artifact_live_not_ready(tmp_path: Path) -> None:
    async for client, _app in _serve(tmp_path / "nothing", model_name="iris"):
        r = await _wait_ready(client, want=503)
        assert r.status_code == 503 and r.json()["error"].startswith("model not loaded: ")
        assert "does not exist" in r.json()["error"]
        assert (await client.get("/v2/health/live")).status_code == 200
        r = await client.post("/v2/models/iris/infer", json=v2([[1, 2, 3, 4]]))
        assert r.status_code == 503 and "model not loaded" in r.json()["error"]
        assert (await client.get("/v2/models/iris/ready")).status_code == 503
        assert (await client.get("/v2/models/other/ready")).status_code == 404
        assert b"mlvisor_model_ready 0.0" in (await client.get("/metrics")).content


async def test_corrupted_artifact_not_ready_with_reason(tmp_path: Path) -> None:
    path, _, _ = build_artifact(tmp_path)
    data = (path / "model.skops").read_bytes()
    (path / "model.skops").write_bytes(data[: len(data) // 2])
    async for client, _app in _serve(path):
        r = await _wait_ready(client, want=503)
        assert r.status_code == 503 and "corrupted or truncated" in r.json()["error"], r.text
        assert (await client.get("/v2/models/iris")).status_code == 503  # name known from metadata


# ----------------------------------------------------------------------------- metrics
async def test_metrics(served: Served) -> None:
    c = served.client
    await c.post("/v2/models/iris/infer", json=v2(served.X[:2]))
    await c.post("/v2/models/iris/infer", content=b"nope")
    text = (await c.get("/metrics")).text
    assert 'mlvisor_requests_total{endpoint="infer",status="200"} 1.0' in text
    assert 'mlvisor_requests_total{endpoint="infer",status="400"} 1.0' in text
    assert 'mlvisor_request_duration_seconds_bucket{endpoint="infer",le="0.5",status="200"}' in text
    assert "mlvisor_batch_size_rows_count" in text and "mlvisor_queue_depth" in text
    assert "mlvisor_model_load_seconds" in text and "mlvisor_model_ready 1.0" in text


async def test_forest_fast_path_is_bit_identical(tmp_path: Path) -> None:
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier, RandomForestRegressor

    from mlvisor.server.runtime import ModelRuntime

    rng = np.random.default_rng(0)
    for i, (est, ds) in enumerate(
        [
            (RandomForestClassifier(n_estimators=30, random_state=1), "iris"),
            (ExtraTreesClassifier(n_estimators=30, random_state=1), "iris"),
            (RandomForestRegressor(n_estimators=30, random_state=1), "diabetes"),
        ]
    ):
        path, model, X = build_artifact(tmp_path / str(i), est, dataset=ds)
        rt, _ = ModelRuntime.load(path)
        assert rt._forest is not None
        Xq = X[rng.integers(0, len(X), 57)] + rng.normal(0, 0.3, (57, X.shape[1]))
        labels, proba = rt.predict(Xq, True, hasattr(model, "predict_proba"), True)
        assert np.array_equal(labels, model.predict(Xq))
        if proba is not None:
            assert np.array_equal(proba, model.predict_proba(Xq))


@pytest.mark.parametrize("kind", ["gb_classifier", "gb_regressor"])
async def test_models_the_forest_fast_path_does_not_fit_are_served_by_their_own_predict(tmp_path: Path, kind: str) -> None:
    """GradientBoosting keeps estimators_ as a numpy array: a truth test on it made loading fail forever."""
    from sklearn.ensemble import GradientBoostingClassifier, GradientBoostingRegressor

    if kind == "gb_classifier":
        path, model, X = build_artifact(tmp_path, GradientBoostingClassifier(n_estimators=10, random_state=0))
    else:
        path, model, X = build_artifact(tmp_path, GradientBoostingRegressor(n_estimators=10, random_state=0), dataset="diabetes")
    async for client, _app in _serve(path):
        await _wait_ready(client)
        rows = X[::9]
        r = await client.post("/v2/models/iris/infer", json=v2(rows, ["predict"]))
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == model.predict(rows).tolist()


def test_a_fast_path_that_disagrees_or_fails_falls_back_to_the_models_predict(tmp_path: Path, monkeypatch) -> None:
    from mlvisor.server.runtime import ModelRuntime

    path, model, X = build_artifact(tmp_path)
    rt, _ = ModelRuntime.load(path)
    assert rt._forest == "classifier"

    def wrong(self, x, want_labels, want_proba):
        return np.zeros(len(x), dtype=int), np.zeros((len(x), 3))

    monkeypatch.setattr(ModelRuntime, "_forest_predict", wrong)
    rt2, _ = ModelRuntime.load(path)  # proven against predict at load: disagrees, so disabled
    assert rt2._forest is None
    assert rt2.predict(X[:5], True, False, True)[0].tolist() == model.predict(X[:5]).tolist()

    def broken(self, x, want_labels, want_proba):
        raise IndexError("a tree of an unexpected shape")

    monkeypatch.setattr(ModelRuntime, "_forest_predict", broken)
    rt._forest = "classifier"  # as if it had passed the proof: a later failure falls back, once and for all
    assert rt.predict(X[:5], True, False, True)[0].tolist() == model.predict(X[:5]).tolist()
    assert rt._forest is None


# ----------------------------------------------------------------------------- let it crash
async def test_an_artifact_that_can_never_load_calls_on_fatal_with_the_reason(tmp_path: Path, monkeypatch) -> None:
    path, _, _ = build_artifact(tmp_path)
    data = (path / "model.skops").read_bytes()
    (path / "model.skops").write_bytes(data[: len(data) // 2])
    term = tmp_path / "termination-log"
    term.write_text("")
    fatal: list[str] = []
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    app = create_app(Settings(model_dir=path, grpc_port=0), on_fatal=fatal.append)
    async with app.router.lifespan_context(app):
        deadline = time.monotonic() + 20
        while not fatal and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
    assert len(fatal) == 1, fatal
    assert fatal[0].startswith(f"cannot load the model: {path}/model.skops") and "corrupted or truncated" in fatal[0]
    assert term.read_text() == fatal[0]
    state = app.state.mlvisor
    state.stopping()  # the SIGTERM that follows does not overwrite the reason
    assert term.read_text() == fatal[0]


async def test_a_missing_artifact_is_waited_for_and_served_once_it_appears(tmp_path: Path) -> None:
    """A slow volume: the server stays live, says what it waits for, and never gives up on its own."""
    fatal: list[str] = []
    target = tmp_path / "models" / "v1"
    app = create_app(Settings(model_dir=target, model_name="iris", grpc_port=0), on_fatal=fatal.append)
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            r = await _wait_ready(client, want=503)
            assert "waiting for the model" in r.json()["error"] and "does not exist" in r.json()["error"]
            assert app.state.mlvisor.doing == f"waiting for the model: artifact directory {target} does not exist"
            build_artifact(tmp_path / "models")  # the version appears (atomically, as the trainer writes it)
            r = await _wait_ready(client, want=200, timeout=30)
            assert r.json() == {"ready": True}
    assert fatal == []
