"""Searches where a user watches them: `mlvisor run`'s status and table, `mlvisor train`, `mlvisor trials`."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow


#: The sample's 12 trials can all end between two progress polls on an idle machine, so seeing a
#: live report would be luck; 60 trials keep both workers busy for several polls even there.
N_TRIALS = 60
#: One deadline from start to the job's end, generous for a loaded 2-core machine.
JOB_DEADLINE = 240.0


def _job(status: dict[str, Any], name: str) -> dict[str, Any]:
    return status[f"TrainingJob/default/{name}"]


def test_mlvisor_run_shows_a_bayesian_search_progress_while_it_runs(mlvisor_run, samples: Path, tmp_path: Path) -> None:
    spec = tmp_path / "search-bayesian.yaml"
    text = (samples / "search-bayesian.yaml").read_text()
    assert "nTrials: 12\n" in text
    spec.write_text(text.replace("nTrials: 12\n", f"nTrials: {N_TRIALS}\n"))
    deadline = time.monotonic() + JOB_DEADLINE
    run = mlvisor_run(spec)

    def live(status: dict[str, Any]) -> Any:
        # both workers still running: only GET /progress can have told the runtime anything yet
        job = _job(status, "digits-bayesian")
        progress = job.get("progress") or {}
        running = [w for w in job["workers"] if w["phase"] == "Running"]
        if len(running) == 2 and 0 < progress.get("trialsDone", 0) < N_TRIALS:
            return progress
        if job.get("phase") in ("Succeeded", "Failed") or any(w["phase"] == "Succeeded" for w in job["workers"]):
            pytest.fail(f"the workers finished before mlvisor run showed a live report (last progress "
                        f"{progress.get('summary')!r}, workers {[(w['phase'], w.get('trialsDone')) for w in job['workers']]})")
        return None

    seen = run.wait_for("a report from the running workers", live, timeout=deadline - time.monotonic())
    assert seen["summary"] == f"{seen['trialsDone']}/{N_TRIALS}" and seen["trialsTotal"] == N_TRIALS
    assert seen["topTrials"] and seen["bestScore"] == seen["topTrials"][0]["score"]
    assert seen["bestParams"] == seen["topTrials"][0]["params"] and seen["scoring"] == "accuracy"

    assert run.wait_exit(timeout=max(deadline - time.monotonic(), 1.0)) == 0, run.explain()
    job = _job(run.status(), "digits-bayesian")
    progress = job["progress"]
    assert job["phase"] == "Succeeded"
    assert (progress["summary"], progress["etaSeconds"]) == (f"{N_TRIALS}/{N_TRIALS}", 0)
    assert progress["bestParams"] == job["model"]["bestParams"]  # the select step refitted the best trial
    assert sum(w["trialsDone"] for w in job["workers"]) == N_TRIALS
    table = run.log()
    assert re.search(r"RESOURCE\s+PHASE\s+WORKERS/READY\s+PROGRESS", table)
    assert re.search(rf"tj/digits-bayesian\s+Succeeded\s+2/2\s+{N_TRIALS}/{N_TRIALS}", table)
    assert f"search: {N_TRIALS}/{N_TRIALS} trials, best accuracy" in table

    listed = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", "tj/digits-bayesian",
                             "--data-dir", str(run.data_dir), "--json"], capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    records = [json.loads(line) for line in listed.stdout.splitlines()]
    assert sum(r["state"] in ("complete", "pruned", "failed") for r in records) == N_TRIALS
    assert records[0]["params"] == job["model"]["bestParams"] and records[0]["score"] == progress["bestScore"]
    table = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", "tj/digits-bayesian",
                            "--data-dir", str(run.data_dir), "--top", "3"], capture_output=True, text=True, timeout=60)
    lines = table.stdout.splitlines()
    assert lines[1].split() == ["TRIAL", "STATE", "SCORE", "FOLDS", "SECONDS", "WORKER", "RETRIED", "PARAMS"]
    assert len(lines) == 5 and lines[2].startswith(f"#{progress['bestTrial']} ")
    run.assert_no_orphans()


def test_mlvisor_train_says_trial_n_of_total_on_stderr(samples: Path, tmp_path: Path) -> None:
    done = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "train", str(samples / "search-random.yaml"),
                           "--output", str(tmp_path), "--log-format", "text"],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    progress = [line for line in done.stderr.splitlines() if re.match(r"trial \d+/6: #\d+ ", line)]
    assert [line.split(":")[0] for line in progress] == [f"trial {n}/6" for n in range(1, 7)]
    assert all("; best " in line for line in progress)
    assert not any(line.startswith("{") for line in done.stderr.splitlines())  # text, not JSON lines
    artifact = Path(done.stdout.strip())
    listed = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", str(artifact)],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 8  # where, header, 6 trials


def test_mlvisor_trials_reads_a_training_job_from_kubectl(tmp_path: Path) -> None:
    job = {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": "s"},
           "status": {"progress": {"trialsDone": 7, "trialsTotal": 12, "topTrials": [
               {"trial": 3, "score": 0.97, "params": {"C": 1.5}, "worker": 1},
               {"trial": 5, "score": 0.95, "params": {"C": 10}, "worker": 0}]}}}
    out = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", "-"], input=json.dumps(job),
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert "the best 2 of 7/12 trials" in lines[0]
    assert lines[2].split()[:3] == ["#3", "complete", "0.9700"] and lines[2].endswith("C=1.5")
    empty = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", "tj/nope", "--data-dir", str(tmp_path)],
                           capture_output=True, text=True, timeout=60)
    assert empty.returncode == 1 and "no artifacts of TrainingJob default/nope" in empty.stderr
