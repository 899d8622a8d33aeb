"""The cluster's node: the kubelet, kube-proxy, containerd and runc, each where a kind node keeps it.

kind runs a node as a privileged container; this runs the same programs as processes of this
machine, given what that container would give them:

- **a network namespace** ``mlvnode-<id>`` whose ``eth0`` is one end of a veth pair; the other
  end, ``mlvh<id>``, stays on the host. The node's InternalIP is ``10.N.255.2`` (the host's end
  ``10.N.255.1``), pods get ``10.N.0.0/17`` (the node's podCIDR, a /24 of it, through the CNI
  bridge ``cni0``), Services ``10.N.128.0/20``. The host routes ``10.N.0.0/16`` to the node,
  so tests, benchmarks and a user's curl reach pod IPs and ClusterIPs as anything on a cluster's
  node would. Every iptables rule (kube-proxy's, the CNI bridge's masquerade and portmap) lives
  in the namespace, none on the host;
- **a cgroup subtree** ``/mlvisor-<id>`` (the kubelet's ``cgroupRoot``, pods under its
  ``kubepods``; containerd, its shims, the kubelet and kube-proxy in its ``node``);
- **containerd** (Debian's 1.6, runc 1.1) with its own root, state and socket under the state
  folder, and the CRI plugin configured as kind configures it, plus ``restrict_oom_score_adj``
  (machines without CAP_SYS_RESOURCE cannot lower a process's oom_score_adj, kind's rootless
  setting), the pause image built here (``images.py``) and mlvisor's own image imported;
- **the CNI plugins** bridge, host-local and portmap (Debian's containernetworking-plugins), in
  a conflist written once the controller-manager has given the node its podCIDR, as kindnet does;
- the folder-backed **provisioner** of the default StorageClass (``provisioner.py``).

``<id>`` and ``N`` come from the state folder (its hash; ``N`` skips any 10.N.0.0/16 the host
already routes), so two checkouts' nodes never share a name, a cgroup or an address, and
``cluster.down()`` removes exactly what its own state folder's node made: every process in its
cgroup subtree, every mount under its state folder, its namespace (the veth goes with it), its
cgroups and the kubelet's log links that point into its state folder. Nothing host-wide is
listed and swept. The kernel settings the kubelet sets on any node (vm.overcommit_memory,
kernel.panic, kernel.panic_on_oops, ...) are host-wide: the first node up saves their values in
/run, the last one down puts them back.
"""

from __future__ import annotations

import contextlib
import hashlib
import ipaddress
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

NODE_NAME = "mlvisor-node"
CNI_BIN_DIRS = ("/usr/lib/cni", "/opt/cni/bin")
CGROUP_FS = Path("/sys/fs/cgroup")
KUBELET_LOG_LINKS = Path("/var/log/containers")  # the kubelet's fixed place for per-container log links
# Kernel settings the kubelet sets at start on every node (protectKernelDefaults: false), host-wide.
KUBELET_SYSCTLS = ("vm/overcommit_memory", "vm/panic_on_oom", "kernel/panic", "kernel/panic_on_oops",
                   "kernel/keys/root_maxkeys", "kernel/keys/root_maxbytes")
SAVED_SYSCTLS = Path("/run/mlvisor-node-sysctls.json")


class NodeError(RuntimeError):
    """The node could not be set up; the message says which step and why."""


def _run(argv: list[str], what: str, check: bool = True, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NodeError(f"{what}: `{' '.join(argv)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()[-2000:]}")
    return proc


# ---------------------------------------------------------------------------------- network


@dataclass(frozen=True)
class Network:
    """The node's names and addresses, all derived from its state folder (see the module docstring)."""

    id: str
    octet: int

    @property
    def netns(self) -> str:
        return f"mlvnode-{self.id}"

    @property
    def host_link(self) -> str:
        return f"mlvh{self.id}"

    @property
    def host_ip(self) -> str:
        return f"10.{self.octet}.255.1"

    @property
    def node_ip(self) -> str:
        return f"10.{self.octet}.255.2"

    @property
    def cluster_cidr(self) -> str:
        return f"10.{self.octet}.0.0/17"

    @property
    def service_cidr(self) -> str:
        return f"10.{self.octet}.128.0/20"

    @property
    def kubernetes_service_ip(self) -> str:
        return f"10.{self.octet}.128.1"

    @property
    def routed(self) -> str:
        return f"10.{self.octet}.0.0/16"

    @property
    def cgroup(self) -> str:
        return f"mlvisor-{self.id}"

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "octet": self.octet}


