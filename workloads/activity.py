"""Background notifier activity: the VM operations of a stream, and the secondaries whose fault
traffic follows them. Every function here runs *on* a partition (``cluster.on``): module level,
plain data in and out, so the ray backend can ship it to the partition's actor.

A background mm owns a region of ``region_pages`` pages at ``BASE``, populated, mapped by one
or more secondaries on other partitions. A stream picks operations by the scenario's mix and
applies each to ``pages`` pages of the region; every operation leaves the region mapped again,
so the next one finds something to do. Streams sharing an mm race as threads of one process
do; what the kernel answers each step is returned and counted (``vm_op``):

============ ============================================================================
munmap       munmap the range (range_start/end callouts), then mmap and populate it again
mprotect     write-protect the range, then make it writable again (two range callouts)
migrate      migrate_pages of the range (invalidate_page per page, as v3.10's try_to_unmap)
ksm          ksmd merges two pages of the range (write-protect, then replace the pte)
reclaim      reclaim the range (invalidate_page per page), then fault it back in
thp          khugepaged collapses the 2 MiB block holding the range (range callouts)
cow          fork (write-protects the parent: range callouts), a write fault breaks COW in
             the parent, the child exits
oom_reap     the OOM reaper reaps the mm (non-blocking range callouts, refused by every
             secondary on another partition: then it retries 10 times, HZ/10 apart, and
             gives up), then the region is faulted back in; the modes with an OOM reaper only.
             The model's process survives the reaping and may be chosen again (MMF_OOM_SKIP
             cleared, as for a new victim; the kernel's victim dies)
============ ============================================================================

Under the modern semantics (v5.10, v6.6) migrate and reclaim bracket each page with
range_start/end (MMU_NOTIFY_CLEAR) instead of invalidate_page.
"""

from __future__ import annotations

import asyncio
import errno
from typing import Any, Awaitable

from collections import Counter

from cluster.context import PartitionContext
from nodes import vmops
from nodes.errors import ModelError, Unreachable
from nodes.mm import HPAGE_PMD_SIZE, PAGE_SIZE, PROT_READ, PROT_WRITE
from nodes.runtime import current_cpu
from nodes.secondary.gru import GruMmu
from nodes.secondary.hmm import HmmMirror
from nodes.secondary.odp import OdpMr
from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

BASE = 0x10000000  # 2 MiB aligned: THP collapses find whole blocks
OPS = ("munmap", "mprotect", "migrate", "ksm", "reclaim", "thp", "cow", "oom_reap")
KINDS = ("gru", "xpmem", "kvm", "odp", "hmm", "sva")
DEVICE_SECONDARIES = (OdpMr, HmmMirror)  # those timing their own faults and invalidations (device_* metrics)
SOURCE = XpmemCred(tgid=1, uid=1000, gid=1000)  # XPMEM's source process of every mm
ATTACHER = XpmemCred(tgid=2, uid=1000, gid=1000)
# the counters of the GRUs of a partition that a run reports (GruStats fields)
GRU_COUNTERS = ("dropins", "retries", "guard_retries", "fenced_flushes")
_RETIRED_GRUS = "gru.retired"  # ctx.objects key: the counters of GRUs already torn down
_RETIRED_DEVICE = "device.retired"  # ctx.objects key: the device timings of ODP MRs and HMM mirrors torn down


async def new_mm(ctx: PartitionContext, region_pages: int) -> int:
    """A new mm here with ``region_pages`` populated pages at BASE; returns its id."""
    p = ctx.partition
    mm = p.create_mm()
    await vmops.mmap(p, mm, BASE, region_pages * PAGE_SIZE)
    await vmops.populate(p, mm, BASE, region_pages * PAGE_SIZE)
    return mm.id


async def new_mms(ctx: PartitionContext, count: int, region_pages: int) -> list[int]:
    """``count`` new mms here as ``new_mm`` makes them, in one call; returns their ids."""
    return [await new_mm(ctx, region_pages) for _ in range(count)]


