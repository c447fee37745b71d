"""Interval notifiers (nodes/interval.py: Linux 5.5 99cb252f5e68, as v5.10 and v6.6
mm/mmu_notifier.c have them): each test names the kernel function whose behaviour it checks.
The device is ``doubles.IntervalMirror`` (read_begin -> fault -> driver lock -> read_retry ->
install), on the owner's own partition here; across the interconnect in test_remote_*."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest
from doubles import IntervalMirror

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import interval, vmops
from nodes.errors import InvalidArgument, NotFound, Overflow, SleepingInAtomicContext
from nodes.interval import (ULONG_MAX, MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_check_retry,
                            mmu_interval_notifier_insert, mmu_interval_notifier_insert_locked,
                            mmu_interval_read_begin, mmu_interval_read_retry,
                            mmu_interval_set_seq)
from nodes.mm import PAGE_SIZE, TASK_SIZE
from nodes.notifier import MmuNotifier, MmuNotifierEvent
from nodes.owner import LocalOwner
from nodes.partition import Partition

P = PAGE_SIZE
BASE = 0x10000000
NONBLOCK = 0  # mmu_notifier_range.flags without MMU_NOTIFIER_RANGE_BLOCKABLE (the OOM reaper's)


async def setup(rt: Any, semantics: str = "v5.10", npages: int = 16) -> tuple[Partition, Any, LocalOwner]:
    p = Partition(rt, nframes=256, semantics=semantics)
    mm = p.create_mm()
    await vmops.mmap(p, mm, BASE, npages * P)
    await vmops.populate(p, mm, BASE, npages * P)
    return p, mm, LocalOwner(p)


async def mirror(owner: LocalOwner, mm: Any, name: str, start: int, npages: int) -> IntervalMirror:
    dev = IntervalMirror(owner, mm.id, name)
    await dev.insert(start, npages * P)
    return dev


def itree(mm: Any) -> interval.MmuItree:
    assert mm.notifier_mm is not None and mm.notifier_mm.itree is not None
    return mm.notifier_mm.itree


def spawn(rt: Any, coro: Any, name: str) -> asyncio.Task[Any]:
    return rt.spawn(coro, name=name)


# -- the sequence: mn_itree_inv_start_range / mn_itree_inv_end ---------------------------------


@pytest.mark.parametrize("semantics", ["v5.10", "v6.6"])
def test_the_sequence_is_odd_only_while_an_overlapping_range_is_invalidated(vrun, semantics):
    """__mmu_notifier_register(NULL) starts invalidate_seq at 2; __mmu_interval_notifier_insert
    gives an idle notifier seq - 1; mn_itree_inv_start_range makes it odd only for a range that
    overlaps a notifier (the cur_seq the driver records); mn_itree_inv_end makes it even."""
    async def body(rt):
        p, mm, owner = await setup(rt, semantics)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        t = itree(mm)
        seen = [(t.invalidate_seq, dev.mni.invalidate_seq, t.active_invalidate_ranges)]
        await p.core.invalidate_range_start(mm, BASE + 8 * P, BASE + 9 * P)  # not dev's interval
        seen.append((t.invalidate_seq, t.active_invalidate_ranges, len(dev.calls)))
        await p.core.invalidate_range_end(mm, BASE + 8 * P, BASE + 9 * P)
        await p.core.invalidate_range_start(mm, BASE + 3 * P, BASE + 5 * P)  # its last page
        seen.append((t.invalidate_seq, dev.mni.invalidate_seq, dev.calls[-1][0], t.active_invalidate_ranges))
        await p.core.invalidate_range_end(mm, BASE + 3 * P, BASE + 5 * P)
        seen.append((t.invalidate_seq, t.active_invalidate_ranges))
        return seen

    assert vrun(body) == [(2, 1, 0), (2, 1, 0), (3, 3, 3, 1), (4, 0)]


def test_overlapping_notifiers_are_called_in_tree_order_and_the_others_not(vrun):
    """mn_itree_invalidate walks interval_tree_iter_first/_next over [start, end - 1]: the
    notifiers whose [start, last] meets it, by start; a range ending where an interval starts,
    or starting past its last byte, does not meet it."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        c = await mirror(owner, mm, "c", BASE + 8 * P, 2)
        a = await mirror(owner, mm, "a", BASE, 2)
        b = await mirror(owner, mm, "b", BASE + 4 * P, 2)
        order: list[str] = []
        for dev in (a, b, c):
            real = dev.invalidate

            def spy(mni, rng, seq, real=real, name=dev.mni.name):
                order.append(name)
                return real(mni, rng, seq)

            dev.invalidate = spy  # type: ignore[method-assign]
        out = []
        for start, end in ((BASE + P, BASE + 9 * P), (BASE + 2 * P, BASE + 4 * P), (BASE + 6 * P, BASE + 8 * P),
                           (BASE + 5 * P, BASE + 5 * P + 1)):
            order.clear()
            await p.core.invalidate_range_start(mm, start, end)
            await p.core.invalidate_range_end(mm, start, end)
            out.append(list(order))
        return out

    assert vrun(body) == [["a", "b", "c"], [], [], ["b"]]


