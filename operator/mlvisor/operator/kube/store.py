"""The reconcilers' view of the cluster: watch-fed, slim, and aware of the operator's own writes.

controller-runtime's cached client in kopf's terms. What a reconcile reads (its resource, the
resource's pods, a server's Deployment and Service, a pipeline's children, the TrainingJob a
server serves) comes from memory, never from a GET or a LIST:

- **Fed by the operator's watches** (``informer.py``, routed by ``watches.py``) with
  :meth:`Store.put` and :meth:`Store.drop`. Reconciles are held back until every kind has been
  listed once, so no reconcile ever runs on a half-filled store: after an operator restart a
  job is never planned without its pods.
- **Slim**: each object is reduced to what a reconcile reads (:func:`slim_pod`,
  :func:`slim_object`): no managedFields, no last-applied annotation, a pod without its spec
  but its ports. A slim copy shares its parts with the body it was cut from: the watch's
  decoded event, which nothing else holds, or an answer of the API.
- **Packed**: each slim copy is kept as its compact JSON (:func:`pack`), about a quarter of the
  same copy as dicts and strings (900 bytes against 3,300 for a pending worker pod), and decoded
  on each read (microseconds: a reconcile reads its resource and a few pods). A reader gets
  fresh dicts every time, so nothing it does can change the store.
- **Aware of the operator's own writes** (client-go's MutationCache; the Job controller's
  "expectations" serve the same end): the answer of every create, delete and status patch is
  kept here until the watch has caught up with it (its resourceVersion) or for ``ttl``
  seconds. So a reconcile that runs before the watch event of its own write (a pod event of a
  sibling, a requeue) sees the pod it created, the pod it deleted as going away, and the
  status it wrote with its new resourceVersion: no duplicate create, no restart counted
  twice, no status write refused for a stale resourceVersion.

Pure (no kopf, no I/O): the tests feed it whole objects with :meth:`Store.put` as the watches do.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from mlvisor.api import GROUP
from mlvisor.api.labels import LABEL_COMPONENT, LABEL_INSTANCE
from mlvisor.operator.kube.observe import controller_ref

#: The kinds the store keeps.
KINDS = ("TrainingJob", "ModelServer", "ModelPipeline", "Deployment", "Service", "Pod")

#: Seconds an own write is trusted over the watch at most (the watch normally catches up in ms).
WRITE_TTL_SECONDS = 30.0

_NOISE_ANNOTATIONS = ("kubectl.kubernetes.io/last-applied-configuration",)
_META_KEYS = (
    "name", "namespace", "uid", "generation", "resourceVersion", "labels", "ownerReferences",
    "deletionTimestamp", "creationTimestamp",
)


def _slim_meta(meta: Mapping[str, Any]) -> dict[str, Any]:
    out = {k: meta[k] for k in _META_KEYS if meta.get(k) is not None}
    annotations = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in _NOISE_ANNOTATIONS}
    if annotations:
        out["annotations"] = annotations
    return out


def slim_object(body: Mapping[str, Any]) -> dict[str, Any]:
    """A TrainingJob, ModelServer, ModelPipeline, Deployment or Service without managedFields."""
    out = {k: v for k, v in body.items() if k != "metadata"}
    out["metadata"] = _slim_meta(body.get("metadata") or {})
    return out


_CONDITION_KEYS = ("type", "status", "reason", "message")
_CONTAINER_KEYS = ("name", "state", "lastState", "restartCount")
#: startTime and a False condition's lastTransitionTime: since when a pod waits (observe._waiting).
_POD_STATUS_KEYS = ("phase", "reason", "message", "podIP", "startTime")


def slim_pod(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the reconcilers read of a pod (observe.observe_pod, the progress poller, the owners)."""
    status = body.get("status") or {}
    out_status: dict[str, Any] = {k: status[k] for k in _POD_STATUS_KEYS if status.get(k) is not None}
    if status.get("conditions"):
        out_status["conditions"] = [
            {k: c[k] for k in _CONDITION_KEYS if c.get(k) is not None}
            | ({"lastTransitionTime": c["lastTransitionTime"]}
               if c.get("lastTransitionTime") and str(c.get("status")) == "False" else {})
            for c in status["conditions"]
        ]
    for key in ("initContainerStatuses", "containerStatuses"):
        if status.get(key):
            out_status[key] = [{k: cs[k] for k in _CONTAINER_KEYS if k in cs} for cs in status[key]]
    containers = [
        {"name": c.get("name"), "ports": c["ports"]}
        for c in (body.get("spec") or {}).get("containers") or []
        if c.get("ports")
    ]
    return {
        "apiVersion": body.get("apiVersion", "v1"),
        "kind": body.get("kind", "Pod"),
        "metadata": _slim_meta(body.get("metadata") or {}),
        "spec": {"containers": containers},
        "status": out_status,
    }


