"""Resource files for `mlvisor validate` / `mlvisor run`: every problem listed, untrusted input bounded.

`validate` must say everything it can (issue 15): the class, its parameters with did-you-mean,
parameter values through scikit-learn's own constraints, grid keys, scorer names, CSV file and
target column, each with the field, the value and what was expected, all of them at once.

A resource file is untrusted input (issue 11): a YAML bomb (billion laughs, deep aliases),
deep nesting, a huge file, a key given twice, unknown kinds and duplicate names each get a
clear error, at a bounded cost. Memory is checked with tracemalloc (deterministic, unlike
time; times are in docs/reliability.md, measured by bench/resource_files.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from mlvisor.operator.resources_cli import (
    MAX_DEPTH,
    MAX_EXPANDED_NODES,
    MAX_FILE_BYTES,
    ResourceError,
    load_resources,
)

JOB = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  dataset: {dataset}
  estimator:
    class: {cls}
    params: {params}
{extra}"""


def job(name: str = "j", cls: str = "sklearn.ensemble.RandomForestClassifier", params: str = "{}",
        dataset: str = "{builtin: iris}", extra: str = "") -> str:
    return JOB.format(name=name, cls=cls, params=params, dataset=dataset, extra=extra)


def problems(tmp_path: Path, text: str, **kw) -> list[str]:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(ResourceError) as e:
        load_resources(path, **kw)
    return e.value.problems


def validate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "validate", *args],
                          capture_output=True, text=True, timeout=120)


# ----------------------------------------------------------------------------- says everything
@pytest.mark.parametrize(
    "text,words",
    [
        (job(params="{n_estimator: 10}"),
         "spec.estimator.params.n_estimator is not a parameter of sklearn.ensemble.RandomForestClassifier "
         "(did you mean 'n_estimators'?)"),
        (job(cls="sklearn.ensemble.RandomForestClasifier"),
         "spec.estimator.class 'sklearn.ensemble.RandomForestClasifier': sklearn.ensemble has no class "
         "'RandomForestClasifier'; did you mean sklearn.ensemble.RandomForestClassifier"),
        (job(params='{n_estimators: "ten"}'),
         "spec.estimator.params.n_estimators: The 'n_estimators' parameter of RandomForestClassifier must be "
         "an int in the range [1, inf). Got 'ten' instead."),
        (job(extra="  search: {grid: {max_dept: [1, 2]}}\n"),
         "spec.search.grid.max_dept is not a parameter of sklearn.ensemble.RandomForestClassifier "
         "(did you mean 'max_depth'?)"),
        (job(extra="  search: {grid: {max_depth: [1, 2]}, scoring: acuracy}\n"),
         "spec.search.scoring 'acuracy' is not a scikit-learn scorer (did you mean accuracy"),
        (job(cls="os.system"),
         "spec.estimator.class: expected the dotted path of a class inside scikit-learn, e.g. "
         "sklearn.ensemble.RandomForestClassifier (got 'os.system')"),
        (job(cls="sklearn.cluster.KMeans"), "spec.estimator.class 'sklearn.cluster.KMeans' is not allowed"),
        (job(cls="sklearn.linear_model.MultiTaskLasso"), "needs a target of several columns"),
        (job(cls="sklearn.ensemble.VotingClassifier",
             params="{estimators: [[t, {class: sklearn.tree.DecisionTreeClasifier}]]}"),
         "spec.estimator.params.estimators[0][1].class 'sklearn.tree.DecisionTreeClasifier': sklearn.tree "
         "has no class 'DecisionTreeClasifier'"),
    ],
    ids=["param-name", "class", "param-type", "grid-key", "scoring", "regex-in-words", "allowlist",
         "multi-output", "nested-class"],
)
def test_validate_names_the_field_the_value_and_what_was_expected(tmp_path: Path, text: str, words: str) -> None:
    found = problems(tmp_path, text)
    assert any(words in p for p in found), found
    assert all(p.startswith(f"{tmp_path / 'r.yaml'}: ") for p in found)


