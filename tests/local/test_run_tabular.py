"""Getting a table in without a cluster: `mlvisor upload --local` puts census.csv (text columns,
empty cells) where `mlvisor run` keeps the claim, and the tabular sample, as it is, trains on it
and serves it by column name; what validate says of the table is what the trainer says."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from helpers.paths import REPO

pytestmark = pytest.mark.slow

SAMPLE = REPO / "manifests" / "samples" / "tabular.yaml"
CENSUS = REPO / "manifests" / "samples" / "data" / "census.csv"
# The sample excludes native_region: a request sends the seven other columns.
COLUMNS = {"age": ("FP64", [45, None]), "workclass": ("BYTES", ["Private", None]),
           "education": ("BYTES", ["Masters", "HS-grad"]), "marital_status": ("BYTES", ["Married", "Never-married"]),
           "occupation": ("BYTES", ["Exec-managerial", "never seen"]), "hours_per_week": ("INT64", [50, 20]),
           "capital_gain": ("INT64", [15024, 0])}


def mlvisor(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", *args], capture_output=True, text=True,
                          timeout=120)


def test_upload_local_then_the_tabular_sample_trains_and_answers_by_column(mlvisor_run: Any, tmp_path: Path) -> None:
    data_dir = tmp_path / "data"  # the data directory the mlvisor_run fixture gives `mlvisor run`
    before = mlvisor("validate", str(SAMPLE), "--data-dir", str(data_dir))
    assert before.returncode == 1, before.stdout + before.stderr
    assert ("spec.dataset.uri 'pvc://mlvisor-models/datasets/census.csv' (under "
            f"{data_dir}/volumes/mlvisor-models): file not found") in before.stderr

    up = mlvisor("upload", str(CENSUS), "pvc://mlvisor-models/datasets/census.csv", "--local", "--data-dir",
                 str(data_dir))
    assert up.returncode == 0, up.stderr
    copied = data_dir / "volumes" / "mlvisor-models" / "datasets" / "census.csv"
    assert copied.read_bytes() == CENSUS.read_bytes()
    assert [p.name for p in copied.parent.iterdir()] == ["census.csv"], "no temporary file left beside it"

    after = mlvisor("validate", str(SAMPLE), "--data-dir", str(data_dir))
    assert after.returncode == 0, after.stdout + after.stderr
    assert ("TrainingJob default/census: the data: 1000 rows, 7 features; categorical: workclass, education, "
            "marital_status, occupation, encoded Ordinal; numeric: age, hours_per_week, capital_gain; missing values: "
            "age (60 rows), workclass (53 rows), occupation (71 rows)") in after.stdout

    req = tmp_path / "request.json"
    req.write_text(json.dumps({"inputs": [{"name": n, "shape": [len(v)], "datatype": t, "data": v}
                                          for n, (t, v) in COLUMNS.items()]}))
    run = mlvisor_run(SAMPLE, args=["--no-table", "--predict", str(req), "--timeout", "240"])
    assert run.wait_exit(300) == 0, run.explain()
    line = next(ln for ln in run.log().splitlines() if "ModelServer/default/census: prediction: " in ln)
    answer = json.loads(line.split("prediction: ", 1)[1])
    predict = next(o for o in answer["outputs"] if o["name"] == "predict")
    assert predict["datatype"] == "BYTES" and len(predict["data"]) == 2
    assert set(predict["data"]) <= {">50K", "<=50K"}
    model = run.status()["TrainingJob/default/census"]["model"]
    assert model["data"].startswith("1000 rows, 7 features; categorical: workclass, education"), model
    run.assert_no_orphans()
