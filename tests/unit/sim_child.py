"""A small but non-trivial sim workload, shared by test_sim_backend.py (in process) and run as
a script (in a separate process) to check that a seed gives the same trace digest and the
same metrics in any process, whatever PYTHONHASHSEED is.

    python sim_child.py SCHEDULER:SEED [SCHEDULER:SEED ...]

prints one JSON object: {"SCHEDULER:SEED": {"digest": ..., "metrics": ...}, ...}
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

if __name__ == "__main__":  # run as a script: make the repository importable
    sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import ModelError
from nodes.mm import PAGE_SIZE
from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

A = 0x10000000  # mm_a on p0: 64 pages
B = 0x20000000  # mm_b on p0: 32 pages (forked: COW faults)
C = 0x30000000  # mm_c on p1: 32 pages


def det_config(scheduler: str, seed: int) -> SimConfig:
    return SimConfig(
        partitions=3,
        nframes=4096,
        hop_latency={"dist": "lognormal", "median": 2, "sigma": 0.5},
        callout_latency={"dist": "uniform", "low": 0.0, "high": 3.0},
        jiffy_us=50.0,
        scheduler=scheduler,
        seed=seed,
    )


async def det_workload(c: SimCluster) -> dict[str, Any]:
    rt = c.runtime
    p0, p1 = c.partition("p0"), c.partition("p1")
    mm_a, mm_b, mm_c = p0.create_mm(), p0.create_mm(), p1.create_mm()
    for p, mm, base, n in ((p0, mm_a, A, 64), (p0, mm_b, B, 32), (p1, mm_c, C, 32)):
        await vmops.mmap(p, mm, base, n * PAGE_SIZE)
        await vmops.populate(p, mm, base, n * PAGE_SIZE)

    gru_a = await c.gru("p1", "p0", mm_a, flush_per_page_us=1.0)
    xp = await c.xpmem("p2", "p0", mm_a, zap_per_page_us=0.5)
    gru_b = await c.gru("p2", "p0", mm_b, name="gru_b")
    gru_c = await c.gru("p2", "p1", mm_c, flush_per_page_us=3.0)
    cred = XpmemCred(tgid=4242, uid=1000, gid=1000)
    segid = await xp.make(A + 16 * PAGE_SIZE, 32 * PAGE_SIZE, 0o600)
    att = await xp.attach(await xp.get(segid, XPMEM_RDWR, cred), 0, 32 * PAGE_SIZE, cred)

    m: dict[str, Any] = {"errors": {}, "ops": {}}

    def err(tag: str, e: BaseException) -> None:
        key = f"{tag}:{type(e).__name__}"
        m["errors"][key] = m["errors"].get(key, 0) + 1

    async def timed(tag: str, aw: Any) -> Any:
        t0 = rt.now()
        try:
            r = await aw
        except ModelError as e:
            err(tag, e)
            return None
        m["ops"][tag] = rt.now() - t0
        return r

    async def gru_reader(gru: Any, base: int, pages: list[int], tag: str) -> None:
        reads = 0
        for k in pages:
            try:
                await gru.access(base + k * PAGE_SIZE, write=bool(k % 3 == 0))
                reads += 1
            except ModelError as e:
                err(tag, e)
        m[f"{tag}.reads"] = reads

    async def xp_reader() -> None:
        reads = 0
        for k in (0, 1, 2, 3, 5, 8, 13, 21, 1, 2, 30, 31):
            try:
                await xp.access(att, att.vaddr + k * PAGE_SIZE, write=k % 2 == 1)
                reads += 1
            except ModelError as e:
                err("xp", e)
        m["xp.reads"] = reads

    async def munmapper() -> None:
        await rt.sleep(15.0)
        await timed("munmap_a", vmops.munmap(p0, mm_a, A + 20 * PAGE_SIZE, 8 * PAGE_SIZE))
        await timed("munmap_a2", vmops.munmap(p0, mm_a, A, 4 * PAGE_SIZE))

    async def cow() -> None:
        child = await vmops.fork(p0, mm_b)
        for k in (0, 5, 9, 9, 17):
            await timed(f"touch_b{k}", vmops.touch(p0, mm_b, B + k * PAGE_SIZE, write=True))
        await timed("exit_child", vmops.exit_mmap(p0, child))

    async def p1_side() -> None:
        await rt.sleep(7.0)
        await timed("munmap_c", vmops.munmap(p1, mm_c, C + 4 * PAGE_SIZE, 4 * PAGE_SIZE))
        await timed("touch_a_on_p0", vmops.touch(p0, mm_a, A + 40 * PAGE_SIZE, write=True))
        t = await timed("exit_c", vmops.exit_mmap(p1, mm_c))
        if t is not None:
            m["exit_c.release_us"] = t.release_us

    async def unregisterer() -> None:
        await rt.sleep(120.0)
        t = await timed("unreg_b", gru_b.unregister())
        if t is not None:
            m["unreg_b.srcu_wait_us"] = t.srcu_wait_us

    tasks = [
        rt.spawn(gru_reader(gru_a, A, [0, 1, 2, 3, 20, 21, 22, 3, 40, 41, 2, 63], "gru_a"), name="gru_a"),
        rt.spawn(xp_reader(), name="xp"),
        rt.spawn(munmapper(), name="munmapper"),
        rt.spawn(cow(), name="cow"),
        rt.spawn(gru_reader(gru_b, B, [0, 1, 5, 9, 17, 30], "gru_b"), name="gru_b"),
        rt.spawn(gru_reader(gru_c, C, [0, 4, 5, 6, 7, 31, 4], "gru_c"), name="gru_c"),
        rt.spawn(p1_side(), name="p1_side"),
        rt.spawn(unregisterer(), name="unregisterer"),
    ]
    for t in tasks:
        await t
    t = await timed("unreg_a", gru_a.unregister())
    t = await timed("exit_a", vmops.exit_mmap(p0, mm_a))
    t = await timed("exit_b", vmops.exit_mmap(p0, mm_b))

    m["gru_a"] = vars(gru_a.stats).copy()
    m["gru_b"] = vars(gru_b.stats).copy()
    m["gru_c"] = vars(gru_c.stats).copy()
    m["xp"] = vars(xp.stats).copy()
    m["messages"] = dict(sorted(c.interconnect.messages.items()))
    m["srcu"] = {n: vars(p.srcu.statistics()) for n, p in c.partitions.items()}
    m["free"] = {n: p.frames.nfree for n, p in c.partitions.items()}
    m["sweep"] = {n: [str(v) for v in p.check_invariants(final=True)] for n, p in c.partitions.items()}
    m["violations"] = c.violations()
    m["now"] = rt.now()
    return m


def run_one(scheduler: str, seed: int) -> dict[str, Any]:
    run = run_sim(det_config(scheduler, seed), det_workload)
    # through JSON, so the in-process and the child's metrics compare the same way
    return {"digest": run.trace_digest, "metrics": json.loads(json.dumps(run.result, sort_keys=True))}


if __name__ == "__main__":
    out = {}
    for arg in sys.argv[1:]:
        sched, seed = arg.split(":")
        out[arg] = run_one(sched, int(seed))
    print(json.dumps(out, sort_keys=True))
