"""End to end: estimators that used to train and never serve, trained and served by `mlvisor run`.

Real trainer and server processes from one resource file written the way the README says:
GradientBoosting (both tasks: its ``estimators_`` is a numpy array, which once made loading
fail forever), and a meta-estimator given their estimators as nested ``{class, params}``
mappings. Every server must answer with exactly what the artifact's own estimator predicts.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.slow

PAIRS = {
    "gbc": ("iris", "sklearn.ensemble.GradientBoostingClassifier", "{n_estimators: 10, random_state: 0}"),
    "gbr": ("diabetes", "sklearn.ensemble.GradientBoostingRegressor", "{n_estimators: 10, random_state: 0}"),
    "vote": ("iris", "sklearn.ensemble.VotingClassifier",
             "{voting: soft, estimators: [[tree, {class: sklearn.tree.DecisionTreeClassifier, params: {max_depth: 3}}],"
             " [lr, {class: sklearn.linear_model.LogisticRegression, params: {max_iter: 500}}]]}"),
}


def _resources() -> str:
    docs = []
    for name, (dataset, cls, params) in PAIRS.items():
        docs.append(
            f"apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}}}\nspec:\n"
            f"  dataset: {{builtin: {dataset}}}\n  estimator:\n    class: {cls}\n    params: {params}\n"
        )
        docs.append(
            f"apiVersion: mlvisor.dev/v1alpha1\nkind: ModelServer\nmetadata: {{name: {name}}}\nspec:\n"
            f"  model: {{trainingJobRef: {{name: {name}}}}}\n"
        )
    return "---\n".join(docs)


def test_gradient_boosting_and_meta_estimators_train_and_serve_their_own_predictions(mlvisor_run, tmp_path: Path) -> None:
    import sklearn.datasets

    from mlvisor.trainer.artifact import load_artifact

    spec = tmp_path / "models.yaml"
    spec.write_text(_resources())
    run = mlvisor_run(spec, args=["--no-table"])

    def all_ready(status: dict) -> dict | None:
        servers = {n: status.get(f"ModelServer/default/{n}", {}) for n in PAIRS}
        if all(s.get("phase") == "Ready" and s.get("url") for s in servers.values()):
            return status
        return None

    status = run.wait_for("every ModelServer Ready", all_ready, timeout=240)
    for name, (dataset, cls, _) in PAIRS.items():
        job = status[f"TrainingJob/default/{name}"]
        uri = job["model"]["uri"]
        folder = run.data_dir / "volumes" / uri[len("pvc://"):].strip("/")
        model = load_artifact(folder).model
        assert type(model).__name__ == cls.rsplit(".", 1)[-1]
        rows = getattr(sklearn.datasets, f"load_{dataset}")().data[::11]
        body = json.dumps({"inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64",
                                       "data": rows.ravel().tolist()}], "outputs": [{"name": "predict"}]}).encode()
        url = status[f"ModelServer/default/{name}"]["url"]
        req = urllib.request.Request(f"{url}/infer", data=body, headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            answer = json.loads(resp.read())
        assert answer["outputs"][0]["data"] == np.asarray(model.predict(rows)).tolist(), name
    assert run.interrupt() == 130
    run.assert_no_orphans()
