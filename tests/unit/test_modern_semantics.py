"""The modern notifier cores (``--semantics v5.10`` / ``v6.6``, nodes/notifier.py): struct
mmu_notifier_range with its event and flags at every call site of nodes/vmops.py, the
non-blocking invalidate_range_start and the OOM reaper that needs it, ->invalidate_range /
->arch_invalidate_secondary_tlbs, ->clear_young, mmu_notifier_get/put; and the OOM reaper
against a secondary on another partition, whose callouts cannot be made without sleeping.

Each test names the kernel function whose behaviour it checks (5.10's, unless it says 6.6)."""

from __future__ import annotations

import errno
from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import InvalidArgument, SleepingInAtomicContext
from nodes.mm import HPAGE_PMD_SIZE, PAGE_SIZE, PROT_READ, Mm
from nodes.notifier import (
    MMU_NOTIFIER_RANGE_BLOCKABLE,
    MODERN,
    OOM_REAPER_MODES,
    MmuNotifier,
    MmuNotifierEvent,
    MmuNotifierRange,
)
from nodes.partition import Partition
from nodes.runtime import Runtime
from workloads.cli import main
from workloads.races import RaceConfig, search

BASE = 0x10000000
E = MmuNotifierEvent
HZ_10_US = 100_000.0  # HZ/10 jiffies, at any HZ


class RangeRecorder(MmuNotifier):
    """A driver written against the modern ops: takes the range, records (op, event, flags,
    start, end); ``refuse`` starts of non-blocking ranges answer -EAGAIN (the first
    ``refuse`` of them; -1: all); ``with_end``: whether it has an invalidate_range_end."""

    takes_range = True

    def __init__(self, name: str, rt: Runtime, *, refuse: int = 0, sleep: float = 0.0):
        super().__init__(name)
        self.rt = rt
        self.refuse = refuse
        self.sleep = sleep
        self.log: list[tuple[Any, ...]] = []

    async def invalidate_range_start(self, rng: MmuNotifierRange) -> int:
        self.log.append(("start", rng.event, rng.flags, rng.start, rng.end))
        if not rng.blockable() and self.refuse:
            self.refuse -= 1
            return -errno.EAGAIN
        if self.sleep:
            await self.rt.sleep(self.sleep)
        return 0

    async def invalidate_range_end(self, rng: MmuNotifierRange) -> None:
        self.log.append(("end", rng.event, rng.flags, rng.start, rng.end))

    def invalidate_range(self, mm: Mm, start: int, end: int) -> None:
        self.log.append(("invalidate_range", start, end))

    def arch_invalidate_secondary_tlbs(self, mm: Mm, start: int, end: int) -> None:
        self.log.append(("arch_invalidate_secondary_tlbs", start, end))

    def release(self, mm: Mm) -> None:
        self.log.append(("release",))

    def events(self) -> list[tuple[str, MmuNotifierEvent]]:
        return [(e[0], e[1]) for e in self.log if e[0] in ("start", "end")]


class StartOnly(RangeRecorder):
    """A notifier that may fail its start and so has no end (the rule of c2655835fd8c)."""

    invalidate_range_end = MmuNotifier.invalidate_range_end  # absent


class Legacy(MmuNotifier):
    """A v3.10-style driver (the GRU's, XPMEM's, KVM's shape): (mm, start, end) and
    invalidate_page."""

    def __init__(self) -> None:
        super().__init__("legacy")
        self.log: list[tuple[Any, ...]] = []

    def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        self.log.append(("start", start, end))

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        self.log.append(("end", start, end))

    def invalidate_page(self, mm: Mm, address: int) -> None:
        self.log.append(("invalidate_page", address))


