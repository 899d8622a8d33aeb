"""Every allowlisted estimator class trains and serves: the whole allowlist, through the real server.

Parametrised over every classifier and regressor scikit-learn has under an allowlisted
subpackage (``sklearn.utils.all_estimators``, filtered by ``trainer/allowlist.py``, plus
Pipeline, which is either), so a class added by a scikit-learn upgrade is tested without
anyone listing it. Each one is trained by the real trainer on a small dataset that fits its
task, loaded by the real server app (in process, through its lifespan) and asked over V2 for
``predict`` and ``predict_proba`` on rows of that dataset; the answers must equal the loaded
estimator's own ``predict``/``predict_proba`` on the same rows exactly (JSON round-trips
float64 exactly). Classes that cannot fit mlvisor's one-target-column model (multi-output
only) must be refused with exit-code-2 words that say so, never trained into something that
does not serve.

``PARAMS`` keeps the fits small (few trees, few iterations) and gives the meta-estimators
their estimators (nested ``{class, params}`` mappings, as a user writes them).
"""

from __future__ import annotations

import io
import json
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from mlvisor import api
from mlvisor.server.app import create_app
from mlvisor.server.settings import Settings
from mlvisor.trainer.allowlist import is_allowed_estimator_path
from mlvisor.trainer.artifact import load_artifact, read_metadata
from mlvisor.trainer.job import RunOptions, run
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.spec import InvalidSpec


def _public_path(cls: type) -> str:
    return f"sklearn.{cls.__module__.split('.')[1]}.{cls.__name__}"


def allowlisted_predictors() -> list[str]:
    """Every classifier/regressor class a spec may name, by public path."""
    import warnings

    from sklearn.utils import all_estimators

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        found = {_public_path(c) for _, c in all_estimators(type_filter=["classifier", "regressor"])}
    found.add("sklearn.pipeline.Pipeline")  # a classifier or a regressor, by its last step
    return sorted(p for p in found if is_allowed_estimator_path(p))


def est(path: str, **params: Any) -> dict[str, Any]:
    return {"class": path, "params": params} if params else {"class": path}


LR = est("sklearn.linear_model.LogisticRegression", max_iter=500)
TREE = est("sklearn.tree.DecisionTreeClassifier", max_depth=3, random_state=0)
RIDGE = est("sklearn.linear_model.Ridge")
TREE_R = est("sklearn.tree.DecisionTreeRegressor", max_depth=3, random_state=0)

