"""Start and stop a real Kubernetes control plane on this machine: etcd, API server, controllers, scheduler, node.

``up()`` starts, in the background of the caller and each as its own process group:

- **etcd** (the upstream server, built in), on loopback, a fresh data directory per start;
- **kube-apiserver** with real TLS, client-certificate authentication, ``Node,RBAC``
  authorization, the NodeRestriction, OwnerReferencesPermissionEnforcement and (default-on)
  PodSecurity admission plugins, a service-account issuer with its signing keys, and an audit
  log of every request made by a service account (``audit.log``);
- **kube-controller-manager** (garbage collector, ReplicaSets, Deployments, Jobs,
  EndpointSlices, namespace lifecycle, service accounts and their root CA, node IPAM and
  lifecycle, the PersistentVolume binder...), each controller with its own service account;
- **kube-scheduler**;
- unless ``node=False``: **the node** (``kubenode.py``): containerd, the kubelet and kube-proxy
  in a network namespace and cgroup subtree of their own, running mlvisor's image built from
  its Dockerfile (``images.py``), and a folder-backed provisioner for the default StorageClass.

It waits until the API server is ready (and the node Ready), writes the admin kubeconfig to
``<state>/kubeconfig`` and records every process (pid and start time, so a recycled pid is
never signalled) in ``<state>/state.json``. A second ``up()`` finds the running one and returns
it. ``down()`` stops everything, the node's containers included, removes what the node made
(namespace, veth, cgroups, mounts) and leaves the logs.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controlplane import build, images, kubenode, pki
from controlplane.kubenode import NODE_NAME

REPO = Path(__file__).resolve().parents[2]
DEFAULT_STATE = REPO / "build" / "controlplane"
SERVICE_CIDR = "10.96.0.0/16"  # of a plane without a node (nothing routes it); a node brings its own
CLUSTER_CIDR = "10.244.0.0/16"
ISSUER = "https://kubernetes.default.svc.cluster.local"
SA_AUDIT_POLICY = """\
apiVersion: audit.k8s.io/v1
kind: Policy
omitStages: [RequestReceived]
rules:
  - level: Metadata
    userGroups: ["system:serviceaccounts"]
  - level: None
"""

IDENTITIES = (
    pki.Identity("admin", "mlvisor-admin", ("system:masters",)),
    pki.Identity("controller-manager", "system:kube-controller-manager"),
    pki.Identity("scheduler", "system:kube-scheduler"),
    pki.Identity("node", f"system:node:{NODE_NAME}", ("system:nodes",)),
    pki.Identity("provisioner", "system:mlvisor:local-path-provisioner"),
    pki.Identity("kube-proxy", "system:kube-proxy"),
    pki.Identity("apiserver-kubelet-client", "kube-apiserver-kubelet-client", ("system:masters",)),
)


class ControlPlaneError(RuntimeError):
    """A component did not start; the message names it and quotes the end of its log."""


@dataclass
class Process:
    name: str
    pid: int
    start_time: int

    def alive(self) -> bool:
        return _start_time(self.pid) == self.start_time


@dataclass
class ControlPlane:
    state_dir: Path
    kubeconfig: Path
    api_url: str
    node: bool
    processes: list[Process] = field(default_factory=list)
    network: kubenode.Network | None = None
    """The node's names and addresses (None without a node)."""

    def to_json(self) -> dict[str, Any]:
        return {"kubeconfig": str(self.kubeconfig), "api_url": self.api_url, "node": self.node,
                "network": self.network.to_json() if self.network else None,
                "processes": [p.__dict__ for p in self.processes]}

    @classmethod
    def from_json(cls, state_dir: Path, data: dict[str, Any]) -> ControlPlane:
        network = kubenode.Network(**data["network"]) if data.get("network") else None
        return cls(state_dir=state_dir, kubeconfig=Path(data["kubeconfig"]), api_url=data["api_url"],
                   node=bool(data["node"]), processes=[Process(**p) for p in data["processes"]], network=network)

    @property
    def containerd_socket(self) -> Path:
        """The node's containerd (``ctr --address ... --namespace k8s.io``)."""
        return kubenode.node_paths(self.state_dir).socket

    def alive(self) -> bool:
        return bool(self.processes) and all(p.alive() for p in self.processes)

    def log(self, name: str) -> Path:
        return self.state_dir / "logs" / f"{name}.log"


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/<pid>/stat: distinguishes a process from a later one with the same pid."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _tail(path: Path, n: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-n:])
    except OSError:
        return "(no log)"


