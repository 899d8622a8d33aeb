"""Predictions by column name, in process: a table model (Pipeline with a ColumnTransformer, strings
and missing values) and an all-numeric model asked one input per column, over REST JSON, binary
tensors and gRPC; one request type for every protocol; errors that name the column."""

from __future__ import annotations

import asyncio
import socket
import struct
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pandas as pd
import pytest
import pytest_asyncio

from helpers.artifacts import TABLE_COLUMNS, build_artifact, build_table_artifact
from helpers.inprocess import wait_ready
from mlvisor.server import grpc_codec, v2_json
from mlvisor.server.app import create_app
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2_grpc as pb_grpc
from mlvisor.server.settings import Settings

URL = "/v2/models/census/infer"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


#: Rows with every kind of value: missing numbers and strings, an unknown category.
ROWS = pd.DataFrame({
    "age": pd.Series([39.0, np.nan, 52.0, 23.0], dtype=np.float64),
    "workclass": pd.Series(["Private", "Gov", np.nan, "Never-seen"], dtype=object),
    "hours": pd.Series([40, 20, 60, 35], dtype=np.int64),
    "education": pd.Series(["BSc", "PhD", "HS", "MSc"], dtype=object),
})


def json_columns(frame: pd.DataFrame, shape_n1: bool = False) -> list[dict[str, Any]]:
    """One V2 JSON input per column; null for a missing value."""
    inputs = []
    for spec in TABLE_COLUMNS:
        values = [None if isinstance(v, float) and np.isnan(v) else v for v in frame[spec["name"]].tolist()]
        shape = [len(frame), 1] if shape_n1 else [len(frame)]
        inputs.append({"name": spec["name"], "shape": shape, "datatype": spec["datatype"], "data": values})
    return inputs


def bytes_tensor(values: list[str]) -> bytes:
    return b"".join(struct.pack("<I", len(v.encode())) + v.encode() for v in values)


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def table(tmp_path_factory: pytest.TempPathFactory):
    """The census Pipeline served over HTTP (in process) and gRPC (a real port)."""
    path, model, _ = build_table_artifact(tmp_path_factory.mktemp("table"))
    port = _free_port()
    app = create_app(Settings(model_dir=path, host="127.0.0.1", grpc_port=port, max_rows=100, max_latency_ms=20))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            await wait_ready(http)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield pb_grpc.GRPCInferenceServiceStub(channel), http, model, app


def expected(model: Any, frame: pd.DataFrame) -> tuple[list, np.ndarray]:
    return model.predict(frame).tolist(), model.predict_proba(frame)


# ----------------------------------------------------------------------------- metadata
@pytest.mark.asyncio(loop_scope="module")
async def test_metadata_lists_every_column_with_its_datatype(table) -> None:
    stub, http, _, _ = table
    m = (await http.get("/v2/models/census")).json()
    assert m["inputs"] == [{"name": c["name"], "datatype": c["datatype"], "shape": [-1]} for c in TABLE_COLUMNS]
    assert m["parameters"]["columns"] == TABLE_COLUMNS
    g = await stub.ModelMetadata(pb.ModelMetadataRequest(name="census"))
    assert [(t.name, t.datatype, list(t.shape)) for t in g.inputs] == [(c["name"], c["datatype"], [-1]) for c in TABLE_COLUMNS]
    import json

    assert json.loads(g.properties["columns"]) == TABLE_COLUMNS


# ----------------------------------------------------------------------------- answers
@pytest.mark.parametrize("shape_n1", [False, True], ids=["[N]", "[N,1]"])
@pytest.mark.asyncio(loop_scope="module")
async def test_json_columns_with_strings_and_nulls(table, shape_n1: bool) -> None:
    _, http, model, _ = table
    r = await http.post(URL, json={"id": "c1", "inputs": json_columns(ROWS, shape_n1)})
    assert r.status_code == 200, r.text
    body = r.json()
    labels, proba = expected(model, ROWS)
    assert body["id"] == "c1"
    out = {o["name"]: o for o in body["outputs"]}
    assert out["predict"]["data"] == labels and out["predict"]["datatype"] == "BYTES"
    assert np.array_equal(np.asarray(out["predict_proba"]["data"]).reshape(out["predict_proba"]["shape"]), proba)