def test_concurrent_invalidations_keep_the_sequence_odd_until_the_last_one_ends(vrun, settle):
    """active_invalidate_ranges counts every range in progress; mn_itree_inv_end makes the
    sequence even only when it drops to 0, so two overlapping invalidations share one cur_seq."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 8)
        t = itree(mm)
        dev.hold = asyncio.Event()
        first = spawn(rt, p.core.invalidate_range_start(mm, BASE, BASE + 2 * P), "first")
        await settle(rt)  # first is inside dev's invalidate, holding its lock
        second = spawn(rt, p.core.invalidate_range_start(mm, BASE + P, BASE + 3 * P), "second")
        await settle(rt)  # second waits for dev's lock
        during = (t.active_invalidate_ranges, t.invalidate_seq)
        dev.hold.set()
        await first
        await second
        await p.core.invalidate_range_end(mm, BASE, BASE + 2 * P)
        after_one = (t.active_invalidate_ranges, t.invalidate_seq)
        await p.core.invalidate_range_end(mm, BASE + P, BASE + 3 * P)
        return during, after_one, (t.active_invalidate_ranges, t.invalidate_seq), [c[0] for c in dev.calls]

    assert vrun(body) == ((2, 3), (1, 3), (0, 4), [3, 3])


# -- the read side: mmu_interval_read_begin / _read_retry ---------------------------------------


def test_read_retry_catches_an_invalidation_that_began_after_read_begin(vrun, settle):
    """mmu_interval_read_begin's diagram: the fault read seq, an invalidation ran set_seq while
    the fault's lookup was answered, so mmu_interval_read_retry() is true under the driver lock
    and the fault starts again; the second read_begin waits until the range ends."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        dev.gate = asyncio.Event()
        fault = spawn(rt, dev.fault(BASE + P), "fault")
        await dev.looked_up.wait()  # looked up, not installed
        await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P)
        dev.gate.set()
        await settle(rt)
        stuck = (dev.retries, fault.done(), dict(dev.ptes))  # retried; now waiting in read_begin
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        pfn = await fault
        return stuck, dev.retries, pfn == mm.pte(BASE + P)[0], p.oracle.violations

    stuck, retries, same, violations = vrun(body)
    assert stuck == (1, False, {})
    assert retries == 1 and same and violations == []


