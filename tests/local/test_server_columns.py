"""Predictions by column name from tritonclient as it comes, against the real server process.

``python -m mlvisor.server`` serving a table model (a Pipeline: ColumnTransformer with
imputers and a OneHotEncoder, then a RandomForest; strings and missing values) on free ports;
tritonclient.http with its defaults (binary tensors, BYTES with 4-byte length prefixes), with
JSON tensors, and tritonclient.grpc, each sending one input per column, named as the column,
as the model metadata lists them. Answers must equal the fitted pipeline's own predictions on
the same DataFrame; a bad column is a 400/INVALID_ARGUMENT naming it.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pandas as pd
import pytest

from helpers.artifacts import build_table_artifact
from helpers.server_process import server_process

tritonhttp = pytest.importorskip("tritonclient.http")
tritongrpc = pytest.importorskip("tritonclient.grpc")
from tritonclient.utils import InferenceServerException  # noqa: E402

pytestmark = pytest.mark.slow

FRAME = pd.DataFrame({
    "age": pd.Series([39.0, np.nan, 52.0], dtype=np.float64),
    "workclass": pd.Series(["Private", "Gov", "Never-seen"], dtype=object),
    "hours": pd.Series([40, 20, 60], dtype=np.int64),
    "education": pd.Series(["BSc", "PhD", "HS"], dtype=object),
})


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, str, object]]:
    root = tmp_path_factory.mktemp("table")
    path, model, _ = build_table_artifact(root)
    with server_process(path, root / "server.log") as running:
        yield running.url, running.grpc_url, model


def _inputs(module, metadata_inputs: list, binary: bool | None) -> list:
    """One input per column, as listed by the model metadata (name and datatype from there)."""
    out = []
    for meta in metadata_inputs:
        name, datatype = (meta["name"], meta["datatype"]) if isinstance(meta, dict) else (meta.name, meta.datatype)
        values = FRAME[name].to_numpy()
        if datatype == "BYTES":
            values = np.array([v.encode() for v in values], dtype=np.object_)
        inp = module.InferInput(name, [len(FRAME)], datatype)
        if binary is None:
            inp.set_data_from_numpy(values)
        else:
            inp.set_data_from_numpy(values, binary_data=binary)
        out.append(inp)
    return out


@pytest.mark.parametrize("binary", [None, False], ids=["defaults-binary", "json"])
def test_tritonclient_http_columns(server, binary: bool | None) -> None:
    url, _, model = server
    client = tritonhttp.InferenceServerClient(url)
    meta = client.get_model_metadata("census")
    assert [i["name"] for i in meta["inputs"]] == list(FRAME.columns)
    outputs = None if binary is None else [tritonhttp.InferRequestedOutput("predict", binary_data=False)]
    result = client.infer("census", _inputs(tritonhttp, meta["inputs"], binary), outputs=outputs)
    got = [v.decode() if isinstance(v, bytes) else v for v in result.as_numpy("predict").tolist()]
    assert got == model.predict(FRAME).tolist()
    if binary is None:
        assert np.array_equal(result.as_numpy("predict_proba"), model.predict_proba(FRAME))


def test_tritonclient_grpc_columns(server) -> None:
    _, grpc_url, model = server
    client = tritongrpc.InferenceServerClient(grpc_url)
    meta = client.get_model_metadata("census")
    assert [(i.name, i.datatype) for i in meta.inputs] == [
        ("age", "FP64"), ("workclass", "BYTES"), ("hours", "INT64"), ("education", "BYTES")]
    result = client.infer("census", _inputs(tritongrpc, list(meta.inputs), None))
    assert [v.decode() for v in result.as_numpy("predict").tolist()] == model.predict(FRAME).tolist()
    assert np.array_equal(result.as_numpy("predict_proba"), model.predict_proba(FRAME))


def test_a_bad_column_is_named_over_both_protocols(server) -> None:
    url, grpc_url, _ = server
    for module, target in ((tritonhttp, url), (tritongrpc, grpc_url)):
        client = module.InferenceServerClient(target)
        inputs = []
        for name in FRAME.columns:
            inp = module.InferInput(name, [len(FRAME)], "BYTES" if name in ("age", "workclass", "education") else "INT64")
            values = FRAME[name].to_numpy()
            if name == "age":
                values = np.array([b"39", b"x", b"52"], dtype=np.object_)
            elif name != "hours":
                values = np.array([v.encode() for v in values], dtype=np.object_)
            inp.set_data_from_numpy(values)
            inputs.append(inp)
        with pytest.raises(InferenceServerException) as e:
            client.infer("census", inputs)
        assert "column 'age': expected FP64, got BYTES" in e.value.message()
