"""The SGI GRU secondary MMU of nodes/secondary/gru.py (REFERENCE section 5, invariants 1, 2, 6).

Every scenario runs on the virtual-time loop with a real ``Partition`` and the GRU reaching it
only through an owner port: ``LocalOwner``, or ``DelayedOwner`` (the same port with a network
round trip on each get_user_pages / put_user_pages, so a dropin's lookup can race an
invalidation). Times asserted are exact virtual microseconds.
"""

from __future__ import annotations

import time

import pytest

from nodes import vmops
from nodes.errors import BadAddress, InvalidArgument, NotFound, Released
from nodes.mm import PAGE_SIZE, TASK_SIZE
from nodes.notifier import OPS, has_op
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary.gru import GRU_TIMEOUT_US, GRUMAXINVAL, GruMmu, GruTimeout
from doubles import DelayedOwner

P = PAGE_SIZE
BASE = 0x4000_0000
NPAGES = 64
FLUSH = 2.0  # us per page (the default)


async def setup(rt: Runtime, *, one_way_us: float = 0.0, npages: int = NPAGES, gru_cls=GruMmu, **config):
    p = Partition(rt, nframes=4096)
    mm = p.create_mm()
    mm.add_vma(BASE, npages * P)
    owner = DelayedOwner(p, one_way_us) if one_way_us else LocalOwner(p)
    gru = gru_cls(rt, owner, mm.id, "gru0", **config)
    await gru.register()
    return p, mm, gru


async def timed(rt: Runtime, coro):
    result = await coro
    return result, rt.now()


def violations(p: Partition) -> set[int]:
    return {v.invariant for v in p.oracle.violations}


def test_gru_implements_exactly_the_ops_of_gru_mmuops(vrun):
    async def body(rt):
        _, _, gru = await setup(rt)
        return {op for op in OPS if has_op(gru, op)}

    assert vrun(body) == {"invalidate_range_start", "invalidate_range_end", "invalidate_page", "release"}


def test_bad_config_is_refused_naming_the_value(vrun):
    async def body(rt):
        p = Partition(rt, nframes=16)
        with pytest.raises(InvalidArgument, match="tlb_entries .* got 0"):
            GruMmu(rt, LocalOwner(p), 1, "g", tlb_entries=0)
        with pytest.raises(InvalidArgument, match="flush_per_page_us .* got -1"):
            GruMmu(rt, LocalOwner(p), 1, "g", flush_per_page_us=-1)

    vrun(body)


def test_malformed_callouts_are_refused_before_anything_changes(vrun):
    """A callout from another partition can carry anything: a reversed, empty or out-of-range
    range, an address outside user space, another mm. Refused with the value named; the
    range counter, the TLB and the release flag are untouched."""
    async def body(rt):
        p, mm, gru = await setup(rt)
        for k in range(3):
            await gru.access(BASE + k * P)
        other = p.create_mm()
        cases = [
            (gru.invalidate_range_start(mm, BASE + P, BASE), InvalidArgument, rf"empty range \[{BASE + P:#x}, {BASE:#x}\)"),
            (gru.invalidate_range_start(mm, -P, BASE), InvalidArgument, "outside user space"),
            (gru.invalidate_range_end(mm, BASE, TASK_SIZE + P), InvalidArgument, "outside user space"),
            (gru.invalidate_range_end(mm, BASE, BASE), InvalidArgument, "empty range"),
            (gru.invalidate_page(mm, -1), InvalidArgument, "address -0x1 is outside user space"),
            (gru.invalidate_page(mm, TASK_SIZE), InvalidArgument, f"address {TASK_SIZE:#x}"),
            (gru.invalidate_range_start(other, BASE, BASE + P), NotFound,
             f"about mm {other.id}, but this GRU maps mm {mm.id}"),
            (gru.invalidate_page(other, BASE), NotFound, f"about mm {other.id}"),
        ]
        for coro, exc, message in cases:
            with pytest.raises(exc, match=message):
                await coro
        with pytest.raises(NotFound, match=f"release is about mm {other.id}"):
            await gru.release(other)
        assert (gru.ms_range_active, gru.ms_released, len(gru.tlb)) == (0, False, 3)
        assert gru.stats.flushes == 0 and p.oracle.ok

    vrun(body)