@pytest.mark.asyncio(loop_scope="module")
async def test_binary_columns_bytes_with_length_prefixes(table) -> None:
    _, http, model, _ = table
    frame = ROWS.iloc[[0, 1]].copy()
    frame["workclass"] = ["Private", "Gov"]  # binary BYTES cannot say null; NaN is FP64's missing value
    parts: list[bytes] = []
    inputs = []
    for spec in TABLE_COLUMNS:
        values = frame[spec["name"]]
        if spec["datatype"] == "BYTES":
            raw = bytes_tensor(values.tolist())
        else:
            raw = values.to_numpy().astype({"FP64": "<f8", "INT64": "<i8"}[spec["datatype"]]).tobytes()
        parts.append(raw)
        inputs.append({"name": spec["name"], "shape": [2], "datatype": spec["datatype"],
                       "parameters": {"binary_data_size": len(raw)}})
    import orjson

    head = orjson.dumps({"inputs": inputs, "outputs": [{"name": "predict", "parameters": {"binary_data": True}}]})
    r = await http.post(URL, content=head + b"".join(parts),
                        headers={"Inference-Header-Content-Length": str(len(head)), "Content-Type": "application/octet-stream"})
    assert r.status_code == 200, r.text
    n = int(r.headers["inference-header-content-length"])
    tail = r.content[n:]
    got, offset = [], 0
    while offset < len(tail):
        (size,) = struct.unpack_from("<I", tail, offset)
        got.append(tail[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert got == expected(model, frame)[0]


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "contents"])
@pytest.mark.asyncio(loop_scope="module")
async def test_grpc_columns(table, raw: bool) -> None:
    stub, _, model, _ = table
    frame = ROWS.copy()
    frame["workclass"] = ["Private", "Gov", "Self-emp", "Never-seen"]
    req = grpc_columns(frame, raw)
    resp = await stub.ModelInfer(req)
    i = [o.name for o in resp.outputs].index("predict")
    buf, labels, offset = resp.raw_output_contents[i], [], 0
    while offset < len(buf):
        (size,) = struct.unpack_from("<I", buf, offset)
        labels.append(buf[offset + 4 : offset + 4 + size].decode())
        offset += 4 + size
    assert labels == expected(model, frame)[0]


def grpc_columns(frame: pd.DataFrame, raw: bool) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="census", id="g1")
    for spec in TABLE_COLUMNS:
        values = frame[spec["name"]].tolist()
        t = req.inputs.add(name=spec["name"], datatype=spec["datatype"], shape=[len(values)])
        if spec["datatype"] == "BYTES":
            if raw:
                req.raw_input_contents.append(bytes_tensor(values))
            else:
                t.contents.bytes_contents.extend(v.encode() for v in values)
        elif raw:
            req.raw_input_contents.append(np.asarray(values, {"FP64": "<f8", "INT64": "<i8"}[spec["datatype"]]).tobytes())
        elif spec["datatype"] == "FP64":
            t.contents.fp64_contents.extend(values)
        else:
            t.contents.int64_contents.extend(values)
    return req


@pytest.mark.asyncio(loop_scope="module")
async def test_concurrent_column_requests_are_batched_and_each_gets_its_own_rows(table) -> None:
    _, http, model, app = table
    batcher = app.state.mlvisor.batcher
    before = batcher.predict_calls
    frames = [ROWS.iloc[[i % 4, (i + 1) % 4]].reset_index(drop=True) for i in range(8)]
    results = await asyncio.gather(*(http.post(URL, json={"inputs": json_columns(f)}) for f in frames))
    for f, r in zip(frames, results, strict=True):
        assert r.status_code == 200, r.text
        assert r.json()["outputs"][0]["data"] == expected(model, f)[0]
    assert batcher.predict_calls - before < len(frames), "column requests were not merged into batches"


