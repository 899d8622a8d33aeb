"""Shared fixtures of the end-to-end tier: a real `mlvisor run` process, watched through its files.

Each test starts ``python -m mlvisor.operator.cli run ...`` as a separate process (its own
session, so a test can Ctrl-C it like a terminal would), reads the ``--status-file`` and
``--pid-file`` it keeps, and polls with deadlines (no sleeps). After every test, whatever
happened, no process the run started may still be alive: the teardown checks it and
kills leftovers so that one failing test cannot poison the next.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from helpers.paths import REPO

DATA = Path(__file__).parent / "data"
SAMPLES = REPO / "manifests" / "samples"

#: Generous upper bounds for a loaded 2-core machine; polls end as soon as the state is reached.
DEADLINE = float(os.environ.get("MLVISOR_E2E_DEADLINE", "90"))


def _boot_time() -> float:
    with open("/proc/stat") as f:
        return float(next(line.split()[1] for line in f if line.startswith("btime ")))


_TICKS = os.sysconf("SC_CLK_TCK")


def _proc(pid: int) -> tuple[str, int, int, float] | None:
    """(state, process group, session, start time as epoch seconds) of a live pid, else None."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[2]), int(fields[3]), _boot_time() + int(fields[19]) / _TICKS


def _ours(started: dict[int, float]) -> list[int]:
    """Live processes the run started, or that they started (same process group and session).

    A pid number is never reused while it is still some live process's group or session id,
    so group members whose leader is gone are ours for sure; a live leader is ours only if it
    started when the run said it did. A pid reused by someone else since is never mistaken for
    ours, so the cleanup can never kill another user's process.
    """
    table: dict[int, tuple[str, int, int, float]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (info := _proc(int(entry))) is not None and info[0] != "Z":
            table[int(entry)] = info
    ours_groups = {
        pgid for pgid, when in started.items()
        if pgid not in table or abs(table[pgid][3] - when) <= 2.0
    }
    return sorted(pid for pid, (_s, pgid, sid, _t) in table.items() if pgid in ours_groups and sid == pgid)


class MlvisorRun:
    """One `mlvisor run` process and its files."""

    def __init__(self, workdir: Path, files: list[Path], args: list[str]) -> None:
        self.workdir = workdir
        self.status_file = workdir / "status.json"
        self.pid_file = workdir / "pids.json"
        self.data_dir = workdir / "data"
        self.output = workdir / "mlvisor-run.log"
        self.cmd = [
            sys.executable, "-m", "mlvisor.operator.cli", "run", *map(str, files),
            "--data-dir", str(self.data_dir), "--status-file", str(self.status_file),
            "--pid-file", str(self.pid_file), *args,
        ]
        self._out = open(self.output, "wb")
        self.proc = subprocess.Popen(self.cmd, stdout=self._out, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL, cwd=workdir, start_new_session=True)

    # reading ------------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        try:
            return json.loads(self.status_file.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    def pids(self) -> list[dict[str, Any]]:
        try:
            return json.loads(self.pid_file.read_text())["processes"]
        except (FileNotFoundError, ValueError, KeyError):
            return []

    def log(self) -> str:
        self._out.flush()
        return self.output.read_text(errors="replace")

    def child_logs(self) -> str:
        logs = sorted((self.data_dir / "logs").rglob("*.log"))
        return "\n".join(f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in logs)

    def explain(self) -> str:
        return (f"\n--- mlvisor run output\n{self.log()[-6000:]}\n--- status\n"
                f"{json.dumps(self.status(), indent=1)[-6000:]}\n{self.child_logs()}")

    # waiting ------------------------------------------------------------------------

    def wait_for(self, what: str, predicate: Callable[[dict[str, Any]], Any],
                 timeout: float = DEADLINE) -> Any:
        """Poll the status file until predicate(status) is truthy; return its value."""
        deadline = time.monotonic() + timeout
        while True:
            status = self.status()
            try:
                value = predicate(status)
            except (KeyError, TypeError, IndexError):
                value = None
            if value:
                return value
            if self.proc.poll() is not None:
                pytest.fail(f"mlvisor run exited ({self.proc.returncode}) before: {what}{self.explain()}")
            if time.monotonic() > deadline:
                pytest.fail(f"timed out after {timeout:g}s waiting for: {what}{self.explain()}")
            time.sleep(0.05)

    def wait_exit(self, timeout: float = DEADLINE) -> int:
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            pytest.fail(f"mlvisor run did not exit within {timeout:g}s{self.explain()}")

    def interrupt(self) -> int:
        """Ctrl-C: SIGINT to mlvisor (only; its children live in their own sessions)."""
        self.proc.send_signal(signal.SIGINT)
        return self.wait_exit(30)

    # cleanliness --------------------------------------------------------------------

    def leftovers(self) -> list[int]:
        started = {p["pid"]: p.get("startedAt") or 0.0 for p in self.pids() if p.get("pid")}
        return _ours(started)

    def assert_no_orphans(self) -> None:
        assert self.pids(), "the pid file lists no process at all"
        left = self.leftovers()
        assert not left, f"processes left running after mlvisor exited: {left}{self.explain()}"

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for pid in self.leftovers():
            try:
                os.kill(pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
        self._out.close()


@pytest.fixture
def mlvisor_run(tmp_path: Path) -> Iterator[Callable[..., MlvisorRun]]:
    """Start `mlvisor run FILES ARGS...`; every run is stopped and checked for leaks afterwards."""
    runs: list[MlvisorRun] = []

    def start(*files: Path, args: tuple[str, ...] | list[str] = ()) -> MlvisorRun:
        run = MlvisorRun(tmp_path, list(files), list(args))
        runs.append(run)
        return run

    yield start
    leaks = []
    for run in runs:
        run.close()
        leaks.extend(run.leftovers())
    assert not leaks, f"processes leaked by mlvisor run: {leaks}"


def _crash_wrapper(state: Path, times: int, exit_code: int | None = None) -> str:
    cmd = f"{sys.executable} {DATA / 'crash_first.py'} --state {state} --times {times}"
    if exit_code is not None:
        cmd += f" --exit-code {exit_code}"
    return cmd + " --"


@pytest.fixture
def crash_wrapper() -> Callable[..., str]:
    """crash_wrapper(state, times, exit_code=None): a --wrap command that crashes the first
    `times` runs (-1: every run) by SIGKILL or exit code, then runs the real command
    (see data/crash_first.py)."""
    return _crash_wrapper


@pytest.fixture
def samples() -> Path:
    """manifests/samples/ of the repository."""
    return SAMPLES


@pytest.fixture(scope="session")
def iris_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A good iris artifact trained once by the real trainer: <root>/good/v1/."""
    root = tmp_path_factory.mktemp("artifacts")
    spec = {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier",
                      "params": {"n_estimators": 10, "random_state": 0}},
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLVISOR_")}
    env.update(MLVISOR_SPEC=json.dumps(spec), MLVISOR_OUTPUT_DIR=str(root / "good"),
               MLVISOR_MODEL_NAME="iris", MLVISOR_MODEL_VERSION="v1")
    done = subprocess.run([sys.executable, "-m", "mlvisor.trainer"], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (root / "good" / "v1" / "metadata.json").is_file()
    return root / "good" / "v1"


@pytest.fixture
def broken_artifact(iris_artifact: Path, tmp_path: Path) -> Path:
    """A copy of the good artifact as version v2 whose model file is truncated (checksum fails)."""
    broken = tmp_path / "models" / "broken" / "v2"
    shutil.copytree(iris_artifact, broken)
    model = broken / "model.skops"
    model.write_bytes(model.read_bytes()[: model.stat().st_size // 2])
    return broken


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A real S3 server (versitygw, posix backend) on 127.0.0.1 for the session (tests/objectstore)."""
    from objectstore.server import S3Server

    with S3Server(tmp_path_factory.mktemp("s3") / "root") as server:
        yield server
