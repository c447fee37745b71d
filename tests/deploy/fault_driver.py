"""The driver of the multi-host fault test: ``python fault_driver.py ADDRESS``, run inside the
head's host (``ip netns exec``), on a Ray cluster of three nodes.

Three partitions, one per node (``run_ray``, spread placement): p0 on the driver's node owns an
mm of ``NPAGES`` pages; p1 maps four of them with a quick GRU, p2 with a slow one (a TLB flush
takes ``FLUSH_PER_PAGE_US`` a page, so invalidating the range takes ``NPAGES`` times that:
well inside the gRPC deadline, ``DEADLINE_US``). p0 unmaps the range; as soon as p2 is inside
``invalidate_range_start`` (its GRU's range is active and its flush still running) this prints
one JSON line::

    {"event": "in_flight", "partition": "p2", "address": "HOST:PORT"}

and the test takes p2's host off the network. The callout in flight fails (deadline), p0
fences p2 and finishes the munmap; then p0's process exits (``exit_mmap``), and the last line
printed is the outcome::

    {"event": "done", "faults": [...], "lost": [...], "violations": [...], "placement": {...},
     "result": {...}}

Without the fault, p2's flush ends in ``NPAGES * FLUSH_PER_PAGE_US`` and the run has no fault at
all: a fault in the outcome is the link going down. Nothing here sleeps to synchronise: the
driver polls p2's GRU state, the test waits for the line.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from dataclasses import asdict
from typing import Any

import ray

from cluster.ray_backend import RayCluster, RayConfig, run_ray
from nodes import vmops
from nodes.mm import PAGE_SIZE

BASE = 0x10000000
NPAGES = 8
FLUSH_PER_PAGE_US = 250_000.0  # the slow GRU: 2 s for the whole range
DEADLINE_US = 6_000_000.0  # of every gRPC call between partitions: 3x the slow flush
POLL_LIMIT_S = 60.0  # a bound on waiting for a condition, not a measurement
NODES = 3


def emit(doc: dict[str, Any]) -> None:
    print(json.dumps(doc), flush=True)


# -- run on the partitions (this module is __main__: cloudpickle sends these by value) ----------


async def mapped_mm(ctx, npages: int) -> int:
    mm = ctx.partition.create_mm()
    await vmops.mmap(ctx.partition, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(ctx.partition, mm, BASE, npages * PAGE_SIZE)
    return mm.id


async def gru_touch(ctx, owner: str, mm_id: int, name: str, npages: int, flush_per_page_us: float) -> int:
    gru = await ctx.gru(owner, mm_id, name, flush_per_page_us=flush_per_page_us)
    for i in range(npages):
        await gru.access(BASE + i * PAGE_SIZE)
    await ctx.flush_reports()
    return len(gru.tlb)


async def gru_state(ctx, name: str) -> dict[str, Any]:
    g = ctx.objects[name]
    return {"tlb": len(g.tlb), "range_active": g.ms_range_active, "flushes": g.stats.flushes,
            "released": g.ms_released}


async def munmap_all(ctx, mm_id: int, npages: int) -> None:
    await vmops.munmap(ctx.partition, ctx.partition.mm(mm_id), BASE, npages * PAGE_SIZE)


async def exit_mm(ctx, mm_id: int) -> dict[str, Any]:
    return asdict(await vmops.exit_mmap(ctx.partition, ctx.partition.mm(mm_id)))


# -- the driver ---------------------------------------------------------------------------------


async def workload(c: RayCluster) -> dict[str, Any]:
    mm_id = await c.on("p0", mapped_mm, NPAGES)
    out: dict[str, Any] = {
        "p1_tlb": await c.on("p1", gru_touch, "p0", mm_id, "fast", 4, 0.0),
        "p2_tlb": await c.on("p2", gru_touch, "p0", mm_id, "slow", 4, FLUSH_PER_PAGE_US),
    }
    munmap = asyncio.ensure_future(c.on("p0", munmap_all, mm_id, NPAGES))
    try:
        limit = time.monotonic() + POLL_LIMIT_S
        while True:
            seen = await c.on("p2", gru_state, "slow")
            if seen["range_active"] > 0:
                break
            if munmap.done() or time.monotonic() > limit:
                raise AssertionError(f"p2 never got invalidate_range_start; last seen {seen}, munmap done: {munmap.done()}")
            await asyncio.sleep(0.005)  # poll interval: the GRU's state, not the sleep, synchronises
        out["p2_in_flight"] = seen
        emit({"event": "in_flight", "partition": "p2", "address": c.addresses["p2"]})
        t0 = time.monotonic()
        await munmap  # p0's callout to p2 fails once p2's host is off the network: p0 fences p2
        out["munmap_after_signal_s"] = time.monotonic() - t0
    except BaseException:
        munmap.cancel()
        raise
    out["p1_after_munmap"] = await c.on("p1", gru_state, "fast")
    out["exit"] = await c.on("p0", exit_mm, mm_id)  # ->release reaches p1 only: p2 is fenced
    out["p1_after_exit"] = await c.on("p1", gru_state, "fast")
    return out


def main(address: str) -> int:
    ray.init(address=address, logging_level="WARNING")
    try:
        limit = time.monotonic() + POLL_LIMIT_S
        while len([n for n in ray.nodes() if n.get("Alive")]) < NODES:
            if time.monotonic() > limit:
                raise AssertionError(f"fewer than {NODES} alive Ray nodes after {POLL_LIMIT_S:g} s")
            time.sleep(0.1)  # poll interval
        config = RayConfig(address=address, partitions=3, nframes=4096, cpus=2, deadline_us=DEADLINE_US)
        run = run_ray(config, workload)
        emit({
            "event": "done",
            "faults": [asdict(f) for f in run.faults],
            "lost": run.lost,
            "violations": run.violations,
            "report_problems": run.report_problems,
            "placement": {name: {"node_id": node, "address": run.addresses[name]} for name, node in run.placement.items()},
            "result": run.result,
        })
        return 0
    finally:
        ray.shutdown()


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
