"""Tensor bytes: the binary tensor data extension of V2 over HTTP, and raw contents over gRPC.

One codec for both transports, as Triton defines it: little-endian, row-major, no padding;
BOOL is one byte (0 or 1) per element; BYTES is a 4-byte little-endian length before each
element. Over HTTP the body is the JSON inference header (its length in the
``Inference-Header-Content-Length`` header) followed by each binary input's bytes, in the
order of ``inputs``, each input saying its size in ``parameters.binary_data_size``. A
response carries binary outputs the same way when the request asks for them
(``binary_data`` on an output, or ``binary_data_output`` for all), with
``Content-Type: application/octet-stream``, exactly as Triton answers.

Decoding turns binary inputs into numpy arrays in place of ``data``, which the V2 JSON codec
(v2_json.py) then takes as decoded, so one request type comes out whatever the transport;
every malformed body is a 400 naming what was wrong.
"""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

import numpy as np
import orjson

from mlvisor.server.errors import bad_request
from mlvisor.server.inference import InferRequest

#: numpy dtype of each fixed-size V2 datatype, little-endian.
DTYPES: dict[str, np.dtype] = {
    "BOOL": np.dtype("u1"),  # checked to be 0/1, then viewed as bool
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
HEADER = "inference-header-content-length"
OCTET_STREAM = b"application/octet-stream"
_NUMPY = orjson.OPT_SERIALIZE_NUMPY
_LENGTH = struct.Struct("<I")


def _shape_size(shape: Any, what: str) -> int:
    if not isinstance(shape, list) or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape):
        raise bad_request(f"shape of {what} must be a list of non-negative integers, got {shape!r}")
    n = 1
    for s in shape:
        n *= s
    return n


def decode_tensor(raw: bytes | memoryview, datatype: Any, shape: Any, what: str) -> np.ndarray:
    """The flat array ``raw`` holds for a tensor of ``datatype`` and ``shape`` (400 on mismatch).

    BYTES gives an object array of ``bytes`` (each element after its 4-byte length).
    """
    if datatype == "BYTES":
        return decode_bytes(raw, _shape_size(shape, what), what)
    if not isinstance(datatype, str) or datatype not in DTYPES:
        raise bad_request(f"unknown datatype {datatype!r} for {what}; expected one of {', '.join(DTYPES)}, BYTES")
    dtype = DTYPES[datatype]
    n = _shape_size(shape, what)
    need = n * dtype.itemsize
    if len(raw) != need:
        raise bad_request(
            f"{what} has {len(raw)} bytes of binary data but shape {shape} of {datatype} needs {need} bytes"
        )
    arr = np.frombuffer(raw, dtype=dtype)
    if datatype == "BOOL":
        if n and int(arr.max()) > 1:
            i = int(np.argmax(arr > 1))
            raise bad_request(f"{what} is BOOL but byte {i} of its binary data is {int(arr[i])}; expected 0 or 1")
        arr = arr.view(np.bool_)
    return arr


def decode_bytes(raw: bytes | memoryview, n: int, what: str) -> np.ndarray:
    """``n`` BYTES elements, each a 4-byte little-endian length and that many bytes (Triton's layout)."""
    buf = bytes(raw)
    if 4 * n > len(buf):
        # Checked before allocating: an object array of a huge shape's size would be filled
        # with None element by element in the event loop (shape [10**12, 4] blocked a server
        # for good where the kernel overcommits memory, and was a 500 MemoryError elsewhere).
        raise bad_request(
            f"{what} is BYTES of {n} elements but has only {len(buf)} bytes of binary data; "
            "each element is a 4-byte little-endian length followed by that many bytes"
        )
    out = np.empty(n, dtype=object)
    offset = 0
    for i in range(n):
        if offset + 4 > len(buf):
            raise bad_request(
                f"{what} is BYTES of {n} elements but its binary data ends after {i}; "
                "each element is a 4-byte little-endian length followed by that many bytes"
            )
        (size,) = _LENGTH.unpack_from(buf, offset)
        offset += 4
        if offset + size > len(buf):
            raise bad_request(
                f"{what} is BYTES: element {i} says {size} bytes but only {len(buf) - offset} follow"
            )
        out[i] = buf[offset : offset + size]
        offset += size
    if offset != len(buf):
        raise bad_request(
            f"{what} is BYTES of {n} elements but {len(buf) - offset} bytes of binary data follow the last one"
        )
    return out