def _kubeconfig(path: Path, server: str, pki_dir: Path, ident: str, user: str) -> None:
    path.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config",
        "clusters": [{"name": "mlvisor", "cluster": {"server": server, "certificate-authority": str(pki_dir / "ca.crt")}}],
        "users": [{"name": user, "user": {"client-certificate": str(pki_dir / f"{ident}.crt"),
                                          "client-key": str(pki_dir / f"{ident}.key")}}],
        "contexts": [{"name": "mlvisor", "context": {"cluster": "mlvisor", "user": user}}],
        "current-context": "mlvisor",
    }, indent=2))


def _spawn(plane: ControlPlane, name: str, argv: list[str], env: dict[str, str] | None = None,
           preexec_fn=None) -> Process:
    log_path = plane.log(name)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        log.write(f"--- {time.strftime('%Y-%m-%dT%H:%M:%S')} {' '.join(argv)}\n".encode())
        log.flush()
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                start_new_session=True, env=env, cwd=plane.state_dir, preexec_fn=preexec_fn)
    start = None
    for _ in range(100):
        start = _start_time(proc.pid)
        if start is not None:
            break
        time.sleep(0.01)
    p = Process(name, proc.pid, start or 0)
    plane.processes.append(p)
    _save(plane)
    return p


def _save(plane: ControlPlane) -> None:
    (plane.state_dir / "state.json").write_text(json.dumps(plane.to_json(), indent=2))


def _ssl_context(pki_dir: Path) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=str(pki_dir / "ca.crt"))
    ctx.load_cert_chain(str(pki_dir / "admin.crt"), str(pki_dir / "admin.key"))
    return ctx


def _wait(what: str, check, deadline_s: float, process: Process | None, log: Path) -> None:
    deadline = time.monotonic() + deadline_s
    last: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and not process.alive():
            raise ControlPlaneError(f"{what}: the process exited. End of {log}:\n{_tail(log)}")
        try:
            if check():
                return
        except Exception as e:
            last = e
        time.sleep(0.2)
    raise ControlPlaneError(f"{what} did not become ready in {deadline_s:.0f} s (last: {last}). End of {log}:\n{_tail(log)}")


def _get(url: str, ctx: ssl.SSLContext | None = None) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def _post(url: str, body: dict[str, Any], ctx: ssl.SSLContext) -> None:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=10, context=ctx):
            pass
    except urllib.error.HTTPError as e:
        if e.code != 409:
            raise ControlPlaneError(f"POST {url}: HTTP {e.code}: {e.read()[:300]!r}") from None


def current(state_dir: Path = DEFAULT_STATE) -> ControlPlane | None:
    """The control plane recorded in ``state_dir`` if all its processes still run."""
    try:
        data = json.loads((state_dir / "state.json").read_text())
    except (OSError, ValueError):
        return None
    plane = ControlPlane.from_json(state_dir, data)
    return plane if plane.alive() else None


def up(state_dir: Path = DEFAULT_STATE, *, node: bool = True, log=sys.stderr,
       crashloop_max: str | None = None, controller_manager_args: tuple[str, ...] = (),
       apiserver_args: tuple[str, ...] = ()) -> ControlPlane:
    """Start the control plane (or return the running one); see the module docstring.

    ``crashloop_max`` caps the kubelet's CrashLoopBackOff (its ``crashLoopBackOff.
    maxContainerRestartPeriod``, KEP-4603; default 300 s), e.g. "10s".
    ``controller_manager_args``: more flags for kube-controller-manager (the operator bench's
    second peer raises its client limit: ``--kube-api-qps=1000 --kube-api-burst=1000``).
    ``apiserver_args``: more flags for kube-apiserver, after the plane's own (the last of a
    repeated flag wins: ``--profiling=true`` serves /debug/pprof for ``bench/create_cost.py
    --pprof``).
    """
    running = current(state_dir)
    if running is not None:
        if running.node != node:
            raise ControlPlaneError(
                f"a control plane {'with' if running.node else 'without'} a node already runs from {state_dir}; "
                "stop it first (make controlplane-down)")
        print(f"control plane already running: KUBECONFIG={running.kubeconfig}", file=log)
        return running
    if (state_dir / "state.json").exists() or (node and kubenode.node_paths(state_dir).root.exists()):
        down(state_dir, quiet=True)  # whatever a crashed earlier run from this state left behind
    try:
        return _up(state_dir, node, log, crashloop_max, controller_manager_args, apiserver_args)
    except BaseException:
        down(state_dir, quiet=True)  # nothing of a failed start keeps running; its logs stay
        raise


