"""Fixtures of the integration tier: an API emulator on 127.0.0.1 and the real operator process.

The operator runs exactly as users run it: ``mlvisor operator`` in its own process (kopf, the
``kubernetes`` client, real HTTP and watch streams), pointed at the emulator by a kubeconfig
file in ``$KUBECONFIG``. A subprocess rather than kopf's in-process ``KopfRunner`` because
the scenarios need what only a process gives: a ``kill -9`` in the middle of a job, the
liveness and metrics endpoints, the JSON logs, and no ``$KUBECONFIG``-at-import surprises
(the variable is set before the child's interpreter starts).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from emulator import emulator as emu
from emulator.world import World, urllib_transport

CRDS = emu.crd_resources(
    "mlvisor.dev", "v1alpha1", {"TrainingJob": "trainingjobs", "ModelServer": "modelservers", "ModelPipeline": "modelpipelines"}
)


def _free_ports(n: int) -> list[int]:
    """n distinct free ports (all held open while choosing, so the kernel cannot repeat one)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class _PortTaken(RuntimeError):
    """The operator could not bind a port chosen for it (another process took it first)."""


class Operator:
    """One ``mlvisor operator`` process; ``kill()`` is SIGKILL, ``start()`` starts a fresh one."""

    def __init__(self, kubeconfig: Path, log_dir: Path) -> None:
        self.kubeconfig = kubeconfig
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.generation = 0
        self.liveness_port = self.metrics_port = 0

    def start(self) -> None:
        # The ports are chosen free, then bound by the operator a moment later; on a busy machine
        # another process may take one in between (an outgoing connection's ephemeral port). That
        # is the harness's race, not the operator's: start again on other ports, at most 3 times.
        for attempt in range(3):
            try:
                self._start_once()
                return
            except _PortTaken:
                if attempt == 2:
                    raise

    def _start_once(self) -> None:
        self.generation += 1
        self.liveness_port, self.metrics_port = _free_ports(2)
        env = dict(
            os.environ,
            KUBECONFIG=str(self.kubeconfig),
            MLVISOR_IMAGE="mlvisor:test",
            # The emulator ignores ?timeoutSeconds; short client-side cuts keep a stuck watch short.
            MLVISOR_WATCH_SERVER_TIMEOUT="60",
            MLVISOR_WATCH_CLIENT_TIMEOUT="90",
            MLVISOR_WATCH_CONNECT_TIMEOUT="5",
            MLVISOR_REQUEST_TIMEOUT="10",
        )
        env.pop("KUBERNETES_SERVICE_HOST", None)
        self.log = self.log_dir / f"operator-{self.generation}.log"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "mlvisor.operator.cli", "operator",
                 f"--liveness-port={self.liveness_port}", f"--metrics-port={self.metrics_port}", "--log-format=json"],
                env=env,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                if "address already in use" in self.log.read_text(errors="replace").lower():
                    raise _PortTaken(self.log.read_text(errors="replace"))
                raise RuntimeError(f"the operator exited with {self.proc.returncode}:\n{self.logs()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.liveness_port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the operator did not become live in 30 s:\n{self.logs()}")
            time.sleep(0.05)

    def kill(self) -> None:
        """SIGKILL: no cleanup, no goodbye, like an OOM-killed or evicted operator pod."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def stop(self) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGINT)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
            return None

    def logs(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.log_dir.glob("operator-*.log")))

    def metrics(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=5) as r:
            return r.read().decode()

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
        total = 0.0
        for line in self.metrics().splitlines():
            if not line.startswith(name):
                continue
            head, _, value = line.rpartition(" ")
            metric, _, label_text = head.partition("{")
            if metric != name:
                continue
            if all(f'{k}="{v}"' in label_text for k, v in labels.items()):
                total += float(value)
        return total


@pytest.fixture
def cluster() -> Iterator[emu.Running]:
    running = emu.start_in_thread(CRDS, namespaces=("default",))
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def kubeconfig(cluster: emu.Running, tmp_path: Path) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{cluster.url}'}}}}]\n"
        "users: [{name: test, user: {token: test-token}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: test, namespace: default}}]\n"
    )
    return path


@pytest.fixture
def world(cluster: emu.Running) -> World:
    return World(urllib_transport(cluster.url))


@pytest.fixture
def operator(kubeconfig: Path, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Operator]:
    op = Operator(kubeconfig, tmp_path)
    op.start()
    try:
        yield op
    finally:
        code = op.stop()
        report = getattr(request.node, "rep_call", None)
        if report is not None and report.failed:
            sys.stderr.write(f"\n----- operator logs -----\n{op.logs()[-20000:]}\n")
        assert code in (0, None), f"the operator exited with {code}:\n{op.logs()[-5000:]}"


def pytest_configure(config: pytest.Config) -> None:
    # kmock 0.8 loads its bundled resources with a deprecated importlib call.
    config.addinivalue_line("filterwarnings", "ignore:read_binary is deprecated:DeprecationWarning")


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    setattr(item, f"rep_{report.when}", report)
