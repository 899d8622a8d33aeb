"""A second, node-less control plane for the fault tier, and the test's kubelet for it.

Faults need a kubelet the test controls: when a worker fails, how long it runs, what it
reports. ``Bare`` is the same real control plane (API server, controller-manager with its
Deployment and ReplicaSet controllers and garbage collector, scheduler) started with
``node=False`` in its own state directory, beside the one the cluster tier uses; nothing runs
the pods, and ``Kubelet`` writes their status (with the admin credentials) as a kubelet would:
Running, then Succeeded or Failed with an exit code, or Running and Ready for server pods.

``Kubelet`` also checks, for every pod it sees appear, that no other pod of the same worker is
still running at that moment: a second live pod for one worker is the duplicate the
crash-consistency scenarios must never produce.
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from emulator.world import HttpError, World, now_iso

Outcome = Callable[[dict[str, Any]], tuple[int, str | None]]
"""(pod) -> (exit code, termination message) the container ends with."""


@dataclass
class Seen:
    name: str
    first_seen: float
    terminal_at: float | None = None
    running_at: float | None = None
    exit_code: int | None = None


@dataclass
class Kubelet:
    world: World
    outcome: Outcome
    run_seconds: tuple[float, float] = (0.2, 0.8)
    seed: int = 0
    pods: dict[str, Seen] = field(default_factory=dict)
    duplicates: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._rng = random.Random(self.seed)
        self._thread = threading.Thread(target=self._loop, daemon=True, name="test-kubelet")

    def start(self) -> Kubelet:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(10)

    @staticmethod
    def worker_of(name: str) -> str | None:
        """``<job>-worker-<i>`` for a worker pod ``<job>-worker-<i>-<attempt>``."""
        if "-worker-" not in name:
            return None
        return name.rsplit("-", 1)[0]

    def _list(self) -> list[dict[str, Any]]:
        selector = quote("app.kubernetes.io/managed-by=mlvisor", safe="")
        return self.world.request("GET", f"/api/v1/namespaces/{self.world.ns}/pods?labelSelector={selector}", None, "")["items"]

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._tick()
            except HttpError as e:
                if e.status != 404:
                    self.errors.append(str(e))
            except Exception as e:
                self.errors.append(repr(e))
            self._stop.wait(0.05)

    def _tick(self) -> None:
        now = time.monotonic()
        for pod in self._list():
            name = pod["metadata"]["name"]
            if pod["metadata"].get("deletionTimestamp"):
                continue
            seen = self.pods.get(name)
            if seen is None:
                worker = self.worker_of(name)
                if worker is not None:
                    live = [s.name for s in self.pods.values()
                            if self.worker_of(s.name) == worker and s.terminal_at is None and s.name != name]
                    if live:
                        self.duplicates.append(f"{name} appeared while {live} still ran")
                seen = self.pods[name] = Seen(name, now)
            if seen.terminal_at is not None:
                continue
            is_server = "worker" not in name and "select" not in name
            if seen.running_at is None:
                self.world.run_pod(name, ready=is_server)
                seen.running_at = now + self._rng.uniform(*self.run_seconds)
                continue
            if not is_server and now >= seen.running_at:
                code, message = self.outcome(pod)
                self.world.exit_pod(name, code, message=message)
                seen.terminal_at = time.monotonic()
                seen.exit_code = code


def summary(version: str, score: float = 0.95) -> str:
    """The termination message a successful trainer writes (what fills status.model)."""
    return json.dumps({"version": version, "metrics": {"accuracy": score}, "score_name": "accuracy",
                       "sklearn_version": "1.9.1"})


def now() -> str:
    return now_iso()
