"""XPMEM across partitions on the sim backend: the source side (segments, permits, attachment
records) lives on the owner's partition, attachments and their ptes on the attachers'; a
release or remove on the source side reaches every attacher to detach (nodes/secondary/xpmem.py)."""

from __future__ import annotations

from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import NotFound, PermissionDenied
from nodes.mm import PAGE_SIZE
from nodes.secondary.xpmem import XPMEM_RDONLY, XPMEM_RDWR, XpmemCred

BASE = 0x10000000
SOURCE = XpmemCred(tgid=50, uid=1000, gid=1000)
ALICE = XpmemCred(tgid=60, uid=1000, gid=1000)
BOB = XpmemCred(tgid=70, uid=2000, gid=2000)


async def _source(c: SimCluster, npages: int = 16):
    a = c.partition("p0")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(a, mm, BASE, npages * PAGE_SIZE)
    return a, mm


def test_remove_on_the_owner_detaches_attachments_on_two_other_partitions():
    async def wl(c: SimCluster) -> dict[str, Any]:
        a, mm = await _source(c)
        segid = a.xpmem.make(mm.id, BASE, 16 * PAGE_SIZE, 0o644, SOURCE)  # the source process, on p0
        on_p1 = await c.xpmem("p1", "p0", mm, cred=SOURCE)
        on_p2 = await c.xpmem("p2", "p0", mm, cred=SOURCE)
        att1 = await on_p1.attach(await on_p1.get(segid, XPMEM_RDWR, ALICE), 0, 8 * PAGE_SIZE, ALICE)
        att2 = await on_p2.attach(await on_p2.get(segid, XPMEM_RDONLY, BOB), 4 * PAGE_SIZE, 8 * PAGE_SIZE, BOB)
        for k in range(4):
            await on_p1.access(att1, att1.vaddr + k * PAGE_SIZE)
            await on_p2.access(att2, att2.vaddr + k * PAGE_SIZE)
        out = {"pins_before": int(a.frames.pincount.sum()), "records": len(a.xpmem.attachments)}
        with pytest.raises(PermissionDenied, match="belongs to tgid 50, not to caller tgid 70"):
            await on_p2.remove(segid, BOB)  # only the source process may remove
        await on_p1.remove(segid, SOURCE)  # asked from p1; p0 reaches p1 and p2 to detach
        out["pins_after"] = int(a.frames.pincount.sum())
        out["destroyed"] = (att1.destroyed, att2.destroyed)
        out["left"] = (len(on_p1.attachments), len(on_p2.attachments), len(a.xpmem.attachments), len(a.xpmem.aps))
        with pytest.raises(NotFound, match=f"segid {segid:#x}"):
            await on_p2.get(segid, XPMEM_RDONLY, BOB)
        await on_p1.unregister()
        await on_p2.unregister()
        out["sweep"] = a.check_invariants(final=True)
        return out

    r = run_sim(SimConfig(partitions=3, hops=1, hop_latency=1.0), wl).result
    assert (r["pins_before"], r["records"]) == (8, 2)
    assert r["pins_after"] == 0 and r["destroyed"] == (True, True)
    assert r["left"] == (0, 0, 0, 0)
    assert r["sweep"] == []


def test_release_detaches_only_the_permits_attachments_and_checks_the_caller():
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await _source(c)
        xp = await c.xpmem("p1", "p0", mm, cred=SOURCE)
        segid = await xp.make(BASE, 16 * PAGE_SIZE, 0o666)  # make through the driver: an XpmemMake request
        ap_alice = await xp.get(segid, XPMEM_RDWR, ALICE)
        ap_bob = await xp.get(segid, XPMEM_RDWR, BOB)
        att_a = await xp.attach(ap_alice, 0, 4 * PAGE_SIZE, ALICE)
        att_b = await xp.attach(ap_bob, 0, 4 * PAGE_SIZE, BOB)
        for att in (att_a, att_b):
            await xp.access(att, att.vaddr)
        with pytest.raises(PermissionDenied, match="belongs to tgid 60, not to caller tgid 70"):
            await xp.release(ap_alice, BOB)
        with pytest.raises(PermissionDenied, match="belongs to tgid 70"):
            await xp.attach(ap_bob, 0, PAGE_SIZE, ALICE)
        await xp.release(ap_alice, ALICE)
        state = (att_a.destroyed, att_b.destroyed, int(a.frames.pincount.sum()), sorted(a.xpmem.aps) == [ap_bob])
        await xp.detach(att_b, BOB)
        state += (att_b.destroyed, int(a.frames.pincount.sum()), len(a.xpmem.attachments))
        await xp.unregister()
        return state + (a.check_invariants(final=True),)

    assert run_sim(SimConfig(partitions=2), wl).result == (True, False, 1, True, True, 0, 0, [])


def test_a_detach_request_to_a_dead_attacher_fences_it_and_the_remove_completes():
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await _source(c)
        segid = a.xpmem.make(mm.id, BASE, 16 * PAGE_SIZE, 0o644, SOURCE)
        xp = await c.xpmem("p1", "p0", mm, cred=SOURCE)
        att = await xp.attach(await xp.get(segid, XPMEM_RDONLY, ALICE), 0, 4 * PAGE_SIZE, ALICE)
        for k in range(3):
            await xp.access(att, att.vaddr + k * PAGE_SIZE)
        c.interconnect.crash("p1")
        await a.xpmem.remove(segid, SOURCE)  # the source process removes: p1 cannot be told
        faults = [(f.host, f.during, f.unpinned) for f in c.faults]
        await vmops.exit_mmap(a, mm)  # the fenced notifier gets no ->release callout
        return faults, int(a.frames.pincount.sum()), a.check_invariants(final=True)

    faults, pins, sweep = run_sim(SimConfig(partitions=2, deadline_us=500.0), wl).result
    assert faults == [("p1", "xpmem detach of p1:xpmem@p1:p0/mm1", 3)]
    assert pins == 0 and sweep == []
