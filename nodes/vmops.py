"""VM operations of a partition, each firing notifier callouts where its v3.10 caller does and
freeing frames where the kernel frees them.

| operation        | kernel path (v3.10)                                  | callouts                         |
|------------------|------------------------------------------------------|----------------------------------|
| munmap           | do_munmap -> unmap_region -> unmap_vmas               | range_start/end around the zap;  |
|                  |   ... tlb_finish_mmu frees the pages                  | pages freed after range_end      |
| mprotect         | mprotect_fixup -> change_protection                   | range_start/end per VMA piece    |
| migrate_pages    | unmap_and_move -> try_to_unmap_one(TTU_MIGRATION)     | invalidate_page per page, after  |
|                  |   -> move_to_new_page -> remove_migration_ptes        | the pte became a migration entry |
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

Simplifications, each deliberate: there is no rmap, so migration and reclaim act on the pages of
one mm (a page also mapped by another mm is skipped by migration, and reclaim unmaps only this
mm's pte); there is no swap cache (a swapped-in page is a fresh frame holding the same
contents); anonymous read faults get their own zeroed frame rather than the shared zero page; a
transparent huge page is 512 frames, not one compound page; mmu_gather batches never overflow,
so a zap frees its pages at tlb_finish_mmu after range_end.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from nodes import lockdep
from nodes.errors import BadAddress, InternalError, InvalidArgument, Released, Unmapped
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
from nodes.notifier import TeardownTiming
from nodes.owner import PageRef

if TYPE_CHECKING:
    from nodes.partition import Partition


def _page(address: int) -> int:
    return address & ~(PAGE_SIZE - 1)


def _check_live(mm: Mm) -> None:
    if mm.exited or mm.users <= 0:
        raise Released(f"{mm.name} is exiting or gone (mm_users={mm.users})")


# -- faults ---------------------------------------------------------------------------------


async def handle_mm_fault(p: "Partition", mm: Mm, address: int, *, write: bool) -> int:
    """handle_mm_fault(): make ``address`` present (and writable if ``write``); returns its
    pfn. The caller holds mmap_sem for read (which keeps the VMAs as they are)."""
    _check_live(mm)
    address = _page(address)
    vma = mm.vma_or_fault(address)
    if write and not vma.prot & PROT_WRITE:
        raise BadAddress(f"write fault at {address:#x} in read-only VMA [{vma.start:#x}, {vma.end:#x}) of {mm.name}")
    if not write and not vma.prot & PROT_READ:
        raise BadAddress(f"read fault at {address:#x} in PROT_NONE VMA [{vma.start:#x}, {vma.end:#x}) of {mm.name}")
    i = vma.index(address)
    while vma.flags[i] & PTE_MIGRATION:
        await mm.migration_wq.wait()  # migration_entry_wait()
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


async def _set_pte_range(p: "Partition", start_: bool, mm: Mm, start: int, end: int) -> None:
    """invalidate_range_start (``start_``) or _end around a set_pte_at_notify: every caller has
    bracketed it since 6bdb913f0a; before, in the ``change-pte-unwrapped`` semantics, none did."""
    if p.core.wraps_set_pte:
        await (p.core.invalidate_range_start if start_ else p.core.invalidate_range_end)(mm, start, end)


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

            vma.flags[i] = 0  # ptep_clear_flush()
            p.core.set_pte_at_notify(mm, address, pte, set_pte)
            put = old  # "Free the old page.."
    await _set_pte_range(p, False, mm, start, end)
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
    """unmap_region(): range_start, zap every present pte of [start, end) gathering the pages,
    range_end, then tlb_finish_mmu() puts them (vectorised, per VMA piece)."""
    await p.core.invalidate_range_start(mm, start, end)
    gathered = []
    for vma, sl, present in mm.iter_present(start, end):
        with mm.page_table_lock:
            pfns = vma.pfn[sl]
            gathered.append(pfns[present].copy())
            pfns[:] = -1
            vma.flags[sl] = 0
    await p.core.invalidate_range_end(mm, start, end)
    if gathered:
        p.frames.put(np.concatenate(gathered))


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
    await p.core.invalidate_range_start(mm, start, end)  # change_protection()
    with mm.page_table_lock:
        if not prot & PROT_WRITE:  # PROT_NONE ptes stay; faults and GUP refuse the VMA
            piece.flags &= ~np.uint8(PTE_WRITE)
    await p.core.invalidate_range_end(mm, start, end)


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
            if is_cow:
                await p.core.invalidate_range_start(mm, vma.start, vma.end)
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
                await p.core.invalidate_range_end(mm, vma.start, vma.end)
    return child


async def exit_mmap(p: "Partition", mm: Mm) -> TeardownTiming:
    """mmput() of the last user -> exit_mmap(): mmu_notifier_release() first (every secondary
    drops its mappings; then the list is emptied and synchronize_srcu() waits), then unmap
    everything and free the pages. Returns the timing of the release part and the total."""
    _check_live(mm)
    t0 = p.runtime.now()
    mm.users = 0
    timing = await p.core.release(mm)
    p.oracle.exit_freeing(mm)
    if mm.vmas:
        await unmap_region(p, mm, 0, TASK_SIZE)  # no notifier is hashed any more: no callouts
    mm.vmas = []
    mm.exited = True
    mm.count -= 1  # mmdrop()
    return TeardownTiming(p.runtime.now() - t0, timing.release_us, timing.srcu_wait_us)


# -- rmap-driven operations: migration, reclaim, KSM, THP -------------------------------------


def _present_addresses(mm: Mm, start: int, end: int) -> list[tuple[Vma, int]]:
    out = []
    for vma, sl, present in mm.iter_present(start, end):
        base = vma.start + (sl.start << PAGE_SHIFT)
        out.extend((vma, base + (int(k) << PAGE_SHIFT)) for k in np.flatnonzero(present))
    return out


async def migrate_pages(p: "Partition", mm: Mm, start: int, length: int) -> int:
    """Migrate each present page of [start, start+length) to a new frame (move_pages /
    NUMA balancing). Per page, as unmap_and_move() does: isolate (a reference), take the
    anon_vma lock, replace the pte by a migration entry under the PT lock and drop its
    reference, then invalidate_page; move_to_new_page() refuses a page with extra references
    (a pin still held: -EAGAIN) and the old pte is restored; otherwise the contents are copied
    and remove_migration_ptes() maps the new frame. Returns the pages migrated."""
    end = check_range(start, length, "migrate_pages")
    _check_live(mm)
    frames = p.frames
    migrated = 0
    for vma, address in _present_addresses(mm, start, end):
        i = vma.index(address)
        old = int(vma.pfn[i])
        if vma not in mm.vmas or not vma.flags[i] & PTE_PRESENT or frames.refcount[old] - frames.pincount[old] > 1:
            continue  # unmapped meanwhile, or mapped by another mm too (no rmap here)
        frames.get(old)  # isolate_lru_page()
        new = int(frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])  # get_new_page()
        async with vma.anon_vma_lock:  # try_to_unmap() walks the anon_vma
            with mm.page_table_lock:
                orig_flags = int(vma.flags[i])
                vma.flags[i] = PTE_MIGRATION
                frames.put(old)  # page_remove_rmap(); page_cache_release()
            await p.core.invalidate_page(mm, address)
        with mm.page_table_lock:
            if frames.refcount[old] != 1:  # migrate_page_move_mapping(): extra refs, -EAGAIN
                frames.get(old)
                vma.flags[i] = orig_flags  # remove_migration_ptes(page, page)
                frames.put(new)
            else:
                frames.copy_contents(np.array([new]), np.array([old]))
                vma.pfn[i] = new
                vma.flags[i] = PTE_PRESENT | (orig_flags & (PTE_WRITE | PTE_DIRTY | PTE_YOUNG))
                migrated += 1
        mm.migration_wq.wake_all()
        frames.put(old)  # putback: the old page is freed here once migrated
    return migrated


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
    one else holds it (a pinned page stays until unpinned). Returns the pages freed."""
    end = check_range(start, length, "reclaim")
    _check_live(mm)
    frames = p.frames
    freed = 0
    for vma, address in _present_addresses(mm, start, end):
        i = vma.index(address)
        if vma not in mm.vmas or not vma.flags[i] & PTE_PRESENT:
            continue
        pfn = int(vma.pfn[i])
        frames.get(pfn)  # isolate_lru_page()
        async with vma.anon_vma_lock:  # page_referenced() -> rmap walk
            with mm.page_table_lock:
                referenced = _clear_flush_young_notify(p, mm, vma, i, address)
        if not referenced:
            async with vma.anon_vma_lock:  # try_to_unmap()
                unmapped = False
                with mm.page_table_lock:
                    if vma.pfn[i] == pfn and vma.flags[i] & PTE_PRESENT and not _clear_flush_young_notify(p, mm, vma, i, address):
                        vma.pfn[i] = -1
                        vma.flags[i] = PTE_SWAP  # swap entry; pageout() wrote the contents
                        frames.put(pfn)
                        unmapped = True
                if unmapped:
                    await p.core.invalidate_page(mm, address)
        if frames.refcount[pfn] == 1 and not vma.flags[i] & PTE_PRESENT:
            freed += 1  # __remove_mapping(): only our isolation reference is left
        frames.put(pfn)  # free, or putback_lru_page()
    return freed


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
    Returns False if either page is absent, pinned, or changed underneath."""
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
            vma_a = mm_a.vma_or_fault(addr_a)
            kpte = await _write_protect_page(p, mm_a, vma_a, addr_a)
            if kpte is None or kpte[0] != pa:
                return False
            frames.ksm.add(pa)  # the page becomes the stable KSM page
        async with mm_b.mmap_sem.read():
            vma_b = mm_b.vma_or_fault(addr_b)
            orig = await _write_protect_page(p, mm_b, vma_b, addr_b)
            if orig is None or orig[0] != pb:
                return False
            return await _replace_page(p, mm_b, vma_b, addr_b, pa, orig)
    finally:
        frames.put(np.array([pa, pb]))


async def thp_collapse(p: "Partition", mm: Mm, address: int) -> bool:
    """khugepaged collapsing the 2 MiB range at ``address`` into a huge page.
    khugepaged_scan_pmd(): every pte present and writable, no page with extra references, and
    at least one referenced (pte young, or a secondary's test_young under the PT lock, asked
    for each pte that is not young).
    collapse_huge_page(): mmap_sem for write, the anon_vma lock, range_start, clear the pmd,
    range_end, isolate (abort if a page gained a reference), copy into the new frames, free the
    old pages, map the huge page. Returns True if collapsed."""
    if address % HPAGE_PMD_SIZE:
        raise InvalidArgument(f"thp_collapse: address {address:#x} is not 2 MiB aligned")
    _check_live(mm)
    start, end = address, address + HPAGE_PMD_SIZE
    frames = p.frames

    def scan(vma: Vma) -> bool:
        sl = vma.pages(start, end)
        flags, pfns = vma.flags[sl], vma.pfn[sl]
        if ((flags & (PTE_PRESENT | PTE_WRITE)) != (PTE_PRESENT | PTE_WRITE)).any():
            return False
        if (frames.refcount[pfns] != 1).any():
            return False
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
        vma = mm.find_vma(start)
        if vma is None or vma.start > start or vma.end < end or not scan(vma):
            return False
    new = frames.alloc(mm.id, np.arange(start >> PAGE_SHIFT, end >> PAGE_SHIFT))  # khugepaged_alloc_page
    async with mm.mmap_sem.write():
        vma = mm.find_vma(start)
        if vma is None or vma.start > start or vma.end < end:
            frames.put(new)
            return False
        sl = vma.pages(start, end)
        async with vma.anon_vma_lock:
            await p.core.invalidate_range_start(mm, start, end)
            with mm.page_table_lock:  # pmdp_clear_flush(): the pte table is detached
                old_pfns, old_flags = vma.pfn[sl].copy(), vma.flags[sl].copy()
                vma.pfn[sl] = -1
                vma.flags[sl] = 0
            await p.core.invalidate_range_end(mm, start, end)
            with mm.page_table_lock:  # __collapse_huge_page_isolate()
                ok = bool((old_flags & PTE_PRESENT).all()) and bool((frames.refcount[old_pfns] == 1).all())
                if not ok:  # restore the pmd, as collapse_huge_page does on failure
                    vma.pfn[sl], vma.flags[sl] = old_pfns, old_flags
            if not ok:
                frames.put(new)
                return False
            frames.copy_contents(new, old_pfns)  # __collapse_huge_page_copy()
            frames.put(old_pfns)
            with mm.page_table_lock:  # set_pmd_at(): map the huge page
                vma.pfn[sl] = new
                vma.flags[sl] = PTE_PRESENT | PTE_WRITE | PTE_DIRTY | PTE_YOUNG
    return True
