"""End to end: every failure says why, where the user looks (the terminal, the status), fast.

Resource files written from the README, run by `mlvisor run` as a new user would:
- a classifier on a continuous target: the job fails at once and the trainer's own words are
  in the event line, the summary and status.supervision.lastFailure, with the log's path;
- a ModelServer whose TrainingJob does not exist: ``--exit-after-ready`` exits 1 with that
  reason, and the status says it in the Ready condition;
- a model that cannot be loaded with nothing to roll back to: Failed with the server's reason
  (the rollback within a minute under the default supervision is in test_local_serving.py);
- a trainer SIGKILLed at its write step: a counted crash said to be a SIGKILL (never quoting its
  last log line as if it were a reason), and no partial version is ever listed or loaded;
- a server that never finds its model within spec.startupTimeoutSeconds: each kill says so with
  what the server was waiting for, once, and `mlvisor logs` shows the failed run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

DATA = Path(__file__).parent / "data"

#: Refused by scikit-learn only when fitting (each parameter is valid alone), so `mlvisor run`,
#: like validate, lets it start and the trainer refuses it: exit 2 with its own words.
REFUSED_AT_FIT_TIME = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata: {name: sugar}
spec:
  dataset: {builtin: iris}
  estimator:
    class: sklearn.svm.LinearSVC
    params: {penalty: l1, loss: hinge}
"""


def _condition(status: dict, type_: str) -> dict:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def test_a_trainer_refusal_is_shown_with_its_own_words_and_log_path(mlvisor_run, tmp_path: Path) -> None:
    spec = tmp_path / "sugar.yaml"
    spec.write_text(REFUSED_AT_FIT_TIME)
    run = mlvisor_run(spec, args=["--no-table"])
    assert run.wait_exit() == 1, run.explain()
    out = run.log()
    words = "spec.estimator: sklearn.svm.LinearSVC refused the parameters or data at fit time"
    log = run.data_dir / "logs" / "default" / "trainingjob-sugar" / "sugar-worker-0-1.log"
    event = next(line for line in out.splitlines() if "Warning FailurePolicy TrainingJob/default/sugar" in line)
    assert words in event and "penalty='l1' and loss='hinge' is not supported" in event, event
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
    # The trainer logged its metrics, then was killed: its log tail is not what it said.
    log = run.data_dir / "logs" / "default" / "trainingjob-torn" / "torn-worker-0-1.log"
    last_logged = json.loads(log.read_text().strip().splitlines()[-1])
    assert last_logged["event"] == "metrics"
    last_line = f'"{last_logged["msg"]}"'
    assert job["supervision"]["lastFailure"]["message"] == (
        "killed by signal 9 (SIGKILL, exit 137): out of memory or killed from outside; "
        f"it left no termination message; its last log line: {last_line}"
    )
    event = next(line for line in run.log().splitlines() if "Warning Restarting TrainingJob/default/torn" in line)
    assert event.endswith(
        "TrainingJob/default/torn: worker pod torn-worker-0-1 was killed by signal 9 (SIGKILL, exit 137): "
        "out of memory or killed from outside; restarting it in 0.1s (1 restarts within 60s, maxRestarts is 3). "
        f"It left no termination message; its last log line: {last_line} (log: {log})"
    ), event
    assert [w["attempt"] for w in job["workers"]] == [2]
    root = run.data_dir / "volumes" / "mlvisor-models" / "default" / "torn"
    leftovers = list(root.glob(".*.tmp-*"))
    assert len(leftovers) == 1 and (leftovers[0] / "model.skops").is_file()  # attempt 1's complete-looking remains
    from mlvisor.trainer.artifact import list_versions, load_artifact

    # what a ModelServer is ever given: the one complete version, written by attempt 2
    assert list_versions(root) == [job["model"]["version"]]
    assert load_artifact(root / job["model"]["version"]).metadata.version == job["model"]["version"]
    run.assert_no_orphans()


NEVER_READY = """\
apiVersion: mlvisor.dev/v1alpha1
kind: ModelServer
metadata: {{name: ghost}}
spec:
  model: {{uri: "file://{uri}/"}}
  modelName: iris
  startupTimeoutSeconds: 10
  supervision: {{maxRestarts: 2, periodSeconds: 600}}
"""


def test_a_server_that_never_finds_its_model_says_startup_timeout_and_what_it_waited_for(
    mlvisor_run, tmp_path: Path
) -> None:
    missing = tmp_path / "nowhere" / "v1"
    spec = tmp_path / "ghost.yaml"
    spec.write_text(NEVER_READY.format(uri=missing))
    run = mlvisor_run(spec, args=["--no-table", "--exit-after-ready", "--timeout", "180"])
    assert run.wait_exit(240) == 1, run.explain()
    out = run.log()
    words = ("was not ready within spec.startupTimeoutSeconds (10 s) and was restarted: "
             f"it was waiting for the model: artifact directory {missing} does not exist")
    restarts = [line for line in out.splitlines() if "Warning ServerRestarted ModelServer/default/ghost" in line]
    assert len(restarts) == 2, out
    pod = restarts[0].split("server pod ", 1)[1].split(" ", 1)[0]
    log = run.data_dir / "logs" / "default" / "modelserver-ghost" / f"{pod}.log"
    assert restarts[0].endswith(f"server pod {pod} {words}; restart #1, 1 restarts within 600s, maxRestarts is 2 (log: {log})"), restarts[0]
    assert restarts[1].endswith(f"server pod {pod} was restarted again for the same reason (restart #2); "
                                f"2 restarts within 600s, maxRestarts is 2 (log: {log})"), restarts[1]
    failure = (f"model version v1 failed: server pod {pod} {words}; restart intensity exceeded: 3 restarts within 600s, "
               "maxRestarts is 2; there is no earlier Ready version to roll back to")
    summary = next(line for line in out.splitlines() if line.startswith("ModelServer default/ghost: Failed"))
    assert failure in summary, summary
    assert "Finished server process" not in out and "It said" not in out
    status = run.status()["ModelServer/default/ghost"]
    assert _condition(status, "Failed")["message"].startswith(failure)
    assert status["supervision"]["lastFailure"]["message"] == (
        f"not ready: waiting for the model: artifact directory {missing} does not exist"
    )
    assert status["supervision"]["lastFailure"]["exitCode"] == 143
    shown = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "logs", "ms/ghost", "--data-dir",
                            str(run.data_dir)], capture_output=True, text=True, timeout=60)
    assert shown.returncode == 0, shown.stderr
    assert f"waiting for the model: artifact directory {missing} does not exist" in shown.stdout
    assert "stopped before the model was ready" in shown.stdout
    run.assert_no_orphans()
