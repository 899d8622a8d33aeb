"""Trainer as real processes: the pod contract (env vars), a killed shard resuming, ``mlvisor train``."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from mlvisor.trainer.artifact import load_artifact, read_metadata
from mlvisor.trainer.search import CRASH_HOOK_ENV, expand_grid, read_results, shard_path, shard_trials

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "dataset": {"builtin": "iris"},
    "estimator": {"class": "sklearn.tree.DecisionTreeClassifier", "params": {"random_state": 0}},
    "search": {"grid": {"max_depth": [1, 2, 3], "min_samples_leaf": [1, 4]}, "cv": 3},
    "workers": 2,
}


def trainer(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    clean["MLVISOR_TERMINATION_MESSAGE_PATH"] = os.devnull + ".absent"  # never the pod's own
    return subprocess.run([sys.executable, "-m", "mlvisor.trainer", *args], env={**clean, **env},
                          capture_output=True, text=True, timeout=120)


def events(proc: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in proc.stderr.splitlines()]


def pod_env(out: Path, **extra: str) -> dict[str, str]:
    return {"MLVISOR_SPEC": json.dumps(SPEC), "MLVISOR_OUTPUT_DIR": str(out),
            "MLVISOR_MODEL_NAME": "iris-search", "MLVISOR_MODEL_VERSION": "v1",
            "MLVISOR_WORKERS": "2", **extra}


def test_pods_run_two_shards_in_parallel_then_select(tmp_path: Path) -> None:
    out = tmp_path / "models"
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    clean["MLVISOR_TERMINATION_MESSAGE_PATH"] = os.devnull + ".absent"
    shards = [subprocess.Popen([sys.executable, "-m", "mlvisor.trainer"],
                               env={**clean, **pod_env(out, MLVISOR_WORKER_INDEX=str(i))},
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
              for i in range(2)]
    for p in shards:
        stdout, stderr = p.communicate(timeout=120)
        assert p.returncode == 0, stderr
        assert stdout == ""  # a shard writes no artifact
        assert all(json.loads(line)["worker"] in (0, 1) for line in stderr.splitlines())
    select = trainer(pod_env(out, MLVISOR_STEP="select"))
    assert select.returncode == 0, select.stderr
    assert select.stdout.strip() == str(out / "v1")
    whole = trainer({**pod_env(tmp_path / "whole"), "MLVISOR_WORKERS": ""})  # one process, all shards
    assert whole.returncode == 0, whole.stderr
    sharded, single = read_metadata(out / "v1"), read_metadata(tmp_path / "whole" / "v1")
    assert sharded.name == "iris-search"
    assert sharded.best_params == single.best_params
    assert sharded.metrics == single.metrics and sharded.metrics["accuracy"] >= 0.9
    assert load_artifact(out / "v1").model.get_params()["max_depth"] == sharded.best_params["max_depth"]  # type: ignore[index]


def test_a_killed_shard_resumes_without_redoing_finished_trials(tmp_path: Path) -> None:
    out = tmp_path / "models"
    # test-only hook: the process hard-exits (137, as if SIGKILLed) after 2 trials
    crashed = trainer(pod_env(out, MLVISOR_WORKER_INDEX="0", **{CRASH_HOOK_ENV: "2"}))
    assert crashed.returncode == 137
    path = shard_path(out, "v1", 0, 2)
    mine = [t.index for t in shard_trials(expand_grid(SPEC["search"]["grid"]), 0, 2, 0)]  # randomState 0
    assert len(mine) == 3 and sorted(read_results(path)) == mine[:2]
    assert not path.with_suffix(".done").exists()

    resumed = trainer(pod_env(out, MLVISOR_WORKER_INDEX="0"))
    assert resumed.returncode == 0, resumed.stderr
    log = events(resumed)
    assert [e["trial"] for e in log if e["event"] == "trial"] == mine[2:]  # only the unfinished trial
    assert next(e for e in log if e["event"] == "shard")["resumed"] == 2
    assert path.with_suffix(".done").exists()

    clean = trainer(pod_env(tmp_path / "clean", MLVISOR_WORKER_INDEX="0"))
    assert clean.returncode == 0, clean.stderr
    assert read_results(path) == read_results(shard_path(tmp_path / "clean", "v1", 0, 2))


def _terminated_after(env: dict[str, str], event: str, termination_log: Path) -> tuple[int, list[dict[str, Any]]]:
    """Start a trainer, SIGTERM it once it logged ``event``; returns its exit code and its log events."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    termination_log.write_text("")  # the kubelet creates the file; the trainer only writes it
    proc = subprocess.Popen([sys.executable, "-m", "mlvisor.trainer"],
                            env={**clean, **env, "MLVISOR_TERMINATION_MESSAGE_PATH": str(termination_log)},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines = []
    assert proc.stderr is not None
    for line in proc.stderr:
        lines.append(json.loads(line))
        if lines[-1]["event"] == event:
            proc.send_signal(signal.SIGTERM)
            break
    lines += [json.loads(line) for line in proc.stderr]
    return proc.wait(timeout=60), lines


SLOW_FOREST = {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 4000, "random_state": 0}}


