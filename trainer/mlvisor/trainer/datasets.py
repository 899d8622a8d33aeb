"""Training data: scikit-learn's bundled datasets, and tables (CSV or Parquet) from a volume,
an object store or a web server.

Every source ends as the same :class:`TrainingData`: the features, the raw target column and
its description for the artifact metadata. Builtin datasets ship inside the scikit-learn wheel
(no download, so workers need no network). A table (``spec.dataset.csv`` or ``spec.dataset.uri``)
has named columns, typed and judged by :mod:`mlvisor.trainer.tables`: numbers, text
(categorical) and missing cells; an all-numeric table without a missing cell is one float64
matrix as before, any other a DataFrame that the model's own preprocessing takes. Reading lists
every problem of a file at once (:func:`read_table`), each with the column and line it is in;
the trainer exits 2 on any, and ``mlvisor validate --data-dir`` reads files the same way.

Whether the target is a class label or a number is decided later, by the estimator's task
(:func:`prepare_target`): a classifier accepts integer or string labels, a regressor needs
numbers.
"""

from __future__ import annotations

import csv
import math
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from mlvisor import api
from mlvisor.trainer.artifact import DatasetInfo
from mlvisor.trainer.spec import InvalidSpec
from mlvisor.trainer.tables import (
    MISSING_TOKENS,
    Column,
    RawColumn,
    Source,
    as_matrix,
    build_table,
    describe_columns,
    select_features,
)

BUILTIN_LOADERS: dict[str, str] = {
    "iris": "load_iris",
    "wine": "load_wine",
    "breast_cancer": "load_breast_cancer",
    "digits": "load_digits",
    "diabetes": "load_diabetes",
}


@dataclass(frozen=True)
class TrainingData:
    X: Any
    """float64 array (rows, features), or, for a table with a categorical column or a missing value
    (``columns`` set), a pandas DataFrame with the artifact contract's dtypes."""
    y: np.ndarray
    """The target as read: numbers for builtin datasets, strings for CSV, the column for Parquet."""
    feature_names: list[str]
    info: DatasetInfo
    columns: list[Column] | None = None
    """The typed feature columns of a table (None for builtin datasets)."""

    @property
    def tabular(self) -> bool:
        """Whether the model takes the table through its own preprocessing (X is a DataFrame)."""
        return self.columns is not None and any(c.categorical or c.missing for c in self.columns)

    @property
    def rows(self) -> int:
        return int(self.X.shape[0])

    def take(self, rows: np.ndarray) -> Any:
        """The features of ``rows`` (positions), for an array or a DataFrame alike."""
        if self.tabular:
            return self.X.iloc[rows].reset_index(drop=True)
        return self.X[rows]

    def describe(self, encoding: api.Encoding | None = None) -> str:
        """What was read, in one line (validate prints it, the trainer logs it, status.model keeps it)."""
        if self.columns is None:
            return f"{self.rows} rows, {len(self.feature_names)} numeric features"
        return describe_columns(self.columns, self.rows, encoding if self.tabular else None)


@dataclass(frozen=True)
class DataRead:
    """What reading a dataset found: the data when it is usable, else every problem with it."""

    data: TrainingData | None
    """None when there is any problem."""
    y: np.ndarray | None
    """The raw target column when the column itself is readable (so the target's fitness for the
    task can be judged even when a feature column is not)."""
    target: str
    """The target's name: "target" for builtin datasets, the column for CSV."""
    problems: list[str]


