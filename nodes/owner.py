"""The boundary between a secondary MMU and the partition that owns the mm it maps.

A secondary never touches the owner's page tables or frames directly: it asks through an
``OwnerPort``, which is where an RPC goes when the secondary lives on another partition. The
other direction (the owner calling the secondary's ops) is the ``MmuNotifier`` interface.

``LocalOwner`` is the in-process port: the secondary and the mm share one process (and one
Python object graph). The rpc layer provides a client with the same methods.

The ``translation_*`` and ``dma_read`` methods feed the owner's oracle (invariants 1, 2 and 6):
in hardware the secondary's TLB fill and remote read do not involve the owner's CPU, but the
owner is where the frames, and so the ground truth, live.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, NamedTuple, Protocol

import numpy as np

from nodes.errors import InvalidArgument, NotFound
from nodes.interval import (MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_notifier_insert,
                            mmu_interval_notifier_remove, mmu_interval_read_begin)
from nodes.mm import Mm, check_user_address
from nodes.notifier import MmuNotifier, TeardownTiming

if TYPE_CHECKING:
    from nodes.migrate_device import DevPagemapOps, MigrateSrc
    from nodes.partition import Partition
    from nodes.runtime import TaskSignals
    from nodes.secondary.xpmem import XpmemCred, XpmemGrant


class MmRef(NamedTuple):
    """How a secondary sees the mm a callout is about when the mm lives elsewhere (or when the
    secondary tears itself down): its id and name, and the owner's invalidate sequence of the
    mm as the callout left (``Mm.invalidate_seq``, after the core's bump for this callout).

    A named tuple, immutable as a frozen dataclass would be, but made without a
    ``object.__setattr__`` per field: the secondary's side of every callout makes one."""

    id: int
    name: str
    invalidate_seq: int = 0


@dataclass(frozen=True)
class PageRef:
    """One page handed to a secondary: where it is and what it holds."""

    address: int  # user virtual address in the owner's mm (page aligned)
    pfn: int  # frame on the owner's partition
    stamp: tuple[int, int, int]  # contents when handed out: (owner mm, vpn, generation)
    writable: bool  # the primary pte was writable (a write fault breaks COW first)
    # the mm's invalidate sequence read before the lookup (mmu_interval_read_begin(), on the
    # owner's side): a secondary installing this page compares it with the sequence of the
    # callouts that reach it meanwhile (nodes.secondary.base.InvalidateSeq)
    invalidate_seq: int = 0
    # hmm_range_fault() with a dev_private_owner: the page is in that device's own memory, and
    # this is its page number there (``pfn`` -1; ``stamp`` the owner's name for the data, (mm,
    # vpn, 0): the contents are the device's); -1 for system memory
    device: int = -1


class OwnerPort(Protocol):
    """What a secondary MMU may ask of the owning partition."""

    partition: str

    async def get_user_pages(self, mm_id: int, address: int, npages: int, *, write: bool, pin: bool) -> list[PageRef]:
        """get_user_pages(): fault in and return ``npages`` pages from ``address`` (under the
        mm's mmap_sem, read). With ``pin`` each page keeps a reference (and a pin) until
        ``put_user_pages``; without, the reference is dropped before returning, as GRU and
        KVM do, and the secondary relies on the notifier to learn of changes. Each page
        carries the mm's invalidate sequence read before the lookup (``PageRef``)."""

    async def put_user_pages(self, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        """Drop pins taken by ``get_user_pages(pin=True)``."""

    async def register(self, mn: MmuNotifier, mm_id: int, current: "TaskSignals | None" = None) -> None:
        """mmu_notifier_register(mn, mm)."""

    async def unregister(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        """mmu_notifier_unregister(mn, mm)."""

    async def put(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        """mmu_notifier_put() (Linux 5.4; see ``NotifierCore.put``): returns without waiting."""

    async def dma_read(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int, expected: tuple[int, int, int]) -> tuple[int, int, int]:
        """A remote read of ``pfn`` through ``mn``'s translation of ``address``; returns the
        frame's stamp (the oracle checks it against ``expected``)."""

    # Interval notifiers (the modern modes; ``nodes.interval``): ``mni`` is the secondary's
    # own, which its ``ops.invalidate`` is called with and its fault path reads with
    # ``mmu_interval_read_retry``; the tree is the owner's.

    async def interval_notifier_insert(self, mni: MmuIntervalNotifier, mm_id: int, start: int, length: int,
                                       ops: MmuIntervalNotifierOps) -> None:
        """mmu_interval_notifier_insert(mni, mm, start, length, ops)."""

    async def interval_notifier_remove(self, mni: MmuIntervalNotifier) -> None:
        """mmu_interval_notifier_remove(mni): once it returns no ``ops.invalidate`` of mni runs."""

    async def interval_read_begin(self, mni: MmuIntervalNotifier) -> int:
        """mmu_interval_read_begin(mni), on the owner (it may wait there for an invalidation to
        end); the secondary then checks ``mmu_interval_read_retry(mni, seq)`` under its lock."""

    async def hmm_range_fault(self, mni: MmuIntervalNotifier, mm_id: int, address: int, npages: int, *,
                              write: bool, notifier_seq: int, dev_private_owner: str | None = None) -> list[PageRef]:
        """hmm_range_fault() (mm/hmm.c, v5.10 and v6.6) with HMM_PFN_REQ_FAULT (and
        HMM_PFN_REQ_WRITE if ``write``), under the mm's mmap_sem (read), as the caller of
        ib_umem_odp_map_dma_and_lock() takes it: fault in the missing pages of [address,
        address + npages pages) and return a snapshot of their pfns, **without** a reference or a
        pin (the driver's safety is ``mmu_interval_read_retry`` under its own lock, not the
        page). ``Busy`` (-EBUSY) if an invalidation of ``mni`` began since ``notifier_seq``
        (``mmu_interval_check_retry(range->notifier, range->notifier_seq)``, which the walk
        checks): the caller starts again from ``interval_read_begin``. A page in the device memory
        of ``dev_private_owner`` (an HMM device's own) is reported as its device page
        (``PageRef.device``); another device's is migrated back by the fault (``nodes.hmm``)."""

    # HMM migration to the device's private memory (``nodes.migrate_device``); ``pgmap`` is
    # the device's dev_pagemap_ops (the owner calls it back: migrate_to_ram, page_free)

    async def migrate_vma_setup(self, mni: MmuIntervalNotifier, mm_id: int, start: int, npages: int,
                                pgmap: "DevPagemapOps") -> tuple[int, list["MigrateSrc"]]:
        """migrate_vma_setup() (MIGRATE_VMA_SELECT_SYSTEM, pgmap_owner ``pgmap.pgmap_owner``):
        the migration's id and the pages it collected."""

    async def migrate_vma_finalize(self, mni: MmuIntervalNotifier, migration_id: int, dst: list[int]) -> list[bool]:
        """migrate_vma_pages() and migrate_vma_finalize() with one device page (or -1) per
        collected page: which were installed."""

    def translation_established(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int) -> None:
        """``mn`` now translates ``address`` to ``pfn`` (reported at the moment of install)."""

    def translations_dropped(self, mn: MmuNotifier, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        """``mn`` dropped translations to these frames (one entry per translation)."""

    # XPMEM's source side (``nodes.secondary.xpmem.XpmemSegments`` of the owner's partition);
    # ``mn`` is the asking driver's notifier: it identifies where the attachment lives.

    async def xpmem_make(self, mm_id: int, vaddr: int, size: int, permit_mode: int, cred: "XpmemCred") -> int:
        """xpmem_make(); returns the segid."""

    async def xpmem_get(self, segid: int, flags: int, cred: "XpmemCred") -> int:
        """xpmem_get(); returns the apid."""

    async def xpmem_attach(self, mn: MmuNotifier, apid: int, offset: int, size: int, cred: "XpmemCred") -> "XpmemGrant":
        """xpmem_attach(), the source half: checks, and records the attachment as ``mn``'s."""

    async def xpmem_detach(self, mn: MmuNotifier, attachment_id: int, cred: "XpmemCred | None") -> None:
        """``mn``'s driver detached ``attachment_id``: the source side forgets it."""

    async def xpmem_release(self, apid: int, cred: "XpmemCred") -> None:
        """xpmem_release(): the permit's attachments are detached wherever they live."""

    async def xpmem_remove(self, segid: int, cred: "XpmemCred") -> None:
        """xpmem_remove(): every permit released, every attachment detached."""


class LocalOwner:
    """The in-process ``OwnerPort`` of a partition."""

    def __init__(self, partition: "Partition"):
        self.part = partition
        self.partition = partition.name

    async def get_user_pages(self, mm_id: int, address: int, npages: int, *, write: bool, pin: bool) -> list[PageRef]:
        """vmops.get_user_pages(), each page carrying the mm's invalidate sequence as it was
        before the lookup (which may sleep: mmap_sem, a migration entry), as a driver calls
        mmu_interval_read_begin() before hmm_range_fault()."""
        from nodes import vmops

        mm = self.part.mm(mm_id)
        seq = mm.invalidate_seq
        refs = await vmops.get_user_pages(self.part, mm, address, npages, write=write, pin=pin)
        return [replace(r, invalidate_seq=seq) for r in refs]

    async def put_user_pages(self, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        self.part.frames.unpin(np.asarray(pfns, dtype=np.int64))

    async def register(self, mn: MmuNotifier, mm_id: int, current: "TaskSignals | None" = None) -> None:
        await self.part.core.register(mn, self.part.mm(mm_id), current=current)

    async def unregister(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        return await self.part.core.unregister(mn, self._mm(mm_id, f"unregister of {mn.name}"))

    async def put(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"put of {mn.name}: no mm {mm_id} on partition {self.part.name}")
        return await self.part.core.put(mn, mm)

    async def interval_notifier_insert(self, mni: MmuIntervalNotifier, mm_id: int, start: int, length: int,
                                       ops: MmuIntervalNotifierOps) -> None:
        await mmu_interval_notifier_insert(self.part.core, mni, self.part.mm(mm_id), start, length, ops)

    async def interval_notifier_remove(self, mni: MmuIntervalNotifier) -> None:
        await mmu_interval_notifier_remove(mni)

    async def interval_read_begin(self, mni: MmuIntervalNotifier) -> int:
        return await mmu_interval_read_begin(mni)

    async def hmm_range_fault(self, mni: MmuIntervalNotifier, mm_id: int, address: int, npages: int, *,
                              write: bool, notifier_seq: int, dev_private_owner: str | None = None) -> list[PageRef]:
        """``nodes.hmm.hmm_range_fault``, on the notifier's mm (live or exiting: the walk
        refuses an exiting one, ``Released``)."""
        from nodes.hmm import hmm_range_fault

        mm = self._mm(mm_id, f"hmm_range_fault of {mni.name}")
        if mni.mm is not None and mni.mm is not mm:
            raise InvalidArgument(f"hmm_range_fault of {mni.name}: the notifier is on {mni.mm.name}, not on {mm.name}")
        return await hmm_range_fault(self.part, mm, mni, notifier_seq, address, npages, write=write,
                                     dev_private_owner=dev_private_owner)

    async def migrate_vma_setup(self, mni: MmuIntervalNotifier, mm_id: int, start: int, npages: int,
                                pgmap: "DevPagemapOps") -> tuple[int, list["MigrateSrc"]]:
        from nodes.migrate_device import migrate_vma_setup

        mm = self.part.mm(mm_id)
        if mni.mm is not mm:
            raise InvalidArgument(f"migrate_vma_setup of {mni.name} on {mm.name}: the notifier is inserted on "
                                  f"{getattr(mni.mm, 'name', None)!r}")
        mig = await migrate_vma_setup(self.part, mm, start, npages, pgmap)
        return mig.id, list(mig.src)

    async def migrate_vma_finalize(self, mni: MmuIntervalNotifier, migration_id: int, dst: list[int]) -> list[bool]:
        from nodes.migrate_device import migrate_vma_finalize

        return migrate_vma_finalize(self.part, migration_id, [int(d) for d in dst])

    async def dma_read(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int, expected: tuple[int, int, int]) -> tuple[int, int, int]:
        mm = self._checked(mn, mm_id, address, [pfn], "dma_read")
        return self.part.oracle.dma_read(mn, mm, address, pfn, expected)

    def translation_established(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int) -> None:
        mm = self._checked(mn, mm_id, address, [pfn], "translation_established")
        self.part.oracle.translation_established(mn, mm, address, pfn)

    def translations_dropped(self, mn: MmuNotifier, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        self._checked(mn, mm_id, None, pfns, "translations_dropped")
        self.part.oracle.translations_dropped(mn, pfns)

    # -- validation of what a secondary names (its requests may come from another partition) --

    def _mm(self, mm_id: int, what: str) -> Mm:
        """mm ``mm_id`` of this partition, live or exited (a read or report may race exit: the
        oracle judges that, not this check); ``NotFound`` if there never was one."""
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"{what}: no mm {mm_id!r} on partition {self.part.name}")
        return mm

    def _checked(self, mn: MmuNotifier, mm_id: int, address: int | None, pfns: list[int] | np.ndarray,
                 what: str) -> Mm:
        """The mm a secondary's read or report names, after checking that it exists and is the
        one ``mn`` is registered on, that ``address`` is a page of user space and that each
        frame is one of this partition's: ``NotFound`` / ``InvalidArgument`` naming the bad
        value, before the oracle records anything."""
        what = f"{what} of {mn.name}"
        mm = self._mm(mm_id, what)
        if mn.mm is not None and mn.mm is not mm:
            raise InvalidArgument(f"{what}: the notifier is registered on {mn.mm.name}, not on {mm.name}")
        if address is not None:
            check_user_address(address, what, aligned=True)
        nframes = self.part.frames.nframes
        for pfn in pfns:
            if not isinstance(pfn, (int, np.integer)) or not 0 <= pfn < nframes:
                raise InvalidArgument(
                    f"{what}: {pfn!r} is not a frame of partition {self.part.name} (0..{nframes - 1})")
        return mm

    async def xpmem_make(self, mm_id: int, vaddr: int, size: int, permit_mode: int, cred: "XpmemCred") -> int:
        return self.part.xpmem.make(mm_id, vaddr, size, permit_mode, cred)

    async def xpmem_get(self, segid: int, flags: int, cred: "XpmemCred") -> int:
        return self.part.xpmem.get(segid, flags, cred)

    async def xpmem_attach(self, mn: MmuNotifier, apid: int, offset: int, size: int, cred: "XpmemCred") -> "XpmemGrant":
        return self.part.xpmem.attach(apid, offset, size, cred, mn.driver)  # type: ignore[attr-defined]

    async def xpmem_detach(self, mn: MmuNotifier, attachment_id: int, cred: "XpmemCred | None") -> None:
        self.part.xpmem.detached(attachment_id, cred)

    async def xpmem_release(self, apid: int, cred: "XpmemCred") -> None:
        await self.part.xpmem.release(apid, cred)

    async def xpmem_remove(self, segid: int, cred: "XpmemCred") -> None:
        await self.part.xpmem.remove(segid, cred)