def node_id(state_dir: Path) -> str:
    return hashlib.sha256(str(state_dir.resolve()).encode()).hexdigest()[:6]


def _host_networks() -> list[ipaddress.IPv4Network]:
    """Every IPv4 network the host has a route or an address in (what a new /16 must not overlap)."""
    nets = []
    for argv in (["ip", "-4", "-o", "route", "show", "table", "all"], ["ip", "-4", "-o", "addr", "show"]):
        for line in _run(argv, "reading the host's routes", check=False).stdout.splitlines():
            for word in line.split():
                with contextlib.suppress(ValueError):
                    if "." in word and (word[0].isdigit()):
                        net = ipaddress.ip_network(word, strict=False)
                        if net.prefixlen > 0:
                            nets.append(net)
    return nets


def choose_network(state_dir: Path) -> Network:
    """The node's Network: its id from the state folder, N from that id, moved past any 10.N.0.0/16 in use."""
    nid = node_id(state_dir)
    taken = _host_networks()
    start = int(nid, 16) % 100
    for k in range(100):
        octet = 100 + (start + k) % 100  # 10.100.0.0/16 .. 10.199.0.0/16
        candidate = ipaddress.ip_network(f"10.{octet}.0.0/16")
        if not any(candidate.overlaps(n) for n in taken):
            return Network(nid, octet)
    raise NodeError("no free 10.N.0.0/16 (N in 100..199) for the node's network on this host")


def create_network(net: Network) -> None:
    """The namespace, the veth, addresses, the node's default route and the host's route to the node."""
    if os.geteuid() != 0:
        raise NodeError("the node needs root (network namespace, cgroups, containerd); "
                        "or start the control plane with NODE=none")
    remove_network(net)
    _run(["ip", "netns", "add", net.netns], "creating the node's network namespace")
    try:
        _run(["ip", "link", "add", net.host_link, "type", "veth", "peer", "name", "eth0", "netns", net.netns], "veth")
        _run(["ip", "addr", "add", f"{net.host_ip}/30", "dev", net.host_link], "host address")
        _run(["ip", "link", "set", net.host_link, "up"], "host link up")
        _run(["ip", "-n", net.netns, "addr", "add", f"{net.node_ip}/30", "dev", "eth0"], "node address")
        _run(["ip", "-n", net.netns, "link", "set", "eth0", "up"], "node link up")
        _run(["ip", "-n", net.netns, "link", "set", "lo", "up"], "node loopback up")
        _run(["ip", "-n", net.netns, "route", "add", "default", "via", net.host_ip], "node default route")
        _run(["ip", "route", "add", net.routed, "via", net.node_ip, "dev", net.host_link], "host route to the node")
        # The node forwards between its eth0 and the pods' bridge (a per-namespace setting).
        _run(["ip", "netns", "exec", net.netns, "sysctl", "-qw", "net.ipv4.ip_forward=1"], "node forwarding")
    except NodeError:
        remove_network(net)
        raise


def remove_network(net: Network) -> None:
    """Delete the namespace (its eth0 and the host's veth end go with it, and so does the route)."""
    _run(["ip", "netns", "del", net.netns], "", check=False)
    _run(["ip", "link", "del", net.host_link], "", check=False)


# ---------------------------------------------------------------------------------- cgroups


def _cgroup_dirs(name: str) -> list[Path]:
    """``name`` in every mounted hierarchy: one on cgroup v2, one per controller mount on v1."""
    if (CGROUP_FS / "cgroup.controllers").exists():
        return [CGROUP_FS / name]
    dirs = []
    seen: set[str] = set()
    for mount in sorted(CGROUP_FS.iterdir()):
        if mount.is_symlink() or not mount.is_dir() or not (mount / "cgroup.procs").exists():
            continue
        real = os.path.realpath(mount)
        if real in seen:
            continue
        seen.add(real)
        dirs.append(mount / name)
    return dirs


