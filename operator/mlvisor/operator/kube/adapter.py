"""Carry out a planner's ``Plan`` against the Kubernetes API: the only place that writes.

The planners decide; this module does exactly what they said, idempotently, so a reconcile
that runs twice (operator restart, retried after an error, replayed event) is harmless:

- pods are created if absent (409 AlreadyExists = done: names are deterministic) and deleted
  if present (404 NotFound = done);
- the Deployment and the Service are created, or merge-patched when the live object (the
  store's copy: no GET) differs from the manifest in a field the manifest sets (no strategic merge, no PUT, no server-side
  apply: they are the API features test emulators get wrong, and a merge patch of a full
  manifest means the same everywhere);
- Events are posted best effort (a lost Event never fails a reconcile), after the status, so
  a status conflict that makes the reconcile run again does not post them twice;
- the status is written after the object actions, on the ``/status`` subresource, as a JSON merge patch computed
  against the status that was read (fields that went away are sent as null), guarded by the
  resourceVersion that was read (409 = someone changed the resource: reconcile again), and
  only when it changed. It contains only what ``to_wire()`` of the api models emits, which is
  what the generated CRD schema declares, so a real API server prunes nothing
  (tests/schema/test_status_pruning.py checks that).

Every answer of a write goes to the store (``Store.wrote``/``Store.deleted``), so the next
reconcile sees it even before its watch event arrives, and with it whose reconcile wrote it: the
watch event that shows exactly a TrainingJob's own write queues no reconcile of it (``watches.py``).
"""

from __future__ import annotations

import logging
import os
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from mlvisor import api
from mlvisor.operator import plan as p
from mlvisor.operator.kube import client
from mlvisor.operator.kube.client import ApiError, Kube
from mlvisor.operator.kube.logs import fields
from mlvisor.operator.kube.observe import controller_of, is_controlled_by
from mlvisor.operator.kube.store import Store

logger = logging.getLogger(__name__)

REPORTING_COMPONENT = "mlvisor-operator"
_EVENT_MESSAGE_LIMIT = 1024


@dataclass
class Applied:
    """What a plan application actually wrote (for metrics and tests)."""

    writes: int = 0
    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    status_written: bool = False
    status: dict[str, Any] | None = None
    """The status the plan asked for, in its wire form (made once: the metrics read it too)."""
    first_write_at: float | None = None
    """time.monotonic() of the first successful write."""

    def wrote(self) -> None:
        self.writes += 1
        if self.first_write_at is None:
            self.first_write_at = time.monotonic()


def merge_patch(old: Any, new: Any) -> Any:
    """The RFC 7386 JSON merge patch that turns ``old`` into ``new`` (None: nothing to change)."""
    if not isinstance(old, Mapping) or not isinstance(new, Mapping):
        return None if old == new else new
    patch: dict[str, Any] = {}
    for key in old.keys() - new.keys():
        patch[key] = None
    for key, value in new.items():
        if key not in old:
            patch[key] = value
        elif isinstance(value, Mapping) and isinstance(old[key], Mapping):
            sub = merge_patch(old[key], value)
            if sub:
                patch[key] = sub
        elif value != old[key]:
            patch[key] = value
    return patch or None


def is_subset(desired: Any, actual: Any) -> bool:
    """True when every field ``desired`` sets has the same value in ``actual``.

    Fields only ``actual`` has (server defaults, clusterIP, status) do not count as drift.
    """
    if isinstance(desired, Mapping):
        return isinstance(actual, Mapping) and all(k in actual and is_subset(v, actual[k]) for k, v in desired.items())
    if isinstance(desired, list):
        return (
            isinstance(actual, list)
            and len(desired) == len(actual)
            and all(is_subset(d, a) for d, a in zip(desired, actual, strict=True))
        )
    if isinstance(desired, (int, float)) and not isinstance(desired, bool) and isinstance(actual, (int, float)):
        return desired == actual
    return bool(desired == actual)