async def _setup(rt: Runtime, semantics: str, npages: int = 4, *notifiers: MmuNotifier) -> tuple[Partition, Mm]:
    p = Partition(rt, nframes=4096, semantics=semantics)
    mm = p.create_mm()
    await vmops.mmap(p, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(p, mm, BASE, npages * PAGE_SIZE)
    for mn in notifiers:
        await p.core.register(mn, mm)
    return p, mm


# -- struct mmu_notifier_range: the event of each call site --------------------------------------


@pytest.mark.parametrize("semantics", MODERN)
def test_each_vm_operation_passes_the_kernels_event(vrun, semantics):
    """mmu_notifier_range_init() at each call site, as 5.10 has them: unmap_vmas() UNMAP,
    change_protection() PROTECTION_VMA, copy_page_range() PROTECTION_PAGE, wp_page_copy(),
    KSM's write_protect_page()/replace_page(), try_to_unmap_one() (page migration and reclaim)
    and collapse_huge_page() CLEAR; every range blockable."""

    async def body(rt: Runtime) -> dict[str, list[tuple[str, MmuNotifierEvent]]]:
        rec = RangeRecorder("rec", rt)
        p, mm = await _setup(rt, semantics, 8, rec)
        seen = {}

        async def op(name: str, coro: Any) -> None:
            rec.log.clear()
            await coro
            seen[name] = sorted(set(rec.events()))
            assert all(e[2] == MMU_NOTIFIER_RANGE_BLOCKABLE for e in rec.log if e[0] in ("start", "end"))

        await op("mprotect", vmops.mprotect(p, mm, BASE, PAGE_SIZE, PROT_READ))
        await op("migrate", vmops.migrate_pages(p, mm, BASE + 6 * PAGE_SIZE, PAGE_SIZE))
        await op("reclaim", vmops.reclaim(p, mm, BASE + 7 * PAGE_SIZE, PAGE_SIZE))
        await op("reclaim", vmops.reclaim(p, mm, BASE + 7 * PAGE_SIZE, PAGE_SIZE))  # young the first time
        await op("ksm", vmops.ksm_merge(p, mm, BASE + 4 * PAGE_SIZE, mm, BASE + 5 * PAGE_SIZE))
        await op("fork", vmops.fork(p, mm))
        await op("cow", vmops.touch(p, mm, BASE + 2 * PAGE_SIZE, write=True))
        await op("munmap", vmops.munmap(p, mm, BASE + 3 * PAGE_SIZE, PAGE_SIZE))
        thp = p.create_mm()
        await vmops.mmap(p, thp, 0x40000000, HPAGE_PMD_SIZE)
        await vmops.populate(p, thp, 0x40000000, HPAGE_PMD_SIZE)
        rec2 = RangeRecorder("rec2", rt)
        await p.core.register(rec2, thp)
        rec2.log.clear()
        assert await vmops.thp_collapse(p, thp, 0x40000000)
        seen["thp"] = sorted(set(rec2.events()))
        return seen

    seen = vrun(body)
    both = lambda e: [("end", e), ("start", e)]  # noqa: E731
    assert seen["mprotect"] == both(E.PROTECTION_VMA)
    assert seen["fork"] == both(E.PROTECTION_PAGE)
    for name in ("cow", "ksm", "migrate", "reclaim", "thp"):
        assert seen[name] == both(E.CLEAR), name
    assert seen["munmap"] == both(E.UNMAP)


def test_exit_mmap_calls_release_and_no_range_after_it(vrun):
    """exit_mmap(): mmu_notifier_release() first; unmap_vmas()'s UNMAP range then finds no
    notifier."""

    async def body(rt: Runtime) -> list[tuple[Any, ...]]:
        rec = RangeRecorder("rec", rt)
        p, mm = await _setup(rt, "v5.10", 4, rec)
        await vmops.exit_mmap(p, mm)
        return rec.log

    assert vrun(body) == [("release",)]


def test_a_v3_10_style_driver_gets_mm_start_end_and_no_invalidate_page_under_v5_10(vrun):
    """369ea8242c0f (4.13): try_to_unmap_one() brackets the pte change with range_start/end
    instead of calling ->invalidate_page; a driver that reads only range->start/end (the 5.10
    GRU, XPMEM, KVM) keeps its (mm, start, end) ops. v3.10 still calls invalidate_page."""

    async def body(rt: Runtime, semantics: str) -> list[tuple[Any, ...]]:
        leg = Legacy()
        p, mm = await _setup(rt, semantics, 2, leg)
        leg.log.clear()
        await vmops.migrate_pages(p, mm, BASE, PAGE_SIZE)
        return leg.log

    page = (BASE, BASE + PAGE_SIZE)
    assert vrun(lambda rt: body(rt, "v5.10")) == [("start", *page), ("end", *page)]
    assert vrun(lambda rt: body(rt, "v3.10")) == [("invalidate_page", BASE)]


def test_the_modern_core_has_no_invalidate_page_and_v3_10_no_nonblocking_range(vrun):
    async def body(rt: Runtime) -> None:
        p, mm = await _setup(rt, "v6.6", 1, Legacy())
        with pytest.raises(InvalidArgument, match="369ea8242c0f"):
            await p.core.invalidate_page(mm, BASE)
        old, old_mm = await _setup(rt, "v3.10", 1, Legacy())
        with pytest.raises(InvalidArgument, match="MMU_NOTIFIER_RANGE_BLOCKABLE"):
            await old.core.invalidate_range_start_nonblock(old_mm, BASE, BASE + PAGE_SIZE)

    vrun(body)


# -- the non-blocking start ---------------------------------------------------------------------


@pytest.mark.parametrize("semantics", MODERN)
def test_a_failed_nonblocking_start_calls_every_notifier_and_answers_eagain(vrun, semantics):
    """mn_hlist_invalidate_range_start(): a start that answers -EAGAIN does not stop the walk
    (ret = _ret); the others are called too and the error is returned. 5.10 leaves the
    notifier that succeeded without its end (the caller may not call end); 6.6
    (c2655835fd8c) calls every notifier's end. No WARN: the failure is -EAGAIN, in a
    non-blockable range, of a notifier without end."""

    async def body(rt: Runtime) -> tuple[int, list[str], list[str], list[str]]:
        ok = RangeRecorder("ok", rt)
        fails = StartOnly("fails", rt, refuse=-1)
        p, mm = await _setup(rt, semantics, 1, ok, fails)
        ret = await p.core.invalidate_range_start_nonblock(mm, BASE, BASE + PAGE_SIZE)
        return ret, [e[0] for e in ok.log], [e[0] for e in fails.log], p.core.warnings

    ret, ok_ops, failed_ops, warnings = vrun(body)
    assert ret == -errno.EAGAIN and failed_ops == ["start"] and warnings == []
    assert ok_ops == (["start"] if semantics == "v5.10" else ["start", "end"])


def test_the_6_6_core_warns_when_a_failing_start_has_an_end_and_both_warn_on_a_blockable_failure(vrun):
    """6.6's WARN_ON(ops->invalidate_range_end) for a notifier that failed start (the core
    cannot tell it that its start failed, so such a notifier must not have end); both cores'
    WARN_ON(blockable || ret != -EAGAIN)."""

    async def body(rt: Runtime, semantics: str) -> list[str]:
        both = RangeRecorder("both", rt, refuse=-1)
        p, mm = await _setup(rt, semantics, 1, both)
        await p.core.invalidate_range_start_nonblock(mm, BASE, BASE + PAGE_SIZE)
        return p.core.warnings

    assert vrun(lambda rt: body(rt, "v5.10")) == []
    (w,) = vrun(lambda rt: body(rt, "v6.6"))
    assert "both" in w and "c2655835fd8c" in w

    class Blockable(MmuNotifier):
        def invalidate_range_start(self, mm: Mm, start: int, end: int) -> int:
            return -errno.EAGAIN

    async def blockable(rt: Runtime) -> tuple[list[str], list[Any]]:
        p, mm = await _setup(rt, "v5.10", 1, Blockable("b"))
        assert await p.core.invalidate_range_start(mm, BASE, BASE + PAGE_SIZE) == -errno.EAGAIN
        await p.core.invalidate_range_end(mm, BASE, BASE + PAGE_SIZE)  # the void wrapper's caller goes on
        return p.core.warnings, p.oracle.violations

    (w,), violations = vrun(blockable)
    assert "in a blockable range" in w and violations == []  # the end paired the start


def test_a_notifier_that_sleeps_in_a_nonblocking_start_is_sleeping_in_atomic_context(vrun):
    """non_block_start() around each callout of a non-blockable range: sleeping there is the
    kernel's "BUG: sleeping function called from invalid context"."""

    async def body(rt: Runtime) -> None:
        p, mm = await _setup(rt, "v5.10", 1, RangeRecorder("sleepy", rt, sleep=5.0))
        with pytest.raises(SleepingInAtomicContext, match="non-blocking range"):
            await p.core.invalidate_range_start_nonblock(mm, BASE, BASE + PAGE_SIZE)

    vrun(body)


# -- the OOM reaper -----------------------------------------------------------------------------


def test_the_oom_reaper_retries_ten_times_hz_over_10_apart_and_gives_up(vrun):
    """oom_reap_task(): while (attempts++ < MAX_OOM_REAP_RETRIES && !oom_reap_task_mm())
    schedule_timeout_idle(HZ/10); then MMF_OOM_SKIP. Every attempt's non-blocking start is
    refused: nothing is unmapped and the pages stay."""

    async def body(rt: Runtime) -> tuple[Any, ...]:
        rec = StartOnly("refuses", rt, refuse=-1)
        p, mm = await _setup(rt, "v5.10", 4, rec)
        t0 = rt.now()
        r = await vmops.oom_reap_task(p, mm)
        starts = [e for e in rec.log if e[0] == "start"]
        return r, rt.now() - t0, len(starts), {e[2] for e in starts}, mm.oom_skip, len(mm.mapped_pfns())

    r, took, starts, flags, skip, mapped = vrun(body)
    assert r == vmops.OomReap(reaped=False, attempts=vmops.MAX_OOM_REAP_RETRIES, unmapped=0)
    assert took == pytest.approx(vmops.MAX_OOM_REAP_RETRIES * HZ_10_US)
    assert starts == vmops.MAX_OOM_REAP_RETRIES and flags == {0} and skip and mapped == 4


def test_the_oom_reaper_reaps_once_the_notifier_stops_refusing(vrun):
    """__oom_reap_task_mm(): the attempt whose non-blocking UNMAP start is accepted zaps the
    VMA, calls range_end (non-blocking too) and frees the pages."""

    async def body(rt: Runtime) -> tuple[Any, ...]:
        rec = StartOnly("refuses twice", rt, refuse=2)
        p, mm = await _setup(rt, "v5.10", 4, rec)
        free = p.frames.nfree
        r = await vmops.oom_reap_task(p, mm)
        return r, p.frames.nfree - free, [e for e in rec.log if e[0] == "start"][-1][:3], len(mm.mapped_pfns())

    r, freed, last, mapped = vrun(body)
    assert r == vmops.OomReap(reaped=True, attempts=3, unmapped=4)
    assert freed == 4 and mapped == 0 and last == ("start", E.UNMAP, 0)


def test_the_oom_reaper_skips_an_mm_whose_mmap_sem_it_cannot_trylock(vrun, settle):
    """oom_reap_task_mm(): mmap_read_trylock() or a failed attempt; the reaper reaps once the
    writer is gone."""

    async def body(rt: Runtime) -> Any:
        p, mm = await _setup(rt, "v6.6", 2)
        await mm.mmap_sem.down_write()
        task = rt.spawn(vmops.oom_reap_task(p, mm), name="oom_reaper")
        await rt.sleep(2.5 * HZ_10_US)
        mm.mmap_sem.up_write()
        return await task

    assert vrun(body) == vmops.OomReap(reaped=True, attempts=4, unmapped=2)


def test_there_is_no_oom_reaper_before_linux_4_6(vrun):
    async def body(rt: Runtime) -> None:
        p, mm = await _setup(rt, "v3.10", 1)
        with pytest.raises(InvalidArgument, match="aac453635549"):
            await vmops.oom_reap_task(p, mm)

    vrun(body)
    assert set(OOM_REAPER_MODES) == {"v5.10", "v6.6", "oom-reap-unnotified"}


def _remote_reap(semantics: str, *, unregister_first: bool) -> dict[str, Any]:
    async def wl(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, 4 * PAGE_SIZE)
        await vmops.populate(a, mm, BASE, 4 * PAGE_SIZE)
        gru = await c.gru("p1", "p0", mm, name="gru")
        for k in range(4):
            await gru.access(BASE + k * PAGE_SIZE)
        if unregister_first:
            await gru.unregister()
        a.core.trace_callouts = True
        c.runtime.trace("test", "reaping")
        r = await vmops.oom_reap_task(a, mm)
        return {"reap": r, "warnings": list(a.core.warnings), "active": gru.ms_range_active,
                "mapped": len(mm.mapped_pfns())}

    run = run_sim(SimConfig(partitions=2, semantics=semantics, trace="full"), wl)
    after = [e for e in run.trace_entries[next(i for i, e in enumerate(run.trace_entries) if " test reaping" in e):]]
    return {**run.result, "callouts": sum(e.split(" ", 2)[1] == "callout" for e in after),
            "refused": sum("failed with -11" in e for e in after)}


@pytest.mark.parametrize("semantics", MODERN)
def test_the_oom_reaper_cannot_reap_an_mm_a_secondary_on_another_partition_maps(semantics):
    """The cross-partition point: the remote GRU's invalidate_range_start would wait for the
    network, so in a non-blockable range its proxy (nodes.remote) answers -EAGAIN without
    sending anything, every attempt: the reaper gives up and the pages stay. 6.6 WARNs, since
    that proxy has an end (and its unwind end reaches no one either). Once the GRU is
    unregistered the same reap succeeds at once."""
    r = _remote_reap(semantics, unregister_first=False)
    assert r["reap"] == vmops.OomReap(reaped=False, attempts=vmops.MAX_OOM_REAP_RETRIES, unmapped=0)
    # the core's callouts: each start refused (and in 6.6 its unwind's end), none sent on
    assert r["refused"] == vmops.MAX_OOM_REAP_RETRIES
    assert r["callouts"] == r["refused"] * (2 if semantics == "v6.6" else 1)
    assert r["active"] == 0 and r["mapped"] == 4
    expected = vmops.MAX_OOM_REAP_RETRIES if semantics == "v6.6" else 0
    assert len(r["warnings"]) == expected and all("p1:gru" in w for w in r["warnings"])
    gone = _remote_reap(semantics, unregister_first=True)
    assert gone["reap"] == vmops.OomReap(reaped=True, attempts=1, unmapped=4) and gone["mapped"] == 0


# -- ->invalidate_range, ->arch_invalidate_secondary_tlbs, ->clear_young --------------------------


def test_invalidate_range_in_v5_10_and_arch_invalidate_secondary_tlbs_in_v6_6(vrun):
    """v5.10 mn_hlist_invalidate_end(): ->invalidate_range before ->invalidate_range_end
    unless only_end; wp_page_copy() uses ptep_clear_flush_notify() (->invalidate_range under
    the PT lock) and then the only_end variant (0f10851ea475). v6.6: the op is
    ->arch_invalidate_secondary_tlbs (1af5a8109904), called from the TLB flush only, never
    from range_end (ec8832d007cb): munmap's after range_end (tlb_finish_mmu), the COW fault's
    at ptep_clear_flush() between start and end. v3.10: neither."""

    def calls(semantics: str, operation: str) -> list[str]:
        async def body(rt: Runtime) -> list[str]:
            rec = RangeRecorder("rec", rt)
            p, mm = await _setup(rt, semantics, 2, rec)
            if operation == "cow":
                await vmops.fork(p, mm)
            rec.log.clear()
            if operation == "munmap":
                await vmops.munmap(p, mm, BASE, PAGE_SIZE)
            else:
                await vmops.touch(p, mm, BASE, write=True)
            return [e[0] for e in rec.log]

        return vrun(body)

    assert calls("v5.10", "munmap") == ["start", "invalidate_range", "end"]
    assert calls("v5.10", "cow") == ["start", "invalidate_range", "end"]  # under the PT lock, then only_end
    assert calls("v6.6", "munmap") == ["start", "end", "arch_invalidate_secondary_tlbs"]
    assert calls("v6.6", "cow") == ["start", "arch_invalidate_secondary_tlbs", "end"]


class LegacyTlb(Legacy):
    """A v3.10-shaped driver that also has the modern atomic ops."""

    def invalidate_range(self, mm: Mm, start: int, end: int) -> None:
        self.log.append(("invalidate_range", start, end))

    def clear_young(self, mm: Mm, start: int, end: int) -> int:
        self.log.append(("clear_young", start, end))
        return 1


@pytest.mark.parametrize("semantics", ["v3.10", "v5.10"])
def test_clear_young_ors_the_answers_and_v3_10_calls_no_modern_op(vrun, semantics):
    """__mmu_notifier_clear_young() (632116f64463): OR of every notifier's answer; the v3.10
    core has neither it nor ->invalidate_range, so munmap there is start and end only."""

    async def body(rt: Runtime) -> tuple[int, list[str]]:
        leg = LegacyTlb()
        p, mm = await _setup(rt, semantics, 1, leg, Legacy())
        with mm.page_table_lock:
            young = p.core.clear_young(mm, BASE, BASE + PAGE_SIZE)
        await vmops.munmap(p, mm, BASE, PAGE_SIZE)
        return young, [e[0] for e in leg.log]

    young, ops = vrun(body)
    if semantics == "v3.10":
        assert young == 0 and ops == ["start", "end"]
    else:
        assert young == 1 and ops == ["clear_young", "start", "invalidate_range", "end"]


# -- mmu_notifier_get/put -----------------------------------------------------------------------


class Shared(RangeRecorder):
    """A driver with ops->alloc_notifier and ops->free_notifier."""

    freed: list[str] = []

    @classmethod
    def alloc_notifier(cls, mm: Mm) -> "Shared":
        return cls(f"shared-{mm.id}", None)  # type: ignore[arg-type]

    def free_notifier(self) -> None:
        Shared.freed.append(self.name)


def test_get_is_refcounted_per_mm_and_ops_and_the_last_put_frees_after_a_grace_period(vrun, settle):
    """mmu_notifier_get_locked() (2c7933f53f6b): find_get_mmu_notifier() or
    ops->alloc_notifier() + register; mmu_notifier_put(): only the last put unhashes it, and
    mmu_notifier_free_rcu() calls ops->free_notifier from call_srcu()."""
    Shared.freed = []

    async def body(rt: Runtime) -> None:
        p, mm = await _setup(rt, "v5.10", 1)
        one = await p.core.get(Shared, mm)
        two = await p.core.get(Shared, mm)
        assert one is two and one.users == 2 and one.mm is mm
        await p.core.put(one, mm)
        assert not one.hlist.unhashed() and Shared.freed == []
        await p.core.put(one, mm)
        assert one.hlist.unhashed() and Shared.freed == []  # call_srcu(): after a grace period
        await rt.sleep(10_000)
        assert Shared.freed == [one.name] and one.mm is None
        old, old_mm = await _setup(rt, "v3.10", 1)
        with pytest.raises(InvalidArgument, match="Linux 5.4"):
            await old.core.get(Shared, old_mm)

    vrun(body)


# -- the race finder ----------------------------------------------------------------------------

BUDGET = 30


# The 4.6 reaper's bug (oom-reap-unnotified) is in test_races.py's EXPECTED, with the history's.


@pytest.mark.parametrize("semantics", MODERN)
@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_the_modern_cores_run_the_race_workload_with_an_oom_reaper_clean(semantics, scheduler):
    assert search(semantics, scheduler, BUDGET, RaceConfig()) is None


def test_modes_without_a_reaper_run_and_report_the_workload_without_it():
    f = search("unregister-race", "random", BUDGET, RaceConfig())
    assert f is not None and "oom_reap" not in f.race.tasks and "--tasks" in f.replay_command()
    assert "oom_reap" not in f.replay_command()


def test_check_of_v5_10_exits_0(capsys):
    assert main(["check", "--semantics", "v5.10", "--seeds", "10"]) == 0
    assert "clean" in capsys.readouterr().out


# -- the reaper in scenarios and activity streams ------------------------------------------------


def test_an_oom_reap_weight_needs_a_semantics_with_an_oom_reaper():
    from workloads.scenario import ScenarioError, load_scenario

    s = load_scenario("quickstart")
    with pytest.raises(ScenarioError, match="activity.mix.oom_reap: expected weight 0 under semantics 'v3.10'"):
        s.with_overrides(["activity.mix.oom_reap=1"])
    ok = s.with_overrides(["activity.mix.oom_reap=1", "semantics=v5.10"])
    assert ok.get("activity.mix.oom_reap") == 1 and ok.get("semantics") == "v5.10"


def test_run_with_semantics_v5_10_and_an_oom_reap_stream_is_clean(tmp_path, capsys):
    """`mmusim run --semantics v5.10` with the reaper in the mix: --semantics is checked with
    the --set pairs; every reap is refused by the remote GRUs and the run holds its invariants."""
    import json

    out = tmp_path / "q"
    assert main(["run", "quickstart", "--semantics", "v5.10", "--set", "activity.mix={oom_reap: 1, migrate: 1}",
                 "--set", "duration=20ms", "--out", str(out)]) == 0
    doc = json.loads((out / "results.json").read_text())
    assert doc["invariants"]["violations"] == 0 and doc["invariants"]["checked"] > 0
    assert doc["config"]["semantics"] == "v5.10"


@pytest.mark.parametrize("semantics", MODERN)
def test_a_kvm_beside_a_refusing_notifier_is_left_unpaired_by_5_10_and_paired_by_6_6(semantics):
    """The bug c2655835fd8c fixed (5.12): "those that did not fail are expecting _start() and
    _end() to be paired, e.g. KVM's mmu_notifier_count would become imbalanced". A KVM on the
    owner's partition (its start does not sleep: no spte to flush) beside a remote GRU that
    refuses the reaper's non-blocking start: after the failed reap, 5.10 leaves the KVM's
    count raised (its faults would retry for ever); 6.6's unwind brings it back to 0."""

    async def wl(c: SimCluster) -> tuple[int, bool]:
        a = c.partition("p0")
        mm = a.create_mm()
        await vmops.mmap(a, mm, BASE, 2 * PAGE_SIZE)
        await vmops.populate(a, mm, BASE, 2 * PAGE_SIZE)
        kvm = await c.kvm("p0", "p0", mm, name="kvm")
        await c.gru("p1", "p0", mm, name="gru")  # registered last: first on the list
        r = await vmops.oom_reap_task(a, mm)
        return kvm.mmu_notifier_count, r.reaped

    count, reaped = run_sim(SimConfig(partitions=2, semantics=semantics), wl).result
    assert not reaped
    assert count == (vmops.MAX_OOM_REAP_RETRIES if semantics == "v5.10" else 0)


@pytest.mark.parametrize("semantics", MODERN)
def test_a_remote_xpmem_without_a_start_is_guarded_by_its_proxy_and_a_local_kvm_lets_the_reaper_reap(semantics):
    """XPMEM hooks only invalidate_range_end, which cannot fail and would cross the network:
    under a modern core its proxy answers the start itself (0 when blockable, -EAGAIN when
    not: nodes.remote ``_refusing_start``), so the reaper skips the mm and the pins and
    mappings stay. A KVM on the owner's partition takes the non-blocking range as 5.10's
    kvm_mmu_notifier_invalidate_range_start() does (zap, flush without sleeping, answer 0):
    the reaper reaps, and the KVM's count is back to 0."""
    from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

    cred = XpmemCred(tgid=1, uid=1000, gid=1000)

    async def wl(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        out: dict[str, Any] = {}
        for kind in ("xpmem", "kvm"):
            mm = a.create_mm()
            await vmops.mmap(a, mm, BASE, 4 * PAGE_SIZE)
            await vmops.populate(a, mm, BASE, 4 * PAGE_SIZE)
            if kind == "xpmem":
                xp = await c.xpmem("p1", "p0", mm, cred=cred)
                att = await xp.attach(await xp.get(await xp.make(BASE, 4 * PAGE_SIZE, 0o600), XPMEM_RDWR, cred),
                                      0, 4 * PAGE_SIZE, cred)
                for k in range(4):
                    await xp.access(att, att.vaddr + k * PAGE_SIZE)
                await vmops.munmap(a, mm, BASE + 3 * PAGE_SIZE, PAGE_SIZE)  # blockable: the guard answers 0
            else:
                kvm = await c.kvm("p0", "p0", mm, name="kvm")
                for k in range(4):
                    await kvm.access(BASE + k * PAGE_SIZE)
            pins = int(a.frames.pincount.sum())
            r = await vmops.oom_reap_task(a, mm)
            out[kind] = (r.reaped, r.unmapped, pins, int(a.frames.pincount.sum()), len(mm.mapped_pfns()))
            if kind == "kvm":
                out["kvm_count"] = (kvm.mmu_notifier_count, kvm.stats.flushes > 0)
        out["violations"] = list(a.oracle.violations)
        return out

    r = run_sim(SimConfig(partitions=2, semantics=semantics), wl).result
    assert r["xpmem"] == (False, 0, 3, 3, 3)  # munmap's range_end unpinned page 3; the reaper nothing
    assert r["kvm"][:2] == (True, 4) and r["kvm"][4] == 0 and r["kvm_count"] == (0, True)
    assert r["violations"] == []
