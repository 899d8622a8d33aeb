"""Trainer: every invalid spec or data exits with code 2 and a message naming what is wrong."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from mlvisor.api.exits import EXIT_INVALID_SPEC
from mlvisor.trainer.entry import main

IRIS_RF: dict[str, Any] = {
    "dataset": {"builtin": "iris"},
    "estimator": {"class": "sklearn.ensemble.RandomForestClassifier",
                  "params": {"n_estimators": 5, "random_state": 0}},
}


@pytest.fixture(autouse=True)
def _no_pod_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write the real /dev/termination-log when the suite itself runs inside a pod."""
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "no-termination-log"))


def with_(base: dict[str, Any], **changes: Any) -> dict[str, Any]:
    return {**base, **changes}


def run_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: Any,
             *args: str, as_document: bool = True) -> tuple[int, str]:
    """Run the trainer on ``spec``; returns (exit code, message of the last log line)."""
    doc = ({"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "bad"}, "spec": spec} if as_document else spec)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(doc))
    return run_args(capsys, "--spec", str(path), "--output", str(tmp_path / "out"),
                    "--data-dir", str(tmp_path), *args)


def run_args(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str]:
    code = main(list(args))
    out, err = capsys.readouterr()
    lines = [json.loads(line) for line in err.splitlines()]
    last = lines[-1]
    if code == EXIT_INVALID_SPEC:
        assert last["event"] == "invalid_spec" and last["level"] == "error"
        assert out == ""  # no artifact path
    return code, last["msg"]


def write_csv(path: Path, text: str) -> None:
    path.write_text(text)


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.cluster.KMeans"}),
                     r"spec.estimator.class 'sklearn.cluster.KMeans' is not allowed: expected a "
                     r"public class under sklearn.calibration\|", id="not-allowlisted"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.ensemble._forest.RandomForestClassifier"}),
                     "is not allowed", id="private-path"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.ensemble.RandomForrestClassifier"}),
                     "sklearn.ensemble has no class 'RandomForrestClassifier'; did you mean "
                     "sklearn.ensemble.RandomForestClassifier", id="unknown-class"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.preprocessing.StandardScaler"}),
                     "'sklearn.preprocessing.StandardScaler' is neither a classifier nor a regressor",
                     id="not-a-predictor"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.ensemble.VotingClassifier"}),
                     "sklearn.ensemble.VotingClassifier cannot be constructed from "
                     "spec.estimator.params", id="needs-constructor-args"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                               "params": {"n_estimator": 5}}),
                     "spec.estimator.params.n_estimator is not a parameter of "
                     "sklearn.ensemble.RandomForestClassifier (did you mean 'n_estimators'?); "
                     "valid parameters: bootstrap, ", id="unknown-param"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.ensemble.RandomForestClassifier",
                                               "params": {"n_estimators": -3}}),
                     "spec.estimator.params.n_estimators: The 'n_estimators' parameter of "
                     "RandomForestClassifier must be an int in the range [1, inf)",
                     id="invalid-param-value"),
        pytest.param(with_(IRIS_RF, estimator={"class": "sklearn.svm.LinearSVC",
                                               "params": {"penalty": "l1", "loss": "hinge"}}),
                     "spec.estimator: sklearn.svm.LinearSVC refused the parameters or data at fit "
                     "time: .*penalty='l1'", id="invalid-at-fit-time"),
        pytest.param(with_(IRIS_RF, search={"grid": {"max_dept": [2, 3]}}),
                     "spec.search.grid.max_dept is not a parameter of "
                     "sklearn.ensemble.RandomForestClassifier (did you mean 'max_depth'?)",
                     id="grid-key"),
        pytest.param(with_(IRIS_RF, search={"grid": {"max_depth": [2, "deep"]}}),
                     "spec.search.grid.max_depth value 'deep': The 'max_depth' parameter",
                     id="grid-value"),
        pytest.param(with_(IRIS_RF, search={"grid": {"max_depth": [2]}, "scoring": "acuracy"}),
                     "spec.search.scoring 'acuracy' is not a scikit-learn scorer (did you mean "
                     "accuracy", id="scoring"),
        pytest.param(with_(IRIS_RF, dataset={"builtin": "diabetes"}),
                     "the target looks continuous: 214 distinct values over 442 rows (2.1 rows per "
                     "value, e.g. 151, 75, 141): sklearn.ensemble.RandomForestClassifier is a "
                     "classifier, which needs class labels; choose a regressor such as "
                     "sklearn.ensemble.RandomForestRegressor", id="classifier-on-integral-measurements"),
        pytest.param(with_(IRIS_RF, workers=2),
                     "spec.workers must be 1 without spec.search", id="api-cross-field"),
        pytest.param(with_(IRIS_RF, testSize=1.5),
                     "testSize: Input should be less than 1", id="api-field"),
        pytest.param(with_(IRIS_RF, dataset={"builtin": "mnist"}),
                     "spec.dataset.builtin: Input should be 'iris', 'wine'", id="unknown-builtin"),
        pytest.param(with_(IRIS_RF, dataset={"csv": {"path": "../etc/passwd", "target": "y"}}),
                     "csv.path must be relative to the volume", id="csv-path-escape"),
    ],
)
def test_invalid_spec_exits_2_with_a_precise_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], spec: dict[str, Any], expected: str
) -> None:
    code, msg = run_spec(tmp_path, capsys, spec)
    assert code == EXIT_INVALID_SPEC
    import re

    assert re.search(expected if "\\" in expected or ".*" in expected else re.escape(expected), msg), msg
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


