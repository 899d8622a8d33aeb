"""End to end: the pipeline sample run by `mlvisor run` as a supervision tree of real processes.

The pipeline's first run trains on a CSV file that does not exist yet, so its trainer exits
with code 2 and the run's TrainingJob fails (its failurePolicy). The pipeline, one level up,
counts that exit and restarts training after its back-off; by then the file is there, the
second run succeeds, passes the gate and is served. A third run (the file edited: a worse
estimator) succeeds with a lower score and, with promotion.mustImprove, is not promoted: the
server keeps answering with run 2's model throughout.
"""

from __future__ import annotations

import datetime as dt
import json
import urllib.request
from pathlib import Path

import pytest
import yaml

from helpers.datasets import write_iris_csv

pytestmark = pytest.mark.slow

KNOWN_ROWS = [([5.1, 3.5, 1.4, 0.2], 0), ([7.0, 3.2, 4.7, 1.4], 1), ([6.3, 3.3, 6.0, 2.5], 2)]
BACKOFF = 4.0  # room for the test to write the file before the restarted trainer reads it, on a loaded machine


def _pipeline(status: dict) -> dict:
    return status["ModelPipeline/default/iris"]


def _run(status: dict, number: int) -> dict | None:
    return next((r for r in _pipeline(status).get("runs") or [] if r["number"] == number), None)


def _time(text: str) -> float:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


def _predict(url: str) -> list[int]:
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [3, 4], "datatype": "FP64",
                                   "data": [x for row, _ in KNOWN_ROWS for x in row]}]}).encode()
    req = urllib.request.Request(f"{url}/infer", data=body, method="POST", headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer = json.loads(resp.read())
    return [int(v) for v in next(o for o in answer["outputs"] if o["name"] == "predict")["data"]]


def _from_sample(samples: Path, max_depth: int | None = None) -> str:
    """The pipeline sample, reading iris from a CSV file, quick back-off, no nightly schedule, mustImprove only."""
    doc = yaml.safe_load((samples / "pipeline.yaml").read_text())
    doc["metadata"]["name"] = "iris"
    spec = doc["spec"]
    spec.pop("schedule")  # a run at 03:00 UTC must not land in the middle of the test
    params = {"random_state": 0} if max_depth is None else {"random_state": 0, "max_depth": max_depth}
    spec["training"]["dataset"] = {"csv": {"path": "data/iris.csv", "target": "species"}}
    spec["training"]["estimator"] = {"class": "sklearn.tree.DecisionTreeClassifier", "params": params}
    spec["supervision"]["backoff"] = {"initialSeconds": BACKOFF, "factor": 1, "maxSeconds": BACKOFF}
    assert spec["promotion"] == {"minScore": 0.9, "mustImprove": True}
    spec["promotion"] = {"mustImprove": True}  # so that run 3 is refused for not beating run 2, nothing else
    return yaml.safe_dump(doc)


def test_a_run_without_its_data_is_restarted_by_the_pipeline_then_served_and_a_worse_run_is_not_promoted(
    mlvisor_run, samples: Path, tmp_path: Path
) -> None:
    resource = tmp_path / "pipeline.yaml"
    resource.write_text(_from_sample(samples))
    run = mlvisor_run(resource)  # with the live table (not a TTY: printed when it changes)
    csv = run.data_dir / "volumes" / "mlvisor-models" / "data" / "iris.csv"

    # Run 1: the file does not exist, the trainer exits 2, the TrainingJob fails, the pipeline restarts training.
    run.wait_for("run 1 failed and a training restart pending", lambda s: _run(s, 1)["phase"] == "Failed"
                 and _pipeline(s)["supervision"].get("nextRestartTime"))
    status = run.status()
    pipeline = _pipeline(status)
    assert pipeline["phase"] == "Restarting"
    failure = pipeline["supervision"]["lastFailure"]
    assert (failure["child"], failure["resource"], failure["exitCode"]) == ("training", "TrainingJob iris-1", 2)
    assert _run(status, 1)["reason"] == "FailurePolicy"
    assert status["TrainingJob/default/iris-1"]["phase"] == "Failed"
    restart_at = _time(pipeline["supervision"]["nextRestartTime"])
    assert restart_at - _time(_run(status, 1)["completionTime"]) == pytest.approx(BACKOFF, abs=0.01)
    write_iris_csv(csv)

    # Run 2, started by the pipeline after the back-off, trains on the file, passes the gate and is served.
    served = run.wait_for("the pipeline serving run 2", lambda s: _pipeline(s)["phase"] == "Serving" and _pipeline(s))
    status = run.status()
    second = _run(status, 2)
    assert second["trigger"] == "Restart" and _time(second["startTime"]) >= restart_at
    assert second["promoted"] is True and second["score"] >= 0.9
    assert served["servingRun"] == "iris-2" and served["servingVersion"] == second["version"]
    assert served["supervision"]["totalRestarts"] == 1
    server = status["ModelServer/default/iris"]
    assert server["phase"] == "Ready" and server["modelVersion"] == second["version"]
    url = served["url"]
    assert url.startswith("http://127.0.0.1:") and url.endswith("/v2/models/iris")
    assert _predict(url) == [label for _, label in KNOWN_ROWS]

    # Run 3: the file is edited (a stump, accuracy ~0.6); it succeeds, scores worse, mustImprove refuses it.
    resource.write_text(_from_sample(samples, max_depth=1))
    third = run.wait_for("run 3 judged by the gate", lambda s: (r := _run(s, 3)) and r["phase"] == "Succeeded" and r)
    assert third["trigger"] == "SpecChanged"
    assert third["promoted"] is False and third["reason"] == "NotBetter", third
    assert third["score"] < second["score"]
    assert "mustImprove" in third["message"]
    status = run.status()
    assert _pipeline(status)["servingRun"] == "iris-2"
    assert status["ModelServer/default/iris"]["modelVersion"] == second["version"]
    assert _predict(url) == [label for _, label in KNOWN_ROWS]

    log = run.log()
    assert "mp/iris" in log and "  tj/iris-1" in log and "  ms/iris" in log, "the live table shows the tree"
    assert "Restarting ModelPipeline/default/iris" in log and "NotPromoted ModelPipeline/default/iris" in log
    assert run.interrupt() == 130
    run.assert_no_orphans()