# ----------------------------------------------------------------------------- one request type
def test_json_binary_and_grpc_decode_to_the_same_request() -> None:
    """The one request path: the same columns through each codec give equal InferRequests."""
    frame = ROWS.copy()
    frame["workclass"] = ["Private", "Gov", "Self-emp", "x"]
    from_json = v2_json.decode_infer({"id": "g1", "inputs": json_columns(frame)}, "census", None, 100)
    from_grpc = grpc_codec.decode_request(grpc_columns(frame, raw=True), 100)
    from_contents = grpc_codec.decode_request(grpc_columns(frame, raw=False), 100)
    for other in (from_grpc, from_contents):
        assert (other.model_name, other.model_version, other.id) == (from_json.model_name, None, "g1")
        assert [(t.name, t.datatype, t.shape) for t in other.inputs] == [(t.name, t.datatype, t.shape) for t in from_json.inputs]
        for a, b in zip(from_json.inputs, other.inputs, strict=True):
            left = [v.encode() if isinstance(v, str) else v for v in a.data.tolist()]
            assert pd.Series(left, dtype=object).equals(pd.Series(b.data.tolist(), dtype=object)), (left, b.data)  # NaN == NaN
    with pytest.raises(AttributeError):
        from_json.id = "changed"  # type: ignore[misc]


# ----------------------------------------------------------------------------- errors name the column
def _replace(inputs: list[dict], name: str, **changes: Any) -> list[dict]:
    return [dict(i, **changes) if i["name"] == name else i for i in inputs]


