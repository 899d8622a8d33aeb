"""Summarise a py-spy collapsed-stack profile: where the samples are, by own frame and by package.

Usage: .venv/bin/python bench/profile_top.py bench/results/operator-1000-after.profile.txt [--top 25]
"""

from __future__ import annotations

import sys

# This folder holds operator.py, which would shadow the standard library's `operator`.
if sys.path and sys.path[0] == __file__.rpartition("/")[0]:
    del sys.path[0]

import argparse
import re
from collections import Counter

#: Leaf functions that wait (for a socket, a lock, the selector) rather than compute.
WAITING = frozenset({"select", "poll", "epoll_wait", "wait", "_wait_for_tstate_lock", "read", "recv_into", "recv",
                     "accept", "sleep", "acquire", "readinto", "get"})


def frames(stack: str) -> list[str]:
    return [f for f in stack.split(";") if f]


def package(frame: str) -> str:
    """'fn (path/to/file.py:12)' -> a short package name (kopf, kubernetes, urllib3, mlvisor, asyncio, ...)."""
    m = re.search(r"\((.*?):\d+\)", frame)
    path = m.group(1) if m else frame
    for name in ("kopf", "kubernetes", "urllib3", "aiohttp", "mlvisor", "pydantic", "json", "asyncio", "ssl",
                 "http", "concurrent", "threading", "logging", "prometheus_client", "selectors", "socket"):
        if f"/{name}/" in path or path.endswith(f"/{name}.py"):
            return name
    return path.rsplit("/", 1)[-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("profile")
    parser.add_argument("--top", type=int, default=25)
    args = parser.parse_args()
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    by_package: Counter[str] = Counter()
    idle = total = 0
    for line in open(args.profile, errors="replace"):
        stack, _, count = line.rstrip("\n").rpartition(" ")
        if not count.isdigit():  # a line py-spy cut short when it was stopped
            continue
        n = int(count)
        fs = frames(stack)
        if not fs:
            continue
        leaf = fs[-1]
        total += n
        function = leaf.split(" ")[0].rsplit(".", 1)[-1]  # "SSLSocket.read (ssl.py:1167)" -> "read"
        if function in WAITING:
            idle += n
            continue
        own[leaf] += n
        by_package[package(leaf)] += n
        for f in set(fs):
            inclusive[f] += n
    busy = total - idle
    print(f"{total} samples, {busy} busy ({100 * busy / max(total, 1):.0f}%), {idle} waiting (select/poll/locks/reads)")
    print("\nbusy samples by package of the running frame:")
    for name, n in by_package.most_common(12):
        print(f"  {100 * n / max(busy, 1):5.1f}%  {name}")
    print(f"\ntop {args.top} frames by busy samples including callees:")
    for name, n in inclusive.most_common(args.top):
        print(f"  {100 * n / max(busy, 1):5.1f}%  {name[:150]}")


if __name__ == "__main__":
    main()
