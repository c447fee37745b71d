"""The race finder behind ``mmusim check``: run a small racy workload under one of the seed
history's semantics (``nodes.notifier.SEMANTICS``), seed after seed, with the sim backend's
seeded scheduler (random or PCT), until the model breaks; then shrink the workload and print
what happened, readably, with the command that replays it exactly.

The race workload: partition p0 owns an mm of ``pages`` pages; GRUs on p1 map it (their
callouts cross the interconnect and sleep, with a seeded random latency); or, the modern modes
only, with ``secondary="odp"`` (``mmusim check --secondary odp``) RDMA ODP MRs on p1 over the
whole mm, each with its interval notifier (``nodes/secondary/odp.py``), with ``"hmm"`` HMM device
mirrors (``nodes/secondary/hmm.py``), or with ``"sva"`` IOMMU SVA devices on p1 bound to it
(``nodes/secondary/sva.py``: ATS/PRI faults, and ATS invalidations posted under the page-table
lock whose completions take a seeded 2-200 us). Then, at seeded
random moments, concurrently:

- ``unregister``: one GRU is unregistered;
- ``exit``: the mm's process exits;
- ``migrate``: compaction migrates the pages one by one (an invalidate_page callout each;
  rmap-driven, so it holds neither mmap_sem nor the mm and races the exit);
- ``ksm``: ksmd merges two pages (write-protect and replace: set_pte_at_notify);
- ``faults``: the other GRU keeps faulting pages in, three instructions at a time, through a
  two-entry TLB (an ODP MR: three DMAs at a time, faulting wherever its MTT was zapped), so that most accesses are dropins whose lookup crosses the network (each way
  2-200 us): with ``gru_dropin="v3.10"`` one that an invalidation overtakes installs a stale
  translation (the unguarded dropin; ``mmusim check --gru-dropin v3.10``);
- ``register``: a late GRU registers (under memory pressure: the allocation may reclaim);
- ``mprotect``: the second half of the pages becomes read-only, which splits the VMA under a
  migration that may be asleep in a callout (the stale-VMA class of issue 16);
- ``oom_reap``: the OOM killer chose the mm and the OOM reaper reaps it (``vmops.oom_reap_task``),
  only under the modes that have one (``OOM_REAPER_MODES``; elsewhere the task is not started,
  so the other modes' runs are what they were). The modern reaper's non-blocking start is
  refused by every GRU (their callouts cross the network), so it reaps only once they are
  gone; the 4.6 reaper (``oom-reap-unnotified``) frees pages the GRUs still map.

Then the process touches what it still maps (a migration entry left behind would make it wait
forever, in migration_entry_wait()) and exits, and the partition's final sweep checks that every
frame is accounted for (a page a stale VMA kept is not).

A finding is an invariant violation of the oracles (``nodes.oracle``), a kernel bug the model
detected (``nodes.errors.KernelBug``: a NULL dereference, sleeping in atomic context, ...) or a
deadlock of the whole partition (``cluster.vtime.Deadlock``).
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field, replace
from typing import Any

from cluster.sim import SimCluster, SimConfig, run_sim
from cluster.vtime import Deadlock
from nodes import lockdep, vmops
from nodes.errors import InternalError, KernelBug, ModelError
from nodes.mm import PAGE_SIZE, PROT_READ
from nodes.notifier import MODERN, OOM_REAPER_MODES, SEMANTICS
from nodes.runtime import wait_all

BASE = 0x10000000
FAULTER_TLB_ENTRIES = 2  # the faulting GRU's TLB: small, so that its accesses keep missing
FAULT_WORKERS = 3  # GRU instructions the faulting GRU has in flight at once
TASKS = ("unregister", "exit", "migrate", "ksm", "faults", "register", "mprotect", "oom_reap")
# the HMM devices' own task: the first device migrates the pages to its memory (then the tasks
# that fault, unmap or exit find device-private entries: migrate_to_ram, page_free)
HMM_TASKS = ("devmigrate",)
RACE_SECONDARIES = ("gru", "odp", "hmm", "sva")  # what maps the mm from p1
# those of the modern modes only, and why: an interval notifier, or ->invalidate_range
MODERN_SECONDARIES = {"odp": "an interval notifier", "hmm": "an interval notifier",
                      "sva": "->invalidate_range or ->arch_invalidate_secondary_tlbs"}


def check_secondary(semantics: str, secondary: str) -> None:
    """``ValueError`` naming both if the race workload's ``secondary`` (one of
    ``RACE_SECONDARIES``, as ``RaceConfig`` checks) cannot run under ``semantics`` (an ODP MR or
    an HMM mirror needs an interval notifier, an SVA device ->invalidate_range: the modern
    modes)."""
    if secondary in MODERN_SECONDARIES and semantics not in MODERN:
        raise ValueError(f"secondary {secondary!r} needs semantics {' or '.join(MODERN)} "
                         f"({MODERN_SECONDARIES[secondary]}), got {semantics!r}")


def check_tasks(tasks: tuple[str, ...], secondary: str) -> None:
    """``ValueError`` naming them for tasks the race workload does not know, or that need
    another ``secondary`` (``HMM_TASKS``: HMM devices only)."""
    known = TASKS + (HMM_TASKS if secondary == "hmm" else ())
    unknown = [t for t in tasks if t not in known]
    if unknown or not tasks:
        extra = f" ({', '.join(HMM_TASKS)} with secondary hmm only)" if set(unknown) & set(HMM_TASKS) else ""
        raise ValueError(f"tasks: expected a non-empty subset of {','.join(known)}{extra}, got {','.join(tasks)!r}")


@dataclass(frozen=True)
class RaceConfig:
    """The racy workload's size: what shrinking makes smaller."""

    pages: int = 8
    grus: int = 2  # on p1, mapping the mm of p0
    tasks: tuple[str, ...] = TASKS
    choices: int | None = None  # only the first N scheduling choices are the seed's; then FIFO
    gru_dropin: str = "guarded"  # how the GRUs check a dropin (nodes.secondary.gru.GRU_DROPINS); not shrunk
    # RACE_SECONDARIES: GRUs, ODP MRs, HMM device mirrors or SVA devices (``grus`` of them); not shrunk
    secondary: str = "gru"

    def __post_init__(self) -> None:
        if self.secondary not in RACE_SECONDARIES:
            raise ValueError(f"secondary must be one of {RACE_SECONDARIES}, got {self.secondary!r}")

    def describe(self) -> str:
        steps = "" if self.choices is None else f", {self.choices} seeded scheduling choices then FIFO"
        dropin = "" if self.gru_dropin == "guarded" or self.secondary != "gru" else f", {self.gru_dropin} GRU dropin"
        what = {"gru": "GRUs", "odp": "ODP MRs", "hmm": "HMM device mirrors", "sva": "SVA devices"}[self.secondary]
        return f"{self.pages} pages, {self.grus} {what}, tasks {', '.join(self.tasks)}{dropin}{steps}"


