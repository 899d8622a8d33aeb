"""kopf's operator_indexed gate wakes its waiters when its value flips, not for every object."""

from __future__ import annotations

import asyncio

from kopf._cogs.aiokits import aiotoggles

from mlvisor.operator.kube.kopf_patches import quiet_toggle_sets


def _listing(objects: int) -> tuple[int, bool]:
    """An initial listing as kopf's workers do it: each object adds a toggle, is indexed (drops
    it) and waits for the whole set; the kind's own toggle drops last. (predicate checks, all released)."""
    checks = 0

    async def main() -> bool:
        nonlocal checks
        gate = aiotoggles.ToggleSet(all)
        kind = await gate.make_toggle(name="the kind's listing")
        original_is_on = gate.is_on

        def counted() -> bool:
            nonlocal checks
            checks += 1
            return original_is_on()

        waiters = []
        for i in range(objects):
            toggle = await gate.make_toggle(name=f"object {i}")
            await gate.drop_toggle(toggle)
            gate.is_on = counted  # type: ignore[method-assign]  # count the waiters' re-checks only
            waiters.append(asyncio.create_task(gate.wait_for(True)))
            await asyncio.sleep(0)
            gate.is_on = original_is_on  # type: ignore[method-assign]
        gate.is_on = counted  # type: ignore[method-assign]
        await gate.drop_toggle(kind)
        _, pending = await asyncio.wait(waiters, timeout=5)
        return not pending

    released = asyncio.run(main())
    return checks, released


def test_the_gate_wakes_its_waiters_once_when_the_listing_is_complete():
    assert quiet_toggle_sets()
    checks, released = _listing(300)
    assert released, "a worker waiting for the listing was never released"
    # 300 waiters: each checks once when it starts and once when the set flips (unpatched kopf
    # woke every waiter for every object: about 300 x 300 / 2 x 2 = 90,000 checks)
    assert checks <= 3 * 300, checks


def test_a_toggle_that_flips_the_set_still_wakes_its_waiters():
    assert quiet_toggle_sets()

    async def main() -> bool:
        gate = aiotoggles.ToggleSet(all)
        waiter = asyncio.create_task(gate.wait_for(False))
        await asyncio.sleep(0)
        await gate.make_toggle(name="off")  # the set was on (empty): now off
        await asyncio.wait_for(waiter, 1)
        return gate.is_off()

    assert asyncio.run(main())
