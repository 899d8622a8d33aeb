"""The real server process lets it crash when its model can never load, and waits when it is not there yet.

``python -m mlvisor.server`` exactly as a pod runs it: a model that cannot be loaded ends the
process with exit code 4 and the reason in the termination message file (what the kubelet
copies into ``terminated.message``), within seconds; a model directory that does not exist yet
keeps the process live and retrying until it appears; a SIGTERM before the model is ready (a
startupProbe giving up) ends it with 143 and what it was waiting for in the termination message.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from helpers.artifacts import build_artifact

pytestmark = pytest.mark.slow

DEADLINE = float(os.environ.get("MLVISOR_E2E_DEADLINE", "90"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(model_dir: Path, tmp_path: Path) -> tuple[subprocess.Popen, Path, Path, int]:
    term = tmp_path / "termination-log"
    term.write_text("")  # the kubelet creates it
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    env.update(MLVISOR_MODEL_DIR=str(model_dir), MLVISOR_HOST="127.0.0.1", MLVISOR_PORT=str(port),
               MLVISOR_GRPC_PORT="0", MLVISOR_TERMINATION_MESSAGE_PATH=str(term))  # no fixed port: others may hold 8081
    log = tmp_path / "server.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlvisor.server"], env=env, stdout=out, stderr=subprocess.STDOUT)
    return proc, term, log, port


def _get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()
    except OSError as e:
        return 0, str(e)


@pytest.mark.parametrize("damage", ["truncated", "untrusted_type"])
def test_a_model_that_cannot_load_exits_4_with_the_reason_in_the_termination_message(tmp_path: Path, damage: str) -> None:
    if damage == "truncated":
        path, _, _ = build_artifact(tmp_path / "models")
        data = (path / "model.skops").read_bytes()
        (path / "model.skops").write_bytes(data[: len(data) // 2])
        words = "corrupted or truncated"
    else:  # a real skops file of a class outside the allowlist, with a matching checksum
        import hashlib
        import json

        import skops.io as sio
        from sklearn.cluster import KMeans
        from sklearn.datasets import load_iris

        path, _, _ = build_artifact(tmp_path / "models")
        blob = sio.dumps(KMeans(n_clusters=3, n_init=1, random_state=0).fit(load_iris().data))
        (path / "model.skops").write_bytes(blob)
        meta = json.loads((path / "metadata.json").read_text())
        meta["model_sha256"] = hashlib.sha256(blob).hexdigest()
        (path / "metadata.json").write_text(json.dumps(meta))
        words = "outside the estimator allowlist"
    for _ in range(3):  # another process may grab the free port first: exit 3, then try another
        proc, term, log, _port = _start(path, tmp_path)
        try:
            code = proc.wait(DEADLINE)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"the server did not exit:\n{log.read_text()}")
        if not (code == 3 and "address already in use" in log.read_text()):
            break
    assert code == 4, log.read_text()
    message = term.read_text()
    assert message.startswith("cannot load the model: ") and words in message and str(path) in message, message
    assert "exiting with code 4" in log.read_text()


def test_a_model_directory_that_is_not_there_yet_is_waited_for(tmp_path: Path) -> None:
    target = tmp_path / "models" / "v1"
    proc, term, log, port = _start(target, tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE
        while True:
            code, text = _get(port, "/v2/health/ready")
            if code == 503 and "waiting for the model" in text:
                break
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, f"never said it waits: {code} {text}\n{log.read_text()}"
            time.sleep(0.05)
        assert _get(port, "/v2/health/live")[0] == 200
        build_artifact(tmp_path / "models")
        while _get(port, "/v2/health/ready")[0] != 200:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        assert term.read_text() == ""  # nothing went wrong: no termination message
    finally:
        proc.terminate()
        proc.wait(30)


def test_a_sigterm_before_the_model_is_ready_leaves_what_it_waited_for_as_the_termination_message(tmp_path: Path) -> None:
    """What the kubelet does when the startupProbe gives up: SIGTERM. The server says why it was not ready."""
    import signal

    target = tmp_path / "models" / "v1"
    proc, term, log, port = _start(target, tmp_path)
    try:
        deadline = time.monotonic() + DEADLINE
        while "waiting for the model" not in _get(port, "/v2/health/ready")[1]:
            assert proc.poll() is None, log.read_text()
            assert time.monotonic() < deadline, log.read_text()
            time.sleep(0.05)
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(DEADLINE)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert code == -signal.SIGTERM, (code, log.read_text())  # 143 as a container runtime reports it
    from mlvisor.api.exits import TerminationKind, TerminationMessage

    assert term.read_text() == f"not ready: waiting for the model: artifact directory {target} does not exist"
    assert TerminationMessage.parse(term.read_text()).kind is TerminationKind.NOT_READY
