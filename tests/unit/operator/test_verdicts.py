"""One problem, one verdict, the same words: `mlvisor validate`, the trainer and the operator.

Every problem the trainer can refuse before fitting (the schema and its rules, the estimator,
the search, the data: builtin datasets and CSV files) is a case below, and each case is asked
of three surfaces:

(a) ``mlvisor validate FILE [--data-dir DIR]``, the command's own code in this process: one
    line per problem, ``<file>: TrainingJob <name>: <problem>``;
(b) the trainer as a pod runs it (``python -m mlvisor.trainer``'s ``main``, the spec's JSON in
    ``MLVISOR_SPEC``, the CSV's claim as ``MLVISOR_DATA_DIR``): exit 2 and the termination
    message ``invalid spec: <problems joined by "; ">``, where a spec that does not parse has
    ``MLVISOR_SPEC: `` (the source it read) after ``invalid spec: ``;
(c) the operator (the kube shell's parse and pre-flight, then the training planner): the
    InvalidSpec condition, which is ``<problems joined by "; ">`` for a spec that parses and
    ``invalid TrainingJob: <problems joined>. Fix the resource and apply it again.`` for one that
    does not. The operator cannot see CSV files (they are on the claims): for those cases it
    creates the pod, and its Failed condition quotes the trainer's termination message whole.

Only those prefixes and suffixes may differ: the problems themselves, their order and their
number must be identical, and each case's expected words must be among them. Validate must
refuse every case the trainer refuses (exit 1 against exit 2).
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from mlvisor import api
from mlvisor.api.exits import EXIT_INVALID_SPEC
from mlvisor.operator.cli import main as mlvisor
from mlvisor.operator.kube.controllers import Controllers
from mlvisor.operator.kube.preflight import PreflightJudge
from mlvisor.operator.plan import CreatePod, ObservedPod, OperatorConfig
from mlvisor.operator.planners.training import plan_training
from mlvisor.operator.reconcilers import Read
from mlvisor.trainer.entry import main as trainer

NAME = "j"
IRIS_RF = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5, "random_state": 0}}
TREE = {"class": "sklearn.tree.DecisionTreeClassifier"}
RIDGE = {"class": "sklearn.linear_model.Ridge"}
CSV_OK = "a,b,label\n1,2,x\n3,4,y\n5,6,x\n7,8,y\n9,1,x\n2,3,y\n"


@dataclass(frozen=True)
class Case:
    spec: dict[str, Any]
    words: str
    """Must be one of the problems (whole or part of it)."""
    csv: str | None = None
    """The text of data.csv on the claim (CSV cases: the operator cannot judge them)."""
    parquet: dict[str, Any] | None = None
    """The columns of data.parquet on the claim ("timestamp": a column of that type)."""
    more: tuple[str, ...] = field(default=())
    """Further words expected among the problems (cases with several problems)."""


def builtin(dataset: str = "iris", estimator: dict[str, Any] = IRIS_RF, **extra: Any) -> dict[str, Any]:
    return {"dataset": {"builtin": dataset}, "estimator": estimator, **extra}


def csv(estimator: dict[str, Any] = TREE, target: str = "label", features: dict[str, Any] | None = None,
        uri: str | None = None, **extra: Any) -> dict[str, Any]:
    """A table on the claim: spec.dataset.csv (data.csv), or spec.dataset.uri ``uri``."""
    dataset: dict[str, Any] = {"uri": uri, "target": target} if uri else {"csv": {"path": "data.csv", "target": target}}
    if features is not None:
        dataset["features"] = features
    return {"dataset": dataset, "estimator": estimator, **extra}


CASES: dict[str, Case] = {
    # -- the schema and its cross-field rules (the kernel's describer)
    "class-outside-sklearn": Case(builtin(estimator={"class": "os.system"}),
                                  "spec.estimator.class: expected the dotted path of a class inside scikit-learn, "
                                  "e.g. sklearn.ensemble.RandomForestClassifier (got 'os.system')"),
    "field-out-of-range": Case(builtin(testSize=1.5), "spec.testSize: Input should be less than 1 (got 1.5)"),
    "cross-field-rule": Case(builtin(workers=2), "spec.workers must be 1 without spec.search"),
    "unknown-builtin": Case(builtin("mnist"), "spec.dataset.builtin: Input should be 'iris', 'wine'"),
    "unknown-field": Case(builtin(worker=1), "spec.worker: unknown field"),
    # -- the estimator
    "not-allowlisted": Case(builtin(estimator={"class": "sklearn.cluster.KMeans"}),
                            "spec.estimator.class 'sklearn.cluster.KMeans' is not allowed"),
    "unknown-class": Case(builtin(estimator={"class": "sklearn.ensemble.RandomForrestClassifier"}),
                          "sklearn.ensemble has no class 'RandomForrestClassifier'; did you mean "
                          "sklearn.ensemble.RandomForestClassifier"),
    "not-a-predictor": Case(builtin(estimator={"class": "sklearn.preprocessing.StandardScaler"}),
                            "'sklearn.preprocessing.StandardScaler' is neither a classifier nor a regressor"),
    "multi-output": Case(builtin("diabetes", {"class": "sklearn.linear_model.MultiTaskLasso"}),
                         "needs a target of several columns"),
    "needs-arguments": Case(builtin(estimator={"class": "sklearn.ensemble.VotingClassifier"}),
                            "sklearn.ensemble.VotingClassifier cannot be constructed from spec.estimator.params"),
    "param-name": Case(builtin(estimator={**IRIS_RF, "params": {"n_estimator": 5}}),
                       "spec.estimator.params.n_estimator is not a parameter of "
                       "sklearn.ensemble.RandomForestClassifier (did you mean 'n_estimators'?)"),
    "param-value": Case(builtin(estimator={**IRIS_RF, "params": {"n_estimators": -3}}),
                        "spec.estimator.params.n_estimators: The 'n_estimators' parameter of "
                        "RandomForestClassifier must be an int in the range [1, inf). Got -3 instead."),
    "nested-class": Case(builtin(estimator={"class": "sklearn.ensemble.BaggingClassifier",
                                            "params": {"estimator": {"class": "sklearn.tree.DecisionTreeClasifier"}}}),
                         "spec.estimator.params.estimator.class 'sklearn.tree.DecisionTreeClasifier': sklearn.tree "
                         "has no class 'DecisionTreeClasifier'"),
    # -- the search
    "grid-key": Case(builtin(search={"grid": {"max_dept": [2, 3]}}),
                     "spec.search.grid.max_dept is not a parameter of sklearn.ensemble.RandomForestClassifier "
                     "(did you mean 'max_depth'?)"),
    "grid-value": Case(builtin(search={"grid": {"max_depth": [2, "deep"]}}),
                       "spec.search.grid.max_depth value 'deep': The 'max_depth' parameter"),
    "scoring": Case(builtin(search={"grid": {"max_depth": [2]}, "scoring": "acuracy"}),
                    "spec.search.scoring 'acuracy' is not a scikit-learn scorer (did you mean accuracy"),
    # -- builtin data, known statically: judged everywhere, the operator included
    "classifier-on-diabetes": Case(builtin("diabetes"),
                                   "the target looks continuous: 214 distinct values over 442 rows (2.1 rows per "
                                   "value, e.g. 151, 75, 141): sklearn.ensemble.RandomForestClassifier is a "
                                   "classifier, which needs class labels; choose a regressor such as "
                                   "sklearn.ensemble.RandomForestRegressor"),
    "class-weight-key": Case(builtin(estimator={"class": "sklearn.linear_model.LogisticRegression",
                                                "params": {"class_weight": {"0": 1, "1": 2, "5": 1}}}),
                             "spec.estimator.params.class_weight: key '5' is not a class label of the target "
                             "(the classes are 0, 1, 2)"),
    "class-weight-in-grid": Case(builtin(estimator={"class": "sklearn.svm.SVC"},
                                         search={"grid": {"class_weight": [{"setosa": 2}, "balanced"]}}),
                                 "spec.search.grid.class_weight value {'setosa': 2}: key 'setosa' is not a class "
                                 "label of the target (the classes are 0, 1, 2)"),
    "class-weight-weight": Case(builtin(estimator={"class": "sklearn.tree.DecisionTreeClassifier",
                                                   "params": {"class_weight": {"0": "heavy"}}}),
                                "spec.estimator.params.class_weight: the weight of class '0' is 'heavy'; "
                                "expected a number"),
    "schema-and-scikit-learn-together": Case(
        builtin("diabetes", {**IRIS_RF, "params": {"n_estimator": 5}}, testSize=2),
        "spec.testSize: Input should be less than 1 (got 2)",
        more=("spec.estimator.params.n_estimator is not a parameter", "the target looks continuous")),
    # -- CSV files: validate with --data-dir and the trainer read them; the operator cannot
    "csv-missing-file": Case(csv(), "spec.dataset.csv.path 'data.csv' (under {claim}): file not found"),
    "csv-empty-file": Case(csv(), "the file is empty, expected a header row and data rows", csv=""),
    "csv-missing-target": Case(csv(target="lable"),
                               "spec.dataset.csv.target: column 'lable' is not in data.csv (did you mean 'label'?); "
                               "columns are: a, b, label", csv=CSV_OK),
    "csv-duplicate-header": Case(csv(), "duplicate column names a", csv="a,a,label\n1,2,x\n3,4,y\n"),
    "csv-only-target": Case(csv(), "only the target column 'label'; need at least one feature",
                            csv="label\nx\ny\n"),
    "csv-too-few-rows": Case(csv(), "1 data row; need at least 2 to split train/test", csv="a,label\n1,x\n"),
    "csv-ragged": Case(csv(), "line 3 has 2 fields, the header has 3 (and 1 line more)",
                       csv="a,b,label\n1,2,x\n3,4\n5,6,x,9\n7,8,y\n"),
    "csv-numbers-and-text": Case(csv(), "column 'b' of data.csv mixes numbers and text: 'red' at line 3 (and 1 line "
                                        "more); leave a missing value's cell empty, or list the column in "
                                        "spec.dataset.features.categorical to treat its values as categories",
                                 csv="a,b,label\n1,2,x\n3,red,y\n5,blue,x\n7,8,y\n"),
    "csv-id-like-column": Case(csv(), "column 'id' of data.csv holds a different value in each of its 20 rows "
                                      "(e.g. 'u0', 'u1'): an ID or free text, nothing a model can learn as categories; "
                                      "leave it out with spec.dataset.features.exclude",
                               csv="id,a,label\n" + "".join(f"u{i},{i},{'xy'[i % 2]}\n" for i in range(20))),
    "csv-unknown-feature": Case(csv(features={"exclude": ["bb"], "categorical": ["a"]}),
                                "spec.dataset.features.exclude: column 'bb' is not in data.csv (did you mean 'b'?); "
                                "columns are: a, b, label", csv=CSV_OK),
    "csv-categorical-excluded": Case(csv(features={"exclude": ["a"], "categorical": ["a"]}),
                                     "spec.dataset.features.categorical: column 'a' is excluded, so it is not a feature",
                                     csv=CSV_OK),
    "csv-parquet-type": Case(csv(uri="pvc://mlvisor-models/data.parquet"),
                             "column 'when' of data.parquet has type timestamp[ms], which cannot be a feature: "
                             "expected numbers, booleans or strings; leave it out with spec.dataset.features.exclude",
                             parquet={"when": "timestamp", "a": [1.0, 2.0, 3.0, 4.0], "label": ["x", "y", "x", "y"]}),
    "csv-parquet-target-null": Case(csv(uri="pvc://mlvisor-models/data.parquet"),
                                    "spec.dataset.target: column 'label' has missing values (null at row 2 of "
                                    "data.parquet): every row needs a target",
                                    parquet={"a": [1.0, 2.0, 3.0, 4.0], "label": ["x", None, "x", "y"]}),
    "csv-non-finite": Case(csv(), "column 'a' of data.csv holds 'inf' at line 2; features must be finite numbers",
                           csv="a,b,label\ninf,2,x\n3,4,y\n5,6,x\n"),
    "csv-empty-target-cell": Case(csv(), "spec.dataset.csv.target: column 'label' has missing values (empty at line 3 "
                                         "of data.csv): every row needs a target; remove those rows or fill them in",
                                  csv="a,b,label\n1,2,x\n3,4,\n5,6,y\n7,8,x\n"),
    "csv-regressor-on-labels": Case(csv(RIDGE),
                                    "target column 'label' holds 'x', which is not a number: it holds class labels, "
                                    "and sklearn.linear_model.Ridge is a regressor, which needs a numeric target; "
                                    "choose a classifier such as sklearn.ensemble.RandomForestClassifier",
                                    csv=CSV_OK),
    "csv-classifier-on-continuous": Case(csv(), "target column 'label' is continuous (e.g. [0.5]): "
                                                "sklearn.tree.DecisionTreeClassifier is a classifier",
                                         csv="a,label\n1,0.5\n2,1.5\n3,0.25\n"),
    "csv-one-class": Case(csv(), "target column 'label' has 1 distinct value(s); a classifier needs at least 2 "
                                 "classes", csv="a,label\n1,x\n2,x\n3,x\n"),
    "csv-class-weight-labels": Case(csv({"class": "sklearn.tree.DecisionTreeClassifier",
                                         "params": {"class_weight": {"x": 1, "z": 2}}}),
                                    "spec.estimator.params.class_weight: key 'z' is not a class label of the target "
                                    "(the classes are 'x', 'y')", csv=CSV_OK),
    "csv-test-split": Case(csv(RIDGE, testSize=0.9), "spec.testSize 0.9: cannot split 2 rows", csv="a,label\n1,1\n2,2\n"),
    "csv-cv-folds": Case(csv(search={"grid": {"max_depth": [1]}, "cv": 10}),
                         "spec.search.cv 10: cannot split the training data",
                         csv="a,label\n" + "".join(f"{i},{i % 2}\n" for i in range(10))),
    "csv-every-problem-of-a-file": Case(csv(RIDGE), "column 'a' of data.csv mixes numbers and text: 'one' at line 2",
                                        csv="a,b,label\none,inf,x\n2,3,y\n",
                                        more=("column 'b' of data.csv holds 'inf' at line 2",
                                              "target column 'label' holds 'x', which is not a number")),
}


def write_parquet(path: Path, columns: dict[str, Any]) -> None:
    import datetime as dt

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = max(len(v) for v in columns.values() if isinstance(v, list))
    arrays = {name: pa.array([dt.datetime(2026, 1, 1 + i) for i in range(rows)], pa.timestamp("s"))
              if values == "timestamp" else pa.array(values) for name, values in columns.items()}
    pq.write_table(pa.table(arrays), path)


def _document(spec: dict[str, Any]) -> dict[str, Any]:
    return {"apiVersion": api.API_VERSION, "kind": "TrainingJob", "metadata": {"name": NAME}, "spec": spec}


def _claim(data_dir: Path) -> Path:
    return data_dir / "volumes" / "mlvisor-models"


def validate_problems(tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str]) -> tuple[int, list[str]]:
    """(a): the problems `mlvisor validate --data-dir` prints, without the '<file>: TrainingJob j: ' prefix."""
    path = tmp_path / "job.json"  # JSON, so that no key or value reads as YAML 1.1 would (y: is true to kubectl)
    path.write_text(json.dumps(_document(case.spec), indent=1))
    capsys.readouterr()
    code = mlvisor(["validate", str(path), "--data-dir", str(tmp_path / "data")])
    out, err = capsys.readouterr()
    prefix = f"{path}: TrainingJob {NAME}: "
    lines = err.splitlines()
    assert all(line.startswith(prefix) for line in lines), lines
    assert (code == 0) == (not lines) and (code == 0) == ("is valid" in out)
    return code, [line[len(prefix):] for line in lines]


def trainer_message(tmp_path: Path, case: Case, monkeypatch: pytest.MonkeyPatch) -> tuple[int, str]:
    """(b): the trainer's exit code and termination message, run as the operator's pod runs it."""
    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    monkeypatch.setenv("MLVISOR_SPEC", json.dumps(case.spec))
    monkeypatch.setenv("MLVISOR_OUTPUT_DIR", str(tmp_path / "out"))
    monkeypatch.setenv("MLVISOR_DATA_DIR", str(_claim(tmp_path / "data")))
    monkeypatch.setenv("MLVISOR_MODEL_VERSION", "v1")
    code = trainer([])
    return code, term.read_text()


@pytest.fixture(scope="module")
def judge() -> Any:
    """The operator's pre-flight helper process, shared by the cases (it imports scikit-learn once)."""
    helper = PreflightJudge()
    yield helper
    helper.close()


