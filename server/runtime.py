"""The loaded model: V2/V1 request validation, prediction and response encoding.

Everything that depends on the model lives here so the app stays protocol plumbing and the
batcher stays model-agnostic. Validation happens on the event loop *before* a request joins a
batch, so almost every bad input gets its own 400 and never reaches (or poisons) a merged
predict call. Prediction runs in the batcher's thread.

Forest fast path: ``RandomForest*``/``ExtraTrees*`` ``predict_proba`` spends most of its time
in per-tree input validation and joblib dispatch, not in the trees. For finite float input we
do what ``ForestClassifier.predict_proba`` does (sum each tree's ``predict_proba(X32)`` in
estimator order, divide by the number of trees, ``classes_.take(argmax)``) without that
overhead, calling each fitted ``tree_`` directly (what ``DecisionTree*.predict[_proba]`` does
after its per-call ``check_is_fitted``, tags and feature-count checks, which were 3/4 of the
time for a batch of a few rows): results are bit-identical (tested).
The fast path is chosen by exact checks (the model's own class, a non-empty list of trees of
the matching tree class, one output) and proven at load time against the model's own
``predict``/``predict_proba`` on a few rows; anything else, and any error inside it later, falls
back to the estimator's own methods, so no model is ever served wrong or not at all because of it.
Value checks per datatype live in :mod:`mlvisor.server.tensors` (shared with other transports).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mlvisor.server.errors import ApiError, bad_request
from mlvisor.server.tensors import NUMERIC_DATATYPES, json_values
from mlvisor.trainer.artifact import ArtifactError, ArtifactMetadata, LoadedArtifact, load_artifact

log = logging.getLogger("mlvisor.server")

ALL_DATATYPES = frozenset(NUMERIC_DATATYPES) | {"BYTES"}
PREDICT = "predict"
PREDICT_PROBA = "predict_proba"


@dataclass(slots=True)
class Parsed:
    """A validated request: float64 rows, the outputs to return (in order), the id to echo."""

    x: np.ndarray
    outputs: tuple[str, ...]
    id: str | None = None
    finite: bool = True
    parameters: dict[str, Any] | None = field(default=None)

    @property
    def wants_labels(self) -> bool:
        return PREDICT in self.outputs

    @property
    def wants_proba(self) -> bool:
        return PREDICT_PROBA in self.outputs


def _shape_str(shape: Any) -> str:
    return "[" + ", ".join(str(s) for s in shape) + "]" if isinstance(shape, list | tuple) else repr(shape)


class ModelRuntime:
    """One loaded artifact, ready to validate, predict and encode."""

    def __init__(self, loaded: LoadedArtifact, name: str | None = None) -> None:
        from sklearn.utils import get_tags

        self.metadata: ArtifactMetadata = loaded.metadata
        self.model = loaded.model
        meta = self.metadata
        self.name = name or meta.name
        self.version = meta.version
        self.n_features = meta.n_features
        self.estimator_name = type(self.model).__name__
        model_n = getattr(self.model, "n_features_in_", None)
        if model_n is not None and int(model_n) != meta.n_features:
            raise ArtifactError(
                f"metadata.json says {meta.n_features} features but the model expects {model_n}"
            )
        if len(meta.inputs) != 1:
            raise ArtifactError(f"expected exactly one input tensor in metadata, got {len(meta.inputs)}")
        self.input_name = meta.inputs[0].name
        self.output_specs = {o.name: o for o in meta.outputs}
        for o in self.output_specs:
            if o not in (PREDICT, PREDICT_PROBA):
                raise ArtifactError(f"unsupported output {o!r} in metadata; expected predict or predict_proba")
            if o == PREDICT_PROBA and not hasattr(self.model, "predict_proba"):
                raise ArtifactError(f"metadata lists predict_proba but {self.estimator_name} has no predict_proba")
        self.all_outputs = tuple(o.name for o in meta.outputs)
        self.output_list = ", ".join(self.all_outputs)
        self.labels_datatype = self.output_specs[PREDICT].datatype if PREDICT in self.output_specs else "FP64"
        try:
            self.allow_nan = bool(get_tags(self.model).input_tags.allow_nan)
        except Exception:  # third-party estimators without tags: be strict
            self.allow_nan = False
        self.warnings: list[str] = []
        import sklearn

        if meta.sklearn_version != sklearn.__version__:
            self.warnings.append(
                f"model trained with scikit-learn {meta.sklearn_version}, served with {sklearn.__version__}"
            )
        self._forest = self._forest_kind()
        if self._forest is not None:
            self._prove_fast_path()

    # ----------------------------------------------------------------------------- loading
    @classmethod
    def load(cls, model_dir: Any, name: str | None = None) -> tuple[ModelRuntime, float]:
        """Load, check and warm up; returns the runtime and the seconds it took. Raises ArtifactError."""
        t0 = time.perf_counter()
        runtime = cls(load_artifact(model_dir), name)
        for w in runtime.warnings:
            log.warning("%s", w)
        want_proba = PREDICT_PROBA in runtime.output_specs
        warm_up = np.zeros((2, runtime.n_features))
        try:
            labels, proba = runtime.predict(warm_up, True, want_proba, True)
        except Exception as e:
            raise ArtifactError(f"warm-up prediction failed: {type(e).__name__}: {e}") from e
        runtime._check_shapes(labels, proba, len(warm_up))
        return runtime, time.perf_counter() - t0

    def _forest_kind(self) -> str | None:
        """"classifier"/"regressor" when the forest fast path applies to this exact model, else None."""
        from sklearn.ensemble import (
            ExtraTreesClassifier,
            ExtraTreesRegressor,
            RandomForestClassifier,
            RandomForestRegressor,
        )
        from sklearn.tree import (
            DecisionTreeClassifier,
            DecisionTreeRegressor,
            ExtraTreeClassifier,
            ExtraTreeRegressor,
        )

        kinds = {
            RandomForestClassifier: ("classifier", DecisionTreeClassifier),
            ExtraTreesClassifier: ("classifier", ExtraTreeClassifier),
            RandomForestRegressor: ("regressor", DecisionTreeRegressor),
            ExtraTreesRegressor: ("regressor", ExtraTreeRegressor),
        }
        kind, tree_type = kinds.get(type(self.model), (None, None))
        if kind is None:
            return None
        trees = getattr(self.model, "estimators_", None)
        if not isinstance(trees, list) or len(trees) == 0 or getattr(self.model, "n_outputs_", None) != 1:
            return None
        if not all(type(t) is tree_type for t in trees):
            return None
        if kind == "classifier":
            classes = getattr(self.model, "classes_", None)
            if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) != self.model.n_classes_:
                return None
        return kind

    def _prove_fast_path(self) -> None:
        """Compare the forest fast path with the model's own methods on a few rows; disable it if they differ."""
        rng = np.random.default_rng(0)
        rows = np.vstack([np.zeros(self.n_features), np.ones(self.n_features), rng.normal(size=(6, self.n_features))])
        want_proba = PREDICT_PROBA in self.output_specs
        try:
            fast = self._forest_predict(rows, True, want_proba)
            slow = self._model_predict(rows, True, want_proba)
            same = np.array_equal(fast[0], slow[0]) and (not want_proba or np.array_equal(fast[1], slow[1]))
        except Exception as e:  # the fast path cannot apply: the estimator's own predict serves
            log.warning("forest fast path disabled for %s: %s: %s", self.estimator_name, type(e).__name__, e)
            same = False
        if not same:
            log.warning("forest fast path does not match %s.predict; serving with predict", self.estimator_name)
            self._forest = None

    def _check_shapes(self, labels: np.ndarray | None, proba: np.ndarray | None, rows: int) -> None:
        if labels is not None and labels.shape != (rows,):
            raise ArtifactError(
                f"{self.estimator_name}.predict returns shape {list(labels.shape)} for {rows} rows; "
                f"expected one value per row ([{rows}])"
            )
        if proba is not None:
            classes = self.metadata.classes
            n = len(classes) if classes is not None else None
            if proba.ndim != 2 or proba.shape[0] != rows or (n is not None and proba.shape[1] != n):
                raise ArtifactError(
                    f"{self.estimator_name}.predict_proba returns shape {list(proba.shape)} for {rows} rows; "
                    f"expected [{rows}, {n}] (one probability per class)"
                )

    # ----------------------------------------------------------------------------- prediction
    def predict(
        self, x: np.ndarray, want_labels: bool, want_proba: bool, finite: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run in a worker thread. ``finite``: the caller checked there is no NaN/inf."""
        if self._forest is not None and finite:
            try:
                return self._forest_predict(x, want_labels, want_proba)
            except Exception as e:  # never seen in tests; if it happens, the estimator's own predict serves
                log.warning("forest fast path failed (%s: %s); serving with %s.predict from now on",
                            type(e).__name__, e, self.estimator_name)
                self._forest = None
        return self._model_predict(x, want_labels, want_proba)

    def _model_predict(
        self, x: np.ndarray, want_labels: bool, want_proba: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        model = self.model
        labels = np.asarray(model.predict(x)) if want_labels else None
        if labels is not None and labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels.ravel()  # e.g. cross_decomposition models keep a column per target
        proba = np.ascontiguousarray(model.predict_proba(x)) if want_proba else None
        return labels, proba

    def _forest_predict(
        self, x: np.ndarray, want_labels: bool, want_proba: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        model = self.model
        x32 = np.ascontiguousarray(x, dtype=np.float32)  # what the forest's own validation does
        trees = model.estimators_
        if self._forest == "classifier":
            proba = np.zeros((x32.shape[0], model.n_classes_), dtype=np.float64)
            for tree in trees:  # DecisionTreeClassifier.predict_proba minus its per-call checks
                proba += tree.tree_.predict(x32)[:, : tree.n_classes_]
            proba /= len(trees)
            labels = model.classes_.take(np.argmax(proba, axis=1), axis=0) if want_labels else None
            return labels, (proba if want_proba else None)
        y = np.zeros(x32.shape[0], dtype=np.float64)
        for tree in trees:  # DecisionTreeRegressor.predict minus its per-call checks
            y += tree.tree_.predict(x32)[:, 0]
        y /= len(trees)
        return y, None

    # ----------------------------------------------------------------------------- V2 parsing
    def parse_v2(self, payload: Any, max_rows: int) -> Parsed:
        if not isinstance(payload, dict):
            raise bad_request(f"request body must be a JSON object, got {type(payload).__name__}")
        if "inputs" not in payload:
            raise bad_request("missing required field 'inputs' (a list of tensors)")
        inputs = payload["inputs"]
        if not isinstance(inputs, list):
            raise bad_request(f"'inputs' must be a list of tensors, got {json_type(inputs)}")
        if len(inputs) != 1:
            raise bad_request(f"expected exactly one input tensor ('{self.input_name}'), got {len(inputs)}")
        inp = inputs[0]
        if not isinstance(inp, dict):
            raise bad_request(f"inputs[0] must be an object with name, shape, datatype, data; got {type(inp).__name__}")
        for key in ("name", "shape", "datatype", "data"):
            if key not in inp:
                raise bad_request(f"inputs[0] is missing required field '{key}'")
        name = inp["name"]
        if name != self.input_name:
            raise bad_request(f"unknown input {name!r}; model {self.name!r} takes one input '{self.input_name}'")
        params = payload.get("parameters")
        if params is not None and not isinstance(params, dict):
            raise bad_request("'parameters' must be an object")
        rid = payload.get("id")
        if rid is not None and not isinstance(rid, str):
            raise bad_request(f"'id' must be a string, got {type(rid).__name__}")
        outputs = self._requested_outputs(payload.get("outputs"))
        x, finite = self._tensor(inp["shape"], inp["datatype"], inp["data"], max_rows)
        return Parsed(x, outputs, rid, finite)

    def _requested_outputs(self, req: Any) -> tuple[str, ...]:
        if req is None:
            return self.all_outputs
        if not isinstance(req, list):
            raise bad_request("'outputs' must be a list of {\"name\": ...} objects")
        names: list[str] = []
        for o in req:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str):
                raise bad_request("each entry of 'outputs' must be an object with a string 'name'")
            n = o["name"]
            if n not in self.output_specs:
                raise bad_request(f"unknown output {n!r}; model {self.name!r} has outputs: {self.output_list}")
            if n in names:
                raise bad_request(f"output {n!r} requested twice")
            names.append(n)
        if not names:
            return self.all_outputs
        return tuple(names)

    def _tensor(self, shape: Any, datatype: Any, data: Any, max_rows: int) -> tuple[np.ndarray, bool]:
        iname, nf = self.input_name, self.n_features
        if not isinstance(datatype, str) or datatype not in ALL_DATATYPES:
            raise bad_request(
                f"unknown datatype {datatype!r} for input '{iname}'; expected one of {', '.join(NUMERIC_DATATYPES)}"
            )
        if datatype == "BYTES":
            raise bad_request(f"datatype BYTES is not accepted for input '{iname}'; expected a numeric datatype (FP64)")
        if (
            not isinstance(shape, list)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in shape)
        ):
            raise bad_request(f"shape of input '{iname}' must be a list of non-negative integers, got {shape!r}")
        if len(shape) != 2:
            raise bad_request(f"input '{iname}' must have shape [N, {nf}] (rows, features), got {_shape_str(shape)}")
        rows, cols = shape
        if cols != nf:
            raise bad_request(f"expected {nf} features, got {cols} (input '{iname}' shape {_shape_str(shape)})")
        if rows == 0:
            raise bad_request(f"empty input: input '{iname}' has 0 rows; expected at least 1")
        if rows > max_rows:
            raise bad_request(f"input '{iname}' has {rows} rows; the limit per request is {max_rows}")
        if isinstance(data, np.ndarray):  # binary tensor data (binary.py, grpc_service.py): typed already
            arr = data.astype(np.float64)
        elif not isinstance(data, list):
            raise bad_request(f"data of input '{iname}' must be a list of numbers, got {json_type(data)}")
        else:
            depth = _nesting(data)
            if depth > len(shape):
                raise bad_request(
                    f"data of input '{iname}' is nested {depth} levels deep; shape {_shape_str(shape)} allows at most "
                    f"{len(shape)} (flat, or one list per row)"
                )
            arr = json_values(data, datatype, f"input '{iname}'", cols)
        if arr.size != rows * cols:
            raise bad_request(
                f"input '{iname}' shape {_shape_str(shape)} needs {rows * cols} values, data has {arr.size}"
            )
        x = arr.reshape(rows, cols)
        return x, self._check_finite(x, f"input '{iname}'")

    def _check_finite(self, x: np.ndarray, what: str) -> bool:
        finite = np.isfinite(x)
        if finite.all():
            return True
        bad = np.isinf(x)
        if bad.any():
            r, c = np.argwhere(bad)[0]
            raise bad_request(f"{what} contains an infinite value at row {r}, feature {c}; expected finite numbers")
        if not self.allow_nan:
            r, c = np.argwhere(~finite)[0]
            raise bad_request(
                f"{what} contains NaN at row {r}, feature {c}; "
                f"this model ({self.estimator_name}) does not accept missing values"
            )
        return False

    # ----------------------------------------------------------------------------- V1
    def parse_v1(self, payload: Any, max_rows: int) -> Parsed:
        if not isinstance(payload, dict):
            raise bad_request(f"request body must be a JSON object, got {type(payload).__name__}")
        rows = payload.get("instances", payload.get("inputs"))
        if not isinstance(rows, list):
            raise bad_request("missing required field 'instances' (a list of rows, each a list of numbers)")
        if not rows:
            raise bad_request("empty input: 'instances' has 0 rows; expected at least 1")
        if len(rows) > max_rows:
            raise bad_request(f"'instances' has {len(rows)} rows; the limit per request is {max_rows}")
        if not all(isinstance(r, list) for r in rows):
            raise bad_request(f"'instances' must be a list of rows, each a list of {self.n_features} numbers")
        lengths = {len(r) for r in rows}
        if len(lengths) != 1:
            raise bad_request(f"expected {self.n_features} features, got rows of different lengths")
        cols = lengths.pop()
        if cols != self.n_features:
            raise bad_request(f"expected {self.n_features} features, got {cols}")
        flat = json_values(rows, "FP64", "'instances'", cols)
        if flat.size != len(rows) * cols:
            raise bad_request(f"'instances' must be a list of rows, each a list of {self.n_features} numbers")
        arr = flat.reshape(len(rows), cols)
        finite = self._check_finite(arr, "'instances'")
        return Parsed(arr, (PREDICT,), None, finite)

    # ----------------------------------------------------------------------------- encoding
    def v2_outputs(self, names: tuple[str, ...], labels: np.ndarray | None, proba: np.ndarray | None) -> list[dict]:
        out: list[dict] = []
        for n in names:
            if n == PREDICT:
                assert labels is not None
                out.append(
                    {"name": PREDICT, "shape": [len(labels)], "datatype": self.labels_datatype, "data": self.label_data(labels)}
                )
            else:
                assert proba is not None
                out.append(
                    {"name": PREDICT_PROBA, "shape": list(proba.shape), "datatype": "FP64", "data": proba.ravel()}
                )
        return out

    def label_data(self, labels: np.ndarray) -> Any:
        """numpy arrays go to orjson as they are (fast); object/str labels as Python lists."""
        if labels.dtype.kind in "biuf":
            return np.ascontiguousarray(labels)
        return [str(v) for v in labels.tolist()]

    # ----------------------------------------------------------------------------- metadata
    def v2_metadata(self) -> dict[str, Any]:
        meta = self.metadata
        params: dict[str, Any] = {
            "estimator": meta.estimator,
            "task": meta.task,
            "feature_names": meta.feature_names,
            "sklearn_version": meta.sklearn_version,
        }
        if meta.classes is not None:
            params["classes"] = meta.classes
        if self.warnings:
            params["warnings"] = self.warnings
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "sklearn_skops",
            "inputs": [i.model_dump() for i in meta.inputs],
            "outputs": [o.model_dump() for o in meta.outputs],
            "parameters": params,
        }


def json_type(v: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    return {dict: "object", list: "array", str: "string", type(None): "null"}.get(type(v), type(v).__name__)


def _nesting(data: list) -> int:
    """How deep the first elements of nested lists go (cheap; numpy catches raggedness)."""
    depth = 0
    while isinstance(data, list):
        depth += 1
        if not data:
            break
        data = data[0]
    return depth


def reason_of(e: BaseException) -> str:
    if isinstance(e, ApiError):
        return e.message
    return f"{type(e).__name__}: {e}"