def create_cgroups(net: Network) -> None:
    """``/mlvisor-<id>`` and its ``node`` child in every hierarchy (cpusets copied from the parent)."""
    unified = (CGROUP_FS / "cgroup.controllers").exists()
    for root in _cgroup_dirs(net.cgroup):
        for d in (root, root / "node"):
            d.mkdir(exist_ok=True)
            if (d / "cpuset.cpus").exists():
                for f in ("cpuset.cpus", "cpuset.mems"):
                    if not (d / f).read_text().strip():
                        (d / f).write_text((d.parent / f).read_text())
        if unified:
            wanted = " ".join(f"+{c}" for c in (root.parent / "cgroup.subtree_control").read_text().split())
            if wanted:
                (root / "cgroup.subtree_control").write_text(wanted)


def join_node_cgroup(net: Network) -> None:
    """Move the calling process into ``/mlvisor-<id>/node`` (run in a child before exec)."""
    pid = str(os.getpid())
    for root in _cgroup_dirs(net.cgroup):
        (root / "node" / "cgroup.procs").write_text(pid)


def _cgroup_pids(root: Path) -> set[int]:
    pids: set[int] = set()
    for procs in root.rglob("cgroup.procs"):
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in procs.read_text().split())
    return pids


def kill_cgroups(net: Network, deadline_s: float = 20) -> int:
    """SIGKILL every process in the node's cgroup subtree until it is empty; returns how many."""
    killed: set[int] = set()
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        pids = set()
        for root in _cgroup_dirs(net.cgroup):
            if root.exists():
                pids |= _cgroup_pids(root)
        if not pids:
            break
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        killed |= pids
        time.sleep(0.1)
    return len(killed)


def remove_cgroups(net: Network) -> None:
    for root in _cgroup_dirs(net.cgroup):
        if not root.exists():
            continue
        for d in [*sorted((p for p in root.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True), root]:
            for _ in range(50):
                try:
                    d.rmdir()
                    break
                except FileNotFoundError:
                    break
                except OSError:
                    time.sleep(0.1)


# ---------------------------------------------------------------------------------- mounts


def mounts_under(folder: Path) -> list[str]:
    """Mount points at or below ``folder``, deepest first (from this process's mountinfo)."""
    prefix = str(folder.resolve())
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].encode().decode("unicode_escape")
        if point == prefix or point.startswith(prefix + "/"):
            found.append(point)
    return sorted(set(found), key=lambda p: p.count("/"), reverse=True)


def unmount_all(folder: Path) -> int:
    """Lazily unmount everything at or below ``folder`` (repeated: one point may be mounted twice)."""
    count = 0
    for _ in range(5):
        points = mounts_under(folder)
        if not points:
            break
        for point in points:
            if _run(["umount", "-l", point], "", check=False).returncode == 0:
                count += 1
    return count


# -------------------------------------------------------------------------------- the files


@dataclass(frozen=True)
class Paths:
    root: Path

    @property
    def containerd(self) -> Path:
        return self.root / "containerd"

    @property
    def socket(self) -> Path:
        return self.containerd / "containerd.sock"

    @property
    def kubelet(self) -> Path:
        return self.root / "kubelet"

    @property
    def pod_logs(self) -> Path:
        return self.root / "pod-logs"

    @property
    def cni_conf(self) -> Path:
        return self.root / "cni" / "net.d"

    @property
    def volumes(self) -> Path:
        return self.root / "volumes"


def node_paths(state_dir: Path) -> Paths:
    return Paths(state_dir / "node")


def clear_previous_run(p: Paths) -> None:
    """Remove what an earlier run's node left (pod logs, volumes, kubelet and runtime state).

    containerd's root (its image store) stays, so an unchanged image is not unpacked again.
    Refused while anything is mounted below: a leftover mount would be deleted through.
    """
    p.root.mkdir(parents=True, exist_ok=True)
    if mounts_under(p.root):
        raise NodeError(f"{p.root} still has mounts from an earlier run ({mounts_under(p.root)[:3]}); "
                        "run make controlplane-down first")
    for stale in (p.kubelet, p.pod_logs, p.volumes, p.root / "cni", p.containerd / "state", p.containerd / "runc"):
        shutil.rmtree(stale, ignore_errors=True)