def test_owner_port_refuses_reads_and_reports_naming_a_bad_mm_address_or_frame(vrun):
    """What a secondary names in a read or a translation report is checked before the oracle
    records it (over gRPC these arrive from another partition): an mm that never existed,
    another mm than the notifier's, an address outside user space or unaligned, a frame the
    partition does not have."""
    async def body(rt):
        p, mm, gru = await setup(rt)
        await gru.access(BASE)
        e = gru.translation(BASE)
        owner = gru.owner
        other = p.create_mm()
        with pytest.raises(NotFound, match="no mm 999 on partition p0"):
            await owner.dma_read(gru, 999, BASE, e.pfn, e.stamp)
        with pytest.raises(InvalidArgument, match=f"registered on p0/mm{mm.id}, not on p0/mm{other.id}"):
            await owner.dma_read(gru, other.id, BASE, e.pfn, e.stamp)
        with pytest.raises(InvalidArgument, match=f"address {BASE + 1:#x} is not page aligned"):
            await owner.dma_read(gru, mm.id, BASE + 1, e.pfn, e.stamp)
        for pfn in (-1, 4096, 2**62):
            with pytest.raises(InvalidArgument, match=f"{pfn} is not a frame of partition p0 \\(0..4095\\)"):
                await owner.dma_read(gru, mm.id, BASE, pfn, e.stamp)
        with pytest.raises(InvalidArgument, match="address -0x1000 is outside user space"):
            owner.translation_established(gru, mm.id, -P, e.pfn)
        with pytest.raises(InvalidArgument, match="4096 is not a frame"):
            owner.translation_established(gru, mm.id, BASE, 4096)
        with pytest.raises(NotFound, match="no mm 0 on"):
            owner.translations_dropped(gru, 0, [e.pfn])
        with pytest.raises(InvalidArgument, match="-5 is not a frame"):
            owner.translations_dropped(gru, mm.id, [e.pfn, -5])
        with pytest.raises(NotFound, match="no mm 77"):
            await owner.unregister(gru, 77)
        assert await owner.dma_read(gru, mm.id, BASE, e.pfn, e.stamp) == e.stamp
        assert int(p.oracle.smap.sum()) == 1 and p.oracle.checked["read"] == 2 and p.oracle.ok

    vrun(body)


def test_miss_drops_in_reports_and_reads_the_right_page(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt)
        pfn = await vmops.touch(p, mm, BASE + 3 * P, write=True)
        stamp = await gru.access(BASE + 3 * P + 123)
        assert stamp == p.frames.stamp(pfn)
        assert gru.translation(BASE + 3 * P).pfn == pfn
        assert p.oracle.smap[pfn] == 1
        assert await gru.access(BASE + 3 * P) == stamp  # a hit now
        assert (gru.stats.dropins, gru.stats.tlb_hits) == (1, 1)
        assert p.oracle.ok

    vrun(body)


def test_dropin_is_refused_while_a_range_is_active_and_completes_after_range_end(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt)
        pfn = await vmops.touch(p, mm, BASE)
        await p.core.invalidate_range_start(mm, BASE + 32 * P, BASE + 48 * P)  # 16 pages
        assert rt.now() == 16 * FLUSH
        assert gru.ms_range_active == 1
        dropin = rt.spawn(timed(rt, gru.access(BASE)), name="dropin")
        await rt.sleep(100)
        assert not dropin.done()
        assert gru.stats.refused_dropins == 1 and gru.translation(BASE) is None
        await p.core.invalidate_range_end(mm, BASE + 32 * P, BASE + 48 * P)
        assert gru.ms_range_active == 0
        stamp, t_done = await dropin
        assert t_done == 16 * FLUSH + 100  # woken by range_end, not a moment later
        assert stamp == p.frames.stamp(pfn)
        assert gru.stats.dropins == 1
        assert p.oracle.ok

    vrun(body)


def test_dropin_whose_lookup_raced_range_start_is_discarded_and_retried(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, one_way_us=10)
        pfn = await vmops.touch(p, mm, BASE)
        dropin = rt.spawn(timed(rt, gru.access(BASE)), name="dropin")
        await rt.sleep(15)  # the lookup ran at t=10, its reply is on the wire until t=20
        await p.core.invalidate_range_start(mm, BASE, BASE + P)  # t=15..17
        await rt.sleep(50 - rt.now())
        await p.core.invalidate_range_end(mm, BASE, BASE + P)  # t=50
        stamp, t_done = await dropin
        assert p.oracle.ok, p.oracle.violations  # no install inside the window (invariant 2)
        # reply at 20 found ms_range_active != 0: discarded; waited for range_end at 50, then
        # a second lookup (50 -> 70) and the install
        assert (gru.stats.retries, gru.stats.refused_dropins, gru.stats.dropins) == (1, 1, 1)
        assert t_done == 70
        assert stamp == p.frames.stamp(pfn)

    vrun(body)


