"""Typed API of mlvisor: TrainingJob and ModelServer spec and status (group mlvisor.dev/v1alpha1).

This module is the single source of truth for the resources. The CRD YAML under
manifests/crds/ is generated from these models (see ``crdgen.py``), ``mlvisor validate``
parses with them, the planners read specs and write statuses through them, and the
trainer parses its spec with them. Cross-field rules are written twice on purpose, once
as CEL for the API server (``x-kubernetes-validations``) and once as a pydantic
validator for everything that runs without an API server; tests check that both agree
on the samples and on every invalid case.

Pure: pydantic only, no clock, no I/O.
"""

from __future__ import annotations

import copy
import datetime as dt
import enum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, create_model, field_validator, model_validator
from pydantic.alias_generators import to_camel

from mlvisor.operator.cron import CRON_PATTERN

GROUP = "mlvisor.dev"
VERSION = "v1alpha1"
API_VERSION = f"{GROUP}/{VERSION}"

#: Exit code of the trainer for an invalid spec or invalid data: never worth retrying.
EXIT_INVALID_SPEC = 2
#: Exit code of the model server when its model can never be loaded (checksum, untrusted type,
#: shape, warm-up error); the reason is its termination message. Never worth a restart either.
#: Same value as mlvisor.server.loading.EXIT_MODEL_UNLOADABLE (the server cannot import this module).
EXIT_MODEL_UNLOADABLE = 4

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ESTIMATOR_CLASS = r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+$"
MODEL_URI = r"^(pvc://[a-z0-9]([-a-z0-9]*[a-z0-9])?/[^\s/]|file:///)[^\s]*$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

#: The patterns above in words, for messages (mlvisor validate, InvalidSpec conditions).
PATTERN_WORDS: dict[str, str] = {
    DNS_LABEL: "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    MODEL_NAME: "a model name: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 characters",
    ESTIMATOR_CLASS: "the dotted path of a class inside scikit-learn, e.g. sklearn.ensemble.RandomForestClassifier",
    MODEL_URI: "pvc://<claim>/<path>/ or, for mlvisor run, file:///<absolute path>/",
    CONDITION_REASON: "a CamelCase reason",
}


def _cel(rule: str, message: str, **extra: str) -> dict[str, str]:
    return {"rule": rule, "message": message, **extra}


def _validations(*rules: dict[str, str]) -> dict[str, Any]:
    return {"x-kubernetes-validations": list(rules)}


class Model(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
    )

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with camelCase keys and unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


# --------------------------------------------------------------------------- shared pieces


class RestartType(enum.StrEnum):
    """OTP restart type of the children."""

    PERMANENT = "Permanent"
    TRANSIENT = "Transient"
    TEMPORARY = "Temporary"


class Strategy(enum.StrEnum):
    """OTP restart strategy: which workers are restarted when one fails."""

    ONE_FOR_ONE = "OneForOne"
    ONE_FOR_ALL = "OneForAll"
    REST_FOR_ONE = "RestForOne"


class FailureAction(enum.StrEnum):
    """What a matching failure policy rule does with a failure."""

    FAIL = "Fail"
    IGNORE = "Ignore"
    COUNT = "Count"


Quantity = Annotated[
    int | str,
    Field(json_schema_extra={"x-kubernetes-int-or-string": True}),
]


class ResourceRequirements(Model):
    """Compute resources of each container (corev1 ResourceRequirements: limits and requests)."""

    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. {cpu: "1", memory: 1Gi}."""
    requests: dict[str, Quantity] | None = None
    """Minimum resources the scheduler reserves, e.g. {cpu: 250m, memory: 256Mi}."""


class Backoff(Model):
    """Delay before restart n (n = restarts in the window): min(initialSeconds * factor^(n-1), maxSeconds)."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.maxSeconds >= self.initialSeconds",
                "backoff.maxSeconds must be greater than or equal to backoff.initialSeconds",
            )
        )
    )

    initial_seconds: float = Field(1.0, ge=0, le=3600)
    """Delay before the first restart in a window, in seconds (0 restarts at once, as OTP does)."""
    factor: float = Field(2.0, ge=1, le=10)
    """Multiplier applied for every further restart in the window."""
    max_seconds: float = Field(60.0, ge=0, le=86400)
    """Upper bound of the delay, in seconds."""

    @model_validator(mode="after")
    def _max_not_below_initial(self) -> Backoff:
        if self.max_seconds < self.initial_seconds:
            raise ValueError(
                "backoff.maxSeconds must be greater than or equal to backoff.initialSeconds"
            )
        return self


