"""V2 tensor values checked against their datatype: the one place that knows what each datatype allows.

A client names a datatype for every input tensor; the values must be of that kind and in its
range, or the request is refused with a 400 that names the first offending value and its
position (flat row-major index, and row/feature for a 2-D input). Accepting ``5.1`` as INT32,
``300`` as UINT8 or ``true`` as FP64 would silently predict on something other than what the
client meant.

- ``BOOL``: JSON booleans only.
- ``INT8`` .. ``INT64``, ``UINT8`` .. ``UINT64``: integers (an integral float such as ``5.0``
  is accepted, ``5.1`` is not), within the type's range; never booleans.
- ``FP16``, ``FP32``, ``FP64``: numbers within the type's finite range (NaN and infinities
  are left to the caller, which knows whether the model takes missing values); never booleans.
  ``json_values_or_nulls`` also reads JSON ``null`` as NaN (a missing value, as MLServer's
  pandas codec reads it) and says where the first one was.
- ``BYTES``: JSON strings, or ``null`` for a missing value (``json_strings``).

``json_values`` is for JSON tensors (flat or nested lists). ``check_array`` is for values
that already arrived typed (binary tensors, gRPC contents) and applies the same range rules,
so every transport refuses the same values with the same words. Both return float64, which
is what the estimators are fed. Cheap on the hot path: the type of every value is looked at
in Python only when numpy's own conversion says something other than numbers is present, or
when a 0/1 value could be a boolean in disguise (``np.asarray([True, 1.5])`` is ``[1.0, 1.5]``).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np

from mlvisor.server.errors import ApiError, bad_request

#: Integer datatypes -> (minimum, maximum).
INTEGER_RANGES: dict[str, tuple[int, int]] = {
    "INT8": (-(2**7), 2**7 - 1),
    "INT16": (-(2**15), 2**15 - 1),
    "INT32": (-(2**31), 2**31 - 1),
    "INT64": (-(2**63), 2**63 - 1),
    "UINT8": (0, 2**8 - 1),
    "UINT16": (0, 2**16 - 1),
    "UINT32": (0, 2**32 - 1),
    "UINT64": (0, 2**64 - 1),
}
#: Floating-point datatypes -> largest finite magnitude.
FLOAT_LIMITS: dict[str, float] = {
    "FP16": float(np.finfo(np.float16).max),
    "FP32": float(np.finfo(np.float32).max),
    "FP64": float(np.finfo(np.float64).max),
}
NUMERIC_DATATYPES: tuple[str, ...] = ("BOOL", *INTEGER_RANGES, *FLOAT_LIMITS)


def expected_words(datatype: str) -> str:
    """What a datatype takes, for messages: 'integers in 0..255'."""
    if datatype == "BOOL":
        return "booleans (true or false)"
    if datatype in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[datatype]
        return f"integers in {lo}..{hi}"
    if datatype == "FP64":
        return "numbers"
    return f"numbers within ±{FLOAT_LIMITS[datatype]:.6g}"


def show_value(v: Any) -> str:
    """A JSON value as the client wrote it (true, null, 'abc'), shortened."""
    if v is True:
        return "true"
    if v is False:
        return "false"
    if v is None:
        return "null"
    if isinstance(v, str):
        return repr(v if len(v) <= 40 else v[:40] + "...")
    if isinstance(v, list | dict):
        return "an array" if isinstance(v, list) else "an object"
    return repr(v)


def position(index: int, cols: int | None) -> str:
    """'position 5 (row 1, feature 1)' for a flat row-major index."""
    if cols:
        r, c = divmod(index, cols)
        return f"position {index} (row {r}, feature {c})"
    return f"position {index}"


def _refuse(what: str, datatype: str, value: Any, index: int, cols: int | None, problem: str) -> Exception:
    return bad_request(
        f"{what} has datatype {datatype}, but value {show_value(value)} at {position(index, cols)} "
        f"{problem}; {datatype} takes {expected_words(datatype)}"
    )


#: For callers that found a bad value themselves (a null where a tensor takes none).
def refuse_value(what: str, datatype: str, value: Any, index: int, cols: int | None, problem: str) -> Exception:
    return _refuse(what, datatype, value, index, cols, problem)


def _flatten(data: Any) -> Iterator[Any]:
    if isinstance(data, list):
        for d in data:
            yield from _flatten(d)
    else:
        yield data


def _kind_problem(v: Any, datatype: str) -> str | None:
    """Why one JSON value is not of the datatype's kind (range aside); None when it is."""
    if datatype == "BOOL":
        return None if isinstance(v, bool) else "is not a boolean"
    if isinstance(v, bool):
        return "is a boolean"
    if isinstance(v, int):
        return None
    if isinstance(v, float):
        if datatype in INTEGER_RANGES and not (np.isfinite(v) and v == int(v)):
            return "is not an integer"
        return None
    return f"is {'null' if v is None else 'a ' + _json_type(v)}, not a number"


