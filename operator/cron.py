"""Cron schedules of ModelPipelines, pure: when is the next run after a given time.

A ``schedule`` is what a Kubernetes CronJob takes: five fields (minute, hour, day of month,
month, day of week, with lists, ranges, steps and names) or one of the macros @yearly,
@annually, @monthly, @weekly, @daily, @midnight, @hourly, evaluated in UTC. The arithmetic
is croniter's (pinned in pyproject): it is the library made for exactly this, including the
Vixie-cron rule that a restricted day of month and a restricted day of week match when
either does. What is not CronJob syntax (a sixth seconds field, a seventh year field,
Jenkins' ``H``) is refused here, so a schedule means the same in a CronJob and in mlvisor.

There is no clock: ``after`` is always an argument (epoch seconds), so tests run schedules
on virtual time.
"""

from __future__ import annotations

import datetime as dt
import re

__all__ = ["CRON_PATTERN", "MACROS", "CronError", "check_schedule", "next_time"]

MACROS = ("@yearly", "@annually", "@monthly", "@weekly", "@daily", "@midnight", "@hourly")

#: What the CRD schema checks (the API server has no croniter): a macro, or five fields.
CRON_PATTERN = r"^(@(yearly|annually|monthly|weekly|daily|midnight|hourly)|[^ \t]+([ \t]+[^ \t]+){4})$"

_PATTERN = re.compile(CRON_PATTERN)


class CronError(ValueError):
    """The schedule is not a cron expression; the message says what is wrong."""


def check_schedule(expression: str) -> None:
    """Raise CronError naming the problem when ``expression`` is not a CronJob-style schedule."""
    from croniter import croniter
    from croniter.croniter import CroniterBadDateError, CroniterError

    if not _PATTERN.match(expression.strip()):
        raise CronError(
            f"schedule {expression!r} is not a cron expression: expected five fields "
            "(minute hour day-of-month month day-of-week, e.g. '0 3 * * *') or one of " + ", ".join(MACROS)
        )
    try:
        croniter(expression.strip(), dt.datetime(2000, 1, 1, tzinfo=dt.UTC)).get_next(dt.datetime)
    except (CroniterError, ValueError, KeyError) as e:
        if isinstance(e, CroniterBadDateError):
            raise CronError(f"schedule {expression!r} names no time that exists (e.g. 31 February)") from None
        raise CronError(f"schedule {expression!r} is not a valid cron expression: {e}") from None


def next_time(expression: str, after: float) -> float:
    """The first time (epoch seconds, UTC) strictly after ``after`` that ``expression`` names."""
    from croniter import croniter

    check_schedule(expression)
    start = dt.datetime.fromtimestamp(after, dt.UTC)
    following = croniter(expression.strip(), start).get_next(dt.datetime)
    return float(following.timestamp())