class FailurePolicyRule(Model):
    """One failure classification rule: exactly one of onExitCodes, onReasons, onPodConditions."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.onExitCodes) ? 1 : 0) + (has(self.onReasons) ? 1 : 0)"
                " + (has(self.onPodConditions) ? 1 : 0) == 1",
                "a failurePolicy rule needs exactly one of onExitCodes, onReasons, onPodConditions",
            )
        )
    )

    on_exit_codes: list[Annotated[int, Field(ge=0, le=255)]] | None = Field(
        None, min_length=1, max_length=32
    )
    """Matches when the worker container exited with one of these codes."""
    on_reasons: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=32
    )
    """Matches the termination reason of the container or pod (OOMKilled, Error, Evicted, Preempted, NodeLost, DeadlineExceeded)."""
    on_pod_conditions: list[Annotated[str, Field(min_length=1, max_length=128)]] | None = Field(
        None, min_length=1, max_length=32
    )
    """Matches when the pod has one of these conditions with status True (e.g. DisruptionTarget)."""
    action: FailureAction
    """Fail: escalate at once. Ignore: restart without counting. Count: restart and count in the window."""

    @model_validator(mode="after")
    def _exactly_one_matcher(self) -> FailurePolicyRule:
        given = [self.on_exit_codes, self.on_reasons, self.on_pod_conditions]
        if sum(m is not None for m in given) != 1:
            raise ValueError(
                "a failurePolicy rule needs exactly one of onExitCodes, onReasons, onPodConditions"
            )
        return self


def default_failure_policy() -> list[FailurePolicyRule]:
    """Exit code 2 means invalid spec (never retry); infrastructure disruptions are not counted."""
    return [
        FailurePolicyRule(on_exit_codes=[EXIT_INVALID_SPEC], action=FailureAction.FAIL),
        FailurePolicyRule(
            on_reasons=["Evicted", "Preempted", "NodeLost", "NodeShutdown", "Terminated"],
            action=FailureAction.IGNORE,
        ),
        FailurePolicyRule(on_pod_conditions=["DisruptionTarget"], action=FailureAction.IGNORE),
    ]


_DEFAULT_FAILURE_POLICY_WIRE = [r.to_wire() for r in default_failure_policy()]


class Condition(Model):
    """A metav1.Condition: the state of one aspect of the resource."""

    type: str = Field(max_length=316)
    """Condition type, e.g. Ready, Running, Succeeded, Failed."""
    status: Literal["True", "False", "Unknown"]
    """True, False or Unknown."""
    reason: str = Field(max_length=1024, pattern=CONDITION_REASON)
    """CamelCase machine-readable reason for the last transition."""
    message: str = Field("", max_length=32768)
    """Human-readable details."""
    last_transition_time: dt.datetime
    """When the status last changed."""
    observed_generation: int | None = Field(None, ge=0)
    """metadata.generation the condition was set from."""


class FailureRecord(Model):
    """The most recent failure the supervisor saw."""

    worker: int | None = None
    """Worker index (TrainingJob); absent for server pods."""
    pod: str | None = None
    """Pod that failed."""
    exit_code: int | None = None
    """Container exit code, if it terminated."""
    reason: str | None = None
    """Termination reason (Error, OOMKilled, Evicted, ...)."""
    message: str | None = Field(None, max_length=4096)
    """What the process said about its end: the container's termination message (the trainer's or the server's reason), or the pod's status message."""
    action: FailureAction | None = None
    """How the failure policy classified it."""
    time: dt.datetime
    """When the failure was observed."""


class SupervisionStatus(Model):
    """The supervisor's memory; kept in status so an operator restart neither forgets nor double-counts."""

    restart_times: list[dt.datetime] = Field(default_factory=list)
    """Times of the restarts inside the current window (at most maxRestarts+1 entries)."""
    restarts_in_window: int = 0
    """Number of restarts counted in the current window."""
    total_restarts: int = 0
    """Restarts over the whole life of the resource (ignored failures included)."""
    next_restart_time: dt.datetime | None = None
    """When the next pending restart happens (back-off)."""
    last_failure: FailureRecord | None = None
    """The most recent failure."""
    seen_failures: list[str] = Field(default_factory=list)
    """Identities (pod#restartCount) of the failures already handled, newest last, so a replayed event is never counted twice."""


# --------------------------------------------------------------------------- TrainingJob


class BuiltinDataset(enum.StrEnum):
    """Datasets that ship with scikit-learn (no download)."""

    IRIS = "iris"
    WINE = "wine"
    BREAST_CANCER = "breast_cancer"
    DIGITS = "digits"
    DIABETES = "diabetes"


