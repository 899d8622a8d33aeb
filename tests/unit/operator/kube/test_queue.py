"""The work queue: one reconcile per resource at a time, coalesced, requeued, retried with back-off."""

from __future__ import annotations

import asyncio

from mlvisor.operator.kube.queue import WorkQueue


def test_the_queue_serialises_coalesces_and_requeues():
    calls: list[tuple[str, bool]] = []
    running = 0
    overlap = False

    async def reconcile(key, since):
        nonlocal running, overlap
        running += 1
        overlap = overlap or running > 1
        calls.append((key, since is not None))
        await asyncio.sleep(0.02)
        running -= 1
        return 0.05 if len([c for c in calls if c[0] == key]) == 1 else None

    async def main():
        queue = WorkQueue(reconcile)
        for _ in range(5):
            queue.trigger("a")
        await asyncio.sleep(0.005)
        for _ in range(5):
            queue.trigger("a")  # while running: one more run afterwards, not five
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(main())
    assert not overlap
    # ten triggers -> two runs; the first run's requeue (0.05 s) is superseded by the earlier re-run
    assert [c[0] for c in calls] == ["a", "a"]
    assert calls[0][1] is True  # the first run serves an event


def test_a_failing_reconcile_is_retried_with_backoff():
    attempts = 0

    async def reconcile(key, since):
        nonlocal attempts
        attempts += 1
        if attempts < 3:
            raise RuntimeError("API unreachable")
        return None

    async def main():
        queue = WorkQueue(reconcile, retry_delays=(0.01, 0.02))
        queue.trigger("a")
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(main())
    assert attempts == 3


def test_a_429_is_retried_when_the_api_server_said_and_a_conflict_at_once():
    from mlvisor.operator.kube.client import ApiError, retry_after
    from mlvisor.operator.kube.controllers import retry_delay

    assert retry_after({"Retry-After": "3"}) == 3.0
    assert retry_after({}) is None and retry_after(None) is None and retry_after({"Retry-After": "soon"}) is None
    assert retry_delay(ApiError(429, "TooManyRequests", retry_after=3.0)) == 3.0
    assert retry_delay(ApiError(429, "TooManyRequests")) == 1.0  # throttled without a word: a second
    assert retry_delay(ApiError(409, "Conflict")) == 0.05
    assert retry_delay(ApiError(500, "InternalError")) is None  # the queue's own back-off


def test_a_throttled_reconcile_waits_what_the_server_asked():
    from mlvisor.operator.kube.client import ApiError
    from mlvisor.operator.kube.controllers import retry_delay

    times: list[float] = []

    async def reconcile(key, since):
        times.append(asyncio.get_running_loop().time())
        if len(times) == 1:
            raise ApiError(429, "TooManyRequests", retry_after=0.2)
        return None

    async def main():
        queue = WorkQueue(reconcile, retry_delays=(0.01,), retryable=retry_delay)
        queue.trigger("a")
        await asyncio.sleep(0.5)
        await queue.close()

    asyncio.run(main())
    assert len(times) == 2 and times[1] - times[0] >= 0.2


def test_at_most_workers_reconciles_run_at_once_and_a_waiting_resource_runs_once():
    running = 0
    most = 0
    runs: dict[str, int] = {}

    async def reconcile(key, since):
        nonlocal running, most
        running += 1
        most = max(most, running)
        runs[key] = runs.get(key, 0) + 1
        await asyncio.sleep(0.01)
        running -= 1
        return None

    async def main():
        queue = WorkQueue(reconcile, workers=3)
        keys = [f"r{i}" for i in range(12)]
        for key in keys:
            queue.trigger(key)
        await asyncio.sleep(0.001)
        for key in keys[6:]:  # still waiting for a worker: their run reads the latest state anyway
            queue.trigger(key)
        await asyncio.sleep(0.3)
        await queue.close()

    asyncio.run(main())
    assert most == 3
    assert runs == {f"r{i}": 1 for i in range(12)}
