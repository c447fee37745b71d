"""The virtual-time loop of cluster/vtime.py and the supervised tasks of nodes/runtime.py."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from cluster.vtime import Deadlock, SimTask, Trace, VirtualClock, VirtualTimeLoop, make_policy, run_virtual
from nodes.errors import InternalError
from nodes.runtime import Runtime


def test_long_sleep_jumps_the_clock_in_one_step():
    async def main():
        clock = VirtualClock()
        t0 = clock.now()
        await clock.sleep(1e6)  # one virtual second
        t1 = clock.now()
        await clock.sleep(250)
        return t0, t1, clock.now()

    loop = VirtualTimeLoop(trace=Trace("full"))
    t0, t1, t2 = run_virtual(main(), loop=loop)
    assert (t0, t1, t2) == (0.0, 1e6, 1e6 + 250)
    # the clock jumped: the task ran three times (start, after each sleep), nothing ticked
    steps = [line.split() for line in loop.trace.entries if ".main#" in line]
    assert [float(t) for t, _, _ in steps] == [0.0, 1e6, 1e6 + 250]
    assert loop.trace.steps == 4  # and asyncio's run_until_complete callback


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


# --- SimTask and SimFuture: asyncio's Task and Future semantics on the virtual loop ---------

SCHEDULERS = ["fifo", "random"]


def _loop(scheduler: str) -> VirtualTimeLoop:
    return VirtualTimeLoop(policy=make_policy(scheduler, 5))


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_current_task_is_the_running_task_in_a_step_none_in_a_callback_and_the_loop_is_not_kept(scheduler):
    """asyncio.current_task() as on asyncio's own loop, in every kind of step (after a sleep,
    after a SimFuture, in a done-callback, in a timer handle, after the loop stopped); and no
    entry of asyncio's current-task table keeps a finished loop alive."""
    seen = []

    async def player(name, fut):
        me = asyncio.current_task()
        seen.append((name, "start", me.get_name() == name))
        await VirtualClock().sleep(1)
        seen.append((name, "slept", asyncio.current_task() is me))
        await fut
        seen.append((name, "woken", asyncio.current_task() is me))

    async def main():
        loop = asyncio.get_running_loop()
        futs = [loop.create_future(), loop.create_future()]
        tasks = [loop.create_task(player(f"p{i}", futs[i]), name=f"p{i}") for i in range(2)]
        tasks[0].add_done_callback(lambda t: seen.append(("done-callback", asyncio.current_task())))
        loop.call_soon(lambda: seen.append(("callback", asyncio.current_task())))
        loop.call_later(3, lambda: seen.append(("timer", asyncio.current_task())))
        await VirtualClock().sleep(2)
        for f in futs:
            f.set_result(None)
        await asyncio.gather(*tasks)
        await VirtualClock().sleep(2)

    loop = _loop(scheduler)
    run_virtual(main(), loop=loop)
    assert sorted(e for e in seen if e[0].startswith("p")) == sorted(
        (f"p{i}", what, True) for i in range(2) for what in ("start", "slept", "woken"))
    assert sorted(e for e in seen if not e[0].startswith("p")) == [
        ("callback", None), ("done-callback", None), ("timer", None)]
    assert asyncio.tasks._current_tasks.get(loop) is None and loop not in asyncio.tasks._current_tasks


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_cancelling_a_sleeping_task_wakes_it_at_once(scheduler):
    seen = []

    async def sleeper(clock):
        try:
            await clock.sleep(10_000_000)
        except asyncio.CancelledError:
            seen.append(("cancelled at", clock.now()))
            raise

    async def main():
        clock = VirtualClock()
        t = asyncio.get_running_loop().create_task(sleeper(clock))
        assert isinstance(t, SimTask) and asyncio.current_task() is not t
        await clock.sleep(5)
        assert t.cancel() and t.cancelling() == 1
        with pytest.raises(asyncio.CancelledError):
            await t
        assert t.cancelled() and not t.cancel()
        await clock.sleep(1)
        return clock.now()

    loop = _loop(scheduler)
    assert run_virtual(main(), loop=loop) == 6  # the dead sleep did not pull the clock to 10 s
    assert seen == [("cancelled at", 5)]


