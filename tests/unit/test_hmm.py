"""The HMM device mirror (nodes/secondary/hmm.py, lib/test_hmm.c's dmirror) and the owner's
hmm_range_fault (nodes/hmm.py): each test names the kernel function whose behaviour it checks.
The device lives on p1 and mirrors an mm of p0 across the interconnect, unless a test says
otherwise (a device on the owner's own partition, for the non-blockable ranges the wire
cannot carry)."""

from __future__ import annotations

import asyncio
import errno
from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import migrate_device, vmops
from nodes.errors import InternalError, InvalidArgument
from nodes.mm import PAGE_SIZE, PTE_DEVICE_PRIVATE, PTE_PRESENT
from nodes.notifier import MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent, MmuNotifierRange
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.secondary import hmm as hmm_mod
from nodes.secondary.hmm import DeviceMemory, HmmMirror
from workloads import races
from workloads.harness import StudySpec, floor_calls, run_scenario
from workloads.scenario import ScenarioError, load_scenario

P = PAGE_SIZE
BASE = 0x10000000
NONBLOCK = 0  # mmu_notifier_range.flags without MMU_NOTIFIER_RANGE_BLOCKABLE (the OOM reaper's)
# every task of the race workload, and devmigrate: the first device migrates the pages to its memory
RACE_TASKS = ("unregister", "exit", "migrate", "ksm", "faults", "register", "mprotect", "devmigrate")


def config(**kw: Any) -> SimConfig:
    kw.setdefault("semantics", "v5.10")
    return SimConfig(partitions=2, hop_latency=1.0, **kw)


async def owner_mm(c: SimCluster, npages: int = 8) -> tuple[Partition, Any]:
    a = c.partition("p0")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, npages * P)
    await vmops.populate(a, mm, BASE, npages * P)
    return a, mm


def primary_pfn(mm: Any, address: int) -> int:
    """The frame the owner's pte of ``address`` maps."""
    vma = mm.find_vma(address)
    return int(vma.pfn[vma.index(address)])


class GatedPort:
    """An owner port whose answers to ``method`` (hmm_range_fault by default) reach the device
    only once ``gate`` is set: ``looked_up`` is set when an answer is back, so a test can act on
    the owner between the request and what the device does next (for hmm_range_fault: the
    window read_retry closes)."""

    def __init__(self, port: Any, method: str = "hmm_range_fault"):
        self._port = port
        self._method = method
        self.looked_up = asyncio.Event()
        self.gate = asyncio.Event()

    def __getattr__(self, name: str) -> Any:
        real = getattr(self._port, name)
        if name != self._method:
            return real

        async def gated(*args: Any, **kw: Any) -> Any:
            out = await real(*args, **kw)
            self.looked_up.set()
            await self.gate.wait()
            return out

        return gated


# -- the fault loop: dmirror_range_fault() -------------------------------------------------------


