"""The test's side of the cluster: read and write objects, play the kubelet, wait for outcomes.

Used by both the emulator tier (tests/integration, over plain HTTP to the emulator) and the
real-cluster tier (tests/cluster, through the ``kubernetes`` client's authenticated
transport). It deliberately shares no code with the operator under test: what the tests
observe is read back with their own requests.
"""

from __future__ import annotations

import datetime
import json
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from typing import Any, TypeVar
from urllib.parse import quote

GROUP, VERSION = "mlvisor.dev", "v1alpha1"
PLURALS = {"TrainingJob": "trainingjobs", "ModelServer": "modelservers", "ModelPipeline": "modelpipelines"}
MERGE = "application/merge-patch+json"

T = TypeVar("T")


class HttpError(Exception):
    def __init__(self, status: int, body: str) -> None:
        super().__init__(f"HTTP {status}: {body[:500]}")
        self.status = status


Transport = Callable[[str, str, Any, str], Any]
"""(method, path, body, content_type) -> decoded JSON; raises HttpError."""


def urllib_transport(base_url: str) -> Transport:
    def request(method: str, path: str, body: Any, content_type: str) -> Any:
        data = json.dumps(body).encode() if body is not None else None
        req = urllib.request.Request(base_url + path, data=data, method=method)
        req.add_header("Accept", "application/json")
        if data is not None:
            req.add_header("Content-Type", content_type)
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                raw = resp.read()
        except urllib.error.HTTPError as e:
            raise HttpError(e.code, e.read().decode(errors="replace")) from None
        return json.loads(raw) if raw else {}

    return request


def kubernetes_transport(kubeconfig: str) -> Transport:
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(config_file=kubeconfig, client_configuration=configuration, persist_config=False)
    api = client.ApiClient(configuration)

    def request(method: str, path: str, body: Any, content_type: str) -> Any:
        headers = {"Accept": "application/json"}
        if body is not None:
            headers["Content-Type"] = content_type
        m, url, h, b, post = api.param_serialize(
            method=method, resource_path=path, header_params=headers, body=body, auth_settings=["BearerToken"]
        )
        resp = api.call_api(m, url, h, b, post, _request_timeout=(10, 30))
        raw = resp.read()
        if not 200 <= resp.status <= 299:
            raise HttpError(resp.status, raw.decode(errors="replace"))
        return json.loads(raw) if raw else {}

    return request


def now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat().replace("+00:00", "Z")


