"""Hyperparameter search spread over workers: trials, shards, resumable records, one select step.

**Grid and Random** searches know all their trials before the first one runs, and determinism
is what lets N workers agree without talking to each other:

- the trials are fixed by the spec: a grid expands in a fixed order (parameter names sorted,
  then each name's values in the order written, ``itertools.product``); a Random search draws
  ``nTrials`` parameter sets from its distributions with a generator seeded by ``randomState``
  (:mod:`mlvisor.trainer.distributions`), so trial ``t`` is the same everywhere;
- shard ``i`` of ``N`` evaluates exactly the trials at positions ``p % N == i`` of one
  permutation of the trial indices, seeded by the spec's ``randomState`` and the trial count
  (``shard_owners``): every worker and every restart computes the same split, and a grid
  whose costly parameter is aligned with ``N`` (``t % N`` would hand one shard every costly
  trial) is spread evenly on average; shard sizes differ by at most one;
- a trial's score is the mean of K-fold (StratifiedKFold for classifiers) cross-validation
  on the training split with ``shuffle=True, random_state=randomState``;
- the best trial is the highest score among the trials that ran all their folds, ties going
  to the lowest trial index.

Hence a search on 2 shards picks exactly the parameters the same search picks in one process.
Trials are numbered from 0 (``#3`` in log lines), in records, logs and status alike.

**Bayesian** searches choose each trial from the results so far (Optuna's TPE); the workers
share one study (:mod:`mlvisor.trainer.bayes`).

**Early stopping** (``search.earlyStopping``): the folds of a trial are its steps. After each
fold the trial's mean score so far is reported to an Optuna pruner (MedianPruner or
SuccessiveHalvingPruner), which stops it when it is hopeless. A Bayesian search uses the
study's pruner across all workers. A Grid or Random shard uses the same pruner over an
in-memory study of *its own* trials in shard order, rebuilt on every restart by replaying its
records: its decisions are a function of the spec alone (never of timing), so a restarted
shard decides exactly as before and ``mlvisor train`` decides as the pods do. A stopped trial
is recorded with the folds it ran and is never selected.

**Records.** Grid and Random results live under ``<output>/.work/<version>/`` (a dot directory,
so it never looks like a model version): one ``shard-<i>-of-<N>.jsonl`` per shard, appended
and fsync'ed line by line: a start line (``{"trial": t, "started": true}``) before a trial
runs and its result line when it finishes. A shard that is re-run after a crash reads its
file first (a torn last line from a kill mid-write is cut off) and evaluates only the trials
without a result; a trial that had started without finishing was in flight when the worker
died: it is run again once, and its result says ``retried``; if it dies a second time it is
recorded as ``failed`` (it is likely the cause: out of memory on those parameters) and the
shard goes on. When the shard finishes it writes ``shard-<i>-of-<N>.done``. The select step
reads every shard file of the version and refuses to run (a crash-type error, exit 1: the
operator only starts it once every shard succeeded) unless every trial has a result; it
writes every trial's record to ``trials.jsonl`` beside the model.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import random
import re
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from mlvisor import api
from mlvisor.trainer.artifact import write_failure
from mlvisor.trainer.estimators import EstimatorRecipe, fit_checked
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.progress import ProgressTracker
from mlvisor.trainer.spec import InvalidSpec

WORK_DIR = ".work"
TRIALS_FILE = "trials.jsonl"
#: Test-only hook: a shard process hard-exits (code 137, like a SIGKILL) after evaluating this
#: many new trials, to exercise resume. Never set it in production.
CRASH_HOOK_ENV = "MLVISOR_TEST_CRASH_AFTER_TRIALS"

_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl$")

#: States of a recorded trial. complete: all folds ran; pruned: stopped early; failed: its
#: worker died twice while running it (or its score is not a number); interrupted (Bayesian):
#: its worker died while running it and another trial with the same parameters replaced it
#: (whose retry_of names it); abandoned (Bayesian): claimed by a worker that died before it ran.
#: Interrupted and abandoned trials are recorded but are not among the search's trials.
STATES = ("complete", "pruned", "failed", "interrupted", "abandoned")


@dataclass(frozen=True)
class Trial:
    index: int
    params: dict[str, Any]


@dataclass(frozen=True)
class TrialResult:
    index: int
    params: dict[str, Any]
    score: float
    fold_scores: list[float]
    seconds: float = field(compare=False)
    """Wall time of the trial; not part of the result's identity (a re-run takes different time)."""
    state: str = "complete"
    worker: int | None = field(default=None, compare=False)
    """The worker (shard) that ran it."""
    retried: bool = field(default=False, compare=False)
    """It was in flight when a worker died, and this is its second run."""
    retry_of: int | None = field(default=None, compare=False)
    """Bayesian: the interrupted trial whose parameters this one runs again."""

    def to_record(self) -> dict[str, Any]:
        rec: dict[str, Any] = {
            "trial": self.index, "params": self.params,
            "score": self.score if math.isfinite(self.score) else None,
            "fold_scores": self.fold_scores, "seconds": round(self.seconds, 4), "state": self.state,
            "worker": self.worker, "retried": self.retried,
        }
        if self.retry_of is not None:
            rec["retry_of"] = self.retry_of
        return rec

    def to_json(self) -> str:
        return json.dumps(self.to_record(), sort_keys=True)

    @classmethod
    def from_record(cls, rec: dict[str, Any]) -> TrialResult:
        score = rec.get("score")
        return cls(
            index=int(rec["trial"]), params=rec["params"],
            score=float("nan") if score is None else float(score),
            fold_scores=[float(s) for s in rec.get("fold_scores") or []],
            seconds=float(rec.get("seconds") or 0.0), state=str(rec.get("state") or "complete"),
            worker=rec.get("worker"), retried=bool(rec.get("retried")), retry_of=rec.get("retry_of"),
        )

    @property
    def counts(self) -> bool:
        """Whether it is one of the search's trials (an interrupted one was replaced by its retry)."""
        return self.state not in ("interrupted", "abandoned")