@pytest.mark.parametrize("semantics", ["v5.10", "v6.6"])
def test_a_device_fault_maps_the_pages_and_reads_them_across_the_interconnect(semantics):
    """dmirror_fault(): read_begin and hmm_range_fault are requests to the owner (which faults
    in what is not present: HMM_PFN_REQ_FAULT), the device ptes are programmed under the mutex,
    and a read through one returns the page's stamp (checked by the owner's oracle)."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c, 4)
        await vmops.munmap(a, mm, BASE + 3 * P, P)
        await vmops.mmap(a, mm, BASE + 3 * P, P)  # not present: the fault populates it
        dev = await c.hmm("p1", "p0", mm, "gpu")
        stamps = [await dev.access(BASE + k * P) for k in range(4)]
        again = await dev.access(BASE + P)
        primary = [primary_pfn(mm, BASE + k * P) for k in range(4)]
        device = [dev.pte(BASE + k * P).pfn for k in range(4)]
        checked = a.oracle.checked["read"]
        await dev.unregister()
        return (stamps[1] == again, [s[1] for s in stamps], primary == device, dev.stats.faults,
                dev.stats.pte_hits, checked, int(a.oracle.smap.sum()), c.violations())

    same, vpns, mapped, faults, hits, reads, smap, violations = run_sim(config(semantics=semantics), wl).result
    assert same and vpns == [(BASE >> 12) + k for k in range(4)] and mapped
    assert (faults, hits, reads) == (4, 5, 5)
    assert smap == 0 and violations == []


def test_a_fault_that_an_invalidation_overtakes_is_retried_under_the_mutex():
    """dmirror_range_fault(): an invalidation that begins after read_begin and reaches the
    device before it takes the mutex has set the notifier's sequence: mmu_interval_read_retry()
    says retry, and the next read_begin waits on the owner until the range ends. The device
    installs only the page as it is after the invalidation."""
    async def wl(c: SimCluster) -> dict[str, Any]:
        a, mm = await owner_mm(c)
        port = GatedPort(c.owner_port("p1", "p0"))
        dev = HmmMirror(c.runtime, port, mm.id, "gpu")
        await dev.register()
        fault = c.runtime.spawn(dev.access(BASE), name="device fault")
        await port.looked_up.wait()
        await a.core.invalidate_range_start(mm, BASE, BASE + P, event=MmuNotifierEvent.CLEAR)
        port.gate.set()
        await c.runtime.sleep(50)
        out: dict[str, Any] = {"during": (dev.stats.read_retries, dev.pte(BASE))}
        await a.core.invalidate_range_end(mm, BASE, BASE + P)
        stamp = await fault
        now = primary_pfn(mm, BASE)
        out["after"] = (dev.stats.read_retries, dev.pte(BASE).pfn == now, stamp == a.frames.stamp(now))
        out["violations"] = c.violations()
        await dev.unregister()
        return out

    r = run_sim(config(), wl).result
    assert r["during"] == (1, None)
    assert r["after"] == (1, True, True)
    assert r["violations"] == []


def test_a_device_that_skips_read_retry_installs_inside_the_window_and_the_oracle_says_so(monkeypatch):
    """The same race with mmu_interval_read_retry() planted to say no: the device installs a
    pte while the invalidation's window is open (invariant 2). The check above can fail."""
    monkeypatch.setattr(hmm_mod, "mmu_interval_read_retry", lambda mni, seq: False)

    async def wl(c: SimCluster) -> list[str]:
        a, mm = await owner_mm(c)
        port = GatedPort(c.owner_port("p1", "p0"))
        dev = HmmMirror(c.runtime, port, mm.id, "gpu")
        await dev.register()
        fault = c.runtime.spawn(dev.access(BASE), name="device fault")
        await port.looked_up.wait()
        await a.core.invalidate_range_start(mm, BASE, BASE + P, event=MmuNotifierEvent.CLEAR)
        port.gate.set()
        await fault
        await a.core.invalidate_range_end(mm, BASE, BASE + P)
        await dev.unregister()
        return c.violations()

    violations = run_sim(config(), wl).result
    assert len(violations) == 1 and "inv 2" in violations[0] and "gpu" in violations[0]


# -- invalidation: dmirror_interval_invalidate() --------------------------------------------------


