"""Fixtures of the real-cluster tier.

By default the tier runs on the cluster this suite builds from Go modules (``tests/controlplane``:
etcd, kube-apiserver, kube-controller-manager, kube-scheduler, and a node whose kubelet,
kube-proxy and containerd run mlvisor's image built from the Dockerfile), started once per
session (or reused when ``make controlplane-up`` already runs it) and installed exactly as a user
installs mlvisor: ``kubectl apply -k manifests/``. Nothing is skipped: if the cluster cannot be
built or started, every test of the tier errors with the reason.

With ``MLVISOR_E2E_KUBECONFIG`` set (``make e2e`` on kind), the same tests run on that cluster,
where mlvisor is already deployed from the image.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from emulator.world import World, kubernetes_transport
from helpers.paths import REPO

NAMESPACE = "default"
OPERATOR_NS = "mlvisor-system"
OPERATOR_SA = f"system:serviceaccount:{OPERATOR_NS}:mlvisor-operator"


@dataclass
class Cluster:
    kubeconfig: str
    built: bool
    """True on the suite's own cluster (audit log, the node's containerd and folders reachable)."""
    state_dir: Path | None = None
    containerd_socket: Path | None = None

    def kubectl(self, *args: str, check: bool = True, input: str | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
        kubectl = shutil.which("kubectl")
        if kubectl is None:
            raise RuntimeError("kubectl is not on PATH: the cluster tier drives the cluster the way users do")
        proc = subprocess.run([kubectl, *args], capture_output=True, text=True, input=input, timeout=timeout,
                              env=dict(os.environ, KUBECONFIG=self.kubeconfig))
        if check and proc.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def ctr(self, *args: str, check: bool = True, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """``ctr`` on the node's containerd, in the kubelet's namespace (k8s.io)."""
        assert self.containerd_socket is not None, "only the suite's own node has a reachable containerd"
        proc = subprocess.run(["ctr", "--address", str(self.containerd_socket), "--namespace", "k8s.io", *args],
                              capture_output=True, text=True, timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"ctr {' '.join(args)} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def audit(self) -> list[dict]:
        assert self.state_dir is not None
        lines = (self.state_dir / "audit.log").read_text().splitlines()
        return [json.loads(line) for line in lines if line.strip()]


def _label_restricted(c: Cluster) -> None:
    # Where the samples run, the restricted Pod Security Standard is enforced by the real
    # admission plugin: a pod the operator makes that breaks it would be refused.
    c.kubectl("label", "namespace", NAMESPACE, "--overwrite",
              "pod-security.kubernetes.io/enforce=restricted", "pod-security.kubernetes.io/warn=restricted")


def _deploy(c: Cluster, reused: bool) -> None:
    c.kubectl("apply", "-k", str(REPO / "manifests"))
    if reused:  # a plane kept from an earlier session runs an operator started from older code
        c.kubectl("-n", OPERATOR_NS, "rollout", "restart", "deployment/mlvisor-operator")
    c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
              "crd/trainingjobs.mlvisor.dev", "crd/modelservers.mlvisor.dev", "crd/modelpipelines.mlvisor.dev")
    _label_restricted(c)
    rollout = c.kubectl("-n", OPERATOR_NS, "rollout", "status", "deployment/mlvisor-operator", "--timeout=180s",
                        timeout=200, check=False)
    if rollout.returncode != 0:
        raise AssertionError(f"the operator did not become available:\n{rollout.stdout}{rollout.stderr}\n"
                             + _diagnose(c))


def _diagnose(c: Cluster) -> str:
    """What a reader of a failed run needs to see why the operator is not up (CI shows only this)."""
    parts = []
    for args in (("get", "pods", "-A", "-o", "wide"),
                 ("-n", OPERATOR_NS, "describe", "pods"),
                 ("-n", OPERATOR_NS, "logs", "deployment/mlvisor-operator", "--tail=60", "--all-containers"),
                 ("-n", OPERATOR_NS, "logs", "deployment/mlvisor-operator", "--tail=60", "--previous"),
                 ("get", "events", "-A", "--sort-by=.lastTimestamp"),
                 ("describe", "nodes")):  # DiskPressure, MemoryPressure, taints
        proc = c.kubectl(*args, check=False, timeout=30)
        parts.append(f"$ kubectl {' '.join(args)}\n{proc.stdout}{proc.stderr}")
    if c.state_dir is not None:
        usage = shutil.disk_usage(c.state_dir)
        parts.append(f"disk of {c.state_dir}: {usage.free / 2**30:.1f} GiB free of {usage.total / 2**30:.1f} GiB")
        for name in ("kubelet", "containerd"):
            log = c.state_dir / "logs" / f"{name}.log"
            if log.exists():
                parts.append(f"$ tail {log}\n" + "\n".join(log.read_text(errors="replace").splitlines()[-60:]))
    return "\n".join(parts)


@pytest.fixture(scope="session")
def cluster(request: pytest.FixtureRequest) -> Iterator[Cluster]:
    """The tier's cluster; once its last test has run, the RBAC audit of the whole tier (rbac_audit.py)."""
    kubeconfig = os.environ.get("MLVISOR_E2E_KUBECONFIG")
    if kubeconfig:
        c = Cluster(kubeconfig=kubeconfig, built=False)
        _label_restricted(c)  # make e2e deployed mlvisor from the image already
        yield c
        return
    from controlplane import cluster as controlplane

    started = controlplane.current() is None
    plane = controlplane.up(node=True)
    if not plane.node:
        pytest.fail("a control plane without a node is running (make controlplane-up NODE=none): "
                    "stop it (make controlplane-down) for the cluster tier, which needs the node")
    c = Cluster(kubeconfig=str(plane.kubeconfig), built=True, state_dir=plane.state_dir,
                containerd_socket=plane.containerd_socket)
    try:
        _deploy(c, reused=not started)
        yield c
        from cluster.rbac_audit import check_operator_rbac

        check_operator_rbac(c, (item.name for item in request.session.items))
    finally:
        if started and not os.environ.get("MLVISOR_KEEP_CONTROLPLANE"):
            controlplane.down()


