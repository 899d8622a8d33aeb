"""Fault injector for the e2e tests: crash the first N runs of a container, then run it for real.

Used as ``mlvisor run --wrap worker="python crash_first.py --state FILE --times N --"``: the
local runtime puts this in front of the pod's own command, exactly like a user's wrapper
(``nice``, ``strace``). Every invocation is counted in FILE (under a lock, as workers may run
at once), one line each: the pid and the system-wide monotonic clock at the start, so a
test can tell how far apart the restarts were. Invocations 1..N crash the way a real worker dies: SIGKILL to itself (exit 137,
like an OOM kill) or a plain exit code. Later invocations exec the real trainer unchanged,
so the production code is never told it is being tested.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import signal
import sys
import time


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--state", required=True, help="file counting invocations")
    p.add_argument("--times", type=int, required=True, help="crash this many first invocations (-1: always)")
    p.add_argument("--exit-code", type=int, default=None, help="exit with this code instead of SIGKILL")
    p.add_argument("command", nargs=argparse.REMAINDER)
    args = p.parse_args()
    command = args.command[1:] if args.command[:1] == ["--"] else args.command
    with open(args.state, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        f.seek(0)
        count = len(f.read().splitlines()) + 1
        f.write(f"{os.getpid()} {time.monotonic():.6f}\n")
        f.flush()
    if args.times < 0 or count <= args.times:
        if args.exit_code is not None:
            sys.exit(args.exit_code)
        os.kill(os.getpid(), signal.SIGKILL)
    os.execvp(command[0], command)


if __name__ == "__main__":
    main()
