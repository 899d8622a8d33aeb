"""Benchmarks of the search methods: Bayesian vs Random, early stopping, CPUs per worker.

Every run is the trainer itself (``mlvisor.trainer.job.run``, one process, as ``mlvisor
train`` runs a job), and every figure is read from the artifact it writes (trials.jsonl and
metadata.json), so what is measured is what users get.

    python bench/search_methods.py bayes   # Bayesian vs Random: trials to reach Random's best, 8 seeds (~3 min)
    python bench/search_methods.py early   # early stopping: fold fits and time saved, best score kept (~6 min)
    python bench/search_methods.py cpus    # cross-validation folds on 1 vs 2 CPUs (~3 min)
    python bench/search_methods.py all --seeds 3

Bayesian vs Random searches an SVR on diabetes (a regression scored by r2, a continuous
score, whose good region is a narrow ridge in C, gamma and epsilon on log scales). Early
stopping and CPUs use scikit-learn's classic SVC on digits (1,797 rows, 64 features), C and
gamma on log scales: good trials (gamma around 1e-3) are cheap and score about 0.99, most of
the space is hopeless (gamma >= 0.05 scores about 0.1) and slow (every training point becomes
a support vector), which is what early stopping cuts short. (SVC on digits is a poor test of
a sampler: a broad plateau at 0.99 where one sample more or less right decides the "best".)
randomState varies per seed: it seeds the train/test split, the folds, Random's draws and TPE.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from mlvisor import api
from mlvisor.trainer.job import RunOptions, run
from mlvisor.trainer.logs import EventLog

SPACE = {
    "C": {"loguniform": {"low": 0.01, "high": 1000}},
    "gamma": {"loguniform": {"low": 1e-5, "high": 1.0}},
}


def spec(method: str, seed: int, n_trials: int, cv: int, early: dict[str, Any] | None = None,
         space: dict[str, Any] | None = None, estimator: dict[str, Any] | None = None,
         dataset: str = "digits") -> api.TrainingJobSpec:
    search: dict[str, Any] = {"method": method, "nTrials": n_trials, "cv": cv, "distributions": space or SPACE}
    if early:
        search["earlyStopping"] = early
    return api.TrainingJobSpec.model_validate({
        "dataset": {"builtin": dataset}, "estimator": estimator or {"class": "sklearn.svm.SVC"},
        "search": search, "randomState": seed})


def train(s: api.TrainingJobSpec, n_jobs: int = 1) -> tuple[list[dict[str, Any]], dict[str, Any], float, float]:
    """(trial records, metadata.search, wall seconds of the whole run, CPU seconds of this process and its children)."""
    with tempfile.TemporaryDirectory() as out:
        before = os.times()
        started = time.perf_counter()
        path = run(RunOptions(spec=s, output=Path(out), name="bench", version="v1", n_jobs=n_jobs),
                   EventLog(stream=io.StringIO()))
        wall = time.perf_counter() - started
        after = os.times()
        assert path is not None
        records = [json.loads(line) for line in (path / "trials.jsonl").read_text().splitlines()]
        meta = json.loads((path / "metadata.json").read_text())
    cpu = sum(after[:4]) - sum(before[:4])
    return records, meta["search"], wall, cpu


def machine() -> str:
    load = os.getloadavg()[0]
    return (f"{platform.node()}: {os.cpu_count()} vCPU, Python {platform.python_version()}, "
            f"1-minute load average {load:.1f} when the table was printed")


# --------------------------------------------------------------------------- Bayesian vs Random


def trials_to_reach(scores: list[float], target: float) -> int | None:
    best = float("-inf")
    for n, s in enumerate(scores, start=1):
        best = max(best, s)
        if best >= target - 1e-12:
            return n
    return None


def best_after(scores: list[float], n: int) -> float:
    return max(scores[:n])


SVR_DIABETES = {
    "space": {"C": {"loguniform": {"low": 0.1, "high": 1e5}}, "gamma": {"loguniform": {"low": 1e-4, "high": 100}},
              "epsilon": {"loguniform": {"low": 0.01, "high": 100}}},
    "estimator": {"class": "sklearn.svm.SVR"},
    "dataset": "diabetes",
}


def bench_bayes(seeds: list[int], n_trials: int) -> None:
    rows = []
    curves: dict[str, list[list[float]]] = {"Random": [], "Bayesian": []}
    for seed in seeds:
        runs = {}
        for method in ("Random", "Bayesian"):
            records, search, wall, _ = train(spec(method, seed, n_trials, cv=3, **SVR_DIABETES))
            # Random's trials are independent draws, so trial order is a fair sequence; a
            # Bayesian trial's number is the order the sampler chose it in (one worker).
            ordered = sorted((r for r in records if r["state"] == "complete"), key=lambda r: r["trial"])
            runs[method] = ([r["score"] for r in ordered], search, wall)
            curves[method].append([best_after(runs[method][0], n) for n in range(1, n_trials + 1)])
        random_scores, bayes_scores = runs["Random"][0], runs["Bayesian"][0]
        target = max(random_scores)
        rows.append({
            "seed": seed, "random_best": target, "random_reach": trials_to_reach(random_scores, target),
            "bayes_best": max(bayes_scores), "bayes_reach": trials_to_reach(bayes_scores, target),
            "random_wall": runs["Random"][2], "bayes_wall": runs["Bayesian"][2],
        })
        print(f"seed {seed}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nBayesian (TPE) vs Random: SVR on diabetes (442 rows; r2), C, gamma and epsilon log-uniform over 6, 6 "
          f"and 4 decades, {n_trials} trials, 3-fold CV, one worker; {machine()}\n")
    print(f"| randomState | Random: best of {n_trials} (at trial) | Bayesian: best of {n_trials} | Bayesian: trials to reach "
          f"Random's best of {n_trials} | wall s Random / Bayesian |")
    print("|---|---|---|---|---|")
    for r in rows:
        reach = r["bayes_reach"] if r["bayes_reach"] is not None else f"not within {n_trials}"
        print(f"| {r['seed']} | {r['random_best']:.4f} ({r['random_reach']}) | {r['bayes_best']:.4f} | **{reach}** "
              f"| {r['random_wall']:.0f} / {r['bayes_wall']:.0f} |")
    reached = [r["bayes_reach"] for r in rows if r["bayes_reach"] is not None]
    print(f"\nBayesian reached Random's best of {n_trials} in {len(reached)} of {len(rows)} seeds, after a median "
          f"of **{statistics.median(reached) if reached else '-'}** trials (range {min(reached, default='-')} to "
          f"{max(reached, default='-')}); its own best was at least as good in "
          f"{sum(r['bayes_best'] >= r['random_best'] for r in rows)} of {len(rows)}.\n")
    marks = [n for n in (5, 10, 15, 20, 25, 30, 40, 50) if n <= n_trials]
    print("| mean best r2 so far, over the seeds | " + " | ".join(f"after {n}" for n in marks) + " |")
    print("|---|" + "---|" * len(marks))
    for method in ("Random", "Bayesian"):
        print(f"| {method} | " + " | ".join(f"{statistics.mean(c[n - 1] for c in curves[method]):.4f}" for n in marks) + " |")


# --------------------------------------------------------------------------- early stopping


def bench_early(seeds: list[int], n_trials: int, cv: int) -> None:
    rows = []
    for seed in seeds:
        out = {}
        for label, early in (("off", None), ("Median", {"type": "Median", "minTrials": 5, "minFolds": 1}),
                             ("SuccessiveHalving", {"type": "SuccessiveHalving", "minFolds": 1, "reductionFactor": 3})):
            records, search, wall, cpu = train(spec("Random", seed, n_trials, cv=cv, early=early))
            folds = sum(len(r["fold_scores"]) for r in records)
            complete = [r for r in records if r["state"] == "complete"]
            out[label] = {"wall": wall, "cpu": cpu, "folds": folds, "pruned": search["trials_pruned"],
                          "best": search["best_cv_score"], "best_trial": search["best_trial"],
                          "search_seconds": sum(r["seconds"] for r in records), "complete": len(complete)}
        rows.append((seed, out))
        print(f"seed {seed}: {out}", file=sys.stderr, flush=True)
    print(f"\nEarly stopping on a Random search: SVC on digits, C and gamma log-uniform, {n_trials} trials, "
          f"{cv}-fold CV, one worker; {machine()}\n")
    print("| seed | early stopping | trials stopped early | folds fitted | trial time, s (sum) | whole job wall, s "
          "| whole job CPU, s | best cv score (trial) |")
    print("|---|---|---|---|---|---|---|---|")
    for seed, out in rows:
        base = out["off"]
        for label, o in out.items():
            saved = "" if label == "off" else f" (**-{100 * (1 - o['search_seconds'] / base['search_seconds']):.0f}%**)"
            print(f"| {seed} | {label} | {o['pruned']} | {o['folds']} of {n_trials * cv} | {o['search_seconds']:.1f}{saved} "
                  f"| {o['wall']:.1f} | {o['cpu']:.1f} | {o['best']:.4f} (#{o['best_trial']}) |")
    for label in ("Median", "SuccessiveHalving"):
        saving = [1 - out[label]["search_seconds"] / out["off"]["search_seconds"] for _, out in rows]
        same = sum(out[label]["best"] >= out["off"]["best"] for _, out in rows)
        print(f"\n{label}: trial time saved {100 * min(saving):.0f}% to {100 * max(saving):.0f}% "
              f"(mean {100 * statistics.mean(saving):.0f}%); best cv score as good as without early stopping in "
              f"{same} of {len(rows)} seeds.")


# --------------------------------------------------------------------------- CPUs


def _children_cpu() -> dict[int, float]:
    """CPU seconds of each live child process of this one (joblib's loky fold workers), from /proc."""
    tick = os.sysconf("SC_CLK_TCK")
    out = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == os.getpid():  # ppid
                out[int(stat.parent.name)] = (int(fields[11]) + int(fields[12])) / tick  # utime + stime
        except (OSError, IndexError, ValueError):
            continue
    return out


def bench_cpus(repeats: int) -> None:
    """Wall time is only meaningful on an idle machine; the CPU-bound speedup is not: the CPU the
    1-CPU run used, over the critical path of the 2-CPU run (the trainer process's own CPU plus
    its busiest fold worker's), which is what 2 free CPUs would make the wall time."""
    forest = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0, "n_jobs": 1}}
    space = {"n_estimators": {"randint": {"low": 100, "high": 200}}, "max_features": {"uniform": {"low": 0.05, "high": 0.3}}}
    rows = []
    for rep in range(repeats):
        for n_jobs in (1, 2):
            before, children = os.times(), _children_cpu()
            records, search, wall, _ = train(spec("Random", 0, 8, cv=4, space=space, estimator=forest), n_jobs=n_jobs)
            own = sum(os.times()[:2]) - sum(before[:2])
            # the loky workers live on between runs (joblib reuses them): what each used in this run
            workers = sorted(cpu - children.get(pid, 0.0) for pid, cpu in _children_cpu().items())
            workers = [w for w in workers if w > 0.05]
            critical = own + max(workers, default=0.0)
            rows.append((rep, n_jobs, sum(r["seconds"] for r in records), wall, own, workers, critical,
                         search["best_cv_score"]))
            print(f"repeat {rep} n_jobs {n_jobs}: {rows[-1]}", file=sys.stderr, flush=True)
    print(f"\nCross-validation folds on 1 vs 2 CPUs (MLVISOR_CPUS): RandomForest on digits, 8 trials, 4-fold CV; "
          f"{machine()}\n")
    print("| repeat | CPUs | trial time, s (sum) | whole job wall, s | trainer process CPU, s | fold workers' CPU, s "
          "| critical path CPU, s | best cv score |")
    print("|---|---|---|---|---|---|---|---|")
    for rep, n_jobs, trials, wall, own, workers, critical, best in rows:
        print(f"| {rep} | {n_jobs} | {trials:.1f} | {wall:.1f} | {own:.1f} | "
              f"{' + '.join(f'{w:.1f}' for w in workers) or '-'} | {critical:.1f} | {best:.4f} |")
    wall1 = statistics.median(r[2] for r in rows if r[1] == 1)
    wall2 = statistics.median(r[2] for r in rows if r[1] == 2)
    cpu1 = statistics.median(r[6] for r in rows if r[1] == 1)
    cpu2 = statistics.median(r[6] for r in rows if r[1] == 2)
    print(f"\nMedian trial time: {wall1:.1f} s on 1 CPU, {wall2:.1f} s on 2 ({wall1 / wall2:.2f}x, wall clock, load-bound); "
          f"CPU-bound speedup (critical path): **{cpu1 / cpu2:.2f}x**.")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("what", choices=("bayes", "early", "cpus", "all"))
    p.add_argument("--seeds", type=int, default=8)
    p.add_argument("--trials", type=int, default=30)
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()
    seeds = list(range(a.seeds))
    if a.what in ("bayes", "all"):
        bench_bayes(seeds, a.trials)
    if a.what in ("early", "all"):
        bench_early(seeds[:3] if a.what == "all" else seeds, a.trials, cv=5)
    if a.what in ("cpus", "all"):
        bench_cpus(a.repeats)


if __name__ == "__main__":
    main()