def pod_owner(body: Mapping[str, Any]) -> tuple[str, str] | None:
    """(kind, name) of the mlvisor resource whose reconcile reads this pod (and a pod event queues).

    A worker pod is controlled by its TrainingJob; a server pod by a ReplicaSet, and belongs to
    the ModelServer its ``app.kubernetes.io/instance`` label names.
    """
    ref = controller_ref(body)
    if ref is not None and ref.get("kind") == "TrainingJob" and str(ref.get("apiVersion", "")).startswith(GROUP):
        return "TrainingJob", str(ref.get("name"))
    labels = (body.get("metadata") or {}).get("labels") or {}
    if labels.get(LABEL_COMPONENT) == "server" and labels.get(LABEL_INSTANCE):
        return "ModelServer", str(labels[LABEL_INSTANCE])
    return None


def pack(slim: Mapping[str, Any]) -> bytes:
    """A slim copy as it is kept: compact JSON, in a bytes object of its own size.

    orjson writes into a buffer of several KiB and hands that buffer out, so a kept
    ``orjson.dumps`` result of 900 bytes holds 8 KB of memory (measured with the resident set):
    the copy gives the unused part back.
    """
    return bytes(memoryview(orjson.dumps(slim)))


def unpack(packed: bytes) -> dict[str, Any]:
    """A kept copy as fresh dicts (the reader's own)."""
    body: dict[str, Any] = orjson.loads(packed)
    return body


def _rv(body: Mapping[str, Any]) -> str:
    return str((body.get("metadata") or {}).get("resourceVersion") or "")


def _at_least(a: str, b: str) -> bool:
    """Whether resourceVersion ``a`` (the watch's copy) is ``b`` (the operator's write) or newer.

    resourceVersions are opaque, but every API server in use (etcd's revisions, the test
    emulator's counter) issues increasing integers; anything else counts as caught up only
    when equal, and the write's ttl bounds the wait.
    """
    if a.isdigit() and b.isdigit():
        return int(a) >= int(b)
    return a == b


@dataclass
class _Write:
    packed: bytes
    at: float
    deleted: bool = False
    rv: str = ""
    """The written copy's resourceVersion, kept beside it so that a watch event need not decode it."""
    by: Key | None = None
    """The resource whose reconcile made the write (its pods' creates, its status)."""

    @property
    def body(self) -> dict[str, Any]:
        """The written copy, fresh for each reader."""
        return unpack(self.packed)


Key = tuple[str, str, str]
"""(kind, namespace, name)."""


