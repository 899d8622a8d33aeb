"""Tables as they come: the columns of a CSV or Parquet file typed, judged and made features.

A table's columns are typed the way a person reading the file would type them:

- a column whose every filled cell is a number is numeric: ``INT64`` when every cell is an
  integer and none is missing, else ``FP64`` (a missing cell is NaN);
- a column holding text is categorical (``BYTES``, one category per distinct text); so is a
  numeric column listed in ``spec.dataset.features.categorical`` (codes such as a zip code);
- a cell is missing when it is empty or one of :data:`MISSING_TOKENS` (``NA``, ``NaN``,
  ``null``, ...); in Parquet, a null (or a NaN in a float column).

What cannot work is refused, naming the column: a column that mixes numbers and text (a typo,
or a missing-value marker mlvisor does not know: ``?``), unless it is listed as categorical;
a categorical column whose every row holds a different value (an ID or free text: nothing to
learn); an infinite number; a Parquet type that is neither a number, a boolean nor a string;
and the target with a missing value.

A table that is all numbers without a missing cell is trained as before, on one float64 array
(no preprocessing, the serving path of every model so far). Any other becomes a pandas
DataFrame with the artifact contract's dtypes (:class:`mlvisor.trainer.artifact.ColumnSpec`:
float64 with NaN, int64, object holding str with NaN for a missing string), and the model
becomes one scikit-learn Pipeline: a ColumnTransformer (:class:`Preprocessing`) followed by the
estimator, so the saved model takes the raw columns and the server needs nothing else.

The preprocessing, per column kind and estimator:

- categorical columns are encoded ``OneHot`` (a column per category; a missing value is a
  category of its own; an unknown category at prediction time is all zeros) or ``Ordinal``
  (one integer code per category, for tree models), as ``spec.dataset.features.encoding``
  says; by default Ordinal for tree models (sklearn.tree, forests, extra trees, gradient
  boosting and AdaBoost of the ensemble module) and OneHot for every other estimator. With
  HistGradientBoosting and Ordinal, the codes are given to its native categorical support
  (``categorical_features``, unless the spec sets it), a missing or unknown category as NaN;
  for other estimators that accept NaN (scikit-learn's ``allow_nan`` tag: forests and trees)
  likewise NaN, else the code -1;
- numeric columns are passed through as they are to estimators that accept NaN, and imputed
  with the training median (SimpleImputer) for every other estimator, so a missing value in
  a request is answered too.
"""

from __future__ import annotations

import difflib
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from mlvisor import api

#: Cell texts that mean "no value" in a CSV file (besides an empty cell), as pandas reads them.
MISSING_TOKENS = frozenset({"NA", "N/A", "NaN", "nan", "NULL", "null", "None", "<NA>"})

#: A categorical column with a different value in every one of at least this many rows is an
#: ID or free text, refused. Below it a small table may well have few repeated categories.
ID_LIKE_MIN_ROWS = 20

#: Columns named one by one in a message; the rest are counted.
SHOWN_COLUMNS = 12

Datatype = Literal["FP64", "INT64", "BYTES"]


@dataclass(frozen=True)
class Column:
    """One feature column as read: its V2 datatype, whether it is categorical, its missing cells."""

    name: str
    datatype: Datatype
    categorical: bool
    missing: int
    """How many cells are missing."""
    distinct: int
    """How many distinct values the filled cells hold."""


@dataclass(frozen=True)
class Source:
    """How messages name a table: the field that points at it, its shown name, the target's field."""

    where: str
    """e.g. "spec.dataset.csv.path 'data.csv' (under /data)"."""
    shown: str
    """e.g. "data.csv": how messages name the file."""
    target_field: str
    """e.g. "spec.dataset.csv.target"."""
    rows_are_lines: bool = True
    """CSV: row numbers are the file's line numbers; Parquet: 1-based row numbers."""

    def at(self, numbers: Sequence[int]) -> str:
        return at_lines(numbers, "line" if self.rows_are_lines else "row")


