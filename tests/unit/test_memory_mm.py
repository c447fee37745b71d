"""Frames (nodes/memory.py), address spaces (nodes/mm.py), sleeping locks (nodes/locks.py) and
atomic context (nodes/runtime.py)."""

from __future__ import annotations

import asyncio
import errno

import numpy as np
import pytest

from nodes.errors import (
    BadAddress,
    Interrupted,
    InternalError,
    InvalidArgument,
    OutOfMemory,
    SleepingInAtomicContext,
)
from nodes.locks import Mutex, RwSemaphore
from nodes.memory import FREE_OWNER, FrameTable
from nodes.mm import (
    PAGE_SIZE,
    PTE_PRESENT,
    TASK_SIZE,
    Mm,
    Vma,
    check_range,
    check_user_address,
    check_user_span,
    mm_drop_all_locks,
    mm_take_all_locks,
)
from nodes.runtime import Runtime, SpinLock, TaskSignals, in_atomic, might_sleep, run_atomic

# -- FrameTable ---------------------------------------------------------------------------------


def test_alloc_hands_out_low_pfns_first_with_stamps():
    ft = FrameTable(8)
    pfns = ft.alloc(owner=3, vpns=[100, 101, 102])
    assert pfns.tolist() == [0, 1, 2]
    assert ft.nfree == 5
    assert ft.refcount.tolist() == [1, 1, 1, 0, 0, 0, 0, 0]
    assert [ft.stamp(p) for p in pfns] == [(3, 100, 1), (3, 101, 2), (3, 102, 3)]
    assert ft.allocated().tolist() == [0, 1, 2]
    assert not ft.is_free(1) and ft.is_free(3)
    one = ft.alloc(owner=4, vpns=7)  # a scalar vpn allocates one frame
    assert one.tolist() == [3] and ft.stamp(3) == (4, 7, 4)


def test_get_put_count_duplicates():
    ft = FrameTable(4)
    (p,) = ft.alloc(1, [0])
    ft.get([p, p, p])  # np.add.at: three references, not one
    assert ft.refcount[p] == 4
    assert ft.put([p, p]).tolist() == []
    assert ft.refcount[p] == 2
    freed = ft.put(np.array([p, p]))
    assert freed.tolist() == [p]  # reported once although it appeared twice
    assert ft.refcount[p] == 0 and ft.is_free(p) and ft.owner[p] == FREE_OWNER
    assert ft.nfree == 4
    assert ft.put([]).tolist() == []


def test_put_frees_only_frames_reaching_zero():
    ft = FrameTable(6)
    pfns = ft.alloc(1, [10, 11, 12])
    ft.get(pfns[1])
    freed = ft.put(pfns)
    assert freed.tolist() == [pfns[0], pfns[2]]
    assert ft.refcount[pfns].tolist() == [0, 1, 0]
    assert ft.nfree == 5


def test_over_put_is_an_internal_error_and_changes_nothing():
    ft = FrameTable(4)
    (p,) = ft.alloc(1, [0])
    with pytest.raises(InternalError, match=f"put_page of frame {p}: 2 drops of 1 reference"):
        ft.put([p, p])  # one reference, dropped twice
    assert ft.refcount[p] == 1 and ft.nfree == 3


def test_use_of_free_or_bogus_frames_is_an_internal_error():
    ft = FrameTable(4)
    with pytest.raises(InternalError, match="get_page of free frame 2"):
        ft.get(2)
    with pytest.raises(InternalError, match="put_page of free frame 0"):
        ft.put([0])
    with pytest.raises(InternalError, match=r"pin of pfn outside 0\.\.3"):
        ft.pin([4])
    with pytest.raises(InternalError, match="unpin of free frame 1"):
        ft.unpin(1)
    with pytest.raises(ValueError, match="nframes=0"):
        FrameTable(0)


def test_pin_and_unpin_vectorised():
    ft = FrameTable(4)
    pfns = ft.alloc(2, [0, 1])
    ft.pin([pfns[0], pfns[0], pfns[1]])
    assert ft.pincount[pfns].tolist() == [2, 1]
    assert ft.refcount[pfns].tolist() == [3, 2]
    assert ft.unpin([pfns[0]]).tolist() == []
    ft.put(pfns)  # the mapping references go; the pins keep the frames
    assert ft.refcount[pfns].tolist() == [1, 1] and ft.nfree == 2
    freed = ft.unpin(pfns)
    assert sorted(freed.tolist()) == sorted(pfns.tolist())
    assert ft.pincount[pfns].tolist() == [0, 0] and ft.nfree == 4


