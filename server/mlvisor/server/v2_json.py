"""The V2 JSON codec (and KServe V1's ``instances``): request bodies to InferRequest, responses to bytes.

Decoding checks everything that needs no model: the body's shape (an object with an
``inputs`` list, string ``id``, object ``parameters``, ``outputs`` as named objects, no output
twice), each tensor's fields, datatype name, shape, nesting and data length, and the values
against the datatype (tensors.py). Binary tensor data (binary.py) arrives here already
decoded into numpy arrays. What the model takes (input names, feature counts, columns,
missing values) is checked by the model (runtime.py), so REST and gRPC requests meet the same
checks there.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import orjson

from mlvisor.server.errors import bad_request
from mlvisor.server.inference import (
    NO_PARAMETERS,
    PREDICT,
    PREDICT_PROBA,
    InferRequest,
    InferResponse,
    InputTensor,
    RequestedOutput,
    frozen,
)
from mlvisor.server.tensors import FLOAT_LIMITS, NUMERIC_DATATYPES, json_strings, json_values, json_values_or_nulls

ALL_DATATYPES = frozenset(NUMERIC_DATATYPES) | {"BYTES"}
_NUMPY = orjson.OPT_SERIALIZE_NUMPY


def shape_str(shape: Any) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]" if isinstance(shape, list | tuple) else repr(shape)


def json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(v), type(v).__name__)


def nesting(data: list) -> int:
    """How deep the first elements of nested lists go (cheap; numpy catches raggedness)."""
    depth = 0
    while isinstance(data, list):
        depth += 1
        if not data:
            break
        data = data[0]
    return depth


# ------------------------------------------------------------------------------------ decoding
def decode_infer(payload: Any, model_name: str, model_version: str | None, max_rows: int) -> InferRequest:
    """A V2 inference request body (parsed JSON, binary inputs attached) as an InferRequest.

    ``max_rows`` bounds the first dimension of every input, checked before its data is read.
    """
    if type(payload) is not dict:
        raise bad_request(f"request body must be a JSON object, got {type(payload).__name__}")
    if "inputs" not in payload:
        raise bad_request("missing required field 'inputs' (a list of tensors)")
    inputs = payload["inputs"]
    if type(inputs) is not list:
        raise bad_request(f"'inputs' must be a list of tensors, got {json_type(inputs)}")
    params = payload.get("parameters")
    if params is not None and not isinstance(params, dict):
        raise bad_request("'parameters' must be an object")
    rid = payload.get("id")
    if rid is not None and not isinstance(rid, str):
        raise bad_request(f"'id' must be a string, got {type(rid).__name__}")
    outputs = decode_outputs(payload.get("outputs"))
    if len(inputs) == 1:  # the usual request
        tensors: tuple[InputTensor, ...] = (decode_tensor(inputs[0], 0, max_rows),)
    else:
        tensors = tuple([decode_tensor(inp, i, max_rows) for i, inp in enumerate(inputs)])
    return InferRequest(model_name, model_version, tensors, outputs, rid, frozen(params) if params else NO_PARAMETERS)


def decode_outputs(req: Any) -> tuple[RequestedOutput, ...]:
    if req is None:
        return ()
    if not isinstance(req, list):
        raise bad_request("'outputs' must be a list of {\"name\": ...} objects")
    out: list[RequestedOutput] = []
    seen: set[str] = set()
    for o in req:
        if type(o) is not dict or type(n := o.get("name")) is not str:
            raise bad_request("each entry of 'outputs' must be an object with a string 'name'")
        if n in seen:
            raise bad_request(f"output {n!r} requested twice")
        seen.add(n)
        params = o.get("parameters")
        if params is None:
            out.append(_PLAIN_OUTPUTS.get(n) or RequestedOutput(n))
            continue
        if type(params) is not dict:
            raise bad_request(f"parameters of output {n!r} must be an object")
        out.append(RequestedOutput(n, frozen(params)))
    return tuple(out)


#: The outputs most requests name, without parameters: built once (they are immutable).
_PLAIN_OUTPUTS = {n: RequestedOutput(n) for n in (PREDICT, PREDICT_PROBA)}


def decode_tensor(inp: Any, i: int, max_rows: int) -> InputTensor:
    if type(inp) is not dict:
        raise bad_request(f"inputs[{i}] must be an object with name, shape, datatype, data; got {type(inp).__name__}")
    try:
        name, shape, datatype, data = inp["name"], inp["shape"], inp["datatype"], inp["data"]
    except KeyError:
        key = next(k for k in ("name", "shape", "datatype", "data") if k not in inp)
        raise bad_request(f"inputs[{i}] is missing required field '{key}'") from None
    if not isinstance(name, str):
        raise bad_request(f"inputs[{i}].name must be a string, got {json_type(name)}")
    what = f"input {name!r}"
    if type(datatype) is not str or datatype not in ALL_DATATYPES:
        raise bad_request(
            f"unknown datatype {datatype!r} for {what}; expected one of {', '.join(NUMERIC_DATATYPES)}, BYTES"
        )
    if type(shape) is not list or not _dims(shape):
        raise bad_request(f"shape of {what} must be a list of non-negative integers, got {shape!r}")
    params = inp.get("parameters")
    if params is not None and type(params) is not dict:
        raise bad_request(f"parameters of {what} must be an object")
    check_rows(shape, max_rows, what)
    return decode_values(name, datatype, shape, data, what)


def check_rows(shape: list[int] | tuple[int, ...], max_rows: int, what: str) -> None:
    """The server's bound on rows (the first dimension) per request, before any data is read."""
    if shape and shape[0] > max_rows:
        raise bad_request(f"{what} has {shape[0]} rows; the limit per request is {max_rows}")


