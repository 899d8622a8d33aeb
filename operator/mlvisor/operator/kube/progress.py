"""Ask a TrainingJob's running search workers how far they are: ``GET /progress`` on each pod's IP.

The one place the Kubernetes shell reads a search's progress (``mlvisor.api.progress``): the
reconciler passes the job's pods, this returns the reports of those that answered, and the
planner turns them into ``status.progress``. No API call and no RBAC: the pod IP and the
container port named ``progress`` are in the pod the reconciler already listed, and the
request goes from the operator's pod to the worker's over the pod network (a NetworkPolicy
that isolates the workers must allow the operator in on that port; without it the job still
runs and status.progress shows what each worker reports as it finishes).

Coalesced: a pod is asked at most once per ``min_interval`` seconds whatever triggers the
reconcile, and the last answer is reused in between (and when a poll fails), so progress
changes the status at most once per interval per job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from mlvisor.api.progress import PROGRESS_PATH, PROGRESS_PORT_NAME, ProgressReport
from mlvisor.operator.plan import ObservedPod

#: Seconds a worker has to answer (an unreachable one holds its job's reconcile this long).
TIMEOUT_SECONDS = 1.0
#: Answers older than this are forgotten (their pods are long gone).
FORGET_SECONDS = 600.0

# Pod IPs are reached directly: never through an HTTP(S)_PROXY set for the operator's API calls.
_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _progress_url(pod: Mapping[str, Any]) -> str | None:
    status = pod.get("status") or {}
    meta = pod.get("metadata") or {}
    ip = status.get("podIP")
    if status.get("phase") != "Running" or meta.get("deletionTimestamp") or not ip:
        return None
    for container in (pod.get("spec") or {}).get("containers") or []:
        for port in container.get("ports") or []:
            if port.get("name") == PROGRESS_PORT_NAME and port.get("containerPort"):
                host = f"[{ip}]" if ":" in str(ip) else ip
                return f"http://{host}:{int(port['containerPort'])}{PROGRESS_PATH}"
    return None


def _get(url: str) -> ProgressReport | None:
    try:
        with _OPENER.open(url, timeout=TIMEOUT_SECONDS) as response:
            return ProgressReport.from_message(response.read(64 * 1024))
    except Exception:  # not up yet, just exited, unreachable: the next poll or its final report will do
        return None


class ProgressPoller:
    """The reports of running search workers, each pod asked at most once per ``min_interval``."""

    def __init__(self, min_interval: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.min_interval = min_interval
        self.clock = clock
        self._last: dict[str, tuple[float, ProgressReport | None]] = {}
        self._asked: dict[str, float] = {}

    async def fetch(self, pods: Sequence[Mapping[str, Any]]) -> dict[str, ProgressReport]:
        """pod name -> its latest report, for the running pods that serve one."""
        now = self.clock()
        out: dict[str, ProgressReport] = {}
        due: dict[str, tuple[str, str]] = {}
        for pod in pods:
            url = _progress_url(pod)
            if url is None:
                continue
            meta = pod.get("metadata") or {}
            name, key = str(meta.get("name")), str(meta.get("uid") or meta.get("name"))
            if now - self._asked.get(key, -1e18) < self.min_interval:
                cached = self._last.get(key)
                if cached is not None and cached[1] is not None:
                    out[name] = cached[1]
                continue
            self._asked[key] = now
            due[name] = (key, url)
        answers = await asyncio.gather(*(asyncio.to_thread(_get, url) for _, url in due.values()))
        for (name, (key, _)), report in zip(due.items(), answers, strict=True):
            previous = self._last.get(key)
            if report is None and previous is not None:
                report = previous[1]
            self._last[key] = (now, report)
            if report is not None:
                out[name] = report
        for key in [k for k, t in self._asked.items() if now - t > FORGET_SECONDS]:
            self._asked.pop(key, None)
            self._last.pop(key, None)
        return out


def with_progress(observed: Sequence[ObservedPod], reports: Mapping[str, ProgressReport]) -> list[ObservedPod]:
    """The observed pods, each running search worker with its report."""
    return [dataclasses.replace(o, progress=reports[o.name]) if o.name in reports else o for o in observed]