def test_a_task_that_cancels_itself_and_sleeps_is_cancelled_at_once():
    async def selfish(clock):
        asyncio.current_task().cancel()
        await clock.sleep(1_000)

    async def main():
        clock = VirtualClock()
        t = asyncio.get_running_loop().create_task(selfish(clock))
        with pytest.raises(asyncio.CancelledError):
            await t
        return clock.now()

    assert run_virtual(main()) == 0


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_a_future_delivers_result_exception_and_cancellation_to_every_waiter(scheduler):
    async def wait(fut, out, who):
        try:
            out.append((who, await fut))
        except BaseException as e:  # noqa: BLE001 - the outcome is what the test checks
            out.append((who, type(e).__name__))

    async def main():
        loop = asyncio.get_running_loop()
        clock = VirtualClock()
        outcomes = []
        for outcome in ("value", "error", "cancel"):
            fut = loop.create_future()
            called = []
            fut.add_done_callback(lambda f: called.append(f.cancelled()))
            waiters = [loop.create_task(wait(fut, outcomes, f"{outcome}{i}")) for i in range(3)]
            await clock.sleep(1)
            if outcome == "value":
                fut.set_result(42)
            elif outcome == "error":
                fut.set_exception(KeyError("k"))
            else:
                fut.cancel()
            await asyncio.gather(*waiters)
            assert called == [outcome == "cancel"]
        return sorted(outcomes)

    got = run_virtual(main(), loop=_loop(scheduler))
    assert got == sorted([(f"value{i}", 42) for i in range(3)] + [(f"error{i}", "KeyError") for i in range(3)]
                         + [(f"cancel{i}", "CancelledError") for i in range(3)])


def test_cancelling_a_task_that_waits_on_a_future_cancels_the_future():
    async def main():
        loop = asyncio.get_running_loop()
        fut = loop.create_future()

        async def waiter():
            await fut

        t = loop.create_task(waiter())
        await asyncio.sleep(0)  # let it start waiting
        assert t.cancel(msg="stop")
        with pytest.raises(asyncio.CancelledError):
            await t
        return fut.cancelled(), t.cancelled()

    assert run_virtual(main()) == (True, True)


def test_asyncio_primitives_run_in_virtual_time():
    """Lock, Event, wait with a timeout, gather and contextvars, on SimTasks."""
    var = contextvars.ContextVar("var", default="unset")

    async def main():
        loop = asyncio.get_running_loop()
        clock = VirtualClock()
        lock = asyncio.Lock()
        order = []

        async def holder(name, hold):
            var.set(name)
            async with lock:
                order.append((name, clock.now()))
                await clock.sleep(hold)
            assert var.get() == name  # each task kept its own context across its sleeps
            return name

        names = await asyncio.gather(holder("a", 10), holder("b", 20), holder("c", 5))
        event = asyncio.Event()
        loop.call_later(7, event.set)  # loop time is virtual microseconds
        await event.wait()
        t_event = clock.now()
        slow = loop.create_task(clock.sleep(100))
        done, pending = await asyncio.wait({slow}, timeout=30)
        t_wait = clock.now()
        await slow
        return names, order, t_event, (done, pending == {slow}), t_wait, clock.now(), var.get()

    names, order, t_event, (done, pending_ok), t_wait, t_end, outer = run_virtual(main())
    assert names == ["a", "b", "c"]
    assert order == [("a", 0), ("b", 10), ("c", 30)]
    assert t_event == 42 and done == set() and pending_ok and t_wait == 72 and t_end == 142
    assert outer == "unset"


def test_a_failing_done_callback_is_reported_and_the_loop_goes_on():
    reported = []

    async def main():
        loop = asyncio.get_running_loop()
        loop.set_exception_handler(lambda _loop, ctx: reported.append(type(ctx["exception"]).__name__))
        fut = loop.create_future()
        fut.add_done_callback(lambda f: 1 / 0)
        h = loop.call_soon(reported.append, "must not run")
        h.cancel()
        assert h.cancelled()
        fut.set_result(None)
        await VirtualClock().sleep(1)
        return "went on"

    assert run_virtual(main()) == "went on"
    assert reported == ["ZeroDivisionError"]


def test_a_bad_yield_is_refused_with_a_clear_error():
    class Odd:
        def __await__(self):
            yield "not a future"

    async def main():
        await Odd()

    with pytest.raises(RuntimeError, match="bad yield: 'not a future'"):
        run_virtual(main())


# -- wait_until and start_task: the interconnect's deadline and handler start ------------------


@pytest.mark.parametrize("scheduler", ["fifo", "random", "pct"])
def test_wait_until_gives_the_future_or_the_deadline_whichever_is_first(scheduler):
    from cluster.vtime import wait_until

    async def main() -> list[tuple[str, float, bool]]:
        loop = asyncio.get_running_loop()
        clock = VirtualClock()
        seen = []

        async def complete_at(fut: asyncio.Future, at: float) -> None:
            await clock.sleep(at - loop.time())
            fut.set_result(at)

        for finish, deadline in ((5.0, 10.0), (20.0, 15.0)):
            t0 = loop.time()
            fut = loop.create_future()
            setter = loop.create_task(complete_at(fut, t0 + finish))
            done = await wait_until(fut, t0 + deadline)
            seen.append(("done" if done else "deadline", loop.time() - t0, fut.done()))
            await setter  # a future done after its deadline wakes no one
            assert fut._waiter is None
        seen.append(("past", 0.0, await wait_until(loop.create_future(), loop.time())))
        await clock.sleep(2_000_000.0)  # the dead deadline entries never wake anyone
        return seen

    loop = VirtualTimeLoop(policy=make_policy(scheduler, 3))
    assert run_virtual(main(), loop=loop) == [("done", 5.0, True), ("deadline", 15.0, False), ("past", 0.0, False)]