class PlanApplier:
    """Applies plans for one operator process (one API client, one identity for Events)."""

    def __init__(self, kube: Kube, clock: Callable[[], float] = time.time, store: Store | None = None) -> None:
        self.kube = kube
        self.clock = clock
        self.store = store or Store()
        self.instance = os.environ.get("HOSTNAME") or "mlvisor-operator"

    async def apply(self, body: Mapping[str, Any], plan: p.Plan) -> Applied:
        """Carry out the object actions in order, write the status, then post the Events.

        Events come last: when the status write meets a 409 (the resource changed under us)
        the reconcile runs again and plans the same decision, and Events posted before the
        conflict would then be posted twice.
        """
        applied = Applied()
        events = [a for a in plan.actions if isinstance(a, p.RecordEvent)]
        for action in plan.actions:
            if not isinstance(action, p.RecordEvent):
                await self.apply_action(body, action, applied)
        if plan.status is not None:
            applied.status = plan.status.to_wire()
            await self.write_status(body, applied.status, applied)
        for event in events:
            await self.apply_action(body, event, applied)
        return applied

    async def apply_action(self, body: Mapping[str, Any], action: p.Action, applied: Applied) -> None:
        meta = body["metadata"]
        namespace = meta["namespace"]
        if isinstance(action, p.CreatePod):
            name = action.manifest["metadata"]["name"]
            try:
                self.store.wrote(await self.kube.create(client.core_path("pods", namespace), action.manifest), _key(body))
                applied.wrote()
                applied.created.append(name)
                logger.info("created pod %s", name, extra=fields(body["kind"], namespace, meta["name"], pod=name))
            except ApiError as e:
                if e.status != 409:
                    raise
        elif isinstance(action, p.DeletePod):
            try:
                answer = await self.kube.delete(
                    client.core_path("pods", namespace, action.name), {"propagationPolicy": "Background"}
                )
                self.store.deleted(_deleted_pod(body, action.name, answer))
                applied.wrote()
                applied.deleted.append(action.name)
                logger.info(
                    "deleted pod %s: %s",
                    action.name,
                    action.reason,
                    extra=fields(body["kind"], namespace, meta["name"], pod=action.name),
                )
            except ApiError as e:
                if e.status != 404:
                    raise
        elif isinstance(action, p.ApplyDeployment):
            path = client.group_path("apps", "v1", "deployments", namespace)
            await self._apply_object(body, path, action.manifest, applied)
        elif isinstance(action, p.ApplyService):
            await self._apply_object(body, client.core_path("services", namespace), action.manifest, applied)
        elif isinstance(action, p.ApplyResource):
            kind = action.manifest["kind"]
            path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[kind], namespace)
            await self._apply_object(body, path, action.manifest, applied, owned_only=True)
        elif isinstance(action, p.DeleteResource):
            path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[action.kind], namespace, action.name)
            try:
                answer = await self.kube.delete(path, {"propagationPolicy": "Background"})
                if answer.get("kind") == action.kind:
                    self.store.deleted(answer)
                applied.wrote()
                applied.deleted.append(action.name)
                logger.info(
                    "deleted %s %s: %s", action.kind, action.name, action.reason,
                    extra=fields(body["kind"], namespace, meta["name"]),
                )
            except ApiError as e:
                if e.status != 404:
                    raise
        elif isinstance(action, p.RecordEvent):
            await self.record_event(body, action.type, action.reason, action.message, applied)
        else:  # pragma: no cover - a new action type must be taught to the shell
            raise TypeError(f"unknown plan action {action!r}")

    async def _apply_object(
        self,
        body: Mapping[str, Any],
        collection: str,
        manifest: Mapping[str, Any],
        applied: Applied,
        *,
        owned_only: bool = False,
    ) -> None:
        """Create, or merge-patch the live object where it differs from the manifest.

        ``owned_only``: refuse to take over an existing object the resource does not control
        (a pipeline never rewrites a TrainingJob or ModelServer a user created by that name).
        """
        name = manifest["metadata"]["name"]
        path = f"{collection}/{name}"
        live = self.store.get(str(manifest["kind"]), body["metadata"]["namespace"], name)
        if live is None:
            try:
                self.store.wrote(await self.kube.create(collection, manifest), _key(body))
                applied.wrote()
                applied.created.append(name)
                return
            except ApiError as e:
                if e.status != 409:
                    raise
                # It exists, and the store (every managed one, every mlvisor resource) does not
                # hold it: someone else's object by that name.
                raise ApiError(
                    409, "Conflict", f"{path} exists and is not managed by mlvisor: rename or delete it"
                ) from None
        owner = controller_of(live)
        if owner is not None and not is_controlled_by(live, body["metadata"].get("uid")):
            raise ApiError(409, "Conflict", f"{path} exists and is controlled by {owner[0]} {owner[1]}, not by mlvisor")
        if owned_only and owner is None:
            raise ApiError(
                409,
                "Conflict",
                f"{path} exists and is not controlled by {body['kind']} {body['metadata']['name']}: rename or delete it",
            )
        desired = {k: v for k, v in manifest.items() if k != "status"}
        if not is_subset(desired, live):
            self.store.wrote(await self.kube.patch(path, desired), _key(body))
            applied.wrote()
            logger.info(
                "updated %s", path, extra=fields(body["kind"], body["metadata"]["namespace"], body["metadata"]["name"])
            )

    async def record_event(
        self, body: Mapping[str, Any], type_: str, reason: str, message: str, applied: Applied | None = None
    ) -> None:
        """Post a core/v1 Event about the resource (what ``kubectl describe`` and ``get events`` show)."""
        meta = body["metadata"]
        stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(self.clock()))
        event = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{meta['name']}.{uuid.uuid4().hex[:16]}", "namespace": meta["namespace"]},
            "involvedObject": {
                "apiVersion": body.get("apiVersion", api.API_VERSION),
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta.get("uid"),
                "resourceVersion": meta.get("resourceVersion"),
            },
            "reason": reason,
            "message": message[:_EVENT_MESSAGE_LIMIT],
            "type": type_,
            "source": {"component": REPORTING_COMPONENT},
            "reportingComponent": REPORTING_COMPONENT,
            "reportingInstance": self.instance[:128],
            "firstTimestamp": stamp,
            "lastTimestamp": stamp,
            "count": 1,
        }
        log = logger.warning if type_ == "Warning" else logger.info
        log("%s: %s", reason, message, extra=fields(body["kind"], meta["namespace"], meta["name"], reason=reason))
        try:
            await self.kube.create(client.core_path("events", meta["namespace"]), event)
        except ApiError as e:  # an Event is a courtesy: never fail the decision because of it
            logger.warning(
                "could not post Event %s: %s", reason, e, extra=fields(body["kind"], meta["namespace"], meta["name"])
            )
            return
        if applied is not None:
            applied.events.append(reason)

    async def write_status(self, body: Mapping[str, Any], status: Mapping[str, Any], applied: Applied) -> None:
        """Merge-patch /status from the status that was read to ``status`` (no-op when equal)."""
        old = body.get("status") or {}
        patch = merge_patch(old, dict(status))
        if not patch:
            return
        meta = body["metadata"]
        plural = api.PLURALS[body["kind"]]
        path = client.group_path(api.GROUP, api.VERSION, plural, meta["namespace"], meta["name"], "status")
        answer = await self.kube.patch(path, {"metadata": {"resourceVersion": meta["resourceVersion"]}, "status": patch})
        self.store.wrote(answer, _key(body))
        applied.wrote()
        applied.status_written = True


