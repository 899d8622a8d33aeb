"""Faults on a real control plane: the operator SIGKILLed at random points, and an API that misbehaves.

The control plane is real (its own node-less instance, ``bare.py``); the test plays the
kubelet so that it decides which worker fails and when. Each scenario states the final state
a fault-free run reaches and checks that every resource reaches exactly that state: the same
phase, the same restart count (never a failure counted twice or lost), the same pods (never a
second live pod for one worker), and nothing left once the resources are deleted (no orphan:
the real garbage collector collects every child).
"""

from __future__ import annotations

import asyncio
import json
import random
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from aiohttp import ClientSession, ClientTimeout, TCPConnector, web

from cluster.bare import Kubelet, summary
from cluster.conftest import REPO
from emulator.conftest import Operator
from emulator.world import World, eventually

pytestmark = [pytest.mark.cluster]

TJ, MS = "TrainingJob", "ModelServer"
NS = "faults"  # the namespace of the bare plane (conftest)
JOBS = 50
SERVERS = 10
ROLLOUTS_PER_SERVER = 2


def search_job(i: int) -> dict[str, Any]:
    return {
        "dataset": {"builtin": "iris"},
        "estimator": {"class": "sklearn.ensemble.RandomForestClassifier", "params": {"random_state": 0}},
        "search": {"grid": {"max_depth": [2, 4], "n_estimators": [5, 10]}, "cv": 2},
        "workers": 2,
        "supervision": {"maxRestarts": 5, "periodSeconds": 600,
                        "backoff": {"initialSeconds": 0.3, "factor": 2, "maxSeconds": 1}},
    }


def failures_of(job: str) -> int:
    """The fault plan: job cc-<i> has worker 0 fail (exit 1) on its first i % 3 attempts."""
    return int(job.rsplit("-", 1)[1]) % 3


def outcome(pod: dict[str, Any]) -> tuple[int, str | None]:
    labels = pod["metadata"]["labels"]
    job = labels["app.kubernetes.io/instance"]
    name = pod["metadata"]["name"]
    env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0].get("env") or []}
    attempt = int(name.rsplit("-", 1)[1])
    if "-worker-0-" in name and attempt <= failures_of(job):
        return 1, "injected crash"
    if "-select-" in name:
        return 0, summary(env["MLVISOR_MODEL_VERSION"])
    return 0, None


def expected_pods(job: str) -> set[str]:
    n = failures_of(job)
    return {f"{job}-worker-0-{a}" for a in range(1, n + 2)} | {f"{job}-worker-1-1", f"{job}-select-1"}


class Killer:
    """SIGKILLs the operator at random moments and starts a new one, until stopped."""

    def __init__(self, op: Operator, seed: int, between: tuple[float, float]) -> None:
        self.op, self.rng, self.between = op, random.Random(seed), between
        self.kills = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.wait(self.rng.uniform(*self.between)):
            self.op.kill()
            self.kills += 1
            self.op.start()

    def start(self) -> Killer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(60)


def _gc_check(world: World, kinds: tuple[str, ...]) -> None:
    for kind in kinds:
        for item in world.request("GET", world.cr_path(kind), None, "")["items"]:
            world.delete(kind, item["metadata"]["name"])
    eventually(lambda: not world.pods(), 120, what="every pod garbage-collected (no orphan)")
    eventually(lambda: not world.request("GET", f"/apis/apps/v1/namespaces/{NS}/deployments", None, "")["items"], 120,
               what="every Deployment garbage-collected")


