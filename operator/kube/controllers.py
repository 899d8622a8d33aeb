"""The reconcilers: gather the facts about one resource, ask its planner, apply the plan.

Level-triggered, in kubebuilder's shape: read the resource fresh from the API (never trust an
event's copy), list its children, turn them into observed values, call the pure planner with
``now``, carry out the plan, and return when to look again. Nothing here decides anything a
user could see: that is the planners' job, and the same planners drive the local runtime.

What only the Kubernetes shell can say is said here: a resource whose body does not parse
(or that names a ``file://`` model, which a pod cannot reach) gets the InvalidSpec status and
one Warning Event per generation, and is then left alone until its spec changes; it never
becomes an exception that kopf would retry forever.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import pydantic

from mlvisor.operator import api, builders
from mlvisor.operator.kube import client
from mlvisor.operator.kube.adapter import Applied, PlanApplier, became_true
from mlvisor.operator.kube.client import ApiError, Kube
from mlvisor.operator.kube.logs import fields
from mlvisor.operator.kube.metrics import Metrics
from mlvisor.operator.kube.observe import (
    is_controlled_by,
    observe_child,
    observe_deployment,
    observe_pod,
    termination_summary,
)
from mlvisor.operator.reconcile import conditions, plan as p
from mlvisor.operator.reconcile.pipeline import plan_pipeline
from mlvisor.operator.reconcile.serving import plan_serving
from mlvisor.operator.reconcile.training import plan_training

logger = logging.getLogger(__name__)

TRAINING = "TrainingJob"
SERVING = "ModelServer"
PIPELINE = "ModelPipeline"

Key = tuple[str, str, str]
"""(kind, namespace, name) of a TrainingJob, ModelServer or ModelPipeline."""


def describe_validation_error(kind: str, error: pydantic.ValidationError) -> str:
    """Every problem, in `mlvisor validate`'s words: 'spec.estimator.class: expected the dotted path ...'."""
    from mlvisor.operator.resources_cli import describe_validation_error as describe

    return f"invalid {kind}: " + "; ".join(describe(error)) + ". Fix the resource and apply it again."


#: Pre-flight verdicts kept per (uid, generation): a spec is judged once per generation.
PREFLIGHT_CACHE_SIZE = 1024