@pytest.mark.parametrize("tlb_us", [0.0, 40.0])
def test_an_invalidation_zaps_the_device_ptes_and_waits_for_the_device_tlb(tlb_us):
    """munmap's range reaches the device before the primary ptes go: the ptes of the range are
    dropped under the mutex, the sequence set, and the op returns only after the device TLB
    invalidate completed (``tlb_invalidate_us``): the owner's range_start takes that much longer,
    and the device's own timing of the callback shows it."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu", tlb_invalidate_us=tlb_us)
        for k in range(4):
            await dev.access(BASE + k * P)
        t0 = c.runtime.now()
        await a.core.invalidate_range_start(mm, BASE, BASE + 2 * P)
        start_us = c.runtime.now() - t0
        kept = sorted(v << 12 for v in dev.pt)
        await a.core.invalidate_range_end(mm, BASE, BASE + 2 * P)
        await vmops.munmap(a, mm, BASE + 6 * P, 2 * P)  # no device pte there: no TLB invalidate
        out = (start_us, kept, dev.stats.zapped, dev.stats.tlb_invalidates, [us for _, us in dev.invalidate_times],
               int(a.oracle.smap.sum()), dev.stats.invalidates)
        await dev.unregister()
        return out + (c.violations(),)

    start_us, kept, zapped, tlbs, cb_us, smap, invalidates, violations = run_sim(config(), wl).result
    assert kept == [BASE + 2 * P, BASE + 3 * P] and zapped == 2 and smap == 2
    assert tlbs == 1 and invalidates == 2 and violations == []
    assert cb_us == [tlb_us, 0.0]  # the callback: the TLB wait, then an invalidation with nothing to zap
    # one round trip to p1 and back (1 us each way) plus the device's wait
    assert start_us == 2.0 + tlb_us


def test_a_non_blockable_range_gets_false_when_the_mutex_is_held_or_the_tlb_would_be_waited_for(settle):
    """A device on the owner's partition (the wire cannot carry a non-blockable range: a
    remote stand-in answers false at once). mutex_trylock() failing: false; a range with
    device ptes whose TLB invalidate must be waited for: false (amdgpu_hmm_invalidate_gfx());
    a range with nothing mapped: the sequence set, true. A false fails the start with EAGAIN."""
    async def wl(c: SimCluster) -> dict[str, Any]:
        a, mm = await owner_mm(c)
        dev = HmmMirror(c.runtime, LocalOwner(a), mm.id, "gpu")
        await dev.register()
        await dev.access(BASE)
        out: dict[str, Any] = {}
        await dev.mutex.lock()
        assert await a.core.invalidate_range_start(mm, BASE + 4 * P, BASE + 5 * P, flags=NONBLOCK) == -errno.EAGAIN
        dev.mutex.unlock()
        out["held"] = (dev.stats.nonblock_refused, dev.stats.invalidates)
        assert await a.core.invalidate_range_start(mm, BASE, BASE + P, flags=NONBLOCK) == -errno.EAGAIN
        out["mapped"] = (dev.stats.nonblock_refused, dev.pte(BASE) is not None)
        seq = dev.mni.invalidate_seq
        assert await a.core.invalidate_range_start(mm, BASE + 4 * P, BASE + 5 * P, flags=NONBLOCK) == 0
        out["nothing mapped"] = (dev.stats.invalidates, dev.mni.invalidate_seq != seq)
        await a.core.invalidate_range_end(mm, BASE + 4 * P, BASE + 5 * P)
        await dev.unregister()
        out["violations"] = c.violations() + [str(v) for v in a.check_invariants(final=True)]
        return out

    r = run_sim(config(), wl).result
    assert r["held"] == (1, 0)
    assert r["mapped"] == (2, True)
    assert r["nothing mapped"] == (1, True)
    assert r["violations"] == []


def test_a_remote_device_cannot_take_a_non_blockable_range():
    """Across the interconnect the owner's stand-in answers false without a message (a
    callout sleeps): the OOM reaper's start fails with EAGAIN and the device keeps its ptes."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        await dev.access(BASE)
        assert await a.core.invalidate_range_start(mm, BASE, BASE + P, flags=NONBLOCK) == -errno.EAGAIN
        out = (dev.stats.invalidates, dev.pte(BASE) is not None)
        await dev.unregister()
        return out

    assert run_sim(config(), wl).result == (0, True)


def test_a_migrate_range_of_the_devices_own_pgmap_owner_is_skipped():
    """dmirror_interval_invalidate(): MMU_NOTIFY_MIGRATE with migrate_pgmap_owner == the device
    is the device's own migration: true at once, nothing zapped, the sequence untouched. Any
    other owner, or another event, zaps. The range goes to the owner's tree as the core hands it
    one (mn_itree_invalidate() with the range's owner), and over the wire to the device."""
    async def wl(c: SimCluster) -> list[tuple[Any, ...]]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        await dev.access(BASE)
        tree = mm.notifier_mm.itree
        out = []
        for event, owner in ((MmuNotifierEvent.MIGRATE, dev.pgmap_owner), (MmuNotifierEvent.MIGRATE, "hmm:other"),
                             (MmuNotifierEvent.CLEAR, dev.pgmap_owner)):
            await dev.access(BASE)
            before = dev.mni.invalidate_seq
            await tree.invalidate(MmuNotifierRange(mm, BASE, BASE + P, event, MMU_NOTIFIER_RANGE_BLOCKABLE, owner))
            out.append((event.name, dev.mni.invalidate_seq != before, dev.pte(BASE) is None,
                        dev.stats.own_migrate_skipped))
            tree.inv_end(BASE, BASE + P)
        await dev.unregister()
        return out

    assert run_sim(config(), wl).result == [
        ("MIGRATE", False, False, 1),
        ("MIGRATE", True, True, 1),
        ("CLEAR", True, True, 1),
    ]