def test_every_problem_of_a_file_is_listed_and_validate_exits_1(tmp_path: Path) -> None:
    path = tmp_path / "many.yaml"
    path.write_text(
        job(name="a", params='{n_estimator: 10, n_estimators: "ten"}',
            extra="  search: {grid: {max_dept: [1]}, scoring: acuracy}\n")
        + "---\n" + job(name="b", cls="os.system") + "---\n" + job(name="c", extra="  testSize: 2\n  worker: 1\n")
    )
    r = validate(str(path))
    assert r.returncode == 1
    lines = r.stderr.splitlines()
    for words in ("TrainingJob a: spec.estimator.params.n_estimator is not a parameter",
                  "TrainingJob a: spec.estimator.params.n_estimators: The 'n_estimators' parameter",
                  "TrainingJob a: spec.search.grid.max_dept is not a parameter",
                  "TrainingJob a: spec.search.scoring 'acuracy'",
                  "(document 2): TrainingJob b: spec.estimator.class: expected the dotted path",
                  "(document 3): TrainingJob c: spec.testSize: Input should be less than 1 (got 2)",
                  "(document 3): TrainingJob c: spec.worker: unknown field"):
        assert sum(words in line for line in lines) == 1, (words, lines)
    assert len(lines) == 7, lines


def test_validate_with_a_data_dir_checks_the_csv_file_and_its_target_column(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "volumes" / "mlvisor-models" / "houses").mkdir(parents=True)
    (data / "volumes" / "mlvisor-models" / "houses" / "houses.csv").write_text("rooms,area,prize\n3,70,1\n4,90,2\n")
    ok_file = tmp_path / "r.yaml"
    ok_file.write_text(job(cls="sklearn.linear_model.Ridge", dataset="{csv: {path: houses/houses.csv, target: price}}"))
    r = validate(str(ok_file), "--data-dir", str(data))
    assert r.returncode == 1
    assert ("spec.dataset.csv.target: column 'price' is not in houses/houses.csv (did you mean 'prize'?); "
            "columns are: rooms, area, prize") in r.stderr
    ok_file.write_text(job(cls="sklearn.linear_model.Ridge", dataset="{csv: {path: houses/nope.csv, target: price}}"))
    r = validate(str(ok_file), "--data-dir", str(data))
    assert r.returncode == 1 and "spec.dataset.csv.path 'houses/nope.csv'" in r.stderr and "file not found" in r.stderr
    # Without --data-dir the file may live on a cluster's volume: not checked.
    assert validate(str(ok_file)).returncode == 0


