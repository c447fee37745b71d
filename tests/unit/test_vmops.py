"""The VM operations of nodes/vmops.py: the exact notifier callout sequence of each, and where
frames are freed relative to the callouts (REFERENCE sections 2 and 6).

Every scenario runs on the virtual-time loop with one in-process ``Partition`` and a recording
notifier (``Rec``) that implements all seven ops. Each call is logged with its arguments, whether
it ran in atomic context, the primary ptes of the address(es) it concerns at that moment, and
whether the frames the test is watching were still allocated then. So "pages are freed only after
invalidate_range_end" is a check on what the notifier saw, not on the order of lines in vmops.py.
"""

from __future__ import annotations

import asyncio
import errno
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import numpy as np
import pytest

from cluster.vtime import VirtualClock, run_virtual
from nodes import vmops
from nodes.errors import BadAddress, Busy, InvalidArgument, Released, SleepingInAtomicContext, Unmapped
from nodes.mm import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SIZE,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    PTE_DIRTY,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
    Mm,
)
from nodes.notifier import OPS, MmuNotifier, has_op
from nodes.partition import Partition
from nodes.runtime import Runtime, in_atomic

P = PAGE_SIZE
BASE = 0x4000_0000  # 2 MiB aligned
RW = PROT_READ | PROT_WRITE
FRESH_WRITE = PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_YOUNG  # a page after a write fault
NFRAMES = 4096
SLEEPABLE = ("release", "invalidate_page", "invalidate_range_start", "invalidate_range_end")


# -- the recording test double ----------------------------------------------------------------


@dataclass
class Call:
    mn: str
    op: str
    args: tuple[Any, ...]
    atomic: bool  # ran in atomic context (under the page-table lock)
    t: float = 0.0
    alive: tuple[bool, ...] = ()  # watched frames still allocated at that moment
    ptes: list[tuple[int, int] | None] = field(default_factory=list)  # primary ptes of the op's addresses
    nfree: int = -1


def _pte(mm: Mm, addr: int) -> tuple[int, int] | None:
    return mm.pte(addr) if mm.find_vma(addr) is not None else None


class Rec(MmuNotifier):
    """Implements all seven ops; records every call. Knobs: ``young`` / ``test_young`` answers,
    ``delay`` (virtual us each sleepable op sleeps), ``watch`` (pfns whose liveness each call
    records), ``drop_pin_on_page`` (address -> pfn: unpinned in invalidate_page, as XPMEM
    does), ``pin_on_start`` (pfns pinned in range_start: a racing GUP-fast)."""

    def __init__(self, name: str, p: Partition, log: list[Call], *, young: int = 0, test_young: int = 0, delay: float = 0.0):
        super().__init__(name)
        self.p = p
        self.log = log
        self.young = young
        self.ty = test_young
        self.delay = delay
        self.watch: list[int] = []
        self.drop_pin_on_page: dict[int, int] = {}
        self.pin_on_start: list[int] = []

    def _rec(self, mm: Mm, op: str, args: tuple[Any, ...], addrs: Any = ()) -> None:
        f = self.p.frames
        self.log.append(
            Call(
                self.name, op, args, in_atomic(), self.p.runtime.now(),
                tuple(bool(f.refcount[w] > 0) for w in self.watch),
                [_pte(mm, a) for a in addrs], f.nfree,
            )
        )

    @staticmethod
    def _pages(start: int, end: int) -> range:
        return range(start, end, P) if end - start <= 1024 * P else range(0)

    async def _sleep(self) -> None:
        if self.delay:
            await self.p.runtime.sleep(self.delay)

    async def release(self, mm: Mm) -> None:
        self._rec(mm, "release", ())
        await self._sleep()

    async def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        self._rec(mm, "invalidate_range_start", (start, end), self._pages(start, end))
        if self.pin_on_start:
            self.p.frames.pin(self.pin_on_start)
        await self._sleep()

    async def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        self._rec(mm, "invalidate_range_end", (start, end), self._pages(start, end))
        await self._sleep()

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        self._rec(mm, "invalidate_page", (address,), [address])
        pfn = self.drop_pin_on_page.pop(address, None)
        if pfn is not None:
            self.p.frames.unpin(pfn)
        await self._sleep()

    def change_pte(self, mm: Mm, address: int, pte: tuple[int, int]) -> None:
        self._rec(mm, "change_pte", (address, pte), [address])

    def clear_flush_young(self, mm: Mm, address: int) -> int:
        self._rec(mm, "clear_flush_young", (address,), [address])
        return self.young

    def test_young(self, mm: Mm, address: int) -> int:
        self._rec(mm, "test_young", (address,), [address])
        return self.ty


def trace_frees(p: Partition, log: list[Call]) -> None:
    """Log every return of frames to the allocator as ("frames", "free", *pfns), in order with
    the callouts (the oracle still sees them)."""
    inner = p.frames.on_free

    def hook(pfns: np.ndarray) -> None:
        log.append(Call("frames", "free", tuple(sorted(int(x) for x in pfns)), in_atomic(), p.runtime.now()))
        if inner is not None:
            inner(pfns)

    p.frames.on_free = hook


def seq(log: list[Call], mn: str | None = None) -> list[tuple[Any, ...]]:
    """(op, *args) of each call, optionally of one notifier only."""
    return [(c.op, *c.args) for c in log if mn is None or c.mn == mn]


def nseq(log: list[Call]) -> list[tuple[Any, ...]]:
    """(notifier, op, *args) of each call."""
    return [(c.mn, c.op, *c.args) for c in log]


def run(body: Callable[[Runtime, Partition], Awaitable[Any]], *, nframes: int = NFRAMES) -> Any:
    """Run ``body(rt, p)`` on a fresh virtual-time loop and partition; join spawned tasks."""

    async def main() -> Any:
        rt = Runtime(VirtualClock())
        p = Partition(rt, nframes=nframes)
        result = await body(rt, p)
        await rt.join()
        return result

    return run_virtual(main())


async def fill(p: Partition, mm: Mm, start: int, npages: int, *, write: bool = True) -> list[int]:
    """Touch ``npages`` pages from ``start``; returns their pfns."""
    return [await vmops.touch(p, mm, start + k * P, write=write) for k in range(npages)]


