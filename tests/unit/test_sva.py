"""The IOMMU SVA secondary of nodes/secondary/sva.py: a device on p1 bound to an mm of p0.

Every test runs a two-partition sim cluster (``run_sim``) with 1 us per hop and no other
latency unless it says so, so an ATS invalidation's spin is exactly 1 (the request) + the
device's completion latency + 1 (the completion), in virtual microseconds.
"""

from __future__ import annotations

import asyncio
import itertools

import pytest

from cluster.sim import SimConfig, run_sim
from nodes import vmops
from nodes.errors import BadAddress, InvalidArgument, Released
from nodes.mm import PAGE_SIZE, PROT_READ, PTE_PRESENT
from nodes.notifier import MODERN_OPS, OPS, has_op
from nodes.secondary import sva
from nodes.secondary.sva import (
    ARM_SMMU_POLL_TIMEOUT_US,
    MAX_ITE,
    AtsInvalidationHang,
    IommuSvaBond,
    SvaBond510,
    SvaBond66,
)
from workloads import races
from workloads.harness import run_scenario
from workloads.scenario import ScenarioError, load_scenario

P = PAGE_SIZE
BASE = 0x1000_0000
TLB_OP = {"v5.10": "invalidate_range", "v6.6": "arch_invalidate_secondary_tlbs"}


def run(workload, semantics="v6.6", **config):
    config.setdefault("nframes", 256)
    return run_sim(SimConfig(partitions=2, semantics=semantics, **config), workload)


async def mapped(c, pages=4, populate=True):
    """p0's mm with ``pages`` pages at BASE (populated unless told) and its timings on."""
    a = c.partition("p0")
    a.core.timings.enabled = True
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, pages * P)
    if populate:
        await vmops.populate(a, mm, BASE, pages * P)
    return a, mm


def pte(mm, address):
    vma = mm.find_vma(address)
    i = vma.index(address)
    return int(vma.flags[i]), int(vma.pfn[i])


def bond_of(c, dev) -> IommuSvaBond:
    return c.sva_iommus["p0"].bonds[("p1", dev.notifier_id)]


def sequence(*values):
    """A completion latency that gives ``values`` in turn, then the last one for ever."""
    it = itertools.chain(values, itertools.repeat(values[-1]))
    return lambda: next(it)


@pytest.mark.parametrize("semantics, cls", [("v5.10", SvaBond510), ("v6.6", SvaBond66)])
def test_the_bond_has_the_ops_of_its_kernels_drivers(semantics, cls):
    async def workload(c):
        _, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev")
        bond = bond_of(c, dev)
        return type(bond), {op for op in OPS + MODERN_OPS if has_op(bond, op)}, dev.pasid

    kind, ops, pasid = run(workload, semantics).result
    assert kind is cls
    assert ops == {"release", TLB_OP[semantics]}  # intel_mmuops / arm_smmu_mmu_notifier_ops
    assert pasid == 1


def test_an_atc_miss_is_an_ats_translation_request_then_a_hit():
    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev")
        stamp = await dev.access(BASE + P)
        after_one = (dev.stats.ats_requests, dev.stats.page_requests)
        again = await dev.access(BASE + P)
        _, pfn = pte(mm, BASE + P)
        return stamp, again, after_one, dev.stats.ats_requests, dev.translation(BASE + P).pfn, pfn, \
            int(a.oracle.smap[pfn]), a.frames.stamp(pfn)

    stamp, again, after_one, requests, atc_pfn, pfn, smap, frame_stamp = run(workload).result
    assert after_one == (1, 0)  # the pte was present: no page request
    assert requests == 1  # the second access hit the ATC
    assert atc_pfn == pfn and smap == 1  # installed, and reported to the owner's oracle
    assert stamp == again == frame_stamp


