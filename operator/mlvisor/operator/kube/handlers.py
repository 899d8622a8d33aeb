"""The kopf handlers: the only module importing kopf, and it only translates events into work.

Every handler here is an ``on.event`` handler or an index: none of them changes anything, so
kopf stores nothing on our objects (no finalizers, no diff-base or progress annotations on
pods), and a stopped operator never blocks ``kubectl delete`` (docs/operator.md, "No finalizers"). Each event
names the resource whose state it may change, and that resource is queued for a
level-triggered reconcile (``controllers.py``) on the per-resource work queue (``queue.py``),
which also carries the planners' ``requeue_after`` (back-off waits, deadlines, TTLs):

- a TrainingJob, ModelServer or ModelPipeline event -> reconcile it; a TrainingJob or
  ModelServer a pipeline controls -> reconcile that pipeline too (the tree's child exits
  and successes reach their parent this way);
- a pod event -> reconcile its TrainingJob (controller ownerReference) or its ModelServer
  (``app.kubernetes.io/instance`` of a server pod; server pods are owned by ReplicaSets);
- a Deployment event -> reconcile its ModelServer (rollout progress, readiness);
- a TrainingJob whose status.model changed -> reconcile the ModelServers that reference it
  (found through an index of ModelServers by referenced job).

An event that changes nothing a reconcile reads (an annotation, the scheduler's Unschedulable
condition on a pending pod) queues nothing: ``predicates.py`` keeps a hash of what the
reconcilers read of each object and drops events that leave it unchanged, so such a no-op
change costs no API call (counted as ``mlvisor_watch_events_total{result="unchanged"}``).

What a reconcile reads comes from memory (``store.py``): the index handlers below keep a slim
copy of every TrainingJob, ModelServer and ModelPipeline, and of every managed pod, Deployment
and Service, fed by the same watches. kopf runs no handler (so queues no reconcile) until every
indexed kind has been listed once, so a reconcile never sees half the world.

kopf lists every watched resource when it starts, so an operator restart reconciles every
resource once: the world is re-observed and nothing depends on what the previous process
had in memory.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from mlvisor import api
from mlvisor.api.labels import LABEL_MANAGED_BY, MANAGED_BY
from mlvisor.operator.kube import client
from mlvisor.operator.kube import settings as operator_settings
from mlvisor.operator.kube.controllers import Controllers, retry_delay, warm_up_preflight
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.observe import controller_ref
from mlvisor.operator.kube.predicates import Changes, pod_projection, resource_projection
from mlvisor.operator.kube.queue import WorkQueue
from mlvisor.operator.kube.store import Store, pod_keys, pod_owner, resource_keys, workload_keys
from mlvisor.operator.reconcilers import PIPELINE, SERVING, TRAINING

logger = logging.getLogger(__name__)

#: mlvisor's own registry: importing this module never touches kopf's default one.
registry = kopf.OperatorRegistry()

MANAGED = {LABEL_MANAGED_BY: MANAGED_BY}


def _options(memo: Any) -> operator_settings.Options:
    return memo.get("options") or operator_settings.Options()


@kopf.on.login(registry=registry)
def login(**_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same configuration the controllers use (in-cluster or kubeconfig)."""
    configuration = client.load_configuration()
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = ([*header.split(" ", 1), None])[:2] if header else (None, None)
    if token is None:
        scheme, token = None, scheme
    return kopf.ConnectionInfo(
        server=configuration.host,
        ca_path=configuration.ssl_ca_cert,
        insecure=not configuration.verify_ssl,
        username=configuration.username or None,
        password=configuration.password or None,
        scheme=scheme,
        token=token,
        certificate_path=configuration.cert_file,
        private_key_path=configuration.key_file,
    )


@kopf.on.startup(registry=registry)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options = _options(memo)
    operator_settings.apply_settings(settings, options)
    metrics = Metrics()
    if options.metrics_port:
        metrics.serve(options.metrics_port)
    kube = client.Kube(client.load_configuration(), timeout=(options.watch_connect_timeout, options.request_timeout),
                       on_request=lambda verb: metrics.api_requests.labels(verb).inc())
    store = Store()
    controllers = Controllers(kube, options.config, metrics, store=store)
    memo.store = store
    memo.kube = kube
    memo.metrics = metrics
    memo.queue = WorkQueue(controllers.reconcile, retryable=retry_delay, workers=options.reconcile_workers)
    memo.changes = Changes()
    memo.judge = controllers.judge
    # The pre-flight helper imports scikit-learn (seconds): start it now, not in the first reconcile;
    # it exits again when idle, and the operator itself never imports scikit-learn.
    await asyncio.to_thread(warm_up_preflight, controllers.judge)
    logger.info(
        "mlvisor operator started: %s",
        ", ".join(options.namespaces) if options.namespaces else "all namespaces",
    )


@kopf.on.cleanup(registry=registry)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    queue: WorkQueue | None = memo.get("queue")
    if queue is not None:
        await queue.close()
    kube: client.Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()
    judge = memo.get("judge")
    if judge is not None:
        await asyncio.to_thread(judge.close)


@kopf.index(api.GROUP, api.VERSION, "modelservers", registry=registry)
def servers_by_job(namespace: str, name: str, spec: Any, **_: Any) -> dict[tuple[str, str], str] | None:
    """(namespace, TrainingJob name) -> ModelServer names that serve that job's model."""
    ref = ((spec.get("model") or {}).get("trainingJobRef") or {}).get("name")
    return {(namespace, ref): name} if ref else None


