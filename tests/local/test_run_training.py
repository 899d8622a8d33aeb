"""End to end: TrainingJobs run by `mlvisor run` as real processes, supervised for real.

Crashes are real process deaths: ``--wrap worker=...`` puts tests/e2e/data/crash_first.py in
front of the worker's own command (as a user would put ``nice`` there); it SIGKILLs itself or
exits non-zero on its first N invocations and then execs the real trainer.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

FAST_JOB = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata:
  name: {name}
spec:
  dataset: {{builtin: iris}}
  estimator:
    class: sklearn.tree.DecisionTreeClassifier
    params: {{random_state: 0}}
  supervision:
    maxRestarts: {max_restarts}
    periodSeconds: 60
    backoff: {{initialSeconds: 0.1, factor: 2, maxSeconds: 0.5}}
"""


def write_yaml(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _job(status: dict, name: str) -> dict:
    return status[f"TrainingJob/default/{name}"]


def test_worker_that_crashes_twice_then_succeeds_ends_succeeded_with_two_restarts(mlvisor_run, crash_wrapper, tmp_path: Path) -> None:
    spec = write_yaml(tmp_path / "flaky.yaml", FAST_JOB.format(name="flaky", max_restarts=3))
    state = tmp_path / "invocations"
    run = mlvisor_run(spec, args=["--no-table", "--wrap", "worker=" + crash_wrapper(state, times=2)])

    assert run.wait_exit() == 0, run.explain()
    job = _job(run.status(), "flaky")
    assert job["phase"] == "Succeeded"
    assert job["supervision"]["totalRestarts"] == 2
    assert job["supervision"]["restartsInWindow"] == 2
    assert job["workers"][0]["attempt"] == 3
    assert job["supervision"]["lastFailure"]["exitCode"] == 137  # SIGKILL, as a runtime reports it
    assert job["model"]["metrics"]["accuracy"] > 0.8
    assert len(state.read_text().splitlines()) == 3
    run.assert_no_orphans()


def test_worker_that_always_crashes_makes_exactly_three_attempts_with_max_restarts_2(mlvisor_run, crash_wrapper, tmp_path: Path) -> None:
    spec = write_yaml(tmp_path / "doomed.yaml", FAST_JOB.format(name="doomed", max_restarts=2))
    state = tmp_path / "invocations"
    run = mlvisor_run(spec, args=["--no-table", "--wrap", "worker=" + crash_wrapper(state, times=-1, exit_code=1)])

    assert run.wait_exit() == 1, run.explain()
    job = _job(run.status(), "doomed")
    assert job["phase"] == "Failed"
    failed = next(c for c in job["conditions"] if c["type"] == "Failed")
    assert failed["status"] == "True" and failed["reason"] == "RestartIntensityExceeded"
    assert len(state.read_text().splitlines()) == 3  # attempts 1, 2, 3: two restarts, then escalation
    assert job["workers"][0]["attempt"] == 3
    assert "TrainingJob default/doomed: Failed" in run.log()
    run.assert_no_orphans()


def test_invalid_file_is_refused_with_the_validate_messages_and_nothing_starts(mlvisor_run, tmp_path: Path) -> None:
    bad = write_yaml(tmp_path / "bad.yaml", textwrap.dedent("""\
        apiVersion: mlvisor.dev/v1alpha1
        kind: TrainingJob
        metadata: {name: bad}
        spec:
          dataset: {builtin: iris}
          estimator: {class: sklearn.ensemble.RandomForestClassifier}
          testSize: 2
          worker: 1
        """))
    run = mlvisor_run(bad, args=["--no-table"])
    assert run.wait_exit() == 2
    out = run.log()
    assert "TrainingJob bad: spec.testSize: Input should be less than 1 (got 2)" in out
    assert "TrainingJob bad: spec.worker: unknown field" in out
    assert run.pids() == []


def test_search_over_two_workers_picks_the_same_best_params_as_one_process(mlvisor_run, samples: Path, tmp_path: Path) -> None:
    sample = (samples / "search.yaml").read_text()
    assert "workers: 2" in sample
    two = write_yaml(tmp_path / "search.yaml", sample)
    one = write_yaml(tmp_path / "search-one.yaml",
                     sample.replace("name: iris-search", "name: iris-search-one").replace("workers: 2", "workers: 1"))

    run = mlvisor_run(two, one, args=["--no-table"])
    assert run.wait_exit() == 0, run.explain()
    status = run.status()
    sharded, single = _job(status, "iris-search"), _job(status, "iris-search-one")
    assert sharded["phase"] == single["phase"] == "Succeeded"
    assert len(sharded["workers"]) == 2 and sharded["select"]["phase"] == "Succeeded"
    assert sharded["model"]["bestParams"] == single["model"]["bestParams"]
    assert sharded["model"]["metrics"] == single["model"]["metrics"]
    run.assert_no_orphans()


def test_ctrl_c_while_workers_run_stops_them_all(mlvisor_run, samples: Path, tmp_path: Path) -> None:
    spec = write_yaml(tmp_path / "search.yaml", (samples / "search.yaml").read_text())
    run = mlvisor_run(spec)
    run.wait_for("both workers running",
                 lambda s: sum(p["running"] for p in run.pids()) == 2 and s)
    assert run.interrupt() == 130
    job = _job(run.status(), "iris-search")
    assert job["phase"] != "Succeeded"
    run.assert_no_orphans()


def test_file_edits_are_applied_like_kubectl_apply_and_immutable_fields_are_refused(
    mlvisor_run, iris_artifact: Path, tmp_path: Path
) -> None:
    # A ModelServer keeps the run alive after the job finished.
    server = textwrap.dedent(f"""\
        ---
        apiVersion: mlvisor.dev/v1alpha1
        kind: ModelServer
        metadata: {{name: keepalive}}
        spec:
          model: {{uri: "file://{iris_artifact}/"}}
        """)
    job = FAST_JOB.format(name="edited", max_restarts=3)
    spec = write_yaml(tmp_path / "edited.yaml", job + server)
    run = mlvisor_run(spec, args=["--no-table"])
    done = run.wait_for("job Succeeded", lambda s: _job(s, "edited")["phase"] == "Succeeded" and _job(s, "edited"))
    assert done["observedGeneration"] == 1

    spec.write_text(job.replace("DecisionTreeClassifier", "ExtraTreeClassifier") + server)
    run.wait_for("the refusal", lambda s: "spec.estimator is immutable" in run.log())
    assert _job(run.status(), "edited")["model"]["version"] == done["model"]["version"]

    spec.write_text(job.replace("maxRestarts: 3", "maxRestarts: 4") + server)
    after = run.wait_for("generation 2 observed",
                         lambda s: _job(s, "edited")["observedGeneration"] == 2 and _job(s, "edited"))
    assert after["phase"] == "Succeeded" and after["model"]["version"] == done["model"]["version"]
    assert run.interrupt() == 130
    run.assert_no_orphans()


def test_a_folder_with_class_weight_by_label_and_a_foreign_kind_runs(mlvisor_run, tmp_path: Path) -> None:
    """class_weight written with integer keys reaches the worker as JSON (string keys) and still
    weighs the classes; the folder is read like `mlvisor validate` reads it, the HPA skipped."""
    from mlvisor.trainer.artifact import load_artifact

    folder = tmp_path / "resources"
    folder.mkdir()
    write_yaml(folder / "job.yaml", textwrap.dedent("""\
        apiVersion: mlvisor.dev/v1alpha1
        kind: TrainingJob
        metadata: {name: weighted}
        spec:
          dataset: {builtin: iris}
          estimator:
            class: sklearn.linear_model.LogisticRegression
            params: {class_weight: {0: 1, 1: 2, 2: 1}, max_iter: 500}
        """))
    write_yaml(folder / "hpa.yaml", textwrap.dedent("""\
        apiVersion: autoscaling/v2
        kind: HorizontalPodAutoscaler
        metadata: {name: weighted}
        spec: {scaleTargetRef: {apiVersion: mlvisor.dev/v1alpha1, kind: ModelServer, name: weighted}, maxReplicas: 2}
        """))
    run = mlvisor_run(folder, args=["--no-table", "--exit-after-ready"])
    assert run.wait_exit() == 0, run.explain()
    assert "hpa.yaml: HorizontalPodAutoscaler weighted (autoscaling/v2) is not an mlvisor kind: skipped" in run.log()
    job = _job(run.status(), "weighted")
    assert job["phase"] == "Succeeded" and job["model"]["metrics"]["accuracy"] > 0.8
    artifact = run.data_dir / "volumes" / "mlvisor-models" / "default" / "weighted" / job["model"]["version"]
    assert load_artifact(artifact).model.class_weight == {0: 1, 1: 2, 2: 1}
    run.assert_no_orphans()