def _up(state_dir: Path, node: bool, log, crashloop_max: str | None,
        controller_manager_args: tuple[str, ...] = (), apiserver_args: tuple[str, ...] = ()) -> ControlPlane:
    binary = build.ensure_binary(log)
    archives = (images.ensure_pause(log), images.ensure_image(log)) if node else ()
    t0 = time.monotonic()
    state_dir.mkdir(parents=True, exist_ok=True)
    pki_dir = state_dir / "pki"
    network = kubenode.choose_network(state_dir) if node else None
    service_cidr = network.service_cidr if network else SERVICE_CIDR
    server_ips: tuple[str, ...] = ("127.0.0.1", "10.96.0.1")
    if network:
        kubenode.create_network(network)
        kubenode.create_cgroups(network)
        server_ips = ("127.0.0.1", network.host_ip, network.kubernetes_service_ip)
        for stale in ("apiserver", "kubelet"):  # their addresses are this run's
            for suffix in (".crt", ".key"):
                (pki_dir / f"{stale}{suffix}").unlink(missing_ok=True)
    advertise = network.host_ip if network else "127.0.0.1"
    pki.ensure(pki_dir, identities=IDENTITIES, server_ips=server_ips,
               server_names=("localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc",
                             "kubernetes.default.svc.cluster.local"))
    etcd_port, etcd_peer, api_port, kcm_port, sched_port = (_free_port() for _ in range(5))
    api_url = f"https://127.0.0.1:{api_port}"
    plane = ControlPlane(state_dir, state_dir / "kubeconfig", api_url, node, network=network)
    for ident in IDENTITIES:
        _kubeconfig(state_dir / f"{ident.file}.kubeconfig", api_url, pki_dir, ident.file, ident.user)
    shutil.copyfile(state_dir / "admin.kubeconfig", plane.kubeconfig)
    (state_dir / "audit-policy.yaml").write_text(SA_AUDIT_POLICY)
    audit_log = state_dir / "audit.log"
    audit_log.unlink(missing_ok=True)
    etcd_dir = state_dir / "etcd"
    shutil.rmtree(etcd_dir, ignore_errors=True)

    etcd = _spawn(plane, "etcd", [
        str(binary), "etcd", "--name=mlvisor", f"--data-dir={etcd_dir}",
        f"--listen-client-urls=http://127.0.0.1:{etcd_port}", f"--advertise-client-urls=http://127.0.0.1:{etcd_port}",
        f"--listen-peer-urls=http://127.0.0.1:{etcd_peer}", f"--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer}",
        f"--initial-cluster=mlvisor=http://127.0.0.1:{etcd_peer}", "--unsafe-no-fsync",
        "--listen-metrics-urls=", "--log-level=warn",
    ])
    _wait("etcd", lambda: _get(f"http://127.0.0.1:{etcd_port}/health")[0] == 200, 60, etcd, plane.log("etcd"))

    apiserver = _spawn(plane, "kube-apiserver", [
        str(binary), "kube-apiserver",
        f"--etcd-servers=http://127.0.0.1:{etcd_port}",
        f"--bind-address={'0.0.0.0' if node else '127.0.0.1'}", f"--secure-port={api_port}",
        f"--advertise-address={advertise}",
        f"--tls-cert-file={pki_dir / 'apiserver.crt'}", f"--tls-private-key-file={pki_dir / 'apiserver.key'}",
        f"--client-ca-file={pki_dir / 'ca.crt'}",
        "--authorization-mode=Node,RBAC",
        "--enable-admission-plugins=NodeRestriction,OwnerReferencesPermissionEnforcement",
        f"--service-account-issuer={ISSUER}",
        f"--service-account-key-file={pki_dir / 'sa.pub'}",
        f"--service-account-signing-key-file={pki_dir / 'sa.key'}",
        f"--service-cluster-ip-range={service_cidr}",
        f"--kubelet-client-certificate={pki_dir / 'apiserver-kubelet-client.crt'}",
        f"--kubelet-client-key={pki_dir / 'apiserver-kubelet-client.key'}",
        f"--kubelet-certificate-authority={pki_dir / 'ca.crt'}",
        "--kubelet-preferred-address-types=InternalIP",
        "--allow-privileged=false", "--profiling=false",
        f"--audit-policy-file={state_dir / 'audit-policy.yaml'}", f"--audit-log-path={audit_log}",
        "--audit-log-format=json", "--audit-log-maxsize=0",
        *apiserver_args,
    ])
    ctx = _ssl_context(pki_dir)
    _wait("kube-apiserver", lambda: _get(f"{api_url}/readyz", ctx)[0] == 200, 120, apiserver, plane.log("kube-apiserver"))

    kcm = _spawn(plane, "kube-controller-manager", [
        str(binary), "kube-controller-manager",
        f"--kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
        f"--authentication-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
        f"--authorization-kubeconfig={state_dir / 'controller-manager.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={kcm_port}",
        f"--service-account-private-key-file={pki_dir / 'sa.key'}", f"--root-ca-file={pki_dir / 'ca.crt'}",
        f"--cluster-signing-cert-file={pki_dir / 'ca.crt'}", f"--cluster-signing-key-file={pki_dir / 'ca.key'}",
        "--use-service-account-credentials=true", "--leader-elect=false",
        "--allocate-node-cidrs=true", f"--cluster-cidr={network.cluster_cidr if network else CLUSTER_CIDR}",
        "--node-cidr-mask-size=24", f"--service-cluster-ip-range={service_cidr}",
        *controller_manager_args,
    ])
    scheduler = _spawn(plane, "kube-scheduler", [
        str(binary), "kube-scheduler",
        f"--kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        f"--authentication-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        f"--authorization-kubeconfig={state_dir / 'scheduler.kubeconfig'}",
        "--bind-address=127.0.0.1", f"--secure-port={sched_port}", "--leader-elect=false",
    ])
    insecure = ssl.create_default_context()
    insecure.check_hostname = False
    insecure.verify_mode = ssl.CERT_NONE
    _wait("kube-controller-manager", lambda: _get(f"https://127.0.0.1:{kcm_port}/healthz", insecure)[0] == 200,
          120, kcm, plane.log("kube-controller-manager"))
    _wait("kube-scheduler", lambda: _get(f"https://127.0.0.1:{sched_port}/healthz", insecure)[0] == 200,
          120, scheduler, plane.log("kube-scheduler"))
    # The controllers serve /healthz before their informers sync: wait for a controller's own
    # output (the root CA published into `default`), so the first pod gets its token volume.
    _wait("the service-account controllers", lambda: _get(
        f"{api_url}/api/v1/namespaces/default/configmaps/kube-root-ca.crt", ctx)[0] == 200
        and _get(f"{api_url}/api/v1/namespaces/default/serviceaccounts/default", ctx)[0] == 200,
        120, kcm, plane.log("kube-controller-manager"))

    # The default StorageClass and its provisioner's permissions, as a cluster installer sets them up.
    from controlplane.provisioner import BINDING_OBJECT, STORAGE_CLASS_OBJECT
    _post(f"{api_url}/apis/storage.k8s.io/v1/storageclasses", STORAGE_CLASS_OBJECT, ctx)
    _post(f"{api_url}/apis/rbac.authorization.k8s.io/v1/clusterrolebindings", BINDING_OBJECT, ctx)

    if network is not None:
        _start_node(plane, binary, network, archives, crashloop_max, ctx)
    _save(plane)
    print(f"control plane up in {time.monotonic() - t0:.1f} s ({'one node' if node else 'no node'}): "
          f"KUBECONFIG={plane.kubeconfig}", file=log)
    return plane


