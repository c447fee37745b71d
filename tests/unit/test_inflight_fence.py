"""Accesses in flight through a secondary translation, ordered against the invalidation that
drops it (nodes/secondary/base.py ``InflightAccesses``; GRU flush and release, XPMEM zap).

An invalidation returns only once the accesses already issued through the translations it
dropped are done, as a GRU TLB flush or a PCIe ATS invalidation completes. Without that fence a
read on the wire when the flush comes reaches the owner after the frame was freed (invariant 6,
on the correct v3.10 core). Each test plants the bug back with ``unfenced``: the secondary's
fence replaced by one that returns at once.
"""

from __future__ import annotations

import random
from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from cluster.topology import parse_latency
from nodes import vmops
from nodes.errors import ModelError
from nodes.mm import PAGE_SIZE
from nodes.runtime import wait_all
from nodes.secondary.base import InflightAccesses
from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

SEEDS = 200
P = PAGE_SIZE
BASE = 0x1000_0000
SOURCE = XpmemCred(tgid=1, uid=1000, gid=1000)
ATTACHER = XpmemCred(tgid=2, uid=1000, gid=1000)


class Unfenced(InflightAccesses):
    """The fence reverted: an invalidation no longer waits for the accesses in flight."""

    async def fence(self, first: int, last: int) -> bool:
        return False


def unfence(sec: Any, att: Any = None) -> None:
    if att is not None:
        att.inflight = Unfenced(att.invalidate_mutex.name)
    else:
        sec.inflight = Unfenced(sec.name)


async def secondary(c: SimCluster, kind: str, mm: Any, npages: int) -> tuple[Any, Any]:
    """A GRU, or an XPMEM driver with an attachment of the whole buffer, on p1 for ``mm``."""
    if kind == "gru":
        return await c.gru("p1", "p0", mm, name="gru"), None
    drv = await c.xpmem("p1", "p0", mm, name="xpmem", cred=SOURCE)
    segid = await drv.make(BASE, npages * P, 0o600)
    att = await drv.attach(await drv.get(segid, XPMEM_RDWR, ATTACHER), 0, npages * P, ATTACHER)
    return drv, att


def read(sec: Any, att: Any, k: int) -> Any:
    return sec.access(BASE + k * P) if att is None else sec.access(att, att.vaddr + k * P)


@pytest.mark.parametrize("kind", ["gru", "xpmem"])
@pytest.mark.parametrize("fenced", [True, False])
def test_read_in_flight_when_munmap_comes_reads_the_page_it_was_issued_for(kind, fenced):
    """A hit on a one-page mm, reads taking 100 us each way, munmap at t=10 us after the read
    was issued: the invalidation waits for the read (its reply at t=200 us), then the frame is
    freed; unfenced, munmap returns at once and the read reaches a freed frame at t=100 us."""
    async def workload(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, P)
        await vmops.populate(a, mm, BASE, P)
        sec, att = await secondary(c, kind, mm, 1)
        page_stamp = await read(sec, att, 0)  # the dropin (or pinning fault), then a read
        if not fenced:
            unfence(sec, att)
        c.latency.extra["read"] = parse_latency(100.0, "read")
        t0 = c.runtime.now()
        hit = c.runtime.spawn(read(sec, att, 0), name="hit")
        await c.runtime.sleep(10.0)
        await vmops.munmap(a, mm, BASE, P)
        munmap_done = c.runtime.now() - t0
        return {"stamp": await hit, "page": page_stamp, "munmap_done": munmap_done, "freed": a.frames.nfree}

    run = run_sim(SimConfig(partitions=2, nframes=64, hop_latency=0.0), workload)
    r = run.result
    if fenced:
        assert run.violations == []
        assert r["stamp"] == r["page"]
        assert r["munmap_done"] >= 200.0  # the flush (or zap) waited for the read's reply
    else:
        assert r["munmap_done"] < 100.0
        assert any("inv 6" in v and "frame is free" in v for v in run.violations), run.violations


def heavy_tail(seed: int) -> SimConfig:
    return SimConfig(
        partitions=2, nframes=64, scheduler="random", seed=seed, trace="off",
        hop_latency={"dist": "pareto", "scale": 1.0, "alpha": 1.2},
        callout_latency={"dist": "uniform", "low": 1.0, "high": 10.0},
    )


def run_reads_under_invalidation(kind: str, seed: int, *, fenced: bool = True) -> list[str]:
    """Two streams of reads through the secondary's (valid) translations of a 4-page mm, while
    the owner migrates two pages, unmaps the other two and exits; heavy-tailed hops."""
    async def workload(c: SimCluster) -> None:
        rng = random.Random(f"fence-{seed}")
        a = c.partition("p0")
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, 4 * P)
        await vmops.populate(a, mm, BASE, 4 * P)
        sec, att = await secondary(c, kind, mm, 4)
        for k in range(4):
            await read(sec, att, k)
        if not fenced:
            unfence(sec, att)

        async def reader() -> None:
            for _ in range(12):
                try:
                    await read(sec, att, rng.randrange(4))
                except ModelError:  # unmapped, or released: the race, not an error
                    pass

        async def owner() -> None:
            await c.runtime.sleep(rng.uniform(0.0, 20.0))
            await vmops.migrate_pages(a, mm, BASE, 2 * P)
            await vmops.munmap(a, mm, BASE + 2 * P, 2 * P)
            await vmops.exit_mmap(a, mm)

        await wait_all([reader(), reader(), owner()])

    return run_sim(heavy_tail(seed), workload).violations


@pytest.mark.parametrize("kind", ["gru", "xpmem"])
def test_reads_in_flight_over_heavy_tailed_hops_never_reach_a_freed_frame(kind):
    fenced = {s: v for s in range(SEEDS) if (v := run_reads_under_invalidation(kind, s))}
    assert fenced == {}, f"{kind}: {len(fenced)}/{SEEDS} seeds failed with the fence, e.g. {next(iter(fenced.items()))}"
    unfenced = next((s for s in range(SEEDS) if run_reads_under_invalidation(kind, s, fenced=False)), None)
    assert unfenced is not None, f"{kind}: {SEEDS} seeds clean without the fence: the test cannot fail"
