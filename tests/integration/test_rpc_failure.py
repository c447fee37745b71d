"""A partition that dies in the middle of an invalidation, over gRPC: the owner's callout to it
fails (the server went away), the owner fences it (treats its secondary as released, drops its
pins), finishes the operation and reports the fault; exit then completes and no frame was
freed while a live partition mapped it."""

from __future__ import annotations

import asyncio

from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

BASE = 0x10000000


async def _until(cond, what: str, limit: int = 5000) -> None:
    """Yield to the loop until ``cond()`` holds (bounded: a real-time run, so a stall is a
    failure to report, not something to wait for forever)."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"gave up waiting for {what}")


def test_owner_fences_a_partition_killed_mid_invalidation_and_finishes(live):
    async def body(p0, p1):
        a = p0.partition
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, 32 * PAGE_SIZE)
        await vmops.populate(a, mm, BASE, 32 * PAGE_SIZE)
        # a GRU whose flush of 32 pages takes 32 x 50 ms: the callout stays in flight on p1
        gru = await p1.gru("p0", mm.id, flush_per_page_us=50_000.0)
        src, att_cred = XpmemCred(tgid=10, uid=1, gid=1), XpmemCred(tgid=20, uid=1, gid=1)
        xp = await p1.xpmem("p0", mm.id, cred=src)
        att = await xp.attach(await xp.get(await xp.make(BASE, 32 * PAGE_SIZE, 0o600), XPMEM_RDWR, att_cred),
                              0, 32 * PAGE_SIZE, att_cred)
        for k in range(8):
            await gru.access(BASE + k * PAGE_SIZE)
            await xp.access(att, att.vaddr + k * PAGE_SIZE)
        assert int(a.frames.pincount.sum()) == 8  # XPMEM's pins
        munmap = asyncio.ensure_future(vmops.munmap(a, mm, BASE, 32 * PAGE_SIZE))
        await _until(lambda: gru.stats.flushes >= 1, "p1 to start flushing")
        await p1.server.stop(0)  # p1 dies with the callout in flight
        await munmap  # fenced and finished
        faults = p0.owner_service.faults
        assert [f.host for f in faults] == ["p1"]
        assert faults[0].during.startswith("invalidate_range_start of p1:gru@p1")
        assert faults[0].unpinned == 8
        assert int(a.frames.pincount.sum()) == 0
        assert mm.find_vma(BASE) is None
        assert a.check_invariants() == []
        t = await vmops.exit_mmap(a, mm)  # no callout to the fenced partition, no hang
        assert t.total_us >= 0
        assert a.check_invariants(final=True) == []

    live(body, "p0", "p1", deadline_us=2_000_000.0)