def test_unpin_of_unpinned_frame_is_an_internal_error():
    ft = FrameTable(2)
    (p,) = ft.alloc(1, [0])
    with pytest.raises(InternalError, match=f"unpin of frame {p}: 1 unpin\\(s\\) of 0 pin\\(s\\)"):
        ft.unpin(p)
    assert ft.pincount[p] == 0 and ft.refcount[p] == 1  # nothing changed


def test_out_of_memory_names_the_shortfall_and_allocates_nothing():
    ft = FrameTable(5)
    ft.alloc(1, [0, 1])
    before = (ft.refcount.copy(), ft.owner.copy(), ft.gen.copy(), ft.nfree)
    with pytest.raises(OutOfMemory, match="asked for 4, 3 of 5 are free") as ei:
        ft.alloc(2, [0, 1, 2, 3])
    assert ei.value.errno == errno.ENOMEM
    assert np.array_equal(ft.refcount, before[0]) and np.array_equal(ft.owner, before[1])
    assert np.array_equal(ft.gen, before[2]) and ft.nfree == before[3]
    assert ft.alloc(2, [0, 1, 2]).tolist() == [2, 3, 4]  # exactly what was left


def test_free_stack_reuses_last_freed_first_with_fresh_generation():
    ft = FrameTable(6)
    pfns = ft.alloc(1, [0, 1, 2, 3])
    old = {int(p): ft.stamp(int(p)) for p in pfns}
    ft.put([1, 2])
    assert ft.alloc(9, [50]).tolist() == [2]  # LIFO: the last pushed comes back first
    assert ft.alloc(9, [51]).tolist() == [1]
    assert ft.alloc(9, [52]).tolist() == [4]  # then the never-used frames, lowest first
    for p, vpn in ((2, 50), (1, 51)):
        owner, v, gen = ft.stamp(p)
        assert (owner, v) == (9, vpn)
        assert gen != old[p][2] and gen > max(g for _, _, g in old.values())
    gens = ft.gen[ft.allocated()]
    assert len(set(gens.tolist())) == len(gens)  # every live frame has its own generation


def test_on_free_sees_frames_before_they_are_free():
    ft = FrameTable(3)
    seen: list[tuple[list[int], list[int]]] = []
    ft.on_free = lambda pfns: seen.append((pfns.tolist(), ft.owner[pfns].tolist()))
    pfns = ft.alloc(5, [0, 1])
    ft.put(pfns)
    assert seen == [([0, 1], [5, 5])]  # owner still recorded when the hook runs


def test_copy_contents_keeps_destination_generation():
    ft = FrameTable(4)
    src = ft.alloc(1, [10])
    dst = ft.alloc(2, [99])
    gen_dst = ft.stamp(int(dst[0]))[2]
    ft.copy_contents(dst, src)
    assert ft.stamp(int(dst[0])) == (1, 10, gen_dst)


# -- VMAs and Mm --------------------------------------------------------------------------------


def test_vma_split_slices_page_table_and_shares_anon_vma():
    lock = Mutex("anon")
    v = Vma.new(0x10000, 0x10000 + 4 * PAGE_SIZE, 3, lock)
    v.pfn[:] = [5, 6, 7, 8]
    v.flags[:] = PTE_PRESENT
    lo, hi = v.split(0x10000 + PAGE_SIZE)
    assert (lo.start, lo.end, hi.start, hi.end) == (0x10000, 0x11000, 0x11000, 0x14000)
    assert lo.pfn.tolist() == [5] and hi.pfn.tolist() == [6, 7, 8]
    assert lo.npages == 1 and hi.npages == 3
    assert lo.anon_vma_lock is lock and hi.anon_vma_lock is lock
    hi.pfn[0] = -1  # the halves own copies
    assert v.pfn[1] == 6
    assert hi.pages(0, 0x12000) == slice(0, 1)