CSV_OK = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n"


@pytest.mark.parametrize(
    ("csv_text", "target", "estimator", "expected"),
    [
        pytest.param(None, "label", "sklearn.tree.DecisionTreeClassifier",
                     "spec.dataset.csv.path 'data.csv' (under ", id="missing-file"),
        pytest.param(CSV_OK, "class", "sklearn.tree.DecisionTreeClassifier",
                     "spec.dataset.csv.target: column 'class' is not in data.csv; columns are: "
                     "a, b, label", id="missing-target-column"),
        pytest.param("a,b,label\n1,2,x\n3,red,y\n5,6,x\n", "label",
                     "sklearn.tree.DecisionTreeClassifier",
                     "column 'b' of data.csv mixes numbers and text: 'red' at line 3; leave a missing value's cell "
                     "empty, or list the column in spec.dataset.features.categorical", id="numbers-and-text"),
        pytest.param("a,b,label\n1,2,x\n3,4,\n5,6,x\n", "label", "sklearn.tree.DecisionTreeClassifier",
                     "spec.dataset.csv.target: column 'label' has missing values (empty at line 3 of data.csv): "
                     "every row needs a target", id="target-missing-value"),
        pytest.param("id,a,label\n" + "".join(f"u{i},{i % 3},{'xy'[i % 2]}\n" for i in range(25)), "label",
                     "sklearn.tree.DecisionTreeClassifier",
                     "column 'id' of data.csv holds a different value in each of its 25 rows (e.g. 'u0', 'u1'): "
                     "an ID or free text", id="id-like-column"),
        pytest.param("a,b,label\n1,2,x\n3,4\n", "label", "sklearn.tree.DecisionTreeClassifier",
                     "line 3 has 2 fields, the header has 3", id="ragged"),
        pytest.param(CSV_OK, "label", "sklearn.linear_model.Ridge",
                     "target column 'label' holds 'x', which is not a number: it holds class labels, "
                     "and sklearn.linear_model.Ridge is a regressor, which needs a numeric target; "
                     "choose a classifier such as sklearn.ensemble.RandomForestClassifier",
                     id="regressor-on-labels"),
        pytest.param(CSV_OK, "label", "sklearn.tree.DecisionTreeRegressor",
                     "choose a classifier such as sklearn.tree.DecisionTreeClassifier",
                     id="regressor-on-labels-suggests-its-counterpart"),
        pytest.param("a,label\n1,x\n2,x\n3,x\n", "label", "sklearn.tree.DecisionTreeClassifier",
                     "target column 'label' has 1 distinct value(s); a classifier needs at least 2",
                     id="one-class"),
        pytest.param("a,label\n1,0.5\n2,1.5\n3,0.25\n", "label",
                     "sklearn.tree.DecisionTreeClassifier",
                     "target column 'label' is continuous (e.g. [0.5]): "
                     "sklearn.tree.DecisionTreeClassifier is a classifier, which needs class labels "
                     "(integers or strings); choose a regressor such as "
                     "sklearn.tree.DecisionTreeRegressor", id="classifier-on-continuous-target"),
        pytest.param("", "label", "sklearn.tree.DecisionTreeClassifier", "the file is empty",
                     id="empty-file"),
    ],
)
def test_invalid_csv_exits_2_naming_the_column(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], csv_text: str | None, target: str,
    estimator: str, expected: str,
) -> None:
    if csv_text is not None:
        write_csv(tmp_path / "data.csv", csv_text)
    spec = {"dataset": {"csv": {"path": "data.csv", "target": target}},
            "estimator": {"class": estimator}}
    code, msg = run_spec(tmp_path, capsys, spec)
    assert code == EXIT_INVALID_SPEC
    assert expected in msg, msg