def test_sigterm_stops_training_at_once_with_143_and_leaves_no_artifact(tmp_path: Path) -> None:
    # In a pod the trainer is PID 1: without its own handler SIGTERM would not reach it at all.
    out = tmp_path / "models"
    spec = {"dataset": {"builtin": "iris"}, "estimator": SLOW_FOREST}
    code, log = _terminated_after({"MLVISOR_SPEC": json.dumps(spec), "MLVISOR_OUTPUT_DIR": str(out),
                                   "MLVISOR_MODEL_VERSION": "v1"}, "start", tmp_path / "termination-log")
    assert code == 143, log[-3:]
    assert log[-1]["event"] == "terminated" and log[-1]["exit_code"] == 143
    assert (tmp_path / "termination-log").read_text().startswith("terminated: stopped by SIGTERM")
    assert not out.exists() or not any(out.iterdir()), "a terminated run left files in the output"


def test_sigterm_during_a_search_shard_keeps_only_whole_results(tmp_path: Path) -> None:
    out = tmp_path / "models"
    spec = {"dataset": {"builtin": "iris"},
            "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0}},
            "search": {"grid": {"n_estimators": list(range(100, 140))}, "cv": 3}, "workers": 1}
    env = {"MLVISOR_SPEC": json.dumps(spec), "MLVISOR_OUTPUT_DIR": str(out), "MLVISOR_MODEL_VERSION": "v1",
           "MLVISOR_WORKER_INDEX": "0", "MLVISOR_WORKERS": "1"}
    code, log = _terminated_after(env, "trial", tmp_path / "termination-log")
    assert code == 143 and log[-1]["event"] == "terminated", log[-3:]
    path = shard_path(out, "v1", 0, 1)
    text = path.read_text()
    assert text.endswith("\n") and all(json.loads(line) for line in text.splitlines())
    finished = [e["trial"] for e in log if e["event"] == "trial"]
    assert sorted(read_results(path)) == sorted(finished) and len(finished) < 40
    assert not path.with_suffix(".done").exists()


def test_invalid_spec_process_exits_2(tmp_path: Path) -> None:
    bad = {**SPEC, "estimator": {"class": "sklearn.cluster.KMeans"}}
    proc = trainer({"MLVISOR_SPEC": json.dumps(bad), "MLVISOR_OUTPUT_DIR": str(tmp_path)})
    assert proc.returncode == 2
    last = events(proc)[-1]
    assert last["event"] == "invalid_spec" and "'sklearn.cluster.KMeans' is not allowed" in last["msg"]


def test_mlvisor_train_runs_the_whole_job_and_prints_the_artifact(tmp_path: Path) -> None:
    import yaml

    job = tmp_path / "job.yaml"
    job.write_text(yaml.safe_dump({"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob",
                                   "metadata": {"name": "iris-search"}, "spec": SPEC}))
    proc = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "train", str(job),
                           "--output", str(tmp_path / "out"), "--version", "h1"],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == str(tmp_path / "out" / "h1")
    meta = read_metadata(tmp_path / "out" / "h1")
    assert meta.name == "iris-search" and meta.search is not None and meta.search["trials"] == 6
    assert [e["event"] for e in events(proc)][-1] == "artifact_written"