# --------------------------------------------------------------------------- the trials


def expand_grid(grid: dict[str, list[Any]]) -> list[Trial]:
    names = sorted(grid)
    combos = itertools.product(*(grid[n] for n in names))
    return [Trial(i, dict(zip(names, values, strict=True))) for i, values in enumerate(combos)]


def planned_trials(search: api.Search, seed: int) -> list[Trial]:
    """Every trial of a Grid or Random search, in order (a Bayesian search plans none ahead)."""
    if search.method == api.SearchMethod.GRID:
        return expand_grid(search.grid or {})
    if search.method == api.SearchMethod.RANDOM:
        from mlvisor.trainer.distributions import sample_params

        assert search.distributions is not None and search.n_trials is not None
        return [Trial(i, p) for i, p in enumerate(sample_params(search.distributions, search.n_trials, seed))]
    raise ValueError("a Bayesian search has no trials planned ahead")


def shard_owners(n_trials: int, workers: int, seed: int) -> list[int]:
    """``owners[t]`` is the shard that evaluates trial ``t`` (see the module docstring)."""
    order = list(range(n_trials))
    # A str seed is hashed with SHA-512 by random.Random: the same permutation on every
    # Python version and platform, which is what lets pods agree without talking.
    random.Random(f"mlvisor-shards:{seed}:{n_trials}").shuffle(order)
    owners = [0] * n_trials
    for position, trial in enumerate(order):
        owners[trial] = position % workers
    return owners


def shard_trials(trials: list[Trial], index: int, workers: int, seed: int) -> list[Trial]:
    owners = shard_owners(len(trials), workers, seed)
    return [t for t in trials if owners[t.index] == index]


def work_dir(output: Path, version: str) -> Path:
    return Path(output) / WORK_DIR / version


def shard_path(output: Path, version: str, index: int, workers: int) -> Path:
    return work_dir(output, version) / f"shard-{index}-of-{workers}.jsonl"


# --------------------------------------------------------------------------- shard files


def read_shard(path: Path, repair: bool = False) -> tuple[dict[int, TrialResult], Counter[int]]:
    """(results, start lines per trial) of one shard file; a torn last line (killed mid-write)
    is ignored, or cut off with ``repair``."""
    starts: Counter[int] = Counter()
    if not path.is_file():
        return {}, starts
    raw = path.read_bytes()
    good_end = raw.rfind(b"\n") + 1
    if repair and good_end != len(raw):
        with open(path, "r+b") as f:
            f.truncate(good_end)
            os.fsync(f.fileno())
    results: dict[int, TrialResult] = {}
    for line in raw[:good_end].splitlines():
        if not line.strip():
            continue
        rec = json.loads(line)
        if rec.get("started"):
            starts[int(rec["trial"])] += 1
        else:
            results[int(rec["trial"])] = TrialResult.from_record(rec)
    return results, starts


def read_results(path: Path, repair: bool = False) -> dict[int, TrialResult]:
    """The results of one shard file (see :func:`read_shard`)."""
    return read_shard(path, repair)[0]