def test_mm_add_find_split_remove():
    mm = Mm(1)
    a = mm.add_vma(0x20000, 2 * PAGE_SIZE)
    b = mm.add_vma(0x10000, PAGE_SIZE)
    assert mm.vmas == [b, a]  # kept sorted
    assert mm.find_vma(0x21fff) is a and mm.find_vma(0x18000) is None
    with pytest.raises(BadAddress, match="address 0x18000 is outside every VMA of p0/mm1") as ei:
        mm.vma_or_fault(0x18000)
    assert ei.value.errno == errno.EFAULT
    mm.split_at(0x21000)
    assert [(v.start, v.end) for v in mm.vmas] == [(0x10000, 0x11000), (0x20000, 0x21000), (0x21000, 0x22000)]
    mm.split_at(0x21000)  # already a boundary: no change
    assert len(mm.vmas) == 3
    gone = mm.remove_vmas(0x20000, 0x21000)
    assert [(v.start, v.end) for v in gone] == [(0x20000, 0x21000)]
    assert [(v.start, v.end) for v in mm.vmas] == [(0x10000, 0x11000), (0x21000, 0x22000)]
    assert mm.pte(0x21000) == (-1, 0) and mm.resident_pages() == 0


def test_add_vma_overlap_names_both_ranges():
    mm = Mm(7, "p3")
    mm.add_vma(0x40000, 4 * PAGE_SIZE)
    with pytest.raises(InvalidArgument) as ei:
        mm.add_vma(0x42000, 4 * PAGE_SIZE)
    msg = str(ei.value)
    assert "[0x42000, 0x46000)" in msg and "[0x40000, 0x44000)" in msg and "p3/mm7" in msg
    assert ei.value.errno == errno.EEXIST  # MAP_FIXED_NOREPLACE over a mapped range
    assert len(mm.vmas) == 1
    mm.add_vma(0x44000, PAGE_SIZE)  # adjacent is fine


@pytest.mark.parametrize(
    "start, length, message",
    [
        (0x1001, PAGE_SIZE, "start 0x1001 is not page aligned"),
        (0x1000, 0, "length 0 is not positive"),
        (0x1000, -PAGE_SIZE, f"length {-PAGE_SIZE} is not positive"),
        (0x1000, 100, "length 100 is not a multiple of the page size"),
        (TASK_SIZE - PAGE_SIZE, 2 * PAGE_SIZE, "is outside user space"),
        (-PAGE_SIZE, PAGE_SIZE, "is outside user space"),
        (4096.0, PAGE_SIZE, "must be integers"),
    ],
)
def test_check_range_errors_name_the_bad_value(start, length, message):
    with pytest.raises(InvalidArgument, match=message):
        check_range(start, length, "mmap")


def test_check_range_accepts_the_top_of_user_space():
    assert check_range(TASK_SIZE - PAGE_SIZE, PAGE_SIZE) == TASK_SIZE
    assert check_range(np.int64(0), np.int64(PAGE_SIZE)) == PAGE_SIZE


@pytest.mark.parametrize(
    "address, aligned, message",
    [
        (-1, False, r"address -0x1 is outside user space"),
        (TASK_SIZE, False, f"address {TASK_SIZE:#x} is outside user space"),
        (2**63 - 1, False, "address 0x7fffffffffffffff is outside user space"),
        (0x1001, True, "address 0x1001 is not page aligned"),
        ("0x1000", False, "address '0x1000' is not an integer"),
    ],
)
def test_check_user_address_names_the_bad_value(address, aligned, message):
    with pytest.raises(InvalidArgument, match=message):
        check_user_address(address, "dma_read", aligned=aligned)


def test_check_user_address_accepts_user_space():
    assert check_user_address(0, "x", aligned=True) == 0
    assert check_user_address(TASK_SIZE - 1, "x") == TASK_SIZE - 1  # unaligned is fine unless asked
    assert check_user_address(np.int64(PAGE_SIZE), "x", aligned=True) == PAGE_SIZE


@pytest.mark.parametrize(
    "start, end, message",
    [
        (0x2000, 0x2000, r"empty range \[0x2000, 0x2000\)"),
        (0x3000, 0x1000, r"empty range \[0x3000, 0x1000\)"),
        (-PAGE_SIZE, PAGE_SIZE, "is outside user space"),
        (0, TASK_SIZE + 1, "is outside user space"),
        (0, 1.5, "must be integers"),
    ],
)
def test_check_user_span_names_the_bad_value(start, end, message):
    with pytest.raises(InvalidArgument, match=message):
        check_user_span(start, end, "invalidate_range_start")


