"""V2 gRPC in-process: the committed stubs match the official definition, every RPC, both input
forms (raw_input_contents and typed contents), error codes, and one batcher shared with REST."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
import pytest_asyncio

from helpers.artifacts import build_artifact
from helpers.inprocess import wait_ready as _wait_ready
from helpers.paths import REPO
from mlvisor.server.app import create_app
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2_grpc as pb_grpc
from mlvisor.server.settings import Settings

STUBS = REPO / "server" / "mlvisor" / "server" / "grpc_stubs"


def test_committed_stubs_are_what_the_generator_makes(tmp_path: Path) -> None:
    from mlvisor.server.grpc_stubs.generate import OUTPUTS, generate

    generate(tmp_path)
    for name in OUTPUTS:
        assert (tmp_path / name).read_text() == (STUBS / name).read_text(), (
            f"{name} drifted: run .venv/bin/python -m mlvisor.server.grpc_stubs.generate"
        )


def test_the_service_is_the_standard_one() -> None:
    service = pb.DESCRIPTOR.services_by_name["GRPCInferenceService"]
    assert service.full_name == "inference.GRPCInferenceService"
    assert {m.name for m in service.methods} == {
        "ServerLive", "ServerReady", "ModelReady", "ServerMetadata", "ModelMetadata", "ModelInfer"}
    assert "raw_input_contents" in pb.ModelInferRequest.DESCRIPTOR.fields_by_name
    assert "raw_output_contents" in pb.ModelInferResponse.DESCRIPTOR.fields_by_name


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def both(tmp_path_factory: pytest.TempPathFactory):
    """One server (HTTP in-process, gRPC on a real port) for the module: the tests only read."""
    path, model, X = build_artifact(tmp_path_factory.mktemp("grpc"))
    port = _free_port()
    app = create_app(Settings(model_dir=path, host="127.0.0.1", grpc_port=port, max_rows=100, max_latency_ms=20))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as http:
            await _wait_ready(http)
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                yield pb_grpc.GRPCInferenceServiceStub(channel), http, model, X, app


def _request(x: np.ndarray, raw: bool = True, datatype: str = "FP64", **kw) -> pb.ModelInferRequest:
    req = pb.ModelInferRequest(model_name="iris", **kw)
    t = req.inputs.add(name="input-0", datatype=datatype, shape=list(x.shape))
    if raw:
        req.raw_input_contents.append(np.ascontiguousarray(x, dtype={"FP64": "<f8", "FP32": "<f4", "INT64": "<i8"}[datatype]).tobytes())
    elif datatype == "FP64":
        t.contents.fp64_contents.extend(x.ravel().tolist())
    elif datatype == "FP32":
        t.contents.fp32_contents.extend(x.ravel().tolist())
    else:
        t.contents.int64_contents.extend(int(v) for v in x.ravel())
    return req


def _out(resp: pb.ModelInferResponse, name: str) -> np.ndarray:
    i = [o.name for o in resp.outputs].index(name)
    o = resp.outputs[i]
    return np.frombuffer(resp.raw_output_contents[i], {"INT64": "<i8", "FP64": "<f8"}[o.datatype]).reshape(list(o.shape))


@pytest.mark.asyncio(loop_scope="module")
async def test_health_and_metadata(both) -> None:
    stub, *_ = both
    assert (await stub.ServerLive(pb.ServerLiveRequest())).live
    assert (await stub.ServerReady(pb.ServerReadyRequest())).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris"))).ready
    assert (await stub.ModelReady(pb.ModelReadyRequest(name="iris", version="v1"))).ready
    meta = await stub.ServerMetadata(pb.ServerMetadataRequest())
    assert meta.name == "mlvisor" and list(meta.extensions) == ["binary_tensor_data"]
    m = await stub.ModelMetadata(pb.ModelMetadataRequest(name="iris"))
    assert list(m.versions) == ["v1"] and m.inputs[0].name == "input-0" and list(m.inputs[0].shape) == [-1, 4]
    assert [o.name for o in m.outputs] == ["predict", "predict_proba"]
    assert m.properties["estimator"].startswith("sklearn.")


@pytest.mark.parametrize("raw", [True, False], ids=["raw_input_contents", "contents"])
@pytest.mark.parametrize("datatype", ["FP64", "FP32", "INT64"])
@pytest.mark.asyncio(loop_scope="module")
async def test_infer(both, raw: bool, datatype: str) -> None:
    stub, _, model, X, _ = both
    x = np.round(X[::10]) if datatype == "INT64" else X[::10]
    resp = await stub.ModelInfer(_request(x, raw, datatype, id="r-7"))
    assert resp.model_name == "iris" and resp.model_version == "v1" and resp.id == "r-7"
    xf = x.astype(np.float32).astype(np.float64) if datatype == "FP32" else x
    assert _out(resp, "predict").tolist() == model.predict(xf).tolist()
    assert np.array_equal(_out(resp, "predict_proba"), model.predict_proba(xf))
    only = _request(x, raw, datatype)
    only.outputs.add(name="predict_proba")
    resp = await stub.ModelInfer(only)
    assert [o.name for o in resp.outputs] == ["predict_proba"] and len(resp.raw_output_contents) == 1


ERRORS = [
    ("features", grpc.StatusCode.INVALID_ARGUMENT, "expected 4 features, got 3"),
    ("model", grpc.StatusCode.NOT_FOUND, "model 'nope' not found"),
    ("version", grpc.StatusCode.NOT_FOUND, "version '9' of model 'iris' not found"),
    ("raw-count", grpc.StatusCode.INVALID_ARGUMENT, "raw_input_contents has 2 entries for 1 inputs"),
    ("raw-size", grpc.StatusCode.INVALID_ARGUMENT, "has 16 bytes of binary data but shape [1, 4] of FP64 needs 32 bytes"),
    ("wrong-contents", grpc.StatusCode.INVALID_ARGUMENT, "values belong in contents.fp64_contents, not contents.int64_contents"),
    ("fp16-contents", grpc.StatusCode.INVALID_ARGUMENT, "FP16, which has no typed contents field"),
    ("output", grpc.StatusCode.INVALID_ARGUMENT, "unknown output 'transform'"),
    ("rows", grpc.StatusCode.INVALID_ARGUMENT, "the limit per request is 100"),
    ("nan", grpc.StatusCode.OK, ""),  # a forest takes NaN: no error
]


@pytest.mark.parametrize("case,code,message", ERRORS, ids=[c for c, _, _ in ERRORS])
@pytest.mark.asyncio(loop_scope="module")
async def test_errors_map_to_status_codes_with_the_rest_messages(both, case, code, message) -> None:
    stub, *_ = both
    x = np.ones((1, 4))
    req = _request(x)
    if case == "features":
        req = _request(np.ones((1, 3)))
    elif case == "model":
        req.model_name = "nope"
    elif case == "version":
        req.model_version = "9"
    elif case == "raw-count":
        req.raw_input_contents.append(b"")
    elif case == "raw-size":
        req.raw_input_contents[0] = b"\0" * 16
    elif case == "wrong-contents":
        req = _request(x, raw=False)
        req.inputs[0].contents.int64_contents.append(1)
    elif case == "fp16-contents":
        req = _request(x, raw=False)
        req.inputs[0].datatype = "FP16"
    elif case == "output":
        req.outputs.add(name="transform")
    elif case == "rows":
        req = _request(np.ones((101, 4)))
    elif case == "nan":
        req = _request(np.array([[np.nan, 1, 1, 1]]))
    if code is grpc.StatusCode.OK:
        assert len((await stub.ModelInfer(req)).outputs) == 2
        return
    with pytest.raises(grpc.aio.AioRpcError) as e:
        await stub.ModelInfer(req)
    assert e.value.code() == code and message in e.value.details(), e.value.details()


@pytest.mark.asyncio(loop_scope="module")
async def test_grpc_and_rest_callers_share_batches(both) -> None:
    stub, http, model, X, app = both
    batcher = app.state.mlvisor.batcher
    before = batcher.predict_calls
    xs = [X[i : i + 1] for i in range(0, 40, 5)]
    body = lambda x: {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": x.ravel().tolist()}]}  # noqa: E731
    grpc_calls = [stub.ModelInfer(_request(x)) for x in xs[:4]]
    rest_calls = [http.post("/v2/models/iris/infer", json=body(x)) for x in xs[4:]]
    results = await asyncio.gather(*grpc_calls, *rest_calls)
    for x, r in zip(xs[:4], results[:4], strict=True):
        assert _out(r, "predict").tolist() == model.predict(x).tolist()
    for x, r in zip(xs[4:], results[4:], strict=True):
        assert r.json()["outputs"][0]["data"] == model.predict(x).tolist()
    assert batcher.predict_calls - before < len(xs), "gRPC and REST requests were not merged"


async def test_not_ready_is_unavailable(tmp_path: Path) -> None:
    port = _free_port()
    app = create_app(Settings(model_dir=tmp_path / "missing", model_name="iris", host="127.0.0.1", grpc_port=port))
    async with app.router.lifespan_context(app), grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        assert (await stub.ServerLive(pb.ServerLiveRequest())).live
        deadline = asyncio.get_running_loop().time() + 10
        while "loading" in app.state.mlvisor.reason and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.02)
        assert not (await stub.ServerReady(pb.ServerReadyRequest())).ready
        assert not (await stub.ModelReady(pb.ModelReadyRequest(name="iris"))).ready
        with pytest.raises(grpc.aio.AioRpcError) as e:
            await stub.ModelInfer(_request(np.ones((1, 4))))
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "model not loaded" in e.value.details()