def split_body(body: bytes, header_length: str) -> tuple[bytes, memoryview]:
    """(JSON header, the binary part) of a body sent with Inference-Header-Content-Length."""
    try:
        n = int(header_length)
    except ValueError:
        raise bad_request(
            f"Inference-Header-Content-Length must be the length of the JSON header in bytes, got {header_length!r}"
        ) from None
    if n <= 0 or n > len(body):
        raise bad_request(
            f"Inference-Header-Content-Length is {n} but the body has {len(body)} bytes; "
            "expected the length of the JSON header that starts the body"
        )
    return body[:n], memoryview(body)[n:]


def attach_binary_inputs(payload: Any, blob: memoryview) -> None:
    """Replace each binary input's missing ``data`` by the array its bytes in ``blob`` hold."""
    if not isinstance(payload, dict) or not isinstance(payload.get("inputs"), list):
        if len(blob):
            raise bad_request("the body has binary data after the JSON header but 'inputs' is not a list of tensors")
        return
    offset = 0
    for i, inp in enumerate(payload["inputs"]):
        if not isinstance(inp, dict):
            continue  # the runtime names this mistake
        params = inp.get("parameters")
        if params is None:
            continue
        name = inp.get("name")
        what = f"input {name!r}" if isinstance(name, str) else f"inputs[{i}]"
        if not isinstance(params, dict):
            raise bad_request(f"parameters of {what} must be an object")
        size = params.get("binary_data_size")
        if size is None:
            continue
        if not isinstance(size, int) or isinstance(size, bool) or size < 0:
            raise bad_request(f"binary_data_size of {what} must be a non-negative integer, got {size!r}")
        if "data" in inp:
            raise bad_request(f"{what} has both 'data' and binary_data_size; send its values one way")
        if offset + size > len(blob):
            raise bad_request(
                f"binary data of {what} needs bytes {offset}..{offset + size} after the JSON header, "
                f"but only {len(blob)} bytes follow it"
            )
        inp["data"] = decode_tensor(blob[offset : offset + size], inp.get("datatype"), inp.get("shape"), what)
        offset += size
    if offset != len(blob):
        raise bad_request(
            f"{len(blob) - offset} bytes of binary data follow the last binary input; "
            "binary_data_size of the inputs must add up to the bytes after the JSON header"
        )


def _flag(value: Any, what: str) -> bool:
    if not isinstance(value, bool):
        raise bad_request(f"{what} must be true or false, got {value!r}")
    return value


def check_flags(request: InferRequest) -> None:
    """Refuse a ``binary_data_output`` or per-output ``binary_data`` that is not a boolean (before predicting)."""
    if request.parameters and "binary_data_output" in request.parameters:
        _flag(request.parameters["binary_data_output"], "parameters.binary_data_output")
    for o in request.outputs:
        if o.parameters and "binary_data" in o.parameters:
            _flag(o.parameters["binary_data"], f"parameters.binary_data of output {o.name!r}")


_NONE: frozenset[str] = frozenset()


def binary_outputs(request: InferRequest, outputs: Sequence[Any]) -> frozenset[str]:
    """Which of the response's outputs (named tensors) go as binary data: binary_data per output over
    binary_data_output."""
    default = bool(request.parameters.get("binary_data_output", False)) if request.parameters else False
    per_output = {o.name: bool(o.parameters["binary_data"]) for o in request.outputs
                  if o.parameters and "binary_data" in o.parameters}
    if not default and not per_output:
        return _NONE
    return frozenset(t.name for t in outputs if per_output.get(t.name, default))


def tensor_bytes(datatype: str, data: Any) -> bytes:
    """The binary form of an output tensor's data (numpy array, or a list of str for BYTES)."""
    if datatype == "BYTES":
        parts = []
        for v in data:
            b = v if isinstance(v, bytes) else str(v).encode()
            parts.append(struct.pack("<I", len(b)))
            parts.append(b)
        return b"".join(parts)
    if datatype == "BOOL":
        return np.ascontiguousarray(data, dtype=np.bool_).tobytes()
    return np.ascontiguousarray(data, dtype=DTYPES[datatype]).tobytes()


def encode_response(response: dict[str, Any], binary: frozenset[str]) -> tuple[bytes, int | None]:
    """(body, JSON header length or None): binary outputs leave ``data`` for bytes after the JSON."""
    if not binary:
        return orjson.dumps(response, option=_NUMPY), None
    tails: list[bytes] = []
    for out in response["outputs"]:
        if out["name"] in binary:
            raw = tensor_bytes(out["datatype"], out.pop("data"))
            out["parameters"] = {"binary_data_size": len(raw)}
            tails.append(raw)
    header = orjson.dumps(response, option=_NUMPY)
    return header + b"".join(tails), len(header)