async def setup(p: Partition, npages: int = 8, *, name: str = "rec", **kw: Any) -> tuple[Mm, Rec, list[Call], list[int]]:
    """An mm with one RW VMA of ``npages`` at BASE, every page written, and a Rec registered."""
    mm = p.create_mm()
    mm.add_vma(BASE, npages * P, RW)
    pfns = await fill(p, mm, BASE, npages)
    log: list[Call] = []
    rec = Rec(name, p, log, **kw)
    await p.core.register(rec, mm)
    return mm, rec, log, pfns


def assert_clean(p: Partition, *, final: bool = False) -> None:
    assert p.oracle.violations == []
    assert p.check_invariants(final=final) == []
    assert not in_atomic()


def alive(p: Partition, pfns: Any) -> list[bool]:
    return [bool(p.frames.refcount[x] > 0) for x in np.atleast_1d(pfns)]


def test_recorder_implements_every_op():
    rec = Rec("r", None, [])  # type: ignore[arg-type]
    assert all(has_op(rec, op) for op in OPS)


# -- munmap -------------------------------------------------------------------------------------


def test_munmap_middle_one_range_pair_pages_freed_after_end_vma_split():
    async def body(rt, p):
        nfree0 = p.frames.nfree
        mm, rec, log, pfns = await setup(p, 16)
        victims = pfns[4:8]
        rec.watch = victims
        trace_frees(p, log)
        start, end = BASE + 4 * P, BASE + 8 * P

        await vmops.munmap(p, mm, start, end - start)

        assert seq(log)[:2] == [("invalidate_range_start", start, end), ("invalidate_range_end", start, end)]
        s, e = log[:2]
        assert not s.atomic and not e.atomic
        # range_start: the ptes are still there and the pages allocated
        assert s.ptes == [(pfn, FRESH_WRITE) for pfn in victims]
        assert s.alive == (True,) * 4
        # range_end: the ptes are gone, but the pages are not freed yet (tlb_finish_mmu is later)
        assert e.ptes == [(-1, 0)] * 4
        assert e.alive == (True,) * 4
        assert e.nfree == nfree0 - 16
        # after: freed, and only them, in one batch after range_end
        assert seq(log)[2:] == [("free", *sorted(victims))]
        assert alive(p, victims) == [False] * 4
        assert p.frames.nfree == nfree0 - 12
        assert [(v.start, v.end) for v in mm.vmas] == [(BASE, start), (end, BASE + 16 * P)]
        assert [mm.pte(BASE + k * P)[0] for k in (0, 3, 8, 15)] == [pfns[0], pfns[3], pfns[8], pfns[15]]
        with pytest.raises(BadAddress):
            mm.pte(start)
        assert_clean(p)

        # munmap over both remaining pieces and the hole between: one pair for the whole range
        log.clear()
        rec.watch = []
        await vmops.munmap(p, mm, BASE, 16 * P)
        assert seq(log) == [
            ("invalidate_range_start", BASE, BASE + 16 * P),
            ("invalidate_range_end", BASE, BASE + 16 * P),
            ("free", *sorted(pfns[:4] + pfns[8:])),
        ]
        assert mm.vmas == []
        assert p.frames.nfree == nfree0  # every frame is back
        assert_clean(p, final=True)

    run(body)


def test_munmap_of_unmapped_hole_makes_no_callout():
    async def body(rt, p):
        mm, rec, log, pfns = await setup(p, 4)
        nfree = p.frames.nfree
        await vmops.munmap(p, mm, BASE + 64 * P, 8 * P)
        await vmops.munmap(p, mm, BASE - 8 * P, 8 * P)  # ends exactly where the VMA starts
        assert log == []
        assert p.frames.nfree == nfree
        assert [(v.start, v.end) for v in mm.vmas] == [(BASE, BASE + 4 * P)]
        assert_clean(p)

    run(body)


@pytest.mark.parametrize(
    "start,length,match",
    [
        (BASE + 1, P, "start 0x40000001 is not page aligned"),
        (BASE, 0, "length 0 is not positive"),
        (BASE, -P, f"length {-P} is not positive"),
        (BASE, P + 100, f"length {P + 100} is not a multiple"),
    ],
)
def test_munmap_bad_arguments_name_the_value(start, length, match):
    async def body(rt, p):
        mm, rec, log, pfns = await setup(p, 4)
        with pytest.raises(InvalidArgument, match=match):
            await vmops.munmap(p, mm, start, length)
        assert log == []
        assert len(mm.vmas) == 1
        assert_clean(p)

    run(body)


# -- mprotect -----------------------------------------------------------------------------------


def test_mprotect_one_pair_per_vma_piece_and_write_protects():
    async def body(rt, p):
        mm = p.create_mm()
        mm.add_vma(BASE, 4 * P, RW)
        mm.add_vma(BASE + 4 * P, 4 * P, RW)  # adjacent VMA: the range covers two pieces
        pfns = await fill(p, mm, BASE, 8)
        log: list[Call] = []
        rec = Rec("rec", p, log)
        await p.core.register(rec, mm)

        lo, mid, hi = BASE + 2 * P, BASE + 4 * P, BASE + 6 * P
        await vmops.mprotect(p, mm, lo, hi - lo, PROT_READ)

        assert seq(log) == [
            ("invalidate_range_start", lo, mid),
            ("invalidate_range_end", lo, mid),
            ("invalidate_range_start", mid, hi),
            ("invalidate_range_end", mid, hi),
        ]
        assert all(not c.atomic for c in log)
        # each piece: writable at its range_start, write-protected at its range_end
        assert log[0].ptes == [(pfns[2], FRESH_WRITE), (pfns[3], FRESH_WRITE)]
        assert log[1].ptes == [(pfns[2], FRESH_WRITE & ~PTE_WRITE), (pfns[3], FRESH_WRITE & ~PTE_WRITE)]
        assert log[3].ptes == [(pfns[4], FRESH_WRITE & ~PTE_WRITE), (pfns[5], FRESH_WRITE & ~PTE_WRITE)]
        for k in range(8):
            pfn, flags = mm.pte(BASE + k * P)
            assert pfn == pfns[k]  # no page moved
            assert bool(flags & PTE_WRITE) == (k not in (2, 3, 4, 5))
        assert [(v.start, v.end, v.prot) for v in mm.vmas] == [
            (BASE, lo, RW), (lo, mid, PROT_READ), (mid, hi, PROT_READ), (hi, BASE + 8 * P, RW),
        ]

        # a write to the read-only VMA is refused; reads and writes elsewhere need no callout
        log.clear()
        with pytest.raises(BadAddress, match="read-only VMA"):
            await vmops.touch(p, mm, lo + P, write=True)
        assert await vmops.touch(p, mm, lo + P) == pfns[3]
        assert await vmops.touch(p, mm, BASE, write=True) == pfns[0]
        assert log == []

        # write permission back: ptes stay read-only until a write fault, which reuses the
        # page in place (it is this mm's alone) without a callout
        await vmops.mprotect(p, mm, lo, 2 * P, RW)
        assert seq(log) == [("invalidate_range_start", lo, mid), ("invalidate_range_end", lo, mid)]
        assert not mm.pte(lo)[1] & PTE_WRITE
        log.clear()
        assert await vmops.touch(p, mm, lo, write=True) == pfns[2]
        assert mm.pte(lo)[1] & PTE_WRITE
        assert log == []
        assert_clean(p)

    run(body)


