"""OTP supervision policy, pure: restart intensity, restart types, strategies, back-off, failure classes.

Everything here is a function of its arguments. There is no clock (``now`` is always an
argument, in seconds since the epoch), no I/O and no framework, so the same policy drives
the Kubernetes controllers and the local runtime, and tests run on virtual time.

The restart arithmetic is OTP's ``supervisor:add_restart/1`` exactly: the earlier restart
times are kept while ``t >= now - period`` (the boundary counts), ``now`` is added, and the
restart is refused when the kept list is longer than the intensity (``maxRestarts``). The
window is supervisor-wide, and a group restart (OneForAll, RestForOne) counts once.

What Kubernetes needs beyond OTP (back-off, failure classification, de-duplication of
replayed failures) is added on top and named as such.
"""

from __future__ import annotations

import enum
import itertools
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from mlvisor.operator.api import FailureAction, FailurePolicyRule, RestartType, Strategy

__all__ = [
    "SEEN_FAILURES_KEPT",
    "Decision",
    "Failure",
    "Policy",
    "SupervisorState",
    "Verdict",
    "admit_restart",
    "backoff_delay",
    "children_to_restart",
    "classify_failure",
    "describe_failure",
    "failure_key",
    "quote_message",
    "restarts_in_window",
    "should_restart",
    "supervise_exit",
]


def admit_restart(
    history: Sequence[float], now: float, max_restarts: int, period_seconds: float
) -> tuple[bool, tuple[float, ...]]:
    """OTP's restart-intensity check. Returns (allowed, new_history).

    ``history`` holds the earlier restart times, oldest first. ``new_history`` is the
    kept times (those with ``t >= now - period_seconds``) plus ``now``; the restart is
    allowed when ``len(new_history) <= max_restarts``. Like OTP, the refused restart is
    part of ``new_history`` (the supervisor escalates with it), so the history never
    holds more than ``max_restarts + 1`` times.
    """
    if max_restarts < 0:
        raise ValueError(f"max_restarts must be >= 0, got {max_restarts}")
    if period_seconds <= 0:
        raise ValueError(f"period_seconds must be > 0, got {period_seconds}")
    threshold = now - period_seconds
    # OTP walks the list newest first and stops at the first time older than the window.
    kept_newest_first = list(itertools.takewhile(lambda t: t >= threshold, reversed(history)))
    new_history = tuple(reversed(kept_newest_first)) + (now,)
    return len(new_history) <= max_restarts, new_history


def restarts_in_window(history: Sequence[float], now: float, period_seconds: float) -> int:
    """How many of ``history`` still count at ``now`` (same inclusive boundary as admit_restart)."""
    threshold = now - period_seconds
    return sum(1 for _ in itertools.takewhile(lambda t: t >= threshold, reversed(history)))


def should_restart(restart_type: RestartType, succeeded: bool) -> bool:
    """OTP restart types: Permanent always, Transient only after a failure, Temporary never."""
    if restart_type is RestartType.PERMANENT:
        return True
    if restart_type is RestartType.TRANSIENT:
        return not succeeded
    return False


def children_to_restart(strategy: Strategy, failed: int, children: Sequence[int]) -> tuple[int, ...]:
    """Which children (by index, in start order) are stopped and restarted when ``failed`` dies.

    OneForOne: the failed child only. OneForAll: every child. RestForOne: the failed child
    and every child started after it. Children that already succeeded are included under
    OneForAll and RestForOne, as OTP restarts every child of the group.
    """
    if failed not in children:
        raise ValueError(f"child {failed} is not one of {list(children)}")
    if strategy is Strategy.ONE_FOR_ONE:
        return (failed,)
    ordered = sorted(children)
    if strategy is Strategy.ONE_FOR_ALL:
        return tuple(ordered)
    return tuple(c for c in ordered if c >= failed)


def backoff_delay(n: int, initial_seconds: float, factor: float, max_seconds: float) -> float:
    """Delay before restart ``n`` (1-based, n = restarts in the window): min(initial * factor^(n-1), max)."""
    if n < 1:
        raise ValueError(f"restart number must be >= 1, got {n}")
    try:
        delay = initial_seconds * math.pow(factor, n - 1)
    except OverflowError:
        return float(max_seconds)
    return float(min(delay, max_seconds))


