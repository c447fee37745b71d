"""The demo behind ``mmusim demo``: the global-SRCU hang across partitions, in virtual time.

Partition p0 owns every mm; the GRUs mapping them sit on partition p1, so every callout crosses
the interconnect (``callout_latency_us`` each way). Background streams each own an mm and keep
mapping, touching (the remote GRU drops translations in) and unmapping a range, so remote
``invalidate_range_start/end`` callouts (wire time plus a GRU flush of a few us per page) are
continuously in flight under p0's SRCU. Meanwhile a measured mm registers a remote GRU and
unregisters it again and again. With the kernel's global SRCU each unregister's
``synchronize_srcu()`` waits for whatever callout is in flight on *any* mm of p0; with a
per-mm SRCU it waits for nothing. The demo runs both and prints the waits side by side.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.runtime import current_cpu
from nodes.secondary.gru import DEFAULT_FLUSH_PER_PAGE_US

BASE = 0x10000000


@dataclass
class DemoResult:
    srcu_scope: str
    unregister_srcu_wait_us: list[float]
    unregister_total_us: list[float]
    longest_callout_us: float  # the longest SRCU reader a stream makes: range_start's round trip
    violations: list[str]
    trace_digest: str


async def hang_workload(c: SimCluster, streams: int, pages: int, unregisters: int) -> tuple[list[float], list[float]]:
    """K streams of remote invalidations on p0 and repeated unregisters of a notifier on
    another mm of p0; returns (srcu waits, unregister totals) in microseconds."""
    owner = c.partition("p0")
    ncpus = owner.ncpus
    stop = False

    async def stream(k: int) -> None:
        current_cpu.set(k % ncpus)
        mm = owner.create_mm()
        gru = await c.gru("p1", "p0", mm, name=f"gru{k}")
        await c.runtime.sleep(37.0 * k)  # staggered starts
        phase = 0
        while not stop:
            await vmops.mmap(owner, mm, BASE, pages * PAGE_SIZE)
            await vmops.populate(owner, mm, BASE, pages * PAGE_SIZE)
            for a in range(BASE, BASE + pages * PAGE_SIZE, PAGE_SIZE * 64):
                await gru.access(a)
            await c.runtime.sleep(50.0 * (1 + (k + phase) % 3))  # a little compute between rounds
            await vmops.munmap(owner, mm, BASE, pages * PAGE_SIZE)
            phase += 1
        await gru.unregister()
        await vmops.exit_mmap(owner, mm)

    tasks = [c.runtime.spawn(stream(k), name=f"stream{k}") for k in range(streams)]
    measured = owner.create_mm()
    await vmops.mmap(owner, measured, BASE, PAGE_SIZE)
    waits, totals = [], []
    rng = random.Random(f"hang-workload-{c.config.seed}")  # the workload's own seeded stream
    await c.runtime.sleep(1000.0)  # let the streams get going
    for i in range(unregisters):
        await c.runtime.sleep(rng.uniform(500.0, 1500.0))  # random phase against the streams
        gru = await c.gru("p1", "p0", measured, name=f"measured{i}")
        t = await gru.unregister()
        waits.append(t.srcu_wait_us)
        totals.append(t.total_us)
    stop = True
    for task in tasks:
        await task
    await vmops.exit_mmap(owner, measured)
    owner.check_invariants(final=True)
    return waits, totals


def run_demo(
    streams: int = 8,
    pages: int = 512,
    unregisters: int = 50,
    cpus: int = 4,
    callout_latency_us: float = 100.0,
    scopes: tuple[str, ...] = ("global", "per_mm"),
    seed: int = 0,
) -> list[DemoResult]:
    """Run the demo once per SRCU scope."""
    results = []
    for scope in scopes:
        config = SimConfig(
            partitions=2, cpus=cpus, nframes=(streams + 2) * pages + 4096, srcu_scope=scope,
            hop_latency=0.0, callout_latency=callout_latency_us, seed=seed,
        )

        async def workload(c: SimCluster) -> tuple[list[float], list[float]]:
            return await hang_workload(c, streams, pages, unregisters)

        run = run_sim(config, workload)
        waits, totals = run.result
        longest = 2 * callout_latency_us + min(pages, 1024) * DEFAULT_FLUSH_PER_PAGE_US
        results.append(DemoResult(scope, waits, totals, longest, run.violations, run.trace_digest))
    return results


def format_results(results: list[DemoResult]) -> str:
    lines = [
        f"{'srcu scope':<10} {'n':>4} {'p50 us':>10} {'p90 us':>10} {'max us':>10}  "
        f"(unregister on p0: synchronize_srcu wait; longest callout {results[0].longest_callout_us:.0f} us)"
    ]
    for r in results:
        w = np.asarray(r.unregister_srcu_wait_us)
        lines.append(
            f"{r.srcu_scope:<10} {len(w):>4} {np.percentile(w, 50):>10.1f} {np.percentile(w, 90):>10.1f} {w.max():>10.1f}"
        )
    for r in results:
        lines.append(f"invariants ({r.srcu_scope}): {len(r.violations)} violation(s)")
        lines.extend(f"  {v}" for v in r.violations[:10])
    return "\n".join(lines)