def test_per_page_flush_cost_is_exact(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, npages=2048)
        for npages, cost in ((16, 16 * FLUSH), (1, FLUSH), (GRUMAXINVAL, GRUMAXINVAL * FLUSH)):
            t0 = rt.now()
            await p.core.invalidate_range_start(mm, BASE, BASE + npages * P)
            assert rt.now() - t0 == cost
            await p.core.invalidate_range_end(mm, BASE, BASE + npages * P)
        assert gru.stats.pages_flushed == 16 + 1 + GRUMAXINVAL
        assert gru.stats.full_flushes == 0
        t0 = rt.now()
        await p.core.invalidate_page(mm, BASE + 5 * P)
        assert rt.now() - t0 == FLUSH
        assert gru.ms_range_active == 0  # invalidate_page does not count as a range

    vrun(body)


def test_range_above_grumaxinval_drops_the_whole_asid_for_one_full_flush(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, npages=2048, full_flush_us=7.0)
        pfns = [await vmops.touch(p, mm, BASE + k * P) for k in (0, 1, 1500)]
        for k in (0, 1, 1500):
            await gru.access(BASE + k * P)
        assert len(gru.tlb) == 3
        start = BASE + 2 * P  # covers the entry at page 1500 only
        t0 = rt.now()
        await p.core.invalidate_range_start(mm, start, start + (GRUMAXINVAL + 1) * P)
        assert rt.now() - t0 == 7.0
        assert len(gru.tlb) == 0  # the ASID is gone: entries outside the range too
        assert gru.stats.full_flushes == 1 and gru.stats.pages_flushed == 0
        assert all(p.oracle.smap[f] == 0 for f in pfns)
        await p.core.invalidate_range_end(mm, start, start + (GRUMAXINVAL + 1) * P)
        assert p.oracle.ok

    vrun(body)


def test_huge_exported_invalidate_walks_the_tlb_not_the_range(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, full_flush_us=3.0)
        await gru.access(BASE)
        wall = time.perf_counter()
        await p.core.invalidate_range_start(mm, 0, TASK_SIZE)  # 2**35 pages
        await p.core.invalidate_range_end(mm, 0, TASK_SIZE)
        assert time.perf_counter() - wall < 0.5
        assert len(gru.tlb) == 0 and gru.stats.full_flushes == 1

    vrun(body)


def test_lru_eviction_at_tlb_size_reports_the_dropped_translation(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, tlb_entries=4)
        pfns = [await vmops.touch(p, mm, BASE + k * P) for k in range(5)]
        for k in range(4):
            await gru.access(BASE + k * P)
        await gru.access(BASE)  # a hit: page 0 becomes most recently used
        assert gru.stats.evictions == 0
        await gru.access(BASE + 4 * P)  # full: evicts page 1, the least recently used
        assert gru.stats.evictions == 1
        assert len(gru.tlb) == 4
        assert gru.translation(BASE + P) is None
        assert [p.oracle.smap[f] for f in pfns] == [1, 0, 1, 1, 1]
        assert p.oracle.ok

    vrun(body)


def test_release_at_exit_drops_everything_and_refuses_dropins(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt)
        pfns = [await vmops.touch(p, mm, BASE + k * P) for k in range(4)]
        for k in range(4):
            await gru.access(BASE + k * P)
        await p.core.invalidate_range_start(mm, BASE + 8 * P, BASE + 9 * P)

        async def refused_dropin() -> float:
            with pytest.raises(Released, match="after release"):
                await gru.access(BASE + 8 * P)
            return rt.now()

        waiter = rt.spawn(refused_dropin(), name="waiting dropin")
        await rt.sleep(10)
        t_exit = rt.now()
        await vmops.exit_mmap(p, mm)
        assert gru.ms_released and len(gru.tlb) == 0
        assert all(p.oracle.smap[f] == 0 for f in pfns)
        assert await waiter == t_exit  # woken by release, not left waiting for a range_end
        with pytest.raises(Released):
            await gru.access(BASE)
        await p.core.invalidate_range_end(mm, BASE + 8 * P, BASE + 9 * P)
        assert p.oracle.ok, p.oracle.violations
        assert p.check_invariants(final=True) == []

    vrun(body)


