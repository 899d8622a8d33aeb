"""The trainer keeps its side of the termination-message contract (mlvisor.api.exits).

The supervisor tells the process's own words from a log tail the kubelet fell back to by the
kind a failed process's message starts with; a trainer message without one would be quoted as
"its last log line", never as what the trainer said.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from mlvisor.api.exits import EXIT_CRASH, EXIT_INVALID_SPEC, TerminationKind, TerminationMessage, written_by_process
from mlvisor.trainer.entry import main

IRIS = {"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}}


def _run(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, spec: dict[str, Any]) -> tuple[int, str]:
    term = tmp_path / "termination-log"
    term.write_text("")  # the kubelet creates it
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    path = tmp_path / "job.yaml"
    path.write_text(yaml.safe_dump(spec))
    return main(["--spec", str(path), "--output", str(tmp_path / "out")]), term.read_text()


def test_an_invalid_spec_is_written_as_the_invalid_spec_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    code, message = _run(tmp_path, monkeypatch, {**IRIS, "estimator": {"class": "sklearn.cluster.KMeans"}})
    assert code == EXIT_INVALID_SPEC
    said = TerminationMessage.parse(message)
    assert said is not None and said.kind is TerminationKind.INVALID_SPEC and "KMeans" in said.reason
    assert written_by_process(message, code)


def test_a_crash_is_written_as_the_crash_kind(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import mlvisor.trainer.job as job

    def boom(*a: Any, **k: Any) -> None:
        raise OSError("disk on fire")

    monkeypatch.setattr(job, "write_artifact", boom)
    code, message = _run(tmp_path, monkeypatch, IRIS)
    assert code == EXIT_CRASH
    assert TerminationMessage.parse(message) == TerminationMessage(TerminationKind.CRASH, "OSError: disk on fire")
    assert written_by_process(message, code)
