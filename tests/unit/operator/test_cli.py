"""The `mlvisor` command: version, CRDs, validate."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import version as _dist_version

import yaml

from helpers.paths import REPO
from mlvisor.operator import crdgen
from mlvisor.operator.cli import main

ROOT = REPO


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "mlvisor.operator.cli", *args], capture_output=True, text=True)


def test_version():
    r = run("--version")
    assert r.returncode == 0
    assert r.stdout.strip() == f"mlvisor {_dist_version('mlvisor')}"


def test_crds_prints_every_crd_and_writes_files(tmp_path, capsys):
    assert main(["crds"]) == 0
    docs = list(yaml.safe_load_all(capsys.readouterr().out))
    assert sorted(d["spec"]["names"]["kind"] for d in docs) == ["ModelPipeline", "ModelServer", "TrainingJob"]
    assert main(["crds", "--output", str(tmp_path)]) == 0
    for kind in ("TrainingJob", "ModelServer", "ModelPipeline"):
        assert (tmp_path / crdgen.crd_filename(kind)).read_text() == crdgen.render(kind)


def test_validate_accepts_the_samples():
    # The mlvisor samples; iris-hpa.yaml is a built-in HorizontalPodAutoscaler (test_manifests.py).
    samples = [p for p in sorted((ROOT / "manifests" / "samples").glob("*.yaml")) if "mlvisor.dev/" in p.read_text()
               and "kind: HorizontalPodAutoscaler" not in p.read_text()]
    r = run("validate", *map(str, samples))
    assert r.returncode == 0, r.stderr
    assert "TrainingJob default/iris is valid" in r.stdout


def test_validate_names_the_field_and_exits_non_zero(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "apiVersion: mlvisor.dev/v1alpha1\nkind: TrainingJob\nmetadata: {name: t}\n"
        "spec: {dataset: {builtin: iris}, estimator: {class: sklearn.tree.DecisionTreeClassifier}, testSize: 2}\n"
    )
    r = run("validate", str(bad))
    assert r.returncode == 1
    assert "TrainingJob t: spec.testSize: Input should be less than 1 (got 2)" in r.stderr


def test_missing_file_is_a_clear_error(tmp_path):
    r = run("validate", str(tmp_path / "nope.yaml"))
    assert r.returncode == 1
    assert f"{tmp_path / 'nope.yaml'}: no such file or folder" in r.stderr


def test_no_command_prints_help():
    r = run()
    assert r.returncode == 2
    assert "COMMAND" in r.stdout
