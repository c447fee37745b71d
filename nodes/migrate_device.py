"""Migration to device-private memory and back, on the partition that owns the mm:
``migrate_vma_setup()`` / ``migrate_vma_pages()`` / ``migrate_vma_finalize()`` (v5.10
``mm/migrate.c``; v6.6 ``mm/migrate_device.c``) and the CPU fault on a device-private entry
(do_swap_page() -> ``page->pgmap->ops->migrate_to_ram()``), for a device on another partition
(``nodes.secondary.hmm``; Documentation/mm/hmm.rst, "Migration to and from device memory").

A device-private page is memory of the device (ZONE_DEVICE, MEMORY_DEVICE_PRIVATE) that the CPU
cannot address: the owner's pte holds a *device-private entry* instead (``PTE_DEVICE_PRIVATE``,
not present; ``PTE_WRITE`` kept), whose "pfn" names the page on its device
(``device_entry``: the pagemap's index on this partition and the device's page number). Its
``dev_pagemap`` (here ``DevPagemapOps``, registered in ``DevPagemaps``) is how the owner reaches
the device: ``migrate_to_ram`` (the device drops its pte of the page and hands back the
contents) and ``page_free`` (the page's last reference is gone). The owner's frame of a page
that moved is freed at finalize: device memory holds the data from then on, and no frame of the
owner is referenced by a device-private entry (invariant 7 counts present ptes only).

To the device (the driver calls, dmirror_migrate())::

    device (GPU partition)                       owner partition
    ----------------------                       ---------------
    migrate_vma_setup(start, n, owner) -------->  range_start(MIGRATE); each present page no one
                                                  else holds: pte -> migration entry (the
                                                  migration keeps the frame); range_end
               <-------- src (pfn, stamp, write) -
    alloc device pages; copy each source frame
      (a DMA read of the owner's frame)
    mutex_lock; drop the device ptes of src
    migrate_vma_pages + finalize(dst) --------->  each migration entry still there -> the
                                                  device-private entry of dst; frames put
               <-------- installed ------------
    map the installed device pages; free the
      others; mutex_unlock
    [Required: no frame freed while the device maps it; a page in device memory is read from
     device memory, and comes back to the CPU with its contents]

Back to the CPU (an owner fault on a device-private entry, also get_user_pages' and
hmm_range_fault's for another device): range_start(MIGRATE, the device as owner) ... the entry
becomes a migration entry (other faults wait), a frame is allocated, ``migrate_to_ram`` asks the
device for the contents (dmirror_devmem_fault_alloc_and_copy(): it erases its pte, then copies),
the pte maps the new frame, and ``page_free`` gives the device page back.

Deviations, each deliberate: each request takes what it needs itself (setup mmap_sem for read,
finalize the page-table lock only), rather than the driver holding mmap_read_lock across the
whole exchange, which would hold it across the network; between them the migration entries hold
the pages: a fault waits, and munmap or exit zaps the entry, which finalize then finds gone (as
remove_migration_pte() does) and gives the device page back. Pages not present are not migrated
(the kernel may migrate a hole to a zeroed device page). A fork of an mm with device-private
entries does not share them with the child (copy_nonpresent_pte() would): not modelled. The
MIGRATE range names its pgmap owner (mmu_notifier_range_init_owner()), so the migrating device
skips its own invalidation, as dmirror does.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import numpy as np

from nodes.errors import BadAddress, InvalidArgument, ModelError, NotFound, OutOfMemory
from nodes.mm import (PAGE_SHIFT, PAGE_SIZE, PTE_DEVICE_PRIVATE, PTE_DIRTY, PTE_MIGRATION, PTE_PRESENT, PTE_WRITE,
                      PTE_YOUNG, check_range)
from nodes.notifier import MmuNotifierEvent

if TYPE_CHECKING:
    from nodes.mm import Mm, Vma
    from nodes.partition import Partition

DEVICE_PFN_BITS = 32  # a device-private entry's "pfn": pagemap index << 32 | the device's page number
MIGRATE_VMA_MAX_PAGES = 64  # dmirror_migrate()'s src_pfns[64]


async def _migrate_range_start(p: "Partition", mm: "Mm", start: int, end: int, owner: str) -> None:
    """mmu_notifier_range_init_owner(MMU_NOTIFY_MIGRATE, owner) and invalidate_range_start():
    the range names the pgmap owner, so the migrating device skips its own invalidation
    (dmirror_interval_invalidate())."""
    await p.core.invalidate_range_start(mm, start, end, event=MmuNotifierEvent.MIGRATE, owner=owner)


async def _migrate_range_end(p: "Partition", mm: "Mm", start: int, end: int, owner: str) -> None:
    """invalidate_range_end() of the same MIGRATE range."""
    await p.core.invalidate_range_end(mm, start, end, event=MmuNotifierEvent.MIGRATE, owner=owner)


def device_entry(pgmap: int, dpfn: int) -> int:
    """The pfn field of a device-private entry for page ``dpfn`` of pagemap ``pgmap``."""
    return (pgmap << DEVICE_PFN_BITS) | dpfn


def split_device_entry(value: int) -> tuple[int, int]:
    """(pagemap index, device page) of a device-private entry's pfn field."""
    return int(value) >> DEVICE_PFN_BITS, int(value) & ((1 << DEVICE_PFN_BITS) - 1)


