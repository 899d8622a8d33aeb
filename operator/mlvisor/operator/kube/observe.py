"""Turn Kubernetes objects (JSON dicts) into the planners' observed-world values.

The planners never see a pod dict: they see ``ObservedPod`` and ``ObservedDeployment``. This
module is the one place that knows where a container's exit code, a pod's eviction reason or
a Deployment's ready count live in the Kubernetes API, so both the mapping and its corner cases
(restarted containers, evictions, missing status) are unit-tested without any cluster. Pure:
no I/O, no clock.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, cast

from pydantic import ValidationError

from mlvisor import api
from mlvisor.api.labels import (
    ANNOTATION_MODEL_URI,
    LABEL_ATTEMPT,
    LABEL_WORKER_INDEX,
)
from mlvisor.operator import builders, plan
from mlvisor.operator.planners.pipeline import observed_child
from mlvisor.operator.supervision import MessageSource, message_source

_KNOWN_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


def _time(value: Any) -> float | None:
    """An RFC 3339 timestamp (creationTimestamp, lastTransitionTime) as Unix seconds; None if absent or unreadable."""
    if not isinstance(value, str) or not value:
        return None
    try:
        t = dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    return (t if t.tzinfo else t.replace(tzinfo=dt.UTC)).timestamp()


def _worker_index(value: str | None, default: int) -> int:
    if value is None:
        return default
    try:
        return builders.parse_worker_index(value)
    except ValueError:
        return default


def _terminated(container_status: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The last terminated run of a container: the current state if terminated, else lastState."""
    state = container_status.get("state") or {}
    if state.get("terminated"):
        return state["terminated"]
    last = container_status.get("lastState") or {}
    return last.get("terminated") or None


def _last_termination(pod: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The termination that tells why the pod failed: a non-zero exit first, any termination otherwise."""
    status = pod.get("status") or {}
    runs = [t for cs in status.get("containerStatuses") or [] if (t := _terminated(cs)) is not None]
    failed = [t for t in runs if _int(t.get("exitCode"), 0) != 0]
    return (failed or runs)[0] if runs else None


#: Waiting reasons of a container that is on its way (or being restarted, which the supervisor
#: reports from the exits): nothing a user needs to be told.
_ORDINARY_WAITING = frozenset({"ContainerCreating", "PodInitializing", "CrashLoopBackOff"})


def _waiting(pod: Mapping[str, Any]) -> tuple[str | None, float | None]:
    """Why the pod's containers do not run, when it is worth saying, and since when
    (see ObservedPod.waiting and waiting_since)."""
    status = pod.get("status") or {}
    for cs in [*(status.get("initContainerStatuses") or []), *(status.get("containerStatuses") or [])]:
        waiting = (cs.get("state") or {}).get("waiting") or {}
        reason = str(waiting.get("reason") or "")
        if reason and reason not in _ORDINARY_WAITING:
            message = str(waiting.get("message") or "").strip()
            since = _time(status.get("startTime")) or _time((pod.get("metadata") or {}).get("creationTimestamp"))
            return (f"{reason}: {message}" if message else reason), since
    for c in status.get("conditions") or []:
        if c.get("type") == "PodScheduled" and str(c.get("status")) == "False" and c.get("reason"):
            message = str(c.get("message") or "").strip()
            return (f"{c['reason']}: {message}" if message else str(c["reason"])), _time(c.get("lastTransitionTime"))
    return None, None


def observe_pod(pod: Mapping[str, Any], default_index: int = 0) -> plan.ObservedPod:
    """A pod dict as the planners see it.

    The reason is the pod's own ``status.reason`` when set (Evicted, NodeLost, Preempted,
    ... are pod-level), else the container's ``terminated.reason`` (Error, OOMKilled, ...):
    an evicted pod's container usually also reports a plain Error, and classification must
    see the eviction. The message is the pod's ``status.message`` when the pod itself was ended
    (an eviction says why), else the failed container's termination message; which of the
    two, and for a termination message whether the process wrote it or the kubelet fell back to
    the log tail, is ``message_source``.
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    given = status.get("phase") or "Pending"
    phase = cast(plan.PodPhase, given) if given in _KNOWN_PHASES else "Unknown"
    termination = _last_termination(pod)
    exit_code = _int(termination.get("exitCode"), 0) if termination and "exitCode" in termination else None
    reason = status.get("reason") or (termination.get("reason") if termination else None) or None
    conditions = frozenset(
        str(c.get("type")) for c in status.get("conditions") or [] if str(c.get("status")) == "True"
    )
    restart_count = sum(_int(cs.get("restartCount"), 0) for cs in status.get("containerStatuses") or [])
    # The container's termination message: a failed process's reason, a succeeded trainer's
    # summary, or the log tail the kubelet fell back to (message_source tells them apart).
    # When the cluster ended the pod (an eviction), its status.message is the reason; the
    # container only saw a signal.
    message = str(termination.get("message") or "").strip() if termination else ""
    source = message_source(message, exit_code)
    if status.get("reason") and str(status.get("message") or "").strip():
        message, source = str(status["message"]).strip(), MessageSource.POD
    waiting, waiting_since = _waiting(pod) if phase in ("Pending", "Running") else (None, None)
    return plan.ObservedPod(
        name=str(meta.get("name", "")),
        index=_worker_index(labels.get(LABEL_WORKER_INDEX), default_index),
        attempt=max(1, _int(labels.get(LABEL_ATTEMPT), 1)),
        phase=phase,
        exit_code=exit_code,
        reason=reason,
        conditions=conditions,
        restart_count=restart_count,
        ready="Ready" in conditions,
        deleting=bool(meta.get("deletionTimestamp")),
        model_uri=annotations.get(ANNOTATION_MODEL_URI),
        message=message or None,
        message_source=source,
        waiting=waiting,
        waiting_since=waiting_since,
    )


