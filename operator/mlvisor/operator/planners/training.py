"""The TrainingJob planner: (job, observed pods, now) -> Plan. Pure and level-triggered.

Both shells call ``plan_training`` on every event and on every requeue. It recomputes the
job's status from what is observed plus what only the status can remember (restart
history, attempts, version, handled failures), asks ``supervision.supervise_exit`` about
every child exit, and returns the actions that bring the world to the new status.

Decisions this module makes (the docs were silent):

- **Finished pods are kept, running ones are stopped.** A restart deletes the running pods
  of its group; pods that already terminated stay (``kubectl logs`` of a failed attempt is
  the first thing a user wants) until the job is deleted or ttlSecondsAfterFinished.
- **A new attempt starts only after the old pod is gone** (no Pending/Running/Unknown pod
  of an older attempt for that index), as OTP terminates a child before restarting it:
  two attempts of one shard never write at once.
- **Deletes are level-triggered, creates are not.** A pod that should not run is deleted
  on every call while it is observed alive and not already terminating (the shells treat
  404 as done), so a lost delete heals itself. A create happens exactly once: the status
  records the new attempt in the same plan, and a replay with the same observations
  creates nothing. The status is written only after the create succeeded and the shells
  observe pods with a fresh (consistent) list, so a pod the status names but the list lacks
  was deleted: seen Running, at once, or still Pending, once it has been missing for
  POD_LOST_GRACE_SECONDS after its create (a replay of observations taken before the create
  changes nothing), it is a failure with reason ``PodLost`` (classify it in failurePolicy if
  it should be ignored). Waiting for it instead left a job whose Pending pod had been deleted
  waiting for ever (found through the fault tier on a real API server).
- **A pod of a newer attempt than the status knows is adopted**, not duplicated (the shell
  created it and crashed before writing status).
- **Search jobs with more workers than trials** run only as many workers as there are
  trials (``--workers`` is that number), rather than pods with empty shards.
- **Progress** (``status.progress``) is what the search workers report: a running worker's
  latest ``GET /progress`` (``ObservedPod.progress``, polled by the shells) and a finished
  one's final report (its termination message). Workers' trial counts are kept per worker
  (``workers[].trialsDone``) and summed; the best trials are merged; numbers never go back
  within a run (a restarted worker resumes its count). While a search worker runs, the plan
  asks to be called again every ``config.progress_poll_seconds``, which is how the shells
  poll; a status that did not change is never written, so a search whose workers report
  nothing new costs no writes, and one that does costs at most one every poll period.
- **The select step** is the child after the last worker (index ``workers`` for the
  supervisor, SELECT_INDEX on the pod): OneForAll re-runs every shard when it fails,
  OneForOne and RestForOne re-run the select step only.
- **A Failed job starts a new run when its spec changes** (docs/supervision.md: terminal "unless
  its spec changes"): raising maxRestarts, fixing the image or the resources of a job that
  escalated starts every worker again at attempt+1 under a new version, with a fresh restart
  window (the parent restarting a supervisor that escalated). Changing only suspend or
  ttlSecondsAfterFinished is not a new spec for this purpose (``status.specHash``); a job
  that failed before it ever ran (InvalidSpec) retries on any new generation.
- **Suspend** keeps attempts and the restart window; resuming starts attempt+1 without
  counting a restart, and resets startTime (as Kubernetes Jobs do), so activeDeadlineSeconds
  measures time spent running since the last resume.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Sequence
from dataclasses import dataclass, field

from mlvisor import api
from mlvisor.api.exits import TerminationSummary
from mlvisor.api.progress import ProgressReport, TrialBrief, merge_top
from mlvisor.operator.builders import build_worker_pod, memory_limit, model_uri_for, spec_json, worker_pod_name
from mlvisor.operator.plan import (
    SELECT_INDEX,
    Action,
    CreatePod,
    DeletePod,
    ObservedPod,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.planners.conditions import (
    ConditionWriter,
    failure_record,
    find_condition,
    from_timestamp,
    quantize,
    store_supervisor_state,
    supervisor_state,
    to_timestamp,
    waiting_due,
)
from mlvisor.operator.supervision import (
    Decision,
    Failure,
    Policy,
    Verdict,
    restarts_in_window,
    supervise_exit,
)

__all__ = [
    "MAX_SEARCH_TRIALS",
    "MAX_SPEC_BYTES",
    "check_training_spec",
    "effective_workers",
    "plan_training",
    "run_spec_hash",
]

Phase = api.TrainingPhase
WPhase = api.WorkerPhase

#: Largest grid the operator accepts: beyond it a search never finishes in useful time.
MAX_SEARCH_TRIALS = 100_000
#: Largest spec (serialised) the operator accepts: workers receive it in an environment
#: variable, and kopf keeps a copy in an annotation (262144 bytes for all annotations).
MAX_SPEC_BYTES = 128 * 1024
#: Re-check this soon while waiting for an old pod to terminate before a restart.
WAIT_FOR_TERMINATION_SECONDS = 2.0
POD_LOST_GRACE_SECONDS = 10.0
"""A Pending pod the status names but the fresh list lacks for this long was deleted."""

_ALIVE = frozenset({"Pending", "Running", "Unknown"})
_ACTIVE = frozenset({WPhase.PENDING, WPhase.RUNNING})


def search_trials(spec: api.TrainingJobSpec) -> int:
    """Number of trials of the search: the grid's combinations, or nTrials (0 without a search)."""
    if spec.search is None:
        return 0
    return spec.search.trial_count()


