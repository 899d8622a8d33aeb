"""The ModelServer planner: (server, Deployment, pods, model source, now) -> Plan. Pure.

The Deployment's kubelets restart crashed server containers on their own; the operator's
job is to *count* those restarts the OTP way (one supervisor-wide intensity window, always
OneForOne) and, when the intensity is exceeded, to escalate: roll the Deployment back to
the last model version that was Ready, or scale it to zero and fail.

Decisions this module makes (the docs were silent):

- **Counting.** Every increment of a pod's container restartCount is one failure, keyed
  ``<pod>#<n>`` (a jump from 1 to 3 between observations is two failures); a pod that
  reaches phase Failed (evicted, node lost) is one more failure keyed ``<pod>#<count+1>``.
  Only pods of the model being served are counted: after a rollback, the rejected model's
  pods dying on their way out do not eat into the fresh window.
- **Classification.** ModelServers have no failurePolicy field; infrastructure disruptions
  (Evicted, Preempted, NodeLost, NodeShutdown, Terminated, condition DisruptionTarget) are
  restarts that are not counted, exactly as TrainingJob's default policy, and every other
  exit counts, except exit code 4 (``EXIT_MODEL_UNLOADABLE``): the server found that its
  model can never load (checksum, untrusted type, shape, warm-up error) and said why in its
  termination message, so the supervisor escalates at once (rollback or Failed) instead of
  counting restarts that cannot help.
- **Phases.** Loading while the served version has never had every replica ready; Ready
  when it has; Scaling while spec.replicas grew past the count that was last all ready and
  the replicas that were ready still are (kubectl scale, an HPA: a rollout of new pods, never
  a restart); Degraded when a version that was Ready has fewer ready replicas than asked
  for otherwise; RolledBack while the model source still points at the rejected version; Failed is
  sticky until a new generation of the spec or a new model version arrives (both start
  a fresh restart window). Ready=True whenever at least one replica answers.
- **Scale-down.** A pod being deleted (deletionTimestamp set: a scale-down or a finished
  roll-out) that ends in phase Failed is not a failure: SIGTERM's exit code 143 is how a
  server stops when it is told to.
- **Words.** A server stopped before it was ready (the kubelet giving up on the startupProbe)
  writes ``not ready: <what it was doing>`` as it gets SIGTERM; the restart then reads "was
  not ready within spec.startupTimeoutSeconds (N s) and was restarted: it was waiting for the
  model: ...". A ServerRestarted Event says a reason in full once: a restart that ends the
  same way as the failure before it in the window says "restarted again for the same reason".
  While replicas are not ready, the Ready condition names the last restart in the window and
  replicas that cannot start (ImagePullBackOff, Unschedulable).
- **Memory.** status.supervision.seenFailures holds the latest handled key of every pod
  still observed (restart counts only grow), so the bounded list never forgets a live pod.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from mlvisor import api
from mlvisor.api.exits import EXIT_MODEL_UNLOADABLE, TerminationKind, TerminationMessage
from mlvisor.operator.builders import (
    build_server_deployment,
    build_server_service,
    is_remote_uri,
    memory_limit,
    model_name_of,
    parse_model_uri,
    server_selector_string,
    version_of,
)
from mlvisor.operator.plan import (
    Action,
    ApplyDeployment,
    ApplyService,
    ModelRef,
    ObservedDeployment,
    ObservedPod,
    OperatorConfig,
    Plan,
    RecordEvent,
    ReferencedJob,
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
    SEEN_FAILURES_KEPT,
    Failure,
    MessageSource,
    Policy,
    Verdict,
    describe_failure,
    last_words,
    quote_message,
    restarts_in_window,
    supervise_exit,
)

__all__ = ["SERVER_FAILURE_POLICY", "WAITING_FOR_MODEL_REQUEUE_SECONDS", "check_server_spec", "plan_serving"]

Phase = api.ServerPhase

#: How often to look again while the referenced TrainingJob has no model yet.
WAITING_FOR_MODEL_REQUEUE_SECONDS = 15.0

#: A server that cannot load its model escalates at once; infrastructure disruptions restart
#: a server pod without counting (see module docstring).
SERVER_FAILURE_POLICY: tuple[api.FailurePolicyRule, ...] = (
    api.FailurePolicyRule(on_exit_codes=[EXIT_MODEL_UNLOADABLE], action=api.FailureAction.FAIL),
    *(r for r in api.default_failure_policy() if r.action is api.FailureAction.IGNORE),
)

_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")
_KEY = re.compile(r"^(?P<pod>.+)#(?P<n>\d+)$")


def check_server_spec(server: api.ModelServer, source: ModelRef | None) -> list[str]:
    """What is wrong with a ModelServer that parsed but that only the operator can judge."""
    problems = []
    name = server.metadata.name
    if not _DNS_1035.match(name):
        problems.append(
            f"metadata.name {name!r} must start with a letter: it names the Service, "
            "and Service names are DNS-1035 labels"
        )
    if source is not None and not is_remote_uri(source.uri):
        try:
            parse_model_uri(source.uri)
        except ValueError as e:
            problems.append(f"spec.model: {e}")
    return problems


def model_source(
    server: api.ModelServer, job_exists: bool, job_status: api.TrainingJobStatus | None
) -> tuple[ModelRef | None, ReferencedJob | None]:
    """What spec.model points at now, and the TrainingJob it references as the planner needs it.

    Both shells resolve spec.model with this, the cluster from its store and the local runtime
    from its own world (``job_exists``: a TrainingJob of the referenced name exists;
    ``job_status``: its status, None when it has none or it does not parse), so a ModelServer
    means the same in both. A URI names the model itself; a trainingJobRef names the job's
    status.model, which exists once the job has succeeded.
    """
    spec = server.spec.model
    if spec.uri:
        return ModelRef(uri=spec.uri, version=version_of(spec.uri)), None
    if spec.training_job_ref is None:
        return None, None
    if not job_exists:
        return None, ReferencedJob(exists=False)
    if job_status is None:
        return None, ReferencedJob(exists=True)
    failed = next((c for c in job_status.conditions if c.type == "Failed" and c.status == "True"), None)
    referenced = ReferencedJob(
        exists=True, phase=job_status.phase.value, message=(failed.message or None) if failed else None
    )
    model = job_status.model
    if model is None or not model.uri or not model.version:
        return None, referenced
    return ModelRef(uri=model.uri, version=model.version), referenced


def plan_serving(
    server: api.ModelServer,
    observed_deployment: ObservedDeployment | None,
    pods: Sequence[ObservedPod],
    source: ModelRef | None,
    now: float,
    config: OperatorConfig,
    *,
    referenced_job: ReferencedJob | None = None,
) -> Plan:
    """Plan one reconcile of ``server`` at ``now`` (epoch seconds).

    ``source`` is what spec.model points at now (the shell resolves trainingJobRef to the
    job's status.model, or spec.model.uri to ModelRef(uri, version_of(uri))); None means
    the job has no model yet, and ``referenced_job`` then says why: the job does not exist,
    it failed, or it is still on its way. Always returns the whole new status and re-applies
    the Service and (once there is a model) the Deployment, which are idempotent.
    """
    return _ServingReconcile(
        server, observed_deployment, pods, source, quantize(now), config, referenced_job
    ).run()


@dataclass
class _ServingReconcile(ConditionWriter):
    server: api.ModelServer
    deployment: ObservedDeployment | None
    pods: Sequence[ObservedPod]
    source: ModelRef | None
    now: float
    config: OperatorConfig
    referenced_job: ReferencedJob | None = None
    status: api.ModelServerStatus = field(init=False)
    actions: list[Action] = field(default_factory=list)
    events: list[RecordEvent] = field(default_factory=list)
    replicas_override: int | None = None
    requeue: float | None = None

    def __post_init__(self) -> None:
        self.status = (
            self.server.status.clone() if self.server.status is not None else api.ModelServerStatus()
        )
        self.spec = self.server.spec
        self.generation = self.server.metadata.generation

    # ------------------------------------------------------------------ main flow

    def run(self) -> Plan:
        st = self.status
        spec_changed = st.observed_generation is not None and st.observed_generation != self.generation
        problems = check_server_spec(self.server, self.source)
        if problems:
            self._invalid("; ".join(problems))
            return self._plan(apply_service=False)

        if st.phase == Phase.FAILED:
            new_model = self.source is not None and self.source.uri not in (
                st.model_uri,
                st.rejected_model_uri,
            )
            if not (spec_changed or new_model):
                self.replicas_override = 0
                return self._plan()
            why = "the spec changed" if spec_changed or self.source is None else (
                f"model version {self.source.version} is available"
            )
            st.supervision.restart_times = []
            self._condition("Failed", "False", "Recovering", f"{why}: serving again")
            self.events.append(RecordEvent("Normal", "Recovering", f"{why}: serving again"))
            st.phase = Phase.LOADING

        if not self._choose_model():
            return self._plan()
        if self._supervise_pods():
            return self._plan()
        self._settle_phase()
        return self._plan()

    def _plan(self, apply_service: bool = True) -> Plan:
        st = self.status
        st.observed_generation = self.generation
        st.url = (
            f"http://{self.server.metadata.name}.{self.server.metadata.namespace}."
            f"{self.config.service_domain}:{self.spec.service.port}/v2/models/{model_name_of(self.server)}"
        )
        grpc_port = self.spec.service.grpc_port
        st.grpc_address = (
            f"{self.server.metadata.name}.{self.server.metadata.namespace}.{self.config.service_domain}:{grpc_port}"
            if grpc_port else None
        )
        live = [p for p in self.pods if not p.deleting]
        st.selector = server_selector_string(self.server)
        st.replicas = len(live)
        st.ready_replicas = sum(1 for p in live if p.ready)
        history = [to_timestamp(t) for t in st.supervision.restart_times]
        st.supervision.restarts_in_window = restarts_in_window(
            history, self.now, self.spec.supervision.period_seconds
        )
        actions: list[Action] = []
        if apply_service:
            actions.append(ApplyService(build_server_service(self.server, self.config)))
        if apply_service and st.model_uri is not None and st.model_version is not None:
            model = ModelRef(st.model_uri, st.model_version)
            actions.append(
                ApplyDeployment(
                    build_server_deployment(self.server, model, self.config, replicas=self.replicas_override)
                )
            )
        actions.extend(self.events)
        return Plan(actions=tuple(actions), status=st, requeue_after=self.requeue)

    # ------------------------------------------------------------------ helpers

    def _invalid(self, message: str) -> None:
        st = self.status
        if st.phase != Phase.FAILED or (find_condition(st.conditions, "Failed") or _NO).reason != "InvalidSpec":
            self.events.append(RecordEvent("Warning", "InvalidSpec", message))
        st.phase = Phase.FAILED
        self._condition("Ready", "False", "InvalidSpec", message)
        self._condition("Failed", "True", "InvalidSpec", message)

    # ------------------------------------------------------------------ steps

    def _choose_model(self) -> bool:
        """Decide which model the Deployment serves. False when there is none yet."""
        st, source = self.status, self.source
        if source is None:
            if st.model_uri is None:
                st.phase = Phase.PENDING
                reason, message = self._why_no_model()
                ready = find_condition(st.conditions, "Ready")
                if reason != "WaitingForModel" and (ready is None or ready.reason != reason):
                    self.events.append(RecordEvent("Warning", reason, message))
                self._condition("Ready", "False", reason, message)
                self.requeue = WAITING_FOR_MODEL_REQUEUE_SECONDS
                return False
            return True  # keep serving what we serve
        if source.uri == st.rejected_model_uri:
            return st.model_uri is not None  # stay on the rollback target
        if source.uri != st.model_uri:
            previous = st.model_version
            st.model_uri, st.model_version = source.uri, source.version
            st.rejected_model_uri = None
            st.phase = Phase.LOADING
            message = f"rolling out model version {source.version}" + (
                f" (replacing {previous})" if previous else ""
            )
            self._condition_false_if_present("RolledBack", "NewModel", message)
            self.events.append(RecordEvent("Normal", "Deploying", message))
        return True

    def _why_no_model(self) -> tuple[str, str]:
        """(reason, message) of Ready=False while spec.model.trainingJobRef has no model to give."""
        ref = self.spec.model.training_job_ref
        job = self.referenced_job
        name = f"{self.server.metadata.namespace}/{ref.name}" if ref is not None else "?"
        if job is not None and not job.exists:
            return (
                "TrainingJobNotFound",
                f"spec.model.trainingJobRef.name: there is no TrainingJob {name}; create it, "
                "or fix the name (this server serves the model once that job succeeds)",
            )
        if job is not None and job.phase == api.TrainingPhase.FAILED:
            why = f": {job.message}" if job.message else ""
            return (
                "TrainingJobFailed",
                f"the TrainingJob {name} failed, so there is no model to serve{why}",
            )
        return "WaitingForModel", "waiting for the model: the TrainingJob has not succeeded yet"

    def _policy(self) -> Policy:
        sup = self.spec.supervision
        return Policy(
            restart=sup.restart,
            max_restarts=sup.max_restarts,
            period_seconds=sup.period_seconds,
            failure_policy=SERVER_FAILURE_POLICY,
            children=(0,),
            child_noun="server",
            memory_limit=memory_limit(self.server),
            startup_timeout_seconds=self.spec.startup_timeout_seconds,
        )

    def _exits(self) -> list[Failure]:
        """Every failure not handled yet, oldest first per pod, pods by name."""
        handled = _handled_counts(self.status.supervision.seen_failures)
        out = []
        for p in sorted(self.pods, key=lambda p: p.name):
            if p.model_uri is not None and p.model_uri != self.status.model_uri:
                continue  # a pod of another model: being replaced, not ours to count
            last = p.restart_count + (1 if p.phase == "Failed" and not p.deleting else 0)
            for n in range(handled.get(p.name, 0) + 1, last + 1):
                final = p.phase == "Failed" and n == last
                out.append(
                    Failure(
                        child=0,
                        pod=p.name,
                        restart_count=n,
                        exit_code=p.exit_code,
                        reason=p.reason if final or p.reason not in _POD_LEVEL_REASONS else None,
                        pod_conditions=p.conditions if final else frozenset(),
                        succeeded=p.exit_code == 0,
                        message=p.message,
                        message_source=p.message_source,
                    )
                )
        return out

    def _supervise_pods(self) -> bool:
        """Count the server's new failures. True when it escalated."""
        st = self.status
        sup = st.supervision
        state = supervisor_state(sup)
        policy = self._policy()
        escalated = None
        for exit_ in self._exits():
            decision, state = supervise_exit(state, exit_, policy, self.now)
            if decision.verdict is Verdict.DUPLICATE:
                continue
            previous = sup.last_failure
            if not exit_.succeeded:
                sup.last_failure = failure_record(
                    exit_, decision.action, self.now, memory_limit=policy.memory_limit,
                    startup_timeout_seconds=policy.startup_timeout_seconds,
                )
            if decision.verdict is Verdict.RESTART:
                window = (
                    f"{restarts_in_window(state.restart_times, self.now, policy.period_seconds)} restarts "
                    f"within {policy.period_seconds}s, maxRestarts is {policy.max_restarts}"
                )
                what = "not counted: infrastructure disruption" if not decision.counted else window
                if self._same_reason(previous, sup.last_failure, policy.period_seconds):
                    # Said in full once (the event before, the Ready condition): a crash loop
                    # does not repeat the same paragraph at every restart.
                    text = f"server pod {exit_.pod} was restarted again for the same reason (restart #{exit_.restart_count}); {what}"
                else:
                    text = (
                        f"server pod {exit_.pod} {describe_failure(exit_, **self._words(policy))}; "
                        f"restart #{exit_.restart_count}, {what}"
                    )
                    said = last_words(exit_, startup_timeout_seconds=policy.startup_timeout_seconds)
                    text += f". {said}" if said else ""
                self.events.append(RecordEvent("Warning", "ServerRestarted", text))
            elif decision.verdict is Verdict.ESCALATE:
                escalated = decision
                if exit_.exit_code == EXIT_MODEL_UNLOADABLE and decision.action is api.FailureAction.FAIL:
                    escalated = replace(
                        decision,
                        reason="ModelUnloadable",
                        message=f"server pod {exit_.pod} cannot load model version {st.model_version}: "
                        + _unloadable_words(exit_),
                    )
                break
        store_supervisor_state(sup, state, _compact_seen(state.seen_failures, {p.name for p in self.pods}))
        if escalated is None:
            return False
        self._escalate(escalated.reason, escalated.message)
        return True

    @staticmethod
    def _words(policy: Policy) -> dict[str, Any]:
        return {"memory_limit": policy.memory_limit, "startup_timeout_seconds": policy.startup_timeout_seconds}

    def _same_reason(
        self, previous: api.FailureRecord | None, current: api.FailureRecord | None, period: float
    ) -> bool:
        """The failure before this one, still in the window, ended the same way and said the same."""
        if previous is None or current is None or to_timestamp(previous.time) < self.now - period:
            return False
        return (previous.exit_code, previous.reason, _why(previous)) == (
            current.exit_code,
            current.reason,
            _why(current),
        )

    def _escalate(self, reason: str, message: str) -> None:
        st = self.status
        sup = self.spec.supervision
        bad_uri, bad_version = st.model_uri, st.model_version
        can_roll_back = (
            sup.on_exhausted is api.OnExhausted.ROLLBACK
            and st.last_good_model_uri is not None
            and st.last_good_model_version is not None
            and st.last_good_model_uri != bad_uri
        )
        if can_roll_back:
            st.model_uri, st.model_version = st.last_good_model_uri, st.last_good_model_version
            st.rejected_model_uri = bad_uri
            st.supervision.restart_times = []
            st.phase = Phase.ROLLED_BACK
            text = (
                f"model version {bad_version} was rolled back to {st.model_version}: {message}; "
                "it is not deployed again until the model source changes"
            )
            self._condition("RolledBack", "True", reason, text)
            self.events.append(RecordEvent("Warning", "RolledBack", text))
            self._settle_readiness()
            return
        why = (
            "onExhausted is Fail"
            if sup.on_exhausted is api.OnExhausted.FAIL
            else "there is no earlier Ready version to roll back to"
        )
        text = (
            f"model version {bad_version} failed: {message}; {why}, so the Deployment is scaled to zero "
            "(the Service stays and answers nothing); change the spec or publish a new model version"
        )
        st.phase = Phase.FAILED
        self.replicas_override = 0
        self._condition("Failed", "True", reason, text)
        self._condition("Ready", "False", reason, text)
        self._condition_false_if_present("Degraded", "Failed", text)
        self.events.append(RecordEvent("Warning", "Failed", text))

    def _ready_on_current(self) -> int:
        uri = self.status.model_uri
        return sum(1 for p in self.pods if p.ready and not p.deleting and p.model_uri in (None, uri))

    def _settle_readiness(self) -> None:
        """Ready/Degraded conditions from the replicas; lastGood when every replica is ready."""
        st = self.status
        desired = self.spec.replicas
        ready_current = self._ready_on_current()
        ready_any = sum(1 for p in self.pods if p.ready and not p.deleting)
        version = st.model_version
        if desired == 0:
            st.last_ready_replicas = 0
            self._condition("Ready", "False", "ScaledToZero", "spec.replicas is 0")
            self._condition_false_if_present("Degraded", "ScaledToZero", "spec.replicas is 0")
            return
        if ready_current >= desired:
            if st.last_good_model_uri == st.model_uri and st.last_ready_replicas not in (None, desired):
                self.events.append(
                    RecordEvent(
                        "Normal",
                        "Scaled",
                        f"{desired} replicas serve model version {version} (was {st.last_ready_replicas})",
                    )
                )
            st.last_good_model_uri, st.last_good_model_version = st.model_uri, version
            st.last_ready_replicas = desired
            message = f"{ready_current}/{desired} replicas serve model version {version}"
            self._condition("Ready", "True", "AllReplicasReady", message)
            self._condition_false_if_present("Degraded", "AllReplicasReady", message)
            return
        message = f"{ready_current}/{desired} replicas ready on model version {version}"
        scaling = self._scaling(ready_current)
        if scaling:
            message += f" (scaling from {st.last_ready_replicas} to {desired} replicas)"
        message += self._why_not_ready()
        if ready_any:
            self._condition("Ready", "True", "Scaling" if scaling else "SomeReplicasReady", message)
        else:
            self._condition("Ready", "False", "NoReplicasReady", message)

    def _why_not_ready(self) -> str:
        """What keeps replicas from being ready, for the Ready condition: pods that cannot start
        (an image that cannot be pulled, no node fits) and the last restart in the window."""
        uri = self.status.model_uri
        waiting = [
            p for p in sorted(self.pods, key=lambda p: p.name)
            if p.waiting and not p.ready and not p.deleting and p.model_uri in (None, uri)
        ]
        due, later = waiting_due(waiting, self.now)
        if later is not None:
            self.requeue = later if self.requeue is None else min(self.requeue, later)
        words = [f"; replica pod {p.name} cannot start: {p.waiting}" for p in waiting] if due else []
        last, period = self.status.supervision.last_failure, self.spec.supervision.period_seconds
        history = [to_timestamp(t) for t in self.status.supervision.restart_times]
        restarts = restarts_in_window(history, self.now, period)
        if last is not None and last.pod and restarts and to_timestamp(last.time) >= self.now - period:
            words.append(
                f"; {restarts} restarts within {period}s, the last: server pod {last.pod} "
                + _record_words(last, self._policy())
            )
        return "".join(words)

    def _scaling(self, ready_current: int) -> bool:
        """spec.replicas grew past what was last all ready, and those replicas still are."""
        st = self.status
        return (
            st.last_good_model_uri == st.model_uri
            and st.last_ready_replicas is not None
            and self.spec.replicas > st.last_ready_replicas
            and ready_current >= st.last_ready_replicas
        )

    def _settle_phase(self) -> None:
        st = self.status
        self._settle_readiness()
        if self.source is not None and self.source.uri == st.rejected_model_uri:
            st.phase = Phase.ROLLED_BACK
            return
        if self.spec.replicas == 0:
            st.phase = Phase.PENDING
            return
        ready_current = self._ready_on_current()
        if ready_current >= self.spec.replicas:
            st.phase = Phase.READY
        elif st.last_good_model_uri != st.model_uri:
            st.phase = Phase.LOADING
        elif self._scaling(ready_current):
            if st.phase != Phase.SCALING:
                self.events.append(
                    RecordEvent(
                        "Normal",
                        "Scaling",
                        f"scaling from {st.last_ready_replicas} to {self.spec.replicas} replicas of model version {st.model_version}",
                    )
                )
            st.phase = Phase.SCALING
            self._condition_false_if_present(
                "Degraded", "Scaling", f"scaling from {st.last_ready_replicas} to {self.spec.replicas} replicas"
            )
        else:
            st.phase = Phase.DEGRADED
            self._condition(
                "Degraded",
                "True",
                "ReplicasNotReady",
                f"{ready_current}/{self.spec.replicas} replicas ready on model version {st.model_version}",
            )


def _unloadable_words(f: Failure) -> str:
    """Why a server cannot load its model: its own words without their kind, else what it left."""
    said = TerminationMessage.parse(f.message) if f.source is MessageSource.PROCESS else None
    if said is not None and said.kind is TerminationKind.MODEL_UNLOADABLE:
        return said.reason
    if f.source is MessageSource.PROCESS:
        return quote_message(f.message)
    return "it gave no reason (see its log). " + (last_words(f) or "It left no termination message")


def _record_words(record: api.FailureRecord, policy: Policy) -> str:
    """How a lastFailure reads after 'server pod X': described again from the server's own words,
    or from its exit code and reason when it left none."""
    words: dict[str, Any] = {
        "memory_limit": policy.memory_limit,
        "startup_timeout_seconds": policy.startup_timeout_seconds,
    }
    if TerminationMessage.parse(record.message) is None:  # composed by failure_record: what ended it is enough here
        return describe_failure(
            Failure(child=0, pod=record.pod or "", exit_code=record.exit_code, reason=record.reason), **words
        )
    f = Failure(
        child=0,
        pod=record.pod or "",
        exit_code=record.exit_code,
        reason=record.reason,
        message=record.message,
        message_source=MessageSource.PROCESS,
    )
    said = last_words(f, startup_timeout_seconds=policy.startup_timeout_seconds)
    what = describe_failure(f, **words)
    return f"{what}. {said}" if said else what


def _why(record: api.FailureRecord) -> str:
    """lastFailure's words without the last log line (what differs between two runs of the same end)."""
    return (record.message or "").split("; it left no termination message", 1)[0]


_NO = api.Condition(type="None", status="Unknown", reason="None", last_transition_time=from_timestamp(0))
#: Reasons that describe the pod's end, not a container restart inside it.
_POD_LEVEL_REASONS = frozenset({"Evicted", "Preempted", "NodeLost", "NodeShutdown", "Terminated"})


def _handled_counts(seen: Sequence[str]) -> dict[str, int]:
    """pod -> the highest failure number already handled (restart counts only grow)."""
    out: dict[str, int] = {}
    for key in seen:
        m = _KEY.match(key)
        if m:
            out[m["pod"]] = max(out.get(m["pod"], 0), int(m["n"]))
    return out


def _compact_seen(seen: Sequence[str], live_pods: set[str]) -> list[str]:
    """One key per pod (its highest), live pods always kept, newest last, bounded."""
    handled = _handled_counts(seen)
    order = []
    for key in seen:  # keep first-seen order by the position of each pod's latest key
        m = _KEY.match(key)
        if m and m["pod"] not in order:
            order.append(m["pod"])
    order.sort(key=lambda pod: max(i for i, k in enumerate(seen) if k.startswith(pod + "#")))
    keys = [f"{pod}#{handled[pod]}" for pod in order]
    gone = [k for k in keys if k.rsplit("#", 1)[0] not in live_pods]
    live = [k for k in keys if k.rsplit("#", 1)[0] in live_pods]
    room = max(SEEN_FAILURES_KEPT - len(live), 0)
    kept_gone = set(gone[len(gone) - room :] if room else [])
    return [k for k in keys if k in kept_gone or k.rsplit("#", 1)[0] in live_pods]