#: Small, fast fits; meta-estimators get their estimators the way a user writes them.
PARAMS: dict[str, dict[str, Any]] = {
    "sklearn.calibration.CalibratedClassifierCV": {"cv": 3},
    "sklearn.ensemble.AdaBoostClassifier": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.AdaBoostRegressor": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.BaggingClassifier": {"n_estimators": 5, "random_state": 0},
    "sklearn.ensemble.BaggingRegressor": {"n_estimators": 5, "random_state": 0},
    "sklearn.ensemble.ExtraTreesClassifier": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.ExtraTreesRegressor": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.GradientBoostingClassifier": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.GradientBoostingRegressor": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.HistGradientBoostingClassifier": {"max_iter": 10, "random_state": 0},
    "sklearn.ensemble.HistGradientBoostingRegressor": {"max_iter": 10, "random_state": 0},
    "sklearn.ensemble.RandomForestClassifier": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.RandomForestRegressor": {"n_estimators": 10, "random_state": 0},
    "sklearn.ensemble.StackingClassifier": {"estimators": [["tree", TREE], ["nb", est("sklearn.naive_bayes.GaussianNB")]], "cv": 3},
    "sklearn.ensemble.StackingRegressor": {"estimators": [["ridge", RIDGE], ["tree", TREE_R]], "cv": 3},
    "sklearn.ensemble.VotingClassifier": {"estimators": [["tree", TREE], ["lr", LR]], "voting": "soft"},
    "sklearn.ensemble.VotingRegressor": {"estimators": [["ridge", RIDGE], ["tree", TREE_R]]},
    "sklearn.cross_decomposition.CCA": {"n_components": 1},
    "sklearn.cross_decomposition.PLSCanonical": {"n_components": 1},
    "sklearn.gaussian_process.GaussianProcessClassifier": {"random_state": 0},
    "sklearn.linear_model.LogisticRegression": {"max_iter": 500},
    "sklearn.linear_model.LogisticRegressionCV": {"cv": 3, "max_iter": 500},
    "sklearn.linear_model.TheilSenRegressor": {"max_subpopulation": 200, "random_state": 0},
    "sklearn.multiclass.OneVsOneClassifier": {"estimator": LR},
    "sklearn.multiclass.OneVsRestClassifier": {"estimator": LR},
    "sklearn.multiclass.OutputCodeClassifier": {"estimator": LR, "random_state": 0},
    "sklearn.multioutput.ClassifierChain": {"estimator": LR},
    "sklearn.multioutput.MultiOutputClassifier": {"estimator": LR},
    "sklearn.multioutput.MultiOutputRegressor": {"estimator": RIDGE},
    "sklearn.multioutput.RegressorChain": {"estimator": RIDGE},
    "sklearn.naive_bayes.CategoricalNB": {"min_categories": 17},  # digits: pixel values 0..16, all known
    "sklearn.neighbors.RadiusNeighborsClassifier": {"radius": 1.0, "outlier_label": "most_frequent"},
    "sklearn.neighbors.RadiusNeighborsRegressor": {"radius": 1.0},
    "sklearn.neural_network.MLPClassifier": {"hidden_layer_sizes": [16], "max_iter": 300, "random_state": 0},
    "sklearn.neural_network.MLPRegressor": {"hidden_layer_sizes": [16], "max_iter": 300, "random_state": 0},
    "sklearn.pipeline.Pipeline": {"steps": [["scale", est("sklearn.preprocessing.StandardScaler")], ["model", LR]]},
}
#: Datasets other than the default (iris for classifiers, diabetes for regressors).
DATASETS: dict[str, str] = {
    "sklearn.naive_bayes.CategoricalNB": "digits",  # categories: small non-negative integers
    "sklearn.isotonic.IsotonicRegression": "csv-one-feature",  # isotonic regression takes one feature
}
#: Classes that need a target of several columns: mlvisor trains on one, so they are refused.
MULTI_OUTPUT_ONLY = {
    "sklearn.linear_model.MultiTaskElasticNet",
    "sklearn.linear_model.MultiTaskElasticNetCV",
    "sklearn.linear_model.MultiTaskLasso",
    "sklearn.linear_model.MultiTaskLassoCV",
    "sklearn.multioutput.ClassifierChain",
    "sklearn.multioutput.MultiOutputClassifier",
    "sklearn.multioutput.MultiOutputRegressor",
    "sklearn.multioutput.RegressorChain",
}
CLASSES = allowlisted_predictors()


def test_the_allowlist_is_what_this_test_covers() -> None:
    """A sanity floor: the enumeration finds the estimators users name most."""
    assert len(CLASSES) >= 80
    for path in ("sklearn.ensemble.GradientBoostingClassifier", "sklearn.ensemble.GradientBoostingRegressor",
                 "sklearn.ensemble.RandomForestClassifier", "sklearn.linear_model.LogisticRegression",
                 "sklearn.svm.SVC", "sklearn.pipeline.Pipeline", "sklearn.ensemble.VotingClassifier"):
        assert path in CLASSES
    assert set(PARAMS) | set(DATASETS) | MULTI_OUTPUT_ONLY <= set(CLASSES), "a table entry names no allowlisted class"


