"""Training data: scikit-learn's bundled datasets and CSV files from a mounted volume.

Both sources end as the same :class:`TrainingData`: a float64 feature matrix, the raw target
column and its description for the artifact metadata. Builtin datasets ship inside the
scikit-learn wheel (no download, so workers need no network). A CSV has a header row; every
column except the target must be numeric, and every problem is reported with the column (and
row) it is in, as exit code 2.

Whether the target is a class label or a number is decided later, by the estimator's task
(:func:`prepare_target`): a classifier accepts integer or string labels, a regressor needs
numbers.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlvisor.operator import api
from mlvisor.trainer.artifact import DatasetInfo
from mlvisor.trainer.spec import InvalidSpec

BUILTIN_LOADERS: dict[str, str] = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "diabetes": "load_diabetes",
}


@dataclass(frozen=True)
class TrainingData:
    X: np.ndarray
    """float64, shape (rows, features)."""
    y: np.ndarray
    """The target as read: numbers for builtin datasets, strings for CSV."""
    feature_names: list[str]
    info: DatasetInfo


def load_dataset(dataset: api.Dataset, data_dir: Path) -> TrainingData:
    if dataset.builtin is not None:
        return load_builtin(str(dataset.builtin))
    assert dataset.csv is not None  # the api model guarantees exactly one source
    return load_csv(Path(data_dir), dataset.csv.path, dataset.csv.target)


def load_builtin(name: str) -> TrainingData:
    import sklearn.datasets

    if name not in BUILTIN_LOADERS:
        raise InvalidSpec(
            f"spec.dataset.builtin: unknown dataset {name!r}; expected one of "
            + ", ".join(sorted(BUILTIN_LOADERS))
        )
    bunch = getattr(sklearn.datasets, BUILTIN_LOADERS[name])()
    X = np.asarray(bunch.data, dtype=np.float64)
    names = [str(n) for n in getattr(bunch, "feature_names", [])] or [
        f"x{i}" for i in range(X.shape[1])
    ]
    descr = str(getattr(bunch, "DESCR", "")).strip()
    # DESCR opens with an rst label (".. _iris_dataset:"), then the title
    first = next((line.strip() for line in descr.splitlines()
                  if line.strip(" -=*") and not line.startswith("..")), "")
    return TrainingData(
        X=X,
        y=np.asarray(bunch.target),
        feature_names=names,
        info=DatasetInfo(source="builtin", name=name, rows=X.shape[0], target="target",
                         description=first),
    )


def load_csv(data_dir: Path, rel_path: str, target: str) -> TrainingData:
    path = data_dir / rel_path
    where = f"spec.dataset.csv.path {rel_path!r} (under {data_dir})"
    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            rows = list(csv.reader(f))
    except FileNotFoundError as e:
        raise InvalidSpec(f"{where}: file not found") from e
    except IsADirectoryError as e:
        raise InvalidSpec(f"{where}: is a directory, expected a CSV file") from e
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise InvalidSpec(f"{where}: cannot be read as CSV: {e}") from e
    rows = [r for r in rows if any(cell.strip() for cell in r)]
    if not rows:
        raise InvalidSpec(f"{where}: the file is empty, expected a header row and data rows")
    header = [h.strip() for h in rows[0]]
    data = rows[1:]
    if target not in header:
        raise InvalidSpec(
            f"spec.dataset.csv.target: column {target!r} is not in {rel_path}; "
            f"columns are: {', '.join(header)}"
        )
    if len(set(header)) != len(header):
        dupes = sorted({h for h in header if header.count(h) > 1})
        raise InvalidSpec(f"{where}: duplicate column names {', '.join(dupes)}")
    if len(header) < 2:
        raise InvalidSpec(f"{where}: only the target column {target!r}; need at least one feature")
    if len(data) < 2:
        raise InvalidSpec(f"{where}: {len(data)} data rows; need at least 2 to split train/test")
    for lineno, row in enumerate(data, start=2):
        if len(row) != len(header):
            raise InvalidSpec(
                f"{where}: line {lineno} has {len(row)} fields, the header has {len(header)}"
            )
    t = header.index(target)
    feature_cols = [i for i in range(len(header)) if i != t]
    X = np.empty((len(data), len(feature_cols)), dtype=np.float64)
    for j, col in enumerate(feature_cols):
        for r, row in enumerate(data):
            X[r, j] = _number(row[col], header[col], r + 2, rel_path)
    y = np.array([row[t].strip() for row in data], dtype=object)
    empty = [i + 2 for i, v in enumerate(y) if v == ""]
    if empty:
        raise InvalidSpec(
            f"spec.dataset.csv.target: column {target!r} is empty at line {empty[0]} of {rel_path}"
        )
    return TrainingData(
        X=X,
        y=y,
        feature_names=[header[i] for i in feature_cols],
        info=DatasetInfo(source="csv", name=rel_path, rows=len(data), target=target),
    )


def _number(cell: str, column: str, lineno: int, rel_path: str) -> float:
    text = cell.strip()
    try:
        value = float(text)
    except ValueError:
        what = "empty" if not text else f"{text!r}"
        raise InvalidSpec(
            f"column {column!r} of {rel_path} is not numeric: {what} at line {lineno}; every "
            "column except the target must hold numbers"
        ) from None
    if not math.isfinite(value):
        raise InvalidSpec(
            f"column {column!r} of {rel_path} holds {text!r} at line {lineno}; features must be "
            "finite numbers"
        )
    return value


@dataclass(frozen=True)
class Target:
    y: np.ndarray
    classes: list[Any] | None
    """JSON-ready class labels in sorted order (classifiers), None for regressors."""
    label_datatype: str
    """V2 datatype of predict's output: INT64, BYTES or FP64."""