def test_read_begin_waits_for_the_invalidation_in_progress_and_check_retry_needs_no_lock(vrun, settle):
    """mmu_interval_read_begin() sleeps on subscriptions->wq while the notifier's sequence is
    the tree's (its invalidation is in progress), and returns that sequence once it moves on;
    mmu_interval_check_retry() and read_retry() compare with the notifier's current one."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        idle = await mmu_interval_read_begin(dev.mni)
        await p.core.invalidate_range_start(mm, BASE, BASE + P)
        checks = (mmu_interval_check_retry(dev.mni, idle), mmu_interval_read_retry(dev.mni, idle))
        begin = spawn(rt, mmu_interval_read_begin(dev.mni), "read_begin")
        await settle(rt)
        waiting = not begin.done()
        await p.core.invalidate_range_end(mm, BASE, BASE + P)
        seq = await begin
        return idle, checks, waiting, seq, mmu_interval_read_retry(dev.mni, seq), itree(mm).invalidate_seq

    assert vrun(body) == (1, (True, True), True, 3, False, 4)


def test_a_mirror_that_skips_read_retry_is_caught_by_invariant_2(vrun, settle):
    """The oracle's window for an interval notifier opens when its invalidate returns True and
    closes at the range's end: a driver that installs without mmu_interval_read_retry() while
    the range is in progress establishes a translation inside it."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        dev.check_retry = False
        await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P)
        dev_seq = dev.mni.invalidate_seq

        async def unguarded() -> None:  # read_begin would wait; the planted bug reads stale
            [ref] = await owner.get_user_pages(mm.id, BASE, 1, write=False, pin=False)
            async with dev.lock:
                dev.ptes[BASE] = ref.pfn
                owner.translation_established(dev.mni, mm.id, BASE, ref.pfn)

        await unguarded()
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        await dev.fault(BASE + P)  # after the end: fine
        return dev_seq, [v.invariant for v in p.oracle.violations]

    assert vrun(body) == (3, [2])


# -- insert and remove: the deferred list ---------------------------------------------------------


def test_an_insert_during_an_invalidation_is_deferred_to_the_last_end(vrun, settle):
    """__mmu_interval_notifier_insert while mn_itree_is_invalidating(): the notifier goes on
    deferred_list with the odd sequence (read_begin waits); a second invalidation meanwhile
    does not see it; the last mn_itree_inv_end puts it in the tree, and the next one calls it."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        old = await mirror(owner, mm, "old", BASE, 4)
        t = itree(mm)
        await p.core.invalidate_range_start(mm, BASE, BASE + 8 * P)
        new = await mirror(owner, mm, "new", BASE + 2 * P, 4)
        state = (new.mni.in_tree, new.mni.deferred, new.mni.invalidate_seq, t.invalidate_seq)
        await p.core.invalidate_range_start(mm, BASE + 2 * P, BASE + 3 * P)
        await p.core.invalidate_range_end(mm, BASE, BASE + 8 * P)
        still = (new.mni.in_tree, len(new.calls))
        begin = spawn(rt, mmu_interval_read_begin(new.mni), "read_begin")
        await settle(rt)
        waiting = not begin.done()
        await p.core.invalidate_range_end(mm, BASE + 2 * P, BASE + 3 * P)
        placed = (new.mni.in_tree, new.mni.deferred, list(t.deferred), await begin)
        await p.core.invalidate_range_start(mm, BASE + 5 * P, BASE + 6 * P)
        await p.core.invalidate_range_end(mm, BASE + 5 * P, BASE + 6 * P)
        return state, still, waiting, placed, [c[0] for c in new.calls], len(old.calls)

    state, still, waiting, placed, new_calls, old_calls = vrun(body)
    assert state == (False, True, 3, 3)
    assert still == (False, 0) and waiting
    assert placed == (True, False, [], 3)
    assert new_calls == [5] and old_calls == 2


def test_an_insert_while_only_other_ranges_are_active_goes_in_at_once_and_makes_the_sequence_odd(vrun):
    """__mmu_interval_notifier_insert with active_invalidate_ranges but an even sequence (the
    ranges overlap no notifier): a range in progress may cover the new interval, so the
    sequence is made odd and the notifier inserted at once with it; that range's end evens it."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        await mirror(owner, mm, "far", BASE + 12 * P, 2)
        t = itree(mm)
        await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P)
        before = t.invalidate_seq
        dev = await mirror(owner, mm, "dev", BASE, 4)
        state = (before, t.invalidate_seq, dev.mni.in_tree, dev.mni.invalidate_seq)
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        return state, t.invalidate_seq, await mmu_interval_read_begin(dev.mni)

    assert vrun(body) == ((2, 3, True, 3), 4, 3)