# The scenario's own deadlines (180 s per rollout wave, 300 s to settle, 120 s after) bound it;
# pytest's default 300 s per test is shorter than they are on a loaded machine.
@pytest.mark.timeout(900)
def test_operator_sigkilled_at_random_points_changes_no_outcome(bare: Any, tmp_path: Path) -> None:
    plane, world = bare
    op = Operator(plane.kubeconfig, tmp_path)
    op.start()
    kubelet = Kubelet(world, outcome, seed=1).start()
    killer = Killer(op, seed=2, between=(2.0, 6.0)).start()
    jobs = [f"cc-{i}" for i in range(JOBS)]
    servers = [f"ms-{i}" for i in range(SERVERS)]
    try:
        for name in jobs:
            world.create(TJ, name, search_job(int(name.rsplit("-", 1)[1])))
        for name in servers:
            world.create(MS, name, {"model": {"uri": f"pvc://mlvisor-models/{NS}/{name}/v1/"}, "replicas": 1,
                                    "supervision": {"maxRestarts": 5, "periodSeconds": 300}})
        # Roll every server out twice (v1 -> v2 -> v3), each time once the previous version serves.
        for version in range(2, 2 + ROLLOUTS_PER_SERVER):
            for name in servers:
                eventually(lambda n=name, v=version: world.status(MS, n).get("modelVersion") == f"v{v - 1}"
                           and world.status(MS, n).get("phase") == "Ready", 180, what=f"{name} serving v{version - 1}")
                world.patch_spec(MS, name, {"model": {"uri": f"pvc://mlvisor-models/{NS}/{name}/v{version}/"}})

        def settled() -> bool:
            done = all(world.status(TJ, n).get("phase") == "Succeeded" for n in jobs)
            served = all((s := world.status(MS, n)).get("phase") == "Ready"
                         and s.get("modelVersion") == f"v{1 + ROLLOUTS_PER_SERVER}" for n in servers)
            return done and served

        eventually(settled, 300, what="every job Succeeded and every server Ready on its last version")
        # On an idle machine the scenario can settle within a handful of kills; the operator is
        # then killed a few more times over the settled state, which must not change it either.
        eventually(lambda: killer.kills >= 5, 60, what="at least 5 operator kills")
        eventually(settled, 120, what="the settled state unchanged by the later kills")
    finally:
        killer.stop()
        kubelet.stop()
    try:
        assert killer.kills >= 5, f"only {killer.kills} kills: the scenario did not exercise restarts"
        assert not kubelet.duplicates, kubelet.duplicates
        assert not kubelet.errors, kubelet.errors[:5]
        for name in jobs:
            status = world.status(TJ, name)
            assert status["supervision"]["totalRestarts"] == failures_of(name), (name, status["supervision"])
            assert set(world.pods(name)) == expected_pods(name), name
            assert status["model"]["score"] == 0.95
        for name in servers:
            status = world.status(MS, name)
            assert status.get("supervision", {}).get("totalRestarts", 0) == 0, (name, status)
            assert status["lastGoodModelVersion"] == f"v{1 + ROLLOUTS_PER_SERVER}"
        _gc_check(world, (MS, TJ))
        _record("crash-consistency", {"jobs": JOBS, "rollouts": SERVERS * ROLLOUTS_PER_SERVER,
                                      "operator_kills": killer.kills, "duplicates": 0, "restart_count_errors": 0})
    finally:
        op.stop()


# ------------------------------------------------------------------------------ API faults