# -- migration to device memory and back: migrate_vma_*, migrate_to_ram ----------------------------


def pte_flags(mm: Any, address: int) -> int:
    vma = mm.find_vma(address)
    return int(vma.flags[vma.index(address)])


def device_pages_agree(a: Partition, *devs: HmmMirror) -> bool:
    """Every device page allocated is referred to by exactly one device-private entry of a
    live mm of the owner (invariant 7 for device memory)."""
    entries = migrate_device.count_device_private(a)
    return all(entries.get(d.pgmap_owner, 0) == d.devmem.allocated for d in devs)


def test_pages_migrate_to_device_memory_and_back_with_their_data():
    """dmirror_migrate(): migrate_vma_setup on the owner (migration entries), the device copies
    each frame into a device page, migrate_vma_pages/finalize install device-private entries
    and free the owner's frames; the device then reads its own memory. A CPU access on the
    owner faults one back (do_swap_page -> migrate_to_ram, a request to the device, which
    erases its pte first): a fresh frame with the same data, which the device, faulting again,
    maps as system memory. munmap and exit give the device pages back (page_free). The
    device's own MIGRATE ranges name it as their owner and are skipped: it maps its pages at once."""

    async def wl(c: SimCluster) -> dict[str, Any]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        data = [a.frames.stamp(primary_pfn(mm, BASE + k * P))[:2] for k in range(8)]
        await dev.access(BASE)  # a system-memory pte the migration replaces
        free0 = a.frames.nfree
        out: dict[str, Any] = {"moved": await dev.migrate_to_device(BASE, 4)}
        out["owner"] = (a.frames.nfree - free0, [bool(pte_flags(mm, BASE + k * P) & PTE_DEVICE_PRIVATE) for k in range(5)],
                        int(a.oracle.smap.sum()), device_pages_agree(a, dev))
        out["mapped at once"] = dev.pte(BASE) is not None
        out["device reads"] = [(await dev.access(BASE + k * P))[:2] == data[k] for k in range(4)]
        pfn = await vmops.touch(a, mm, BASE + P)  # the owner's CPU
        out["back"] = (a.frames.stamp(pfn)[:2] == data[1], bool(pte_flags(mm, BASE + P) & PTE_PRESENT),
                       dev.pte(BASE + P), dev.stats.migrated_to_ram, dev.devmem.allocated, device_pages_agree(a, dev))
        out["refault"] = (await dev.access(BASE + P) == a.frames.stamp(pfn), dev.pte(BASE + P).device)
        await vmops.munmap(a, mm, BASE + 2 * P, P)
        out["munmap"] = (dev.devmem.allocated, device_pages_agree(a, dev))
        out["sweep"] = [str(v) for v in a.check_invariants()]
        await vmops.exit_mmap(a, mm)
        out["exit"] = (dev.devmem.allocated, int(a.oracle.smap.sum()))
        await dev.unregister()
        out["violations"] = c.violations() + [str(v) for v in a.check_invariants(final=True)]
        out["checked"] = c.partition("p1").oracle.checked["device read"]
        return out

    r = run_sim(config(), wl).result
    assert r["moved"] == 4 and r["mapped at once"] is True
    assert r["owner"] == (4, [True, True, True, True, False], 0, True)
    assert r["device reads"] == [True] * 4
    assert r["back"] == (True, True, None, 1, 3, True)
    assert r["refault"] == (True, -1)
    assert r["munmap"] == (2, True)
    assert r["exit"] == (0, 0)
    assert r["sweep"] == [] and r["violations"] == [] and r["checked"] == 4


