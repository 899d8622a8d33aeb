"""Trainer: deterministic grid, sharding, shard results, resume and the select step (in process)."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from mlvisor import api
from mlvisor.trainer.artifact import read_metadata
from mlvisor.trainer.job import RunOptions, run
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.search import (
    TrialResult,
    collect_results,
    expand_grid,
    read_results,
    select_best,
    shard_owners,
    shard_path,
    shard_trials,
)

GRID = {"min_samples_leaf": [1, 8], "max_depth": [1, 2, None]}


@pytest.fixture(autouse=True)
def _no_pod_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Never write the real /dev/termination-log when the suite itself runs inside a pod."""
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "no-termination-log"))


def search_spec(workers: int = 1, grid: dict[str, list[Any]] | None = None, cv: int = 3
                ) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate({
        "dataset": {"builtin": "wine"},
        "estimator": {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"random_state": 0}},
        "search": {"grid": grid or GRID, "cv": cv},
        "workers": workers,
        "randomState": 7,
    })


def run_mode(out: Path, spec: api.TrainingJobSpec, **kw: Any) -> tuple[Path | None, list[dict[str, Any]]]:
    buf = io.StringIO()
    path = run(RunOptions(spec=spec, output=out, name="s", version="v1", **kw), EventLog(stream=buf))
    return path, [json.loads(line) for line in buf.getvalue().splitlines()]


def test_grid_expands_by_sorted_names_then_values_in_given_order() -> None:
    trials = expand_grid({"b": [3, 1], "a": ["x", "y"]})
    assert [t.params for t in trials] == [
        {"a": "x", "b": 3}, {"a": "x", "b": 1}, {"a": "y", "b": 3}, {"a": "y", "b": 1}]
    assert [t.index for t in trials] == [0, 1, 2, 3]