async def vm_op(ctx: PartitionContext, op: str, mm_id: int, first: int, pages: int, cpu: int) -> list[str]:
    """Apply ``op`` (see the module table) to pages [first, first + pages) of mm ``mm_id``.

    Streams sharing an mm are threads of one process: another stream may have unmapped,
    remapped or write-protected part of the range meanwhile, and each step then gets what the
    kernel answers (mprotect over a hole: -ENOMEM after changing what it covered; mmap over
    a range another thread mapped: -EEXIST; a write to an address another thread unmapped or
    write-protected: -EFAULT, the thread's SIGSEGV; a THP collapse of a broken block: refused).
    Every step runs whatever the earlier ones got, so the region is restored where it can be.
    Returns the errno names of the refused steps, in order; empty when every step was done."""
    current_cpu.set(cpu)
    p = ctx.partition
    mm = p.mm(mm_id)
    start, length = BASE + first * PAGE_SIZE, pages * PAGE_SIZE
    refused: list[str] = []

    async def step(call: Awaitable[Any]) -> Any:
        try:
            return await call
        except Unreachable:
            raise  # not the kernel's answer to the thread: a partition did not answer
        except ModelError as e:
            refused.append(errno.errorcode.get(e.errno, str(e.errno)))
            return None

    if op == "munmap":
        await step(vmops.munmap(p, mm, start, length))
        for hole_start, hole_end in mm.holes(start, start + length):  # what another stream left unmapped
            await step(vmops.mmap(p, mm, hole_start, hole_end - hole_start))
        await step(vmops.populate(p, mm, start, length))
    elif op == "mprotect":
        await step(vmops.mprotect(p, mm, start, length, PROT_READ))
        await step(vmops.mprotect(p, mm, start, length, PROT_READ | PROT_WRITE))
    elif op == "migrate":
        await step(vmops.migrate_pages(p, mm, start, length))
    elif op == "ksm":
        await step(vmops.ksm_merge(p, mm, start, mm, start + PAGE_SIZE))
        await step(vmops.populate(p, mm, start, 2 * PAGE_SIZE))  # write faults break the KSM sharing
    elif op == "reclaim":
        await step(vmops.reclaim(p, mm, start, length))
        await step(vmops.populate(p, mm, start, length))
    elif op == "thp":
        block = start - (start - BASE) % HPAGE_PMD_SIZE
        vma = mm.find_vma(block)
        if vma is not None and vma.end >= block + HPAGE_PMD_SIZE:
            await step(vmops.populate(p, mm, block, HPAGE_PMD_SIZE))
            await step(vmops.thp_collapse(p, mm, block))
    elif op == "cow":
        child = await vmops.fork(p, mm)
        await step(vmops.touch(p, mm, start, write=True))  # do_wp_page in the parent
        await vmops.exit_mmap(p, child)
    elif op == "oom_reap":
        mm.oom_skip = False  # chosen again (see the module table)
        await step(vmops.oom_reap_task(p, mm))
        for vma in list(mm.vmas):  # the region is faulted back in, as after reclaim
            await step(vmops.populate(p, mm, vma.start, vma.end - vma.start))
    else:
        raise ValueError(f"unknown VM operation {op!r}; known: {OPS}")
    return refused


async def attach(ctx: PartitionContext, kind: str, owner: str, mm_id: int, name: str, region_pages: int,
                 touched: list[int] | None = None) -> None:
    """A secondary of ``kind`` here mapping mm ``mm_id`` of ``owner`` (an XPMEM attachment
    covers the whole region), kept in ``ctx.objects[name]``; it then reads the pages
    ``touched`` (``touch``), in the same call."""
    await _attach(ctx, kind, owner, mm_id, name, region_pages)
    if touched:
        await touch(ctx, name, touched)


async def attach_all(ctx: PartitionContext, kind: str, owner: str,
                     attachments: list[tuple[int, str, int, list[int]]]) -> None:
    """Secondaries of ``kind`` here mapping mms of ``owner``, in one call: one ``attach`` for
    each ``(mm_id, name, region_pages, touched)`` of ``attachments``, all at once (each
    secondary's registration and faults are its own; they overlap as independent threads'
    would)."""
    await asyncio.gather(*(attach(ctx, kind, owner, mm_id, name, pages, touched)
                           for mm_id, name, pages, touched in attachments))


async def _attach(ctx: PartitionContext, kind: str, owner: str, mm_id: int, name: str, region_pages: int) -> None:
    if kind == "gru":
        await ctx.gru(owner, mm_id, name)
    elif kind == "kvm":
        await ctx.kvm(owner, mm_id, name)
    elif kind == "odp":  # an explicit ODP MR over the whole region
        await ctx.odp(owner, mm_id, name, start=BASE, length=region_pages * PAGE_SIZE)
    elif kind == "hmm":
        await ctx.hmm(owner, mm_id, name)
    elif kind == "sva":  # an IOMMU SVA device bound to the mm (nodes/secondary/sva.py; sim backend)
        sva = getattr(ctx, "sva", None)
        if sva is None:
            raise ValueError(f"secondary kind 'sva' is not available on partition {ctx.name} of this backend "
                             f"(the sim backend's only)")
        await sva(owner, mm_id, name)
    elif kind == "xpmem":
        drv = await ctx.xpmem(owner, mm_id, name, cred=SOURCE)
        segid = await drv.make(BASE, region_pages * PAGE_SIZE, 0o600)
        ctx.objects[f"{name}.att"] = await drv.attach(await drv.get(segid, XPMEM_RDWR, ATTACHER), 0,
                                                      region_pages * PAGE_SIZE, ATTACHER)
    else:
        raise ValueError(f"unknown secondary kind {kind!r}; known: {KINDS}")


