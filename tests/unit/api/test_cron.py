"""cron.next_time and check_schedule: CronJob syntax, UTC, strictly after, clear refusals."""

from __future__ import annotations

import datetime as dt

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvisor import api
from mlvisor.api.cron import CRON_PATTERN, CronError, check_schedule, next_time


def at(*args: int) -> float:
    return dt.datetime(*args, tzinfo=dt.UTC).timestamp()


@pytest.mark.parametrize(
    ("expression", "after", "expected"),
    [
        ("0 3 * * *", at(2026, 1, 1, 1, 0), at(2026, 1, 1, 3, 0)),
        ("0 3 * * *", at(2026, 1, 1, 3, 0), at(2026, 1, 2, 3, 0)),  # strictly after
        ("0 3 * * *", at(2026, 1, 1, 3, 0, 30), at(2026, 1, 2, 3, 0)),
        ("*/15 * * * *", at(2026, 1, 1, 3, 7), at(2026, 1, 1, 3, 15)),
        ("0 9 * * MON-FRI", at(2026, 1, 2, 10, 0), at(2026, 1, 5, 9, 0)),  # Friday -> Monday
        ("0 0 1 JAN,JUL *", at(2026, 2, 1), at(2026, 7, 1)),
        ("0 0 29 2 *", at(2026, 3, 1), at(2028, 2, 29)),
        ("0 0 13 * 5", at(2026, 1, 1), at(2026, 1, 2)),  # day of month OR day of week (Vixie cron)
        ("@hourly", at(2026, 1, 1, 3, 30), at(2026, 1, 1, 4, 0)),
        ("@daily", at(2026, 1, 1, 3, 30), at(2026, 1, 2)),
        ("@midnight", at(2026, 1, 1, 3, 30), at(2026, 1, 2)),
        ("@weekly", at(2026, 1, 1), at(2026, 1, 4)),  # Sunday
        ("@monthly", at(2026, 1, 15), at(2026, 2, 1)),
        ("@yearly", at(2026, 1, 15), at(2027, 1, 1)),
        ("@annually", at(2026, 1, 15), at(2027, 1, 1)),
        ("0 0 ? * MON", at(2026, 1, 1), at(2026, 1, 5)),  # "?" as CronJob takes it
    ],
)
def test_next_time(expression: str, after: float, expected: float) -> None:
    assert next_time(expression, after) == expected


@pytest.mark.parametrize(
    ("expression", "says"),
    [
        ("61 * * * *", "not a valid cron expression"),
        ("* * * * 8", "not a valid cron expression"),
        ("* * * *", "expected five fields"),
        ("0 3 * * * *", "expected five fields"),  # a seconds field: a CronJob refuses it too
        ("0 3 * * * * 2030", "expected five fields"),
        ("H 3 * * *", "not a valid cron expression"),
        ("@reboot", "expected five fields"),
        ("every day", "expected five fields"),
        ("0 0 31 2 *", "not a valid cron expression"),  # 31 February never comes
        ("7-3 * * * *", "not a valid cron expression"),
        ("*/0 * * * *", "not a valid cron expression"),
    ],
)
def test_invalid_schedules_are_refused_with_a_reason(expression: str, says: str) -> None:
    with pytest.raises(CronError, match=says):
        check_schedule(expression)
    with pytest.raises(CronError):
        next_time(expression, 0.0)


def test_the_model_refuses_what_check_schedule_refuses() -> None:
    spec = {"training": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.svm.SVC"}}}
    api.ModelPipelineSpec.model_validate({**spec, "schedule": "30 2 * * 0"})
    with pytest.raises(ValueError, match=r"spec|schedule"):
        api.ModelPipelineSpec.model_validate({**spec, "schedule": "61 * * * *"})


def _matches(minute: set[int], hour: set[int], t: dt.datetime) -> bool:
    return t.minute in minute and t.hour in hour


field_values = st.one_of(
    st.just(("*", None)),
    st.integers(1, 30).map(lambda step: (f"*/{step}", step)),
    st.lists(st.integers(0, 23), min_size=1, max_size=4, unique=True).map(lambda v: (",".join(map(str, v)), set(v))),
    # one-value ranges included: croniter 7.0.0 read "5-5" as every minute
    st.tuples(st.integers(0, 23), st.integers(0, 23)).map(sorted).map(lambda ab: (f"{ab[0]}-{ab[1]}", set(range(ab[0], ab[1] + 1)))),
)


def _expand(spec: tuple[str, object], top: int) -> set[int]:
    _text, values = spec
    if values is None:
        return set(range(top))
    if isinstance(values, int):
        return set(range(0, top, values))
    return {v for v in values if v < top}  # type: ignore[union-attr]


@settings(max_examples=150, deadline=None)
@given(minute=field_values, hour=field_values, start=st.integers(0, 400 * 86400))
def test_property_next_time_is_the_first_matching_minute_after_the_start(minute, hour, start) -> None:
    """Against a brute-force scan, minute by minute, for schedules that fire at least daily."""
    minutes, hours = _expand(minute, 60), _expand(hour, 24)
    if not minutes or not hours:
        return
    expression = f"{minute[0]} {hour[0]} * * *"
    check_schedule(expression)
    after = at(2026, 1, 1) + start + 17.5
    t = dt.datetime.fromtimestamp(after, dt.UTC).replace(second=0, microsecond=0) + dt.timedelta(minutes=1)
    while not _matches(minutes, hours, t):
        t += dt.timedelta(minutes=1)
    assert next_time(expression, after) == t.timestamp()


def test_a_one_value_range_is_that_value() -> None:
    assert next_time("5-5 * * * *", at(2026, 1, 1, 0, 0, 17)) == at(2026, 1, 1, 0, 5)


def test_the_crd_pattern_is_the_one_the_model_uses() -> None:
    schema = api.ModelPipelineSpec.model_json_schema(by_alias=True)
    assert schema["properties"]["schedule"]["anyOf"][0]["pattern"] == CRON_PATTERN