def test_another_device_faulting_a_device_private_page_brings_it_back_to_system_memory():
    """hmm_range_fault() of a device that is not the page's dev_private_owner faults it (the
    page goes back to system memory, the first device's pte erased); the owner's device gets its
    own device page reported and maps it without a migration."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        gpu = await c.hmm("p1", "p0", mm, "gpu")
        other = await c.hmm("p1", "p0", mm, "other")
        await gpu.migrate_to_device(BASE, 2)
        await gpu.unregister()  # the mirror goes; its device memory stays the pages' home
        gpu2 = HmmMirror(c.runtime, c.owner_port("p1", "p0"), mm.id, "gpu", devmem=gpu.devmem)
        await gpu2.register()
        mine = await gpu2.access(BASE)
        own = (gpu2.pte(BASE).device >= 0, gpu.stats.migrated_to_ram)
        stamp = await other.access(BASE + P)
        theirs = (other.pte(BASE + P).device, bool(pte_flags(mm, BASE + P) & PTE_PRESENT), gpu.stats.migrated_to_ram,
                  stamp[:2] == (mm.id, (BASE + P) >> 12), gpu.devmem.allocated, device_pages_agree(a, gpu))
        await other.unregister()
        await gpu2.unregister()
        await vmops.exit_mmap(a, mm)
        return own, mine[:2] == (mm.id, BASE >> 12), theirs, gpu.devmem.allocated, c.violations()

    own, mine, theirs, left, violations = run_sim(config(), wl).result
    assert own == (True, 0) and mine
    assert theirs == (-1, True, 1, True, 1, True)
    assert left == 0 and violations == []


def test_a_page_unmapped_during_its_migration_is_not_installed_and_its_device_page_is_freed():
    """munmap between migrate_vma_setup and finalize zaps the migration entries (the migration
    still holds the frames); finalize finds them gone (remove_migration_pte()), installs
    nothing, the frames are freed by the migration's put, and the device frees its pages."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        port = GatedPort(c.owner_port("p1", "p0"), "migrate_vma_setup")
        dev = HmmMirror(c.runtime, port, mm.id, "gpu", oracle=c.partition("p1").oracle)
        await dev.register()
        free0 = a.frames.nfree
        moving = c.runtime.spawn(dev.migrate_to_device(BASE, 4), name="migrate")
        await port.looked_up.wait()
        await vmops.munmap(a, mm, BASE + 2 * P, 2 * P)
        held = a.frames.nfree - free0  # the two unmapped pages' frames are the migration's still
        port.gate.set()
        moved = await moving
        out = (moved, held, a.frames.nfree - free0, dev.devmem.allocated, device_pages_agree(a, dev),
               [bool(pte_flags(mm, BASE + k * P) & PTE_DEVICE_PRIVATE) for k in range(2)])
        await dev.unregister()
        await vmops.exit_mmap(a, mm)
        return out + (dev.devmem.allocated, c.violations(), a.check_invariants(final=True))

    moved, held, freed, allocated, agree, device, left, violations, sweep = run_sim(config(), wl).result
    assert (moved, held, freed, allocated, agree, device) == (2, 0, 4, 2, True, [True, True])
    assert left == 0 and violations == [] and sweep == []


def test_a_full_device_memory_leaves_the_other_pages_in_system_memory():
    """dmirror_devmem_alloc_page() failing: no dst for that page, and finalize restores its
    migration entry to the old frame (remove_migration_ptes() of a page that did not move)."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu", devmem=DeviceMemory("gpu", 2, c.partition("p1").oracle))
        pfns = [primary_pfn(mm, BASE + k * P) for k in range(4)]
        moved = await dev.migrate_to_device(BASE, 4)
        kept = [primary_pfn(mm, BASE + k * P) == pfns[k] and bool(pte_flags(mm, BASE + k * P) & PTE_PRESENT)
                for k in range(2, 4)]
        reads = [await vmops.touch(a, mm, BASE + k * P) for k in (2, 3)]
        sweep = [str(v) for v in a.check_invariants()]
        await dev.unregister()
        await vmops.exit_mmap(a, mm)
        return moved, kept, reads == pfns[2:], sweep, dev.devmem.allocated, c.violations()

    assert run_sim(config(), wl).result == (2, [True, True], True, [], 0, [])


def test_a_device_that_forgets_to_erase_its_pte_in_migrate_to_ram_is_caught(monkeypatch):
    """Planted: migrate_to_ram hands the contents back without erasing the device pte (no
    xa_erase): with its own MIGRATE range skipped, page_free then frees a device page the
    device still maps (invariant 1, on the device's partition), and a read through the stale
    pte reads a free page (invariant 6)."""
    async def no_erase(self: HmmMirror, mm_id: int, address: int, dpfn: int) -> tuple[int, int]:
        return self.devmem.contents(dpfn)

    monkeypatch.setattr(HmmMirror, "migrate_to_ram", no_erase)

    async def wl(c: SimCluster) -> list[str]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        await dev.migrate_to_device(BASE, 1)
        await vmops.touch(a, mm, BASE)
        await dev.access(BASE)
        return c.violations()

    violations = run_sim(config(), wl).result
    assert [v.split("]")[0] for v in violations] == ["[inv 1: frame freed while a secondary maps or pins it",
                                                     "[inv 6: read through a secondary translation returned the wrong page"]


def test_a_fault_reporting_an_own_device_page_that_migrates_back_meanwhile_is_retried(monkeypatch):
    """hmm_range_fault reports a page of this device's memory; before the device takes its
    mutex the owner's CPU faults it back (migrate_to_ram: its MIGRATE range is the device's
    own, skipped, so the sequence does not move) and page_free frees it. The device's check
    that the page stays its own makes the fault retry and map the system page; without the
    check it would map a freed device page (planted: an InternalError)."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        port = GatedPort(c.owner_port("p1", "p0"))
        dev = HmmMirror(c.runtime, port, mm.id, "gpu", oracle=c.partition("p1").oracle)
        await dev.register()
        port.gate.set()
        await dev.migrate_to_device(BASE, 1)
        async with dev.mutex:
            dev._zap(list(dev.pt))  # forget the mapping: the next access faults
        port.gate.clear()
        port.looked_up.clear()
        fault = c.runtime.spawn(dev.access(BASE), name="device fault")
        await port.looked_up.wait()
        pfn = await vmops.touch(a, mm, BASE)
        port.gate.set()
        await fault
        out = (dev.stats.read_retries, dev.pte(BASE).device, dev.pte(BASE).pfn == pfn, dev.devmem.allocated)
        await dev.unregister()
        return out + (c.violations(),)

    assert run_sim(config(), wl).result == (1, -1, True, 0, [])
    monkeypatch.setattr(HmmMirror, "_device_pages_stay", lambda self, pfns: True)
    with pytest.raises(InternalError, match="mapping device page 0, which is not allocated"):
        run_sim(config(), wl)


