"""The sim backend (cluster/sim.py, cluster/interconnect.py, cluster/vtime.py policies) and
the remote secondaries it wires up (nodes/remote.py): determinism per seed across processes,
exact virtual times over the interconnect, fan-out, a partition crashing in the middle of an
invalidation, message loss, atomic ops a remote secondary cannot honour, config validation.

Times are virtual microseconds; with constant latencies every duration below is exact.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from cluster.interconnect import SimInterconnect
from cluster.sim import SimCluster, SimConfig, run_sim
from cluster.topology import LatencyDist, LatencyModel, Topology
from cluster.vtime import (
    Deadlock,
    PctPolicy,
    RandomPolicy,
    ReplayDiverged,
    ReplayPolicy,
    Trace,
    VirtualTimeLoop,
    run_virtual,
)
from nodes import vmops
from nodes.errors import SleepingInAtomicContext, Unreachable
from nodes.mm import PAGE_SIZE
from nodes.notifier import MmuNotifier
from nodes.runtime import Runtime, in_atomic
from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred
from sim_child import det_config, det_workload, run_one

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
BASE = 0x10000000


async def _mm(c: SimCluster, owner: str, npages: int, base: int = BASE) -> Any:
    p = c.partition(owner)
    mm = p.create_mm()
    await vmops.mmap(p, mm, base, npages * PAGE_SIZE)
    await vmops.populate(p, mm, base, npages * PAGE_SIZE)
    return mm


async def _timed(rt: Runtime, aw: Any) -> tuple[float, Any]:
    t0 = rt.now()
    r = await aw
    return rt.now() - t0, r


# -- 1. determinism ---------------------------------------------------------------------------


@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_same_seed_same_digest_and_metrics_in_process_and_replay(scheduler):
    cfg = det_config(scheduler, 11)
    r1 = run_sim(cfg, det_workload)
    r2 = run_sim(det_config(scheduler, 11), det_workload)
    assert r1.trace_digest == r2.trace_digest
    assert r1.result == r2.result
    assert (r1.steps, r1.virtual_time_us, r1.decisions) == (r2.steps, r2.virtual_time_us, r2.decisions)
    # the workload is non-trivial: the scheduler had choices, remote ops ran, nothing broke
    assert len(r1.decisions) > 20
    m = r1.result
    assert m["messages"]["callout"] >= 8 and m["messages"]["fault"] >= 10
    assert m["xp"]["pins"] > 0 and m["gru_a"]["dropins"] > 0 and m["gru_c"]["flushes"] > 0
    assert r1.violations == [] and m["sweep"] == {"p0": [], "p1": [], "p2": []}
    assert m["free"] == {"p0": 4096, "p1": 4096, "p2": 4096}  # every frame back after every exit
    assert r1.faults == []

    # a different seed: a different interleaving (and different latencies)
    r3 = run_sim(det_config(scheduler, 12), det_workload)
    assert r3.trace_digest != r1.trace_digest

    # replaying the recorded decisions re-makes the run exactly
    r4 = run_sim(cfg, det_workload, replay=r1.decisions)
    assert r4.trace_digest == r1.trace_digest
    assert r4.result == r1.result


def test_fifo_is_deterministic_and_differs_from_the_seeded_policies():
    f1 = run_sim(det_config("fifo", 11), det_workload)
    f2 = run_sim(det_config("fifo", 11), det_workload)
    assert f1.trace_digest == f2.trace_digest and f1.decisions == []
    digests = {run_sim(det_config(s, 11), det_workload).trace_digest for s in ("random", "pct")}
    assert f1.trace_digest not in digests and len(digests) == 2


def test_same_seed_same_digest_and_metrics_in_another_process():
    runs = ["random:5", "pct:5", "random:6"]
    here = {arg: run_one(arg.split(":")[0], int(arg.split(":")[1])) for arg in runs}
    for hashseed in ("1", "987654"):
        env = dict(os.environ, PYTHONHASHSEED=hashseed)
        env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
        out = subprocess.run(
            [sys.executable, str(HERE / "sim_child.py"), *runs],
            env=env, capture_output=True, text=True, timeout=60, check=True,
        )
        there = json.loads(out.stdout)
        for arg in runs:
            assert there[arg]["digest"] == here[arg]["digest"], (arg, hashseed)
            assert there[arg]["metrics"] == here[arg]["metrics"], (arg, hashseed)
    assert here["random:5"]["digest"] != here["random:6"]["digest"]
    assert here["random:5"]["metrics"] != here["random:6"]["metrics"]  # latencies are seeded too


# -- 2. exact virtual time over the interconnect ------------------------------------------------


def _munmap_gru_workload(npages: int = 16):
    async def wl(c: SimCluster) -> dict[str, Any]:
        rt = c.runtime
        a = c.partition("p0")
        mm = await _mm(c, "p0", 64)
        gru = await c.gru("p1", "p0", mm, flush_per_page_us=2.0)
        for k in range(npages):
            await gru.access(BASE + k * PAGE_SIZE)
        assert len(gru.tlb) == npages
        munmap_us, _ = await _timed(rt, vmops.munmap(a, mm, BASE, npages * PAGE_SIZE))
        assert len(gru.tlb) == 0 and gru.ms_range_active == 0
        exit_us, te = await _timed(rt, vmops.exit_mmap(a, mm))  # gru still registered
        return {"munmap": munmap_us, "exit": exit_us, "exit_t": te, "released": gru.ms_released}

    return wl


def test_munmap_with_a_remote_gru_takes_exactly_44_us():
    # range_start: 3 (request) + 16 pages x 2 us + 3 (reply); range_end: 3 + 3
    run = run_sim(SimConfig(partitions=2, hops=3, hop_latency=1.0), _munmap_gru_workload())
    r = run.result
    assert r["munmap"] == 44.0
    # exit: ->release is one callout round trip (6 us), synchronize_srcu finds no reader
    assert r["exit"] == 6.0
    assert (r["exit_t"].total_us, r["exit_t"].release_us, r["exit_t"].srcu_wait_us) == (6.0, 6.0, 0.0)
    assert r["released"] is True
    assert run.violations == [] and run.faults == []


def test_callout_latency_adds_exactly_its_value_per_callout_message_one_way():
    cfg = SimConfig(partitions=2, hops=3, hop_latency=1.0, callout_latency=10)
    r = run_sim(cfg, _munmap_gru_workload()).result
    assert r["munmap"] == 44.0 + 4 * 10  # 2 callouts, each a request and a reply
    assert r["exit"] == 6.0 + 2 * 10  # 1 callout (release)


def test_callout_latency_does_not_touch_other_messages():
    # a GUP is a "fault" message, a read a "read" message: no callout extra
    async def wl(c: SimCluster) -> tuple[float, float]:
        mm = await _mm(c, "p0", 4)
        gru = await c.gru("p1", "p0", mm)
        miss, _ = await _timed(c.runtime, gru.access(BASE))  # GUP round trip + read round trip
        hit, _ = await _timed(c.runtime, gru.access(BASE))  # read round trip only
        await gru.unregister()
        return miss, hit

    cfg = SimConfig(partitions=2, hops=2, hop_latency=1.5, callout_latency=10)
    assert run_sim(cfg, wl).result == (12.0, 6.0)


def test_unregister_and_exit_over_the_interconnect_take_exact_times():
    async def wl(c: SimCluster) -> dict[str, Any]:
        rt = c.runtime
        a = c.partition("p0")
        mm = await _mm(c, "p0", 64)
        gru = await c.gru("p1", "p0", mm)
        xp = await c.xpmem("p2", "p0", mm, zap_per_page_us=0.5)
        cred = XpmemCred(tgid=77, uid=1000, gid=1000)
        apid = await xp.get(await xp.make(BASE, 16 * PAGE_SIZE, 0o600), XPMEM_RDWR, cred)
        att = await xp.attach(apid, 0, 16 * PAGE_SIZE, cred)
        for k in range(4):
            await xp.access(att, att.vaddr + k * PAGE_SIZE)
        assert int(a.frames.pincount.sum()) == 4
        await gru.access(BASE)
        out: dict[str, Any] = {}
        # GRU: unregister request (3) + [->release callout 3 + 3; synchronize: no reader] + reply (3)
        out["gru"] = await _timed(rt, gru.unregister())
        # XPMEM: request (3) + [->release callout: 3 + unpin 4 pages (a nested request from p2
        # to p0 and back: 3 + 3) + zap 4 x 0.5 + 3] + reply (3)
        out["xp"] = await _timed(rt, xp.unregister())
        out["pins"] = int(a.frames.pincount.sum())
        out["xp_released"] = xp.released
        # exit with nothing registered any more: no callout, no wait
        out["exit"] = await _timed(rt, vmops.exit_mmap(a, mm))
        out["sweep"] = a.check_invariants(final=True)
        return out

    r = run_sim(SimConfig(partitions=3, hops=3, hop_latency=1.0), wl).result
    took, t = r["gru"]
    assert took == 12.0 and (t.total_us, t.release_us, t.srcu_wait_us) == (6.0, 6.0, 0.0)
    took, t = r["xp"]
    assert took == 20.0 and (t.total_us, t.release_us, t.srcu_wait_us) == (14.0, 14.0, 0.0)
    assert r["pins"] == 0 and r["xp_released"] is True
    assert r["exit"][0] == 0.0
    assert r["sweep"] == []


def test_remote_register_then_exit_with_the_secondary_still_registered():
    # register: request (2) + reply (2) over 2 hops of 1 us; exit: ->release round trip (4)
    async def wl(c: SimCluster) -> tuple[float, float]:
        mm = await _mm(c, "p0", 8)
        reg, _ = await _timed(c.runtime, c.gru("p1", "p0", mm))
        ex, _ = await _timed(c.runtime, vmops.exit_mmap(c.partition("p0"), mm))
        return reg, ex

    assert run_sim(SimConfig(partitions=2, hops=2, hop_latency=1.0), wl).result == (4.0, 4.0)


# -- 3. fan-out ---------------------------------------------------------------------------------


async def _fanout_workload(c: SimCluster) -> float:
    mm = await _mm(c, "p0", 64)
    grus = []
    for host, flush in (("p1", 1.0), ("p2", 2.0), ("p3", 3.0)):
        gru = await c.gru(host, "p0", mm, flush_per_page_us=flush)
        for k in range(16):
            await gru.access(BASE + k * PAGE_SIZE)
        grus.append(gru)
    took, _ = await _timed(c.runtime, vmops.munmap(c.partition("p0"), mm, BASE, 16 * PAGE_SIZE))
    assert all(len(g.tlb) == 0 and g.ms_range_active == 0 for g in grus)
    await vmops.exit_mmap(c.partition("p0"), mm)
    return took


@pytest.mark.parametrize("fanout", ["sequential", "parallel"])
def test_fanout_parallel_is_the_max_and_sequential_the_sum(fanout):
    # ring of 4: p1 and p3 are 1 hop from p0, p2 is 2 hops; 1 us per hop
    # range_start per GRU: round trip + 16 pages x flush: p1 2 + 16, p2 4 + 32, p3 2 + 48
    # range_end per GRU: round trip: p1 2, p2 4, p3 2
    start = {"p1": 18.0, "p2": 36.0, "p3": 50.0}
    end = {"p1": 2.0, "p2": 4.0, "p3": 2.0}
    cfg = SimConfig(partitions=4, topology="ring", hop_latency=1.0, fanout=fanout)
    run = run_sim(cfg, _fanout_workload)
    if fanout == "sequential":
        assert run.result == sum(start.values()) + sum(end.values()) == 112.0
    else:
        assert run.result == max(start.values()) + max(end.values()) == 54.0
    assert run.violations == []


# -- 4. a partition crashing in the middle of an invalidation -----------------------------------

DEADLINE = 1000.0
T0 = 100.0  # the munmap starts here


def _crash_workload(variant: str):
    """p0 owns mm; p1 hosts a GRU and an XPMEM driver with 4 pinned pages (variant "gru") or
    only the XPMEM driver (variant "xpmem"); p2 hosts another GRU. p1 crashes during the
    munmap of pages [0, 16) of mm, which covers the pinned pages."""

    async def wl(c: SimCluster) -> dict[str, Any]:
        rt = c.runtime
        a = c.partition("p0")
        mm = await _mm(c, "p0", 64)
        gru2 = await c.gru("p2", "p0", mm)  # 2 us/page
        xp = await c.xpmem("p1", "p0", mm)
        gru1 = await c.gru("p1", "p0", mm, flush_per_page_us=2.0) if variant == "gru" else None
        cred = XpmemCred(tgid=9, uid=1000, gid=1000)
        apid = await xp.get(await xp.make(BASE + 8 * PAGE_SIZE, 16 * PAGE_SIZE, 0o600), XPMEM_RDWR, cred)
        att = await xp.attach(apid, 0, 16 * PAGE_SIZE, cred)
        for k in range(4):
            await xp.access(att, att.vaddr + k * PAGE_SIZE)
        for k in range(2):
            if gru1 is not None:
                await gru1.access(BASE + k * PAGE_SIZE)
            await gru2.access(BASE + k * PAGE_SIZE)
        pinned = int(a.frames.pincount.sum())
        assert rt.now() < T0
        await rt.sleep(T0 - rt.now())
        out: dict[str, Any] = {"pinned": pinned}
        out["munmap"], _ = await _timed(rt, vmops.munmap(a, mm, BASE, 16 * PAGE_SIZE))
        out["alive_p1"] = c.interconnect.alive("p1")
        out["pins_after"] = int(a.frames.pincount.sum())
        out["smap_after"] = int(a.oracle.smap.sum())
        # later callouts to the fenced notifiers return at once: only gru2 costs time
        out["munmap2"], _ = await _timed(rt, vmops.munmap(a, mm, BASE + 32 * PAGE_SIZE, 16 * PAGE_SIZE))
        # the dead partition cannot even send: a GUP (an XPMEM fault) and an unregister fail at once
        t = rt.now()
        with pytest.raises(Unreachable, match="p1 is down"):
            await xp.access(att, att.vaddr + 12 * PAGE_SIZE)
        with pytest.raises(Unreachable, match="p1 is down"):
            await xp.unregister()
        if gru1 is not None:
            with pytest.raises(Unreachable, match="p1 is down"):
                await gru1.unregister()
        out["dead_calls_took"] = rt.now() - t
        # the owner's teardown paths complete: unregister of the live secondary, then exit
        out["unreg2"], _ = await _timed(rt, gru2.unregister())
        out["exit"], te = await _timed(rt, vmops.exit_mmap(a, mm))
        out["exit_t"] = te
        out["sweep"] = [str(v) for v in a.check_invariants(final=True)]
        out["free"] = a.frames.nfree
        out["failures"] = dict(c.interconnect.failures)
        out["orphans"] = list(c.interconnect.orphan_errors)
        return out

    return wl


@pytest.mark.parametrize(
    "variant, crash_at",
    [
        # the range_start request reaches p1 at T0 + 1; p1's GRU flushes 16 pages until T0 + 33;
        # p1 dies at T0 + 11, while its GRU is flushing: no reply ever comes
        ("gru", T0 + 11),
        # walk order (newest first): xpmem has no range_start; gru2 range_start ends at T0 + 34;
        # the xpmem range_end request leaves at T0 + 34 and p1 dies before it lands (T0 + 35)
        ("xpmem", T0 + 34.5),
    ],
)
def test_crash_mid_invalidation_fences_the_dead_partition(variant, crash_at):
    cfg = SimConfig(partitions=3, hops=1, hop_latency=1.0, deadline_us=DEADLINE, crashes={"p1": crash_at})
    run = run_sim(cfg, _crash_workload(variant))
    r = run.result
    assert r["pinned"] == 4 and r["alive_p1"] is False
    if variant == "gru":
        # the callout to p1 gives up at T0 + deadline; then gru2: range_start 1 + 32 + 1, range_end 2
        assert r["munmap"] == DEADLINE + 34 + 2
        during = "invalidate_range_start of p1:gru@p1:p0/mm1"
    else:
        # gru2 range_start (34), the xpmem range_end gives up 1000 us after it was sent, gru2 range_end (2)
        assert r["munmap"] == 34 + DEADLINE + 2
        during = "invalidate_range_end of p1:xpmem@p1:p0/mm1"
    (fault,) = run.faults
    assert fault.host == "p1" and fault.during == during
    assert fault.unpinned == 4
    assert fault.when == T0 + (DEADLINE if variant == "gru" else 34 + DEADLINE)
    names = {"p1:xpmem@p1:p0/mm1"} | ({"p1:gru@p1:p0/mm1"} if variant == "gru" else set())
    assert set(fault.notifiers) == names
    assert r["pins_after"] == 0 and r["smap_after"] == 0
    assert r["failures"] == {"callout": 1}  # one deadline wait, never a second
    assert r["munmap2"] == 34 + 2  # the fenced notifiers cost nothing
    assert r["dead_calls_took"] == 0.0
    # gru2 unregister from p2: request 1 + ->release round trip 2 + reply 1; exit: no remote
    # notifier left but the fenced ones, which return at once
    assert r["unreg2"] == 4.0
    assert r["exit"] == 0.0 and r["exit_t"].release_us == 0.0 and r["exit_t"].srcu_wait_us == 0.0
    assert run.violations == []
    assert r["sweep"] == [] and r["free"] == 65536
    if variant == "gru":
        # p1's GRU handler ran on after p1 died; it ended normally, nothing to report
        assert r["orphans"] == []


def test_crash_before_any_callout_fences_at_the_first_callout_only():
    # p1 is dead before the munmap: the first callout to it waits out the deadline and fences
    # p1; every later callout to any notifier of p1 returns at once
    async def wl(c: SimCluster) -> list[float]:
        a = c.partition("p0")
        mm = await _mm(c, "p0", 64)
        await c.gru("p1", "p0", mm)
        await c.gru("p1", "p0", mm, name="second")
        await c.runtime.sleep(50.0 - c.runtime.now())
        out = []
        for k in range(3):
            took, _ = await _timed(c.runtime, vmops.munmap(a, mm, BASE + k * 8 * PAGE_SIZE, 8 * PAGE_SIZE))
            out.append(took)
        await vmops.exit_mmap(a, mm)
        return out

    cfg = SimConfig(partitions=2, hop_latency=1.0, deadline_us=300.0, crashes={"p1": 10.0})
    run = run_sim(cfg, wl)
    assert run.result == [300.0, 0.0, 0.0]
    (fault,) = run.faults
    assert fault.host == "p1" and fault.unpinned == 0 and len(fault.notifiers) == 2
    assert run.violations == []


# -- 5. loss --------------------------------------------------------------------------------------


async def _lossy_gups(c: SimCluster) -> dict[str, Any]:
    """40 remote get_user_pages from p1 on an mm of p0, each timed."""
    mm = await _mm(c, "p0", 8)
    port = c.owner_port("p1", "p0")
    outcome = []
    for k in range(40):
        t0 = c.runtime.now()
        try:
            await port.get_user_pages(mm.id, BASE + (k % 8) * PAGE_SIZE, 1, write=False, pin=False)
            outcome.append(("ok", c.runtime.now() - t0))
        except Unreachable as e:
            outcome.append(("lost", c.runtime.now() - t0, "lost" in str(e)))
    return {"outcome": outcome, "failures": dict(c.interconnect.failures)}


def test_loss_fails_calls_at_exactly_the_deadline_deterministically_per_seed():
    cfg = lambda seed: SimConfig(partitions=2, hops=2, hop_latency=1.0, loss=0.5, deadline_us=250.0, seed=seed)
    r1 = run_sim(cfg(3), _lossy_gups)
    out = r1.result["outcome"]
    ok = [o for o in out if o[0] == "ok"]
    lost = [o for o in out if o[0] == "lost"]
    assert ok and lost
    assert all(o[1] == 4.0 for o in ok)  # 2 hops each way
    assert all(o[1] == 250.0 and o[2] for o in lost)
    assert r1.result["failures"] == {"fault": len(lost)}
    assert r1.virtual_time_us == 4.0 * len(ok) + 250.0 * len(lost)
    r2 = run_sim(cfg(3), _lossy_gups)
    assert r2.result == r1.result and r2.trace_digest == r1.trace_digest
    r3 = run_sim(cfg(4), _lossy_gups)
    assert [o[0] for o in r3.result["outcome"]] != [o[0] for o in out]


def test_lost_callout_fences_a_live_partition_which_then_cannot_reach_the_owner():
    # with loss every callout can time out; a fenced partition stays fenced even though alive
    async def wl(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        mm = await _mm(c, "p0", 64)
        ic = c.interconnect
        ic.loss = 0.0
        gru = await c.gru("p1", "p0", mm)
        await gru.access(BASE)
        ic.loss = 0.99
        took, _ = await _timed(c.runtime, vmops.munmap(a, mm, BASE + PAGE_SIZE, PAGE_SIZE))
        ic.loss = 0.0
        with pytest.raises(Unreachable, match="fenced"):
            await gru.access(BASE)  # TLB hit, but the owner refuses the DMA of a fenced host
        with pytest.raises(Unreachable, match="fenced"):
            await gru.access(BASE + 2 * PAGE_SIZE)  # TLB miss: GUP refused
        await vmops.exit_mmap(a, mm)
        return {"took": took, "alive": ic.alive("p1"), "sweep": a.check_invariants(final=True)}

    run = run_sim(SimConfig(partitions=2, hop_latency=1.0, deadline_us=400.0, seed=1), wl)
    assert run.result["took"] == 400.0  # range_start lost: deadline; range_end: fenced, at once
    assert run.result["alive"] is True
    assert [f.host for f in run.faults] == ["p1"]
    assert run.violations == [] and run.result["sweep"] == []


def test_a_lost_reply_to_a_pinning_gup_does_not_leak_the_pin():
    async def wl(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        mm = await _mm(c, "p0", 8)
        port = c.owner_port("p1", "p0")
        got, replies_lost = [], 0
        for k in range(8):
            try:
                got += [r.pfn for r in await port.get_user_pages(mm.id, BASE + k * PAGE_SIZE, 1, write=False, pin=True)]
            except Unreachable as e:
                replies_lost += "reply lost" in str(e)
        c.interconnect.loss = 0.0
        await port.put_user_pages(mm.id, got)  # the secondary gives back every pin it knows of
        await vmops.exit_mmap(a, mm)
        return {"replies_lost": replies_lost, "sweep": [str(v) for v in a.check_invariants(final=True)]}

    r = run_sim(SimConfig(partitions=2, hop_latency=1.0, loss=0.3, deadline_us=100.0, seed=0), wl).result
    assert r["replies_lost"] >= 1  # the case under test happened
    assert r["sweep"] == []


# -- 6. atomic ops cannot be honoured by a remote secondary --------------------------------------


class YoungNotifier(MmuNotifier):
    def __init__(self, name: str):
        super().__init__(name)
        self.calls = 0

    def clear_flush_young(self, mm, address):  # type: ignore[no-untyped-def]
        self.calls += 1
        return 0


class ChangePteNotifier(MmuNotifier):
    def __init__(self, name: str):
        super().__init__(name)
        self.calls = 0

    def change_pte(self, mm, address, pte):  # type: ignore[no-untyped-def]
        self.calls += 1


@pytest.mark.parametrize("op", ["clear_flush_young", "change_pte"])
def test_remote_atomic_op_raises_sleeping_in_atomic_context(op):
    async def wl(c: SimCluster) -> dict[str, Any]:
        a = c.partition("p0")
        mm = await _mm(c, "p0", 4)
        mn = YoungNotifier("young") if op == "clear_flush_young" else ChangePteNotifier("cow")
        await c.owner_port("p1", "p0").register(mn, mm.id)
        t0 = c.runtime.now()
        with pytest.raises(SleepingInAtomicContext) as ei:
            if op == "clear_flush_young":
                await vmops.reclaim(a, mm, BASE, PAGE_SIZE)
            else:
                await vmops.fork(a, mm)
                await vmops.touch(a, mm, BASE, write=True)  # COW: set_pte_at_notify
        return {"msg": str(ei.value), "calls": mn.calls, "atomic": in_atomic(), "took": c.runtime.now() - t0}

    r = run_sim(SimConfig(partitions=2, hop_latency=1.0), wl).result
    assert op in r["msg"] and "p1:" in r["msg"] and "atomic" in r["msg"]
    assert r["calls"] == 0  # the secondary never ran: the call could not even leave p0
    assert r["atomic"] is False  # the atomic sections were unwound
    assert r["took"] == 0.0


# -- 7. SimConfig validation ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs, key, shown",
    [
        ({"partitions": 0}, "partitions", "0"),
        ({"partitions": True}, "partitions", "True"),
        ({"scheduler": "lifo"}, "scheduler", "'lifo'"),
        ({"srcu_scope": "x"}, "srcu_scope", "'x'"),
        ({"crashes": {"p9": 1}}, "crashes.p9", "'p9'"),
        ({"hop_latency": {"dist": "pareto", "scale": -1}}, "hop_latency", "-1"),
        ({"hop_latency": {"dist": "pareto", "scale": -1, "alpha": 1.5}}, "hop_latency.scale", "-1"),
        ({"callout_latency": {"dist": "lognormal", "median": 2, "sigma": 0}}, "callout_latency.sigma", "0"),
        ({"fanout": "broadcast"}, "fanout", "'broadcast'"),
        ({"topology": "torus"}, "topology", "'torus'"),
        ({"trace": "verbose"}, "trace", "'verbose'"),
        ({"hops": 0}, "hops", "0"),
        ({"seed": 1.5}, "seed", "1.5"),
        ({"jiffy_us": 0}, "jiffy_us", "0"),
        # validated when the config is made, not when a run builds the interconnect
        ({"loss": 1.5}, "loss", "1.5"),
        ({"loss": -0.1}, "loss", "-0.1"),
        ({"deadline_us": 0}, "deadline_us", "0"),
        ({"per_byte_us": -1}, "per_byte_us", "-1"),
        ({"crashes": {"p1": -5}}, "crashes.p1", "-5"),
        ({"crashes": {"p1": "soon"}}, "crashes.p1", "'soon'"),
        ({"jiffy_us": "x"}, "jiffy_us", "'x'"),
    ],
)
def test_sim_config_rejects_bad_values_naming_key_and_value(kwargs, key, shown):
    with pytest.raises(ValueError) as ei:
        SimConfig(**kwargs)
    msg = str(ei.value)
    assert key in msg and shown in msg, msg


def test_sim_config_accepts_good_values():
    cfg = SimConfig(partitions=3, crashes={"p2": 0}, hop_latency={"dist": "uniform", "low": 1, "high": 2}, loss=0.0)
    assert cfg.names == ["p0", "p1", "p2"]
    assert cfg.hop_dist == LatencyDist.uniform(1, 2) and cfg.callout_dist is None


# -- 8. SimInterconnect basics ---------------------------------------------------------------------


class Echo:
    def __init__(self, rt: Runtime):
        self.rt = rt
        self.handled: list[tuple[float, Any]] = []

    async def echo(self, x: Any, work_us: float = 0.0) -> Any:
        self.handled.append((self.rt.now(), x))
        if work_us:
            await self.rt.sleep(work_us)
        return x

    async def boom(self, work_us: float) -> None:
        await self.rt.sleep(work_us)
        raise RuntimeError("handler failed after its caller left")


def _net(rt: Runtime, topo: Topology, *, deadline_us: float = 1_000.0, per_hop: float = 1.0) -> tuple[SimInterconnect, dict[str, Echo]]:
    import random

    ic = SimInterconnect(rt, topo, LatencyModel(LatencyDist.constant(per_hop)), random.Random(0), deadline_us=deadline_us)
    echoes = {}
    for name in topo.names:
        echoes[name] = Echo(rt)
        ic.serve(name, "echo", echoes[name])
    return ic, echoes


def test_interconnect_one_way_latency_is_hops_times_per_hop(vrun):
    async def body(rt: Runtime) -> None:
        ic, echoes = _net(rt, Topology.uniform(["a", "b", "c"], hops=3), per_hop=1.5)
        took, r = await _timed(rt, ic.call("a", "b", "echo", "echo", 7))
        assert (took, r) == (9.0, 7)
        assert echoes["b"].handled == [(4.5, 7)]  # the request arrived one way later
        took, _ = await _timed(rt, ic.call("b", "c", "echo", "echo", 8, 10.0))
        assert took == 9.0 + 10.0
        assert ic.messages == {"rpc": 2} and not ic.failures

        ring, _ = _net(rt, Topology.ring([f"r{i}" for i in range(6)]))
        for dst, hops in (("r1", 1), ("r2", 2), ("r3", 3), ("r4", 2), ("r5", 1)):
            took, _ = await _timed(rt, ring.call("r0", dst, "echo", "echo", dst))
            assert took == 2.0 * hops, dst
        took, _ = await _timed(rt, ring.call("r0", "r0", "echo", "echo", 0))
        assert took == 0.0  # to itself: no hop

    vrun(body)


def test_interconnect_deadline_when_the_handler_is_too_slow(vrun):
    async def body(rt: Runtime) -> None:
        ic, echoes = _net(rt, Topology.uniform(["a", "b"], hops=1), deadline_us=100.0)
        t0 = rt.now()
        with pytest.raises(Unreachable, match="no answer within the deadline of 100 us"):
            await ic.call("a", "b", "echo", "boom", 500.0)
        assert rt.now() - t0 == 100.0
        assert ic.orphan_errors == []  # the handler is still running
        # a reply that would arrive after the deadline is lost too: 1 + 98.5 + 1 > 100
        with pytest.raises(Unreachable, match="deadline exceeded"):
            await ic.call("a", "b", "echo", "echo", "late", 98.5)
        assert rt.now() - t0 == 200.0
        # 1 + 98 + 1 == 100: just in time
        took, r = await _timed(rt, ic.call("a", "b", "echo", "echo", "ok", 98.0))
        assert (took, r) == (100.0, "ok")
        await rt.sleep(1_000.0)  # the slow handler fails long after its caller left
        (err,) = ic.orphan_errors
        assert isinstance(err, RuntimeError) and "after its caller left" in str(err)
        assert ic.failures == {"rpc": 2}

    vrun(body)


def test_interconnect_crashed_source_raises_at_once_and_crashed_destination_at_the_deadline(vrun):
    async def body(rt: Runtime) -> None:
        ic, echoes = _net(rt, Topology.uniform(["a", "b", "c"], hops=2), deadline_us=50.0)
        ic.crash("a")
        assert not ic.alive("a") and ic.down == {"a": 0.0}
        t0 = rt.now()
        with pytest.raises(Unreachable, match="a is down and cannot send"):
            await ic.call("a", "b", "echo", "echo", 1)
        assert rt.now() == t0 and ic.messages == {}  # nothing was sent
        with pytest.raises(Unreachable, match="a is down"):
            await ic.call("b", "a", "echo", "echo", 1)
        assert rt.now() - t0 == 50.0 and echoes["a"].handled == []
        # the destination dies while handling: no reply, Unreachable at the deadline
        ic.crash_at("c", rt.now() + 10.0)
        t1 = rt.now()
        with pytest.raises(Unreachable, match="reply lost or c went down"):
            await ic.call("b", "c", "echo", "echo", 2, 20.0)
        assert rt.now() - t1 == 50.0 and echoes["c"].handled == [(t1 + 2.0, 2)]
        # the source dies while waiting for the reply
        ic2, _ = _net(rt, Topology.uniform(["x", "y"]), deadline_us=50.0)
        ic2.crash_at("x", rt.now() + 3.0)
        t2 = rt.now()
        with pytest.raises(Unreachable, match="x went down waiting"):
            await ic2.call("x", "y", "echo", "echo", 3, 5.0)
        assert rt.now() - t2 == 7.0
        with pytest.raises(ValueError, match="unknown partition 'zz'"):
            ic.crash_at("zz", 1.0)
        with pytest.raises(ValueError, match="unknown partition 'zz'"):
            ic.crash("zz")

    vrun(body)


def test_a_stalled_partition_answers_at_the_end_of_its_stall_and_a_deadline_bounds_the_wait(vrun):
    async def body(rt: Runtime) -> None:
        ic, echoes = _net(rt, Topology.uniform(["a", "b", "c"], hops=1), deadline_us=math.inf)
        ic.stall_at("b", 100.0, 1_000.0)  # b answers nothing in [100, 1100)
        took, r = await _timed(rt, ic.call("a", "b", "echo", "echo", "before"))
        assert (took, r) == (2.0, "before")  # before the window: as ever
        await rt.sleep(200.0 - rt.now())
        took, r = await _timed(rt, ic.call("a", "b", "echo", "echo", "held"))
        # arrives at 201, held until 1100, answered one way later: no deadline, no one gives up
        assert (took, r) == (1_100.0 + 1.0 - 200.0, "held") and echoes["b"].handled[-1] == (1_100.0, "held")
        took, r = await _timed(rt, ic.call("a", "c", "echo", "echo", "other"))
        assert took == 2.0  # only b stalls: its links and everyone else's stay up
        took, _ = await _timed(rt, ic.call("a", "b", "echo", "echo", "after"))
        assert took == 2.0 and not ic.failures

        # with a deadline, the caller gives up at it (and the held request is still handled)
        bounded, held = _net(rt, Topology.uniform(["a", "b"], hops=1), deadline_us=50.0)
        bounded.stall_at("b", rt.now(), 500.0)
        t0 = rt.now()
        with pytest.raises(Unreachable, match="no answer within the deadline of 50 us"):
            await bounded.call("a", "b", "echo", "echo", "late")
        assert rt.now() - t0 == 50.0 and held["b"].handled == []
        await rt.sleep(1_000.0)
        assert held["b"].handled == [(t0 + 500.0, "late")] and bounded.failures == {"rpc": 1}
        with pytest.raises(ValueError, match="unknown partition 'zz'"):
            ic.stall_at("zz", 0.0, 1.0)
        with pytest.raises(ValueError, match=r"stalls.b: expected start >= 0 and length > 0 \(us\), got 0.0, 0.0"):
            ic.stall_at("b", 0.0, 0.0)

    vrun(body)


def test_without_a_deadline_a_call_to_a_dead_partition_waits_for_ever(vrun):
    # the kernel's caller would sit in D state: the run ends in Deadlock, it does not return
    async def body(rt: Runtime) -> None:
        ic, _ = _net(rt, Topology.uniform(["a", "b"], hops=1), deadline_us=math.inf)
        ic.crash("b")
        await ic.call("a", "b", "echo", "echo", 1)

    with pytest.raises(Deadlock):
        vrun(body)


def test_sim_config_checks_stalls_and_takes_an_infinite_deadline():
    assert SimConfig(deadline_us=math.inf, stalls={"p1": (0.0, 5.0)}).stalls == {"p1": (0.0, 5.0)}
    with pytest.raises(ValueError, match=r"sim config stalls.p9: expected a partition name \(p0, p1\), got 'p9'"):
        SimConfig(stalls={"p9": (0.0, 1.0)})
    with pytest.raises(ValueError, match=r"sim config stalls.p1.length: expected a positive number, got 0"):
        SimConfig(stalls={"p1": (0.0, 0)})
    with pytest.raises(ValueError, match=r"sim config stalls.p1: expected \(start, length\) in us, got 5"):
        SimConfig(stalls={"p1": 5})
    with pytest.raises(ValueError, match="sim config deadline_us: expected a positive number, got 0"):
        SimConfig(deadline_us=0)


def test_interconnect_rejects_bad_parameters(vrun):
    async def body(rt: Runtime) -> None:
        import random

        topo = Topology.uniform(["a", "b"])
        lat = LatencyModel(LatencyDist.constant(1.0))
        with pytest.raises(ValueError, match="loss must be in"):
            SimInterconnect(rt, topo, lat, random.Random(0), loss=1.0)
        with pytest.raises(ValueError, match="deadline_us must be positive"):
            SimInterconnect(rt, topo, lat, random.Random(0), deadline_us=0)
        ic = SimInterconnect(rt, topo, lat, random.Random(0))
        with pytest.raises(ValueError, match="partition 'q' is not in the topology"):
            ic.serve("q", "echo", object())

    vrun(body)


# -- 9. vtime policies ---------------------------------------------------------------------------


async def _never() -> None:
    await asyncio.get_running_loop().create_future()


@pytest.mark.parametrize("policy", [lambda: RandomPolicy(3), lambda: PctPolicy(3)], ids=["random", "pct"])
def test_deadlock_is_raised_under_the_seeded_policies_too(policy):
    async def main() -> None:
        a = asyncio.get_running_loop().create_task(_never())
        await asyncio.sleep(0)
        await a

    with pytest.raises(Deadlock, match="every task is waiting"):
        run_virtual(main(), loop=VirtualTimeLoop(policy=policy()))


def _toy(policy: Any) -> tuple[list[str], list[int], str]:
    order: list[str] = []

    async def worker(name: str) -> None:
        for i in range(3):
            order.append(f"{name}{i}")
            await asyncio.sleep(0)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        ts = [loop.create_task(worker(n), name=n) for n in "abc"]
        for t in ts:
            await t

    loop = VirtualTimeLoop(policy=policy, trace=Trace("hash"))
    run_virtual(main(), loop=loop)
    return order, list(loop.decisions), loop.trace.digest()


def test_seeded_policies_interleave_differently_from_fifo_and_replay_exactly():
    fifo, dec, fifo_digest = _toy(None)
    assert fifo == ["a0", "b0", "c0", "a1", "b1", "c1", "a2", "b2", "c2"] and dec == []
    rnd, rdec, rdig = _toy(RandomPolicy(1))
    pct, pdec, pdig = _toy(PctPolicy(1))
    for order in (rnd, pct):
        assert sorted(order) == sorted(fifo) and order != fifo
        for n in "abc":  # each task's own steps stay in program order
            assert [s for s in order if s[0] == n] == [f"{n}0", f"{n}1", f"{n}2"]
    assert len({fifo_digest, rdig, pdig}) == 3
    # PCT runs the highest-priority task while it can: with no change point hit this early,
    # each task runs all its steps in one go
    assert [pct[i][0] for i in (0, 3, 6)] == [pct[i][0] for i in (2, 5, 8)]
    # the same seed: the same interleaving; the recorded decisions replay it
    assert _toy(RandomPolicy(1))[0] == rnd and _toy(PctPolicy(1))[0] == pct
    assert _toy(ReplayPolicy(rdec))[0] == rnd and _toy(ReplayPolicy(pdec))[0] == pct
    assert _toy(ReplayPolicy(rdec))[2] == rdig
    assert {tuple(_toy(RandomPolicy(s))[0]) for s in range(8)} != {tuple(rnd)}


def test_a_diverged_replay_raises_once_and_leaves_no_task_behind():
    # decisions cut short: the replay runs out in the middle of the run
    _, rdec, _ = _toy(RandomPolicy(1))
    loop = VirtualTimeLoop(policy=ReplayPolicy(rdec[:2]))
    order: list[str] = []

    async def worker(name: str) -> None:
        for i in range(3):
            order.append(f"{name}{i}")
            await asyncio.sleep(0)

    async def main() -> None:
        ts = [asyncio.get_running_loop().create_task(worker(n), name=n) for n in "abc"]
        for t in ts:
            await t

    with pytest.raises(ReplayDiverged, match="ran out of decisions after 2") as ei:
        run_virtual(main(), loop=loop)
    assert ei.value.__context__ is None  # not raised a second time while cleaning up
    assert asyncio.all_tasks(loop) == set()  # every task was cancelled and finished
    assert loop.is_closed()

    # the same through run_sim, with a workload of many tasks and remote calls
    run = run_sim(det_config("random", 11), det_workload)
    with pytest.raises(ReplayDiverged) as ei:
        run_sim(det_config("random", 11), det_workload, replay=run.decisions[: len(run.decisions) // 2])
    assert ei.value.__context__ is None
