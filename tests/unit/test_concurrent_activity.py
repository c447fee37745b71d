"""Streams sharing an mm are threads of one process: each VM operation that finds its range
changed by another stream gets what the kernel answers (workloads/activity.py ``vm_op``), never
a crash, and the oracles hold. mprotect over a hole walks as v3.10's sys_mprotect() does. The
pairs with the OOM reaper run under v5.10 (v3.10 has none)."""

from __future__ import annotations

import itertools
import random
from typing import Any

import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes import vmops
from nodes.errors import Exists
from nodes.mm import PAGE_SIZE, PROT_READ, PROT_WRITE, PTE_MIGRATION, PTE_WRITE
from nodes.partition import Partition
from workloads import activity
from workloads.harness import count_op

P = PAGE_SIZE
#: what the kernel may answer each operation's steps when another thread changed its range
ANSWERS = {
    "munmap": {"EEXIST"},  # the remap of a hole another thread mapped meanwhile
    "mprotect": {"ENOMEM"},  # a hole in the range
    "migrate": set(),  # pages gone meanwhile are skipped
    "ksm": {"EFAULT"},  # a page gone meanwhile
    "reclaim": set(),
    "thp": {"EAGAIN", "EINVAL"},  # the block is no longer whole
    "cow": {"EFAULT"},  # the write after fork hits an address unmapped or write-protected meanwhile
    "oom_reap": set(),  # the remote GRU refuses every non-blocking start: the reaper gives up
}
SEEDS = 16


def _region(pair: tuple[str, str]) -> int:
    return 512 if "thp" in pair else 16


def _race(pair: tuple[str, str], seed: int) -> dict[str, Any]:
    """Two streams of one mm on p0, one doing each operation of ``pair`` three times on
    overlapping ranges, a GRU on p1 faulting pages back after each; then teardown."""
    region = _region(pair)

    async def wl(c: SimCluster) -> dict[str, Any]:
        p = c.partition("p0")
        mm_id = await c.on("p0", activity.new_mm, region)
        await c.on("p1", activity.attach, "gru", "p0", mm_id, "g", region)
        refused: dict[str, list[str]] = {op: [] for op in pair}
        counts = {op: {"done": 0, "refused": {}} for op in pair}

        async def stream(k: int, op: str) -> None:
            rng = random.Random(f"{seed}-{k}")
            for _ in range(3):
                first = rng.randrange(0, 12)
                got = await c.on("p0", activity.vm_op, op, mm_id, first, 4, k)
                refused[op] += got
                count_op(counts[op], got)
                await c.on("p1", activity.touch, "g", [first, first + 3])

        for task in [c.runtime.spawn(stream(k, op), name=f"stream{k}") for k, op in enumerate(pair)]:
            await task
        mm = p.mm(mm_id)
        left = sum(int((v.flags & PTE_MIGRATION).any()) for v in mm.vmas)
        await c.on("p1", activity.teardown, "g", "unregister")
        await c.on("p0", activity.exit_mm, mm_id)
        return {"refused": refused, "counts": counts, "migration_entries": left,
                "final": p.check_invariants(final=True)}

    semantics = "v5.10" if "oom_reap" in pair else "v3.10"  # the OOM reaper is 4.6's and later
    run = run_sim(SimConfig(partitions=2, hops=1, hop_latency={"dist": "uniform", "low": 1, "high": 40},
                            scheduler="random", seed=seed, nframes=4096, semantics=semantics), wl)
    return {**run.result, "violations": run.violations}


@pytest.mark.parametrize("pair", list(itertools.combinations_with_replacement(activity.OPS, 2)),
                         ids=lambda pair: "-".join(pair))
