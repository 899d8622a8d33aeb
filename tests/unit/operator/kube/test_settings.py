"""kopf settings that are only safe because of which handlers mlvisor registers."""

from __future__ import annotations

import kopf

from mlvisor.operator.kube import handlers
from mlvisor.operator.kube.settings import Options, apply_settings


def test_no_diff_base_is_built_because_no_handler_reads_a_diff() -> None:
    # kopf's diff base (a deep copy of every event's body) feeds only on.create/update/field
    # handlers and daemons/timers; the registry must hold none for the no-op storage to be right.
    registry = handlers.registry
    assert not registry._changing.get_all_handlers() and not registry._spawning.get_all_handlers()
    assert registry._watching.get_all_handlers() and registry._indexing.get_all_handlers()
    settings = kopf.OperatorSettings()
    apply_settings(settings, Options())
    body = kopf.Body({"metadata": {"name": "x", "annotations": {"a": "b"}}, "spec": {"big": list(range(100))}})
    assert settings.persistence.diffbase_storage.build(body=body) == {}
    assert settings.persistence.diffbase_storage.fetch(body=body) is None


def test_kopf_workers_let_go_of_their_last_body_soon_and_reconciles_are_bounded(monkeypatch) -> None:
    import pytest

    from mlvisor.operator.kube.settings import reconcile_workers_from_env

    settings = kopf.OperatorSettings()
    apply_settings(settings, Options())
    assert settings.queueing.idle_timeout == Options.worker_idle_seconds < 5.0  # kopf's default is 5 s
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
