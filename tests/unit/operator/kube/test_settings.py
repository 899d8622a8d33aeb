"""kopf settings that are only safe because of which handlers mlvisor registers."""

from __future__ import annotations

from mlvisor.operator.kube import handlers
from mlvisor.operator.kube.settings import Options


def test_kopf_runs_the_process_and_watches_nothing_itself() -> None:
    # The watching is the operator's own (watches.py): a resource handler registered with kopf
    # would start a second watch of that kind, and kopf would store its state on our objects.
    registry = handlers.registry
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
    assert not registry._watching.get_all_handlers() and not registry._indexing.get_all_handlers()
    assert registry._activities.get_all_handlers()  # login, start-up, clean-up, the probe


def test_reconciles_are_bounded_by_an_environment_variable(monkeypatch) -> None:
    import pytest

    from mlvisor.operator.kube.settings import reconcile_workers_from_env

    monkeypatch.delenv("MLVISOR_RECONCILE_WORKERS", raising=False)
    assert reconcile_workers_from_env() == Options.reconcile_workers
    monkeypatch.setenv("MLVISOR_RECONCILE_WORKERS", "8")
    assert reconcile_workers_from_env() == 8
    for bad in ("0", "many", "-3"):
        monkeypatch.setenv("MLVISOR_RECONCILE_WORKERS", bad)
        with pytest.raises(ValueError, match="MLVISOR_RECONCILE_WORKERS: expected a whole number"):
            reconcile_workers_from_env()


def test_the_operator_refuses_an_environment_variable_that_does_not_parse_naming_it(monkeypatch, capsys) -> None:
    from mlvisor.operator.cli import main

    monkeypatch.setenv("MLVISOR_RECONCILE_WORKERS", "lots")
    assert main(["operator", "-n", "x"]) == 2
    assert "MLVISOR_RECONCILE_WORKERS: expected a whole number of at least 1, got 'lots'" in capsys.readouterr().err
    monkeypatch.delenv("MLVISOR_RECONCILE_WORKERS")
    monkeypatch.setenv("MLVISOR_REQUEST_TIMEOUT", "1m")
    assert main(["operator", "-n", "x"]) == 2
    assert "MLVISOR_REQUEST_TIMEOUT: expected a number of seconds, got '1m'" in capsys.readouterr().err
