"""Build the test suite's S3 server from its pinned Go module, once per machine.

``go build`` of ``github.com/versity/versitygw/cmd/versitygw`` (pinned in go.mod, go.sum and
tools.go beside this file) goes to ``~/.cache/mlvisor/objectstore/<key>/versitygw``, the key
naming the version and hashing those files, so an unchanged pin is never rebuilt (about 6
minutes on 2 cores with an empty Go module cache, under a minute with a warm one).
``MLVISOR_OBJECTSTORE_CACHE`` overrides the folder.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TextIO

from helpers.gobuild import BuildError, cache_root, ensure_built, source_hash

MODULE_DIR = Path(__file__).resolve().parent
VERSITYGW_VERSION = "v1.8.0"
PACKAGE = "github.com/versity/versitygw/cmd/versitygw"
BINARY = "versitygw"
__all__ = ["BuildError", "binary_path", "ensure_binary"]


def binary_path() -> Path:
    key = source_hash(MODULE_DIR, ("go.mod", "go.sum", "tools.go"))
    return cache_root("MLVISOR_OBJECTSTORE_CACHE", "objectstore") / f"versitygw-{VERSITYGW_VERSION}-{key}" / BINARY


def ensure_binary(log: TextIO = sys.stderr) -> Path:
    """The cached binary, built first if missing (once, whoever asks at once). Raises BuildError when go fails."""
    return ensure_built(binary_path(), MODULE_DIR, PACKAGE, "-s -w", log=log,
                        what=f"the test S3 server (versitygw {VERSITYGW_VERSION})",
                        missing_go="go is not on PATH: the test S3 server (versitygw) is built from its Go module")