def warm_up_preflight() -> None:
    """Import what the pre-flight check needs (scikit-learn: seconds) by judging a sample spec once."""
    started = time.monotonic()
    try:
        from mlvisor.trainer.preflight import spec_problems
    except ImportError as e:
        logger.warning("no pre-flight check of TrainingJob specs (%s): the trainer judges them in their pod", e)
        return
    sample = api.TrainingJobSpec.model_validate({
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier"},
        "search": {"grid": {"max_depth": [2]}, "scoring": "accuracy"},
    })
    problems = spec_problems(sample)
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
    model: type[api.TrainingJob] | type[api.ModelServer] | type[api.ModelPipeline], body: Mapping[str, Any]
) -> tuple[Any, str | None]:
    """(resource, None) or (None, message naming the field) when the spec is invalid.

    A status that does not parse (written by another version) is dropped with a warning
    rather than failing the resource: the spec is what the user is responsible for.
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
        return None, describe_validation_error(str(body.get("kind")), e)


def _previous_status(model: type[pydantic.BaseModel], body: Mapping[str, Any]) -> Any:
    try:
        return model.model_validate(body.get("status") or {})
    except pydantic.ValidationError:
        return None


class Controllers:
    """The reconcilers of one operator process; ``reconcile(key, since)`` is the work queue's callback."""

    def __init__(
        self,
        kube: Kube,
        config: p.OperatorConfig,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.kube = kube
        self.config = config
        self.metrics = metrics
        self.clock = clock
        self.applier = PlanApplier(kube, clock)
        self._preflight: dict[tuple[str | None, int | None], list[str]] = {}

    async def reconcile(self, key: Any, since: float | None) -> float | None:
        kind, namespace, name = key
        try:
            if kind == TRAINING:
                result, again = await self.reconcile_training(namespace, name, since)
            elif kind == PIPELINE:
                result, again = await self.reconcile_pipeline(namespace, name, since)
            else:
                result, again = await self.reconcile_serving(namespace, name, since)
        except Exception:
            self.metrics.reconciles.labels(kind, "error").inc()
            raise
        self.metrics.reconciles.labels(kind, result).inc()
        return again

    # ------------------------------------------------------------------ TrainingJob

    async def reconcile_training(self, namespace: str, name: str, since: float | None) -> tuple[str, float | None]:
        path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[TRAINING], namespace, name)
        body = await self._get_or_none(path)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return "gone", None  # children go with it (ownerReferences)
        job, problem = parse_resource(api.TrainingJob, body)
        if problem is not None:
            await self._invalid(body, api.TrainingJobStatus, problem, since)
            return "invalid", None
        pods = [
            pod
            for pod in await self.kube.list(
                client.core_path("pods", namespace),
                f"{p.LABEL_MANAGED_BY}={p.MANAGED_BY},{p.LABEL_INSTANCE}={name}",
            )
            if is_controlled_by(pod, body["metadata"].get("uid"))
        ]
        observed = [observe_pod(pod) for pod in pods]
        plan = plan_training(
            job, observed, self.clock(), self.config,
            artifact_metadata=termination_summary(pods), preflight=await self.preflight(job),
        )
        applied = await self.applier.apply(body, plan)
        self._count(TRAINING, body, plan, applied, since)
        return "ok", plan.requeue_after

    async def preflight(self, job: api.TrainingJob) -> list[str]:
        """The trainer's pre-flight problems of a job that has not started (none once it runs).

        The operator image has scikit-learn, so a typo in a parameter, a bad value or an unknown
        scorer becomes InvalidSpec before any pod exists, in the words `mlvisor validate` uses.
        Judged once per generation, in a thread (the first call imports scikit-learn).
        """
        if job.status is not None and job.status.version is not None:
            return []
        key = (job.metadata.uid, job.metadata.generation)
        if key not in self._preflight:
            try:
                from mlvisor.trainer.preflight import spec_problems
            except ImportError:  # an operator built without the trainer: the trainer judges at run time
                return []
            if len(self._preflight) >= PREFLIGHT_CACHE_SIZE:
                self._preflight.pop(next(iter(self._preflight)))
            self._preflight[key] = await asyncio.to_thread(spec_problems, job.spec)
        return self._preflight[key]

    # ------------------------------------------------------------------ ModelServer

    async def reconcile_serving(self, namespace: str, name: str, since: float | None) -> tuple[str, float | None]:
        path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[SERVING], namespace, name)
        body = await self._get_or_none(path)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return "gone", None
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
        if problem is not None:
            await self._invalid(body, api.ModelServerStatus, problem, since)
            return "invalid", None
        uid = body["metadata"].get("uid")
        deployment_body = await self._get_or_none(
            client.group_path("apps", "v1", "deployments", namespace, name)
        )
        deployment = (
            observe_deployment(deployment_body)
            if deployment_body is not None and is_controlled_by(deployment_body, uid)
            else None
        )
        selector = ",".join(f"{k}={v}" for k, v in builders.server_selector(server).items())
        pods = await self.kube.list(client.core_path("pods", namespace), selector)
        observed = [observe_pod(pod) for pod in pods]
        source, referenced_job = await self._model_source(server)
        plan = plan_serving(
            server, deployment, observed, source, self.clock(), self.config, referenced_job=referenced_job
        )
        applied = await self.applier.apply(body, plan)
        self._count(SERVING, body, plan, applied, since)
        return "ok", plan.requeue_after

    async def _model_source(self, server: api.ModelServer) -> tuple[p.ModelRef | None, p.ReferencedJob | None]:
        """The model the spec points at now (the referenced job's status.model, or the URI), and that job."""
        if server.spec.model.uri:
            return p.ModelRef(uri=server.spec.model.uri, version=builders.version_of(server.spec.model.uri)), None
        ref = server.spec.model.training_job_ref
        if ref is None:
            return None, None
        path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[TRAINING], server.metadata.namespace, ref.name)
        job = await self._get_or_none(path)
        if job is None:
            return None, p.ReferencedJob(exists=False)
        status = job.get("status") or {}
        failed = next(
            (c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"),
            None,
        )
        referenced = p.ReferencedJob(
            exists=True, phase=status.get("phase"), message=str(failed.get("message") or "") or None if failed else None
        )
        model = status.get("model") or {}
        if not model.get("uri") or not model.get("version"):
            return None, referenced
        return p.ModelRef(uri=str(model["uri"]), version=str(model["version"])), referenced

    # ------------------------------------------------------------------ ModelPipeline

    async def reconcile_pipeline(self, namespace: str, name: str, since: float | None) -> tuple[str, float | None]:
        path = client.group_path(api.GROUP, api.VERSION, api.PLURALS[PIPELINE], namespace, name)
        body = await self._get_or_none(path)
        if body is None or body["metadata"].get("deletionTimestamp"):
            return "gone", None  # children go with it (ownerReferences)
        pipeline, problem = parse_resource(api.ModelPipeline, body)
        if problem is not None:
            await self._invalid(body, api.ModelPipelineStatus, problem, since)
            return "invalid", None
        uid = body["metadata"].get("uid")
        selector = ",".join(f"{k}={v}" for k, v in builders.pipeline_training_selector(pipeline).items())
        jobs = await self.kube.list(
            client.group_path(api.GROUP, api.VERSION, api.PLURALS[TRAINING], namespace), selector
        )
        observed = [observe_child(job, api.TrainingJobStatus) for job in jobs if is_controlled_by(job, uid)]
        server = await self._get_or_none(
            client.group_path(api.GROUP, api.VERSION, api.PLURALS[SERVING], namespace, name)
        )
        if server is not None and is_controlled_by(server, uid):
            observed.append(observe_child(server, api.ModelServerStatus))
        elif server is None and await self._server_leftovers(namespace, name):
            # A deleted ModelServer is still going away (the garbage collector has not removed
            # its Deployment and pods yet): a new one now would count the old pods' restarts.
            observed.append(p.ObservedResource(kind=SERVING, name=name, deleting=True))
        plan = plan_pipeline(pipeline, observed, self.clock(), self.config)
        applied = await self.applier.apply(body, plan)
        self._count(PIPELINE, body, plan, applied, since)
        return "ok", plan.requeue_after

    async def _server_leftovers(self, namespace: str, name: str) -> bool:
        """Whether the Deployment or server pods of a ModelServer named ``name`` still exist."""
        if await self._get_or_none(client.group_path("apps", "v1", "deployments", namespace, name)) is not None:
            return True
        selector = f"{p.LABEL_NAME}=mlvisor,{p.LABEL_INSTANCE}={name},{p.LABEL_COMPONENT}=server"
        return bool(await self.kube.list(client.core_path("pods", namespace), selector))

    # ------------------------------------------------------------------ shared

    async def _get_or_none(self, path: str) -> dict[str, Any] | None:
        try:
            return await self.kube.get(path)
        except ApiError as e:
            if e.status == 404:
                return None
            raise

    async def _invalid(
        self, body: Mapping[str, Any], status_model: type[pydantic.BaseModel], message: str, since: float | None
    ) -> None:
        """InvalidSpec status plus one Warning Event per generation; no retry until the spec changes."""
        kind = str(body["kind"])
        meta = body["metadata"]
        previous = _previous_status(status_model, body)
        status = conditions.invalid_spec_status(kind, meta.get("generation"), message, self.clock(), previous=previous)
        applied = Applied()
        await self.applier.write_status(body, status.to_wire(), applied)
        if applied.status_written:
            await self.applier.record_event(body, "Warning", "InvalidSpec", message, applied)
            self.metrics.escalations.labels(kind, "InvalidSpec").inc()
            self._latency(applied, since)
        else:
            logger.debug("still invalid", extra=fields(kind, meta["namespace"], meta["name"]))

    def _count(self, kind: str, body: Mapping[str, Any], plan: p.Plan, applied: Applied, since: float | None) -> None:
        """Metrics of what was carried out, read off the status transition that was written."""
        self._latency(applied, since)
        if plan.status is None or not applied.status_written:
            return
        old = body.get("status") or {}
        new = plan.status.to_wire()
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


def retry_delay(error: BaseException) -> float | None:
    """How soon the queue retries a failed reconcile: at once after a write conflict."""
    if isinstance(error, ApiError) and error.status == 409:
        return 0.05
    return None
