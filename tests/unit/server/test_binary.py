"""The binary tensor data extension over HTTP, content encodings, and the request-path bounds.

In-process (httpx over ASGI): every datatype as binary input, binary and mixed outputs laid out
as Triton lays them out, every malformed binary body as a 400 naming what was wrong, gzip and
deflate bodies, the bounded queue (503 + Retry-After), the request deadline, a model that raises
at predict time, and JSON nested deeper than any parser allows.
"""

from __future__ import annotations

import asyncio
import gzip
import struct
import zlib
from pathlib import Path

import httpx
import numpy as np
import orjson
import pytest

from helpers.artifacts import build_artifact
from helpers.inprocess import serve as _serve
from helpers.inprocess import wait_ready as _wait_ready
from mlvisor.server.binary import DTYPES, decode_tensor

URL = "/v2/models/iris/infer"


def binary_request(x: np.ndarray, datatype: str, outputs=None, **params) -> tuple[bytes, dict]:
    raw = np.ascontiguousarray(x, dtype=np.bool_ if datatype == "BOOL" else DTYPES[datatype]).tobytes()
    head: dict = {"inputs": [{"name": "input-0", "shape": list(x.shape), "datatype": datatype,
                              "parameters": {"binary_data_size": len(raw)}}]}
    if outputs is not None:
        head["outputs"] = outputs
    if params:
        head["parameters"] = params
    js = orjson.dumps(head)
    return js + raw, {"inference-header-content-length": str(len(js)), "content-type": "application/octet-stream"}


def split_response(r: httpx.Response) -> tuple[dict, bytes]:
    n = int(r.headers["inference-header-content-length"])
    return orjson.loads(r.content[:n]), r.content[n:]


@pytest.fixture
async def served(tmp_path: Path):
    path, model, X = build_artifact(tmp_path)
    async for client, app in _serve(path, max_rows=200, max_body_bytes=64 * 1024):
        await _wait_ready(client)
        yield client, model, X, app


@pytest.mark.parametrize("datatype", list(DTYPES))
async def test_every_datatype_as_binary_input(served, datatype: str) -> None:
    client, model, X, _ = served
    x = np.round(X[::15] * 2)  # small non-negative whole numbers: exact in every datatype
    if datatype == "BOOL":
        x = (X[::15] > 3).astype(np.float64)
    body, headers = binary_request(x, datatype, outputs=[{"name": "predict", "parameters": {"binary_data": False}}])
    r = await client.post(URL, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert "inference-header-content-length" not in r.headers  # no binary output asked for: plain JSON
    assert r.json()["outputs"][0]["data"] == model.predict(x).tolist()


async def test_binary_outputs_are_laid_out_as_triton_does(served) -> None:
    client, model, X, _ = served
    x = X[:5]
    body, headers = binary_request(x, "FP64", binary_data_output=True)
    r = await client.post(URL, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    assert int(r.headers["content-length"]) == len(r.content)
    head, tail = split_response(r)
    pred, proba = head["outputs"]
    assert "data" not in pred and "data" not in proba
    assert pred["parameters"] == {"binary_data_size": 5 * 8} and proba["parameters"] == {"binary_data_size": 5 * 3 * 8}
    assert len(tail) == 5 * 8 + 15 * 8
    assert np.frombuffer(tail[:40], "<i8").tolist() == model.predict(x).tolist()
    assert np.array_equal(np.frombuffer(tail[40:], "<f8").reshape(5, 3), model.predict_proba(x))


async def test_per_output_binary_data_overrides_binary_data_output_and_json_inputs_mix(served) -> None:
    client, model, X, _ = served
    x = X[:3]
    body = orjson.dumps({
        "inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64", "data": x.ravel().tolist()}],
        "outputs": [{"name": "predict_proba", "parameters": {"binary_data": False}}, {"name": "predict"}],
        "parameters": {"binary_data_output": True},
    })
    r = await client.post(URL, content=body, headers={"content-type": "application/json"})
    head, tail = split_response(r)
    proba, _pred = head["outputs"]
    assert np.array_equal(np.reshape(proba["data"], (3, 3)), model.predict_proba(x))
    assert np.frombuffer(tail, "<i8").tolist() == model.predict(x).tolist()


