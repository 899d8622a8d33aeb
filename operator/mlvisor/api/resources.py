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

import datetime as dt
import enum
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any, ClassVar, Final, Literal, Self, cast

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    JsonValue,
    ModelWrapValidatorHandler,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.alias_generators import to_camel
from pydantic_core import InitErrorDetails, PydanticCustomError

from mlvisor.api.cron import CRON_PATTERN, check_schedule
from mlvisor.api.exits import EXIT_INVALID_SPEC

GROUP: Final = "mlvisor.dev"
VERSION: Final = "v1alpha1"
API_VERSION: Final = "mlvisor.dev/v1alpha1"
assert f"{GROUP}/{VERSION}" == API_VERSION

DNS_LABEL = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"
MODEL_NAME = r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$"
ESTIMATOR_CLASS = r"^sklearn(\.[A-Za-z_][A-Za-z0-9_]*)+$"
DNS_SUBDOMAIN = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$"
_BUCKET = r"[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]"
_CLAIM = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
MODEL_URI = (
    rf"^(pvc://{_CLAIM}/[^\s/]|file:///|s3://{_BUCKET}/[^\s/]|https?://[^\s/?#]+/[^\s/?#])[^\s?#]*$"
)
DATASET_URI = rf"^(s3://{_BUCKET}|https?://[^\s/?#]+|pvc://{_CLAIM}|file://)/[^\s]*[^\s/]$"
OUTPUT_URI = rf"^s3://{_BUCKET}(/[^\s]*)?$"
CONDITION_REASON = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"

#: The patterns above in words, for messages (mlvisor validate, InvalidSpec conditions).
PATTERN_WORDS: dict[str, str] = {
    DNS_LABEL: "a DNS label: lowercase letters, digits and '-', starting and ending with a letter or digit",
    MODEL_NAME: "a model name: letters, digits, '_', '.' and '-', starting with a letter or digit, at most 63 characters",
    ESTIMATOR_CLASS: "the dotted path of a class inside scikit-learn, e.g. sklearn.ensemble.RandomForestClassifier",
    DNS_SUBDOMAIN: "a DNS subdomain: lowercase letters, digits, '-' and '.', starting and ending with a letter or digit",
    MODEL_URI: "s3://<bucket>/<path>/, https://<host>/<path>/, pvc://<claim>/<path>/ or, for mlvisor run, file:///<absolute path>/",
    DATASET_URI: "s3://<bucket>/<key>, https://<host>/<path>, pvc://<claim>/<path> or, for mlvisor run, file:///<absolute path>",
    OUTPUT_URI: "s3://<bucket>/<prefix>",
    CONDITION_REASON: "a CamelCase reason",
}


class _Fields:
    """A model's raw input as a :class:`Rule` reads it: by camelCase (wire) or snake_case
    (Python) name, with the field's default for what is absent."""

    _names: ClassVar[dict[type[BaseModel], dict[str, tuple[str, Any]]]] = {}
    """Per model: each field by its Python and its wire name (looked up for every rule of every parse)."""

    def __init__(self, model: type[BaseModel], data: Mapping[str, Any]):
        self._model, self._data = model, data

    def _field(self, name: str) -> tuple[str, Any]:
        names = self._names.get(self._model)
        if names is None:
            names = {}
            for field_name, info in self._model.model_fields.items():
                names[field_name] = names[info.alias or field_name] = (field_name, info)
            self._names[self._model] = names
        return names[name]

    def has(self, name: str) -> bool:
        """Given and not null, as CEL's has() sees it."""
        field_name, info = self._field(name)
        return self._data.get(info.alias or field_name, self._data.get(field_name)) is not None

    def get(self, name: str) -> Any:
        field_name, info = self._field(name)
        for key in (info.alias, field_name):
            if key is not None and key in self._data:
                return self._data[key]
        return info.get_default(call_default_factory=True)


