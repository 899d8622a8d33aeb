"""`mlvisor run FOLDER`: the runtime re-reads a folder when a file under it is added, edited or removed."""

from __future__ import annotations

from pathlib import Path

from mlvisor.operator.local.runtime import LocalRuntime, RunSettings
from mlvisor.operator.resources_cli import load_paths

JOB = """\
apiVersion: mlvisor.dev/v1alpha1
kind: TrainingJob
metadata: {{name: {name}}}
spec:
  dataset: {{builtin: iris}}
  estimator: {{class: sklearn.tree.DecisionTreeClassifier}}
  suspend: {suspend}
"""


def names(runtime: LocalRuntime) -> list[str]:
    return sorted(key[2] for key in runtime.resources)


def test_a_folder_is_watched_for_added_edited_and_removed_files(tmp_path: Path) -> None:
    folder = tmp_path / "resources"
    (folder / "sub").mkdir(parents=True)
    (folder / "a.yaml").write_text(JOB.format(name="a", suspend="true"))
    runtime = LocalRuntime([folder], RunSettings(data_dir=tmp_path / "data"))
    runtime.load(load_paths([folder]).resources)
    assert names(runtime) == ["a"]
    now = 1.0

    def check() -> None:
        nonlocal now
        now += 10
        runtime._check_files(now)

    check()
    assert names(runtime) == ["a"]  # nothing changed
    (folder / "sub" / "b.yaml").write_text(JOB.format(name="b", suspend="true"))
    check()
    assert names(runtime) == ["a", "b"]
    (folder / "sub" / "b.yaml").write_text(JOB.format(name="b", suspend="false"))
    check()
    assert runtime.resources[("TrainingJob", "default", "b")].spec.suspend is False
    (folder / "a.yaml").unlink()
    check()
    assert names(runtime) == ["b"]