def test_cancelling_a_wait_until_leaves_the_future_alone_and_wakes_the_waiter_once():
    from cluster.vtime import wait_until

    async def main() -> None:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        steps = []

        async def waiter() -> None:
            try:
                await wait_until(fut, 100.0)
            except asyncio.CancelledError:
                steps.append(loop.time())
                await VirtualClock().sleep(50.0)  # a later wake of fut must not step it again
                steps.append(loop.time())
                raise

        w = loop.create_task(waiter())
        await VirtualClock().sleep(1.0)
        w.cancel()
        await asyncio.sleep(0)
        fut.set_result("late")
        with pytest.raises(asyncio.CancelledError):
            await w
        assert steps == [1.0, 51.0] and fut.result() == "late" and not fut.cancelled()

    run_virtual(main())


def test_wait_until_sweeps_dead_deadlines_so_memory_stays_flat():
    from cluster.vtime import _COMPACT_MIN, wait_until

    async def main() -> int:
        loop = asyncio.get_running_loop()
        most = 0
        for _ in range(3 * _COMPACT_MIN):
            fut = loop.create_future()
            loop.call_soon(fut.set_result, None)
            assert await wait_until(fut, loop.time() + 1e9)
            most = max(most, len(loop._sleepers))
        return most

    assert run_virtual(main()) <= _COMPACT_MIN * 2 + 2


def test_sleepers_wake_in_time_then_sleep_order_through_cancellations_and_early_wakes():
    # the sleeper heap under a churn of sleeps, cancelled sleeps and deadlines that end early:
    # every sleep that is not cancelled ends at its time, same-time sleeps in the order they began
    import random

    from cluster.vtime import wait_until

    rng = random.Random(15)
    woke: list[tuple[float, int]] = []

    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = VirtualClock()

        async def sleeper(i: int, us: float) -> None:
            await clock.sleep(us)
            woke.append((loop.time(), i))

        async def waiter(fut: asyncio.Future[None], us: float) -> None:
            await wait_until(fut, loop.time() + us)

        tasks = []
        for i in range(2_000):
            tasks.append((i, loop.create_task(sleeper(i, float(rng.randrange(50))))))
            if rng.random() < 0.3:  # a deadline whose future comes first: its sleep ends early
                fut = loop.create_future()
                loop.create_task(waiter(fut, 1e6))
                loop.call_later(rng.randrange(1, 40), fut.set_result, None)
            if i % 7 == 3:
                await clock.sleep(0)  # let them start: the sleeps begin in this order
        await clock.sleep(0)
        cancelled = {i for i, t in tasks if rng.random() < 0.25 and t.cancel()}
        await asyncio.gather(*(t for _, t in tasks), return_exceptions=True)
        assert not cancelled & {i for _, i in woke}
        assert len(woke) == len(tasks) - len(cancelled)

    run_virtual(main())
    assert [t for t, _ in woke] == sorted(t for t, _ in woke)
    for a, b in zip(woke, woke[1:]):
        if a[0] == b[0]:
            assert a[1] < b[1]  # began earlier: every sleep here began in creation order


@pytest.mark.parametrize("scheduler", ["fifo", "random"])
def test_start_task_runs_its_first_step_at_once_under_fifo_only_as_its_own_task(scheduler):
    async def main() -> list[Any]:
        loop = asyncio.get_running_loop()
        order: list[Any] = []
        me = asyncio.current_task()

        async def handler() -> str:
            order.append(("handler", asyncio.current_task() is not me))
            await VirtualClock().sleep(1.0)
            return "answer"

        t = loop.start_task(handler(), name="handle x")
        order.append(("caller", asyncio.current_task() is me))
        assert t.get_name() == "handle x"
        order.append(await t)
        return order

    loop = VirtualTimeLoop(policy=make_policy(scheduler, 1), trace=Trace("full"))
    order = run_virtual(main(), loop=loop)
    if scheduler == "fifo":
        assert order == [("handler", True), ("caller", True), "answer"]
        assert any(line.endswith("run handle x\n") for line in loop.trace.entries)
    else:  # queued like any new task: when it starts is the policy's choice
        assert order == [("caller", True), ("handler", True), "answer"]


