"""The cluster's backend of the reconcilers: a store to read, the API server to write.

The reconcile of each kind is :mod:`mlvisor.operator.reconcilers`, written once for this shell
and the local runtime. Here is what it reads and writes on a cluster, in kubebuilder's shape:
the resource and its children come from the watch-fed store (``store.py``: never an event's
copy, never a GET or a LIST), turned into observed values; the plan goes to the API server
(``adapter.py``). Nothing here decides anything a user could see: that is the planners' job.

What only the Kubernetes shell can say is said here: a resource whose body does not parse
(or that names a ``file://`` model, which a pod cannot reach) gets the InvalidSpec status and
one Warning Event per generation, and is then left alone until its spec changes; it never
becomes an exception that kopf would retry forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import orjson
import pydantic

from mlvisor import api
from mlvisor.api.labels import LABEL_COMPONENT, LABEL_INSTANCE, LABEL_NAME
from mlvisor.api.problems import describe_validation_error as describe
from mlvisor.operator import builders, reconcilers
from mlvisor.operator import plan as p
from mlvisor.operator.kube.adapter import Applied, PlanApplier, became_true
from mlvisor.operator.kube.client import ApiError, Kube
from mlvisor.operator.kube.logs import fields
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.observe import (
    is_controlled_by,
    observe_child,
    observe_deployment,
    observe_pod,
)
from mlvisor.operator.kube.preflight import PreflightError, PreflightJudge
from mlvisor.operator.kube.progress import ProgressPoller, with_progress
from mlvisor.operator.kube.store import Store
from mlvisor.operator.planners import conditions
from mlvisor.operator.reconcilers import SERVING, TRAINING, Invalid, Key, Read

logger = logging.getLogger(__name__)



def describe_validation_error(kind: str, error: pydantic.ValidationError, more: Sequence[str] = ()) -> str:
    """Every problem, in `mlvisor validate`'s words: 'spec.estimator.class: expected the dotted path ...'.

    ``more``: the pre-flight judge's problems of the spec's valid parts, listed after the
    schema's, as `mlvisor validate` lists them.
    """
    return f"invalid {kind}: " + "; ".join([*describe(error), *more]) + ". Fix the resource and apply it again."


#: Pre-flight verdicts kept per distinct spec (the most recent ones).
PREFLIGHT_CACHE_SIZE = 1024


def warm_up_preflight(judge: PreflightJudge) -> None:
    """Start the pre-flight helper (it imports scikit-learn: seconds) by judging a sample spec once.

    The helper exits again after ``judge.idle_seconds`` without work: the operator itself never
    imports scikit-learn (:mod:`mlvisor.operator.kube.preflight`).
    """
    started = time.monotonic()
    sample = {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier"},
        "search": {"grid": {"max_depth": [2]}, "scoring": "accuracy"},
    }
    try:
        problems = judge.judge(sample)
    except PreflightError as e:
        logger.warning("%s: TrainingJob specs will be judged when they come", e)
        return
    if problems:  # the sample is valid: anything else means this install is broken
        logger.warning("pre-flight check of a valid sample found problems: %s", "; ".join(problems))
    logger.info("pre-flight check ready in %.1f s", time.monotonic() - started)


def _wire_body(body: Mapping[str, Any]) -> dict[str, Any]:
    """What the api models parse: the resource without server-managed metadata noise."""
    meta = body.get("metadata") or {}
    keep = {k: meta[k] for k in ("name", "namespace", "uid", "generation", "labels", "annotations") if k in meta}
    out: dict[str, Any] = {"apiVersion": body.get("apiVersion"), "kind": body.get("kind"), "metadata": keep}
    if "spec" in body:
        out["spec"] = body["spec"]
    if body.get("status"):
        out["status"] = body["status"]
    return out


def parse_resource(
    model: type[api.TrainingJob] | type[api.ModelServer] | type[api.ModelPipeline], body: Mapping[str, Any],
    more: Sequence[str] = (),
) -> tuple[Any, str | None]:
    """(resource, None) or (None, message naming the field) when the spec is invalid.

    A status that does not parse (written by another version) is dropped with a warning
    rather than failing the resource: the spec is what the user is responsible for.
    ``more``: further problems to list when the spec is invalid (the pre-flight judge's
    problems of the spec's valid parts).
    """
    wire = _wire_body(body)
    try:
        return model.model_validate(wire), None
    except pydantic.ValidationError as e:
        if all((err.get("loc") or ("",))[0] == "status" for err in e.errors()):
            logger.warning("ignoring a status that does not parse: %s", e)
            wire.pop("status", None)
            try:
                return model.model_validate(wire), None
            except pydantic.ValidationError as e2:
                e = e2
        return None, describe_validation_error(str(body.get("kind")), e, more)


def _previous_status(model: type[pydantic.BaseModel], body: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        return None


class Controllers:
    """The reconcilers of one operator process; ``reconcile(key, since)`` is the work queue's callback.

    The reconcile itself is :func:`mlvisor.operator.reconcilers.reconcile`, the one the local
    runtime runs too; this class is its cluster backend: the :class:`~mlvisor.operator.reconcilers.Reader`
    over the watch-fed store, and (per reconcile, :class:`_ApiWriter`) the writer that carries
    plans out through the API and counts them in the metrics.
    """

    def __init__(
        self,
        kube: Kube,
        config: p.OperatorConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
        judge: PreflightJudge | None = None,
        store: Store | None = None,
    ) -> None:
        self.kube = kube
        self.store = store or Store()
        self.judge = judge or PreflightJudge()
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.applier = PlanApplier(kube, clock, self.store)
        # asked a little more often than the planner's poll period, so that its requeue always finds a due poll
        self.progress = ProgressPoller(0.8 * config.progress_poll_seconds)
        self._preflight: dict[tuple[str, bool], list[str]] = {}
        self._judging: dict[tuple[str, bool], asyncio.Future[list[str]]] = {}

    async def reconcile(self, key: Any, since: float | None) -> float | None:
        kind = key[0]
        try:
            result, again = await reconcilers.reconcile(self, _ApiWriter(self, since), key, self.clock, self.config)
        except Exception:
            self.metrics.reconciles.labels(kind, "error").inc()
            raise
        self.metrics.reconciles.labels(kind, result).inc()
        return again

    # ------------------------------------------------------------------ Reader: the resource

    async def resource(self, key: Key) -> Read | Invalid | None:
        kind, namespace, name = key
        body = self.store.get(kind, namespace, name)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return None
        resource: reconcilers.Resource | None
        if kind == TRAINING:
            resource, problem = await self.parse_training(body)
        elif kind == SERVING:
            resource, problem = self.parse_serving(body)
        else:
            resource, problem = parse_resource(api.ModelPipeline, body)
        if problem is not None or resource is None:
            return Invalid(kind, problem or f"invalid {kind}", body)
        return Read(resource, body)

    async def parse_training(self, body: Mapping[str, Any]) -> tuple[api.TrainingJob | None, str | None]:
        """(job, None), or (None, the InvalidSpec message): the schema's problems, then the
        pre-flight judge's problems of the parts of the spec that are valid, as `mlvisor validate`
        lists them."""
        job, problem = parse_resource(api.TrainingJob, body)
        if problem is not None and isinstance(body.get("spec"), Mapping):
            salvaged = await self._judged(body["spec"], salvage=True)
            if salvaged:
                _, problem = parse_resource(api.TrainingJob, body, salvaged)
        return job, problem

    @staticmethod
    def parse_serving(body: Mapping[str, Any]) -> tuple[api.ModelServer | None, str | None]:
        """(server, None), or (None, the InvalidSpec message): what only a cluster refuses is added
        to the schema's problems (a ``file://`` model, which pods cannot reach)."""
        server, problem = parse_resource(api.ModelServer, body)
        if problem is None and server.spec.model.uri and server.spec.model.uri.startswith("file://"):
            problem = (
                f"invalid ModelServer: spec.model.uri: {server.spec.model.uri} is a file:// URI, which pods "
                "cannot reach on Kubernetes. Use pvc://<claim>/<path>/ or spec.model.trainingJobRef."
            )
        if problem is None and server.spec.model.uri:
            # A URI the schema lets through but that names no version directory (a fuzzed
            # "pvc://0/" made the reconcile fail and retry for ever, with nothing in status).
            try:
                builders.version_of(server.spec.model.uri)
            except ValueError as e:
                problem = f"invalid ModelServer: spec.model.uri: {e}"
        return (server, None) if problem is None else (None, problem)

    # ------------------------------------------------------------------ Reader: TrainingJob

    async def workers(self, read: Read) -> list[p.ObservedPod]:
        meta = read.source["metadata"]
        pods = [pod for pod in self.store.pods(TRAINING, meta["namespace"], meta["name"])
                if is_controlled_by(pod, meta.get("uid"))]
        return with_progress([observe_pod(pod) for pod in pods], await self.progress.fetch(pods))

    async def preflight(self, read: Read) -> list[str]:
        """The trainer's pre-flight problems of a job that has not started (none once it runs).

        The operator image has scikit-learn, so a typo in a parameter, a bad value, an unknown
        scorer or a builtin dataset unfit for the estimator (a classifier on diabetes) becomes
        InvalidSpec before any pod exists, in the trainer's own words, which are `mlvisor
        validate`'s: the same judge (:func:`mlvisor.trainer.preflight.judge`), run in a
        short-lived helper process (:mod:`mlvisor.operator.kube.preflight`) so that the operator
        never holds scikit-learn. It judges the spec as written (the body the job was parsed
        from). CSV files are on the claims, which the operator cannot see: the trainer judges
        them, in the same words. Judged once per distinct spec, in a thread.
        """
        job = read.resource
        assert isinstance(job, api.TrainingJob)
        if job.status is not None and job.status.version is not None:
            return []
        return await self._judged(read.source["spec"])

    async def _judged(self, spec: Any, salvage: bool = False) -> list[str]:
        """The judge's problems of a raw spec (or, ``salvage``, of its valid parts), cached per spec.

        The verdict is a function of the spec alone, so jobs with the same spec (a thousand
        copies of one job, a pipeline's runs) share one judgement: creating 1,000 identical
        TrainingJobs made 1,000 round trips to the helper (3% of the operator's samples).
        """
        key = (orjson.dumps(spec, option=orjson.OPT_SORT_KEYS, default=str).decode(), salvage)
        if key in self._preflight:
            return self._preflight[key]
        # One judgement per spec in flight: a burst of copies waits for the first's answer
        # rather than queueing a round trip each behind the judge's lock (each of them holding
        # a thread of the default executor while it waits).
        judging = self._judging.get(key)
        if judging is None:
            judging = asyncio.ensure_future(asyncio.to_thread(self.judge.judge, spec, salvage))
            self._judging[key] = judging
            judging.add_done_callback(lambda done: self._judged_now(key, done))
        return await asyncio.shield(judging)

    def _judged_now(self, key: tuple[str, bool], done: asyncio.Future[list[str]]) -> None:
        del self._judging[key]
        if done.cancelled() or done.exception() is not None:
            return  # each waiter sees the failure; the next reconcile asks again
        if len(self._preflight) >= PREFLIGHT_CACHE_SIZE:
            self._preflight.pop(next(iter(self._preflight)))
        self._preflight[key] = done.result()

    # ------------------------------------------------------------------ Reader: ModelServer

    def server_children(self, read: Read) -> tuple[p.ObservedDeployment | None, list[p.ObservedPod]]:
        meta = read.source["metadata"]
        namespace, name = meta["namespace"], meta["name"]
        deployment_body = self.store.get("Deployment", namespace, name)
        deployment = (
            observe_deployment(deployment_body)
            if deployment_body is not None and is_controlled_by(deployment_body, meta.get("uid"))
            else None
        )
        assert isinstance(read.resource, api.ModelServer)
        pods = _selected(self.store.pods(SERVING, namespace, name), builders.server_selector(read.resource))
        return deployment, [observe_pod(pod) for pod in pods]

    def training_job(self, namespace: str, name: str) -> tuple[bool, api.TrainingJobStatus | None]:
        job = self.store.get(TRAINING, namespace, name)
        return job is not None, _previous_status(api.TrainingJobStatus, job) if job is not None else None

    # ------------------------------------------------------------------ Reader: ModelPipeline

    def pipeline_children(self, read: Read) -> list[p.ObservedResource]:
        meta = read.source["metadata"]
        namespace, name, uid = meta["namespace"], meta["name"], meta.get("uid")
        assert isinstance(read.resource, api.ModelPipeline)
        jobs = _selected(self.store.owned(TRAINING, namespace, uid), builders.pipeline_training_selector(read.resource))
        observed = [observe_child(job, api.TrainingJobStatus) for job in jobs if is_controlled_by(job, uid)]
        server = self.store.get(SERVING, namespace, name)
        if server is not None and is_controlled_by(server, uid):
            observed.append(observe_child(server, api.ModelServerStatus))
        elif server is None and self._server_leftovers(namespace, name):
            # A deleted ModelServer is still going away (the garbage collector has not removed
            # its Deployment and pods yet): a new one now would count the old pods' restarts.
            observed.append(p.ObservedResource(kind=SERVING, name=name, deleting=True))
        return observed

    def _server_leftovers(self, namespace: str, name: str) -> bool:
        """Whether the Deployment or server pods of a ModelServer named ``name`` still exist."""
        if self.store.get("Deployment", namespace, name) is not None:
            return True
        selector = {LABEL_NAME: "mlvisor", LABEL_INSTANCE: name, LABEL_COMPONENT: "server"}
        return bool(_selected(self.store.pods(SERVING, namespace, name), selector))

    # ------------------------------------------------------------------ writing

    async def write_invalid(self, invalid: Invalid, since: float | None) -> None:
        """InvalidSpec status plus one Warning Event per generation; no retry until the spec changes."""
        body = invalid.source
        kind = invalid.kind
        meta = body["metadata"]
        previous = _previous_status(api.STATUSES[kind], body)
        status = conditions.invalid_spec_status(
            kind, meta.get("generation"), invalid.message, self.clock(), previous=previous)
        applied = Applied()
        await self.applier.write_status(body, status.to_wire(), applied)
        if applied.status_written:
            await self.applier.record_event(body, "Warning", "InvalidSpec", invalid.message, applied)
            self.metrics.escalations.labels(kind, "InvalidSpec").inc()
            self._latency(applied, since)
        else:
            logger.debug("still invalid", extra=fields(kind, meta["namespace"], meta["name"]))

    def count(self, kind: str, body: Mapping[str, Any], plan: p.Plan, applied: Applied, since: float | None) -> None:
        """Metrics of what was carried out, read off the status transition that was written."""
        self._latency(applied, since)
        if plan.status is None or not applied.status_written:
            return
        old = body.get("status") or {}
        new = applied.status if applied.status is not None else plan.status.to_wire()
        old_total = int(((old.get("supervision") or {}).get("totalRestarts")) or 0)
        new_total = int(((new.get("supervision") or {}).get("totalRestarts")) or 0)
        if new_total > old_total:
            self.metrics.restarts.labels(kind).inc(new_total - old_total)
        failed = became_true(old, new, "Failed")
        if failed is not None:
            self.metrics.escalations.labels(kind, str(failed.get("reason") or "Failed")).inc()
        if kind == SERVING and became_true(old, new, "RolledBack") is not None:
            self.metrics.rollbacks.inc()

    def _latency(self, applied: Applied, since: float | None) -> None:
        if since is not None and applied.first_write_at is not None:
            self.metrics.event_to_action.observe(max(0.0, applied.first_write_at - since))


class _ApiWriter:
    """The :class:`~mlvisor.operator.reconcilers.Writer` of one reconcile: the plan goes to the API
    server (``adapter.PlanApplier``), what was written to the metrics; ``since`` is when the
    event that queued the reconcile arrived (the event-to-action histogram)."""

    def __init__(self, controllers: Controllers, since: float | None) -> None:
        self.controllers = controllers
        self.since = since

    async def apply(self, read: Read, plan: p.Plan) -> None:
        applied = await self.controllers.applier.apply(read.source, plan)
        self.controllers.count(read.resource.kind, read.source, plan, applied, self.since)

    async def invalid(self, invalid: Invalid) -> None:
        await self.controllers.write_invalid(invalid, self.since)


def _selected(objects: Sequence[Mapping[str, Any]], selector: Mapping[str, str]) -> list[Mapping[str, Any]]:
    """The objects whose labels match an equality selector (what a LIST by labelSelector returned)."""
    def matches(obj: Mapping[str, Any]) -> bool:
        labels = (obj.get("metadata") or {}).get("labels") or {}
        return all(labels.get(k) == v for k, v in selector.items())
    return [obj for obj in objects if matches(obj)]


def retry_delay(error: BaseException) -> float | None:
    """How soon the queue retries a failed reconcile: at once after a write conflict; after a 429,
    when the API server said (API priority and fairness sends Retry-After)."""
    if isinstance(error, ApiError) and error.status == 409:
        return 0.05
    if isinstance(error, ApiError) and error.status == 429:
        return error.retry_after if error.retry_after is not None else 1.0
    return None