async def test_string_labels_go_as_length_prefixed_bytes(tmp_path: Path) -> None:
    path, model, X = build_artifact(tmp_path, string_labels=True)
    async for client, _ in _serve(path):
        await _wait_ready(client)
        body, headers = binary_request(X[:3], "FP32", outputs=[{"name": "predict", "parameters": {"binary_data": True}}])
        r = await client.post(URL, content=body, headers=headers)
        head, tail = split_response(r)
        assert head["outputs"][0]["datatype"] == "BYTES"
        labels, i = [], 0
        while i < len(tail):
            (n,) = struct.unpack_from("<I", tail, i)
            labels.append(tail[i + 4 : i + 4 + n].decode())
            i += 4 + n
        assert labels == model.predict(X[:3].astype(np.float32).astype(np.float64)).tolist()


def _corrupt(case: str) -> tuple[bytes, dict]:
    x = np.ones((1, 4))
    body, headers = binary_request(x, "FP64")
    n = int(headers["inference-header-content-length"])
    if case == "header-not-int":
        headers["inference-header-content-length"] = "forty"
    elif case == "header-too-long":
        headers["inference-header-content-length"] = str(len(body) + 1)
    elif case == "missing-bytes":
        body = body[:-8]
    elif case == "extra-bytes":
        body = body + b"\0" * 8
    elif case == "size-vs-shape":
        head = orjson.loads(body[:n])
        head["inputs"][0]["parameters"]["binary_data_size"] = 24
        js = orjson.dumps(head)
        body, headers["inference-header-content-length"] = js + body[n : n + 24], str(len(js))
    elif case in ("both-data", "size-negative", "size-bool", "bool-byte", "bytes-type"):
        head = orjson.loads(body[:n])
        raw = body[n:]
        inp = head["inputs"][0]
        if case == "both-data":
            inp["data"] = [1, 2, 3, 4]
        elif case == "size-negative":
            inp["parameters"]["binary_data_size"] = -1
        elif case == "size-bool":
            inp["parameters"]["binary_data_size"] = True
        elif case == "bool-byte":
            inp["datatype"], raw = "BOOL", bytes([0, 1, 2, 1])
            inp["parameters"]["binary_data_size"] = 4
        else:
            inp["datatype"] = "BYTES"
        js = orjson.dumps(head)
        body, headers["inference-header-content-length"] = js + raw, str(len(js))
    elif case == "no-header":
        del headers["inference-header-content-length"]
    return body, headers


MALFORMED = [
    ("header-not-int", "Inference-Header-Content-Length must be the length of the JSON header in bytes, got 'forty'"),
    ("header-too-long", "Inference-Header-Content-Length is"),
    ("missing-bytes", "but only 24 bytes follow it"),
    ("extra-bytes", "8 bytes of binary data follow the last binary input"),
    ("size-vs-shape", "has 24 bytes of binary data but shape [1, 4] of FP64 needs 32 bytes"),
    ("both-data", "has both 'data' and binary_data_size"),
    ("size-negative", "binary_data_size of input 'input-0' must be a non-negative integer, got -1"),
    ("size-bool", "must be a non-negative integer, got True"),
    ("bool-byte", "is BOOL but byte 2 of its binary data is 2; expected 0 or 1"),
    ("bytes-type", "is BYTES: element 1 says"),  # FP64 bytes read as length-prefixed strings
    ("no-header", "needs the Inference-Header-Content-Length header"),
]


@pytest.mark.parametrize("case,message", MALFORMED, ids=[c for c, _ in MALFORMED])
async def test_malformed_binary_bodies_are_400_naming_the_problem(served, case: str, message: str) -> None:
    client, *_ = served
    body, headers = _corrupt(case)
    r = await client.post(URL, content=body, headers=headers)
    assert r.status_code == 400, r.text
    assert list(r.json()) == ["error"] and message in r.json()["error"]