def test_a_trace_digest_does_not_depend_on_where_batches_end_and_times_and_events_count():
    def fill(t: Trace) -> Trace:
        t.step(0.0, "a")
        t.step(1.5, "b")
        t.event(1.5, "crash", "p1")
        t.step(2.0, "c")
        t.step(2.0, "d")
        return t

    one, small = fill(Trace("full")), Trace("full")
    small.BATCH = 2
    fill(small)
    assert one.digest() == small.digest() and one.steps == small.steps == 4
    assert one.entries == small.entries == ["0.0 run a\n", "1.5 run b\n", "1.5 crash p1\n", "2.0 run c\n", "2.0 run d\n"]
    later = Trace("hash")  # the same steps, but one of them at another time
    later.step(0.0, "a"), later.step(1.5, "b"), later.event(1.5, "crash", "p1"), later.step(2.5, "c"), later.step(2.5, "d")
    assert later.digest() != one.digest()


def test_a_trace_step_is_its_name_whatever_its_length_and_forgetting_names_changes_no_digest(monkeypatch: pytest.MonkeyPatch):
    import cluster.vtime as vtime

    def fill(t: Trace) -> Trace:
        for i in range(300):  # 300 names, each stepped twice, the second time after the time moved
            t.step(float(i), f"a rather long name of a task, as a qualname is: task {i}")
            t.step(float(i) + 0.5, f"a rather long name of a task, as a qualname is: task {i}")
        return t

    remembered = fill(Trace("hash")).digest()
    monkeypatch.setattr(vtime, "_CODES_KEPT", 7)  # forgets every 7 names: the codes are worked out again
    assert fill(Trace("hash")).digest() == remembered
    # a name that differs in its last character is another trace, as is a step at another time
    # and an event's detail
    other, renamed = fill(Trace("hash")), fill(Trace("hash"))
    other.step(1000.0, "x1"), renamed.step(1000.0, "x2")
    assert other.digest() != renamed.digest()
    one, two = Trace("hash"), Trace("hash")
    one.step(0.0, "a"), one.step(1.0, "b")
    two.step(0.0, "a"), two.step(1.5, "b")
    assert one.digest() != two.digest()
    one, two = Trace("hash"), Trace("hash")
    one.event(2.0, "crash", "p1"), two.event(2.0, "crash", "p2")
    assert one.digest() != two.digest()


def test_a_renamed_task_is_traced_under_its_new_name():
    async def main() -> None:
        clock = VirtualClock()

        async def worker() -> None:
            await clock.sleep(1)
            asyncio.current_task().set_name("renamed")  # type: ignore[union-attr]
            await clock.sleep(1)

        await asyncio.create_task(worker(), name="first")

    loop = VirtualTimeLoop(trace=Trace("full"))
    run_virtual(main(), loop=loop)
    runs = [line for line in loop.trace.entries if line.endswith((" run first\n", " run renamed\n"))]
    assert runs == ["0.0 run first\n", "1.0 run first\n", "2.0 run renamed\n"]


def test_a_finished_task_is_freed_by_reference_counting_not_the_cycle_collector():
    # a task and its _Run refer to each other until the task is done; then the run lets go,
    # so a run that makes a task per request frees each one when its last holder lets go
    import gc
    import weakref

    async def main() -> list[weakref.ref[Any]]:
        loop = asyncio.get_running_loop()
        clock = VirtualClock()

        async def handler(sleeps: bool) -> int:
            if sleeps:
                await clock.sleep(1)
            return 7

        refs = []
        for sleeps in (False, True):
            for make in (lambda c: loop.create_task(c), lambda c: loop.start_task(c, name="handle x")):
                t = make(handler(sleeps))
                assert await t == 7
                refs.append(weakref.ref(t))
                del t
        return refs

    gc.disable()
    try:
        refs = run_virtual(main())
        assert [r() for r in refs] == [None] * 4
    finally:
        gc.enable()


def test_tasks_count_cancellations_and_are_named_and_ordered_by_creation():
    async def main() -> None:
        loop = asyncio.get_running_loop()
        clock = VirtualClock()

        async def sleeper() -> None:
            await clock.sleep(10)

        a = loop.create_task(sleeper())
        b = loop.start_task(sleeper(), name="handle y")
        assert a.get_name() == f"{sleeper.__qualname__}#{a._seq}" and b.get_name() == "handle y"
        assert b._seq == a._seq + 1
        assert (a.cancelling(), a.cancel(), a.cancel(), a.cancelling()) == (0, True, True, 2)
        assert (a.uncancel(), a.uncancel(), a.uncancel()) == (1, 0, 0)
        with pytest.raises(asyncio.CancelledError):
            await a
        await b
        assert (a.cancelled(), b.done(), b.cancelling()) == (True, True, 0)

    run_virtual(main())