@pytest.fixture(scope="session")
def kube(cluster: Cluster) -> World:
    return World(kubernetes_transport(cluster.kubeconfig), namespace=NAMESPACE)


@pytest.fixture
def unique() -> Iterator[str]:
    """A name no earlier run used (resources of failed runs may linger until the cluster is deleted)."""
    yield f"t{uuid.uuid4().hex[:6]}"


FAULTS_NS = "faults"


@pytest.fixture(scope="session")
def bare() -> Iterator[tuple[Any, World]]:
    """A second control plane without a node, for the fault tier: the test plays the kubelet."""
    if os.environ.get("MLVISOR_E2E_KUBECONFIG"):
        pytest.skip("the fault tier starts its own node-less control plane (there is none on kind)")
    from controlplane import cluster as controlplane

    state = REPO / "build" / "controlplane-faults"
    plane = controlplane.up(state, node=False)
    world = World(kubernetes_transport(str(plane.kubeconfig)), namespace=FAULTS_NS)
    c = Cluster(kubeconfig=str(plane.kubeconfig), built=True, state_dir=state)
    try:
        c.kubectl("apply", "-f", str(REPO / "manifests" / "crds"))
        c.kubectl("wait", "--for=condition=Established", "--timeout=60s",
                  "crd/trainingjobs.mlvisor.dev", "crd/modelservers.mlvisor.dev")
        c.kubectl("create", "namespace", FAULTS_NS, check=False)  # a kept plane has it already
        yield plane, world
    finally:
        if not os.environ.get("MLVISOR_KEEP_CONTROLPLANE"):
            controlplane.down(state)
