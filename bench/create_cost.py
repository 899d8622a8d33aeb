"""What one create costs the API server: TrainingJobs (the CRD as shipped, and without its CEL
rules) against suspended Jobs, created from bench/operator.py's 16 threads with no operator.

    KUBECONFIG=... .venv/bin/python -P bench/create_cost.py 1000

Prints, for each kind, the wall time and the CPU seconds kube-apiserver and etcd used meanwhile
(from /proc). The CRD is put back as shipped at the end. bench/README.md, "What a create costs".
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from kubernetes import client, config

HERE = Path(__file__).resolve().parent
CRD = HERE.parent / "manifests" / "crds" / "trainingjobs.mlvisor.dev.yaml"

_spec = importlib.util.spec_from_file_location("bench_operator", HERE / "operator.py")
assert _spec is not None and _spec.loader is not None
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def cpu_seconds(component: str) -> float:
    """CPU (user + system) of the plane's processes running ``component``: the plane runs one
    binary for all of them (tests/controlplane), the component its first argument."""
    total = 0.0
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            if len(argv) < 2 or argv[1].decode() != component:
                continue
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return total


def without_cel(document: dict[str, Any]) -> int:
    """Drop every x-kubernetes-validations list in place; how many rules went."""
    dropped = 0
    stack: list[Any] = [document]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            dropped += len(node.pop("x-kubernetes-validations", None) or [])
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
    return dropped


def create(kind: str, n: int) -> str:
    namespace = bench.new_namespace("cost")
    make: Callable[[str, dict[str, Any]], Any]
    if kind == "Job":
        bodies = [bench.job(f"j{i}") for i in range(n)]
        for body in bodies:
            body["spec"]["suspend"] = True  # no pods: the create alone
        batch = client.BatchV1Api()
        make = lambda ns, body: batch.create_namespaced_job(ns, body)  # type: ignore[arg-type]  # noqa: E731
    else:
        bodies = [bench.training_job(f"t{i}") for i in range(n)]
        custom = client.CustomObjectsApi()
        make = lambda ns, body: custom.create_namespaced_custom_object(  # noqa: E731
            "mlvisor.dev", "v1alpha1", ns, "trainingjobs", body)
    api0, etcd0 = cpu_seconds("kube-apiserver"), cpu_seconds("etcd")
    t0 = time.monotonic()
    bench.create_all(namespace, bodies, make)
    wall = time.monotonic() - t0
    api, etcd = cpu_seconds("kube-apiserver") - api0, cpu_seconds("etcd") - etcd0
    return (f"{n} {kind}s in {wall:.2f} s ({n / wall:.0f}/s): kube-apiserver {api:.2f} s CPU "
            f"({1000 * api / n:.2f} ms each), etcd {etcd:.2f} s")


def main() -> int:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    config.load_kube_config()
    print("TrainingJob (CRD as shipped):", create("TrainingJob", n), flush=True)
    print("Job (suspended):            ", create("Job", n), flush=True)
    document = yaml.safe_load(CRD.read_text())
    rules = without_cel(document)
    with tempfile.NamedTemporaryFile("w", suffix=".yaml") as f:
        yaml.safe_dump(document, f)
        f.flush()
        subprocess.run(["kubectl", "replace", "-f", f.name], check=True, capture_output=True)
        try:
            time.sleep(3)  # the API server rebuilds the CRD's handler
            print(f"TrainingJob (without its {rules} CEL rules):", create("TrainingJob", n), flush=True)
        finally:
            subprocess.run(["kubectl", "apply", "-f", str(CRD)], check=True, capture_output=True)
    print("TrainingJob (CRD as shipped, again):", create("TrainingJob", n), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