@dataclass(frozen=True)
class Rule:
    """A rule across fields, said once for both judges: as CEL, which the API server evaluates
    (``x-kubernetes-validations`` in the generated CRD), and as ``holds``, the same condition
    over the model's raw input, which everything that runs without an API server evaluates
    (``mlvisor validate``, ``mlvisor run``, the trainer, the operator). Tests evaluate the CEL
    with cel-python beside ``holds`` on every sample and every invalid case.

    CEL cannot see a field whose values have no type (a list of any values: a grid's, a
    choice's): the API server leaves it out of ``self`` and refuses a rule naming it. A rule
    about such a field says ``schema`` instead of ``cel``: a value validation merged into the
    model's schema (``oneOf`` of ``required`` lists), which the API server checks in its own
    words ("must validate one and only one schema") at the object's path; ``holds`` still says
    it in mlvisor's."""

    cel: str
    """The CEL rule; "" for a rule said by ``schema`` instead."""
    message: str
    holds: Callable[[_Fields], bool] | None = None
    """None for transition rules (``oldSelf``): only the API server (and ``mlvisor run``'s
    check of an edited file) knows the old object."""
    field_path: str | None = None
    reason: str | None = None
    schema: Mapping[str, Any] | None = None
    """A structural value validation for the CRD (e.g. ``{"oneOf": [{"required": ["a"]}, ...]}``)."""

    def to_cel(self) -> dict[str, str]:
        out = {"rule": self.cel, "message": self.message}
        if self.field_path:
            out["fieldPath"] = self.field_path
        if self.reason:
            out["reason"] = self.reason
        return out

    def broken_by(self, fields: _Fields) -> bool:
        if self.holds is None:
            return False
        try:
            return not self.holds(fields)
        except (TypeError, ValueError, KeyError, AttributeError):
            return False  # a value of the wrong type: its field's own error says so


def _cel_rules(schema: dict[str, Any], cls: type[BaseModel]) -> None:
    rules = getattr(cls, "__rules__", ())
    cel = [r.to_cel() for r in rules if r.cel]
    if cel:
        schema["x-kubernetes-validations"] = cel
    for extra in (r.schema for r in rules if r.schema):
        for key, value in extra.items():
            if key in schema:  # a second oneOf (or the like): both must hold
                schema.setdefault("allOf", []).append({key: value})
            else:
                schema[key] = value


def _line_error(err: Any) -> InitErrorDetails:
    try:
        ValidationError.from_exception_data("probe", [{"type": err["type"], "loc": (), "input": None, "ctx": err.get("ctx") or {}}])
    except (KeyError, TypeError):
        return {"type": PydanticCustomError(err["type"], str(err["msg"])), "loc": err["loc"], "input": err.get("input")}
    except ValidationError:
        pass
    details: InitErrorDetails = {"type": err["type"], "loc": err["loc"], "input": err.get("input")}
    if err.get("ctx"):
        details["ctx"] = err["ctx"]
    return details


class Model(BaseModel):
    """Base of every API object: camelCase on the wire, unknown fields refused, and every
    problem of an input reported at once: its fields' and its rules' (:class:`Rule`) together."""

    model_config = ConfigDict(
        alias_generator=to_camel,
        populate_by_name=True,
        extra="forbid",
        use_attribute_docstrings=True,
        validate_default=True,
        json_schema_extra=_cel_rules,
    )

    __rules__: ClassVar[tuple[Rule, ...]] = ()
    """Rules across fields; only a :class:`Ruled` model has any."""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("__rules__") and not issubclass(cls, Ruled):
            raise TypeError(f"{cls.__name__} has __rules__: derive it from Ruled, whose validator judges them")

    def clone(self) -> Self:
        """A deep copy made by value (dumped and validated again): what a planner changes of it
        reaches nothing else. 2.8 times as fast as ``model_copy(deep=True)``, whose
        ``copy.deepcopy`` walk was 70% of a TrainingJob's plan (bench/README.md, "What the rest costs")."""
        return type(self).model_validate(self.model_dump())

    def to_wire(self) -> dict[str, Any]:
        """The JSON-ready dict with camelCase keys and unset optional fields left out."""
        return self.model_dump(mode="json", by_alias=True, exclude_none=True)


class Ruled(Model):
    """A :class:`Model` with rules across its fields (``__rules__``), judged with its fields' own
    problems. Only these models carry the Python validator that judges them; on every model it
    was a Python call per nested object of every parse (bench/README.md, "Echoes, first
    try (reverted), and the operator's own CPU"). ``Model`` refuses a subclass that declares rules
    without deriving from this class: its rules would never be judged."""

    @model_validator(mode="wrap")
    @classmethod
    def _judge_rules(cls, data: Any, handler: ModelWrapValidatorHandler[Any]) -> Any:
        if not cls.__rules__ or not isinstance(data, Mapping):
            return handler(data)
        fields = _Fields(cls, data)
        broken = [r for r in cls.__rules__ if r.broken_by(fields)]
        if not broken:
            return handler(data)
        errors: list[InitErrorDetails] = []
        try:
            handler(data)
        except ValidationError as e:
            errors = [_line_error(err) for err in e.errors()]
        for rule in broken:
            loc = tuple(rule.field_path.lstrip(".").split(".")) if rule.field_path else ()
            errors.append({"type": PydanticCustomError("rule", rule.message), "loc": loc, "input": data})
        raise ValidationError.from_exception_data(cls.__name__, errors)


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


