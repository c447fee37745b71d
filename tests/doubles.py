"""Test doubles shared by the unit and stateful tests: an owner behind a network for the
secondary MMUs, and planted bugs (the model as it was before a fix) for tests that must show
their checks find the bug. (It sits in ``tests/``, beside the conftest that puts ``tests/`` on
``sys.path``, so ``from doubles import ...`` works from every test directory.)"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nodes import vmops
from nodes.mm import PAGE_SHIFT, PTE_DIRTY, PTE_MIGRATION, PTE_PRESENT, PTE_SWAP, PTE_WRITE, PTE_YOUNG, Mm, Vma, check_range
from nodes.owner import LocalOwner
from nodes.partition import Partition


class DelayedOwner(LocalOwner):
    """``LocalOwner`` behind a network: get_user_pages and put_user_pages cost ``one_way_us``
    each way, so a secondary's lookup can race an invalidation on the owner. ``answer_sent``
    is set each time a get_user_pages lookup is done on the owner and its answer leaves (a
    test clears it, then starts an invalidation the moment it is set: the answer is in
    flight)."""

    def __init__(self, partition: Partition, one_way_us: float):
        super().__init__(partition)
        self.one_way_us = one_way_us
        self.answer_sent = asyncio.Event()

    async def get_user_pages(self, mm_id, address, npages, *, write, pin):  # type: ignore[no-untyped-def]
        await self.part.runtime.sleep(self.one_way_us)
        try:
            return await super().get_user_pages(mm_id, address, npages, write=write, pin=pin)
        finally:
            self.answer_sent.set()
            await self.part.runtime.sleep(self.one_way_us)

    async def put_user_pages(self, mm_id, pfns):  # type: ignore[no-untyped-def]
        await self.part.runtime.sleep(self.one_way_us)
        await super().put_user_pages(mm_id, pfns)
        await self.part.runtime.sleep(self.one_way_us)


# -- planted bugs -------------------------------------------------------------------------------


def plant_stale_vma_bugs(monkeypatch: pytest.MonkeyPatch) -> None:
    """Put back the rmap-race bugs (nodes/vmops.py before the fix): migration (by syscall or
    compaction alike) holds neither mmap_sem nor an mm reference, and migration and reclaim
    keep using the ``Vma`` they found a page in before they slept (on the anon_vma lock, in
    invalidate_page), though munmap or mprotect split or removed it meanwhile: migration
    entries left behind, frames mapped in a dead ``Vma`` copy (inv 7), puts of freed frames.
    Everything that calls ``vmops.migrate_pages`` or ``vmops.reclaim`` gets the old code."""
    monkeypatch.setattr(vmops, "migrate_pages", _stale_migrate_pages)
    monkeypatch.setattr(vmops, "_reclaim", _stale_reclaim)


def _stale_vmas(what: str, mm: Mm, start: int, length: int) -> list[tuple[Vma, int]]:
    """The old entry of both: the range and the mm checked, then the old
    ``_present_addresses``: each present page with the VMA it is in now."""
    end = check_range(start, length, what)
    vmops._check_live(mm)
    return [(mm.vma_or_fault(a), a) for a in vmops._present_addresses(mm, start, end)]


async def _stale_migrate_pages(p: Partition, mm: Mm, start: int, length: int, *, reason: str = "syscall") -> int:
    """nodes/vmops.py migrate_pages before the fix, verbatim but for ``reason`` (ignored) and
    its entry (``_stale_vmas``)."""
    frames = p.frames
    migrated = 0
    for vma, address in _stale_vmas("migrate_pages", mm, start, length):
        i = vma.index(address)
        old = int(vma.pfn[i])
        if vma not in mm.vmas or not vma.flags[i] & PTE_PRESENT or frames.refcount[old] - frames.pincount[old] > 1:
            continue
        frames.get(old)
        new = int(frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])
        async with vma.anon_vma_lock:
            with mm.page_table_lock:
                orig_flags = int(vma.flags[i])
                vma.flags[i] = PTE_MIGRATION
                frames.put(old)
            await p.core.invalidate_page(mm, address)
        with mm.page_table_lock:
            if frames.refcount[old] != 1:
                frames.get(old)
                vma.flags[i] = orig_flags
                frames.put(new)
            else:
                frames.copy_contents(np.array([new]), np.array([old]))
                vma.pfn[i] = new
                vma.flags[i] = PTE_PRESENT | (orig_flags & (PTE_WRITE | PTE_DIRTY | PTE_YOUNG))
                migrated += 1
        mm.migration_wq.wake_all()
        frames.put(old)
    return migrated


async def _stale_reclaim(p: Partition, mm: Mm, start: int, length: int) -> int:
    """nodes/vmops.py _reclaim before the fix, verbatim but for its entry (``_stale_vmas``)."""
    frames = p.frames
    freed = 0
    for vma, address in _stale_vmas("reclaim", mm, start, length):
        i = vma.index(address)
        if vma not in mm.vmas or not vma.flags[i] & PTE_PRESENT:
            continue
        pfn = int(vma.pfn[i])
        frames.get(pfn)
        async with vma.anon_vma_lock:
            with mm.page_table_lock:
                referenced = vmops._clear_flush_young_notify(p, mm, vma, i, address)
        if not referenced:
            async with vma.anon_vma_lock:
                unmapped = False
                with mm.page_table_lock:
                    if vma.pfn[i] == pfn and vma.flags[i] & PTE_PRESENT and not vmops._clear_flush_young_notify(p, mm, vma, i, address):
                        vma.pfn[i] = -1
                        vma.flags[i] = PTE_SWAP
                        frames.put(pfn)
                        unmapped = True
                if unmapped:
                    await p.core.invalidate_page(mm, address)
        if frames.refcount[pfn] == 1 and not vma.flags[i] & PTE_PRESENT:
            freed += 1
        frames.put(pfn)
    return freed