def test_every_pair_of_operations_raced_on_one_mm_gets_the_kernels_answers(pair: tuple[str, str]) -> None:
    for seed in range(SEEDS):
        r = _race(pair, seed)
        assert r["violations"] == [] and r["final"] == [], (seed, r["violations"], r["final"])
        assert r["migration_entries"] == 0, seed
        for op, got in r["refused"].items():
            assert set(got) <= ANSWERS[op], (seed, op, got)
        for op, c in r["counts"].items():  # every operation is counted once, done or refused
            runs = 3 * pair.count(op)
            assert c["done"] <= runs and c["done"] + sum(c["refused"].values()) >= runs, (seed, op, c)


def test_mprotect_racing_munmap_is_answered_enomem_and_counted() -> None:
    seen: dict[str, int] = {}
    for seed in range(3 * SEEDS):
        for name, n in _race(("munmap", "mprotect"), seed)["counts"]["mprotect"]["refused"].items():
            seen[name] = seen.get(name, 0) + n
    assert seen.get("ENOMEM", 0) > 0, seen  # the race happens, and is the kernel's -ENOMEM


def _mm_with_a_hole(vrun: Any, body: Any) -> Any:
    """An mm with VMAs at pages [0, 4) and [6, 8) of 0x10000000, populated; ``body(p, mm)``."""
    async def main(rt: Any) -> Any:
        p = Partition(rt, nframes=256, ncpus=1)
        mm = p.create_mm()
        for first, n in ((0, 4), (6, 2)):
            await vmops.mmap(p, mm, 0x10000000 + first * P, n * P)
            await vmops.populate(p, mm, 0x10000000 + first * P, n * P)
        return await body(p, mm)

    return vrun(main)


def _writable(mm: Any, page: int) -> bool:
    return bool(mm.pte(0x10000000 + page * P)[1] & PTE_WRITE)


def test_mprotect_leaves_a_piece_already_at_its_protection_alone(vrun: Any) -> None:
    async def body(p: Any, mm: Any) -> Any:
        calls: list[Any] = []
        orig = p.core.invalidate_range_start

        async def spy(*a: Any) -> None:
            calls.append(a[1:])
            await orig(*a)

        p.core.invalidate_range_start = spy
        await vmops.mprotect(p, mm, 0x10000000, 2 * P, PROT_READ | PROT_WRITE)  # mprotect_fixup(): no split, no callout
        return calls, [_writable(mm, k) for k in (0, 6)], len(mm.vmas)

    calls, writable, nvmas = _mm_with_a_hole(vrun, body)
    assert calls == [] and writable == [True, True] and nvmas == 2


def test_mmap_over_a_mapped_range_is_eexist_and_populate_skips_what_it_may_not_fault(vrun: Any) -> None:
    async def body(p: Any, mm: Any) -> Any:
        with pytest.raises(Exists, match=r"mmap: \[0x10002000, 0x10006000\) overlaps existing VMA"):
            await vmops.mmap(p, mm, 0x10002000, 4 * P)
        await vmops.mmap(p, mm, 0x10004000, 2 * P, PROT_READ)  # fill the hole read-only
        await vmops.munmap(p, mm, 0x10006000, 2 * P)
        # mm_populate(): the hole is skipped and the read-only VMA gets read faults, no error
        n = await vmops.populate(p, mm, 0x10000000, 8 * P)
        pte = mm.pte(0x10004000)
        return n, pte[0] >= 0, bool(pte[1] & PTE_WRITE), mm.holes(0x10000000, 0x10008000)

    n, present, writable, holes = _mm_with_a_hole(vrun, body)
    assert (n, present, writable) == (2, True, False)
    assert holes == [(0x10006000, 0x10008000)]


def test_count_op_counts_an_operation_once_per_errno() -> None:
    c: dict[str, Any] = {"done": 0, "refused": {}}
    for refused in ([], ["ENOMEM"], ["ENOMEM", "ENOMEM", "EEXIST"], []):
        count_op(c, refused)
    assert c == {"done": 2, "refused": {"EEXIST": 1, "ENOMEM": 2}}
