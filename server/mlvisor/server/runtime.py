"""The model: one loaded artifact, the inputs it takes, prediction, and its outputs. No protocol here.

The protocol codecs (v2_json.py, binary.py, grpc_codec.py) hand the data plane an
:class:`~mlvisor.server.inference.InferRequest`; :meth:`ModelRuntime.prepare` matches its
inputs to what this model takes and checks them, *before* the request joins a batch, so almost
every bad input gets its own 400 (naming the input or the column) and never reaches (or poisons)
a merged predict call. Prediction runs in the batcher's thread.

What a model takes:

- **The matrix**: one ``[N, n_features]`` numeric tensor (named as in metadata, ``input-0``),
  as every model takes that has no ``metadata.columns``; KServe V1 ``instances`` are this too.
- **Named columns**: one input per column, named as the column, shape ``[N]`` or ``[N, 1]``,
  as MLServer's pandas codec sends them. A model with ``metadata.columns`` (a Pipeline whose
  ColumnTransformer takes a pandas DataFrame) takes its columns this way: FP64 and INT64
  columns numbers, BYTES columns strings (JSON strings, or bytes from binary tensors and gRPC,
  UTF-8), a missing value (JSON null, NaN) only where the column had missing values in
  training. It also takes the single matrix when all its columns are numeric. A model without
  columns takes its ``feature_names`` as FP64 columns, stacked into the matrix. Errors name the
  column: ``column 'age': expected FP64, got BYTES``.

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
Value checks per datatype live in :mod:`mlvisor.server.tensors` (shared by every codec).
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass
from typing import Any, cast

import numpy as np

from mlvisor.server.errors import bad_request
from mlvisor.server.inference import (
    PREDICT,
    PREDICT_PROBA,
    InferRequest,
    InferResponse,
    InputTensor,
    OutputTensor,
)
from mlvisor.server.tensors import INTEGER_RANGES, refuse_value
from mlvisor.server.v2_json import shape_str
from mlvisor.trainer.artifact import ArtifactError, ArtifactMetadata, ColumnSpec, LoadedArtifact, load_artifact

log = logging.getLogger("mlvisor.server")

#: The matrix input's name when metadata does not give one (a table model's inputs are its columns).
MATRIX_INPUT = "input-0"


@dataclass(slots=True)
class Prepared:
    """A request checked against the model: its rows, the outputs to return (in order)."""

    x: Any
    """The [N, n_features] float64 matrix, or (table models) one 1-D array per column, in order."""
    rows: int
    outputs: tuple[str, ...]
    finite: bool = True

    @property
    def wants_labels(self) -> bool:
        return PREDICT in self.outputs

    @property
    def wants_proba(self) -> bool:
        return PREDICT_PROBA in self.outputs


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
        self.table = meta.columns is not None
        if self.table:
            assert meta.columns is not None
            columns = tuple(meta.columns)
            names = [c.name for c in columns]
            if len(columns) != meta.n_features:
                raise ArtifactError(f"metadata.json lists {len(columns)} columns but {meta.n_features} features")
            if len(set(names)) != len(names):
                raise ArtifactError("metadata.json lists a column twice: " + ", ".join(sorted({n for n in names if names.count(n) > 1})))
            single = meta.inputs[0].name if len(meta.inputs) == 1 else MATRIX_INPUT
            self.input_name = single if single not in names else MATRIX_INPUT
            self.matrix_ok = all(c.datatype != "BYTES" for c in columns)
            try:
                import pandas  # noqa: F401  # a table model predicts on a DataFrame
            except ImportError as e:
                raise ArtifactError(f"model {meta.name!r} takes a table (metadata.columns) but pandas is not installed") from e
        else:
            if len(meta.inputs) != 1:
                raise ArtifactError(f"expected exactly one input tensor in metadata, got {len(meta.inputs)}")
            self.input_name = meta.inputs[0].name
            self.matrix_ok = True
            columns = ()
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
        if not self.table:
            # A model without columns takes its feature names as FP64 columns too, when they name
            # every feature once and none is the matrix input's name.
            fn = list(meta.feature_names)
            if len(fn) == meta.n_features and len(set(fn)) == len(fn) and self.input_name not in fn:
                columns = tuple(ColumnSpec(name=n, datatype="FP64", missing=self.allow_nan) for n in fn)
        self.columns: tuple[ColumnSpec, ...] = columns
        self.column_index = {c.name: i for i, c in enumerate(columns)}
        self.column_list = ", ".join(f"'{c.name}' {c.datatype}" for c in columns)
        self.warnings: list[str] = []
        import sklearn

        if meta.sklearn_version != sklearn.__version__:
            self.warnings.append(
                f"model trained with scikit-learn {meta.sklearn_version}, served with {sklearn.__version__}"
            )
        # A table model is a Pipeline: its preprocessing, then an estimator the fast path may serve.
        self._pre: Any = None
        self._final: Any = self.model
        if self.table:
            from sklearn.pipeline import Pipeline

            if type(self.model) is Pipeline and len(self.model.steps) > 1:
                self._pre, self._final = self.model[:-1], self.model.steps[-1][1]
        self._forest = self._forest_kind() if self._final is not self.model or not self.table else None
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
        warm_up = runtime.warm_up_rows(2)
        try:
            labels, proba = runtime.predict(warm_up, True, want_proba, not runtime.table)
        except Exception as e:
            raise ArtifactError(f"warm-up prediction failed: {type(e).__name__}: {e}") from e
        runtime._check_shapes(labels, proba, 2)
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
        final = self._final
        kind, tree_type = kinds.get(type(final), (None, None))
        if kind is None:
            return None
        trees = getattr(final, "estimators_", None)
        if not isinstance(trees, list) or len(trees) == 0 or getattr(final, "n_outputs_", None) != 1:
            return None
        if not all(type(t) is tree_type for t in trees):
            return None
        if kind == "classifier":
            classes = getattr(final, "classes_", None)
            if not isinstance(classes, np.ndarray) or classes.ndim != 1 or len(classes) != final.n_classes_:
                return None
        return kind

    def _prove_fast_path(self) -> None:
        """Compare the forest fast path with the model's own methods on a few rows; disable it if they differ."""
        rng = np.random.default_rng(0)
        want_proba = PREDICT_PROBA in self.output_specs
        try:
            if self.table:  # in the space the preprocessing maps the columns to
                seen = self._pre.transform(self.frame(self.warm_up_rows(2)))
                if not isinstance(seen, np.ndarray):
                    raise TypeError(f"the preprocessing returns {type(seen).__name__}, not a dense array")
                width = seen.shape[1]
                rows = np.vstack([seen, np.zeros(width), np.ones(width), rng.normal(size=(6, width))])
            else:
                width = self.n_features
                rows = np.vstack([np.zeros(width), np.ones(width), rng.normal(size=(6, width))])
            fast = self._forest_predict(rows, True, want_proba)
            slow = self._final_predict(rows, True, want_proba)
            same = np.array_equal(cast(np.ndarray, fast[0]), cast(np.ndarray, slow[0])) and (
                not want_proba or np.array_equal(cast(np.ndarray, fast[1]), cast(np.ndarray, slow[1]))
            )
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
        self, x: Any, want_labels: bool, want_proba: bool, finite: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """Run in a worker thread. ``finite``: the caller checked there is no NaN/inf.

        ``x`` is the matrix, or for a table model one array per column (made a DataFrame here,
        once per batch, off the event loop).
        """
        if self.table:
            frame = self.frame(x)
            if self._forest is None:
                return self._model_predict(frame, want_labels, want_proba)
            xt = self._pre.transform(frame)  # its errors are the model's (e.g. an unknown category)
            if isinstance(xt, np.ndarray) and xt.dtype.kind == "f" and np.isfinite(xt).all():
                x, finite = xt, True
            else:
                return self._final_predict(xt, want_labels, want_proba)
        if self._forest is not None and finite:
            try:
                return self._forest_predict(x, want_labels, want_proba)
            except Exception as e:  # never seen in tests; if it happens, the estimator's own predict serves
                log.warning("forest fast path failed (%s: %s); serving with %s.predict from now on",
                            type(e).__name__, e, self.estimator_name)
                self._forest = None
                if self.table:
                    return self._final_predict(x, want_labels, want_proba)
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

    def _final_predict(
        self, xt: Any, want_labels: bool, want_proba: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        """The last step of a table model's Pipeline on already-transformed input (what Pipeline.predict does)."""
        final = self._final
        labels = np.asarray(final.predict(xt)) if want_labels else None
        proba = np.ascontiguousarray(final.predict_proba(xt)) if want_proba else None
        return labels, proba

    def _forest_predict(
        self, x: np.ndarray, want_labels: bool, want_proba: bool
    ) -> tuple[np.ndarray | None, np.ndarray | None]:
        model = self._final
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

    # ----------------------------------------------------------------------------- inputs
    def prepare(self, request: InferRequest, max_rows: int) -> Prepared:
        """Match a request's inputs to what this model takes and check them; 400 naming the input or column."""
        outputs = self._requested_outputs(request)
        inputs = request.inputs
        if len(inputs) == 1 and (inputs[0].name is None or inputs[0].name == self.input_name):
            x, rows, finite = self._matrix(inputs[0], max_rows)
        else:
            x, rows, finite = self._columns(inputs, max_rows)
        return Prepared(x, rows, outputs, finite)

    def _requested_outputs(self, request: InferRequest) -> tuple[str, ...]:
        if not request.outputs:
            return self.all_outputs
        names = tuple([o.name for o in request.outputs])
        for n in names:
            if n not in self.output_specs:
                raise bad_request(f"unknown output {n!r}; model {self.name!r} has outputs: {self.output_list}")
        return names

    def _takes(self) -> str:
        """What this model takes, for messages."""
        matrix = f"one input '{self.input_name}' ([N, {self.n_features}] numbers)"
        if not self.columns:
            return matrix
        per_column = f"one input per column ({self.column_list})"
        return f"{per_column} or {matrix}" if self.matrix_ok else per_column

    def _matrix(self, t: InputTensor, max_rows: int) -> tuple[Any, int, bool]:
        nf = self.n_features
        if len(t.shape) == 2 and t.shape[1] == nf and 0 < t.shape[0] <= max_rows and t.datatype != "BYTES" \
                and t.first_null is None and not self.table:  # the usual request: nothing to word
            x = t.data.reshape(t.shape)
            if x.dtype != np.float64:
                x = x.astype(np.float64)
            return x, t.shape[0], self._check_finite(x, t)
        what = t.what
        if t.datatype == "BYTES":
            raise bad_request(f"datatype BYTES is not accepted for {what}; expected a numeric datatype (FP64)")
        if not self.matrix_ok:
            raise bad_request(f"model {self.name!r} has string columns: send {self._takes()}")
        if len(t.shape) != 2:
            raise bad_request(f"{what} must have shape [N, {nf}] (rows, features), got {shape_str(t.shape)}")
        rows, cols = t.shape
        if cols != nf:
            raise bad_request(f"expected {nf} features, got {cols} ({what} shape {shape_str(t.shape)})")
        if rows == 0:
            raise bad_request(f"empty input: {what} has 0 rows; expected at least 1")
        if rows > max_rows:
            raise bad_request(f"{what} has {rows} rows; the limit per request is {max_rows}")
        if t.first_null is not None:
            raise refuse_value(what, t.datatype, None, t.first_null, cols, "is null, not a number")
        x = t.data.reshape(rows, cols)
        if self.table:  # all-numeric table: the matrix's columns, checked as named columns
            tensors = {c.name: InputTensor(c.name, t.datatype, (rows,), x[:, j]) for j, c in enumerate(self.columns)}
            return self._column_arrays(tensors, max_rows)
        if x.dtype != np.float64:
            x = x.astype(np.float64)
        return x, rows, self._check_finite(x, t)

    def _columns(self, inputs: tuple[InputTensor, ...], max_rows: int) -> tuple[Any, int, bool]:
        if not self.columns:
            if len(inputs) != 1:
                raise bad_request(f"expected exactly one input tensor ('{self.input_name}'), got {len(inputs)}")
            raise bad_request(f"unknown input {inputs[0].name!r}; model {self.name!r} takes {self._takes()}")
        if not inputs:
            raise bad_request(f"expected exactly one input tensor ('{self.input_name}') or one per column; "
                              f"model {self.name!r} takes {self._takes()}")
        given: dict[str, InputTensor] = {}
        for t in inputs:
            if t.name not in self.column_index:
                raise bad_request(f"unknown input {t.name!r}; model {self.name!r} takes {self._takes()}")
            if t.name in given:
                raise bad_request(f"input {t.name!r} is given twice; send each column once")
            given[t.name] = t
        absent = [c.name for c in self.columns if c.name not in given]
        if absent:
            raise bad_request(
                f"missing input for column{'s' if len(absent) > 1 else ''} {', '.join(repr(n) for n in absent)}; "
                f"model {self.name!r} takes one input per column: {self.column_list}"
            )
        return self._column_arrays(given, max_rows)

    def _column_arrays(self, given: dict[str, InputTensor], max_rows: int) -> tuple[Any, int, bool]:
        columns = self.columns
        t0 = given[columns[0].name]
        rows = t0.shape[0] if t0.shape else 0
        for c in columns:
            shape = given[c.name].shape
            if not (len(shape) == 1 or (len(shape) == 2 and shape[1] == 1)):
                raise bad_request(f"column {c.name!r}: shape {shape_str(shape)}; expected [N] or [N, 1] (one value per row)")
            if shape[0] != rows:
                raise bad_request(f"column {c.name!r} has {shape[0]} rows but column {columns[0].name!r} has {rows}; "
                                  "every column needs the same rows")
        if rows == 0:
            raise bad_request(f"empty input: column {columns[0].name!r} has 0 rows; expected at least 1")
        if rows > max_rows:
            raise bad_request(f"column {columns[0].name!r} has {rows} rows; the limit per request is {max_rows}")
        if self.table:
            return tuple(self._column(c, given[c.name], f"column {c.name!r}") for c in columns), rows, False
        # An all-numeric model: fill its matrix column by column and check it once (as the matrix
        # input is checked); a column's own checks run only to word an error.
        x = np.empty((rows, len(columns)))
        for j, c in enumerate(columns):
            t = given[c.name]
            if t.datatype == "BYTES" or t.first_null is not None:
                self._column(c, t, f"column {c.name!r}")  # raises, naming the column
            x[:, j] = t.data.reshape(-1)
        finite = bool(np.isfinite(x).all())
        if not finite:
            for c in columns:
                self._column(c, given[c.name], f"column {c.name!r}")  # raises for an inf, or NaN the model refuses
        return x, rows, finite

    def _no_missing(self, c: ColumnSpec, what: str, row: int, null: bool) -> Exception:
        value = "null" if null else "NaN"
        if self.table:
            return bad_request(f"{what}: missing value ({value}) at row {row}; "
                               "this column takes no missing values (it had none in training)")
        return bad_request(f"{what}: missing value ({value}) at row {row}; "
                           f"this model ({self.estimator_name}) does not accept missing values")

    def _column(self, c: ColumnSpec, t: InputTensor, what: str) -> np.ndarray:
        """One column's values as the model's DataFrame holds them (float64, int64, object str)."""
        data = t.data.reshape(-1)
        if c.datatype == "BYTES":
            if t.datatype != "BYTES":
                raise bad_request(f"{what}: expected BYTES, got {t.datatype}; send this column's values as strings")
            return self._strings(c, data, what)
        if t.datatype == "BYTES":
            raise bad_request(f"{what}: expected {c.datatype}, got BYTES; send this column's values as numbers")
        kind = data.dtype.kind
        if c.datatype == "INT64" and kind in "biu":
            if kind == "u" and data.size and int(data.max()) > INTEGER_RANGES["INT64"][1]:
                i = int(np.argmax(data > INTEGER_RANGES["INT64"][1]))
                raise bad_request(f"{what}: value {int(data[i])} at row {i} is out of range; INT64 takes "
                                  f"integers in {INTEGER_RANGES['INT64'][0]}..{INTEGER_RANGES['INT64'][1]}")
            return data.astype(np.int64)
        x = data.astype(np.float64)
        nan = np.isnan(x)
        if nan.any():
            i = int(np.argmax(nan))
            if not c.missing:
                raise self._no_missing(c, what, i, t.first_null is not None and t.first_null <= i)
        inf = np.isinf(x)
        if inf.any():
            i = int(np.argmax(inf))
            raise bad_request(f"{what}: infinite value at row {i}; expected finite numbers")
        if c.datatype != "INT64":
            return x
        known = ~nan
        fractional = known & (x != np.floor(x))
        if fractional.any():
            i = int(np.argmax(fractional))
            raise bad_request(f"{what}: value {float(x[i])!r} at row {i} is not an integer; INT64 takes integers")
        lo, hi = INTEGER_RANGES["INT64"]
        out = known & ((x < lo) | (x >= float(hi + 1)))
        if out.any():
            i = int(np.argmax(out))
            raise bad_request(f"{what}: value {float(x[i])!r} at row {i} is out of range; INT64 takes integers in {lo}..{hi}")
        return x if nan.any() else x.astype(np.int64)  # a missing value keeps the column float (NaN)

    def _strings(self, c: ColumnSpec, data: np.ndarray, what: str) -> np.ndarray:
        out = np.empty(len(data), dtype=object)
        for i, v in enumerate(data.tolist()):
            if v is None:
                if not c.missing:
                    raise self._no_missing(c, what, i, True)
                out[i] = np.nan  # what pandas' read_csv gives for an empty cell of a string column
            elif isinstance(v, bytes):
                try:
                    out[i] = v.decode()
                except UnicodeDecodeError:
                    raise bad_request(f"{what}: value at row {i} is not valid UTF-8; BYTES columns take text") from None
            else:
                out[i] = v
        return out

    def frame(self, columns: tuple[np.ndarray, ...]) -> Any:
        """A table model's input: a DataFrame with the metadata's columns, in order, of the contract's dtypes."""
        import pandas as pd

        return pd.DataFrame(
            {c.name: pd.Series(a, dtype=object if c.datatype == "BYTES" else a.dtype, copy=False)
             for c, a in zip(self.columns, columns, strict=True)}
        )

    def warm_up_rows(self, rows: int) -> Any:
        """Input for the warm-up prediction: zeros, and for string columns a category the model knows."""
        if not self.table:
            return np.zeros((rows, self.n_features))
        examples = example_categories(self.model)
        out: list[np.ndarray] = []
        for c in self.columns:
            if c.datatype == "BYTES":
                a = np.empty(rows, dtype=object)
                a[:] = [examples.get(c.name, np.nan if c.missing else "")] * rows
            else:
                a = np.zeros(rows, dtype=np.int64 if c.datatype == "INT64" else np.float64)
            out.append(a)
        return tuple(out)

    def _check_finite(self, x: np.ndarray, t: InputTensor) -> bool:
        flat = x.reshape(-1)
        if math.isfinite(flat.dot(flat)):  # a NaN or an infinity makes it non-finite; 4x cheaper than isfinite().all()
            return True
        finite = np.isfinite(x)
        if finite.all():  # finite values whose squares overflowed
            return True
        what = t.what
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

    # ----------------------------------------------------------------------------- outputs
    def response(
        self, request: InferRequest, outputs: tuple[str, ...], labels: np.ndarray | None, proba: np.ndarray | None
    ) -> InferResponse:
        out: list[OutputTensor] = []
        for n in outputs:
            if n == PREDICT:
                assert labels is not None
                out.append(OutputTensor(PREDICT, self.labels_datatype, (len(labels),), self.label_data(labels)))
            else:
                assert proba is not None
                out.append(OutputTensor(PREDICT_PROBA, "FP64", proba.shape, proba.ravel()))
        return InferResponse(self.name, self.version, tuple(out), request.id)

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
        if self.columns:
            params["columns"] = [c.model_dump() for c in self.columns]
        if self.table:
            inputs = [{"name": c.name, "datatype": c.datatype, "shape": [-1]} for c in self.columns]
        else:
            inputs = [i.model_dump() for i in meta.inputs]
        return {
            "name": self.name,
            "versions": [self.version],
            "platform": "sklearn_skops",
            "inputs": inputs,
            "outputs": [o.model_dump() for o in meta.outputs],
            "parameters": params,
        }




def example_categories(model: Any) -> dict[str, Any]:
    """A known category per string column, from the fitted encoders of a table model (for the warm-up).

    Walks Pipelines and ColumnTransformers down to objects with ``categories_`` (OneHotEncoder,
    OrdinalEncoder), naming their inputs by ``feature_names_in_`` or the ColumnTransformer's
    column list. Best effort: a column not found warms up with NaN (or "").
    """
    found: dict[str, Any] = {}

    def visit(obj: Any, columns: list[str] | None) -> None:
        transformers = getattr(obj, "transformers_", None)
        steps = getattr(obj, "steps", None)
        if isinstance(transformers, list):
            for item in transformers:
                if len(item) == 3 and isinstance(item[2], list | tuple | np.ndarray):
                    cols = [c for c in item[2] if isinstance(c, str)]
                    visit(item[1], cols if len(cols) == len(item[2]) else None)
        elif isinstance(steps, list):
            for step in steps:
                if isinstance(step, tuple) and len(step) == 2:
                    visit(step[1], columns)
        else:
            categories = getattr(obj, "categories_", None)
            names = getattr(obj, "feature_names_in_", None)
            names = list(names) if names is not None else columns
            if isinstance(categories, list) and names is not None and len(names) == len(categories):
                for name, cats in zip(names, categories, strict=True):
                    value = next((v for v in np.asarray(cats).tolist() if isinstance(v, str | int | float)
                                  and v == v), None)
                    if value is not None:
                        found.setdefault(str(name), value)

    visit(model, None)
    return found
