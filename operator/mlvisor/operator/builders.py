"""Pure manifest builders: the Pods, Deployment and Service mlvisor creates, as plain dicts.

One concept, one place: every child object of a TrainingJob or a ModelServer is built here,
so the Kubernetes shell and the local-process shell run workers and servers from the very
same description (command, arguments, environment), and the tests can check each object
against the Kubernetes OpenAPI schema. Names are deterministic (a retried handler never
duplicates a child), every child carries the app.kubernetes.io/* labels and a controller
ownerReference, and every pod runs under the ``restricted`` Pod Security Standard.

Pure: no clock, no I/O, no framework.
"""

from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from mlvisor import api
from mlvisor.api.labels import (
    ANNOTATION_MODEL_URI,
    ANNOTATION_MODEL_VERSION,
    ANNOTATION_TRAINING_SPEC_HASH,
    LABEL_ATTEMPT,
    LABEL_COMPONENT,
    LABEL_INSTANCE,
    LABEL_MANAGED_BY,
    LABEL_NAME,
    LABEL_PIPELINE,
    LABEL_RUN,
    LABEL_WORKER_INDEX,
    MANAGED_BY,
    SELECT_LABEL_VALUE,
)
from mlvisor.api.progress import PROGRESS_PORT, PROGRESS_PORT_ENV, PROGRESS_PORT_NAME
from mlvisor.operator.plan import (
    SELECT_INDEX,
    ModelRef,
    OperatorConfig,
    Owner,
)

__all__ = [
    "DEFAULT_SERVER_RESOURCES",
    "DEFAULT_WORKER_RESOURCES",
    "RUN_AS_ID",
    "STARTUP_PROBE_PERIOD_SECONDS",
    "build_pipeline_server",
    "build_pipeline_training_job",
    "build_server_deployment",
    "build_server_service",
    "build_upload_pod",
    "build_worker_pod",
    "credential_env",
    "dataset_claim",
    "is_remote_uri",
    "memory_limit",
    "model_uri_for",
    "owner_of",
    "parse_model_uri",
    "parse_worker_index",
    "pipeline_labels",
    "pipeline_run_name",
    "pipeline_training_selector",
    "select_pod_name",
    "server_labels",
    "server_selector",
    "server_selector_string",
    "version_of",
    "worker_index_label",
    "worker_labels",
    "worker_pod_name",
]

#: Longest name a Pod may have and still be usable as a hostname label (DNS-1123 label).
MAX_NAME_LENGTH = 63

#: Longest run (TrainingJob) name of a pipeline: its pods add "-worker-<index>-<attempt>".
MAX_RUN_NAME_LENGTH = 44

#: UID and GID of every mlvisor container (the image's non-root user).
RUN_AS_ID = 10001

#: Used when spec.resources gives neither requests nor limits. Training holds the whole
#: dataset and a fitted ensemble in memory, hence the generous memory limit; no CPU limit,
#: because CPU throttling only slows a batch job down without protecting anyone.
DEFAULT_WORKER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "250m", "memory": "256Mi"},
    "limits": {"memory": "2Gi"},
}
#: Used when a ModelServer's spec.resources gives neither requests nor limits: Python,
#: FastAPI and scikit-learn with one loaded model fit comfortably in 1Gi.
DEFAULT_SERVER_RESOURCES: dict[str, dict[str, str]] = {
    "requests": {"cpu": "100m", "memory": "256Mi"},
    "limits": {"memory": "1Gi"},
}

#: The startupProbe polls this often, so a server is Ready soon after its model loads.
STARTUP_PROBE_PERIOD_SECONDS = 2

_MODELS_VOLUME = "models"
_DATA_VOLUME = "data"
_MODEL_VOLUME = "model"
_TMP_VOLUME = "tmp"
_TMP_MOUNT = "/tmp"


# --------------------------------------------------------------------------- names


def _fit_name(base: str, suffix: str, limit: int = MAX_NAME_LENGTH) -> str:
    """``<base><suffix>``, shortened deterministically to ``limit`` characters.

    When too long, the base is cut and followed by 8 hex digits of its SHA-256, so two
    long job names that share a prefix still give different pod names.
    """
    name = f"{base}{suffix}"
    if len(name) <= limit:
        return name
    digest = hashlib.sha256(base.encode()).hexdigest()[:8]
    keep = limit - len(suffix) - len(digest) - 1
    prefix = base[: max(keep, 0)].rstrip("-.")
    return f"{prefix}-{digest}{suffix}" if prefix else f"{digest}{suffix}"