@dataclass(frozen=True)
class Failure:
    """One observed termination of a child, as the shell saw it."""

    child: int
    """Index of the child (worker index; replica slot for servers)."""
    pod: str
    """The pod (or local process) that terminated; for a supervisor of supervisors, the child resource (TrainingJob iris-3)."""
    restart_count: int = 0
    """The container's restartCount when it terminated (0 for pods that are never restarted in place)."""
    exit_code: int | None = None
    """Container exit code, when it terminated with one."""
    reason: str | None = None
    """Termination reason of the container or the pod (Error, OOMKilled, Evicted, ...)."""
    pod_conditions: frozenset[str] = frozenset()
    """Types of the pod conditions whose status is True (e.g. DisruptionTarget)."""
    succeeded: bool = False
    """The child exited with success (exit code 0)."""
    identity: str | None = None
    """What identifies this exit when pod#restart_count does not: a child resource's uid and the time of its Failed condition."""
    message: str | None = None
    """What the child said about its end (the container's termination message), if anything."""


def failure_key(pod: str, restart_count: int) -> str:
    """The identity of one failure: a pod fails at most once per container restartCount."""
    return f"{pod}#{restart_count}"


def classify_failure(failure: Failure, policy: Iterable[FailurePolicyRule]) -> FailureAction:
    """The action of the first matching failurePolicy rule; Count when none matches."""
    for rule in policy:
        if rule.on_exit_codes is not None:
            if failure.exit_code is not None and failure.exit_code in rule.on_exit_codes:
                return rule.action
        elif rule.on_reasons is not None:
            if failure.reason is not None and failure.reason in rule.on_reasons:
                return rule.action
        elif rule.on_pod_conditions is not None:
            if failure.pod_conditions & set(rule.on_pod_conditions):
                return rule.action
    return FailureAction.COUNT


class Verdict(enum.StrEnum):
    """What the supervisor does about one child exit."""

    DUPLICATE = "Duplicate"
    """Already handled (a replayed event): change nothing."""
    DONE = "Done"
    """The child finished and is not restarted."""
    RESTART = "Restart"
    """Restart ``Decision.restart`` after ``Decision.delay`` seconds."""
    ESCALATE = "Escalate"
    """Stop every child and fail (TrainingJob) or roll back (ModelServer)."""


@dataclass(frozen=True)
class SupervisorState:
    """The supervisor's memory; the shells persist it in status.supervision."""

    restart_times: tuple[float, ...] = ()
    """Counted restarts in the current window, oldest first (at most max_restarts + 1)."""
    total_restarts: int = 0
    """Every restart ever made, ignored failures included."""
    seen_failures: tuple[str, ...] = ()
    """failure_key() of handled failures, newest last (bounded)."""


#: How many failure identities are remembered. A replay can only concern pods the shell
#: still observes, and a supervisor never has more than this many failed pods at once.
SEEN_FAILURES_KEPT = 64


@dataclass(frozen=True)
class Decision:
    """The outcome of supervise_exit: what to do and why, in words a user can read."""

    verdict: Verdict
    reason: str
    """CamelCase reason for conditions and Events."""
    message: str
    restart: tuple[int, ...] = ()
    """Children to stop and restart (RESTART only), in start order."""
    delay: float = 0.0
    """Seconds to wait before the restart (RESTART only)."""
    counted: bool = False
    """Whether this restart counted against the intensity."""
    action: FailureAction | None = None
    """How the failure policy classified the exit (failures only)."""


@dataclass(frozen=True)
class Policy:
    """The supervision settings of one resource, framework-free."""

    restart: RestartType
    max_restarts: int
    period_seconds: float
    strategy: Strategy = Strategy.ONE_FOR_ONE
    failure_policy: tuple[FailurePolicyRule, ...] = ()
    backoff_initial: float = 0.0
    backoff_factor: float = 1.0
    backoff_max: float = 0.0
    children: tuple[int, ...] = field(default=(0,))
    """Indices of every child of the supervisor, in start order."""
    child_noun: str = "worker"
    """What a child is called in messages (worker, replica)."""
    child_names: tuple[str, ...] = ()
    """Names of the children by index, for supervisors whose children are not numbered (a pipeline: training, serving)."""


def _remember(state: SupervisorState, key: str) -> tuple[str, ...]:
    return (state.seen_failures + (key,))[-SEEN_FAILURES_KEPT:]


