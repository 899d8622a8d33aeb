"""Artifacts under faults and attack (issue 11): what a reader (the server) can ever see.

- **Killed mid-write**: a writer is SIGKILLed (in a forked child, so it really dies) at every
  step of ``write_artifact``: half-way through each file, after each fsync, before and after
  the rename. Whatever the step, a reader sees either the complete version or no version:
  ``list_versions`` lists nothing partial, ``load_artifact`` says it is missing (which the
  server waits on) and never loads half a model; a restarted writer then completes it.
- **Full disk**: ENOSPC from a write or an fsync is reported naming the file and what to do,
  with the trainer's crash exit code (1: retried under supervision once there is space).
- **Malicious artifacts**: a real skops file of a class outside the allowlist, one smuggling
  ``os.system`` into an allowlisted FunctionTransformer, and a pickle renamed to model.skops
  are refused with a clear error; the checksum is verified before skops reads a byte of the
  model (a tampered file never reaches the skops parser).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import pickle
import signal
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import mlvisor.trainer.artifact as artifact
from helpers.artifacts import build_artifact
from mlvisor.trainer.artifact import (
    ArtifactError,
    ArtifactMissing,
    ArtifactWriteError,
    list_versions,
    load_artifact,
    read_metadata,
    write_artifact,
)

#: Kill points: (what the writer is doing, how many times it is tried).
KILL_POINTS = [
    "model half written", "model written, not synced", "metadata half written",
    "metadata written, not synced", "both synced, before the rename", "renamed, directory not synced",
]
REPEATS = 5


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> tuple[bytes, Any]:
    """The bytes and metadata of a real artifact, to write again under faults."""
    path, _, _ = build_artifact(tmp_path_factory.mktemp("good"))
    return (path / "model.skops").read_bytes(), read_metadata(path)


def _writer_killed_at(point: str, root: Path, model_bytes: bytes, meta: Any) -> int:
    """Fork a writer that SIGKILLs itself at ``point``; returns its wait status."""
    pid = os.fork()
    if pid == 0:  # the child: patch the writer's own module, then write and die
        try:
            real_open, real_fsync, real_rename = open, os.fsync, os.rename
            syncs = {"n": 0}

            def die() -> None:
                os.kill(os.getpid(), signal.SIGKILL)

            class HalfThenDie:
                def __init__(self, f: Any) -> None:
                    self.f = f

                def __enter__(self) -> HalfThenDie:
                    return self

                def __exit__(self, *exc: Any) -> None:
                    self.f.close()

                def write(self, data: bytes) -> int:
                    self.f.write(data[: len(data) // 2])
                    self.f.flush()
                    real_fsync(self.f.fileno())  # the half really reaches the disk
                    die()
                    return 0

            def fake_open(path: Any, mode: str = "r", *a: Any, **k: Any) -> Any:
                f = real_open(path, mode, *a, **k)
                name = Path(path).name
                if "w" in mode and ((point == "model half written" and name == "model.skops")
                                    or (point == "metadata half written" and name == "metadata.json")):
                    return HalfThenDie(f)
                return f

            def fake_fsync(fd: int) -> None:  # die before the sync that would make the file durable
                syncs["n"] += 1
                if (point == "model written, not synced" and syncs["n"] == 1) or \
                        (point == "metadata written, not synced" and syncs["n"] == 2):
                    die()
                real_fsync(fd)

            artifact.os.fsync = fake_fsync  # type: ignore[assignment]

            def fake_rename(src: Any, dst: Any) -> None:
                if point == "both synced, before the rename":
                    die()
                real_rename(src, dst)
                if point == "renamed, directory not synced":
                    die()

            artifact.os.rename = fake_rename  # type: ignore[assignment]
            artifact.open = fake_open  # type: ignore[attr-defined]
            write_artifact(root, model_bytes, meta)
        finally:
            os._exit(3)  # not reached when the kill point is hit
    _, status = os.waitpid(pid, 0)
    return status


def _what_a_reader_sees(root: Path, version: str) -> str:
    versions = list_versions(root)
    try:
        loaded = load_artifact(root / version)
    except ArtifactMissing:
        assert versions == [], versions
        return "nothing"
    assert versions == [version]
    assert loaded.metadata.version == version and hasattr(loaded.model, "predict")
    return "complete"


@pytest.mark.parametrize("point", KILL_POINTS)
def test_a_writer_killed_at_any_step_leaves_a_complete_version_or_none(
    point: str, tmp_path: Path, good: tuple[bytes, Any]
) -> None:
    model_bytes, meta = good
    seen = set()
    for i in range(REPEATS):
        root = tmp_path / f"run{i}"
        status = _writer_killed_at(point, root, model_bytes, meta)
        assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL, f"{point}: the writer was not killed"
        seen.add(_what_a_reader_sees(root, meta.version))
        # the server never serves it: the version is missing (waited for) or complete
        if (root / meta.version).exists():
            assert (root / meta.version / "metadata.json").is_file() and (root / meta.version / "model.skops").is_file()
        # a restarted writer completes the version, and stale leftovers of the dead one go
        for leftover in root.glob(".*.tmp-*"):
            os.utime(leftover, (0, 0))
        done = write_artifact(root, model_bytes, meta)
        assert _what_a_reader_sees(root, meta.version) == "complete" and done == root / meta.version
        assert list(root.glob(".*.tmp-*")) == []
    expected = {"complete"} if point == "renamed, directory not synced" else {"nothing"}
    assert seen == expected


def test_a_partial_version_is_never_served(tmp_path: Path, good: tuple[bytes, Any]) -> None:
    """The server's loader treats a version that is not (yet) complete as missing: it waits, never loads it."""
    import asyncio

    from mlvisor.server.loading import load_model

    model_bytes, meta = good
    _writer_killed_at("both synced, before the rename", tmp_path, model_bytes, meta)
    (tmp_dir,) = tmp_path.glob(".*.tmp-*")
    assert (tmp_dir / "model.skops").is_file()  # a complete-looking directory under a dot name
    waits: list[str] = []

    async def attempt() -> None:
        await asyncio.wait_for(load_model(tmp_path / meta.version, "iris", waits.append, retry_seconds=0.01), 0.3)

    with pytest.raises(TimeoutError):
        asyncio.run(attempt())
    assert waits and "does not exist" in waits[0]