def test_decode_tensor_round_trips_every_datatype() -> None:
    rng = np.random.default_rng(0)
    for datatype, dtype in DTYPES.items():
        x = rng.integers(0, 2 if datatype == "BOOL" else 100, size=(3, 4)).astype(dtype)
        out = decode_tensor(x.tobytes(), datatype, [3, 4], "t")
        assert out.tolist() == x.ravel().astype(np.bool_ if datatype == "BOOL" else dtype).tolist()


@pytest.mark.parametrize("shape", [[10**12, 4], [10**6, 4], [3, 4]])
def test_bytes_of_a_shape_its_data_cannot_hold_is_refused_before_anything_is_allocated(shape: list[int]) -> None:
    """Regression: BYTES of shape [10**12, 4] with 8 bytes of data allocated an object array of
    4e12 elements first (a MemoryError, or where memory is overcommitted a loop filling it
    with None that blocked the server's event loop for good)."""
    from mlvisor.server.errors import ApiError

    with pytest.raises(ApiError) as e:
        decode_tensor(np.ones(1).tobytes(), "BYTES", shape, "input-0")
    assert e.value.status == 400
    assert f"BYTES of {shape[0] * shape[1]} elements but has only 8 bytes" in str(e.value)


@pytest.mark.parametrize("encoding", ["gzip", "deflate"])
async def test_compressed_bodies(served, encoding: str) -> None:
    client, model, X, _ = served
    body = orjson.dumps({"inputs": [{"name": "input-0", "shape": [2, 4], "datatype": "FP64", "data": X[:2].ravel().tolist()}]})
    packed = gzip.compress(body) if encoding == "gzip" else zlib.compress(body)
    r = await client.post(URL, content=packed, headers={"content-encoding": encoding, "content-type": "application/json"})
    assert r.status_code == 200, r.text
    assert r.json()["outputs"][0]["data"] == model.predict(X[:2]).tolist()


async def test_compression_bombs_unknown_encodings_and_garbage(served) -> None:
    client, *_ = served
    bomb = gzip.compress(b"[" + b" " * (10 * 1024 * 1024) + b"]")  # 10 MiB of spaces in ~10 KiB
    assert len(bomb) < 64 * 1024
    r = await client.post(URL, content=bomb, headers={"content-encoding": "gzip"})
    assert r.status_code == 413 and "once gzip-decoded" in r.json()["error"]
    r = await client.post(URL, content=b"{}", headers={"content-encoding": "br"})
    assert r.status_code == 415 and "Content-Encoding 'br' is not supported" in r.json()["error"]
    r = await client.post(URL, content=b"not gzip", headers={"content-encoding": "gzip"})
    assert r.status_code == 400 and "not valid gzip data" in r.json()["error"]
    r = await client.post(URL, content=gzip.compress(b'{"inputs": []}')[:-6], headers={"content-encoding": "gzip"})
    assert r.status_code == 400, r.text


@pytest.mark.parametrize("depth", [3, 70, 1100, 30_000])
async def test_deeply_nested_json_is_a_400(served, depth: int) -> None:
    """The finding: nested arrays made the stdlib fallback raise RecursionError (500)."""
    client, *_ = served
    for nest in (b"[" * depth + b"1" + b"]" * depth, b"[" * depth + b"NaN" + b"]" * depth):
        body = b'{"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ' + nest + b"}]}"
        r = await client.post(URL, content=body, headers={"content-type": "application/json"})
        assert r.status_code == 400, r.text[:300]
        assert set(r.json()) == {"error"}
    assert (await client.get("/v2/health/ready")).status_code == 200


