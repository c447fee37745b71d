"""The virtual-time loop of cluster/vtime.py and the supervised tasks of nodes/runtime.py."""

from __future__ import annotations

import asyncio
import time

import pytest

from cluster.vtime import Deadlock, VirtualClock, run_virtual
from nodes.errors import InternalError
from nodes.runtime import Runtime


def test_long_sleep_jumps_the_clock_in_no_real_time():
    async def main():
        clock = VirtualClock()
        t0 = clock.now()
        await clock.sleep(1e6)  # one virtual second
        t1 = clock.now()
        await clock.sleep(250)
        return t0, t1, clock.now()

    wall = time.perf_counter()
    t0, t1, t2 = run_virtual(main())
    wall = time.perf_counter() - wall
    assert (t0, t1, t2) == (0.0, 1e6, 1e6 + 250)
    assert wall < 0.5


def test_concurrent_sleepers_wake_in_virtual_time_order():
    async def main():
        clock = VirtualClock()
        woke: list[tuple[str, float]] = []

        async def sleeper(name: str, us: float) -> None:
            await clock.sleep(us)
            woke.append((name, clock.now()))

        await asyncio.gather(sleeper("c", 3000), sleeper("a", 10), sleeper("b", 2500.5))
        return woke, clock.now()

    woke, end = run_virtual(main())
    assert woke == [("a", 10.0), ("b", 2500.5), ("c", 3000.0)]
    assert end == 3000.0


def test_runtime_sleep_uses_the_injected_clock_and_refuses_negative():
    async def main():
        rt = Runtime(VirtualClock())
        await rt.sleep(42)
        assert rt.now() == 42.0
        with pytest.raises(InternalError, match="negative sleep of -1"):
            await rt.sleep(-1)
        return rt.now()

    assert run_virtual(main()) == 42.0


def test_deadlock_when_the_only_task_waits_forever():
    async def main():
        await asyncio.get_running_loop().create_future()  # nobody will ever set it

    with pytest.raises(Deadlock, match="every task is waiting"):
        run_virtual(main())


def test_deadlock_when_every_task_waits_on_another():
    reached: list[str] = []

    async def main():
        clock = VirtualClock()
        a, b = asyncio.Event(), asyncio.Event()

        async def one(mine: asyncio.Event, theirs: asyncio.Event, name: str) -> None:
            await clock.sleep(7)
            reached.append(name)
            await theirs.wait()  # each waits for the other: nothing ever sets either
            mine.set()

        await asyncio.gather(one(a, b, "x"), one(b, a, "y"))

    with pytest.raises(Deadlock, match=r"deadlock at virtual time 7\.000 us"):
        run_virtual(main())
    assert sorted(reached) == ["x", "y"]


def test_no_deadlock_while_a_timer_is_pending():
    async def main():
        clock = VirtualClock()
        ev = asyncio.Event()

        async def setter() -> None:
            await clock.sleep(5e5)
            ev.set()

        t = asyncio.ensure_future(setter())
        await ev.wait()
        await t
        return clock.now()

    assert run_virtual(main()) == 5e5


def test_run_virtual_cancels_tasks_left_behind():
    cancelled: list[bool] = []

    async def main():
        clock = VirtualClock()

        async def forever() -> None:
            try:
                await clock.sleep(1e9)
            except asyncio.CancelledError:
                cancelled.append(True)
                raise

        asyncio.ensure_future(forever())
        await clock.sleep(1)
        return "done"

    assert run_virtual(main()) == "done"
    assert cancelled == [True]


def test_spawn_failure_is_reraised_by_join():
    class Boom(Exception):
        pass

    async def main():
        rt = Runtime(VirtualClock())

        async def fails() -> None:
            await rt.sleep(100)
            raise Boom("worker oopsed at 100 us")

        async def fine() -> str:
            await rt.sleep(300)
            return "ok"

        rt.spawn(fails(), name="fails")
        t_ok = rt.spawn(fine(), name="fine")
        rt.check()  # nothing failed yet
        assert rt.pending_tasks == 2
        with pytest.raises(Boom, match="worker oopsed at 100 us"):
            await rt.join()
        # join waited for every task, not just until the first failure
        assert rt.now() == 300.0
        assert t_ok.result() == "ok"
        assert rt.pending_tasks == 0

    run_virtual(main())


def test_spawn_failure_is_reraised_by_check_and_the_first_one_wins():
    async def main():
        rt = Runtime(VirtualClock())

        async def fails(at: float, msg: str) -> None:
            await rt.sleep(at)
            raise RuntimeError(msg)

        rt.spawn(fails(20, "second"), name="late")
        rt.spawn(fails(10, "first"), name="early")
        await rt.sleep(15)
        with pytest.raises(RuntimeError, match="first"):
            rt.check()
        await rt.sleep(10)
        with pytest.raises(RuntimeError, match="first"):
            rt.check()

    run_virtual(main())


def test_cancelled_task_is_not_a_failure():
    async def main():
        rt = Runtime(VirtualClock())

        async def sleeper() -> None:
            await rt.sleep(1e6)

        t = rt.spawn(sleeper(), name="sleeper")
        await rt.sleep(1)
        t.cancel()
        await rt.join()  # does not raise
        return rt.now()

    assert run_virtual(main()) == 1.0


def test_tasks_spawned_by_tasks_are_joined_too(vrun):
    seen: list[float] = []

    async def body(rt: Runtime):
        async def child() -> None:
            await rt.sleep(500)
            seen.append(rt.now())

        async def parent() -> None:
            await rt.sleep(100)
            rt.spawn(child(), name="child")

        rt.spawn(parent(), name="parent")
        await rt.join()
        return rt.now()

    assert vrun(body) == 600.0
    assert seen == [600.0]