def test_check_user_span_accepts_unaligned_and_whole_user_space():
    check_user_span(0x1001, 0x1002, "x")  # an exported invalidate need not be page aligned
    check_user_span(0, TASK_SIZE, "x")


def test_mapped_pfns_and_resident_pages():
    mm = Mm(1)
    v = mm.add_vma(0, 3 * PAGE_SIZE)
    v.pfn[:] = [4, 4, 9]
    v.flags[:] = [PTE_PRESENT, PTE_PRESENT, 0]
    assert mm.mapped_pfns().tolist() == [4, 4]
    assert mm.resident_pages() == 2
    assert Mm(2).mapped_pfns().tolist() == []


# -- mm_take_all_locks --------------------------------------------------------------------------


def test_take_all_locks_takes_each_shared_lock_once(vrun):
    async def body(rt: Runtime):
        mm = Mm(1)
        mm.add_vma(0, 4 * PAGE_SIZE)
        mm.add_vma(0x10000, PAGE_SIZE)
        mm.split_at(PAGE_SIZE)  # two VMAs now share one anon_vma lock
        assert len(mm.vmas) == 3
        await mm_take_all_locks(mm)
        assert len(mm.all_locks_taken) == 2
        assert all(v.anon_vma_lock.locked for v in mm.vmas)
        mm_drop_all_locks(mm)
        assert not any(v.anon_vma_lock.locked for v in mm.vmas) and mm.all_locks_taken == []

    vrun(body)


def test_take_all_locks_interrupted_releases_what_it_took(vrun, settle):
    async def body(rt: Runtime):
        mm = Mm(1)
        for i in range(3):
            mm.add_vma(i * 0x10000, PAGE_SIZE)
        current = TaskSignals("registrar")
        blocker = mm.vmas[1].anon_vma_lock
        await blocker.lock()  # an rmap walk holds the second lock
        task = asyncio.create_task(mm_take_all_locks(mm, current))  # awaited below
        await settle(rt)
        assert mm.vmas[0].anon_vma_lock.locked and not task.done()
        current.send("SIGINT")
        blocker.unlock()
        with pytest.raises(Interrupted, match="pending SIGINT of registrar at VMA") as ei:
            await task
        assert ei.value.errno == errno.EINTR
        assert not any(v.anon_vma_lock.locked for v in mm.vmas)
        assert mm.all_locks_taken == []

    vrun(body)


# -- RwSemaphore and Mutex ----------------------------------------------------------------------


def test_rwsem_writer_preference_and_readers_granted_together(vrun, settle):
    async def body(rt: Runtime):
        sem = RwSemaphore("mmap_sem")
        log: list[tuple[str, float]] = []

        async def reader(name: str, hold: float) -> None:
            await sem.down_read()
            log.append((f"{name}+", rt.now()))
            await rt.sleep(hold)
            log.append((f"{name}-", rt.now()))
            sem.up_read()

        async def writer(name: str, hold: float) -> None:
            await sem.down_write()
            assert sem.readers == 0 and sem.writer
            log.append((f"{name}+", rt.now()))
            await rt.sleep(hold)
            log.append((f"{name}-", rt.now()))
            sem.up_write()

        rt.spawn(reader("r1", 100), name="r1")
        await settle(rt)  # t=1
        rt.spawn(writer("w1", 50), name="w1")
        await settle(rt)  # t=2: w1 waits for r1
        assert sem.contended and sem.readers == 1
        rt.spawn(reader("r2", 30), name="r2")  # arrives while a writer waits: queues behind it
        rt.spawn(reader("r3", 40), name="r3")
        await settle(rt)  # t=3
        assert sem.readers == 1, "a reader overtook a waiting writer"
        rt.spawn(writer("w2", 10), name="w2")
        await rt.join()
        assert log == [
            ("r1+", 0.0),
            ("r1-", 100.0),
            ("w1+", 100.0),
            ("w1-", 150.0),
            ("r2+", 150.0),  # both readers granted at once
            ("r3+", 150.0),
            ("r2-", 180.0),
            ("r3-", 190.0),
            ("w2+", 190.0),
            ("w2-", 200.0),
        ]
        assert not sem.contended and sem.readers == 0 and not sem.writer

    vrun(body)


