"""Bayesian search: the workers share one Optuna study in a journal file on the output volume.

Each worker pod runs :func:`run_worker`: it opens the study ``<output>/.work/<version>/study.journal``
(Optuna's ``JournalStorage`` over a ``JournalFileBackend``), claims a trial, asks Optuna's TPE
sampler for its parameters, cross-validates it (reporting each fold to the study's pruner when
``earlyStopping`` is set), records the fold scores and tells the result, until the study holds
``nTrials`` trials. The study is the single record of a Bayesian search: the select step reads it.

**Exactly nTrials, none lost, none run twice.** Trials are claimed under an exclusive lock on
``claim.lock`` (``fcntl.flock``, which the kernel releases when its holder dies, SIGKILL
included): count the trials that count, and if fewer than nTrials, ``ask`` for one (a waiting
retry first), mark it with the worker's index and suggest its parameters, all inside the lock. A
finished trial is one the journal says is COMPLETE or PRUNED (one fsync'ed append), so a worker
killed after that never runs it again, and one killed before it left the trial RUNNING with its
index. When that worker starts again (the supervisor starts a new attempt only once the old pod
is gone), it finds such trials under the lock: each was in flight when the worker died, so it
is marked ``interrupted`` (FAIL, not counted) and queued again once with the same parameters
(``enqueue_trial``, ``retry_of`` naming the interrupted one; whichever worker asks next runs it),
and both the log and the trial records say so. A retry that is itself interrupted is given up:
recorded as failed and counted, as it is the likely cause of the deaths (out of memory on those
parameters), and the search goes on with other trials. A RUNNING trial without a worker index is
a claim that died inside the lock: it never ran, and is marked ``abandoned`` (not counted).

**Sampler.** TPE (Optuna's default sampler, as Katib uses it) with ``constant_liar`` (running
trials count as pessimistic results, so parallel workers do not all try the same region) and
``n_startup_trials`` random trials first: min(10, max(3, nTrials // 3)), Optuna's default of 10
for searches of 30 trials and more. Each worker seeds its sampler with randomState, its index
and the number of trials already in the study, so its random start-up draws differ from the
other workers' and from its own earlier attempt's.

**Storage.** A journal file needs a file system every worker pod can reach: on one node any
volume does; on a multi-node cluster the output claim must be ReadWriteMany (NFS, CephFS,
Filestore, EFS, Azure Files...). The locks are ``flock`` on files beside the journal, which
NFSv4 and these file systems honour across nodes. (A shared database, Optuna's RDBStorage, is
the other way; mlvisor does not offer it.)
"""

from __future__ import annotations

import fcntl
import json
import logging
import math
import os
import random
from pathlib import Path
from typing import Any

from mlvisor import api
from mlvisor.api.progress import TrialBrief, merge_top
from mlvisor.trainer.distributions import external_params, suggest
from mlvisor.trainer.search import (
    SearchRun,
    Trial,
    TrialResult,
    _log_trial,
    evaluate_trial,
    make_pruner,
    work_dir,
)

STUDY_FILE = "study.journal"
CLAIM_LOCK = "claim.lock"
STUDY_NAME = "mlvisor"

_quiet = False


def quiet_optuna(log: Any = None) -> None:
    """Optuna's own log lines would break the trainer's one-JSON-object-per-line stderr: its
    INFO lines (one per trial) are dropped, its warnings go to the trainer's log."""
    global _quiet
    import optuna

    logger = logging.getLogger("optuna")
    if not _quiet:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.logging.disable_default_handler()
        logger.propagate = False
        _quiet = True
    if log is not None:
        for h in [h for h in logger.handlers if isinstance(h, _ToEventLog)]:
            logger.removeHandler(h)
        logger.addHandler(_ToEventLog(log))


class _ToEventLog(logging.Handler):
    def __init__(self, log: Any) -> None:
        super().__init__(logging.WARNING)
        self.log = log

    def emit(self, record: logging.LogRecord) -> None:
        self.log.warning("optuna", record.getMessage())


