"""The reconcile work queue: per-resource serialised, coalescing, delayed re-runs (no finalizers).

kopf delivers events; the decisions are level-triggered reconciles of one resource at a time.
Between the two sits this queue, shaped like controller-runtime's workqueue:

- ``trigger(key)`` asks for a reconcile of one resource (a TrainingJob or a ModelServer);
  triggers that arrive while it runs are coalesced into exactly one re-run afterwards, so the
  same resource is never reconciled twice concurrently (a pod event and the job's own status
  event would otherwise race on the same status);
- ``trigger(key, delay=s)`` is how a planner's ``requeue_after`` (back-off waits, deadlines,
  ttlSecondsAfterFinished, rollout checks) comes back: an ``asyncio`` timer per resource, the
  earliest one wins;
- a failed reconcile (API unreachable, conflicts) is retried with a per-resource back-off;
- at most ``workers`` reconciles run at once (controller-runtime's MaxConcurrentReconciles). A
  resource waiting for a worker holds only its key: it reads the store when its turn comes, so
  triggers that arrive meanwhile need no extra run. Unbounded, creating 1,000 TrainingJobs had
  about a thousand reconciles in flight, each holding its resource, parsed model and pod
  manifests while it waited for the API client's threads: the peak the process never gave back
  (docs/operator.md, "Memory").

Why not kopf timers or daemons: each adds a finalizer to every resource (docs/operator.md), so a
stopped operator would block ``kubectl delete`` and namespace deletion. Why not
``TemporaryError(delay=...)``: ``on.event`` handlers are never retried. Losing these timers when
the operator restarts is harmless: every decision's state lives in the resource's status
(restart times, nextRestartTime, completionTime), and kopf's initial listing after a restart
triggers a reconcile of every resource, which plans the same requeue again.

No kopf import here: the queue is plain asyncio and unit-tested on its own.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Hashable
from dataclasses import dataclass

logger = logging.getLogger(__name__)

#: A reconcile gets the key and the monotonic time of the oldest event it serves (None for
#: timer-driven runs); it returns the seconds after which to run again, or None.
Reconcile = Callable[[Hashable, float | None], Awaitable[float | None]]


@dataclass
class _Slot:
    timer: asyncio.TimerHandle | None = None
    due: float | None = None
    running: bool = False
    waiting: bool = False
    """Queued for a worker: a trigger now changes nothing (the run reads the store when it starts)."""
    dirty: bool = False
    event_since: float | None = None
    failures: int = 0


class WorkQueue:
    """Serialised, coalescing, delayable reconciles keyed by resource."""

    def __init__(
        self,
        reconcile: Reconcile,
        *,
        retry_delays: tuple[float, ...] = (0.5, 1, 2, 5, 10, 30),
        retryable: Callable[[BaseException], float | None] = lambda e: None,
        workers: int = 512,
    ) -> None:
        self._reconcile = reconcile
        self._workers = asyncio.Semaphore(workers)
        self._retry_delays = retry_delays
        self._retryable = retryable
        self._slots: dict[Hashable, _Slot] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._closed = False

    def trigger(self, key: Hashable, delay: float = 0.0, *, from_event: bool = True) -> None:
        """Reconcile ``key`` after ``delay`` seconds (the earliest pending request wins)."""
        if self._closed:
            return
        loop = asyncio.get_running_loop()
        slot = self._slots.setdefault(key, _Slot())
        if from_event and slot.event_since is None:
            slot.event_since = time.monotonic()
        due = loop.time() + max(0.0, delay)
        if slot.due is not None and slot.due <= due:
            return
        if slot.timer is not None:
            slot.timer.cancel()
        slot.due = due
        slot.timer = loop.call_at(due, self._fire, key)

    def pending(self, key: Hashable) -> float | None:
        """Seconds until the next scheduled reconcile of ``key`` (for tests and logs)."""
        slot = self._slots.get(key)
        if slot is None or slot.due is None:
            return None
        return max(0.0, slot.due - asyncio.get_running_loop().time())

    def _fire(self, key: Hashable) -> None:
        slot = self._slots.get(key)
        if slot is None:
            return
        slot.timer, slot.due = None, None
        if slot.running:
            slot.dirty = True
            return
        if slot.waiting:
            return
        slot.waiting = True
        task = asyncio.get_running_loop().create_task(self._run(key, slot), name=f"reconcile {key}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, key: Hashable, slot: _Slot) -> None:
        again: float | None = None
        async with self._workers:
            slot.waiting, slot.running = False, True
            since, slot.event_since = slot.event_since, None
            try:
                again = await self._reconcile(key, since)
                slot.failures = 0
            except asyncio.CancelledError:
                raise
            except Exception as e:  # one resource's trouble must never stop the others
                delay = self._retryable(e)
                if delay is None:
                    delay = self._retry_delays[min(slot.failures, len(self._retry_delays) - 1)]
                slot.failures += 1
                logger.warning("reconcile of %s failed (%s); retrying in %.1fs", key, e, delay,
                               exc_info=slot.failures == 1)
                again = delay
            finally:
                slot.running = False
        if slot.dirty:
            slot.dirty = False
            self.trigger(key, 0.0, from_event=False)
        if again is not None:
            self.trigger(key, again, from_event=False)
        if not slot.running and not slot.waiting and slot.timer is None and self._slots.get(key) is slot:
            del self._slots[key]  # nothing pending: forget the resource (deleted ones included)

    async def close(self) -> None:
        """Cancel timers and wait for running reconciles to finish (they are short)."""
        self._closed = True
        for slot in self._slots.values():
            if slot.timer is not None:
                slot.timer.cancel()
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=10)
