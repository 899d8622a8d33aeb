"""The V2 gRPC codec: ``ModelInferRequest`` to InferRequest, InferResponse to ``ModelInferResponse``.

Inputs come from ``raw_input_contents`` (binary.py's codec, Triton's layout: what
``tritonclient.grpc`` sends, BYTES included, with 4-byte length prefixes) or from the typed
``contents`` fields (``bytes_contents`` for BYTES); values are checked as REST checks them, so
the data plane gets the same request whatever the protocol. Answers carry
``raw_output_contents``, which is what Triton sends and what ``tritonclient.grpc`` reads.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from mlvisor.server import binary
from mlvisor.server.errors import bad_request
from mlvisor.server.grpc_stubs import open_inference_grpc_pb2 as pb
from mlvisor.server.inference import InferRequest, InferResponse, InputTensor, RequestedOutput, frozen
from mlvisor.server.tensors import check_array
from mlvisor.server.v2_json import ALL_DATATYPES, check_rows, shape_str

#: The typed ``InferTensorContents`` field for each datatype (FP16 has none: raw only).
CONTENTS_FIELD = {
    "BOOL": ("bool_contents", np.bool_),
    "UINT8": ("uint_contents", np.uint8),
    "UINT16": ("uint_contents", np.uint16),
    "UINT32": ("uint_contents", np.uint32),
    "UINT64": ("uint64_contents", np.uint64),
    "INT8": ("int_contents", np.int8),
    "INT16": ("int_contents", np.int16),
    "INT32": ("int_contents", np.int32),
    "INT64": ("int64_contents", np.int64),
    "FP32": ("fp32_contents", np.float32),
    "FP64": ("fp64_contents", np.float64),
    "BYTES": ("bytes_contents", object),
}
_ALL_CONTENTS = ("bool_contents", "int_contents", "int64_contents", "uint_contents", "uint64_contents",
                 "fp32_contents", "fp64_contents", "bytes_contents")


def parameter(p: Any) -> Any:
    kind = p.WhichOneof("parameter_choice")
    return getattr(p, kind) if kind else None


def _contents(t: Any, what: str) -> np.ndarray:
    field = CONTENTS_FIELD.get(t.datatype)
    if field is None:  # FP16 (unknown datatypes are refused before)
        raise bad_request(f"{what} is FP16, which has no typed contents field; send it in raw_input_contents")
    name, dtype = field
    values = getattr(t.contents, name)
    for other in _ALL_CONTENTS:
        if other != name and len(getattr(t.contents, other)):
            raise bad_request(f"{what} is {t.datatype}: its values belong in contents.{name}, not contents.{other}")
    if t.datatype == "BYTES":
        arr = np.empty(len(values), dtype=object)
        arr[:] = [bytes(b) for b in values]
        return arr
    # int_contents and uint_contents are 32-bit: a value outside the narrower datatype is refused.
    arr = np.asarray(values)
    if t.datatype in ("INT8", "INT16", "UINT8", "UINT16") and arr.size:
        check_array(arr, t.datatype, what)
    return arr.astype(dtype)


def decode_request(request: Any, max_rows: int) -> InferRequest:
    """The InferRequest of a ModelInferRequest; 400 (INVALID_ARGUMENT) for what does not decode."""
    raw = request.raw_input_contents
    if raw and len(raw) != len(request.inputs):
        raise bad_request(
            f"raw_input_contents has {len(raw)} entries for {len(request.inputs)} inputs; "
            "when used, it must hold one entry per input, in order"
        )
    inputs = []
    for i, t in enumerate(request.inputs):
        what = f"input {t.name!r}"
        if t.datatype not in ALL_DATATYPES:
            raise bad_request(f"unknown datatype {t.datatype!r} for {what}; expected one of {', '.join(sorted(ALL_DATATYPES))}")
        shape = tuple(int(s) for s in t.shape)
        if any(s < 0 for s in shape):
            raise bad_request(f"shape of {what} must be non-negative integers, got {shape_str(shape)}")
        check_rows(shape, max_rows, what)
        if raw:
            if t.HasField("contents"):
                raise bad_request(f"{what} has contents although raw_input_contents is used; send its values one way")
            data = binary.decode_tensor(raw[i], t.datatype, list(shape), what)
        else:
            data = _contents(t, what)
            size = int(np.prod(shape)) if shape else 1
            if data.size != size:
                raise bad_request(f"{what} shape {shape_str(shape)} needs {size} values, contents have {data.size}")
        inputs.append(InputTensor(t.name, t.datatype, shape, data))
    outputs = tuple(
        RequestedOutput(o.name, frozen({k: parameter(v) for k, v in o.parameters.items()})) for o in request.outputs
    )
    if len({o.name for o in outputs}) != len(outputs):
        twice = next(o.name for i, o in enumerate(outputs) if o.name in {p.name for p in outputs[:i]})
        raise bad_request(f"output {twice!r} requested twice")
    params = frozen({k: parameter(v) for k, v in request.parameters.items()})
    return InferRequest(request.model_name, request.model_version or None, tuple(inputs), outputs,
                        request.id or None, params)


def encode_response(response: InferResponse, request_id: str) -> Any:
    out = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version, id=request_id)
    for t in response.outputs:
        out.outputs.add(name=t.name, datatype=t.datatype, shape=list(t.shape))
        out.raw_output_contents.append(binary.tensor_bytes(t.datatype, t.data))
    return out


def encode_model_metadata(meta: dict[str, Any]) -> Any:
    """ModelMetadataResponse of the data plane's metadata; non-string properties as JSON."""
    tensor = pb.ModelMetadataResponse.TensorMetadata
    props = {k: v if isinstance(v, str) else orjson.dumps(v).decode() for k, v in meta["parameters"].items()}
    return pb.ModelMetadataResponse(
        name=meta["name"],
        versions=meta["versions"],
        platform=meta["platform"],
        inputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["inputs"]],
        outputs=[tensor(name=t["name"], datatype=t["datatype"], shape=t["shape"]) for t in meta["outputs"]],
        properties=props,
    )
