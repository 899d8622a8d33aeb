"""One run of a TrainingJob: plain training, one search shard, the select step, or all of it.

The four modes the operator and humans use map onto the same few steps:

==========================  ============================================================
whole job (no worker flags)  plain: train + write; search: every worker in turn, then select
worker i of N, search        Grid/Random: evaluate shard i; Bayesian: run trials of the
                             shared study until it holds nTrials; record them, write nothing else
worker 0 of 1, no search     plain training, writes the artifact
select                       merge all trial results, pick best, refit, evaluate, write the
                             artifact with every trial's record (trials.jsonl)
==========================  ============================================================

Search workers count their trials in a :class:`~mlvisor.trainer.progress.ProgressTracker`
(log lines, ``GET /progress`` when a port is given, the final report) and cross-validate
``n_jobs`` folds at a time: the CPUs the pod is given (``MLVISOR_CPUS``), at most ``cv``.

The spec and its data are judged together before any fitting (:func:`mlvisor.trainer.preflight.judge`,
the same judge `mlvisor validate` and the operator's pre-flight call), so an invalid job fails
in about a second with exit code 2 and every problem listed. The train/test split is the same in
every mode (``testSize``, ``randomState``, stratified for classifiers when the classes
allow it): the shards cross-validate on the training split and the select step evaluates on
the held-out split that no trial ever saw.
"""

from __future__ import annotations

import datetime as dt
import secrets
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from mlvisor import api
from mlvisor.trainer.artifact import (
    METADATA_FILE,
    ArtifactError,
    ArtifactMetadata,
    ArtifactMissing,
    write_artifact,
)
from mlvisor.trainer.datasets import Target, TrainingData
from mlvisor.trainer.estimators import EstimatorRecipe, fit_checked
from mlvisor.trainer.evaluation import SCORE_NAME, heldout_metrics, tensor_specs
from mlvisor.trainer.logs import EventLog
from mlvisor.trainer.progress import ProgressTracker
from mlvisor.trainer.search import (
    TRIALS_FILE,
    SearchRun,
    TrialResult,
    collect_results,
    run_shard,
    select_best,
    shard_owners,
    trials_jsonl,
    work_dir,
)
from mlvisor.trainer.spec import InvalidSpec
from mlvisor.trainer.storage import (
    Role,
    StorageError,
    StorageUnreachable,
    artifact_uri,
    fetch_artifact,
    upload_artifact,
)


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
    output_uri: str | None = None
    """spec.output.uri: the artifact written under ``output`` (scratch) is then put at
    ``<output_uri>/<version>/``."""
    env: Mapping[str, str] | None = None
    """Where object-store credentials are read (default: this process's environment)."""
    n_jobs: int = 1
    """Cross-validation folds run at once (the pod's CPUs, MLVISOR_CPUS); capped at search.cv."""
    progress_port: int | None = None
    """A search worker serves GET /progress on this port (MLVISOR_PROGRESS_PORT); None: no endpoint."""
    progress_host: str = "0.0.0.0"


@dataclass(frozen=True)
class Prepared:
    recipe: EstimatorRecipe
    scoring: str | None
    data: TrainingData
    target: Target
    X_train: Any
    """A float64 array, or a DataFrame for a table the model preprocesses itself."""
    X_test: Any
    y_train: np.ndarray
    y_test: np.ndarray
    summary: str | None = None
    """What was read, in one line (:attr:`mlvisor.trainer.preflight.Verdict.summary`)."""


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
                f"--workers/MLVISOR_WORKERS is {workers} but spec.search is not set: only a search's "
                "trials can be spread over workers"
            )
        if opts.select:
            raise InvalidSpec("--select/MLVISOR_STEP=select needs spec.search: there is nothing to select")
    elif opts.workers is None:
        # spec.workers, capped at the trial count as the operator caps it (same shards, same decisions)
        workers = max(1, min(workers, spec.search.trial_count()))
    return workers


def prepare(opts: RunOptions, log: EventLog) -> Prepared:
    """Judge the spec and its data (every problem at once, as ``mlvisor validate`` lists them),
    then take the estimator, the data and the split the judge checked."""
    from mlvisor.trainer.preflight import judge

    spec = opts.spec
    verdict = judge(spec, opts.data_dir, opts.env)
    if verdict.problems:
        raise InvalidSpec("; ".join(verdict.problems))
    recipe, data, target = verdict.recipe, verdict.data, verdict.target
    train, test = verdict.train_rows, verdict.test_rows
    assert recipe is not None and data is not None and target is not None and train is not None and test is not None
    log.info("dataset_loaded", f"dataset {data.info.source}:{data.info.name} loaded: {verdict.summary}",
             source=data.info.source, dataset=data.info.name, rows=data.rows,
             features=len(data.feature_names), summary=verdict.summary)
    X_train, X_test, y_train, y_test = data.take(train), data.take(test), target.y[train], target.y[test]
    log.info("split", f"train/test split: {len(y_train)} train rows, {len(y_test)} held out "
             f"(testSize {spec.test_size}, randomState {spec.random_state})",
             train_rows=len(y_train), test_rows=len(y_test))
    return Prepared(recipe, verdict.scoring, data, target, X_train, X_test, y_train, y_test, verdict.summary)


