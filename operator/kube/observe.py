"""Turn Kubernetes objects (JSON dicts) into the planners' observed-world values.

The planners never see a pod dict: they see ``ObservedPod`` and ``ObservedDeployment``. This
module is the one place that knows where a container's exit code, a pod's eviction reason or
a Deployment's ready count live in the Kubernetes API, so both the mapping and its corner cases
(restarted containers, evictions, missing status) are unit-tested without any cluster. Pure:
no I/O, no clock.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import BaseModel, ValidationError

from mlvisor.operator import builders
from mlvisor.operator.reconcile import plan

_KNOWN_PHASES = frozenset({"Pending", "Running", "Succeeded", "Failed", "Unknown"})


def _int(value: Any, default: int) -> int:
    try:
        return int(value)
    except (TypeError, ValueError):
        return default


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
    return (failed or runs or [None])[0]


def observe_pod(pod: Mapping[str, Any], default_index: int = 0) -> plan.ObservedPod:
    """A pod dict as the planners see it.

    The reason is the pod's own ``status.reason`` when set (Evicted, NodeLost, Preempted,
    ... are pod-level), else the container's ``terminated.reason`` (Error, OOMKilled, ...):
    an evicted pod's container usually also reports a plain Error, and classification must
    see the eviction. The message is the failed container's termination message, else the
    pod's ``status.message`` when the pod itself was ended (an eviction says why).
    """
    meta = pod.get("metadata") or {}
    labels = meta.get("labels") or {}
    annotations = meta.get("annotations") or {}
    status = pod.get("status") or {}
    phase = status.get("phase") or "Pending"
    if phase not in _KNOWN_PHASES:
        phase = "Unknown"
    termination = _last_termination(pod)
    exit_code = _int(termination.get("exitCode"), 0) if termination and "exitCode" in termination else None
    reason = status.get("reason") or (termination.get("reason") if termination else None) or None
    conditions = frozenset(
        str(c.get("type")) for c in status.get("conditions") or [] if str(c.get("status")) == "True"
    )
    restart_count = sum(_int(cs.get("restartCount"), 0) for cs in status.get("containerStatuses") or [])
    # The container's own words (its termination message, or the log tail the kubelet fell
    # back to); a succeeded trainer's message is its metadata summary, not a reason.
    message = str(termination.get("message") or "").strip() if termination and exit_code else ""
    return plan.ObservedPod(
        name=str(meta.get("name", "")),
        index=_worker_index(labels.get(plan.LABEL_WORKER_INDEX), default_index),
        attempt=max(1, _int(labels.get(plan.LABEL_ATTEMPT), 1)),
        phase=phase,
        exit_code=exit_code,
        reason=reason,
        conditions=conditions,
        restart_count=restart_count,
        ready="Ready" in conditions,
        deleting=bool(meta.get("deletionTimestamp")),
        model_uri=annotations.get(plan.ANNOTATION_MODEL_URI),
        message=message or (str(status.get("message") or "").strip() if status.get("reason") else "") or None,
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
        model_uri=(template_meta.get("annotations") or {}).get(plan.ANNOTATION_MODEL_URI),
    )


def is_controlled_by(obj: Mapping[str, Any], uid: str | None) -> bool:
    """True when ``obj`` has a controller ownerReference to the object with this uid."""
    if not uid:
        return False
    refs = (obj.get("metadata") or {}).get("ownerReferences") or []
    return any(r.get("uid") == uid and r.get("controller", False) for r in refs)


def controller_of(obj: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the object's controller ownerReference, if any."""
    for ref in (obj.get("metadata") or {}).get("ownerReferences") or []:
        if ref.get("controller"):
            return str(ref.get("kind")), str(ref.get("name"))
    return None


def termination_summary(pods: Iterable[Mapping[str, Any]]) -> dict[str, Any] | None:
    """The JSON summary a succeeded trainer wrote to its termination log, if any.

    Kubernetes copies /dev/termination-log (at most 4 KiB) into ``terminated.message``; the
    operator cannot read the artifact volume, so this is how metrics travel back from a pod.
    The newest succeeded pod with a JSON object message wins; anything else is ignored.
    """
    found: tuple[str, dict[str, Any]] | None = None
    for pod in pods:
        if (pod.get("status") or {}).get("phase") != "Succeeded":
            continue
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            terminated = (cs.get("state") or {}).get("terminated") or {}
            try:
                message = json.loads(terminated.get("message") or "")
            except ValueError:
                continue
            if isinstance(message, dict):
                finished = str(terminated.get("finishedAt") or "")
                if found is None or finished >= found[0]:
                    found = (finished, message)
    return found[1] if found else None


def observe_child(obj: Mapping[str, Any], status_model: type[BaseModel]) -> plan.ObservedResource:
    """A pipeline's TrainingJob or ModelServer as the pipeline planner sees it.

    A status that does not parse (written by another version) is reported as None, like a
    child that has not reported yet, rather than failing the pipeline's reconcile.
    """
    meta = obj.get("metadata") or {}
    labels = meta.get("labels") or {}
    try:
        status = status_model.model_validate(obj["status"]) if obj.get("status") else None
    except ValidationError:
        status = None
    run = labels.get(plan.LABEL_RUN)
    return plan.ObservedResource(
        kind=str(obj.get("kind", "")),
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid") or ""),
        run=(_int(run, 0) or None) if run is not None else None,
        spec_hash=(meta.get("annotations") or {}).get(plan.ANNOTATION_TRAINING_SPEC_HASH),
        status=status,
        deleting=bool(meta.get("deletionTimestamp")),
    )