@dataclass
class RawColumn:
    """A column before typing: its cells as Python values, None for a missing one."""

    name: str
    rows: list[int]
    """The line (CSV) or 1-based row (Parquet) of each cell."""
    values: list[Any]
    """str (CSV cells, Parquet strings), int, float or bool (Parquet numbers); None when missing."""
    kind: Literal["cells", "numbers", "strings", "other"] = "cells"
    """cells: CSV text, typed here; numbers or strings: a Parquet column of that type; other: unusable."""
    type_name: str = ""
    """The Parquet type, for a message about an unusable one."""


@dataclass
class TableRead:
    """The features of a table, typed, with every problem found."""

    columns: list[Column] = field(default_factory=list)
    frame: Any = None
    """pandas DataFrame of the features with the contract's dtypes (None when there is a problem)."""
    problems: list[str] = field(default_factory=list)

    @property
    def tabular(self) -> bool:
        """Whether the model needs preprocessing: a categorical column or a missing value."""
        return any(c.categorical or c.missing for c in self.columns)


# --------------------------------------------------------------------------- selecting columns


def select_features(header: Sequence[str], target: str, features: api.Features | None,
                    source: Source) -> tuple[list[str], list[str]]:
    """(feature column names in file order, problems of spec.dataset.features against the header)."""
    problems: list[str] = []
    present = [h for h in header if h != target]
    if features is None:
        return present, problems
    field_of = "spec.dataset.features"

    def unknown(kind: str, names: Sequence[str]) -> None:
        for name in names:
            if name == target:
                if kind != "exclude":
                    problems.append(f"{field_of}.{kind}: {name!r} is the target column, not a feature")
                continue
            if name not in header:
                close = difflib.get_close_matches(name, present, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                problems.append(f"{field_of}.{kind}: column {name!r} is not in {source.shown}{hint}; "
                                f"columns are: {', '.join(header)}")

    unknown("include", features.include or [])
    unknown("exclude", features.exclude or [])
    unknown("categorical", features.categorical)
    if features.include is not None:
        chosen = [h for h in present if h in set(features.include)]
    else:
        chosen = [h for h in present if h not in set(features.exclude or [])]
    left_out = [c for c in features.categorical if c in header and c != target and c not in chosen]
    for name in left_out:
        why = "excluded" if features.exclude and name in features.exclude else "not included"
        problems.append(f"{field_of}.categorical: column {name!r} is {why}, so it is not a feature")
    if not chosen and not problems:
        problems.append(f"{field_of}: no feature column is left of {source.shown} (columns: {', '.join(header)})")
    return chosen, problems


# --------------------------------------------------------------------------- typing columns


def _number(text: str) -> float | None:
    try:
        return float(text)
    except ValueError:
        return None


def _is_int_text(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


def type_column(raw: RawColumn, categorical: bool, source: Source) -> tuple[Column | None, np.ndarray | None, list[str]]:
    """(the typed column, its values in the contract's dtype, problems) of one feature column."""
    unit = "line" if source.rows_are_lines else "row"
    if raw.kind == "other":
        return None, None, [
            f"column {raw.name!r} of {source.shown} has type {raw.type_name}, which cannot be a feature: "
            "expected numbers, booleans or strings; leave it out with spec.dataset.features.exclude"]
    filled = [(n, v) for n, v in zip(raw.rows, raw.values, strict=True) if v is not None]
    missing = len(raw.values) - len(filled)
    text: list[tuple[int, str]] = []
    infinite: list[tuple[int, str]] = []
    numbers = 0
    integral = True
    for n, v in filled:
        if raw.kind == "strings":
            text.append((n, v))
            continue
        if raw.kind == "cells":
            f = _number(v)
            if f is None:
                text.append((n, v))
                continue
            integral = integral and _is_int_text(v)
        else:
            f = float(v)
            integral = integral and not isinstance(v, float)
        numbers += 1
        if not math.isfinite(f):
            infinite.append((n, str(v)))
    problems: list[str] = []
    if text and numbers and not categorical:
        more = f" (and {_count(len(text) - 1, unit)} more)" if len(text) > 1 else ""
        problems.append(
            f"column {raw.name!r} of {source.shown} mixes numbers and text: {text[0][1]!r} at "
            f"{source.at([text[0][0]])}{more}; leave a missing value's cell empty, or list the column in "
            "spec.dataset.features.categorical to treat its values as categories")
    elif infinite and not text:
        more = f" (and {_count(len(infinite) - 1, unit)} more)" if len(infinite) > 1 else ""
        problems.append(f"column {raw.name!r} of {source.shown} holds {infinite[0][1]!r} at "
                        f"{source.at([infinite[0][0]])}{more}; features must be finite numbers")
    if problems:
        return None, None, problems
    values: np.ndarray
    datatype: Datatype
    if text:  # every value as text ("3" and "red" alike): categories
        values = np.array([np.nan if v is None else str(v) for v in raw.values], dtype=object)
        datatype = "BYTES"
    elif integral and not missing:
        values = np.array([int(v) for v in raw.values], dtype=np.int64)
        datatype = "INT64"
    else:
        values = np.array([np.nan if v is None else float(v) for v in raw.values], dtype=np.float64)
        datatype = "FP64"
    if text:
        distinct = len({str(v) for _, v in filled})
    elif datatype == "FP64":
        distinct = len(set(values[~np.isnan(values)].tolist()))
    else:
        distinct = len(set(values.tolist()))
    column = Column(raw.name, datatype, categorical or bool(text), missing, distinct)
    if column.categorical and len(filled) >= ID_LIKE_MIN_ROWS and distinct == len(filled):
        return None, None, [
            f"column {raw.name!r} of {source.shown} holds a different value in each of its {len(filled)} "
            f"rows (e.g. {', '.join(repr(str(v)) for _, v in filled[:2])}): an ID or free text, nothing a model "
            "can learn as categories; leave it out with spec.dataset.features.exclude"]
    return column, values, []


def build_table(raws: Sequence[RawColumn], categorical: Sequence[str], source: Source) -> TableRead:
    """Type every feature column, every problem listed (the first SHOWN_COLUMNS columns' each)."""
    import pandas as pd

    read = TableRead()
    data: dict[str, np.ndarray] = {}
    bad: list[tuple[str, list[str]]] = []
    for raw in raws:
        column, values, problems = type_column(raw, raw.name in set(categorical), source)
        if problems:
            bad.append((raw.name, problems))
            continue
        assert column is not None and values is not None
        read.columns.append(column)
        data[raw.name] = values
    for _, problems in bad[:SHOWN_COLUMNS]:
        read.problems += problems
    if len(bad) > SHOWN_COLUMNS:
        rest = [name for name, _ in bad[SHOWN_COLUMNS:]]
        read.problems.append(f"{len(rest)} more columns of {source.shown} cannot be features: {', '.join(map(repr, rest))}")
    if not read.problems:
        read.frame = pd.DataFrame({name: pd.Series(values, dtype=values.dtype) for name, values in data.items()})
    return read


def as_matrix(read: TableRead) -> np.ndarray:
    """The features of an all-numeric table without a missing value, as one float64 array."""
    assert read.frame is not None and not read.tabular
    return np.ascontiguousarray(read.frame.to_numpy(dtype=np.float64))


# --------------------------------------------------------------------------- words


def _count(n: int, unit: str) -> str:
    return f"{n} {unit}" if n == 1 else f"{n} {unit}s"


def at_lines(numbers: Sequence[int], unit: str = "line") -> str:
    """'line 3', 'lines 3, 5 and 9', 'lines 3, 5, 9, 11, 12 and 7 more'."""
    if len(numbers) == 1:
        return f"{unit} {numbers[0]}"
    if len(numbers) <= 5:
        return f"{unit}s " + ", ".join(map(str, numbers[:-1])) + f" and {numbers[-1]}"
    return f"{unit}s " + ", ".join(map(str, numbers[:5])) + f" and {len(numbers) - 5} more"


def _names(names: Sequence[str]) -> str:
    shown = ", ".join(names[:SHOWN_COLUMNS])
    return shown + (f" and {len(names) - SHOWN_COLUMNS} more" if len(names) > SHOWN_COLUMNS else "")


def describe_columns(columns: Sequence[Column], rows: int, encoding: api.Encoding | None = None) -> str:
    """One line on what was read: 'rows 600; 6 features: 3 categorical (workclass, ...), missing
    values in age (31 rows), workclass (28 rows); numeric: age, hours'."""
    categorical = [c.name for c in columns if c.categorical]
    numeric = [c.name for c in columns if not c.categorical]
    missing = [f"{c.name} ({_count(c.missing, 'row')})" for c in columns if c.missing]
    parts = [f"{rows} rows, {_count(len(columns), 'feature')}"]
    if categorical:
        how = f", encoded {encoding.value}" if encoding is not None else ""
        parts.append(f"categorical: {_names(categorical)}{how}")
    if numeric:
        parts.append(f"numeric: {_names(numeric)}")
    parts.append(f"missing values: {_names(missing)}" if missing else "no missing values")
    return "; ".join(parts)


# --------------------------------------------------------------------------- preprocessing


#: Estimator classes (their dotted path's last part) that Ordinal encoding suits by default:
#: models that split on thresholds, for which a code per category is enough.
_TREE_MODULES = ("sklearn.tree.", "sklearn.ensemble.")
_TREE_NAMES = ("Tree", "Forest", "Trees", "GradientBoosting", "AdaBoost")


def default_encoding(estimator_path: str) -> api.Encoding:
    """Ordinal for tree models (sklearn.tree, forests, extra trees, gradient boosting, AdaBoost),
    OneHot for everything else (linear models, SVMs, neighbours, networks, meta-estimators)."""
    name = estimator_path.rsplit(".", 1)[-1]
    if estimator_path.startswith(_TREE_MODULES) and any(t in name for t in _TREE_NAMES):
        return api.Encoding.ORDINAL
    return api.Encoding.ONE_HOT


@dataclass(frozen=True)
class Preprocessing:
    """The ColumnTransformer in front of an estimator that takes a table (see the module docs)."""

    columns: tuple[Column, ...]
    encoding: api.Encoding

    def contract(self) -> list[Any]:
        """The artifact's ``metadata.columns``."""
        from mlvisor.trainer.artifact import ColumnSpec

        return [ColumnSpec(name=c.name, datatype=c.datatype, categorical=c.categorical, missing=c.missing > 0)
                for c in self.columns]

    def wrap(self, estimator: Any) -> Any:
        """Pipeline([("preprocess", ColumnTransformer), ("model", estimator)])."""
        from sklearn.compose import ColumnTransformer
        from sklearn.impute import SimpleImputer
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder
        from sklearn.utils import get_tags

        numeric = [c.name for c in self.columns if not c.categorical]
        categorical = [c.name for c in self.columns if c.categorical]
        try:
            accepts_nan = bool(get_tags(estimator).input_tags.allow_nan)
        except Exception:  # an estimator without tags: impute
            accepts_nan = False
        transformers: list[tuple[str, Any, list[str]]] = []
        if numeric:
            transformers.append(("numbers", "passthrough" if accepts_nan else SimpleImputer(strategy="median"),
                                 numeric))
        native = _native_categorical(estimator)
        if categorical:
            if self.encoding is api.Encoding.ORDINAL:
                code = np.nan if accepts_nan else -1
                encoder: Any = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=code,
                                              encoded_missing_value=code,
                                              max_categories=_max_bins(estimator) if native else None)
            else:
                encoder = OneHotEncoder(handle_unknown="ignore", sparse_output=False)
            transformers.append(("categories", encoder, categorical))
        if native and categorical and self.encoding is api.Encoding.ORDINAL:
            start = len(numeric)
            estimator.set_params(categorical_features=list(range(start, start + len(categorical))))
        pre = ColumnTransformer(transformers, remainder="drop", sparse_threshold=0.0)
        return Pipeline([("preprocess", pre), ("model", estimator)])


def _native_categorical(estimator: Any) -> bool:
    """HistGradientBoosting with categorical_features left to its default: codes become its categories."""
    name = type(estimator).__name__
    if not name.startswith("HistGradientBoosting"):
        return False
    return estimator.get_params().get("categorical_features") in ("from_dtype", None)


def _max_bins(estimator: Any) -> int:
    return int(estimator.get_params().get("max_bins", 255))
