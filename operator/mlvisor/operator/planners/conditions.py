"""metav1.Condition bookkeeping and time conversion shared by the planners.

Conditions are kept by type; ``lastTransitionTime`` moves only when a condition's status
flips, so a replayed reconcile never rewrites history. Statuses hold UTC datetimes while
the planners take ``now`` as float epoch seconds; both are quantised to microseconds here
so that a restart time written to status and read back compares exactly as before (the
intensity window's boundary is inclusive, so a lost microsecond could change an answer).

Also home of ``invalid_spec_status``: what both shells write when a resource body does not
even parse (a pydantic ValidationError), so an invalid spec ends in a condition, never in a
crash loop of the operator.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from typing import Any, Literal

from mlvisor import api
from mlvisor.operator.plan import ObservedPod
from mlvisor.operator.supervision import Failure, SupervisorState, failure_words

__all__ = [
    "find_condition",
    "from_timestamp",
    "invalid_spec_status",
    "quantize",
    "set_condition",
    "to_timestamp",
    "waiting_due",
]

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.UTC)
_MICROSECOND = dt.timedelta(microseconds=1)

ConditionStatus = Literal["True", "False", "Unknown"]

#: Pods' waiting reasons (ObservedPod.waiting) go into a condition once one of them has waited
#: this long. A scheduler that has not placed a pod yet, or an image still being pulled, is most
#: often resolved within seconds; said at once, each such moment cost a status write per pod
#: (with no node, three writes per two-worker job instead of two: bench/README.md, "Fewer status
#: writes").
WAITING_REPORTED_AFTER_SECONDS = 10.0

#: status.supervision.lastFailure.message keeps at most what a kubelet keeps of a termination message.
MAX_FAILURE_MESSAGE = 4096


def from_timestamp(t: float) -> dt.datetime:
    """Epoch seconds -> aware UTC datetime, rounded to the microsecond."""
    return _EPOCH + dt.timedelta(microseconds=round(t * 1_000_000))


def to_timestamp(d: dt.datetime) -> float:
    """Aware (or naive = UTC) datetime -> epoch seconds, exact to the microsecond."""
    if d.tzinfo is None:
        d = d.replace(tzinfo=dt.UTC)
    return ((d - _EPOCH) // _MICROSECOND) / 1_000_000


def supervisor_state(sup: api.SupervisionStatus | api.PipelineSupervisionStatus) -> SupervisorState:
    """The pure core's memory as a resource's status.supervision keeps it across operator restarts."""
    return SupervisorState(
        restart_times=tuple(to_timestamp(t) for t in sup.restart_times),
        total_restarts=sup.total_restarts,
        seen_failures=tuple(sup.seen_failures),
    )


def store_supervisor_state(sup: api.SupervisionStatus | api.PipelineSupervisionStatus, state: SupervisorState,
                           seen_failures: Sequence[str] | None = None) -> None:
    """Write ``state`` back into status.supervision (``seen_failures`` when the caller compacts them)."""
    sup.restart_times = [from_timestamp(t) for t in state.restart_times]
    sup.total_restarts = state.total_restarts
    sup.seen_failures = list(state.seen_failures if seen_failures is None else seen_failures)


def quantize(t: float) -> float:
    """``t`` as it reads back after a trip through status (microsecond precision)."""
    return to_timestamp(from_timestamp(t))


def waiting_due(pods: Iterable[ObservedPod], now: float) -> tuple[bool, float | None]:
    """(say the waiting reasons of ``pods`` now, else seconds until they are to be said).

    They are said together once any of them has waited WAITING_REPORTED_AFTER_SECONDS, or when
    one's start of waiting is not known: a job's workers wait for the same reason at nearly the
    same moment, and one status write says it for all of them. The wait is at most
    WAITING_REPORTED_AFTER_SECONDS, whatever the clocks of the scheduler and kubelet say.
    """
    waits = [p.waiting_since for p in pods if p.waiting]
    known = [since for since in waits if since is not None]
    if not waits:
        return False, None
    if len(known) < len(waits):
        return True, None
    waited = now - min(known)
    if waited >= WAITING_REPORTED_AFTER_SECONDS:
        return True, None
    return False, WAITING_REPORTED_AFTER_SECONDS - max(waited, 0.0)


def find_condition(conditions: Sequence[api.Condition], type_: str) -> api.Condition | None:
    for c in conditions:
        if c.type == type_:
            return c
    return None


def set_condition(
    conditions: Sequence[api.Condition],
    type_: str,
    status: ConditionStatus,
    reason: str,
    message: str,
    now: float,
    generation: int | None,
) -> list[api.Condition]:
    """A new condition list with ``type_`` set; other conditions keep their order and values.

    ``lastTransitionTime`` is ``now`` for a new condition or a status flip, and unchanged
    otherwise (reason, message and observedGeneration are always updated).
    """
    previous = next((c for c in conditions if c.type == type_), None)
    unchanged = previous is not None and previous.status == status
    new = api.Condition(
        type=type_,
        status=status,
        reason=reason,
        message=message,
        last_transition_time=previous.last_transition_time if previous is not None and unchanged else from_timestamp(now),
        observed_generation=generation,
    )
    if previous is None:
        return [*conditions, new]
    return [new if c.type == type_ else c for c in conditions]


def set_false_if_present(
    conditions: Sequence[api.Condition],
    type_: str,
    reason: str,
    message: str,
    now: float,
    generation: int | None,
) -> list[api.Condition]:
    """Turn ``type_`` False when it exists and is not already False (absent stays absent)."""
    c = find_condition(conditions, type_)
    if c is None or c.status == "False":
        return list(conditions)
    return set_condition(conditions, type_, "False", reason, message, now, generation)


def failure_record(
    failure: Failure,
    action: api.FailureAction | None,
    now: float,
    worker: int | None = None,
    *,
    memory_limit: str | None = None,
    startup_timeout_seconds: float | None = None,
) -> api.FailureRecord:
    """status.supervision.lastFailure for one failure the supervisor handled.

    Its message is the process's own termination message when it left one; otherwise what
    ended it and, if the kubelet fell back to the log, its last log line (never the log tail as
    if it were a reason).
    """
    words = failure_words(failure, memory_limit=memory_limit, startup_timeout_seconds=startup_timeout_seconds)
    return api.FailureRecord(
        worker=worker,
        pod=failure.pod,
        exit_code=failure.exit_code,
        reason=failure.reason,
        message=words[:MAX_FAILURE_MESSAGE] if words else None,
        action=action,
        time=from_timestamp(now),
    )


def invalid_spec_status(
    kind: str,
    generation: int | None,
    message: str,
    now: float,
    *,
    previous: api.TrainingJobStatus | api.ModelServerStatus | api.ModelPipelineStatus | None = None,
) -> api.TrainingJobStatus | api.ModelServerStatus | api.ModelPipelineStatus:
    """The status of a resource whose spec is invalid: phase Failed, reason InvalidSpec.

    ``kind`` is "TrainingJob", "ModelServer" or "ModelPipeline"; ``message`` should name the field and say
    what to change. Pass the current status as ``previous`` (when it parses) to keep its
    other fields and the transition times of conditions that do not flip.
    """
    if kind == "TrainingJob":
        tj = previous if isinstance(previous, api.TrainingJobStatus) else api.TrainingJobStatus()
        conditions = set_condition(tj.conditions, "Failed", "True", "InvalidSpec", message, now, generation)
        if find_condition(conditions, "Running") is not None:
            conditions = set_condition(conditions, "Running", "False", "InvalidSpec", message, now, generation)
        return tj.model_copy(
            update={
                "observed_generation": generation,
                "phase": api.TrainingPhase.FAILED,
                "conditions": conditions,
                "completion_time": tj.completion_time or from_timestamp(now),
            }
        )
    if kind == "ModelServer":
        ms = previous if isinstance(previous, api.ModelServerStatus) else api.ModelServerStatus()
        conditions = set_condition(ms.conditions, "Ready", "False", "InvalidSpec", message, now, generation)
        conditions = set_condition(conditions, "Failed", "True", "InvalidSpec", message, now, generation)
        return ms.model_copy(
            update={
                "observed_generation": generation,
                "phase": api.ServerPhase.FAILED,
                "conditions": conditions,
            }
        )
    if kind == "ModelPipeline":
        mp = previous if isinstance(previous, api.ModelPipelineStatus) else api.ModelPipelineStatus()
        conditions = set_condition(mp.conditions, "Failed", "True", "InvalidSpec", message, now, generation)
        conditions = set_false_if_present(conditions, "Training", "InvalidSpec", message, now, generation)
        return mp.model_copy(
            update={"observed_generation": generation, "phase": api.PipelinePhase.FAILED, "conditions": conditions}
        )
    raise ValueError(f"unknown kind {kind!r}: expected TrainingJob, ModelServer or ModelPipeline")


class ConditionWriter:
    """For a planner holding ``status`` (with conditions), ``now`` and ``generation``."""

    status: Any
    now: float
    generation: int | None

    def _condition(self, type_: str, status: ConditionStatus, reason: str, message: str) -> None:
        self.status.conditions = set_condition(
            self.status.conditions, type_, status, reason, message, self.now, self.generation
        )

    def _condition_false_if_present(self, type_: str, reason: str, message: str) -> None:
        self.status.conditions = set_false_if_present(
            self.status.conditions, type_, reason, message, self.now, self.generation
        )