def make_tracker(opts: RunOptions, log: EventLog) -> ProgressTracker | None:
    """The progress tracker of a run that evaluates trials (None: plain training, the select step)."""
    search = opts.spec.search
    if search is None or opts.select:
        return None
    workers = check_options(opts)
    total: int | None = None
    if search.method != api.SearchMethod.BAYESIAN:
        n = search.trial_count()
        if opts.worker_index is None:
            total = n
        else:  # the size of this worker's shard, without drawing the trials
            total = shard_owners(n, workers, opts.spec.random_state).count(opts.worker_index)
    return ProgressTracker(log, total=total, worker=opts.worker_index, parallel=workers)


def run(opts: RunOptions, log: EventLog, progress: ProgressTracker | None = None) -> Path | None:
    """Run the mode ``opts`` asks for; returns the artifact directory, or None for a shard.

    ``progress`` counts a search worker's trials (one is made when not given); with
    ``opts.progress_port`` it is served at GET /progress for as long as the run lasts.
    """
    workers = check_options(opts)
    existing = Path(opts.output) / opts.version
    writes_artifact = opts.worker_index is None or opts.spec.search is None
    if writes_artifact and (existing / METADATA_FILE).is_file():
        log.info("artifact_written", f"artifact {existing} already complete; nothing to do",
                 path=str(existing), version=opts.version)
        return existing
    if writes_artifact and opts.output_uri is not None and _uploaded(opts, existing):
        log.info("artifact_written", f"artifact {artifact_uri(opts.output_uri, opts.version)} already complete; "
                 "nothing to do", path=artifact_uri(opts.output_uri, opts.version), version=opts.version)
        return existing
    search = opts.spec.search
    progress = progress or make_tracker(opts, log)
    served = progress is not None and opts.progress_port is not None and progress.port is None
    if served:
        assert progress is not None and opts.progress_port is not None
        progress.serve(opts.progress_host, opts.progress_port)
    try:
        prepared = prepare(opts, log)
        if search is None:
            return train_plain(opts, prepared, log)
        assert prepared.scoring is not None
        shards = [opts.worker_index] if opts.worker_index is not None else (
            [] if opts.select else list(range(workers)))
        if shards:
            assert progress is not None
            progress.scoring = prepared.scoring
            sr = search_run(opts, prepared, workers, log, progress)
            for index in shards:
                if sr.bayesian:
                    from mlvisor.trainer.bayes import run_worker

                    run_worker(sr, index)
                else:
                    run_shard(sr, index)
        if opts.worker_index is not None:
            return None
        return select_and_refit(opts, prepared, workers, log)
    finally:
        if served and progress is not None:
            progress.close()


def search_run(opts: RunOptions, p: Prepared, workers: int, log: EventLog,
               progress: ProgressTracker | None = None) -> SearchRun:
    search = opts.spec.search
    assert search is not None and p.scoring is not None
    return SearchRun(
        recipe=p.recipe, search=search, X=p.X_train, y=p.y_train, scoring=p.scoring,
        random_state=opts.spec.random_state, output=Path(opts.output), version=opts.version,
        workers=workers, log=log, progress=progress or ProgressTracker(log, scoring=p.scoring),
        n_jobs=max(1, min(opts.n_jobs, search.cv)),
    )


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
    sr = search_run(opts, p, workers, log)
    if sr.bayesian:
        from mlvisor.trainer.bayes import collect_results as collect_study

        results = collect_study(sr)
    else:
        results = collect_results(sr.trials(), opts.output, opts.version, workers, opts.spec.random_state)
    best = select_best(results)
    counted = [r for r in results.values() if r.counts]
    pruned = sum(1 for r in counted if r.state == "pruned")
    log.info("select", f"best of {len(counted)} trials ({pruned} stopped early): trial #{best.index}, cv "
             f"{p.scoring} {best.score:.4f} with {best.params}", trial=best.index, trials=len(counted),
             pruned=pruned, score=best.score, params=best.params)
    log.info("refit", f"refitting {p.recipe.path} with the best params on {len(p.y_train)} rows",
             params=best.params)
    model = fit_checked(p.recipe.build(best.params), p.X_train, p.y_train, p.recipe.path)
    path = finish(opts, p, model, best, results, log, extra_files={TRIALS_FILE: trials_jsonl(results)})
    wdir = work_dir(opts.output, opts.version)
    shutil.rmtree(wdir, ignore_errors=True)
    try:
        wdir.parent.rmdir()  # .work itself, when no other run is in flight
    except OSError:
        pass
    return path