def test_mprotect_over_a_hole_changes_what_it_covered_then_answers_enomem():
    """v3.10 sys_mprotect(): mprotect_fixup() of each piece up to the hole, then -ENOMEM; a
    hole at the start changes nothing."""
    async def body(rt, p):
        mm, rec, log, pfns = await setup(p, 4)
        mm.add_vma(BASE + 8 * P, 4 * P, RW)
        with pytest.raises(Unmapped, match=rf"unmapped hole at {BASE + 4 * P:#x} \(ENOMEM; \[{BASE:#x}, {BASE + 4 * P:#x}\) was changed\)"):
            await vmops.mprotect(p, mm, BASE, 12 * P, PROT_READ)
        assert [(c.op, c.args) for c in log] == [("invalidate_range_start", (BASE, BASE + 4 * P)),
                                                 ("invalidate_range_end", (BASE, BASE + 4 * P))]
        with pytest.raises(Unmapped, match=f"unmapped hole at {BASE + 16 * P:#x} \\(ENOMEM; nothing was changed\\)"):
            await vmops.mprotect(p, mm, BASE + 16 * P, P, PROT_READ)
        assert len(log) == 2
        assert [(v.start, v.end, v.prot) for v in mm.vmas] == [(BASE, BASE + 4 * P, PROT_READ), (BASE + 8 * P, BASE + 12 * P, RW)]
        assert all(mm.pte(BASE + k * P) == (pfns[k], FRESH_WRITE & ~PTE_WRITE) for k in range(4))
        assert_clean(p)

    run(body)


# -- migrate_pages ------------------------------------------------------------------------------


def test_migrate_invalidate_page_after_migration_entry_contents_kept_old_freed():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 4)
        stamps = [p.frames.stamp(x) for x in old]
        rec.watch = old
        nfree = p.frames.nfree
        trace_frees(p, log)

        assert await vmops.migrate_pages(p, mm, BASE, 4 * P) == 4

        # per page: invalidate_page, then the old page is freed (a freed frame may be the
        # next page's new frame: the allocator reuses the most recently freed first)
        assert seq(log) == [e for k in range(4) for e in (("invalidate_page", BASE + k * P), ("free", old[k]))]
        for k, c in enumerate(log[::2]):
            assert not c.atomic
            pfn, flags = c.ptes[0]
            # the pte is a migration entry now: a write migration entry, the pte was writable
            assert flags == PTE_MIGRATION | PTE_WRITE and pfn == old[k]
            assert c.alive[k]  # and the page it pointed to is still allocated
        new = [mm.pte(BASE + k * P)[0] for k in range(4)]
        assert new[1:] == old[:3]  # the reuse noted above
        assert new[0] not in old
        for k in range(4):
            assert mm.pte(BASE + k * P)[1] == FRESH_WRITE
            assert p.frames.stamp(new[k])[:2] == stamps[k][:2]  # owner and vpn copied
            assert p.frames.stamp(new[k])[2] != stamps[k][2]  # a different frame
        assert p.frames.is_free(old[3])
        assert p.frames.nfree == nfree
        assert_clean(p)

    run(body)


def test_migrate_refused_while_a_pin_is_kept_pte_restored():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 2)
        (ref,) = await vmops.get_user_pages(p, mm, BASE, 1, write=True, pin=True)
        assert ref.pfn == old[0]
        nfree = p.frames.nfree

        assert await vmops.migrate_pages(p, mm, BASE, P) == 0

        assert seq(log) == [("invalidate_page", BASE)]
        assert log[0].ptes == [(old[0], PTE_MIGRATION | PTE_WRITE)]
        assert mm.pte(BASE) == (old[0], FRESH_WRITE)  # remove_migration_ptes(page, page)
        assert p.frames.refcount[old[0]] == 2 and p.frames.pincount[old[0]] == 1
        assert p.frames.nfree == nfree  # the new frame went back
        assert_clean(p)
        p.frames.unpin(old[0])
        assert_clean(p, final=True)

    run(body)


def test_migrate_succeeds_when_invalidate_page_drops_the_pin_like_xpmem():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 2)
        await vmops.get_user_pages(p, mm, BASE, 1, write=True, pin=True)
        rec.drop_pin_on_page[BASE] = old[0]
        rec.watch = [old[0]]
        stamp = p.frames.stamp(old[0])

        assert await vmops.migrate_pages(p, mm, BASE, P) == 1

        assert seq(log) == [("invalidate_page", BASE)]
        assert log[0].alive == (True,)
        new, flags = mm.pte(BASE)
        assert new != old[0] and flags == FRESH_WRITE
        assert p.frames.stamp(new)[:2] == stamp[:2]
        assert p.frames.is_free(old[0])
        assert rec.drop_pin_on_page == {}
        assert_clean(p, final=True)

    run(body)


