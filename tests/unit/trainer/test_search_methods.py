"""Trainer: Random and Bayesian searches, early stopping, retried trials, progress (in process)."""

from __future__ import annotations

import io
import json
import math
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from unit.trainer.test_search import run_mode

from mlvisor import api
from mlvisor.api.progress import ProgressReport
from mlvisor.trainer.artifact import read_metadata
from mlvisor.trainer.distributions import sample_params
from mlvisor.trainer.job import RunOptions, prepare, search_run
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.preflight import spec_problems
from mlvisor.trainer.progress import ProgressTracker
from mlvisor.trainer.search import (
    TRIALS_FILE,
    Trial,
    evaluate_trial,
    planned_trials,
    read_shard,
    shard_path,
    shard_trials,
)

DISTRIBUTIONS = {
    "max_depth": {"randint": {"low": 1, "high": 8}},
    "min_samples_leaf": {"randint": {"low": 1, "high": 20}},
    "criterion": {"choice": ["gini", "entropy"]},
}


@pytest.fixture(autouse=True)
def _no_pod_termination_log(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(tmp_path / "no-termination-log"))


def spec_of(method: str = "Random", workers: int = 1, n_trials: int = 8, cv: int = 3,
            distributions: dict[str, Any] | None = None, estimator: dict[str, Any] | None = None,
            dataset: str = "wine", **search: Any) -> api.TrainingJobSpec:
    return api.TrainingJobSpec.model_validate({
        "dataset": {"builtin": dataset},
        "estimator": estimator or {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"random_state": 0}},
        "search": {"method": method, "nTrials": n_trials, "cv": cv,
                   "distributions": distributions or DISTRIBUTIONS, **search},
        "workers": workers,
        "randomState": 7,
    })


def trials_of(artifact: Path) -> list[dict[str, Any]]:
    meta = read_metadata(artifact)
    assert meta.search is not None and meta.search["trials_file"] == TRIALS_FILE
    return [json.loads(line) for line in (artifact / TRIALS_FILE).read_text().splitlines()]


# --------------------------------------------------------------------------- Random


def test_random_trials_are_fixed_by_random_state_and_stay_inside_their_distributions() -> None:
    dists = {k: api.Distribution.model_validate(v) for k, v in {
        "a": {"randint": {"low": 3, "high": 5}}, "b": {"uniform": {"low": -1, "high": 2}},
        "c": {"loguniform": {"low": 1e-4, "high": 1e2}}, "d": {"choice": [None, "x", {"class": "k"}]},
    }.items()}
    drawn = sample_params(dists, 200, seed=11)
    assert drawn == sample_params(dists, 200, seed=11)  # every shard and restart sees the same trials
    assert drawn != sample_params(dists, 200, seed=12)
    assert {p["a"] for p in drawn} == {3, 4}  # high is exclusive, as scipy's randint
    assert all(type(p["a"]) is int and type(p["b"]) is float for p in drawn)
    assert all(-1 <= p["b"] < 2 and 1e-4 <= p["c"] < 1e2 for p in drawn)
    logs = [math.log10(p["c"]) for p in drawn]
    assert sum(1 for x in logs if x < -1) > 40  # spread on a log scale: 3 of 6 decades below 0.1
    assert {json.dumps(p["d"]) for p in drawn} == {"null", '"x"', '{"class": "k"}'}
    assert json.loads(json.dumps(drawn)) == drawn  # what a shard file records reads back equal


def test_a_random_search_over_two_workers_picks_the_same_best_trial_as_one_process(tmp_path: Path) -> None:
    one, _ = run_mode(tmp_path / "one", spec_of(workers=1))
    for i in range(2):
        path, _ = run_mode(tmp_path / "two", spec_of(workers=2), worker_index=i, workers=2)
        assert path is None
    two, _ = run_mode(tmp_path / "two", spec_of(workers=2), select=True, workers=2)
    assert one is not None and two is not None
    m1, m2 = read_metadata(one), read_metadata(two)
    assert m1.search is not None and m2.search is not None
    assert m1.best_params == m2.best_params and m1.metrics == m2.metrics
    assert m1.search["best_trial"] == m2.search["best_trial"]
    assert m1.search["best_cv_score"] == m2.search["best_cv_score"]
    t1, t2 = trials_of(one), trials_of(two)
    strip = [{k: v for k, v in t.items() if k not in ("seconds", "worker")} for t in t1]
    assert strip == [{k: v for k, v in t.items() if k not in ("seconds", "worker")} for t in t2]
    assert {t["worker"] for t in t2} == {0, 1} and len(t2) == 8
    assert m2.search["method"] == "Random" and m2.search["trials"] == 8
    best = max(t1, key=lambda t: (t["score"], -t["trial"]))
    assert best["trial"] == m1.search["best_trial"] and best["params"] == m1.best_params


