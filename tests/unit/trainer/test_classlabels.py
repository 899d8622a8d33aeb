"""class_weight as users write it: keys that are class labels, whatever YAML and JSON made of them.

``class_weight: {0: 1, 1: 2, 2: 1}`` reaches the trainer with string keys (YAML -> JSON makes
every mapping key a string: kubectl, the API server and ``MLVISOR_SPEC`` alike), and scikit-learn
then refuses it ("The classes, [0, 1, 2], are not in class_weight"). The trainer maps the keys to
the labels' own values at fit time, on every estimator that has class_weight, nested ones and grid
values included; each test compares the model it trains with the one scikit-learn trains from the
same weights written with the labels' real type.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from mlvisor import api
from mlvisor.trainer.artifact import load_artifact, read_metadata
from mlvisor.trainer.classlabels import label_of, relabel, to_labels
from mlvisor.trainer.entry import main
from mlvisor.trainer.job import RunOptions, prepare, run
from mlvisor.trainer.logs import EventLog


@pytest.fixture(autouse=True)
def _no_pod_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "no-termination-log"))


def as_the_cluster_sends_it(spec: dict[str, Any]) -> api.TrainingJobSpec:
    """Through JSON, as MLVISOR_SPEC carries it: every mapping key becomes a string."""
    return api.TrainingJobSpec.model_validate(json.loads(json.dumps(spec)))


def train(tmp_path: Path, spec: api.TrainingJobSpec, data_dir: Path | None = None) -> Any:
    opts = RunOptions(spec=spec, output=tmp_path / "out", name="m", version="v1", data_dir=data_dir or tmp_path)
    path = run(opts, EventLog(stream=io.StringIO()))
    assert path is not None
    return path


def held_out(tmp_path: Path, spec: api.TrainingJobSpec, data_dir: Path | None = None) -> Any:
    return prepare(RunOptions(spec=spec, output=tmp_path / "p", data_dir=data_dir or tmp_path), EventLog(stream=io.StringIO()))


def test_keys_match_labels_by_value_and_by_text() -> None:
    assert label_of("1", [0, 1, 2]) == (True, 1)
    assert label_of(1, [0, 1, 2]) == (True, 1)
    assert label_of("1.0", [0, 1, 2]) == (True, 1)
    assert label_of("setosa", ["setosa", "virginica"]) == (True, "setosa")
    assert label_of("3", [0, 1, 2]) == (False, None)
    assert label_of(True, [0, 1]) == (False, None)  # YAML's yes: not a class label
    assert label_of("01", ["01", "1"]) == (True, "01")  # string labels match as written
    assert to_labels({"0": 1, "2": 3}, [0, 1, 2]) == {0: 1, 2: 3}


@pytest.mark.parametrize("keys", ["integers", "strings"], ids=["as-yaml-reads-them", "as-json-carries-them"])
def test_class_weight_on_iris_trains_as_scikit_learn_does_with_integer_keys(tmp_path: Path, keys: str) -> None:
    from sklearn.linear_model import LogisticRegression

    weights: dict[Any, int] = {0: 1, 1: 5, 2: 1}
    written = weights if keys == "integers" else {str(k): v for k, v in weights.items()}
    spec_dict = {"dataset": {"builtin": "iris"},
                 "estimator": {"class": "sklearn.linear_model.LogisticRegression",
                               "params": {"class_weight": written, "max_iter": 1000}}}
    spec = (api.TrainingJobSpec.model_validate(spec_dict) if keys == "integers" else as_the_cluster_sends_it(spec_dict))
    path = train(tmp_path, spec)
    model = load_artifact(path).model  # the skops artifact round-trips the mapped keys
    assert model.class_weight == weights and all(type(k) is int for k in model.class_weight)
    p = held_out(tmp_path, spec)
    expected = LogisticRegression(class_weight=weights, max_iter=1000).fit(p.X_train, p.y_train)
    np.testing.assert_allclose(model.coef_, expected.coef_)
    # the weights mattered: class 1 is predicted more often than without them
    plain = LogisticRegression(max_iter=1000).fit(p.X_train, p.y_train)
    assert not np.allclose(plain.coef_, expected.coef_)
    assert read_metadata(path).params["class_weight"] == {str(k): v for k, v in weights.items()}


def test_class_weight_with_string_labels_from_a_csv(tmp_path: Path) -> None:
    from sklearn.datasets import load_iris
    from sklearn.tree import DecisionTreeClassifier

    data = load_iris()
    names = ["setosa", "versicolor", "virginica"]
    lines = ["a,b,c,d,species"] + [",".join(map(str, x)) + f",{names[t]}" for x, t in zip(data.data, data.target, strict=False)]
    (tmp_path / "iris.csv").write_text("\n".join(lines) + "\n")
    weights = {"setosa": 1, "versicolor": 4, "virginica": 1}
    spec = as_the_cluster_sends_it({"dataset": {"csv": {"path": "iris.csv", "target": "species"}},
                                    "estimator": {"class": "sklearn.tree.DecisionTreeClassifier",
                                                  "params": {"class_weight": weights, "random_state": 0}}})
    model = load_artifact(train(tmp_path, spec)).model
    assert model.class_weight == weights
    p = held_out(tmp_path, spec)
    expected = DecisionTreeClassifier(class_weight=weights, random_state=0).fit(p.X_train, p.y_train)
    assert (model.predict(p.X_test) == expected.predict(p.X_test)).all()
    assert model.tree_.node_count == expected.tree_.node_count


@pytest.mark.parametrize(
    ("estimator", "nested"),
    [
        ({"class": "sklearn.ensemble.BaggingClassifier", "params": {"n_estimators": 3, "random_state": 0, "estimator": {
            "class": "sklearn.tree.DecisionTreeClassifier", "params": {"class_weight": {"0": 1, "1": 3, "2": 1}}}}},
         "estimator__class_weight"),
        ({"class": "sklearn.pipeline.Pipeline", "params": {"steps": [
            ["scale", {"class": "sklearn.preprocessing.StandardScaler"}],
            ["model", {"class": "sklearn.svm.SVC", "params": {"class_weight": {"0": 1, "1": 3, "2": 1}}}]]}},
         "model__class_weight"),
        ({"class": "sklearn.ensemble.VotingClassifier", "params": {"estimators": [
            ["tree", {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"class_weight": {"0": 1, "1": 3, "2": 1}}}],
            ["lr", {"class": "sklearn.linear_model.LogisticRegression", "params": {"max_iter": 500}}]]}},
         "tree__class_weight"),
        ({"class": "sklearn.ensemble.StackingClassifier", "params": {
            "estimators": [["tree", {"class": "sklearn.tree.DecisionTreeClassifier"}]],
            "final_estimator": {"class": "sklearn.linear_model.LogisticRegression",
                                "params": {"class_weight": {"0": 1, "1": 3, "2": 1}}}}},
         "final_estimator__class_weight"),
    ],
    ids=["bagging", "pipeline", "voting", "stacking-final"],
)
def test_class_weight_of_nested_estimators_is_mapped(tmp_path: Path, estimator: dict[str, Any], nested: str) -> None:
    spec = as_the_cluster_sends_it({"dataset": {"builtin": "iris"}, "estimator": estimator})
    model = load_artifact(train(tmp_path, spec)).model
    assert model.get_params(deep=True)[nested] == {0: 1, 1: 3, 2: 1}


def test_class_weight_in_a_grid_and_nested_grid_keys_are_mapped_in_every_trial(tmp_path: Path) -> None:
    spec = as_the_cluster_sends_it({
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.pipeline.Pipeline", "params": {"steps": [
            ["model", {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"random_state": 0}}]]}},
        "search": {"grid": {"model__class_weight": [{"0": 1, "1": 9, "2": 1}, {"0": 9, "1": 1, "2": 1}, "balanced"],
                            "model__max_depth": [2]}, "cv": 3},
    })
    path = train(tmp_path, spec)
    meta = read_metadata(path)
    assert meta.search is not None and meta.search["trials"] == 3
    model = load_artifact(path).model
    chosen = model.get_params(deep=True)["model__class_weight"]
    assert chosen == "balanced" or set(chosen) == {0, 1, 2}


def test_relabel_leaves_estimators_without_class_weight_alone() -> None:
    from sklearn.linear_model import Ridge

    est = Ridge(alpha=2.0)
    relabel(est, [0, 1])
    assert est.get_params() == Ridge(alpha=2.0).get_params()


def test_a_key_that_is_no_class_label_exits_2_naming_the_field(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    spec = {"dataset": {"builtin": "wine"},
            "estimator": {"class": "sklearn.svm.LinearSVC", "params": {"class_weight": {"1": 2, "3": 1}}}}
    monkeypatch.setenv("MLVISOR_SPEC", json.dumps(spec))
    assert main(["--output", str(tmp_path / "out")]) == 2
    assert term.read_text() == ("invalid spec: spec.estimator.params.class_weight: key '3' is not a class label of "
                                "the target (the classes are 0, 1, 2)")
