"""Fault injector for the e2e tests: SIGKILL the first trainer run just before its artifact's rename.

Used as ``mlvisor run --wrap worker="python kill_at_write.py --state FILE --"``. The first
invocation runs the real trainer in this process with one change: the moment the complete
temporary version directory would be renamed into place, the process SIGKILLs itself (exit
137, as an OOM kill reports), leaving a fully written ``.<version>.tmp-*`` directory behind.
Later invocations exec the real command unchanged.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True, help="file counting invocations")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(args.state, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = len(f.read().splitlines()) + 1
        f.write(f"{os.getpid()}\n")
    if count > 1 or command[1:3] != ["-m", "mlvisor.trainer"]:
        os.execvp(command[0], command)
    import mlvisor.trainer.artifact as artifact

    def killed_before_rename(src: str, dst: str) -> None:
        os.kill(os.getpid(), signal.SIGKILL)

    artifact.os.rename = killed_before_rename  # type: ignore[assignment]
    from mlvisor.trainer.entry import main as trainer_main

    sys.exit(trainer_main(command[3:]))


if __name__ == "__main__":
    main()
