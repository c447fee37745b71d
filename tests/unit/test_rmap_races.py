"""Rmap-driven VM operations racing munmap, mprotect and exit (nodes/vmops.py).

Every run is tiny: partition p0 owns an mm of a few pages (a whole 2 MiB block for THP), a GRU
on p1 maps them, so every callout sleeps across the interconnect, and the GRU keeps faulting
pages in. Then, at seeded moments under the random scheduler, one operation and one racer run:

- operations: ``migrate`` (the move_pages/migrate_pages syscall: mmap_sem for read and an mm
  reference held throughout), ``compact`` (rmap-driven migration: neither held), ``reclaim``
  (two reclaimers at once, so one sleeps on the anon_vma lock while the other's
  invalidate_page is on the wire), ``ksm`` (ksmd merging two pages), ``thp`` (khugepaged
  collapsing the block);
- racers: ``munmap`` of part of the range (splitting the VMA), ``mprotect`` to read-only (of
  part of the range, or of all of it), ``exit`` (the process drops its mm reference).

After each run: no oracle violation, every frame accounted for (inv 7) while the mm lives and
after it exited, no migration entry left, no writable pte in a read-only VMA, every page still
mapped can be faulted in, no partition fenced, and the run finished (no Deadlock). With
``plant_stale_vma_bugs`` (tests/doubles.py: the code before the fix) the same runs find
the bug."""

from __future__ import annotations

import random
from typing import Any, Awaitable, Callable

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from cluster.vtime import Deadlock
from doubles import plant_stale_vma_bugs
from nodes import vmops
from nodes.errors import InternalError, KernelBug, ModelError
from nodes.mm import HPAGE_PMD_SIZE, PAGE_SIZE, PROT_READ, PTE_MIGRATION, PTE_WRITE

BASE = 0x10000000  # 2 MiB aligned
NPAGES = 4  # pages the GRU maps, the operations work on and the racers cut into
SEEDS = 200
OPS = ("migrate", "compact", "reclaim", "ksm", "thp")
RACERS = ("munmap", "mprotect", "exit")
# the pairs whose race the code before the fix got wrong (see the report for the counts)
PLANTED_PAIRS = [(op, racer) for op in ("migrate", "compact", "reclaim") for racer in ("munmap", "mprotect")]


def _config(op: str, seed: int) -> SimConfig:
    pages = HPAGE_PMD_SIZE // PAGE_SIZE if op == "thp" else NPAGES
    return SimConfig(
        partitions=2, cpus=2, nframes=16 + 2 * pages, scheduler="random", seed=seed, hop_latency=0.0,
        callout_latency={"dist": "uniform", "low": 2.0, "high": 40.0}, trace="off",
    )


