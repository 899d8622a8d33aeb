"""Pod networking for the process node: a Linux bridge and one network namespace per pod.

Each pod gets what a CNI bridge plugin gives it: its own network namespace (so every server
pod can listen on 0.0.0.0:8080, as in a cluster), a veth pair whose host end is on the bridge
``mlvbr0`` and whose pod end is ``eth0`` with the pod's IP from the node's podCIDR, loopback,
and a default route through the bridge. The host reaches every pod IP through the bridge, and
pods reach the API server at the bridge address. Namespaces are named ``mlv-<n>`` so that
``remove_all`` finds every one of ours, kills whatever still runs inside and deletes it.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import signal
import subprocess
import time

BRIDGE = "mlvbr0"
PREFIX = "mlv-"


class NetworkError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise NetworkError(f"ip {' '.join(args)}: {proc.stderr.strip() or proc.stdout.strip()}")
    return proc


def ensure_bridge(address: str, cidr: str) -> None:
    """The bridge with ``address`` in ``cidr`` (e.g. 10.244.0.1 in 10.244.0.0/16), up."""
    if os.geteuid() != 0:
        raise NetworkError("the process node needs root for network namespaces (or start it with NODE=none)")
    prefix = ipaddress.ip_network(cidr).prefixlen
    if _ip("link", "show", BRIDGE, check=False).returncode != 0:
        _ip("link", "add", BRIDGE, "type", "bridge")
    addrs = _ip("-o", "addr", "show", "dev", BRIDGE).stdout
    if f"{address}/{prefix}" not in addrs:
        _ip("addr", "add", f"{address}/{prefix}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")


def namespaces() -> list[str]:
    out = _ip("netns", "list", check=False).stdout
    return [line.split()[0] for line in out.splitlines() if line.startswith(PREFIX)]


def create(name: str, ip: str, prefixlen: int, gateway: str) -> None:
    """A namespace ``name`` whose eth0 has ``ip``/``prefixlen`` on the bridge."""
    assert name.startswith(PREFIX)
    host_end = "v" + name  # at most 15 characters: "vmlv-<n>"
    delete(name)
    _ip("netns", "add", name)
    try:
        _ip("link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", name)
        _ip("link", "set", host_end, "master", BRIDGE, "up")
        _ip("-n", name, "addr", "add", f"{ip}/{prefixlen}", "dev", "eth0")
        _ip("-n", name, "link", "set", "eth0", "up")
        _ip("-n", name, "link", "set", "lo", "up")
        _ip("-n", name, "route", "add", "default", "via", gateway)
    except NetworkError:
        delete(name)
        raise


def pids(name: str) -> list[int]:
    out = _ip("netns", "pids", name, check=False).stdout
    return [int(p) for p in out.split() if p.isdigit()]


def kill_all(name: str) -> int:
    """SIGKILL every process still in the namespace; returns how many there were."""
    found = pids(name)
    for pid in found:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    deadline = time.monotonic() + 5
    while pids(name) and time.monotonic() < deadline:
        time.sleep(0.05)
    return len(found)


def delete(name: str) -> None:
    _ip("link", "del", "v" + name, check=False)
    _ip("netns", "del", name, check=False)


def remove_all() -> int:
    """Kill what runs in any ``mlv-*`` namespace, delete them all and the bridge; returns processes killed."""
    killed = 0
    for name in namespaces():
        killed += kill_all(name)
        delete(name)
    _ip("link", "del", BRIDGE, check=False)
    return killed
