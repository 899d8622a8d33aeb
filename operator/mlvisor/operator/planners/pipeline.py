"""The ModelPipeline planner: (pipeline, observed children, now) -> Plan. Pure and level-triggered.

A ModelPipeline is OTP's supervision tree with one more level: a supervisor whose two
children are themselves supervisors, started in this order:

0. **training**: one TrainingJob per run (``<pipeline>-<n>``), which supervises its worker
   pods under its own intensity;
1. **serving**: one ModelServer (``<pipeline>``), which supervises its server pods and rolls
   back on its own.

A child *exits* when it reaches a terminal failure: a TrainingJob Failed (its intensity
exceeded, a failurePolicy Fail, a deadline) or a ModelServer Failed (its rollback was
impossible or onExhausted is Fail). Everything a child can handle itself stays with it (a
crashed worker is the TrainingJob's business, a crashing model the ModelServer's rollback);
the pipeline only sees what the child gave up on, and decides with the same pure core as the
leaves (``supervision.supervise_exit``, the same window arithmetic, back-off and strategies,
one supervisor-wide window, a group restart counted once).

Decisions this module makes (the issue fixes the rest):

- **Restarting a child.** Training: a new run (a new TrainingJob, ``trigger: Restart``) after
  the back-off; a run in progress that the strategy restarts (OneForAll, after a serving
  failure) is stopped first (its TrainingJob deleted). Serving: the ModelServer is deleted
  after the back-off and created again from spec.serving and the served run's artifact.
- **A working server is never stopped** (Kubernetes addition; OTP would terminate the
  child): when a strategy restarts serving together with training (RestForOne, OneForAll)
  and the ModelServer works, it keeps serving the last promoted model and rolls to the new
  run's model, zero-downtime, once that run passes the gate. Only a ModelServer that is
  Failed is ever deleted, and escalation keeps a working one too.
- **Promotion is the data flow, not a restart**: every run that succeeds and passes the gate
  is served, whatever the strategy. A run that fails the gate is recorded (runs[].reason,
  an Event) and not served. A promoted model that the ModelServer rolls back from is marked
  ``promoted: false, reason: RolledBack``, and the pipeline serves what the ModelServer fell
  back to; no escalation, the leaf handled it.
- **Runs start** on creation, when spec.training changes (anything but suspend and
  ttlSecondsAfterFinished; a run in progress is then stopped: it trains a spec nobody
  wants any more), on ``schedule`` (a time that comes while a run is in progress or a
  training restart is pending is skipped, as a CronJob with concurrencyPolicy Forbid does;
  after an outage one run catches up, not one per missed time), and as restarts.
- **Escalation**: when the pipeline's own intensity is exceeded it stops the run in progress,
  phase Failed with the window in the condition and a Warning Event, and keeps the
  ModelServer serving the last good model. Terminal and sticky like a Failed TrainingJob:
  a new generation of the spec resumes it (fresh window; the children the failed restart
  would have restarted are restarted at once).
- **Failure identity**: a child exit is its uid and the lastTransitionTime of its Failed
  condition, so a replayed event is never counted twice and a ModelServer that recovers and
  fails again is a new failure. A child's InvalidSpec escalates at once (restarting cannot fix
  a spec); every other child failure counts, failurePolicy Fail included: a missing CSV file
  is a reason to retry a whole run later, not a worker at once.
- **Creates are level-triggered** for children (unlike pods): a run's TrainingJob and the
  ModelServer are applied (created, or merge-patched where they differ) on every reconcile
  while wanted, which also carries spec.serving changes and spec.training.suspend to them.
  A run whose TrainingJob was seen and then vanished failed (``TrainingJobLost``); one never
  seen is waited for. A TrainingJob of a run the status does not know (created, then the
  status write was lost) is adopted; one of a trimmed run is deleted.
- **History**: the newest ``runHistoryLimit`` finished runs are kept (status.runs and their
  TrainingJobs, for logs and artifacts), plus the run being served and the one in progress.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from mlvisor import api
from mlvisor.api.cron import next_time
from mlvisor.api.labels import ANNOTATION_TRAINING_SPEC_HASH, LABEL_RUN
from mlvisor.operator.builders import (
    build_pipeline_server,
    build_pipeline_training_job,
    pipeline_run_name,
)
from mlvisor.operator.plan import (
    Action,
    ApplyResource,
    DeleteResource,
    ObservedResource,
    OperatorConfig,
    Plan,
    RecordEvent,
)
from mlvisor.operator.planners.conditions import (
    ConditionWriter,
    find_condition,
    from_timestamp,
    quantize,
    store_supervisor_state,
    supervisor_state,
    to_timestamp,
)
from mlvisor.operator.planners.training import check_training_spec, run_spec_hash
from mlvisor.operator.supervision import (
    SEEN_FAILURES_KEPT,
    Decision,
    Failure,
    Policy,
    Verdict,
    children_to_restart,
    restarts_in_window,
    supervise_exit,
)

__all__ = [
    "CHILD_NAMES",
    "PIPELINE_FAILURE_POLICY",
    "check_pipeline_spec",
    "plan_pipeline",
]

Phase = api.PipelinePhase
RPhase = api.RunPhase
Child = api.PipelineChild

TRAINING, SERVING = 0, 1
#: The children by index, in start order (what supervision messages call them).
CHILD_NAMES = (Child.TRAINING.value, Child.SERVING.value)

#: A child that failed on its spec cannot be helped by a restart: escalate at once.
PIPELINE_FAILURE_POLICY: tuple[api.FailurePolicyRule, ...] = (
    api.FailurePolicyRule(on_reasons=["InvalidSpec"], action=api.FailureAction.FAIL),
)
#: Re-check this soon while a deleted ModelServer is still going away.
WAIT_FOR_DELETION_SECONDS = 2.0

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_IN_PROGRESS = frozenset({RPhase.PENDING, RPhase.RUNNING})
_MESSAGE_LIMIT = 1024


def check_pipeline_spec(pipeline: api.ModelPipeline, config: OperatorConfig) -> list[str]:
    """What is wrong with a pipeline that parsed but that only the operator can judge (empty: fine)."""
    name = pipeline.metadata.name
    problems = []
    if not _DNS_1035.match(name):
        problems.append(
            f"metadata.name {name!r} must start with a letter: it names the ModelServer and its Service, "
            "and Service names are DNS-1035 labels"
        )
    run = api.TrainingJob(
        metadata=api.ObjectMeta(name=pipeline_run_name(pipeline, 1), namespace=pipeline.metadata.namespace),
        spec=api.TrainingJobSpec.model_validate(pipeline.spec.training.to_wire()),
    )
    problems += [p.replace("spec.", "spec.training.", 1) for p in check_training_spec(run, config)]
    return problems


def observed_child(
    kind: str, meta: Mapping[str, Any], status: api.TrainingJobStatus | api.ModelServerStatus | None
) -> ObservedResource:
    """A pipeline's TrainingJob or ModelServer as this planner sees it, from its metadata (the
    wire form: labels, annotations, uid, deletionTimestamp) and its parsed status (None: none yet,
    or one that does not parse). The one rule both shells use: the run number is the run label,
    the spec a run was made from is its spec-hash annotation."""
    labels = meta.get("labels") or {}
    run = str(labels.get(LABEL_RUN) or "")
    return ObservedResource(
        kind=kind,
        name=str(meta.get("name", "")),
        uid=str(meta.get("uid") or ""),
        run=int(run) if run.isdigit() and int(run) > 0 else None,
        spec_hash=(meta.get("annotations") or {}).get(ANNOTATION_TRAINING_SPEC_HASH),
        status=status,
        deleting=bool(meta.get("deletionTimestamp")),
    )


def plan_pipeline(
    pipeline: api.ModelPipeline,
    observed: Sequence[ObservedResource],
    now: float,
    config: OperatorConfig,
) -> Plan:
    """Plan one reconcile of ``pipeline`` given its observed children at ``now`` (epoch seconds).

    ``observed`` holds the TrainingJobs and the ModelServer the pipeline controls (by
    controller ownerReference), with their statuses. Always returns the whole new status.
    """
    return _PipelineReconcile(pipeline, observed, quantize(now), config).run()


def _short(text: str | None) -> str | None:
    if text is None:
        return None
    return text if len(text) <= _MESSAGE_LIMIT else text[: _MESSAGE_LIMIT - 1] + "…"


def _score(value: float | None) -> str:
    return "no score" if value is None else f"score {value:g}"


@dataclass
class _PipelineReconcile(ConditionWriter):
    pipeline: api.ModelPipeline
    observed: Sequence[ObservedResource]
    now: float
    config: OperatorConfig
    status: api.ModelPipelineStatus = field(init=False)
    actions: list[Action] = field(default_factory=list)
    requeue: list[float] = field(default_factory=list)
    applied: set[str] = field(default_factory=set)
    deleted: set[str] = field(default_factory=set)

    def __post_init__(self) -> None:
        self.status = (
            self.pipeline.status.clone()
            if self.pipeline.status is not None
            else api.ModelPipelineStatus()
        )
        self.spec = self.pipeline.spec
        self.name = self.pipeline.metadata.name
        self.generation = self.pipeline.metadata.generation
        self.hash = run_spec_hash(self.spec.training)

    # ------------------------------------------------------------------ main flow

    def run(self) -> Plan:
        st = self.status
        problems = check_pipeline_spec(self.pipeline, self.config)
        if problems:
            self._invalid("; ".join(problems))
            return self._plan()
        if st.phase == Phase.FAILED:
            failed = find_condition(st.conditions, "Failed")
            if failed is not None and failed.status == "True" and (self.generation or 0) > (
                failed.observed_generation or 0
            ):
                self._resume(failed.reason)
            else:
                self._observe_serving()
                self._apply_server()
                return self._plan()
        self._see_runs()
        # Exits first, then TrainingJobs of runs the status does not know yet (created by a plan
        # whose status write was lost): the failure that plan restarted is counted before its
        # new run is taken over. Again while a pass adopts a run: its exit is read now too.
        for _ in range(len(self.observed) + 1):
            escalated = self._supervise()
            adopted = self._adopt_and_tidy()
            if escalated:
                self._observe_serving()
                self._apply_server()
                return self._plan()
            if not adopted:
                break
        self._observe_serving()
        self._start_due_restarts()
        self._start_triggered_runs()
        self._apply_children()
        self._trim_history()
        self._settle()
        return self._plan()

    def _plan(self) -> Plan:
        st = self.status
        st.observed_generation = self.generation
        sup = st.supervision
        history = [to_timestamp(t) for t in sup.restart_times]
        sup.restarts_in_window = restarts_in_window(history, self.now, self.spec.supervision.period_seconds)
        due = [p.restart_at for p in sup.pending if p.restart_at is not None]
        sup.next_restart_time = min(due) if due else None
        requeue = min((r for r in self.requeue if r > 0), default=None)
        return Plan(actions=tuple(self.actions), status=st, requeue_after=requeue)

    # ------------------------------------------------------------------ helpers

    def _event(self, type_: str, reason: str, message: str) -> None:
        self.actions.append(RecordEvent(type=type_, reason=reason, message=message))  # type: ignore[arg-type]

    def _children(self, kind: str) -> list[ObservedResource]:
        return [c for c in self.observed if c.kind == kind]

    def _training_job(self, name: str) -> ObservedResource | None:
        return next((c for c in self._children("TrainingJob") if c.name == name), None)

    def _server(self) -> ObservedResource | None:
        return next((c for c in self._children("ModelServer") if c.name == self.name), None)

    def _server_status(self) -> api.ModelServerStatus | None:
        server = self._server()
        status = server.status if server is not None else None
        return status if isinstance(status, api.ModelServerStatus) else None

    def _server_failed(self) -> bool:
        status = self._server_status()
        return status is not None and status.phase == api.ServerPhase.FAILED

    def _current_run(self) -> api.PipelineRun | None:
        return next((r for r in reversed(self.status.runs) if r.phase in _IN_PROGRESS), None)

    def _run_by_uri(self, uri: str | None) -> api.PipelineRun | None:
        return next((r for r in self.status.runs if uri is not None and r.model_uri == uri), None)

    def _pending(self, child: Child) -> api.PendingRestart | None:
        return next((p for p in self.status.supervision.pending if p.child == child), None)

    def _drop_pending(self, child: Child) -> None:
        self.status.supervision.pending = [p for p in self.status.supervision.pending if p.child != child]

    def _add_pending(self, child: Child, at: float | None) -> None:
        if self._pending(child) is None:
            self.status.supervision.pending.append(
                api.PendingRestart(child=child, restart_at=None if at is None else from_timestamp(at))
            )

    def _delete_run(self, run: api.PipelineRun, reason: str) -> None:
        tj = self._training_job(run.name)
        if tj is not None and not tj.deleting:
            self._delete_training_job(run.name, reason)

    def _delete_training_job(self, name: str, reason: str) -> None:
        if name not in self.deleted:
            self.deleted.add(name)
            self.actions.append(DeleteResource(kind="TrainingJob", name=name, reason=reason))

    def _stop_run(self, run: api.PipelineRun, reason: str, message: str) -> None:
        """Stop a run in progress: its TrainingJob is deleted (its pods go with it)."""
        run.phase = RPhase.STOPPED
        run.reason = reason
        run.message = _short(message)
        run.completion_time = from_timestamp(self.now)
        self._delete_run(run, message)

    def _policy(self) -> Policy:
        sup = self.spec.supervision
        return Policy(
            restart=api.RestartType.TRANSIENT,
            max_restarts=sup.max_restarts,
            period_seconds=sup.period_seconds,
            strategy=sup.strategy,
            failure_policy=PIPELINE_FAILURE_POLICY,
            backoff_initial=sup.backoff.initial_seconds,
            backoff_factor=sup.backoff.factor,
            backoff_max=sup.backoff.max_seconds,
            children=(TRAINING, SERVING),
            child_names=CHILD_NAMES,
        )

    def _serving_words(self) -> str:
        st = self.status
        if st.serving_version is not None and not self._server_failed() and self._server() is not None:
            return f"the ModelServer keeps serving version {st.serving_version} ({st.serving_run or 'an earlier run'})"
        return "no model is served"

    # ------------------------------------------------------------------ lifecycle steps

    def _invalid(self, message: str) -> None:
        st = self.status
        failed = find_condition(st.conditions, "Failed")
        if st.phase != Phase.FAILED or failed is None or failed.reason != "InvalidSpec" or failed.message != message:
            self._event("Warning", "InvalidSpec", message)
        st.phase = Phase.FAILED
        self._condition("Failed", "True", "InvalidSpec", message)
        self._condition_false_if_present("Training", "InvalidSpec", message)

    def _resume(self, why: str) -> None:
        """Leave Failed on a new generation: fresh window; what the escalation left pending restarts now."""
        st = self.status
        st.supervision.restart_times = []
        for p in st.supervision.pending:
            p.restart_at = from_timestamp(self.now)
        message = f"the spec changed (generation {self.generation}): the pipeline runs again with a fresh restart window"
        self._condition("Failed", "False", "SpecChanged", message)
        st.phase = Phase.PENDING
        if why != "InvalidSpec":
            self._event("Normal", "Resumed", message)

    def _see_runs(self) -> None:
        """A run whose TrainingJob is observed is Running."""
        known = {r.name: r for r in self.status.runs}
        for tj in self._children("TrainingJob"):
            run = known.get(tj.name)
            if run is not None and run.phase == RPhase.PENDING:
                run.phase = RPhase.RUNNING

    def _adopt_and_tidy(self) -> bool:
        """TrainingJobs of no run in the status: the oldest newer run's is adopted (after an
        escalation in this reconcile: adopted as stopped, and deleted); any older one is deleted.
        True if a run was adopted in progress: the caller reads its exit, then adopts the next."""
        st = self.status
        known = {r.name for r in st.runs}
        adopted = False
        for tj in sorted(self._children("TrainingJob"), key=lambda c: (c.run or 0, c.name)):
            if tj.name in known or tj.deleting or tj.name in self.deleted:
                continue
            if tj.run is not None and tj.run > st.last_run:
                if adopted:
                    continue  # one run a pass: the exit of this one is read before the next is adopted
                # Created by an earlier plan whose status write was lost: take it over.
                run = api.PipelineRun(
                    name=tj.name, number=tj.run, phase=RPhase.RUNNING, start_time=from_timestamp(self.now)
                )
                current = self._current_run()
                st.runs.append(run)
                st.last_run = tj.run
                st.training_spec_hash = tj.spec_hash or st.training_spec_hash
                if st.phase == Phase.FAILED:
                    self._stop_run(run, "PipelineFailed", "stopped: the pipeline failed")
                    continue
                if current is not None:
                    self._stop_run(current, "Superseded", f"run {tj.run} ({tj.name}) was found running")
                self._drop_pending(Child.TRAINING)
                adopted = True
                continue
            self._delete_training_job(tj.name, "it belongs to no kept run of the pipeline")
        return adopted

    def _training_exit(self) -> Failure | None:
        """The exit of the run in progress, if its TrainingJob finished (success included)."""
        run = self._current_run()
        if run is None:
            return None
        tj = self._training_job(run.name)
        resource = f"TrainingJob {run.name}"
        if tj is None:
            if run.phase == RPhase.RUNNING:
                return Failure(child=TRAINING, pod=resource, reason="TrainingJobLost", identity=f"{run.name}@lost")
            return None  # created, not observed yet: its ADDED event brings us back
        status = tj.status
        if not isinstance(status, api.TrainingJobStatus):
            return None
        if status.phase == api.TrainingPhase.SUCCEEDED and status.model is not None:
            return Failure(child=TRAINING, pod=resource, succeeded=True, identity=f"{tj.uid}@succeeded")
        if status.phase != api.TrainingPhase.FAILED:
            return None
        failed = find_condition(status.conditions, "Failed")
        last = status.supervision.last_failure
        when = failed.last_transition_time.isoformat() if failed is not None else "failed"
        return Failure(
            child=TRAINING,
            pod=resource,
            exit_code=last.exit_code if last is not None else None,
            reason=failed.reason if failed is not None else "Failed",
            identity=f"{tj.uid}@{when}",
        )

    def _serving_exit(self) -> Failure | None:
        server, status = self._server(), self._server_status()
        if server is None or status is None or server.deleting or status.phase != api.ServerPhase.FAILED:
            return None
        failed = find_condition(status.conditions, "Failed")
        if failed is None or failed.status != "True":
            return None
        return Failure(
            child=SERVING,
            pod=f"ModelServer {server.name}",
            reason=failed.reason,
            identity=f"{server.uid}@{failed.last_transition_time.isoformat()}",
        )

    def _child_message(self, exit_: Failure) -> str | None:
        if exit_.child == TRAINING:
            run = self._current_run()
            tj = self._training_job(run.name) if run is not None else None
            status = tj.status if tj is not None else None
        else:
            status = self._server_status()
        if status is None:
            return "the TrainingJob disappeared while it ran" if exit_.reason == "TrainingJobLost" else None
        failed = find_condition(status.conditions, "Failed")  # type: ignore[attr-defined]
        return failed.message if failed is not None else None

    def _supervise(self) -> bool:
        """Feed the children's exits to the supervisor, training first. True when the pipeline escalated."""
        policy = self._policy()
        for exit_ in (self._training_exit(), self._serving_exit()):
            if exit_ is None:
                continue
            decision, state = supervise_exit(supervisor_state(self.status.supervision), exit_, policy, self.now)
            if decision.verdict is Verdict.DUPLICATE:
                continue
            store_supervisor_state(self.status.supervision, state)
            if exit_.succeeded:
                self._run_succeeded()
                continue
            message = self._child_message(exit_)
            self.status.supervision.last_failure = api.ChildFailure(
                child=Child(CHILD_NAMES[exit_.child]),
                resource=exit_.pod,
                reason=exit_.reason,
                exit_code=exit_.exit_code,
                message=_short(message),
                time=from_timestamp(self.now),
            )
            if exit_.child == TRAINING:
                run = self._current_run()
                assert run is not None
                run.phase = RPhase.FAILED
                run.reason = exit_.reason if exit_.reason and re.match(api.CONDITION_REASON, exit_.reason) else "Failed"
                run.message = _short(message)
                run.completion_time = from_timestamp(self.now)
            if decision.verdict is Verdict.RESTART:
                self._restart(decision, exit_)
            else:
                self._escalate(decision, exit_)
                return True
        return False

    def _consume(self, exit_: Failure | None) -> None:
        """A failed child restarted with a group is not a failure of its own any more (OTP ignores
        the exit of a child it already restarted), so it is not counted again."""
        sup = self.status.supervision
        if exit_ is not None and exit_.identity and exit_.identity not in sup.seen_failures:
            sup.seen_failures = ([*sup.seen_failures, exit_.identity])[-SEEN_FAILURES_KEPT:]

    def _restart(self, decision: Decision, exit_: Failure) -> None:
        at = self.now + decision.delay
        notes = []
        for child in decision.restart:
            if child == TRAINING:
                current = self._current_run()
                if current is not None:  # OneForAll after a serving failure: the group goes down together
                    self._stop_run(current, "RestartedWithServing", f"stopped: {decision.message}")
                self._add_pending(Child.TRAINING, at)
            elif self._server_failed():
                self._add_pending(Child.SERVING, at)
                self._consume(self._serving_exit())
            elif exit_.child != SERVING:
                notes.append(
                    f"{self._serving_words()} and rolls to the new run's model once it is promoted"
                    if self.status.serving_version is not None
                    else "serving starts once a run is promoted"
                )
        message = decision.message + ("; " + "; ".join(notes) if notes else "")
        reason = "Restarting" if decision.counted else "RestartingUncounted"
        self._condition("Restarting", "True", reason, message)
        self._event("Warning", "Restarting", message)

    def _escalate(self, decision: Decision, exit_: Failure) -> None:
        """OTP: terminate the children and exit. Here: stop the run in progress, keep a working server."""
        st = self.status
        current = self._current_run()
        if current is not None:
            self._stop_run(current, "PipelineFailed", f"stopped: the pipeline failed: {decision.message}")
        st.supervision.pending = []
        for child in children_to_restart(self.spec.supervision.strategy, exit_.child, (TRAINING, SERVING)):
            if child == TRAINING:
                self._add_pending(Child.TRAINING, None)
            elif self._server_failed():
                self._add_pending(Child.SERVING, None)
        st.phase = Phase.FAILED
        message = f"{decision.message}; {self._serving_words()}; change the spec to run the pipeline again"
        self._condition("Failed", "True", decision.reason, message)
        self._condition_false_if_present("Training", decision.reason, message)
        self._condition_false_if_present("Restarting", decision.reason, message)
        self._event("Warning", decision.reason, message)

    def _run_succeeded(self) -> None:
        run = self._current_run()
        assert run is not None
        tj = self._training_job(run.name)
        assert tj is not None and isinstance(tj.status, api.TrainingJobStatus) and tj.status.model is not None
        model = tj.status.model
        run.phase = RPhase.SUCCEEDED
        run.version, run.model_uri, run.score = model.version, model.uri, model.score
        run.completion_time = from_timestamp(self.now)
        self._gate(run)

    def _gate(self, run: api.PipelineRun) -> None:
        """Promote the run if it passes spec.promotion; record why not otherwise."""
        st, gate = self.status, self.spec.promotion
        refused: tuple[str, str] | None = None
        if gate.min_score is not None and (run.score is None or run.score < gate.min_score):
            refused = (
                "NoScore" if run.score is None else "BelowMinScore",
                f"{_score(run.score)} is below promotion.minScore {gate.min_score:g}",
            )
        elif (
            gate.must_improve
            and st.serving_version is not None
            and st.serving_score is not None
            and (run.score is None or run.score <= st.serving_score)
        ):
            refused = (
                "NotBetter",
                f"{_score(run.score)} does not beat the served model's score {st.serving_score:g} "
                f"({st.serving_run or st.serving_version}) and promotion.mustImprove is true",
            )
        if refused is not None:
            run.promoted, (run.reason, text) = False, refused
            kept = f"version {st.serving_version} stays served" if st.serving_version else "nothing is served yet"
            run.message = _short(f"{text}; {kept}")
            self._event("Normal", "NotPromoted", f"run {run.number} ({run.name}): {run.message}")
            return
        previous = st.serving_version
        run.promoted, run.reason = True, "Promoted"
        st.serving_run, st.serving_version = run.name, run.version
        st.serving_model_uri, st.serving_score = run.model_uri, run.score
        run.message = _short(
            f"{_score(run.score)} passed the gate; the ModelServer rolls to version {run.version}"
            + (f" (replacing {previous})" if previous else "")
        )
        self._event("Normal", "Promoted", f"run {run.number} ({run.name}): {run.message}")

    def _observe_serving(self) -> None:
        """Follow the ModelServer: its rollbacks, its URL, its readiness."""
        st = self.status
        status = self._server_status()
        if status is None:
            server = self._server()
            if st.serving_version is None:
                self._condition("Ready", "False", "NoModelPromoted", "no run has been promoted yet")
            elif server is not None and server.deleting:
                self._condition(
                    "Ready",
                    "False",
                    "WaitingForDeletion",
                    f"waiting for the previous ModelServer {self.name}'s Deployment and pods to go away",
                )
            else:
                self._condition(
                    "Ready",
                    "False",
                    "Deploying",
                    f"ModelServer {self.name} is created for version {st.serving_version}",
                )
            return
        if (
            st.serving_model_uri is not None
            and status.rejected_model_uri == st.serving_model_uri
            and status.model_uri is not None
            and status.model_uri != st.serving_model_uri
        ):
            rejected = self._run_by_uri(st.serving_model_uri)
            back = self._run_by_uri(status.model_uri)
            rolled = find_condition(status.conditions, "RolledBack")
            text = f"the ModelServer rolled back from version {st.serving_version} to {status.model_version}" + (
                f": {rolled.message}" if rolled is not None else ""
            )
            if rejected is not None:
                rejected.promoted, rejected.reason, rejected.message = False, "RolledBack", _short(text)
            st.serving_model_uri, st.serving_version = status.model_uri, status.model_version
            st.serving_run = back.name if back is not None else None
            st.serving_score = back.score if back is not None else None
            self._event("Warning", "RolledBack", text)
        st.url = status.url
        ready = find_condition(status.conditions, "Ready")
        if ready is None:
            self._condition("Ready", "False", "Deploying", f"ModelServer {self.name} has not reported yet")
        else:
            self._condition("Ready", ready.status, ready.reason, f"ModelServer {self.name}: {ready.message}")

    def _start_due_restarts(self) -> None:
        for pending in list(self.status.supervision.pending):
            if pending.restart_at is None:
                continue
            wait = to_timestamp(pending.restart_at) - self.now
            if wait > 0:
                self.requeue.append(wait)
                continue
            if pending.child == Child.TRAINING:
                self._drop_pending(Child.TRAINING)
                if self._current_run() is None:
                    self._start_run(api.RunTrigger.RESTART)
                continue
            server = self._server()
            if server is None:
                self._drop_pending(Child.SERVING)  # gone: _apply_server creates it afresh
                if self.status.serving_model_uri is not None:
                    self._event("Normal", "ServingRestarted", f"ModelServer {self.name} is created again")
            elif server.deleting:
                self.requeue.append(WAIT_FOR_DELETION_SECONDS)
            elif self._server_failed():
                self.actions.append(
                    DeleteResource(kind="ModelServer", name=self.name, reason="restarting serving: it failed")
                )
                self.requeue.append(WAIT_FOR_DELETION_SECONDS)
            else:
                self._drop_pending(Child.SERVING)  # it recovered by itself (e.g. a new model): nothing to restart

    def _start_triggered_runs(self) -> None:
        st = self.status
        if st.last_run == 0:
            self._start_run(api.RunTrigger.CREATED)
        elif st.training_spec_hash != self.hash:
            current = self._current_run()
            if current is not None:
                self._stop_run(
                    current, "Superseded", f"spec.training changed (generation {self.generation}) while it ran"
                )
            self._drop_pending(Child.TRAINING)
            self._start_run(api.RunTrigger.SPEC_CHANGED)
        schedule = self.spec.schedule
        if schedule is None:
            st.next_run_time = None
            return
        if st.next_run_time is not None and to_timestamp(st.next_run_time) <= self.now:
            if self._current_run() is not None or self._pending(Child.TRAINING) is not None:
                self._event(
                    "Normal",
                    "ScheduleSkipped",
                    f"the scheduled run of {st.next_run_time.isoformat()} is skipped: a run is in progress or pending",
                )
            else:
                self._start_run(api.RunTrigger.SCHEDULE)
            st.next_run_time = None
        if st.next_run_time is None or st.observed_generation != self.generation:
            st.next_run_time = from_timestamp(next_time(schedule, self.now))
        self.requeue.append(to_timestamp(st.next_run_time) - self.now)

    def _start_run(self, trigger: api.RunTrigger) -> None:
        st = self.status
        number = st.last_run + 1
        name = pipeline_run_name(self.pipeline, number)
        st.runs.append(api.PipelineRun(name=name, number=number, trigger=trigger, start_time=from_timestamp(self.now)))
        st.last_run = number
        st.training_spec_hash = self.hash
        self._apply_run(number)
        message = f"run {number} ({trigger.value}): TrainingJob {name}"
        self._condition("Training", "True", trigger.value, message)
        self._event("Normal", "RunStarted", message)

    def _apply_run(self, number: int) -> None:
        name = pipeline_run_name(self.pipeline, number)
        if name not in self.applied:
            self.applied.add(name)
            self.actions.append(
                ApplyResource(
                    build_pipeline_training_job(self.pipeline, number, self.status.training_spec_hash or self.hash)
                )
            )

    def _apply_server(self) -> None:
        uri = self.status.serving_model_uri
        if uri is None or self._pending(Child.SERVING) is not None:
            return
        server = self._server()
        if server is not None and server.deleting:
            return
        self.actions.append(ApplyResource(build_pipeline_server(self.pipeline, uri)))

    def _apply_children(self) -> None:
        current = self._current_run()
        if current is not None:
            tj = self._training_job(current.name)
            if tj is None or not tj.deleting:
                self._apply_run(current.number)
        self._apply_server()

    def _trim_history(self) -> None:
        st = self.status
        finished = [r for r in st.runs if r.phase not in _IN_PROGRESS and r.name != st.serving_run]
        excess = finished[: max(0, len(finished) - self.spec.run_history_limit)]
        for run in excess:
            self._delete_run(run, f"runHistoryLimit is {self.spec.run_history_limit}")
        gone = {r.name for r in excess}
        st.runs = [r for r in st.runs if r.name not in gone]

    def _settle(self) -> None:
        st = self.status
        current = self._current_run()
        if current is not None:
            self._condition(
                "Training",
                "True",
                (current.trigger or api.RunTrigger.RESTART).value,
                f"run {current.number} ({current.name}) is training",
            )
        elif st.runs:
            last = st.runs[-1]
            self._condition_false_if_present(
                "Training",
                last.phase.value,
                f"run {last.number} ({last.name}) {last.phase.value.lower()}"
                + (f": {last.message}" if last.message else ""),
            )
        if any(p.restart_at is not None for p in st.supervision.pending):
            st.phase = Phase.RESTARTING
            return
        self._condition_false_if_present("Restarting", "Restarted", "every restarted child was started again")
        ready = find_condition(st.conditions, "Ready")
        if ready is not None and ready.status == "True":
            st.phase = Phase.SERVING
        elif st.serving_model_uri is not None:
            st.phase = Phase.DEPLOYING
        elif current is not None:
            st.phase = Phase.TRAINING
        else:
            st.phase = Phase.PENDING
