"""Data and models from a real S3 server (versitygw, tests/objectstore): the trainer reads a CSV
with credentials from a Secret and writes its artifact there; the server downloads it, verified,
and serves it by column name; `mlvisor run` does both from the sample with the Secret in the
same file. A download is verified and atomic; a Secret's values never appear in what is printed.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import yaml

from helpers.paths import REPO
from mlvisor.api.exits import EXIT_MODEL_UNLOADABLE
from mlvisor.trainer import storage
from mlvisor.trainer.artifact import ArtifactError, ArtifactMissing, read_metadata

pytestmark = pytest.mark.slow

CENSUS = REPO / "manifests" / "samples" / "data" / "census.csv"
ROWS = {"age": ("FP64", [45, None]), "workclass": ("BYTES", ["Private", None]),
        "education": ("BYTES", ["Masters", "HS-grad"]), "marital_status": ("BYTES", ["Married", "Never-married"]),
        "occupation": ("BYTES", ["Exec-managerial", "never seen"]), "hours_per_week": ("INT64", [50, 20]),
        "capital_gain": ("INT64", [15024, 0]), "native_region": ("BYTES", ["Europe", "Asia"])}


def request(columns: dict[str, tuple[str, list[Any]]] = ROWS) -> dict[str, Any]:
    """A V2 request with one input per column, named as the column ([N]; null for a missing value)."""
    return {"inputs": [{"name": n, "shape": [len(v)], "datatype": t, "data": v} for n, (t, v) in columns.items()]}


def role_env(server: Any, *roles: str) -> dict[str, str]:
    """What a pod's env holds for these roles after the kubelet resolved its secretKeyRefs."""
    return {f"MLVISOR_{r}_{k}": v for r in roles for k, v in server.env().items()}


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLVISOR_", "AWS_"))}
    return {**env, **extra}


def assert_no_secret(server: Any, *texts: str) -> None:
    for text in texts:
        assert server.secret_key not in text, "the secret access key was printed"
        assert server.access_key not in text, "the access key id was printed"


@pytest.fixture
def bucket(s3_server: Any, tmp_path: Path) -> str:
    """A fresh bucket holding census.csv."""
    name = f"b{tmp_path.name[-20:].lower().replace('_', '-').strip('-')}"[:40].rstrip("-")
    shutil.copy(CENSUS, s3_server.bucket(name) / "census.csv")
    return name


