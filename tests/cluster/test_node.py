"""What only a real node shows: the kubelet, containerd and runc running mlvisor's image.

Memory limits enforced by the kernel (a worker OOMKilled under its limit), the kubelet's
probes (a hung server restarted by its liveness probe), the restricted Pod Security Standard as
runc applies it (read-only root, seccomp, no capabilities, uid 10001) to every pod the operator
makes, ``kubectl logs``/``exec``/``port-forward`` through the kubelet's streaming server, and
graceful deletion: SIGTERM to PID 1 of the container, then the grace period, then SIGKILL.
"""

from __future__ import annotations

import http.client
import json
import os
import shutil
import socket
import subprocess
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import pytest

from cluster.conftest import NAMESPACE, OPERATOR_NS, Cluster
from cluster.test_cluster import (
    MS,
    ROW,
    SERVE_TIMEOUT,
    TJ,
    TRAIN_TIMEOUT,
    built_only,
    iris,
    predict_on_pod,
    server_pods,
)
from emulator.world import World, eventually

pytestmark = [pytest.mark.cluster]


class PodWatch:
    """``kubectl get pod NAME --watch``: every state the API server shows of one pod, to its deletion.

    A deleted pod is gone from the API soon after its containers stop; the watch keeps the
    last status the kubelet wrote (how the container ended: exit code and reason).
    """

    def __init__(self, cluster: Cluster, name: str, namespace: str = NAMESPACE) -> None:
        self.states: list[dict[str, Any]] = []
        self.deleted = threading.Event()
        self._proc = subprocess.Popen(
            [shutil.which("kubectl") or "kubectl", "-n", namespace, "get", "pod", name, "--watch",
             "--output-watch-events", "-o", "json"],
            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=dict(os.environ, KUBECONFIG=cluster.kubeconfig))
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        decoder = json.JSONDecoder()
        buffer = ""
        assert self._proc.stdout is not None
        for line in self._proc.stdout:
            buffer += line
            while buffer.strip():
                try:
                    event, end = decoder.raw_decode(buffer.lstrip())
                except ValueError:
                    break
                buffer = buffer.lstrip()[end:]
                self.states.append(event["object"])
                if event["type"] == "DELETED":
                    self.deleted.set()

    def terminated(self) -> dict[str, Any] | None:
        """The container's last terminated state seen, if any."""
        for pod in reversed(self.states):
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                if (cs.get("state") or {}).get("terminated"):
                    return cs["state"]["terminated"]
        return None

    def stop(self) -> None:
        self._proc.kill()
        self._proc.wait(10)


@contextmanager
def watching(cluster: Cluster, name: str, namespace: str = NAMESPACE) -> Iterator[PodWatch]:
    watch = PodWatch(cluster, name, namespace)
    try:
        eventually(lambda: watch.states, 30, what=f"the watch on pod {name} delivering its first state")
        yield watch
    finally:
        watch.stop()


def _container_id(pod: dict[str, Any]) -> str:
    return pod["status"]["containerStatuses"][0]["containerID"].removeprefix("containerd://")


def _events(cluster: Cluster, name: str, namespace: str = NAMESPACE) -> list[dict[str, Any]]:
    return json.loads(cluster.kubectl("-n", namespace, "get", "events", "-o", "json",
                                      "--field-selector", f"involvedObject.name={name}").stdout)["items"]


# ------------------------------------------------------------------------------- resources


