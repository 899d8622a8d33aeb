"""kube/progress.py: asking running search workers for their progress, over real HTTP, coalesced."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from mlvisor.api.progress import ProgressReport, TrialBrief
from mlvisor.operator.kube.observe import observe_pod
from mlvisor.operator.kube.progress import ProgressPoller, with_progress


class Worker:
    """A search worker's progress endpoint that counts how often it is asked."""

    def __init__(self) -> None:
        self.asked = 0
        self.report = ProgressReport(worker=0, trials_done=1, trials_total=3,
                                     top=[TrialBrief(trial=2, score=0.9, params={"C": 1})])
        worker = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                worker.asked += 1
                body = worker.report.model_dump_json().encode() if self.path == "/progress" else b""
                self.send_response(200 if body else 404)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def worker() -> Iterator[Worker]:
    w = Worker()
    yield w
    w.close()


def pod(name: str, port: int | None, *, phase: str = "Running", ip: str | None = "127.0.0.1",
        deleting: bool = False) -> dict[str, Any]:
    container: dict[str, Any] = {"name": "trainer"}
    if port is not None:
        container["ports"] = [{"name": "progress", "containerPort": port}]
    meta: dict[str, Any] = {"name": name, "uid": f"uid-{name}",
                            "labels": {"mlvisor.dev/worker-index": "0", "mlvisor.dev/attempt": "1"}}
    if deleting:
        meta["deletionTimestamp"] = "2026-12-04T00:00:00Z"
    status: dict[str, Any] = {"phase": phase}
    if ip:
        status["podIP"] = ip
    return {"metadata": meta, "spec": {"containers": [container]}, "status": status}


async def test_a_running_worker_is_asked_at_most_once_per_interval(worker: Worker) -> None:
    now = [100.0]
    poller = ProgressPoller(4.0, clock=lambda: now[0])
    pods = [pod("w-0", worker.port)]
    first = await poller.fetch(pods)
    assert first["w-0"] == worker.report and worker.asked == 1
    worker.report = worker.report.model_copy(update={"trials_done": 2})
    now[0] += 3.9  # a reconcile triggered by some event in between: the last answer, no request
    assert (await poller.fetch(pods))["w-0"].trials_done == 1 and worker.asked == 1
    now[0] += 0.2
    assert (await poller.fetch(pods))["w-0"].trials_done == 2 and worker.asked == 2
    observed = with_progress([observe_pod(p) for p in pods], await poller.fetch(pods))
    assert observed[0].progress is not None and observed[0].progress.trials_done == 2


async def test_workers_that_cannot_answer_are_skipped_and_a_failed_poll_keeps_the_last_answer(worker: Worker) -> None:
    now = [0.0]
    poller = ProgressPoller(1.0, clock=lambda: now[0])
    assert await poller.fetch([pod("pending", worker.port, phase="Pending"), pod("no-ip", worker.port, ip=None),
                               pod("leaving", worker.port, deleting=True), pod("select", None),
                               pod("done", worker.port, phase="Succeeded")]) == {}
    assert worker.asked == 0
    assert (await poller.fetch([pod("w-0", worker.port)]))["w-0"].trials_done == 1
    worker.close()  # the worker process went away between two polls
    now[0] += 2
    assert (await poller.fetch([pod("w-0", worker.port)]))["w-0"].trials_done == 1
    silent = ProgressPoller(1.0, clock=lambda: now[0])
    assert await silent.fetch([pod("w-0", worker.port)]) == {}
