"""One run of a TrainingJob: plain training, one search shard, the select step, or all of it.

The four modes the operator and humans use map onto the same few steps:

==========================  ============================================================
whole job (no worker flags)  plain: train + write; search: every shard in turn, then select
worker i of N, search        evaluate shard i, record its trials, write nothing else
worker 0 of 1, no search     plain training, writes the artifact
select                       merge all shard results, pick best, refit, evaluate, write
==========================  ============================================================

Spec checks run before any data is loaded, and the data checks before any fitting, so an
invalid job fails in about a second with exit code 2. The train/test split is the same in
every mode (``testSize``, ``randomState``, stratified for classifiers when the classes
allow it): the shards cross-validate on the training split and the select step evaluates on
the held-out split that no trial ever saw.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvisor.operator import api
from mlvisor.trainer.artifact import (
    METADATA_FILE,
    ArtifactMetadata,
    write_artifact,
)
from mlvisor.trainer.datasets import Target, TrainingData, load_dataset, prepare_target
from mlvisor.trainer.estimators import (
    EstimatorRecipe,
    check_grid,
    fit_checked,
    make_recipe,
    resolve_scoring,
)
from mlvisor.trainer.evaluation import SCORE_NAME, heldout_metrics, tensor_specs
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.search import (
    TrialResult,
    collect_results,
    expand_grid,
    run_shard,
    select_best,
    work_dir,
)
from mlvisor.trainer.spec import InvalidSpec


def new_version(now: dt.datetime | None = None) -> str:
    """``20261125T101500Z-ab12``: sortable by time, unique enough across runs."""
    now = now or dt.datetime.now(dt.UTC)
    return now.strftime("%Y%m%dT%H%M%SZ") + "-" + secrets.token_hex(2)


@dataclass(frozen=True)
class RunOptions:
    spec: api.TrainingJobSpec
    output: Path
    name: str = "model"
    version: str = field(default_factory=new_version)
    data_dir: Path = Path(".")
    worker_index: int | None = None
    workers: int | None = None
    """Shard count; None: spec.workers."""
    select: bool = False


@dataclass(frozen=True)
class Prepared:
    recipe: EstimatorRecipe
    scoring: str | None
    data: TrainingData
    target: Target
    X_train: np.ndarray
    X_test: np.ndarray
    y_train: np.ndarray
    y_test: np.ndarray


def check_options(opts: RunOptions) -> int:
    """Validate the mode flags against the spec; returns the shard count N."""
    spec = opts.spec
    workers = opts.workers if opts.workers is not None else spec.workers
    if workers < 1:
        raise InvalidSpec(f"--workers/MLVISOR_WORKERS is {workers}; expected at least 1")
    if opts.worker_index is not None:
        if not 0 <= opts.worker_index < workers:
            raise InvalidSpec(
                f"--worker-index/MLVISOR_WORKER_INDEX is {opts.worker_index}; expected 0.."
                f"{workers - 1} for {workers} worker(s)"
            )
        if opts.select:
            raise InvalidSpec("--select and --worker-index are exclusive: the select step is not a shard")
    if spec.search is None:
        if workers != 1:
            raise InvalidSpec(
                f"--workers/MLVISOR_WORKERS is {workers} but spec.search is not set: only a search "
                "grid can be split across workers"
            )
        if opts.select:
            raise InvalidSpec("--select/MLVISOR_STEP=select needs spec.search: there is nothing to select")
    return workers


def prepare(opts: RunOptions, log: EventLog) -> Prepared:
    from mlvisor.trainer.preflight import spec_problems

    spec = opts.spec
    problems = spec_problems(spec)  # every problem at once, as mlvisor validate lists them
    if problems:
        raise InvalidSpec("; ".join(problems))
    recipe = make_recipe(spec.estimator.class_, spec.estimator.params)
    scoring = None
    if spec.search is not None:
        check_grid(recipe, spec.search.grid)
        scoring = resolve_scoring(spec.search.scoring, recipe.task)
    data = load_dataset(spec.dataset, opts.data_dir)
    log.info("dataset_loaded", f"dataset {data.info.source}:{data.info.name} loaded: "
             f"{data.X.shape[0]} rows, {data.X.shape[1]} features",
             source=data.info.source, dataset=data.info.name, rows=int(data.X.shape[0]),
             features=int(data.X.shape[1]))
    target = prepare_target(data.y, recipe.task, data.info.target, recipe.path)
    X_train, X_test, y_train, y_test = split(data.X, target.y, recipe.task, spec)
    log.info("split", f"train/test split: {len(y_train)} train rows, {len(y_test)} held out "
             f"(testSize {spec.test_size}, randomState {spec.random_state})",
             train_rows=len(y_train), test_rows=len(y_test))
    return Prepared(recipe, scoring, data, target, X_train, X_test, y_train, y_test)


def split(X: np.ndarray, y: np.ndarray, task: str, spec: api.TrainingJobSpec
          ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    from sklearn.model_selection import train_test_split

    stratify = y if task == "classification" else None
    try:
        return train_test_split(X, y, test_size=spec.test_size, random_state=spec.random_state,
                                stratify=stratify)
    except ValueError as e:
        if stratify is None:
            raise InvalidSpec(f"spec.testSize {spec.test_size}: cannot split {len(y)} rows: {e}") from e
    # too few rows per class to stratify: a plain shuffled split is still deterministic
    try:
        return train_test_split(X, y, test_size=spec.test_size, random_state=spec.random_state)
    except ValueError as e:
        raise InvalidSpec(f"spec.testSize {spec.test_size}: cannot split {len(y)} rows: {e}") from e


def run(opts: RunOptions, log: EventLog) -> Path | None:
    """Run the mode ``opts`` asks for; returns the artifact directory, or None for a shard."""
    workers = check_options(opts)
    existing = Path(opts.output) / opts.version
    writes_artifact = opts.worker_index is None or opts.spec.search is None
    if writes_artifact and (existing / METADATA_FILE).is_file():
        log.info("artifact_written", f"artifact {existing} already complete; nothing to do",
                 path=str(existing), version=opts.version)
        return existing
    prepared = prepare(opts, log)
    search = opts.spec.search
    if search is None:
        return train_plain(opts, prepared, log)
    assert prepared.scoring is not None
    shards = [opts.worker_index] if opts.worker_index is not None else (
        [] if opts.select else list(range(workers)))
    for index in shards:
        run_shard(prepared.recipe, search.grid, prepared.X_train, prepared.y_train,
                  prepared.scoring, search.cv, opts.spec.random_state, opts.output,
                  opts.version, index, workers, log)
    if opts.worker_index is not None:
        return None
    return select_and_refit(opts, prepared, workers, log)


def train_plain(opts: RunOptions, p: Prepared, log: EventLog) -> Path:
    log.info("fit", f"fitting {p.recipe.path} on {len(p.y_train)} rows", estimator=p.recipe.path,
             params=p.recipe.params)
    started = time.perf_counter()
    model = fit_checked(p.recipe.build(), p.X_train, p.y_train, p.recipe.path)
    log.info("fitted", f"fitted in {time.perf_counter() - started:.2f}s",
             seconds=round(time.perf_counter() - started, 3))
    return finish(opts, p, model, None, None, log)


def select_and_refit(opts: RunOptions, p: Prepared, workers: int, log: EventLog) -> Path:
    search = opts.spec.search
    assert search is not None and p.scoring is not None
    results = collect_results(search.grid, opts.output, opts.version, workers, opts.spec.random_state)
    best = select_best(results)
    log.info("select", f"best of {len(results)} trials: trial {best.index + 1}, cv {p.scoring} "
             f"{best.score:.4f} with {best.params}", trial=best.index, trials=len(results),
             score=best.score, params=best.params)
    log.info("refit", f"refitting {p.recipe.path} with the best params on {len(p.y_train)} rows",
             params=best.params)
    model = fit_checked(p.recipe.build(best.params), p.X_train, p.y_train, p.recipe.path)
    path = finish(opts, p, model, best, results, log)
    wdir = work_dir(opts.output, opts.version)
    shutil.rmtree(wdir, ignore_errors=True)
    try:
        wdir.parent.rmdir()  # .work itself, when no other run is in flight
    except OSError:
        pass
    return path


def finish(opts: RunOptions, p: Prepared, model: Any, best: TrialResult | None,
           results: dict[int, TrialResult] | None, log: EventLog) -> Path:
    import skops.io as sio

    task = p.recipe.task
    metrics = heldout_metrics(model, task, p.X_test, p.y_test, log)
    score_name = SCORE_NAME[task]
    if p.scoring is not None and p.scoring != score_name:
        # The headline score is what the user asked the search to maximise, on the held-out split.
        from sklearn.metrics import get_scorer

        try:
            metrics[p.scoring] = float(get_scorer(p.scoring)(model, p.X_test, p.y_test))
            score_name = p.scoring
        except ValueError as e:
            log.warning("metrics", f"{p.scoring} is undefined on the held-out split ({e}); "
                        f"the score is {score_name}")
    log.info("metrics", "held-out " + ", ".join(f"{k} {v:.4f}" for k, v in metrics.items()),
             metrics=metrics)
    metadata = build_metadata(opts, p, model, metrics, score_name, best, results)
    path = write_artifact(opts.output, sio.dumps(model), metadata)
    log.info("artifact_written", f"artifact written to {path}", path=str(path),
             version=opts.version, score_name=score_name, score=metrics.get(score_name))
    return path


def build_metadata(opts: RunOptions, p: Prepared, model: Any, metrics: dict[str, float],
                   score_name: str, best: TrialResult | None,
                   results: dict[int, TrialResult] | None) -> ArtifactMetadata:
    import numpy
    import skops
    import sklearn

    n_features = int(p.data.X.shape[1])
    inputs, outputs = tensor_specs(model, p.recipe.task, n_features, p.target.label_datatype)
    search_info: dict[str, Any] | None = None
    search = opts.spec.search
    if search is not None and best is not None and results is not None:
        search_info = {
            "grid": search.grid,
            "cv": search.cv,
            "scoring": p.scoring,
            "trials": len(expand_grid(search.grid)),
            "workers": opts.workers if opts.workers is not None else opts.spec.workers,
            "best_trial": best.index,
            "best_cv_score": best.score,
        }
    return ArtifactMetadata(
        name=opts.name,
        version=opts.version,
        created=dt.datetime.now(dt.UTC),
        estimator=p.recipe.path,
        task=p.recipe.task,  # type: ignore[arg-type]
        sklearn_version=sklearn.__version__,
        numpy_version=numpy.__version__,
        skops_version=skops.__version__,
        feature_names=p.data.feature_names,
        n_features=n_features,
        classes=p.target.classes,
        inputs=inputs,
        outputs=outputs,
        metrics=metrics,
        score_name=score_name,
        params={**p.recipe.params, **(best.params if best else {})},
        best_params=best.params if best else None,
        search=search_info,
        dataset=p.data.info,
        model_sha256="",  # filled in by write_artifact from the bytes it writes
    )