def test_a_translation_not_present_is_a_pri_page_request_the_owner_faults_in():
    async def workload(c):
        a, mm = await mapped(c, populate=False)
        dev = await c.sva("p1", "p0", mm, name="dev")
        before = pte(mm, BASE)[0] & PTE_PRESENT
        await dev.access(BASE, write=True)
        flags, pfn = pte(mm, BASE)
        bond = bond_of(c, dev)
        return before, flags & PTE_PRESENT, pfn, dev.translation(BASE).pfn, dev.stats, bond.stats.page_requests

    before, present, pfn, atc_pfn, stats, served = run(workload).result
    assert not before and present  # handle_mm_fault on the owner made it present
    assert atc_pfn == pfn
    assert (stats.ats_requests, stats.ats_misses, stats.page_requests) == (2, 1, 1)  # ATS, PRI, ATS again
    assert served == 1


def test_a_page_request_the_owner_cannot_fault_in_fails_the_dma():
    async def workload(c):
        a, mm = await mapped(c)
        await vmops.mprotect(a, mm, BASE, P, PROT_READ)
        dev = await c.sva("p1", "p0", mm, name="dev")
        errors = []
        for address, write in ((BASE, True), (BASE + 64 * P, False)):  # read-only VMA; outside every VMA
            with pytest.raises(BadAddress, match="answered INVALID") as e:
                await dev.access(address, write=write)
            errors.append(str(e.value))
        return errors, dev.stats.page_request_failures, len(dev.atc)

    errors, failures, entries = run(workload).result
    assert failures == 2 and entries == 0
    assert hex(BASE) in errors[0] and hex(BASE + 64 * P) in errors[1]


@pytest.mark.parametrize("semantics", ["v5.10", "v6.6"])
def test_the_invalidation_waits_for_the_devices_completion(semantics):
    """munmap clears the pte; the op posts the ATS invalidation and the spin holds the frame
    (and an SRCU read section) until the device completes, 500 us later."""

    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev", completion_us=lambda: 500.0)
        await dev.access(BASE)
        _, pfn = pte(mm, BASE)
        t0 = c.runtime.now()
        await vmops.munmap(a, mm, BASE, P)
        right_after = (a.frames.is_free(pfn), int(a.frames.pincount[pfn]), dev.translation(BASE) is not None)
        await asyncio.sleep(0)  # the spin's first step, at the same instant
        t1 = c.runtime.now()
        await a.core.srcu_for(mm).synchronize()  # waits for the spin's read section
        waited = c.runtime.now() - t1
        spins = [(us, op) for _, us, _, op in a.core.timings.callouts if op == TLB_OP[semantics]]
        return (right_after, waited, spins, bond_of(c, dev).stats.spin_us, a.frames.is_free(pfn),
                dev.translation(BASE), t1 - t0)

    run_ = run(workload, semantics)
    right_after, waited, spins, spin_us, freed, entry, munmap_us = run_.result
    assert right_after == (False, 1, True)  # not freed: pinned by the spin; the device still maps it
    assert spins == [(502.0, TLB_OP[semantics])] and spin_us == [502.0]  # 1 + 500 + 1
    assert waited >= 502.0 - munmap_us
    assert freed and entry is None
    assert run_.violations == []


def test_intel_an_ite_resubmits_the_invalidation():
    """The device misses the 1000 us time-out once: ITE, the batch is resubmitted, the second
    completes after 100 us. The first, late, completion finds no one waiting."""

    async def workload(c):
        c.sva_iommus["p0"].timeout_us = 1000.0
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev", completion_us=sequence(5000.0, 100.0))
        await dev.access(BASE)
        _, pfn = pte(mm, BASE)
        await vmops.munmap(a, mm, BASE, P)
        await c.runtime.sleep(10_000)
        b = bond_of(c, dev).stats
        return b.ite, b.completions, b.spin_us, dev.stats.invalidations, a.frames.is_free(pfn)

    run_ = run(workload, trace="full")
    ite, completions, spin_us, received, freed = run_.result
    assert (ite, completions, received) == (1, 1, 2)
    assert spin_us == [1000.0 + 1 + 100 + 1]
    assert freed and run_.violations == []
    assert sum("Invalidation Time-out Error (ITE)" in e for e in run_.trace_entries) == 1


