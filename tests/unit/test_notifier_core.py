"""The MMU-notifier core of nodes/notifier.py (Linux v3.10 mm/mmu_notifier.c), its RCU hlist
and the oracles it reports to, with small recording test-double notifiers."""

from __future__ import annotations

import asyncio
import errno

import pytest

from nodes.errors import Interrupted, InvalidArgument, NullPointerDereference, SleepingInAtomicContext
from nodes.memory import FrameTable
from nodes.mm import PAGE_SIZE, Mm
from nodes.notifier import Hlist, HlistNode, MmuNotifier, NotifierCore, has_op
from nodes.oracle import Oracle
from nodes.partition import Partition
from nodes.runtime import Runtime, TaskSignals

J = 1000.0  # the partition's jiffy
DELAY = 5.0  # SRCU reader delay


# -- test doubles -------------------------------------------------------------------------------


class Log(list):
    """(notifier, op, phase, time): phase 'call' when an op is entered, 'done' when it returns;
    'mark' entries are written by the tests."""

    def __init__(self, rt: Runtime):
        super().__init__()
        self.rt = rt

    def add(self, who: str, op: str, phase: str = "call") -> None:
        self.append((who, op, phase, self.rt.now()))

    def ops(self, who: str | None = None, phase: str = "call") -> list[tuple[str, str]]:
        return [(w, o) for w, o, p, _ in self if p == phase and (who is None or w == who)]


class Full(MmuNotifier):
    """Implements every op. Sleepable ops sleep ``delays[op]`` us (if given); the atomic ones
    answer ``young``."""

    def __init__(self, name: str, log: Log, *, delays: dict[str, float] | None = None, young: int = 0):
        super().__init__(name)
        self.log = log
        self.delays = delays or {}
        self.young = young

    async def _sleepable(self, op: str) -> None:
        self.log.add(self.name, op)
        if self.delays.get(op):
            await self.log.rt.sleep(self.delays[op])
        self.log.add(self.name, op, "done")

    async def release(self, mm):
        await self._sleepable("release")

    async def invalidate_page(self, mm, address):
        await self._sleepable("invalidate_page")

    async def invalidate_range_start(self, mm, start, end):
        await self._sleepable("invalidate_range_start")

    async def invalidate_range_end(self, mm, start, end):
        await self._sleepable("invalidate_range_end")

    def clear_flush_young(self, mm, address):
        self.log.add(self.name, "clear_flush_young")
        return self.young

    def test_young(self, mm, address):
        self.log.add(self.name, "test_young")
        return self.young

    def change_pte(self, mm, address, pte):
        self.log.add(self.name, "change_pte")


class OnlyInvalidatePage(MmuNotifier):
    """Implements one op, as a plain (non-async) function."""

    def __init__(self, name: str, log: Log):
        super().__init__(name)
        self.log = log

    def invalidate_page(self, mm, address):
        self.log.add(self.name, "invalidate_page")


class NoRelease(MmuNotifier):
    """Implements the range ops only, range_start sleeping ``delay`` us."""

    def __init__(self, name: str, log: Log, delay: float = 0.0):
        super().__init__(name)
        self.log = log
        self.delay = delay

    async def invalidate_range_start(self, mm, start, end):
        self.log.add(self.name, "invalidate_range_start")
        if self.delay:
            await self.log.rt.sleep(self.delay)
        self.log.add(self.name, "invalidate_range_start", "done")

    async def invalidate_range_end(self, mm, start, end):
        self.log.add(self.name, "invalidate_range_end")


class RemoteAtomic(MmuNotifier):
    """A remote secondary: its atomic ops need the network. ``how`` picks the way it waits."""

    def __init__(self, name: str, log: Log, how: str):
        super().__init__(name)
        self.log = log
        self.how = how

    async def _remote(self, op: str) -> int:
        self.log.add(self.name, op)
        if self.how == "runtime.sleep":
            await self.log.rt.sleep(10)
        else:
            await self.log.rt.clock.sleep(10)
        self.log.add(self.name, op, "done")
        return 1

    async def clear_flush_young(self, mm, address):
        return await self._remote("clear_flush_young")

    async def test_young(self, mm, address):
        return await self._remote("test_young")

    async def change_pte(self, mm, address, pte):
        return await self._remote("change_pte")


