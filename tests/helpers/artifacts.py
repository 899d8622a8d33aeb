"""Build real trainer artifacts for server tests without running the trainer.

Fits a small sklearn model, serialises it with skops and writes it with the trainer's own
``write_artifact`` so tests exercise the real on-disk format and the real loader.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import numpy as np


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
    outputs = []
    classes = None
    if classification:
        classes = model.classes_.tolist()
        dtype = "BYTES" if model.classes_.dtype.kind in "OUS" else "INT64"
        outputs.append(TensorSpec(name="predict", datatype=dtype, shape=[-1]))
        if hasattr(model, "predict_proba"):
            outputs.append(TensorSpec(name="predict_proba", datatype="FP64", shape=[-1, len(classes)]))
    else:
        outputs.append(TensorSpec(name="predict", datatype="FP64", shape=[-1]))
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
