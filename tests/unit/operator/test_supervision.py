"""The OTP supervision core: worked examples from docs/supervision.md and the laws, property-tested."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from mlvisor.api import FailureAction, FailurePolicyRule, RestartType, Strategy, default_failure_policy
from mlvisor.operator.supervision import (
    KUBELET_BACKOFF,
    CrashLoopBackOff,
    Failure,
    MessageSource,
    Policy,
    SupervisorState,
    Verdict,
    admit_restart,
    backoff_delay,
    children_to_restart,
    classify_failure,
    crash_loop_delay,
    describe_failure,
    failure_words,
    last_words,
    message_source,
    quote_message,
    restarts_in_window,
    should_restart,
    supervise_exit,
)

# --------------------------------------------------------------------------- admit_restart


def test_max_restarts_zero_escalates_on_the_first_failure():
    allowed, history = admit_restart((), 100.0, 0, 60)
    assert not allowed
    assert history == (100.0,)


def test_three_restarts_allowed_fourth_in_window_refused():
    history: tuple[float, ...] = ()
    for t in (0.0, 10.0, 20.0):
        allowed, history = admit_restart(history, t, 3, 60)
        assert allowed
    allowed, history = admit_restart(history, 30.0, 3, 60)
    assert not allowed
    assert history == (0.0, 10.0, 20.0, 30.0)


def test_boundary_is_inclusive_like_otp():
    # OTP keeps R when R >= Now - Period: a restart exactly one period ago still counts.
    allowed, history = admit_restart((40.0,), 100.0, 1, 60)
    assert history == (40.0, 100.0)
    assert not allowed
    allowed, history = admit_restart((39.999,), 100.0, 1, 60)
    assert history == (100.0,)
    assert allowed


def test_old_restarts_fall_out_of_the_window():
    allowed, history = admit_restart((0.0, 10.0, 20.0), 81.0, 3, 60)
    assert allowed
    assert history == (81.0,)


def test_invalid_arguments_are_refused():
    with pytest.raises(ValueError, match="max_restarts"):
        admit_restart((), 0.0, -1, 60)
    with pytest.raises(ValueError, match="period_seconds"):
        admit_restart((), 0.0, 1, 0)


times = st.lists(st.floats(min_value=0, max_value=10_000, allow_nan=False), max_size=40).map(sorted)


@given(times=times, max_restarts=st.integers(0, 6), period=st.floats(0.5, 500))
def test_law_window_never_exceeds_intensity_plus_one(times, max_restarts, period):
    """Carrying the history forward while restarts are allowed, it never holds more than max+1 times."""
    history: tuple[float, ...] = ()
    for now in times:
        allowed, history = admit_restart(history, now, max_restarts, period)
        assert len(history) <= max_restarts + 1
        assert allowed == (len(history) <= max_restarts)
        if not allowed:
            break


@given(history=times, extra=st.floats(0, 1000), max_restarts=st.integers(0, 6), period=st.floats(0.5, 500))
def test_law_times_older_than_the_period_never_count(history, extra, max_restarts, period):
    now = (history[-1] if history else 0.0) + extra
    _, new_history = admit_restart(history, now, max_restarts, period)
    assert all(t >= now - period for t in new_history)
    assert new_history[-1] == now
    # Every earlier time inside the window is kept (sorted history: nothing inside is dropped).
    assert len(new_history) - 1 == sum(1 for t in history if t >= now - period)
    assert restarts_in_window(new_history, now, period) == len(new_history)


# --------------------------------------------------------------------------- restart types, strategies


def test_restart_types_follow_otp():
    assert should_restart(RestartType.PERMANENT, succeeded=True)
    assert should_restart(RestartType.PERMANENT, succeeded=False)
    assert not should_restart(RestartType.TRANSIENT, succeeded=True)
    assert should_restart(RestartType.TRANSIENT, succeeded=False)
    assert not should_restart(RestartType.TEMPORARY, succeeded=True)
    assert not should_restart(RestartType.TEMPORARY, succeeded=False)


@pytest.mark.parametrize(
    ("strategy", "failed", "expected"),
    [
        (Strategy.ONE_FOR_ONE, 2, (2,)),
        (Strategy.ONE_FOR_ALL, 2, (0, 1, 2, 3)),
        (Strategy.REST_FOR_ONE, 2, (2, 3)),
        (Strategy.REST_FOR_ONE, 0, (0, 1, 2, 3)),
        (Strategy.REST_FOR_ONE, 3, (3,)),
    ],
)
def test_strategies_pick_the_right_children(strategy, failed, expected):
    assert children_to_restart(strategy, failed, (3, 1, 0, 2)) == expected


def test_unknown_child_is_an_error():
    with pytest.raises(ValueError, match="child 5"):
        children_to_restart(Strategy.ONE_FOR_ONE, 5, (0, 1))


def test_backoff_doubles_and_caps():
    assert [backoff_delay(n, 1, 2, 60) for n in range(1, 9)] == [1, 2, 4, 8, 16, 32, 60, 60]
    assert backoff_delay(1, 0, 2, 60) == 0
    assert backoff_delay(10_000, 1, 10, 60) == 60  # no overflow
    with pytest.raises(ValueError):
        backoff_delay(0, 1, 2, 60)


def _waits(backoff: CrashLoopBackOff, runs: list[float]) -> list[float]:
    """The wait after each run of a container that ran ``runs[i]`` seconds each time."""
    waits, crashes = [], 0
    for ran in runs:
        wait, crashes = crash_loop_delay(backoff, crashes, ran)
        waits.append(wait)
    return waits


def test_crash_loop_back_off_is_the_kubelets_curve():
    # The first restart at once, then 10 s doubling to the 300 s cap.
    assert _waits(KUBELET_BACKOFF, [0.1] * 9) == [0, 10, 20, 40, 80, 160, 300, 300, 300]


def test_crash_loop_back_off_starts_over_after_ten_minutes_of_running():
    assert _waits(KUBELET_BACKOFF, [1, 1, 1, 600, 1, 1]) == [0, 10, 20, 0, 10, 20]
    assert _waits(KUBELET_BACKOFF, [1, 1, 1, 599.9, 1]) == [0, 10, 20, 40, 80]


def test_a_fixed_restart_delay_waits_the_same_before_every_restart():
    assert _waits(CrashLoopBackOff.fixed(0.5), [0.01] * 6) == [0.5] * 6
    assert _waits(CrashLoopBackOff.fixed(0), [0.01] * 3) == [0, 0, 0]
    with pytest.raises(ValueError, match=">= 0"):
        CrashLoopBackOff.fixed(-1)
    with pytest.raises(ValueError, match="crashes"):
        crash_loop_delay(KUBELET_BACKOFF, -1, 0)


def test_six_crashes_in_a_row_take_minutes_not_seconds():
    """maxRestarts 5 escalates on the sixth end: after the first five restarts' waits."""
    assert sum(_waits(KUBELET_BACKOFF, [0.1] * 5)) == 0 + 10 + 20 + 40 + 80