def cni_bin_dir() -> str:
    for d in CNI_BIN_DIRS:
        if Path(d, "bridge").exists() and Path(d, "host-local").exists():
            return d
    raise NodeError("the CNI plugins are not installed (Debian: apt-get install containernetworking-plugins)")


def write_containerd_config(p: Paths) -> Path:
    p.containerd.mkdir(parents=True, exist_ok=True)
    p.cni_conf.mkdir(parents=True, exist_ok=True)
    config = p.containerd / "config.toml"
    config.write_text(f"""\
version = 2
root = "{p.containerd / 'root'}"
state = "{p.containerd / 'state'}"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper", "io.containerd.snapshotter.v1.zfs"]
[grpc]
  address = "{p.socket}"
[ttrpc]
  address = "{p.socket}.ttrpc"
[debug]
  address = ""
[plugins."io.containerd.internal.v1.opt"]
  path = "{p.containerd / 'opt'}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "registry.k8s.io/pause:3.10"
  netns_mounts_under_state_dir = true
  # This machine may lack CAP_SYS_RESOURCE: runc could not give the pause process its -998
  # oom_score_adj and every sandbox would fail. kind's rootless setting clamps it instead.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{p.containerd / 'runc'}"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin_dir()}"
    conf_dir = "{p.cni_conf}"
""")
    return config


def write_cni_config(p: Paths, pod_cidr: str) -> None:
    """The pods' network on the node's podCIDR: a bridge with host-local addresses, then portmap."""
    conflist = {
        "cniVersion": "1.0.0", "name": "mlvisor",
        "plugins": [
            {"type": "bridge", "bridge": "cni0", "isGateway": True, "ipMasq": True, "hairpinMode": True,
             "ipam": {"type": "host-local", "ranges": [[{"subnet": pod_cidr}]], "routes": [{"dst": "0.0.0.0/0"}],
                      "dataDir": str(p.root / "cni" / "ipam")}},
            {"type": "portmap", "capabilities": {"portMappings": True}},
        ],
    }
    tmp = p.cni_conf / ".10-mlvisor.conflist.tmp"
    tmp.write_text(json.dumps(conflist, indent=2))
    os.replace(tmp, p.cni_conf / "10-mlvisor.conflist")


def write_kubelet_config(p: Paths, net: Network, pki_dir: Path, crashloop_max: str | None) -> Path:
    p.kubelet.mkdir(parents=True, exist_ok=True)
    p.pod_logs.mkdir(parents=True, exist_ok=True)
    resolv = p.root / "resolv.conf"
    host_resolv = Path("/etc/resolv.conf")
    resolv.write_text(host_resolv.read_text() if host_resolv.exists() else "")
    config: dict[str, Any] = {
        "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
        "cgroupDriver": "cgroupfs", "cgroupRoot": f"/{net.cgroup}",
        "failSwapOn": False, "failCgroupV1": False,
        "containerRuntimeEndpoint": f"unix://{p.socket}",
        "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": True},
                           "x509": {"clientCAFile": str(pki_dir / "ca.crt")}},
        "authorization": {"mode": "Webhook"},
        "tlsCertFile": str(pki_dir / "kubelet.crt"), "tlsPrivateKeyFile": str(pki_dir / "kubelet.key"),
        "readOnlyPort": 0,
        "resolvConf": str(resolv),
        "podLogsDir": str(p.pod_logs),
        "volumePluginDir": str(p.root / "volume-plugins"),
        # Images are imported, never pulled: none may be garbage-collected. The node shares the
        # host's disk, which on CI machines can be 98% full before a test starts: a free-space
        # threshold there made the kubelet reclaim "ephemeral-storage" by deleting the imported
        # mlvisor and pause images mid-run (93 tests failed). Disk-based eviction is off, as in
        # kind's node config; memory eviction stays.
        "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
        "evictionHard": {"memory.available": "100Mi", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                         "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
        "serializeImagePulls": False,
    }
    if crashloop_max:
        config["featureGates"] = {"KubeletCrashLoopBackOffMax": True}
        config["crashLoopBackOff"] = {"maxContainerRestartPeriod": crashloop_max}
    path = p.root / "kubelet.json"
    path.write_text(json.dumps(config, indent=2))
    return path


