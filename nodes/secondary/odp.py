"""RDMA on-demand paging (ODP) as a secondary MMU: an mlx5-like NIC's memory region whose pages
are never pinned, kept coherent by an interval notifier (the modern modes only).

Mirrors ``drivers/infiniband/core/umem_odp.c`` and the ODP half of
``drivers/infiniband/hw/mlx5/odp.c`` and ``mr.c`` as Linux v5.10 and v6.6 have them (written from
reading them, not copied):

- ``ib_umem_odp_get()`` (``IbUmemOdp.get``): a umem of the registered range, its ``umem_mutex``
  and its ``dma_list``, and ``mmu_interval_notifier_insert()`` over exactly that range with the
  driver's ops (mlx5's ``mlx5_mn_ops``: ``mlx5_ib_invalidate_range``). ``ib_umem_odp_release()``
  (``IbUmemOdp.release``): every page unmapped under ``umem_mutex``, then
  ``mmu_interval_notifier_remove()``.
- A device page fault (``OdpMr.access`` missing in the MTT): mlx5's page-fault work
  (``mlx5_ib_eqe_pf_action`` -> ``mlx5_ib_mr_rdma_pfault_handler`` -> ``pagefault_single_data_segment``)
  calls ``pagefault_mr()`` -> ``pagefault_real_mr()`` -> ``ib_umem_odp_map_dma_and_lock()``, then
  writes the new translations into the device's MTT with ``mlx5_ib_update_xlt()`` (v6.6:
  ``mlx5r_umr_update_xlt()``), a UMR work request whose completion the driver waits for, still
  holding ``umem_mutex``, and unlocks.
- An invalidation (``OdpMr.invalidate``, ``mlx5_ib_invalidate_range()``): false at once if the
  range is not blockable (the OOM reaper's -EAGAIN); else ``umem_mutex`` (so it waits for a
  fault's install in flight), ``mmu_interval_set_seq()``, a zapping UMR per block of mapped MTT
  entries in the range, ``ib_umem_odp_unmap_dma_pages()``, unlock, true.

The fault racing an invalidation (``ib_umem_odp_map_dma_and_lock``)::

    device fault (secondary partition)           invalidation (owner partition)
    ----------------------------------           ------------------------------
    seq = mmu_interval_read_begin()  -- request -> (waits there while one of this MR runs)
    hmm_range_fault()  ----------- request ---->  pages faulted in, pfns read, nothing pinned
                                                  invalidate_range_start: the tree's seq odd
                       <-- invalidate(cur_seq) -  mlx5_ib_invalidate_range:
                                                    umem_mutex (free: the fault is not in it)
                                                    set_seq(cur_seq); zap MTT (UMR); unlock
                       <-- pfns -----------------
    umem_mutex
    read_retry(seq): cur_seq != seq -> unlock, start again from read_begin
    [else: dma_list, MTT via UMR (its completion awaited), unlock]
    [Required: a translation is written only under umem_mutex after read_retry() said no: an
     invalidation that sets the sequence later takes the mutex after the write and zaps it]

No page is pinned (safety is the sequence and the invalidation's completion, not a
reference), so an invalidation must not return before the device has stopped using the
translations it zapped: the zapping UMR completes only once the DMA already issued through
them is done (``InflightAccesses``, as a GRU flush or an ATS invalidation completes).

Every MTT entry written is reported with ``owner.translation_established`` and every one
zapped with ``owner.translations_dropped``, against the MR's interval notifier, so the owner's
oracle checks invariants 1, 2 and 6 for ODP as for the other secondaries.

Not modelled: implicit ODP (one MR over the whole address space, child MRs made on demand),
prefetch (``ib_advise_mr``), huge pages (``page_shift`` is PAGE_SHIFT), the page-fault resume
firmware command and the transport's retransmission while a fault is resolved (the
"performance pitfalls" of Fukuoka et al., which are the RC transport's timeouts, not the
memory management's), and UMR chunking (one UMR per ``update_xlt`` call).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from nodes.errors import BadAddress, Busy, InvalidArgument, Released
from nodes.interval import (MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_read_retry,
                            mmu_interval_set_seq)
from nodes.locks import Mutex
from nodes.mm import PAGE_SHIFT, PAGE_SIZE
from nodes.notifier import MmuNotifierRange, TeardownTiming
from nodes.secondary.base import InflightAccesses, page_align

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import Runtime

# One UMR work request (mlx5_ib_update_xlt -> mlx5_ib_post_send_wait: post, ring the doorbell,
# sleep until the completion's interrupt) to its completion. Not measured here: a local send
# and its CQE take about a microsecond on ConnectX-class HCAs (their quoted sub-microsecond
# message latency), the UMR adds the device's MTT write and the interrupt-driven wake-up of a
# sleeping waiter (a few us). 5 us is that order of magnitude; study it with ``umr_us``.
DEFAULT_UMR_US = 5.0
# HMM_RANGE_DEFAULT_TIMEOUT (include/linux/hmm.h): 1000 ms of -EBUSY retries before a fault fails
HMM_RANGE_DEFAULT_TIMEOUT_US = 1_000_000.0
# MLX5_UMR_MTT_ALIGNMENT / sizeof(struct mlx5_mtt) - 1 = 64 / 8 - 1: a zapping UMR may run over
# unmapped entries, but a block ends at an unmapped entry on this alignment
UMR_BLOCK_MASK = 64 // 8 - 1


@dataclass
class OdpPage:
    """One page mapped for DMA (a ``dma_list`` entry; in the kernel the DMA address with
    ODP_READ_ALLOWED_BIT and ODP_WRITE_ALLOWED_BIT in its low bits)."""

    pfn: int
    stamp: tuple[int, int, int]  # the page's contents when looked up: what a DMA read must return
    writable: bool  # ODP_WRITE_ALLOWED_BIT


@dataclass
class OdpStats:
    """Counters of one ODP MR (mlx5's odp_stats and a few of the model's own)."""

    accesses: int = 0
    mtt_hits: int = 0
    faults: int = 0  # device page faults (pagefault_mr calls)
    faulted_pages: int = 0  # pages the faults mapped (odp_stats.faults in v5.10 counts these)
    read_retries: int = 0  # mmu_interval_read_retry() said retry: the whole fault started again
    busy_retries: int = 0  # hmm_range_fault() answered -EBUSY
    invalidations: int = 0  # mlx5_ib_invalidate_range calls that took the mutex
    refused_invalidations: int = 0  # non-blockable ranges answered false (-EAGAIN)
    invalidated_pages: int = 0  # odp_stats.invalidations: MTT entries zapped
    umrs: int = 0  # mlx5_ib_update_xlt calls (each awaited to its completion)
    fenced: int = 0  # zaps that waited for DMA in flight through the entries they dropped


class IbUmemOdp:
    """struct ib_umem_odp: the registered range of the owner's mm, page by page.

    ``dma_list`` (page index -> ``OdpPage``) and ``npages`` are guarded by ``umem_mutex``;
    invariant: ``npages == len(dma_list)``. ``notifier`` is the interval notifier over
    [start, end), inserted by ``get`` and removed by ``release``."""

    def __init__(self, owner: "OwnerPort", mm_id: int, start: int, length: int, name: str, stats: OdpStats,
                 writable: bool = True):
        if not isinstance(start, int) or not isinstance(length, int) or start < 0 or length <= 0:
            raise InvalidArgument(f"ODP umem {name}: start {start!r} and length {length!r} must be integers, "
                                  f"start >= 0 and length > 0")
        self.owner = owner
        self.mm_id = mm_id  # umem->owning_mm
        self.start = page_align(start)  # ib_umem_start(): page_shift is PAGE_SHIFT
        self.end = page_align(start + length - 1) + PAGE_SIZE  # ib_umem_end()
        self.writable = writable  # umem->writable (IB_ACCESS_LOCAL_WRITE and friends)
        self.notifier = MmuIntervalNotifier(name)
        self.umem_mutex = Mutex(f"{name}.umem_mutex")
        self.dma_list: dict[int, OdpPage] = {}
        self.npages = 0
        self.stats = stats  # the MR's counters (its retries are counted here)

    def index(self, address: int) -> int:
        return (address - self.start) >> PAGE_SHIFT

    def address(self, idx: int) -> int:
        return self.start + (idx << PAGE_SHIFT)

    async def get(self, ops: MmuIntervalNotifierOps) -> None:
        """ib_umem_odp_get() -> ib_init_umem_odp(): mmu_interval_notifier_insert(&notifier,
        owning_mm, start, end - start, ops), through the owner port (the tree is the owner's)."""
        await self.owner.interval_notifier_insert(self.notifier, self.mm_id, self.start, self.end - self.start, ops)

    async def map_dma_and_lock(self, user_virt: int, npages: int, write: bool,
                               now: Callable[[], float]) -> tuple[int, list[Any]]:
        """ib_umem_odp_map_dma_and_lock() with ``fault`` set: read_begin, hmm_range_fault on the
        owner (-EBUSY retried until HMM_RANGE_DEFAULT_TIMEOUT), then ``umem_mutex`` and
        read_retry: retry the whole fault if an invalidation began meanwhile, else map each
        page into ``dma_list`` and return (the first index, the pages) **with umem_mutex held**
        (the caller writes the MTT and unlocks). Returns with the mutex free if anything
        raises. ``now`` is the runtime's clock."""
        timeout = now() + HMM_RANGE_DEFAULT_TIMEOUT_US
        start_idx = self.index(user_virt)
        while True:
            seq = await self.owner.interval_read_begin(self.notifier)
            try:
                refs = await self.owner.hmm_range_fault(self.notifier, self.mm_id, user_virt, npages, write=write,
                                                        notifier_seq=seq)
            except Busy:
                if now() > timeout:
                    raise
                self.stats.busy_retries += 1
                continue
            await self.umem_mutex.lock()
            if mmu_interval_read_retry(self.notifier, seq):
                self.umem_mutex.unlock()
                self.stats.read_retries += 1
                continue
            for k, ref in enumerate(refs):  # ib_umem_odp_map_dma_single_page()
                idx = start_idx + k
                if idx not in self.dma_list:
                    self.npages += 1
                self.dma_list[idx] = OdpPage(ref.pfn, ref.stamp, ref.writable)
            return start_idx, refs

    def unmap_dma_pages(self, first: int, last: int) -> int:
        """ib_umem_odp_unmap_dma_pages() of indices [first, last]: caller holds umem_mutex.
        Returns how many were mapped."""
        gone = [i for i in self.dma_list if first <= i <= last]
        for i in gone:
            del self.dma_list[i]
        self.npages -= len(gone)
        return len(gone)

    async def release(self) -> None:
        """ib_umem_odp_release() (explicit ODP): unmap every page under umem_mutex, then
        mmu_interval_notifier_remove(): once it returns no invalidate of this umem runs."""
        async with self.umem_mutex:
            self.unmap_dma_pages(0, self.index(self.end - 1))
        await self.owner.interval_notifier_remove(self.notifier)


class OdpMr(MmuIntervalNotifierOps):
    """struct mlx5_ib_mr of an explicit ODP registration (ibv_reg_mr with IBV_ACCESS_ON_DEMAND)
    of [start, start + length) of mm ``mm_id`` of the owner, by a NIC on this partition: its
    umem (``IbUmemOdp``), the device's translation table (``mtt``: page index -> ``OdpPage``,
    what the NIC reads through) and the UMR completion latency ``umr_us``.

    Invariant: every ``mtt`` entry is also in the umem's ``dma_list`` (the MTT is written from
    it and zapped before it is unmapped), and ``mtt`` changes only under ``umem_mutex``."""

    def __init__(self, runtime: "Runtime", owner: "OwnerPort", mm_id: int, name: str, *, start: int, length: int,
                 umr_us: float = DEFAULT_UMR_US, writable: bool = True):
        if not isinstance(umr_us, (int, float)) or isinstance(umr_us, bool) or umr_us < 0:
            raise InvalidArgument(f"ODP MR {name}: umr_us must be a number >= 0, got {umr_us!r}")
        self.runtime = runtime
        self.owner = owner
        self.mm_id = mm_id
        self.name = name
        self.umr_us = float(umr_us)
        self.stats = OdpStats()
        self.umem = IbUmemOdp(owner, mm_id, start, length, name, self.stats, writable)
        self.mtt: dict[int, OdpPage] = {}
        self.live = False  # registered and not deregistered: a fault on a dead mkey fails
        self.inflight = InflightAccesses(name)  # DMA issued through the MTT and not complete, by index
        # what the driver saw, (end time, us) each: a page fault from pagefault_mr's entry to its
        # unlock (retries included), a blockable invalidate from its entry to its return
        # (umem_mutex wait and zapping UMRs included)
        self.fault_times: list[tuple[float, float]] = []
        self.invalidate_times: list[tuple[float, float]] = []

    def __repr__(self) -> str:
        return (f"OdpMr({self.name}, mm {self.mm_id} [{self.umem.start:#x}, {self.umem.end:#x}), "
                f"{len(self.mtt)} MTT entries{'' if self.live else ', dead'})")

    @property
    def mni(self) -> MmuIntervalNotifier:
        return self.umem.notifier

    # -- registration ---------------------------------------------------------------------------

    async def register(self) -> None:
        """mlx5_ib_reg_user_mr() with IB_ACCESS_ON_DEMAND: ib_umem_odp_get(), nothing mapped
        (an ODP MR needs no valid mapping at registration). Under a core without interval
        notifiers (v3.10 and its history) the owner refuses the insert, naming the semantics."""
        await self.umem.get(self)
        self.live = True

    async def unregister(self) -> TeardownTiming:
        """ibv_dereg_mr() of the ODP MR (mlx5_ib_dereg_mr): the mkey dies (no fault resolves on
        it from now on), the MTT is zapped with one UMR under umem_mutex, then
        ib_umem_odp_release() (unmap, mmu_interval_notifier_remove). Timing: ``total_us`` the
        whole, ``release_us`` the zap (its wait for umem_mutex included), ``srcu_wait_us`` 0:
        an interval notifier's remove waits for the tree's sequence, never for an SRCU grace
        period (that wait is in the total)."""
        if not self.live:
            raise InvalidArgument(f"ODP MR {self.name}: dereg of an MR that is not registered")
        t0 = self.runtime.now()
        self.live = False
        async with self.umem.umem_mutex:
            await self._zap(0, self.umem.index(self.umem.end - 1))
        t1 = self.runtime.now()
        await self.umem.release()
        return TeardownTiming(self.runtime.now() - t0, t1 - t0, 0.0)

    async def put(self) -> TeardownTiming:
        """An interval notifier has no mmu_notifier_put(): ODP's only teardown is dereg."""
        raise InvalidArgument(f"ODP MR {self.name}: teardown 'put' (mmu_notifier_put) does not apply to an interval "
                              f"notifier; an ODP MR is torn down by dereg (teardown 'unregister')")

    # -- the interval notifier's op (mlx5_mn_ops) --------------------------------------------------

    async def invalidate(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> bool:
        """mlx5_ib_invalidate_range(): false for a range that may not block (the mutex sleeps;
        the OOM reaper retries later); else under umem_mutex (waiting for a fault's install in
        flight) mmu_interval_set_seq(), zap the MTT entries of the range, unmap their DMA, true.
        Nothing to zap when nothing is mapped (``!umem_odp->npages``)."""
        if not range.blockable():
            self.stats.refused_invalidations += 1
            return False
        t0 = self.runtime.now()
        try:
            await self._invalidate(mni, range, cur_seq)
        finally:
            self.invalidate_times.append((self.runtime.now(), self.runtime.now() - t0))
        return True

    async def _invalidate(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> None:
        async with self.umem.umem_mutex:
            mmu_interval_set_seq(mni, cur_seq)
            self.stats.invalidations += 1
            if self.umem.npages:
                start = max(self.umem.start, range.start)
                end = min(self.umem.end, range.end)
                if start < end:
                    await self._zap(self.umem.index(start), self.umem.index(end - 1))

    async def _zap(self, first: int, last: int) -> None:
        """Zap MTT entries [first, last] and unmap their DMA pages; caller holds umem_mutex. As
        mlx5_ib_invalidate_range's first loop: one zapping UMR per block of mapped entries, a
        block ending at an unmapped entry on UMR_BLOCK_MASK alignment (each awaited to its
        completion, which comes once the DMA in flight through the block is done); then
        ib_umem_odp_unmap_dma_pages()."""
        blocks: list[tuple[int, int]] = []
        begun: int | None = None
        blocks_end = -1
        for idx in sorted(i for i in self.umem.dma_list if first <= i <= last):
            if begun is not None and any((j & UMR_BLOCK_MASK) == 0 for j in range(blocks_end + 1, idx)):
                blocks.append((begun, blocks_end))
                begun = None
            if begun is None:
                begun = idx
            blocks_end = idx
        if begun is not None:
            blocks.append((begun, blocks_end))
        for b_first, b_last in blocks:
            await self._update_xlt_zap(b_first, b_last)
        self.stats.invalidated_pages += self.umem.unmap_dma_pages(first, last)

    async def _update_xlt_zap(self, first: int, last: int) -> None:
        """mlx5_ib_update_xlt(mr, first, n, 0, MLX5_IB_UPD_XLT_ZAP | MLX5_IB_UPD_XLT_ATOMIC):
        the device stops translating the entries, finishes the DMA issued through them, and
        completes the UMR ``umr_us`` after it was posted."""
        gone = [i for i in range(first, last + 1) if i in self.mtt]
        pfns = [self.mtt.pop(i).pfn for i in gone]
        if pfns:
            self.owner.translations_dropped(self.mni, self.mm_id, pfns)
        self.stats.umrs += 1
        await self.runtime.sleep(self.umr_us)
        if await self.inflight.fence(first, last):
            self.stats.fenced += 1

    # -- the device's side ---------------------------------------------------------------------

    async def access(self, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """A DMA by the NIC through this MR at ``address`` of the owner's mm (an RDMA READ or
        WRITE served by it): an MTT hit reads at once, counted in flight until done; a miss is a
        device page fault (``pagefault_mr``), after which the device retries the access (the
        fault's resume). Returns the stamp read. ``BadAddress`` outside the MR or for a write
        through a read-only MR (the kernel's -EFAULT: the QP goes to error), ``Released`` after
        dereg, and what the owner answers a fault of an exited mm or an unmapped page."""
        if write and not self.umem.writable:
            raise BadAddress(f"ODP MR {self.name}: write to {address:#x} through a read-only MR")
        if not self.umem.start <= address < self.umem.end:
            raise BadAddress(f"ODP MR {self.name}: access to {address:#x} outside [{self.umem.start:#x}, "
                             f"{self.umem.end:#x})")
        self.stats.accesses += 1
        idx = self.umem.index(address)
        page = self.umem.address(idx)
        while True:
            if not self.live:
                raise Released(f"ODP MR {self.name}: access to {address:#x} after dereg")
            entry = self.mtt.get(idx)
            if entry is not None and (entry.writable or not write):
                self.stats.mtt_hits += 1
                return await self.inflight.access(
                    idx, self.owner.dma_read(self.mni, self.mm_id, page, entry.pfn, entry.stamp))
            await self.pagefault_mr(page, 1)

    async def pagefault_mr(self, user_va: int, npages: int) -> int:
        """pagefault_mr() -> pagefault_real_mr(): ib_umem_odp_map_dma_and_lock() with the MR's
        access mask (ODP_WRITE_ALLOWED_BIT when the MR is writable, whatever the access: a read
        fault of a writable MR faults the pages in for write, as mlx5 does without
        MLX5_PF_FLAGS_DOWNGRADE), then the MTT written from the new dma_list entries with one
        UMR (mlx5_ib_update_xlt with MLX5_IB_UPD_XLT_ATOMIC), awaited to its completion with
        umem_mutex held, then unlock. Returns the pages mapped."""
        write = self.umem.writable
        if user_va < self.umem.start or user_va + npages * PAGE_SIZE > self.umem.end:
            raise BadAddress(f"ODP MR {self.name}: fault [{user_va:#x}, +{npages} pages) outside the MR")
        self.stats.faults += 1
        t0 = self.runtime.now()
        first, refs = await self.umem.map_dma_and_lock(user_va, npages, write, self.runtime.now)
        try:
            if not self.live:  # dereg won the mutex first: the mkey is dead, nothing is written
                self.umem.unmap_dma_pages(first, first + len(refs) - 1)
                raise Released(f"ODP MR {self.name}: fault at {user_va:#x} raced dereg")
            self.stats.umrs += 1
            await self.runtime.sleep(self.umr_us)  # the UMR's completion: the MTT is written
            for k in range(len(refs)):
                idx = first + k
                old = self.mtt.get(idx)
                if old is not None:  # a read-only entry upgraded by a write fault
                    self.owner.translations_dropped(self.mni, self.mm_id, [old.pfn])
                new = self.umem.dma_list[idx]
                self.mtt[idx] = new
                self.owner.translation_established(self.mni, self.mm_id, self.umem.address(idx), new.pfn)
            self.stats.faulted_pages += len(refs)
        finally:
            self.umem.umem_mutex.unlock()
        self.fault_times.append((self.runtime.now(), self.runtime.now() - t0))
        return len(refs)

    def translation(self, address: int) -> OdpPage | None:
        """The MTT entry for ``address``, if any."""
        return self.mtt.get(self.umem.index(address))