# --------------------------------------------------------------------------- classification


def _f(**kw) -> Failure:
    return Failure(child=kw.pop("child", 0), pod=kw.pop("pod", "p"), **kw)


def test_default_policy_classifies_like_the_docs_say():
    policy = default_failure_policy()
    assert classify_failure(_f(exit_code=2), policy) is FailureAction.FAIL
    assert classify_failure(_f(exit_code=1, reason="Error"), policy) is FailureAction.COUNT
    assert classify_failure(_f(exit_code=137, reason="OOMKilled"), policy) is FailureAction.COUNT
    assert classify_failure(_f(reason="Evicted"), policy) is FailureAction.IGNORE
    assert classify_failure(_f(exit_code=143, pod_conditions=frozenset({"DisruptionTarget"})), policy) is FailureAction.IGNORE


def test_first_matching_rule_wins():
    policy = [
        FailurePolicyRule(on_exit_codes=[137], action=FailureAction.IGNORE),
        FailurePolicyRule(on_reasons=["OOMKilled"], action=FailureAction.FAIL),
    ]
    assert classify_failure(_f(exit_code=137, reason="OOMKilled"), policy) is FailureAction.IGNORE
    assert classify_failure(_f(exit_code=1, reason="OOMKilled"), policy) is FailureAction.FAIL
    assert classify_failure(_f(exit_code=1), []) is FailureAction.COUNT


# --------------------------------------------------------------------------- supervise_exit


def _policy(**kw) -> Policy:
    base = dict(
        restart=RestartType.TRANSIENT,
        max_restarts=3,
        period_seconds=60,
        strategy=Strategy.ONE_FOR_ONE,
        failure_policy=tuple(default_failure_policy()),
        backoff_initial=1,
        backoff_factor=2,
        backoff_max=60,
        children=(0, 1, 2),
    )
    base.update(kw)
    return Policy(**base)


