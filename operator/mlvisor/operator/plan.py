"""The vocabulary shared by the planners and the two shells (Kubernetes and local processes).

A shell observes the world into ``Observed*`` values, calls a planner with
(resource, observed, now, config), and carries out the ``Plan`` it gets back: the actions
in order, then the status. Planners are pure; these types are plain frozen dataclasses so
both shells (and tests) build them without any framework.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from mlvisor import api
from mlvisor.api.progress import ProgressReport
from mlvisor.operator.supervision import MessageSource

#: Worker index of the select-and-refit step of a search.
SELECT_INDEX = -1


@dataclass(frozen=True)
class OperatorConfig:
    """Operator-wide settings (from the environment in the shells); defaults suit kind."""

    image: str = "mlvisor:dev"
    """Image for workers and servers when the spec leaves spec.image empty (env MLVISOR_IMAGE)."""
    image_pull_policy: str = "IfNotPresent"
    models_claim: str = "mlvisor-models"
    """PersistentVolumeClaim for artifacts when spec.output.volumeClaim is empty."""
    models_mount: str = "/models"
    """Where the artifact volume is mounted in worker and server pods."""
    data_mount: str = "/data"
    """Where a CSV dataset's volume is mounted in worker pods."""
    server_port: int = api.SERVER_HTTP_PORT
    """Container port of the model server (HTTP)."""
    server_grpc_port: int = api.SERVER_GRPC_PORT
    """Container port of the model server's V2 gRPC service."""
    service_domain: str = "svc"
    """status.url host is <name>.<namespace>.<service_domain>."""
    progress_poll_seconds: float = 5.0
    """How often a running search's workers are asked for their progress (and status.progress written, at most)."""


@dataclass(frozen=True)
class Owner:
    """What a child's ownerReference needs."""

    api_version: str
    kind: str
    name: str
    namespace: str
    uid: str


#: A pod's status.phase.
PodPhase = Literal["Pending", "Running", "Succeeded", "Failed", "Unknown"]


@dataclass(frozen=True)
class ObservedPod:
    """One child pod (or local process) as the shell sees it."""

    name: str
    index: int
    """Worker index (SELECT_INDEX for the select step; replica slot or 0 for server pods)."""
    attempt: int = 1
    phase: PodPhase = "Pending"
    exit_code: int | None = None
    """Exit code of the last terminated container run (the failed one for restarted containers)."""
    reason: str | None = None
    """Termination reason: container terminated.reason (Error, OOMKilled, ...) or pod status.reason (Evicted, ...)."""
    conditions: frozenset[str] = frozenset()
    """Types of pod conditions whose status is True (e.g. Ready, DisruptionTarget)."""
    restart_count: int = 0
    """Container restartCount (in-place restarts by the kubelet)."""
    ready: bool = False
    deleting: bool = False
    """metadata.deletionTimestamp is set."""
    model_uri: str | None = None
    """Server pods: the model they were created for (pod annotation mlvisor.dev/model-uri)."""
    message: str | None = None
    """Termination message of that last terminated run: the process's own words, or the log tail
    the kubelet fell back to; or the pod's status.message when the cluster ended the pod."""
    message_source: MessageSource | None = None
    """Where ``message`` came from; None: judged from the message (supervision.message_source)."""
    waiting: str | None = None
    """Why a pod that is not running yet waits, when that is worth a user's attention: the
    container's waiting reason and message (ImagePullBackOff: ..., CreateContainerConfigError:
    ...) or the scheduler's (Unschedulable: ...). None while it is just being created. The
    planners say it once a pod has waited WAITING_REPORTED_AFTER_SECONDS (``waiting_due``)."""
    waiting_since: float | None = None
    """When the pod began to wait, as Unix seconds: the scheduler's PodScheduled condition's
    lastTransitionTime, or for a container that waits the pod's startTime (the kubelet took it),
    else its creationTimestamp. None when not known: then its reason is said at once."""
    progress: ProgressReport | None = None
    """A running search worker's latest report (GET /progress, which the shell polls every few seconds)."""


@dataclass(frozen=True)
class ObservedDeployment:
    """The ModelServer's Deployment as the shell sees it."""

    name: str
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    model_uri: str | None = None
    """Pod template annotation mlvisor.dev/model-uri: what it is rolling out."""


@dataclass(frozen=True)
class ObservedResource:
    """A child custom resource of a ModelPipeline (a run's TrainingJob, the ModelServer) as the shell sees it."""

    kind: str
    """TrainingJob or ModelServer."""
    name: str
    uid: str = ""
    run: int | None = None
    """TrainingJobs: the run number (label mlvisor.dev/run)."""
    spec_hash: str | None = None
    """TrainingJobs: annotation mlvisor.dev/training-spec-hash."""
    status: api.Model | None = None
    """Its parsed status (api.TrainingJobStatus or api.ModelServerStatus); None before the first one."""
    deleting: bool = False
    """metadata.deletionTimestamp is set."""


@dataclass(frozen=True)
class ModelRef:
    """A model a ModelServer can serve: an artifact URI and its version."""

    uri: str
    version: str


@dataclass(frozen=True)
class ReferencedJob:
    """What the shell found under a ModelServer's spec.model.trainingJobRef (when it has no model yet)."""

    exists: bool
    """False: no TrainingJob of that name in the namespace."""
    phase: str | None = None
    """Its status.phase (Pending, Running, ..., Failed)."""
    message: str | None = None
    """Its Failed condition's message, when it failed."""


@dataclass(frozen=True)
class CreatePod:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeletePod:
    name: str
    reason: str


@dataclass(frozen=True)
class ApplyDeployment:
    """Create the Deployment, or bring the existing one to this manifest."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class ApplyService:
    manifest: dict[str, Any]


@dataclass(frozen=True)
class RecordEvent:
    type: Literal["Normal", "Warning"]
    reason: str
    message: str


@dataclass(frozen=True)
class ApplyResource:
    """Create a child custom resource (TrainingJob, ModelServer), or merge-patch it to this manifest."""

    manifest: dict[str, Any]


@dataclass(frozen=True)
class DeleteResource:
    """Delete a child custom resource (its own children go with it)."""

    kind: str
    name: str
    reason: str


Action = CreatePod | DeletePod | ApplyDeployment | ApplyService | RecordEvent | ApplyResource | DeleteResource


@dataclass(frozen=True)
class Plan:
    """What a planner wants done: actions in order, then the new status, then a re-check."""

    actions: tuple[Action, ...] = ()
    status: api.Model | None = None
    """The whole new status (api.TrainingJobStatus, api.ModelServerStatus or api.ModelPipelineStatus); None: unchanged."""
    requeue_after: float | None = None
    """Seconds after which the shell must call the planner again even if nothing happens."""
