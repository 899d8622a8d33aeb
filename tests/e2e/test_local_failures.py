"""End to end: every failure says why, where the user looks (the terminal, the status), fast.

Resource files written from the README, run by `mlvisor run` as a new user would:
- a classifier on a continuous target: the job fails at once and the trainer's own words are
  in the event line, the summary and status.supervision.lastFailure, with the log's path;
- a ModelServer whose TrainingJob does not exist: ``--exit-after-ready`` exits 1 with that
  reason, and the status says it in the Ready condition;
- a model that cannot be loaded with nothing to roll back to: Failed with the server's reason
  (the rollback within a minute under the default supervision is in test_local_serving.py);
- a trainer SIGKILLed at its write step: a counted crash, and no partial version is ever listed
  or loaded.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"

CLASSIFIER_ON_DIABETES = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata: {name: sugar}
spec:
  dataset: {builtin: diabetes}
  estimator:
    class: sklearn.ensemble.RandomForestClassifier
    params: {n_estimators: 10}
"""


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_a_trainer_refusal_is_shown_with_its_own_words_and_log_path(mlvisor_run, tmp_path: Path) -> None:
    spec = tmp_path / "sugar.yaml"
    spec.write_text(CLASSIFIER_ON_DIABETES)
    run = mlvisor_run(spec, args=["--no-table"])
    assert run.wait_exit() == 1, run.explain()
    out = run.log()
    words = "the target looks continuous: 214 distinct values over 442 rows"
    log = run.data_dir / "logs" / "default" / "trainingjob-sugar" / "sugar-worker-0-1.log"
    event = next(line for line in out.splitlines() if "Warning FailurePolicy TrainingJob/default/sugar" in line)
    assert words in event and "choose a regressor such as sklearn.ensemble.RandomForestRegressor" in event, event
    assert event.endswith(f"(log: {log})"), event
    summary = next(line for line in out.splitlines() if line.startswith("TrainingJob default/sugar: Failed"))
    assert words in summary, summary
    assert f"log of sugar-worker-0-1: {log}" in out
    last = run.status()["TrainingJob/default/sugar"]["supervision"]["lastFailure"]
    assert last["exitCode"] == 2 and words in last["message"]
    assert words in log.read_text()
    shown = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "logs", "tj/sugar", "--data-dir",
                            str(run.data_dir)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0 and words in shown.stdout and str(log) in shown.stderr


def test_exit_after_ready_fails_with_the_reason_when_the_training_job_does_not_exist(mlvisor_run, tmp_path: Path) -> None:
    spec = tmp_path / "orphan.yaml"
    spec.write_text("apiVersion: mlvisor.dev/v1alpha1\nkind: ModelServer\nmetadata: {name: orphan}\n"
                    "spec:\n  model: {trainingJobRef: {name: nope}}\n")
    run = mlvisor_run(spec, args=["--no-table", "--exit-after-ready", "--timeout", "60"])
    assert run.wait_exit() == 1, run.explain()
    status = run.status()["ModelServer/default/orphan"]
    ready = _condition(status, "Ready")
    assert status["phase"] == "Pending" and ready["reason"] == "TrainingJobNotFound", status
    assert "there is no TrainingJob default/nope" in ready["message"]
    line = next(line for line in run.log().splitlines() if line.startswith("ModelServer default/orphan: Pending"))
    assert "there is no TrainingJob default/nope" in line
    assert "Warning TrainingJobNotFound ModelServer/default/orphan" in run.log()


SERVER = """\
apiVersion: mlvisor.dev/v1alpha1
kind: ModelServer
metadata: {{name: {name}}}
spec:
  model: {{uri: "file://{uri}/"}}
  modelName: iris
"""


def test_a_model_that_cannot_load_with_nothing_to_roll_back_to_fails_with_the_reason(
    mlvisor_run, broken_artifact: Path, tmp_path: Path
) -> None:
    spec = tmp_path / "server.yaml"
    spec.write_text(SERVER.format(name="bad", uri=broken_artifact))
    run = mlvisor_run(spec, args=["--no-table", "--exit-after-ready", "--timeout", "60"])
    assert run.wait_exit() == 1, run.explain()
    status = run.status()["ModelServer/default/bad"]
    failed = _condition(status, "Failed")
    assert status["phase"] == "Failed" and failed["reason"] == "ModelUnloadable", json.dumps(status)
    assert "corrupted or truncated" in failed["message"]
    line = next(line for line in run.log().splitlines() if line.startswith("ModelServer default/bad: Failed"))
    assert "corrupted or truncated" in line


KILLED_JOB = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata: {name: torn}
spec:
  dataset: {builtin: iris}
  estimator: {class: sklearn.tree.DecisionTreeClassifier, params: {random_state: 0}}
  supervision:
    backoff: {initialSeconds: 0.1, factor: 2, maxSeconds: 0.5}
"""


def test_a_trainer_killed_at_the_write_step_is_a_counted_crash_and_the_partial_version_is_never_listed(
    mlvisor_run, tmp_path: Path
) -> None:
    spec = tmp_path / "torn.yaml"
    spec.write_text(KILLED_JOB)
    wrap = f"worker={sys.executable} {DATA / 'kill_at_write.py'} --state {tmp_path / 'kills'} --"
    run = mlvisor_run(spec, args=["--no-table", "--wrap", wrap])
    assert run.wait_exit(120) == 0, run.explain()  # nothing left to do once the job succeeded
    job = run.status()["TrainingJob/default/torn"]
    assert job["phase"] == "Succeeded"
    assert job["supervision"]["lastFailure"]["exitCode"] == 137 and job["supervision"]["totalRestarts"] == 1
    assert [w["attempt"] for w in job["workers"]] == [2]
    root = run.data_dir / "volumes" / "mlvisor-models" / "default" / "torn"
    leftovers = list(root.glob(".*.tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.skops").is_file()  # attempt 1's complete-looking remains
    from mlvisor.trainer.artifact import list_versions, load_artifact

    # what a ModelServer is ever given: the one complete version, written by attempt 2
    assert list_versions(root) == [job["model"]["version"]]
    assert load_artifact(root / job["model"]["version"]).metadata.version == job["model"]["version"]
    run.assert_no_orphans()