async def _workload(c: SimCluster, op: str, racer: str, seed: int) -> list[str]:
    a = c.partition("p0")
    rng = random.Random(f"mmusim-rmap-race-{op}-{racer}-{seed}")
    mm = a.create_mm()
    size = HPAGE_PMD_SIZE if op == "thp" else NPAGES * PAGE_SIZE
    span = NPAGES * PAGE_SIZE
    await vmops.mmap(a, mm, BASE, size)
    await vmops.populate(a, mm, BASE, size)
    gru = await c.gru("p1", "p0", mm, name="gru")
    for k in range(NPAGES):
        await gru.access(BASE + k * PAGE_SIZE)
    if op == "reclaim":
        await vmops.reclaim(a, mm, BASE, span)  # the first pass clears the accessed bits: idle pages

    def part() -> tuple[int, int]:
        """A seeded piece [start, start+length) of the range, most often strictly inside it."""
        first = rng.randrange(0, NPAGES - 1)
        n = rng.randint(1, NPAGES - 1 - first)
        return BASE + first * PAGE_SIZE, n * PAGE_SIZE

    cut = part()
    whole = rng.random() < 0.3
    operation: dict[str, list[Callable[[], Awaitable[Any]]]] = {
        "migrate": [lambda: vmops.migrate_pages(a, mm, BASE, span)],
        "compact": [lambda: vmops.migrate_pages(a, mm, BASE, span, reason="compaction")],
        "reclaim": [lambda: vmops.reclaim(a, mm, BASE, span), lambda: vmops.reclaim(a, mm, BASE, span)],
        "ksm": [lambda: vmops.ksm_merge(a, mm, BASE + PAGE_SIZE, mm, BASE + 2 * PAGE_SIZE)],
        "thp": [lambda: vmops.thp_collapse(a, mm, BASE)],
    }
    racers: dict[str, Callable[[], Awaitable[Any]]] = {
        "munmap": lambda: vmops.munmap(a, mm, *cut),
        "mprotect": lambda: vmops.mprotect(a, mm, *((BASE, size) if whole else cut), PROT_READ),
        "exit": lambda: vmops.mmput(a, mm),
    }

    async def faults() -> None:
        for _ in range(NPAGES):
            await c.runtime.sleep(rng.uniform(0.0, 30.0))
            try:
                await gru.access(BASE + rng.randrange(NPAGES) * PAGE_SIZE)
            except ModelError:  # unmapped, read-only, released: part of the race
                pass

    async def attempt(fn: Callable[[], Awaitable[Any]]) -> None:
        await c.runtime.sleep(rng.uniform(0.0, 60.0))
        try:
            await fn()
        except ModelError:  # refused (the mm exited, the block is broken ...): part of the race
            pass

    tasks = [c.runtime.spawn(attempt(fn), name=f"{op}{k}") for k, fn in enumerate(operation[op])]
    tasks.append(c.runtime.spawn(attempt(racers[racer]), name=racer))
    tasks.append(c.runtime.spawn(faults(), name="faults"))
    for t in tasks:
        await t

    problems = []
    for v in mm.vmas:
        if (v.flags & PTE_MIGRATION).any():
            problems.append(f"migration entry left in VMA [{v.start:#x}, {v.end:#x})")
        if not v.writable and (v.flags & PTE_WRITE).any():
            problems.append(f"writable pte in read-only VMA [{v.start:#x}, {v.end:#x})")
    problems += [str(x) for x in a.check_invariants()]  # while the mm may still live
    if problems:
        return problems  # (the touches below would wait forever on a migration entry left)
    if not mm.exited:
        for v in list(mm.vmas):
            for addr in range(v.start, min(v.end, BASE + span), PAGE_SIZE):
                await vmops.touch(a, mm, addr)  # every page left can be faulted in
        await vmops.exit_mmap(a, mm)
    problems += [str(x) for x in a.check_invariants(final=True)]  # every frame free again
    return problems


def race_once(op: str, racer: str, seed: int) -> list[str]:
    """One seeded run of ``op`` against ``racer``: what went wrong (empty if nothing)."""
    try:
        run = run_sim(_config(op, seed), lambda c: _workload(c, op, racer, seed))
    except (KernelBug, Deadlock, InternalError, ModelError) as e:
        return [f"{type(e).__name__}: {str(e).splitlines()[0]}"]
    problems = run.result + run.violations
    problems += [f"partition fenced: {f}" for f in run.faults]
    return list(dict.fromkeys(problems))


def _failing(op: str, racer: str, seeds: int, *, stop: bool = False) -> dict[int, list[str]]:
    found = {}
    for seed in range(seeds):
        problems = race_once(op, racer, seed)
        if problems:
            found[seed] = problems
            if stop:
                break
    return found


@pytest.mark.parametrize("racer", RACERS)
@pytest.mark.parametrize("op", OPS)
def test_rmap_operation_racing_munmap_mprotect_exit_leaves_everything_accounted(op, racer):
    bad = _failing(op, racer, SEEDS)
    assert not bad, f"{len(bad)} of {SEEDS} seeds broke, e.g. " + "; ".join(
        f"seed {s}: {p[0]}" for s, p in list(bad.items())[:3])


@pytest.mark.parametrize("op,racer", PLANTED_PAIRS)
def test_the_planted_stale_vma_bug_is_found_within_the_seeds(op, racer, monkeypatch):
    plant_stale_vma_bugs(monkeypatch)
    bad = _failing(op, racer, SEEDS, stop=True)
    assert bad, f"the planted bug ran {SEEDS} seeds of {op} against {racer} clean"
    (problems,) = bad.values()
    symptoms = ("migration entry left", "inv 7", "put_page of", "writable pte in read-only VMA", "Deadlock")
    assert any(s in p for p in problems for s in symptoms), problems