def finish(opts: RunOptions, p: Prepared, model: Any, best: TrialResult | None,
           results: dict[int, TrialResult] | None, log: EventLog,
           extra_files: dict[str, bytes] | None = None) -> Path:
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
    path = write_artifact(opts.output, sio.dumps(model), metadata, extra_files)
    where = str(path)
    if opts.output_uri is not None:
        where = _upload(opts, path)
    log.info("artifact_written", f"artifact written to {where}", path=where,
             version=opts.version, score_name=score_name, score=metrics.get(score_name))
    return path


def _storage_failure(e: StorageError) -> Exception:
    """An object store that does not answer is a crash (restarted, counted); any other refusal
    (access denied, no such bucket) is the spec's, and retrying cannot help."""
    if isinstance(e, StorageUnreachable):
        return e
    return InvalidSpec(f"spec.output.uri: {e}")


def _uploaded(opts: RunOptions, local: Path) -> bool:
    """Whether the version is already complete in the object store (a restarted writer); its
    artifact is then fetched to ``local`` for the summary. Access is checked here, before any fitting."""
    assert opts.output_uri is not None
    uri = artifact_uri(opts.output_uri, opts.version)
    try:
        fetch_artifact(uri, local, opts.env, Role.OUTPUT)
    except ArtifactMissing:
        return False
    except StorageError as e:
        raise _storage_failure(e) from None
    except ArtifactError as e:
        raise InvalidSpec(f"spec.output.uri: {e}") from None
    return True


def _upload(opts: RunOptions, path: Path) -> str:
    assert opts.output_uri is not None
    try:
        return upload_artifact(path, artifact_uri(opts.output_uri, opts.version), opts.env)
    except StorageError as e:
        raise _storage_failure(e) from None


def build_metadata(opts: RunOptions, p: Prepared, model: Any, metrics: dict[str, float],
                   score_name: str, best: TrialResult | None,
                   results: dict[int, TrialResult] | None) -> ArtifactMetadata:
    import numpy
    import sklearn
    import skops

    n_features = len(p.data.feature_names)
    columns = p.recipe.preprocessing.contract() if p.recipe.preprocessing is not None else None
    inputs, outputs = tensor_specs(model, p.recipe.task, n_features, p.target.label_datatype, columns)
    search_info: dict[str, Any] | None = None
    search = opts.spec.search
    if search is not None and best is not None and results is not None:
        counted = [r for r in results.values() if r.counts]
        search_info = {
            "method": search.method.value,
            **({"grid": search.grid} if search.grid is not None else {}),
            **({"distributions": {k: d.to_wire() for k, d in search.distributions.items()},
                "n_trials": search.n_trials} if search.distributions is not None else {}),
            "cv": search.cv,
            "scoring": p.scoring,
            "trials": len(counted),
            "trials_pruned": sum(1 for r in counted if r.state == "pruned"),
            "trials_failed": sum(1 for r in counted if r.state == "failed"),
            "trials_retried": sum(1 for r in counted if r.retried),
            "workers": check_options(opts),
            "best_trial": best.index,
            "best_cv_score": best.score,
            "trials_file": TRIALS_FILE,
        }
        if search.early_stopping is not None:
            search_info["early_stopping"] = search.early_stopping.to_wire()
    return ArtifactMetadata(
        name=opts.name,
        version=opts.version,
        created=dt.datetime.now(dt.UTC),
        estimator=p.recipe.path,
        task=p.recipe.task,
        sklearn_version=sklearn.__version__,
        numpy_version=numpy.__version__,
        skops_version=skops.__version__,
        feature_names=p.data.feature_names,
        n_features=n_features,
        classes=p.target.classes,
        columns=columns,
        inputs=inputs,
        outputs=outputs,
        metrics=metrics,
        score_name=score_name,
        params={**p.recipe.params, **(best.params if best else {})},
        best_params=best.params if best else None,
        search=search_info,
        dataset=p.data.info if p.data.info.source == "builtin" or not p.summary
        else p.data.info.model_copy(update={"description": p.summary}),
        model_sha256="",  # filled in by write_artifact from the bytes it writes
    )
