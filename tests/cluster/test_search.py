"""A Bayesian search on a real cluster: its progress in `kubectl get`, exactly nTrials, every trial kept.

The sample manifests/samples/search-bayesian.yaml as a user applies it, with more trials: two
worker pods share one Optuna study in a journal file on the mlvisor-models claim, the operator
polls their ``GET /progress`` on the pod IPs over the pod network (no API call, no RBAC: the
tier's RBAC audit still holds), and ``kubectl wait`` still works on the conditions.

Sizing: the operator asks a running worker for its progress every 5 s (``progress_poll_seconds``),
and the sample's 12 trials take about 4 s on an idle machine once both workers run, so a poll
while they run would be luck. 60 trials take about 17 s there (three polls or more); on two busy
shared cores everything is slower, the poll period is not, so the window only grows. The whole
job (apply to Succeeded, with pod starts and the select step) took about 35 s with 48 trials on
a loaded 2-core machine; its deadline is 210 s, and if the job ends before the column was seen
the test says so at once instead of waiting for the deadline.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from cluster.conftest import NAMESPACE, Cluster
from emulator.world import World, eventually
from helpers.paths import REPO

pytestmark = [pytest.mark.cluster]

TJ = "TrainingJob"
N_TRIALS = 60
JOB_DEADLINE = 210.0  # apply to Succeeded; with the 60 s for garbage collection, inside pytest's 300 s


def column(header: str, row: str, name: str) -> str:
    """A column of kubectl's table by the header's position (an empty cell is blank, not a token)."""
    start = header.index(name)
    end = min((header.index(h, start + 1) for h in header[start:].split()[1:2]), default=len(row))
    return row[start:end].strip()


def _models_folder(cluster: Cluster) -> Path:
    claim = json.loads(cluster.kubectl("-n", NAMESPACE, "get", "pvc", "mlvisor-models", "-o", "json").stdout)
    pv = json.loads(cluster.kubectl("get", "pv", claim["spec"]["volumeName"], "-o", "json").stdout)
    return Path(pv["spec"]["hostPath"]["path"])


def test_a_bayesian_search_shows_its_progress_in_kubectl_get_and_runs_exactly_n_trials(
        cluster: Cluster, kube: World, unique: str) -> None:
    doc = yaml.safe_load((REPO / "manifests" / "samples" / "search-bayesian.yaml").read_text())
    assert doc["spec"]["search"]["method"] == "Bayesian" and doc["spec"]["workers"] == 2
    doc["metadata"]["name"] = unique
    doc["spec"]["search"]["nTrials"] = N_TRIALS
    deadline = time.monotonic() + JOB_DEADLINE
    cluster.kubectl("-n", NAMESPACE, "apply", "-f", "-", input=yaml.safe_dump(doc))

    def progress_column() -> str | None:
        """PROGRESS of `kubectl get tj` while both workers run (so only their GET /progress can have said it)."""
        header, row = cluster.kubectl("-n", NAMESPACE, "get", "tj", unique).stdout.splitlines()[:2]
        value = column(header, row, "PROGRESS")
        status = kube.status(TJ, unique)
        workers = status.get("workers") or []
        running = [w for w in workers if w.get("phase") == "Running"]
        done = re.fullmatch(rf"(\d+)/{N_TRIALS}", value)
        if done and 0 < int(done.group(1)) < N_TRIALS and len(running) == 2:
            return value
        if status.get("phase") in ("Succeeded", "Failed") or any(w.get("phase") == "Succeeded" for w in workers):
            pytest.fail(f"the workers finished before kubectl get showed PROGRESS k/{N_TRIALS} while both ran "
                        f"(last PROGRESS {value!r}, workers {[(w.get('phase'), w.get('trialsDone')) for w in workers]})")
        return None

    seen = eventually(progress_column, deadline - time.monotonic(),
                      what=f"kubectl get tj showing PROGRESS k/{N_TRIALS} while both workers run")
    assert re.fullmatch(rf"\d+/{N_TRIALS}", seen)

    left = max(deadline - time.monotonic(), 1.0)
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Succeeded", f"--timeout={left:.0f}s", f"tj/{unique}",
                    timeout=left + 10)
    status = kube.status(TJ, unique)
    progress = status["progress"]
    assert (progress["summary"], progress["trialsDone"], progress["etaSeconds"]) == (f"{N_TRIALS}/{N_TRIALS}", N_TRIALS, 0)
    assert progress["bestParams"] == status["model"]["bestParams"] and progress["scoring"] == "accuracy"
    top = progress["topTrials"]
    assert 1 <= len(top) <= 5 and [t["score"] for t in top] == sorted((t["score"] for t in top), reverse=True)
    assert top[0]["trial"] == progress["bestTrial"] and progress["bestScore"] > 0.9
    assert sum(w["trialsDone"] for w in status["workers"]) == N_TRIALS

    # the kubectl-friendly view of the best few
    as_json = cluster.kubectl("-n", NAMESPACE, "get", "tj", unique, "-o", "json").stdout
    listed = subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", "trials", "-"], input=as_json,
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.splitlines()[2].startswith(f"#{progress['bestTrial']} ")
    best = cluster.kubectl("-n", NAMESPACE, "get", "tj", unique, "-o", "jsonpath={.status.progress.bestScore}").stdout
    assert float(best) == progress["bestScore"]

    if cluster.built:  # every trial, beside the model on the claim's folder
        version = status["model"]["version"]
        records = [json.loads(line) for line in
                   (_models_folder(cluster) / NAMESPACE / unique / version / "trials.jsonl").read_text().splitlines()]
        counted = [r for r in records if r["state"] in ("complete", "pruned", "failed")]
        assert len(counted) == N_TRIALS and len({r["trial"] for r in records}) == len(records)
        assert {r["worker"] for r in counted} <= {0, 1}
        assert max(r["score"] for r in counted if r["state"] == "complete") == progress["bestScore"]
    kube.delete(TJ, unique)
    eventually(lambda: not kube.live_pods(unique), 60, what="worker pods garbage-collected")