def test_a_valid_nested_estimator_passes(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(job(cls="sklearn.pipeline.Pipeline",
                        params="{steps: [[s, {class: sklearn.preprocessing.StandardScaler}], "
                               "[m, {class: sklearn.svm.SVC, params: {C: 2.0}}]]}",
                        extra="  search: {grid: {m__C: [0.5, 1.0]}, scoring: f1_macro}\n"))
    (resource,) = load_resources(path)
    assert resource.kind == "TrainingJob"
    path.write_text(path.read_text().replace("m__C", "m__Cc"))
    with pytest.raises(ResourceError, match=r"spec.search.grid.m__Cc is not a nested parameter of "
                                            r"sklearn.pipeline.Pipeline \(did you mean 'm__C'\?\)"):
        load_resources(path)


# ----------------------------------------------------------------------------- bounded cost
BILLION_LAUGHS = textwrap.dedent("""\
    a: &a ["lol","lol","lol","lol","lol","lol","lol","lol","lol"]
    b: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]
    c: &c [*b,*b,*b,*b,*b,*b,*b,*b,*b]
    d: &d [*c,*c,*c,*c,*c,*c,*c,*c,*c]
    e: &e [*d,*d,*d,*d,*d,*d,*d,*d,*d]
    f: &f [*e,*e,*e,*e,*e,*e,*e,*e,*e]
    g: &g [*f,*f,*f,*f,*f,*f,*f,*f,*f]
    h: &h [*g,*g,*g,*g,*g,*g,*g,*g,*g]
    i: &i [*h,*h,*h,*h,*h,*h,*h,*h,*h]
    """)


def _deep_aliases(levels: int) -> str:
    """Each level doubles the expansion: 2**levels nodes from a few hundred bytes."""
    lines = ["apiVersion: mlvisor.dev/v1alpha1", "kind: TrainingJob", "metadata: {name: bomb}", "spec:",
             "  dataset: {builtin: iris}", "  estimator:", "    class: sklearn.tree.DecisionTreeClassifier",
             "    params:", "      l0: &l0 [x, x]"]
    lines += [f"      l{i}: &l{i} [*l{i - 1}, *l{i - 1}]" for i in range(1, levels)]
    return "\n".join(lines) + "\n"


BOMBS = {
    "billion-laughs": BILLION_LAUGHS,  # 9**9 = 387 million strings
    "deep-aliases-in-a-resource": _deep_aliases(60),  # 2**60 nodes inside spec.estimator.params
    "deep-nesting": "a: " + "[" * 100_000 + "]" * 100_000 + "\n",
    "deep-mappings": "".join("  " * i + f"k{i}:\n" for i in range(200)) + "  " * 200 + "v\n",
}


@pytest.mark.parametrize("name", sorted(BOMBS))
def test_yaml_bombs_are_refused_in_bounded_memory(tmp_path: Path, name: str) -> None:
    path = tmp_path / "bomb.yaml"
    path.write_text(BOMBS[name])
    tracemalloc.start()
    try:
        with pytest.raises(ResourceError) as e:
            load_resources(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    (message,) = e.value.problems
    if name.startswith("deep-nesting") or name == "deep-mappings":
        assert f"nested more than {MAX_DEPTH} levels deep" in message, message
    else:
        assert f"expands to more than {MAX_EXPANDED_NODES} nodes through its anchors and aliases" in message, message
    assert message.startswith(f"{path}: ")
    assert peak < 64 * 1024 * 1024, f"refusing {name} took {peak / 1e6:.0f} MB"


def test_moderate_anchors_and_aliases_still_work(tmp_path: Path) -> None:
    path = tmp_path / "anchors.yaml"
    path.write_text(textwrap.dedent("""\
        apiVersion: mlvisor.dev/v1alpha1
        kind: TrainingJob
        metadata: {name: a}
        spec:
          dataset: {builtin: iris}
          estimator: {class: sklearn.tree.DecisionTreeClassifier}
          supervision: &sup {maxRestarts: 2, periodSeconds: 30}
        ---
        apiVersion: mlvisor.dev/v1alpha1
        kind: TrainingJob
        metadata: {name: b}
        spec:
          dataset: {builtin: wine}
          estimator: {class: sklearn.tree.DecisionTreeClassifier}
          supervision:
            <<: *sup
            maxRestarts: 5
        """))
    # Anchors do not cross documents in YAML: the second document fails on its own alias.
    with pytest.raises(ResourceError, match="not valid YAML"):
        load_resources(path)
    path.write_text(path.read_text().split("---")[0] + "  search: &g {grid: {max_depth: [1, 2]}, cv: 3}\n")
    (resource,) = load_resources(path)
    assert resource.spec.supervision.max_restarts == 2 and resource.spec.search.cv == 3


def test_a_huge_file_is_refused_without_reading_it_whole(tmp_path: Path) -> None:
    path = tmp_path / "huge.yaml"
    with open(path, "wb") as f:
        f.write(job().encode())
        f.write(b"#" + b"x" * (64 * 1024 * 1024) + b"\n")  # 64 MiB of comment
    tracemalloc.start()
    try:
        with pytest.raises(ResourceError) as e:
            load_resources(path)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert e.value.problems == [
        f"{path}: larger than {MAX_FILE_BYTES} bytes (1024 KiB); a resource file holds a few resources: "
        "split it, or shrink the grid"
    ]
    assert peak < 4 * MAX_FILE_BYTES


def test_unknown_kinds_and_api_versions_are_named(tmp_path: Path) -> None:
    found = problems(tmp_path, "apiVersion: v1\nkind: Pod\nmetadata: {name: p}\n---\n"
                               + job().replace("mlvisor.dev/v1alpha1", "mlvisor.dev/v1"))
    assert any("(document 1): kind: expected one of TrainingJob, ModelServer, ModelPipeline, got 'Pod'" in p for p in found), found
    assert any("(document 2): apiVersion: expected mlvisor.dev/v1alpha1, got 'mlvisor.dev/v1'" in p for p in found)


def test_duplicate_names_and_duplicate_keys_are_errors(tmp_path: Path) -> None:
    found = problems(tmp_path, job(name="same") + "---\n" + job(name="same"))
    assert found == [f"{tmp_path / 'r.yaml'}: TrainingJob default/same is defined twice"]
    found = problems(tmp_path, job().replace("  dataset: {builtin: iris}\n",
                                             "  dataset: {builtin: iris}\n  dataset: {builtin: wine}\n"))
    assert found == [f"{tmp_path / 'r.yaml'}: line 6: key 'dataset' is given twice in the same mapping "
                     "(first on line 5); YAML would silently keep only the last"]


def test_an_integer_too_long_to_convert_is_a_clear_error(tmp_path: Path) -> None:
    found = problems(tmp_path, job(params="{n_estimators: " + "9" * 50_000 + "}"))
    assert len(found) == 1 and "not valid YAML" in found[0]