def _is_classifier(path: str) -> bool:
    return "Classifier" in path or path.rsplit(".", 1)[-1] in {
        "CalibratedClassifierCV", "GaussianNB", "BernoulliNB", "CategoricalNB", "ComplementNB", "MultinomialNB",
        "LinearDiscriminantAnalysis", "QuadraticDiscriminantAnalysis", "LinearSVC", "NuSVC", "SVC",
        "LogisticRegression", "LogisticRegressionCV", "NearestCentroid", "Perceptron", "Pipeline",
    }


def _dataset(path: str, tmp_path: Path) -> dict[str, Any]:
    name = DATASETS.get(path) or ("iris" if _is_classifier(path) else "diabetes")
    if name == "csv-one-feature":
        from sklearn.datasets import load_diabetes

        d = load_diabetes()
        lines = ["bmi,progression", *(f"{x!r},{y!r}" for x, y in zip(d.data[:, 2].tolist(), d.target.tolist(), strict=True))]
        (tmp_path / "bmi.csv").write_text("\n".join(lines) + "\n")
        return {"csv": {"path": "bmi.csv", "target": "progression"}}
    return {"builtin": name}


def _rows(dataset: dict[str, Any], tmp_path: Path) -> np.ndarray:
    """Rows to predict: every 7th row of the dataset (train and held-out rows alike)."""
    if "csv" in dataset:
        return np.loadtxt(tmp_path / "bmi.csv", delimiter=",", skiprows=1, usecols=[0], ndmin=2)[::7]
    import sklearn.datasets

    return getattr(sklearn.datasets, f"load_{dataset['builtin']}")().data[::7]


async def _serve_and_ask(model_dir: Path, rows: np.ndarray, outputs: list[str]) -> dict[str, Any]:
    app = create_app(Settings(model_dir=model_dir, grpc_port=0))
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            deadline = time.monotonic() + 60
            while (r := await client.get("/v2/health/ready")).status_code != 200:
                assert "model is loading" in r.text or time.monotonic() < deadline, r.text
                assert "model not loaded" not in r.text, r.text
                await __import__("asyncio").sleep(0.01)
            body = {
                "inputs": [{"name": "input-0", "shape": list(rows.shape), "datatype": "FP64", "data": rows.ravel().tolist()}],
                "outputs": [{"name": o} for o in outputs],
            }
            r = await client.post("/v2/models/model/infer", json=body)
            assert r.status_code == 200, r.text
            return r.json()


@pytest.mark.parametrize("path", CLASSES)
async def test_every_allowlisted_estimator_trains_and_serves_its_own_predictions(path: str, tmp_path: Path) -> None:
    dataset = _dataset(path, tmp_path)
    spec = api.TrainingJobSpec.model_validate(
        {"dataset": dataset, "estimator": {"class": path, "params": PARAMS.get(path, {})}}
    )
    opts = RunOptions(spec=spec, output=tmp_path / "out", name="model", version="v1", data_dir=tmp_path)
    log = io.StringIO()
    if path in MULTI_OUTPUT_ONLY:
        with pytest.raises(InvalidSpec, match="needs a target of several columns"):
            run(opts, EventLog(stream=log))
        return
    artifact = run(opts, EventLog(stream=log))
    assert artifact is not None, log.getvalue()
    meta = read_metadata(artifact)
    model = load_artifact(artifact).model  # the estimator as the server loads it, asked directly
    rows = _rows(dataset, tmp_path)
    outputs = [o.name for o in meta.outputs]
    answer = await _serve_and_ask(artifact, rows, outputs)
    got = {o["name"]: o for o in answer["outputs"]}
    want = np.asarray(model.predict(rows))
    if want.ndim == 2 and want.shape[1] == 1:
        want = want.ravel()
    assert got["predict"]["shape"] == [len(rows)]
    assert got["predict"]["data"] == json.loads(json.dumps(want.tolist())), path
    if "predict_proba" in got:
        proba = np.reshape(got["predict_proba"]["data"], got["predict_proba"]["shape"])
        assert np.array_equal(proba, model.predict_proba(rows)), path
    else:
        assert not hasattr(model, "predict_proba") or meta.task == "regression"