def operator_message(case: Case, trainer_said: str, judge: PreflightJudge) -> tuple[str, list[str], bool]:
    """(c): the Failed condition's message, what the kube shell's pre-flight check returned (from its
    helper process), and whether the first plan created a pod."""
    controllers = Controllers(kube=None, config=OperatorConfig(), metrics=None, judge=judge)  # type: ignore[arg-type]
    body = {**_document(case.spec), "metadata": {"name": NAME, "namespace": "default", "uid": "u1", "generation": 1}}
    job, problem = asyncio.run(controllers.parse_training(body))
    if problem is not None:  # what the shell writes (conditions.invalid_spec_status), creating nothing
        return problem, [], False
    assert job is not None
    preflight = asyncio.run(controllers.preflight(Read(job, body)))
    plan = plan_training(job, [], 1e9, OperatorConfig(), preflight=preflight)
    created = any(isinstance(a, CreatePod) for a in plan.actions)
    if not preflight:  # the operator cannot judge it: the pod runs, and the trainer says why it exits 2
        plan = plan_training(job.model_copy(update={"status": plan.status}), [ObservedPod(
            name=f"{NAME}-worker-0-1", index=0, phase="Failed", exit_code=EXIT_INVALID_SPEC, reason="Error",
            message=trainer_said)], 1e9 + 1, OperatorConfig())
    failed = next(c for c in plan.status.conditions if c.type == "Failed" and c.status == "True")
    return failed.message, preflight, created


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_validate_the_trainer_and_the_operator_refuse_with_the_same_words(
    tmp_path: Path, case: Case, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    judge: PreflightJudge,
) -> None:
    claim = _claim(tmp_path / "data")
    claim.mkdir(parents=True)
    if case.csv is not None:
        (claim / "data.csv").write_text(case.csv)
    if case.parquet is not None:
        write_parquet(claim / "data.parquet", case.parquet)
    words = case.words.replace("{claim}", str(claim))

    code, problems = validate_problems(tmp_path, case, capsys)
    assert code == 1, "validate passed what the trainer refuses"
    for expected in (words, *case.more):
        assert any(expected in p for p in problems), (expected, problems)

    code, said = trainer_message(tmp_path, case, monkeypatch)
    assert code == EXIT_INVALID_SPEC
    try:
        api.TrainingJobSpec.model_validate(case.spec)
        source = ""
    except ValueError:
        source = "MLVISOR_SPEC: "
    assert said == "invalid spec: " + source + "; ".join(problems)

    message, preflight, created_a_pod = operator_message(case, said, judge)
    if source:
        assert message == "invalid TrainingJob: " + "; ".join(problems) + ". Fix the resource and apply it again."
    elif case.spec["dataset"].get("csv") or case.spec["dataset"].get("uri"):
        assert preflight == [] and created_a_pod, "the operator cannot see the claims: the trainer judges CSV files"
        assert said in message, message
    else:
        assert message == "; ".join(problems)
        assert not created_a_pod


def test_a_valid_spec_is_valid_everywhere(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                          monkeypatch: pytest.MonkeyPatch, judge: PreflightJudge) -> None:
    """The control: what the three refuse above differs from an accepted spec only in the problem."""
    case = Case(csv({"class": "sklearn.tree.DecisionTreeClassifier", "params": {"class_weight": {"x": 1, "y": 2}}}),
                "", csv=CSV_OK)
    claim = _claim(tmp_path / "data")
    claim.mkdir(parents=True)
    (claim / "data.csv").write_text(CSV_OK)
    assert validate_problems(tmp_path, case, capsys) == (0, [])
    code, said = trainer_message(tmp_path, case, monkeypatch)
    assert code == 0 and json.loads(said)["version"] == "v1"
    controllers = Controllers(kube=None, config=OperatorConfig(), metrics=None, judge=judge)  # type: ignore[arg-type]
    job = api.TrainingJob.model_validate({**_document(case.spec), "metadata": {"name": NAME, "uid": "u", "generation": 1}})
    assert asyncio.run(controllers.preflight(Read(job, {"spec": case.spec}))) == []