class FaultProxy:
    """Plain HTTP on loopback in front of the API server (TLS with the admin certificate behind).

    A share of requests is answered with 500, 429 (Retry-After: 1) or 409 without reaching the
    API server, or held until the client gives up; watch streams are cut after a random
    moment. Everything else is passed through unchanged.
    """

    def __init__(self, upstream: str, pki: Path, seed: int, rate: float) -> None:
        self.upstream, self.rng, self.rate = upstream, random.Random(seed), rate
        self.ctx = ssl.create_default_context(cafile=str(pki / "ca.crt"))
        self.ctx.load_cert_chain(str(pki / "admin.crt"), str(pki / "admin.key"))
        self.counts: dict[str, int] = {"passed": 0, "500": 0, "429": 0, "409": 0, "hang": 0, "cut": 0}
        self.port = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> FaultProxy:
        self._thread.start()
        assert self._ready.wait(10)
        return self

    def stop(self) -> None:
        if self._loop is None:
            return

        async def close() -> None:
            await self.runner.shutdown()
            await self.runner.cleanup()
            await self.session.close()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        self.session = ClientSession(connector=TCPConnector(ssl=self.ctx), timeout=ClientTimeout(total=None))
        app = web.Application(client_max_size=64 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._handle)
        runner = self.runner = web.AppRunner(app, access_log=None, shutdown_timeout=1)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        watch = request.query.get("watch") in ("1", "true")
        roll = self.rng.random()
        if not watch and roll < self.rate:
            # 409 only where a real API server answers it for an object that is not there yet:
            # a write guarded by resourceVersion (PATCH/PUT), never a create.
            fault = self.rng.choice(["500", "429", "409", "hang"] if request.method in ("PATCH", "PUT")
                                    else ["500", "429", "hang"])
            self.counts[fault] += 1
            if fault == "hang":
                await asyncio.sleep(15)  # longer than the operator's request timeout (10 s)
                return web.Response(status=504)
            status = int(fault)
            headers = {"Retry-After": "1"} if status == 429 else {}
            body = {"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": status,
                    "reason": {500: "InternalError", 429: "TooManyRequests", 409: "Conflict"}[status],
                    "message": f"injected {status}"}
            return web.json_response(body, status=status, headers=headers)
        self.counts["passed"] += 1
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length", "transfer-encoding")}
        async with self.session.request(request.method, self.upstream + request.path_qs, data=body or None,
                                        headers=headers) as up:
            resp = web.StreamResponse(status=up.status, headers={
                k: v for k, v in up.headers.items() if k.lower() not in ("content-length", "transfer-encoding", "content-encoding")})
            await resp.prepare(request)
            cut_at = time.monotonic() + self.rng.uniform(1, 6) if watch else None
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
                if cut_at is not None and time.monotonic() > cut_at:
                    self.counts["cut"] += 1
                    request.transport.close() if request.transport else None  # type: ignore[func-returns-value]
                    return resp
            return resp


def test_api_faults_slow_the_operator_down_but_never_fail_a_resource(bare: Any, tmp_path: Path) -> None:
    plane, world = bare
    proxy = FaultProxy(plane.api_url, plane.state_dir / "pki", seed=3, rate=0.1).start()
    kubeconfig = tmp_path / "faulty.kubeconfig"
    kubeconfig.write_text(json.dumps({
        "apiVersion": "v1", "kind": "Config", "current-context": "faulty",
        "clusters": [{"name": "faulty", "cluster": {"server": f"http://127.0.0.1:{proxy.port}"}}],
        "users": [{"name": "faulty", "user": {"token": "unused"}}],
        "contexts": [{"name": "faulty", "context": {"cluster": "faulty", "user": "faulty"}}],
    }))
    op = Operator(kubeconfig, tmp_path)  # its request timeout is 10 s: a held request is given up
    op.start()
    kubelet = Kubelet(world, outcome, seed=4).start()
    jobs = [f"api-{i}" for i in range(12)]
    try:
        for name in jobs:
            world.create(TJ, name, search_job(0))
        world.create(MS, "api-ms", {"model": {"uri": f"pvc://mlvisor-models/{NS}/api-ms/v1/"}, "replicas": 1})

        def settled() -> bool:
            phases = {world.status(TJ, n).get("phase") for n in jobs}
            assert "Failed" not in phases, "a resource was failed because the API misbehaved"
            return phases == {"Succeeded"} and world.status(MS, "api-ms").get("phase") == "Ready"

        eventually(settled, 300, what="every job Succeeded and the server Ready through the faulty API")
    finally:
        kubelet.stop()
        op.stop()
        proxy.stop()
    faults = sum(v for k, v in proxy.counts.items() if k not in ("passed", "cut"))
    assert faults >= 15 and proxy.counts["cut"] >= 3, proxy.counts
    assert not kubelet.duplicates, kubelet.duplicates
    for name in jobs:
        status = world.status(TJ, name)
        assert status["supervision"]["totalRestarts"] == failures_of(name), (name, status["supervision"])
        assert set(world.pods(name)) == expected_pods(name), name
    _gc_check(world, (MS, TJ))
    _record("api-faults", dict(proxy.counts))


def _record(name: str, figures: dict[str, Any]) -> None:
    """Figures for docs/reliability.md, kept beside the control plane's logs."""
    out = REPO / "build" / "reliability"
    out.mkdir(parents=True, exist_ok=True)
    (out / f"{name}.json").write_text(json.dumps(figures, indent=2))