def _json_type(v: Any) -> str:
    names: dict[type, str] = {str: "string", list: "array", dict: "object"}
    return names.get(type(v), type(v).__name__)


def _first_wrong_kind(data: Any, datatype: str, what: str, cols: int | None) -> Exception | None:
    for i, v in enumerate(_flatten(data)):
        problem = _kind_problem(v, datatype)
        if problem is not None:
            return _refuse(what, datatype, v, i, cols, problem)
    return None


def json_values(data: list, datatype: str, what: str, cols: int | None = None) -> np.ndarray:
    """The values of a JSON tensor (flat or nested, row-major) as float64, checked against ``datatype``.

    ``what`` names the tensor in messages ("input 'input-0'"); ``cols`` (features per row)
    lets a message say which row and feature a bad value is at. Raises ApiError(400).
    """
    if datatype not in NUMERIC_DATATYPES:
        raise ValueError(f"not a numeric datatype: {datatype!r}")
    try:
        arr = np.asarray(data)
    except (ValueError, TypeError):
        raise bad_request(f"data of {what} is ragged: nested lists must all have the same length") from None
    kind = arr.dtype.kind
    if kind not in "biuf" or (datatype == "BOOL") != (kind == "b"):
        # Strings, nulls, objects, booleans where numbers belong or the reverse: find the first.
        error = _first_wrong_kind(data, datatype, what, cols)
        if error is not None:
            raise error
        if kind not in "biuf":  # e.g. integers too large for any numpy integer type
            return _python_values(data, datatype, what, cols)
    elif datatype != "BOOL" and _may_hide_a_boolean(arr, data):
        error = _first_wrong_kind(data, datatype, what, cols)
        if error is not None:
            raise error
    if datatype == "FP64" and kind == "f":  # the hot path: nothing to range-check
        return arr.reshape(-1)
    return check_array(arr.reshape(-1), datatype, what, cols, data=data)


#: Up to this many values, looking at each value's type in Python is cheaper than numpy's masks.
_SCAN_BELOW = 64


def _may_hide_a_boolean(arr: np.ndarray, data: list) -> bool:
    """Whether numbers that numpy parsed include a JSON boolean (True became 1, False 0)."""
    if arr.size <= _SCAN_BELOW:
        return bool in map(type, data if arr.ndim == 1 else _flatten(data))
    zero_or_one = np.flatnonzero((arr == 0.0) | (arr == 1.0))
    if not zero_or_one.size:
        return False
    for flat_index in zero_or_one.tolist():
        value: Any = data
        for i in np.unravel_index(flat_index, arr.shape):
            value = value[int(i)]
        if type(value) is bool:
            return True
    return False


def _python_values(data: Any, datatype: str, what: str, cols: int | None) -> np.ndarray:
    values = list(_flatten(data))
    if datatype in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[datatype]
        for i, v in enumerate(values):
            if not lo <= v <= hi:
                raise _refuse(what, datatype, v, i, cols, "is out of range")
    try:
        return np.asarray(values, dtype=np.float64)
    except OverflowError:
        i = next(i for i, v in enumerate(values) if abs(v) > FLOAT_LIMITS["FP64"])
        raise _refuse(what, datatype, values[i], i, cols, "is out of range") from None


