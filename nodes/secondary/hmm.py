"""A GPU sharing a process's virtual memory through HMM: a device page table mirroring an mm of
another partition, kept coherent by an interval notifier (the modern modes only).

Modelled on ``lib/test_hmm.c`` (the dmirror driver, v5.10 and v6.6), the kernel's own reference
device for HMM (Documentation/mm/hmm.rst), with the GPU drivers' shape where they differ
(``drivers/gpu/drm/nouveau/nouveau_svm.c``, ``drivers/gpu/drm/amd/amdgpu/amdgpu_hmm.c``). The
device lives on its own partition; every call into the owner's mm is a request through its
``OwnerPort`` (``nodes.owner``: read_begin, ``hmm_range_fault``, the notifier's insert and remove).

- The device page table (``pt``, dmirror->pt): one ``DevPte`` per page, under ``mutex``
  (dmirror->mutex), holding no page reference: coherence comes from the notifier alone.
- ``invalidate`` (dmirror_interval_invalidate(); the interval notifier's only op): a MIGRATE
  range whose owner is this device is skipped (the migration handles it); otherwise the mutex is
  taken (only tried when the range may not block: then False if it is held), the notifier's
  sequence set (``mmu_interval_set_seq``), the range's ptes zapped, and, if any was, the device
  TLB invalidated: ``tlb_invalidate_us`` until the invalidation's completion, and every device
  access already issued through a zapped pte completed (``InflightAccesses``), all before the
  mutex is dropped and the op returns, as nouveau's svm invalidate waits for the GPU under
  svmm->mutex. A non-blockable range that would have to wait for that completion answers False
  (amdgpu_hmm_invalidate_gfx() answers False to every non-blockable range).
- A device access (``access``; dmirror_read()/dmirror_write()): a pte hit reads at once through
  the owner's memory (a remote DMA read, ``owner.dma_read``); a miss runs the fault loop of
  dmirror_range_fault()::

      while True:
          past HMM_RANGE_DEFAULT_TIMEOUT: Busy (-EBUSY)
          seq = mmu_interval_read_begin(mni)           request to the owner
          pfns = hmm_range_fault(range)                request to the owner; -EBUSY: again
          mutex_lock
          if mmu_interval_read_retry(mni, seq): unlock; again
          program the device ptes (dmirror_do_fault); mutex_unlock

  The retry under the mutex is what makes the install safe: an invalidation that began after
  the read_begin either set the sequence before the mutex was taken here (retry) or takes the
  mutex after the install and zaps it.
- Device-private memory (``DeviceMemory``: dmirror_device's pages; the migration itself is the
  owner's, ``nodes.migrate_device``): ``migrate_to_device`` (dmirror_migrate()) moves pages
  into it, the owner's ptes becoming device-private entries and its frames freed; the device
  then reads them from its own memory. A pte of a device page is mapped only while no
  invalidation began since the migration's read_begin, and a fault that hmm_range_fault
  answered with one of its own pages checks the page is not on its way back (see
  ``_device_pages_stay``). The device serves the owner's calls back, its dev_pagemap_ops:
  ``migrate_to_ram`` (dmirror_devmem_fault(): erase the pte, hand back the contents) when a CPU
  of the owner, or another device, faults on such a page, and ``page_free``
  (dmirror_devmem_free()) when no owner pte refers to a page any more. Device memory has its
  own checks, on the device partition's oracle: a read of a free page or of other contents
  (invariant 6), a page freed while the device maps it (invariant 1).
- Teardown (dmirror_fops_release()): the ptes dropped and the notifier removed
  (``mmu_interval_notifier_remove``); an interval notifier has no put. At exit the owner's
  ``mn_itree_release`` invalidates everything (event RELEASE) and later faults find no mm.

Oracle reports go to the owner with the device's notifier as the secondary, as every secondary
does: each pte installed (``translation_established``) and dropped, and each read checked
against the stamp its pte was made for (invariant 6).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nodes.errors import Busy, InternalError, InvalidArgument, Released
from nodes.hmm import HMM_RANGE_DEFAULT_TIMEOUT_US, HMM_RANGE_MAX_PAGES
from nodes.interval import (ULONG_MAX, MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_read_retry,
                            mmu_interval_set_seq)
from nodes.locks import Mutex
from nodes.memory import FREE_OWNER
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, check_user_address
from nodes.notifier import MmuNotifierEvent, MmuNotifierRange, TeardownTiming
from nodes.secondary.base import InflightAccesses, keys_in_span, vpn_span

if TYPE_CHECKING:
    from nodes.oracle import Oracle
    from nodes.owner import OwnerPort, PageRef
    from nodes.runtime import Runtime

DEFAULT_DEVICE_PAGES = 1024  # device-private pages (dmirror's first chunk is 256 MB; small here)
DEFAULT_TLB_INVALIDATE_US = 5.0  # a GPU TLB invalidate and its completion ("a few us", REFERENCE 8)
PAGE_MASK = ~(PAGE_SIZE - 1)
DMIRROR_SPAN = ULONG_MAX & PAGE_MASK  # dmirror_fops_open(): the notifier covers [0, ULONG_MAX & PAGE_MASK)


@dataclass
class DevPte:
    """One entry of the device page table: the owner's frame it maps (or, ``device`` >= 0, a
    page of the device's own memory, which the owner's pte names by a device-private entry),
    whether the device may write it, and what a read through it must return."""

    pfn: int
    writable: bool
    stamp: tuple[int, int, int]
    device: int = -1


class DeviceMemory:
    """The device-private memory of a GPU (dmirror_device's chunks and free list; its
    dev_pagemap's pages), on the GPU's partition: ``npages`` pages, each free or holding the
    contents of one page of an owner's mm (owner mm id, vpn) under a fresh generation.

    Its oracle is the partition's (the device memory is this partition's, as the frames are
    the owner's): a read of a free device page, or of one whose contents are not what the
    device pte was made for, is invariant 6; a page freed while the device pt maps it is
    invariant 1; a page freed twice is an ``InternalError``."""

    def __init__(self, name: str, npages: int, oracle: "Oracle | None" = None):
        if not isinstance(npages, int) or npages < 0:
            raise InvalidArgument(f"device memory of {name}: npages must be an integer >= 0, got {npages!r}")
        self.name = name
        self.npages = npages
        self.oracle = oracle
        # invariant: owner[d] == FREE exactly for the pages on the free list
        self.owner = np.full(npages, FREE_OWNER, dtype=np.int64)
        self.vpn = np.zeros(npages, dtype=np.int64)
        self.gen = np.zeros(npages, dtype=np.int64)
        self.free_list = list(range(npages - 1, -1, -1))  # low pages first
        self.mapped = np.zeros(npages, dtype=np.int32)  # device ptes mapping each page
        self.returning: set[int] = set()  # pages migrate_to_ram handed back, until their page_free
        self._next_gen = 1

    @property
    def allocated(self) -> int:
        return self.npages - len(self.free_list)

    def alloc(self, owner: int, vpn: int) -> int | None:
        """dmirror_devmem_alloc_page() and the copy into it: a page holding (owner, vpn); None
        when the memory is full (the page is then not migrated)."""
        if not self.free_list:
            return None
        d = self.free_list.pop()
        self.owner[d], self.vpn[d], self.gen[d] = owner, vpn, self._next_gen
        self._next_gen += 1
        return d

    def stays(self, d: int) -> bool:
        """Page ``d`` is allocated and not on its way back to system memory."""
        return 0 <= d < self.npages and self.owner[d] != FREE_OWNER and d not in self.returning

    def stamp(self, d: int) -> tuple[int, int, int]:
        return int(self.owner[d]), int(self.vpn[d]), int(self.gen[d])

    def contents(self, d: int) -> tuple[int, int]:
        """The data of page ``d`` (copy_highpage()'s source)."""
        self._check(d, "copy from")
        return int(self.owner[d]), int(self.vpn[d])

    def free(self, d: int) -> None:
        """dmirror_devmem_free(): back on the free list."""
        self._check(d, "free")
        if self.mapped[d] and self.oracle is not None:
            self.oracle.violation(1, f"device page {d} of {self.name} freed while the device maps it", device=self.name)
        self.owner[d] = FREE_OWNER
        self.returning.discard(d)
        self.free_list.append(d)

    def read(self, d: int, expected: tuple[int, int, int], address: int) -> tuple[int, int, int]:
        """A device read of its own page ``d`` through a pte made for ``expected``."""
        actual = self.stamp(d) if 0 <= d < self.npages else (FREE_OWNER, 0, 0)
        if self.oracle is not None:
            self.oracle.checked["device read"] += 1
            if actual[0] == FREE_OWNER or actual != expected:
                state = "free" if actual[0] == FREE_OWNER else f"stamp {actual}"
                self.oracle.violation(6, f"device read of {address:#x} through device page {d} expected {expected}, "
                                         f"the page is {state}", device=self.name, address=hex(address))
        return actual

    def _check(self, d: int, what: str) -> None:
        if not isinstance(d, int) or not 0 <= d < self.npages:
            raise InvalidArgument(f"{what} device page {d!r} of {self.name}: not a page of it (0..{self.npages - 1})")
        if self.owner[d] == FREE_OWNER:
            raise InternalError(f"{what} device page {d} of {self.name}, which is free")


@dataclass
class HmmStats:
    """Counters of one HMM device mirror."""

    accesses: int = 0
    pte_hits: int = 0
    faults: int = 0  # dmirror_range_fault() calls that programmed the device ptes
    read_retries: int = 0  # installs refused by mmu_interval_read_retry()
    busy: int = 0  # hmm_range_fault() answers -EBUSY (check_retry on the owner)
    invalidates: int = 0  # invalidate callbacks that set the sequence
    zapped: int = 0  # device ptes dropped by invalidations
    tlb_invalidates: int = 0  # device TLB invalidations waited for
    own_migrate_skipped: int = 0  # MIGRATE ranges of this device's own migrations, skipped
    migrated_to_device: int = 0  # pages migrate_to_device() installed in device memory
    migrated_to_ram: int = 0  # device pages the owner's CPU faulted back (migrate_to_ram)
    device_reads: int = 0  # accesses served from device memory
    nonblock_refused: int = 0  # non-blockable ranges answered False


class HmmMirror(MmuIntervalNotifierOps):
    """One process's mirror on a GPU (struct dmirror): its interval notifier over the whole
    address space of mm ``mm_id`` of the owner, its page table and its mutex."""

    def __init__(self, runtime: "Runtime", owner: "OwnerPort", mm_id: int, name: str, *,
                 tlb_invalidate_us: float = DEFAULT_TLB_INVALIDATE_US,
                 fault_timeout_us: float = HMM_RANGE_DEFAULT_TIMEOUT_US,
                 devmem: DeviceMemory | None = None, oracle: "Oracle | None" = None):
        if not tlb_invalidate_us >= 0:
            raise InvalidArgument(f"HMM device {name}: tlb_invalidate_us must be >= 0, got {tlb_invalidate_us!r}")
        if not fault_timeout_us > 0:
            raise InvalidArgument(f"HMM device {name}: fault_timeout_us must be positive, got {fault_timeout_us!r}")
        self.runtime = runtime
        self.owner = owner
        self.mm_id = mm_id
        self.name = name
        self.tlb_invalidate_us = float(tlb_invalidate_us)
        self.fault_timeout_us = float(fault_timeout_us)
        self.mni = MmuIntervalNotifier(name)  # dmirror->notifier
        self.mutex = Mutex(f"{name}.mutex")  # dmirror->mutex: the driver lock of the read_retry pattern
        self.pt: dict[int, DevPte] = {}  # dmirror->pt, by virtual page number; under mutex
        self.inflight = InflightAccesses(name)  # device accesses issued and not complete, by vpn
        self.closing = False  # teardown began: no pte is installed any more (under mutex)
        self.inserted = False
        self.stats = HmmStats()
        # the driver's own timings, (end time, us): each device fault (dmirror_range_fault(), read_begin
        # to the ptes programmed, retries included) and each invalidate callback that set the
        # sequence (the mutex wait, the zap and the device TLB completion): the harness's
        # device_fault and device_invalidate metrics, as ODP's
        self.fault_times: list[tuple[float, float]] = []
        self.invalidate_times: list[tuple[float, float]] = []
        # the GPU's device-private memory (dmirror->mdevice): its own unless shared with other mirrors
        self.devmem = devmem if devmem is not None else DeviceMemory(name, DEFAULT_DEVICE_PAGES, oracle)

    def __repr__(self) -> str:
        return f"HmmMirror({self.name}, mm {self.mm_id}, {len(self.pt)} ptes)"

    # -- the notifier ---------------------------------------------------------------------------

    async def register(self) -> None:
        """dmirror_fops_open(): mmu_interval_notifier_insert() over the whole address space. The
        owner refuses it under a core without interval notifiers (v3.10 and its history)."""
        await self.owner.interval_notifier_insert(self.mni, self.mm_id, 0, DMIRROR_SPAN, self)
        self.inserted = True

    async def invalidate(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> bool:
        """dmirror_interval_invalidate() (see the module docstring)."""
        if range.event == MmuNotifierEvent.MIGRATE and range.owner is not None and range.owner == self.pgmap_owner:
            self.stats.own_migrate_skipped += 1
            return True
        first, last = vpn_span(range.start, range.end)
        t0 = self.runtime.now()
        if range.blockable():
            await self.mutex.lock()
        elif not self.mutex.trylock():
            self.stats.nonblock_refused += 1
            return False
        try:
            gone = keys_in_span(self.pt, first, last)
            if not range.blockable() and gone and (self.tlb_invalidate_us > 0 or len(self.inflight)):
                self.stats.nonblock_refused += 1  # the completion would have to be waited for
                return False
            mmu_interval_set_seq(mni, cur_seq)
            self.stats.invalidates += 1
            if gone:
                self._zap(gone)
                await self._tlb_invalidate(first, last)
        finally:
            self.mutex.unlock()
        self.invalidate_times.append((self.runtime.now(), self.runtime.now() - t0))
        return True

    @property
    def pgmap_owner(self) -> str:
        """dev_pagemap.owner of this device's memory, as a MIGRATE range names it."""
        return f"hmm:{self.name}"

    def _zap(self, vpns: list[int]) -> None:
        """dmirror_do_update(): drop these ptes and report them. Caller holds the mutex."""
        ptes = [self.pt.pop(v) for v in vpns]
        self.stats.zapped += len(ptes)
        for e in ptes:
            if e.device >= 0:
                self.devmem.mapped[e.device] -= 1
        system = [e.pfn for e in ptes if e.device < 0]
        if system:
            self.owner.translations_dropped(self.mni, self.mm_id, system)

    async def _tlb_invalidate(self, first: int, last: int) -> None:
        """The device TLB invalidate of pages [first, last] and its completion: the modelled
        latency, then every access already issued through them done."""
        self.stats.tlb_invalidates += 1
        if self.tlb_invalidate_us:
            await self.runtime.sleep(self.tlb_invalidate_us)
        await self.inflight.fence(first, last)

    # -- the fault path -------------------------------------------------------------------------

    async def fault(self, start: int, npages: int = 1, *, write: bool = False) -> None:
        """dmirror_fault(): make [start, start + npages pages) valid in the device page table,
        in ranges of at most HMM_RANGE_MAX_PAGES pages, each by dmirror_range_fault()."""
        addr = start
        end = start + npages * PAGE_SIZE
        while addr < end:
            n = min(HMM_RANGE_MAX_PAGES, (end - addr) >> PAGE_SHIFT)
            await self._range_fault(addr, n, write=write)
            addr += n * PAGE_SIZE

    async def _range_fault(self, start: int, npages: int, *, write: bool) -> None:
        """dmirror_range_fault(): the read_begin / hmm_range_fault / read_retry loop."""
        t0 = self.runtime.now()
        timeout = t0 + self.fault_timeout_us
        while True:
            if self.runtime.now() > timeout:
                raise Busy(f"HMM device {self.name}: fault of [{start:#x}, +{npages} pages) still racing "
                           f"invalidations after HMM_RANGE_DEFAULT_TIMEOUT ({self.fault_timeout_us:.0f} us)")
            seq = await self.owner.interval_read_begin(self.mni)
            try:
                pfns = await self.owner.hmm_range_fault(self.mni, self.mm_id, start, npages, write=write,
                                                        notifier_seq=seq, dev_private_owner=self.pgmap_owner)
            except Busy:
                self.stats.busy += 1
                continue
            async with self.mutex:
                if self.closing:
                    raise Released(f"HMM device {self.name}: fault of {start:#x} while the mirror is torn down")
                if mmu_interval_read_retry(self.mni, seq) or not self._device_pages_stay(pfns):
                    self.stats.read_retries += 1
                    continue
                self._do_fault(pfns)
            self.fault_times.append((self.runtime.now(), self.runtime.now() - t0))
            return

    def _device_pages_stay(self, pfns: list["PageRef"]) -> bool:
        """Whether every device page the walk reported is still this device's and not on its way
        back to system memory (a CPU fault's migrate_to_ram took it since: its MIGRATE range was
        this device's own, skipped without setting the sequence, so read_retry cannot tell).
        Caller holds the mutex."""
        return all(ref.device < 0 or self.devmem.stays(ref.device) for ref in pfns)

    def _do_fault(self, pfns: list["PageRef"]) -> None:
        """dmirror_do_fault(): store each page in the device page table (writable if the answer
        says HMM_PFN_WRITE). Caller holds the mutex, after read_retry said no."""
        for ref in pfns:
            vpn = ref.address >> PAGE_SHIFT
            old = self.pt.get(vpn)
            if old is not None:
                self._zap([vpn])
            if ref.device >= 0:  # this device's own memory (dmirror_do_fault() stores the page either way)
                self._map_device_page(vpn, ref.device, ref.writable)
                continue
            self.pt[vpn] = DevPte(ref.pfn, ref.writable, ref.stamp)
            self.owner.translation_established(self.mni, self.mm_id, ref.address, ref.pfn)
        self.stats.faults += 1

    async def access(self, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """A device access to ``address`` (dmirror_read()/dmirror_write() of one page): read the
        page through its device pte, faulting it in first on a miss (or a write through a
        read-only pte). Returns the stamp read. ``Released`` once the mirror is torn down;
        whatever the fault raises otherwise (``BadAddress``: no VMA allows it; ``NotFound``:
        the mm is gone)."""
        check_user_address(address, f"HMM device {self.name}: access")
        vpn = address >> PAGE_SHIFT
        page = vpn << PAGE_SHIFT
        self.stats.accesses += 1
        while True:
            if self.closing:
                raise Released(f"HMM device {self.name}: access to {address:#x} after teardown")
            pte = self.pt.get(vpn)
            if pte is not None and (pte.writable or not write):
                self.stats.pte_hits += 1
                if pte.device >= 0:
                    self.stats.device_reads += 1
                    return self.devmem.read(pte.device, pte.stamp, page)
                return await self.inflight.access(vpn, self.owner.dma_read(self.mni, self.mm_id, page, pte.pfn, pte.stamp))
            await self.fault(page, 1, write=write)

    # -- migration to device memory and back (nodes/migrate_device.py) --------------------------

    def _map_device_page(self, vpn: int, d: int, writable: bool) -> None:
        """A device pte of device page ``d``. Caller holds the mutex."""
        if not 0 <= d < self.devmem.npages or self.devmem.owner[d] == FREE_OWNER:
            raise InternalError(f"HMM device {self.name}: mapping device page {d!r}, which is not allocated")
        if vpn in self.pt:
            self._zap([vpn])
        self.pt[vpn] = DevPte(-1, writable, self.devmem.stamp(d), device=d)
        self.devmem.mapped[d] += 1

    async def migrate_to_device(self, start: int, npages: int) -> int:
        """dmirror_migrate() of [start, start + npages pages) (within one VMA, at most
        MIGRATE_VMA_MAX_PAGES): migrate_vma_setup() on the owner; each collected page copied
        into a new device page (dmirror_migrate_alloc_and_copy(): the copy is a DMA read of the
        owner's frame, checked by its oracle); then, under the mutex, the device ptes of the
        collected pages dropped (their frames are about to be freed), migrate_vma_pages() +
        migrate_vma_finalize() on the owner, and the installed device pages mapped
        (dmirror_migrate_finalize_and_map()) unless an invalidation began since the migration's
        read_begin; the others freed. Returns the pages migrated. (dmirror maps before
        finalize, under mmap_read_lock and an mm_users reference held across, which no request
        here holds; the read_retry is the guard instead.)"""
        seq = await self.owner.interval_read_begin(self.mni)
        mig_id, src = await self.owner.migrate_vma_setup(self.mni, self.mm_id, start, npages, self)
        dst: list[int] = []
        for s in src:
            stamp = await self.owner.dma_read(self.mni, self.mm_id, s.address, s.pfn, s.stamp)
            d = self.devmem.alloc(stamp[0], stamp[1])
            dst.append(-1 if d is None else d)
        async with self.mutex:
            stale = [s.address >> PAGE_SHIFT for s in src if s.address >> PAGE_SHIFT in self.pt]
            if stale:
                self._zap(stale)
            installed = await self.owner.migrate_vma_finalize(self.mni, mig_id, dst)
            # an invalidation since the read_begin (other than this migration's own MIGRATE
            # range, which is skipped) may have zapped the new entries before they were mapped
            # here: then the pages are only mapped by a later fault, which finds them in
            # hmm_range_fault (as dev_private_owner)
            mapped = not self.closing and not mmu_interval_read_retry(self.mni, seq)
            moved = 0
            for s, d, ok in zip(src, dst, installed):
                if ok:
                    if mapped:
                        self._map_device_page(s.address >> PAGE_SHIFT, d, s.writable)
                    moved += 1
                elif d >= 0:
                    self.devmem.free(d)
        self.stats.migrated_to_device += moved
        return moved

    async def migrate_to_ram(self, mm_id: int, address: int, dpfn: int) -> tuple[int, int]:
        """dev_pagemap_ops.migrate_to_ram, the device's half (dmirror_devmem_fault_alloc_and_copy()):
        under the mutex, erase the device pte of ``address`` (xa_erase), then hand back the
        page's contents for the owner's copy. The page stays allocated until ``page_free``."""
        if mm_id != self.mm_id:
            raise InvalidArgument(f"HMM device {self.name}: migrate_to_ram for mm {mm_id!r}, but it mirrors mm {self.mm_id}")
        async with self.mutex:
            vpn = address >> PAGE_SHIFT
            if vpn in self.pt:
                self._zap([vpn])
            data = self.devmem.contents(dpfn)
            self.devmem.returning.add(dpfn)
        self.stats.migrated_to_ram += 1
        return data

    async def page_free(self, dpfns: list[int]) -> None:
        """dev_pagemap_ops.page_free (dmirror_devmem_free()): no owner pte refers to these pages."""
        for d in dpfns:
            self.devmem.free(int(d))

    # -- teardown -------------------------------------------------------------------------------

    async def unregister(self) -> TeardownTiming:
        """dmirror_fops_release(): no pte is installed from now on and every one is dropped
        (under the mutex, so no fault's install is half done), then the notifier is removed,
        which returns once no invalidate of it runs. (total, 0, 0): there is no ->release and
        no SRCU grace period; the remove may wait for an invalidation in progress."""
        t0 = self.runtime.now()
        async with self.mutex:
            self.closing = True
            if self.pt:
                self._zap(list(self.pt))
        if self.inserted:
            await self.owner.interval_notifier_remove(self.mni)
            self.inserted = False
        return TeardownTiming(self.runtime.now() - t0, 0.0, 0.0)

    async def put(self) -> TeardownTiming:
        """There is no mmu_notifier_put() for an interval notifier: refused."""
        raise InvalidArgument(f"HMM device {self.name}: teardown 'put' (mmu_notifier_put) does not apply to an "
                              f"interval notifier; it is removed (teardown 'unregister')")

    def pte(self, address: int) -> DevPte | None:
        """The device pte of ``address``, if any."""
        return self.pt.get(address >> PAGE_SHIFT)