@pytest.mark.parametrize("where", ["write", "fsync"])
def test_a_full_disk_names_the_file_and_exits_1(
    where: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from mlvisor.trainer.entry import main

    term = tmp_path / "termination-log"
    term.write_text("")
    monkeypatch.setenv("MLVISOR_TERMINATION_MESSAGE_PATH", str(term))
    real_open = open

    class Full:
        def __init__(self, f: Any) -> None:
            self.f = f

        def __enter__(self) -> Full:
            return self

        def __exit__(self, *exc: Any) -> None:
            self.f.close()

        def write(self, data: bytes) -> int:
            raise OSError(errno.ENOSPC, "No space left on device")

        def flush(self) -> None:
            pass

        def fileno(self) -> int:
            return self.f.fileno()

    if where == "write":
        monkeypatch.setattr(artifact, "open", lambda p, m="r", *a, **k: Full(real_open(p, m, *a, **k)) if "w" in m
                            else real_open(p, m, *a, **k), raising=False)
    else:
        def no_space(fd: int) -> None:
            raise OSError(errno.ENOSPC, "No space left on device")
        monkeypatch.setattr(artifact.os, "fsync", no_space)
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({"dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}}))
    out = tmp_path / "out"
    code = main(["--spec", str(spec), "--output", str(out), "--version", "v1"])
    last = json.loads(capsys.readouterr().err.splitlines()[-1])
    assert code == 1 and last["event"] == "crash"
    model = out / ".v1.tmp-"  # the file is named by its real path under the version's temporary directory
    assert "ArtifactWriteError: cannot write " in last["msg"] and str(model) in last["msg"], last["msg"]
    assert "model.skops: no space left on the device; free space on that volume or give it more" in last["msg"]
    assert term.read_text() == f"crash: {last['msg']}"
    assert list_versions(out) == [] and list(out.glob(".*.tmp-*")) == []  # nothing half-written left behind


def test_a_full_disk_while_recording_trials_names_the_shard_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import io

    from mlvisor import api
    from mlvisor.trainer import search
    from mlvisor.trainer.job import RunOptions, run
    from mlvisor.trainer.logs import EventLog

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(search.os, "fsync", no_space)
    spec = api.TrainingJobSpec.model_validate({
        "dataset": {"builtin": "iris"}, "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"},
        "search": {"grid": {"max_depth": [1, 2]}, "cv": 2}})
    with pytest.raises(ArtifactWriteError, match=r"cannot write the trial results to .*shard-0-of-1.jsonl: no space"):
        run(RunOptions(spec=spec, output=tmp_path, version="v1", worker_index=0, workers=1), EventLog(stream=io.StringIO()))


# ----------------------------------------------------------------------------- malicious artifacts
def _forge(path: Path, blob: bytes) -> None:
    """Put ``blob`` in as model.skops with a matching checksum: only the content can give it away."""
    (path / "model.skops").write_bytes(blob)
    meta = json.loads((path / "metadata.json").read_text())
    meta["model_sha256"] = hashlib.sha256(blob).hexdigest()
    (path / "metadata.json").write_text(json.dumps(meta))


def test_a_skops_file_of_a_class_outside_the_allowlist_is_refused(tmp_path: Path) -> None:
    import skops.io as sio
    from sklearn.cluster import KMeans

    path, _, X = build_artifact(tmp_path)
    _forge(path, sio.dumps(KMeans(n_clusters=3, n_init=1, random_state=0).fit(X)))
    with pytest.raises(ArtifactError, match=r"contains types outside the estimator allowlist, refusing to load: "
                                            r"sklearn.cluster._kmeans.KMeans"):
        load_artifact(path)


def test_a_function_smuggled_into_an_allowlisted_estimator_is_refused(tmp_path: Path) -> None:
    """FunctionTransformer is allowlisted; os.system as its func is not a type anyone may load."""
    import skops.io as sio
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import FunctionTransformer

    path, _, _X = build_artifact(tmp_path)
    evil = Pipeline([("f", FunctionTransformer(func=os.system)), ("m", LogisticRegression())])
    _forge(path, sio.dumps(evil))
    with pytest.raises(ArtifactError, match=r"outside the estimator allowlist, refusing to load: .*system"):
        load_artifact(path)


def test_a_pickle_renamed_to_model_skops_is_refused_and_never_unpickled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from sklearn.tree import DecisionTreeClassifier

    path, _, X = build_artifact(tmp_path)
    _forge(path, pickle.dumps(DecisionTreeClassifier().fit(X, np.arange(len(X)) % 3)))

    def never(*a: Any, **k: Any) -> Any:
        raise AssertionError("pickle must never be called on an artifact")

    monkeypatch.setattr(pickle, "loads", never)
    monkeypatch.setattr(pickle, "load", never)
    with pytest.raises(ArtifactError, match=r"model.skops is not a valid skops file"):
        load_artifact(path)


def test_the_checksum_is_verified_before_skops_reads_the_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import skops.io as sio

    path, _, _ = build_artifact(tmp_path)
    data = (path / "model.skops").read_bytes()
    (path / "model.skops").write_bytes(data[:200] + bytes([data[200] ^ 0x01]) + data[201:])  # one bit

    def never(*a: Any, **k: Any) -> Any:
        raise AssertionError("skops was asked about a file whose checksum does not match")

    for name in ("load", "loads", "get_untrusted_types"):
        monkeypatch.setattr(sio, name, never)
    monkeypatch.setattr(artifact, "sklearn_types_in", never)
    with pytest.raises(ArtifactError, match="is corrupted or truncated: sha256"):
        load_artifact(path)


@pytest.mark.parametrize("encoder", ["onehot", "ordinal"])
def test_a_table_pipeline_loads_with_exactly_the_support_types_it_needs(tmp_path: Path, encoder: str, monkeypatch) -> None:
    """A Pipeline of ColumnTransformer, imputers, an encoder and an estimator loads through the
    allowlist; the one type outside sklearn it needs is numpy.dtype (the encoders' dtype), and
    the file holds no pandas type (loading needs no pandas)."""
    import skops.io as sio

    from helpers.artifacts import build_table_artifact
    from mlvisor.trainer import allowlist

    path, model, frame = build_table_artifact(tmp_path, encoder=encoder)
    model_file = path / "model.skops"
    untrusted = set(sio.get_untrusted_types(file=model_file))
    outside_sklearn = {t for t in untrusted if not t.startswith("sklearn.")}
    assert outside_sklearn == {"numpy.dtype"}
    import zipfile

    with zipfile.ZipFile(model_file) as archive:
        schema = archive.read("schema.json").decode()
    assert "pandas" not in schema
    loaded = load_artifact(path)
    assert loaded.model.predict(frame.head(5)).tolist() == model.predict(frame.head(5)).tolist()
    monkeypatch.setattr(allowlist, "SUPPORT_TYPES", frozenset())
    with pytest.raises(ArtifactError, match=r"numpy\.dtype"):
        load_artifact(path)