#: resource.Quantity's form, as the Kubernetes API publishes it for ResourceRequirements: a
#: number with an optional binary (Ki..Ei), decimal (n, u, m, k, M..E) or exponent suffix; without
#: its minus sign, as a container's requests and limits must not be negative.
QUANTITY_PATTERN: Final = (
    r"^\+?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
_QUANTITY = re.compile(QUANTITY_PATTERN)


def _check_quantity(value: int | str) -> int | str:
    if (isinstance(value, str) and not _QUANTITY.match(value)) or (isinstance(value, int) and value < 0):
        raise PydanticCustomError(
            "quantity",
            "expected a non-negative Kubernetes quantity such as 500m, 2, 1.5 or 256Mi",
        )
    return value


# The pattern is checked here and, for the API server, in the CRD (it applies to the string form;
# a number is a quantity as it is). Without it a quantity like "abc" passed the schema and the
# Deployment the operator built from it was refused with a 400, retried for ever.
Quantity = Annotated[
    int | str,
    AfterValidator(_check_quantity),
    Field(json_schema_extra={"x-kubernetes-int-or-string": True, "pattern": QUANTITY_PATTERN, "minimum": 0}),
]


class ResourceRequirements(Model):
    """Compute resources of each container (corev1 ResourceRequirements: limits and requests)."""

    limits: dict[str, Quantity] | None = None
    """Maximum resources, e.g. {cpu: "1", memory: 1Gi}."""
    requests: dict[str, Quantity] | None = None
    """Minimum resources the scheduler reserves, e.g. {cpu: 250m, memory: 256Mi}."""


class Backoff(Ruled):
    """Delay before restart n (n = restarts in the window): min(initialSeconds * factor^(n-1), maxSeconds)."""

    __rules__ = (
        Rule(
            "self.maxSeconds >= self.initialSeconds",
            "backoff.maxSeconds must be greater than or equal to backoff.initialSeconds",
            lambda f: f.get("maxSeconds") >= f.get("initialSeconds"),
        ),
    )

    initial_seconds: float = Field(1.0, ge=0, le=3600)
    """Delay before the first restart in a window, in seconds (0 restarts at once, as OTP does)."""
    factor: float = Field(2.0, ge=1, le=10)
    """Multiplier applied for every further restart in the window."""
    max_seconds: float = Field(60.0, ge=0, le=86400)
    """Upper bound of the delay, in seconds."""


class FailurePolicyRule(Ruled):
    """One failure classification rule: exactly one of onExitCodes, onReasons, onPodConditions."""

    __rules__ = (
        Rule(
            "(has(self.onExitCodes) ? 1 : 0) + (has(self.onReasons) ? 1 : 0)"
            " + (has(self.onPodConditions) ? 1 : 0) == 1",
            "a failurePolicy rule needs exactly one of onExitCodes, onReasons, onPodConditions",
            lambda f: f.has("onExitCodes") + f.has("onReasons") + f.has("onPodConditions") == 1,
        ),
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
    """Why it ended: the process's own termination message (the trainer's or the server's reason) when it wrote one; else what ended it (a signal, an OOM kill, the pod's status message) and its last log line."""
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


class CsvDataset(Ruled):
    """A CSV file with a header row on a volume (the same as uri: pvc://<volumeClaim>/<path> with target)."""

    __rules__ = (
        Rule(
            "!self.path.startsWith('/') && !self.path.contains('..')",
            "csv.path must be relative to the volume and must not contain '..'",
            lambda f: not f.get("path").startswith("/") and ".." not in f.get("path"),
        ),
    )

    path: str = Field(min_length=1, max_length=1024)
    """Path of the file, relative to the root of the volume (e.g. data/train.csv)."""
    target: str = Field(min_length=1, max_length=256)
    """Name of the column to predict."""
    volume_claim: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    """PersistentVolumeClaim holding the file; default: the output volume claim."""


class DatasetFormat(enum.StrEnum):
    """How a dataset file is encoded."""

    CSV = "csv"
    PARQUET = "parquet"


#: File name endings that say a dataset's format when spec.dataset.format is not given.
FORMAT_SUFFIXES: dict[str, DatasetFormat] = {
    ".csv": DatasetFormat.CSV,
    ".parquet": DatasetFormat.PARQUET,
    ".pq": DatasetFormat.PARQUET,
}


def dataset_format(uri: str, given: DatasetFormat | None = None) -> DatasetFormat | None:
    """The format of the dataset at ``uri``: ``given``, else from the name's ending (None: unknown)."""
    if given is not None:
        return given
    return next((f for suffix, f in FORMAT_SUFFIXES.items() if uri.endswith(suffix)), None)


class Encoding(enum.StrEnum):
    """How categorical columns become numbers."""

    ONE_HOT = "OneHot"
    ORDINAL = "Ordinal"


ColumnName = Annotated[str, Field(min_length=1, max_length=256)]


class Features(Ruled):
    """Which columns of a table are features, and which of them are categories."""

    __rules__ = (
        Rule(
            "!(has(self.include) && has(self.exclude))",
            "features: give include or exclude, not both",
            lambda f: not (f.has("include") and f.has("exclude")),
        ),
    )

    include: list[ColumnName] | None = Field(None, min_length=1, max_length=1000)
    """Only these columns are features (the target is never one); default: every column but the target."""
    exclude: list[ColumnName] | None = Field(None, min_length=1, max_length=1000)
    """These columns are not features (IDs, free text, leaks of the target)."""
    categorical: list[ColumnName] = Field(default_factory=list, max_length=1000)
    """Numeric columns to treat as categories (codes such as a zip code or a product id); a column holding text is always categorical."""
    encoding: Encoding | None = None
    """OneHot or Ordinal; default: Ordinal for tree models (decision trees, forests, gradient boosting; HistGradientBoosting with its native categorical support), OneHot for the others (linear models, SVMs, neighbours, networks)."""


#: The keys of a credentials Secret (:class:`Credentials`). Each reaches the pods that need it
#: as MLVISOR_<ROLE>_<KEY> (:func:`credential_variable`), ROLE one of DATASET, OUTPUT, MODEL.
CREDENTIAL_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL",
                          "AWS_REGION")
#: Of those, the keys the Secret must have; the others are optional.
REQUIRED_CREDENTIAL_KEYS: Final = ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY")


def credential_variable(role: str, key: str) -> str:
    """The environment variable that carries ``key`` of the Secret for ``role`` (DATASET, OUTPUT, MODEL)."""
    return f"MLVISOR_{role}_{key}"


class Credentials(Model):
    """Object-store credentials: a Secret in the same namespace with the keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and, optionally, AWS_ENDPOINT_URL (an S3-compatible store) and AWS_REGION. Only the pods that read or write that URI get them, as environment variables; mlvisor never reads, logs or stores them."""

    secret_name: str = Field(pattern=DNS_SUBDOMAIN, max_length=253)
    """Name of the Secret."""


def _uri_traverses(uri: str) -> bool:
    return "/../" in uri or uri.endswith("/..")


class Dataset(Ruled):
    """Where the training data comes from: exactly one of builtin, csv or uri."""

    __rules__ = (
        Rule(
            "(has(self.builtin) ? 1 : 0) + (has(self.csv) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
            "exactly one dataset source must be set: builtin, csv or uri",
            lambda f: f.has("builtin") + f.has("csv") + f.has("uri") == 1,
        ),
        Rule(
            "has(self.uri) == has(self.target)",
            "dataset.target names the column to predict of a dataset.uri, and is set only with it (csv has csv.target)",
            lambda f: f.has("uri") == f.has("target"),
        ),
        Rule(
            "!has(self.uri) || !(self.uri.contains('/../') || self.uri.endsWith('/..'))",
            "dataset.uri must not contain '..' as a path segment",
            lambda f: not f.has("uri") or not _uri_traverses(f.get("uri")),
        ),
        Rule(
            "!has(self.uri) || has(self.format) || self.uri.endsWith('.csv') || self.uri.endsWith('.parquet')"
            " || self.uri.endsWith('.pq')",
            "dataset.format must be set (csv or parquet) when dataset.uri does not end with .csv, .parquet or .pq",
            lambda f: not f.has("uri") or f.has("format") or dataset_format(f.get("uri")) is not None,
        ),
        Rule(
            "has(self.uri) || !has(self.format)",
            "dataset.format is set only with dataset.uri",
            lambda f: f.has("uri") or not f.has("format"),
        ),
        Rule(
            "!has(self.credentials) || (has(self.uri) && self.uri.startsWith('s3://'))",
            "dataset.credentials are for an s3:// dataset.uri",
            lambda f: not f.has("credentials") or (f.has("uri") and f.get("uri").startswith("s3://")),
        ),
        Rule(
            "!has(self.features) || !has(self.builtin)",
            "dataset.features selects the columns of a table (csv or uri), not of a builtin dataset",
            lambda f: not f.has("features") or not f.has("builtin"),
        ),
    )

    builtin: BuiltinDataset | None = None
    """A dataset bundled with scikit-learn: iris, wine, breast_cancer, digits or diabetes."""
    csv: CsvDataset | None = None
    """A CSV file on a volume."""
    uri: str | None = Field(None, pattern=DATASET_URI, max_length=2048)
    """A CSV or Parquet file: s3://<bucket>/<key> (an S3-compatible store; see credentials), https://<host>/<path>, pvc://<claim>/<path> (a PersistentVolumeClaim, mounted read-only) or, for mlvisor run, file:///<absolute path>."""
    format: DatasetFormat | None = None
    """csv or parquet; default: from the name's ending (.csv, .parquet, .pq)."""
    target: str | None = Field(None, min_length=1, max_length=256)
    """Name of the column to predict (with uri)."""
    credentials: Credentials | None = None
    """The Secret with the object-store credentials of an s3:// uri; without it the workers use their own environment (AWS_* variables, a node or workload identity)."""
    features: Features | None = None
    """Which columns are features and which are categorical; default: every column but the target, text columns categorical."""


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


class SearchMethod(enum.StrEnum):
    """How a search chooses its trials."""

    GRID = "Grid"
    RANDOM = "Random"
    BAYESIAN = "Bayesian"


class Bounds(Ruled):
    """A range of real numbers, low to high."""

    __rules__ = (
        Rule(
            # double(): a number field may hold an integer (high: 1000); compare as reals
            "double(self.high) > double(self.low)",
            "high must be greater than low",
            lambda f: f.get("high") > f.get("low"),
            field_path=".high",
        ),
    )

    low: float = Field(ge=-1e15, le=1e15)
    """Smallest value."""
    high: float = Field(ge=-1e15, le=1e15)
    """Largest value (Random draws from [low, high), as scipy.stats.uniform; Bayesian from [low, high])."""


class LogBounds(Bounds):
    """A range of positive real numbers, sampled evenly on a log scale."""

    low: float = Field(gt=0, le=1e15)
    """Smallest value, greater than 0."""
    high: float = Field(gt=0, le=1e15)
    """Largest value (Random draws from [low, high), as scipy.stats.loguniform; Bayesian from [low, high])."""


class IntBounds(Ruled):
    """Integers from low to high - 1: high is exclusive, as in scipy.stats.randint."""

    __rules__ = (
        Rule(
            "self.high > self.low",
            "randint.high must be greater than randint.low (high is exclusive: {low: 1, high: 2} is always 1)",
            lambda f: f.get("high") > f.get("low"),
            field_path=".high",
        ),
    )

    low: int = Field(ge=-(2**53), le=2**53)
    """Smallest integer drawn."""
    high: int = Field(ge=-(2**53), le=2**53)
    """One more than the largest integer drawn (exclusive, as scipy.stats.randint)."""


class Distribution(Ruled):
    """Where one parameter's values come from in a Random or Bayesian search: exactly one of choice, uniform, loguniform, randint."""

    __rules__ = (
        Rule(
            "",  # choice holds values of any type, which CEL cannot see: said as a schema
            "a distribution needs exactly one of choice, uniform, loguniform, randint",
            lambda f: f.has("choice") + f.has("uniform") + f.has("loguniform") + f.has("randint") == 1,
            schema={"oneOf": [{"required": [k]} for k in ("choice", "uniform", "loguniform", "randint")]},
        ),
    )

    choice: list[Any] | None = Field(None, min_length=1, max_length=1000)
    """Values to pick from, each equally likely (any value a grid takes: numbers, strings, null, estimators)."""
    uniform: Bounds | None = None
    """Real numbers spread evenly between low and high."""
    loguniform: LogBounds | None = None
    """Positive real numbers spread evenly on a log scale (learning rates, regularisation strengths)."""
    randint: IntBounds | None = None
    """Integers low <= n < high (high exclusive, as scipy.stats.randint)."""


class EarlyStoppingType(enum.StrEnum):
    """The rule that stops a hopeless trial after its first cross-validation folds."""

    MEDIAN = "Median"
    SUCCESSIVE_HALVING = "SuccessiveHalving"


class EarlyStopping(Model):
    """Stop hopeless trials early: a trial's cross-validation folds are its steps, and after each fold its mean score so far is compared with the other trials' at the same fold (Optuna's pruners)."""

    type: EarlyStoppingType
    """Median: stop a trial whose mean score so far is below the median of the finished trials' at the same fold (Optuna's MedianPruner). SuccessiveHalving: at folds minFolds, minFolds*reductionFactor, ... keep only the best 1/reductionFactor of the trials that reached that fold (Optuna's SuccessiveHalvingPruner, asynchronous)."""
    min_folds: int = Field(1, ge=1, le=19)
    """No trial is stopped before this many of its folds; must be less than cv."""
    min_trials: int = Field(5, ge=0, le=1000)
    """Median: no trial is stopped until this many trials have finished (the median needs a basis)."""
    reduction_factor: int = Field(3, ge=2, le=10)
    """SuccessiveHalving: the fraction 1/reductionFactor of trials kept at each rung, and the growth of the rungs' fold counts."""


class Search(Ruled):
    """Hyperparameter search, its trials spread over the workers: Grid (every combination of grid), Random (nTrials draws from distributions) or Bayesian (nTrials trials chosen by Optuna's TPE)."""

    __rules__ = (
        Rule(
            "self.method != 'Grid' || has(self.grid)",
            "spec.search.grid is required with method Grid (the default): the values to try for each parameter",
            lambda f: f.get("method") != "Grid" or f.has("grid"),
            field_path=".grid",
        ),
        Rule(
            "self.method != 'Grid' || (!has(self.distributions) && !has(self.nTrials))",
            "distributions and nTrials are for method Random or Bayesian; method Grid (the default) tries every combination of grid",
            lambda f: f.get("method") != "Grid" or (not f.has("distributions") and not f.has("nTrials")),
            field_path=".method",
        ),
        Rule(
            "self.method == 'Grid' || (has(self.distributions) && has(self.nTrials))",
            "method Random and Bayesian need distributions (where each parameter's values come from) and nTrials (how many trials)",
            lambda f: f.get("method") == "Grid" or (f.has("distributions") and f.has("nTrials")),
            field_path=".distributions",
        ),
        Rule(
            "self.method == 'Grid' || !has(self.grid)",
            "grid is for method Grid; Random and Bayesian take distributions (a list of values is {choice: [...]})",
            lambda f: f.get("method") == "Grid" or not f.has("grid"),
            field_path=".grid",
        ),
        Rule(
            "!has(self.earlyStopping) || self.earlyStopping.minFolds < self.cv",
            "earlyStopping.minFolds must be less than cv: a trial can only be stopped before its last fold",
            lambda f: not f.has("earlyStopping") or _min_folds(f.get("earlyStopping")) < f.get("cv"),
            field_path=".earlyStopping.minFolds",
        ),
    )

    method: SearchMethod = SearchMethod.GRID
    """Grid: every combination of grid. Random: nTrials draws from distributions, fixed by randomState. Bayesian: nTrials trials, each chosen by Optuna's TPE from the results so far; the workers share one study in a journal file on the output volume."""
    grid: dict[str, Annotated[list[Any], Field(min_length=1, max_length=1000)]] | None = Field(
        None, min_length=1, max_length=32,
        # Free-form for the API server (each value's list is checked by mlvisor): a map of lists
        # of any values has no CEL type, and the rules on method need to see whether it is there.
        json_schema_extra={"x-kubernetes-preserve-unknown-fields": True},
    )
    """Grid: parameter name -> candidate values (a list each); every combination is tried."""
    distributions: dict[str, Distribution] | None = Field(None, min_length=1, max_length=32)
    """Random and Bayesian: parameter name -> where its values come from, e.g. {max_features: {uniform: {low: 0.2, high: 0.9}}}."""
    n_trials: int | None = Field(None, ge=1, le=10000)
    """Random and Bayesian: the number of trials."""
    cv: int = Field(5, ge=2, le=20)
    """Number of cross-validation folds per trial."""
    scoring: str | None = Field(None, min_length=1, max_length=64)
    """A scikit-learn scorer name (accuracy, f1_macro, roc_auc, r2, neg_mean_absolute_error, ...); default: accuracy for classifiers, r2 for regressors."""
    early_stopping: EarlyStopping | None = None
    """Stop hopeless trials after their first folds; none: every trial runs all cv folds."""

    def trial_count(self) -> int:
        """How many trials the search runs: the grid's combinations, or nTrials (a Random search
        whose distributions are all choices draws each combination at most once)."""
        if self.method == SearchMethod.GRID:
            return math.prod(len(values) for values in (self.grid or {}).values())
        n = self.n_trials or 0
        dists = self.distributions or {}
        if self.method == SearchMethod.RANDOM and dists and all(d.choice is not None for d in dists.values()):
            n = min(n, math.prod(len(d.choice or ()) for d in dists.values()))
        return n


def _min_folds(early_stopping: Any) -> int:
    if isinstance(early_stopping, Mapping):
        return int(early_stopping.get("minFolds", early_stopping.get("min_folds", 1)))
    return int(early_stopping.min_folds)


class OutputSpec(Ruled):
    """Where artifacts are written: a PersistentVolumeClaim, or an object store (uri)."""

    __rules__ = (
        Rule(
            "!has(self.credentials) || has(self.uri)",
            "output.credentials are for an output.uri",
            lambda f: not f.has("credentials") or f.has("uri"),
        ),
    )

    volume_claim: str | None = Field(None, pattern=DNS_LABEL, max_length=63)
    """PersistentVolumeClaim for model artifacts (with uri: only where the shards of a search share their trial results); default: the operator's (mlvisor-models)."""
    uri: str | None = Field(None, pattern=OUTPUT_URI, max_length=1024)
    """Write the artifact to an object store instead: s3://<bucket>/<prefix>; each run's version goes to <uri>/<version>/ (model.skops, then metadata.json)."""
    credentials: Credentials | None = None
    """The Secret with the object-store credentials of uri; without it the workers use their own environment."""


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
        json_schema_extra={"default": cast(JsonValue, _DEFAULT_FAILURE_POLICY_WIRE)},
    )
    """Rules that classify a failure before it is counted; the first match wins, no match counts it."""