class CsvDataset(Model):
    """A CSV file with a header row; every column but the target must be numeric."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "!self.path.startsWith('/') && !self.path.contains('..')",
                "csv.path must be relative to the volume and must not contain '..'",
            )
        )
    )

    path: str = Field(min_length=1, max_length=1024)
    """Path of the file, relative to the root of the volume (e.g. data/train.csv)."""
    target: str = Field(min_length=1, max_length=256)
    """Name of the column to predict."""
    volume_claim: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    """PersistentVolumeClaim holding the file; default: the output volume claim."""

    @field_validator("path")
    @classmethod
    def _relative(cls, v: str) -> str:
        if v.startswith("/") or ".." in v:
            raise ValueError("csv.path must be relative to the volume and must not contain '..'")
        return v


class Dataset(Model):
    """Where the training data comes from: exactly one of builtin or csv."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.builtin) ? 1 : 0) + (has(self.csv) ? 1 : 0) == 1",
                "exactly one dataset source must be set: builtin or csv",
            )
        )
    )

    builtin: BuiltinDataset | None = None
    """A dataset bundled with scikit-learn: iris, wine, breast_cancer, digits or diabetes."""
    csv: CsvDataset | None = None
    """A CSV file on a volume."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> Dataset:
        if (self.builtin is None) == (self.csv is None):
            raise ValueError("exactly one dataset source must be set: builtin or csv")
        return self


class Estimator(Model):
    """The scikit-learn estimator to train."""

    class_: str = Field(alias="class", pattern=ESTIMATOR_CLASS, max_length=256)
    """Dotted path of an allowlisted estimator class inside sklearn, e.g. sklearn.ensemble.RandomForestClassifier."""
    params: dict[str, Any] = Field(
        default_factory=dict,
        max_length=64,  # bounds the CEL cost of the immutability rule on spec.estimator
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    """Constructor parameters, e.g. {n_estimators: 100, random_state: 0}."""


class Search(Model):
    """Exhaustive hyperparameter search over a grid, sharded across the workers."""

    grid: dict[str, Annotated[list[Any], Field(min_length=1, max_length=1000)]] = Field(
        min_length=1, max_length=32
    )
    """Parameter name -> candidate values; every combination is tried."""
    cv: int = Field(5, ge=2, le=20)
    """Number of cross-validation folds per trial."""
    scoring: str | None = Field(None, min_length=1, max_length=64)
    """A scikit-learn scorer name (accuracy, f1_macro, roc_auc, r2, neg_mean_absolute_error, ...); default: accuracy for classifiers, r2 for regressors."""


class OutputSpec(Model):
    """Where artifacts are written."""

    volume_claim: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    """PersistentVolumeClaim for model artifacts; default: the operator's (mlvisor-models)."""


class TrainingSupervision(Model):
    """OTP-style supervision of the worker pods (see the supervision docs)."""

    strategy: Strategy = Strategy.ONE_FOR_ONE
    """OneForOne restarts the failed worker; OneForAll restarts every worker; RestForOne restarts the failed one and those after it."""
    restart: RestartType = RestartType.TRANSIENT
    """Permanent: restart after any exit. Transient: restart after a failure only. Temporary: never restart."""
    max_restarts: int = Field(3, ge=0, le=1000)
    """OTP intensity: at most this many restarts within periodSeconds; one more escalates (job Failed)."""
    period_seconds: int = Field(60, ge=1, le=604800)
    """OTP period: the sliding window, in seconds, in which restarts are counted."""
    backoff: Backoff = Field(default_factory=Backoff, json_schema_extra={"default": {}})
    """Delay before each restart (Kubernetes addition: OTP restarts at once)."""
    failure_policy: list[FailurePolicyRule] = Field(
        default_factory=default_failure_policy,
        max_length=32,
        json_schema_extra={"default": _DEFAULT_FAILURE_POLICY_WIRE},
    )
    """Rules that classify a failure before it is counted; the first match wins, no match counts it."""