def test_migrate_skips_pages_shared_with_another_mm_after_fork():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 3)
        child = await vmops.fork(p, mm)
        log.clear()
        assert await vmops.migrate_pages(p, mm, BASE, 3 * P) == 0
        assert log == []
        assert [mm.pte(BASE + k * P)[0] for k in range(3)] == old
        assert [child.pte(BASE + k * P)[0] for k in range(3)] == old
        assert_clean(p)

    run(body)


def test_migrate_and_reclaim_skip_absent_pages():
    async def body(rt, p):
        mm = p.create_mm()
        mm.add_vma(BASE, 4 * P, RW)
        pfns = [await vmops.touch(p, mm, BASE + k * P, write=True) for k in (0, 2)]  # 1 and 3 absent
        log: list[Call] = []
        await p.core.register(Rec("rec", p, log), mm)
        assert await vmops.migrate_pages(p, mm, BASE, 4 * P) == 2
        assert seq(log) == [("invalidate_page", BASE), ("invalidate_page", BASE + 2 * P)]
        mm.vmas[0].flags &= ~np.uint8(PTE_YOUNG)
        log.clear()
        assert await vmops.reclaim(p, mm, BASE, 4 * P) == 2
        assert [c for c in seq(log) if c[0] == "invalidate_page"] == [("invalidate_page", BASE), ("invalidate_page", BASE + 2 * P)]
        assert [mm.pte(BASE + k * P) for k in range(4)] == [(-1, PTE_SWAP), (-1, 0), (-1, PTE_SWAP), (-1, 0)]
        assert all(p.frames.is_free(x) for x in pfns)
        with pytest.raises(InvalidArgument, match="reason must be one of .* got 'numa'"):
            await vmops.migrate_pages(p, mm, BASE, P, reason="numa")
        assert_clean(p, final=True)

    run(body)


def test_syscall_migration_holds_mmap_sem_and_the_mm_so_munmap_and_exit_wait(settle):
    """move_pages()/migrate_pages(): munmap waits for the whole migration (mmap_sem for read);
    the process's exit (its mmput) is not the last one, the migration's mmput runs exit_mmap."""
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 2, delay=50)  # every sleepable callout takes 50 us
        mig = rt.spawn(vmops.migrate_pages(p, mm, BASE, 2 * P), name="move_pages")
        await settle(rt)
        assert mm.users == 2 and mm.pte(BASE)[1] & PTE_MIGRATION
        await vmops.munmap(p, mm, BASE + P, P)
        assert seq(log) == [("invalidate_page", BASE), ("invalidate_page", BASE + P),
                            ("invalidate_range_start", BASE + P, BASE + 2 * P),
                            ("invalidate_range_end", BASE + P, BASE + 2 * P)]
        assert await mig == 2
        assert mm.users == 1
        mig = rt.spawn(vmops.migrate_pages(p, mm, BASE, P), name="move_pages")
        await settle(rt)
        assert await vmops.mmput(p, mm) is None and not mm.exited  # the migration holds the mm
        assert await mig == 1
        assert mm.exited and mm.users == 0  # its mmput was the last
        assert_clean(p, final=True)

    run(body)


def test_compaction_sleeping_in_invalidate_page_survives_munmap_zapping_its_entry(settle):
    """Rmap-driven migration holds no mmap_sem: munmap splits the VMA and zaps a migration
    entry while the migration sleeps in invalidate_page. remove_migration_ptes() then finds
    no entry, the new page is freed at putback, the old one at the put of its isolation; the
    pages left are migrated in the VMA munmap split off."""
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 4, delay=50)
        stamps = [p.frames.stamp(x) for x in old]
        nfree = p.frames.nfree
        mig = rt.spawn(vmops.migrate_pages(p, mm, BASE, 4 * P, reason="compaction"), name="compaction")
        await settle(rt)
        assert mm.pte(BASE)[1] & PTE_MIGRATION
        await vmops.munmap(p, mm, BASE + P, P)  # splits at once; zaps while page 1 migrates
        assert await mig == 4
        assert [(v.start, v.end) for v in mm.vmas] == [(BASE, BASE + P), (BASE + 2 * P, BASE + 4 * P)]
        for v in mm.vmas:
            assert not (v.flags & PTE_MIGRATION).any()
        for k in (0, 2, 3):
            pfn, flags = mm.pte(BASE + k * P)
            assert flags == FRESH_WRITE and pfn != old[k] and p.frames.stamp(pfn)[:2] == stamps[k][:2]
        assert p.frames.nfree == nfree + 1  # page 1's old frame and its new one went back
        assert_clean(p)

    run(body)


# -- KSM ----------------------------------------------------------------------------------------