def test_a_worker_oomkilled_under_its_memory_limit_is_counted_and_reported(cluster: Cluster, kube: World,
                                                                            unique: str) -> None:
    # 48 MiB is less than the trainer needs to import scikit-learn: the kernel's memory cgroup
    # kills it, and the kubelet reports reason OOMKilled (exit 137).
    kube.create(TJ, unique, iris(resources={"limits": {"memory": "48Mi"}},
                                 supervision={"maxRestarts": 1, "periodSeconds": 300,
                                              "backoff": {"initialSeconds": 1, "factor": 1, "maxSeconds": 1}}))
    cluster.kubectl("-n", NAMESPACE, "wait", "--for=condition=Failed", f"--timeout={TRAIN_TIMEOUT:.0f}s",
                    f"tj/{unique}", timeout=TRAIN_TIMEOUT + 10)
    status = kube.status(TJ, unique)
    failure = status["supervision"]["lastFailure"]
    assert (failure["reason"], failure["exitCode"]) == ("OOMKilled", 137), failure
    assert status["supervision"]["totalRestarts"] == 1  # the first OOMKilled counted and restarted, the second escalated
    assert status["workers"][0]["lastReason"] == "OOMKilled"
    pod = kube.pod(f"{unique}-worker-0-1")
    assert pod["status"]["containerStatuses"][0]["state"]["terminated"]["reason"] == "OOMKilled"

    def warnings() -> dict[str, str] | None:
        said = {e["reason"]: e["message"] for e in kube.events(unique) if e["type"] == "Warning"}
        return said if {"Restarting", "RestartIntensityExceeded"} <= set(said) else None

    said = eventually(warnings, 30, what="the Restarting and RestartIntensityExceeded Warnings")
    assert "reason OOMKilled" in said["Restarting"] and "reason OOMKilled" in said["RestartIntensityExceeded"], said
    described = cluster.kubectl("-n", NAMESPACE, "describe", f"tj/{unique}").stdout
    assert "OOMKilled" in described
    kube.delete(TJ, unique)


# ---------------------------------------------------------------------------------- probes


def test_a_hung_server_is_restarted_by_its_liveness_probe(cluster: Cluster, kube: World, unique: str) -> None:
    built_only(cluster, "the server's container is stopped through the node's containerd")
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1,
                             "supervision": {"maxRestarts": 5, "periodSeconds": 600}})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    (pod,) = server_pods(kube, unique)
    name = pod["metadata"]["name"]
    # SIGSTOP: the process lives on but answers nothing, as a server stuck in a deadlock would.
    hung = _container_id(pod)
    cluster.ctr("tasks", "kill", "--signal", "SIGSTOP", hung)

    def restarted() -> dict[str, Any] | None:
        cs = kube.pod(name)["status"]["containerStatuses"][0]
        return cs if cs["restartCount"] >= 1 and cs.get("ready") else None

    cs = eventually(restarted, 240, what="the kubelet restarting the hung server and it becoming ready again")
    assert cs["containerID"].removeprefix("containerd://") != hung, cs  # a new container, not the stopped one
    # A stopped process cannot act on SIGTERM: the kubelet's SIGKILL after the grace period ended it.
    # The kubelet reports the last termination only as best effort: it can show a restarted
    # container with an empty lastState (kubernetes/kubernetes#101044; seen here once under load).
    terminated = cs.get("lastState", {}).get("terminated")
    if terminated is not None:
        assert terminated["exitCode"] == 137, cs
    events = _events(cluster, name)
    assert any(e["reason"] == "Killing" and "failed liveness probe" in e["message"] for e in events), events
    assert any(e["reason"] == "Unhealthy" and e["message"].startswith("Liveness probe failed") for e in events)
    kube.wait_condition(MS, unique, "Ready", timeout=SERVE_TIMEOUT)
    eventually(lambda: kube.status(MS, unique).get("supervision", {}).get("totalRestarts") == 1, 60,
               what="the kubelet's restart counted by the ModelServer's supervisor")
    assert predict_on_pod(kube.pod(name), unique)["outputs"][0]["data"] == [0]
    kube.delete(MS, unique)
    kube.delete(TJ, unique)


# --------------------------------------------------------------------------- pod security