def test_a_download_is_verified_atomic_and_its_failures_are_words_without_secrets(
        s3_server: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    env = role_env(s3_server, "DATASET")
    dest = tmp_path / "got" / "census.csv"
    assert storage.download(f"s3://{bucket}/census.csv", dest, storage.Role.DATASET, env) == CENSUS.stat().st_size
    assert dest.read_bytes() == CENSUS.read_bytes()

    wrong = {**env, "MLVISOR_DATASET_AWS_SECRET_ACCESS_KEY": "not-" + s3_server.secret_key}
    with pytest.raises(storage.StorageError) as e:
        storage.download(f"s3://{bucket}/census.csv", tmp_path / "x.csv", storage.Role.DATASET, wrong)
    assert str(e.value).startswith(f"s3://{bucket}/census.csv: access denied (403 SignatureDoesNotMatch): check the "
                                   "Secret named in spec.dataset.credentials")
    assert_no_secret(s3_server, str(e.value))
    with pytest.raises(storage.StorageMissing, match=r"not found \(404 NoSuchKey\)"):
        storage.download(f"s3://{bucket}/nothing.csv", tmp_path / "x.csv", storage.Role.DATASET, env)
    with pytest.raises(storage.StorageMissing, match=r"the bucket does not exist \(404 NoSuchBucket\)"):
        storage.download("s3://no-such-bucket/census.csv", tmp_path / "x.csv", storage.Role.DATASET, env)
    down = {**env, "MLVISOR_DATASET_AWS_ENDPOINT_URL": "http://127.0.0.1:9"}
    with pytest.raises(storage.StorageUnreachable, match="cannot reach the store: connection refused"):
        storage.download(f"s3://{bucket}/census.csv", tmp_path / "x.csv", storage.Role.DATASET, down)
    assert not (tmp_path / "x.csv").exists()

    # A transfer that ends early (fewer bytes than the object's size) leaves nothing behind.
    import obstore

    real_get = obstore.get

    class Cut:
        def __init__(self, result: Any) -> None:
            self.meta = result.meta
            self._result = result

        def stream(self, min_chunk_size: int) -> Any:
            yield bytes(next(iter(self._result.stream(min_chunk_size=1024))))[:1000]

    monkeypatch.setattr(obstore, "get", lambda store, key: Cut(real_get(store, key)))
    partial = tmp_path / "partial" / "census.csv"
    with pytest.raises(storage.StorageUnreachable, match=f"the download stopped at 1000 of {CENSUS.stat().st_size} bytes"):
        storage.download(f"s3://{bucket}/census.csv", partial, storage.Role.DATASET, env)
    assert list(partial.parent.iterdir()) == [], "no partial file, not even under a temporary name"


def train(s3_server: Any, bucket: str, tmp_path: Path, estimator: str, version: str = "v1",
          data: str = "census.csv") -> subprocess.CompletedProcess[str]:
    """The trainer as a worker pod runs it: the spec in MLVISOR_SPEC, the Secret's keys per role."""
    spec = {"dataset": {"uri": f"s3://{bucket}/{data}", "target": "income", "credentials": {"secretName": "s3"}},
            "estimator": {"class": estimator, "params": {"random_state": 0}},
            "output": {"uri": f"s3://{bucket}/models/census", "credentials": {"secretName": "s3"}}}
    term = tmp_path / f"termination-{version}"
    term.write_text("")
    env = clean_env(MLVISOR_SPEC=json.dumps(spec), MLVISOR_MODEL_NAME="census", MLVISOR_MODEL_VERSION=version,
                    MLVISOR_TERMINATION_MESSAGE_PATH=str(term), **role_env(s3_server, "DATASET", "OUTPUT"))
    return subprocess.run([sys.executable, "-m", "mlvisor.trainer"], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)


def test_the_trainer_reads_s3_and_writes_its_artifact_there_and_the_server_serves_it_by_column(
        s3_server: Any, bucket: str, tmp_path: Path) -> None:
    done = train(s3_server, bucket, tmp_path, "sklearn.ensemble.HistGradientBoostingClassifier")
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == f"s3://{bucket}/models/census/v1/"
    version_dir = s3_server.root / bucket / "models" / "census" / "v1"
    meta = read_metadata(version_dir)
    assert [c.name for c in meta.columns or []] == list(ROWS)
    summary = json.loads((tmp_path / "termination-v1").read_text())
    assert summary["version"] == "v1" and summary["data"].startswith("1000 rows, 8 features; categorical:")
    assert_no_secret(s3_server, done.stdout, done.stderr, (tmp_path / "termination-v1").read_text())
    # A restarted writer of the same version finds it complete and writes nothing.
    again = train(s3_server, bucket, tmp_path, "sklearn.ensemble.HistGradientBoostingClassifier")
    assert again.returncode == 0 and "already complete; nothing to do" in again.stderr

    server = serve(s3_server, f"s3://{bucket}/models/census/v1/", tmp_path, role_env(s3_server, "MODEL"))
    try:
        url = server["url"]
        body = json.dumps(request()).encode()
        req = urllib.request.Request(f"{url}/v2/models/census/infer", data=body,
                                     headers={"content-type": "application/json"})
        with urllib.request.urlopen(req, timeout=10) as resp:
            answer = json.loads(resp.read())
        predict = next(o for o in answer["outputs"] if o["name"] == "predict")
        assert predict["datatype"] == "BYTES" and set(predict["data"]) <= {">50K", "<=50K"} and len(predict["data"]) == 2
        with urllib.request.urlopen(f"{url}/v2/models/census", timeout=10) as resp:
            inputs = json.loads(resp.read())["inputs"]
        assert [(i["name"], i["datatype"]) for i in inputs] == [(n, t) for n, (t, _) in ROWS.items()]
    finally:
        stop(server)
    assert_no_secret(s3_server, server["log"].read_text())


def serve(s3_server: Any, uri: str, tmp_path: Path, env: dict[str, str]) -> dict[str, Any]:
    from objectstore.server import free_port

    port = free_port()
    log = tmp_path / f"server-{port}.log"
    term = tmp_path / f"server-{port}.termination"
    term.write_text("")
    scratch = tmp_path / f"scratch-{port}"
    scratch.mkdir()
    proc = subprocess.Popen(
        [sys.executable, "-m", "mlvisor.server", "--model-uri", uri, "--host", "127.0.0.1", "--port", str(port),
         "--grpc-port", "0"],
        env=clean_env(TMPDIR=str(scratch), MLVISOR_TERMINATION_MESSAGE_PATH=str(term), **env),
        stdout=open(log, "wb"), stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            with urllib.request.urlopen(f"{url}/v2/health/ready", timeout=2) as resp:
                if resp.status == 200:
                    break
        except OSError:
            time.sleep(0.2)
    return {"proc": proc, "url": url, "log": log, "termination": term, "scratch": scratch}


def stop(server: dict[str, Any]) -> int:
    proc = server["proc"]
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return int(proc.returncode)


def test_a_model_that_cannot_be_fetched_is_final_and_one_not_there_yet_is_waited_for(
        s3_server: Any, bucket: str, tmp_path: Path) -> None:
    # The same table as Parquet (strings, nulls where the CSV has empty cells), read from the store.
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    table = pyarrow.csv.read_csv(CENSUS, convert_options=pyarrow.csv.ConvertOptions(strings_can_be_null=True))
    assert table.schema.field("workclass").type == pa.string() and table.column("workclass").null_count > 0
    pyarrow.parquet.write_table(table, s3_server.root / bucket / "census.parquet")
    done = train(s3_server, bucket, tmp_path, "sklearn.ensemble.RandomForestClassifier", version="v2",
                 data="census.parquet")
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((tmp_path / "termination-v2").read_text())["data"].startswith("1000 rows, 8 features")
    assert [c.name for c in read_metadata(s3_server.root / bucket / "models" / "census" / "v2").columns or []] == list(ROWS)
    uri = f"s3://{bucket}/models/census/v2/"
    # Wrong credentials: the server says why and exits 4 at once (a rollback or Failed follows).
    wrong = {**role_env(s3_server, "MODEL"), "MLVISOR_MODEL_AWS_SECRET_ACCESS_KEY": "x" + s3_server.secret_key}
    server = serve(s3_server, uri, tmp_path, wrong)
    assert server["proc"].wait(60) == EXIT_MODEL_UNLOADABLE
    said = server["termination"].read_text()
    assert said.startswith(f"cannot load the model: {uri.rstrip('/')}/metadata.json: access denied (403 "), said
    assert_no_secret(s3_server, said, server["log"].read_text())
    # A version whose metadata.json is not there (yet): live, not ready, waiting.
    server = serve(s3_server, f"s3://{bucket}/models/census/v9/", tmp_path, role_env(s3_server, "MODEL"))
    try:
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(f"{server['url']}/v2/health/ready", timeout=5)
        assert e.value.code == 503 and b"waiting for the model" in e.value.read()
    finally:
        stop(server)
    # A model whose bytes were changed in the store: the SHA-256 of its metadata refuses it.
    model = s3_server.root / bucket / "models" / "census" / "v2" / "model.skops"
    blob = bytearray(model.read_bytes())
    blob[len(blob) // 2] ^= 0xFF
    model.write_bytes(bytes(blob))
    with pytest.raises(ArtifactError, match="is corrupted or truncated: sha256"):
        storage.fetch_artifact(uri, tmp_path / "fetched" / "v2", role_env(s3_server, "MODEL"))
    assert not (tmp_path / "fetched" / "v2").exists() and list((tmp_path / "fetched").iterdir()) == []
    with pytest.raises(ArtifactMissing):
        storage.fetch_artifact(f"s3://{bucket}/models/census/v9/", tmp_path / "fetched" / "v9",
                               role_env(s3_server, "MODEL"))


def test_mlvisor_run_trains_two_models_from_s3_and_serves_them_from_there_with_the_secret_in_the_file(
        mlvisor_run: Any, s3_server: Any, tmp_path: Path) -> None:
    """The sample as it is, but for the Secret's values (this server's) and the bucket."""
    shutil.copy(CENSUS, s3_server.bucket("mlvisor-samples") / "census.csv")
    docs = list(yaml.safe_load_all((REPO / "manifests" / "samples" / "tabular-s3.yaml").read_text()))
    docs[0]["stringData"] = s3_server.env()
    for doc in docs[1:]:
        if doc["kind"] == "TrainingJob":
            doc["spec"]["estimator"]["params"]["random_state"] = 0
    files = tmp_path / "tabular-s3.yaml"
    files.write_text(yaml.safe_dump_all(docs))
    req = tmp_path / "request.json"
    req.write_text(json.dumps(request()))
    os.environ.pop("AWS_ACCESS_KEY_ID", None)
    run = mlvisor_run(files, args=["--no-table", "--predict", str(req), "--timeout", "240"])
    assert run.wait_exit(300) == 0, run.explain()
    out = run.log()
    for name in ("census-forest", "census-hgb"):
        line = next(ln for ln in out.splitlines() if f"ModelServer/default/{name}: prediction: " in ln)
        answer = json.loads(line.split("prediction: ", 1)[1])
        assert next(o for o in answer["outputs"] if o["name"] == "predict")["data"][0] in (">50K", "<=50K")
        versions = list((s3_server.root / "mlvisor-samples" / "models" / name).iterdir())
        assert len(versions) == 1 and (versions[0] / "metadata.json").is_file()
    status = run.status_file.read_text()
    assert "s3://mlvisor-samples/models/census-forest/" in status
    everything = out + status + run.child_logs() + "".join(
        p.read_text(errors="replace") for p in (run.data_dir / "logs").rglob("*.log"))
    assert_no_secret(s3_server, everything)
    run.assert_no_orphans()


def test_an_uploaded_version_carries_the_files_beside_its_model_and_its_metadata_comes_last(
        s3_server: Any, bucket: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A search's artifact has trials.jsonl beside model.skops: it reaches the store too, before
    metadata.json, whose presence is what makes the version exist for readers."""
    import obstore

    version = tmp_path / "v3"
    version.mkdir()
    files = {"model.skops": b"model bytes", "trials.jsonl": b'{"trial": 0}\n', "metadata.json": b"{}"}
    for name, data in files.items():
        (version / name).write_bytes(data)
    order: list[str] = []
    real_put = obstore.put
    monkeypatch.setattr(obstore, "put", lambda store, key, *a, **k: order.append(key.rsplit("/", 1)[1])
                        or real_put(store, key, *a, **k))
    uri = f"s3://{bucket}/models/search/v3/"
    assert storage.upload_artifact(version, uri, role_env(s3_server, "OUTPUT")) == uri
    assert order == ["model.skops", "trials.jsonl", "metadata.json"]
    stored = s3_server.root / bucket / "models" / "search" / "v3"
    assert {p.name: p.read_bytes() for p in stored.iterdir()} == files
