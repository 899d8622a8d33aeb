"""Labels and annotations on what mlvisor creates: the keys the operator, the local runtime,
the tests and a user's ``kubectl get -l`` all select by (docs/supervision.md, "Ownership and names")."""

LABEL_NAME = "app.kubernetes.io/name"
LABEL_INSTANCE = "app.kubernetes.io/instance"
LABEL_COMPONENT = "app.kubernetes.io/component"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"
#: The value of LABEL_MANAGED_BY on everything mlvisor creates.
MANAGED_BY = "mlvisor"
#: On worker pods: the worker index (SELECT_LABEL_VALUE on the select step's pod).
LABEL_WORKER_INDEX = "mlvisor.dev/worker-index"
#: On worker pods: the attempt number (the pod is <job>-worker-<index>-<attempt>).
LABEL_ATTEMPT = "mlvisor.dev/attempt"
#: Value of LABEL_WORKER_INDEX on the select pod ("-1" is not a valid label value).
SELECT_LABEL_VALUE = "select"
#: On server pods and their Deployment's template: the artifact they serve, and its version.
ANNOTATION_MODEL_URI = "mlvisor.dev/model-uri"
ANNOTATION_MODEL_VERSION = "mlvisor.dev/model-version"
#: On a pipeline's children: the ModelPipeline, and (TrainingJobs) the run number.
LABEL_PIPELINE = "mlvisor.dev/pipeline"
LABEL_RUN = "mlvisor.dev/run"
#: On a pipeline's TrainingJobs: the fingerprint of spec.training the run was started from.
ANNOTATION_TRAINING_SPEC_HASH = "mlvisor.dev/training-spec-hash"
