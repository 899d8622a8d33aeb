"""One reconciler per kind, written once, for both shells: read, plan, hand the plan to a writer.

A reconcile of a TrainingJob, ModelServer or ModelPipeline is the same steps wherever it runs:
read the resource (with its status) and its children from a store, turn them into the
planner's inputs, call the pure planner with ``now``, and hand the plan to whatever carries it
out. Those steps are :func:`reconcile`. What differs between a cluster and one machine is only
what the store holds and how a plan is carried out, so each shell implements the two small
protocols below:

- the cluster (:mod:`mlvisor.operator.kube.controllers`): a :class:`Reader` over the watch-fed
  store of slim bodies (no GET, no LIST), and a :class:`Writer` that sends the plan's actions
  and its status to the API server;
- the local runtime (:mod:`mlvisor.operator.local.runtime`): a :class:`Reader` over its
  in-memory resources and the processes that stand in for pods, and a :class:`Writer` that
  starts and stops those processes.

So which children a resource observes, how a ModelServer's ``spec.model`` is resolved, what a
pipeline sees of its runs, and in which order it all reaches the planner cannot drift between
``mlvisor run`` and the cluster: there is one copy. The shells keep what only they can say (a
body that does not parse is the cluster's problem: `mlvisor run` validated its files with
`mlvisor validate`'s judge before it started).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol

from mlvisor import api
from mlvisor.operator import plan as p
from mlvisor.operator.planners.pipeline import plan_pipeline
from mlvisor.operator.planners.serving import model_source, plan_serving
from mlvisor.operator.planners.training import plan_training

TRAINING = "TrainingJob"
SERVING = "ModelServer"
PIPELINE = "ModelPipeline"

Key = tuple[str, str, str]
"""(kind, namespace, name) of a TrainingJob, ModelServer or ModelPipeline."""

Resource = api.TrainingJob | api.ModelServer | api.ModelPipeline


@dataclass(frozen=True)
class Read:
    """A resource as the store holds it: parsed, with its status as last written."""

    resource: Resource
    source: Any = None
    """What the reader read it from, for its writer (the cluster: the body, whose
    resourceVersion guards the status write); the local runtime needs nothing."""


@dataclass(frozen=True)
class Invalid:
    """A resource whose spec the shell cannot run: its status says why, nothing is planned."""

    kind: str
    message: str
    """Every problem, naming the field, in `mlvisor validate`'s words."""
    source: Any = None


class Reader(Protocol):
    """What a reconcile reads; every method answers from memory (a store), never a request."""

    async def resource(self, key: Key) -> Read | Invalid | None:
        """The resource, or Invalid, or None when it is gone or being deleted."""
        ...

    async def workers(self, read: Read) -> Sequence[p.ObservedPod]:
        """A TrainingJob's worker and select pods (its own, by controller), with their search progress."""
        ...

    async def preflight(self, read: Read) -> Sequence[str]:
        """The trainer's pre-flight problems of a TrainingJob that has not started (none once it runs)."""
        ...

    def server_children(self, read: Read) -> tuple[p.ObservedDeployment | None, Sequence[p.ObservedPod]]:
        """A ModelServer's own Deployment (None: none yet) and the pods its selector selects."""
        ...

    def training_job(self, namespace: str, name: str) -> tuple[bool, api.TrainingJobStatus | None]:
        """Whether a TrainingJob of that name exists, and its status (None: none yet, or unreadable)."""
        ...

    def pipeline_children(self, read: Read) -> Sequence[p.ObservedResource]:
        """The TrainingJobs and the ModelServer a ModelPipeline controls, as its planner sees them."""
        ...


class Writer(Protocol):
    """What carries a reconcile's outcome out."""

    async def apply(self, read: Read, plan: p.Plan) -> None:
        """The plan's actions in order, then its status (the shell says when Events are posted)."""
        ...

    async def invalid(self, invalid: Invalid) -> None:
        """The InvalidSpec status (and one Warning per generation)."""
        ...


Outcome = Literal["ok", "invalid", "gone"]


async def reconcile(
    reader: Reader, writer: Writer, key: Key, clock: Callable[[], float], config: p.OperatorConfig
) -> tuple[Outcome, float | None]:
    """Reconcile one resource: (what happened, seconds until it must be looked at again or None).

    ``clock`` is read once the inputs are gathered (a progress poll or a pre-flight judgement can
    take a while), so the planner's ``now`` is the time of what it observed."""
    read = await reader.resource(key)
    if read is None:
        return "gone", None  # children go with it (ownerReferences; the local garbage collector)
    if isinstance(read, Invalid):
        await writer.invalid(read)
        return "invalid", None  # nothing is retried until the spec changes
    plan = await plan_for(reader, read, clock, config)
    await writer.apply(read, plan)
    return "ok", plan.requeue_after


async def plan_for(reader: Reader, read: Read, clock: Callable[[], float], config: p.OperatorConfig) -> p.Plan:
    """The planner's answer for one resource, its inputs gathered from ``reader``."""
    resource = read.resource
    if isinstance(resource, api.TrainingJob):
        observed = await reader.workers(read)
        preflight = await reader.preflight(read)
        return plan_training(resource, observed, clock(), config, preflight=preflight)
    if isinstance(resource, api.ModelServer):
        deployment, pods = reader.server_children(read)
        ref = resource.spec.model.training_job_ref
        exists, status = reader.training_job(resource.metadata.namespace, ref.name) if ref else (False, None)
        source, referenced_job = model_source(resource, exists, status)
        return plan_serving(resource, deployment, pods, source, clock(), config, referenced_job=referenced_job)
    return plan_pipeline(resource, reader.pipeline_children(read), clock(), config)
