"""``python -m objectstore build`` (tests/ on PYTHONPATH): build, or find, the test S3 server; prints its path."""

from __future__ import annotations

import argparse
import sys

from objectstore import build


def main() -> int:
    p = argparse.ArgumentParser(prog="python -m objectstore", description=__doc__)
    sub = p.add_subparsers(dest="verb", required=True)
    sub.add_parser("build", help="build (or find) versitygw; prints its path")
    p.parse_args()
    try:
        print(build.ensure_binary())
    except build.BuildError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