def observe_deployment(deployment: Mapping[str, Any]) -> plan.ObservedDeployment:
    """A Deployment dict as the serving planner sees it (counts from status; what it rolls out from the template)."""
    meta = deployment.get("metadata") or {}
    status = deployment.get("status") or {}
    template_meta = ((deployment.get("spec") or {}).get("template") or {}).get("metadata") or {}
    return plan.ObservedDeployment(
        name=str(meta.get("name", "")),
        replicas=_int(status.get("replicas"), 0),
        ready_replicas=_int(status.get("readyReplicas"), 0),
        updated_replicas=_int(status.get("updatedReplicas"), 0),
        model_uri=(template_meta.get("annotations") or {}).get(ANNOTATION_MODEL_URI),
    )


def is_controlled_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """True when ``obj`` has a controller ownerReference to the object with this uid."""
    if not uid:
        return False
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller", False) for r in refs)


def controller_ref(obj: Mapping[str, Any]) -> Mapping[str, Any] | None:
    """The object's controller ownerReference (Kubernetes allows one), if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return ref
    return None


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's controller ownerReference, if any."""
    ref = controller_ref(obj)
    return (str(ref.get("kind")), str(ref.get("name"))) if ref is not None else None


def observe_child(obj: Mapping[str, Any], status_model: type[api.Model]) -> plan.ObservedResource:
    """A pipeline's TrainingJob or ModelServer as the pipeline planner sees it (its rule:
    :func:`mlvisor.operator.planners.pipeline.observed_child`).

    A status that does not parse (written by another version) is reported as None, like a
    child that has not reported yet, rather than failing the pipeline's reconcile.
    """
    try:
        status = status_model.model_validate(obj["status"]) if obj.get("status") else None
    except ValidationError:
        status = None
    return observed_child(str(obj.get("kind", "")), obj.get("metadata") or {}, cast(Any, status))