#: The fields of a TrainingJob's spec that define what it trains: a change needs a new TrainingJob.
IMMUTABLE_TRAINING_FIELDS = ("dataset", "estimator", "search", "workers", "testSize", "randomState", "output")


def immutable_field_message(field: str) -> str:
    return f"spec.{field} is immutable: create a new TrainingJob to train differently"


class TrainingJobSpec(Ruled):
    """Desired state of a TrainingJob."""

    __rules__ = (
        *(
            Rule(
                f"has(self.{f}) == has(oldSelf.{f}) && (!has(self.{f}) || self.{f} == oldSelf.{f})",
                immutable_field_message(f),
                field_path=f".{f}",
                reason="FieldValueForbidden",
            )
            for f in IMMUTABLE_TRAINING_FIELDS
        ),
        Rule(
            "has(self.search) || self.workers == 1",
            "spec.workers must be 1 without spec.search: only a search's trials can be spread over workers",
            lambda f: f.has("search") or f.get("workers") == 1,
            field_path=".workers",
        ),
    )

    image: str = Field("", max_length=512)
    """Container image of the workers; empty: the operator's own image."""
    dataset: Dataset
    """Training data: exactly one of builtin, csv or uri."""
    estimator: Estimator
    """The scikit-learn estimator and its parameters."""
    search: Search | None = None
    """Optional hyperparameter search (Grid, Random or Bayesian), its trials spread over the workers."""
    workers: int = Field(1, ge=1, le=64)
    """Number of worker pods; a search's trials are spread over them."""
    test_size: float = Field(0.2, gt=0, lt=1)
    """Fraction of the rows held out for evaluation."""
    random_state: int = Field(0, ge=0, le=2**32 - 1)
    """Seed for the train/test split, the cross-validation folds, the shards and a Random search's draws."""
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
    trials_done: int | None = Field(None, ge=0)
    """Search workers: trials this worker finished (stopped early and failed ones included), over all its attempts."""
    trials_total: int | None = Field(None, ge=0)
    """Grid and Random search workers: the trials of this worker's shard."""


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
    data: str | None = Field(None, max_length=4096)
    """What the trainer read of a table (spec.dataset.csv or uri): rows, which columns are categorical and how they are encoded, which have missing values."""