#: A numeric target with more distinct values than this, and fewer rows per value than
#: CONTINUOUS_ROWS_PER_VALUE on average, is a measurement, not a set of class labels
#: (diabetes: 214 values over 442 rows; digits, the most classes of the built-ins: 10 over 1797).
CONTINUOUS_MIN_VALUES = 20
CONTINUOUS_ROWS_PER_VALUE = 5.0


def counterpart(estimator: str | None, task: str) -> str:
    """The class of the other task to suggest: RandomForestClassifier <-> RandomForestRegressor."""
    import importlib

    want, have = ("Regressor", "Classifier") if task == "classification" else ("Classifier", "Regressor")
    if estimator and estimator.endswith(have):
        module, _, name = estimator.rpartition(".")
        try:
            if hasattr(importlib.import_module(module), name[: -len(have)] + want):
                return f"{module}.{name[: -len(have)]}{want}"
        except ImportError:
            pass
    return "sklearn.ensemble.RandomForestRegressor" if want == "Regressor" else "sklearn.ensemble.RandomForestClassifier"


def prepare_target(y_raw: np.ndarray, task: str, target_name: str, estimator: str | None = None) -> Target:
    """Type the target for the task: integer or string labels for classification, floats for regression.

    A target unfit for the task is an InvalidSpec that says which and suggests the other kind
    of estimator (``estimator``, the spec's class path, picks the suggestion).
    """
    from sklearn.utils.multiclass import type_of_target

    field = "the target" if target_name == "target" else f"target column {target_name!r}"
    what = estimator or ("a classifier" if task == "classification" else "a regressor")
    if y_raw.dtype == object:
        numeric = _all_numeric(y_raw)
    else:
        numeric = y_raw.astype(np.float64)
    if task == "regression":
        if numeric is None:
            bad = next(v for v in y_raw if _to_float(v) is None)
            raise InvalidSpec(
                f"{field} holds {bad!r}, which is not a number: it holds class labels, and {what} is a "
                f"regressor, which needs a numeric target; choose a classifier such as "
                f"{counterpart(estimator, task)}"
            )
        if not np.all(np.isfinite(numeric)):
            raise InvalidSpec(f"{field} holds non-finite values; a regressor needs finite numbers")
        return Target(y=numeric, classes=None, label_datatype="FP64")
    if numeric is not None:
        if np.all(np.isfinite(numeric)) and np.all(numeric == np.round(numeric)):
            y = numeric.astype(np.int64)
            datatype = "INT64"
        else:
            raise InvalidSpec(
                f"{field} is continuous (e.g. {numeric[~(numeric == np.round(numeric))][:1].tolist()}): "
                f"{what} is a classifier, which needs class labels (integers or strings); choose a "
                f"regressor such as {counterpart(estimator, task)}"
            )
        values = np.unique(y)
        if len(values) > CONTINUOUS_MIN_VALUES and len(y) / len(values) < CONTINUOUS_ROWS_PER_VALUE:
            raise InvalidSpec(
                f"{field} looks continuous: {len(values)} distinct values over {len(y)} rows "
                f"({len(y) / len(values):.1f} rows per value, e.g. {', '.join(str(v) for v in y[:3].tolist())}): "
                f"{what} is a classifier, which needs class labels; choose a regressor such as "
                f"{counterpart(estimator, task)}"
            )
    else:
        y = np.array([str(v) for v in y_raw], dtype=object)
        datatype = "BYTES"
    kind = type_of_target(y)
    classes = np.unique(y)
    if kind not in ("binary", "multiclass") or len(classes) < 2:
        raise InvalidSpec(
            f"{field} has {len(classes)} distinct value(s); a classifier needs at least 2 classes"
        )
    return Target(y=y, classes=[c.item() if hasattr(c, "item") else str(c) for c in classes],
                  label_datatype=datatype)


def _to_float(v: Any) -> float | None:
    try:
        return float(v)
    except (TypeError, ValueError):
        return None


def _all_numeric(values: np.ndarray) -> np.ndarray | None:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        f = _to_float(v)
        if f is None:
            return None
        out[i] = f
    return out