def test_rwsem_cancelled_waiter_leaves_the_queue(vrun, settle):
    async def body(rt: Runtime):
        sem = RwSemaphore("s")
        await sem.down_read()
        w = rt.spawn(sem.down_write(), name="w")
        await settle(rt)
        r = rt.spawn(sem.down_read(), name="r")
        await settle(rt)
        assert sem.readers == 1 and not r.done()
        w.cancel()  # the writer gives up: the reader behind it is granted
        await settle(rt)
        assert r.done() and sem.readers == 2 and not sem.contended
        sem.up_read()
        sem.up_read()
        assert sem.readers == 0

    vrun(body)


def test_rwsem_and_mutex_misuse(vrun):
    async def body(rt: Runtime):
        sem = RwSemaphore("s")
        with pytest.raises(InternalError, match=r"up_read\(s\) without a reader"):
            sem.up_read()
        with pytest.raises(InternalError, match=r"up_write\(s\) without the writer"):
            sem.up_write()
        async with sem.write():
            assert sem.writer
        async with sem.read():
            assert sem.readers == 1
        m = Mutex("m")
        async with m:
            assert m.locked
        assert not m.locked
        with SpinLock("ptl"):
            with pytest.raises(SleepingInAtomicContext, match=r"down_read\(s\) called from atomic context \(inside spinlock ptl\)"):
                await sem.down_read()
            with pytest.raises(SleepingInAtomicContext, match=r"mutex_lock\(m\)"):
                await m.lock()
        assert sem.readers == 0 and not m.locked

    vrun(body)


# -- SpinLock, might_sleep, run_atomic ----------------------------------------------------------


def test_might_sleep_inside_spinlock_raises_and_lock_is_released():
    lock = SpinLock("mm.page_table_lock")
    assert not in_atomic()
    might_sleep("fine outside")
    with pytest.raises(SleepingInAtomicContext, match="sleeping function zap called from atomic context \\(inside spinlock mm.page_table_lock\\)"):
        with lock:
            assert in_atomic() and lock.held
            might_sleep("zap")
    assert not lock.held and not in_atomic()


def test_spinlock_taken_recursively_is_an_internal_error():
    lock = SpinLock("l")
    with lock:
        with pytest.raises(InternalError, match="spinlock l taken recursively"):
            with lock:
                pass
        assert lock.held
    assert not lock.held and not in_atomic()


def test_runtime_sleep_under_spinlock_raises(vrun):
    async def body(rt: Runtime):
        with SpinLock("ptl"):
            with pytest.raises(SleepingInAtomicContext, match="inside spinlock ptl"):
                await rt.sleep(1)
        assert rt.now() == 0.0

    vrun(body)


def test_run_atomic_returns_values_of_plain_and_non_suspending_async_functions():
    seen: list[bool] = []

    def plain(a: int, b: int) -> int:
        seen.append(in_atomic())
        return a + b

    async def quick(a: int) -> int:
        seen.append(in_atomic())
        return a * 2

    assert run_atomic("plain op", plain, 2, 3) == 5
    assert run_atomic("quick op", quick, 21) == 42
    assert seen == [True, True]
    assert not in_atomic()


def test_run_atomic_names_the_op_that_suspends(vrun):
    async def body(rt: Runtime):
        progress: list[str] = []

        async def remote_change_pte() -> None:
            progress.append("sent")
            await rt.clock.sleep(50)  # waits for the network: a suspension
            progress.append("acked")

        with pytest.raises(SleepingInAtomicContext, match="scheduling while atomic: change_pte of notifier gru0 suspended"):
            run_atomic("change_pte of notifier gru0", remote_change_pte)
        assert progress == ["sent"]  # closed, never half-run later
        assert not in_atomic()

        async def sleeps_via_runtime() -> None:
            await rt.sleep(1)

        with pytest.raises(SleepingInAtomicContext, match=r"sleeping function sleep called from atomic context \(inside test_young of notifier kvm\)"):
            run_atomic("test_young of notifier kvm", sleeps_via_runtime)
        await rt.sleep(100)  # nothing is left behind to resume
        assert progress == ["sent"] and rt.now() == 100.0

    vrun(body)


def test_run_atomic_refuses_awaitables_that_are_not_coroutines(vrun):
    async def body(rt: Runtime):
        fut = asyncio.get_running_loop().create_future()
        with pytest.raises(SleepingInAtomicContext, match="op returned an awaitable"):
            run_atomic("op", lambda: fut)
        fut.cancel()

    vrun(body)