def test_a_device_that_never_frees_its_pages_leaks_device_memory(monkeypatch):
    """Planted: page_free does nothing: after exit no owner pte refers to the device pages the
    device still counts allocated (the accounting of device memory, invariant 7's)."""
    async def no_free(self: HmmMirror, dpfns: list[int]) -> None:
        return None

    async def wl(c: SimCluster) -> tuple[int, bool]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        await dev.migrate_to_device(BASE, 3)
        await vmops.exit_mmap(a, mm)
        return dev.devmem.allocated, device_pages_agree(a, dev)

    assert run_sim(config(), wl).result == (0, True)
    monkeypatch.setattr(HmmMirror, "page_free", no_free)
    assert run_sim(config(), wl).result == (3, False)


# -- teardown and the modes ----------------------------------------------------------------------


def test_exit_invalidates_the_device_with_release_and_unregister_removes_the_notifier():
    """exit_mmap: mn_itree_release() sends the whole address space, event RELEASE, and the device
    drops every pte before the pages are freed; a later device access finds no mm. The
    teardown (dmirror_fops_release()) removes the notifier; after it nothing reaches the device."""
    async def wl(c: SimCluster) -> tuple[Any, ...]:
        a, mm = await owner_mm(c)
        dev = await c.hmm("p1", "p0", mm, "gpu")
        for k in range(3):
            await dev.access(BASE + k * P)
        await vmops.exit_mmap(a, mm)
        gone = (len(dev.pt), dev.stats.zapped, int(a.oracle.smap.sum()))
        with pytest.raises(Exception) as refused:
            await dev.access(BASE)
        t = await dev.unregister()
        with pytest.raises(InvalidArgument, match="interval notifier"):
            await dev.put()
        return gone, type(refused.value).__name__, t.srcu_wait_us, a.oracle.checked["free"] > 0, c.violations()

    gone, refused, srcu, freed, violations = run_sim(config(), wl).result
    assert gone == (0, 3, 0) and refused == "Released" and srcu == 0.0 and freed and violations == []


