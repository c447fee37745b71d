"""The cross-partition GRU dropin against invalidations, over many seeds (nodes/secondary/gru.py,
nodes/secondary/base.py ``InvalidateSeq``; sim backend, random scheduler).

Four checks modelled on the kernel's hmm-tests (tools/testing/selftests/mm/hmm-tests.c), with a
GRU on p1 as the device mirroring an mm of p0; each runs ``SEEDS`` seeds with the guarded dropin
(the default) and must be clean in every one, and with ``gru.dropin: v3.10`` (the unguarded
dropin, the v3.10 check alone) must fail in at least one:

- ``anon_teardown``: the GRU reads the buffer while the owner munmaps its upper half;
- ``anon_write_child``: the owner forks and writes every page (COW breaks in the parent) while
  the parent's GRU reads, then the child exits;
- ``migrate_partial_unmap``: part of the buffer is unmapped, then the rest is migrated while the
  GRU reads (the unmap is done first: migrate_pages racing munmap is another question);
- ``anon_write_prot``: the GRU writes the buffer while the owner write-protects it with mprotect.

What counts as a failure: an oracle violation (a frame freed while the GRU maps it, a read of the
wrong page), a GRU translation that at the end disagrees with the owner's page table (another
frame, or writable where the pte is read-only: the parent's GRU left on the child's frame after
COW, a writable translation that outlived the write-protect), or a GRU write that started after
mprotect returned and succeeded. The GRU has a small TLB and several instructions in flight, so
that most accesses are dropins whose lookups cross the network (a heavy-tailed 2-way latency).
"""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import BadAddress
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, PROT_READ, PTE_PRESENT, PTE_WRITE, Mm
from nodes.runtime import wait_all
from nodes.secondary.gru import GruMmu

SEEDS = 200
P = PAGE_SIZE
BASE = 0x1000_0000
NPAGES = 6
WORKERS = 2  # GRU instructions in flight at once
PASSES = 2  # each worker's passes over the buffer
TLB_ENTRIES = 2


def config(seed: int, dropin: str) -> SimConfig:
    return SimConfig(
        partitions=2, nframes=256, scheduler="random", seed=seed, trace="off", gru_dropin=dropin,
        hop_latency={"dist": "lognormal", "median": 2.0, "sigma": 1.0},
        callout_latency={"dist": "uniform", "low": 1.0, "high": 10.0},
        fault_latency={"dist": "lognormal", "median": 10.0, "sigma": 1.5},
    )


def stale_translations(gru: GruMmu, mm: Mm) -> list[str]:
    """The GRU's translations that disagree with the owner's page table: at a quiescent point a
    secondary TLB holds only what the primary maps (the same frame; writable only where the pte
    is)."""
    out = []
    for vpn, e in gru.tlb.items():
        address = vpn << PAGE_SHIFT
        vma = mm.find_vma(address)
        pfn, flags = (-1, 0) if vma is None or not vma.start <= address else mm.pte(address)
        if not flags & PTE_PRESENT or pfn != e.pfn or (e.writable and not flags & PTE_WRITE):
            out.append(f"stale: {gru.name} maps {address:#x} -> pfn {e.pfn}{' writable' if e.writable else ''}, "
                       f"the pte is pfn {pfn} flags {flags:#x}")
    return out


async def setup(c: SimCluster) -> tuple[Any, Mm, GruMmu]:
    a = c.partition("p0")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, NPAGES * P)
    await vmops.populate(a, mm, BASE, NPAGES * P)
    gru = await c.gru("p1", "p0", mm, name="gru", tlb_entries=TLB_ENTRIES)
    return a, mm, gru


Access = tuple[int, float, "tuple[int, int, int] | None"]  # (page, start time, stamp read or None: refused)


async def device(c: SimCluster, gru: GruMmu, rng: random.Random, *, write: bool = False,
                 log: list[Access] | None = None) -> None:
    """WORKERS concurrent GRU instruction streams over the buffer, in random page order; a
    refused access (unmapped, read-only: BadAddress) is the race, not an error. ``log`` gets
    each access."""

    async def worker(order: list[int]) -> None:
        for k in order:
            t = c.runtime.now()
            try:
                stamp = await gru.access(BASE + k * P, write=write)
            except BadAddress:
                stamp = None
            if log is not None:
                log.append((k, t, stamp))

    orders = [rng.sample(range(NPAGES), NPAGES) * PASSES for _ in range(WORKERS)]
    await wait_all([worker(o) for o in orders])


async def owner_later(c: SimCluster, rng: random.Random, op: Callable[[], Awaitable[Any]]) -> float:
    """``op`` on the owner after a random delay within the device's first pass; returns when it
    completed."""
    await c.runtime.sleep(rng.uniform(0.0, 60.0))
    await op()
    return c.runtime.now()


async def anon_teardown(c: SimCluster, rng: random.Random) -> list[str]:
    a, mm, gru = await setup(c)
    half = NPAGES // 2 * P
    await wait_all([device(c, gru, rng), owner_later(c, rng, lambda: vmops.munmap(a, mm, BASE + half, half))])
    return stale_translations(gru, mm)