def test_fourth_failure_within_the_window_escalates_with_the_window_named():
    state, policy = SupervisorState(), _policy()
    delays = []
    for attempt, t in enumerate((0.0, 5.0, 10.0), start=1):
        d, state = supervise_exit(state, _f(child=1, pod=f"w-1-{attempt}", exit_code=1), policy, t)
        assert d.verdict is Verdict.RESTART and d.counted and d.restart == (1,)
        delays.append(d.delay)
    assert delays == [1, 2, 4]
    d, state = supervise_exit(state, _f(child=1, pod="w-1-4", exit_code=1), policy, 15.0)
    assert d.verdict is Verdict.ESCALATE
    assert d.reason == "RestartIntensityExceeded"
    assert "4 restarts within 60s, maxRestarts is 3" in d.message
    assert len(state.restart_times) == 4


def test_exit_code_2_fails_at_once_and_eviction_is_not_counted():
    state, policy = SupervisorState(), _policy()
    d, state2 = supervise_exit(state, _f(pod="a", reason="Evicted"), policy, 0)
    assert d.verdict is Verdict.RESTART and not d.counted and d.delay == 0
    assert state2.restart_times == () and state2.total_restarts == 1
    d, _ = supervise_exit(state2, _f(pod="b", exit_code=2), policy, 1)
    assert d.verdict is Verdict.ESCALATE and d.reason == "FailurePolicy"


def test_success_is_done_for_transient_and_a_counted_restart_for_permanent():
    d, _ = supervise_exit(SupervisorState(), _f(succeeded=True, exit_code=0), _policy(), 0)
    assert d.verdict is Verdict.DONE
    d, s = supervise_exit(SupervisorState(), _f(succeeded=True, exit_code=0), _policy(restart=RestartType.PERMANENT), 0)
    assert d.verdict is Verdict.RESTART and d.counted and len(s.restart_times) == 1


failures = st.builds(
    Failure,
    child=st.integers(0, 2),
    pod=st.sampled_from(["w-0-1", "w-1-1", "w-2-3", "s-0"]),
    restart_count=st.integers(0, 3),
    exit_code=st.one_of(st.none(), st.sampled_from([0, 1, 2, 137, 143])),
    reason=st.one_of(st.none(), st.sampled_from(["Error", "OOMKilled", "Evicted"])),
    pod_conditions=st.frozensets(st.sampled_from(["DisruptionTarget", "Ready"])),
    succeeded=st.booleans(),
)
policies = st.builds(
    _policy,
    restart=st.sampled_from(list(RestartType)),
    strategy=st.sampled_from(list(Strategy)),
    max_restarts=st.integers(0, 4),
)


@settings(max_examples=300)
@given(failure=failures, policy=policies, now=st.floats(0, 1e6))
def test_law_the_same_failure_twice_changes_nothing(failure, policy, now):
    _, state = supervise_exit(SupervisorState(), failure, policy, now)
    decision, again = supervise_exit(state, failure, policy, now + 1)
    assert decision.verdict is Verdict.DUPLICATE
    assert again == state


@given(failure=failures, policy=policies, now=st.floats(0, 1e6))
def test_law_temporary_is_never_restarted(failure, policy, now):
    temporary = Policy(**{**policy.__dict__, "restart": RestartType.TEMPORARY})
    decision, _ = supervise_exit(SupervisorState(), failure, temporary, now)
    assert decision.verdict is not Verdict.RESTART


@given(strategy=st.sampled_from([Strategy.ONE_FOR_ALL, Strategy.REST_FOR_ONE]), child=st.integers(0, 2))
def test_law_a_group_restart_counts_once(strategy, child):
    policy = _policy(strategy=strategy, max_restarts=5)
    d, state = supervise_exit(SupervisorState(), _f(child=child, pod="x", exit_code=1), policy, 10)
    assert d.verdict is Verdict.RESTART
    assert d.restart == children_to_restart(strategy, child, policy.children)
    assert len(d.restart) >= 1
    assert state.restart_times == (10,)
    assert state.total_restarts == 1