class DevPagemapOps(Protocol):
    """struct dev_pagemap_ops of one device's private memory, as the owner partition reaches it
    (the device itself on the same partition; requests to its partition otherwise)."""

    pgmap_owner: str  # dev_pagemap.owner: what a MIGRATE range and hmm_range_fault's dev_private_owner name

    async def migrate_to_ram(self, mm_id: int, address: int, dpfn: int) -> tuple[int, int]:
        """The device half of a CPU fault on device page ``dpfn`` mapped at ``address``: drop
        the device's own pte of it, return its contents (owner mm id, vpn). The page stays the
        device's until ``page_free``."""

    async def page_free(self, dpfns: list[int]) -> None:
        """dev_pagemap_ops.page_free(): no pte refers to these device pages any more."""


@dataclass
class MigrateSrc:
    """One page migrate_vma_setup() collected (an entry of migrate_vma.src with
    MIGRATE_PFN_MIGRATE): where, which frame, its contents, whether the pte was writable."""

    address: int
    pfn: int
    stamp: tuple[int, int, int]
    writable: bool


@dataclass
class MigrateVma:
    """struct migrate_vma of a migration to device memory in progress, between setup and
    finalize. Invariant: the migration holds one reference on each ``src`` frame."""

    id: int
    mm: "Mm"
    pgmap: int  # the destination pagemap's index
    src: list[MigrateSrc] = field(default_factory=list)


class DevPagemaps:
    """The device-private memory a partition's ptes may point at (the dev_pagemaps its drivers
    registered with memremap_pages()), and the migrations to it in progress."""

    def __init__(self) -> None:
        self.maps: list[DevPagemapOps] = []  # by index, never reused
        self._by_owner: dict[str, int] = {}
        self.migrations: dict[int, MigrateVma] = {}
        self._next_migration = 1

    def add(self, ops: DevPagemapOps) -> int:
        """memremap_pages(): ``ops`` serves the device memory of ``ops.pgmap_owner``; its index.
        The same owner again keeps its first index (one device, one pagemap)."""
        index = self._by_owner.get(ops.pgmap_owner)
        if index is None:
            index = self._by_owner[ops.pgmap_owner] = len(self.maps)
            self.maps.append(ops)
        return index

    def get(self, index: int) -> DevPagemapOps:
        if not 0 <= index < len(self.maps):
            raise InvalidArgument(f"no device pagemap {index} (0..{len(self.maps) - 1})")
        return self.maps[index]

    def owner_of(self, value: int) -> str:
        """dev_pagemap.owner of the device page a device-private entry names."""
        return self.get(split_device_entry(value)[0]).pgmap_owner


# -- to device memory --------------------------------------------------------------------------