def test_search_cv_more_folds_than_rows_per_class_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    rows = "".join(f"{i},{i % 2}\n" for i in range(10))
    write_csv(tmp_path / "data.csv", "a,label\n" + rows)
    spec = {"dataset": {"csv": {"path": "data.csv", "target": "label"}},
            "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"},
            "search": {"grid": {"max_depth": [1]}, "cv": 10}}
    code, msg = run_spec(tmp_path, capsys, spec)
    assert code == EXIT_INVALID_SPEC
    assert msg.startswith("spec.search.cv 10: cannot split the training data"), msg


def test_bare_spec_errors_are_prefixed_with_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, msg = run_spec(tmp_path, capsys, with_(IRIS_RF, workers=0), as_document=False)
    assert code == EXIT_INVALID_SPEC
    assert "spec.workers: Input should be greater than or equal to 1" in msg


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("kind: ModelServer\nmetadata: {name: x}\nspec: {}\n",
         "kind is 'ModelServer'; the trainer runs kind TrainingJob"),
        ("spec: [unclosed\n", "job.yaml: line 2, column 1: not valid YAML: did not find expected ',' or ']'"),
        ("", "is empty: expected a TrainingJob"),
        ("- 1\n- 2\n", "expected a TrainingJob document or a TrainingJob spec (a mapping), got list"),
    ],
)
def test_unreadable_spec_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                      text: str, expected: str) -> None:
    path = tmp_path / "job.yaml"
    path.write_text(text)
    code, msg = run_args(capsys, "--spec", str(path), "--output", str(tmp_path))
    assert code == EXIT_INVALID_SPEC
    assert expected in msg, msg


def test_a_spec_file_means_what_it_means_to_kubectl(tmp_path: Path) -> None:
    """`mlvisor train FILE` reads the file with the kernel's reader, as kubectl apply and validate do."""
    from mlvisor.trainer.spec import InvalidSpec, load_spec_file

    path = tmp_path / "job.yaml"
    head = "apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: j}\nspec:\n"
    path.write_text(head + "  dataset: {builtin: iris}\n  estimator:\n    class: sklearn.linear_model.LogisticRegression\n"
                    "    params: {C: 1e-2, tol: 1e-6, class_weight: {0: 1, 1: 2}, fit_intercept: yes, l1_ratio: ~}\n")
    params = load_spec_file(path).spec.estimator.params
    assert params == {"C": 0.01, "tol": 1e-06, "class_weight": {"0": 1, "1": 2}, "fit_intercept": True}
    path.write_text(head + "  dataset: {csv: {path: d.csv, target: y}}\n  estimator: {class: sklearn.tree.DecisionTreeClassifier}\n"
                    "  workers: \"2\"\n")
    with pytest.raises(InvalidSpec) as e:
        load_spec_file(path)
    assert "spec.dataset.csv.target" in str(e.value) and "spec.workers" in str(e.value)
    path.write_text(head + "  dataset: {builtin: iris}\n  estimator: {class: sklearn.tree.DecisionTreeClassifier, "
                    "params: {alpha: .inf}}\n")
    with pytest.raises(InvalidSpec, match=r"job.yaml: line 6: spec.estimator.params.alpha: an infinity cannot be "
                                          r"written in JSON, so kubectl refuses it"):
        load_spec_file(path)