class FlockLock:
    """An exclusive ``flock`` on a lock file: released by the kernel when its holder dies.

    Also the journal's lock: Optuna's JournalFileBackend only calls ``acquire``/``release``, and
    its own file locks are left behind by a SIGKILLed holder (the others then wait 30 s)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None

    def acquire(self) -> bool:
        fd = os.open(self.path, os.O_CREAT | os.O_RDWR, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return True

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            try:
                fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def __enter__(self) -> FlockLock:
        self.acquire()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.release()


def study_path(output: Path, version: str) -> Path:
    return work_dir(output, version) / STUDY_FILE


def n_startup_trials(n_trials: int) -> int:
    return min(10, max(3, n_trials // 3))


def open_study(output: Path, version: str, search: api.Search, *, seed: int | None = None,
               create: bool = True) -> Any:
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend

    quiet_optuna()
    path = study_path(output, version)
    if create:
        path.parent.mkdir(parents=True, exist_ok=True)
    elif not path.is_file():
        raise RuntimeError(f"select: {path} does not exist: no worker of this Bayesian search has run")
    lock = FlockLock(path.with_name(STUDY_FILE + ".lock"))
    storage = JournalStorage(JournalFileBackend(str(path), lock_obj=lock))  # type: ignore[arg-type]
    sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=n_startup_trials(search.n_trials or 0), constant_liar=True)
    return optuna.create_study(study_name=STUDY_NAME, storage=storage, direction="maximize",
                               sampler=sampler, pruner=make_pruner(search.early_stopping),
                               load_if_exists=True)


def counts(t: Any) -> bool:
    """Whether a study trial is one of the search's nTrials (running and waiting ones included)."""
    from optuna.trial import TrialState

    if t.state != TrialState.FAIL:
        return True
    return not (t.user_attrs.get("interrupted") or t.user_attrs.get("abandoned"))


def finished(t: Any) -> bool:
    from optuna.trial import TrialState

    return t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL) and counts(t)


def _params(t: Any, search: api.Search) -> dict[str, Any]:
    dists = search.distributions or {}
    out = {}
    for name in sorted(t.params):
        value = t.params[name]
        out[name] = json.loads(value) if name in dists and dists[name].choice is not None else value
    return out


def result_of(t: Any, search: api.Search) -> TrialResult:
    """A study trial as the trainer records it."""
    from optuna.trial import TrialState

    attrs = t.user_attrs
    folds = [float(s) for s in attrs.get("fold_scores") or []]
    if t.state == TrialState.COMPLETE:
        state = "complete"
    elif t.state == TrialState.PRUNED:
        state = "pruned"
    elif attrs.get("interrupted"):
        state = "interrupted"
    elif attrs.get("abandoned"):
        state = "abandoned"
    else:
        state = "failed"
    score = float(sum(folds) / len(folds)) if folds else float("nan")
    if t.state == TrialState.COMPLETE and t.value is not None:
        score = float(t.value)
    return TrialResult(index=t.number, params=_params(t, search), score=score, fold_scores=folds,
                       seconds=float(attrs.get("seconds") or 0.0), state=state, worker=attrs.get("worker"),
                       retried=attrs.get("retry_of") is not None, retry_of=attrs.get("retry_of"))


def _brief(t: Any, search: api.Search) -> TrialBrief:
    return TrialBrief(trial=t.number, score=float(t.value), params=_params(t, search), worker=t.user_attrs.get("worker"))


def _look(study: Any, run: SearchRun) -> list[Any]:
    """The study's trials; tells the progress tracker what the whole study has done."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.value is not None and math.isfinite(t.value)]
    top = merge_top([_brief(t, run.search) for t in complete])
    run.progress.study(sum(1 for t in trials if finished(t)), run.search.n_trials or 0, top)
    return trials


def _trial_handle(study: Any, frozen: Any) -> Any:
    import optuna

    return optuna.Trial(study, frozen._trial_id)


def _recover(study: Any, run: SearchRun, index: int) -> None:
    """Under the claim lock: retry (once) the trials this worker's previous attempt left running."""
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retry_of") for t in trials}
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        owner = t.user_attrs.get("worker")
        handle = _trial_handle(study, t)
        if owner is None:
            handle.set_user_attr("abandoned", True)
            study.tell(t.number, state=TrialState.FAIL)
            continue
        if owner != index:
            continue  # a running trial of another worker: it is alive, or it will recover its own
        if t.user_attrs.get("retry_of") is not None:
            handle.set_user_attr("gave_up", True)
            study.tell(t.number, state=TrialState.FAIL)
            run.log.warning("trial_failed", f"trial #{t.number} (a retry of trial #{t.user_attrs['retry_of']}) was "
                            "in flight when this worker died again: recorded as failed, not run a third time "
                            f"(it is likely the cause, e.g. out of memory with {_params(t, run.search)})",
                            trial=t.number, params=_params(t, run.search))
            continue
        if t.number not in retried:
            study.enqueue_trial(external_params(_params(t, run.search), run.search.distributions or {}),
                                user_attrs={"retry_of": t.number})
        handle.set_user_attr("interrupted", True)
        study.tell(t.number, state=TrialState.FAIL)
        run.log.warning("trial_retried", f"trial #{t.number} was in flight when this worker died: it is "
                        f"recorded as interrupted and runs again, once, as a new trial with the same "
                        f"params {_params(t, run.search)}", trial=t.number, params=_params(t, run.search))