def write_kube_proxy_config(p: Paths, net: Network, kubeconfig: Path) -> Path:
    config = {
        "apiVersion": "kubeproxy.config.k8s.io/v1alpha1", "kind": "KubeProxyConfiguration",
        "clientConnection": {"kubeconfig": str(kubeconfig)},
        "mode": "iptables", "clusterCIDR": net.cluster_cidr, "hostnameOverride": NODE_NAME,
        # 0 leaves the host's conntrack table settings alone (they are not per namespace).
        "conntrack": {"maxPerCore": 0, "min": 0, "tcpEstablishedTimeout": "0s", "tcpCloseWaitTimeout": "0s"},
        "iptables": {"localhostNodePorts": False},
    }
    path = p.root / "kube-proxy.json"
    path.write_text(json.dumps(config, indent=2))
    return path


# --------------------------------------------------------------------------------- containerd


def ctr(p: Paths, *args: str) -> list[str]:
    """The ``ctr`` command line for the node's containerd, in the kubelet's namespace."""
    return ["ctr", "--address", str(p.socket), "--namespace", "k8s.io", *args]


def import_image(p: Paths, archive: Path) -> None:
    _run(ctr(p, "images", "import", str(archive)), f"importing {archive.name} into containerd",
         timeout=900)


def wait_for_socket(p: Paths, alive, deadline_s: float = 60) -> None:
    deadline = time.monotonic() + deadline_s
    while time.monotonic() < deadline:
        if not alive():
            raise NodeError("containerd exited while starting (see its log)")
        if p.socket.exists() and _run(ctr(p, "version"), "", check=False, timeout=10).returncode == 0:
            return
        time.sleep(0.1)
    raise NodeError(f"containerd did not answer on {p.socket} in {deadline_s:.0f} s")


def remove_containers(p: Paths) -> int:
    """Kill and delete every task and container of the node's containerd (their shims then exit)."""
    if not p.socket.exists() or _run(ctr(p, "version"), "", check=False, timeout=10).returncode != 0:
        return 0
    tasks = _run(ctr(p, "tasks", "ls", "-q"), "", check=False, timeout=30).stdout.split()
    threads = [threading.Thread(target=_run, args=(ctr(p, "tasks", "delete", "--force", t), ""),
                                kwargs={"check": False, "timeout": 60}) for t in tasks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    containers = _run(ctr(p, "containers", "ls", "-q"), "", check=False, timeout=30).stdout.split()
    if containers:
        _run(ctr(p, "containers", "delete", *containers), "", check=False, timeout=120)
    return len(tasks)


def remove_log_links(p: Paths) -> None:
    """The kubelet's links in /var/log/containers that point into this node's pod logs."""
    if not KUBELET_LOG_LINKS.is_dir():
        return
    ours = str(p.pod_logs.resolve())
    for link in KUBELET_LOG_LINKS.iterdir():
        with contextlib.suppress(OSError):
            if link.is_symlink() and os.readlink(link).startswith(ours + "/"):
                link.unlink()


# ---------------------------------------------------------------------------------- sysctls


def save_sysctls() -> None:
    """Remember the host's values of what the kubelet will set, unless a running node already did."""
    if SAVED_SYSCTLS.exists():
        return
    values = {}
    for key in KUBELET_SYSCTLS:
        with contextlib.suppress(OSError):
            values[key] = Path("/proc/sys", key).read_text().strip()
    SAVED_SYSCTLS.write_text(json.dumps(values))


def restore_sysctls(net: Network) -> None:
    """Put back what the kubelet changed, once no other node of this kind runs on the host."""
    if not SAVED_SYSCTLS.exists():
        return
    others = [line.split()[0] for line in _run(["ip", "netns", "list"], "", check=False).stdout.splitlines()
              if line.startswith("mlvnode-") and line.split()[0] != net.netns]
    if others:
        return  # the last node to stop restores them
    with contextlib.suppress(OSError, ValueError):
        for key, value in json.loads(SAVED_SYSCTLS.read_text()).items():
            with contextlib.suppress(OSError):
                Path("/proc/sys", key).write_text(value)
    SAVED_SYSCTLS.unlink(missing_ok=True)