async def anon_write_child(c: SimCluster, rng: random.Random) -> list[str]:
    a, mm, gru = await setup(c)
    child: list[Mm] = []
    written: dict[int, float] = {}  # page -> when the parent's write (the COW break) returned
    reads: list[Access] = []

    async def fork_and_write() -> None:
        child.append(await vmops.fork(a, mm))
        for k in rng.sample(range(NPAGES), NPAGES):
            await vmops.touch(a, mm, BASE + k * P, write=True)  # do_wp_page: COW in the parent
            written[k] = c.runtime.now()

    await wait_all([device(c, gru, rng, log=reads), owner_later(c, rng, fork_and_write)])
    # the parent's GRU reads the parent's page once the parent wrote it, not the child's
    now = {k: a.frames.stamp(mm.pte(BASE + k * P)[0]) for k in range(NPAGES)}
    old = [(k, t) for k, t, stamp in reads if k in written and t > written[k] and stamp != now[k]]
    problems = [f"{len(old)} GRU read(s) of the parent's pages, started after the parent's write, read the "
                f"child's frame; the first of page {old[0][0]} at {old[0][1]:.1f} us"] if old else []
    problems += stale_translations(gru, mm)  # the parent's GRU must not map the child's frames
    await vmops.exit_mmap(a, child[0])  # frees the frames only the child mapped
    return problems


async def migrate_partial_unmap(c: SimCluster, rng: random.Random) -> list[str]:
    a, mm, gru = await setup(c)
    await vmops.munmap(a, mm, BASE + 2 * P, 2 * P)  # a hole, made before anything runs
    await wait_all([device(c, gru, rng), owner_later(c, rng, lambda: vmops.migrate_pages(a, mm, BASE, NPAGES * P))])
    return stale_translations(gru, mm)


async def anon_write_prot(c: SimCluster, rng: random.Random) -> list[str]:
    a, mm, gru = await setup(c)
    writes: list[Access] = []
    done = await wait_all([device(c, gru, rng, write=True, log=writes),
                           owner_later(c, rng, lambda: vmops.mprotect(a, mm, BASE, NPAGES * P, PROT_READ))])
    protected_at = done[1]
    late = [t for _, t, stamp in writes if stamp is not None and t > protected_at]
    problems = [f"{len(late)} GRU write(s) started after mprotect(PROT_READ) returned at {protected_at:.1f} us "
                f"and succeeded, the first at {min(late):.1f} us"] if late else []
    return problems + stale_translations(gru, mm)


CHECKS = {
    "anon_teardown": anon_teardown,
    "anon_write_child": anon_write_child,
    "migrate_partial_unmap": migrate_partial_unmap,
    "anon_write_prot": anon_write_prot,
}


def run_check(name: str, seed: int, dropin: str) -> list[str]:
    """One seeded run of check ``name``: what went wrong (oracle violations first)."""
    async def workload(c: SimCluster) -> list[str]:
        return await CHECKS[name](c, random.Random(f"{name}-{seed}"))

    run = run_sim(config(seed, dropin), workload)
    return run.violations + run.result


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_guarded_dropin_is_clean_where_the_v3_10_dropin_races(name):
    guarded = {s: p for s in range(SEEDS) if (p := run_check(name, s, "guarded"))}
    assert guarded == {}, f"{name}: guarded dropin failed {len(guarded)}/{SEEDS} seeds, e.g. {next(iter(guarded.items()))}"
    unguarded = next((s for s in range(SEEDS) if run_check(name, s, "v3.10")), None)
    assert unguarded is not None, f"{name}: the v3.10 dropin ran {SEEDS} seeds clean: the check cannot fail"


def test_hang_study_counts_the_guards_retries_in_results_json():
    """Four streams of fork-and-write (COW breaks in the parent) on two mms, two streams per mm
    (one stream's GRU faults race the other's COW), heavy-tailed hops: the guarded run retries
    the dropins that a COW overtook and stays clean; the v3.10 dropin retries none."""
    from workloads.harness import run_scenario
    from workloads.scenario import load_scenario

    base = load_scenario("quickstart").with_overrides([
        "mms=1", "activity.streams=4", "activity.mix={cow: 1}", "activity.pages=8", "duration=20ms",
        "measure.exits=1", "measure.unregisters=1", "topology.hop_latency={dist: lognormal, median: 10, sigma: 1.5}",
    ])
    runs = {mode: run_scenario(base.with_value("gru.dropin", mode))[0] for mode in ("guarded", "v3.10")}
    for mode, r in runs.items():
        g = r["gru"]
        assert g["dropin"] == mode and g["dropins"] > 0
        for key in ("dropins", "range_retries", "dropin_retries", "fenced_flushes"):
            assert g[key] == sum(c[key] for c in g["by_partition"].values())
    assert runs["guarded"]["gru"]["dropin_retries"] > 0 and runs["guarded"]["invariants"]["violations"] == 0
    assert runs["v3.10"]["gru"]["dropin_retries"] == 0
