"""`mlvisor logs`: the right pod's log from a `mlvisor run` data directory."""

from __future__ import annotations

from pathlib import Path

import pytest

from mlvisor.operator.cli import main


def _write(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    job = tmp_path / "logs" / "default" / "trainingjob-iris"
    _write(job / "iris-worker-0-1.log", "--- t start: trainer\nattempt 1 of worker 0: crash\n")
    _write(job / "iris-worker-0-2.log", "--- t start: trainer\nattempt 2 of worker 0: ok\n")
    _write(job / "iris-worker-1-1.log", "--- t start: trainer\nworker 1\n")
    _write(job / "iris-select-1.log", "--- t start: trainer\nselect\n")
    server = tmp_path / "logs" / "default" / "modelserver-iris"
    _write(server / "iris-0123456789-0-abcde.log",
           "--- t1 start: server\nfirst run\nKilled\n--- t2 start: server\nsecond run\n")
    _write(server / "iris-0123456789-1-fffff.log", "--- t1 start: server\nreplica 1\n")
    return tmp_path


@pytest.mark.parametrize(
    "args,shown",
    [
        (["tj/iris"], "attempt 2 of worker 0: ok"),
        (["tj/iris", "--previous"], "attempt 1 of worker 0: crash"),
        (["trainingjob/iris", "--worker", "1"], "worker 1"),
        (["TrainingJob/default/iris", "--worker", "select"], "select"),
        (["ms/iris"], "second run"),
        (["ms/iris", "--previous"], "first run\nKilled"),
        (["ms/iris", "--worker", "1"], "replica 1"),
    ],
)
def test_logs_finds_the_pod_and_the_run(data_dir: Path, args: list[str], shown: str, capsys) -> None:
    assert main(["logs", *args, "--data-dir", str(data_dir)]) == 0
    out, err = capsys.readouterr()
    assert shown in out and err.startswith("==> ") and err.strip().endswith(".log <==")
    if args[0] == "ms/iris" and "--previous" not in args and "--worker" not in args:
        assert "first run" not in out  # only the current run


@pytest.mark.parametrize(
    "args,words",
    [
        (["tj/nope"], "no logs of TrainingJob default/nope under"),
        (["tj/iris", "--worker", "1", "--previous"], "has had one attempt only"),
        (["ms/iris", "--worker", "1", "--previous"], "has not been restarted"),
        (["ms/iris", "--worker", "7"], "no log of replica 7"),
        (["pod/iris"], "kind must be tj (TrainingJob) or ms (ModelServer)"),
    ],
)
def test_logs_says_what_it_looked_for(data_dir: Path, args: list[str], words: str, capsys) -> None:
    assert main(["logs", *args, "--data-dir", str(data_dir)]) == 1
    assert words in capsys.readouterr().err


def test_an_empty_current_run_shows_the_failed_one_and_says_so(tmp_path: Path, capsys) -> None:
    """A replica the kubelet just restarted, a worker whose new attempt just started: nothing to read yet."""
    server = tmp_path / "logs" / "default" / "modelserver-iris"
    _write(server / "iris-0123456789-0-abcde.log",
           "--- 2026-12-04T16:09:15 start: server\nfirst run\n"
           "--- 2026-12-04T16:09:21 start: server\nWARNING waiting for the model: artifact directory /m/v1 does not exist\n"
           "--- 2026-12-04T16:09:28 start: server\n")
    assert main(["logs", "ms/iris", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert out == "--- 2026-12-04T16:09:21 start: server\nWARNING waiting for the model: artifact directory /m/v1 does not exist\n"
    assert ("mlvisor logs: the current run of replica 0 (started 2026-12-04T16:09:28) has written nothing yet; "
            "showing the run before it (started 2026-12-04T16:09:21)") in err
    assert main(["logs", "ms/iris", "--previous", "--data-dir", str(tmp_path)]) == 0
    assert "waiting for the model" in capsys.readouterr().out  # --previous means the run before the newest, as ever

    job = tmp_path / "logs" / "default" / "trainingjob-iris"
    _write(job / "iris-worker-0-1.log", "--- t start: trainer\nfailed attempt\n")
    _write(job / "iris-worker-0-2.log", "--- t start: trainer\n")
    assert main(["logs", "tj/iris", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "failed attempt" in out
    assert "mlvisor logs: attempt 2 of worker 0 has written nothing yet; showing attempt 1, before it" in err
    _write(job / "iris-worker-0-2.log", "--- t start: trainer\nsecond attempt\n")
    assert main(["logs", "tj/iris", "--data-dir", str(tmp_path)]) == 0
    out, err = capsys.readouterr()
    assert "second attempt" in out and "failed attempt" not in out and "mlvisor logs:" not in err