@settings(max_examples=200)
@given(steps=st.lists(st.tuples(failures, st.floats(0, 30)), max_size=30), policy=policies)
def test_law_history_stays_bounded_and_windowed_over_any_run(steps, policy):
    state, now = SupervisorState(), 0.0
    for failure, gap in steps:
        now += gap
        decision, state = supervise_exit(state, failure, policy, now)
        assert len(state.restart_times) <= policy.max_restarts + 1
        if decision.counted or decision.reason == "RestartIntensityExceeded":
            # A counted decision rewrote the window at `now`: nothing older than the period is left.
            assert state.restart_times[-1] == now
            assert all(t >= now - policy.period_seconds for t in state.restart_times)
        if decision.verdict is Verdict.ESCALATE:
            break


def test_messages_name_the_child_the_way_the_resource_calls_it():
    d, _ = supervise_exit(SupervisorState(), _f(child=1, pod="iris-worker-1-1", exit_code=1), _policy(), 0)
    assert d.message.startswith("worker 1 (pod iris-worker-1-1) exited with code 1; restarting worker 1 in 1s")
    server = _policy(children=(0,), child_noun="server", restart=RestartType.PERMANENT)
    d, _ = supervise_exit(SupervisorState(), _f(pod="iris-5d8-x", exit_code=3, reason="Error"), server, 0)
    assert d.message.startswith("server pod iris-5d8-x exited with code 3; restarting it in 1s")


# --------------------------------------------------------------------------- the words of a failure
# A log tail as the kubelet's FallbackToLogsOnError reports it for a trainer killed after its
# metrics line: JSON lines, none of them a reason.
TRAINER_TAIL = (
    '{"ts": "2026-12-04T15:53:54.149Z", "level": "info", "event": "fit", "msg": "fitting on 120 rows"}\n'
    '{"ts": "2026-12-04T15:53:54.576Z", "level": "info", "event": "metrics", "msg": "held-out accuracy 0.9667"}'
)
SERVER_TAIL = "INFO:     Waiting for application shutdown.\nINFO:     Application shutdown complete.\nINFO:     Finished server process [21595]"


def test_a_sigkill_says_so_and_quotes_the_log_tail_only_as_its_last_log_line():
    killed = Failure(child=0, pod="torn-worker-0-1", exit_code=137, reason="Error", message=TRAINER_TAIL)
    assert killed.source is MessageSource.LOGS
    d, _ = supervise_exit(SupervisorState(), killed, _policy(children=(0,)), 0)
    assert d.message == (
        "worker pod torn-worker-0-1 was killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        "restarting it in 1s (1 restarts within 60s, maxRestarts is 3). "
        'It left no termination message; its last log line: "held-out accuracy 0.9667"'
    )
    assert "It said" not in d.message
    assert failure_words(killed) == (
        "killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        'it left no termination message; its last log line: "held-out accuracy 0.9667"'
    )


def test_a_sigkill_without_any_message_says_it_left_none():
    killed = Failure(child=0, pod="p", exit_code=137, reason="Error")
    assert failure_words(killed) == (
        "killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; it left no termination message"
    )


def test_an_oom_kill_keeps_its_own_words_and_names_the_memory_limit():
    oom = Failure(child=0, pod="p", exit_code=137, reason="OOMKilled", message=TRAINER_TAIL)
    assert describe_failure(oom, memory_limit="2Gi") == (
        "was OOM-killed (reason OOMKilled, exit 137): it needed more memory than its limit of 2Gi; "
        "raise spec.resources.limits.memory"
    )
    d, _ = supervise_exit(SupervisorState(), oom, _policy(children=(0,), memory_limit="512Mi"), 0)
    assert "was OOM-killed (reason OOMKilled, exit 137): it needed more memory than its limit of 512Mi" in d.message
    assert describe_failure(Failure(child=0, pod="p", exit_code=137, reason="OOMKilled")).endswith(
        "it needed more memory than its limit; raise spec.resources.limits.memory"
    )


def test_the_process_own_termination_message_is_what_it_said():
    said = "invalid spec: column 'price' is not in data/houses.csv; columns are: rooms, area"
    f = Failure(child=0, pod="p", exit_code=2, reason="Error", message=said)
    assert f.source is MessageSource.PROCESS
    assert describe_failure(f) == "exited with code 2"
    assert last_words(f) == f'It said: "{said}"'
    assert failure_words(f) == said
    crash = Failure(child=0, pod="p", exit_code=1, message="crash: OSError: disk on fire\nsecond line")
    assert last_words(crash) == 'It said: "crash: OSError: disk on fire second line"'