def check_array(
    arr: np.ndarray, datatype: str, what: str, cols: int | None = None, *, data: Any = None
) -> np.ndarray:
    """Range and integrality of values that are already numbers; returns them as flat float64.

    For tensors that arrive typed (binary or gRPC contents) as well as for JSON ones;
    ``data`` (the JSON it came from) only makes messages quote the value as written.
    """
    flat = arr.reshape(-1)

    def refuse(mask: np.ndarray, problem: str) -> Exception:
        i = int(np.argmax(mask))
        value = next(v for j, v in enumerate(_flatten(data)) if j == i) if data is not None else flat[i].item()
        return _refuse(what, datatype, value, i, cols, problem)

    if datatype == "BOOL":
        if flat.dtype.kind != "b":
            bad = ~np.isin(flat, (0, 1))
            if bad.any():
                raise refuse(bad, "is not a boolean")
        return flat.astype(np.float64)
    if datatype in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[datatype]
        if flat.dtype.kind == "f":
            with np.errstate(invalid="ignore"):
                fractional = ~np.isfinite(flat) | (flat != np.floor(flat))
            if fractional.any():
                raise refuse(fractional, "is not an integer")
        if flat.dtype.kind == "u":
            out = flat > hi if hi < np.iinfo(flat.dtype).max else np.zeros(flat.shape, bool)
        elif flat.dtype.kind == "f":
            # hi + 1 (a power of two) is exact in float64, hi itself may not be (2**63 - 1).
            out = (flat < lo) | (flat >= float(hi + 1))
            if out.any() and data is not None:
                # numpy turns [2**64 - 1, 1] into float64, rounding up: judge those by the exact value.
                values = list(_flatten(data))
                for i in np.flatnonzero(out):
                    v = values[i]
                    if isinstance(v, int) and not isinstance(v, bool) and lo <= v <= hi:
                        out[i] = False
        else:
            out = (flat < lo) | (flat > hi)
        if out.any():
            raise refuse(out, "is out of range")
        return flat.astype(np.float64)
    limit = FLOAT_LIMITS[datatype]
    if datatype != "FP64" and flat.dtype.kind == "f":
        with np.errstate(invalid="ignore"):
            out = np.isfinite(flat) & (np.abs(flat) > limit)
        if out.any():
            raise refuse(out, "is out of range")
    elif datatype != "FP64":
        out = np.abs(flat.astype(np.float64)) > limit
        if out.any():
            raise refuse(out, "is out of range")
    return flat if flat.dtype == np.float64 else flat.astype(np.float64)


def _fill_nulls(data: list) -> list:
    return [_fill_nulls(v) if isinstance(v, list) else (np.nan if v is None else v) for v in data]


def json_values_or_nulls(data: list, datatype: str, what: str, cols: int | None = None) -> tuple[np.ndarray, int | None]:
    """:func:`json_values`, except that for a floating-point datatype a JSON ``null`` is NaN.

    Returns (values, flat index of the first null or None). The caller decides whether the
    tensor may have missing values; this only reads them. No cost on the usual path: nulls
    are looked for only once ``json_values`` refused the data.
    """
    try:
        return json_values(data, datatype, what, cols), None
    except ApiError:
        if datatype not in FLOAT_LIMITS:
            raise
        first = next((i for i, v in enumerate(_flatten(data)) if v is None), None)
        if first is None:
            raise
    return json_values(_fill_nulls(data), datatype, what, cols), first


def json_strings(data: list, what: str, cols: int | None = None) -> tuple[np.ndarray, int | None]:
    """A BYTES tensor of JSON strings (``null`` for a missing value) as a flat object array.

    Returns (values, flat index of the first null or None); anything but a string or null is
    refused with its position.
    """
    values = data if all(not isinstance(v, list) for v in data) else list(_flatten(data))
    first = None
    for i, v in enumerate(values):
        if isinstance(v, str):
            continue
        if v is None:
            if first is None:
                first = i
            continue
        kind = "a boolean" if isinstance(v, bool) else ("a number" if isinstance(v, int | float) else f"a {_json_type(v)}")
        raise bad_request(
            f"{what} has datatype BYTES, but value {show_value(v)} at {position(i, cols)} is {kind}, "
            "not a string; BYTES takes strings (or null for a missing value)"
        )
    arr = np.empty(len(values), dtype=object)
    arr[:] = values
    return arr, first
