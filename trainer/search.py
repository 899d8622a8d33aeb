"""Grid search spread over workers: deterministic trials, resumable shards, one select step.

Determinism is what lets N workers agree without talking to each other:

- the grid expands in a fixed order (parameter names sorted, then each name's values in
  the order written, ``itertools.product``), so trial ``t`` is the same everywhere;
- shard ``i`` of ``N`` evaluates exactly the trials at positions ``p % N == i`` of one
  permutation of the trial indices, seeded by the spec's ``randomState`` and the grid size
  (``shard_owners``): every worker and every restart computes the same split, and a grid
  whose costly parameter is aligned with ``N`` (``t % N`` would hand one shard every costly
  trial) is spread evenly on average; shard sizes differ by at most one;
- a trial's score is the mean of K-fold (StratifiedKFold for classifiers) cross-validation
  on the training split with ``shuffle=True, random_state=randomState``;
- the best trial is the highest score, ties going to the lowest trial index.

Hence a search on 2 shards picks exactly the parameters the same search picks in one process.

Trial results live under ``<output>/.work/<version>/`` (a dot directory, so it never looks
like a model version): one ``shard-<i>-of-<N>.jsonl`` per shard, one JSON record per trial,
appended and fsync'ed as soon as the trial finishes. A shard that is re-run after a crash
reads its file first and evaluates only the trials missing from it (a torn last line from a
kill mid-write is cut off). When the shard finishes it writes ``shard-<i>-of-<N>.done``.
The select step reads every shard file of the version and refuses to run (a crash-type
error, exit 1: the operator only starts it once every shard succeeded) unless every trial
of the grid has a result.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import random
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvisor.trainer.artifact import write_failure
from mlvisor.trainer.estimators import EstimatorRecipe, fit_checked
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.spec import InvalidSpec

WORK_DIR = ".work"
#: Test-only hook: a shard process hard-exits (code 137, like a SIGKILL) after evaluating this
#: many new trials, to exercise resume. Never set it in production.
CRASH_HOOK_ENV = "MLVISOR_TEST_CRASH_AFTER_TRIALS"

_SHARD_FILE = re.compile(r"^shard-(\d+)-of-(\d+)\.jsonl$")


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

    def to_json(self) -> str:
        return json.dumps(
            {"trial": self.index, "params": self.params, "score": self.score,
             "fold_scores": self.fold_scores, "seconds": round(self.seconds, 4)},
            sort_keys=True,
        )


def expand_grid(grid: dict[str, list[Any]]) -> list[Trial]:
    names = sorted(grid)
    combos = itertools.product(*(grid[n] for n in names))
    return [Trial(i, dict(zip(names, values, strict=True))) for i, values in enumerate(combos)]


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


def read_results(path: Path, repair: bool = False) -> dict[int, TrialResult]:
    """Results of one shard file; a torn last line (killed mid-write) is ignored, or cut off with repair."""
    if not path.is_file():
        return {}
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
        results[rec["trial"]] = TrialResult(
            index=rec["trial"], params=rec["params"], score=float(rec["score"]),
            fold_scores=[float(s) for s in rec["fold_scores"]], seconds=float(rec["seconds"]),
        )
    return results


def _check_matches_grid(results: dict[int, TrialResult], trials: list[Trial], path: Path) -> None:
    by_index = {t.index: t for t in trials}
    for r in results.values():
        t = by_index.get(r.index)
        if t is None or t.params != r.params:
            raise RuntimeError(
                f"{path}: trial {r.index} was recorded with params {r.params}, but the grid of "
                f"this spec gives {t.params if t else 'no such trial'}: the work directory "
                "belongs to a different spec with the same version"
            )


def cv_splitter(task: str, folds: int, random_state: int) -> Any:
    from sklearn.model_selection import KFold, StratifiedKFold

    cls = StratifiedKFold if task == "classification" else KFold
    return cls(n_splits=folds, shuffle=True, random_state=random_state)


def evaluate_trial(
    recipe: EstimatorRecipe, trial: Trial, X: np.ndarray, y: np.ndarray, scoring: str,
    folds: int, random_state: int, log: EventLog, total: int,
) -> TrialResult:
    from sklearn.metrics import get_scorer

    scorer = get_scorer(scoring)
    splitter = cv_splitter(recipe.task, folds, random_state)
    started = time.perf_counter()
    scores: list[float] = []
    try:
        splits = list(splitter.split(X, y))
    except ValueError as e:
        raise InvalidSpec(f"spec.search.cv {folds}: cannot split the training data: {e}") from e
    for k, (train_idx, val_idx) in enumerate(splits, start=1):
        est = fit_checked(recipe.build(trial.params), X[train_idx], y[train_idx], recipe.path)
        try:
            score = float(scorer(est, X[val_idx], y[val_idx]))
        except ValueError as e:
            raise InvalidSpec(
                f"spec.search.scoring {scoring!r} cannot score {recipe.path} on this data: {e}"
            ) from e
        scores.append(score)
        log.info("fold", f"trial {trial.index + 1} of {total}: fold {k} of {folds}: "
                 f"{scoring} {score:.4f}", trial=trial.index, fold=k, folds=folds, score=score)
    return TrialResult(index=trial.index, params=trial.params, score=float(np.mean(scores)),
                       fold_scores=scores, seconds=time.perf_counter() - started)


def run_shard(
    recipe: EstimatorRecipe, grid: dict[str, list[Any]], X: np.ndarray, y: np.ndarray,
    scoring: str, folds: int, random_state: int, output: Path, version: str,
    index: int, workers: int, log: EventLog,
    after_trial: Callable[[int], None] | None = None,
) -> dict[int, TrialResult]:
    """Evaluate the trials of shard ``index`` not already recorded; return all of the shard's results."""
    trials = expand_grid(grid)
    mine = shard_trials(trials, index, workers, random_state)
    path = shard_path(output, version, index, workers)
    path.parent.mkdir(parents=True, exist_ok=True)
    done = read_results(path, repair=True)
    _check_matches_grid(done, trials, path)
    todo = [t for t in mine if t.index not in done]
    log.info("shard", f"shard {index} of {workers}: {len(mine)} of {len(trials)} trials, "
             f"{len(mine) - len(todo)} already done, {len(todo)} to run",
             shard=index, workers=workers, trials=len(mine), total_trials=len(trials),
             resumed=len(mine) - len(todo))
    best = _best(done.values())
    crash_after = int(os.environ.get(CRASH_HOOK_ENV, "0") or 0)
    with open(path, "a") as f:
        for n, trial in enumerate(todo, start=1):
            result = evaluate_trial(recipe, trial, X, y, scoring, folds, random_state, log,
                                    len(trials))
            try:
                f.write(result.to_json() + "\n")
                f.flush()
                os.fsync(f.fileno())
            except OSError as e:
                raise write_failure(e, path, "the trial results to") from e
            done[trial.index] = result
            log.info("trial", f"trial {trial.index + 1} of {len(trials)}: {scoring} "
                     f"{result.score:.4f} with {trial.params}", trial=trial.index,
                     trials=len(trials), params=trial.params, score=result.score,
                     seconds=round(result.seconds, 3))
            if best is None or _better(result, best):
                best = result
                log.info("best_so_far", f"best so far in shard {index}: trial {best.index + 1}, {scoring} "
                         f"{best.score:.4f} with {best.params}", trial=best.index,
                         score=best.score, params=best.params)
            if after_trial is not None:
                after_trial(n)
            if crash_after and n >= crash_after:
                os._exit(137)
    marker = path.with_suffix(".done")
    tmp = marker.with_suffix(".done.tmp")
    tmp.write_text(json.dumps({"trials": len(mine)}))
    os.replace(tmp, marker)
    log.info("shard_done", f"shard {index} of {workers} done: {len(mine)} trials",
             shard=index, workers=workers, trials=len(mine))
    return {t.index: done[t.index] for t in mine}


def _key(r: TrialResult) -> tuple[float, int]:
    score = r.score if not math.isnan(r.score) else -math.inf
    return (-score, r.index)


def _better(a: TrialResult, b: TrialResult) -> bool:
    return _key(a) < _key(b)


def _best(results: Any) -> TrialResult | None:
    ordered = sorted(results, key=_key)
    return ordered[0] if ordered else None


def collect_results(
    grid: dict[str, list[Any]], output: Path, version: str, workers: int, random_state: int
) -> dict[int, TrialResult]:
    """Every shard file of the version merged; RuntimeError naming what is missing if incomplete."""
    trials = expand_grid(grid)
    wdir = work_dir(output, version)
    results: dict[int, TrialResult] = {}
    if wdir.is_dir():
        for child in sorted(wdir.iterdir()):
            if _SHARD_FILE.match(child.name):
                found = read_results(child)
                _check_matches_grid(found, trials, child)
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
    best = _best(results.values())
    if best is None:
        raise RuntimeError("select: no trial results")
    return best
