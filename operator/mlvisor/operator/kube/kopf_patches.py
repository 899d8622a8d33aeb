"""One change to kopf's internals, where kopf itself was the limit (docs/operator.md, "Restart").

**Waking every waiting worker for every object of the initial listing.** Until every indexed
kind has been listed once, kopf gates handlers behind ``operator_indexed``, a
``ToggleSet(all)``: each new object adds a toggle (``make_toggle``) and drops it once indexed
(``drop_toggle``), and each of these calls ``notify_all`` on the set's one condition. Every
worker whose object is indexed waits on that condition (``wait_for(True)``), and each wake-up
re-evaluates ``all()`` over the toggles. So listing N objects costs about N x N wake-ups: an
operator restart with 1,000 TrainingJobs (3,000 objects with their pods) spent 35 s there, and
one with 10,000 (30,000 objects) more than 10 minutes, its event loop busy scheduling wake-ups
(py-spy: ``Condition.notify`` under ``ToggleSet.make_toggle``).

Adding or dropping a toggle can only matter to a waiter when it changes what the set says
(``is_on()``), since every waiter's predicate is that value; a toggle turned by its own
``turn_to`` still notifies as before. So the set notifies only when its value flips: once when
the initial listing is complete. kopf is pinned (pyproject.toml); if its ToggleSet no longer
looks like the one this was written for, nothing is changed and a warning says so.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from typing import Any

logger = logging.getLogger(__name__)

_PATCHED = "_mlvisor_notifies_on_flip"


def quiet_toggle_sets() -> bool:
    """Make kopf's ToggleSet notify its waiters only when its value flips (True: patched)."""
    from kopf._cogs.aiokits import aiotoggles

    cls: Any = aiotoggles.ToggleSet
    if getattr(cls, _PATCHED, False):
        return True
    expected = ("make_toggle", "drop_toggle", "drop_toggles", "is_on", "_condition", "_toggles")
    probe = cls(all)
    if not all(hasattr(probe, name) for name in expected):
        logger.warning("kopf's ToggleSet changed shape; its initial listing stays O(N^2) in wake-ups")
        return False

    async def make_toggle(self: Any, __val: bool = False, *, name: str | None = None) -> Any:
        toggle = aiotoggles.Toggle(__val, name=name, condition=self._condition)
        async with self._condition:
            before = self.is_on()
            self._toggles.add(toggle)
            if self.is_on() != before:
                self._condition.notify_all()
        return toggle

    async def drop_toggle(self: Any, toggle: Any) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.discard(toggle)
            if self.is_on() != before:
                self._condition.notify_all()

    async def drop_toggles(self: Any, toggles: Iterable[Any]) -> None:
        async with self._condition:
            before = self.is_on()
            self._toggles.difference_update(toggles)
            if self.is_on() != before:
                self._condition.notify_all()

    cls.make_toggle = make_toggle
    cls.drop_toggle = drop_toggle
    cls.drop_toggles = drop_toggles
    setattr(cls, _PATCHED, True)
    return True