class TrainingJobSpec(Model):
    """Desired state of a TrainingJob."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            *(
                _cel(
                    f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
                    f"spec.{f} is immutable: create a new TrainingJob to train differently",
                    fieldPath=f".{f}",
                    reason="FieldValueForbidden",
                )
                for f in ("dataset", "estimator", "search", "workers", "testSize", "randomState", "output")
            ),
            _cel(
                "has(self.search) || self.workers == 1",
                "spec.workers must be 1 without spec.search: only a search grid can be split across workers",
                fieldPath=".workers",
            ),
        )
    )

    image: str = Field("", max_length=512)
    """Container image of the workers; empty: the operator's own image."""
    dataset: Dataset
    """Training data: exactly one of builtin or csv."""
    estimator: Estimator
    """The scikit-learn estimator and its parameters."""
    search: Search | None = None
    """Optional hyperparameter grid search, sharded across the workers."""
    workers: int = Field(1, ge=1, le=64)
    """Number of worker pods; a search grid is split across them."""
    test_size: float = Field(0.2, gt=0, lt=1)
    """Fraction of the rows held out for evaluation."""
    random_state: int = Field(0, ge=0, le=2**32 - 1)
    """Seed for the train/test split and the grid shards."""
    output: OutputSpec = Field(default_factory=OutputSpec, json_schema_extra={"default": {}})
    """Where the artifact is written."""
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, json_schema_extra={"default": {}}
    )
    """Compute resources of each worker."""
    active_deadline_seconds: int | None = Field(None, ge=1, le=31536000)
    """Whole-job deadline in seconds; past it the job fails with reason DeadlineExceeded."""
    ttl_seconds_after_finished: int | None = Field(None, ge=0, le=31536000)
    """Delete the finished job's pods (never the artifact) this long after it finished."""
    suspend: bool = False
    """true deletes running pods and keeps status; false resumes."""
    supervision: TrainingSupervision = Field(
        default_factory=TrainingSupervision, json_schema_extra={"default": {}}
    )
    """OTP-style supervision policy."""

    @model_validator(mode="after")
    def _workers_need_a_search(self) -> TrainingJobSpec:
        if self.search is None and self.workers != 1:
            raise ValueError(
                "spec.workers must be 1 without spec.search: only a search grid can be split across workers"
            )
        return self


class TrainingPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    RESTARTING = "Restarting"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    SUSPENDED = "Suspended"


class WorkerPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    RESTARTING = "Restarting"
    STOPPED = "Stopped"


class WorkerStatus(Model):
    """What the supervisor knows about one worker (or the select step)."""

    index: int = Field(ge=-1)
    """Worker index; -1 is the select step of a search."""
    pod: str | None = None
    """Name of the current pod."""
    phase: WorkerPhase = WorkerPhase.PENDING
    """Pending, Running, Succeeded, Failed, Restarting (waiting for back-off) or Stopped."""
    attempt: int = Field(1, ge=1)
    """Attempt number; the pod is <job>-worker-<index>-<attempt>."""
    restart_at: dt.datetime | None = None
    """When the pending restart of this worker happens."""
    created_at: dt.datetime | None = None
    """When the operator created the current pod (a pod missing for longer than a few seconds after it is lost)."""
    last_exit_code: int | None = None
    """Exit code of the previous attempt."""
    last_reason: str | None = None
    """Termination reason of the previous attempt."""


class ModelInfo(Model):
    """The artifact the job produced."""

    uri: str
    """Where the artifact lives, e.g. pvc://mlvisor-models/default/iris/<version>/."""
    version: str
    """Artifact version (unique per job run)."""
    metrics: dict[str, float] = Field(default_factory=dict)
    """Held-out metrics (accuracy, f1_macro, roc_auc or r2, mae, rmse)."""
    score: float | None = None
    """The headline metric: spec.search.scoring on the held-out split when set, else accuracy for classifiers, r2 for regressors."""
    score_name: str | None = Field(None, max_length=64)
    """Which metric score is (a key of metrics)."""
    best_params: dict[str, Any] | None = Field(
        None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Best parameters found by the search."""
    sklearn_version: str | None = None
    """scikit-learn version that trained the model."""


class TrainingJobStatus(Model):
    """Observed state of a TrainingJob."""

    observed_generation: int | None = None
    """metadata.generation this status reflects."""
    phase: TrainingPhase = TrainingPhase.PENDING
    """Pending, Running, Restarting, Succeeded, Failed or Suspended."""
    conditions: list[Condition] = Field(default_factory=list)
    """Created, Running, Restarting, Succeeded, Failed, Suspended (by type)."""
    version: str | None = None
    """Version of the artifact this run writes; fixed when the run starts."""
    spec_hash: str | None = None
    """Fingerprint of the spec the current run started from (suspend and ttlSecondsAfterFinished excluded); a Failed job starts a new run when it changes."""
    start_time: dt.datetime | None = None
    """When the first worker was started."""
    completion_time: dt.datetime | None = None
    """When the job succeeded or failed."""
    workers: list[WorkerStatus] = Field(default_factory=list)
    """One entry per worker, in index order."""
    select: WorkerStatus | None = None
    """The select-and-refit step of a search (runs once every shard succeeded)."""
    workers_summary: str | None = None
    """Succeeded/total workers, e.g. 1/2 (printer column)."""
    supervision: SupervisionStatus = Field(default_factory=SupervisionStatus)
    """Restart history and the last failure."""
    model: ModelInfo | None = None
    """The artifact, once the job succeeded."""


# --------------------------------------------------------------------------- ModelServer


class TrainingJobRef(Model):
    """A TrainingJob in the same namespace."""

    name: str = Field(pattern=DNS_LABEL, max_length=253)
    """Name of the TrainingJob whose status.model is served."""


class ModelSource(Model):
    """What to serve: exactly one of trainingJobRef or uri."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "(has(self.trainingJobRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
                "exactly one model source must be set: trainingJobRef or uri",
            )
        )
    )

    training_job_ref: TrainingJobRef | None = None
    """Serve this job's model and follow its new versions."""
    uri: str | None = Field(None, pattern=MODEL_URI, max_length=2048)
    """An artifact directory: pvc://<claim>/<path>/ or file:///<path>/."""

    @model_validator(mode="after")
    def _exactly_one_source(self) -> ModelSource:
        if (self.training_job_ref is None) == (self.uri is None):
            raise ValueError("exactly one model source must be set: trainingJobRef or uri")
        return self