class Store:
    """Reads for the reconcilers: kopf's indexes, with the operator's own recent writes on top."""

    def __init__(self, ttl: float = WRITE_TTL_SECONDS, clock: Callable[[], float] = time.monotonic) -> None:
        self.ttl = ttl
        self.clock = clock
        self._indexes: dict[str, dict[Any, dict[str, bytes]]] = {kind: {} for kind in KINDS}
        """kind -> index key -> object name -> packed slim copy (an object is filed under every key it has)."""
        self._filed: dict[tuple[str, str, str], tuple[Any, ...]] = {}
        """(kind, namespace, name) -> the index keys the object is filed under now."""
        self._writes: dict[Key, _Write] = {}
        self._pod_writes: dict[Key, dict[str, _Write]] = {}
        """(owner kind, namespace, owner name) -> pod name -> the write."""

    # ------------------------------------------------------------------ feeding

    def put(self, body: Mapping[str, Any]) -> None:
        """A watched object as it is now (added or modified): its slim copy replaces the last one."""
        kind = str(body.get("kind") or "")
        if kind not in self._indexes:
            return
        self._unfile(body)
        keys = index_keys(body)
        if not keys:
            return
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        index = self._indexes[kind]
        packed: dict[int, bytes] = {}  # the keys of one object share one slim copy: packed once
        for key, slim in keys.items():
            if id(slim) not in packed:
                packed[id(slim)] = pack(slim)
            index.setdefault(key, {})[name] = packed[id(slim)]
        self._filed[(kind, str(meta.get("namespace")), name)] = tuple(keys)
        self._caught_up(body)

    def _caught_up(self, body: Mapping[str, Any]) -> None:
        """Drop the own write of this object once the watch shows it (or newer), now rather than at
        the next read: an idle resource would otherwise keep its last write's copy for ever."""
        slot = self._slot(body)
        if slot is None:
            return
        writes, key = slot
        write = writes.get(key)
        if write is not None and not write.deleted and _at_least(_rv(body), write.rv):
            del writes[key]
            if not writes and writes is not self._writes:
                owner = pod_owner(body)
                if owner is not None:
                    self._pod_writes.pop((owner[0], str((body.get("metadata") or {}).get("namespace")), owner[1]), None)

    def drop(self, body: Mapping[str, Any]) -> None:
        """A watched object deleted: nothing of it is kept, its own writes included."""
        self._unfile(body)
        self.forget(body)

    def _unfile(self, body: Mapping[str, Any]) -> None:
        kind = str(body.get("kind") or "")
        meta = body.get("metadata") or {}
        name = str(meta.get("name"))
        keys = self._filed.pop((kind, str(meta.get("namespace")), name), ())
        index = self._indexes.get(kind)
        for key in keys:
            entries = index.get(key) if index is not None else None
            if entries is not None:
                entries.pop(name, None)
                if not entries:
                    del index[key]  # type: ignore[union-attr]

    def pod_owner_of(self, namespace: str, name: str) -> tuple[str, str] | None:
        """(kind, name) of the resource a kept pod is filed under (for a DELETED that carries only the name)."""
        for key in self._filed.get(("Pod", namespace, name), ()):
            return str(key[0]), str(key[2])
        return None

    def names(self, kind: str) -> list[tuple[str, str]]:
        """(namespace, name) of every object of a kind the watches have shown (for the first reconciles)."""
        return [(ns, name) for (k, ns, name) in self._filed if k == kind]

    def servers_of_job(self, namespace: str, job: str) -> list[str]:
        """The ModelServers that serve this TrainingJob's model (``spec.model.trainingJobRef``)."""
        return sorted(self._indexes["ModelServer"].get(("job", namespace, job)) or ())

    def wrote(self, body: Mapping[str, Any], by: Key | None = None) -> None:
        """The API's answer to a create or a patch: newer than the watch's copy until it catches up.

        ``by``: the resource whose reconcile made the write (see :meth:`written_by`)."""
        self._remember(body, deleted=False, by=by)

    def written_by(self, body: Mapping[str, Any]) -> Key | None:
        """Whose own write a watched object shows, if it shows exactly one (the resourceVersion
        the write's answer had): call it before :meth:`put`, which forgets the write.

        Such an event is the echo of the write. The reconcile that made it planned on the state
        the event shows (what it read, plus what it wrote), so reconciling that resource again
        for it would only plan the same thing again: the router queues no reconcile of a
        TrainingJob for its own echoes (``watches.py``, ``ECHO_FREE``). Other resources the
        object concerns still hear of it (a pipeline its child's status, a TrainingJob the
        pipeline created)."""
        slot = self._slot(body)
        if slot is None:
            return None
        write = slot[0].get(slot[1])
        if write is None or write.deleted or write.by is None or write.rv != _rv(body):
            return None
        return write.by

    def deleted(self, body: Mapping[str, Any]) -> None:
        """An object the operator deleted: going away, whatever the watch still says."""
        self._remember(body, deleted=True)

    def forget(self, body: Mapping[str, Any]) -> None:
        """The watch saw it deleted: nothing of it is kept."""
        slot = self._slot(body)
        if slot is not None:
            slot[0].pop(slot[1], None)

    def _remember(self, body: Mapping[str, Any], deleted: bool, by: Key | None = None) -> None:
        slot = self._slot(body, create=True)
        if slot is not None:
            slim = slim_pod(body) if body.get("kind") == "Pod" else slim_object(body)
            slot[0][slot[1]] = _Write(pack(slim), self.clock(), deleted, _rv(body), by)

    def _slot(self, body: Mapping[str, Any], create: bool = False) -> tuple[dict[Any, _Write], Any] | None:
        """Where the own write of this object is kept: (the mapping, its key); None for a pod of no owner.

        A pod's write is kept under the resource that reads it (as the pods' index keys it), any
        other object's under (kind, namespace, name).
        """
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        if body.get("kind") != "Pod":
            return self._writes, (str(body.get("kind") or ""), namespace, name)
        owner = pod_owner(body)
        if owner is None:
            return None
        key = (owner[0], namespace, owner[1])
        writes = self._pod_writes.setdefault(key, {}) if create else self._pod_writes.get(key)
        return (writes, name) if writes is not None else None

    # ------------------------------------------------------------------ reading

    def _index(self, kind: str) -> Mapping[Any, Mapping[str, bytes]]:
        return self._indexes[kind]

    def _one(self, kind: str, key: Any) -> dict[str, Any] | None:
        for value in (self._index(kind).get(key) or {}).values():
            return unpack(value)
        return None

    def _merge(self, seen: dict[str, Any] | None, write: _Write | None, drop: Callable[[], object]) -> dict[str, Any] | None:
        """The newer of the watch's copy and the operator's own write (which is dropped once stale)."""
        if write is None:
            return seen
        if self.clock() - write.at > self.ttl:
            drop()
            return seen
        if write.deleted:
            if seen is None:
                drop()
                return None
            body = write.body if _at_least(write.rv, _rv(seen)) else seen
            if not (body.get("metadata") or {}).get("deletionTimestamp"):
                body = {**body, "metadata": {**body["metadata"], "deletionTimestamp": "deleting"}}
            return body
        if seen is not None and _at_least(_rv(seen), write.rv):
            drop()
            return seen
        return write.body

    def get(self, kind: str, namespace: str, name: str) -> dict[str, Any] | None:
        """A TrainingJob, ModelServer, ModelPipeline, or a managed Deployment or Service."""
        key = (kind, namespace, name)
        return self._merge(self._one(kind, key), self._writes.get(key), lambda: self._writes.pop(key, None))

    def owned(self, kind: str, namespace: str, owner_uid: str) -> list[dict[str, Any]]:
        """The TrainingJobs or ModelServers a resource with this uid controls (a pipeline's children)."""
        found = {
            name: unpack(packed)
            for name, packed in (self._index(kind).get(("owner", kind, namespace, owner_uid)) or {}).items()
        }
        for (k, ns, name), write in list(self._writes.items()):
            if k == kind and ns == namespace and name not in found:
                written = write.body
                ref = controller_ref(written)
                if ref is not None and ref.get("uid") == owner_uid:
                    found[name] = written
        out = []
        for name in sorted(found):
            merged = self.get(kind, namespace, name) if (kind, namespace, name) in self._writes else found[name]
            if merged is not None:
                out.append(merged)
        return out

    def pods(self, owner_kind: str, namespace: str, owner_name: str) -> list[dict[str, Any]]:
        """The pods a TrainingJob's or ModelServer's reconcile reads, by name."""
        seen = {
            name: unpack(packed)
            for name, packed in (self._index("Pod").get((owner_kind, namespace, owner_name)) or {}).items()
        }
        key = (owner_kind, namespace, owner_name)
        writes = self._pod_writes.get(key) or {}
        out: dict[str, dict[str, Any]] = dict(seen)
        for name, write in list(writes.items()):
            merged = self._merge(seen.get(name), write, functools.partial(writes.pop, name, None))
            if merged is None:
                out.pop(name, None)
            else:
                out[name] = merged
        if not writes:
            self._pod_writes.pop(key, None)
        return [out[name] for name in sorted(out)]

    def pending_writes(self) -> int:
        """Own writes the watch has not shown yet (a gauge for tests and metrics)."""
        return len(self._writes) + sum(len(w) for w in self._pod_writes.values())


