"""Build real trainer artifacts for server tests without running the trainer.

Fits a small sklearn model, serialises it with skops and writes it with the trainer's own
``write_artifact`` so tests exercise the real on-disk format and the real loader.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np


def _outputs(model: Any) -> tuple[list[Any], list[Any] | None]:
    """The metadata's output tensors of a fitted model, and its classes (None for a regressor)."""
    from mlvisor.trainer.artifact import TensorSpec

    if not hasattr(model, "classes_"):
        return [TensorSpec(name="predict", datatype="FP64", shape=[-1])], None
    classes = model.classes_.tolist()
    dtype = "BYTES" if model.classes_.dtype.kind in "OUS" else "INT64"
    outputs = [TensorSpec(name="predict", datatype=dtype, shape=[-1])]
    if hasattr(model, "predict_proba"):
        outputs.append(TensorSpec(name="predict_proba", datatype="FP64", shape=[-1, len(classes)]))
    return outputs, classes


def build_artifact(
    root: Path,
    estimator: Any = None,
    *,
    name: str = "iris",
    version: str = "v1",
    dataset: str = "iris",
    string_labels: bool = False,
) -> tuple[Path, Any, np.ndarray]:
    """Fit ``estimator`` (default RandomForestClassifier(20)) and write ``root/<version>``.

    Returns (version directory, fitted model, the training X). ``dataset`` is "iris"
    (classification, 4 features) or "diabetes" (regression, 10 features).
    """
    import numpy
    import sklearn
    import skops
    import skops.io as sio
    from sklearn.datasets import load_diabetes, load_iris
    from sklearn.ensemble import RandomForestClassifier

    from mlvisor.trainer.artifact import ArtifactMetadata, DatasetInfo, TensorSpec, write_artifact

    data = load_iris() if dataset == "iris" else load_diabetes()
    X, y = data.data, data.target
    if string_labels:
        y = np.asarray(data.target_names)[y]
    model = estimator if estimator is not None else RandomForestClassifier(n_estimators=20, random_state=0)
    model.fit(X, y)
    classification = hasattr(model, "classes_")
    n = X.shape[1]
    outputs, classes = _outputs(model)
    meta = ArtifactMetadata(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC),
        estimator=f"{type(model).__module__.split('._')[0]}.{type(model).__name__}",
        task="classification" if classification else "regression",
        sklearn_version=sklearn.__version__,
        numpy_version=numpy.__version__,
        skops_version=skops.__version__,
        feature_names=list(data.feature_names),
        n_features=n,
        classes=classes,
        inputs=[TensorSpec(name="input-0", datatype="FP64", shape=[-1, n])],
        outputs=outputs,
        metrics={"score": float(model.score(X, y))},
        score_name="accuracy" if classification else "r2",
        params={},
        dataset=DatasetInfo(source="builtin", name=dataset, rows=X.shape[0], target="target"),
        model_sha256="filled-by-write_artifact",
    )
    path = write_artifact(Path(root), sio.dumps(model), meta)
    return path, model, X


#: The columns of :func:`table_frame`, as a trainer that reads such a CSV would declare them.
TABLE_COLUMNS: list[dict[str, Any]] = [
    {"name": "age", "datatype": "FP64", "categorical": False, "missing": True},
    {"name": "workclass", "datatype": "BYTES", "categorical": True, "missing": True},
    {"name": "hours", "datatype": "INT64", "categorical": False, "missing": False},
    {"name": "education", "datatype": "BYTES", "categorical": True, "missing": False},
]


def table_frame(rows: int = 300, seed: int = 0) -> tuple[Any, np.ndarray]:
    """A census-like table (numbers, strings, missing cells) and its string target.

    Column dtypes are the artifact contract's: float64 with NaN, int64, object holding str
    (NaN for a missing string, as pandas' read_csv gives).
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    age = rng.integers(18, 80, rows).astype(np.float64)
    age[rng.random(rows) < 0.1] = np.nan
    hours = rng.integers(10, 60, rows).astype(np.int64)
    workclass = rng.choice(["Private", "Self-emp", "Gov"], rows).astype(object)
    workclass[rng.random(rows) < 0.1] = np.nan
    education = rng.choice(["HS", "BSc", "MSc", "PhD"], rows).astype(object)
    score = np.nan_to_num(age, nan=40.0) / 10 + hours / 10 + (education == "PhD") * 2 + (workclass == "Gov") * 1.5
    y = np.where(score + rng.normal(0, 0.5, rows) > 9.5, ">50K", "<=50K")
    frame = pd.DataFrame({
        "age": pd.Series(age, dtype=np.float64),
        "workclass": pd.Series(workclass, dtype=object),
        "hours": pd.Series(hours, dtype=np.int64),
        "education": pd.Series(education, dtype=object),
    })
    return frame, y


def table_pipeline(estimator: Any = None, encoder: str = "onehot") -> Any:
    """ColumnTransformer (imputers, OneHotEncoder or OrdinalEncoder) + an estimator, in one Pipeline."""
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import OneHotEncoder, OrdinalEncoder

    if encoder == "onehot":
        enc: Any = OneHotEncoder(handle_unknown="ignore")
    else:
        enc = OrdinalEncoder(handle_unknown="use_encoded_value", unknown_value=-1)
    pre = ColumnTransformer([
        ("numbers", SimpleImputer(strategy="median"), ["age", "hours"]),
        ("categories", Pipeline([("impute", SimpleImputer(strategy="most_frequent")), ("encode", enc)]),
         ["workclass", "education"]),
    ])
    model = estimator if estimator is not None else RandomForestClassifier(n_estimators=20, random_state=0)
    return Pipeline([("preprocess", pre), ("model", model)])


def build_table_artifact(
    root: Path,
    estimator: Any = None,
    *,
    encoder: str = "onehot",
    name: str = "census",
    version: str = "v1",
    rows: int = 300,
) -> tuple[Path, Any, Any]:
    """Fit :func:`table_pipeline` on :func:`table_frame` and write it with ``metadata.columns``.

    Returns (version directory, fitted pipeline, the training DataFrame). Stands in for the
    trainer's tabular path (issue 20) until it exists: the same contract, written by the
    trainer's own ``write_artifact``.
    """
    import numpy
    import sklearn
    import skops
    import skops.io as sio

    from mlvisor.trainer.artifact import ArtifactMetadata, ColumnSpec, DatasetInfo, TensorSpec, write_artifact

    frame, y = table_frame(rows)
    model = table_pipeline(estimator, encoder).fit(frame, y)
    classification = hasattr(model, "classes_")
    outputs, classes = _outputs(model)
    columns = [ColumnSpec(**c) for c in TABLE_COLUMNS]
    meta = ArtifactMetadata(
        name=name,
        version=version,
        created=dt.datetime.now(dt.UTC),
        estimator="sklearn.pipeline.Pipeline",
        task="classification" if classification else "regression",
        sklearn_version=sklearn.__version__,
        numpy_version=numpy.__version__,
        skops_version=skops.__version__,
        feature_names=[c.name for c in columns],
        n_features=len(columns),
        classes=classes,
        columns=columns,
        inputs=[TensorSpec(name=c.name, datatype=c.datatype, shape=[-1]) for c in columns],
        outputs=outputs,
        metrics={"score": float(model.score(frame, y))},
        score_name="accuracy" if classification else "r2",
        params={},
        dataset=DatasetInfo(source="csv", name="census.csv", rows=len(frame), target="income"),
        model_sha256="filled-by-write_artifact",
    )
    path = write_artifact(Path(root), sio.dumps(model), meta)
    return path, model, frame
