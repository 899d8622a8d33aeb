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
import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace

from mlvisor.api import FailureAction, FailurePolicyRule, RestartType, Strategy
from mlvisor.api.exits import EXIT_SIGTERM, TerminationKind, TerminationMessage, written_by_process

__all__ = [
    "KUBELET_BACKOFF",
    "SEEN_FAILURES_KEPT",
    "CrashLoopBackOff",
    "Decision",
    "Failure",
    "MessageSource",
    "Policy",
    "SupervisorState",
    "Verdict",
    "admit_restart",
    "backoff_delay",
    "children_to_restart",
    "classify_failure",
    "crash_loop_delay",
    "describe_failure",
    "failure_key",
    "failure_words",
    "last_words",
    "message_source",
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
    new_history = (*tuple(reversed(kept_newest_first)), now)
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
class CrashLoopBackOff:
    """How long a kubelet waits before it restarts a container in place (CrashLoopBackOff).

    The kubelet's own curve (pod-lifecycle docs; ``flowcontrol.Backoff`` in kuberuntime): the
    first restart is immediate, then 10 s, doubling to 300 s; a container that ran for
    10 minutes starts the curve over. ``fixed(s)`` is the same wait before every restart.
    """

    initial_seconds: float = 10.0
    max_seconds: float = 300.0
    reset_after_seconds: float = 600.0
    first_restart_immediate: bool = True

    @classmethod
    def fixed(cls, seconds: float) -> CrashLoopBackOff:
        """Every restart waits ``seconds``, the first one too (``mlvisor run --restart-delay``)."""
        if seconds < 0:
            raise ValueError(f"a restart delay must be >= 0 seconds, got {seconds}")
        return cls(initial_seconds=seconds, max_seconds=seconds, first_restart_immediate=False)


#: A kubelet's defaults: immediate, 10 s, 20 s, ... 300 s; reset after 10 minutes of running.
KUBELET_BACKOFF = CrashLoopBackOff()


def crash_loop_delay(backoff: CrashLoopBackOff, crashes: int, ran_seconds: float) -> tuple[float, int]:
    """The wait before restarting a container that just ended after running ``ran_seconds``.

    ``crashes`` is how many ends in a row came before this one (0 for the container's first
    run); a run of at least ``reset_after_seconds`` starts the count over. Returns (wait in
    seconds, the new count, to pass in at the next end).
    """
    if crashes < 0:
        raise ValueError(f"crashes must be >= 0, got {crashes}")
    crashes = 1 if ran_seconds >= backoff.reset_after_seconds else crashes + 1
    if backoff.first_restart_immediate:
        if crashes == 1:
            return 0.0, crashes
        return backoff_delay(crashes - 1, backoff.initial_seconds, 2, backoff.max_seconds), crashes
    return backoff_delay(crashes, backoff.initial_seconds, 2, backoff.max_seconds), crashes


class MessageSource(enum.StrEnum):
    """Where the message about a child's end came from; a user reads each differently."""

    PROCESS = "Process"
    """The process wrote it: its termination message, its reason in its own words."""
    LOGS = "Logs"
    """The process left no termination message and the kubelet (or the local runtime) fell back
    to the last lines of its log (terminationMessagePolicy FallbackToLogsOnError): what it was
    doing when it ended, not why it ended."""
    POD = "Pod"
    """The pod's status.message: the cluster ended the pod and said why (an eviction)."""


def message_source(message: str | None, exit_code: int | None) -> MessageSource | None:
    """PROCESS or LOGS for a container's termination message (see mlvisor.api.exits); None for none."""
    if not message or not message.strip():
        return None
    return MessageSource.PROCESS if written_by_process(message, exit_code) else MessageSource.LOGS


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
    """The container's termination message (its own words, or the log tail the kubelet fell back
    to), or the pod's status.message; see ``source``."""
    message_source: MessageSource | None = None
    """Where ``message`` came from; None: judged from the message itself (:func:`message_source`)."""

    @property
    def source(self) -> MessageSource | None:
        return self.message_source or message_source(self.message, self.exit_code)


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
        elif rule.on_pod_conditions is not None and failure.pod_conditions & set(rule.on_pod_conditions):
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
    memory_limit: str | None = None
    """The children's memory limit (e.g. 2Gi), for the words of an OOM kill."""
    startup_timeout_seconds: float | None = None
    """Servers: spec.startupTimeoutSeconds, for the words of a startupProbe kill."""


def _remember(state: SupervisorState, key: str) -> tuple[str, ...]:
    return ((*state.seen_failures, key))[-SEEN_FAILURES_KEPT:]


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
    what = "exited successfully" if exit_.succeeded else _describe(exit_, policy)

    if action is FailureAction.FAIL:
        return (
            Decision(
                Verdict.ESCALATE,
                "FailurePolicy",
                f"{who} {what}; the failurePolicy says Fail, so it is not restarted" + _said(exit_, policy),
                action=action,
            ),
            replace(state, seen_failures=seen),
        )
    if not should_restart(policy.restart, succeeded=exit_.succeeded):
        return (
            Decision(
                Verdict.ESCALATE,
                "TemporaryChildFailed",
                f"{who} {what}; restart type Temporary never restarts a child" + _said(exit_, policy),
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
                f"{who} {what}; the failurePolicy says Ignore: restarting without counting it" + _said(exit_, policy),
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
                f"{who} {what}; restart intensity exceeded: {window}" + _said(exit_, policy),
                action=action,
            ),
            replace(state, restart_times=history, seen_failures=seen),
        )
    delay = backoff_delay(len(history), policy.backoff_initial, policy.backoff_factor, policy.backoff_max)
    return (
        Decision(
            Verdict.RESTART,
            "Restarting",
            f"{who} {what}; restarting {_group_words(group, policy)} in {delay:g}s ({window})" + _said(exit_, policy),
            restart=group,
            delay=delay,
            counted=True,
            action=action,
        ),
        SupervisorState(restart_times=history, total_restarts=state.total_restarts + 1, seen_failures=seen),
    )


#: Longest part of a termination message quoted in a condition or Event message.
QUOTED_MESSAGE_CHARS = 600

#: Signals a container commonly dies of (Linux numbers, as in the container), and what they mean.
_SIGNALS = {
    1: ("SIGHUP", "its terminal or parent went away"),
    2: ("SIGINT", "interrupted"),
    6: ("SIGABRT", "aborted, usually by a failed check in native code"),
    9: ("SIGKILL", "out of memory or killed from outside"),
    11: ("SIGSEGV", "a crash in native code (segmentation fault)"),
    15: ("SIGTERM", "told to stop from outside"),
}
#: Container reasons that add nothing to an exit code.
_PLAIN_REASONS = frozenset({"Error", "Completed"})
#: Pod-level reasons: the cluster ended the pod (its status.message says why).
_CLUSTER_ENDS = {
    "Evicted": "was evicted",
    "Preempted": "was preempted",
    "NodeLost": "was lost with its node",
    "NodeShutdown": "was stopped by a node shutdown",
    "Terminated": "was terminated by the cluster",
    "DeadlineExceeded": "ran past its deadline",
}
#: Container reasons of a process that never ran: the message is the container runtime's error.
_NOT_STARTED = frozenset({"StartError", "ContainerCannotRun"})
#: Pod conditions worth naming in a failure's words (the others, Initialized, PodScheduled,
#: ContainersReady, ..., describe every pod and explain nothing).
_TELLING_CONDITIONS = frozenset({"DisruptionTarget"})


def describe_failure(
    f: Failure,
    *,
    memory_limit: str | None = None,
    startup_timeout_seconds: float | None = None,
    telling_conditions: Iterable[str] = _TELLING_CONDITIONS,
) -> str:
    """What ended a child, in words: 'was killed by signal 9 (SIGKILL, exit 137): out of memory or
    killed from outside', 'exited with code 2', 'was OOM-killed (...)'.

    ``memory_limit`` words an OOM kill; ``startup_timeout_seconds`` (servers) recognises a server
    that was stopped before it was ready and says what it was doing. Only the pod conditions in
    ``telling_conditions`` are named. What the process said is :func:`last_words`' part.
    """
    detail = ""
    said = TerminationMessage.parse(f.message) if f.source is MessageSource.PROCESS else None
    code, reason = f.exit_code, f.reason
    if said is not None and said.kind is TerminationKind.NOT_READY and startup_timeout_seconds is not None:
        head = f"was not ready within spec.startupTimeoutSeconds ({startup_timeout_seconds:g} s) and was restarted"
        detail = f"it was {said.reason}"
    elif reason == "OOMKilled":
        head = f"was OOM-killed (reason OOMKilled{_exit_words(code)})"
        detail = (
            f"it needed more memory than its limit of {memory_limit}; raise spec.resources.limits.memory"
            if memory_limit
            else "it needed more memory than its limit; raise spec.resources.limits.memory"
        )
    elif reason in _NOT_STARTED:
        head = f"could not be started (reason {reason}{_exit_words(code)})"
        detail = quote_message(f.message, MessageSource.POD) if f.message else ""
    elif reason in _CLUSTER_ENDS:
        head = f"{_CLUSTER_ENDS[reason]} (reason {reason}{_exit_words(code)})"
        if f.source is MessageSource.POD:
            detail = quote_message(f.message, MessageSource.POD)
    elif code is not None and 128 < code < 160:
        number = code - 128
        name, words = _SIGNALS.get(number, ("", ""))
        verb = "was stopped" if code == EXIT_SIGTERM else "was killed"
        head = f"{verb} by signal {number} ({name + ', ' if name else ''}exit {code}"
        head += f", reason {reason})" if reason and reason not in _PLAIN_REASONS else ")"
        if code == EXIT_SIGTERM and startup_timeout_seconds is not None:
            words = (
                f"not ready within spec.startupTimeoutSeconds ({startup_timeout_seconds:g} s), "
                "a failed livenessProbe, or told to stop from outside"
            )
        detail = words
    elif code is not None:
        head = f"exited with code {code}"
        if reason and reason not in _PLAIN_REASONS:
            head += f", reason {reason}"
    elif reason:
        head = f"failed (reason {reason})"
    else:
        head = "failed"
    telling = sorted(set(telling_conditions) & f.pod_conditions)
    if telling:
        head += f" (pod condition{'s' if len(telling) > 1 else ''} {', '.join(telling)})"
    return f"{head}: {detail}" if detail else head


def _exit_words(code: int | None) -> str:
    return f", exit {code}" if code is not None else ""


def last_words(f: Failure, *, startup_timeout_seconds: float | None = None) -> str:
    """What the child left about its end, as a sentence to end a message with ('' when there is
    nothing more to say): 'It said: "invalid spec: ..."' for its own termination message, 'It
    left no termination message; its last log line: "..."' when the kubelet fell back to its log.
    """
    source = f.source
    if f.reason in _NOT_STARTED:
        return ""  # describe_failure quoted the runtime's error
    if source is MessageSource.PROCESS:
        said = TerminationMessage.parse(f.message)
        if said is not None and said.kind is TerminationKind.NOT_READY and startup_timeout_seconds is not None:
            return ""  # describe_failure said it
        return f'It said: "{quote_message(f.message, source)}"'
    if source is MessageSource.LOGS:
        return f'It left no termination message; its last log line: "{quote_message(f.message, source)}"'
    if source is None and f.exit_code not in (None, 0) and f.reason not in _CLUSTER_ENDS:
        return "It left no termination message"
    return ""


def failure_words(f: Failure, *, memory_limit: str | None = None, startup_timeout_seconds: float | None = None) -> str:
    """The whole story of one failure, for status.supervision.lastFailure.message: the process's
    own words when it left some (its termination message, whole), else what ended it and its
    last log line: 'killed by signal 9 (SIGKILL, exit 137): out of memory or killed from
    outside; it left no termination message; its last log line: "..."'."""
    if f.source is MessageSource.PROCESS and f.message:
        return f.message.strip()
    what = describe_failure(f, memory_limit=memory_limit, startup_timeout_seconds=startup_timeout_seconds)
    what = what.removeprefix("was ")  # it stands alone, next to lastFailure.pod
    after = last_words(f, startup_timeout_seconds=startup_timeout_seconds)
    return f"{what}; {after[0].lower()}{after[1:]}" if after else what


def quote_message(message: str | None, source: MessageSource | None = MessageSource.PROCESS) -> str:
    """The part of a message worth quoting, shortened to QUOTED_MESSAGE_CHARS.

    A process's own message (or a pod's) is quoted whole, its lines joined. Of a log tail only
    the last non-empty line is quoted (a traceback's final line, the last thing it logged); a
    JSON log line (the trainer logs JSON) is quoted by its ``msg``.
    """
    if not message:
        return ""
    lines = [line.strip() for line in message.strip().splitlines() if line.strip()]
    if source is MessageSource.LOGS:
        text = lines[-1] if lines else ""
        if text.startswith("{"):
            try:
                entry = json.loads(text)
            except ValueError:
                entry = None
            if isinstance(entry, dict) and isinstance(entry.get("msg"), str) and entry["msg"].strip():
                text = entry["msg"].strip()
    else:
        text = " ".join(lines)
    return text if len(text) <= QUOTED_MESSAGE_CHARS else text[: QUOTED_MESSAGE_CHARS - 3] + "..."


def _describe(f: Failure, policy: Policy) -> str:
    if policy.child_names:  # the child is a resource (a pipeline's TrainingJob): its reason, its last pod's code
        code = f", its last pod exited with code {f.exit_code}" if f.exit_code is not None else ""
        return f"failed (reason {f.reason or 'unknown'}{code})"
    telling = _TELLING_CONDITIONS | {c for rule in policy.failure_policy for c in rule.on_pod_conditions or ()}
    return describe_failure(
        f,
        memory_limit=policy.memory_limit,
        startup_timeout_seconds=policy.startup_timeout_seconds,
        telling_conditions=telling,
    )


def _said(f: Failure, policy: Policy) -> str:
    if policy.child_names:
        return ""  # a child resource's words are its own conditions', which its supervisor quotes
    words = last_words(f, startup_timeout_seconds=policy.startup_timeout_seconds)
    return f". {words}" if words else ""


def _group_words(group: tuple[int, ...], policy: Policy) -> str:
    if policy.child_names:
        names = [policy.child_names[c] for c in group]
        return names[0] if len(names) == 1 else f"{' and '.join(names)} ({policy.strategy.value})"
    if len(policy.children) == 1:
        return "it"
    if len(group) == 1:
        return f"{policy.child_noun} {group[0]}"
    return f"{policy.child_noun}s {', '.join(map(str, group))} ({policy.strategy.value})"
