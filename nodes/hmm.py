"""Heterogeneous Memory Management, the CPU side: ``hmm_range_fault()`` of ``mm/hmm.c`` (v5.10,
v6.6; Documentation/mm/hmm.rst), run on the partition that owns the mm.

A device driver that mirrors a process's address space (a GPU's shared virtual memory, the
``nodes.secondary.hmm`` device; RDMA ODP) holds an interval notifier (``nodes.interval``) on the
mm and fills its own page table with what ``hmm_range_fault()`` reports: for each page of a
range, its pfn and whether it may be written, faulting the page in first when the driver asks
(``HMM_PFN_REQ_FAULT``, ``HMM_PFN_REQ_WRITE``). Unlike get_user_pages() it takes no page
reference: the answer is only good until an invalidation of the range, which the driver learns
of through ``mmu_interval_read_retry()`` under its own lock before it installs anything::

    driver (device partition)                    owner partition
    -------------------------                    ---------------
    seq = mmu_interval_read_begin(mni) -------->  (waits while mni's invalidation runs)
    hmm_range_fault(range) -------------------->  mmap_read_lock
                                                    mmu_interval_check_retry? -EBUSY
                                                    walk: present -> pfn; else fault it in
                                                    (handle_mm_fault), walk again
                                                  mmap_read_unlock
                 <---------------- pfns ---------
    lock; mmu_interval_read_retry(mni, seq)? unlock, start again
    program the device page table; unlock
    [Required: the device's ptes were read after every invalidation of them that began]

Here ``hmm_range_fault`` takes mmap_sem for read itself: on another partition the driver's
mmap_read_lock() and the walk are one request. ``mni`` is the notifier as the owner holds it (a
driver on another partition: its stand-in, whose sequence mirrors the driver's), so the check
against ``notifier_seq`` is the kernel's ``mmu_interval_check_retry()`` at the walk's start and
after every fault, ``Busy`` (the kernel's -EBUSY) when it says retry.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from nodes.errors import Busy, InvalidArgument, Released
from nodes.interval import mmu_interval_check_retry
from nodes.migrate_device import split_device_entry
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, PTE_DEVICE_PRIVATE, PTE_PRESENT, PTE_WRITE, check_range
from nodes.owner import PageRef

if TYPE_CHECKING:
    from nodes.interval import MmuIntervalNotifier
    from nodes.mm import Mm
    from nodes.partition import Partition

HMM_RANGE_DEFAULT_TIMEOUT_US = 1_000_000.0  # include/linux/hmm.h: 1000 ms, the drivers' retry bound
HMM_RANGE_MAX_PAGES = 64  # dmirror_fault()'s pfns[64]: the device asks for at most this many at once


async def hmm_range_fault(p: "Partition", mm: "Mm", mni: "MmuIntervalNotifier", notifier_seq: int, start: int,
                          npages: int, *, write: bool, dev_private_owner: str | None = None) -> list[PageRef]:
    """hmm_range_fault() with ``default_flags`` HMM_PFN_REQ_FAULT (and HMM_PFN_REQ_WRITE if
    ``write``), as dmirror_fault() and ib_umem_odp_map_dma_and_lock() ask: every page of [start, start + npages pages) valid (and
    writable), faulted in where it is not. Under mmap_sem (read). Raises ``Busy`` (-EBUSY) when
    ``mmu_interval_check_retry(mni, notifier_seq)`` says an invalidation began since the
    driver's read_begin; ``BadAddress`` (-EFAULT) for a page no VMA allows (hmm_vma_walk_hole:
    no vma, or the access not permitted); ``Released`` for an exiting mm. No reference is taken
    on any page; each answer carries ``notifier_seq`` (``PageRef.invalidate_seq``). A device-private
    page of ``dev_private_owner`` is reported as its device page; another device's is migrated
    back to system memory by the fault (hmm_vma_handle_pte())."""
    if not isinstance(npages, int) or npages <= 0:
        raise InvalidArgument(f"hmm_range_fault: npages must be a positive integer, got {npages!r}")
    if not isinstance(start, int):
        raise InvalidArgument(f"hmm_range_fault: address must be an integer, got {start!r}")
    start &= ~(PAGE_SIZE - 1)
    check_range(start, npages * PAGE_SIZE, "hmm_range_fault")
    if mm.users <= 0:  # the driver's mmget_not_zero() failed: the mm is exiting
        raise Released(f"hmm_range_fault of {mni.name}: {mm.name} is exiting or gone (mm_users={mm.users})")
    from nodes import vmops

    out: list[PageRef] = []
    async with mm.mmap_sem.read():
        while len(out) < npages:  # walk_page_range() from hmm_vma_walk.last, again after each -EBUSY
            if mmu_interval_check_retry(mni, notifier_seq):
                raise Busy(f"hmm_range_fault [{start:#x}, +{npages} pages) of {mm.name}: {mni.name} was "
                           f"invalidated since its read_begin (seq {notifier_seq}, now {mni.invalidate_seq})")
            address = start + len(out) * PAGE_SIZE
            vma = mm.vma_or_fault(address)
            i = vma.index(address)
            flags = int(vma.flags[i])
            if (flags & PTE_DEVICE_PRIVATE and dev_private_owner is not None and (flags & PTE_WRITE or not write)
                    and p.pgmaps.owner_of(int(vma.pfn[i])) == dev_private_owner):
                out.append(PageRef(address, -1, (mm.id, address >> PAGE_SHIFT, 0), bool(flags & PTE_WRITE),
                                   notifier_seq, split_device_entry(int(vma.pfn[i]))[1]))
                continue
            if flags & PTE_PRESENT and (flags & PTE_WRITE or not write):
                pfn = int(vma.pfn[i])
                out.append(PageRef(address, pfn, p.frames.stamp(pfn), bool(flags & PTE_WRITE), notifier_seq))
                continue
            # hmm_vma_fault(): handle_mm_fault() (a migration entry waits in it), then -EBUSY
            # back to the walk, which starts again at this page
            await vmops.handle_mm_fault(p, mm, address, write=write)
    return out