def test_every_pod_the_operator_makes_runs_restricted_as_runc_applies_it(cluster: Cluster, kube: World,
                                                                         unique: str) -> None:
    """Admitted under the restricted standard is not enough: the OCI spec runc ran each container with."""
    built_only(cluster, "each container's OCI spec is read from the node's containerd")
    search = iris(search={"grid": {"max_depth": [2, 3]}, "cv": 2}, workers=2)
    kube.create(TJ, unique, search)
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    operator = json.loads(cluster.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
    pods = list(kube.pods(unique).values()) + [p for p in operator if p["status"].get("phase") == "Running"]
    names = sorted(p["metadata"]["name"] for p in pods)
    # Two search workers, the select step, the server and the operator itself.
    servers = [n for n in names if n.startswith(f"{unique}-") and "-worker-" not in n and "-select-" not in n]
    assert len(pods) == 5 and sum("-worker-" in n for n in names) == 2 and sum("-select-" in n for n in names) == 1 \
        and len(servers) == 1, names
    for pod in pods:
        name = pod["metadata"]["name"]
        spec = json.loads(cluster.ctr("containers", "info", _container_id(pod)).stdout)["Spec"]
        process = spec["process"]
        assert process["user"]["uid"] == 10001 and process["user"]["gid"] == 10001, (name, process["user"])
        assert process.get("noNewPrivileges") is True, name
        assert not any((process.get("capabilities") or {}).values()), (name, process.get("capabilities"))
        assert spec["root"]["readonly"] is True, name
        assert spec["linux"]["seccomp"]["defaultAction"] == "SCMP_ACT_ERRNO", name  # RuntimeDefault
        assert spec["linux"]["resources"]["memory"]["limit"] > 0, name
    seen = cluster.kubectl("-n", NAMESPACE, "exec", servers[0], "--", "python", "-c",
                           "import os; s = open('/proc/self/status').read();"
                           "print(os.getuid(), [l.split()[1] for l in s.splitlines()"
                           " if l.split(':')[0] in ('CapEff', 'NoNewPrivs', 'Seccomp')]);"
                           "open('/not-writable', 'w')", check=False)
    assert "10001 ['0000000000000000', '1', '2']" in seen.stdout, seen.stdout + seen.stderr
    assert "Read-only file system" in seen.stderr, seen.stderr
    kube.delete(MS, unique)
    kube.delete(TJ, unique)


# ------------------------------------------------------------------- logs, exec, port-forward


def test_kubectl_logs_exec_and_port_forward_work_on_mlvisors_pods(cluster: Cluster, kube: World, unique: str) -> None:
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    (server,) = server_pods(kube, unique)
    name = server["metadata"]["name"]
    trainer_log = cluster.kubectl("-n", NAMESPACE, "logs", f"{unique}-worker-0-1").stdout
    assert '"event": "artifact_written"' in trainer_log, trainer_log[-1000:]
    operator_log = cluster.kubectl("-n", OPERATOR_NS, "logs", "deployment/mlvisor-operator", "--tail=50").stdout
    assert operator_log.strip() and all(json.loads(line) for line in operator_log.splitlines()), operator_log[-1000:]
    ready = cluster.kubectl("-n", NAMESPACE, "exec", name, "--", "python", "-c",
                            "import urllib.request as u; print(u.urlopen('http://127.0.0.1:8080/v2/health/ready').status)")
    assert ready.stdout.strip() == "200"
    version = cluster.kubectl("-n", OPERATOR_NS, "exec", "deployment/mlvisor-operator", "--", "mlvisor", "--version")
    assert version.stdout.startswith("mlvisor ")

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    forward = subprocess.Popen([shutil.which("kubectl") or "kubectl", "-n", NAMESPACE, "port-forward", f"svc/{unique}",
                                f"{port}:80"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, KUBECONFIG=cluster.kubeconfig))
    try:
        body = {"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}

        def predict() -> dict[str, Any] | None:
            req = urllib.request.Request(f"http://127.0.0.1:{port}/v2/models/{unique}/infer",
                                         data=json.dumps(body).encode(), headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=10) as r:
                    return json.loads(r.read())
            except ConnectionRefusedError:
                return None  # kubectl port-forward is not listening yet
            except urllib.error.URLError as e:
                if isinstance(e.reason, ConnectionRefusedError):
                    return None
                raise

        answer = eventually(predict, 30, what="a prediction through kubectl port-forward")
        assert answer["outputs"][0]["data"] == [0]
    finally:
        forward.terminate()
        forward.wait(10)
    kube.delete(MS, unique)
    kube.delete(TJ, unique)


# ------------------------------------------------------------------------- graceful deletion


def test_a_deleted_worker_stops_on_sigterm_with_143_and_is_restarted(cluster: Cluster, kube: World,
                                                                     unique: str) -> None:
    # The trainer is PID 1 of its container: without its own handler SIGTERM did nothing, and
    # the worker trained on until the grace period's SIGKILL (137) or its end (0, Succeeded).
    slow = iris(estimator={"class": "sklearn.ensemble.RandomForestClassifier", "params": {"n_estimators": 3000}})
    kube.create(TJ, unique, slow)
    first = f"{unique}-worker-0-1"
    eventually(lambda: kube.pod(first)["status"].get("phase") == "Running", TRAIN_TIMEOUT, what="worker running")
    with watching(cluster, first) as watch:
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", first, "--wait=false")
        assert watch.deleted.wait(60), "the deleted worker pod is still there after 60 s"
        ended = watch.terminated()
    assert ended is not None and ended["exitCode"] == 143, ended
    assert ended["message"].startswith("terminated: stopped by SIGTERM"), ended
    eventually(lambda: kube.status(TJ, unique).get("supervision", {}).get("totalRestarts") == 1, 60,
               what="the stopped worker counted as a restart")
    eventually(lambda: f"{unique}-worker-0-2" in kube.pods(unique), 60, what="the worker's next attempt")
    kube.delete(TJ, unique)


def test_a_deleted_server_answers_its_in_flight_request_refuses_new_ones_and_exits_0(cluster: Cluster, kube: World,
                                                                                     unique: str) -> None:
    built_only(cluster, "the server pod's IP is reached from the test")
    kube.create(TJ, unique, iris())
    kube.create(MS, unique, {"model": {"trainingJobRef": {"name": unique}}, "replicas": 1})
    kube.wait_condition(MS, unique, "Ready", timeout=TRAIN_TIMEOUT + SERVE_TIMEOUT)
    (pod,) = server_pods(kube, unique)
    name, ip = pod["metadata"]["name"], pod["status"]["podIP"]
    body = json.dumps({"inputs": [{"name": "input-0", "shape": [1, 4], "datatype": "FP64", "data": ROW}]}).encode()
    with watching(cluster, name) as watch, socket.create_connection((ip, 8080), timeout=60) as conn:
        # A request in flight: its headers and half its body are sent before the delete.
        conn.sendall(f"POST /v2/models/{unique}/infer HTTP/1.1\r\nHost: {ip}\r\nContent-Type: application/json\r\n"
                     f"Content-Length: {len(body)}\r\n\r\n".encode() + body[:20])
        cluster.kubectl("-n", NAMESPACE, "delete", "pod", name, "--wait=false")

        def refused() -> bool:
            try:
                socket.create_connection((ip, 8080), timeout=2).close()
            except ConnectionRefusedError:
                return True  # the listener is closed: new connections are refused, not reset mid-request
            return False

        eventually(refused, 60, what="the server closing its listener on SIGTERM")
        conn.sendall(body[20:])
        reply = http.client.HTTPResponse(conn)
        reply.begin()  # an empty reply (the connection closed under the request) raises here
        assert reply.status == 200, reply.read()
        assert json.loads(reply.read())["outputs"][0]["data"] == [0]
        assert watch.deleted.wait(60), "the deleted server pod is still there after 60 s"
        ended = watch.terminated()
    # 0, not 137: it finished within its grace period rather than being SIGKILLed at its end.
    assert ended is not None and (ended["exitCode"], ended["reason"]) == (0, "Completed"), ended
    kube.delete(MS, unique)
    kube.delete(TJ, unique)


def test_a_deleted_operator_exits_0_within_its_grace_period(cluster: Cluster) -> None:
    (operator,) = [p for p in json.loads(cluster.kubectl("-n", OPERATOR_NS, "get", "pods", "-o", "json").stdout)["items"]
                   if not p["metadata"].get("deletionTimestamp")]
    name = operator["metadata"]["name"]
    with watching(cluster, name, OPERATOR_NS) as watch:
        cluster.kubectl("-n", OPERATOR_NS, "delete", "pod", name, "--wait=false")
        assert watch.deleted.wait(60), "the deleted operator pod is still there after 60 s"
        ended = watch.terminated()
    assert ended is not None and (ended["exitCode"], ended["reason"]) == (0, "Completed"), ended
    cluster.kubectl("-n", OPERATOR_NS, "rollout", "status", "deployment/mlvisor-operator", "--timeout=120s", timeout=130)