BAD = [
    ("datatype", lambda i: _replace(i, "age", datatype="BYTES", data=["39", "x", "1", "2"]),
     "column 'age': expected FP64, got BYTES"),
    ("string-as-number", lambda i: _replace(i, "education", datatype="INT64", data=[1, 2, 3, 4]),
     "column 'education': expected BYTES, got INT64"),
    ("null-not-allowed", lambda i: _replace(i, "hours", datatype="FP64", data=[40, None, 1, 2]),
     "column 'hours': missing value (null) at row 1; this column takes no missing values"),
    ("string-null-not-allowed", lambda i: _replace(i, "education", data=["BSc", "PhD", None, "HS"]),
     "column 'education': missing value (null) at row 2"),
    ("not-integer", lambda i: _replace(i, "hours", datatype="FP64", data=[40, 2.5, 1, 2]),
     "column 'hours': value 2.5 at row 1 is not an integer"),
    ("missing-column", lambda i: [x for x in i if x["name"] != "workclass"],
     "missing input for column 'workclass'"),
    ("unknown", lambda i: [*i, {"name": "salary", "shape": [4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
     "unknown input 'salary'; model 'census' takes one input per column ('age' FP64, 'workclass' BYTES"),
    ("twice", lambda i: [*i, i[0]], "input 'age' is given twice"),
    ("rows-differ", lambda i: _replace(i, "hours", shape=[3], data=[1, 2, 3]),
     "column 'hours' has 3 rows but column 'age' has 4"),
    ("shape", lambda i: _replace(i, "age", shape=[2, 2]), "column 'age': shape [2, 2]; expected [N] or [N, 1]"),
    ("number-in-bytes", lambda i: _replace(i, "workclass", data=["a", 3, "b", "c"]),
     "input 'workclass' has datatype BYTES, but value 3 at position 1 is a number, not a string"),
    ("infinite", lambda i: _replace(i, "age", data=[1, 2, 7777, 3]), "column 'age': infinite value at row 2"),
    ("matrix", lambda i: [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [1, 2, 3, 4]}],
     "model 'census' has string columns: send one input per column"),
]


@pytest.mark.parametrize("case,mutate,message", BAD, ids=[c for c, _, _ in BAD])
@pytest.mark.asyncio(loop_scope="module")
async def test_bad_columns_are_400_naming_the_column(table, case: str, mutate, message: str) -> None:
    _, http, _, _ = table
    import orjson

    body = orjson.dumps({"inputs": mutate(json_columns(ROWS))}).replace(b"7777", b"Infinity")
    r = await http.post(URL, content=body, headers={"content-type": "application/json"})
    assert r.status_code == 400, r.text
    assert message in r.json()["error"], r.json()["error"]


@pytest.mark.asyncio(loop_scope="module")
async def test_bad_column_over_grpc_is_invalid_argument_with_the_same_words(table) -> None:
    stub, *_ = table
    req = grpc_columns(ROWS.assign(workclass=["a", "b", "c", "d"]), raw=True)
    req.inputs[0].datatype = "BYTES"  # age
    req.raw_input_contents[0] = bytes_tensor(["1", "2", "3", "4"])
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ModelInfer(req)
    assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "column 'age': expected FP64, got BYTES" in e.value.details()


# ----------------------------------------------------------------------------- all-numeric models
@pytest.fixture
async def iris(tmp_path: Path):
    path, model, X = build_artifact(tmp_path)
    app = create_app(Settings(model_dir=path, grpc_port=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            await wait_ready(http)
            yield http, model, X


async def test_numeric_model_takes_its_feature_names_as_columns_and_the_matrix(iris) -> None:
    http, model, X = iris
    meta = (await http.get("/v2/models/iris")).json()
    assert meta["inputs"] == [{"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    names = [c["name"] for c in meta["parameters"]["columns"]]
    assert names == meta["parameters"]["feature_names"]
    x = X[::30]
    by_name = {"inputs": [{"name": n, "shape": [len(x)], "datatype": "FP64", "data": x[:, j].tolist()}
                          for j, n in enumerate(names)][::-1]}  # any order
    r = await http.post("/v2/models/iris/infer", json=by_name)
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == model.predict(x).tolist()
    matrix = {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": "FP64", "data": x.ravel().tolist()}]}
    r2 = await http.post("/v2/models/iris/infer", json=matrix)
    assert r2.json()["outputs"] == r.json()["outputs"]
    by_name["inputs"][0]["datatype"] = "BYTES"
    by_name["inputs"][0]["data"] = ["a"] * len(x)
    bad = await http.post("/v2/models/iris/infer", json=by_name)
    assert bad.status_code == 400 and f"column '{names[-1]}': expected FP64, got BYTES" in bad.json()["error"]


async def test_all_numeric_table_model_takes_the_matrix_too(tmp_path: Path) -> None:
    """A table model whose columns are all numbers: the single [N, F] tensor, split into its columns."""
    import datetime as dt

    import numpy
    import sklearn
    import skops
    import skops.io as sio
    from sklearn.compose import ColumnTransformer
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    from mlvisor.trainer.artifact import ArtifactMetadata, ColumnSpec, DatasetInfo, TensorSpec, write_artifact

    frame = pd.DataFrame({"a": [1.0, np.nan, 3.0, 4.0, 5.0, 6.0], "b": np.array([1, 2, 3, 4, 5, 6], dtype=np.int64)})
    y = np.array([0, 0, 0, 1, 1, 1])
    model = Pipeline([("pre", ColumnTransformer([("n", SimpleImputer(), ["a", "b"])])),
                      ("m", LogisticRegression())]).fit(frame, y)
    cols = [ColumnSpec(name="a", datatype="FP64", missing=True), ColumnSpec(name="b", datatype="INT64")]
    meta = ArtifactMetadata(
        name="nums", version="v1", created=dt.datetime.now(dt.UTC), estimator="sklearn.pipeline.Pipeline",
        task="classification", sklearn_version=sklearn.__version__, numpy_version=numpy.__version__,
        skops_version=skops.__version__, feature_names=["a", "b"], n_features=2, classes=[0, 1], columns=cols,
        inputs=[TensorSpec(name="input-0", datatype="FP64", shape=[-1, 2])],
        outputs=[TensorSpec(name="predict", datatype="INT64", shape=[-1])], metrics={}, score_name="accuracy",
        params={}, dataset=DatasetInfo(source="csv", name="n.csv", rows=6, target="y"), model_sha256="x")
    path = write_artifact(tmp_path, sio.dumps(model), meta)
    app = create_app(Settings(model_dir=path, grpc_port=0))
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as http:
            await wait_ready(http)
            rows = [[np.nan, 2], [5.0, 6]]
            body = orjson_nan({"inputs": [{"name": "input-0", "shape": [2, 2], "datatype": "FP64",
                                           "data": [7777, 2, 5.0, 6]}]})
            r = await http.post("/v2/models/nums/infer", content=body, headers={"content-type": "application/json"})
            assert r.status_code == 200, r.text
            want = model.predict(pd.DataFrame({"a": [np.nan, 5.0], "b": np.array([2, 6], dtype=np.int64)}))
            assert r.json()["outputs"][0]["data"] == want.tolist(), rows
            bad = await http.post("/v2/models/nums/infer", json={"inputs": [
                {"name": "input-0", "shape": [1, 2], "datatype": "FP64", "data": [1.0, 2.5]}]})
            assert bad.status_code == 400 and "column 'b': value 2.5 at row 0 is not an integer" in bad.json()["error"]


def orjson_nan(obj: Any) -> bytes:
    """A JSON body with a NaN literal where 7777 stands (what clients send for a missing value)."""
    import orjson

    return orjson.dumps(obj).replace(b"7777", b"NaN")


@pytest.mark.parametrize("encoder", ["onehot", "ordinal"])
def test_the_forest_fast_path_serves_a_table_pipeline_bit_identically(tmp_path: Path, encoder: str) -> None:
    """After the Pipeline's preprocessing, a forest's trees are called directly (runtime.py); the answers
    must equal Pipeline.predict/predict_proba exactly, missing values and unknown categories included."""
    from sklearn.ensemble import ExtraTreesClassifier, RandomForestClassifier

    from mlvisor.server.runtime import ModelRuntime

    for i, est in enumerate([RandomForestClassifier(n_estimators=15, random_state=0), ExtraTreesClassifier(n_estimators=9)]):
        path, model, frame = build_table_artifact(tmp_path / str(i), est, encoder=encoder)
        rt, _ = ModelRuntime.load(path)
        assert rt._forest == "classifier"
        frame = pd.concat([frame, ROWS], ignore_index=True)
        cols = tuple(frame[c.name].to_numpy() for c in rt.columns)
        labels, proba = rt.predict(cols, True, True, False)
        assert np.array_equal(labels, model.predict(frame)) and np.array_equal(proba, model.predict_proba(frame))


async def test_the_data_plane_serves_a_typed_request_without_any_protocol(tmp_path: Path) -> None:
    """DataPlane.infer takes the InferRequest every codec builds, and nothing else: no JSON, no protobuf."""
    from mlvisor.server.dataplane import DataPlane
    from mlvisor.server.errors import ApiError
    from mlvisor.server.inference import InferRequest, InputTensor, RequestedOutput

    path, model, _ = build_table_artifact(tmp_path)
    dp = DataPlane(Settings(model_dir=path, grpc_port=0))
    await dp.load()
    try:
        rows = ROWS.iloc[:2]
        strings = lambda col: np.array(rows[col].tolist(), dtype=object)  # noqa: E731
        request = InferRequest("census", None, (
            InputTensor("workclass", "BYTES", (2,), strings("workclass")),
            InputTensor("age", "FP64", (2,), rows["age"].to_numpy()),
            InputTensor("education", "BYTES", (2,), strings("education")),
            InputTensor("hours", "INT64", (2,), rows["hours"].to_numpy()),
        ), (RequestedOutput("predict_proba"),), "typed")
        response = await dp.infer(request)
        assert response.id == "typed" and [t.name for t in response.outputs] == ["predict_proba"]
        assert np.array_equal(response.outputs[0].data.reshape(response.outputs[0].shape), model.predict_proba(rows))
        with pytest.raises(ApiError) as e:
            await dp.infer(request._replace(model_name="other"))
        assert e.value.status == 404
    finally:
        await dp.stop()
