"""The kopf handlers: the operator process's life (log in, start, stop, health), nothing per object.

kopf runs the process: it logs in, runs the start-up and clean-up handlers below, serves the
liveness endpoint (``/healthz``, with the watches' state from :func:`watches_probe`) and stops
on SIGTERM. The watching is the operator's own (``watches.py``: a list-then-watch informer per
kind, feeding the watch-fed store and the work queue), started here and stopped here.

Until this change kopf watched every kind and ran an index function and an ``on.event`` handler
per event; its per-event machinery (a task and a memory per object, a thread hop for every
synchronous index function) was a third of the operator's samples while creating 1,000
TrainingJobs and much of its resident set (docs/operator.md, "The event pump").

kopf stores nothing on our objects (no finalizers, no annotations: it has no resource handler),
so a stopped operator never blocks ``kubectl delete`` (docs/operator.md, "No finalizers").
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

import kopf

from mlvisor.operator.kube import client, connection
from mlvisor.operator.kube import settings as operator_settings
from mlvisor.operator.kube.controllers import Controllers, retry_delay, warm_up_preflight
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.queue import WorkQueue
from mlvisor.operator.kube.store import Store
from mlvisor.operator.kube.watches import Router, Watches

logger = logging.getLogger(__name__)

#: mlvisor's own registry: importing this module never touches kopf's default one.
registry = kopf.OperatorRegistry()


def _options(memo: Any) -> operator_settings.Options:
    return memo.get("options") or operator_settings.Options()


def _connection(memo: Any) -> connection.Connection:
    """The login ``mlvisor operator`` made before kopf started (it decides whether ``kubernetes`` loads)."""
    found: connection.Connection | None = memo.get("connection")
    if found is None:
        found = memo.connection = connection.connect()
    return found


@kopf.on.login(registry=registry)
def login(memo: kopf.Memo, **_: Any) -> kopf.ConnectionInfo:
    """Log kopf in with the same connection the controllers use (in-cluster or kubeconfig)."""
    conn = _connection(memo)
    scheme, _space, token = (conn.authorization() or "").partition(" ")
    return kopf.ConnectionInfo(
        server=conn.host,
        ca_path=conn.ca_file,
        ca_data=conn.ca_data,
        insecure=conn.insecure,
        scheme=scheme or None,
        token=token or None,
        certificate_path=conn.cert_file,
        private_key_path=conn.key_file,
    )


@kopf.on.startup(registry=registry)
async def start(settings: kopf.OperatorSettings, memo: kopf.Memo, **_: Any) -> None:
    options = _options(memo)
    operator_settings.apply_settings(settings, options)
    metrics = Metrics()
    if options.metrics_port:
        metrics.serve(options.metrics_port)
    kube = client.Kube(_connection(memo), timeout=(options.watch_connect_timeout, options.request_timeout),
                       on_request=lambda verb: metrics.api_requests.labels(verb).inc())
    store = Store()
    controllers = Controllers(kube, options.config, metrics, store=store)
    memo.store = store
    memo.kube = kube
    memo.metrics = metrics
    memo.queue = WorkQueue(controllers.reconcile, retryable=retry_delay, workers=options.reconcile_workers)
    memo.judge = controllers.judge
    # The pre-flight helper imports scikit-learn (seconds): start it now, not in the first reconcile;
    # it exits again when idle, and the operator itself never imports scikit-learn.
    await asyncio.to_thread(warm_up_preflight, controllers.judge)
    watches = Watches(
        kube, Router(store, memo.queue, metrics), options.namespaces,
        server_timeout=round(options.watch_server_timeout), client_timeout=options.watch_client_timeout,
    )
    memo.watches = watches
    memo.watching = asyncio.create_task(watches.run(), name="watches")
    logger.info(
        "mlvisor operator started: %s",
        ", ".join(options.namespaces) if options.namespaces else "all namespaces",
    )


@kopf.on.cleanup(registry=registry)
async def stop(memo: kopf.Memo, **_: Any) -> None:
    watching: asyncio.Task[None] | None = memo.get("watching")
    if watching is not None:
        watching.cancel()
        await asyncio.gather(watching, return_exceptions=True)
    queue: WorkQueue | None = memo.get("queue")
    if queue is not None:
        await queue.close()
    kube: client.Kube | None = memo.get("kube")
    if kube is not None:
        await kube.close()
    judge = memo.get("judge")
    if judge is not None:
        await asyncio.to_thread(judge.close)


@kopf.on.probe(id="watches", registry=registry)
async def watches_probe(memo: kopf.Memo, **_: Any) -> dict[str, Any]:
    """/healthz also says whether every watch has listed its kind, and the own writes not yet seen."""
    watches: Watches | None = memo.get("watches")
    store: Store | None = memo.get("store")
    return {
        "synced": bool(watches is not None and watches.synced.is_set()),
        "pendingWrites": store.pending_writes() if store is not None else 0,
    }
