"""Benchmark: frames and VM operations at scale (printed, never asserted).

1. Memory: a partition with 1,048,576 frames, every one of them mapped by one mm, measured
   with tracemalloc (numpy arrays are traced): bytes per frame for the frame table and oracle,
   and for the page table on top. Goal: at most 64 bytes per frame.
2. munmap of 1, 1,000 and 1,000,000 pages of an mm with a GRU attached (its TLB filled),
   wall-clock time per page, best of several runs, and the ratio of per-page costs. Goal:
   near-linear (the per-page cost of the big munmap no more than that of the small ones).

Run: python benchmarks/bench_memory.py
"""

from __future__ import annotations

import time
import tracemalloc

from cluster.vtime import VirtualClock, run_virtual
from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary.gru import GruMmu

NFRAMES = 1 << 20
BASE = 0x100000000


def memory_per_frame() -> None:
    async def body() -> tuple[int, int]:
        tracemalloc.start()
        rt = Runtime(VirtualClock())
        p = Partition(rt, nframes=NFRAMES)
        partition_bytes = tracemalloc.get_traced_memory()[0]
        mm = p.create_mm()
        await vmops.mmap(p, mm, BASE, NFRAMES * PAGE_SIZE)
        await vmops.populate(p, mm, BASE, NFRAMES * PAGE_SIZE)
        mapped_bytes = tracemalloc.get_traced_memory()[0]
        tracemalloc.stop()
        assert p.frames.nfree == 0
        return partition_bytes, mapped_bytes

    partition_bytes, mapped_bytes = run_virtual(body())
    print(f"memory: {NFRAMES} frames")
    print(f"  partition (frame table, free stack, oracle): {partition_bytes / NFRAMES:6.1f} bytes/frame")
    print(f"  ... with every frame mapped (plus page table): {mapped_bytes / NFRAMES:6.1f} bytes/frame  (goal <= 64)")


def munmap_scaling(repeats: int = 5) -> None:
    sizes = (1, 1_000, 1_000_000)

    async def one(npages: int) -> float:
        rt = Runtime(VirtualClock())
        p = Partition(rt, nframes=max(npages, 2048) + 16)
        owner = LocalOwner(p)
        mm = p.create_mm()
        gru = GruMmu(rt, owner, mm.id, "gru")
        await gru.register()
        await vmops.mmap(p, mm, BASE, npages * PAGE_SIZE)
        await vmops.populate(p, mm, BASE, npages * PAGE_SIZE)
        for k in range(min(npages, gru.tlb_entries)):  # fill the GRU TLB
            await gru.access(BASE + k * PAGE_SIZE)
        t0 = time.perf_counter()
        await vmops.munmap(p, mm, BASE, npages * PAGE_SIZE)
        elapsed = time.perf_counter() - t0
        assert p.frames.nfree == p.frames.nframes and not p.oracle.violations
        return elapsed

    print(f"munmap with a GRU attached (best of {repeats}):")
    per_page = {}
    for n in sizes:
        best = min(run_virtual(one(n)) for _ in range(repeats))
        per_page[n] = best / n
        print(f"  {n:>9} pages: {best * 1e3:9.3f} ms  {best / n * 1e9:10.1f} ns/page")
    print(f"  per-page cost ratio 1e6 vs 1e3 pages: {per_page[1_000_000] / per_page[1_000]:.3f} (near-linear: <= 1)")
    print(f"  total cost ratio    1e6 vs 1e3 pages: {per_page[1_000_000] * 1e6 / (per_page[1_000] * 1e3):.1f}x for 1000x the pages")


if __name__ == "__main__":
    memory_per_frame()
    munmap_scaling()
