"""Resource files for `mlvisor validate` / `mlvisor run`: every problem listed, untrusted input bounded.

`validate` must say everything it can (issue 15): the class, its parameters with did-you-mean,
parameter values through scikit-learn's own constraints, grid keys, scorer names, CSV file and
target column, each with the field, the value and what was expected, all of them at once.

A resource file is untrusted input (issue 11): a YAML bomb (billion laughs, deep aliases),
deep nesting, a huge file, unknown kinds and duplicate names each get a clear error, at a
bounded cost; a key given twice is kept last, as kubectl keeps it, with a note. Memory is checked with tracemalloc (deterministic, unlike
time; times are in docs/reliability.md, measured by bench/resource_files.py).
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import tracemalloc
from pathlib import Path

import pytest

from helpers.resource_bombs import BOMBS
from mlvisor.api.documents import MAX_DEPTH, MAX_EXPANDED_NODES, MAX_FILE_BYTES
from mlvisor.api.problems import ResourceError
from mlvisor.operator.resources_cli import load_resources

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


def test_an_alias_of_a_node_first_reached_through_an_earlier_parent_is_read() -> None:
    """PyYAML writes the generated CRDs' shared defaults so: an anchor nested under one key, its
    alias under a later, shallower one (the old size count crashed on it with a KeyError)."""
    from mlvisor.api.documents import parse_documents

    assert parse_documents("b: {c: &x {k: 1}}\na: *x\n", "t") == [{"b": {"c": {"k": 1}}, "a": {"k": 1}}]
    recursive = "a: &x [1, *x]\n"
    with pytest.raises(ResourceError):
        parse_documents(recursive, "t")


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
    found = problems(tmp_path, "apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJb\nmetadata: {name: p}\n---\n"
                               + job().replace("mlvisor.dev/v1alpha1", "mlvisor.dev/v1"))
    assert any("(document 1): kind: expected one of TrainingJob, ModelServer, ModelPipeline, got 'TrainingJb' "
               "(did you mean 'TrainingJob'?)" in p for p in found), found
    assert any("(document 2): apiVersion: expected mlvisor.dev/v1alpha1, got 'mlvisor.dev/v1'" in p for p in found)


def test_duplicate_names_are_errors_and_a_duplicate_key_is_kept_last_with_a_note(tmp_path: Path) -> None:
    found = problems(tmp_path, job(name="same") + "---\n" + job(name="same"))
    assert found == [f"{tmp_path / 'r.yaml'}: TrainingJob default/same is defined twice"]
    # kubectl 1.33 applies a mapping with a key given twice, keeping the last: so does mlvisor,
    # and says so (validate prints the note).
    path = tmp_path / "twice.yaml"
    path.write_text(job().replace("  dataset: {builtin: iris}\n", "  dataset: {builtin: iris}\n  dataset: {builtin: wine}\n"))
    notes: list[str] = []
    (resource,) = load_resources(path, notes=notes)
    assert resource.spec.dataset.builtin == "wine"
    assert notes == [f"{path}: line 6: spec.dataset is given twice in the same mapping (first on line 5); "
                     "kubectl keeps only the last"]
    run = validate(str(path))
    assert run.returncode == 0 and f"note: {notes[0]}" in run.stderr


def test_an_integer_too_long_for_a_float_is_text_as_kubectl_reads_it(tmp_path: Path) -> None:
    # go-yaml finds no int64, uint64 or finite float64 in 50,000 nines, so the value is a string.
    found = problems(tmp_path, job(params="{n_estimators: " + "9" * 50_000 + "}"))
    assert len(found) == 1 and "spec.estimator.params.n_estimators: The 'n_estimators' parameter" in found[0]
    assert "must be an int" in found[0]


# ----------------------------------------------------------------------------- folders, kustomize, other kinds
def test_the_projects_manifests_and_samples_validate(tmp_path: Path) -> None:
    from helpers.paths import REPO

    samples = sorted(str(p) for p in (REPO / "manifests" / "samples").glob("*.yaml"))
    for args in (samples, [str(REPO / "manifests" / "samples")], [str(REPO / "manifests")]):
        r = validate(*args)
        assert r.returncode == 0, r.stderr
        assert all(line.startswith("note: ") for line in r.stderr.splitlines()), r.stderr
    r = validate(str(REPO / "manifests" / "samples"))
    assert "iris-hpa.yaml: HorizontalPodAutoscaler iris (autoscaling/v2) is not an mlvisor kind: skipped" in r.stderr
    assert sum(line.endswith(" is valid") for line in r.stdout.splitlines()) == 12
    r = validate(str(REPO / "manifests"))
    assert "CustomResourceDefinition trainingjobs.mlvisor.dev (apiextensions.k8s.io/v1) is not an mlvisor kind" in r.stderr
    assert "Namespace mlvisor-system (v1) is not an mlvisor kind: skipped" in r.stderr
    assert ("a kustomize tree: read what kustomization.yaml lists; 8 other file(s) under it are not part of it "
            "and were not read (samples/iris-hpa.yaml, samples/iris.yaml") in r.stderr


def test_reading_a_kustomize_tree_ourselves_gives_what_kubectl_kustomize_gives() -> None:
    """The differential that makes reading `resources:` ourselves sound: same documents, same order."""
    import shutil

    from helpers.paths import REPO
    from mlvisor.api.documents import parse_documents
    from mlvisor.operator.resources_cli import _kustomization

    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH: nothing to compare with")
    manifests = REPO / "manifests"
    problems: list[str] = []
    ours = [d for s in _kustomization(manifests, problems, frozenset()) for d in parse_documents(s.path.read_text(), "x")]
    assert problems == []
    done = subprocess.run(["kubectl", "kustomize", str(manifests)], capture_output=True, text=True, timeout=60, check=True)
    theirs = parse_documents(done.stdout, "kubectl kustomize")

    def key(d: dict) -> tuple[str, str, str]:
        return (d["kind"], d["metadata"].get("namespace", ""), d["metadata"]["name"])

    # kustomize sorts its output (legacy order: Namespaces and CRDs first); the set and each document must agree
    assert sorted(map(key, ours)) == sorted(map(key, theirs))
    by_key = {key(d): d for d in theirs}
    for d in ours:
        assert d == by_key[key(d)], key(d)


KUSTOMIZED = """\
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
  - job.yaml
  - more/