def _job_name(job: api.TrainingJob | str) -> str:
    return job if isinstance(job, str) else job.metadata.name


def worker_pod_name(job: api.TrainingJob | str, index: int, attempt: int) -> str:
    """``<job>-worker-<index>-<attempt>``, or ``<job>-select-<attempt>`` for SELECT_INDEX."""
    if index == SELECT_INDEX:
        return select_pod_name(job, attempt)
    if index < 0:
        raise ValueError(f"worker index must be >= 0 or SELECT_INDEX, got {index}")
    return _fit_name(_job_name(job), f"-worker-{index}-{attempt}")


def select_pod_name(job: api.TrainingJob | str, attempt: int) -> str:
    """``<job>-select-<attempt>``: the select-and-refit step of a search."""
    return _fit_name(_job_name(job), f"-select-{attempt}")


def worker_index_label(index: int) -> str:
    """Value of the mlvisor.dev/worker-index label ("-1" is not a valid label value)."""
    return SELECT_LABEL_VALUE if index == SELECT_INDEX else str(index)


def parse_worker_index(value: str) -> int:
    """The worker index a pod's mlvisor.dev/worker-index label names (inverse of worker_index_label)."""
    if value == SELECT_LABEL_VALUE:
        return SELECT_INDEX
    return int(value)


# --------------------------------------------------------------------------- model URIs


def _output_claim(job: api.TrainingJob, config: OperatorConfig) -> str:
    return job.spec.output.volume_claim or config.models_claim


def model_uri_for(job: api.TrainingJob, version: str, config: OperatorConfig) -> str:
    """Where the job's artifact is written: ``<spec.output.uri>/<version>/`` (an object store),
    else ``pvc://<claim>/<namespace>/<job>/<version>/``."""
    if job.spec.output.uri is not None:
        return f"{job.spec.output.uri.rstrip('/')}/{version}/"
    claim = _output_claim(job, config)
    return f"pvc://{claim}/{job.metadata.namespace}/{job.metadata.name}/{version}/"


#: Model URIs each server pod downloads (and verifies) instead of mounting.
REMOTE_SCHEMES = ("s3://", "https://", "http://")


def is_remote_uri(uri: str) -> bool:
    """An object store or web server (``s3://``, ``https://``, ``http://``), not a volume."""
    return uri.startswith(REMOTE_SCHEMES)


def parse_model_uri(uri: str) -> tuple[str | None, str]:
    """(claim, path inside the claim) for ``pvc://``; (None, absolute path) for ``file:///``.

    Trailing slashes are dropped from the path. Raises ValueError for anything else (a remote
    URI, :func:`is_remote_uri`, is no path of this machine or of a volume).
    """
    if uri.startswith("pvc://"):
        claim, _, path = uri[len("pvc://") :].partition("/")
        path = path.strip("/")
        if not claim or not path:
            raise ValueError(f"model URI {uri!r} must look like pvc://<claim>/<path>/")
        return claim, path
    if uri.startswith("file://"):
        path = uri[len("file://") :]
        if not path.startswith("/"):
            raise ValueError(f"model URI {uri!r} must look like file:///<absolute path>/")
        return None, path.rstrip("/") or "/"
    raise ValueError(f"model URI {uri!r} must start with pvc:// or file:///")


def version_of(uri: str) -> str:
    """The artifact version a model URI names: its last path segment."""
    if is_remote_uri(uri):
        path = uri.split("://", 1)[1].partition("/")[2]
    else:
        _, path = parse_model_uri(uri)
    segment = path.rstrip("/").rsplit("/", 1)[-1]
    if not segment:
        raise ValueError(f"model URI {uri!r} names no version directory")
    return segment


# --------------------------------------------------------------------------- shared pieces