def test_an_unmarked_message_of_a_failed_container_is_a_log_tail_even_if_it_reads_like_a_reason():
    # A Python that died before the trainer's own handler (an import error): the kubelet's tail.
    tail = "Traceback (most recent call last):\n  File ...\nModuleNotFoundError: No module named 'sklearn'"
    f = Failure(child=0, pod="p", exit_code=1, message=tail)
    assert f.source is MessageSource.LOGS
    assert last_words(f) == "It left no termination message; its last log line: \"ModuleNotFoundError: No module named 'sklearn'\""
    # After a success there is no fallback: whatever is there is the process's (a trainer's summary).
    assert message_source('{"version": "v1"}', 0) is MessageSource.PROCESS
    assert message_source('{"version": "v1"}', 1) is MessageSource.LOGS
    assert message_source("", 1) is None


def test_a_server_stopped_before_it_was_ready_names_startup_timeout_and_what_it_waited_for():
    said = "not ready: waiting for the model: artifact directory /models/default/iris/v1 does not exist"
    f = Failure(child=0, pod="iris-abc-0-x", exit_code=143, reason="Error", message=said)
    server = _policy(children=(0,), child_noun="server", restart=RestartType.PERMANENT, startup_timeout_seconds=120)
    d, _ = supervise_exit(SupervisorState(), f, server, 0)
    assert d.message == (
        "server pod iris-abc-0-x was not ready within spec.startupTimeoutSeconds (120 s) and was restarted: "
        "it was waiting for the model: artifact directory /models/default/iris/v1 does not exist; "
        "restarting it in 1s (1 restarts within 60s, maxRestarts is 3)"
    )
    # lastFailure keeps the server's own words
    assert failure_words(f, startup_timeout_seconds=120) == said


def test_a_sigterm_of_a_server_that_left_only_its_log_names_the_probes():
    f = Failure(child=0, pod="p", exit_code=143, reason="Error", message=SERVER_TAIL)
    assert describe_failure(f, startup_timeout_seconds=5) == (
        "was stopped by signal 15 (SIGTERM, exit 143): not ready within spec.startupTimeoutSeconds (5 s), "
        "a failed livenessProbe, or told to stop from outside"
    )
    assert last_words(f) == 'It left no termination message; its last log line: "INFO:     Finished server process [21595]"'
    assert describe_failure(Failure(child=0, pod="p", exit_code=143)) == (
        "was stopped by signal 15 (SIGTERM, exit 143): told to stop from outside"
    )


def test_pod_conditions_are_never_listed_only_the_telling_ones_named():
    everyday = frozenset({"Initialized", "PodReadyToStartContainers", "PodScheduled"})
    f = Failure(child=0, pod="p", exit_code=1, reason="Error", pod_conditions=everyday)
    assert describe_failure(f) == "exited with code 1"
    evicted = Failure(child=0, pod="p", exit_code=137, reason="Evicted", pod_conditions=everyday | {"DisruptionTarget"},
                      message="The node was low on resource: memory.", message_source=MessageSource.POD)
    assert describe_failure(evicted) == (
        "was evicted (reason Evicted, exit 137) (pod condition DisruptionTarget): The node was low on resource: memory."
    )
    assert last_words(evicted) == ""
    # a condition a failurePolicy rule names is part of the story
    policy = _policy(children=(0,), failure_policy=(FailurePolicyRule(on_pod_conditions=["Flaky"], action=FailureAction.IGNORE),))
    d, _ = supervise_exit(SupervisorState(), Failure(child=0, pod="p", exit_code=1, pod_conditions=everyday | {"Flaky"}), policy, 0)
    assert d.message.startswith("worker pod p exited with code 1 (pod condition Flaky); the failurePolicy says Ignore")


def test_quoting_a_log_tail_takes_its_last_line_and_a_json_line_by_its_msg():
    assert quote_message(TRAINER_TAIL, MessageSource.LOGS) == "held-out accuracy 0.9667"
    assert quote_message("a\n{not json\n", MessageSource.LOGS) == "{not json"
    assert quote_message("x" * 700, MessageSource.LOGS).endswith("...")
    assert len(quote_message("x" * 700, MessageSource.LOGS)) == 600


def test_a_container_that_could_not_start_quotes_the_runtimes_error():
    f = Failure(child=0, pod="p", exit_code=127, reason="StartError",
                message="cannot start: [Errno 2] No such file or directory: 'pyhton'")
    assert describe_failure(f) == (
        "could not be started (reason StartError, exit 127): cannot start: [Errno 2] No such file or directory: 'pyhton'"
    )
    assert last_words(f) == ""