"""


def _tree(root: Path, kustomization: str = KUSTOMIZED) -> Path:
    (root / "more").mkdir(parents=True)
    (root / "kustomization.yaml").write_text(kustomization)
    (root / "job.yaml").write_text(job(name="a"))
    (root / "more" / "kustomization.yaml").write_text("resources: [server.yaml, ns.yaml]\n")
    (root / "more" / "ns.yaml").write_text("apiVersion: v1\nkind: Namespace\nmetadata: {name: ml}\n")
    (root / "more" / "server.yaml").write_text(
        "apiVersion: mlvisor.dev/v1alpha1\nkind: ModelServer\nmetadata: {name: a}\n"
        "spec: {model: {trainingJobRef: {name: a}}}\n")
    (root / "unlisted.yaml").write_text(job(name="b", cls="os.system"))
    return root


def test_a_kustomize_tree_is_read_as_its_kustomizations_list_it(tmp_path: Path) -> None:
    from mlvisor.operator.resources_cli import load_paths

    root = _tree(tmp_path / "k")
    loaded = load_paths([root])
    assert loaded.problems == []
    assert [(f.source, f.resource.kind) for f in loaded.found] == [
        (str(root / "job.yaml"), "TrainingJob"), (str(root / "more" / "server.yaml"), "ModelServer")]
    assert loaded.notes == [
        f"{root}: a kustomize tree: read what kustomization.yaml lists; 1 other file(s) under it are not part of "
        "it and were not read (unlisted.yaml): name them to check them",
        f"{root / 'more' / 'ns.yaml'}: Namespace ml (v1) is not an mlvisor kind: skipped",
    ]
    (root / "kustomization.yaml").write_text(KUSTOMIZED + "  - gone.yaml\n  - ../outside.yaml\n")
    (tmp_path / "outside.yaml").write_text(job(name="c"))
    assert load_paths([root]).problems == [
        f"{root / 'kustomization.yaml'}: resources: 'gone.yaml' does not exist",
        f"{root / 'kustomization.yaml'}: resources: '../outside.yaml' is not in or below {root}; kustomize takes "
        "files only from the kustomization's own folder (a folder with its own kustomization may be elsewhere)",
    ]


def test_a_kustomization_that_transforms_is_rendered_by_kubectl_or_named(tmp_path: Path,
                                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    import shutil

    from mlvisor.operator.resources_cli import load_paths

    root = _tree(tmp_path / "k", KUSTOMIZED + "namePrefix: dev-\n")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))  # no kubectl
    loaded = load_paths([root])
    assert loaded.found == [] and loaded.problems == [
        f"{root / 'kustomization.yaml'}: uses namePrefix, which mlvisor does not apply itself; it asks `kubectl "
        f"kustomize` when kubectl is on PATH: install kubectl, or check the output: kubectl kustomize {root} > "
        "all.yaml && mlvisor validate all.yaml"]
    monkeypatch.undo()
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not on PATH")
    loaded = load_paths([root])
    assert loaded.problems == []
    assert sorted((f.source, f.resource.metadata.name) for f in loaded.found) == [
        (f"{root} (kubectl kustomize)", "dev-a"), (f"{root} (kubectl kustomize)", "dev-a")]


def test_a_folder_is_read_recursively_in_sorted_order_and_every_problem_listed(tmp_path: Path) -> None:
    (tmp_path / "b").mkdir()
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b" / "2.yml").write_text(job(name="two", params="{n_estimator: 3}"))
    (tmp_path / "a.yaml").write_text(job(name="one"))
    (tmp_path / "c.json").write_text('{"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "x"}}')
    (tmp_path / "notes.txt").write_text("not a resource")
    (tmp_path / ".hidden" / "x.yaml").write_text("broken: [")
    (tmp_path / "b" / "dup.yaml").write_text(job(name="one"))
    r = validate(str(tmp_path))
    assert r.returncode == 1
    assert r.stdout.splitlines() == [
        f"{tmp_path / 'a.yaml'}: TrainingJob default/one is valid",
        f"{tmp_path / 'b' / 'dup.yaml'}: TrainingJob default/one is valid",
    ]
    lines = r.stderr.splitlines()
    assert lines == [
        f"note: {tmp_path / 'c.json'}: ConfigMap x (v1) is not an mlvisor kind: skipped",
        f"{tmp_path / 'b' / '2.yml'}: TrainingJob two: spec.estimator.params.n_estimator is not a parameter of "
        + lines[1].split("is not a parameter of ", 1)[1],
        f"{tmp_path / 'b' / 'dup.yaml'}: TrainingJob default/one is defined twice (also in {tmp_path / 'a.yaml'})",
    ]
    assert "(did you mean 'n_estimators'?)" in r.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    r = validate(str(empty))
    assert r.returncode == 1 and r.stderr == f"{empty}: no *.yaml, *.yml, *.json file in this folder\n"


def test_a_pipelines_training_is_judged_like_a_job_with_its_fields_under_spec_training(tmp_path: Path) -> None:
    pipeline = """\
