"""The local runtime's building blocks, one at a time: pod -> process mapping, process groups, the Service.

Fast (no sklearn in the children), but real: real subprocesses, signals and sockets.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

import pytest

from mlvisor import api
from mlvisor.operator import builders
from mlvisor.operator.local.processes import (
    LocalProcess,
    ManifestError,
    exit_status,
    process_spec_for_pod,
    rewrite_path,
)
from mlvisor.operator.local.service import LocalService
from mlvisor.operator.plan import ModelRef, OperatorConfig


def _job() -> api.TrainingJob:
    return api.TrainingJob.model_validate({
        "metadata": {"name": "iris"},
        "spec": {"dataset": {"csv": {"path": "train.csv", "target": "y", "volumeClaim": "datasets"}},
                 "estimator": {"class": "sklearn.tree.DecisionTreeClassifier"}},
    })


def test_worker_pod_maps_volumes_to_folders_and_rewrites_env_paths(tmp_path: Path) -> None:
    pod = builders.build_worker_pod(_job(), 0, 1, "v1", OperatorConfig())
    spec = process_spec_for_pod(pod, tmp_path / "data", tmp_path / "scratch", python="/venv/bin/python",
                                parent_env={"PATH": "/bin", "MLVISOR_SPEC": "leaked"})
    assert spec.argv[:3] == ("/venv/bin/python", "-m", "mlvisor.trainer")
    assert spec.env["MLVISOR_OUTPUT_DIR"] == str(tmp_path / "data/volumes/mlvisor-models/default/iris")
    assert spec.env["MLVISOR_DATA_DIR"] == str(tmp_path / "data/volumes/datasets")
    assert spec.env["TMPDIR"] == str(tmp_path / "scratch/volumes/tmp")
    assert spec.env["PATH"] == "/bin"
    assert spec.env["MLVISOR_SPEC"] != "leaked"  # the parent's MLVISOR_* never leak into a pod
    assert (tmp_path / "data/volumes/mlvisor-models").is_dir()


def test_server_pod_model_dir_maps_to_the_claim_folder_and_file_uris_stay_put(tmp_path: Path) -> None:
    server = api.ModelServer.model_validate({"metadata": {"name": "iris"},
                                             "spec": {"model": {"trainingJobRef": {"name": "iris"}}}})
    dep = builders.build_server_deployment(server, ModelRef("pvc://mlvisor-models/default/iris/v1/", "v1"),
                                           OperatorConfig())
    pod = {"metadata": {"name": "iris-abc"}, **{"spec": dep["spec"]["template"]["spec"]}}
    spec = process_spec_for_pod(pod, tmp_path, tmp_path / "s", env_overrides={"MLVISOR_PORT": "1234"})
    assert spec.env["MLVISOR_MODEL_DIR"] == str(tmp_path / "volumes/mlvisor-models/default/iris/v1")
    assert spec.env["MLVISOR_PORT"] == "1234"

    dep = builders.build_server_deployment(server, ModelRef("file:///tmp/models/iris/v1/", "v1"), OperatorConfig())
    pod = {"metadata": {"name": "iris-abc"}, "spec": dep["spec"]["template"]["spec"]}
    spec = process_spec_for_pod(pod, tmp_path, tmp_path / "s")
    assert spec.env["MLVISOR_MODEL_DIR"] == "/tmp/models/iris/v1"


def test_rewrite_path_matches_whole_path_segments_only() -> None:
    mounts = {"/models": Path("/d/m"), "/models/extra": Path("/d/x")}
    assert rewrite_path("/models", mounts) == "/d/m"
    assert rewrite_path("/models/a/b", mounts) == "/d/m/a/b"
    assert rewrite_path("/models/extra/c", mounts) == "/d/x/c"
    assert rewrite_path("/modelsX/a", mounts) == "/modelsX/a"
    assert rewrite_path("relative", mounts) == "relative"


def test_unsupported_volume_is_refused_with_the_field_named(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"command": ["true"]}],
                                              "volumes": [{"name": "c", "configMap": {"name": "x"}}]}}
    with pytest.raises(ManifestError, match=r"spec.volumes\[0\] \(c\).*configMap"):
        process_spec_for_pod(pod, tmp_path, tmp_path)


def test_exit_status_reports_signals_like_a_container_runtime() -> None:
    assert exit_status(0) == (0, "Completed")
    assert exit_status(3) == (3, "Error")
    assert exit_status(-signal.SIGKILL) == (137, "Error")
    assert exit_status(-signal.SIGTERM) == (143, "Error")


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


async def test_stop_kills_the_whole_process_group_even_a_child_that_ignores_sigterm(tmp_path: Path) -> None:
    pidfile = tmp_path / "grandchild"
    # The container starts a grandchild that ignores SIGTERM, then waits.
    script = (
        "import subprocess, sys, time\n"
        f"p = subprocess.Popen([sys.executable, '-c', 'import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(60)'])\n"
        f"open({str(pidfile)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"command": ["python", "-c", script]}]}}
    spec = process_spec_for_pod(pod, tmp_path, tmp_path / "s")
    proc = LocalProcess("p", spec, tmp_path / "p.log")
    await proc.start()
    for _ in range(200):
        if pidfile.exists() and pidfile.read_text():
            break
        await asyncio.sleep(0.02)
    grandchild = int(pidfile.read_text())
    assert _alive(proc.pid) and _alive(grandchild)
    await proc.stop(grace=0.5)
    assert proc.termination is not None and proc.termination.exit_code == 143  # SIGTERM
    for _ in range(100):
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.02)
    assert not _alive(grandchild)


async def test_missing_program_terminates_like_a_container_that_cannot_start(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"command": ["/nonexistent/program"]}]}}
    exited = asyncio.Event()
    proc = LocalProcess("p", process_spec_for_pod(pod, tmp_path, tmp_path / "s"), tmp_path / "p.log",
                        on_exit=lambda _p: exited.set())
    await proc.start()
    await asyncio.wait_for(exited.wait(), 5)
    assert proc.termination is not None and proc.termination.exit_code == 127


async def test_service_answers_503_without_ready_replicas_and_forwards_when_one_is_ready() -> None:
    async def backend(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readuntil(b"\r\n\r\n")
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\nconnection: close\r\n\r\nok")
        await writer.drain()
        writer.close()

    upstream = await asyncio.start_server(backend, "127.0.0.1", 0)
    ports: list[int] = []
    svc = LocalService("s", lambda: ports)
    await svc.start()

    async def get() -> bytes:
        reader, writer = await asyncio.open_connection("127.0.0.1", svc.port)
        writer.write(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)
        writer.close()
        return data

    try:
        assert (await get()).startswith(b"HTTP/1.1 503")
        ports.append(upstream.sockets[0].getsockname()[1])
        answer = await get()
        assert answer.startswith(b"HTTP/1.1 200") and answer.endswith(b"ok")
    finally:
        await svc.close()
        upstream.close()
        await upstream.wait_closed()


def test_python_in_the_children_is_this_interpreter(tmp_path: Path) -> None:
    pod = {"metadata": {"name": "p"}, "spec": {"containers": [{"command": ["python3"], "args": ["-V"]}]}}
    assert process_spec_for_pod(pod, tmp_path, tmp_path / "s").argv[0] == sys.executable
    assert os.path.isabs(sys.executable)