def test_missing_spec_file_exits_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, msg = run_args(capsys, "--spec", str(tmp_path / "nope.yaml"), "--output", str(tmp_path))
    assert (code, msg) == (EXIT_INVALID_SPEC, f"spec file {tmp_path / 'nope.yaml'} does not exist")


@pytest.mark.parametrize(
    ("spec", "args", "env", "expected"),
    [
        (IRIS_RF, ["--workers", "2", "--worker-index", "0"], {},
         "--workers/MLVISOR_WORKERS is 2 but spec.search is not set"),
        (with_(IRIS_RF, search={"grid": {"max_depth": [2]}}, workers=2),
         ["--worker-index", "2", "--version", "v"], {},
         "--worker-index/MLVISOR_WORKER_INDEX is 2; expected 0..1 for 2 worker(s)"),
        (with_(IRIS_RF, search={"grid": {"max_depth": [2]}}, workers=2), ["--worker-index", "1"], {},
         "--version/MLVISOR_MODEL_VERSION is required with --worker-index or --select"),
        (IRIS_RF, ["--select", "--version", "v"], {},
         "--select/MLVISOR_STEP=select needs spec.search"),
        (IRIS_RF, [], {"MLVISOR_WORKER_INDEX": "one"}, "MLVISOR_WORKER_INDEX is 'one'; expected an integer"),
        (IRIS_RF, [], {"MLVISOR_STEP": "train-all"}, "MLVISOR_STEP is 'train-all'; expected 'select' or unset"),
    ],
)
def test_invalid_worker_flags_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any],
                                     args: list[str], env: dict[str, str], expected: str) -> None:
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    code, msg = run_spec(tmp_path, capsys, spec, *args)
    assert code == EXIT_INVALID_SPEC
    assert expected in msg, msg


def test_no_spec_and_no_output_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    for var in ("MLVISOR_SPEC", "MLVISOR_OUTPUT_DIR"):
        monkeypatch.delenv(var, raising=False)
    assert run_args(capsys, "--output", str(tmp_path)) == (
        EXIT_INVALID_SPEC, "no spec: pass --spec FILE or set MLVISOR_SPEC to the spec's JSON")
    monkeypatch.setenv("MLVISOR_SPEC", json.dumps(IRIS_RF))
    assert run_args(capsys) == (
        EXIT_INVALID_SPEC, "no output directory: pass --output DIR or set MLVISOR_OUTPUT_DIR")
    monkeypatch.setenv("MLVISOR_SPEC", "{not json")
    code, msg = run_args(capsys, "--output", str(tmp_path))
    assert code == EXIT_INVALID_SPEC and msg.startswith("MLVISOR_SPEC is not valid JSON")


def test_an_unexpected_error_is_a_crash_with_exit_1_and_a_traceback(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    import mlvisor.trainer.job as job

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(job, "write_artifact", boom)
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(IRIS_RF))
    code = main(["--spec", str(path), "--output", str(tmp_path / "out")])
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert code == 1
    assert (last["event"], last["msg"]) == ("crash", "OSError: disk on fire")
    assert "Traceback" in last["traceback"] and "boom" in last["traceback"]


def test_the_reason_goes_to_the_pod_termination_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    term = tmp_path / "termination-log"
    term.write_text("")  # the kubelet creates the file; the trainer only writes into it
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    code, msg = run_spec(tmp_path, capsys, with_(IRIS_RF, estimator={"class": "sklearn.cluster.KMeans"}))
    assert code == EXIT_INVALID_SPEC
    assert term.read_text() == f"invalid spec: {msg}"
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "absent"))
    run_spec(tmp_path, capsys, with_(IRIS_RF, estimator={"class": "sklearn.cluster.KMeans"}))
    assert not (tmp_path / "absent").exists()