def test_intel_a_device_that_never_completes_spins_for_ever():
    async def workload(c):
        c.sva_iommus["p0"].timeout_us = 1000.0
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev", completion_us=lambda: 5000.0)
        await dev.access(BASE)
        await vmops.munmap(a, mm, BASE, P)
        await c.runtime.sleep(MAX_ITE * 1000.0 + 10)

    with pytest.raises(AtsInvalidationHang, match=f"timed out {MAX_ITE} times.*resubmits it forever"):
        run(workload)


def test_smmuv3_gives_up_at_the_cmd_sync_time_out_and_the_page_is_freed_under_the_device():
    """ARM_SMMU_POLL_TIMEOUT_US (1 s), then "CMD_SYNC timeout" and the op returns: the caller
    frees the page while the device, 0.5 s from completing, still maps it (invariant 1)."""

    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev")
        await dev.access(BASE)
        _, pfn = pte(mm, BASE)
        await vmops.munmap(a, mm, BASE, P)
        await c.runtime.sleep(2_000_000)
        b = bond_of(c, dev).stats
        return pfn, b.cmd_sync_timeouts, b.completions, b.spin_us, dev.translation(BASE)

    run_ = run(workload, sva_iommu="smmuv3", sva_completion=1_500_000.0)
    pfn, timeouts, completions, spin_us, entry = run_.result
    assert (timeouts, completions) == (1, 0)
    assert spin_us == [ARM_SMMU_POLL_TIMEOUT_US]
    assert entry is None  # the device completed later, on its own
    freed_mapped = [v for v in run_.violations if v.startswith("[inv 1") and f"frame {pfn} freed while mapped" in v]
    assert freed_mapped, run_.violations


def test_release_at_exit_empties_the_atc_and_tears_the_pasid_down():
    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev", completion_us=lambda: 300.0)
        for k in range(4):
            await dev.access(BASE + k * P)
        held = int(a.oracle.smap.sum())
        t = await vmops.exit_mmap(a, mm)
        after = (len(dev.atc), int(a.oracle.smap.sum()))
        with pytest.raises(Released, match="torn down"):
            await dev.access(BASE)
        u = await dev.unregister()  # unbind after exit: nothing left to release
        return held, t, after, u, bond_of_gone(c, dev)

    def bond_of_gone(c, dev):
        key = ("p1", dev.notifier_id)
        return key in c.sva_iommus["p0"].bonds or key in c.owner_services["p0"].notifiers

    run_ = run(workload)
    held, t, after, u, still_there = run_.result
    assert held == 4
    assert t.release_us == 302.0  # intel_mm_release()'s wait: 1 + 300 + 1
    assert after == (0, 0)
    assert u.release_us == 0.0 and not still_there
    assert run_.violations == []


@pytest.mark.parametrize("how", ["unregister", "put"])
def test_unbind_releases_the_device_and_later_dma_fails(how):
    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev", completion_us=lambda: 50.0)
        await dev.access(BASE)
        t = await (dev.unregister() if how == "unregister" else dev.put())
        with pytest.raises(Released, match="after unbind"):
            await dev.access(BASE)
        return t, len(dev.atc), int(a.oracle.smap.sum()), a.frames.is_free(pte(mm, BASE)[1])

    run_ = run(workload)
    t, entries, smap, freed = run_.result
    assert entries == 0 and smap == 0 and not freed  # the mm still maps its page
    assert t.total_us >= 52.0
    if how == "unregister":
        assert t.release_us == 52.0  # mmu_notifier_unregister's ->release: the ATC invalidation
    else:
        assert t.srcu_wait_us == 0.0  # mmu_notifier_put: the free waits in call_srcu
    assert run_.violations == []


