"""A Secret in the same files as the resources that name it: used by `mlvisor run` (and checked by
`mlvisor validate`), never printed; one the files lack is the environment's business locally."""

from __future__ import annotations

import base64
from pathlib import Path

import pytest
import yaml

from mlvisor.operator.builders import build_worker_pod
from mlvisor.operator.cli import main as mlvisor
from mlvisor.operator.local.processes import ManifestError, process_spec_for_pod
from mlvisor.operator.plan import OperatorConfig
from mlvisor.operator.resources_cli import load_paths

KEY_ID = "AKIAEXAMPLEKEYID0001"
SECRET = "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY"


def secret(name: str = "s3", **values: str) -> dict:
    return {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": name}, "type": "Opaque",
            "stringData": values}


def job(name: str = "census", secret_name: str = "s3") -> dict:
    return {"apiVersion": "mlvisor.dev/v1alpha1", "kind": "TrainingJob", "metadata": {"name": name},
            "spec": {"dataset": {"uri": "s3://data/census.csv", "target": "income",
                                 "credentials": {"secretName": secret_name}},
                     "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}}}


def write(tmp_path: Path, *docs: dict) -> Path:
    path = tmp_path / "files.yaml"
    path.write_text(yaml.safe_dump_all(docs))
    return path


def test_a_named_secret_is_used_and_never_printed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = {"AWS_ACCESS_KEY_ID": base64.b64encode(KEY_ID.encode()).decode()}
    doc = {**secret(AWS_SECRET_ACCESS_KEY=SECRET, AWS_ENDPOINT_URL="http://127.0.0.1:9"), "data": data}
    path = write(tmp_path, doc, job())
    loaded = load_paths([path])
    assert loaded.problems == [] and not any("Secret s3" in n for n in loaded.notes)
    assert loaded.secrets[("default", "s3")] == {"AWS_ACCESS_KEY_ID": KEY_ID, "AWS_SECRET_ACCESS_KEY": SECRET,
                                                 "AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    assert mlvisor(["validate", str(path)]) == 0
    out, err = capsys.readouterr()
    assert KEY_ID not in out + err and SECRET not in out + err
    assert "Secret" not in out + err, "a Secret that is used is not 'skipped'"


def test_a_secret_without_an_access_key_makes_its_user_invalid(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = write(tmp_path, secret(AWS_SECRET_ACCESS_KEY=SECRET), job())
    assert mlvisor(["validate", str(path)]) == 1
    out, err = capsys.readouterr()
    assert "is valid" not in out
    assert ("TrainingJob census: spec.dataset.credentials: Secret s3 (" in err
            and "has no AWS_ACCESS_KEY_ID; it needs AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY" in err), err
    assert SECRET not in out + err


def test_bad_base64_is_named_by_its_key_only(tmp_path: Path) -> None:
    doc = {**secret(AWS_SECRET_ACCESS_KEY=SECRET), "data": {"AWS_ACCESS_KEY_ID": "not base64!"}}
    loaded = load_paths([write(tmp_path, doc, job())])
    assert any("Secret s3: data.AWS_ACCESS_KEY_ID is not base64 of UTF-8 text" in p for p in loaded.problems)
    assert not any("not base64!" in p for p in loaded.problems)


def test_a_secret_the_files_lack_and_one_nobody_names_get_notes(tmp_path: Path) -> None:
    loaded = load_paths([write(tmp_path, secret("spare", AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET),
                               job(secret_name="elsewhere"))])
    assert loaded.problems == []
    assert any("spec.dataset.credentials names Secret elsewhere, which is not in these files: on a cluster it must "
               "exist in namespace default; mlvisor run gives the pods its own AWS_* environment variables instead"
               in n for n in loaded.notes), loaded.notes
    assert any("Secret spare is not named by any resource here: skipped" in n for n in loaded.notes)


def test_mlvisor_run_gives_a_pod_the_secret_it_names_and_otherwise_its_own_environment(tmp_path: Path) -> None:
    loaded = load_paths([write(tmp_path, secret(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET), job())],
                        check=False)
    pod = build_worker_pod(loaded.resources[0], 0, 1, "v1", OperatorConfig())  # type: ignore[arg-type]
    parent = {"PATH": "/usr/bin", "AWS_ACCESS_KEY_ID": "from-the-shell"}
    spec = process_spec_for_pod(pod, tmp_path, tmp_path / "scratch", parent_env=parent,
                                secrets={"s3": loaded.secrets[("default", "s3")]})
    assert spec.env["MLVISOR_DATASET_AWS_ACCESS_KEY_ID"] == KEY_ID
    assert spec.env["MLVISOR_DATASET_AWS_SECRET_ACCESS_KEY"] == SECRET
    assert "MLVISOR_DATASET_AWS_REGION" not in spec.env, "an optional key the Secret lacks stays unset"
    without = process_spec_for_pod(pod, tmp_path, tmp_path / "scratch2", parent_env=parent, secrets={})
    assert not any(k.startswith("MLVISOR_DATASET_AWS") for k in without.env)
    assert without.env["AWS_ACCESS_KEY_ID"] == "from-the-shell", "the trainer falls back on AWS_*"
    with pytest.raises(ManifestError, match="Secret s3 has no key 'AWS_SECRET_ACCESS_KEY'"):
        process_spec_for_pod(pod, tmp_path, tmp_path / "scratch3", parent_env=parent,
                             secrets={"s3": {"AWS_ACCESS_KEY_ID": KEY_ID}})