def owner_of(resource: api.TrainingJob | api.ModelServer | api.ModelPipeline) -> Owner:
    """The Owner of a resource's children (uid "" when the resource has none, i.e. locally)."""
    meta = resource.metadata
    return Owner(
        api_version=resource.api_version,
        kind=resource.kind,
        name=meta.name,
        namespace=meta.namespace,
        uid=meta.uid or "",
    )


def _owner_references(owner: Owner) -> list[dict[str, Any]]:
    # Without a uid (the local runtime) there is nothing a garbage collector could follow.
    if not owner.uid:
        return []
    return [
        {
            "apiVersion": owner.api_version,
            "kind": owner.kind,
            "name": owner.name,
            "uid": owner.uid,
            "controller": True,
            "blockOwnerDeletion": True,
        }
    ]


def _metadata(name: str, owner: Owner, labels: dict[str, str], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name, "namespace": owner.namespace, "labels": labels}
    if annotations:
        meta["annotations"] = annotations
    refs = _owner_references(owner)
    if refs:
        meta["ownerReferences"] = refs
    return meta


def _pod_security_context() -> dict[str, Any]:
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "fsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _container_security_context() -> dict[str, Any]:
    return {
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]},
    }


def _resources(spec: api.ResourceRequirements, default: dict[str, dict[str, str]]) -> dict[str, Any]:
    """spec.resources when it says anything, else the documented default. Quantities as strings."""
    if not spec.limits and not spec.requests:
        return {kind: dict(values) for kind, values in default.items()}
    out: dict[str, Any] = {}
    if spec.requests:
        out["requests"] = {k: str(v) for k, v in spec.requests.items()}
    if spec.limits:
        out["limits"] = {k: str(v) for k, v in spec.limits.items()}
    return out


def memory_limit(resource: api.TrainingJob | api.ModelServer) -> str | None:
    """The memory limit its worker or server containers get (what an OOM kill is measured against)."""
    default = DEFAULT_WORKER_RESOURCES if isinstance(resource, api.TrainingJob) else DEFAULT_SERVER_RESOURCES
    limit = _resources(resource.spec.resources, default).get("limits", {}).get("memory")
    return str(limit) if limit is not None else None


def _env(pairs: list[tuple[str, str]]) -> list[dict[str, Any]]:
    return [{"name": k, "value": v} for k, v in pairs]


def credential_env(credentials: api.Credentials | None, role: str) -> list[dict[str, Any]]:
    """The keys of a credentials Secret as the container's env (MLVISOR_<ROLE>_<KEY>), straight from
    the Secret (secretKeyRef): the operator never reads it. The access keys are required (a missing
    Secret or key is the kubelet's CreateContainerConfigError); the endpoint, region and session
    token are optional."""
    if credentials is None:
        return []
    return [
        {
            "name": api.credential_variable(role, key),
            "valueFrom": {
                "secretKeyRef": {
                    "name": credentials.secret_name,
                    "key": key,
                    "optional": key not in api.REQUIRED_CREDENTIAL_KEYS,
                }
            },
        }
        for key in api.CREDENTIAL_KEYS
    ]


def _tmp_volume() -> dict[str, Any]:
    # The root filesystem is read-only; Python, joblib and uvicorn still want a scratch dir.
    return {"name": _TMP_VOLUME, "emptyDir": {"sizeLimit": "1Gi"}}


# --------------------------------------------------------------------------- worker pods


def worker_labels(job: api.TrainingJob | str, index: int) -> dict[str, str]:
    """Labels every worker (and select) pod of a job carries, without the attempt."""
    return {
        LABEL_NAME: "mlvisor",
        LABEL_INSTANCE: _job_name(job),
        LABEL_COMPONENT: "select" if index == SELECT_INDEX else "worker",
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_WORKER_INDEX: worker_index_label(index),
    }


def worker_args(job: api.TrainingJob, index: int, workers: int | None = None) -> list[str]:
    """Trainer arguments: ``--worker-index I --workers N``, or ``--select --workers N``.

    ``workers`` is the number of shards the planner runs (it may cap spec.workers at the
    number of search trials); default spec.workers, and 1 for a job without a search.
    """
    if workers is None:
        workers = job.spec.workers if job.spec.search is not None else 1
    if index == SELECT_INDEX:
        return ["--select", "--workers", str(workers)]
    return ["--worker-index", str(index), "--workers", str(workers)]