def test_ksm_merge_sequence_old_page_freed_after_last_range_end_and_cow_after():
    async def body(rt, p):
        log: list[Call] = []
        mm_a, mm_b = p.create_mm(), p.create_mm()
        a, b = BASE, BASE + 16 * P
        mm_a.add_vma(a, P, RW)
        mm_b.add_vma(b, P, RW)
        (pa,) = await fill(p, mm_a, a, 1)
        (pb,) = await fill(p, mm_b, b, 1)
        ra, rb = Rec("A", p, log), Rec("B", p, log)
        await p.core.register(ra, mm_a)
        await p.core.register(rb, mm_b)
        ra.watch = rb.watch = [pa, pb]
        wp = PTE_PRESENT | PTE_YOUNG  # write-protected and clean
        trace_frees(p, log)

        assert await vmops.ksm_merge(p, mm_a, a, mm_b, b) is True

        # mm_b's old page is freed when ksmd drops its reference, after every callout
        assert nseq(log[9:]) == [("frames", "free", pb)]
        del log[9:]
        assert nseq(log) == [
            ("A", "invalidate_range_start", a, a + P),  # write_protect_page(mm_a)
            ("A", "change_pte", a, (pa, wp)),
            ("A", "invalidate_range_end", a, a + P),
            ("B", "invalidate_range_start", b, b + P),  # write_protect_page(mm_b)
            ("B", "change_pte", b, (pb, wp)),
            ("B", "invalidate_range_end", b, b + P),
            ("B", "invalidate_range_start", b, b + P),  # replace_page(mm_b -> KSM page)
            ("B", "change_pte", b, (pa, wp)),
            ("B", "invalidate_range_end", b, b + P),
        ]
        assert [c.atomic for c in log] == [False, True, False] * 3
        # change_pte comes before the primary pte is set (set_pte_at_notify)
        assert log[1].ptes == [(pa, 0)] and log[4].ptes == [(pb, 0)] and log[7].ptes == [(pb, 0)]
        assert log[2].ptes == [(pa, wp)] and log[8].ptes == [(pa, wp)]
        # mm_b's old page survives its last range_end (ksmd still holds it), then is freed
        assert all(c.alive == (True, True) for c in log)
        assert p.frames.is_free(pb)
        assert mm_a.pte(a) == (pa, wp) and mm_b.pte(b) == (pa, wp)
        assert pa in p.frames.ksm and p.frames.refcount[pa] == 2
        assert_clean(p)

        # a write by mm_b COWs (range_start, change_pte, range_end); the KSM page stays
        log.clear()
        nb = await vmops.touch(p, mm_b, b, write=True)
        assert nb != pa
        assert nseq(log) == [
            ("B", "invalidate_range_start", b, b + P),
            ("B", "change_pte", b, (nb, FRESH_WRITE)),
            ("B", "invalidate_range_end", b, b + P),
        ]
        assert p.frames.refcount[pa] == 1

        # a write by mm_a, now the KSM page's only user: still COW, never reused in place;
        # the KSM page is put after range_end
        log.clear()
        na = await vmops.touch(p, mm_a, a, write=True)
        assert na != pa
        assert nseq(log) == [
            ("A", "invalidate_range_start", a, a + P),
            ("A", "change_pte", a, (na, FRESH_WRITE)),
            ("A", "invalidate_range_end", a, a + P),
            ("frames", "free", pa),  # put after range_end
        ]
        assert log[2].alive[0] is True
        assert p.frames.is_free(pa) and pa not in p.frames.ksm
        assert p.frames.stamp(na)[:2] == (mm_a.id, a // P)
        assert_clean(p, final=True)

    run(body)


def test_ksm_merge_refused_for_a_pinned_page():
    async def body(rt, p):
        log: list[Call] = []
        mm_a, mm_b = p.create_mm(), p.create_mm()
        a, b = BASE, BASE + 16 * P
        mm_a.add_vma(a, P, RW)
        mm_b.add_vma(b, P, RW)
        (pa,) = await fill(p, mm_a, a, 1)
        (pb,) = await fill(p, mm_b, b, 1)
        await p.core.register(Rec("A", p, log), mm_a)
        await p.core.register(Rec("B", p, log), mm_b)

        # mm_a's page pinned: write_protect_page gives up, no change_pte, nothing merged
        await vmops.get_user_pages(p, mm_a, a, 1, write=True, pin=True)
        assert await vmops.ksm_merge(p, mm_a, a, mm_b, b) is False
        assert nseq(log) == [("A", "invalidate_range_start", a, a + P), ("A", "invalidate_range_end", a, a + P)]
        assert mm_a.pte(a) == (pa, FRESH_WRITE) and mm_b.pte(b) == (pb, FRESH_WRITE)
        assert p.frames.ksm == set()
        p.frames.unpin(pa)
        assert_clean(p, final=True)

        # mm_b's page pinned: mm_b keeps its own page, writable
        log.clear()
        await vmops.get_user_pages(p, mm_b, b, 1, write=True, pin=True)
        assert await vmops.ksm_merge(p, mm_a, a, mm_b, b) is False
        assert seq(log, "B") == [("invalidate_range_start", b, b + P), ("invalidate_range_end", b, b + P)]
        assert mm_b.pte(b) == (pb, FRESH_WRITE)
        assert p.frames.refcount[pb] == 2 and p.frames.pincount[pb] == 1
        p.frames.unpin(pb)
        assert_clean(p, final=True)

    run(body)


# -- fork and COW -------------------------------------------------------------------------------


def test_fork_write_protects_parent_then_cow_puts_old_page_child_reuses():
    async def body(rt, p):
        parent = p.create_mm()
        parent.add_vma(BASE, 4 * P, RW)
        ro = BASE + 16 * P
        parent.add_vma(ro, 2 * P, PROT_READ)
        pfns = await fill(p, parent, BASE, 4)
        ro_pfns = await fill(p, parent, ro, 2, write=False)
        log: list[Call] = []
        rp = Rec("parent", p, log)
        await p.core.register(rp, parent)

        child = await vmops.fork(p, parent)

        assert nseq(log) == [
            ("parent", "invalidate_range_start", BASE, BASE + 4 * P),
            ("parent", "invalidate_range_end", BASE, BASE + 4 * P),
        ]
        assert log[0].ptes == [(x, FRESH_WRITE) for x in pfns]
        assert log[1].ptes == [(x, FRESH_WRITE & ~PTE_WRITE) for x in pfns]
        for k in range(4):
            assert parent.pte(BASE + k * P) == (pfns[k], FRESH_WRITE & ~PTE_WRITE)
            assert child.pte(BASE + k * P) == (pfns[k], FRESH_WRITE & ~PTE_WRITE)
            assert p.frames.refcount[pfns[k]] == 2
        assert [child.pte(ro + k * P)[0] for k in range(2)] == ro_pfns
        assert_clean(p)

        rc = Rec("child", p, log)
        await p.core.register(rc, child)
        child_stamp = p.frames.stamp(pfns[0])
        rp.watch = [pfns[0]]

        # parent writes: COW with range_start, change_pte (new pfn), range_end, old page put
        # after range_end but not freed: the child still maps it
        log.clear()
        new = await vmops.touch(p, parent, BASE, write=True)
        assert new != pfns[0]
        assert nseq(log) == [
            ("parent", "invalidate_range_start", BASE, BASE + P),
            ("parent", "change_pte", BASE, (new, FRESH_WRITE)),
            ("parent", "invalidate_range_end", BASE, BASE + P),
        ]
        assert log[1].atomic and log[1].ptes == [(pfns[0], 0)]  # cleared, not yet set
        assert log[2].ptes == [(new, FRESH_WRITE)]
        assert p.frames.refcount[pfns[0]] == 1
        assert parent.pte(BASE) == (new, FRESH_WRITE)
        assert child.pte(BASE) == (pfns[0], FRESH_WRITE & ~PTE_WRITE)
        assert p.frames.stamp(pfns[0]) == child_stamp  # the child's view is unchanged
        assert_clean(p)

        # the child writes afterwards: sole user, reused in place, no callout at all
        log.clear()
        assert await vmops.touch(p, child, BASE, write=True) == pfns[0]
        assert log == []
        assert child.pte(BASE) == (pfns[0], FRESH_WRITE)
        assert_clean(p)

        await vmops.exit_mmap(p, child)
        await vmops.exit_mmap(p, parent)
        assert p.frames.nfree == NFRAMES
        assert_clean(p, final=True)

    run(body)


# -- reclaim ------------------------------------------------------------------------------------


def test_reclaim_young_kept_then_unmapped_invalidated_freed_and_swapped_in():
    async def body(rt, p):
        mm, rec, log, (pfn,) = await setup(p, 1)
        rec.watch = [pfn]

        assert await vmops.reclaim(p, mm, BASE, P) == 0  # young: page_referenced keeps it
        assert seq(log) == [("clear_flush_young", BASE)]
        assert log[0].atomic
        assert mm.pte(BASE) == (pfn, FRESH_WRITE & ~PTE_YOUNG)
        assert_clean(p)

        log.clear()
        assert await vmops.reclaim(p, mm, BASE, P) == 1
        # page_referenced, then try_to_unmap_one checks young again, then invalidate_page
        assert seq(log) == [("clear_flush_young", BASE), ("clear_flush_young", BASE), ("invalidate_page", BASE)]
        assert [c.atomic for c in log] == [True, True, False]
        assert log[1].ptes == [(pfn, FRESH_WRITE & ~PTE_YOUNG)]
        page = log[2]
        assert page.ptes == [(-1, PTE_SWAP)]  # the pte was cleared before invalidate_page
        assert page.alive == (True,)  # and the page was not freed yet
        assert p.frames.is_free(pfn)
        assert mm.pte(BASE) == (-1, PTE_SWAP)
        assert_clean(p)

        # touch again: swapped in as a fresh frame holding the same page
        log.clear()
        new = await vmops.touch(p, mm, BASE)
        assert new >= 0 and mm.pte(BASE)[1] & PTE_PRESENT and not mm.pte(BASE)[1] & PTE_SWAP
        assert p.frames.stamp(new)[:2] == (mm.id, BASE // P)
        assert log == []
        assert_clean(p)

    run(body)


def test_reclaim_secondary_young_keeps_page_referenced():
    async def body(rt, p):
        mm, rec, log, (pfn,) = await setup(p, 1, young=1)
        for _ in range(3):
            assert await vmops.reclaim(p, mm, BASE, P) == 0
        assert seq(log) == [("clear_flush_young", BASE)] * 3  # never reaches try_to_unmap
        assert mm.pte(BASE) == (pfn, FRESH_WRITE & ~PTE_YOUNG)  # primary bit cleared, page kept
        assert_clean(p)

    run(body)


def test_reclaim_pinned_page_unmapped_but_kept_until_unpinned():
    async def body(rt, p):
        mm, rec, log, (pfn,) = await setup(p, 1)
        await vmops.get_user_pages(p, mm, BASE, 1, write=True, pin=True)
        mm.vmas[0].flags[0] &= ~np.uint8(PTE_YOUNG)
        assert await vmops.reclaim(p, mm, BASE, P) == 0
        assert seq(log) == [("clear_flush_young", BASE), ("clear_flush_young", BASE), ("invalidate_page", BASE)]
        assert mm.pte(BASE) == (-1, PTE_SWAP)
        assert p.frames.refcount[pfn] == 1 and p.frames.pincount[pfn] == 1
        assert_clean(p)
        assert list(p.frames.unpin(pfn)) == [pfn]
        assert_clean(p, final=True)

    run(body)


class SleepyYoung(MmuNotifier):
    """A remote secondary: its clear_flush_young needs the network."""

    def __init__(self, name: str, rt: Runtime, *, raw: bool = False):
        super().__init__(name)
        self.rt = rt
        self.raw = raw

    async def clear_flush_young(self, mm: Mm, address: int) -> int:
        if self.raw:
            await asyncio.sleep(0)  # suspends without might_sleep()
        else:
            await self.rt.sleep(5)
        return 0


@pytest.mark.parametrize("raw", [False, True])
def test_reclaim_sleeping_clear_flush_young_is_a_bug_naming_the_notifier(raw):
    async def body(rt, p):
        mm = p.create_mm()
        mm.add_vma(BASE, P, RW)
        await fill(p, mm, BASE, 1)
        await p.core.register(SleepyYoung("remote-gru-7", rt, raw=raw), mm)
        with pytest.raises(SleepingInAtomicContext, match="remote-gru-7"):
            await vmops.reclaim(p, mm, BASE, P)
        assert not in_atomic()
        assert not mm.page_table_lock.held

    run(body)


# -- THP collapse -------------------------------------------------------------------------------


def test_thp_collapse_range_pair_then_old_frames_freed_new_mapped():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, HPAGE_PMD_NR)
        rec.watch = old
        stamps = [p.frames.stamp(x) for x in old]
        nfree = p.frames.nfree
        end = BASE + HPAGE_PMD_SIZE

        assert await vmops.thp_collapse(p, mm, BASE) is True

        # every pte young: no test_young needed
        assert seq(log) == [("invalidate_range_start", BASE, end), ("invalidate_range_end", BASE, end)]
        s, e = log
        assert s.ptes == [(x, FRESH_WRITE) for x in old]
        assert e.ptes == [(-1, 0)] * HPAGE_PMD_NR  # pmd cleared between start and end
        assert all(s.alive) and all(e.alive)  # old pages freed only after range_end
        assert e.nfree == nfree - HPAGE_PMD_NR  # the huge page was allocated before
        assert alive(p, old) == [False] * HPAGE_PMD_NR
        assert p.frames.nfree == nfree
        new = mm.vmas[0].pfn.tolist()
        assert set(new).isdisjoint(old)
        assert (mm.vmas[0].flags == FRESH_WRITE).all()
        assert [p.frames.stamp(x)[:2] for x in new] == [s[:2] for s in stamps]
        assert_clean(p)

    run(body)


def test_thp_collapse_of_a_broken_block_is_refused_with_the_errno_of_madv_collapse():
    """A block with a pte not present: EAGAIN (Busy) naming the pte; a block that is not one
    whole VMA: EINVAL (InvalidArgument) naming what is there. Nothing changes, no callout."""
    async def body(rt, p):
        mm = p.create_mm()
        mm.add_vma(BASE, HPAGE_PMD_SIZE, RW)
        await fill(p, mm, BASE, HPAGE_PMD_NR - 1)  # last pte absent
        log: list[Call] = []
        await p.core.register(Rec("rec", p, log), mm)
        nfree = p.frames.nfree
        last = BASE + (HPAGE_PMD_NR - 1) * P
        with pytest.raises(Busy, match=f"pte of {last:#x} .* is not present") as e:
            await vmops.thp_collapse(p, mm, BASE)
        assert e.value.errno == errno.EAGAIN
        assert log == [] and p.frames.nfree == nfree

        await fill(p, mm, last, 1)
        await vmops.mprotect(p, mm, BASE + 7 * P, P, PROT_READ)  # one pte read-only (and its own VMA)
        log.clear()
        with pytest.raises(InvalidArgument, match=rf"not inside one VMA \(VMA \[{BASE:#x}, {BASE + 7 * P:#x}\)") as e:
            await vmops.thp_collapse(p, mm, BASE)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(InvalidArgument, match=f"no VMA at {BASE + HPAGE_PMD_SIZE:#x}"):
            await vmops.thp_collapse(p, mm, BASE + HPAGE_PMD_SIZE)
        assert log == [] and p.frames.nfree == nfree - 1
        assert_clean(p)

    run(body)


def test_thp_collapse_declines_a_write_protected_block():
    """After fork every pte of the parent is write-protected (SCAN_PAGE_RO): khugepaged
    declines, with no callout."""
    async def body(rt, p):
        mm, rec, log, old = await setup(p, HPAGE_PMD_NR)
        child = await vmops.fork(p, mm)
        log.clear()
        nfree = p.frames.nfree
        assert await vmops.thp_collapse(p, mm, BASE) is False
        assert log == [] and p.frames.nfree == nfree
        assert mm.vmas[0].pfn.tolist() == old
        await vmops.exit_mmap(p, child)
        assert_clean(p)

    run(body)


@pytest.mark.parametrize("answer", [0, 1])
def test_thp_collapse_referenced_through_test_young(answer):
    async def body(rt, p):
        mm, rec, log, old = await setup(p, HPAGE_PMD_NR, test_young=answer)
        mm.vmas[0].flags &= ~np.uint8(PTE_YOUNG)  # no primary accessed bit anywhere
        nfree = p.frames.nfree

        collapsed = await vmops.thp_collapse(p, mm, BASE)

        assert collapsed is bool(answer)
        ty = [c for c in log if c.op == "test_young"]
        assert ty and all(c.atomic for c in ty)  # under the PT lock
        assert all(BASE <= c.args[0] < BASE + HPAGE_PMD_SIZE for c in ty)
        rest = [c for c in log if c.op != "test_young"]
        if answer:
            assert log.index(rest[0]) > log.index(ty[0])  # scan before collapse
            assert seq(rest) == [
                ("invalidate_range_start", BASE, BASE + HPAGE_PMD_SIZE),
                ("invalidate_range_end", BASE, BASE + HPAGE_PMD_SIZE),
            ]
            assert alive(p, old) == [False] * HPAGE_PMD_NR
        else:
            assert rest == []  # nothing referenced: no collapse, no invalidate
            assert mm.vmas[0].pfn.tolist() == old
        assert p.frames.nfree == nfree
        assert_clean(p)

    run(body)


def test_thp_collapse_aborted_by_pins():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, HPAGE_PMD_NR)
        nfree = p.frames.nfree
        before = (mm.vmas[0].pfn.copy(), mm.vmas[0].flags.copy())

        # pinned before the scan: khugepaged_scan_pmd sees page_count != 1, nothing happens
        await vmops.get_user_pages(p, mm, BASE + 9 * P, 1, write=True, pin=True)
        assert await vmops.thp_collapse(p, mm, BASE) is False
        assert log == []
        p.frames.unpin(old[9])

        # pinned after the scan, inside the window (a GUP-fast racing the collapse):
        # __collapse_huge_page_isolate refuses, the ptes are put back as they were
        rec.pin_on_start = [old[300]]
        assert await vmops.thp_collapse(p, mm, BASE) is False
        rec.pin_on_start = []
        assert seq(log) == [
            ("invalidate_range_start", BASE, BASE + HPAGE_PMD_SIZE),
            ("invalidate_range_end", BASE, BASE + HPAGE_PMD_SIZE),
        ]
        assert (mm.vmas[0].pfn == before[0]).all() and (mm.vmas[0].flags == before[1]).all()
        assert p.frames.nfree == nfree  # the huge page went back, no old page freed
        assert_clean(p)
        p.frames.unpin(old[300])
        assert_clean(p, final=True)

    run(body)