def _seed(random_state: int, index: int, n: int) -> int:
    return random.Random(f"mlvisor-tpe:{random_state}:{index}:{n}").getrandbits(32)


def run_worker(run: SearchRun, index: int) -> None:
    """Run trials of the shared study until it holds nTrials (see the module docstring)."""
    from optuna.trial import TrialState

    quiet_optuna(run.log)
    search = run.search
    n_trials = search.n_trials or 0
    wdir = work_dir(run.output, run.version)
    wdir.mkdir(parents=True, exist_ok=True)
    claim = FlockLock(wdir / CLAIM_LOCK)
    with claim:
        existing = open_study(run.output, run.version, search).get_trials(deepcopy=False)
        study = open_study(run.output, run.version, search, seed=_seed(run.random_state, index, len(existing)))
        _recover(study, run, index)
        trials = _look(study, run)
        mine = [t for t in trials if t.user_attrs.get("worker") == index and finished(t)]
    for t in mine:
        run.progress.add(result_of(t, search), resumed=True)
    run.log.info("shard", f"worker {index} of {run.workers} joins the study: {sum(finished(t) for t in trials)} "
                 f"of {n_trials} trials finished, {len(mine)} of them by this worker",
                 shard=index, workers=run.workers, total_trials=n_trials, resumed=len(mine))
    ran = 0
    crash_after = int(os.environ.get("MLVISOR_TEST_CRASH_AFTER_TRIALS", "0") or 0)
    while True:
        with claim:
            trials = _look(study, run)
            waiting = any(t.state == TrialState.WAITING for t in trials)
            if not waiting and sum(counts(t) for t in trials) >= n_trials:
                break
            trial = study.ask()
            trial.set_user_attr("worker", index)
            params = {name: suggest(trial, name, dist) for name, dist in sorted((search.distributions or {}).items())}
        retry_of = trial.user_attrs.get("retry_of")
        if retry_of is not None:
            run.log.info("trial_retry", f"trial #{trial.number} runs the params of interrupted trial #{retry_of} again",
                         trial=trial.number, retry_of=retry_of)

        def observe(fold: int, mean_so_far: float, trial: Any = trial) -> bool:
            trial.report(mean_so_far, fold)
            return bool(trial.should_prune())

        pruner = observe if search.early_stopping is not None else None
        result = evaluate_trial(run.recipe, Trial(trial.number, params), run.X, run.y, run.scoring, run.folds,
                                run.random_state, run.log, None, n_jobs=run.n_jobs, observe=pruner, worker=index)
        trial.set_user_attr("fold_scores", result.fold_scores)
        trial.set_user_attr("seconds", round(result.seconds, 4))
        if result.state == "pruned":
            study.tell(trial, state=TrialState.PRUNED)
        elif math.isfinite(result.score):
            study.tell(trial, result.score)
        else:
            study.tell(trial, state=TrialState.FAIL)
            result = TrialResult(result.index, params, result.score, result.fold_scores, result.seconds,
                                 state="failed", worker=index)
        if retry_of is not None:
            result = TrialResult(result.index, params, result.score, result.fold_scores, result.seconds,
                                 state=result.state, worker=index, retried=True, retry_of=retry_of)
        ran += 1
        _look(study, run)
        _log_trial(run.log, result, n_trials, run.scoring)
        run.progress.add(result)
        if run.after_trial is not None:
            run.after_trial(ran)
        if crash_after and ran >= crash_after:
            os._exit(137)
    run.log.info("shard_done", f"worker {index} of {run.workers} done: the study holds its {n_trials} trials "
                 f"({ran} run by this attempt)", shard=index, workers=run.workers, trials=ran)


def collect_results(run: SearchRun) -> dict[int, TrialResult]:
    """Every trial of the study; RuntimeError unless it holds nTrials finished ones and nothing running."""
    from optuna.trial import TrialState

    study = open_study(run.output, run.version, run.search, create=False)
    trials = study.get_trials(deepcopy=False)
    n_trials = run.search.n_trials or 0
    pending = [t.number for t in trials if t.state in (TrialState.RUNNING, TrialState.WAITING)]
    done = [t for t in trials if finished(t)]
    if pending or len(done) < n_trials:
        raise RuntimeError(
            f"select: the study {study_path(run.output, run.version)} holds {len(done)} finished of "
            f"{n_trials} trials ({len(pending)} still running or waiting: {pending[:10]}); run every "
            "worker to completion before the select step")
    return {t.number: result_of(t, run.search) for t in trials}
