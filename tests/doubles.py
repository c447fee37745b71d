"""Test doubles shared by the unit and stateful tests: an owner behind a network for the
secondary MMUs, and planted bugs (the model as it was before a fix) for tests that must show
their checks find the bug. (It sits in ``tests/``, beside the conftest that puts ``tests/`` on
``sys.path``, so ``from doubles import ...`` works from every test directory.)"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from nodes import vmops
from nodes.interval import MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_read_retry, mmu_interval_set_seq
from nodes.locks import Mutex
from nodes.mm import PAGE_SHIFT, PTE_DIRTY, PTE_MIGRATION, PTE_PRESENT, PTE_SWAP, PTE_WRITE, PTE_YOUNG, Mm, Vma, check_range
from nodes.notifier import MmuNotifierRange
from nodes.owner import LocalOwner, OwnerPort
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


class IntervalMirror(MmuIntervalNotifierOps):
    """A device mirroring part of an owner's mm through an interval notifier: the fault pattern
    of ``nodes.interval`` as lib/test_hmm.c's dmirror shows it, as small as it can be, for any
    ``OwnerPort`` (the owner's own partition, or another one across the interconnect).

    ``ptes`` (address -> pfn) is the device's page table, under ``lock``, the "driver lock"
    that both ``invalidate`` and the install in ``fault`` hold. ``fault``: read_begin, look the
    page up (it may sleep), take the lock, read_retry (start again if an invalidation began
    meanwhile), install. ``invalidate``: take the lock (only ``trylock`` when the range may
    not block, returning False if it is held), ``mmu_interval_set_seq``, zap the range.

    Test hooks, never sleeps: ``looked_up`` is set when a fault's lookup has answered; a fault
    then waits for ``gate`` (if set to an Event) before it takes the lock, so a test can start an
    invalidation between the lookup and the install. ``calls`` logs (cur_seq, start, end, event)
    of each invalidate; ``retries`` counts faults started again; ``hold`` (an Event) makes each
    blockable invalidate wait inside the lock until it is set."""

    def __init__(self, owner: OwnerPort, mm_id: int, name: str):
        self.owner = owner
        self.mm_id = mm_id
        self.mni = MmuIntervalNotifier(name)
        self.lock = Mutex(f"{name}.lock")
        self.ptes: dict[int, int] = {}
        self.calls: list[tuple[int, int, int, str]] = []
        self.retries = 0
        self.looked_up = asyncio.Event()
        self.gate: asyncio.Event | None = None
        self.hold: asyncio.Event | None = None
        self.check_retry = True  # False plants the bug: install without mmu_interval_read_retry

    async def insert(self, start: int, length: int) -> None:
        await self.owner.interval_notifier_insert(self.mni, self.mm_id, start, length, self)

    async def remove(self) -> None:
        await self.owner.interval_notifier_remove(self.mni)

    async def invalidate(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> bool:
        if range.blockable():
            await self.lock.lock()
        elif not self.lock.trylock():
            return False
        try:
            mmu_interval_set_seq(mni, cur_seq)
            self.calls.append((cur_seq, range.start, range.end, range.event.name))
            gone = [a for a in self.ptes if range.start <= a < range.end]
            if gone:
                self.owner.translations_dropped(mni, self.mm_id, [self.ptes.pop(a) for a in gone])
            if self.hold is not None and range.blockable():
                await self.hold.wait()
        finally:
            self.lock.unlock()
        return True

    async def fault(self, address: int) -> int:
        """Map ``address`` on the device; returns its pfn."""
        while True:
            seq = await self.owner.interval_read_begin(self.mni)
            [ref] = await self.owner.get_user_pages(self.mm_id, address, 1, write=False, pin=False)
            self.looked_up.set()
            if self.gate is not None:
                await self.gate.wait()
            async with self.lock:
                if self.check_retry and mmu_interval_read_retry(self.mni, seq):
                    self.retries += 1
                    continue
                self.ptes[address] = ref.pfn
                self.owner.translation_established(self.mni, self.mm_id, address, ref.pfn)
                return ref.pfn


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
