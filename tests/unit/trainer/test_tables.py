"""Tables as they come: typed columns, the preprocessing per estimator family, the saved Pipeline
and what is refused, each naming the column."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from mlvisor import api
from mlvisor.trainer.artifact import load_artifact, read_metadata
from mlvisor.trainer.datasets import read_dataset
from mlvisor.trainer.entry import main
from mlvisor.trainer.preflight import judge
from mlvisor.trainer.tables import default_encoding

CENSUS = Path(__file__).parent / "census.csv"


def census_csv(path: Path, rows: int = 240, seed: int = 0) -> Path:
    """A census-like CSV: numbers, text, empty cells and an 'NA', a string target."""
    rng = np.random.default_rng(seed)
    lines = ["age,hours,workclass,education,zip,income"]
    for i in range(rows):
        age = int(rng.integers(18, 80))
        hours = int(rng.integers(10, 60))
        workclass = str(rng.choice(["Private", "Self-emp", "Gov"]))
        education = str(rng.choice(["HS", "BSc", "MSc", "PhD"]))
        zipcode = int(rng.choice([10115, 20095, 80331]))
        score = age / 10 + hours / 10 + (education == "PhD") * 2 + (workclass == "Gov") * 1.5 + rng.normal(0, 0.5)
        label = ">50K" if score > 9.5 else "<=50K"
        age_cell = "" if i % 9 == 0 else str(age)
        workclass_cell = "NA" if i % 11 == 0 else ("" if i % 13 == 0 else workclass)
        lines.append(f"{age_cell},{hours},{workclass_cell},{education},{zipcode},{label}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n")
    return path


def dataset(uri: str, **features: Any) -> api.Dataset:
    return api.Dataset.model_validate({"uri": uri, "target": "income", **({"features": features} if features else {})})


def spec(tmp_path: Path, estimator: str, params: dict[str, Any] | None = None, **features: Any) -> api.TrainingJobSpec:
    path = census_csv(tmp_path / "census.csv")
    return api.TrainingJobSpec.model_validate({
        "dataset": dataset(f"file://{path}", **features).to_wire(),
        "estimator": {"class": estimator, "params": params or {}}})


def test_columns_are_typed_as_a_person_reads_them(tmp_path: Path) -> None:
    path = census_csv(tmp_path / "census.csv")
    read = read_dataset(dataset(f"file://{path}", categorical=["zip"]), tmp_path)
    assert read.problems == []
    data = read.data
    assert data is not None and data.tabular
    by_name = {c.name: c for c in data.columns or []}
    assert [(c.name, c.datatype, c.categorical) for c in data.columns or []] == [
        ("age", "FP64", False), ("hours", "INT64", False), ("workclass", "BYTES", True),
        ("education", "BYTES", True), ("zip", "INT64", True)]
    assert by_name["age"].missing == 27 and by_name["workclass"].missing > 0 and by_name["hours"].missing == 0
    frame = data.X
    assert list(frame.columns) == ["age", "hours", "workclass", "education", "zip"]
    assert frame["age"].dtype == np.float64 and frame["hours"].dtype == np.int64
    assert frame["workclass"].dtype == object and np.isnan(frame["workclass"][0]), "'NA' is a missing value: NaN"
    assert frame["workclass"].map(type).isin([str, float]).all()


def test_an_all_numeric_table_without_missing_values_keeps_the_plain_array(tmp_path: Path) -> None:
    path = tmp_path / "numbers.csv"
    path.write_text("a,b,income\n" + "".join(f"{i},{i * 2.5},{'xy'[i % 2]}\n" for i in range(10)))
    read = read_dataset(dataset(f"file://{path}"), tmp_path)
    assert read.data is not None and not read.data.tabular
    assert isinstance(read.data.X, np.ndarray) and read.data.X.dtype == np.float64


@pytest.mark.parametrize(("estimator", "encoding"), [
    ("sklearn.ensemble.RandomForestClassifier", api.Encoding.ORDINAL),
    ("sklearn.ensemble.HistGradientBoostingClassifier", api.Encoding.ORDINAL),
    ("sklearn.ensemble.GradientBoostingRegressor", api.Encoding.ORDINAL),
    ("sklearn.tree.DecisionTreeClassifier", api.Encoding.ORDINAL),
    ("sklearn.linear_model.LogisticRegression", api.Encoding.ONE_HOT),
    ("sklearn.svm.SVC", api.Encoding.ONE_HOT),
    ("sklearn.neighbors.KNeighborsClassifier", api.Encoding.ONE_HOT),
    ("sklearn.ensemble.BaggingClassifier", api.Encoding.ONE_HOT),
])
def test_the_default_encoding_per_estimator_family(estimator: str, encoding: api.Encoding) -> None:
    assert default_encoding(estimator) is encoding


def _steps(model: Any) -> dict[str, Any]:
    pre = model.named_steps["preprocess"]
    return {name: transformer for name, transformer, _ in pre.transformers}


def test_histgradientboosting_gets_ordinal_codes_as_native_categories_and_nan_passed_through(tmp_path: Path) -> None:
    verdict = judge(spec(tmp_path, "sklearn.ensemble.HistGradientBoostingClassifier"), tmp_path)
    assert verdict.problems == [] and verdict.recipe is not None
    model = verdict.recipe.build()
    assert model.named_steps["model"].get_params()["categorical_features"] == [3, 4], "after age, hours, zip"
    assert verdict.summary is not None and "encoded Ordinal" in verdict.summary
    assert "missing values: age (27 rows)" in verdict.summary
    assert verdict.data is not None
    model.fit(verdict.data.X, verdict.target.y if verdict.target else None)
    steps = _steps(model)
    assert steps["numbers"] == "passthrough", "HistGradientBoosting takes NaN as it is"
    assert np.isnan(steps["categories"].unknown_value) and np.isnan(steps["categories"].encoded_missing_value)


def test_a_linear_model_gets_imputed_numbers_and_one_hot_categories(tmp_path: Path) -> None:
    verdict = judge(spec(tmp_path, "sklearn.linear_model.LogisticRegression", {"max_iter": 500}), tmp_path)
    assert verdict.problems == [] and verdict.recipe is not None and verdict.data is not None and verdict.target
    model = verdict.recipe.build().fit(verdict.data.X, verdict.target.y)
    steps = _steps(model)
    assert type(steps["numbers"]).__name__ == "SimpleImputer" and steps["numbers"].strategy == "median"
    assert type(steps["categories"]).__name__ == "OneHotEncoder"
    row = pd.DataFrame({"age": [np.nan], "hours": np.array([40], dtype=np.int64),
                        "workclass": np.array(["never seen"], dtype=object),
                        "education": np.array([np.nan], dtype=object), "zip": np.array([10115], dtype=np.int64)})
    assert model.predict(row)[0] in ("<=50K", ">50K"), "a missing number, an unknown and a missing category"


def test_the_user_chooses_the_encoding(tmp_path: Path) -> None:
    verdict = judge(spec(tmp_path, "sklearn.ensemble.RandomForestClassifier", encoding="OneHot"), tmp_path)
    assert verdict.recipe is not None and verdict.data is not None and verdict.target is not None
    model = verdict.recipe.build().fit(verdict.data.X, verdict.target.y)
    assert type(_steps(model)["categories"]).__name__ == "OneHotEncoder"
    assert _steps(model)["numbers"] == "passthrough", "forests accept NaN in scikit-learn 1.9 (allow_nan)"


@pytest.mark.parametrize("estimator", ["sklearn.ensemble.RandomForestClassifier",
                                       "sklearn.ensemble.HistGradientBoostingClassifier",
                                       "sklearn.linear_model.LogisticRegression"])
def test_the_trainer_saves_one_pipeline_that_takes_the_raw_columns(tmp_path: Path, estimator: str) -> None:
    path = census_csv(tmp_path / "census.csv")
    job = {"dataset": {"uri": f"file://{path}", "target": "income"}, "estimator": {"class": estimator}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["--spec", str(tmp_path / "job.json"), "--output", str(tmp_path / "out"), "--version", "v1"]) == 0
    meta = read_metadata(tmp_path / "out" / "v1")
    assert [(c.name, c.datatype, c.categorical, c.missing) for c in meta.columns or []] == [
        ("age", "FP64", False, True), ("hours", "INT64", False, False), ("workclass", "BYTES", True, True),
        ("education", "BYTES", True, False), ("zip", "INT64", False, False)]
    assert [(t.name, t.datatype, t.shape) for t in meta.inputs] == [
        (c.name, c.datatype, [-1]) for c in meta.columns or []]
    assert meta.estimator == estimator and meta.dataset.description.startswith("240 rows, 5 features; categorical:")
    loaded = load_artifact(tmp_path / "out" / "v1")  # skops, trusted types only: no pickle
    assert type(loaded.model).__name__ == "Pipeline"
    frame = pd.DataFrame({"age": [35.0, np.nan], "hours": np.array([40, 12], dtype=np.int64),
                          "workclass": np.array(["Gov", np.nan], dtype=object),
                          "education": np.array(["PhD", "HS"], dtype=object),
                          "zip": np.array([10115, 99999], dtype=np.int64)})
    assert set(loaded.model.predict(frame)) <= {">50K", "<=50K"}
    assert loaded.model.predict_proba(frame).shape == (2, 2)


def test_parquet_columns_by_their_types(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = 30
    table = pa.table({
        "x": pa.array([float(i) if i % 7 else None for i in range(rows)]),
        "n": pa.array(list(range(rows)), pa.int32()),
        "flag": pa.array([i % 2 == 0 for i in range(rows)]),
        "colour": pa.array(["red", "green", None][i % 3] for i in range(rows)).dictionary_encode(),
        "code": pa.array([str(i % 4) for i in range(rows)]),
        "income": pa.array(["a", "b"][i % 2] for i in range(rows)),
    })
    pq.write_table(table, tmp_path / "t.parquet")
    read = read_dataset(dataset(f"file://{tmp_path / 't.parquet'}"), tmp_path)
    assert read.problems == [] and read.data is not None
    assert [(c.name, c.datatype, c.categorical, c.missing) for c in read.data.columns or []] == [
        ("x", "FP64", False, 5), ("n", "INT64", False, 0), ("flag", "INT64", False, 0),
        ("colour", "BYTES", True, 10), ("code", "BYTES", True, 0)], "Parquet strings are text even when numeric"


@pytest.mark.parametrize(("text", "features", "words"), [
    ("a,b,income\n" + "".join(f"{i},{'?' if i == 3 else i},{'xy'[i % 2]}\n" for i in range(8)), {},
     "column 'b' of t.csv mixes numbers and text: '?' at line 5; leave a missing value's cell empty, or list the "
     "column in spec.dataset.features.categorical"),
    ("name,a,income\n" + "".join(f"person {i},{i % 3},{'xy'[i % 2]}\n" for i in range(25)), {},
     "column 'name' of t.csv holds a different value in each of its 25 rows (e.g. 'person 0', 'person 1'): an ID or "
     "free text"),
    ("a,b,income\n" + "".join(f"{i},{i},{'' if i == 2 else 'xy'[i % 2]}\n" for i in range(8)), {},
     "spec.dataset.target: column 'income' has missing values (empty at line 4 of t.csv)"),
    ("a,b,income\n1,2,x\n3,4,y\n", {"include": ["c"]},
     "spec.dataset.features.include: column 'c' is not in t.csv; columns are: a, b, income"),
    ("a,b,income\n1,2,x\n3,4,y\n", {"include": ["income"]},
     "spec.dataset.features.include: 'income' is the target column, not a feature"),
    ("a,b,income\n1,2,x\n3,4,y\n", {"exclude": ["a", "b"]}, "spec.dataset.features: no feature column is left of t.csv"),
    ("a,b,income\n1,inf,x\n3,4,y\n", {}, "column 'b' of t.csv holds 'inf' at line 2; features must be finite numbers"),
])
def test_what_cannot_work_is_refused_naming_the_column(tmp_path: Path, text: str, features: dict[str, Any],
                                                        words: str) -> None:
    (tmp_path / "t.csv").write_text(text)
    read = read_dataset(dataset(f"file://{tmp_path / 't.csv'}", **features), tmp_path)
    assert read.data is None
    words = words.replace(" t.csv", f" {tmp_path / 't.csv'}")  # a file:// uri is named by its path
    assert any(words in p for p in read.problems), read.problems


def test_a_mixed_column_listed_as_categorical_is_categories(tmp_path: Path) -> None:
    (tmp_path / "t.csv").write_text("grade,income\n" + "".join(f"{'A' if i % 3 == 0 else i % 2},{'xy'[i % 2]}\n"
                                                                for i in range(12)))
    read = read_dataset(dataset(f"file://{tmp_path / 't.csv'}", categorical=["grade"]), tmp_path)
    assert read.problems == [] and read.data is not None and read.data.columns is not None
    assert (read.data.columns[0].datatype, read.data.columns[0].categorical) == ("BYTES", True)
    assert set(read.data.X["grade"]) == {"A", "0", "1"}


def test_a_search_fits_the_pipeline_in_every_fold(tmp_path: Path) -> None:
    path = census_csv(tmp_path / "census.csv")
    job = {"dataset": {"uri": f"file://{path}", "target": "income"},
           "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 5}},
           "search": {"grid": {"max_depth": [2, 4]}, "cv": 3}}
    (tmp_path / "job.json").write_text(json.dumps(job))
    assert main(["--spec", str(tmp_path / "job.json"), "--output", str(tmp_path / "out"), "--version", "v1"]) == 0
    meta = read_metadata(tmp_path / "out" / "v1")
    assert meta.best_params is not None and meta.best_params["max_depth"] in (2, 4)
    assert meta.columns is not None
