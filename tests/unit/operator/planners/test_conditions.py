"""Conditions move their lastTransitionTime only on a flip; times survive the status round trip."""

from __future__ import annotations

import datetime as dt

from hypothesis import given
from hypothesis import strategies as st

from mlvisor import api
from mlvisor.operator.planners.conditions import (
    find_condition,
    from_timestamp,
    invalid_spec_status,
    quantize,
    set_condition,
    to_timestamp,
)

T0 = 1_700_000_000.0


def test_transition_time_moves_only_when_status_flips() -> None:
    c1 = set_condition([], "Ready", "False", "Loading", "loading", T0, 1)
    c2 = set_condition(c1, "Ready", "False", "Loading", "still loading", T0 + 5, 2)
    assert c2[0].last_transition_time == from_timestamp(T0)
    assert c2[0].message == "still loading" and c2[0].observed_generation == 2
    c3 = set_condition(c2, "Ready", "True", "AllReplicasReady", "ok", T0 + 9, 2)
    assert c3[0].last_transition_time == from_timestamp(T0 + 9)


def test_other_conditions_keep_their_order_and_values() -> None:
    cs = set_condition([], "Created", "True", "Created", "", T0, 1)
    cs = set_condition(cs, "Running", "True", "WorkersRunning", "", T0, 1)
    cs2 = set_condition(cs, "Created", "True", "Created", "again", T0 + 1, 1)
    assert [c.type for c in cs2] == ["Created", "Running"]
    assert cs2[1] == cs[1]
    assert find_condition(cs2, "Failed") is None


@given(st.floats(min_value=0, max_value=4_000_000_000, allow_nan=False))
def test_times_round_trip_through_the_wire(t: float) -> None:
    q = quantize(t)
    assert abs(q - t) <= 0.5e-6 + 1e-9 * t
    d = from_timestamp(q)
    wire = api.FailureRecord(time=d).to_wire()["time"]
    back = api.FailureRecord.model_validate({"time": wire}).time
    assert to_timestamp(back) == q
    assert quantize(q) == q


def test_naive_datetimes_are_utc() -> None:
    assert to_timestamp(dt.datetime(1970, 1, 1, 0, 0, 1)) == 1.0


def test_invalid_spec_status_for_both_kinds() -> None:
    tj = invalid_spec_status("TrainingJob", 3, "spec.x: bad", T0)
    assert tj.phase == api.TrainingPhase.FAILED and tj.observed_generation == 3
    ms = invalid_spec_status("ModelServer", 2, "spec.y: bad", T0)
    assert ms.phase == api.ServerPhase.FAILED
    assert find_condition(ms.conditions, "Ready").reason == "InvalidSpec"
    again = invalid_spec_status("ModelServer", 2, "spec.y: bad", T0 + 60, previous=ms)
    assert again == ms  # a replay rewrites nothing