def dataset_claim(spec: api.TrainingJobSpec) -> str | None:
    """The claim a dataset is on: "" for spec.dataset.csv without volumeClaim (the output claim),
    the claim of spec.dataset.csv or of a ``pvc://`` uri; None when there is none to mount."""
    if spec.dataset.csv is not None:
        return spec.dataset.csv.volume_claim or ""
    uri = spec.dataset.uri or ""
    if uri.startswith("pvc://"):
        return uri[len("pvc://"):].split("/", 1)[0]
    return None


def output_dir(job: api.TrainingJob, config: OperatorConfig) -> str:
    """Directory (inside the pod) holding the job's versions: ``<models_mount>/<namespace>/<job>``."""
    return f"{config.models_mount}/{job.metadata.namespace}/{job.metadata.name}"


def spec_json(spec: api.TrainingJobSpec) -> str:
    """The spec as workers receive it (``MLVISOR_SPEC``): its wire form, keys sorted, no spaces."""
    return json.dumps(spec.to_wire(), sort_keys=True, separators=(",", ":"))


def build_worker_pod(
    job: api.TrainingJob,
    index: int,
    attempt: int,
    version: str,
    config: OperatorConfig,
    *,
    workers: int | None = None,
    spec_text: str | None = None,
) -> dict[str, Any]:
    """The Pod running worker ``index`` (or the select step, SELECT_INDEX) at ``attempt``.

    restartPolicy Never: restarts are the supervisor's decisions (a new pod, attempt+1),
    never the kubelet's. No activeDeadlineSeconds: the planner enforces the job deadline.

    A search worker (not the select step) also gets: the container port ``progress``
    (``api.progress.PROGRESS_PORT``) where it serves ``GET /progress`` for the operator to poll,
    and ``MLVISOR_CPUS``, the CPUs its pod is given (the downward API's resourceFieldRef of its
    CPU limit, else its request, rounded up to whole CPUs), which it uses to cross-validate
    that many folds at once.

    ``spec_text``: :func:`spec_json` of the job's spec, when the caller has it already.
    """
    spec = job.spec
    owner = owner_of(job)
    name = worker_pod_name(job, index, attempt)
    labels = {**worker_labels(job, index), LABEL_ATTEMPT: str(attempt)}
    models_claim = _output_claim(job, config)
    # The output volume holds the artifacts, and a search's trial results shared by its shards;
    # an artifact going to an object store (spec.output.uri) needs it only for the latter.
    uses_claim = spec.output.uri is None or spec.search is not None
    is_shard = spec.search is not None and index != SELECT_INDEX

    volumes: list[dict[str, Any]] = [_tmp_volume()]
    mounts: list[dict[str, Any]] = [{"name": _TMP_VOLUME, "mountPath": _TMP_MOUNT}]
    env = [
        ("MLVISOR_SPEC", spec_text if spec_text is not None else spec_json(spec)),
        ("MLVISOR_MODEL_NAME", job.metadata.name),
        ("MLVISOR_MODEL_VERSION", version),
    ]
    if uses_claim:
        volumes.insert(0, {"name": _MODELS_VOLUME, "persistentVolumeClaim": {"claimName": models_claim}})
        mounts.insert(0, {"name": _MODELS_VOLUME, "mountPath": config.models_mount})
        env.append(("MLVISOR_OUTPUT_DIR", output_dir(job, config)))
    data_claim = dataset_claim(spec)
    if data_claim is not None:
        data_claim = data_claim or models_claim
        if data_claim == models_claim and uses_claim:
            # One volume, mounted twice: read-write for artifacts, read-only for the data.
            data_volume = _MODELS_VOLUME
        else:
            data_volume = _DATA_VOLUME
            volumes.append({"name": _DATA_VOLUME, "persistentVolumeClaim": {"claimName": data_claim, "readOnly": True}})
        mounts.append({"name": data_volume, "mountPath": config.data_mount, "readOnly": True})
        env.append(("MLVISOR_DATA_DIR", config.data_mount))
    env.append(("PYTHONUNBUFFERED", "1"))
    # Object-store credentials reach only the pods that use them: every worker reads the data, the
    # ones that write the artifact (not a search's shards) write to spec.output.uri.
    secret_env = credential_env(spec.dataset.credentials, "DATASET")
    if not is_shard:
        secret_env += credential_env(spec.output.credentials, "OUTPUT")
    if is_shard:
        env.append((PROGRESS_PORT_ENV, str(PROGRESS_PORT)))

    container: dict[str, Any] = {
        "name": "trainer",
        "image": spec.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", "mlvisor.trainer"],
        "args": worker_args(job, index, workers),
        "env": _env(env) + secret_env,
        "resources": _resources(spec.resources, DEFAULT_WORKER_RESOURCES),
        "volumeMounts": mounts,
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    if is_shard:
        container["env"].append({"name": "MLVISOR_CPUS", "valueFrom": {"resourceFieldRef": {
            "containerName": "trainer", "resource": _cpu_resource(spec.resources), "divisor": "1"}}})
        container["ports"] = [{"name": PROGRESS_PORT_NAME, "containerPort": PROGRESS_PORT, "protocol": "TCP"}]
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": _metadata(name, owner, labels),
        "spec": {
            "restartPolicy": "Never",
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "securityContext": _pod_security_context(),
            "containers": [container],
            "volumes": volumes,
        },
    }


