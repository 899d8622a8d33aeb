"""The termination-message contract between a process and its supervisor (mlvisor.api.exits)."""

from __future__ import annotations

import pytest

from mlvisor.api.exits import TerminationKind, TerminationMessage, TerminationSummary, written_by_process


@pytest.mark.parametrize("kind", list(TerminationKind))
def test_every_kind_reads_back_as_written(kind: TerminationKind) -> None:
    message = TerminationMessage(kind, "the reason: with a colon").to_message()
    assert message == f"{kind.value}: the reason: with a colon"
    assert TerminationMessage.parse(message) == TerminationMessage(kind, "the reason: with a colon")
    assert written_by_process(message, 1) and written_by_process(message, 143)


@pytest.mark.parametrize("tail", [
    "INFO:     Finished server process [21595]",
    '{"ts": "2026-12-04T15:53:54Z", "level": "info", "event": "metrics", "msg": "held-out accuracy 0.97"}',
    "Traceback (most recent call last):\nValueError: crash: not at the start",
    "model /models/x/v1 cannot be loaded: y",  # an older server's words: no kind
])
def test_a_failed_containers_message_without_a_kind_is_a_log_tail(tail: str) -> None:
    assert TerminationMessage.parse(tail) is None
    assert not written_by_process(tail, 137)


def test_after_a_success_the_message_is_always_the_processes() -> None:
    summary = TerminationSummary(version="v1", metrics={"accuracy": 0.9}).to_message()
    assert written_by_process(summary, 0)
    # a log line that happens to look like a summary is not taken for one after a failure
    assert not written_by_process('{"version": "v1", "event": "start"}', 137)
    assert not written_by_process("", 0) and not written_by_process(None, 1)
