"""The RDMA ODP secondary (nodes/secondary/odp.py: drivers/infiniband/core/umem_odp.c and
drivers/infiniband/hw/mlx5/odp.c of v5.10/v6.6): each test names the kernel function whose
behaviour it checks. The MR's owner is its own partition (``LocalOwner``, with a gate in
hmm_range_fault) or another partition across the interconnect."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import BadAddress, InvalidArgument, Released
from nodes.mm import PAGE_SIZE
from nodes.notifier import MmuNotifierEvent, MmuNotifierRange
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.secondary import odp as odp_module
from nodes.secondary.odp import DEFAULT_UMR_US, OdpMr
from workloads import races
from workloads.harness import run_scenario
from workloads.scenario import ScenarioError, load_scenario

P = PAGE_SIZE
BASE = 0x10000000
NONBLOCK = 0  # mmu_notifier_range.flags without MMU_NOTIFIER_RANGE_BLOCKABLE (the OOM reaper's)


class GatedOwner(LocalOwner):
    """``LocalOwner`` whose hmm_range_fault, once its walk is done, sets ``answered`` and then
    waits for ``gate`` (when set to an Event) before the answer returns: a test starts an
    invalidation while a fault's snapshot is on its way back."""

    def __init__(self, partition: Partition):
        super().__init__(partition)
        self.answered = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.walks = 0

    async def hmm_range_fault(self, mni, mm_id, address, npages, *, write, notifier_seq):  # type: ignore[no-untyped-def]
        refs = await super().hmm_range_fault(mni, mm_id, address, npages, write=write, notifier_seq=notifier_seq)
        self.walks += 1
        self.answered.set()
        if self.gate is not None:
            await self.gate.wait()
        return refs


async def setup(rt: Any, npages: int = 16, umr_us: float = DEFAULT_UMR_US,
                semantics: str = "v5.10") -> tuple[Partition, Any, GatedOwner, OdpMr]:
    p = Partition(rt, nframes=512, semantics=semantics)
    mm = p.create_mm()
    await vmops.mmap(p, mm, BASE, npages * P)
    await vmops.populate(p, mm, BASE, npages * P)
    owner = GatedOwner(p)
    mr = OdpMr(rt, owner, mm.id, "mr0", start=BASE, length=npages * P, umr_us=umr_us)
    await mr.register()
    return p, mm, owner, mr


def violations(p: Partition) -> list[str]:
    return [str(v) for v in p.oracle.violations] + [str(v) for v in p.check_invariants(final=False)]


# -- the fault path: ib_umem_odp_map_dma_and_lock ------------------------------------------------


@pytest.mark.parametrize("semantics", ["v5.10", "v6.6"])
def test_a_fault_that_an_invalidation_overtakes_is_retried_and_installs_the_new_page(vrun, semantics):
    """ib_umem_odp_map_dma_and_lock: mmu_interval_read_begin, hmm_range_fault, then under
    umem_mutex mmu_interval_read_retry: a munmap (mlx5_ib_invalidate_range: set_seq) between
    the snapshot and the lock sends the fault back to read_begin; the second walk sees the
    page mapped again (a new frame), and the MTT gets that one, never the freed frame."""
    async def body(rt):
        p, mm, owner, mr = await setup(rt, semantics=semantics)
        owner.gate = asyncio.Event()
        access = rt.spawn(mr.access(BASE + 2 * P), name="dma")
        await owner.answered.wait()
        old = p.frames.stamp(int(mm.find_vma(BASE).pfn[2]))  # (mm, vpn, generation): the allocator may reuse the pfn
        await vmops.munmap(p, mm, BASE + 2 * P, P)  # frees the frame the snapshot names
        await vmops.mmap(p, mm, BASE + 2 * P, P)
        await vmops.populate(p, mm, BASE + 2 * P, P)
        owner.gate.set()
        stamp = await access
        new = p.frames.stamp(int(mm.find_vma(BASE + 2 * P).pfn[0]))
        return (old != new, mr.translation(BASE + 2 * P).stamp == new, stamp == new, mr.stats.read_retries, owner.walks, violations(p))

    changed, installed_new, read_new, retries, walks, bad = vrun(body)
    assert changed and installed_new and read_new
    assert (retries, walks, bad) == (1, 2, [])


def test_without_read_retry_the_overtaken_fault_installs_a_freed_frame_and_the_oracle_sees_it(vrun, monkeypatch):
    """The same interleaving with mmu_interval_read_retry planted to say "no": the stale
    snapshot is written into the MTT (invariant 2 for the window, 1 for the freed frame)."""
    monkeypatch.setattr(odp_module, "mmu_interval_read_retry", lambda mni, seq: False)

    async def body(rt):
        p, mm, owner, mr = await setup(rt)
        owner.gate = asyncio.Event()
        access = rt.spawn(mr.access(BASE + 2 * P), name="dma")
        await owner.answered.wait()
        start = rt.spawn(p.core.invalidate_range_start(mm, BASE, BASE + 4 * P), name="start")
        await rt.sleep(1)
        owner.gate.set()
        await start
        await access
        return sorted({v.invariant for v in p.oracle.violations})

    assert vrun(body) == [2]