def eventually(probe: Callable[[], T | None], timeout: float = 15.0, what: str = "the condition") -> T:
    """Poll ``probe`` until it returns something truthy (404s count as not yet); fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while True:
        try:
            result = probe()
            if result:
                return result
        except HttpError as e:
            if e.status != 404:
                raise
            last_error = e
        except AssertionError as e:
            last_error = e
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}" + (f": {last_error}" if last_error else ""))
        time.sleep(0.05)


def stays(probe: Callable[[], bool], duration: float, what: str) -> None:
    """Assert ``probe`` holds for ``duration`` seconds (for "nothing more happens" checks)."""
    deadline = time.monotonic() + duration
    while time.monotonic() < deadline:
        assert probe(), what
        time.sleep(0.05)


class World:
    def __init__(self, transport: Transport, namespace: str = "default") -> None:
        self.request = transport
        self.ns = namespace

    # ------------------------------------------------------------------ resources
    def cr_path(self, kind: str, name: str | None = None, sub: str | None = None) -> str:
        base = f"/apis/{GROUP}/{VERSION}/namespaces/{self.ns}/{PLURALS[kind]}"
        return base if name is None else f"{base}/{name}" + (f"/{sub}" if sub else "")

    def create(self, kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        body = {"apiVersion": f"{GROUP}/{VERSION}", "kind": kind, "metadata": {"name": name, "namespace": self.ns}, "spec": spec}
        return self.request("POST", self.cr_path(kind), body, "application/json")

    def get(self, kind: str, name: str) -> dict[str, Any]:
        return self.request("GET", self.cr_path(kind, name), None, "")

    def status(self, kind: str, name: str) -> dict[str, Any]:
        return self.get(kind, name).get("status") or {}

    def patch_spec(self, kind: str, name: str, spec: Mapping[str, Any]) -> dict[str, Any]:
        return self.request("PATCH", self.cr_path(kind, name), {"spec": spec}, MERGE)

    def delete(self, kind: str, name: str) -> None:
        self.request("DELETE", self.cr_path(kind, name), None, "")

    def condition(self, kind: str, name: str, type_: str) -> dict[str, Any] | None:
        for c in self.status(kind, name).get("conditions") or []:
            if c.get("type") == type_:
                return c
        return None

    def wait_condition(self, kind: str, name: str, type_: str, reason: str | None = None, timeout: float = 15) -> dict[str, Any]:
        def probe() -> dict[str, Any] | None:
            c = self.condition(kind, name, type_)
            ok = c is not None and c.get("status") == "True" and (reason is None or c.get("reason") == reason)
            return c if ok else None

        return eventually(probe, timeout, f"{kind} {name} condition {type_}={reason or 'True'}")

    def wait_phase(self, kind: str, name: str, phase: str, timeout: float = 15) -> dict[str, Any]:
        return eventually(
            lambda: (s := self.status(kind, name)).get("phase") == phase and s, timeout, f"{kind} {name} phase {phase}"
        )

    # ------------------------------------------------------------------ children
    def pods(self, instance: str | None = None) -> dict[str, dict[str, Any]]:
        selector = "app.kubernetes.io/managed-by=mlvisor" + (f",app.kubernetes.io/instance={instance}" if instance else "")
        items = self.request("GET", f"/api/v1/namespaces/{self.ns}/pods?labelSelector={quote(selector, safe='')}", None, "")["items"]
        return {p["metadata"]["name"]: p for p in items}

    def live_pods(self, instance: str | None = None) -> set[str]:
        return {n for n, p in self.pods(instance).items() if not p["metadata"].get("deletionTimestamp")}

    def pod(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/namespaces/{self.ns}/pods/{name}", None, "")

    def wait_pod(self, name: str, timeout: float = 15) -> dict[str, Any]:
        return eventually(lambda: self.pod(name), timeout, f"pod {name}")

    def wait_pods(self, instance: str, names: set[str], timeout: float = 15) -> set[str]:
        eventually(
            lambda: self.live_pods(instance) == names,
            timeout,
            f"pods of {instance} to be exactly {sorted(names)} (are {sorted(self.live_pods(instance))})",
        )
        return names

    def deployment(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/apis/apps/v1/namespaces/{self.ns}/deployments/{name}", None, "")

    def service(self, name: str) -> dict[str, Any]:
        return self.request("GET", f"/api/v1/namespaces/{self.ns}/services/{name}", None, "")

    def exists(self, path: str) -> bool:
        try:
            self.request("GET", path, None, "")
            return True
        except HttpError as e:
            if e.status == 404:
                return False
            raise

    def events(self, name: str) -> list[dict[str, Any]]:
        items = self.request("GET", f"/api/v1/namespaces/{self.ns}/events", None, "")["items"]
        return [e for e in items if (e.get("involvedObject") or {}).get("name") == name]

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]

    def wait_event(self, name: str, reason: str, timeout: float = 15) -> dict[str, Any]:
        return eventually(
            lambda: next((e for e in self.events(name) if e["reason"] == reason), None),
            timeout,
            f"Event {reason} for {name} (have {self.event_reasons(name)})",
        )

    # ------------------------------------------------------------------ the kubelet, played by the test
    def set_pod_status(self, name: str, status: Mapping[str, Any]) -> None:
        self.request("PATCH", f"/api/v1/namespaces/{self.ns}/pods/{name}/status", {"status": status}, MERGE)

    def run_pod(self, name: str, ready: bool = True, restart_count: int = 0) -> None:
        container = self.pod(name)["spec"]["containers"][0]["name"]
        self.set_pod_status(
            name,
            {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                "containerStatuses": [
                    {
                        "name": container,
                        "ready": ready,
                        "restartCount": restart_count,
                        "image": "mlvisor:dev",
                        "imageID": "",
                        "state": {"running": {"startedAt": now_iso()}},
                    }
                ],
            },
        )

    def exit_pod(self, name: str, code: int, reason: str | None = None, message: str | None = None) -> None:
        """The container exited: Succeeded on 0, Failed otherwise (restartPolicy Never)."""
        container = self.pod(name)["spec"]["containers"][0]["name"]
        terminated: dict[str, Any] = {
            "exitCode": code,
            "reason": reason or ("Completed" if code == 0 else "Error"),
            "startedAt": now_iso(),
            "finishedAt": now_iso(),
        }
        if message is not None:
            terminated["message"] = message
        self.set_pod_status(
            name,
            {
                "phase": "Succeeded" if code == 0 else "Failed",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": container, "ready": False, "restartCount": 0, "image": "mlvisor:dev", "imageID": "",
                     "state": {"terminated": terminated}}
                ],
            },
        )

    def evict_pod(self, name: str) -> None:
        """What the kubelet reports for a pod evicted under node pressure."""
        container = self.pod(name)["spec"]["containers"][0]["name"]
        self.set_pod_status(
            name,
            {
                "phase": "Failed",
                "reason": "Evicted",
                "message": "The node was low on resource: memory.",
                "conditions": [{"type": "DisruptionTarget", "status": "True", "reason": "TerminationByKubelet"}],
                "containerStatuses": [
                    {"name": container, "ready": False, "restartCount": 0, "image": "mlvisor:dev", "imageID": "",
                     "state": {"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": now_iso()}}}
                ],
            },
        )


class ReplicaSetRole:
    """The test playing the Deployment controller and the kubelet for a ModelServer's pods."""

    def __init__(self, world: World, deployment: str) -> None:
        self.world = world
        self.deployment = deployment

    def template(self) -> dict[str, Any]:
        return self.world.deployment(self.deployment)["spec"]["template"]

    def start_pod(self, name: str, ready: bool = True, restart_count: int = 0) -> str:
        """A pod from the Deployment's current template, running."""
        template = self.template()
        body = {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {**template["metadata"], "name": name, "namespace": self.world.ns},
            "spec": template["spec"],
        }
        self.world.request("POST", f"/api/v1/namespaces/{self.world.ns}/pods", body, "application/json")
        self.world.run_pod(name, ready=ready, restart_count=restart_count)
        return name

    def crash(self, name: str, restart_count: int, exit_code: int = 1, message: str | None = None) -> None:
        """The kubelet restarted the container in place: restartCount goes up, lastState says why."""
        container = self.world.pod(name)["spec"]["containers"][0]["name"]
        terminated: dict[str, Any] = {"exitCode": exit_code, "reason": "Error", "finishedAt": now_iso()}
        if message is not None:
            terminated["message"] = message
        self.world.set_pod_status(
            name,
            {
                "phase": "Running",
                "conditions": [{"type": "Ready", "status": "False"}],
                "containerStatuses": [
                    {"name": container, "ready": False, "restartCount": restart_count, "image": "mlvisor:dev",
                     "imageID": "", "state": {"waiting": {"reason": "CrashLoopBackOff"}},
                     "lastState": {"terminated": terminated}}
                ],
            },
        )

    def set_status(self, replicas: int, ready: int, updated: int | None = None) -> None:
        status = {"replicas": replicas, "readyReplicas": ready, "updatedReplicas": ready if updated is None else updated,
                  "availableReplicas": ready, "observedGeneration": self.world.deployment(self.deployment)["metadata"]["generation"]}
        self.world.request(
            "PATCH", f"/apis/apps/v1/namespaces/{self.world.ns}/deployments/{self.deployment}/status",
            {"status": status}, MERGE,
        )

    def delete_pod(self, name: str) -> None:
        self.world.request("DELETE", f"/api/v1/namespaces/{self.world.ns}/pods/{name}", None, "")
