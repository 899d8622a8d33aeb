"""Held-out metrics and the V2 tensor description of a trained model.

The metric set is part of the artifact contract (the operator copies it into
``status.model.metrics``, the printer column shows the headline score): classifiers get
accuracy, f1_macro and, when the model has ``predict_proba``, roc_auc (binary: from the
probability of the second class; multiclass: one-vs-rest, macro average); regressors get
r2, mae and rmse. A metric that is undefined on the held-out split (roc_auc with a single
class present) is left out rather than recorded as NaN.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from mlvisor.trainer.artifact import ColumnSpec, TensorSpec
from mlvisor.trainer.logs import EventLog

#: The headline metric without a search scoring (a search's scoring replaces it: trainer/job.py).
SCORE_NAME = {"classification": "accuracy", "regression": "r2"}


def heldout_metrics(model: Any, task: str, X: np.ndarray, y: np.ndarray,
                    log: EventLog | None = None) -> dict[str, float]:
    from sklearn import metrics as m

    pred = model.predict(X)
    out: dict[str, float] = {}
    if task == "classification":
        out["accuracy"] = float(m.accuracy_score(y, pred))
        out["f1_macro"] = float(m.f1_score(y, pred, average="macro"))
        if hasattr(model, "predict_proba"):
            try:
                proba = model.predict_proba(X)
                if len(model.classes_) == 2:
                    out["roc_auc"] = float(m.roc_auc_score(y, proba[:, 1]))
                else:
                    out["roc_auc"] = float(m.roc_auc_score(
                        y, proba, multi_class="ovr", average="macro", labels=model.classes_))
            except ValueError as e:
                if log is not None:
                    log.warning("metrics", f"roc_auc left out: undefined on the held-out split ({e})")
    else:
        out["r2"] = float(m.r2_score(y, pred))
        out["mae"] = float(m.mean_absolute_error(y, pred))
        out["rmse"] = float(math.sqrt(m.mean_squared_error(y, pred)))
    return {k: v for k, v in out.items() if math.isfinite(v)}


def tensor_specs(model: Any, task: str, n_features: int, label_datatype: str,
                 columns: list[ColumnSpec] | None = None) -> tuple[list[TensorSpec], list[TensorSpec]]:
    """V2 inputs and outputs: one [N, n_features] FP64 input, or, for a model that takes a table
    (``columns``), one [N] input per column, named as the column, of the column's datatype."""
    if columns is not None:
        inputs = [TensorSpec(name=c.name, datatype=c.datatype, shape=[-1]) for c in columns]
    else:
        inputs = [TensorSpec(name="input-0", datatype="FP64", shape=[-1, n_features])]
    outputs = [TensorSpec(name="predict", datatype=label_datatype if task == "classification"
                          else "FP64", shape=[-1])]
    if task == "classification" and hasattr(model, "predict_proba"):
        outputs.append(TensorSpec(name="predict_proba", datatype="FP64",
                                  shape=[-1, len(model.classes_)]))
    return inputs, outputs
