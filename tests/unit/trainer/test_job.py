"""Trainer: real training on the bundled datasets and CSV, metadata, and the artifact round trip."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from helpers.paths import REPO
from mlvisor import api
from mlvisor.trainer.artifact import ArtifactError, load_artifact, read_metadata
from mlvisor.trainer.entry import main
from mlvisor.trainer.job import RunOptions, run
from mlvisor.trainer.logs import EventLog

SAMPLE = REPO / "manifests" / "samples" / "iris.yaml"


@pytest.fixture(autouse=True)
def _no_pod_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write the real /dev/termination-log when the suite itself runs inside a pod."""
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "no-termination-log"))


def spec_of(**fields: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate(fields)


def train(tmp_path: Path, spec: api.TrainingJobSpec, data_dir: Path | None = None) -> Path:
    opts = RunOptions(spec=spec, output=tmp_path / "out", name="m", version="v1",
                      data_dir=data_dir or tmp_path)
    path = run(opts, EventLog(stream=open(tmp_path / "log.jsonl", "a")))
    assert path is not None
    return path


def events(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]


def test_iris_sample_trains_to_accuracy_at_least_0_9(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--spec", str(SAMPLE), "--output", str(tmp_path), "--version", "s1"]) == 0
    out, err = capsys.readouterr()
    assert out.strip() == str(tmp_path / "s1")
    meta = read_metadata(tmp_path / "s1")
    assert meta.name == "iris"  # metadata.name of the TrainingJob in the multi-document sample
    assert meta.metrics["accuracy"] >= 0.9
    assert set(meta.metrics) == {"accuracy", "f1_macro", "roc_auc"}
    assert meta.score_name == "accuracy"
    kinds = [e["event"] for e in events(err)]
    assert kinds[0] == "start" and "dataset_loaded" in kinds and kinds[-1] == "artifact_written"
    loaded = next(e for e in events(err) if e["event"] == "dataset_loaded")
    assert (loaded["rows"], loaded["features"]) == (150, 4)


def test_success_summary_goes_to_the_termination_message_and_feeds_status_model(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """In a pod the operator cannot read the artifact volume: the summary is how metrics travel."""
    from mlvisor.api.exits import TerminationSummary
    from mlvisor.operator.kube.observe import observe_pod

    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    assert main(["--spec", str(SAMPLE), "--output", str(tmp_path / "out"), "--version", "s1"]) == 0
    message = term.read_text()
    assert len(message.encode()) <= 4096
    meta = read_metadata(tmp_path / "out" / "s1")
    summary = json.loads(message)
    assert summary == {"version": "s1", "metrics": meta.metrics, "score_name": "accuracy",
                       "best_params": None, "sklearn_version": meta.sklearn_version, "data": None}
    pod = {"status": {"phase": "Succeeded", "containerStatuses": [
        {"state": {"terminated": {"exitCode": 0, "message": message, "finishedAt": "2026-11-25T10:00:00Z"}}}]}}
    assert TerminationSummary.from_message(observe_pod(pod).message) == TerminationSummary.model_validate(summary)


@pytest.mark.parametrize(
    ("dataset", "estimator", "score_name", "floor"),
    [
        ("wine", "sklearn.linear_model.RidgeClassifier", "accuracy", 0.85),
        ("breast_cancer", "sklearn.tree.DecisionTreeClassifier", "accuracy", 0.85),
        ("digits", "sklearn.neighbors.KNeighborsClassifier", "accuracy", 0.9),
        ("diabetes", "sklearn.linear_model.Ridge", "r2", 0.3),
    ],
)
def test_every_builtin_dataset_trains(tmp_path: Path, dataset: str, estimator: str,
                                      score_name: str, floor: float) -> None:
    path = train(tmp_path, spec_of(dataset={"builtin": dataset},
                                   estimator={"class": estimator, "params": {}}))
    meta = read_metadata(path)
    assert meta.score_name == score_name
    assert meta.metrics[score_name] >= floor
    if score_name == "r2":
        assert set(meta.metrics) == {"r2", "mae", "rmse"}
        assert meta.task == "regression" and meta.classes is None
        assert [o.model_dump() for o in meta.outputs] == [
            {"name": "predict", "datatype": "FP64", "shape": [-1]}]
    # the artifact loads back (neighbors models carry sklearn.metrics distance types)
    assert load_artifact(path).model.__class__.__name__ == estimator.rsplit(".", 1)[1]


def test_metadata_describes_the_model_completely(tmp_path: Path) -> None:
    path = train(tmp_path, spec_of(dataset={"builtin": "iris"},
                                   estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                              "params": {"n_estimators": 10, "random_state": 0}}))
    meta = read_metadata(path)
    assert meta.name == "m" and meta.version == "v1" and path == path.parent / "v1"
    assert meta.estimator == "sklearn.ensemble.RandomForestClassifier"
    assert meta.task == "classification"
    assert meta.classes == [0, 1, 2]
    assert meta.n_features == 4 and len(meta.feature_names) == 4
    assert [i.model_dump() for i in meta.inputs] == [
        {"name": "input-0", "datatype": "FP64", "shape": [-1, 4]}]
    assert [o.model_dump() for o in meta.outputs] == [
        {"name": "predict", "datatype": "INT64", "shape": [-1]},
        {"name": "predict_proba", "datatype": "FP64", "shape": [-1, 3]},
    ]
    assert meta.params == {"n_estimators": 10, "random_state": 0}
    assert meta.best_params is None and meta.search is None
    assert meta.dataset.model_dump() == {"source": "builtin", "name": "iris", "rows": 150,
                                         "target": "target", "description": "Iris plants dataset"}
    assert len(meta.model_sha256) == 64


def test_binary_classifier_without_predict_proba_has_no_roc_auc(tmp_path: Path) -> None:
    path = train(tmp_path, spec_of(dataset={"builtin": "breast_cancer"},
                                   estimator={"class": "sklearn.svm.LinearSVC", "params": {}}))
    meta = read_metadata(path)
    assert set(meta.metrics) == {"accuracy", "f1_macro"}
    assert [o.name for o in meta.outputs] == ["predict"]


def test_binary_roc_auc_uses_the_positive_class_probability(tmp_path: Path) -> None:
    from sklearn.metrics import roc_auc_score

    spec = spec_of(dataset={"builtin": "breast_cancer"},
                   estimator={"class": "sklearn.naive_bayes.GaussianNB", "params": {}})
    path = train(tmp_path, spec)
    from sklearn.datasets import load_breast_cancer
    from sklearn.model_selection import train_test_split

    X, y = load_breast_cancer(return_X_y=True)
    _, X_test, _, y_test = train_test_split(X, y, test_size=spec.test_size, random_state=spec.random_state,
                                            stratify=y)
    model = load_artifact(path).model
    expected = roc_auc_score(y_test, model.predict_proba(X_test)[:, 1])
    assert read_metadata(path).metrics["roc_auc"] == pytest.approx(expected)


def write_csv(path: Path, header: list[str], rows: list[list[Any]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(",".join(str(c) for c in r) for r in [header, *rows]) + "\n")


def iris_rows(label: Any = None) -> list[list[Any]]:
    from sklearn.datasets import load_iris

    X, y = load_iris(return_X_y=True)
    names = ["setosa", "versicolor", "virginica"]
    return [[*x, names[t] if label == "names" else t] for x, t in zip(X, y, strict=True)]


def test_csv_with_string_labels_round_trips(tmp_path: Path) -> None:
    write_csv(tmp_path / "data" / "iris.csv", ["a", "b", "c", "d", "species"], iris_rows("names"))
    spec = spec_of(dataset={"csv": {"path": "data/iris.csv", "target": "species"}},
                   estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                              "params": {"n_estimators": 10, "random_state": 0}})
    path = train(tmp_path, spec)
    meta = read_metadata(path)
    assert meta.classes == ["setosa", "versicolor", "virginica"]
    assert meta.outputs[0].datatype == "BYTES"
    assert meta.feature_names == ["a", "b", "c", "d"]
    assert meta.dataset.model_dump() == {"source": "csv", "name": "data/iris.csv", "rows": 150,
                                         "target": "species",
                                         "description": "150 rows, 4 features; numeric: a, b, c, d; no missing values"}
    assert meta.columns is None, "all numbers, no missing value: one float64 array, no Pipeline"
    assert meta.metrics["accuracy"] >= 0.9
    pred = load_artifact(path).model.predict(np.array([[5.1, 3.5, 1.4, 0.2]]))
    assert pred.tolist() == ["setosa"]


def test_csv_target_may_be_any_column_and_numeric_labels_are_int64(tmp_path: Path) -> None:
    rows = [[t, *x] for *x, t in iris_rows()]
    write_csv(tmp_path / "iris.csv", ["label", "a", "b", "c", "d"], rows)
    spec = spec_of(dataset={"csv": {"path": "iris.csv", "target": "label"}},
                   estimator={"class": "sklearn.linear_model.LogisticRegression",
                              "params": {"max_iter": 1000}})
    meta = read_metadata(train(tmp_path, spec))
    assert meta.classes == [0, 1, 2] and meta.outputs[0].datatype == "INT64"
    assert meta.feature_names == ["a", "b", "c", "d"]


def test_csv_regression(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    X = rng.normal(size=(80, 2))
    y = 3 * X[:, 0] - 2 * X[:, 1] + 0.01 * rng.normal(size=80)
    write_csv(tmp_path / "reg.csv", ["x1", "x2", "y"], [[*a, b] for a, b in zip(X, y, strict=True)])
    spec = spec_of(dataset={"csv": {"path": "reg.csv", "target": "y"}},
                   estimator={"class": "sklearn.linear_model.LinearRegression", "params": {}})
    meta = read_metadata(train(tmp_path, spec))
    assert meta.task == "regression" and meta.metrics["r2"] > 0.99


def test_artifact_loads_back_and_predicts_identically(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.model_selection import train_test_split

    path = train(tmp_path, spec_of(dataset={"builtin": "iris"},
                                   estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                              "params": {"n_estimators": 15, "random_state": 3}}))
    loaded = load_artifact(path)
    X, y = load_iris(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=0, stratify=y)
    reference = RandomForestClassifier(n_estimators=15, random_state=3).fit(X_train, y_train)
    np.testing.assert_array_equal(loaded.model.predict(X), reference.predict(X))
    np.testing.assert_array_equal(loaded.model.predict_proba(X), reference.predict_proba(X))


@pytest.mark.parametrize("damage", ["truncate", "flip", "missing_model", "bad_metadata"])
def test_damaged_artifact_is_refused_with_a_clear_error(tmp_path: Path, damage: str) -> None:
    path = train(tmp_path, spec_of(dataset={"builtin": "iris"},
                                   estimator={"class": "sklearn.tree.DecisionTreeClassifier",
                                              "params": {"random_state": 0}}))
    model = path / "model.skops"
    data = model.read_bytes()
    expected = "corrupted or truncated"
    if damage == "truncate":
        model.write_bytes(data[: len(data) // 2])
    elif damage == "flip":
        model.write_bytes(data[:100] + bytes([data[100] ^ 0xFF]) + data[101:])
    elif damage == "missing_model":
        model.unlink()
        expected = "model.skops is missing"
    else:
        (path / "metadata.json").write_text('{"name": "m"')
        expected = "not valid JSON"
    with pytest.raises(ArtifactError, match=expected):
        load_artifact(path)


def test_artifact_with_a_type_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    import hashlib

    import skops.io as sio
    from sklearn.cluster import KMeans

    path = train(tmp_path, spec_of(dataset={"builtin": "iris"},
                                   estimator={"class": "sklearn.tree.DecisionTreeClassifier",
                                              "params": {}}))
    forged = sio.dumps(KMeans(n_clusters=2, n_init=1).fit(np.eye(4)))  # sklearn.cluster: not allowed
    (path / "model.skops").write_bytes(forged)
    meta = json.loads((path / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(forged).hexdigest()
    (path / "metadata.json").write_text(json.dumps(meta))
    with pytest.raises(ArtifactError, match=r"outside the estimator allowlist.*sklearn\.cluster"):
        load_artifact(path)


def test_rerun_of_a_finished_version_is_a_no_op(tmp_path: Path) -> None:
    spec = spec_of(dataset={"builtin": "iris"},
                   estimator={"class": "sklearn.tree.DecisionTreeClassifier", "params": {}})
    path = train(tmp_path, spec)
    before = (path / "metadata.json").read_bytes()
    assert train(tmp_path, spec) == path
    assert (path / "metadata.json").read_bytes() == before
    assert not any(p.name.startswith(".v1.tmp") for p in path.parent.iterdir())


def test_tweedie_regressor_artifact_loads(tmp_path: Path) -> None:
    # carries a sklearn._loss object: trusted through allowlist.SUPPORT_MODULES
    path = train(tmp_path, spec_of(dataset={"builtin": "diabetes"},
                                   estimator={"class": "sklearn.linear_model.TweedieRegressor",
                                              "params": {"power": 0}}))
    assert load_artifact(path).model.predict(np.zeros((1, 10))).shape == (1,)


def test_copying_an_artifact_keeps_it_loadable(tmp_path: Path) -> None:
    path = train(tmp_path, spec_of(dataset={"builtin": "iris"},
                                   estimator={"class": "sklearn.tree.DecisionTreeClassifier",
                                              "params": {}}))
    copy = shutil.copytree(path, tmp_path / "elsewhere" / "v1")
    assert load_artifact(copy).metadata.version == "v1"