apiVersion: mlvisor.dev/v1alpha1
kind: ModelPipeline
metadata: {name: p}
spec:
  training:
    dataset: {builtin: diabetes}
    estimator: {class: sklearn.ensemble.RandomForestClassifier, params: {n_estimator: 3}}
"""
    found = problems(tmp_path, pipeline)
    assert found[0] == (f"{tmp_path / 'r.yaml'}: ModelPipeline p: spec.training.estimator.params.n_estimator is not "
                        "a parameter of sklearn.ensemble.RandomForestClassifier (did you mean 'n_estimators'?); valid "
                        "parameters: " + found[0].split("valid parameters: ")[1])
    assert found[1].startswith(f"{tmp_path / 'r.yaml'}: ModelPipeline p: the target looks continuous: 214 distinct values")
    assert len(found) == 2
    # a schema error elsewhere does not hide them
    found = problems(tmp_path, pipeline + "  runHistoryLimit: 0\n")
    assert len(found) == 3 and "spec.runHistoryLimit: Input should be greater than or equal to 1 (got 0)" in found[0]
    # a pipeline's CSV file is read at each run, not now: a missing file is no reason to refuse it
    ok = pipeline.replace("{builtin: diabetes}", "{csv: {path: nope.csv, target: price}}").replace("n_estimator:", "n_estimators:")
    (tmp_path / "ok.yaml").write_text(ok)
    assert validate(str(tmp_path / "ok.yaml"), "--data-dir", str(tmp_path)).returncode == 0


def test_a_document_with_schema_errors_is_still_judged_on_its_valid_parts(tmp_path: Path) -> None:
    data = tmp_path / "data" / "volumes" / "mlvisor-models"
    data.mkdir(parents=True)
    (data / "houses.csv").write_text("rooms,area,price\n3,70,cheap\n4,90,dear\n")
    text = job(cls="sklearn.linear_model.Ridge", params="{alfa: 1}",
               dataset="{csv: {path: houses.csv, target: price}}", extra="  testSize: 0\n  workers: 2\n")
    found = problems(tmp_path, text, data_dir=tmp_path / "data")
    words = [p.split("TrainingJob j: ", 1)[1] for p in found]
    assert words[:2] == ["spec.testSize: Input should be greater than 0 (got 0)",
                         "spec.workers: spec.workers must be 1 without spec.search: only a search's trials can be "
                         "spread over workers"]
    assert words[2].startswith("spec.estimator.params.alfa is not a parameter of sklearn.linear_model.Ridge "
                               "(did you mean 'alpha'?)")
    assert words[3].startswith("target column 'price' holds 'cheap', which is not a number")
    assert len(words) == 4


def test_validate_also_refuses_what_only_the_operator_refuses(tmp_path: Path) -> None:
    """The operator's own limits (a grid too large to finish, a pipeline name a Service cannot take)
    are refused by validate too, in the planner's words: its InvalidSpec condition is the same text."""
    import yaml

    from mlvisor import api
    from mlvisor.operator.plan import OperatorConfig
    from mlvisor.operator.planners.pipeline import plan_pipeline
    from mlvisor.operator.planners.training import plan_training

    grid = {name: list(range(2, 12)) for name in ("max_depth", "min_samples_split", "max_leaf_nodes", "random_state")}
    grid["min_samples_leaf"] = list(range(1, 21))  # 10**4 * 20 = 200,000 trials
    doc = {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "big"},
           "spec": {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"},
                    "search": {"grid": grid}}}
    found = problems(tmp_path, yaml.safe_dump(doc))
    tj = api.TrainingJob.model_validate({**doc, "metadata": {"name": "big", "uid": "u", "generation": 1}})
    condition = next(c for c in plan_training(tj, [], 1e9, OperatorConfig()).status.conditions if c.type == "Failed")
    assert found == [f"{tmp_path / 'r.yaml'}: TrainingJob big: {condition.message}"]
    assert "spec.search.grid has 200000 parameter combinations; at most 100000 are allowed" in condition.message

    pipeline = {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "ModelPipeline", "metadata": {"name": "9p"},
                "spec": {"training": {"dataset": {"builtin": "iris"},
                                      "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}}}}
    found = problems(tmp_path, yaml.safe_dump(pipeline))
    mp = api.ModelPipeline.model_validate({**pipeline, "metadata": {"name": "9p", "uid": "u", "generation": 1}})
    condition = next(c for c in plan_pipeline(mp, [], 1e9, OperatorConfig()).status.conditions if c.type == "Failed")
    assert found == [f"{tmp_path / 'r.yaml'}: ModelPipeline 9p: {condition.message}"]
    assert condition.message.startswith("metadata.name '9p' must start with a letter")