def _start_node(plane: ControlPlane, binary: Path, network: kubenode.Network, archives: tuple[Path, ...],
                crashloop_max: str | None, ctx: ssl.SSLContext) -> None:
    """containerd, the images, the kubelet, kube-proxy and the provisioner; returns once the node is Ready."""
    paths = kubenode.node_paths(plane.state_dir)
    kubenode.clear_previous_run(paths)
    pki_dir = plane.state_dir / "pki"
    pki.issue_serving(pki_dir, "kubelet", NODE_NAME, ips=(network.node_ip,), dns=(NODE_NAME,))
    # The node reaches the API server over its veth, at the host's end.
    node_url = f"https://{network.host_ip}:{plane.api_url.rsplit(':', 1)[1]}"
    for ident, user in (("node", f"system:node:{NODE_NAME}"), ("kube-proxy", "system:kube-proxy")):
        _kubeconfig(paths.root / f"{ident}.kubeconfig", node_url, pki_dir, ident, user)
    in_node = ["nsenter", f"--net=/run/netns/{network.netns}", "--"]

    def join() -> None:
        kubenode.join_node_cgroup(network)

    containerd = _spawn(plane, "containerd", [*in_node, "containerd", "--config",
                                              str(kubenode.write_containerd_config(paths))], preexec_fn=join)
    kubenode.wait_for_socket(paths, containerd.alive)
    imported: list[BaseException] = []

    def import_images() -> None:
        try:
            for archive in archives:
                kubenode.import_image(paths, archive)
        except BaseException as e:
            imported.append(e)

    importer = threading.Thread(target=import_images, name="image-import")
    importer.start()
    kubenode.save_sysctls()
    kubelet = _spawn(plane, "kubelet", [
        *in_node, str(binary), "kubelet",
        f"--config={kubenode.write_kubelet_config(paths, network, pki_dir, crashloop_max)}",
        f"--kubeconfig={paths.root / 'node.kubeconfig'}", f"--root-dir={paths.kubelet}",
        f"--hostname-override={NODE_NAME}", f"--node-ip={network.node_ip}",
    ], preexec_fn=join)
    _spawn(plane, "kube-proxy", [
        *in_node, str(binary), "kube-proxy",
        f"--config={kubenode.write_kube_proxy_config(paths, network, paths.root / 'kube-proxy.kubeconfig')}",
    ], preexec_fn=join)
    env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
    _spawn(plane, "provisioner", [sys.executable, "-m", "controlplane.provisioner", f"--api-url={plane.api_url}",
                                  f"--pki={pki_dir}", f"--root={paths.volumes}"], env=env, preexec_fn=join)

    def node_object() -> dict[str, Any] | None:
        code, body = _get(f"{plane.api_url}/api/v1/nodes/{NODE_NAME}", ctx)
        return json.loads(body) if code == 200 else None

    def pod_cidr() -> bool:
        obj = node_object()
        if obj is None or not obj["spec"].get("podCIDR"):
            return False
        # What kindnet does on a kind node: the pods' network on the podCIDR the controller-manager gave.
        kubenode.write_cni_config(paths, obj["spec"]["podCIDR"])
        return True

    _wait("the node's registration and podCIDR", pod_cidr, 120, kubelet, plane.log("kubelet"))

    def node_ready() -> bool:
        obj = node_object()
        conds = {c["type"]: c["status"] for c in (obj or {}).get("status", {}).get("conditions", [])}
        return conds.get("Ready") == "True"

    _wait("the node", node_ready, 120, kubelet, plane.log("kubelet"))
    importer.join()
    if imported:
        raise ControlPlaneError(f"the node's images: {imported[0]}")