def read_dataset(dataset: api.Dataset, data_dir: Path, env: Mapping[str, str] | None = None) -> DataRead:
    """The builtin dataset, or the table the spec points at, with every problem listed.

    ``data_dir`` is the root of a volume's paths: ``csv.path`` and a ``pvc://<claim>/<path>``
    uri are relative to it (where the claim is mounted, or ``mlvisor run``'s folder of it). An
    ``s3://`` or ``https://`` uri is downloaded first (:mod:`mlvisor.trainer.storage`, with the
    credentials in ``env``), verified and read from a temporary file.
    """
    if dataset.builtin is not None:
        try:
            data = load_builtin(str(dataset.builtin))
        except InvalidSpec as e:
            return DataRead(None, None, "target", [str(e)])
        return DataRead(data, data.y, "target", [])
    if dataset.csv is not None:
        rel = dataset.csv.path
        source = Source(f"spec.dataset.csv.path {rel!r} (under {data_dir})", rel, "spec.dataset.csv.target")
        return read_table(Path(data_dir) / rel, api.DatasetFormat.CSV, source, dataset.csv.target,
                          dataset.features, DatasetInfo(source="csv", name=rel, rows=0, target=dataset.csv.target))
    assert dataset.uri is not None and dataset.target is not None  # the api model guarantees it
    from mlvisor.trainer import storage

    uri, target = dataset.uri, dataset.target
    fmt = api.dataset_format(uri, dataset.format)
    assert fmt is not None  # the api model's rule
    shown = storage.shown_name(uri)
    info = DatasetInfo(source="uri", name=uri, rows=0, target=target)
    if storage.is_remote(uri):
        where = f"spec.dataset.uri {uri!r}"
        source = Source(where, shown, "spec.dataset.target", fmt is api.DatasetFormat.CSV)
        with tempfile.TemporaryDirectory(prefix="mlvisor-dataset-") as tmp:
            local = Path(tmp) / "data"
            try:
                storage.download(uri, local, storage.Role.DATASET, env)
            except storage.StorageError as e:
                return DataRead(None, None, target, [f"{where}: {e}"])
            return read_table(local, fmt, source, target, dataset.features, info)
    path = storage.local_path(uri, Path(data_dir))
    under = f" (under {data_dir})" if uri.startswith("pvc://") else ""
    source = Source(f"spec.dataset.uri {uri!r}{under}", shown, "spec.dataset.target", fmt is api.DatasetFormat.CSV)
    return read_table(path, fmt, source, target, dataset.features, info)


def load_dataset(dataset: api.Dataset, data_dir: Path) -> TrainingData:
    """:func:`read_dataset`, every problem in one InvalidSpec."""
    read = read_dataset(dataset, data_dir)
    if read.data is None:
        raise InvalidSpec("; ".join(read.problems))
    return read.data


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


def read_table(path: Path, fmt: api.DatasetFormat, source: Source, target: str,
               features: api.Features | None, info: DatasetInfo) -> DataRead:
    """A CSV or Parquet table; every problem is listed, each naming the column (and the line)."""
    if fmt is api.DatasetFormat.PARQUET:
        return _finish(_read_parquet(path, source, target), source, target, features, info)
    return _finish(_read_csv(path, source, target), source, target, features, info)


@dataclass
class _Cells:
    """A table's header and cells before typing, or the problems that stop reading it."""

    header: list[str]
    rows: list[int]
    """Line (CSV) or 1-based row (Parquet) of each data row."""
    columns: dict[str, RawColumn]
    target: list[Any] | None
    """The target's cells (str for CSV; None for a missing one)."""
    problems: list[str]
    shape_ok: bool