def supervise_exit(
    state: SupervisorState, exit_: Failure, policy: Policy, now: float
) -> tuple[Decision, SupervisorState]:
    """Decide what to do about one child exit, OTP style. Pure: returns the new state.

    Order: a replayed exit changes nothing; a success is Done unless the restart type is
    Permanent; a failure is classified (Fail escalates at once, Ignore restarts uncounted);
    a Temporary child is never restarted (the resource fails); otherwise the restart is
    admitted by the intensity window or refused (escalation), and delayed by back-off.
    """
    key = exit_.identity or failure_key(exit_.pod, exit_.restart_count)
    if key in state.seen_failures:
        return Decision(Verdict.DUPLICATE, "AlreadyHandled", f"{exit_.pod} was already handled"), state
    seen = _remember(state, key)
    if policy.child_names:
        who = f"{policy.child_names[exit_.child]} ({exit_.pod})"
    elif len(policy.children) > 1:
        who = f"{policy.child_noun} {exit_.child} (pod {exit_.pod})"
    else:
        who = f"{policy.child_noun} pod {exit_.pod}"

    if exit_.succeeded and not should_restart(policy.restart, succeeded=True):
        return Decision(Verdict.DONE, "Completed", f"{who} completed"), replace(state, seen_failures=seen)

    action = None if exit_.succeeded else classify_failure(exit_, policy.failure_policy)
    what = "exited successfully" if exit_.succeeded else describe_failure(exit_)

    if action is FailureAction.FAIL:
        return (
            Decision(
                Verdict.ESCALATE,
                "FailurePolicy",
                f"{who} {what}; the failurePolicy says Fail, so it is not restarted" + _said(exit_),
                action=action,
            ),
            replace(state, seen_failures=seen),
        )
    if not should_restart(policy.restart, succeeded=exit_.succeeded):
        return (
            Decision(
                Verdict.ESCALATE,
                "TemporaryChildFailed",
                f"{who} {what}; restart type Temporary never restarts a child" + _said(exit_),
                action=action,
            ),
            replace(state, seen_failures=seen),
        )

    group = children_to_restart(policy.strategy, exit_.child, policy.children)
    if action is FailureAction.IGNORE:
        return (
            Decision(
                Verdict.RESTART,
                "RestartingIgnored",
                f"{who} {what}; the failurePolicy says Ignore: restarting without counting it" + _said(exit_),
                restart=group,
                delay=0.0,
                counted=False,
                action=action,
            ),
            replace(state, seen_failures=seen, total_restarts=state.total_restarts + 1),
        )

    allowed, history = admit_restart(state.restart_times, now, policy.max_restarts, policy.period_seconds)
    window = f"{len(history)} restarts within {policy.period_seconds:g}s, maxRestarts is {policy.max_restarts}"
    if not allowed:
        return (
            Decision(
                Verdict.ESCALATE,
                "RestartIntensityExceeded",
                f"{who} {what}; restart intensity exceeded: {window}" + _said(exit_),
                action=action,
            ),
            replace(state, restart_times=history, seen_failures=seen),
        )
    delay = backoff_delay(len(history), policy.backoff_initial, policy.backoff_factor, policy.backoff_max)
    return (
        Decision(
            Verdict.RESTART,
            "Restarting",
            f"{who} {what}; restarting {_group_words(group, policy)} in {delay:g}s ({window})" + _said(exit_),
            restart=group,
            delay=delay,
            counted=True,
            action=action,
        ),
        SupervisorState(
            restart_times=history, total_restarts=state.total_restarts + 1, seen_failures=seen
        ),
    )


#: Longest part of a termination message quoted in a condition or Event message.
QUOTED_MESSAGE_CHARS = 600


def describe_failure(f: Failure) -> str:
    """How a failure reads in messages: 'exited with code 137, reason OOMKilled'."""
    parts = []
    if f.exit_code is not None:
        parts.append(f"exited with code {f.exit_code}")
    if f.reason:
        parts.append(f"reason {f.reason}")
    if f.pod_conditions:
        parts.append("conditions " + ",".join(sorted(f.pod_conditions)))
    return ", ".join(parts) if parts else "failed"


def quote_message(message: str | None) -> str:
    """The part of a termination message worth quoting: its last non-empty line, shortened.

    A process that writes its reason writes one line; a message the kubelet took from the log
    tail ends with what went wrong last (a traceback's final line).
    """
    if not message:
        return ""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    last = lines[-1] if lines else ""
    return last if len(last) <= QUOTED_MESSAGE_CHARS else last[: QUOTED_MESSAGE_CHARS - 3] + "..."


def _said(f: Failure) -> str:
    quoted = quote_message(f.message)
    return f'. It said: "{quoted}"' if quoted else ""


def _group_words(group: tuple[int, ...], policy: Policy) -> str:
    if policy.child_names:
        names = [policy.child_names[c] for c in group]
        return names[0] if len(names) == 1 else f"{' and '.join(names)} ({policy.strategy.value})"
    if len(policy.children) == 1:
        return "it"
    if len(group) == 1:
        return f"{policy.child_noun} {group[0]}"
    return f"{policy.child_noun}s {', '.join(map(str, group))} ({policy.strategy.value})"