def test_v3_10_refuses_an_hmm_device_naming_both_values():
    """An HMM device needs interval notifiers (Linux 5.5): a scenario with secondary.kind hmm
    under semantics v3.10 is refused, naming both; teardown put too (no put for them); and the
    insert itself is refused by a v3.10 owner."""
    s = load_scenario("quickstart")
    with pytest.raises(ScenarioError, match=r"secondary.kind: expected semantics v5.10 or v6.6 with secondary.kind hmm"
                                            r".*got semantics 'v3.10'"):
        s.with_overrides(["secondary.kind=hmm"])
    with pytest.raises(ScenarioError, match="teardown: expected unregister with secondary.kind hmm"):
        s.with_overrides(["secondary.kind=hmm", "semantics=v6.6", "teardown=put"])

    async def wl(c: SimCluster) -> None:
        a, mm = await owner_mm(c)
        await c.hmm("p1", "p0", mm, "gpu")

    with pytest.raises(InvalidArgument, match="'v3.10' notifier core has no interval notifiers"):
        run_sim(config(semantics="v3.10"), wl)


# -- the harness and the race finder -------------------------------------------------------------


def _quickstart(*sets: str) -> dict[str, Any]:
    s = load_scenario("quickstart").with_overrides(["secondary.kind=hmm", "semantics=v5.10",
                                                    "measure.exits=10", "measure.unregisters=10", *sets])
    result, _ = run_scenario(s)
    return result


def test_the_harness_runs_a_study_with_hmm_devices():
    """attach (the device's insert and faults), touch, exits and unregisters: the quickstart's
    study with HMM devices on p1, its mix without migration, 0 violations, every frame
    accounted for at the end."""
    r = _quickstart("activity.mix={munmap: 2, mprotect: 1}")
    assert r["invariants"]["violations"] == 0, r["invariants"]["details"][:3]
    assert r["metrics"]["exit_hang"]["n"] == 10 and r["metrics"]["unregister_hang"]["n"] == 10
    assert r["metrics"]["unregister_srcu_wait"]["max"] == 0.0  # a remove waits for no grace period
    # the devices' own timings: faults, and invalidations that waited for the device TLB
    assert r["metrics"]["device_fault"]["n"] > 0 and r["metrics"]["device_invalidate"]["n"] > 0
    assert r["metrics"]["device_invalidate"]["max"] >= hmm_mod.DEFAULT_TLB_INVALIDATE_US


def test_the_quickstart_with_hmm_under_v5_10_is_clean():
    """``mmusim run quickstart --set secondary.kind=hmm --set semantics=v5.10``, the mix with
    migration: clean, and timed as a GRU run is."""
    r = _quickstart()
    assert r["invariants"]["violations"] == 0, r["invariants"]["details"][:3]
    # the core times the spans and callouts of an mm with interval notifiers only, as any
    # (mm_has_notifiers() is true once the mm has subscriptions): the devices' invalidates
    assert r["metrics"]["invalidate_range"]["n"] > 0 and r["metrics"]["callout_rtt"]["n"] > 0
    assert r["metrics"]["callout_rtt"]["max"] >= hmm_mod.DEFAULT_TLB_INVALIDATE_US


def test_the_race_finder_drives_hmm_devices_clean_and_finds_a_planted_missing_retry(monkeypatch):
    """``mmusim check --secondary hmm``: the race workload with HMM mirrors, one of them
    migrating the pages to its memory meanwhile, is clean over a few seeds; with read_retry
    planted to say no, it finds the stale install. The
    device's task is refused for GRUs."""
    race = races.RaceConfig(secondary="hmm", tasks=RACE_TASKS)
    assert races.search("v5.10", "random", 8, race) is None
    with pytest.raises(ValueError, match="secondary 'hmm' needs semantics v5.10 or v6.6 \\(an interval notifier\\), got 'v3.10'"):
        races.run_once("v3.10", "random", 0, race)
    with pytest.raises(ValueError, match="devmigrate with secondary hmm only"):
        races.run_once("v5.10", "random", 0, races.RaceConfig(tasks=("faults", "devmigrate")))
    monkeypatch.setattr(hmm_mod, "mmu_interval_read_retry", lambda mni, seq: False)
    found = races.search("v5.10", "random", 10, race)
    assert found is not None and found.kind == "violation" and "--secondary hmm" in found.replay_command()


def test_the_floor_of_an_hmm_teardown_is_its_remove_alone():
    """floor_calls(): an HMM mirror's unregister drops its pt on its own partition
    (unregister_release: no round trip) and removes its notifier on the owner (one)."""
    s = load_scenario("quickstart").with_overrides(["secondary.kind=hmm", "semantics=v6.6"])
    calls = floor_calls(StudySpec.from_scenario(s), "sequential")
    assert (calls["unregister_release"], calls["unregister_hang"]) == (0, 1)