def test_remove_during_an_invalidation_waits_for_it_and_no_invalidate_runs_after(vrun, settle):
    """mmu_interval_notifier_remove while the tree is invalidating: the removal is deferred
    and remove waits on wq until the sequence moves on (mmu_interval_seq_released, read under
    the lock: 319561669a59), i.e. until the last mn_itree_inv_end; then it mmdrops. After it
    returns no invalidate of the notifier runs (the oracle's invariant 4)."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        count = mm.count
        dev.hold = asyncio.Event()
        log: list[str] = []
        start = spawn(rt, p.core.invalidate_range_start(mm, BASE, BASE + 4 * P), "start")
        await settle(rt)  # dev's invalidate is running (held)

        async def remove() -> None:
            await dev.remove()
            log.append("removed")

        rm = spawn(rt, remove(), "remove")
        await settle(rt)
        dev.hold.set()
        await start
        await settle(rt)
        log.append("start returned")
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        log.append("end returned")
        await rm
        await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P)
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        return log, len(dev.calls), (count, mm.count), list(itree(mm).tree), p.oracle.violations

    log, calls, counts, tree, violations = vrun(body)
    assert log == ["start returned", "end returned", "removed"]
    assert calls == 1 and counts == (2, 1) and tree == [] and violations == []


def test_remove_when_idle_returns_at_once_and_remove_of_a_deferred_insert_drops_it(vrun):
    """mmu_interval_notifier_remove: with the tree idle it removes at once; with the insert
    still on deferred_list it only unlinks it (nothing to wait for); a second remove is refused."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        a = await mirror(owner, mm, "a", BASE, 4)
        t0 = rt.now()
        await a.remove()
        idle = (rt.now() - t0, list(itree(mm).tree))
        await mirror(owner, mm, "keep", BASE + 8 * P, 4)
        await p.core.invalidate_range_start(mm, BASE + 8 * P, BASE + 9 * P)
        b = await mirror(owner, mm, "b", BASE, 4)
        await b.remove()
        deferred = (list(itree(mm).deferred), b.mni.deferred)
        await p.core.invalidate_range_end(mm, BASE + 8 * P, BASE + 9 * P)
        with pytest.raises(InvalidArgument, match=r"remove\(a\): the notifier is not inserted"):
            await a.remove()
        return idle, deferred, [m.name for m in itree(mm).tree], mm.count

    assert vrun(body) == ((0.0, []), ([], False), ["keep"], 2)


def test_a_remove_that_does_not_wait_is_caught_by_invariant_4(vrun, settle, monkeypatch):
    """The oracle can fail: with remove's wait taken out (a planted bug), the invalidate that
    was running when remove returned is reported as a method running after remove."""
    async def no_wait(mni: MmuIntervalNotifier) -> None:
        t = mni.itree
        assert t is not None
        with t.lock:
            t.deferred.insert(0, mni)
            mni.deferred = True
        mni.itree = None
        t.oracle.interval_removed(mni, t.mm)

    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        dev.hold = asyncio.Event()
        start = spawn(rt, p.core.invalidate_range_start(mm, BASE, BASE + 4 * P), "start")
        await settle(rt)
        monkeypatch.setattr(interval, "mmu_interval_notifier_remove", no_wait)
        await interval.mmu_interval_notifier_remove(dev.mni)
        dev.hold.set()
        await start
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        return [(v.invariant, v.what) for v in p.oracle.violations]

    assert vrun(body) == [(4, "invalidate was still running when unregister returned")]