@dataclass
class Finding:
    """What broke, in which run."""

    semantics: str
    scheduler: str
    seed: int
    race: RaceConfig
    kind: str  # "violation" | the KernelBug's class | "Deadlock"
    what: str  # one line
    trace: list[str] = field(default_factory=list)  # the model events before it
    digest: str = ""
    choices_made: int = 0  # scheduling choices the run made before it broke

    def replay_command(self) -> str:
        r = self.race
        return (f"mmusim check --semantics {self.semantics} --scheduler {self.scheduler} --replay {self.seed} "
                f"--pages {r.pages} --grus {r.grus} --tasks {','.join(r.tasks)}"
                + ("" if r.gru_dropin == "guarded" else f" --gru-dropin {r.gru_dropin}")
                + ("" if r.secondary == "gru" else f" --secondary {r.secondary}")
                + ("" if r.choices is None else f" --choices {r.choices}"))


def sim_config(semantics: str, scheduler: str, seed: int, race: RaceConfig) -> SimConfig:
    return SimConfig(
        partitions=2, cpus=2, nframes=16 + 3 * race.pages, semantics=semantics, scheduler=scheduler, seed=seed,
        hop_latency=0.0, callout_latency={"dist": "uniform", "low": 2.0, "high": 40.0}, trace="full",
        fault_latency={"dist": "uniform", "low": 2.0, "high": 200.0},  # a remote fault: TLB miss to dropin
        reclaim_watermark=0.9,  # a third of the frames are in use: an allocation reclaims
        choices=race.choices, gru_dropin=race.gru_dropin,
        sva_completion={"dist": "uniform", "low": 2.0, "high": 200.0},  # an SVA device's ATS invalidation
    )