class Batching(Model):
    """Adaptive micro-batching of concurrent requests."""

    max_batch_size: int = Field(64, ge=1, le=4096)
    """Most rows predicted in one call; 1 disables batching."""
    max_latency_ms: float = Field(5.0, ge=0, le=1000)
    """Longest a request waits for others to join its batch, in milliseconds."""


class ServiceType(enum.StrEnum):
    CLUSTER_IP = "ClusterIP"
    NODE_PORT = "NodePort"
    LOAD_BALANCER = "LoadBalancer"


class ServiceSpec(Model):
    """The Service in front of the server pods: V2 REST on port, V2 gRPC on grpcPort."""

    model_config = ConfigDict(
        json_schema_extra=_validations(
            _cel(
                "self.grpcPort == 0 || self.grpcPort != self.port",
                "spec.service.grpcPort must differ from spec.service.port (or be 0 to turn gRPC off)",
            )
        )
    )

    type: ServiceType = ServiceType.CLUSTER_IP
    """ClusterIP, NodePort or LoadBalancer."""
    port: int = Field(80, ge=1, le=65535)
    """Port of the Service for HTTP: the V2 REST API (JSON and binary tensors), V1 predict, health and metrics."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """Port of the Service for the V2 gRPC API (inference.GRPCInferenceService, HTTP/2 cleartext); 0 turns gRPC off in the server pods too."""

    @model_validator(mode="after")
    def _distinct_ports(self) -> ServiceSpec:
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError("spec.service.grpcPort must differ from spec.service.port (or be 0 to turn gRPC off)")
        return self


class OnExhausted(enum.StrEnum):
    ROLLBACK = "Rollback"
    FAIL = "Fail"


class ServerSupervision(Model):
    """OTP-style supervision of the server pods (always OneForOne)."""

    restart: RestartType = RestartType.PERMANENT
    """Restart type of the server pods; servers are long-running, so Permanent."""
    max_restarts: int = Field(5, ge=0, le=1000)
    """Container restarts plus pod replacements, all replicas together, allowed within periodSeconds."""
    period_seconds: int = Field(300, ge=1, le=604800)
    """The sliding window, in seconds."""
    on_exhausted: OnExhausted = OnExhausted.ROLLBACK
    """Rollback: serve lastGoodModelVersion again. Fail: phase Failed and scale to zero."""


class ModelServerSpec(Model):
    """Desired state of a ModelServer."""

    model: ModelSource
    """The artifact to serve."""
    model_name: str | None = Field(None, pattern=MODEL_NAME)
    """Name in the V2 URL (/v2/models/<modelName>); default: metadata.name."""
    replicas: int = Field(1, ge=0, le=100)
    """Number of server pods. The scale subresource: kubectl scale modelserver/<name> --replicas=N and a HorizontalPodAutoscaler set it; a change rolls out (pods added or removed) and is never counted as a restart."""
    image: str = Field("", max_length=512)
    """Container image of the server; empty: the operator's own image."""
    resources: ResourceRequirements = Field(
        default_factory=ResourceRequirements, json_schema_extra={"default": {}}
    )
    """Compute resources of each server container (a CPU request is what a HorizontalPodAutoscaler's utilization target is measured against)."""
    batching: Batching = Field(default_factory=Batching, json_schema_extra={"default": {}})
    """Adaptive micro-batching."""
    startup_timeout_seconds: int = Field(120, ge=1, le=3600)
    """How long a server pod may take to load its model and become ready (startupProbe); past it the container is restarted, which counts in the supervision window."""
    service: ServiceSpec = Field(default_factory=ServiceSpec, json_schema_extra={"default": {}})
    """The Service."""
    supervision: ServerSupervision = Field(
        default_factory=ServerSupervision, json_schema_extra={"default": {}}
    )
    """Restart intensity and what to do when it is exceeded."""


class ServerPhase(enum.StrEnum):
    PENDING = "Pending"
    LOADING = "Loading"
    READY = "Ready"
    SCALING = "Scaling"
    DEGRADED = "Degraded"
    ROLLED_BACK = "RolledBack"
    FAILED = "Failed"