# ---------------------------------------------------------------------- index keys


def index_keys(body: Mapping[str, Any]) -> dict[Any, dict[str, Any]] | None:
    """Where an object is filed in its kind's index, with its slim copy (None: not kept)."""
    kind = str(body.get("kind") or "")
    if kind == "Pod":
        return pod_keys(body)
    if kind in ("Deployment", "Service"):
        return workload_keys(body)
    return resource_keys(body)


def resource_keys(body: Mapping[str, Any]) -> dict[Any, dict[str, Any]]:
    """A TrainingJob's, ModelServer's or ModelPipeline's entries in its kind's index."""
    meta = body.get("metadata") or {}
    kind, namespace = str(body.get("kind")), str(meta.get("namespace"))
    slim = slim_object(body)
    keys: dict[Any, dict[str, Any]] = {(kind, namespace, str(meta.get("name"))): slim}
    ref = controller_ref(body)
    if ref is not None and ref.get("uid"):
        keys[("owner", kind, namespace, str(ref["uid"]))] = slim
    if kind == "ModelServer":
        job = (((body.get("spec") or {}).get("model") or {}).get("trainingJobRef") or {}).get("name")
        if job:
            keys[("job", namespace, str(job))] = slim
    return keys


def pod_keys(body: Mapping[str, Any]) -> dict[Any, dict[str, Any]] | None:
    """A managed pod's entry in the pods' index, under the resource that reads it."""
    owner = pod_owner(body)
    if owner is None:
        return None
    return {(owner[0], str((body.get("metadata") or {}).get("namespace")), owner[1]): slim_pod(body)}


def workload_keys(body: Mapping[str, Any]) -> dict[Any, dict[str, Any]]:
    """A managed Deployment's or Service's entry in its kind's index."""
    meta = body.get("metadata") or {}
    return {(str(body.get("kind")), str(meta.get("namespace")), str(meta.get("name"))): slim_object(body)}