def _cpu_resource(resources: api.ResourceRequirements) -> str:
    """The resource a worker's CPU count is read from: its CPU limit when it has one, else its
    request (the default resources request 250m: one CPU). Without either the downward API
    would give the node's allocatable CPUs, which are not the pod's to use."""
    return "limits.cpu" if (resources.limits or {}).get("cpu") is not None else "requests.cpu"


# --------------------------------------------------------------------------- model server


def server_selector(server: api.ModelServer) -> dict[str, str]:
    """The labels the Deployment and the Service select server pods by."""
    return {
        LABEL_NAME: "mlvisor",
        LABEL_INSTANCE: server.metadata.name,
        LABEL_COMPONENT: "server",
    }


def server_labels(server: api.ModelServer) -> dict[str, str]:
    return {**server_selector(server), LABEL_MANAGED_BY: MANAGED_BY}


def model_name_of(server: api.ModelServer) -> str:
    """The name in the V2 URL: spec.modelName, default metadata.name."""
    return server.spec.model_name or server.metadata.name


def _http_probe(path: str, period: int, failure_threshold: int, timeout: int = 2) -> dict[str, Any]:
    return {
        "httpGet": {"path": path, "port": "http"},
        "periodSeconds": period,
        "timeoutSeconds": timeout,
        "failureThreshold": failure_threshold,
    }