class QuickAsyncAtomic(MmuNotifier):
    """Atomic ops written as ``async def`` that never suspend: legal."""

    async def clear_flush_young(self, mm, address):
        return 1

    async def test_young(self, mm, address):
        return 7

    async def change_pte(self, mm, address, pte):
        return None


def part_mm(rt: Runtime, **kw) -> tuple[Partition, Mm]:
    part = Partition(rt, nframes=64, ncpus=2, jiffy_us=J, **kw)
    return part, part.create_mm()


def names(mm: Mm) -> list[str]:
    return [] if mm.notifier_mm is None else [mn.name for mn in mm.notifier_mm.list.walk()]


# -- registration -------------------------------------------------------------------------------


def test_register_adds_at_head_and_pins_mm(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        a, b, c = Full("a", log), Full("b", log), OnlyInvalidatePage("c", log)
        for mn in (a, b, c):
            await part.core.register(mn, mm)
        assert names(mm) == ["c", "b", "a"]  # reverse registration order
        assert mm.count == 4 and mm.users == 1
        assert a.mm is mm and not a.hlist.unhashed()
        await part.core.invalidate_page(mm, 0x1000)
        assert log.ops() == [("c", "invalidate_page"), ("b", "invalidate_page"), ("a", "invalidate_page")]
        assert not mm.mmap_sem.writer and not any(v.anon_vma_lock.locked for v in mm.vmas)
        assert rt.now() == 0.0 and part.oracle.ok

    vrun(body)


def test_register_refused_on_exiting_mm_and_twice(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        other = part.create_mm()
        log = Log(rt)
        a = Full("a", log)
        await part.core.register(a, mm)
        with pytest.raises(InvalidArgument, match="notifier a is already registered on Mm") as ei:
            await part.core.register(a, mm)
        assert ei.value.errno == errno.EINVAL
        with pytest.raises(InvalidArgument, match="already registered"):
            await part.core.register(a, other)
        assert names(mm) == ["a"] and mm.count == 2 and names(other) == [] and other.count == 1
        other.users = 0
        b = Full("b", log)
        with pytest.raises(InvalidArgument, match=r"register of b on p0/mm2, whose mm_users is 0"):
            await part.core.register(b, other)
        assert other.notifier_mm is None and other.count == 1 and b.mm is None
        assert not other.mmap_sem.writer

    vrun(body)


def test_register_waits_for_mmap_sem(vrun, settle):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)

        async def fault() -> None:
            async with mm.mmap_sem.read():
                await rt.sleep(500)

        rt.spawn(fault(), name="fault")
        await settle(rt)
        await part.core.register(Full("a", Log(rt)), mm)
        assert rt.now() == 500.0 and names(mm) == ["a"]

    vrun(body)


def _mm_with_vmas(mm: Mm) -> None:
    mm.add_vma(0x10000, 4 * PAGE_SIZE)
    mm.add_vma(0x40000, PAGE_SIZE)
    mm.add_vma(0x80000, PAGE_SIZE)
    mm.split_at(0x12000)  # two VMAs sharing one anon_vma


def _all_unlocked(mm: Mm) -> bool:
    return (
        not any(v.anon_vma_lock.locked for v in mm.vmas)
        and mm.all_locks_taken == []
        and not mm.mmap_sem.writer
        and mm.mmap_sem.readers == 0
        and not mm.mmap_sem.contended
    )


@pytest.mark.parametrize("first", [True, False], ids=["first-notifier", "second-notifier"])
def test_register_interrupted_by_pending_signal_changes_nothing(vrun, first):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        _mm_with_vmas(mm)
        log = Log(rt)
        if not first:
            await part.core.register(Full("old", log), mm)
        nmm_before, names_before, count_before = mm.notifier_mm, names(mm), mm.count
        current = TaskSignals("registrar")
        current.send("SIGKILL")
        mn = Full("new", log)
        with pytest.raises(Interrupted, match="interrupted by pending SIGKILL of registrar") as ei:
            await part.core.register(mn, mm, current=current)
        assert ei.value.errno == errno.EINTR
        assert mm.notifier_mm is nmm_before and names(mm) == names_before
        assert mm.count == count_before
        assert mn.hlist.unhashed() and mn.mm is None
        assert _all_unlocked(mm)
        # the signal handled, the same registration succeeds
        current.pending = None
        await part.core.register(mn, mm, current=current)
        assert names(mm) == ["new"] + names_before and _all_unlocked(mm)

    vrun(body)


def test_register_interrupted_while_blocked_on_an_anon_vma_lock(vrun, settle):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        _mm_with_vmas(mm)
        current = TaskSignals("registrar")
        blocker = mm.vmas[2].anon_vma_lock  # held by an rmap walk
        await blocker.lock()
        reg = asyncio.create_task(part.core.register(Full("new", Log(rt)), mm, current=current))
        await settle(rt)
        assert mm.mmap_sem.writer and mm.vmas[0].anon_vma_lock.locked and not reg.done()
        current.send("SIGTERM")
        await rt.sleep(100)
        blocker.unlock()  # register gets this lock, then sees the signal before the next one
        with pytest.raises(Interrupted, match=r"SIGTERM of registrar at VMA \[0x80000"):
            await reg
        assert mm.notifier_mm is None and mm.count == 1
        assert _all_unlocked(mm)

    vrun(body)


def test_register_locked_requires_mmap_sem_held_for_write(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        with pytest.raises(InvalidArgument, match="__mmu_notifier_register on p0/mm1 without mmap_sem held for write"):
            await part.core.register_locked(Full("a", log), mm)
        async with mm.mmap_sem.read():
            with pytest.raises(InvalidArgument, match="without mmap_sem held for write"):
                await part.core.register_locked(Full("a", log), mm)
        assert names(mm) == []
        await mm.mmap_sem.down_write()
        await part.core.register_locked(Full("a", log), mm)
        assert mm.mmap_sem.writer  # still the caller's to drop
        mm.mmap_sem.up_write()
        assert names(mm) == ["a"] and mm.count == 2

    vrun(body)


# -- callouts -----------------------------------------------------------------------------------


def test_callouts_call_only_implemented_ops(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        only = OnlyInvalidatePage("only", log)
        full = Full("full", log)
        await part.core.register(full, mm)
        await part.core.register(only, mm)
        assert has_op(only, "invalidate_page") and not has_op(only, "release")
        core = part.core
        await core.invalidate_page(mm, 0x1000)
        await core.invalidate_range_start(mm, 0x1000, 0x3000)
        await core.invalidate_range_end(mm, 0x1000, 0x3000)
        assert core.clear_flush_young(mm, 0x1000) == 0
        assert core.test_young(mm, 0x1000) == 0
        core.change_pte(mm, 0x1000, (3, 1))
        assert log.ops("only") == [("only", "invalidate_page")]
        assert [o for _, o in log.ops("full")] == [
            "invalidate_page", "invalidate_range_start", "invalidate_range_end",
            "clear_flush_young", "test_young", "change_pte",
        ]
        assert part.srcu.readers_active() == 0 and part.oracle.ok

    vrun(body)


def test_callouts_on_mm_without_notifiers_do_nothing(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        assert not NotifierCore.has_notifiers(mm)
        await part.core.invalidate_page(mm, 0)
        assert part.core.clear_flush_young(mm, 0) == 0
        assert part.srcu.statistics().reader_checks == 0 and part.srcu.readers_active() == 0

    vrun(body)


@pytest.mark.parametrize("youngs, expected, called", [
    ((0, 0, 0), 0, 3), ((0, 1, 0), 1, 3), ((1, 0, 1), 1, 3), ((0, 0, 1), 1, 3),
])
def test_clear_flush_young_ors_every_answer(vrun, youngs, expected, called):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        for i, y in reversed(list(enumerate(youngs))):  # walk order n0, n1, n2
            await part.core.register(Full(f"n{i}", log, young=y), mm)
        assert part.core.clear_flush_young(mm, 0x5000) == expected
        assert log.ops() == [(f"n{i}", "clear_flush_young") for i in range(called)]

    vrun(body)


@pytest.mark.parametrize("youngs, expected, called", [
    ((0, 0, 0), 0, 3), ((1, 0, 0), 1, 1), ((0, 1, 1), 1, 2), ((0, 0, 1), 1, 3),
])
def test_test_young_stops_at_first_non_zero(vrun, youngs, expected, called):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        for i, y in reversed(list(enumerate(youngs))):
            await part.core.register(Full(f"n{i}", log, young=y), mm)
        assert part.core.test_young(mm, 0x5000) == expected
        assert log.ops() == [(f"n{i}", "test_young") for i in range(called)]
        assert part.srcu.readers_active() == 0

    vrun(body)


@pytest.mark.parametrize("op", ["change_pte", "clear_flush_young", "test_young"])
@pytest.mark.parametrize("how, pattern", [
    ("runtime.sleep", r"sleeping function sleep called from atomic context \(inside {op} of notifier gru-remote\)"),
    ("clock.sleep", r"scheduling while atomic: {op} of notifier gru-remote suspended"),
])
def test_atomic_op_that_sleeps_is_sleeping_in_atomic_context(vrun, op, how, pattern):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        await part.core.register(RemoteAtomic("gru-remote", log, how), mm)
        args = (mm, 0x7000, (1, 1)) if op == "change_pte" else (mm, 0x7000)
        with pytest.raises(SleepingInAtomicContext, match=pattern.format(op=op)):
            getattr(part.core, op)(*args)
        assert log == [("gru-remote", op, "call", 0.0)]  # entered, never completed
        assert part.srcu.readers_active() == 0  # the read lock was dropped on the way out
        await rt.sleep(50)
        assert len(log) == 1  # nothing resumed it later

    vrun(body)


def test_atomic_op_as_non_suspending_async_function_works(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        await part.core.register(QuickAsyncAtomic("quick"), mm)
        assert part.core.clear_flush_young(mm, 0)
        assert part.core.test_young(mm, 0)
        part.core.change_pte(mm, 0, (1, 1))

    vrun(body)


def test_set_pte_at_notify_calls_change_pte_before_setting_the_pte(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        await part.core.register(Full("kvm", log), mm)
        with mm.page_table_lock:
            part.core.set_pte_at_notify(mm, 0x1000, (2, 1), lambda: log.add("primary", "set_pte"))
        assert log.ops() == [("kvm", "change_pte"), ("primary", "set_pte")]

    vrun(body)


def test_exported_invalidate_of_a_range_no_vma_describes(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        mm.add_vma(0x10000, PAGE_SIZE)
        log = Log(rt)
        await part.core.register(Full("xpmem", log), mm)
        start, end = 1 << 50, (1 << 50) + 16 * PAGE_SIZE  # an "extended vma" address range
        assert mm.vmas_in(start, end) == []
        await part.core.invalidate_range_start(mm, start, end)
        await part.core.invalidate_range_end(mm, start, end)
        assert log.ops() == [("xpmem", "invalidate_range_start"), ("xpmem", "invalidate_range_end")]
        assert part.oracle.ok
        assert part.check_invariants(final=True) == []  # the pair closed

    vrun(body)


def test_empty_invalidate_range_is_invalid(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        await part.core.register(Full("x", log), mm)
        with pytest.raises(InvalidArgument, match=r"invalidate_range_start: empty range \[0x2000, 0x2000\)"):
            await part.core.invalidate_range_start(mm, 0x2000, 0x2000)
        with pytest.raises(InvalidArgument, match=r"invalidate_range_end: empty range \[0x3000, 0x2000\)"):
            await part.core.invalidate_range_end(mm, 0x3000, 0x2000)
        assert log == [] and part.oracle.ok

    vrun(body)


# -- unregister ---------------------------------------------------------------------------------


def test_unregister_releases_once_unlinks_and_unpins(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        keep, gone = Full("keep", log), Full("gone", log, delays={"release": 300})
        await part.core.register(keep, mm)
        await part.core.register(gone, mm)
        assert mm.count == 3
        timing = await part.core.unregister(gone, mm)
        assert log.ops("gone") == [("gone", "release")]
        assert (timing.total_us, timing.release_us, timing.srcu_wait_us) == (300.0, 300.0, 0.0)
        assert names(mm) == ["keep"] and gone.hlist.unhashed() and gone.mm is None
        assert mm.count == 2
        await part.core.invalidate_range_start(mm, 0, PAGE_SIZE)
        await part.core.invalidate_range_end(mm, 0, PAGE_SIZE)
        part.core.clear_flush_young(mm, 0)
        assert log.ops("gone") == [("gone", "release")]  # never reached again
        assert [o for _, o in log.ops("keep")] == ["invalidate_range_start", "invalidate_range_end", "clear_flush_young"]
        assert part.oracle.ok
        with pytest.raises(InvalidArgument, match="unregister of gone from p0/mm1, where it was never registered"):
            await part.core.unregister(gone, mm)
        # registering again is allowed and resets the oracle's view
        await part.core.register(gone, mm)
        await part.core.invalidate_page(mm, 0)
        assert part.oracle.ok and names(mm) == ["gone", "keep"]

    vrun(body)


def test_unregister_waits_for_a_method_of_the_notifier_in_flight(vrun, settle):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        mn = NoRelease("kvm", log, delay=2500)
        await part.core.register(mn, mm)
        rt.spawn(part.core.invalidate_range_start(mm, 0, PAGE_SIZE), name="munmap")
        await settle(rt)  # t=1, kvm's range_start sleeps until 2500
        timing = await part.core.unregister(mn, mm)
        log.add("test", "unregister returned", "mark")
        # synchronize at t=1: polls at 1 and 6, then the worker at 1006, 2006, 3006
        assert rt.now() == 3006.0
        assert (timing.release_us, timing.srcu_wait_us, timing.total_us) == (0.0, 3005.0, 3005.0)
        await part.core.invalidate_range_end(mm, 0, PAGE_SIZE)  # the munmap finishes
        assert [(w, o, p) for w, o, p, _ in log] == [
            ("kvm", "invalidate_range_start", "call"),
            ("kvm", "invalidate_range_start", "done"),
            ("test", "unregister returned", "mark"),
        ]
        assert part.oracle.ok and part.check_invariants(final=True) == []

    vrun(body)


def test_unregister_skips_a_notifier_the_walker_has_not_reached(vrun, settle):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        late = NoRelease("late", log)
        first = NoRelease("first", log, delay=2000)
        await part.core.register(late, mm)
        await part.core.register(first, mm)  # walk order: first, late
        rt.spawn(part.core.invalidate_range_start(mm, 0, PAGE_SIZE), name="walker")
        await settle(rt)  # the walker sleeps in first's op
        await part.core.unregister(late, mm)
        await part.core.invalidate_range_end(mm, 0, PAGE_SIZE)
        assert log.ops("late") == []  # unlinked before the walker got to it
        assert part.oracle.ok

    vrun(body)


# -- the global SRCU domain ---------------------------------------------------------------------


@pytest.mark.parametrize("teardown", ["unregister", "exit"])
@pytest.mark.parametrize("scope", ["global", "per_mm"])
def test_teardown_waits_for_callouts_on_other_mms_only_with_global_srcu(vrun, scope, teardown):
    L = 5000.0

    async def body(rt: Runtime):
        part = Partition(rt, nframes=64, ncpus=2, jiffy_us=J, srcu_scope=scope)
        mm_a, mm_b = part.create_mm(), part.create_mm()
        log = Log(rt)
        x = NoRelease("x-on-b", log, delay=L)
        y = Full("y-on-a", log)
        await part.core.register(x, mm_b)
        await part.core.register(y, mm_a)
        rt.spawn(part.core.invalidate_range_start(mm_b, 0, PAGE_SIZE), name="callout-b")
        await rt.sleep(100)  # t=100: x's range_start on mm B is sleeping until L
        if teardown == "unregister":
            timing = await part.core.unregister(y, mm_a)
        else:
            timing = await part.core.release(mm_a)
        assert log.ops("y-on-a") == [("y-on-a", "release")]
        if scope == "global":
            # B's callout holds the partition's one SRCU domain: A's teardown waits for it
            assert L - 100 <= timing.srcu_wait_us <= L + 2 * J
            assert timing.srcu_wait_us == 5005.0  # polls at 100, 105; worker at 1105..5105
            assert rt.now() == 5105.0
        else:
            assert timing.srcu_wait_us < J + 4 * DELAY
            assert timing.srcu_wait_us == 0.0 and rt.now() == 100.0  # fast path, no reader
        await part.core.invalidate_range_end(mm_b, 0, PAGE_SIZE)
        assert part.oracle.ok

    vrun(body)


# -- exit racing unregister ---------------------------------------------------------------------


@pytest.mark.parametrize("offset, releases", [(0, 2), (100, 2), (2999, 2), (3000.5, 1), (3500, 1), (9000, 1)])
def test_exit_racing_unregister(vrun, offset, releases):
    """The race of the notifier.py docstring: exit's ->release sleeps R=3000; unregister starts
    ``offset`` later. Whoever runs, ->release runs at most twice (twice only in the race), the
    oracle sees nothing wrong, and no method of the notifier runs after either path returns."""
    R = 3000.0

    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        other = Full("other", log)
        mn = Full("mn", log, delays={"release": R})
        await part.core.register(other, mm)
        await part.core.register(mn, mm)
        returned: dict[str, float] = {}

        async def exit_mmap() -> None:
            await part.core.release(mm)
            part.oracle.exit_freeing(mm)  # pages may be freed now
            log.add("exit", "returned", "mark")
            returned["exit"] = rt.now()

        async def unregister() -> None:
            await rt.sleep(offset)
            await part.core.unregister(mn, mm)
            log.add("unregister", "returned", "mark")
            returned["unregister"] = rt.now()

        rt.spawn(exit_mmap(), name="exit")
        rt.spawn(unregister(), name="unregister")
        await rt.join()
        assert set(returned) == {"exit", "unregister"}
        assert len(log.ops("mn")) == releases and set(log.ops("mn")) == {("mn", "release")}
        assert part.oracle.ok, part.oracle.summary()
        # no method of mn is entered or returns after the first path returned
        first_mark = next(i for i, e in enumerate(log) if e[2] == "mark")
        assert all(w != "mn" for w, _, _, _ in log[first_mark:])
        # ... nor later
        await part.core.invalidate_range_start(mm, 0, PAGE_SIZE)
        await part.core.invalidate_range_end(mm, 0, PAGE_SIZE)
        await part.core.invalidate_page(mm, 0)
        assert part.core.clear_flush_young(mm, 0) == 0
        assert len(log.ops("mn")) == releases and names(mm) == []
        assert mm.count == 2 and mn.mm is None  # unregister dropped its pin; other still holds one
        assert part.oracle.ok

    vrun(body)


def test_exit_releases_everyone_then_waits(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        for name, d in (("a", 100.0), ("b", 250.0)):
            await part.core.register(Full(name, log, delays={"release": d}), mm)
        timing = await part.core.release(mm)
        assert log.ops() == [("b", "release"), ("a", "release")]  # sequential walk
        assert (timing.release_us, timing.srcu_wait_us, timing.total_us) == (350.0, 0.0, 350.0)
        assert names(mm) == [] and not NotifierCore.has_notifiers(mm)
        part.oracle.exit_freeing(mm)
        assert part.oracle.ok
        empty = part.create_mm()
        assert await part.core.release(empty) == type(timing)(0.0, 0.0, 0.0)

    vrun(body)


# -- the RCU hlist ------------------------------------------------------------------------------


class _Owner:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return self.name


def _hlist(*names_: str) -> tuple[Hlist, dict]:
    h = Hlist()
    owners = {}
    for n in reversed(names_):
        o = _Owner(n)
        o.node = HlistNode(o)
        owners[n] = o
        h.add_head_rcu(o.node)
    return h, owners


def test_hlist_del_rcu_of_unhashed_or_deleted_node_is_null_deref():
    h, o = _hlist("a", "b")
    lone = _Owner("x")
    lone.node = HlistNode(lone)
    with pytest.raises(NullPointerDereference, match="hlist_del_rcu of x, whose hlist entry is unhashed"):
        h.del_rcu(lone.node)
    assert [x.name for x in h.walk()] == ["a", "b"]
    h.del_rcu(o["a"].node)
    with pytest.raises(NullPointerDereference, match=r"already deleted \(LIST_POISON2\)"):
        h.del_rcu(o["a"].node)
    with pytest.raises(NullPointerDereference, match="hlist_del_init_rcu of a"):
        h.del_init_rcu(o["a"].node)  # poisoned, not unhashed: del_init cannot tell it is gone
    h.del_init_rcu(o["b"].node)
    h.del_init_rcu(o["b"].node)  # unhashed: a no-op
    assert h.empty()


def test_hlist_walker_continues_past_a_node_deleted_under_it():
    h, o = _hlist("a", "b", "c", "d")
    assert [x.name for x in h.walk()] == ["a", "b", "c", "d"]
    walker = h.walk()
    assert next(walker).name == "a"
    h.del_rcu(o["a"].node)  # the node the walker stands on
    assert next(walker).name == "b"
    h.del_init_rcu(o["b"].node)  # again, with del_init
    h.del_rcu(o["d"].node)  # a node ahead of the walker: it is skipped
    assert [x.name for x in walker] == ["c"]
    assert [x.name for x in h.walk()] == ["c"]
    assert o["b"].node.unhashed() and not o["c"].node.unhashed()


# -- the oracle ---------------------------------------------------------------------------------


def _oracle(rt: Runtime) -> tuple[Oracle, FrameTable, Mm]:
    ft = FrameTable(8)
    return Oracle(ft, rt.now, "px"), ft, Mm(5, "px")


def test_oracle_violation_3_for_end_without_start(vrun):
    async def body(rt: Runtime):
        part, mm = part_mm(rt)
        log = Log(rt)
        await part.core.register(Full("x", log), mm)
        await rt.sleep(7)
        await part.core.invalidate_range_end(mm, 0x1000, 0x2000)
        (v,) = part.oracle.violations
        assert v.invariant == 3 and v.when == 7.0 and v.where["mm"] == "p0/mm1"
        assert "[0x1000, 0x2000) without a range_start" in v.what
        assert part.oracle.summary()["violations"] == 1
        # a start left open is caught by the final sweep
        await part.core.invalidate_range_start(mm, 0x4000, 0x5000)
        found = part.check_invariants(final=True)
        assert [x.invariant for x in found] == [3] and "never ended" in found[0].what

    vrun(body)


def test_oracle_violation_4_for_method_after_unregister(vrun):
    async def body(rt: Runtime):
        oracle, _, mm = _oracle(rt)
        mn = Full("late", Log(rt))
        oracle.registered(mn, mm)
        oracle.callout(mn, mm, "invalidate_page", (0x1000,))
        assert oracle.ok
        oracle.unregistered(mn, mm)
        await rt.sleep(3)
        oracle.callout(mn, mm, "invalidate_page", (0x1000,))
        (v,) = oracle.violations
        assert v.invariant == 4 and v.where["notifier"] == "late" and v.when == 3.0
        assert "invalidate_page(4096,) called after unregister returned" in str(v)
        assert "notifier method ran after unregister returned" in str(v)

    vrun(body)


def test_oracle_violation_1_when_a_secondary_mapped_frame_is_freed(vrun):
    async def body(rt: Runtime):
        oracle, ft, mm = _oracle(rt)
        mn = Full("xp", Log(rt))
        pfns = ft.alloc(mm.id, [16, 17])
        oracle.translation_established(mn, mm, 0x10000, int(pfns[0]))
        oracle.translation_established(mn, mm, 0x11000, int(pfns[1]))
        assert oracle.smap[pfns].tolist() == [1, 1]
        oracle.translations_dropped(mn, [int(pfns[1])])
        ft.put(pfns)  # pfns[0] is still mapped by the secondary
        (v,) = oracle.violations
        assert v.invariant == 1 and v.where["pfn"] == int(pfns[0])
        assert "freed while mapped by 1 secondary translation(s)" in v.what
        assert v.where["stamp"][:2] == (mm.id, 16)

    vrun(body)


def test_oracle_release_counting(vrun):
    async def body(rt: Runtime):
        oracle, _, mm = _oracle(rt)
        raced, twice = Full("raced", Log(rt)), Full("twice", Log(rt))
        oracle.released(raced, mm, "exit")
        oracle.released(raced, mm, "unregister")
        assert oracle.ok  # the allowed race
        oracle.released(twice, mm, "exit")
        oracle.released(twice, mm, "exit")
        assert [v.invariant for v in oracle.violations] == [5]
        oracle.released(raced, mm, "exit")
        assert [v.invariant for v in oracle.violations] == [5, 5]
        assert "release ran 3 times" in oracle.violations[-1].what

    vrun(body)


def test_oracle_violation_2_translation_inside_window(vrun):
    async def body(rt: Runtime):
        oracle, ft, mm = _oracle(rt)
        mn = Full("kvm", Log(rt))
        (pfn,) = ft.alloc(mm.id, [0]).tolist()
        oracle.range_started(mn, mm, 0x0, 0x4000)
        oracle.translation_established(mn, mm, 0x5000, pfn)  # outside the window
        assert oracle.ok
        oracle.translation_established(mn, mm, 0x1000, pfn)
        assert [v.invariant for v in oracle.violations] == [2]
        oracle.callout(mn, mm, "invalidate_range_end", (0x0, 0x4000))  # closes the window
        oracle.translation_established(mn, mm, 0x1000, pfn)
        assert len(oracle.violations) == 1

    vrun(body)
