"""Cron schedules of ModelPipelines, pure: when is the next run after a given time.

A ``schedule`` is what a Kubernetes CronJob takes: five fields (minute, hour, day of month,
month, day of week, with lists, ranges, steps and names) or one of the macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight, @hourly, evaluated in UTC. The arithmetic
is cronsim's (pinned in pyproject; no dependencies, Debian-cron semantics including the rule
that a restricted day of month and a restricted day of week match when either does). The
macros are expanded here to their five fields, as robfig/cron (the CronJob controller's
parser) does. What is not CronJob syntax (a sixth seconds field, a year field, Jenkins' ``H``)
is refused, so a schedule means the same in a CronJob and in mlvisor.

Why cronsim and not croniter: croniter 7.0.0 reads a one-value range such as ``5-5`` as
"every minute" (tests/unit/test_cron.py's brute-force property found it); cronsim answers
00:05 as cron does, and refuses what cron refuses (``7-3``, ``*/0``, 31 February).

There is no clock: ``after`` is always an argument (epoch seconds), so tests run schedules
on virtual time.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["CRON_PATTERN", "MACROS", "CronError", "check_schedule", "next_time"]

#: The macros and the five fields each stands for (robfig/cron's table).
MACROS = {
    "@yearly": "0 0 1 1 *",
    "@annually": "0 0 1 1 *",
    "@monthly": "0 0 1 * *",
    "@weekly": "0 0 * * 0",
    "@daily": "0 0 * * *",
    "@midnight": "0 0 * * *",
    "@hourly": "0 * * * *",
}

#: What the CRD schema checks (the API server has no cron parser): a macro, or five fields.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ \t]+([ \t]+[^ \t]+){4})$"

_PATTERN = re.compile(CRON_PATTERN)


class CronError(ValueError):
    """The schedule is not a cron expression; the message says what is wrong."""


def _fields(expression: str) -> str:
    text = expression.strip()
    if not _PATTERN.match(text):
        raise CronError(
            f"schedule {expression!r} is not a cron expression: expected five fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or one of " + ", ".join(MACROS)
        )
    if text in MACROS:
        return MACROS[text]
    fields = text.split()
    # robfig/cron (CronJob) takes "?" for "no specific value" in the two day fields.
    for day in (2, 4):
        if fields[day] == "?":
            fields[day] = "*"
    return " ".join(fields)


def _iterator(expression: str, start: dt.datetime):  # type: ignore[no-untyped-def]
    from cronsim import CronSim, CronSimError

    try:
        return CronSim(_fields(expression), start)
    except CronSimError as e:
        raise CronError(f"schedule {expression!r} is not a valid cron expression: {e}") from None


def check_schedule(expression: str) -> None:
    """Raise CronError naming the problem when ``expression`` is not a CronJob-style schedule."""
    _iterator(expression, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))


def next_time(expression: str, after: float) -> float:
    """The first time (epoch seconds, UTC) strictly after ``after`` that ``expression`` names."""
    start = dt.datetime.fromtimestamp(after, dt.UTC)
    try:
        following = next(_iterator(expression, start))
    except StopIteration:  # pragma: no cover - cronsim refuses expressions that never fire
        raise CronError(f"schedule {expression!r} names no time after {start.isoformat()}") from None
    return float(following.timestamp())