def build_server_deployment(
    server: api.ModelServer,
    model: ModelRef,
    config: OperatorConfig,
    *,
    replicas: int | None = None,
) -> dict[str, Any]:
    """The Deployment serving ``model``; ``replicas`` overrides spec.replicas (0: scaled to zero).

    A ``pvc://<claim>/<path>/`` model mounts the claim read-only at config.models_mount;
    a ``file:///<path>/`` model (local runtime only) is passed as a plain directory.
    """
    spec = server.spec
    owner = owner_of(server)
    annotations = {ANNOTATION_MODEL_URI: model.uri, ANNOTATION_MODEL_VERSION: model.version}

    volumes: list[dict[str, Any]] = [_tmp_volume()]
    mounts: list[dict[str, Any]] = [{"name": _TMP_VOLUME, "mountPath": _TMP_MOUNT}]
    secret_env: list[dict[str, Any]] = []
    if is_remote_uri(model.uri):
        # Each pod downloads the version into its scratch volume, verifies it, then loads it.
        model_env = ("MLVISOR_MODEL_URI", model.uri)
        secret_env = credential_env(spec.model.credentials, "MODEL")
    else:
        claim, path = parse_model_uri(model.uri)
        if claim is not None:
            volumes.insert(0, {"name": _MODEL_VOLUME, "persistentVolumeClaim": {"claimName": claim, "readOnly": True}})
            mounts.insert(0, {"name": _MODEL_VOLUME, "mountPath": config.models_mount, "readOnly": True})
            model_env = ("MLVISOR_MODEL_DIR", f"{config.models_mount}/{path}")
        else:
            model_env = ("MLVISOR_MODEL_DIR", path)

    startup_failures = max(1, math.ceil(spec.startup_timeout_seconds / STARTUP_PROBE_PERIOD_SECONDS))
    grpc = spec.service.grpc_port != 0
    ports = [{"name": "http", "containerPort": config.server_port, "protocol": "TCP"}]
    if grpc:
        ports.append({"name": "grpc", "containerPort": config.server_grpc_port, "protocol": "TCP"})
    container = {
        "name": "server",
        "image": spec.image or config.image,
        "imagePullPolicy": config.image_pull_policy,
        "command": ["python", "-m", "mlvisor.server"],
        "env": _env(
            [
                model_env,
                ("MLVISOR_MODEL_NAME", model_name_of(server)),
                ("MLVISOR_PORT", str(config.server_port)),
                ("MLVISOR_HOST", "0.0.0.0"),
                ("MLVISOR_MAX_BATCH_SIZE", str(spec.batching.max_batch_size)),
                ("MLVISOR_MAX_LATENCY_MS", f"{spec.batching.max_latency_ms:g}"),
                ("MLVISOR_GRPC_PORT", str(config.server_grpc_port if grpc else 0)),
                ("PYTHONUNBUFFERED", "1"),
            ]
        )
        + secret_env,
        "ports": ports,
        "startupProbe": _http_probe("/v2/health/ready", STARTUP_PROBE_PERIOD_SECONDS, startup_failures),
        "readinessProbe": _http_probe("/v2/health/ready", 5, 3),
        "livenessProbe": _http_probe("/v2/health/live", 10, 3),
        "resources": _resources(spec.resources, DEFAULT_SERVER_RESOURCES),
        "volumeMounts": mounts,
        "securityContext": _container_security_context(),
        "terminationMessagePolicy": "FallbackToLogsOnError",
    }
    pod_labels = server_labels(server)
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(server.metadata.name, owner, server_labels(server), annotations),
        "spec": {
            "replicas": spec.replicas if replicas is None else replicas,
            "selector": {"matchLabels": server_selector(server)},
            "strategy": {
                "type": "RollingUpdate",
                # Never fewer ready servers than asked for while a new model rolls out.
                "rollingUpdate": {"maxUnavailable": 0, "maxSurge": 1},
            },
            "revisionHistoryLimit": 5,
            "template": {
                "metadata": {"labels": pod_labels, "annotations": annotations},
                "spec": {
                    "automountServiceAccountToken": False,
                    "enableServiceLinks": False,
                    "securityContext": _pod_security_context(),
                    "containers": [container],
                    "volumes": volumes,
                },
            },
        },
    }


def build_server_service(server: api.ModelServer, config: OperatorConfig) -> dict[str, Any]:
    """The Service ``<server>`` in front of the server pods: spec.service.port -> http, grpcPort -> grpc."""
    svc = server.spec.service
    ports: list[dict[str, Any]] = [{"name": "http", "port": svc.port, "targetPort": "http", "protocol": "TCP"}]
    if svc.grpc_port:
        # appProtocol tells meshes and gateways that this port speaks HTTP/2 without TLS (gRPC).
        ports.append(
            {
                "name": "grpc",
                "port": svc.grpc_port,
                "targetPort": "grpc",
                "protocol": "TCP",
                "appProtocol": "kubernetes.io/h2c",
            }
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(server.metadata.name, owner_of(server), server_labels(server)),
        "spec": {
            "type": svc.type.value,
            "selector": server_selector(server),
            "ports": ports,
        },
    }


def server_selector_string(server: api.ModelServer) -> str:
    """server_selector as a label-selector string (status.selector, read by the scale subresource)."""
    return ",".join(f"{k}={v}" for k, v in sorted(server_selector(server).items()))


# --------------------------------------------------------------------------- model pipeline


def pipeline_run_name(pipeline: api.ModelPipeline | str, number: int) -> str:
    """``<pipeline>-<number>``: the TrainingJob of one run (shortened like pod names when too long).

    Kept short enough that the run's pods, ``<run>-worker-<i>-<attempt>``, still fit a label.
    """
    if number < 1:
        raise ValueError(f"run number must be >= 1, got {number}")
    base = pipeline if isinstance(pipeline, str) else pipeline.metadata.name
    return _fit_name(base, f"-{number}", limit=MAX_RUN_NAME_LENGTH)