# ----------------------------------------------------------------------------- overload, deadlines, faults
def _slow(app, seconds: float, fail_on: float | None = None) -> None:
    """Make the loaded model slow (and raise for rows whose first value is ``fail_on``)."""
    state = app.state.mlvisor
    real = state.runtime.predict

    def predict(x, want_labels, want_proba, finite):
        import time

        time.sleep(seconds)
        if fail_on is not None and (x[:, 0] == fail_on).any():
            raise RuntimeError("the model blew up")
        return real(x, want_labels, want_proba, finite)

    state.batcher._predict = predict


def _body(first: float = 5.1) -> bytes:
    return orjson.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": [first, 3.5, 1.4, 0.2]}]})


async def test_a_full_queue_answers_503_with_retry_after_and_health_stays_up(tmp_path: Path) -> None:
    path, _, _ = build_artifact(tmp_path)
    async for client, app in _serve(path, max_queue=2, max_batch_size=1):
        await _wait_ready(client)
        _slow(app, 0.05)
        answers = await asyncio.gather(*[client.post(URL, content=_body()) for _ in range(12)])
        codes = sorted(r.status_code for r in answers)
        assert set(codes) == {200, 503} and codes.count(200) >= 2, codes  # at least the queue's worth
        for r in answers:
            if r.status_code == 503:
                assert r.headers["retry-after"] == "1" and "overloaded" in r.json()["error"]
        assert (await client.get("/v2/health/ready")).status_code == 200
        assert (await client.post(URL, content=_body())).status_code == 200


async def test_a_request_past_its_deadline_is_503_with_retry_after(tmp_path: Path) -> None:
    path, _, _ = build_artifact(tmp_path)
    async for client, app in _serve(path, request_timeout_seconds=0.2):
        await _wait_ready(client)
        _slow(app, 0.6)
        r = await client.post(URL, content=_body())
        assert r.status_code == 503 and r.headers["retry-after"] == "1"
        assert "did not finish within the request timeout of 0.2 s" in r.json()["error"]
        _slow(app, 0)
        await asyncio.sleep(0.5)  # the slow batch finishes in its thread
        assert (await client.post(URL, content=_body())).status_code == 200


async def test_a_model_raising_at_predict_time_fails_that_request_only(tmp_path: Path) -> None:
    path, _model, _X = build_artifact(tmp_path)
    async for client, app in _serve(path, max_latency_ms=50):
        await _wait_ready(client)
        _slow(app, 0.01, fail_on=6.6)
        bodies = [_body(6.6 if i == 3 else 5.1) for i in range(8)]  # merged into one batch, then retried one by one
        answers = await asyncio.gather(*[client.post(URL, content=b) for b in bodies])
        codes = [r.status_code for r in answers]
        assert codes == [200, 200, 200, 500, 200, 200, 200, 200], codes
        assert answers[3].json() == {"error": "prediction failed: RuntimeError: the model blew up"}
        assert all(r.json()["outputs"][0]["data"] == [0] for i, r in enumerate(answers) if i != 3)
        assert (await client.get("/v2/health/ready")).json() == {"ready": True}


async def test_health_and_metrics_expose_nothing_sensitive(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("MLVISOR_SECRET_FOR_TEST", "hunter2-do-not-leak")
    path, _, _ = build_artifact(tmp_path)
    async for client, _ in _serve(path):
        await _wait_ready(client)
        await client.post(URL, content=b'{"id": "secret-request-id-42", "inputs": []}')
        texts = [(await client.get(p)).text for p in ("/metrics", "/v2/health/live", "/v2/health/ready", "/v2")]
        for text in texts:
            assert str(tmp_path) not in text and "hunter2" not in text and "secret-request-id" not in text
        families = {line.split()[2] for line in texts[0].splitlines() if line.startswith("# TYPE")}
        assert families and all(f.startswith("mlvisor_") for f in families), families
        labels = {kv.split("=")[0] for line in texts[0].splitlines() if "{" in line
                  for kv in line[line.index("{") + 1 : line.index("}")].split(",")}
        assert labels <= {"endpoint", "status", "le"}, labels
