"""VM operations of a partition, each firing notifier callouts where its v3.10 caller does (or,
under the modern semantics, its 5.10 / 6.6 caller: see below the table) and freeing frames where
the kernel frees them.

| operation        | kernel path (v3.10)                                  | callouts                         |
|------------------|------------------------------------------------------|----------------------------------|
| munmap           | do_munmap -> unmap_region -> unmap_vmas               | range_start/end around the zap;  |
|                  |   ... tlb_finish_mmu frees the pages                  | pages freed after range_end      |
| mprotect         | mprotect_fixup -> change_protection                   | range_start/end per VMA piece    |
| migrate_pages    | unmap_and_move -> try_to_unmap_one(TTU_MIGRATION)     | invalidate_page per page, after  |
|                  |   -> move_to_new_page -> remove_migration_ptes        | the pte became a migration entry |
|                  |   (move_pages: under mmap_sem; compaction: without)   |                                  |
| ksm_merge        | try_to_merge_two_pages -> write_protect_page,         | range_start, change_pte (under   |
|                  |   replace_page (6bdb913f0a brackets both)             | the PT lock), range_end          |
| fork             | dup_mmap -> copy_page_range (is_cow)                  | range_start/end on the parent    |
| touch (COW)      | handle_mm_fault -> do_wp_page                         | range_start, change_pte, end;    |
|                  |                                                       | old page put after range_end     |
| reclaim          | shrink_page_list -> page_referenced (clear_flush_young| clear_flush_young under the PT    |
|                  |   under the PT lock) -> try_to_unmap_one              | lock; invalidate_page after unmap|
| thp_collapse     | khugepaged_scan_pmd (test_young) -> collapse_huge_page| test_young; range_start/end      |
|                  |   (pmdp_clear_flush between start and end)            | around the pmd clear; old pages  |
|                  |                                                       | freed after range_end            |
| exit_mmap        | mmput -> exit_mmap -> mmu_notifier_release, unmap_vmas| release first, then the unmap    |
|                  |   -> tlb_finish_mmu                                   | (no notifier left to call)       |
| oom_reap_task    | oom_reaper -> oom_reap_task -> oom_reap_task_mm       | a non-blocking range_start per   |
|                  |   -> __oom_reap_task_mm (Linux 4.6+; modern modes)    | VMA; refused: skipped, retried   |

Under the modern semantics (v5.10, v6.6) each range carries its event, as 5.10's
mmu_notifier_range_init() calls give it (``nodes.notifier.MmuNotifierEvent``): munmap, exit and
the OOM reaper UNMAP, mprotect PROTECTION_VMA, fork PROTECTION_PAGE, and CLEAR for the COW
fault, KSM, try_to_unmap_one() (migration and reclaim) and khugepaged; migration and reclaim
bracket each page with range_start/end instead of calling invalidate_page (369ea8242c0f), and
the secondary TLBs are flushed with the CPU's (``_flush_tlb``: ->invalidate_range in v5.10 where
the kernel notifies, ->arch_invalidate_secondary_tlbs at every flush in v6.6).

Simplifications, each deliberate: there is no rmap, so migration and reclaim act on the pages of
one mm (a page also mapped by another mm is skipped by migration, and reclaim unmaps only this
mm's pte); there is no swap cache (a swapped-in page is a fresh frame holding the same
contents); anonymous read faults get their own zeroed frame rather than the shared zero page; a
transparent huge page is 512 frames, not one compound page; mmu_gather batches never overflow,
so a zap frees its pages at tlb_finish_mmu after range_end; exit does not wait on mmap_sem for
a ksmd or khugepaged working on the mm (__ksm_exit(), __khugepaged_exit()): they test for the
exit (mm_users 0) when they next take mmap_sem, and meanwhile see the ptes exit zapped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nodes import lockdep
from nodes.errors import BadAddress, Busy, InternalError, InvalidArgument, Released, Unmapped
from nodes.mm import (
    HPAGE_PMD_NR,
    HPAGE_PMD_SIZE,
    PAGE_SHIFT,
    PAGE_SIZE,
    PROT_READ,
    PROT_WRITE,
    PTE_DIRTY,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
    TASK_SIZE,
    Mm,
    Vma,
    check_range,
)
from nodes.notifier import OOM_REAPER_MODES, MmuNotifierEvent, TeardownTiming
from nodes.owner import PageRef

if TYPE_CHECKING:
    from nodes.partition import Partition


def _page(address: int) -> int:
    return address & ~(PAGE_SIZE - 1)


def _check_live(mm: Mm) -> None:
    if mm.exited or mm.users <= 0:
        raise Released(f"{mm.name} is exiting or gone (mm_users={mm.users})")


UNMAP, CLEAR = MmuNotifierEvent.UNMAP, MmuNotifierEvent.CLEAR


def _flush_tlb(p: "Partition", mm: Mm, start: int, end: int, *, notify: bool = False) -> None:
    """The TLB flush after a pte change of [start, end) (ptep_clear_flush(), flush_tlb_range(),
    tlb_finish_mmu()), and the secondary TLBs with it: v6.6 calls ->arch_invalidate_secondary_tlbs
    from every arch TLB flush (1af5a8109904); v5.10 calls ->invalidate_range only where the
    caller notifies (``notify``: ptep_clear_flush_notify(), or mmu_notifier_invalidate_range()
    after clearing a pte); v3.10 and its history neither."""
    if notify or p.core.tlb_op == "arch_invalidate_secondary_tlbs":
        p.core.invalidate_range(mm, start, end)


# -- faults ---------------------------------------------------------------------------------


async def handle_mm_fault(p: "Partition", mm: Mm, address: int, *, write: bool) -> int:
    """handle_mm_fault(): make ``address`` present (and writable if ``write``); returns its
    pfn. The caller holds mmap_sem for read (which keeps the VMAs as they are)."""
    address = _page(address)
    while True:
        _check_live(mm)
        vma = mm.vma_or_fault(address)
        if write and not vma.prot & PROT_WRITE:
            raise BadAddress(f"write fault at {address:#x} in read-only VMA [{vma.start:#x}, {vma.end:#x}) of {mm.name}")
        if not write and not vma.prot & PROT_READ:
            raise BadAddress(f"read fault at {address:#x} in PROT_NONE VMA [{vma.start:#x}, {vma.end:#x}) of {mm.name}")
        i = vma.index(address)
        if not vma.flags[i] & PTE_MIGRATION:
            break
        # migration_entry_wait(): sleep until the migration unlocks the page (it always does,
        # also when munmap or exit zapped the entry meanwhile), then the fault is retried
        # from the start: the mm may have exited and the VMA been split or removed
        await mm.migration_wq.wait()
    flags = int(vma.flags[i])
    if not flags & PTE_PRESENT:
        # do_anonymous_page() / do_swap_page(): a fresh frame holding this page's contents
        pfn = int(p.frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])
        new = PTE_PRESENT | PTE_YOUNG | (PTE_DIRTY if write else 0)
        if vma.writable:  # the page is this mm's alone: map it writable at once
            new |= PTE_WRITE
        with mm.page_table_lock:
            vma.pfn[i] = pfn
            vma.flags[i] = new
        return pfn
    if write and not flags & PTE_WRITE:
        return await do_wp_page(p, mm, vma, address)
    with mm.page_table_lock:
        vma.flags[i] |= PTE_YOUNG | (PTE_DIRTY if write else 0)
    return int(vma.pfn[i])


async def _set_pte_range(p: "Partition", start_: bool, mm: Mm, start: int, end: int, *, only_end: bool = False) -> None:
    """invalidate_range_start (``start_``) or _end around a set_pte_at_notify: every caller has
    bracketed it since 6bdb913f0a; before, in the ``change-pte-unwrapped`` semantics, none did.
    The modern callers (the COW fault, KSM) say MMU_NOTIFY_CLEAR; ``only_end``: the caller
    already notified ->invalidate_range (ptep_clear_flush_notify())."""
    if p.core.wraps_set_pte:
        if start_:
            await p.core.invalidate_range_start(mm, start, end, event=CLEAR)
        else:
            await p.core.invalidate_range_end(mm, start, end, event=CLEAR, only_end=only_end)


async def do_wp_page(p: "Partition", mm: Mm, vma: Vma, address: int) -> int:
    """do_wp_page(): a write to a write-protected present page of a writable VMA. A page with
    no other user (and not KSM) is reused in place, without callouts; otherwise the fault
    copies it, brackets the pte switch with range_start/end, sets the new pte with
    set_pte_at_notify (change_pte under the PT lock) and puts the old page after range_end."""
    i = vma.index(address)
    old = int(vma.pfn[i])
    orig = (old, int(vma.flags[i]))
    frames = p.frames
    if frames.refcount[old] == 1 and old not in frames.ksm:
        with mm.page_table_lock:  # reuse: the kernel's wp_page_reuse path
            vma.flags[i] |= PTE_WRITE | PTE_DIRTY | PTE_YOUNG
        return old
    new = int(frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])  # cow_user_page(); then written
    start, end = address, address + PAGE_SIZE
    await _set_pte_range(p, True, mm, start, end)
    put = new
    with mm.page_table_lock:
        if (int(vma.pfn[i]), int(vma.flags[i])) == orig:  # pte_same()
            pte = (new, PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_YOUNG)

            def set_pte() -> None:
                vma.pfn[i], vma.flags[i] = pte

            vma.flags[i] = 0  # ptep_clear_flush_notify() (wp_page_copy())
            _flush_tlb(p, mm, start, end, notify=True)
            p.core.set_pte_at_notify(mm, address, pte, set_pte)
            put = old  # "Free the old page.."
    await _set_pte_range(p, False, mm, start, end, only_end=True)
    frames.put(put)
    return int(vma.pfn[i])


async def touch(p: "Partition", mm: Mm, address: int, *, write: bool = False) -> int:
    """A CPU access by the owning process: mmap_sem (read) and handle_mm_fault if needed.
    Returns the pfn the access went to."""
    async with mm.mmap_sem.read():
        return await handle_mm_fault(p, mm, address, write=write)


async def populate(p: "Partition", mm: Mm, start: int, length: int, *, write: bool = True) -> int:
    """mm_populate() (mmap with MAP_POPULATE): fault in every absent page of [start,
    start+length) at once, vectorised per VMA piece, under mmap_sem (read). Absent pages get
    fresh frames, as do_anonymous_page() would give them one by one. As __mm_populate() with
    ``ignore_errors``: holes and PROT_NONE VMAs are skipped, and a read-only VMA gets read
    faults (populate_vma_page_range() asks for FOLL_WRITE only where the VMA is writable), so
    a thread populating a range another thread changed meanwhile gets no error. Returns the
    pages faulted in."""
    end = check_range(start, length, "populate")
    _check_live(mm)
    faulted = 0
    async with mm.mmap_sem.read():
        for vma in mm.vmas_in(start, end):
            if not vma.prot & PROT_READ:
                continue  # PROT_NONE: get_user_pages() fails, and mm_populate() ignores it
            dirty = write and vma.writable
            sl = vma.pages(start, end)
            absent = np.flatnonzero((vma.flags[sl] & (PTE_PRESENT | PTE_MIGRATION)) == 0) + sl.start
            if not len(absent):
                continue
            vpns = (vma.start >> PAGE_SHIFT) + absent
            pfns = p.frames.alloc(mm.id, vpns)
            with mm.page_table_lock:
                vma.pfn[absent] = pfns
                vma.flags[absent] = PTE_PRESENT | PTE_YOUNG | (PTE_WRITE if vma.writable else 0) | (PTE_DIRTY if dirty else 0)
            faulted += len(absent)
    return faulted


async def get_user_pages(
    p: "Partition", mm: Mm, address: int, npages: int, *, write: bool, pin: bool
) -> list[PageRef]:
    """get_user_pages() for a secondary MMU: under mmap_sem (read), fault in each page and take
    a reference. With ``pin`` the reference is kept (and counted as a pin) until the secondary
    unpins it; without, it is dropped before returning (GRU's and KVM's lookups). All or
    nothing: if a page cannot be faulted in (outside every VMA, no permission) the pins already
    taken are dropped before the error propagates (the kernel returns the pages it got; here
    the caller would get no refs to unpin them with)."""
    if not isinstance(npages, (int, np.integer)) or npages <= 0:
        raise InvalidArgument(f"get_user_pages: npages must be a positive integer, got {npages!r}")
    if not isinstance(address, (int, np.integer)):
        raise InvalidArgument(f"get_user_pages: address must be an integer, got {address!r}")
    check_range(_page(address), npages * PAGE_SIZE, "get_user_pages")
    _check_live(mm)
    refs: list[PageRef] = []
    async with mm.mmap_sem.read():
        try:
            for k in range(npages):
                a = _page(address) + k * PAGE_SIZE
                pfn = await handle_mm_fault(p, mm, a, write=write)
                vma = mm.vma_or_fault(a)
                if pin:
                    p.frames.pin(pfn)
                writable = bool(vma.flags[vma.index(a)] & PTE_WRITE)
                refs.append(PageRef(a, pfn, p.frames.stamp(pfn), writable))
        except BaseException:
            # All or nothing: the caller gets no refs, so it could never unpin these.
            if pin and refs:
                p.frames.unpin([r.pfn for r in refs])
            raise
    return refs


# -- munmap, mprotect, fork, exit -------------------------------------------------------------


async def unmap_region(p: "Partition", mm: Mm, start: int, end: int) -> None:
    """unmap_region(): range_start, zap every pte of [start, end) gathering the pages of the
    present ones, range_end, then tlb_finish_mmu() puts them (vectorised, per VMA piece). Swap
    and migration entries are cleared too, as zap_pte_range() clears them; they hold no page
    reference (try_to_unmap_one() dropped the pte's), so nothing is put for them, and a
    migration in flight then finds no entry to remove (see ``_unmap_and_move``)."""
    await p.core.invalidate_range_start(mm, start, end, event=UNMAP)  # unmap_vmas()
    gathered = _zap(mm, start, end)
    await p.core.invalidate_range_end(mm, start, end, event=UNMAP)
    _flush_tlb(p, mm, start, end)  # tlb_finish_mmu(): the flush, then the pages
    if gathered:
        p.frames.put(np.concatenate(gathered))


def _zap(mm: Mm, start: int, end: int) -> list[np.ndarray]:
    """zap_pte_range() of every VMA piece of [start, end): clear the ptes under the PT lock
    and gather the frames the present ones held (the caller puts them once the TLB is
    flushed)."""
    gathered = []
    for vma, sl, present in mm.iter_present(start, end):
        with mm.page_table_lock:
            pfns = vma.pfn[sl]
            gathered.append(pfns[present].copy())
            pfns[:] = -1
            vma.flags[sl] = 0
    return gathered


async def mmap(p: "Partition", mm: Mm, start: int, length: int, prot: int = PROT_READ | PROT_WRITE) -> Vma:
    """mmap(MAP_ANONYMOUS | MAP_PRIVATE | MAP_FIXED_NOREPLACE) under mmap_sem (write): a new
    anonymous VMA; no page is faulted in and no callout is made."""
    _check_live(mm)
    async with mm.mmap_sem.write():
        return mm.add_vma(start, length, prot)


async def munmap(p: "Partition", mm: Mm, start: int, length: int) -> None:
    """munmap(): remove [start, start+length); unmapped holes are not an error."""
    end = check_range(start, length, "munmap")
    _check_live(mm)
    async with mm.mmap_sem.write():
        if not mm.vmas_in(start, end):
            return
        mm.split_at(start)
        mm.split_at(end)
        await unmap_region(p, mm, start, end)
        mm.remove_vmas(start, end)


async def mprotect(p: "Partition", mm: Mm, start: int, length: int, prot: int) -> None:
    """mprotect(), as v3.10's sys_mprotect() walks its range under mmap_sem (write): from the
    VMA holding ``start``, each VMA piece gets mprotect_fixup(), and the walk goes on only
    while the next VMA starts where the last one ended. A hole answers -ENOMEM (``Unmapped``)
    *after* the pieces before it were changed, as the kernel leaves them; a hole at ``start``
    changes nothing. mprotect_fixup() leaves a piece whose protection is already ``prot``
    alone (no split, no callout); otherwise it splits the VMA to the piece and
    change_protection() brackets the pte update with range_start/end. Removing PROT_WRITE
    write-protects present ptes; adding it leaves them read-only until a write fault
    (anonymous private memory)."""
    end = check_range(start, length, "mprotect")
    if prot & ~(PROT_READ | PROT_WRITE):
        raise InvalidArgument(f"mprotect: prot {prot:#x} has bits outside PROT_READ|PROT_WRITE")
    _check_live(mm)
    async with mm.mmap_sem.write():
        nstart = start
        for vma in mm.vmas_in(start, end):  # nothing else changes the VMAs: mmap_sem is ours
            if vma.start > nstart:
                break  # "if (!vma || vma->vm_start != nstart) { error = -ENOMEM; ..."
            tmp = min(vma.end, end)
            await _mprotect_fixup(p, mm, vma, nstart, tmp, prot)
            nstart = tmp
        if nstart < end:
            changed = f"[{start:#x}, {nstart:#x}) was changed" if nstart > start else "nothing was changed"
            raise Unmapped(f"mprotect: [{start:#x}, {end:#x}) of {mm.name} has an unmapped hole at {nstart:#x} "
                           f"(ENOMEM; {changed})")


async def _mprotect_fixup(p: "Partition", mm: Mm, vma: Vma, start: int, end: int, prot: int) -> None:
    """mprotect_fixup() of [start, end) inside ``vma``: nothing if the protection is unchanged;
    else split_vma() to the piece, set its protection, and change_protection()."""
    if vma.prot == prot:
        return  # "if (newflags == oldflags) { *pprev = vma; return 0; }"
    mm.split_at(start)
    mm.split_at(end)
    piece = mm.find_vma(start)
    if piece is None or (piece.start, piece.end) != (start, end):
        raise InternalError(f"mprotect_fixup: split of {mm.name} at {start:#x}, {end:#x} gave {piece}")
    piece.prot = prot
    protection = MmuNotifierEvent.PROTECTION_VMA
    await p.core.invalidate_range_start(mm, start, end, event=protection)  # change_protection()
    with mm.page_table_lock:
        if not prot & PROT_WRITE:  # PROT_NONE ptes stay; faults and GUP refuse the VMA
            piece.flags &= ~np.uint8(PTE_WRITE)
        _flush_tlb(p, mm, start, end)  # flush_tlb_range()
    await p.core.invalidate_range_end(mm, start, end, event=protection)


async def fork(p: "Partition", mm: Mm) -> Mm:
    """fork() -> dup_mmap(): copy every VMA; for private writable VMAs (is_cow) write-protect
    the parent's present ptes between range_start and range_end on the parent, share the
    frames with the child (a reference each). Migration entries are waited out first (the
    kernel copies them; this model has no rmap to fix the child's up later)."""
    _check_live(mm)
    child = p.create_mm()
    async with mm.mmap_sem.write():
        for vma in list(mm.vmas):
            while (vma.flags & PTE_MIGRATION).any():
                await mm.migration_wq.wait()
            cvma = child.add_vma(vma.start, vma.end - vma.start, vma.prot)
            is_cow = vma.writable
            if is_cow:  # copy_page_range(): MMU_NOTIFY_PROTECTION_PAGE (5.10)
                await p.core.invalidate_range_start(mm, vma.start, vma.end, event=MmuNotifierEvent.PROTECTION_PAGE)
            with mm.page_table_lock:
                present = (vma.flags & PTE_PRESENT) != 0
                if is_cow:
                    vma.flags[present] &= ~np.uint8(PTE_WRITE)
                cvma.pfn[present] = vma.pfn[present]
                cvma.flags[present] = vma.flags[present] & ~np.uint8(PTE_WRITE)
                swapped = (vma.flags & PTE_SWAP) != 0
                cvma.flags[swapped] = PTE_SWAP
                p.frames.get(vma.pfn[present])
            if is_cow:
                _flush_tlb(p, mm, vma.start, vma.end)  # dup_mmap()'s flush_tlb_mm(oldmm), per VMA here
                await p.core.invalidate_range_end(mm, vma.start, vma.end, event=MmuNotifierEvent.PROTECTION_PAGE)
    return child


async def exit_mmap(p: "Partition", mm: Mm) -> TeardownTiming:
    """mmput() of the last user -> exit_mmap(): mmu_notifier_release() first (every secondary
    drops its mappings; then the list is emptied and synchronize_srcu() waits), then unmap
    everything and free the pages. Returns the timing of the release part and the total.
    Under the modern cores an OOM victim reaps itself first, as 5.10's exit_mmap() does
    (212925802454): __oom_reap_task_mm() (no notifier is left to refuse it), MMF_OOM_SKIP, then
    mmap_sem taken and dropped for write, so that a reaper still at work is waited out."""
    _check_live(mm)
    t0 = p.runtime.now()
    mm.users = 0
    timing = await p.core.release(mm)
    p.oracle.exit_freeing(mm)
    if mm.oom_victim and p.core.modern:
        await _oom_reap_mm(p, mm)
        mm.oom_skip = True
        await mm.mmap_sem.down_write()
        mm.mmap_sem.up_write()
    if mm.vmas:
        await unmap_region(p, mm, 0, TASK_SIZE)  # no notifier is hashed any more: no callouts
    mm.vmas = []
    mm.exited = True
    mm.count -= 1  # mmdrop()
    return TeardownTiming(p.runtime.now() - t0, timing.release_us, timing.srcu_wait_us)


async def mmput(p: "Partition", mm: Mm) -> TeardownTiming | None:
    """mmput(): drop one mm_users reference; the last one runs exit_mmap() and its timing is
    returned. Once the mm has exited (a caller ran ``exit_mmap`` as the last user while this
    reference was still held) there is nothing left to drop."""
    if mm.users > 1:
        mm.users -= 1
        return None
    if mm.users == 1:
        return await exit_mmap(p, mm)
    return None


# -- the OOM reaper ---------------------------------------------------------------------------

MAX_OOM_REAP_RETRIES = 10  # mm/oom_kill.c


@dataclass(frozen=True)
class OomReap:
    """What one ``oom_reap_task`` did."""

    reaped: bool  # False: "oom_reaper: unable to reap" (every attempt was refused)
    attempts: int  # calls of oom_reap_task_mm(), 1..MAX_OOM_REAP_RETRIES
    unmapped: int  # pages the reaper unmapped (their frames are freed unless pinned)


async def oom_reap_task(p: "Partition", mm: Mm) -> OomReap:
    """The OOM reaper on a victim ``mm`` (the OOM killer chose it: mark_oom_victim(), which
    mmgrab()s it, and wake_oom_reaper()), as 5.10's oom_reap_task() does: try
    oom_reap_task_mm() up to MAX_OOM_REAP_RETRIES times, sleeping HZ/10 after each failure
    (schedule_timeout_idle()), then set MMF_OOM_SKIP whether it reaped or gave up.

    oom_reap_task_mm(): mmap_sem for read, by trylock only (a failure is an attempt); done at
    once if MMF_OOM_SKIP is set (exit_mmap is on it); else __oom_reap_task_mm() (``_oom_reap_mm``),
    which fails if any VMA was skipped. The reaper can therefore never reap an mm that a
    secondary on another partition maps: its callout would wait for the network, so its
    non-blocking start answers -EAGAIN (``nodes.remote``), every attempt.

    Only the modes with an OOM reaper (``OOM_REAPER_MODES``: it came in Linux 4.6) have it;
    in ``oom-reap-unnotified`` it is 4.6's (aac453635549): it pins mm_users
    (mmget_not_zero(), then mmput()) and unmaps without calling any notifier, the bug
    4d4bbd8526a8 closed by skipping every mm with notifiers (and 93065ac753e4 with the
    non-blocking start)."""
    if not p.core.oom_reaper:
        raise InvalidArgument(f"oom_reap_task of {mm.name}: there is no OOM reaper under {p.core.semantics} "
                              f"(Linux 4.6, aac453635549; modes {', '.join(OOM_REAPER_MODES)})")
    mm.oom_victim = True  # mark_oom_victim()
    mm.count += 1  # mmgrab(): the reaper keeps the struct, not the address space
    hz = max(1, round(1e6 / p.jiffy_us))
    attempts = unmapped = 0
    reaped = False
    try:
        while attempts < MAX_OOM_REAP_RETRIES:
            attempts += 1
            ok, n = await _oom_reap_task_mm(p, mm)
            unmapped += n
            if ok:
                reaped = True
                break
            p.runtime.trace("oom", f"oom_reaper: {mm.name} not reaped (attempt {attempts}), retrying in HZ/10")
            await p.runtime.sleep(hz // 10 * p.jiffy_us)  # schedule_timeout_idle(HZ/10)
        if not reaped:
            p.runtime.trace("oom", f"oom_reaper: unable to reap {mm.name}")
    finally:
        mm.oom_skip = True  # "Hide this mm from OOM killer"
        mm.count -= 1
    return OomReap(reaped, attempts, unmapped)


async def _oom_reap_task_mm(p: "Partition", mm: Mm) -> tuple[bool, int]:
    """oom_reap_task_mm(): (done, pages unmapped)."""
    if not p.core.modern:  # 4.6's __oom_reap_task(): mmget_not_zero() under the trylock
        if mm.users <= 0 or mm.exited:
            return True, 0
        if not mm.mmap_sem.try_down_read():
            return False, 0
        mm.users += 1
        try:
            return await _oom_reap_mm(p, mm)
        finally:
            mm.mmap_sem.up_read()
            await mmput(p, mm)
    if not mm.mmap_sem.try_down_read():  # mmap_read_trylock()
        return False, 0
    try:
        if mm.oom_skip or mm.exited:  # exit_mmap() reaps it (MMF_OOM_SKIP)
            return True, 0
        return await _oom_reap_mm(p, mm)
    finally:
        mm.mmap_sem.up_read()


async def _oom_reap_mm(p: "Partition", mm: Mm) -> tuple[bool, int]:
    """__oom_reap_task_mm(): each VMA (every VMA here is anonymous and private) gets a
    non-blocking range_start (MMU_NOTIFY_UNMAP); a refused one is skipped (the reap fails,
    to be retried), the others are zapped, range_end, TLB flush, pages put. (done, pages
    unmapped)."""
    ok, unmapped = True, 0
    for vma in list(mm.vmas):
        start, end = vma.start, vma.end
        notify = p.core.modern
        if notify and await p.core.invalidate_range_start_nonblock(mm, start, end, event=UNMAP):
            ok = False
            continue
        gathered = _zap(mm, start, end)
        if notify:
            await p.core.invalidate_range_end(mm, start, end, event=UNMAP, flags=0)
        _flush_tlb(p, mm, start, end)
        if gathered:
            pfns = np.concatenate(gathered)
            unmapped += len(pfns)
            p.runtime.trace("oom", f"oom_reaper: unmapped [{start:#x}, {end:#x}) of {mm.name}, {len(pfns)} pages put"
                                   f"{'' if notify else ', without calling the notifiers'}")
            p.frames.put(pfns)
    return ok, unmapped


# -- rmap-driven operations: migration, reclaim, KSM, THP -------------------------------------
#
# Migration and reclaim find a page again after every sleep (the anon_vma lock, a sleeping
# callout), by address, under the page-table lock, as the kernel's rmap walk re-walks the page
# table there (page_check_address()): a compaction or a reclaim holds no mmap_sem, so munmap
# and mprotect may have split the VMA (into new ``Vma`` objects) or removed it meanwhile, and
# the mm may have exited. A ``Vma`` looked up before a sleep is never written after it.

MIGRATE_REASONS = ("syscall", "compaction")


def _present_addresses(mm: Mm, start: int, end: int) -> list[int]:
    """The addresses of [start, end) whose pte is present now, in address order."""
    out = []
    for vma, sl, present in mm.iter_present(start, end):
        base = vma.start + (sl.start << PAGE_SHIFT)
        out.extend(base + (int(k) << PAGE_SHIFT) for k in np.flatnonzero(present))
    return out


def _follow_page(mm: Mm, address: int) -> tuple[Vma, int] | None:
    """follow_page(): (vma, index) of the present pte of ``address`` in ``mm`` now, or None
    (outside every VMA, absent, swapped out, under migration)."""
    vma = mm.find_vma(address)
    if vma is None:
        return None
    i = vma.index(address)
    return (vma, i) if vma.flags[i] & PTE_PRESENT else None


def _page_check_address(mm: Mm, address: int, pfn: int, *, migration: bool = False) -> tuple[Vma, int] | None:
    """page_check_address(): (vma, index) of the pte of ``address`` in ``mm`` if it still maps
    frame ``pfn``, else None (the VMA is gone, the pte zapped, or it maps another page). With
    ``migration`` the pte must instead be a migration entry for ``pfn``, as
    remove_migration_pte() checks ``migration_entry_to_page(entry) == old``. The caller holds
    the PT lock; the VMA is looked up by address, never carried across a sleep."""
    vma = mm.find_vma(address)
    if vma is None:
        return None
    i = vma.index(address)
    if not vma.flags[i] & (PTE_MIGRATION if migration else PTE_PRESENT) or vma.pfn[i] != pfn:
        return None
    return vma, i


async def migrate_pages(p: "Partition", mm: Mm, start: int, length: int, *, reason: str = "syscall") -> int:
    """Migrate each page mapped at [start, start+length) to a new frame, one by one through
    ``_unmap_and_move``; returns the pages migrated. ``reason`` (the kernel's migrate_reason)
    says who migrates, and with it what is held:

    - ``"syscall"``: move_pages() / migrate_pages() (and NUMA balancing's
      migrate_misplaced_page(), from a fault): an mm_users reference (get_task_mm()) and
      mmap_sem for read over the whole migration (do_move_page_to_node_array(),
      do_migrate_pages()). munmap and mprotect wait for it; the process's exit runs at its
      mmput().
    - ``"compaction"``: an rmap-driven migration (compact_zone() -> migrate_pages()) holds
      neither: the VMAs may be split or removed, and the mm may exit, whenever it sleeps."""
    end = check_range(start, length, "migrate_pages")
    if reason not in MIGRATE_REASONS:
        raise InvalidArgument(f"migrate_pages: reason must be one of {MIGRATE_REASONS}, got {reason!r}")
    _check_live(mm)
    if reason == "compaction":
        return await _migrate_range(p, mm, start, end)
    mm.users += 1  # get_task_mm()
    try:
        async with mm.mmap_sem.read():
            return await _migrate_range(p, mm, start, end)
    finally:
        await mmput(p, mm)


async def _migrate_range(p: "Partition", mm: Mm, start: int, end: int) -> int:
    migrated = 0
    for address in _present_addresses(mm, start, end):
        migrated += await _unmap_and_move(p, mm, address)
    return migrated


async def _unmap_and_move(p: "Partition", mm: Mm, address: int) -> bool:
    """unmap_and_move() of the page mapped at ``address``: isolate it (a reference; a page
    mapped by another mm too is skipped: no rmap here), then

    1. try_to_unmap(TTU_MIGRATION) under the anon_vma lock: if the pte still maps the page,
       replace it by a migration entry (a write migration entry if the pte was writable) and
       drop the pte's reference under the PT lock, then invalidate_page;
    2. move_to_new_page(): migrate_page_move_mapping() refuses a page with extra references
       (a pin still held: -EAGAIN); otherwise the contents are copied;
    3. remove_migration_ptes() under the anon_vma lock again (rmap_walk()): where the
       migration entry still is, map the new page (or the old one back on -EAGAIN). munmap's
       or exit's zap may have cleared the entry meanwhile: then nothing is mapped;
    4. unlock_page() wakes the faults waiting in migration_entry_wait(); putback puts the old
       page (freed here once migrated) and the new one if no pte took it.

    Returns True if the page moved (the kernel's nr_succeeded)."""
    frames = p.frames
    found = _follow_page(mm, address)
    if found is None:
        return False  # unmapped, swapped out or migrating meanwhile: skipped
    vma, i = found
    old = int(vma.pfn[i])
    if frames.refcount[old] - frames.pincount[old] > 1:
        return False  # mapped by another mm too, or isolated by another walker
    anon_vma = vma.anon_vma_lock  # page_get_anon_vma(): the page's anon_vma outlives its VMAs
    frames.get(old)  # isolate_lru_page()
    new = int(frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])  # get_new_page()
    bits = 0  # the pte's dirty and young bits, kept with the page (PageDirty, PageReferenced)
    async with anon_vma:  # try_to_unmap() walks the anon_vma
        await _unmap_one_start(p, mm, address)
        with mm.page_table_lock:
            pte = _page_check_address(mm, address, old)
            if pte is not None:
                vma, i = pte
                bits = int(vma.flags[i])
                vma.flags[i] = PTE_MIGRATION | (bits & PTE_WRITE)  # make_migration_entry()
                _flush_tlb(p, mm, address, address + PAGE_SIZE)  # no notify: the migration entry
                frames.put(old)  # page_remove_rmap(); page_cache_release()
        await _unmap_one_end(p, mm, address, unmapped=pte is not None)
    async with anon_vma:  # remove_migration_ptes() -> rmap_walk()
        with mm.page_table_lock:
            moved = bool(frames.refcount[old] == 1)  # migrate_page_move_mapping(): else -EAGAIN
            if moved:
                frames.copy_contents(np.array([new]), np.array([old]))
            page = new if moved else old
            entry = _page_check_address(mm, address, old, migration=True)
            if entry is not None:  # remove_migration_pte()
                vma, i = entry
                if page == old:
                    frames.get(old)
                vma.pfn[i] = page
                vma.flags[i] = PTE_PRESENT | (vma.flags[i] & PTE_WRITE) | (bits & (PTE_DIRTY | PTE_YOUNG))
            if entry is None or page == old:
                frames.put(new)  # putback_lru_page(newpage): no pte took it, it is freed
    mm.migration_wq.wake_all()  # unlock_page(page)
    frames.put(old)  # putback: the old page is freed here once migrated
    return moved


async def reclaim(p: "Partition", mm: Mm, start: int, length: int) -> int:
    """Reclaim the pages of [start, start+length) (``_reclaim``), as lockdep sees reclaim: in
    its ``fs_reclaim`` pseudo-lock (``nodes.lockdep``)."""
    with lockdep.reclaim_map():
        return await _reclaim(p, mm, start, length)


async def _reclaim(p: "Partition", mm: Mm, start: int, length: int) -> int:
    """Reclaim the pages of [start, start+length) as shrink_page_list() would: a page whose
    accessed bit (primary or any secondary's, via clear_flush_young under the PT lock) was set
    is kept and loses the bit; an unreferenced one is unmapped by try_to_unmap_one() (which
    checks young again), becomes a swap entry, gets invalidate_page, and is freed once no
    one else holds it (a pinned page stays until unpinned). Reclaim holds no mmap_sem: after
    each anon_vma lock the pte is looked up again (page_referenced_one() and
    try_to_unmap_one() call page_check_address()). Returns the pages freed."""
    end = check_range(start, length, "reclaim")
    _check_live(mm)
    frames = p.frames
    freed = 0
    for address in _present_addresses(mm, start, end):
        found = _follow_page(mm, address)
        if found is None:
            continue
        vma, i = found
        pfn = int(vma.pfn[i])
        anon_vma = vma.anon_vma_lock
        frames.get(pfn)  # isolate_lru_page()
        async with anon_vma:  # page_referenced() -> rmap walk
            with mm.page_table_lock:
                pte = _page_check_address(mm, address, pfn)
                referenced = pte is not None and _clear_flush_young_notify(p, mm, *pte, address)
        if not referenced:
            async with anon_vma:  # try_to_unmap()
                unmapped = False
                await _unmap_one_start(p, mm, address)
                with mm.page_table_lock:
                    pte = _page_check_address(mm, address, pfn)
                    if pte is not None and not _clear_flush_young_notify(p, mm, *pte, address):
                        vma, i = pte
                        vma.pfn[i] = -1
                        vma.flags[i] = PTE_SWAP  # swap entry; pageout() wrote the contents
                        # 5.10: "Invalidate as we cleared the pte": mmu_notifier_invalidate_range()
                        _flush_tlb(p, mm, address, address + PAGE_SIZE, notify=True)
                        frames.put(pfn)
                        unmapped = True
                await _unmap_one_end(p, mm, address, unmapped=unmapped)
            if frames.refcount[pfn] == 1:
                freed += 1  # __remove_mapping(): only our isolation reference is left
        frames.put(pfn)  # free, or putback_lru_page()
    return freed


async def _unmap_one_start(p: "Partition", mm: Mm, address: int) -> None:
    """try_to_unmap_one() of the modern kernels (369ea8242c0f, Linux 4.13): range_start
    (MMU_NOTIFY_CLEAR) of the page before its pte is looked up; v3.10 has nothing here."""
    if p.core.modern:
        await p.core.invalidate_range_start(mm, address, address + PAGE_SIZE, event=CLEAR)


async def _unmap_one_end(p: "Partition", mm: Mm, address: int, *, unmapped: bool) -> None:
    """The end of try_to_unmap_one(): range_end (modern), or v3.10's invalidate_page after a
    pte was cleared (``unmapped``)."""
    if p.core.modern:
        await p.core.invalidate_range_end(mm, address, address + PAGE_SIZE, event=CLEAR)
    elif unmapped:
        await p.core.invalidate_page(mm, address)


def _clear_flush_young_notify(p: "Partition", mm: Mm, vma: Vma, i: int, address: int) -> int:
    """ptep_clear_flush_young_notify(): primary accessed bit OR every secondary's. Caller
    holds the PT lock."""
    young = int(vma.flags[i] & PTE_YOUNG != 0)
    vma.flags[i] &= ~np.uint8(PTE_YOUNG)
    return young | p.core.clear_flush_young(mm, address)


async def _write_protect_page(p: "Partition", mm: Mm, vma: Vma, address: int) -> tuple[int, int] | None:
    """ksm write_protect_page(): under range_start/end, write-protect the pte with
    set_pte_at_notify unless someone else holds a reference (a GUP pin: KSM gives up).
    Returns the resulting pte, or None if the page cannot be merged."""
    i = vma.index(address)
    await _set_pte_range(p, True, mm, address, address + PAGE_SIZE)
    result: tuple[int, int] | None = None
    with mm.page_table_lock:
        pfn, flags = int(vma.pfn[i]), int(vma.flags[i])
        if flags & PTE_PRESENT:
            if flags & (PTE_WRITE | PTE_DIRTY):
                if p.frames.pincount[pfn] == 0:  # page_mapcount + 1 == page_count
                    pte = (pfn, flags & ~(PTE_WRITE | PTE_DIRTY))

                    def set_pte() -> None:
                        vma.flags[i] = pte[1]

                    vma.flags[i] = 0  # ptep_clear_flush()
                    _flush_tlb(p, mm, address, address + PAGE_SIZE)
                    p.core.set_pte_at_notify(mm, address, pte, set_pte)
                    result = pte
            else:
                result = (pfn, flags)
    await _set_pte_range(p, False, mm, address, address + PAGE_SIZE)
    return result


async def _replace_page(p: "Partition", mm: Mm, vma: Vma, address: int, kpfn: int, orig: tuple[int, int]) -> bool:
    """ksm replace_page(): under range_start/end, point the pte at the KSM page with
    set_pte_at_notify and drop the old page's pte reference."""
    i = vma.index(address)
    await _set_pte_range(p, True, mm, address, address + PAGE_SIZE)
    done = False
    with mm.page_table_lock:
        if (int(vma.pfn[i]), int(vma.flags[i])) == orig:  # pte_same()
            p.frames.get(kpfn)
            pte = (kpfn, PTE_PRESENT | (orig[1] & PTE_YOUNG))

            def set_pte() -> None:
                vma.pfn[i], vma.flags[i] = pte

            vma.flags[i] = 0  # ptep_clear_flush()
            _flush_tlb(p, mm, address, address + PAGE_SIZE)
            p.core.set_pte_at_notify(mm, address, pte, set_pte)
            p.frames.put(orig[0])  # put_page(page); ksmd still holds its own reference
            done = True
    await _set_pte_range(p, False, mm, address, address + PAGE_SIZE)
    return done


async def ksm_merge(p: "Partition", mm_a: Mm, addr_a: int, mm_b: Mm, addr_b: int) -> bool:
    """ksmd merging the page at (mm_b, addr_b) into the page at (mm_a, addr_a), as
    try_to_merge_two_pages() does once memcmp_pages() found them identical (the model does not
    compare contents: the caller declares them identical). The page of ``mm_a`` is
    write-protected and becomes the KSM page; the pte of ``mm_b`` is write-protected, then
    replaced to map the KSM page, and its old page is freed when ksmd drops its reference.
    Returns False if either page is absent, pinned, or changed underneath.

    ksmd holds no mmap_sem between the two merges: as try_to_merge_with_ksm_page() does, each
    takes it for read, gives up if the mm is exiting (ksm_test_exit(): mm_users is 0) and
    finds the VMA again (find_mergeable_vma(): munmap may have removed it). Within each,
    mmap_sem keeps the VMA as it is across the callouts' sleeps."""
    for mm, a in ((mm_a, addr_a), (mm_b, addr_b)):
        _check_live(mm)
        mm.vma_or_fault(a)
    addr_a, addr_b = _page(addr_a), _page(addr_b)
    frames = p.frames
    pa, _ = mm_a.pte(addr_a)
    pb, _ = mm_b.pte(addr_b)
    if pa < 0 or pb < 0 or pa == pb:
        return False
    frames.get(pa)  # follow_page(): ksmd's references while it works
    frames.get(pb)
    try:
        async with mm_a.mmap_sem.read():
            vma_a = mm_a.find_vma(addr_a)
            if mm_a.users <= 0 or vma_a is None:  # ksm_test_exit(), find_mergeable_vma()
                return False
            kpte = await _write_protect_page(p, mm_a, vma_a, addr_a)
            if kpte is None or kpte[0] != pa:
                return False
            frames.ksm.add(pa)  # the page becomes the stable KSM page
        async with mm_b.mmap_sem.read():
            vma_b = mm_b.find_vma(addr_b)
            if mm_b.users <= 0 or vma_b is None:
                return False
            orig = await _write_protect_page(p, mm_b, vma_b, addr_b)
            if orig is None or orig[0] != pb:
                return False
            return await _replace_page(p, mm_b, vma_b, addr_b, pa, orig)
    finally:
        frames.put(np.array([pa, pb]))


async def thp_collapse(p: "Partition", mm: Mm, address: int) -> bool:
    """khugepaged collapsing the 2 MiB block at ``address`` into a huge page. Returns True if
    collapsed, False where khugepaged declines (a pte write-protected, a page with extra
    references, nothing referenced, or the mm exiting); a block that is not, or is no longer,
    collapsible is refused with the errno MADV_COLLAPSE gives (madvise_collapse_errno()):

    - ``InvalidArgument`` (EINVAL): the block is not inside one VMA (hugepage_vma_revalidate():
      SCAN_VMA_NULL / SCAN_ADDRESS_RANGE, "error intrinsic to specified memory range");
    - ``Busy`` (EAGAIN): a pte of the block is not present (absent, swapped out, under
      migration). The kernel would fill an empty pte and swap a page in; the model collapses
      only fully mapped blocks, so this is "resource temporarily unavailable, trying again
      might succeed", the class SCAN_PAGE_LOCK and SCAN_PAGE_COUNT are in.

    khugepaged_scan_pmd(), under mmap_sem for read: every pte present and writable, no page
    with extra references, and at least one referenced (pte young, or a secondary's test_young
    under the PT lock, asked for each pte that is not young).
    collapse_huge_page(): mmap_sem for write (khugepaged_test_exit(), then the VMA checked
    again), the anon_vma lock, range_start, clear the pmd, range_end,
    __collapse_huge_page_isolate() (every pte still present and writable, no page with an
    extra reference: else the pmd is put back), copy into the new frames, free the old pages,
    map the huge page (writable as the VMA is: maybe_pmd_mkwrite()). mmap_sem and the anon_vma
    lock keep the block as it is from the pmd clear to the huge pmd."""
    if address % HPAGE_PMD_SIZE:
        raise InvalidArgument(f"thp_collapse: address {address:#x} is not 2 MiB aligned")
    _check_live(mm)
    start, end = address, address + HPAGE_PMD_SIZE
    frames = p.frames

    def whole_vma() -> Vma:
        vma = mm.find_vma(start)
        if vma is None or vma.end < end:
            where = "no VMA" if vma is None else f"VMA [{vma.start:#x}, {vma.end:#x})"
            raise InvalidArgument(
                f"thp_collapse: the 2 MiB block [{start:#x}, {end:#x}) of {mm.name} is not inside one VMA "
                f"({where} at {start:#x})"
            )
        return vma

    def not_present(flags: np.ndarray) -> Busy | None:
        absent = np.flatnonzero((flags & PTE_PRESENT) == 0)
        if not len(absent):
            return None
        return Busy(
            f"thp_collapse: the pte of {start + (int(absent[0]) << PAGE_SHIFT):#x} in the 2 MiB block at {start:#x} "
            f"of {mm.name} is not present ({len(absent)} of {HPAGE_PMD_NR} are not): the block cannot be collapsed now"
        )

    def scan(vma: Vma) -> bool:
        sl = vma.pages(start, end)
        flags, pfns = vma.flags[sl], vma.pfn[sl]
        bad = np.flatnonzero((flags & (PTE_PRESENT | PTE_WRITE)) != (PTE_PRESENT | PTE_WRITE))
        if len(bad):  # the first pte that fails decides, as the kernel's per-pte loop does
            error = not_present(flags) if not flags[bad[0]] & PTE_PRESENT else None
            if error is not None:
                raise error
            return False  # write-protected (SCAN_PAGE_RO)
        if (frames.refcount[pfns] != 1).any():
            return False  # SCAN_PAGE_COUNT
        referenced = False
        with mm.page_table_lock:
            for k in range(HPAGE_PMD_NR):
                # v3.10 khugepaged_scan_pmd(): every pte is looked at; `||` short-circuits per
                # pte only, and the notifier is asked about `address`, the 2 MiB base, not the
                # pte's own address (as the v3.10 source does)
                if flags[k] & PTE_YOUNG or p.core.test_young(mm, start):
                    referenced = True
        return referenced

    async with mm.mmap_sem.read():
        if mm.users <= 0:  # khugepaged_test_exit()
            return False
        if not scan(whole_vma()):
            return False
    new = frames.alloc(mm.id, np.arange(start >> PAGE_SHIFT, end >> PAGE_SHIFT))  # khugepaged_alloc_page
    async with mm.mmap_sem.write():
        try:
            if mm.users <= 0:  # khugepaged_test_exit()
                frames.put(new)
                return False
            vma = whole_vma()
        except BaseException:
            frames.put(new)
            raise
        sl = vma.pages(start, end)
        async with vma.anon_vma_lock:
            await p.core.invalidate_range_start(mm, start, end, event=CLEAR)
            with mm.page_table_lock:  # pmdp_clear_flush(): the pte table is detached
                old_pfns, old_flags = vma.pfn[sl].copy(), vma.flags[sl].copy()
                vma.pfn[sl] = -1
                vma.flags[sl] = 0
                _flush_tlb(p, mm, start, end)
            await p.core.invalidate_range_end(mm, start, end, event=CLEAR)
            with mm.page_table_lock:  # __collapse_huge_page_isolate()
                error = not_present(old_flags)
                ok = (error is None and bool((old_flags & PTE_WRITE).all())
                      and bool((frames.refcount[old_pfns] == 1).all()))
                if not ok:  # restore the pmd, as collapse_huge_page does on failure
                    vma.pfn[sl], vma.flags[sl] = old_pfns, old_flags
            if not ok:
                frames.put(new)
                if error is not None:
                    raise error
                return False
            frames.copy_contents(new, old_pfns)  # __collapse_huge_page_copy()
            frames.put(old_pfns)
            with mm.page_table_lock:  # set_pmd_at(): map the huge page
                vma.pfn[sl] = new
                vma.flags[sl] = PTE_PRESENT | PTE_DIRTY | PTE_YOUNG | (PTE_WRITE if vma.writable else 0)
    return True
