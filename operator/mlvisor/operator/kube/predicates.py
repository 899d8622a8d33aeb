"""Which watch events can change what a reconcile would do (controller-runtime's predicates).

A reconcile reads its resource and the resource's pods; a watch event that changes nothing of
what it reads would only cost a GET and a LIST to find nothing to do. Such events are common:
the scheduler's Unschedulable condition on a pending pod, a kubelet's condition timestamps, an
annotation a user or a tool adds (``kubectl annotate``, Argo CD, last-applied-configuration
rewritten without a change), a relabel by a policy engine. So each event's object is reduced to
what the reconcilers read, its *projection*, and an event whose projection equals the one last
seen for that object queues nothing: such a no-op change makes no API call at all.

- a TrainingJob, ModelServer or ModelPipeline: generation, spec, status, labels, ownerReferences,
  deletionTimestamp and the ``mlvisor.dev/`` annotations (a pipeline reads its children's);
  resourceVersion, managedFields and other annotations are not read by any planner;
- a pod: what :func:`observe.observe_pod` makes of it (the planners' only view), plus what the
  shell itself reads: its IP (progress polling), labels, ownerReferences and deletionTimestamp.

Safe because reconciles are level-triggered: the event that last changed a projection queued a
reconcile, which read the object as it was then or later; a later event with the same projection
brings nothing that reconcile did not see. A deletion is always passed on, and a restarted
operator starts with nothing seen (kopf's initial listing reconciles everything). Only hashes are
kept, one per object (a few dozen bytes each).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import orjson

from mlvisor.api import GROUP
from mlvisor.operator.kube.observe import observe_pod

#: Annotations the planners read (a pipeline reads its children's training-spec hash).
OWN_ANNOTATIONS = f"{GROUP}/"


def _digest(value: Any) -> int:
    return hash(orjson.dumps(value, option=orjson.OPT_SORT_KEYS))


def _meta(body: Mapping[str, Any]) -> Mapping[str, Any]:
    return body.get("metadata") or {}


def resource_projection(body: Mapping[str, Any]) -> int:
    """What the reconcilers read of a TrainingJob, ModelServer or ModelPipeline."""
    meta = _meta(body)
    annotations = meta.get("annotations") or {}
    return _digest({
        "generation": meta.get("generation"),
        "labels": meta.get("labels"),
        "annotations": {k: v for k, v in annotations.items() if str(k).startswith(OWN_ANNOTATIONS)},
        "ownerReferences": meta.get("ownerReferences"),
        "deletionTimestamp": meta.get("deletionTimestamp"),
        "spec": body.get("spec"),
        "status": body.get("status"),
    })


def pod_projection(body: Mapping[str, Any]) -> int:
    """What the reconcilers read of a pod."""
    meta = _meta(body)
    status = body.get("status") or {}
    return hash((
        observe_pod(body),
        status.get("podIP"),
        meta.get("deletionTimestamp"),
        _digest([meta.get("labels"), meta.get("ownerReferences")]),
    ))


class Changes:
    """The last projection seen of each object (by uid)."""

    def __init__(self) -> None:
        self._seen: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self._seen)

    def changed(self, body: Mapping[str, Any], projection: int, deleted: bool = False) -> bool:
        """True if this event may change what a reconcile does (and remember it); False: drop it."""
        uid = str(_meta(body).get("uid") or "")
        if deleted or not uid:
            self._seen.pop(uid, None)
            return True
        if self._seen.get(uid) == projection:
            return False
        self._seen[uid] = projection
        return True