def pipeline_labels(pipeline: api.ModelPipeline, component: str) -> dict[str, str]:
    """Labels of a pipeline's children: component ``training`` (runs) or ``serving``."""
    return {
        LABEL_NAME: "mlvisor",
        LABEL_INSTANCE: pipeline.metadata.name,
        LABEL_COMPONENT: component,
        LABEL_MANAGED_BY: MANAGED_BY,
        LABEL_PIPELINE: pipeline.metadata.name,
    }


def pipeline_training_selector(pipeline: api.ModelPipeline) -> dict[str, str]:
    """The labels a pipeline's TrainingJobs are listed by."""
    return {LABEL_MANAGED_BY: MANAGED_BY, LABEL_PIPELINE: pipeline.metadata.name, LABEL_COMPONENT: "training"}


def build_pipeline_training_job(pipeline: api.ModelPipeline, number: int, spec_hash: str) -> dict[str, Any]:
    """The TrainingJob of run ``number``: spec.training as is, owned by the pipeline (controller)."""
    labels = {**pipeline_labels(pipeline, "training"), LABEL_RUN: str(number)}
    spec = api.TrainingJobSpec.model_validate(pipeline.spec.training.to_wire())
    return {
        "apiVersion": api.API_VERSION,
        "kind": "TrainingJob",
        "metadata": _metadata(
            pipeline_run_name(pipeline, number),
            owner_of(pipeline),
            labels,
            {ANNOTATION_TRAINING_SPEC_HASH: spec_hash},
        ),
        "spec": spec.to_wire(),
    }


def build_pipeline_server(pipeline: api.ModelPipeline, model_uri: str) -> dict[str, Any]:
    """The ModelServer ``<pipeline>``: spec.serving with the promoted run's artifact as its model."""
    spec = pipeline.spec.serving.with_model(model_uri, pipeline.spec.training.output.credentials)
    return {
        "apiVersion": api.API_VERSION,
        "kind": "ModelServer",
        "metadata": _metadata(pipeline.metadata.name, owner_of(pipeline), pipeline_labels(pipeline, "serving")),
        "spec": spec.to_wire(),
    }


# --------------------------------------------------------------------------- mlvisor upload

#: Where an upload pod mounts the claim it writes to.
UPLOAD_MOUNT = "/data"


def build_upload_pod(name: str, namespace: str, claim: str, image: str, lifetime_seconds: int,
                     image_pull_policy: str = "IfNotPresent") -> dict[str, Any]:
    """The short-lived pod ``mlvisor upload`` writes a file onto ``claim`` through: the claim
    read-write at /data, the same restricted security context as every pod of mlvisor, no
    service account token, and a lifetime after which it ends on its own (a client that died
    never leaves it behind for long). It runs nothing but a wait; the file comes in through
    ``kubectl exec``'s channel to ``python -m mlvisor.operator.receive``."""
    labels = {
        LABEL_NAME: "mlvisor",
        LABEL_INSTANCE: name,
        LABEL_COMPONENT: "upload",
        LABEL_MANAGED_BY: MANAGED_BY,
    }
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "restartPolicy": "Never",
            "activeDeadlineSeconds": lifetime_seconds,
            "automountServiceAccountToken": False,
            "enableServiceLinks": False,
            "terminationGracePeriodSeconds": 1,
            "securityContext": _pod_security_context(),
            "containers": [
                {
                    "name": "upload",
                    "image": image,
                    "imagePullPolicy": image_pull_policy,
                    "command": ["python", "-c", f"import time; time.sleep({lifetime_seconds})"],
                    "resources": {"requests": {"cpu": "50m", "memory": "64Mi"}, "limits": {"memory": "256Mi"}},
                    "volumeMounts": [
                        {"name": "data", "mountPath": UPLOAD_MOUNT},
                        {"name": _TMP_VOLUME, "mountPath": _TMP_MOUNT},
                    ],
                    "securityContext": _container_security_context(),
                    "terminationMessagePolicy": "FallbackToLogsOnError",
                }
            ],
            "volumes": [
                {"name": "data", "persistentVolumeClaim": {"claimName": claim}},
                {"name": _TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
            ],
        },
    }