def test_a_fault_maps_and_a_second_access_hits_the_mtt(vrun):
    """pagefault_real_mr: the MTT is written with one UMR, awaited to its completion; the
    device's retried access then hits; no page is pinned (ODP does not pin)."""
    async def body(rt):
        p, mm, owner, mr = await setup(rt, umr_us=7.0)
        t0 = rt.now()
        await mr.access(BASE)
        t1 = rt.now()
        await mr.access(BASE)
        return (t1 - t0, rt.now() - t1, mr.stats.faults, mr.stats.mtt_hits, mr.stats.umrs,
                int(p.frames.pincount.sum()), int(p.oracle.smap.sum()), violations(p))

    fault_us, hit_us, faults, hits, umrs, pins, mapped, bad = vrun(body)
    assert fault_us == 7.0 and hit_us == 0.0  # the local owner answers at once: the UMR is the fault's time
    assert (faults, hits, umrs, pins, mapped, bad) == (1, 2, 1, 0, 1, [])


# -- invalidation: mlx5_ib_invalidate_range ------------------------------------------------------


def test_an_invalidation_waits_for_the_install_of_a_fault_in_flight(vrun, settle):
    """mlx5_ib_invalidate_range takes umem_mutex, which pagefault_real_mr holds across its UMR:
    an invalidation that comes while the fault's MTT write is in flight returns only after that
    write completed and its own zapping UMR did; the page it installed is zapped before the
    range's pages are freed."""
    umr = 50.0

    async def body(rt):
        p, mm, owner, mr = await setup(rt, umr_us=umr)
        access = rt.spawn(mr.access(BASE), name="dma")
        while not mr.umem.umem_mutex.locked:
            await settle(rt)
        t0 = rt.now()
        await p.core.invalidate_range_start(mm, BASE, BASE + P)
        took = rt.now() - t0
        zapped = mr.translation(BASE) is None
        await p.core.invalidate_range_end(mm, BASE, BASE + P)
        await access  # the device's retried access faults the page in again
        fault_done = mr.fault_times[0][0]  # the fault's unlock, once its UMR completed
        return t0, took, fault_done, zapped, violations(p)

    t0, took, fault_done, zapped, bad = vrun(body)
    assert fault_done > t0  # the invalidation came while the fault's MTT write was in flight
    assert t0 + took == fault_done + umr  # it waited for that write, then its own zap's UMR
    assert zapped and bad == []


def test_a_non_blockable_invalidation_returns_false_and_the_start_answers_eagain(vrun):
    """mlx5_ib_invalidate_range: ``if (!mmu_notifier_range_blockable(range)) return false``;
    mn_itree_invalidate turns that into -EAGAIN, which the start answers (the OOM reaper's
    caller calls no end). Nothing is zapped."""
    async def body(rt):
        p, mm, owner, mr = await setup(rt)
        await mr.access(BASE)
        direct = mr.invalidate(mr.mni, MmuNotifierRange(mm, BASE, BASE + P, MmuNotifierEvent.UNMAP, NONBLOCK),
                               mr.mni.invalidate_seq + 2)
        ret = await p.core.invalidate_range_start(mm, BASE, BASE + P, flags=NONBLOCK)
        return await direct, ret, mr.translation(BASE) is not None, mr.stats.refused_invalidations, violations(p)

    assert vrun(body) == (False, -errno.EAGAIN, True, 2, [])


def test_the_device_completion_latency_shows_in_the_invalidate_range_span(vrun):
    """mlx5_ib_invalidate_range issues one zapping UMR per block of mapped MTT entries
    (mlx5_ib_update_xlt with MLX5_IB_UPD_XLT_ZAP, awaited): the owner's invalidate_range_start
    lasts blocks x umr_us; a range with nothing mapped costs no UMR at all."""
    def span(umr_us: float) -> Any:
        async def body(rt):
            p, mm, owner, mr = await setup(rt, npages=32, umr_us=umr_us)
            for k in (0, 1, 2, 20, 21):  # two blocks: pages 0-2 and 20-21 (an 8-aligned hole between)
                await mr.access(BASE + k * P)
            out = []
            for start, end in ((BASE, BASE + 32 * P), (BASE + 4 * P, BASE + 8 * P)):
                t0 = rt.now()
                await p.core.invalidate_range_start(mm, start, end, event=MmuNotifierEvent.CLEAR)
                out.append(rt.now() - t0)
                await p.core.invalidate_range_end(mm, start, end)
            return out, mr.stats.invalidated_pages, violations(p)
        return body

    assert vrun(span(0.0)) == ([0.0, 0.0], 5, [])
    assert vrun(span(40.0)) == ([80.0, 0.0], 5, [])


# -- registration and dereg --------------------------------------------------------------------