class ModelServerStatus(Model):
    """Observed state of a ModelServer."""

    observed_generation: int | None = None
    """metadata.generation this status reflects."""
    phase: ServerPhase = ServerPhase.PENDING
    """Pending, Loading, Ready, Scaling (a replica count change rolls out), Degraded, RolledBack or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Ready, Degraded, RolledBack, Failed (by type)."""
    url: str | None = None
    """V2 base URL of the model, e.g. http://iris.default.svc:80/v2/models/iris."""
    grpc_address: str | None = None
    """host:port of the V2 gRPC service (inference.GRPCInferenceService), e.g. iris.default.svc:8081; unset when spec.service.grpcPort is 0."""
    model_uri: str | None = None
    """Artifact being served."""
    model_version: str | None = None
    """Version being served."""
    last_good_model_uri: str | None = None
    """Artifact of the last version that became Ready."""
    last_good_model_version: str | None = None
    """Last version that became Ready; the rollback target."""
    rejected_model_uri: str | None = None
    """Artifact that was rolled back from; not deployed again until the model source changes."""
    replicas: int = 0
    """Server pods that exist (not terminating); the scale subresource's current replica count."""
    ready_replicas: int = 0
    """Server pods that are ready."""
    selector: str | None = None
    """Label selector of the server pods, as a string (the scale subresource's selector, which a HorizontalPodAutoscaler uses to find the pods)."""
    last_ready_replicas: int | None = None
    """spec.replicas when every replica of the served version was last ready; a larger spec.replicas is a scale-up rolling out (phase Scaling), not a degradation."""
    supervision: SupervisionStatus = Field(default_factory=SupervisionStatus)
    """Restart history and the last failure."""


# --------------------------------------------------------------------------- ModelPipeline


def _rules(model: type[BaseModel], *, transition: bool | None = None) -> list[dict[str, str]]:
    """The CEL rules a model declares; ``transition=False`` leaves out the oldSelf (update) rules."""
    extra = model.model_config.get("json_schema_extra")
    rules = list(extra.get("x-kubernetes-validations", [])) if isinstance(extra, dict) else []
    if transition is False:
        rules = [r for r in rules if "oldSelf" not in r["rule"]]
    return rules


class PipelineTrainingSpec(TrainingJobSpec):
    """A TrainingJob spec, as in a TrainingJob. Each run is a new TrainingJob, so nothing here is immutable: a change of anything but suspend and ttlSecondsAfterFinished starts a new run."""

    model_config = ConfigDict(json_schema_extra=_validations(*_rules(TrainingJobSpec, transition=False)))


#: A placeholder model source, to check a serving spec with every ModelServerSpec rule.
_PLACEHOLDER_MODEL = {"uri": "pvc://placeholder/pipeline/run/version/"}

_ServingFields: type[Model] = create_model(  # ModelServerSpec's fields without `model`
    "_ServingFields",
    __base__=Model,
    **{  # type: ignore[call-overload]
        name: (info.annotation, copy.copy(info))
        for name, info in ModelServerSpec.model_fields.items()
        if name != "model"
    },
)


#: ModelServerSpec's own CEL rules, but those about its model.
_SERVING_RULES = [r for r in _rules(ModelServerSpec) if "self.model" not in r["rule"]]


class PipelineServingSpec(_ServingFields):  # type: ignore[misc, valid-type]
    """A ModelServer spec without model: the pipeline serves the model of its promoted run."""

    model_config = ConfigDict(
        json_schema_extra=_validations(*_SERVING_RULES) if _SERVING_RULES else None
    )

    @model_validator(mode="before")
    @classmethod
    def _no_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            raise ValueError(
                "spec.serving.model must not be set: the pipeline serves the model of its promoted run"
            )
        return data

    @model_validator(mode="after")
    def _is_a_model_server_spec(self) -> PipelineServingSpec:
        # Every rule of ModelServerSpec holds for the spec the pipeline will build from this one.
        try:
            ModelServerSpec.model_validate({**self.to_wire(), "model": _PLACEHOLDER_MODEL})
        except ValidationError as e:
            raise ValueError("; ".join(str(err["msg"]) for err in e.errors())) from None
        return self

    def with_model(self, uri: str) -> ModelServerSpec:
        """The ModelServer spec that serves the artifact at ``uri``."""
        return ModelServerSpec.model_validate({**self.to_wire(), "model": {"uri": uri}})


class Promotion(Model):
    """The gate a successful run must pass before its model is served. Scores are the runs' status.model.score: higher is better."""

    min_score: float | None = Field(None, ge=-1e6, le=1e6)
    """The run's score must reach this (accuracy for classifiers, r2 for regressors, or the search's scoring); none: no minimum."""
    must_improve: bool = False
    """true: the run's score must also beat the score of the model being served."""