def test_a_translation_an_invalidation_overtook_is_discarded():
    """The ATS answer (100 us each way) is overtaken by the invalidation of munmap (1 us): the
    device discards it, asks again, and the page is gone. Installing it would have made a
    translation to a frame already freed."""

    async def workload(c):
        a, mm = await mapped(c)
        dev = await c.sva("p1", "p0", mm, name="dev")
        async def dma() -> str:
            with pytest.raises(BadAddress, match="answered INVALID") as e:
                await dev.access(BASE)
            return str(e.value)

        access = c.runtime.spawn(dma(), name="dma")
        await c.runtime.sleep(150)  # the request was answered at 101; the answer lands at 202
        await vmops.munmap(a, mm, BASE, P)
        await access
        return dev.stats.stale_translations, len(dev.atc)

    run_ = run(workload, fault_latency=100.0)
    assert run_.result == (1, 0)
    assert run_.violations == []


def test_sva_is_refused_outside_the_modern_modes_naming_both():
    async def workload(c):
        _, mm = await mapped(c)
        with pytest.raises(InvalidArgument) as e:
            await c.sva("p1", "p0", mm, name="dev")
        return str(e.value)

    message = run(workload, "v3.10").result
    assert "'v3.10'" in message and "v5.10" in message and "v6.6" in message
    with pytest.raises(ScenarioError, match=r"secondary.kind: expected semantics v5.10 or v6.6 .* got semantics 'v3.10'"):
        load_scenario("quickstart").with_overrides(["secondary.kind=sva"])
    with pytest.raises(ValueError, match="v5.10 or v6.6.*'v3.10'"):
        races.run_once("v3.10", "random", 0, races.RaceConfig(secondary="sva"))


def test_sva_on_the_ray_backend_is_refused_before_anything_starts():
    s = load_scenario("quickstart").with_overrides(["secondary.kind=sva", "semantics=v6.6"])
    with pytest.raises(ValueError, match="'sva' runs on the sim backend only.*got backend 'ray'"):
        run_scenario(s, "ray")


@pytest.mark.parametrize("semantics", ["v5.10", "v6.6"])
def test_the_quickstart_runs_with_sva_devices_and_no_violation(semantics):
    s = load_scenario("quickstart").with_overrides(
        ["secondary.kind=sva", f"semantics={semantics}", "measure.exits=10", "measure.unregisters=10"])
    result, events = run_scenario(s)
    assert result["invariants"]["violations"] == 0, result["invariants"]["details"]
    assert result["invariants"]["checked"] > 0
    spins = [e["value_us"] for e in events if e["metric"] == "callout_rtt" and e["detail"] == TLB_OP[semantics]]
    releases = [e for e in events if e["metric"] == "callout_rtt" and e["detail"] == "release"]
    assert spins and min(spins) > 0 and releases  # the device's round trip is in every spin
    assert result["metrics"]["exit_hang"]["n"] == 10 and result["metrics"]["unregister_hang"]["n"] == 10
    block = result["sva"]
    assert block["iommu"] == "intel" and block["spins"] == block["invalidations"] == len(spins)
    assert block["ite"] == block["cmd_sync_timeouts"] == 0 and block["spin_max_us"] == max(spins)


def test_the_race_finder_drives_sva_devices_and_finds_a_planted_bug(monkeypatch):
    race = races.RaceConfig(secondary="sva")
    assert races.search("v6.6", "random", 4, race) is None
    assert "SVA devices" in race.describe() and "--secondary sva" in races.Finding(
        "v6.6", "random", 0, race, "violation", "x").replay_command()
    # the spin forgets what the device may still hold: no pins, the pages freed under it
    monkeypatch.setattr(sva.IommuSvaBond, "_snapshot", lambda self, start, end: {})
    found = races.search("v6.6", "random", 20, race)
    assert found is not None and found.kind == "violation" and "[inv 1" in found.what


def test_mmusim_check_runs_the_race_workload_with_sva_devices(capsys):
    from workloads.cli import main

    assert main(["check", "--semantics", "v5.10", "--secondary", "sva", "--seeds", "3"]) == 0
    assert "clean: 3 seeds of the race workload (8 pages, 2 SVA devices," in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["check", "--semantics", "v3.10", "--secondary", "sva"])
    assert e.value.code == 2
    assert ("--secondary sva: secondary 'sva' needs semantics v5.10 or v6.6 (->invalidate_range or "
            "->arch_invalidate_secondary_tlbs), got 'v3.10'") in capsys.readouterr().err
