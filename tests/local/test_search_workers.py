"""A Bayesian search's worker processes sharing one study, one of them SIGKILLed mid-trial."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from mlvisor import api
from mlvisor.trainer.artifact import read_metadata

pytestmark = pytest.mark.slow

SPEC: dict[str, Any] = {
    "dataset": {"builtin": "digits"},
    "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0}},
    "search": {
        "method": "Bayesian", "nTrials": 10, "cv": 4,
        "distributions": {"n_estimators": {"randint": {"low": 60, "high": 140}},
                          "max_features": {"uniform": {"low": 0.05, "high": 0.5}},
                          "criterion": {"choice": ["gini", "entropy"]}},
    },
    "workers": 2,
}


def env_of(out: Path, index: int | None, **extra: str) -> dict[str, str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    clean.update(MLVISOR_SPEC=json.dumps(SPEC), MLVISOR_OUTPUT_DIR=str(out), MLVISOR_MODEL_NAME="digits",
                 MLVISOR_MODEL_VERSION="v1", MLVISOR_WORKERS="2",
                 MLVISOR_TERMINATION_MESSAGE_PATH=os.devnull + ".absent", **extra)
    if index is not None:
        clean["MLVISOR_WORKER_INDEX"] = str(index)
    return clean


def start(out: Path, index: int, log: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "mlvisor.trainer"], env=env_of(out, index),
                            stdout=subprocess.DEVNULL, stderr=open(log, "ab"))


def events(log: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in log.read_text().splitlines() if line.startswith("{")]


def _params(t: Any, search: api.Search) -> dict[str, Any]:
    from mlvisor.trainer.bayes import _params as decode

    return decode(t, search)


def study(out: Path) -> Any:
    from mlvisor.trainer.bayes import open_study

    return open_study(out, "v1", api.Search.model_validate(SPEC["search"]), create=False)


def test_a_worker_sigkilled_mid_trial_loses_and_repeats_no_finished_trial(tmp_path: Path) -> None:
    from optuna.trial import TrialState

    out = tmp_path / "models"
    logs = [tmp_path / "worker-0.log", tmp_path / "worker-1.log"]
    workers = [start(out, i, logs[i]) for i in range(2)]
    try:
        # wait until worker 1 has finished a trial and is one fold into the next, then kill it
        deadline = time.monotonic() + 180
        while True:
            assert time.monotonic() < deadline, logs[1].read_text()[-2000:]
            assert workers[1].poll() is None, "worker 1 finished before it could be killed"
            evs = events(logs[1]) if logs[1].exists() else []
            finished = [e for e in evs if e["event"] == "trial"]
            if finished and evs[-1]["event"] == "fold" and evs[-1]["trial"] != finished[-1]["trial"]:
                break
            time.sleep(0.02)
        os.kill(workers[1].pid, signal.SIGKILL)
        assert workers[1].wait(timeout=30) == -signal.SIGKILL
        at_kill = study(out).get_trials()
        in_flight = [t for t in at_kill if t.state == TrialState.RUNNING and t.user_attrs.get("worker") == 1]
        assert len(in_flight) == 1, [(t.number, t.state, t.user_attrs) for t in at_kill]
        search = api.Search.model_validate(SPEC["search"])
        done_before = {t.number: (_params(t, search), t.value) for t in at_kill
                       if t.state in (TrialState.COMPLETE, TrialState.PRUNED)}
        assert any(t.user_attrs.get("worker") == 1 for t in at_kill if t.number in done_before)

        workers[1] = start(out, 1, logs[1])  # the supervisor's next attempt of worker 1
        for w, log in zip(workers, logs, strict=True):
            assert w.wait(timeout=300) == 0, log.read_text()[-3000:]
    finally:
        for w in workers:
            if w.poll() is None:
                w.kill()
                w.wait()

    select = subprocess.run([sys.executable, "-m", "mlvisor.trainer"], env=env_of(out, None, MLVISOR_STEP="select"),
                            capture_output=True, text=True, timeout=300)
    assert select.returncode == 0, select.stderr[-3000:]
    records = [json.loads(line) for line in (out / "v1" / "trials.jsonl").read_text().splitlines()]
    counted = [r for r in records if r["state"] in ("complete", "pruned", "failed")]
    assert len(counted) == 10  # exactly nTrials in all
    dead = in_flight[0].number
    (interrupted,) = [r for r in records if r["state"] == "interrupted"]
    assert interrupted["trial"] == dead and interrupted["worker"] == 1
    (retry,) = [r for r in records if r.get("retry_of") == dead]
    assert retry["state"] == "complete" and retry["retried"] and retry["params"] == interrupted["params"]
    # every trial finished before the kill is there once, unchanged, and was not run again
    by_number = {r["trial"]: r for r in records}
    for number, (params, value) in done_before.items():
        assert (by_number[number]["params"], by_number[number]["score"]) == (params, value)
        assert by_number[number]["state"] in ("complete", "pruned") and not by_number[number]["retried"]
    runs = [e["trial"] for log in logs for e in events(log) if e["event"] == "trial"]
    assert len(runs) == len(set(runs)), "a finished trial was run again"
    assert any(e["event"] == "trial_retried" and e["trial"] == dead for e in events(logs[1]))
    meta = read_metadata(out / "v1")
    assert meta.search is not None and meta.search["trials"] == 10 and meta.search["trials_retried"] == 1