def _read_csv(path: Path, source: Source, target: str) -> _Cells:
    """The file, then its shape (the target column is in the header, no column twice, at least
    one feature, at least 2 data rows, every line as many fields as the header). Blank lines are
    skipped; line numbers are the file's."""
    where = source.where

    def refused(*problems: str) -> _Cells:
        return _Cells([], [], {}, None, list(problems), False)

    try:
        with open(path, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            numbered = [(reader.line_num, row) for row in reader]
    except FileNotFoundError:
        return refused(f"{where}: file not found")
    except IsADirectoryError:
        return refused(f"{where}: is a directory, expected a CSV file")
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        return refused(f"{where}: cannot be read as CSV: {e}")
    numbered = [(n, r) for n, r in numbered if any(cell.strip() for cell in r)]
    if not numbered:
        return refused(f"{where}: the file is empty, expected a header row and data rows")
    header = [h.strip() for h in numbered[0][1]]
    data = numbered[1:]
    problems, shape_ok = _shape_problems(header, len(data), source, target)
    ragged = [(n, len(row)) for n, row in data if len(row) != len(header)]
    if ragged:
        more = f" (and {_lines_count(len(ragged) - 1)} more)" if len(ragged) > 1 else ""
        problems.append(
            f"{where}: line {ragged[0][0]} has {ragged[0][1]} fields, the header has {len(header)}{more}"
        )
        shape_ok = False
    if not shape_ok:
        return _Cells(header, [], {}, None, problems, False)
    lines = [n for n, _ in data]
    columns: dict[str, RawColumn] = {}
    for i, name in enumerate(header):
        if name == target:
            continue
        cells = [row[i].strip() for _, row in data]
        columns[name] = RawColumn(name, lines, [None if (c == "" or c in MISSING_TOKENS) else c for c in cells])
    t = header.index(target)
    target_cells = [row[t].strip() or None for _, row in data]
    return _Cells(header, lines, columns, target_cells, problems, True)


def _shape_problems(header: list[str], rows: int, source: Source, target: str) -> tuple[list[str], bool]:
    problems: list[str] = []
    shape_ok = True
    if target not in header:
        import difflib

        close = difflib.get_close_matches(target, header, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        problems.append(
            f"{source.target_field}: column {target!r} is not in {source.shown}{hint}; "
            f"columns are: {', '.join(header)}"
        )
        shape_ok = False
    dupes = sorted({h for h in header if header.count(h) > 1})
    if dupes:
        problems.append(f"{source.where}: duplicate column names {', '.join(dupes)}")
        shape_ok = shape_ok and target not in dupes
    if target in header and len(header) < 2:
        problems.append(f"{source.where}: only the target column {target!r}; need at least one feature")
        shape_ok = False
    if rows < 2:
        problems.append(f"{source.where}: {rows} data row{'' if rows == 1 else 's'}; need at least 2 to split "
                        "train/test")
    return problems, shape_ok


def _read_parquet(path: Path, source: Source, target: str) -> _Cells:
    where = source.where

    def refused(*problems: str) -> _Cells:
        return _Cells([], [], {}, None, list(problems), False)

    if not path.exists():
        return refused(f"{where}: file not found")
    if path.is_dir():
        return refused(f"{where}: is a directory, expected a Parquet file")
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(path)
    except (OSError, pa.ArrowException, ValueError) as e:
        return refused(f"{where}: cannot be read as Parquet: {e}")
    header = [str(n) for n in table.column_names]
    problems, shape_ok = _shape_problems(header, table.num_rows, source, target)
    if not shape_ok:
        return _Cells(header, [], {}, None, problems, False)
    rows = list(range(1, table.num_rows + 1))
    columns: dict[str, RawColumn] = {}
    target_cells: list[Any] = []
    for name, chunked in zip(header, table.columns, strict=True):
        kind, type_name = _parquet_kind(chunked.type)
        values = chunked.to_pylist() if kind != "other" else []
        if kind == "numbers":
            values = [None if (v is None or (isinstance(v, float) and math.isnan(v))) else v for v in values]
        if name == target:
            target_cells = values if kind != "other" else [None] * table.num_rows
            continue
        columns[name] = RawColumn(name, rows, values if kind != "other" else [None] * len(rows), kind, type_name)
    return _Cells(header, rows, columns, target_cells, problems, True)


def _parquet_kind(t: Any) -> tuple[Any, str]:
    import pyarrow as pa

    if pa.types.is_dictionary(t):
        t = t.value_type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return "numbers", str(t)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return "strings", str(t)
    return "other", str(t)


def _finish(cells: _Cells, source: Source, target: str, features: api.Features | None,
            info: DatasetInfo) -> DataRead:
    """Select and type the feature columns, check the target's cells; every problem listed."""
    if not cells.shape_ok:
        return DataRead(None, None, target, cells.problems)
    problems = list(cells.problems)
    chosen, selection_problems = select_features(cells.header, target, features, source)
    problems += selection_problems
    categorical = features.categorical if features is not None else []
    table = build_table([cells.columns[name] for name in chosen], categorical, source)
    problems += table.problems
    assert cells.target is not None
    missing = [n for n, v in zip(cells.rows, cells.target, strict=True) if v is None]
    filled = [v for v in cells.target if v is not None]
    y = np.array(filled, dtype=object) if filled and isinstance(filled[0], str) else np.array(filled)
    if missing:
        problems.append(
            f"{source.target_field}: column {target!r} has missing values ({'empty' if source.rows_are_lines else 'null'} "
            f"at {source.at(missing)} of {source.shown}): every row needs a target; remove those rows or fill them in"
        )
    if problems:  # the target's filled cells can still be judged for the task
        return DataRead(None, y if len(y) else None, target, problems)
    data = TrainingData(
        X=table.frame if table.tabular else as_matrix(table),
        y=y,
        feature_names=chosen,
        info=info.model_copy(update={"rows": len(cells.rows)}),
        columns=table.columns,
    )
    return DataRead(data, y, target, [])


def _lines_count(n: int) -> str:
    return f"{n} line" if n == 1 else f"{n} lines"


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
        raise InvalidSpec(f"{field} has {len(classes)} distinct value(s); a classifier needs at least 2 classes")
    return Target(y=y, classes=[c.item() if hasattr(c, "item") else str(c) for c in classes], label_datatype=datatype)


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
