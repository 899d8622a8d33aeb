"""Every V2 datatype's values are checked for kind and range; the message names the first bad value and where it is."""

from __future__ import annotations

import numpy as np
import pytest

from mlvisor.server.errors import ApiError
from mlvisor.server.tensors import INTEGER_RANGES, NUMERIC_DATATYPES, check_array, json_values

#: datatype -> values it must accept (with the float64 they become).
ACCEPTED: dict[str, list] = {
    "BOOL": [True, False, False, True],
    **{t: [lo, hi, 0, 1] for t, (lo, hi) in INTEGER_RANGES.items()},
    "FP16": [65504.0, -1.5, 0, 3],
    "FP32": [3.0e38, -1.5, 0, 3],
    "FP64": [1.7e308, -1.5, 0, 3],
}


def _refused(datatype: str) -> list[tuple[list, int, str]]:
    """(data, index of the first bad value, words the message must contain) for one datatype."""
    ok = True if datatype == "BOOL" else 0
    cases: list[tuple[list, int, str]] = [([ok, "abc", ok, ok], 1, "'abc'"), ([ok, ok, None, ok], 2, "null")]
    if datatype == "BOOL":
        return [*cases, ([True, False, 1, True], 2, "value 1 at position 2 (row 1, feature 0) is not a boolean")]
    cases.append(([0, True, 1, 0], 1, "value true at position 1 (row 0, feature 1) is a boolean"))
    if datatype in INTEGER_RANGES:
        lo, hi = INTEGER_RANGES[datatype]
        cases += [
            ([0, 1, 5.1, 0], 2, "value 5.1 at position 2 (row 1, feature 0) is not an integer"),
            ([0, hi + 1, 0, 0], 1, f"value {hi + 1} at position 1 (row 0, feature 1) is out of range"),
            ([0, 0, 0, lo - 1], 3, f"value {lo - 1} at position 3 (row 1, feature 1) is out of range"),
        ]
    elif datatype in ("FP16", "FP32"):
        big = 7.0e4 if datatype == "FP16" else 3.5e38
        cases.append(([0, 0, big, 0], 2, "is out of range"))
    return cases


@pytest.mark.parametrize("datatype", NUMERIC_DATATYPES)
def test_each_datatype_accepts_its_values(datatype: str) -> None:
    values = ACCEPTED[datatype]
    got = json_values(values, datatype, "input 'x'", 2)
    assert got.dtype == np.float64
    assert got.tolist() == [float(v) for v in values]
    assert json_values([values[:2], values[2:]], datatype, "input 'x'", 2).tolist() == got.tolist()  # nested


@pytest.mark.parametrize(
    "datatype,data,index,words",
    [(t, d, i, w) for t in NUMERIC_DATATYPES for d, i, w in _refused(t)],
)
def test_each_datatype_refuses_the_wrong_kind_or_range_naming_the_first_value(
    datatype: str, data: list, index: int, words: str
) -> None:
    with pytest.raises(ApiError) as e:
        json_values(data, datatype, "input 'x'", 2)
    assert e.value.status == 400
    msg = e.value.message
    assert f"input 'x' has datatype {datatype}" in msg and words in msg and f"at position {index}" in msg, msg
    assert f"{datatype} takes" in msg


def test_uint64_values_beyond_int64_are_judged_exactly() -> None:
    assert json_values([2**64 - 1, 1], "UINT64", "x").tolist() == [float(2**64 - 1), 1.0]
    with pytest.raises(ApiError, match="18446744073709551616 at position 0"):
        json_values([2**64, 1], "UINT64", "x")
    with pytest.raises(ApiError, match="9223372036854775808 at position 0"):
        json_values([2**63, 1], "INT64", "x")


def test_typed_arrays_get_the_same_range_rules() -> None:
    """For transports whose tensors arrive typed (binary, gRPC): same rules, same words."""
    assert check_array(np.array([0, 255], dtype=np.uint16), "UINT8", "x").tolist() == [0.0, 255.0]
    with pytest.raises(ApiError, match=r"value 256 at position 1 is out of range; UINT8 takes integers in 0\.\.255"):
        check_array(np.array([0, 256], dtype=np.uint16), "UINT8", "x")
    with pytest.raises(ApiError, match=r"value 2\.5 at position 0 is not an integer"):
        check_array(np.array([2.5]), "INT32", "x")
    with pytest.raises(ApiError, match="value 2 at position 1 is not a boolean"):
        check_array(np.array([1, 2]), "BOOL", "x")


@pytest.mark.parametrize("nested", [False, True])
def test_a_boolean_hidden_among_many_numbers_is_found(nested: bool) -> None:
    """Beyond a few values the 0/1 entries are found with numpy and only those are looked at."""
    rows = [[float(r), 0.5, 1.0, 0.0] for r in range(100)]  # plenty of genuine 0.0 and 1.0
    rows[70][2] = False
    data = rows if nested else [v for row in rows for v in row]
    with pytest.raises(ApiError, match=r"value false at position 282 \(row 70, feature 2\) is a boolean"):
        json_values(data, "FP64", "input 'x'", 4)
    rows[70][2] = 0.0
    assert json_values(rows if nested else [v for row in rows for v in row], "FP64", "x", 4).size == 400