def test_insert_refusals(vrun):
    """__mmu_interval_notifier_insert: length 0 or past ULONG_MAX is -EOVERFLOW; an mm without
    mm_users is refused (c9682d10271e: the WARN_ON is on mm_users); _insert_locked asserts
    mmap_lock held for write; a notifier cannot be inserted twice."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        ops = MmuIntervalNotifierOps()
        mni = MmuIntervalNotifier("n")
        with pytest.raises(Overflow, match="length 0x0"):
            await mmu_interval_notifier_insert(p.core, mni, mm, BASE, 0, ops)
        with pytest.raises(Overflow, match="beyond|within unsigned long"):
            await mmu_interval_notifier_insert(p.core, mni, mm, ULONG_MAX, 2, ops)
        await mmu_interval_notifier_insert(p.core, MmuIntervalNotifier("top"), mm, ULONG_MAX, 1, ops)
        with pytest.raises(InvalidArgument, match="without mmap_sem held for write"):
            await mmu_interval_notifier_insert_locked(p.core, mni, mm, BASE, P, ops)
        async with mm.mmap_sem.write():
            await mmu_interval_notifier_insert_locked(p.core, mni, mm, BASE, P, ops)
        with pytest.raises(InvalidArgument, match="n is already inserted"):
            await mmu_interval_notifier_insert(p.core, mni, mm, BASE, P, ops)
        with pytest.raises(InvalidArgument, match="set_seq.*odd"):
            mmu_interval_set_seq(mni, 4)
        mm.users = 0
        with pytest.raises(InvalidArgument, match="mm_users is 0"):
            await mmu_interval_notifier_insert(p.core, MmuIntervalNotifier("late"), mm, BASE, P, ops)
        return [m.name for m in itree(mm).tree]

    assert vrun(body) == ["n", "top"]


def test_v3_10_has_no_interval_notifiers(vrun):
    """Interval notifiers came with Linux 5.5: under the v3.10 core the insert is refused,
    naming the semantics, and nothing is registered."""
    async def body(rt):
        p, mm, owner = await setup(rt, "v3.10")
        with pytest.raises(InvalidArgument, match=r"the 'v3.10' notifier core has no interval notifiers.*'v5.10' or 'v6.6'"):
            await IntervalMirror(owner, mm.id, "dev").insert(BASE, P)
        return mm.notifier_mm

    assert vrun(body) is None


# -- non-blocking starts: -EAGAIN -------------------------------------------------------------------


def test_a_non_blockable_invalidate_that_would_sleep_fails_the_start_with_eagain(vrun, settle):
    """mn_itree_invalidate on a range without MMU_NOTIFIER_RANGE_BLOCKABLE: the driver's
    trylock fails, its invalidate returns false, so the range is ended at once
    (mn_itree_inv_end) and the start answers -EAGAIN; the caller calls no end. The notifier
    before it in the tree was invalidated; nothing is left open (invariant 3)."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        first = await mirror(owner, mm, "first", BASE, 2)
        busy = await mirror(owner, mm, "busy", BASE + 2 * P, 2)
        await busy.lock.lock()  # a fault holds the driver lock
        ret = await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P, event=MmuNotifierEvent.UNMAP, flags=NONBLOCK)
        t = itree(mm)
        state = (ret, t.active_invalidate_ranges, t.invalidate_seq, len(first.calls), len(busy.calls))
        busy.lock.unlock()
        retried = await p.core.invalidate_range_start(mm, BASE, BASE + 4 * P, flags=NONBLOCK)  # the reaper retries
        await p.core.invalidate_range_end(mm, BASE, BASE + 4 * P)
        return state, (retried, len(first.calls), len(busy.calls)), p.check_invariants(final=True), t.warnings

    assert vrun(body) == ((-errno.EAGAIN, 0, 4, 1, 0), (0, 2, 1), [], [])