def test_thp_collapse_declines_a_block_write_protected_between_scan_and_collapse(settle):
    """mprotect(PROT_READ) of the whole VMA runs between khugepaged's scan (mmap_sem read)
    and its collapse (mmap_sem write): the VMA is still whole, but
    __collapse_huge_page_isolate() finds the ptes write-protected and puts the pmd back; no
    writable huge page lands in a read-only VMA."""
    async def body(rt, p):
        mm, rec, log, old = await setup(p, HPAGE_PMD_NR)
        nfree = p.frames.nfree
        await mm.mmap_sem.down_write()  # both queue: khugepaged's scan first, then mprotect
        thp = rt.spawn(vmops.thp_collapse(p, mm, BASE), name="khugepaged")
        await settle(rt)
        prot = rt.spawn(vmops.mprotect(p, mm, BASE, HPAGE_PMD_SIZE, PROT_READ), name="mprotect")
        await settle(rt)
        mm.mmap_sem.up_write()
        assert await thp is False
        await prot
        end = BASE + HPAGE_PMD_SIZE
        assert seq(log) == [("invalidate_range_start", BASE, end), ("invalidate_range_end", BASE, end)] * 2
        vma = mm.vmas[0]
        assert (vma.start, vma.end, vma.prot) == (BASE, end, PROT_READ)
        assert vma.pfn.tolist() == old and not (vma.flags & PTE_WRITE).any()
        assert p.frames.nfree == nfree  # the huge page went back
        assert_clean(p)

    run(body)


