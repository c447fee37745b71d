"""The demo behind ``mmusim demo``: the global-SRCU hang on one partition, in virtual time.

Background streams each own an mm with a GRU attached; each keeps mapping, touching (the GRU
drops translations in), and unmapping a range, so GRU flushes (a few us per page) are
continuously in flight inside ``invalidate_range_start`` callouts, under the partition's SRCU.
Meanwhile a measured mm registers and unregisters a GRU notifier again and again. With the
kernel's global SRCU each unregister's ``synchronize_srcu()`` waits for whatever callout is in
flight on *any* mm; with a per-mm SRCU it waits for nothing. The demo runs both and prints the
waits side by side.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cluster.vtime import VirtualClock, run_virtual
from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.partition import Partition
from nodes.runtime import Runtime, current_cpu
from nodes.owner import LocalOwner
from nodes.secondary.gru import GruMmu


@dataclass
class DemoResult:
    srcu_scope: str
    unregister_srcu_wait_us: list[float]
    unregister_total_us: list[float]
    violations: list[str]


async def _run(srcu_scope: str, streams: int, pages: int, unregisters: int, ncpus: int) -> DemoResult:
    rt = Runtime(VirtualClock())
    p = Partition(rt, name="A", nframes=(streams + 1) * pages * 2 + 1024, ncpus=ncpus, srcu_scope=srcu_scope)
    owner = LocalOwner(p)
    base = 0x10000000
    stop = False

    async def stream(k: int) -> None:
        current_cpu.set(k % ncpus)
        mm = p.create_mm()
        gru = GruMmu(rt, owner, mm.id, f"gru{k}")
        await gru.register()
        phase = 0
        while not stop:
            await vmops.mmap(p, mm, base, pages * PAGE_SIZE)
            await vmops.populate(p, mm, base, pages * PAGE_SIZE)
            for a in range(base, base + pages * PAGE_SIZE, PAGE_SIZE * 64):
                await gru.access(a)
            await rt.sleep(50.0 * (1 + (k + phase) % 3))  # a little compute between rounds
            await vmops.munmap(p, mm, base, pages * PAGE_SIZE)  # GRU flushes pages * 2 us
            phase += 1
        await gru.unregister()
        await vmops.exit_mmap(p, mm)

    tasks = [rt.spawn(stream(k), name=f"stream{k}") for k in range(streams)]
    measured = p.create_mm()
    measured.add_vma(base, PAGE_SIZE)
    waits, totals = [], []
    for i in range(unregisters):
        await rt.sleep(777.0)  # not a multiple of any stream's period
        gru = GruMmu(rt, owner, measured.id, f"measured{i}")
        await gru.register()
        t = await gru.unregister()
        waits.append(t.srcu_wait_us)
        totals.append(t.total_us)
    stop = True
    for t in tasks:
        await t
    await vmops.exit_mmap(p, measured)
    await rt.join()
    p.check_invariants(final=True)
    return DemoResult(srcu_scope, waits, totals, [str(v) for v in p.oracle.violations])


def run_demo(streams: int = 8, pages: int = 512, unregisters: int = 50, ncpus: int = 4) -> list[DemoResult]:
    """Run the demo for the global and the per-mm SRCU scope."""
    return [run_virtual(_run(scope, streams, pages, unregisters, ncpus)) for scope in ("global", "per_mm")]


def format_results(results: list[DemoResult]) -> str:
    lines = [f"{'srcu scope':<10} {'n':>4} {'p50 us':>10} {'p90 us':>10} {'max us':>10}  (unregister: synchronize_srcu wait)"]
    for r in results:
        w = np.asarray(r.unregister_srcu_wait_us)
        lines.append(
            f"{r.srcu_scope:<10} {len(w):>4} {np.percentile(w, 50):>10.1f} {np.percentile(w, 90):>10.1f} {w.max():>10.1f}"
        )
    for r in results:
        lines.append(f"invariants ({r.srcu_scope}): {len(r.violations)} violation(s)")
        lines.extend(f"  {v}" for v in r.violations[:10])
    return "\n".join(lines)