class PipelineSupervision(Model):
    """OTP-style supervision of the pipeline's two children, a supervisor of supervisors: training (started first), then serving."""

    strategy: Strategy = Strategy.REST_FOR_ONE
    """OneForOne restarts the failed child; RestForOne also restarts serving when training restarts (serving follows the new run once promoted); OneForAll: a serving failure also retrains. A working server is never stopped."""
    max_restarts: int = Field(3, ge=0, le=1000)
    """OTP intensity: at most this many child restarts within periodSeconds; one more escalates (pipeline Failed, the server keeps serving)."""
    period_seconds: int = Field(3600, ge=1, le=604800)
    """OTP period: the sliding window, in seconds, in which restarts are counted."""
    backoff: Backoff = Field(
        default_factory=lambda: Backoff(initial_seconds=10, factor=2, max_seconds=600),
        json_schema_extra={"default": {"initialSeconds": 10, "factor": 2, "maxSeconds": 600}},
    )
    """Delay before each child restart (Kubernetes addition: OTP restarts at once)."""


class ModelPipelineSpec(Model):
    """Desired state of a ModelPipeline."""

    training: PipelineTrainingSpec
    """The spec of every training run (a TrainingJob <pipeline>-<run>)."""
    serving: PipelineServingSpec = Field(
        default_factory=PipelineServingSpec, json_schema_extra={"default": {}}
    )
    """The spec of the ModelServer <pipeline>; its model is the promoted run's artifact."""
    promotion: Promotion = Field(default_factory=Promotion, json_schema_extra={"default": {}})
    """The gate before a new model is served."""
    schedule: str | None = Field(None, max_length=128, pattern=CRON_PATTERN)
    """Cron schedule (UTC, CronJob syntax: five fields or @daily, @hourly, ...) of extra runs; a time that comes while a run is in progress is skipped."""
    supervision: PipelineSupervision = Field(
        default_factory=PipelineSupervision, json_schema_extra={"default": {}}
    )
    """The pipeline's own restart intensity and strategy over its children."""
    run_history_limit: int = Field(5, ge=1, le=100)
    """Finished runs (TrainingJobs) kept for their logs and artifacts; older ones are deleted, never the one being served."""

    @field_validator("schedule")
    @classmethod
    def _cron(cls, v: str | None) -> str | None:
        if v is not None:
            from mlvisor.operator.cron import check_schedule

            check_schedule(v)
        return v


class PipelinePhase(enum.StrEnum):
    PENDING = "Pending"
    TRAINING = "Training"
    DEPLOYING = "Deploying"
    SERVING = "Serving"
    RESTARTING = "Restarting"
    FAILED = "Failed"


class PipelineChild(enum.StrEnum):
    """The children of a pipeline, in start order."""

    TRAINING = "training"
    SERVING = "serving"


class RunTrigger(enum.StrEnum):
    CREATED = "Created"
    SCHEDULE = "Schedule"
    SPEC_CHANGED = "SpecChanged"
    RESTART = "Restart"


class RunPhase(enum.StrEnum):
    PENDING = "Pending"
    RUNNING = "Running"
    SUCCEEDED = "Succeeded"
    FAILED = "Failed"
    STOPPED = "Stopped"


class PipelineRun(Model):
    """One training run: a TrainingJob the pipeline created."""

    name: str
    """The TrainingJob, <pipeline>-<number>."""
    number: int = Field(ge=1)
    """Run number, counting from 1."""
    trigger: RunTrigger | None = None
    """Why it started: Created, Schedule, SpecChanged or Restart (the pipeline restarted training)."""
    phase: RunPhase = RunPhase.PENDING
    """Pending (created, not seen yet), Running, Succeeded, Failed or Stopped (superseded, or stopped by the pipeline)."""
    version: str | None = None
    """Artifact version, once the run succeeded."""
    model_uri: str | None = None
    """Artifact URI, once the run succeeded."""
    score: float | None = None
    """The run's score (its status.model.score)."""
    promoted: bool = False
    """The run passed the gate and its model was rolled out."""
    reason: str | None = Field(None, max_length=1024, pattern=CONDITION_REASON)
    """Why it was or was not promoted, or why it failed (CamelCase)."""
    message: str | None = Field(None, max_length=4096)
    """The same, in words."""
    start_time: dt.datetime | None = None
    """When the pipeline created the TrainingJob."""
    completion_time: dt.datetime | None = None
    """When the pipeline saw it finish."""


class PendingRestart(Model):
    """A child restart the pipeline decided and has not carried out yet."""

    child: PipelineChild
    """training (a new run) or serving (a re-created ModelServer)."""
    restart_at: dt.datetime | None = None
    """When it happens (back-off); absent while the pipeline is Failed (it happens once the spec changes)."""