def test_dereg_zaps_the_mtt_removes_the_notifier_and_no_fault_follows(vrun):
    """mlx5_ib_dereg_mr: the mkey dies, one zapping UMR, ib_umem_odp_release (unmap and
    mmu_interval_notifier_remove); no SRCU wait. There is no mmu_notifier_put for an interval
    notifier, and an access outside the MR is -EFAULT."""
    async def body(rt):
        p, mm, owner, mr = await setup(rt, umr_us=3.0)
        for k in range(4):
            await mr.access(BASE + k * P)
        with pytest.raises(BadAddress, match="outside"):
            await mr.access(BASE + 64 * P)
        t = await mr.unregister()
        with pytest.raises(Released):
            await mr.access(BASE)
        with pytest.raises(InvalidArgument, match="teardown 'put'"):
            await mr.put()
        return (t.total_us, t.release_us, t.srcu_wait_us, mm.notifier_mm.itree.tree, int(p.oracle.smap.sum()),
                mr.umem.npages, violations(p))

    assert vrun(body) == (3.0, 3.0, 0.0, [], 0, 0, [])


def test_v3_10_has_no_odp(vrun):
    """An ODP MR needs mmu_interval_notifier_insert (Linux 5.5): refused under v3.10, naming it."""
    async def body(rt):
        with pytest.raises(InvalidArgument, match="'v3.10' notifier core has no interval notifiers"):
            await setup(rt, semantics="v3.10")

    vrun(body)


def test_the_scenario_refuses_odp_under_v3_10_and_with_put():
    s = load_scenario("quickstart")
    with pytest.raises(ScenarioError, match=r"secondary.kind: expected semantics v5.10 or v6.6 with secondary.kind "
                                            r"odp .* got semantics 'v3.10'"):
        s.with_overrides(["secondary.kind=odp"])
    with pytest.raises(ScenarioError, match="teardown: expected unregister with secondary.kind odp"):
        s.with_overrides(["secondary.kind=odp", "semantics=v6.6", "teardown=put"])


# -- across the interconnect -------------------------------------------------------------------


def test_an_odp_mr_on_another_partition_faults_and_is_invalidated_across_the_interconnect():
    """The NIC on p1, the mm on p0: read_begin and hmm_range_fault are requests to p0, p0's
    munmap reaches the MR as an interval callout, which zaps it before the pages are freed."""
    async def wl(c: SimCluster) -> Any:
        a = c.partition("p0")
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, 8 * P)
        await vmops.populate(a, mm, BASE, 8 * P)
        mr = await c.odp("p1", "p0", mm, name="mr@p1", start=BASE, length=8 * P)
        for k in range(4):
            await mr.access(BASE + k * P)
        held = int(a.oracle.smap.sum())
        await vmops.munmap(a, mm, BASE, 2 * P)
        after = (sorted(mr.mtt), int(a.oracle.smap.sum()))
        refused = await a.core.invalidate_range_start(mm, BASE + 4 * P, BASE + 5 * P, flags=NONBLOCK)
        await mr.unregister()
        return held, (*after, refused), mr.stats.umrs, c.violations() + [str(v) for v in a.check_invariants(final=True)]

    held, after, umrs, bad = run_sim(SimConfig(partitions=2, hop_latency=1.0, semantics="v5.10"), wl).result
    assert held == 4 and after == ([2, 3], 2, -errno.EAGAIN)
    assert umrs == 4 + 1 + 1 and bad == []  # four faults, the munmap's zap, dereg's zap


# -- the harness and the race finder ---------------------------------------------------------------


def test_the_harness_runs_odp_secondaries_with_no_violation():
    """``mmusim run quickstart --set secondary.kind=odp --set semantics=v5.10`` (sim), smaller,
    and without migrate in the mix: on the interval branch alone v5.10's migration and reclaim
    still call ->invalidate_page, which interval notifiers never see (the modern branch removes
    it from the modern modes, 369ea8242c0f)."""
    s = load_scenario("quickstart").with_overrides([
        "secondary.kind=odp", "semantics=v5.10", "measure.exits=10", "measure.unregisters=10", "duration=20ms",
        "activity.mix={munmap: 2, mprotect: 1, ksm: 1, cow: 1}"])
    result, _ = run_scenario(s)
    assert result["invariants"]["violations"] == 0, result["invariants"]["details"]
    assert result["metrics"]["unregister_hang"]["n"] == 10 and result["metrics"]["exit_hang"]["n"] == 10
    assert result["metrics"]["device_invalidate"]["n"] > 0 and result["metrics"]["device_fault"]["n"] > 0
    assert sum(result["activity"][op]["done"] for op in ("munmap", "mprotect")) > 0


def test_the_race_finder_drives_odp_secondaries_and_a_small_budget_is_clean():
    """``mmusim check --secondary odp``: the race workload with ODP MRs on p1 instead of GRUs."""
    race = races.RaceConfig(pages=4, secondary="odp", tasks=tuple(t for t in races.TASKS if t != "migrate"))
    assert races.search("v5.10", "random", 4, race) is None
    assert races.search("v6.6", "pct", 3, race) is None
    with pytest.raises(ValueError, match=r"secondary 'odp' needs semantics v5.10 or v6.6 \(an interval notifier\), got 'v3.10'"):
        races.search("v3.10", "random", 1, race)