class TrialSummary(Model):
    """One finished trial of a search."""

    trial: int = Field(ge=0)
    """Trial number, from 0 in the search's order (Grid: the combination's index; Bayesian: Optuna's trial number)."""
    score: float
    """Mean cross-validation score (spec.search.scoring; higher is better)."""
    params: dict[str, Any] = Field(
        default_factory=dict, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """The trial's parameters."""
    worker: int | None = None
    """The worker that ran it."""


class SearchProgress(Model):
    """How far a search is, from the workers' reports (polled every few seconds while they run) and their final words."""

    trials_done: int = Field(0, ge=0)
    """Trials finished (stopped early and failed ones included)."""
    trials_total: int = Field(0, ge=0)
    """Trials the search runs in all."""
    summary: str | None = Field(None, max_length=64)
    """trialsDone/trialsTotal, e.g. 7/12 (printer column PROGRESS)."""
    trials_pruned: int = Field(0, ge=0)
    """Trials stopped early by spec.search.earlyStopping."""
    scoring: str | None = Field(None, max_length=64)
    """The scorer the scores are in."""
    best_score: float | None = None
    """Best mean cross-validation score so far."""
    best_params: dict[str, Any] | None = Field(
        None, json_schema_extra={"x-kubernetes-preserve-unknown-fields": True}
    )
    """Parameters of the best trial so far."""
    best_trial: int | None = None
    """Number of the best trial so far."""
    eta_seconds: int | None = Field(None, ge=0)
    """Estimated seconds until the last trial finishes (from the workers' mean trial time; the select step comes after)."""
    top_trials: list[TrialSummary] = Field(default_factory=list, max_length=5)
    """The best few trials so far, best first (every trial is in trials.jsonl beside the model)."""


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
    progress: SearchProgress | None = None
    """A search's progress: trials done of the total, best score and parameters so far, time left."""
    supervision: SupervisionStatus = Field(default_factory=SupervisionStatus)
    """Restart history and the last failure."""
    model: ModelInfo | None = None
    """The artifact, once the job succeeded."""


# --------------------------------------------------------------------------- ModelServer


class TrainingJobRef(Model):
    """A TrainingJob in the same namespace."""

    name: str = Field(pattern=DNS_LABEL, max_length=253)
    """Name of the TrainingJob whose status.model is served."""


class ModelSource(Ruled):
    """What to serve: exactly one of trainingJobRef or uri."""

    __rules__ = (
        Rule(
            "(has(self.trainingJobRef) ? 1 : 0) + (has(self.uri) ? 1 : 0) == 1",
            "exactly one model source must be set: trainingJobRef or uri",
            lambda f: f.has("trainingJobRef") + f.has("uri") == 1,
        ),
        Rule(
            "!has(self.credentials) || has(self.trainingJobRef) || (has(self.uri) && self.uri.startsWith('s3://'))",
            "model.credentials are for an s3:// model.uri or a trainingJobRef",
            lambda f: not f.has("credentials") or f.has("trainingJobRef") or (f.has("uri") and f.get("uri").startswith("s3://")),
        ),
    )

    training_job_ref: TrainingJobRef | None = None
    """Serve this job's model and follow its new versions."""
    uri: str | None = Field(None, pattern=MODEL_URI, max_length=2048)
    """An artifact directory: s3://<bucket>/<path>/ or https://<host>/<path>/ (downloaded and verified by each server pod), pvc://<claim>/<path>/ (mounted read-only) or file:///<path>/ (mlvisor run)."""
    credentials: Credentials | None = None
    """The Secret with the object-store credentials of an s3:// model (uri, or the artifact of a TrainingJob whose spec.output.uri is on s3); without it the server pods use their own environment."""


#: Container ports of the model server: HTTP (V2 REST and binary tensors, V1, health, metrics)
#: and the V2 gRPC service. The operator's pods declare them and the server listens on them.
SERVER_HTTP_PORT = 8080
SERVER_GRPC_PORT = 8081


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


class ServiceSpec(Ruled):
    """The Service in front of the server pods: V2 REST on port, V2 gRPC on grpcPort."""

    __rules__ = (
        Rule(
            "self.grpcPort == 0 || self.grpcPort != self.port",
            "spec.service.grpcPort must differ from spec.service.port (or be 0 to turn gRPC off)",
            lambda f: f.get("grpcPort") == 0 or f.get("grpcPort") != f.get("port"),
        ),
    )

    type: ServiceType = ServiceType.CLUSTER_IP
    """ClusterIP, NodePort or LoadBalancer."""
    port: int = Field(80, ge=1, le=65535)
    """Port of the Service for HTTP: the V2 REST API (JSON and binary tensors), V1 predict, health and metrics."""
    grpc_port: int = Field(8081, ge=0, le=65535)
    """Port of the Service for the V2 gRPC API (inference.GRPCInferenceService, HTTP/2 cleartext); 0 turns gRPC off in the server pods too."""


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


class ServingOptions(Model):
    """How a model is served, whatever the model: a ModelServer's spec but its model, and a ModelPipeline's spec.serving."""

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


class ModelServerSpec(ServingOptions):
    """Desired state of a ModelServer."""

    model: ModelSource
    """The artifact to serve."""


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


class PipelineTrainingSpec(TrainingJobSpec):
    """A TrainingJob spec, as in a TrainingJob. Each run is a new TrainingJob, so nothing here is immutable: a change of anything but suspend and ttlSecondsAfterFinished starts a new run."""

    __rules__ = tuple(r for r in TrainingJobSpec.__rules__ if r.holds is not None)


class PipelineServingSpec(ServingOptions):
    """A ModelServer spec without model: the pipeline serves the model of its promoted run."""

    @model_validator(mode="before")
    @classmethod
    def _no_model(cls, data: Any) -> Any:
        if isinstance(data, dict) and "model" in data:
            raise ValueError(
                "spec.serving.model must not be set: the pipeline serves the model of its promoted run"
            )
        return data

    def with_model(self, uri: str, credentials: Credentials | None = None) -> ModelServerSpec:
        """The ModelServer spec that serves the artifact at ``uri`` (an s3:// one with ``credentials``)."""
        model: dict[str, Any] = {"uri": uri}
        if credentials is not None and uri.startswith("s3://"):
            model["credentials"] = credentials.to_wire()
        return ModelServerSpec.model_validate({**self.to_wire(), "model": model})


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

#: Each kind's status model: what the CRD's status schema is made from and what a stored status parses as.
STATUSES: dict[str, type[TrainingJobStatus] | type[ModelServerStatus] | type[ModelPipelineStatus]] = {
    "TrainingJob": TrainingJobStatus,
    "ModelServer": ModelServerStatus,
    "ModelPipeline": ModelPipelineStatus,
}

PLURALS = {"TrainingJob": "trainingjobs", "ModelServer": "modelservers", "ModelPipeline": "modelpipelines"}
SHORT_NAMES = {"TrainingJob": "tj", "ModelServer": "ms", "ModelPipeline": "mp"}