def _dims(shape: list) -> bool:
    for s in shape:  # noqa: SIM110  (a loop: a third of all()'s cost for a short shape)
        if type(s) is not int or s < 0:  # a bool is not a dimension
            return False
    return True


def decode_values(name: str | None, datatype: str, shape: list[int], data: Any, what: str) -> InputTensor:
    """Check ``data`` (a JSON list, or an array decoded from binary) against datatype and shape."""
    size = math.prod(shape)
    cols = shape[1] if len(shape) == 2 else None
    first_null = None
    if type(data) is np.ndarray:  # binary tensor data: decoded and typed already
        arr = data
    elif type(data) is not list:
        raise bad_request(f"data of {what} must be a list of {'strings' if datatype == 'BYTES' else 'numbers'}, "
                          f"got {json_type(data)}")
    else:
        depth = nesting(data)
        if depth > max(len(shape), 1):
            raise bad_request(
                f"data of {what} is nested {depth} levels deep; shape {shape_str(shape)} allows at most "
                f"{max(len(shape), 1)} (flat, or one list per row)"
            )
        if datatype == "FP64" or datatype in FLOAT_LIMITS:
            arr, first_null = json_values_or_nulls(data, datatype, what, cols)
        elif datatype == "BYTES":
            arr, first_null = json_strings(data, what, cols)
        else:
            arr = json_values(data, datatype, what, cols)
    if arr.size != size:
        raise bad_request(f"{what} shape {shape_str(shape)} needs {size} values, data has {arr.size}")
    return InputTensor(name, datatype, tuple(shape), arr, first_null)


def decode_v1(payload: Any, model_name: str, max_rows: int) -> InferRequest:
    """KServe V1 ``{"instances": [[...], ...]}`` (or ``inputs``) as an InferRequest asking for ``predict``."""
    if not isinstance(payload, dict):
        raise bad_request(f"request body must be a JSON object, got {type(payload).__name__}")
    rows = payload.get("instances", payload.get("inputs"))
    if not isinstance(rows, list):
        raise bad_request("missing required field 'instances' (a list of rows, each a list of numbers)")
    if not rows:
        raise bad_request("empty input: 'instances' has 0 rows; expected at least 1")
    check_rows([len(rows)], max_rows, "'instances'")
    if not all(isinstance(r, list) for r in rows):
        raise bad_request("'instances' must be a list of rows, each a list of numbers")
    lengths = {len(r) for r in rows}
    if len(lengths) != 1:
        raise bad_request("'instances' must be rows of one length: got rows of different lengths")
    cols = lengths.pop()
    if nesting(rows) > 2:
        raise bad_request("'instances' must be a list of rows, each a list of numbers (not of lists)")
    tensor = decode_values(None, "FP64", [len(rows), cols], rows, "'instances'")
    return InferRequest(model_name, None, (tensor,), (RequestedOutput("predict"),))


# ------------------------------------------------------------------------------------ encoding
def response_dict(response: InferResponse) -> dict[str, Any]:
    """The V2 JSON response object (numpy arrays left for orjson)."""
    out: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        out["id"] = response.id
    out["outputs"] = [
        {"name": t.name, "shape": list(t.shape), "datatype": t.datatype, "data": t.data} for t in response.outputs
    ]
    return out


def encode_v1(response: InferResponse) -> bytes:
    """``{"predictions": [...]}`` from the ``predict`` output."""
    labels = next(t.data for t in response.outputs if t.name == "predict")
    return orjson.dumps({"predictions": labels}, option=_NUMPY)