def _stop(p: Process, grace: float) -> None:
    if not p.alive():
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(p.pid, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and p.alive():
        time.sleep(0.05)
    if p.alive():
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)


def down(state_dir: Path = DEFAULT_STATE, *, quiet: bool = False, log=sys.stderr) -> None:
    """Stop every process of the control plane and the node, and remove what the node made."""
    try:
        data = json.loads((state_dir / "state.json").read_text())
        plane: ControlPlane | None = ControlPlane.from_json(state_dir, data)
    except (OSError, ValueError, KeyError, TypeError):
        plane = None
    stopped = 0
    processes = plane.processes if plane is not None else []
    node_names = ("provisioner", "kube-proxy", "kubelet", "containerd")
    by_name = {p.name: p for p in processes}
    # The node first: its daemons, every container (so the shims exit cleanly), then what is left.
    for name in node_names[:3]:
        if name in by_name:
            stopped += by_name[name].alive()
            _stop(by_name[name], 10.0)
    paths = kubenode.node_paths(state_dir)
    containers = kubenode.remove_containers(paths)
    if "containerd" in by_name:
        stopped += by_name["containerd"].alive()
        _stop(by_name["containerd"], 10.0)
    # Names derive from the state folder, so a crashed run's leftovers are found without its state.json.
    network = kubenode.Network(kubenode.node_id(state_dir), 0)
    leftovers = kubenode.kill_cgroups(network)
    kubenode.unmount_all(paths.root)
    kubenode.remove_log_links(paths)
    kubenode.remove_network(network)
    kubenode.remove_cgroups(network)
    kubenode.restore_sysctls(network)
    for p in reversed(processes):
        if p.name in node_names:
            continue
        if p.alive():
            stopped += 1
        _stop(p, 5.0)
    if plane is not None:
        plane.processes = []
        _save(plane)
    if not quiet:
        extra = f", {containers} container(s) removed" if containers else ""
        extra += f", {leftovers} leftover process(es) killed" if leftovers else ""
        print(f"control plane down ({stopped} process(es) stopped{extra})", file=log)
