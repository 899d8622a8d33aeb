"""What the operator watches, and which reconciles each watch event asks for.

Six informers (``informer.py``) per served namespace (or one each cluster-wide) feed the store
(``store.py``) and the work queue (``queue.py``): mlvisor's three kinds, and the pods,
Deployments and Services mlvisor manages, selected by its ``app.kubernetes.io/managed-by``
label on the server side. Each event names the resource whose state it may change, and that
resource is queued for a level-triggered reconcile (``controllers.py``):

- a TrainingJob, ModelServer or ModelPipeline event -> reconcile it; a TrainingJob or
  ModelServer a pipeline controls -> reconcile that pipeline too (the tree's child exits
  and successes reach their parent this way);
- a pod event -> reconcile its TrainingJob (controller ownerReference) or its ModelServer
  (``app.kubernetes.io/instance`` of a server pod; server pods are owned by ReplicaSets);
- a Deployment event -> reconcile its ModelServer (rollout progress, readiness);
- a TrainingJob whose model version or phase changed -> reconcile the ModelServers that
  reference it (the store files ModelServers by the job they name).

An event that shows exactly a write a TrainingJob's reconcile made (the resourceVersion of the
write's answer: a pod it created, the status it wrote) queues no reconcile of that TrainingJob:
the reconcile planned on the state the event shows, and its store already holds the write
(``Store.written_by``). The training planner is a fixed point of its own writes: planning again
on the world its plan left changes nothing, also after status writes that were lost while the
plan's pods stood (the planner's property test checks exactly that). Others still hear of it
(the pipeline of a job whose status changed, a job a pipeline created). Counted as
``result="echo"``. ModelServers and ModelPipelines are still queued for their own echoes: their
planners have no such proof yet, and there are few of them. controller-runtime operators get the
same saving for status echoes from a generation-changed predicate, which also drops everyone
else's status changes; this drops only the operator's own.

An event that changes nothing a reconcile reads (an annotation, the timestamps of the
scheduler's repeated Unschedulable condition on a pending pod) queues nothing: ``predicates.py`` keeps a hash of what the
reconcilers read of each object and drops events that leave it unchanged, so such a no-op
change costs no API call (counted as ``mlvisor_watch_events_total{result="unchanged"}``).

No reconcile runs until every informer has listed its kind once (:meth:`Watches.run` then
queues every resource the lists showed): a reconcile never sees half the world, and an
operator restart reconciles every resource once, re-observing the world rather than trusting
anything the previous process had in memory.

No kopf here: this module and the informers are plain asyncio over ``client.Kube``.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from mlvisor import api
from mlvisor.api.labels import LABEL_MANAGED_BY, MANAGED_BY
from mlvisor.operator.kube.client import Kube
from mlvisor.operator.kube.informer import Informer, Kind
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.observe import controller_ref
from mlvisor.operator.kube.predicates import Changes, pod_projection, resource_projection
from mlvisor.operator.kube.queue import WorkQueue
from mlvisor.operator.kube.store import Store, pod_owner
from mlvisor.operator.reconcilers import PIPELINE, SERVING, TRAINING

#: Kinds whose planner reaches, in one reconcile, the state a reconcile on the echo of its own
#: writes would plan (tests/unit/operator/planners/test_training.py's property test).
ECHO_FREE = frozenset({TRAINING})

logger = logging.getLogger(__name__)

MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}
_GROUP = f"/apis/{api.GROUP}/{api.VERSION}"

#: Every kind the operator watches, in the order the informers start.
KINDS = (
    Kind(TRAINING, _GROUP, "trainingjobs"),
    Kind(SERVING, _GROUP, "modelservers"),
    Kind(PIPELINE, _GROUP, "modelpipelines"),
    Kind("Pod", "/api/v1", "pods", MANAGED),
    Kind("Deployment", "/apis/apps/v1", "deployments", MANAGED),
    Kind("Service", "/api/v1", "services", MANAGED),
)


class Router:
    """Watch events -> the store, and the reconciles they ask for (pure bookkeeping, no I/O)."""

    def __init__(self, store: Store, queue: WorkQueue, metrics: Metrics) -> None:
        self.store = store
        self.queue = queue
        self.metrics = metrics
        self.changes = Changes()
        self.live = False
        """False until every informer has synced: events then only fill the store."""
        self._model_versions: dict[tuple[str, str], Any] = {}
        self._echo: tuple[str, str, str] | None = None
        """Whose own write the event being routed shows (:meth:`Store.written_by`), if any."""

    def __call__(self, type: str, body: dict[str, Any]) -> None:
        kind = str(body.get("kind") or "")
        deleted = type == "DELETED"
        meta = body.get("metadata") or {}
        namespace, name = str(meta.get("namespace")), str(meta.get("name"))
        # A relist's DELETED of an object that vanished unseen carries only its name: its owner
        # comes from the copy the store kept, read before that copy goes.
        owner = pod_owner(body) if kind == "Pod" else None
        if kind == "Pod" and owner is None:
            owner = self.store.pod_owner_of(namespace, name)
        # The echo of a TrainingJob's own write (read before the store forgets the write).
        writer = None if deleted else self.store.written_by(body)
        self._echo = writer if writer is not None and writer[0] in ECHO_FREE else None
        if deleted:
            self.store.drop(body)
        else:
            self.store.put(body)
        if kind == "Service":
            return  # read by the server reconcile, never a reason for one
        if kind == "Deployment":
            ref = controller_ref(body)
            if self.live and ref is not None and ref.get("kind") == SERVING:
                self._trigger((SERVING, namespace, str(ref["name"])))
            return
        projection = pod_projection(body) if kind == "Pod" else resource_projection(body)
        changed = self.changes.changed(body, projection, deleted=deleted)
        self.metrics.watch_events.labels(kind, ("echo" if self._echo else "queued") if changed else "unchanged").inc()
        if kind == TRAINING:
            self._job_changed(namespace, name, body, deleted)
        if not changed or not self.live:
            return
        if kind == "Pod":
            if owner is not None:
                self._trigger((owner[0], namespace, owner[1]))
            return
        self._trigger((kind, namespace, name))
        self._trigger_pipeline(namespace, body)

    def _trigger(self, key: tuple[str, str, str]) -> None:
        """Queue a reconcile of ``key``, unless the event is the echo of that resource's own write."""
        if key != self._echo:
            self.queue.trigger(key)

    def _job_changed(self, namespace: str, name: str, body: dict[str, Any], deleted: bool) -> None:
        """Servers care about a new model version, and about the job appearing, failing or going
        away (their Ready condition says so: TrainingJobNotFound, TrainingJobFailed)."""
        status = body.get("status") or {}
        what = None if deleted else ((status.get("model") or {}).get("version"), status.get("phase"))
        key = (namespace, name)
        if self._model_versions.get(key, ()) == what:
            return
        if deleted:
            self._model_versions.pop(key, None)
        else:
            self._model_versions[key] = what
        if self.live:
            for server in self.store.servers_of_job(namespace, name):
                self._trigger((SERVING, namespace, server))

    def _trigger_pipeline(self, namespace: str, body: dict[str, Any]) -> None:
        """A pipeline's child changed: its pipeline reconciles too (controller ownerReference)."""
        ref = controller_ref(body)
        if ref is not None and ref.get("kind") == PIPELINE and str(ref.get("apiVersion", "")).startswith(api.GROUP):
            self._trigger((PIPELINE, namespace, str(ref["name"])))

    def go_live(self) -> int:
        """Every informer has synced: from now on events queue reconciles, and every resource
        the lists showed is reconciled once. Returns how many were queued."""
        self.live = True
        queued = 0
        for kind in (TRAINING, SERVING, PIPELINE):
            for namespace, name in self.store.names(kind):
                self.queue.trigger((kind, namespace, name))
                queued += 1
        return queued


class Watches:
    """The informers of every kind in every served namespace, and the moment they are all synced."""

    def __init__(
        self,
        kube: Kube,
        router: Router,
        namespaces: Sequence[str] = (),
        *,
        server_timeout: int = 300,
        client_timeout: float = 330.0,
    ) -> None:
        self.router = router
        self.informers = [
            Informer(kube, kind, namespace, router, server_timeout=server_timeout, client_timeout=client_timeout)
            for namespace in (namespaces or (None,))
            for kind in KINDS
        ]
        self.synced = asyncio.Event()

    async def run(self) -> None:
        """Run every informer until cancelled; go live once all of them have listed their kind."""
        tasks = [asyncio.create_task(informer.run(), name=repr(informer)) for informer in self.informers]
        try:
            await asyncio.gather(*(informer.synced.wait() for informer in self.informers))
            queued = self.router.go_live()
            self.synced.set()
            logger.info("watches synced: %d resources queued for a first reconcile", queued)
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