def effective_workers(spec: api.TrainingJobSpec) -> int:
    """Worker pods the job runs: 1 without a search, else spec.workers capped at the trial count."""
    if spec.search is None:
        return 1
    return max(1, min(spec.workers, search_trials(spec)))


#: Spec fields whose change does not make a Failed job run again.
_NOT_RUN_DEFINING = ("suspend", "ttlSecondsAfterFinished")


def run_spec_hash(spec: api.TrainingJobSpec) -> str:
    """Fingerprint of everything in the spec that shapes a run (all but suspend and TTL)."""
    wire = {k: v for k, v in spec.to_wire().items() if k not in _NOT_RUN_DEFINING}
    return hashlib.sha256(json.dumps(wire, sort_keys=True, separators=(",", ":")).encode()).hexdigest()[:16]


def check_training_spec(job: api.TrainingJob, config: OperatorConfig, spec_text: str | None = None) -> list[str]:
    """What is wrong with a spec that parsed but that only the operator can judge (empty: fine).

    ``spec_text``: :func:`~mlvisor.operator.builders.spec_json` of the spec, if the caller has it."""
    problems = []
    trials = search_trials(job.spec)
    if trials > MAX_SEARCH_TRIALS:
        problems.append(
            f"spec.search.grid has {trials} parameter combinations; at most {MAX_SEARCH_TRIALS} "
            "are allowed: remove values or parameters from the grid, or use method Random with nTrials"
        )
    size = len(spec_text if spec_text is not None else spec_json(job.spec))
    if size > MAX_SPEC_BYTES:
        problems.append(
            f"spec is {size} bytes when serialised; at most {MAX_SPEC_BYTES} are allowed because "
            "workers receive it in an environment variable: shrink spec.search.grid or spec.estimator.params"
        )
    if not (job.spec.image or config.image):
        problems.append("spec.image is empty and the operator has no default image: set spec.image or MLVISOR_IMAGE")
    return problems


def plan_training(
    job: api.TrainingJob,
    observed: Sequence[ObservedPod],
    now: float,
    config: OperatorConfig,
    *,
    preflight: Sequence[str] = (),
) -> Plan:
    """Plan one reconcile of ``job`` given its observed pods at ``now`` (epoch seconds).

    status.model's metrics, score, bestParams and sklearnVersion come from the
    :class:`~mlvisor.api.exits.TerminationSummary` a succeeded trainer left as its termination
    message (``ObservedPod.message``): the same channel on a cluster and locally.
    ``preflight`` is what the shell's pre-flight check (the trainer's, with scikit-learn)
    found wrong with the spec: before the run starts, any problem fails the job with
    InvalidSpec and no pod is created. Once a run has started it is ignored (an operator
    upgraded mid-run never fails a job that the old one accepted).
    Always returns the whole new status; the shells patch only what differs.
    """
    return _TrainingReconcile(job, observed, quantize(now), config, tuple(preflight)).run()