# The store's indexes (store.INDEXES names them): one slim copy per object, replaced on every event.


@kopf.index(api.GROUP, api.VERSION, "trainingjobs", registry=registry)
def trainingjobs_index(body: Any, **_: Any) -> dict[Any, Any]:
    return resource_keys(body)


@kopf.index(api.GROUP, api.VERSION, "modelservers", registry=registry)
def modelservers_index(body: Any, **_: Any) -> dict[Any, Any]:
    return resource_keys(body)


@kopf.index(api.GROUP, api.VERSION, "modelpipelines", registry=registry)
def modelpipelines_index(body: Any, **_: Any) -> dict[Any, Any]:
    return resource_keys(body)


@kopf.index("v1", "pods", labels=MANAGED, registry=registry)
def pods_index(body: Any, **_: Any) -> dict[Any, Any] | None:
    return pod_keys(body)


@kopf.index("apps", "v1", "deployments", labels=MANAGED, registry=registry)
def deployments_index(body: Any, **_: Any) -> dict[Any, Any]:
    return workload_keys(body)


@kopf.index("v1", "services", labels=MANAGED, registry=registry)
def services_index(body: Any, **_: Any) -> dict[Any, Any]:
    return workload_keys(body)


def _to_store(memo: kopf.Memo, body: Any, type: str | None, indexes: Any) -> None:
    """Every event's first step: hand kopf's indexes to the store (the first time; kopf gives them
    to handlers only) and, for a deletion, drop the operator's own writes of that object."""
    memo.store.bind(indexes)
    if type == "DELETED":
        memo.store.forget(body)


def _changed(memo: kopf.Memo, kind: str, body: Any, projection: Any, type: str | None, indexes: Any) -> bool:
    """False for an event that changes nothing a reconcile reads (predicates.py): it is dropped."""
    _to_store(memo, body, type, indexes)
    changed = memo.changes.changed(body, projection(body), deleted=type == "DELETED")
    memo.metrics.watch_events.labels(kind, "queued" if changed else "unchanged").inc()
    return bool(changed)


def _trigger_pipeline(memo: kopf.Memo, namespace: str, body: Any) -> None:
    """A pipeline's child changed: its pipeline reconciles too (controller ownerReference)."""
    ref = controller_ref(body)
    if ref is not None and ref.get("kind") == PIPELINE and str(ref.get("apiVersion", "")).startswith(api.GROUP):
        memo.queue.trigger((PIPELINE, namespace, ref["name"]))


@kopf.on.event(api.GROUP, api.VERSION, "modelpipelines", registry=registry)
async def model_pipeline_event(
    namespace: str, name: str, body: Any, memo: kopf.Memo, type: str | None = None, **indexes: Any
) -> None:
    if not _changed(memo, PIPELINE, body, resource_projection, type, indexes):
        return
    memo.queue.trigger((PIPELINE, namespace, name))


@kopf.on.event(api.GROUP, api.VERSION, "trainingjobs", registry=registry)
async def training_job_event(
    namespace: str,
    name: str,
    body: Any,
    memo: kopf.Memo,
    servers_by_job: kopf.Index[Any, str],
    type: str | None = None,
    **indexes: Any,
) -> None:
    if not _changed(memo, TRAINING, body, resource_projection, type, indexes):
        return
    memo.queue.trigger((TRAINING, namespace, name))
    _trigger_pipeline(memo, namespace, body)
    status = body.get("status") or {}
    version = (status.get("model") or {}).get("version")
    # Servers care about a new model version, and about the job appearing, failing or going
    # away (their Ready condition says so: TrainingJobNotFound, TrainingJobFailed).
    what = None if type == "DELETED" else (version, status.get("phase"))
    seen: dict[tuple[str, str], Any] = memo.setdefault("model_versions", {})
    if seen.get((namespace, name), ()) != what:
        seen[(namespace, name)] = what
        for server in servers_by_job.get((namespace, name), ()):
            memo.queue.trigger((SERVING, namespace, server))


@kopf.on.event(api.GROUP, api.VERSION, "modelservers", registry=registry)
async def model_server_event(
    namespace: str, name: str, body: Any, memo: kopf.Memo, type: str | None = None, **indexes: Any
) -> None:
    if not _changed(memo, SERVING, body, resource_projection, type, indexes):
        return
    memo.queue.trigger((SERVING, namespace, name))
    _trigger_pipeline(memo, namespace, body)


@kopf.on.event("v1", "pods", labels=MANAGED, registry=registry)
async def pod_event(
    namespace: str, body: Any, memo: kopf.Memo, type: str | None = None, **indexes: Any
) -> None:
    if not _changed(memo, "Pod", body, pod_projection, type, indexes):
        return
    owner = pod_owner(body)  # the resource the pods' index files it under
    if owner is not None:
        memo.queue.trigger((owner[0], namespace, owner[1]))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry)
async def deployment_event(
    namespace: str, body: Any, memo: kopf.Memo, type: str | None = None, **indexes: Any
) -> None:
    _to_store(memo, body, type, indexes)
    ref = controller_ref(body)
    if ref is not None and ref.get("kind") == SERVING:
        memo.queue.trigger((SERVING, namespace, ref["name"]))