def _check_matches(results: dict[int, TrialResult], trials: list[Trial], path: Path) -> None:
    by_index = {t.index: t for t in trials}
    for r in results.values():
        t = by_index.get(r.index)
        if t is None or t.params != r.params:
            raise RuntimeError(
                f"{path}: trial {r.index} was recorded with params {r.params}, but this spec's trial "
                f"{r.index} has {t.params if t else 'no such trial'}: the work directory "
                "belongs to a different spec with the same version"
            )


def _append(f: Any, line: str, path: Path) -> None:
    try:
        f.write(line + "\n")
        f.flush()
        os.fsync(f.fileno())
    except OSError as e:
        raise write_failure(e, path, "the trial results to") from e


# --------------------------------------------------------------------------- one trial


def cv_splitter(task: str, folds: int, random_state: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    cls = StratifiedKFold if task == "classification" else KFold
    return cls(n_splits=folds, shuffle=True, random_state=random_state)


def cv_splits(task: str, folds: int, random_state: int, X: Any, y: np.ndarray) -> list[tuple[np.ndarray, np.ndarray]]:
    """The (train, validation) folds of every trial; InvalidSpec when the training split cannot give them.

    Also the pre-flight check (:mod:`mlvisor.trainer.preflight`) of ``spec.search.cv``: the
    same call, so it refuses exactly what a shard would, in the same words.
    """
    try:
        return list(cv_splitter(task, folds, random_state).split(X, y))
    except ValueError as e:
        raise InvalidSpec(f"spec.search.cv {folds}: cannot split the training data: {e}") from e


class FoldObserver(Protocol):
    def __call__(self, fold: int, mean_so_far: float) -> bool:
        """Called after fold ``fold`` (1-based) of a trial; True stops the trial there."""
        ...


def _fit_and_score(recipe: EstimatorRecipe, params: dict[str, Any], X: np.ndarray, y: np.ndarray,
                   train_idx: np.ndarray, val_idx: np.ndarray, scoring: str) -> float:
    """One fold: fit on its training part, score on its validation part (runs in a joblib worker)."""
    from sklearn.metrics import get_scorer
    from sklearn.utils import _safe_indexing  # rows of an array or a DataFrame (a table's features)

    est = fit_checked(recipe.build(params), _safe_indexing(X, train_idx), y[train_idx], recipe.path)
    try:
        return float(get_scorer(scoring)(est, _safe_indexing(X, val_idx), y[val_idx]))
    except ValueError as e:
        raise InvalidSpec(f"spec.search.scoring {scoring!r} cannot score {recipe.path} on this data: {e}") from e


def evaluate_trial(
    recipe: EstimatorRecipe, trial: Trial, X: np.ndarray, y: np.ndarray, scoring: str,
    folds: int, random_state: int, log: EventLog, total: int | None, *,
    n_jobs: int = 1, observe: FoldObserver | None = None, worker: int | None = None,
) -> TrialResult:
    """Cross-validate one trial; its folds run ``n_jobs`` at a time (joblib), and with an
    ``observe``r the trial may stop after any fold but the last. The decision to stop only ever
    depends on the folds in order, so the record is the same whatever ``n_jobs`` is."""
    started = time.perf_counter()
    splits = cv_splits(recipe.task, folds, random_state, X, y)
    n_jobs = max(1, min(n_jobs, folds))
    scores: list[float] = []
    pruned = False
    label = f"trial #{trial.index}"
    for first in range(0, folds, n_jobs):
        chunk = splits[first:first + n_jobs]
        if n_jobs == 1:
            got = [_fit_and_score(recipe, trial.params, X, y, tr, va, scoring) for tr, va in chunk]
        else:
            from joblib import Parallel, delayed

            got = Parallel(n_jobs=len(chunk))(
                delayed(_fit_and_score)(recipe, trial.params, X, y, tr, va, scoring) for tr, va in chunk)
        for k, score in enumerate(got, start=first + 1):
            scores.append(float(score))
            log.info("fold", f"{label}: fold {k} of {folds}: {scoring} {score:.4f}",
                     trial=trial.index, fold=k, folds=folds, score=score)
            if observe is not None and k < folds and observe(k, float(np.mean(scores))):
                pruned = True
                break
        if pruned:
            break
    return TrialResult(index=trial.index, params=trial.params, score=float(np.mean(scores)),
                       fold_scores=scores, seconds=time.perf_counter() - started,
                       state="pruned" if pruned else "complete", worker=worker)


# --------------------------------------------------------------------------- early stopping


def make_pruner(early: api.EarlyStopping | None) -> Any:
    """The Optuna pruner of ``search.earlyStopping`` (None: every trial runs all its folds)."""
    if early is None:
        return None
    import optuna

    if early.type == api.EarlyStoppingType.MEDIAN:
        return optuna.pruners.MedianPruner(n_startup_trials=early.min_trials, n_warmup_steps=early.min_folds)
    return optuna.pruners.SuccessiveHalvingPruner(
        min_resource=early.min_folds, reduction_factor=early.reduction_factor, min_early_stopping_rate=0)


class ShardPruning:
    """A Grid or Random shard's pruner over its own trials, in shard order (see the module docstring).

    :meth:`replay` feeds it a recorded trial exactly as :meth:`observer` saw it live (the same
    reports and the same questions), so after a restart it is in the state it was in."""

    def __init__(self, early: api.EarlyStopping, folds: int) -> None:
        import optuna

        from mlvisor.trainer.bayes import quiet_optuna

        quiet_optuna()
        self.folds = folds
        self.study = optuna.create_study(direction="maximize", pruner=make_pruner(early),
                                         sampler=optuna.samplers.RandomSampler(seed=0))
        self._trial: Any = None

    def observer(self) -> FoldObserver:
        self._trial = self.study.ask()
        trial = self._trial

        def observe(fold: int, mean_so_far: float) -> bool:
            trial.report(mean_so_far, fold)
            return bool(trial.should_prune())

        return observe

    def finish(self, result: TrialResult) -> None:
        import optuna

        trial, self._trial = self._trial, None
        if result.state == "complete":
            self.study.tell(trial, result.score)
        elif result.state == "pruned":
            self.study.tell(trial, state=optuna.trial.TrialState.PRUNED)
        else:
            self.study.tell(trial, state=optuna.trial.TrialState.FAIL)

    def replay(self, result: TrialResult) -> None:
        observe = self.observer()
        for k in range(1, len(result.fold_scores) + 1):
            if k < self.folds:
                observe(k, float(np.mean(result.fold_scores[:k])))
        self.finish(result)


# --------------------------------------------------------------------------- a run's context


@dataclass
class SearchRun:
    """Everything a search step needs, fixed for the run."""

    recipe: EstimatorRecipe
    search: api.Search
    X: np.ndarray
    y: np.ndarray
    scoring: str
    random_state: int
    output: Path
    version: str
    workers: int
    log: EventLog
    progress: ProgressTracker
    n_jobs: int = 1
    after_trial: Callable[[int], None] | None = None

    @property
    def folds(self) -> int:
        return self.search.cv

    @property
    def bayesian(self) -> bool:
        return self.search.method == api.SearchMethod.BAYESIAN

    def trials(self) -> list[Trial]:
        return planned_trials(self.search, self.random_state)


def run_shard(run: SearchRun, index: int) -> dict[int, TrialResult]:
    """Evaluate the trials of Grid/Random shard ``index`` not already recorded; return all of the shard's results."""
    trials = run.trials()
    mine = shard_trials(trials, index, run.workers, run.random_state)
    path = shard_path(run.output, run.version, index, run.workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    done, starts = read_shard(path, repair=True)
    _check_matches(done, trials, path)
    todo = [t for t in mine if t.index not in done]
    log, scoring, total = run.log, run.scoring, len(trials)
    log.info("shard", f"shard {index} of {run.workers}: {len(mine)} of {total} trials, "
             f"{len(mine) - len(todo)} already done, {len(todo)} to run",
             shard=index, workers=run.workers, trials=len(mine), total_trials=total,
             resumed=len(mine) - len(todo))
    pruning = ShardPruning(run.search.early_stopping, run.folds) if run.search.early_stopping else None
    best = _best(r for r in done.values() if r.state == "complete")
    crash_after = int(os.environ.get(CRASH_HOOK_ENV, "0") or 0)
    ran = 0
    with open(path, "a") as f:
        for trial in mine:
            if trial.index in done:  # recorded by an earlier attempt: replayed, not re-run
                if pruning is not None:
                    pruning.replay(done[trial.index])
                run.progress.add(done[trial.index], resumed=True)
                continue
            interrupted = starts[trial.index]
            if interrupted >= 2:
                result = TrialResult(trial.index, trial.params, float("nan"), [], 0.0, state="failed",
                                     worker=index, retried=True)
                log.warning("trial_failed", f"trial #{trial.index} was in flight when this "
                            f"worker died, twice: recorded as failed, not run a third time (it is likely "
                            f"the cause, e.g. out of memory with {trial.params})", trial=trial.index,
                            params=trial.params)
                if pruning is not None:
                    pruning.replay(result)
            else:
                if interrupted == 1:
                    log.warning("trial_retried", f"trial #{trial.index} was in flight when "
                                "this worker died: running it again, once", trial=trial.index,
                                params=trial.params)
                _append(f, json.dumps({"trial": trial.index, "started": True}), path)
                observe = pruning.observer() if pruning is not None else None
                result = evaluate_trial(run.recipe, trial, run.X, run.y, scoring, run.folds, run.random_state,
                                        log, total, n_jobs=run.n_jobs, observe=observe, worker=index)
                result = dataclasses.replace(result, retried=interrupted == 1)
                if pruning is not None:
                    pruning.finish(result)
            _append(f, result.to_json(), path)
            done[trial.index] = result
            ran += 1
            _log_trial(log, result, total, scoring)
            if result.state == "complete" and (best is None or _better(result, best)):
                best = result
                log.info("best_so_far", f"best so far in shard {index}: trial #{best.index}, {scoring} "
                         f"{best.score:.4f} with {best.params}", trial=best.index,
                         score=best.score, params=best.params)
            run.progress.add(result)
            if run.after_trial is not None:
                run.after_trial(ran)
            if crash_after and ran >= crash_after:
                os._exit(137)
    marker = path.with_suffix(".done")
    tmp = marker.with_suffix(".done.tmp")
    tmp.write_text(json.dumps({"trials": len(mine)}))
    os.replace(tmp, marker)
    log.info("shard_done", f"shard {index} of {run.workers} done: {len(mine)} trials",
             shard=index, workers=run.workers, trials=len(mine))
    return {t.index: done[t.index] for t in mine}


def _log_trial(log: EventLog, result: TrialResult, total: int | None, scoring: str) -> None:
    where = f"trial #{result.index}"
    if result.state == "pruned":
        what = f"stopped early after fold {len(result.fold_scores)}: {scoring} {result.score:.4f} so far"
    elif result.state == "complete":
        what = f"{scoring} {result.score:.4f}"
    else:
        what = result.state
    log.info("trial", f"{where}: {what} with {result.params}", trial=result.index, trials=total,
             params=result.params, score=result.score if math.isfinite(result.score) else None,
             state=result.state, retried=result.retried, seconds=round(result.seconds, 3))


# --------------------------------------------------------------------------- selecting


def _key(r: TrialResult) -> tuple[float, int]:
    score = r.score if r.state == "complete" and not math.isnan(r.score) else -math.inf
    return (-score, r.index)


def _better(a: TrialResult, b: TrialResult) -> bool:
    return _key(a) < _key(b)


def _best(results: Any) -> TrialResult | None:
    ordered = sorted(results, key=_key)
    return ordered[0] if ordered else None


def collect_results(trials: list[Trial], output: Path, version: str, workers: int, random_state: int
                    ) -> dict[int, TrialResult]:
    """Every shard file of the version merged; RuntimeError naming what is missing if incomplete."""
    wdir = work_dir(output, version)
    results: dict[int, TrialResult] = {}
    if wdir.is_dir():
        for child in sorted(wdir.iterdir()):
            if _SHARD_FILE.match(child.name):
                found = read_results(child)
                _check_matches(found, trials, child)
                results.update(found)
    missing = [t.index for t in trials if t.index not in results]
    if missing:
        owners = shard_owners(len(trials), workers, random_state)
        shards = sorted({owners[i] for i in missing})
        raise RuntimeError(
            f"select: {len(missing)} of {len(trials)} trials have no result in {wdir} "
            f"(trials {missing[:10]}{'...' if len(missing) > 10 else ''}, shards {shards} of "
            f"{workers}); run every shard to completion before the select step"
        )
    return results


def select_best(results: dict[int, TrialResult]) -> TrialResult:
    best = _best(r for r in results.values() if r.state == "complete")
    if best is None:
        if results:
            raise InvalidSpec(
                f"select: none of the {len(results)} trials ran all its folds to a score (stopped early "
                "or failed): loosen spec.search.earlyStopping or fix what makes the trials fail")
        raise RuntimeError("select: no trial results")
    return best


def trials_jsonl(results: dict[int, TrialResult]) -> bytes:
    """Every trial's record, in trial order: the ``trials.jsonl`` file beside the model."""
    return "".join(results[i].to_json() + "\n" for i in sorted(results)).encode()
