"""Teardown options of the notifier core on the sim backend: ``put`` (mmu_notifier_put of Linux
5.4: no ->release callout, no synchronize_srcu, the notifier freed from call_srcu), the
expedited grace period, and the core's timings of callouts and invalidate ranges."""

from __future__ import annotations

from typing import Any

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.mm import PAGE_SIZE

BASE = 0x10000000
L = 400.0  # one-way callout latency, us


async def _mm(c: SimCluster, npages: int = 4):
    a = c.partition("p0")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(a, mm, BASE, npages * PAGE_SIZE)
    return a, mm


async def _teardown_during_a_long_callout(c: SimCluster, how: str) -> dict[str, Any]:
    """A munmap on one mm keeps a GRU callout in flight (2 x L on the wire) while a notifier on
    another mm of p0 is torn down ``how`` (unregister or put)."""
    a, busy = await _mm(c)
    await c.gru("p1", "p0", busy, name="busy")
    _, quiet = await _mm(c)
    target = await c.gru("p1", "p0", quiet, name="target")
    munmap = c.runtime.spawn(vmops.munmap(a, busy, BASE, PAGE_SIZE), name="munmap")
    await c.runtime.sleep(10.0)  # the munmap's range_start is on the wire now
    t0 = c.runtime.now()
    timing = await (target.unregister() if how == "unregister" else target.put())
    out = {"took": c.runtime.now() - t0, "timing": timing, "count_after_return": quiet.count,
           "released_by_callout": target.ms_released}
    await munmap
    await c.runtime.sleep(5000.0)  # past the grace period: call_srcu's callback has run
    out["count_at_end"] = quiet.count
    out["violations"] = a.check_invariants()
    return out


def test_put_returns_at_once_where_unregister_waits_for_a_callout_on_another_mm():
    cfg = SimConfig(partitions=2, hop_latency=0.0, callout_latency=L)
    unreg = run_sim(cfg, lambda c: _teardown_during_a_long_callout(c, "unregister")).result
    put = run_sim(cfg, lambda c: _teardown_during_a_long_callout(c, "put")).result
    # unregister: ->release crosses the wire (2 L), then synchronize_srcu outlasts the munmap's callout
    assert unreg["timing"].srcu_wait_us > L and unreg["took"] > 2 * L
    # put: the driver tore itself down locally; no callout, no wait
    assert (put["timing"].release_us, put["timing"].srcu_wait_us) == (0.0, 0.0)
    assert put["took"] <= 2 * L + 1.0  # just the request's round trip: nothing waited on the munmap
    assert put["took"] * 2 < unreg["took"]
    # the notifier pins the mm until call_srcu frees it, after the grace period
    assert put["count_after_return"] == put["count_at_end"] + 1
    assert put["violations"] == [] and unreg["violations"] == []


def test_expedited_catches_a_short_reader_itself_but_not_a_long_one():
    """v3.10's synchronize_srcu_expedited() checks for readers 12 times, 5 us apart, before it
    leaves the grace period to the worker (synchronize_srcu(): twice). A reader shorter than
    that is caught by the caller, with no jiffy of polling; a long one is not, and then the
    expedited caller has only spent longer trying."""
    def wait(latency: float, expedited: bool) -> float:
        cfg = SimConfig(partitions=2, hop_latency=0.0, callout_latency=latency, srcu_expedited=expedited, jiffy_us=1000.0)
        return run_sim(cfg, lambda c: _teardown_during_a_long_callout(c, "unregister")).result["timing"].srcu_wait_us

    short_normal, short_fast = wait(10.0, False), wait(10.0, True)
    assert 0 < short_fast < 60.0 < short_normal  # the reader (about 20 us) ends within the 12 tries
    long_normal, long_fast = wait(L, False), wait(L, True)
    assert long_fast >= long_normal > 2 * L


def test_core_timings_measure_callout_round_trips_and_invalidate_ranges_exactly():
    async def wl(c: SimCluster) -> tuple[list, list]:
        a, mm = await _mm(c, 16)
        await c.gru("p1", "p0", mm)
        a.core.timings.enabled = True
        await vmops.munmap(a, mm, BASE, 16 * PAGE_SIZE)
        return a.core.timings.callouts, a.core.timings.ranges

    # 3 hops of 1 us each way; the GRU flushes 16 pages at 2 us in range_start
    callouts, ranges = run_sim(SimConfig(partitions=2, hops=3, hop_latency=1.0), wl).result
    assert [(op, us) for _, us, _, op in callouts] == [("invalidate_range_start", 38.0), ("invalidate_range_end", 6.0)]
    assert [us for _, us, _, _ in ranges] == [44.0]