def _key(body: Mapping[str, Any]) -> tuple[str, str, str]:
    """(kind, namespace, name) of the resource a plan was made for: its writes are its own."""
    meta = body["metadata"]
    return str(body["kind"]), str(meta["namespace"]), str(meta["name"])


def _deleted_pod(owner: Mapping[str, Any], name: str, answer: Mapping[str, Any]) -> Mapping[str, Any]:
    """The pod a DELETE answered with, or (an answer that is a Status) what the store needs of it."""
    if answer.get("kind") == "Pod":
        return answer
    meta = owner["metadata"]
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": meta["namespace"],
            "ownerReferences": [{"apiVersion": owner.get("apiVersion", api.API_VERSION), "kind": owner["kind"],
                                 "name": meta["name"], "uid": meta.get("uid"), "controller": True}],
        },
    }


def conditions_by_type(status: Mapping[str, Any] | None) -> dict[str, Mapping[str, Any]]:
    return {c.get("type"): c for c in (status or {}).get("conditions") or []}


def became_true(old: Mapping[str, Any] | None, new: Mapping[str, Any], condition: str) -> Mapping[str, Any] | None:
    """The condition if it is True in ``new`` and was not True (or not there) in ``old``."""
    after = conditions_by_type(new).get(condition)
    before = conditions_by_type(old).get(condition)
    if after is not None and after.get("status") == "True" and (before is None or before.get("status") != "True"):
        return after
    return None