def test_a_non_blockable_invalidate_that_sleeps_is_a_kernel_bug(vrun):
    """In a non-blockable range the driver may not sleep: one that does is caught at its first
    suspension (the core drives it with none allowed), naming it."""
    class Sleeper(MmuIntervalNotifierOps):
        def __init__(self, rt: Any) -> None:
            self.rt = rt

        async def invalidate(self, mni, range, cur_seq):
            await self.rt.sleep(1)
            return True

    async def body(rt):
        p, mm, _ = await setup(rt)
        await mmu_interval_notifier_insert(p.core, MmuIntervalNotifier("sleeper"), mm, BASE, P, Sleeper(rt))
        with pytest.raises(SleepingInAtomicContext, match="invalidate of interval notifier sleeper"):
            await p.core.invalidate_range_start(mm, BASE, BASE + P, flags=NONBLOCK)

    vrun(body, join=False)


def test_a_blockable_invalidate_returning_false_is_warned_and_the_walk_goes_on(vrun):
    """mn_itree_invalidate: WARN_ON(mmu_notifier_range_blockable(range)) and continue."""
    class Refuser(MmuIntervalNotifierOps):
        def invalidate(self, mni, range, cur_seq):
            return False

    async def body(rt):
        p, mm, owner = await setup(rt)
        await mmu_interval_notifier_insert(p.core, MmuIntervalNotifier("refuser"), mm, BASE, P, Refuser())
        after = await mirror(owner, mm, "after", BASE, 2)
        await p.core.invalidate_range_start(mm, BASE, BASE + 2 * P)
        await p.core.invalidate_range_end(mm, BASE, BASE + 2 * P)
        return itree(mm).warnings, len(after.calls)

    warnings, calls = vrun(body)
    assert len(warnings) == 1 and "refuser returned false for a blockable range" in warnings[0] and calls == 1


def test_mutex_trylock_takes_a_free_mutex_without_sleeping_and_leaves_a_held_one(vrun, settle):
    """mutex_trylock(), what a non-blockable invalidate takes its driver lock with: callable in
    atomic context; False for a held mutex, leaving its queue as it was."""
    from nodes.locks import Mutex
    from nodes.runtime import run_atomic

    async def body(rt):
        m = Mutex("m")
        got = run_atomic("trylock test", m.trylock)
        again = run_atomic("trylock test", m.trylock)
        waiter = spawn(rt, m.lock(), "waiter")
        await settle(rt)
        m.unlock()
        await waiter  # the queued waiter, not a trylock, got it
        late = m.trylock()
        m.unlock()
        return got, again, late, m.locked

    assert vrun(body) == (True, False, False, False)


# -- exit: mn_itree_release ---------------------------------------------------------------------


def test_exit_invalidates_every_interval_notifier_with_release_and_remove_still_works(vrun):
    """__mmu_notifier_release -> mn_itree_release: each notifier gets invalidate of [0,
    ULONG_MAX) with event RELEASE before any page is freed, then its range ends; the notifiers
    stay in the tree; remove afterwards drops the mm_count it held (exit dropped its own)."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        dev = await mirror(owner, mm, "dev", BASE, 4)
        await dev.fault(BASE)
        count = mm.count
        await vmops.exit_mmap(p, mm)
        calls = list(dev.calls)
        await dev.remove()
        return calls, dev.ptes, (count, mm.count), p.check_invariants(final=True)

    calls, ptes, counts, sweep = vrun(body)
    # then exit_mmap's unmap_vmas invalidates [0, TASK_SIZE) again, as v5.10's does: the tree
    # still holds the notifier (only the hlist is emptied by release)
    assert calls == [(3, 0, ULONG_MAX, "RELEASE"), (5, 0, TASK_SIZE, "UNMAP")]
    assert ptes == {} and counts == (2, 0) and sweep == []


class Listed(MmuNotifier):
    """A notifier on the mm's hlist, with only ->release."""

    def release(self, mm: Any) -> None:
        return None


