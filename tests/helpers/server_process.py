"""The real model server as a process of the test's: ``python -m mlvisor.server`` on free ports.

One helper for the tests that drive the server over real sockets (tests/local/test_server_*.py):
start it on a model folder, wait until /v2/health/ready answers 200 (its log in the failure if it
never does), and on the way out ask a server that no longer answers for every thread's stack
(SIGUSR1: the server prints them to its log) before stopping it, so a hang fails with the place
it hangs, and a Traceback in its log fails the test that caused it.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class ServerProcess:
    proc: subprocess.Popen[bytes]
    port: int
    grpc_port: int
    log: Path

    @property
    def url(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def grpc_url(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def answers(self) -> bool:
        """Whether /v2/health/live answers 200 within 10 s."""
        try:
            c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
            c.request("GET", "/v2/health/live")
            return c.getresponse().status == 200
        except OSError:
            return False


@contextmanager
def server_process(model_dir: Path, log: Path, env: Mapping[str, str] | None = None,
                   ready_timeout: float = 60.0) -> Iterator[ServerProcess]:
    """The server on ``model_dir`` (``env``: more MLVISOR_* settings), ready; stopped and checked after."""
    port, grpc_port = free_port(), free_port()
    full_env = dict(os.environ, MLVISOR_MODEL_DIR=str(model_dir), MLVISOR_HOST="127.0.0.1", MLVISOR_PORT=str(port),
                    MLVISOR_GRPC_PORT=str(grpc_port), **(env or {}))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "mlvisor.server"], env=full_env, stdout=out,
                                stderr=subprocess.STDOUT)
    server = ServerProcess(proc, port, grpc_port, log)
    deadline = time.monotonic() + ready_timeout
    try:
        while True:
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=1)
                conn.request("GET", "/v2/health/ready")
                if conn.getresponse().status == 200:
                    break
            except OSError:
                pass
            if proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"server did not become ready:\n{log.read_text()}")
            time.sleep(0.05)
        yield server
    finally:
        stuck = proc.poll() is None and not server.answers()
        if stuck:  # where it is stuck, for the failure below (SIGUSR1: the server prints its stacks)
            proc.send_signal(signal.SIGUSR1)
            time.sleep(2)
        proc.terminate()
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    assert not stuck, f"the server stopped answering; its stacks and log:\n{log.read_text()[-12000:]}"
    assert "Traceback" not in log.read_text(), log.read_text()[-3000:]