class ChildFailure(Model):
    """The most recent child exit the pipeline handled."""

    child: PipelineChild
    """training or serving."""
    resource: str
    """The child that failed, e.g. TrainingJob iris-3."""
    reason: str | None = None
    """The child's Failed reason (RestartIntensityExceeded, FailurePolicy, ...)."""
    exit_code: int | None = None
    """For a training run: the exit code of its last failed worker."""
    message: str | None = Field(None, max_length=4096)
    """The child's Failed message."""
    time: dt.datetime
    """When the pipeline saw it."""


class PipelineSupervisionStatus(Model):
    """The pipeline's memory as a supervisor; kept in status so an operator restart neither forgets nor double-counts."""

    restart_times: list[dt.datetime] = Field(default_factory=list)
    """Times of the child restarts inside the current window (at most maxRestarts+1 entries)."""
    restarts_in_window: int = 0
    """Number of restarts counted in the current window."""
    total_restarts: int = 0
    """Child restarts over the whole life of the pipeline."""
    next_restart_time: dt.datetime | None = None
    """When the next pending child restart happens (back-off)."""
    pending: list[PendingRestart] = Field(default_factory=list)
    """Child restarts decided and not carried out yet."""
    last_failure: ChildFailure | None = None
    """The most recent child failure."""
    seen_failures: list[str] = Field(default_factory=list)
    """Identities of the child exits already handled (uid@time of their Failed condition), newest last."""


class ModelPipelineStatus(Model):
    """Observed state of a ModelPipeline."""

    observed_generation: int | None = None
    """metadata.generation this status reflects."""
    phase: PipelinePhase = PipelinePhase.PENDING
    """Pending, Training (no model served yet), Deploying, Serving, Restarting (a child waits for its back-off) or Failed."""
    conditions: list[Condition] = Field(default_factory=list)
    """Training, Ready, Restarting, Failed (by type)."""
    runs: list[PipelineRun] = Field(default_factory=list)
    """The kept runs, oldest first."""
    last_run: int = 0
    """Number of the latest run."""
    training_spec_hash: str | None = None
    """Fingerprint of spec.training the latest run started from (suspend and ttlSecondsAfterFinished excluded)."""
    serving_run: str | None = None
    """The run whose model the ModelServer is told to serve."""
    serving_version: str | None = None
    """Its artifact version (printer column)."""
    serving_model_uri: str | None = None
    """Its artifact URI."""
    serving_score: float | None = None
    """Its score: what mustImprove compares against."""
    url: str | None = None
    """V2 base URL of the served model (the ModelServer's status.url)."""
    next_run_time: dt.datetime | None = None
    """When spec.schedule starts the next run."""
    supervision: PipelineSupervisionStatus = Field(default_factory=PipelineSupervisionStatus)
    """Restart window, pending restarts and the last child failure."""


# --------------------------------------------------------------------------- whole resources


class ObjectMeta(BaseModel):
    """The part of metadata mlvisor reads; everything else is kept as is."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, alias_generator=to_camel)

    name: str = Field(pattern=DNS_LABEL, max_length=63)
    namespace: str = Field("default", pattern=DNS_LABEL, max_length=63)
    uid: str | None = None
    generation: int | None = None
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class TrainingJob(Model):
    """A TrainingJob resource: train one scikit-learn model, supervised."""

    api_version: Literal["mlvisor.dev/v1alpha1"] = API_VERSION
    kind: Literal["TrainingJob"] = "TrainingJob"
    metadata: ObjectMeta
    spec: TrainingJobSpec
    status: TrainingJobStatus | None = None


class ModelServer(Model):
    """A ModelServer resource: serve one model over the Open Inference Protocol, supervised."""

    api_version: Literal["mlvisor.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelServer"] = "ModelServer"
    metadata: ObjectMeta
    spec: ModelServerSpec
    status: ModelServerStatus | None = None


class ModelPipeline(Model):
    """A ModelPipeline resource: retrain, gate and serve a model, supervising its TrainingJob runs and its ModelServer as a tree."""

    api_version: Literal["mlvisor.dev/v1alpha1"] = API_VERSION
    kind: Literal["ModelPipeline"] = "ModelPipeline"
    metadata: ObjectMeta
    spec: ModelPipelineSpec
    status: ModelPipelineStatus | None = None


KINDS: dict[str, type[TrainingJob] | type[ModelServer] | type[ModelPipeline]] = {
    "TrainingJob": TrainingJob,
    "ModelServer": ModelServer,
    "ModelPipeline": ModelPipeline,
}

PLURALS = {"TrainingJob": "trainingjobs", "ModelServer": "modelservers", "ModelPipeline": "modelpipelines"}
SHORT_NAMES = {"TrainingJob": "tj", "ModelServer": "ms", "ModelPipeline": "mp"}