def test_an_mm_with_interval_notifiers_alone_waits_for_no_grace_period_at_exit(vrun):
    """__mmu_notifier_release() of v5.10: mn_itree_release(), then mn_hlist_release() (and its
    synchronize_srcu()) only if the hlist has notifiers. With a reader of the partition's global
    SRCU asleep on another mm's behalf, the exit of an mm that only interval notifiers watch
    returns at once; one with a notifier on its list waits for that reader."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        other = p.create_mm()
        srcu = p.srcu_for(other)

        async def sleeping_reader() -> None:  # a callout on the other mm, asleep 10 ms
            async with srcu.read_section():
                await rt.sleep(10_000)

        dev = await mirror(owner, mm, "dev", BASE, 4)
        reader = rt.spawn(sleeping_reader(), name="reader")
        await rt.sleep(1)
        alone = await vmops.exit_mmap(p, mm)
        await dev.remove()
        await reader
        # the same exit with a notifier on the hlist too: it waits for the reader
        p2, mm2, owner2 = await setup(rt)
        await mirror(owner2, mm2, "dev2", BASE, 4)
        await p2.core.register(Listed("listed"), mm2)
        srcu2 = p2.srcu_for(mm2)

        async def sleeping_reader2() -> None:
            async with srcu2.read_section():
                await rt.sleep(10_000)

        reader2 = rt.spawn(sleeping_reader2(), name="reader2")
        await rt.sleep(1)
        listed = await vmops.exit_mmap(p2, mm2)
        await reader2
        return alone, listed

    alone, listed = vrun(body)
    assert alone.srcu_wait_us == 0.0
    assert listed.srcu_wait_us >= 10_000 - 1


# -- a secondary on another partition -------------------------------------------------------------


def _remote_config(**kw: Any) -> SimConfig:
    return SimConfig(partitions=2, hop_latency=1.0, semantics="v5.10", **kw)


async def _remote(c: SimCluster, npages: int = 8) -> tuple[Partition, Any, IntervalMirror]:
    a = c.partition("p0")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, npages * P)
    await vmops.populate(a, mm, BASE, npages * P)
    dev = IntervalMirror(c.owner_port("p1", "p0"), mm.id, "mirror@p1")
    await dev.insert(BASE, npages * P)
    return a, mm, dev


def test_remote_interval_notifier_faults_and_is_invalidated_across_the_interconnect():
    """A device on p1 holds an interval notifier on p0's mm: the insert, read_begin and remove
    are requests to p0; p0's invalidations reach p1 as callouts carrying the range and cur_seq;
    read_retry on p1 catches an invalidation that began during the fault's lookup; munmap on
    p0 zaps p1's ptes before the pages are freed."""
    async def wl(c: SimCluster) -> dict[str, Any]:
        a, mm, dev = await _remote(c)
        t = itree(mm)
        out: dict[str, Any] = {"seq": (t.invalidate_seq, dev.mni.invalidate_seq)}
        await dev.fault(BASE)
        dev.looked_up.clear()
        dev.gate = asyncio.Event()
        fault = asyncio.get_running_loop().create_task(dev.fault(BASE + P))
        await dev.looked_up.wait()
        await a.core.invalidate_range_start(mm, BASE, BASE + 2 * P, event=MmuNotifierEvent.CLEAR)
        dev.gate.set()
        await a.core.invalidate_range_end(mm, BASE, BASE + 2 * P)
        await fault
        out["retried"] = (dev.retries, sorted(dev.ptes) == [BASE + P], dev.calls[0][1:])
        await vmops.munmap(a, mm, BASE, 4 * P)
        out["after munmap"] = (sorted(dev.ptes), dev.calls[-1], int(a.oracle.smap.sum()))
        await dev.remove()
        out["removed"] = (t.tree, mm.count)
        out["violations"] = c.violations() + [str(v) for v in a.check_invariants(final=True)]
        return out

    r = run_sim(_remote_config(), wl).result
    assert r["seq"] == (2, 1)
    assert r["retried"] == (1, True, (BASE, BASE + 2 * P, "CLEAR"))
    assert r["after munmap"] == ([], (5, BASE, BASE + 4 * P, "UNMAP"), 0)
    assert r["removed"] == ([], 1) and r["violations"] == []