async def race_workload(c: SimCluster, race: RaceConfig, seed: int) -> None:
    a = c.partition("p0")
    a.core.trace_callouts = True
    rng = random.Random(f"mmusim-race-{seed}")
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, race.pages * PAGE_SIZE)
    await vmops.populate(a, mm, BASE, race.pages * PAGE_SIZE)
    def secondary(name: str, faulter: bool = False) -> Any:
        """One of ``race.secondary`` on p1 mapping the mm; a GRU's faulter has a small TLB, an
        SVA device's a small ATC (an ODP MR or an HMM device page table has no TLB to make small)."""
        if race.secondary == "odp":
            return c.odp("p1", "p0", mm, name=name, start=BASE, length=race.pages * PAGE_SIZE)
        if race.secondary == "hmm":
            return c.hmm("p1", "p0", mm, name=name)
        if race.secondary == "sva":
            return c.sva("p1", "p0", mm, name=name, **({"atc_entries": FAULTER_TLB_ENTRIES} if faulter else {}))
        return c.gru("p1", "p0", mm, name=name, **({"tlb_entries": FAULTER_TLB_ENTRIES} if faulter else {}))

    prefix = "gru" if race.secondary == "sva" else race.secondary  # SVA devices keep their first names: gru0, ...
    grus: list[Any] = [await secondary(f"{prefix}{i}", faulter=i == race.grus - 1) for i in range(race.grus)]
    # the secondaries start with every page mapped, but an HMM device keeps every page it maps,
    # so its faulter starts with none (its accesses are faults whose hmm_range_fault crosses the
    # network), as the GRU faulter's small TLB keeps missing
    for g in grus if race.secondary != "hmm" else grus[:-1]:
        for k in range(race.pages):
            await g.access(BASE + k * PAGE_SIZE)

    async def attempt(name: str, fn: Any) -> None:
        await c.runtime.sleep(rng.uniform(0.0, 60.0))
        c.runtime.trace("task", f"{name} starts")
        try:
            await fn()
        except ModelError as e:  # refused by the model: part of the race, not a finding
            c.runtime.trace("task", f"{name} refused: {type(e).__name__}")
        else:
            c.runtime.trace("task", f"{name} done")

    async def faults() -> None:
        """The last GRU's instructions, FAULT_WORKERS in flight at once, on random pages; its
        small TLB makes most of them dropins whose lookups cross the network."""
        g = grus[-1]

        async def worker() -> None:
            for _ in range(3 * race.pages // FAULT_WORKERS):
                await g.access(BASE + rng.randrange(race.pages) * PAGE_SIZE)

        await wait_all([worker() for _ in range(FAULT_WORKERS)])

    async def register_late() -> None:
        """mmu_notifier_register() with mm_users pinned (get_task_mm), then mmput: if the
        process exited meanwhile, this last reference exits the mm."""
        if mm.users <= 0:
            return
        mm.users += 1
        try:
            late = await secondary("late")
            await late.access(BASE)
        finally:
            await vmops.mmput(a, mm)

    work = {
        "unregister": lambda: grus[0].unregister(),
        "exit": lambda: vmops.mmput(a, mm),  # the process's own reference
        "migrate": lambda: vmops.migrate_pages(a, mm, BASE, race.pages * PAGE_SIZE, reason="compaction"),
        "ksm": lambda: vmops.ksm_merge(a, mm, BASE, mm, BASE + PAGE_SIZE),
        "faults": faults,
        "register": register_late,
        "mprotect": lambda: vmops.mprotect(a, mm, BASE + race.pages // 2 * PAGE_SIZE,
                                           (race.pages - race.pages // 2) * PAGE_SIZE, PROT_READ),
        "oom_reap": lambda: vmops.oom_reap_task(a, mm),
        # HMM_TASKS: the device fills its memory with the pages (dmirror_migrate())
        "devmigrate": lambda: grus[0].migrate_to_device(BASE, race.pages),
    }
    tasks = [c.runtime.spawn(attempt(t, work[t]), name=t) for t in race.tasks
             if t != "oom_reap" or a.core.oom_reaper]
    for t in tasks:
        await t
    if not mm.exited and mm.users > 0:  # the process touches what it still maps, then exits
        for vma in list(mm.vmas):
            for address in range(vma.start, vma.end, PAGE_SIZE):
                await vmops.touch(a, mm, address)
        await vmops.mmput(a, mm)
    a.check_invariants(final=True)


def run_once(semantics: str, scheduler: str, seed: int, race: RaceConfig) -> Finding | None:
    """One seeded run; the finding, if the model broke. A mode without an OOM reaper runs
    (and reports) the workload without the ``oom_reap`` task."""
    check_secondary(semantics, race.secondary)
    check_tasks(race.tasks, race.secondary)
    if semantics not in OOM_REAPER_MODES and "oom_reap" in race.tasks:
        race = replace(race, tasks=tuple(t for t in race.tasks if t != "oom_reap"))
    config = sim_config(semantics, scheduler, seed, race)

    async def workload(c: SimCluster) -> None:
        await race_workload(c, race, seed)

    def finding(kind: str, what: str, entries: list[str], digest: str) -> Finding:
        loop = holder.get("loop")
        made = len(loop.decisions) if loop is not None else 0
        return Finding(semantics, scheduler, seed, race, kind, what, _readable(entries), digest, made)

    holder: dict[str, Any] = {}
    try:
        run = run_sim(config, workload, keep_loop=holder)
    # a model error escaping: the run itself broke (an InternalError: the model's own state is
    # corrupted, a put of a free frame, say, which is what a bug planted into it does)
    except (KernelBug, Deadlock, ModelError, InternalError) as e:
        loop = holder.get("loop")
        entries = loop.trace.entries if loop is not None else []
        digest = loop.trace.digest() if loop is not None else ""
        dep = lockdep._checkers.get(loop) if loop is not None else None
        if dep is not None and dep.reports:  # lockdep saw it coming: its report names the cause
            f = finding("lockdep", f"{dep.reports[0]} (then: {type(e).__name__})", entries, digest)
            f.trace += [f"{'':12}lockdep  {r}" for r in dep.reports[1:]]
            return f
        return finding(type(e).__name__, str(e).splitlines()[0], entries, digest)
    dep = lockdep._checkers.get(holder["loop"])
    if dep is not None and dep.reports:
        return finding("lockdep", dep.reports[0], run.trace_entries, run.trace_digest)
    if run.violations:
        return finding("violation", run.violations[0], run.trace_entries, run.trace_digest)
    return None


def _readable(entries: list[str], last: int = 24) -> list[str]:
    """The model events of a full trace (not the scheduling steps), the last ``last`` of them,
    as ``time  kind  detail``."""
    out = []
    for e in entries:
        t, kind, detail = (e.rstrip("\n").split(" ", 2) + ["", ""])[:3]
        if kind != "run":
            out.append(f"{float(t):9.1f} us  {kind:<8} {detail}")
    return out[-last:]


def search(semantics: str, scheduler: str, seeds: int, race: RaceConfig, first_seed: int = 0) -> Finding | None:
    """The first finding among ``seeds`` seeds, or None."""
    if semantics not in SEMANTICS:
        raise ValueError(f"semantics must be one of {tuple(SEMANTICS)}, got {semantics!r}")
    check_secondary(semantics, race.secondary)
    for seed in range(first_seed, first_seed + seeds):
        f = run_once(semantics, scheduler, seed, race)
        if f is not None:
            return f
    return None


def shrink(found: Finding, seeds: int) -> Finding:
    """Try smaller workloads (fewer tasks, fewer pages, fewer GRUs) that still break the same
    way within ``seeds`` seeds, then fewer steps: the fewest of the seed's scheduling choices
    (the rest FIFO) that still break it; return the smallest finding."""
    best = found
    progress = True
    while progress:
        progress = False
        candidates: list[RaceConfig] = []
        r = best.race
        for t in r.tasks:
            if len(r.tasks) > 1:
                candidates.append(replace(r, tasks=tuple(x for x in r.tasks if x != t)))
        if r.pages > 2:
            candidates.append(replace(r, pages=max(2, r.pages // 2)))
        if r.grus > 1:
            candidates.append(replace(r, grus=r.grus - 1))
        for cand in candidates:
            f = search(best.semantics, best.scheduler, seeds, cand)
            if f is not None and f.kind == best.kind:
                best = f
                progress = True
                break
    return _fewest_choices(best)


def _fewest_choices(f: Finding) -> Finding:
    """Binary search for the fewest seeded scheduling choices (then FIFO) with which ``f``'s
    seed still breaks the same way. Not monotone in general: the result is a small number that
    fails, checked by running it, not proven minimal."""
    lo, hi = 0, f.choices_made
    best = f
    while lo < hi:
        mid = (lo + hi) // 2
        g = run_once(f.semantics, f.scheduler, f.seed, replace(f.race, choices=mid))
        if g is not None and g.kind == f.kind:
            best, hi = g, mid
        else:
            lo = mid + 1
    if best is f and f.race.choices is None:
        g = run_once(f.semantics, f.scheduler, f.seed, replace(f.race, choices=f.choices_made))
        if g is not None and g.kind == f.kind:
            best = g
    return best


def format_finding(f: Finding, shrunk_from: RaceConfig | None = None) -> str:
    lines = [
        f"FOUND under semantics {f.semantics!r} ({SEMANTICS[f.semantics]})",
        f"  {f.kind}: {f.what}",
        f"  seed {f.seed}, scheduler {f.scheduler}, workload: {f.race.describe()}"
        + (f" (shrunk from {shrunk_from.describe()})" if shrunk_from is not None and shrunk_from != f.race else ""),
        f"  trace digest {f.digest}",
        "  what happened (virtual time in us, the last model events):",
    ]
    lines += [f"    {e}" for e in f.trace] or ["    (none: it broke while the workload was being set up)"]
    lines.append(f"  replay: {f.replay_command()}")
    return "\n".join(lines)


def check_scenario(scenario: Any, semantics: str, scheduler: str, seeds: int) -> Finding | None:
    """The same search over a hang-study scenario (``workloads/scenario.py``) under
    ``semantics``: its run with each seed; no shrinking (the scenario is the user's)."""
    from workloads.harness import run_scenario

    s = scenario.with_value("semantics", semantics)
    for seed in range(seeds):
        s_seed = s.with_value("seed", seed)
        try:
            result, _ = run_scenario(s_seed, sim_extra={"scheduler": scheduler, "trace": "hash"})
        except (KernelBug, Deadlock, ModelError) as e:
            return Finding(semantics, scheduler, seed, RaceConfig(tasks=()), type(e).__name__,
                           str(e).splitlines()[0], [], "")
        if result["invariants"]["violations"]:
            return Finding(semantics, scheduler, seed, RaceConfig(tasks=()), "violation",
                           result["invariants"]["details"][0], [], result["trace_digest"] or "")
    return None