def test_thp_collapse_unaligned_address_is_invalid():
    async def body(rt, p):
        mm, rec, log, old = await setup(p, 4)
        with pytest.raises(InvalidArgument, match=f"{BASE + P:#x} is not 2 MiB aligned"):
            await vmops.thp_collapse(p, mm, BASE + P)
        assert log == []
        assert_clean(p)

    run(body)


# -- exit_mmap ----------------------------------------------------------------------------------


def test_exit_mmap_release_first_then_every_frame_freed_without_callouts():
    async def body(rt, p):
        nframes = p.frames.nframes
        mm, rec, log, pfns = await setup(p, 8, delay=50)
        mm.add_vma(BASE + 64 * P, 4 * P, RW)
        more = await fill(p, mm, BASE + 64 * P, 4)
        rec.watch = pfns + more
        nfree = p.frames.nfree

        timing = await vmops.exit_mmap(p, mm)

        assert seq(log) == [("release",)]  # no range callout after release: the list is empty
        rel = log[0]
        assert not rel.atomic
        assert all(rel.alive) and rel.nfree == nfree  # before any frame is freed
        assert timing.release_us == 50 and timing.total_us >= 50
        assert alive(p, pfns + more) == [False] * 12
        assert p.frames.nfree == nframes
        assert mm.exited and mm.vmas == []
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []

        with pytest.raises(Released):
            await vmops.get_user_pages(p, mm, BASE, 1, write=False, pin=False)
        with pytest.raises(Released):
            await vmops.touch(p, mm, BASE)

        # the driver's later unregister finds mn unhashed: no second release, mm dropped
        await p.core.unregister(rec, mm)
        assert seq(log) == [("release",)]
        assert mm.count == 0
        assert_clean(p, final=True)

    run(body)