def test_remote_interval_notifier_cannot_take_a_non_blockable_invalidate():
    """The OOM reaper's range may not sleep, and a callout to another partition sleeps: the
    owner's stand-in answers false without sending anything, and the start answers -EAGAIN."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm, dev = await _remote(c)
        sent = dict(c.interconnect.messages)
        ret = await a.core.invalidate_range_start(mm, BASE, BASE + P, flags=NONBLOCK)
        now = dict(c.interconnect.messages)
        await dev.remove()
        return ret, dev.calls, sent == now, a.check_invariants(final=True)

    assert run_sim(_remote_config(), wl).result == (-errno.EAGAIN, [], True, [])


def test_remote_interval_notifier_of_a_dead_partition_is_fenced_and_exit_completes():
    """A callout that gets no answer fences the secondary's partition: its interval notifier is
    treated as done (it can no longer reach the owner's memory) and exit completes."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm, dev = await _remote(c)
        await dev.fault(BASE)
        c.interconnect.crash("p1")
        await vmops.exit_mmap(a, mm)
        return [(f.host, f.during) for f in c.faults], int(a.oracle.smap.sum()), a.check_invariants(final=True)

    faults, smap, sweep = run_sim(_remote_config(deadline_us=500.0), wl).result
    assert faults == [("p1", "invalidate of p1:mirror@p1")]
    assert smap == 0 and sweep == []


def test_remote_interval_notifier_is_not_an_hlist_notifier_and_a_repeated_insert_is_refused():
    """The owner keeps the two kinds apart: an unregister naming an interval notifier's id finds
    no (hlist) notifier; its reports and reads are still accepted; a second insert of the same
    notifier through the same partition is refused before any request."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm, dev = await _remote(c)
        nid = dev.owner._id(dev.mni)  # type: ignore[attr-defined]
        with pytest.raises(NotFound, match=f"no notifier {nid!r} of partition p1 on p0"):
            await c.interconnect.call("p1", "p0", "owner", "unregister", "p1", nid, mm.id)
        with pytest.raises(InvalidArgument, match="mirror@p1 is already inserted through partition p1"):
            await dev.insert(BASE, P)
        await dev.fault(BASE)
        held = int(a.oracle.smap.sum())
        await dev.remove()
        return held, a.check_invariants()

    assert run_sim(_remote_config(), wl).result == (1, [])


def test_a_range_begun_before_the_first_insert_is_not_counted_by_the_tree(vrun):
    """The tree counts only the ranges that began once the mm had interval notifiers
    (__mmu_notifier_invalidate_range_start skips the tree without has_itree). mm_take_all_locks()
    in the register excludes the VM operations' ranges, not an exported invalidate holding no
    lock: its end is a WARN here, not a count below zero."""
    async def body(rt):
        p, mm, owner = await setup(rt)
        await p.core.invalidate_range_start(mm, BASE, BASE + P)  # exported: no lock held
        dev = await mirror(owner, mm, "dev", BASE, 4)
        await p.core.invalidate_range_end(mm, BASE, BASE + P)
        t = itree(mm)
        return t.active_invalidate_ranges, t.invalidate_seq, dev.mni.in_tree, len(t.warnings), dev.calls

    assert vrun(body) == (0, 2, True, 1, [])