def test_random_agrees_with_sklearn_randomized_search_cv(tmp_path: Path) -> None:
    from scipy import stats
    from sklearn.datasets import load_wine
    from sklearn.model_selection import RandomizedSearchCV, StratifiedKFold, train_test_split
    from sklearn.tree import DecisionTreeClassifier

    path, _ = run_mode(tmp_path, spec_of(workers=2))
    X, y = load_wine(return_X_y=True)
    X_train, _, y_train, _ = train_test_split(X, y, test_size=0.2, random_state=7, stratify=y)
    rs = RandomizedSearchCV(
        DecisionTreeClassifier(random_state=0),
        {"criterion": ["gini", "entropy"], "max_depth": stats.randint(1, 8), "min_samples_leaf": stats.randint(1, 20)},
        n_iter=8, random_state=7, cv=StratifiedKFold(3, shuffle=True, random_state=7)).fit(X_train, y_train)
    meta = read_metadata(path)  # type: ignore[arg-type]
    assert meta.best_params == rs.best_params_
    assert meta.search is not None and meta.search["best_cv_score"] == pytest.approx(rs.best_score_)


# --------------------------------------------------------------------------- early stopping


SLOW_AND_BAD = {  # SVC on digits: a large gamma is both slow and hopeless, the case early stopping is for
    "C": {"loguniform": {"low": 0.01, "high": 100}},
    "gamma": {"loguniform": {"low": 1e-5, "high": 1}},
}


def test_early_stopping_stops_hopeless_trials_the_same_way_whatever_the_cpus_and_restarts(tmp_path: Path) -> None:
    spec = spec_of(n_trials=14, cv=4, distributions=SLOW_AND_BAD, estimator={"class": "sklearn.svm.SVC"},
                   dataset="digits", earlyStopping={"type": "Median", "minTrials": 3})
    path, log = run_mode(tmp_path / "a", spec)
    trials = trials_of(path)  # type: ignore[arg-type]
    pruned = [t for t in trials if t["state"] == "pruned"]
    assert pruned, "no trial was stopped early"
    assert all(len(t["fold_scores"]) < 4 for t in pruned)
    assert all(len(t["fold_scores"]) == 4 for t in trials if t["state"] == "complete")
    meta = read_metadata(path)  # type: ignore[arg-type]
    best = max((t for t in trials if t["state"] == "complete"), key=lambda t: t["score"])
    assert meta.search is not None and meta.search["best_trial"] == best["trial"]
    assert meta.search["trials_pruned"] == len(pruned)
    assert any(e["event"] == "progress" and "stopped early" in e["msg"] for e in log)

    # two CPUs: folds run two at a time, and the decisions are the same
    path2, _ = run_mode(tmp_path / "b", spec, n_jobs=2)
    again = trials_of(path2)  # type: ignore[arg-type]
    assert [(t["trial"], t["state"], t["fold_scores"]) for t in again] == \
           [(t["trial"], t["state"], t["fold_scores"]) for t in trials]

    # a shard that died after 5 trials resumes and decides exactly as before
    (tmp_path / "c").mkdir()
    spec1 = spec.model_copy(update={"workers": 1})
    run_mode(tmp_path / "clean", spec1, worker_index=0, workers=1)
    clean = shard_path(tmp_path / "clean", "v1", 0, 1).read_text().splitlines()
    cut = shard_path(tmp_path / "c", "v1", 0, 1)
    cut.parent.mkdir(parents=True)
    cut.write_text("\n".join(clean[:10]) + "\n")  # start + result of the first 5 trials
    _, log = run_mode(tmp_path / "c", spec1, worker_index=0, workers=1)
    assert next(e for e in log if e["event"] == "shard")["resumed"] == 5
    assert read_shard(cut)[0] == read_shard(shard_path(tmp_path / "clean", "v1", 0, 1))[0]


def test_successive_halving_keeps_the_best_fraction_at_each_rung(tmp_path: Path) -> None:
    spec = spec_of(n_trials=12, cv=5, distributions=SLOW_AND_BAD, estimator={"class": "sklearn.svm.SVC"},
                   dataset="digits", earlyStopping={"type": "SuccessiveHalving", "minFolds": 1, "reductionFactor": 3})
    path, _ = run_mode(tmp_path, spec)
    trials = trials_of(path)  # type: ignore[arg-type]
    stopped_at = sorted({len(t["fold_scores"]) for t in trials if t["state"] == "pruned"})
    assert stopped_at and set(stopped_at) <= {1, 3}  # rungs at folds 1 and 3 (1 x 3^k)
    assert any(t["state"] == "complete" for t in trials)


# --------------------------------------------------------------------------- retries (Grid and Random)