async def touch(ctx: PartitionContext, name: str, pages: list[int]) -> int:
    """The secondary ``name`` reads these pages of its mm's region (remote faults where it
    maps nothing); returns how many reads succeeded. A page the owner is changing right now
    may be refused (unmapped, migrating, released): that is the race, not an error."""
    sec = ctx.objects[name]
    att = ctx.objects.get(f"{name}.att")
    done = 0
    for k in pages:
        try:
            if att is not None:
                await sec.access(att, att.vaddr + k * PAGE_SIZE)
            else:
                await sec.access(BASE + k * PAGE_SIZE)
            done += 1
        except ModelError:
            pass
    return done


async def teardown_all(ctx: PartitionContext, names: list[str], how: str) -> None:
    """``teardown`` each secondary of ``names`` in turn, in one call (their times unread)."""
    for name in names:
        await teardown(ctx, name, how)


async def teardown(ctx: PartitionContext, name: str, how: str) -> tuple[float, float, float]:
    """Unregister (``how="unregister"``) or put (``how="put"``) the secondary ``name``;
    returns (total, release, SRCU wait) in microseconds."""
    sec = ctx.objects.pop(name)
    ctx.objects.pop(f"{name}.att", None)
    t = await (sec.unregister() if how == "unregister" else sec.put())
    if isinstance(sec, GruMmu):
        ctx.objects.setdefault(_RETIRED_GRUS, Counter()).update(_gru_counters(sec))
    if isinstance(sec, DEVICE_SECONDARIES):
        ctx.objects.setdefault(_RETIRED_DEVICE, []).extend(_device_times(sec))
    return (t.total_us, t.release_us, t.srcu_wait_us)


def _device_times(mr: OdpMr | HmmMirror) -> list[tuple[float, float, int, str]]:
    """A device secondary's own timings (an ODP MR's, an HMM mirror's) as (end time, us, mm id,
    "fault" | "invalidate")."""
    return ([(when, us, mr.mm_id, "fault") for when, us in mr.fault_times]
            + [(when, us, mr.mm_id, "invalidate") for when, us in mr.invalidate_times])


def _gru_counters(gru: GruMmu) -> dict[str, int]:
    return {k: getattr(gru.stats, k) for k in GRU_COUNTERS}


async def exit_mm(ctx: PartitionContext, mm_id: int) -> tuple[float, float, float]:
    """The process of mm ``mm_id`` exits: (total, release, SRCU wait) in microseconds."""
    t = await vmops.exit_mmap(ctx.partition, ctx.partition.mm(mm_id))
    return (t.total_us, t.release_us, t.srcu_wait_us)


async def start_loaded_probe(ctx: Any, dsts: list[str], period_s: float) -> None:
    """Ray backend: probe the instrument's floor from here to ``dsts`` under the run's load, a
    null callout each every ``period_s`` (``cluster.live.LoadedProbe``), until
    ``stop_loaded_probe``."""
    ctx.start_loaded_probe(dsts, period_s)


async def stop_loaded_probe(ctx: Any) -> dict[str, list[float]]:
    """Ray backend: stop the loaded probe; its round trips (us) per destination."""
    return await ctx.stop_loaded_probe()


async def enable_timings(ctx: PartitionContext) -> None:
    ctx.partition.core.timings.enabled = True


async def collect(ctx: PartitionContext) -> dict[str, Any]:
    """What this partition measured and checked: the core's callout and range timings, the
    oracle's count of checked events (after its reports have arrived), the counters
    (``GRU_COUNTERS``) of every GRU made here and the device timings of every ODP MR and HMM mirror made here
    (``device``: its page faults and invalidations as the driver saw them), live or torn down, and
    the counters of its IOMMU's SVA bonds (``nodes.secondary.sva.COUNTERS``; empty on the ray backend)."""
    await ctx.flush_reports()
    timings = ctx.partition.core.timings
    timings.enabled = False
    grus = Counter({k: 0 for k in GRU_COUNTERS})
    grus.update(ctx.objects.get(_RETIRED_GRUS, {}))
    device = list(ctx.objects.get(_RETIRED_DEVICE, []))
    for sec in ctx.objects.values():
        if isinstance(sec, GruMmu):
            grus.update(_gru_counters(sec))
        if isinstance(sec, DEVICE_SECONDARIES):
            device += _device_times(sec)
    iommu = getattr(ctx, "sva_iommu", None)  # the sim backend's (nodes/secondary/sva.py)
    return {
        "device": device,
        "sva": iommu.counters() if iommu is not None else {},
        "callouts": list(timings.callouts),
        "ranges": list(timings.ranges),
        "checked": int(sum(ctx.partition.oracle.checked.values())),
        "gru": dict(grus),
    }