async def migrate_vma_setup(p: "Partition", mm: "Mm", start: int, npages: int, pgmap: DevPagemapOps) -> MigrateVma:
    """migrate_vma_setup() with MIGRATE_VMA_SELECT_SYSTEM: under mmap_sem (read), one MIGRATE
    range over [start, start + npages pages), and each present page that only its pte holds
    (migrate_vma_check_page(): no pin, no other mapping) becomes a migration entry, the
    migration keeping its frame (migrate_vma_collect_pmd(): get_page, the migration entry, the
    pte's reference put). Others (not present, pinned, shared, already device-private) are
    left as they are. Returns the migration, registered until finalize."""
    if not isinstance(npages, int) or not 0 < npages <= MIGRATE_VMA_MAX_PAGES:
        raise InvalidArgument(f"migrate_vma_setup: npages {npages!r} is not 1..{MIGRATE_VMA_MAX_PAGES}")
    end = check_range(start, npages * PAGE_SIZE, "migrate_vma_setup")
    index = p.pgmaps.add(pgmap)
    mig = MigrateVma(p.pgmaps._next_migration, mm, index)
    p.pgmaps._next_migration += 1
    async with mm.mmap_sem.read():
        vma = mm.vma_or_fault(start)  # migrate_vma_setup(): -EINVAL unless one VMA covers the range
        if end > vma.end:
            raise InvalidArgument(f"migrate_vma_setup [{start:#x}, {end:#x}) of {mm.name} is not within one VMA "
                                  f"[{vma.start:#x}, {vma.end:#x})")
        await _migrate_range_start(p, mm, start, end, pgmap.pgmap_owner)
        try:
            with mm.page_table_lock:
                for k in range(npages):
                    address = start + k * PAGE_SIZE
                    vma = mm.find_vma(address)
                    if vma is None:
                        continue
                    i = vma.index(address)
                    flags, pfn = int(vma.flags[i]), int(vma.pfn[i])
                    if not flags & PTE_PRESENT or p.frames.refcount[pfn] != 1 or p.frames.pincount[pfn]:
                        continue
                    vma.flags[i] = PTE_MIGRATION | (flags & PTE_WRITE)  # the pte's reference becomes the migration's
                    mig.src.append(MigrateSrc(address, pfn, p.frames.stamp(pfn), bool(flags & PTE_WRITE)))
        finally:
            await _migrate_range_end(p, mm, start, end, pgmap.pgmap_owner)
    p.pgmaps.migrations[mig.id] = mig
    return mig


def migrate_vma_finalize(p: "Partition", migration_id: int, dst: list[int]) -> list[bool]:
    """migrate_vma_pages() then migrate_vma_finalize(): each source page whose ``dst`` is a
    device page (not -1) and whose migration entry is still there now has a device-private
    entry for it (writable as the pte was); every other entry gets its frame back
    (remove_migration_ptes() of a page that did not move). Then the migration's frame
    references are put: a page that moved frees its frame. Returns, per source page, whether
    the device page was installed; the device frees the others. Takes the page-table lock
    only, and wakes faults waiting on the migration entries."""
    mig = p.pgmaps.migrations.pop(migration_id, None)
    if mig is None:
        raise NotFound(f"migrate_vma_finalize: no migration {migration_id!r} in progress on {p.name}")
    if len(dst) != len(mig.src):
        p.pgmaps.migrations[migration_id] = mig
        raise InvalidArgument(f"migrate_vma_finalize of migration {migration_id}: {len(dst)} destinations for "
                              f"{len(mig.src)} source pages")
    mm = mig.mm
    installed = []
    with mm.page_table_lock:
        for s, d in zip(mig.src, dst):
            pte = _migration_entry(mm, s.address, s.pfn)
            if pte is None:  # zapped meanwhile (munmap, exit): the page is gone
                installed.append(False)
                continue
            vma, i = pte
            if d is None or d < 0:  # no device page: the old page comes back
                vma.flags[i] = PTE_PRESENT | PTE_YOUNG | (PTE_WRITE if s.writable else 0)
                p.frames.get(s.pfn)  # the pte's reference again
                installed.append(False)
                continue
            vma.pfn[i] = device_entry(mig.pgmap, int(d))
            vma.flags[i] = PTE_DEVICE_PRIVATE | (PTE_WRITE if s.writable else 0)
            installed.append(True)
    if mig.src:
        p.frames.put(np.asarray([s.pfn for s in mig.src], dtype=np.int64))
    mm.migration_wq.wake_all()
    return installed


def _migration_entry(mm: "Mm", address: int, pfn: int) -> tuple["Vma", int] | None:
    """(vma, index) if ``address`` still holds the migration entry for ``pfn``."""
    vma = mm.find_vma(address)
    if vma is None:
        return None
    i = vma.index(address)
    if not vma.flags[i] & PTE_MIGRATION or int(vma.pfn[i]) != pfn:
        return None
    return vma, i


# -- back to system memory ---------------------------------------------------------------------