def test_read_after_munmap_is_never_stale(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt, one_way_us=3)
        for k in range(8):
            await gru.access(BASE + k * P, write=True)
        errors: list[Exception] = []

        async def reader() -> None:  # keeps reading while the owner unmaps
            for _ in range(40):
                for k in range(8):
                    try:
                        await gru.access(BASE + k * P)
                    except BadAddress as e:
                        errors.append(e)
                await rt.sleep(1)

        task = rt.spawn(reader(), name="reader")
        await rt.sleep(20)
        await vmops.munmap(p, mm, BASE, 8 * P)
        await task
        assert errors, "reads after munmap must fault, not hit a stale translation"
        assert len(gru.tlb) == 0
        with pytest.raises(BadAddress):
            await gru.access(BASE)
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []
        assert p.oracle.checked["read"] > 0

    vrun(body)


class GruIgnoringRangeStart(GruMmu):
    """A broken GRU: range_start neither counts the range nor flushes it."""

    async def invalidate_range_start(self, mm, start, end):
        return None


@pytest.mark.parametrize("gru_cls, expected", [(GruMmu, set()), (GruIgnoringRangeStart, {1, 6})])
def test_oracle_catches_a_gru_that_ignores_range_start(vrun, gru_cls, expected):
    async def body(rt):
        p, mm, gru = await setup(rt, gru_cls=gru_cls)
        await gru.access(BASE, write=True)
        await vmops.munmap(p, mm, BASE, 4 * P)  # frees the frame the broken GRU still maps
        await vmops.touch(p, mm, BASE + 8 * P, write=True)  # reuses it
        try:
            await gru.access(BASE)  # broken: a TLB hit on a freed, reused frame
        except BadAddress:
            pass
        return violations(p)

    assert vrun(body) == expected


def test_invalidate_page_from_migration_flushes_the_old_frame(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt)
        old = await vmops.touch(p, mm, BASE, write=True)
        await gru.access(BASE)
        assert await vmops.migrate_pages(p, mm, BASE, P) == 1
        assert gru.translation(BASE) is None
        new_stamp = await gru.access(BASE)
        new = gru.translation(BASE).pfn
        assert new != old and new_stamp == p.frames.stamp(new)
        assert p.oracle.ok, p.oracle.violations

    vrun(body)


def test_dropin_waiting_longer_than_the_gru_timeout_is_fatal(vrun):
    async def body(rt):
        p, mm, gru = await setup(rt)
        await p.core.invalidate_range_start(mm, BASE, BASE + P)  # never ended in time
        t0 = rt.now()
        with pytest.raises(GruTimeout, match="did not complete") as e:
            await gru.access(BASE)
        assert e.value.errno == 110  # ETIMEDOUT
        assert rt.now() - t0 == GRU_TIMEOUT_US
        assert gru.stats.timeouts == 1
        await p.core.invalidate_range_end(mm, BASE, BASE + P)
        await gru.access(BASE)  # the GRU works again once the range ended
        assert p.oracle.ok

    vrun(body)


@pytest.mark.parametrize("dropin, expected", [("guarded", set()), ("v3.10", {1, 6})])
def test_dropin_racing_invalidate_page_is_guarded_unless_v3_10(vrun, dropin, expected):
    """gru_invalidate_page() flushes but does not raise ms_range_active, so the v3.10 dropin
    whose lookup is in flight when migration unmaps the page and calls invalidate_page installs
    a translation of the freed frame (the kernel's window is a few instructions; across the
    network it is a round trip). The guarded dropin sees that the callout carried a later
    invalidate sequence than its answer, discards the answer and looks again: the new frame."""

    async def body(rt):
        p, mm, gru = await setup(rt, one_way_us=10, dropin=dropin)
        old = await vmops.touch(p, mm, BASE, write=True)
        dropin_task = rt.spawn(gru.access(BASE), name="dropin")
        await rt.sleep(12)  # the lookup ran at t=10; the reply lands at t=20
        assert await vmops.migrate_pages(p, mm, BASE, P) == 1  # old frame freed at t=14
        stamp = await dropin_task
        entry = gru.translation(BASE)
        if dropin == "guarded":
            assert gru.stats.guard_retries == 1 and entry.pfn != old and stamp == p.frames.stamp(entry.pfn)
            assert mm.pte(BASE)[0] == entry.pfn
        else:
            assert gru.stats.guard_retries == 0 and entry.pfn == old
        return violations(p)

    assert vrun(body) == expected


def test_bad_dropin_mode_is_refused_naming_it(vrun):
    async def body(rt):
        p = Partition(rt, nframes=16)
        with pytest.raises(InvalidArgument, match=r"dropin must be one of \('guarded', 'v3.10'\), got 'v3.11'"):
            GruMmu(rt, LocalOwner(p), 1, "g", dropin="v3.11")

    vrun(body)
