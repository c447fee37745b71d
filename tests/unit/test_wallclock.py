"""The ray backend's wall clock (cluster/wallclock.py): waits below the event loop's timer
granularity are spun, so they last at least as long as asked and do not suspend the task."""

from __future__ import annotations

import asyncio

from cluster.wallclock import SPIN_BELOW_US, WallClock


def test_a_short_wait_lasts_at_least_as_asked_and_does_not_yield():
    clock = WallClock()
    ran = []

    async def other() -> None:
        ran.append(clock.now())

    async def main() -> tuple[float, int]:
        t = asyncio.get_running_loop().create_task(other())
        t0 = clock.now()
        await clock.sleep(300.0)
        elapsed = clock.now() - t0
        seen = len(ran)  # the other task has not run: the spin did not yield
        await t
        return elapsed, seen

    elapsed, seen = asyncio.run(main())
    assert elapsed >= 300.0
    assert seen == 0


def test_a_long_wait_suspends_and_lets_others_run():
    clock = WallClock()
    order = []

    async def other() -> None:
        order.append("other")

    async def main() -> float:
        t = asyncio.get_running_loop().create_task(other())
        t0 = clock.now()
        await clock.sleep(SPIN_BELOW_US)
        order.append("sleeper")
        await t
        return clock.now() - t0

    assert asyncio.run(main()) >= SPIN_BELOW_US
    assert order == ["other", "sleeper"]
