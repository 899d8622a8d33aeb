"""The kopf handlers: the only module importing kopf, and it only translates events into work.

Every handler here is an ``on.event`` handler or an index: none of them changes anything, so
kopf stores nothing on our objects (no finalizers, no diff-base or progress annotations on
pods), and a stopped operator never blocks ``kubectl delete`` (kopf-craft P4). Each event
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

kopf lists every watched resource when it starts, so an operator restart reconciles every
resource once: the world is re-observed and nothing depends on what the previous process
had in memory.
"""

from __future__ import annotations

import asyncio

import logging
from typing import Any

import kopf

from mlvisor.operator import api
from mlvisor.operator.kube import client
from mlvisor.operator.kube import settings as operator_settings
from mlvisor.operator.kube.controllers import PIPELINE, SERVING, TRAINING, Controllers, retry_delay, warm_up_preflight
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.queue import WorkQueue
from mlvisor.operator.reconcile import plan as p

logger = logging.getLogger(__name__)

#: mlvisor's own registry: importing this module never touches kopf's default one.
registry = kopf.OperatorRegistry()

MANAGED = {p.LABEL_MANAGED_BY: p.MANAGED_BY}


def _options(memo: Any) -> operator_settings.Options:
    return memo.get("options") or operator_settings.Options()


@kopf.on.login(registry=registry)
def login(**_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same configuration the controllers use (in-cluster or kubeconfig)."""
    configuration = client.load_configuration()
    header = configuration.get_api_key_with_prefix("BearerToken") or configuration.get_api_key_with_prefix(
        "authorization"
    )
    scheme, token = (header.split(" ", 1) + [None])[:2] if header else (None, None)
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
    kube = client.Kube(client.load_configuration(), timeout=(options.watch_connect_timeout, options.request_timeout))
    controllers = Controllers(kube, options.config, metrics)
    memo.kube = kube
    memo.metrics = metrics
    memo.queue = WorkQueue(controllers.reconcile, retryable=retry_delay)
    # The pre-flight check needs scikit-learn: import it now (seconds), not in the first reconcile.
    await asyncio.to_thread(warm_up_preflight)
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
        kube.close()


@kopf.index(api.GROUP, api.VERSION, "modelservers", registry=registry)
def servers_by_job(namespace: str, name: str, spec: Any, **_: Any) -> dict[tuple[str, str], str] | None:
    """(namespace, TrainingJob name) -> ModelServer names that serve that job's model."""
    ref = ((spec.get("model") or {}).get("trainingJobRef") or {}).get("name")
    return {(namespace, ref): name} if ref else None


def _trigger_pipeline(memo: kopf.Memo, namespace: str, meta: Any) -> None:
    """A pipeline's child changed: its pipeline reconciles too (controller ownerReference)."""
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == PIPELINE and str(ref.get("apiVersion", "")).startswith(api.GROUP):
            memo.queue.trigger((PIPELINE, namespace, ref["name"]))


@kopf.on.event(api.GROUP, api.VERSION, "modelpipelines", registry=registry)
async def model_pipeline_event(namespace: str, name: str, memo: kopf.Memo, **_: Any) -> None:
    memo.queue.trigger((PIPELINE, namespace, name))


@kopf.on.event(api.GROUP, api.VERSION, "trainingjobs", registry=registry)
async def training_job_event(
    namespace: str, name: str, body: Any, meta: Any, memo: kopf.Memo, servers_by_job: kopf.Index[Any, str],
    type: str | None = None, **_: Any
) -> None:
    memo.queue.trigger((TRAINING, namespace, name))
    _trigger_pipeline(memo, namespace, meta)
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
async def model_server_event(namespace: str, name: str, meta: Any, memo: kopf.Memo, **_: Any) -> None:
    memo.queue.trigger((SERVING, namespace, name))
    _trigger_pipeline(memo, namespace, meta)


@kopf.on.event("v1", "pods", labels=MANAGED, registry=registry)
async def pod_event(namespace: str, labels: Any, meta: Any, memo: kopf.Memo, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == TRAINING and str(ref.get("apiVersion", "")).startswith(api.GROUP):
            memo.queue.trigger((TRAINING, namespace, ref["name"]))
            return
    if labels.get(p.LABEL_COMPONENT) == "server" and labels.get(p.LABEL_INSTANCE):
        memo.queue.trigger((SERVING, namespace, labels[p.LABEL_INSTANCE]))


@kopf.on.event("apps", "v1", "deployments", labels=MANAGED, registry=registry)
async def deployment_event(namespace: str, meta: Any, memo: kopf.Memo, **_: Any) -> None:
    for ref in meta.get("ownerReferences") or []:
        if ref.get("controller") and ref.get("kind") == SERVING:
            memo.queue.trigger((SERVING, namespace, ref["name"]))