async def migrate_to_ram(p: "Partition", mm: "Mm", address: int) -> None:
    """do_swap_page() on a device-private entry: its pagemap's migrate_to_ram, as
    dmirror_devmem_fault() does it (migrate_vma_setup() with MIGRATE_VMA_SELECT_DEVICE_PRIVATE
    and the device as pgmap owner, a system page allocated, the device's copy, pages,
    finalize), then page_free. The caller holds mmap_sem for read and retries its fault after
    (the entry may have changed meanwhile: then nothing is done here). An unanswered request is
    VM_FAULT_SIGBUS: ``BadAddress``."""
    vma = mm.vma_or_fault(address)
    i = vma.index(address)
    value = int(vma.pfn[i])
    if not vma.flags[i] & PTE_DEVICE_PRIVATE:
        return
    index, dpfn = split_device_entry(value)
    ops = p.pgmaps.get(index)
    await _migrate_range_start(p, mm, address, address + PAGE_SIZE, ops.pgmap_owner)
    try:
        with mm.page_table_lock:
            vma = mm.find_vma(address)
            entry = vma is not None and bool(vma.flags[vma.index(address)] & PTE_DEVICE_PRIVATE) and \
                int(vma.pfn[vma.index(address)]) == value
            if entry:
                assert vma is not None
                i = vma.index(address)
                writable = bool(vma.flags[i] & PTE_WRITE)
                vma.flags[i] = PTE_MIGRATION | (PTE_WRITE if writable else 0)
    finally:
        await _migrate_range_end(p, mm, address, address + PAGE_SIZE, ops.pgmap_owner)
    if not entry:
        return
    new = None
    try:
        new = int(p.frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])
        try:
            owner, vpn = await ops.migrate_to_ram(mm.id, address, dpfn)
        except ModelError as e:
            raise BadAddress(f"migrate_to_ram of {address:#x} of {mm.name} from device {ops.pgmap_owner}: {e} "
                             f"(VM_FAULT_SIGBUS)") from e
        p.frames.owner[new], p.frames.vpn[new] = owner, vpn  # copy_highpage()
        with mm.page_table_lock:  # migrate_vma_pages + finalize: remove_migration_ptes()
            pte = _migration_entry(mm, address, value)
            if pte is not None:
                vma, i = pte
                vma.pfn[i] = new
                vma.flags[i] = PTE_PRESENT | PTE_YOUNG | PTE_DIRTY | (vma.flags[i] & PTE_WRITE)
                new = None  # the pte's reference now
    except OutOfMemory:
        with mm.page_table_lock:  # the page stays on the device
            pte = _migration_entry(mm, address, value)
            if pte is not None:
                vma, i = pte
                vma.flags[i] = PTE_DEVICE_PRIVATE | (vma.flags[i] & PTE_WRITE)
        mm.migration_wq.wake_all()
        raise
    finally:
        if new is not None:  # zapped meanwhile, or the device did not answer
            p.frames.put(new)
    mm.migration_wq.wake_all()
    await ops.page_free([dpfn])  # the device page's last reference (put_page() in finalize)


# -- zap ---------------------------------------------------------------------------------------


def gather_device_private(mm: "Mm", start: int, end: int) -> dict[int, list[int]]:
    """The device pages that the device-private entries of [start, end) refer to, by pagemap
    (zap_pte_range(): each such entry's page is put). Caller holds the PT lock."""
    out: dict[int, list[int]] = {}
    for vma in mm.vmas_in(start, end):
        sl = vma.pages(start, end)
        mask = (vma.flags[sl] & PTE_DEVICE_PRIVATE) != 0
        for value in vma.pfn[sl][mask].tolist():
            index, dpfn = split_device_entry(value)
            out.setdefault(index, []).append(dpfn)
    return out


async def free_device_pages(p: "Partition", gathered: dict[int, list[int]]) -> None:
    """page_free() of every device page a zap released, one request per device."""
    for index, dpfns in gathered.items():
        await p.pgmaps.get(index).page_free(dpfns)


def count_device_private(p: "Partition") -> dict[str, int]:
    """The device-private entries of ``p``'s live mms, by pgmap owner: what each device's
    allocated pages must number (every device page is referred to by exactly one entry)."""
    out: dict[str, int] = {}
    for mm in p.mms.values():
        if mm.exited:
            continue
        for vma in mm.vmas:
            for value in vma.pfn[(vma.flags & PTE_DEVICE_PRIVATE) != 0].tolist():
                owner = p.pgmaps.owner_of(value)
                out[owner] = out.get(owner, 0) + 1
    return out
