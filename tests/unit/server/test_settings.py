"""The flag/environment contract of ``python -m mlvisor.server`` / ``mlvisor serve``."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest

from mlvisor.server import cli
from mlvisor.server.settings import SettingsError, resolve


def _flags(argv: list[str]) -> dict:
    p = argparse.ArgumentParser()
    cli.add_arguments(p)
    ns = p.parse_args(argv)
    return {k: getattr(ns, k) for k in ("model_dir", "model_name", "host", "port", "max_batch_size",
                                        "max_latency_ms", "max_body_bytes", "max_rows", "log_level")}


def test_defaults() -> None:
    s = resolve(_flags(["--model-dir", "/m"]), environ={})
    assert s.model_dir == Path("/m") and s.model_name is None
    assert (s.host, s.port, s.max_batch_size, s.max_latency_ms) == ("0.0.0.0", 8080, 64, 5.0)
    assert (s.max_body_bytes, s.max_rows, s.log_level) == (8 * 1024 * 1024, 10_000, "info")


def test_environment_then_flags_win() -> None:
    env = {
        "MLVISOR_MODEL_DIR": "/env", "MLVISOR_MODEL_NAME": "envname", "MLVISOR_HOST": "127.0.0.1",
        "MLVISOR_PORT": "9000", "MLVISOR_MAX_BATCH_SIZE": "8", "MLVISOR_MAX_LATENCY_MS": "2.5",
        "MLVISOR_MAX_BODY_BYTES": "1000", "MLVISOR_MAX_ROWS": "10", "MLVISOR_LOG_LEVEL": "debug",
    }
    s = resolve(_flags([]), environ=env)
    assert (s.model_dir, s.model_name, s.host, s.port) == (Path("/env"), "envname", "127.0.0.1", 9000)
    assert (s.max_batch_size, s.max_latency_ms, s.max_body_bytes, s.max_rows, s.log_level) == (8, 2.5, 1000, 10, "debug")
    s = resolve(_flags(["--model-dir", "/flag", "--port", "9100", "--max-batch-size", "1"]), environ=env)
    assert (s.model_dir, s.port, s.max_batch_size, s.model_name) == (Path("/flag"), 9100, 1, "envname")


@pytest.mark.parametrize(
    "argv,env,message",
    [
        ([], {}, "no model directory"),
        (["--model-dir", "/m"], {"MLVISOR_PORT": "http"}, "MLVISOR_PORT='http' is not a valid int"),
        (["--model-dir", "/m", "--port", "0"], {}, "port must be in 1..65535"),
        (["--model-dir", "/m", "--max-batch-size", "0"], {}, "max batch size must be >= 1"),
        (["--model-dir", "/m", "--log-level", "loud"], {}, "log level must be one of"),
    ],
)
def test_bad_settings(argv: list[str], env: dict, message: str) -> None:
    with pytest.raises(SettingsError, match=message):
        resolve(_flags(argv), environ=env)


def test_serve_subcommand_registers_and_reports_bad_settings(capsys, monkeypatch) -> None:
    monkeypatch.delenv("MLVISOR_MODEL_DIR", raising=False)
    parser = argparse.ArgumentParser(prog="mlvisor")
    cli.register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["serve", "--port", "8081"])
    assert args.func is cli.serve
    assert args.func(args) == 2
    assert "no model directory" in capsys.readouterr().err