def test_a_trial_in_flight_when_its_worker_died_runs_again_once_then_is_recorded_failed(tmp_path: Path) -> None:
    spec = spec_of(workers=1, n_trials=4)
    trials = planned_trials(spec.search, spec.random_state)  # type: ignore[arg-type]
    mine = shard_trials(trials, 0, 1, spec.random_state)
    path = shard_path(tmp_path, "v1", 0, 1)
    path.parent.mkdir(parents=True)
    # the first trial was started by two attempts that both died; the second by one
    path.write_text("".join(json.dumps({"trial": t.index, "started": True}) + "\n"
                            for t in (mine[0], mine[0], mine[1])))
    _, log = run_mode(tmp_path, spec, worker_index=0, workers=1)
    results, starts = read_shard(path)
    assert results[mine[0].index].state == "failed" and results[mine[0].index].fold_scores == []
    assert results[mine[1].index].state == "complete" and results[mine[1].index].retried
    assert not results[mine[2].index].retried
    assert starts[mine[0].index] == 2  # not started a third time
    events = [(e["event"], e.get("trial")) for e in log]
    assert ("trial_failed", mine[0].index) in events and ("trial_retried", mine[1].index) in events
    path2, _ = run_mode(tmp_path, spec, select=True, workers=1)
    meta = read_metadata(path2)  # type: ignore[arg-type]
    assert meta.search is not None and meta.search["trials_failed"] == 1 and meta.search["trials_retried"] == 2
    assert meta.search["best_trial"] != mine[0].index


# --------------------------------------------------------------------------- Bayesian


def bayes_spec(workers: int = 2, n_trials: int = 10, **search: Any) -> api.TrainingJobSpec:
    return spec_of("Bayesian", workers=workers, n_trials=n_trials, **search)


def study_of(out: Path, spec: api.TrainingJobSpec) -> Any:
    from mlvisor.trainer.bayes import open_study

    return open_study(out, "v1", spec.search)  # type: ignore[arg-type]


def test_a_bayesian_search_runs_exactly_n_trials_and_selects_the_best(tmp_path: Path) -> None:
    spec = bayes_spec()
    for i in range(2):
        assert run_mode(tmp_path, spec, worker_index=i, workers=2)[0] is None
    from mlvisor.trainer.bayes import counts

    study = study_of(tmp_path, spec)
    assert sum(counts(t) for t in study.get_trials()) == 10
    path, _ = run_mode(tmp_path, spec, select=True, workers=2)
    trials = trials_of(path)  # type: ignore[arg-type]
    assert [t["trial"] for t in trials] == list(range(10)) and all(t["state"] == "complete" for t in trials)
    assert all(t["worker"] == 0 for t in trials)  # worker 0 ran them all; worker 1 found the study full
    best = max(trials, key=lambda t: (t["score"], -t["trial"]))
    meta = read_metadata(path)  # type: ignore[arg-type]
    assert meta.best_params == best["params"] and meta.search["best_trial"] == best["trial"]  # type: ignore[index]
    assert all(1 <= t["params"]["max_depth"] < 8 and t["params"]["criterion"] in ("gini", "entropy") for t in trials)
    assert not (tmp_path / ".work").exists()