@dataclass
class _TrainingReconcile(ConditionWriter):
    job: api.TrainingJob
    observed: Sequence[ObservedPod]
    now: float
    config: OperatorConfig
    preflight: tuple[str, ...] = ()
    status: api.TrainingJobStatus = field(init=False)
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    deleted: set[str] = field(default_factory=set)
    created: set[str] = field(default_factory=set)
    """Pods this plan creates: not yet in the observations it was computed from."""
    waiting: list[tuple[int, ObservedPod]] = field(default_factory=list)
    """(worker index, pod) of running children whose pods cannot start (an image that cannot be
    pulled, no node fits)."""

    def __post_init__(self) -> None:
        self.status = (
            self.job.status.clone() if self.job.status is not None else api.TrainingJobStatus()
        )
        self.spec = self.job.spec
        self.generation = self.job.metadata.generation
        self.workers = effective_workers(self.spec)

    @functools.cached_property
    def spec_text(self) -> str:
        """The spec as workers receive it, made once per reconcile: its size is checked in every
        one, and each pod a reconcile creates carries it (it was made anew each time)."""
        return spec_json(self.spec)

    # ------------------------------------------------------------------ main flow

    def run(self) -> Plan:
        st = self.status
        if st.phase == Phase.FAILED and self._spec_changed_since_failure():
            self._begin_new_run()
        elif st.phase in (Phase.SUCCEEDED, Phase.FAILED):
            self._finished()
            return self._plan()

        problems = check_training_spec(self.job, self.config, self.spec_text)
        if st.version is None:
            problems += list(self.preflight)
        if problems:
            self._fail("InvalidSpec", "; ".join(problems))
            return self._plan()

        if st.version is None:
            self._start()

        if self.spec.suspend:
            if st.phase != Phase.SUSPENDED:
                if self._supervise_exits():
                    return self._plan()
                self._suspend()
            self._delete_alive(self._alive_pods(), "the job is suspended")
            return self._plan()
        if st.phase == Phase.SUSPENDED:
            self._resume()

        if self._deadline_passed():
            return self._plan()
        # A pod adopted from a plan whose status write was lost may have run, even finished,
        # since: its exit is read in this same reconcile, so that the plan is a fixed point of
        # its own writes (a reconcile on their echo would change nothing; the shells need none).
        # Adopting comes first and creating last, so that no decision taken after a create (a
        # failure read from an adopted pod) misses a pod it should stop. Each pass that adopts
        # takes over another observed pod, so the loop always ends on a pass that adopts none.
        for _ in range(len(self.observed) + 1):
            if self._supervise_exits():
                return self._plan()
            if self._complete_if_done():
                return self._plan()
            if not self._start_due_children(create=False):
                break
        self._start_due_children(create=True)
        self._delete_strays()
        self._settle_phase()
        return self._plan()

    def _plan(self) -> Plan:
        st = self.status
        st.observed_generation = self.generation
        self._track_progress()
        self._summarise()
        ttl = self.spec.ttl_seconds_after_finished
        if st.phase in (Phase.SUCCEEDED, Phase.FAILED) and ttl is not None and st.completion_time:
            self.requeue.append(to_timestamp(st.completion_time) + ttl - self.now)
        requeue = min((r for r in self.requeue if r > 0), default=None)
        return Plan(actions=tuple(self.actions), status=st, requeue_after=requeue)

    # ------------------------------------------------------------------ children

    def _records(self) -> list[tuple[int, api.WorkerStatus]]:
        """(supervisor child index, record) in start order; the select step is child ``workers``."""
        out = [(w.index, w) for w in self.status.workers if w.index < self.workers]
        if self.status.select is not None:
            out.append((self.workers, self.status.select))
        return out

    def _record(self, child: int) -> api.WorkerStatus:
        if child == self.workers:
            assert self.status.select is not None
            return self.status.select
        return next(w for w in self.status.workers if w.index == child)

    def _pods_of(self, index: int) -> list[ObservedPod]:
        return [p for p in self.observed if p.index == index]

    def _current_pod(self, rec: api.WorkerStatus) -> ObservedPod | None:
        for p in self._pods_of(rec.index):
            if p.attempt == rec.attempt:
                return p
        return None

    def _alive_pods(self) -> list[ObservedPod]:
        return [p for p in self.observed if p.phase in _ALIVE]

    def _logical(self, index: int) -> int:
        return self.workers if index == SELECT_INDEX else index

    def _delete(self, pod: ObservedPod, reason: str) -> None:
        if pod.deleting or pod.name in self.deleted or pod.phase not in _ALIVE:
            return
        self.deleted.add(pod.name)
        self.actions.append(DeletePod(name=pod.name, reason=reason))

    def _delete_alive(self, pods: Sequence[ObservedPod], reason: str) -> None:
        """Delete in reverse start order (select step, then the highest worker index first), as OTP does."""
        for p in sorted(pods, key=lambda p: (self._logical(p.index), p.attempt), reverse=True):
            self._delete(p, reason)

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(RecordEvent(type=type_, reason=reason, message=message))  # type: ignore[arg-type]

    # ------------------------------------------------------------------ lifecycle steps

    def _start(self) -> None:
        """First reconcile: fix the version, create every worker at attempt 1 (unless suspended)."""
        st, meta = self.status, self.job.metadata
        generation = meta.generation or 1
        st.version = f"{meta.uid[:8]}-{generation}" if meta.uid else f"{meta.name}-{generation}"
        st.spec_hash = run_spec_hash(self.spec)
        suspended = self.spec.suspend
        st.workers = [
            api.WorkerStatus(index=i, attempt=1, phase=WPhase.STOPPED if suspended else WPhase.PENDING)
            for i in range(self.workers)
        ]
        capped = ""
        if self.spec.search is not None and self.workers < self.spec.workers:
            capped = (
                f" (spec.workers is {self.spec.workers} but the grid has only {self.workers} "
                f"combinations, so only {self.workers} workers run)"
            )
        if suspended:
            st.phase = Phase.SUSPENDED
            message = f"version {st.version}: created suspended; set spec.suspend to false to start{capped}"
            self._condition("Created", "True", "Created", message)
            self._condition("Suspended", "True", "Suspended", "spec.suspend is true")
        else:
            st.phase = Phase.RUNNING
            st.start_time = from_timestamp(self.now)
            for w in st.workers:
                self._create(w, w.attempt)
            message = f"version {st.version}: started {self.workers} worker pod(s){capped}"
            self._condition("Created", "True", "Created", message)
            self._condition("Running", "True", "WorkersRunning", f"0/{self.workers} workers succeeded")
        self._event("Normal", "Created", message)

    def _spec_changed_since_failure(self) -> bool:
        st = self.status
        if st.version is None:  # failed before it ever ran (InvalidSpec): a new generation may fix it
            failed = find_condition(st.conditions, "Failed")
            return failed is None or (self.generation or 0) > (failed.observed_generation or 0)
        return st.spec_hash is not None and st.spec_hash != run_spec_hash(self.spec)

    def _begin_new_run(self) -> None:
        """Leave Failed: every child starts again (attempt+1) under a new version and a fresh window."""
        st = self.status
        previous = st.version
        st.completion_time = None
        st.model = None
        st.supervision.restart_times = []
        st.supervision.next_restart_time = None
        message = f"the spec changed (generation {self.generation}): starting a new run"
        self._condition("Failed", "False", "SpecChanged", message)
        if previous is None:
            st.phase = Phase.PENDING  # _start() takes it from here, as for a new job
            return
        meta = self.job.metadata
        generation = meta.generation or 1
        st.version = f"{meta.uid[:8]}-{generation}" if meta.uid else f"{meta.name}-{generation}"
        st.spec_hash = run_spec_hash(self.spec)
        for _, rec in self._records():
            rec.phase = WPhase.STOPPED  # _start_due_children creates attempt+1 of each
            rec.restart_at = None
            rec.trials_done = rec.trials_total = None  # a new version: the search starts over
        st.progress = None
        st.phase = Phase.RUNNING
        st.start_time = from_timestamp(self.now)
        self._event("Normal", "NewRun", f"{message}, version {st.version} (the failed run was {previous})")

    def _create(self, rec: api.WorkerStatus, attempt: int) -> None:
        assert self.status.version is not None
        rec.attempt = attempt
        rec.pod = worker_pod_name(self.job, rec.index, attempt)
        self.created.add(rec.pod)
        rec.phase = WPhase.PENDING
        rec.restart_at = None
        rec.created_at = from_timestamp(self.now)
        self.actions.append(
            CreatePod(
                manifest=build_worker_pod(
                    self.job, rec.index, attempt, self.status.version, self.config, workers=self.workers,
                    spec_text=self.spec_text,
                )
            )
        )

    def _suspend(self) -> None:
        for _, rec in self._records():
            if rec.phase in (WPhase.PENDING, WPhase.RUNNING, WPhase.RESTARTING):
                rec.phase = WPhase.STOPPED
                rec.restart_at = None
        self.status.phase = Phase.SUSPENDED
        message = "spec.suspend is true: worker pods are deleted; set it to false to resume"
        self._condition("Suspended", "True", "Suspended", message)
        self._condition_false_if_present("Running", "Suspended", message)
        self._condition_false_if_present("Restarting", "Suspended", message)
        self._event("Normal", "Suspended", message)

    def _resume(self) -> None:
        st = self.status
        st.phase = Phase.RUNNING
        st.start_time = from_timestamp(self.now)
        message = "spec.suspend is false: stopped workers start again (not counted as restarts)"
        self._condition("Suspended", "False", "Resumed", message)
        self._condition("Running", "True", "WorkersRunning", message)
        self._event("Normal", "Resumed", message)

    def _deadline_passed(self) -> bool:
        deadline, start = self.spec.active_deadline_seconds, self.status.start_time
        if deadline is None or start is None:
            return False
        remaining = to_timestamp(start) + deadline - self.now
        if remaining > 0:
            self.requeue.append(remaining)
            return False
        self._fail(
            "DeadlineExceeded",
            f"the job ran longer than spec.activeDeadlineSeconds ({deadline}s); "
            "raise it or make training cheaper (fewer trials, smaller estimator)",
        )
        return True

    def _policy(self) -> Policy:
        sup = self.spec.supervision
        children = tuple(range(self.workers))
        if self.status.select is not None:
            children += (self.workers,)
        return Policy(
            restart=sup.restart,
            max_restarts=sup.max_restarts,
            period_seconds=sup.period_seconds,
            strategy=sup.strategy,
            failure_policy=tuple(sup.failure_policy),
            backoff_initial=sup.backoff.initial_seconds,
            backoff_factor=sup.backoff.factor,
            backoff_max=sup.backoff.max_seconds,
            children=children,
            memory_limit=memory_limit(self.job),
        )

    def _exit_of(self, child: int, rec: api.WorkerStatus) -> Failure | None:
        """The exit of a running child's current pod, if it has one to report."""
        if rec.phase not in _ACTIVE:
            return None  # Restarting/Stopped children's old pods die on our orders: not failures
        pod = self._current_pod(rec)
        if pod is None:
            if rec.pod is None or rec.pod in self.created:
                return None  # no pod yet, or created by this very plan
            if rec.phase == WPhase.PENDING and rec.created_at is not None:
                # Observations taken before the create may still be replayed for a moment;
                # past the grace a missing Pending pod was deleted, not slow to appear.
                wait = to_timestamp(rec.created_at) + POD_LOST_GRACE_SECONDS - self.now
                if wait > 0:
                    self.requeue.append(wait)
                    return None
            return Failure(child=child, pod=rec.pod, reason="PodLost")
        if pod.phase in ("Pending", "Running"):
            rec.phase = WPhase(pod.phase)
            if pod.waiting:
                self.waiting.append((rec.index, pod))
            return None
        if pod.phase not in ("Succeeded", "Failed"):
            return None
        return Failure(
            child=child,
            pod=pod.name,
            restart_count=pod.restart_count,
            exit_code=0 if pod.phase == "Succeeded" and pod.exit_code is None else pod.exit_code,
            reason=pod.reason,
            pod_conditions=pod.conditions,
            succeeded=pod.phase == "Succeeded",
            message=None if pod.phase == "Succeeded" else pod.message,
            message_source=None if pod.phase == "Succeeded" else pod.message_source,
        )

    def _supervise_exits(self) -> bool:
        """Feed every child exit to the supervisor, in start order. True when the job escalated."""
        self.waiting = []  # what the children's pods wait for, found anew on every pass
        for child, rec in self._records():
            exit_ = self._exit_of(child, rec)
            if exit_ is None:
                continue
            decision, state = supervise_exit(supervisor_state(self.status.supervision), exit_, self._policy(), self.now)
            if decision.verdict is Verdict.DUPLICATE:
                continue
            store_supervisor_state(self.status.supervision, state)
            rec.last_exit_code = exit_.exit_code
            rec.last_reason = exit_.reason
            if not exit_.succeeded:
                self.status.supervision.last_failure = failure_record(
                    exit_, decision.action, self.now, worker=rec.index, memory_limit=memory_limit(self.job)
                )
            if decision.verdict is Verdict.DONE:
                rec.phase = WPhase.SUCCEEDED
            elif decision.verdict is Verdict.RESTART:
                self._restart(decision)
            else:
                rec.phase = WPhase.SUCCEEDED if exit_.succeeded else WPhase.FAILED
                self._fail(decision.reason, decision.message)
                return True
        return False

    def _restart(self, decision: Decision) -> None:
        restart_at = from_timestamp(self.now + decision.delay)
        for child in decision.restart:
            rec = self._record(child)
            pod = self._current_pod(rec)
            if pod is not None:
                self._delete(pod, f"restarting: {decision.message}")
            rec.phase = WPhase.RESTARTING
            rec.restart_at = restart_at
        self.status.phase = Phase.RESTARTING
        reason = "Restarting" if decision.counted else "RestartingUncounted"
        self._condition("Restarting", "True", reason, decision.message)
        self._event("Warning", "Restarting", decision.message)

    def _fail(self, reason: str, message: str) -> None:
        """Terminal failure: stop every child (reverse start order) and mark the job Failed."""
        st = self.status
        for _, rec in self._records():
            if rec.phase in (WPhase.PENDING, WPhase.RUNNING, WPhase.RESTARTING):
                rec.phase = WPhase.STOPPED
                rec.restart_at = None
        self._delete_alive(self._alive_pods(), f"the job failed: {reason}")
        st.phase = Phase.FAILED
        st.completion_time = from_timestamp(self.now)
        self._condition("Failed", "True", reason, message)
        self._condition_false_if_present("Running", reason, message)
        self._condition_false_if_present("Restarting", reason, message)
        self._event("Warning", reason, message)

    def _complete_if_done(self) -> bool:
        """Start the select step once every shard succeeded; succeed when the last step did."""
        st = self.status
        if not all(w.phase == WPhase.SUCCEEDED for _, w in self._records() if w.index != SELECT_INDEX):
            return False
        if self.spec.search is None:
            self._succeed()
            return True
        if st.select is None:
            st.select = api.WorkerStatus(index=SELECT_INDEX, attempt=1, phase=WPhase.STOPPED)
            self._event(
                "Normal",
                "Selecting",
                f"all {self.workers} search shards succeeded; starting the select-and-refit step",
            )
            return False
        if st.select.phase == WPhase.SUCCEEDED:
            self._succeed()
            return True
        return False

    def _succeed(self) -> None:
        st = self.status
        assert st.version is not None
        st.phase = Phase.SUCCEEDED
        st.completion_time = from_timestamp(self.now)
        st.model = api.ModelInfo(uri=model_uri_for(self.job, st.version, self.config), version=st.version)
        self._fill_model_metadata()
        message = f"model version {st.version} written to {st.model.uri}"
        if st.model.score is not None:
            message += f" (score {st.model.score:g})"
        if st.model.data:
            message += f"; the data: {st.model.data}"
        self._condition("Succeeded", "True", "Succeeded", message)
        self._condition_false_if_present("Running", "Succeeded", message)
        self._condition_false_if_present("Restarting", "Succeeded", message)
        self._event("Normal", "Succeeded", message)
        self._delete_alive(self._alive_pods(), "the job succeeded")

    def _fill_model_metadata(self) -> None:
        """status.model's metrics from the summary the succeeded trainer of this version left."""
        model = self.status.model
        if model is None or model.sklearn_version is not None:
            return
        summaries = (TerminationSummary.from_message(p.message) for p in self.observed if p.phase == "Succeeded")
        summary = next((s for s in summaries if s is not None and s.version == model.version), None)
        if summary is None:
            return
        model.metrics = dict(summary.metrics)
        model.data = summary.data
        if summary.score_name in summary.metrics:
            model.score = summary.metrics[summary.score_name]
            model.score_name = summary.score_name[:64]
        model.best_params = summary.best_params
        model.sklearn_version = summary.sklearn_version

    def _finished(self) -> None:
        """A Succeeded or Failed job never starts a pod again; it only tidies up."""
        st = self.status
        if st.phase == Phase.SUCCEEDED:
            self._fill_model_metadata()
        self._delete_alive(self._alive_pods(), f"the job {st.phase.value.lower()}")
        ttl, done = self.spec.ttl_seconds_after_finished, st.completion_time
        if ttl is None or done is None:
            return
        if to_timestamp(done) + ttl > self.now:
            return  # _plan() requeues for the expiry
        for p in sorted(self.observed, key=lambda p: (self._logical(p.index), p.attempt), reverse=True):
            if not p.deleting and p.name not in self.deleted:
                self.deleted.add(p.name)
                self.actions.append(DeletePod(name=p.name, reason="ttlSecondsAfterFinished passed"))

    def _start_due_children(self, *, create: bool) -> bool:
        """Start the next attempt of every child whose back-off is over (or that resumes): adopt
        its pod if an earlier plan created it, else (``create``) create it.

        True when it adopted a pod: that pod's state is for the supervisor to read."""
        adopted_any = False
        shards_done = all(w.phase == WPhase.SUCCEEDED for w in self.status.workers)
        for _, rec in self._records():
            if rec.phase == WPhase.RESTARTING:
                assert rec.restart_at is not None
                wait = to_timestamp(rec.restart_at) - self.now
                if wait > 0:
                    self.requeue.append(wait)
                    continue
            elif rec.phase != WPhase.STOPPED:
                continue
            if rec.index == SELECT_INDEX and not shards_done:
                continue  # the select step waits for its shards, restarted or not
            attempt = rec.attempt + 1 if rec.pod is not None else rec.attempt
            pods = self._pods_of(rec.index)
            adopted = next((p for p in pods if p.attempt == attempt and not p.deleting), None)
            older = [p for p in pods if p.attempt < attempt and p.phase in _ALIVE]
            if older:
                if create:
                    self._delete_alive(older, "its worker restarts with a new attempt")
                    self.requeue.append(WAIT_FOR_TERMINATION_SECONDS)
                continue
            if adopted is not None:
                # Created by an earlier plan whose status write was lost: take it over.
                rec.attempt, rec.pod, rec.restart_at = attempt, adopted.name, None
                rec.phase = WPhase.RUNNING if adopted.phase == "Running" else WPhase.PENDING
                adopted_any = True
                continue
            if not create:
                continue
            if any(p.attempt == attempt for p in pods):
                # That attempt's pod was created by a plan whose status write was lost and is
                # going away on the orders of another: its name is free again once it is gone.
                self.requeue.append(WAIT_FOR_TERMINATION_SECONDS)
                continue
            self._create(rec, attempt)
        return adopted_any

    def _delete_strays(self) -> None:
        """Alive pods that belong to no current attempt: superseded attempts, unknown indices."""
        current = {(rec.index, rec.attempt) for _, rec in self._records() if rec.phase in _ACTIVE}
        known = {rec.index: rec for _, rec in self._records()}
        strays = []
        for p in self._alive_pods():
            rec = known.get(p.index)
            if rec is None or ((p.index, p.attempt) not in current and p.attempt <= rec.attempt):
                strays.append(p)
        self._delete_alive(strays, "it belongs to no current attempt of the job")

    def _settle_phase(self) -> None:
        st = self.status
        if any(rec.phase == WPhase.RESTARTING for _, rec in self._records()):
            st.phase = Phase.RESTARTING
            return
        st.phase = Phase.RUNNING
        self._condition_false_if_present("Restarting", "Restarted", "every restarted worker has a new pod")
        done = sum(1 for w in st.workers if w.phase == WPhase.SUCCEEDED)
        waiting = self._waiting_words()
        if st.select is not None:
            self._condition("Running", "True", "Selecting", f"the select-and-refit step runs{waiting}")
        else:
            self._condition("Running", "True", "WorkersRunning", f"{done}/{self.workers} workers succeeded{waiting}")

    def _waiting_words(self) -> str:
        """What the Running condition adds about pods that cannot start, once it is due."""
        due, later = waiting_due((pod for _, pod in self.waiting), self.now)
        if later is not None:
            self.requeue.append(later)
        if not due:
            return ""
        return "".join(
            f"; {'the select step' if index == SELECT_INDEX else f'worker {index}'} (pod {pod.name}) "
            f"cannot start: {pod.waiting}"
            for index, pod in self.waiting
        )

    def _track_progress(self) -> None:
        """status.progress from the workers' reports (see the module docstring)."""
        st, search = self.status, self.spec.search
        if search is None or st.version is None:
            return
        total = search.trial_count()
        prog = st.progress or api.SearchProgress(trials_total=total)
        reports: list[tuple[ObservedPod, ProgressReport]] = []
        for rec in st.workers:
            pod = self._current_pod(rec)
            if pod is None or pod.deleting or rec.phase not in (WPhase.PENDING, WPhase.RUNNING, WPhase.SUCCEEDED):
                continue  # stopped, restarting or superseded: what it says is not this run's any more
            report = pod.progress if pod.phase == "Running" else None
            if pod.phase == "Succeeded":
                report = ProgressReport.from_message(pod.message)
            if report is None:
                continue
            reports.append((pod, report))
            rec.trials_done = max(rec.trials_done or 0, report.trials_done)
            if report.trials_total is not None:
                rec.trials_total = report.trials_total
        done = max([prog.trials_done, sum(rec.trials_done or 0 for rec in st.workers),
                    *(r.study_done or 0 for _, r in reports)])
        pruned = max(prog.trials_pruned, sum(r.trials_pruned for _, r in reports))
        old_top = [TrialBrief(trial=t.trial, score=t.score, params=t.params, worker=t.worker) for t in prog.top_trials]
        top = merge_top(old_top, *(r.top for _, r in reports))
        running = [r.eta_seconds for pod, r in reports if pod.phase == "Running" and r.eta_seconds is not None]
        eta = prog.eta_seconds
        if running:
            eta = round(max(running))
        if st.phase == Phase.SUCCEEDED or (st.workers and all(w.phase == WPhase.SUCCEEDED for w in st.workers)):
            done, eta = total, 0  # every worker finished: the select step only starts when all trials are in
        done = min(done, total)
        prog.trials_total, prog.trials_done, prog.trials_pruned = total, done, pruned
        prog.summary = f"{done}/{total}"
        prog.eta_seconds = eta
        prog.scoring = next((r.scoring for _, r in reports if r.scoring), prog.scoring)
        prog.top_trials = [api.TrialSummary(trial=t.trial, score=t.score, params=t.params, worker=t.worker) for t in top]
        if top:
            prog.best_score, prog.best_params, prog.best_trial = top[0].score, top[0].params, top[0].trial
        st.progress = prog
        if st.phase in (Phase.RUNNING, Phase.RESTARTING) and any(
            p.phase == "Running" and p.index != SELECT_INDEX for p in self.observed
        ):
            self.requeue.append(self.config.progress_poll_seconds)  # the shells poll GET /progress then

    def _summarise(self) -> None:
        st = self.status
        sup = st.supervision
        if st.version is not None:
            done = sum(1 for w in st.workers if w.phase == WPhase.SUCCEEDED)
            st.workers_summary = f"{done}/{len(st.workers)}"
        history = [to_timestamp(t) for t in sup.restart_times]
        sup.restarts_in_window = restarts_in_window(history, self.now, self.spec.supervision.period_seconds)
        pending = [rec.restart_at for _, rec in self._records() if rec.phase == WPhase.RESTARTING and rec.restart_at]
        sup.next_restart_time = min(pending) if pending else None