@given(st.integers(0, 300), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_shards_partition_the_trials_in_sizes_that_differ_by_at_most_one(n: int, workers: int, seed: int) -> None:
    trials = expand_grid({"a": list(range(n))}) if n else []
    shards = [shard_trials(trials, i, workers, seed) for i in range(workers)]
    indices = sorted(t.index for s in shards for t in s)
    assert indices == list(range(n))  # every trial exactly once
    sizes = [len(s) for s in shards]
    assert max(sizes) - min(sizes) <= 1, sizes
    assert shard_owners(n, workers, seed) == shard_owners(n, workers, seed)  # every pod and restart agrees


def test_the_split_depends_on_the_seed_and_is_pinned_for_one() -> None:
    # Pinned: a change here would make shards of a resumed search disagree across versions.
    assert shard_owners(6, 2, 0) == [1, 0, 1, 0, 1, 0]
    assert len({tuple(shard_owners(12, 2, seed)) for seed in range(20)}) > 1


def test_an_aligned_grid_no_longer_sends_every_costly_trial_to_one_shard() -> None:
    # bench/trainer_search.py's aligned grid: n_estimators (the cost) is the last name by sort
    # order, with 2 values, so with t % 2 shard 1 got every n_estimators=100 trial.
    grid = {"n_estimators": [50, 100], "max_depth": [8, 16, None], "max_features": ["sqrt", 0.3]}
    trials = expand_grid(grid)
    round_robin = [sum(t.params["n_estimators"] for t in trials if t.index % 2 == i) for i in range(2)]
    assert round_robin[0] != round_robin[1] and min(round_robin) == 50 * 6  # every costly trial on one shard
    imbalance = []
    for seed in range(200):
        cost = [sum(t.params["n_estimators"] for t in shard_trials(trials, i, 2, seed)) for i in range(2)]
        imbalance.append(abs(cost[0] - cost[1]) / sum(cost))
    assert sum(imbalance) / len(imbalance) < 0.5 * abs(round_robin[0] - round_robin[1]) / sum(round_robin)
    cost0 = [sum(t.params["n_estimators"] for t in shard_trials(trials, i, 2, 0)) for i in range(2)]
    assert abs(cost0[0] - cost0[1]) <= 100, cost0  # the default randomState: within one costly trial


def test_ties_go_to_the_lowest_trial_index() -> None:
    results = {i: TrialResult(i, {"a": i}, s, [s], 0.0)
               for i, s in enumerate([0.5, 0.9, float("nan"), 0.9])}
    assert select_best(results).index == 1


def test_two_shards_pick_the_same_best_params_as_one_process(tmp_path: Path) -> None:
    one, _ = run_mode(tmp_path / "one", search_spec(workers=1))
    # the two shards, each in its own "pod", then the select step
    for i in range(2):
        path, _ = run_mode(tmp_path / "two", search_spec(workers=2), worker_index=i, workers=2)
        assert path is None
    results_two = {**read_results(shard_path(tmp_path / "two", "v1", 0, 2)),
                   **read_results(shard_path(tmp_path / "two", "v1", 1, 2))}
    two, _ = run_mode(tmp_path / "two", search_spec(workers=2), select=True)
    assert one is not None and two is not None
    m1, m2 = read_metadata(one), read_metadata(two)
    assert m1.best_params == m2.best_params
    assert m1.metrics == m2.metrics
    assert m1.search is not None and m2.search is not None
    assert m1.search["best_trial"] == m2.search["best_trial"]
    assert m1.search["best_cv_score"] == m2.search["best_cv_score"]
    assert m2.search["trials"] == 6 and m2.search["workers"] == 2
    assert m1.params == {"random_state": 0, **(m1.best_params or {})}
    # every trial's score is identical whichever shard evaluated it
    assert sorted(results_two) == list(range(6))
    assert not (tmp_path / "two" / ".work").exists()  # cleaned up after the artifact


def test_the_search_agrees_with_sklearn_grid_search_cv(tmp_path: Path) -> None:
    from sklearn.datasets import load_wine
    from sklearn.model_selection import GridSearchCV, StratifiedKFold, train_test_split
    from sklearn.tree import DecisionTreeClassifier

    path, _ = run_mode(tmp_path, search_spec(workers=2))
    X, y = load_wine(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=7, stratify=y)
    gs = GridSearchCV(DecisionTreeClassifier(random_state=0), GRID, scoring="accuracy",
                      cv=StratifiedKFold(3, shuffle=True, random_state=7)).fit(X_train, y_train)
    meta = read_metadata(path)  # type: ignore[arg-type]
    assert meta.best_params == gs.best_params_
    assert meta.search is not None
    assert meta.search["best_cv_score"] == pytest.approx(gs.best_score_)


def test_a_restarted_shard_resumes_and_does_not_redo_finished_trials(tmp_path: Path) -> None:
    spec = search_spec(workers=2)
    _clean, _ = run_mode(tmp_path / "clean", spec, worker_index=0, workers=2)
    clean_results = read_results(shard_path(tmp_path / "clean", "v1", 0, 2))

    # a shard that died after its first trial, mid-way through writing the second line
    path = shard_path(tmp_path / "crashed", "v1", 0, 2)
    path.parent.mkdir(parents=True)
    mine = [t.index for t in shard_trials(expand_grid(GRID), 0, 2, spec.random_state)]
    assert len(mine) == 3 and sorted(clean_results) == mine
    first = clean_results[mine[0]]
    path.write_text(first.to_json() + "\n" + first.to_json()[:20])
    _, log = run_mode(tmp_path / "crashed", spec, worker_index=0, workers=2)
    evaluated = [e["trial"] for e in log if e["event"] == "trial"]
    assert evaluated == mine[1:]  # the shard's first trial was reused, not re-run
    assert next(e for e in log if e["event"] == "shard")["resumed"] == 1
    assert read_results(path) == clean_results
    lines = [json.loads(line) for line in path.read_text().splitlines()]  # the torn line was cut off, not kept
    assert [r["trial"] for r in lines if not r.get("started")] == mine  # one result per trial
    assert [r["trial"] for r in lines if r.get("started")] == mine[1:]  # a start line before each run


def test_select_refuses_to_run_with_a_missing_shard(tmp_path: Path) -> None:
    spec = search_spec(workers=2)
    run_mode(tmp_path, spec, worker_index=1, workers=2)
    with pytest.raises(RuntimeError, match=r"3 of 6 trials have no result .*shards \[0\] of 2"):
        run_mode(tmp_path, spec, select=True)


def test_select_is_a_crash_exit_1_not_invalid_spec(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import yaml

    from mlvisor.trainer.entry import main

    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(search_spec(workers=2).to_wire()))
    assert main(["--spec", str(f), "--output", str(tmp_path), "--select", "--version", "v9"]) == 1
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert last["event"] == "crash" and "6 of 6 trials have no result" in last["msg"]


def test_results_recorded_for_another_grid_are_not_reused(tmp_path: Path) -> None:
    run_mode(tmp_path, search_spec(workers=2), worker_index=0, workers=2)
    other = search_spec(workers=2, grid={"max_depth": [5, 6, 7, 8]})
    with pytest.raises(RuntimeError, match="belongs to a different spec with the same version"):
        run_mode(tmp_path, other, worker_index=0, workers=2)
    with pytest.raises(RuntimeError, match="belongs to a different spec"):
        collect_results(expand_grid(other.search.grid), tmp_path, "v1", 2, 0)  # type: ignore[union-attr,arg-type]


def test_the_log_tells_the_story_of_a_search(tmp_path: Path) -> None:
    _, log = run_mode(tmp_path, search_spec(workers=1, grid={"max_depth": [1, 3]}, cv=2))
    kinds = [e["event"] for e in log]
    assert kinds[:3] == ["dataset_loaded", "split", "shard"]
    assert kinds.count("fold") == 4 and kinds.count("trial") == 2
    assert kinds[-4:] == ["select", "refit", "metrics", "artifact_written"]
    trial = next(e for e in log if e["event"] == "trial")
    assert trial["msg"].startswith("trial #0: accuracy ")
    assert set(trial) >= {"ts", "level", "event", "msg", "trial", "params", "score"}
    assert any(e["event"] == "best_so_far" for e in log)


def test_the_score_is_the_scoring_the_search_maximised_and_the_other_metrics_stay(tmp_path: Path) -> None:
    from sklearn.metrics import f1_score

    from mlvisor.operator.local.view import table_lines
    from mlvisor.operator.plan import OperatorConfig
    from mlvisor.operator.planners.training import plan_training
    from mlvisor.trainer.artifact import load_artifact

    spec = search_spec(grid={"max_depth": [1, 3]})
    spec = spec.model_copy(update={"search": spec.search.model_copy(update={"scoring": "f1_macro"})})
    path, _ = run_mode(tmp_path, spec)
    assert path is not None
    meta = read_metadata(path)
    assert meta.score_name == "f1_macro"
    assert {"accuracy", "f1_macro", "roc_auc"} <= set(meta.metrics)
    # the held-out f1_macro of the refitted model, as sklearn computes it
    from mlvisor.trainer.job import prepare

    p = prepare(RunOptions(spec=spec, output=tmp_path, name="s", version="v1"), EventLog(stream=io.StringIO()))
    model = load_artifact(path).model
    assert meta.metrics["f1_macro"] == pytest.approx(f1_score(p.y_test, model.predict(p.X_test), average="macro"))

    # status.model.score and the table show it, named
    job = api.TrainingJob.model_validate({"metadata": {"name": "s", "uid": "u"}, "spec": spec.to_wire()})
    done = api.TrainingJobStatus(phase="Succeeded", version="v1", model=api.ModelInfo(uri="pvc://m/default/s/v1/", version="v1"))
    from mlvisor.operator.plan import ObservedPod
    from mlvisor.trainer.entry import success_summary

    select = ObservedPod(name="s-select-1", index=-1, phase="Succeeded", exit_code=0, message=success_summary(path))
    plan = plan_training(job.model_copy(update={"status": done}), [select], 1e9, OperatorConfig())
    model_info = plan.status.model
    assert model_info.score_name == "f1_macro" and model_info.score == meta.metrics["f1_macro"]
    assert model_info.metrics["accuracy"] == meta.metrics["accuracy"]
    assert f"f1_macro={meta.metrics['f1_macro']:.3f}" in table_lines({"TrainingJob/default/s": plan.status.to_wire()})[1]