def test_a_bayesian_trial_in_flight_when_its_worker_died_is_retried_once(tmp_path: Path) -> None:
    """The worker's death is simulated: trials left RUNNING in its name, as a SIGKILL leaves them
    (tests/local/test_search_workers.py kills a real process)."""
    from optuna.trial import TrialState

    from mlvisor.trainer.bayes import counts
    from mlvisor.trainer.distributions import suggest

    spec = bayes_spec(n_trials=6)
    study = study_of(tmp_path, spec)
    dists = spec.search.distributions  # type: ignore[union-attr]
    dead = study.ask()
    dead.set_user_attr("worker", 1)
    params = {n: suggest(dead, n, d) for n, d in sorted(dists.items())}  # type: ignore[union-attr]
    claim = study.ask()  # a claim that died inside the lock: never ran
    _, log = run_mode(tmp_path, spec, worker_index=1, workers=2)
    trials = study_of(tmp_path, spec).get_trials()
    assert trials[dead.number].user_attrs.get("interrupted") and trials[dead.number].state == TrialState.FAIL
    assert trials[claim.number].user_attrs.get("abandoned")
    retries = [t for t in trials if t.user_attrs.get("retry_of") == dead.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    from mlvisor.trainer.bayes import _params

    assert _params(retries[0], spec.search) == params  # type: ignore[arg-type]
    assert sum(counts(t) for t in trials) == 6
    assert any(e["event"] == "trial_retried" and e["trial"] == dead.number for e in log)

    path, _ = run_mode(tmp_path, spec, select=True, workers=2)
    records = trials_of(path)  # type: ignore[arg-type]
    states = [r["state"] for r in records]
    assert states.count("interrupted") == 1 and states.count("abandoned") == 1
    assert sum(s in ("complete", "pruned", "failed") for s in states) == 6
    assert next(r for r in records if r.get("retry_of") == dead.number)["retried"]


def test_a_bayesian_retry_that_dies_again_is_recorded_failed_and_counted(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    from mlvisor.trainer.bayes import counts

    spec = bayes_spec(n_trials=4)
    study = study_of(tmp_path, spec)
    study.enqueue_trial({"criterion": '"gini"', "max_depth": 3, "min_samples_leaf": 2}, user_attrs={"retry_of": 99})
    retry = study.ask()
    retry.set_user_attr("worker", 1)
    assert retry.params == {} and retry.user_attrs["retry_of"] == 99
    run_mode(tmp_path, spec, worker_index=1, workers=2)
    trials = study_of(tmp_path, spec).get_trials()
    assert trials[retry.number].state == TrialState.FAIL and trials[retry.number].user_attrs.get("gave_up")
    assert not any(t.user_attrs.get("retry_of") == retry.number for t in trials)
    assert sum(counts(t) for t in trials) == 4 and len(trials) == 4


# --------------------------------------------------------------------------- checks, CPUs, progress


def test_distribution_bounds_are_judged_by_scikit_learns_own_constraints() -> None:
    spec = spec_of(distributions={
        "max_depth": {"uniform": {"low": 1, "high": 8}},  # an int parameter
        "min_samples_split": {"uniform": {"low": 0.5, "high": 1.5}},  # a fraction must be <= 1
        "min_samples_leaf": {"randint": {"low": 0, "high": 5}},  # at least 1
        "max_dept": {"choice": [1]},
        "splitter": {"choice": ["best", "worst"]},
    })
    problems = spec_problems(spec)
    text = "\n".join(problems)
    assert ("spec.search.distributions.max_depth.uniform draws real numbers, but The 'max_depth' parameter of "
            "DecisionTreeClassifier must be an int") in text and "use {randint: {low, high}}" in text
    assert "spec.search.distributions.min_samples_split.uniform.high value 1.5" in text
    assert "spec.search.distributions.min_samples_split.uniform.low" not in text
    assert "spec.search.distributions.min_samples_leaf.randint.low value 0" in text
    assert "spec.search.distributions.max_dept is not a parameter" in text and "did you mean 'max_depth'" in text
    assert "spec.search.distributions.splitter.choice value 'worst'" in text
    assert len(problems) == 5, problems  # max_depth once, not once per bound
    assert spec_problems(spec_of()) == []


def test_folds_on_two_cpus_score_exactly_as_on_one() -> None:
    spec = spec_of()
    p = prepare(RunOptions(spec=spec, output=Path("."), name="s", version="v1"), EventLog(stream=io.StringIO()))
    trial = Trial(0, {"max_depth": 3, "min_samples_leaf": 2, "criterion": "gini"})
    args = (p.recipe, trial, p.X_train, p.y_train, "accuracy", 3, 7, EventLog(stream=io.StringIO()), None)
    assert evaluate_trial(*args, n_jobs=2).fold_scores == evaluate_trial(*args, n_jobs=1).fold_scores


def test_a_worker_serves_its_progress_and_leaves_its_final_report_as_termination_message(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import yaml

    from mlvisor.trainer.entry import main

    seen: list[ProgressReport] = []
    tracker = ProgressTracker(EventLog(stream=io.StringIO()), total=4, worker=0)
    tracker.serve("127.0.0.1", 0)
    try:
        spec = spec_of(workers=2)
        opts = RunOptions(spec=spec, output=tmp_path, name="s", version="v1", worker_index=0, workers=2)
        sr = search_run(opts, prepare(opts, EventLog(stream=io.StringIO())), 2, EventLog(stream=io.StringIO()), tracker)

        def poll(_n: int) -> None:
            with urllib.request.urlopen(f"http://127.0.0.1:{tracker.port}/progress", timeout=5) as r:
                seen.append(ProgressReport.from_message(r.read()))  # type: ignore[arg-type]

        sr.after_trial = poll
        from mlvisor.trainer.search import run_shard

        run_shard(sr, 0)
    finally:
        tracker.close()
    assert [r.trials_done for r in seen] == [1, 2, 3, 4] and all(r.trials_total == 4 for r in seen)
    assert all(r.worker == 0 and r.top for r in seen) and seen[-1].eta_seconds == 0

    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    f = tmp_path / "job.yaml"
    f.write_text(yaml.safe_dump(spec.to_wire()))
    assert main(["--spec", str(f), "--output", str(tmp_path / "o"), "--worker-index", "1", "--workers", "2",
                 "--version", "v1"]) == 0
    final = ProgressReport.from_message(term.read_text())
    assert final is not None and final.finished and final.worker == 1 and final.trials_done == final.trials_total == 4
    assert final.top[0].score == max(t.score for t in final.top)
