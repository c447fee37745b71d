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

from cluster.context import Cluster, PartitionContext
from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.runtime import current_cpu
from nodes.secondary.gru import DEFAULT_FLUSH_PER_PAGE_US
from workloads import activity

BASE = 0x10000000
BACKENDS = ("sim", "ray")


@dataclass
class DemoResult:
    srcu_scope: str
    unregister_srcu_wait_us: list[float]
    unregister_total_us: list[float]
    longest_callout_us: float  # the longest SRCU reader a stream makes: range_start's round trip
    violations: list[str]
    trace_digest: str  # sim runs only: the interleaving's identity
    backend: str = "sim"


# -- code that runs on a partition (``cluster.on``): module-level, plain data in and out, so
# the ray backend can ship it to the partition's actor -----------------------------------------


async def _new_mm(ctx: PartitionContext) -> int:
    return ctx.partition.create_mm().id


async def _map(ctx: PartitionContext, mm_id: int, pages: int, cpu: int) -> None:
    current_cpu.set(cpu)
    p = ctx.partition
    await vmops.mmap(p, p.mm(mm_id), BASE, pages * PAGE_SIZE)
    await vmops.populate(p, p.mm(mm_id), BASE, pages * PAGE_SIZE)


async def _unmap(ctx: PartitionContext, mm_id: int, pages: int, cpu: int) -> None:
    current_cpu.set(cpu)
    await vmops.munmap(ctx.partition, ctx.partition.mm(mm_id), BASE, pages * PAGE_SIZE)


async def _touch(ctx: PartitionContext, name: str, pages: int) -> None:
    """The GRU drops in one page in every 64: remote faults over the interconnect."""
    gru = ctx.objects[name]
    for a in range(BASE, BASE + pages * PAGE_SIZE, PAGE_SIZE * 64):
        await gru.access(a)


async def _idle(ctx: PartitionContext, us: float) -> None:
    await ctx.runtime.sleep(us)


# -- the workload -------------------------------------------------------------------------------


async def hang_workload(c: Cluster, streams: int, pages: int, unregisters: int, cpus: int,
                        seed: int) -> tuple[list[float], list[float]]:
    """K streams of remote invalidations on p0 and repeated unregisters of a notifier on
    another mm of p0; returns (srcu waits, unregister totals) in microseconds. Runs on either
    backend: every step is ``c.on`` the partition it belongs to."""
    stop = False

    async def stream(k: int) -> None:
        cpu = k % cpus
        mm_id = await c.on("p0", _new_mm)
        name = f"gru{k}"
        await c.on("p1", activity.attach, "gru", "p0", mm_id, name, pages)
        await c.on("p0", _idle, 37.0 * k)  # staggered starts
        phase = 0
        while not stop:
            await c.on("p0", _map, mm_id, pages, cpu)
            await c.on("p1", _touch, name, pages)
            await c.on("p0", _idle, 50.0 * (1 + (k + phase) % 3))  # a little compute between rounds
            await c.on("p0", _unmap, mm_id, pages, cpu)
            phase += 1
        await c.on("p1", activity.teardown, name, "unregister")
        await c.on("p0", activity.exit_mm, mm_id)

    tasks = [c.runtime.spawn(stream(k), name=f"stream{k}") for k in range(streams)]
    measured = await c.on("p0", _new_mm)
    await c.on("p0", _map, measured, 1, 0)
    waits, totals = [], []
    rng = random.Random(f"hang-workload-{seed}")  # the workload's own seeded stream
    await c.on("p0", _idle, 1000.0)  # let the streams get going
    for i in range(unregisters):
        await c.on("p0", _idle, rng.uniform(500.0, 1500.0))  # random phase against the streams
        await c.on("p1", activity.attach, "gru", "p0", measured, f"measured{i}", 1)
        total, _, wait = await c.on("p1", activity.teardown, f"measured{i}", "unregister")
        waits.append(wait)
        totals.append(total)
    stop = True
    for task in tasks:
        await task
    await c.on("p0", activity.exit_mm, measured)
    return waits, totals


def run_demo(
    streams: int = 8,
    pages: int = 512,
    unregisters: int = 50,
    cpus: int = 4,
    callout_latency_us: float = 100.0,
    scopes: tuple[str, ...] = ("global", "per_mm"),
    seed: int = 0,
    backend: str = "sim",
    address: str | None = None,
) -> list[DemoResult]:
    """Run the demo once per SRCU scope, on the sim backend (virtual time, the callout latency
    modelled each way) or the ray backend (two partition actors on local Ray or the cluster at
    ``address``; real time, with the callout latency injected once per request)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    nframes = (streams + 2) * pages + 4096

    async def workload(c: Cluster) -> tuple[list[float], list[float]]:
        return await hang_workload(c, streams, pages, unregisters, cpus, seed)

    results = []
    if backend == "sim":
        for scope in scopes:
            config = SimConfig(partitions=2, cpus=cpus, nframes=nframes, srcu_scope=scope, hop_latency=0.0,
                               callout_latency=callout_latency_us, seed=seed)
            run = run_sim(config, workload)
            waits, totals = run.result
            longest = 2 * callout_latency_us + min(pages, 1024) * DEFAULT_FLUSH_PER_PAGE_US
            results.append(DemoResult(scope, waits, totals, longest, run.violations, run.trace_digest, "sim"))
        return results
    import ray

    from cluster.ray_backend import RayConfig, ensure_ray, run_ray

    configs = [RayConfig(partitions=2, cpus=cpus, nframes=nframes, srcu_scope=scope, address=address,
                         hop_latency_us=callout_latency_us) for scope in scopes]
    started = ensure_ray(configs[0])  # one Ray session for every scope
    try:
        for config in configs:
            rrun = run_ray(config, workload)
            waits, totals = rrun.result
            longest = callout_latency_us + min(pages, 1024) * DEFAULT_FLUSH_PER_PAGE_US  # plus the real wire
            violations = rrun.violations + [f"report problem: {p}" for p in rrun.report_problems]
            results.append(DemoResult(config.srcu_scope, waits, totals, longest, violations, "", "ray"))
    finally:
        if started:
            ray.shutdown()
    return results


def format_results(results: list[DemoResult]) -> str:
    clock = "virtual time" if results[0].backend == "sim" else "wall time, Ray actors over gRPC"
    lines = [
        f"{'srcu scope':<10} {'n':>4} {'p50 us':>10} {'p90 us':>10} {'max us':>10}  "
        f"(unregister on p0: synchronize_srcu wait, {clock}; longest callout "
        f"{'' if results[0].backend == 'sim' else '>= '}{results[0].longest_callout_us:.0f} us)"
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