# -- get_user_pages -----------------------------------------------------------------------------


def test_get_user_pages_errors_and_pins():
    async def body(rt, p):
        mm, rec, log, pfns = await setup(p, 4)
        mm.add_vma(BASE + 16 * P, 2 * P, PROT_READ)
        outside = BASE + 8 * P
        with pytest.raises(BadAddress, match=f"{outside:#x}"):
            await vmops.get_user_pages(p, mm, outside, 1, write=False, pin=False)
        for n in (0, -1):
            with pytest.raises(InvalidArgument, match=f"got {n}"):
                await vmops.get_user_pages(p, mm, BASE, n, write=False, pin=False)
        with pytest.raises(BadAddress, match="read-only VMA"):
            await vmops.get_user_pages(p, mm, BASE + 16 * P, 1, write=True, pin=True)
        assert p.frames.pincount.sum() == 0

        refs = await vmops.get_user_pages(p, mm, BASE + P, 2, write=True, pin=True)
        assert [(r.address, r.pfn, r.writable) for r in refs] == [(BASE + P, pfns[1], True), (BASE + 2 * P, pfns[2], True)]
        assert [r.stamp for r in refs] == [p.frames.stamp(pfns[1]), p.frames.stamp(pfns[2])]
        assert p.frames.pincount[pfns[1]] == 1 and p.frames.refcount[pfns[1]] == 2
        refs = await vmops.get_user_pages(p, mm, BASE + P, 1, write=False, pin=False)
        assert p.frames.pincount[pfns[1]] == 1 and p.frames.refcount[pfns[1]] == 2  # no pin kept
        # read GUP of the read-only VMA faults the page in, not writable
        (r,) = await vmops.get_user_pages(p, mm, BASE + 16 * P, 1, write=False, pin=True)
        assert not r.writable and p.frames.pincount[r.pfn] == 1
        assert log == []  # faults need no callout
        assert_clean(p)
        p.frames.unpin([pfns[1], pfns[2], r.pfn])
        assert_clean(p, final=True)

    run(body)


def test_get_user_pages_failing_midway_keeps_no_pin():
    async def body(rt, p):
        mm, rec, log, pfns = await setup(p, 2)
        with pytest.raises(BadAddress, match=f"{BASE + 2 * P:#x}"):
            await vmops.get_user_pages(p, mm, BASE, 3, write=True, pin=True)
        assert p.frames.pincount.sum() == 0
        assert [p.frames.refcount[x] for x in pfns] == [1, 1]
        assert_clean(p, final=True)

    run(body)


# -- registration against mmap_sem ---------------------------------------------------------------


def test_register_waits_for_a_munmap_holding_mmap_sem():
    async def body(rt, p):
        mm, slow, log, pfns = await setup(p, 8, name="slow", delay=100)
        late = Rec("late", p, log)
        unmap = rt.spawn(vmops.munmap(p, mm, BASE, 4 * P), name="munmap")
        await rt.sleep(1)
        assert mm.mmap_sem.writer and seq(log) == [("invalidate_range_start", BASE, BASE + 4 * P)]

        async def register() -> None:
            await p.core.register(late, mm)
            log.append(Call("test", "registered", (), in_atomic(), rt.now()))

        reg = rt.spawn(register(), name="register")
        await asyncio.gather(unmap, reg)

        assert nseq(log) == [
            ("slow", "invalidate_range_start", BASE, BASE + 4 * P),
            ("slow", "invalidate_range_end", BASE, BASE + 4 * P),
            ("test", "registered"),
        ]
        assert log[2].t >= log[1].t + 100  # after munmap's range_end returned
        assert [(v.start, v.end) for v in mm.vmas] == [(BASE + 4 * P, BASE + 8 * P)]

        # from now on both are called, the newest first (added at the list head)
        log.clear()
        await vmops.munmap(p, mm, BASE + 4 * P, P)
        r = (BASE + 4 * P, BASE + 5 * P)
        assert nseq(log) == [
            ("late", "invalidate_range_start", *r),
            ("slow", "invalidate_range_start", *r),
            ("late", "invalidate_range_end", *r),
            ("slow", "invalidate_range_end", *r),
        ]
        assert_clean(p)

    run(body)
