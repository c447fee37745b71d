"""The SGI GRU as a secondary MMU: a TLB of remote translations and no page tables.

Mirrors ``drivers/misc/sgi-gru/grutlbpurge.c`` (the notifier ops) and ``grufault.c`` (TLB
dropin on a miss). The GRU keeps no page tables of its own: a miss raises a TLB-miss fault that
the driver resolves by looking the page up in the owner's page table and dropping the
translation into the TLB. Protection against invalidations is one per-mm counter,
``ms_range_active``, plus a wait queue:

- ``invalidate_range_start``: ``ms_range_active += 1``, then flush the range from the TLB
  (per-page TLB-invalidate instructions, a few us each; above GRUMAXINVAL pages the whole ASID
  is dropped instead: one full flush).
- ``invalidate_range_end``: ``ms_range_active -= 1``; at zero, wake every waiter.
- ``invalidate_page``: flush one page (``gru_invalidate_page``). It does *not* touch
  ``ms_range_active``, as in the kernel.
- ``release``: ``ms_released = 1``; no dropin happens after it (here: ``Released``).
- dropin (``gru_user_dropin`` / ``gru_try_dropin``): wait until ``ms_range_active`` is zero,
  look the page up, and refuse (retry) if a range became active meanwhile.

A dropin racing an invalidation across the network. The kernel's lookup is an atomic pte walk
and the driver checks ``ms_range_active`` once, after it; the window between the two is a few
instructions. A GRU on another partition looks the page up with a remote get_user_pages, so the
check comes after a round trip, and ``ms_range_active`` is back to zero if the whole range
started and ended meanwhile; ``invalidate_page`` does not touch it at all. The v3.10 check alone
(``dropin="v3.10"``) then installs a translation of a page that is gone:

    dropin (secondary partition)             munmap (owner partition)
    ----------------------------             ------------------------
    wait_event(ms_range_active == 0)
    get_user_pages() ---- request ------->   page found, reference dropped
                     <--- range_start ----
    ms_range_active = 1, flush (the page
      is not in the TLB yet)
                     <--- range_end ------   zap ptes
    ms_range_active = 0                      pages freed
                     <--- reply ----------
    ms_range_active == 0: install            <- a translation of a freed frame

The guarded dropin (``dropin="guarded"``, the default) adds the other half of KVM's
mmu_notifier_retry(): the answer carries the owner's invalidate sequence read before the lookup,
each callout the sequence after its bump, and the install is retried if a callout for the page
with a later sequence arrived while the answer was in flight (``InvalidateSeq``, in
``nodes/secondary/base.py``; ``ms_range_active`` stays the count half):

    dropin (secondary partition)             invalidation (owner partition)
    ----------------------------             ------------------------------
    wait_event(ms_range_active == 0)
    read_begin(page)
    get_user_pages() ---- request ------->   page found; answer carries seq 4
                                             range_start (seq 5) or invalidate_page (seq 5)
                     <--- callout (seq 5) -    (migration, COW, mprotect, munmap ...)
    seen 5; flush, ms_range_active ...
                     <--- reply (seq 4) --   range_end (seq 6), page freed or changed
    ms_range_active != 0, or seen 5 > 4:
      discard, retry
    wait_event(ms_range_active == 0)
    get_user_pages()  -> the new page, or EFAULT (unmapped)
    [Required: no install between the flush and range_end, nor after an invalidation of the
     page that began after the lookup; the check, the install and the report happen with no
     suspension point between them]

A callout that overtakes nothing (it arrives after the reply) finds the translation installed
and flushes it before the owner frees the page, which is why the guard never has to wait. For a
GRU on the owner's own partition the v3.10 check is sound (the pte read and the check happen at
one instant, as in the kernel); the guard can only add a retry there.

A flush returns only once the GRU instructions already issued through the translations it drops
have completed (``InflightAccesses``): an access whose request is on the wire when the flush
comes still reads the page it was issued for, not a frame freed after the flush returned.

The TLB here belongs to this mm's ASID on the GRU serving it: ``tlb_entries`` translations, LRU
replacement (an evicted translation is reported dropped). A GRU operation that does not complete
within ``gru_timeout_us`` (10 s in hardware) is fatal: a dropin that waits longer raises
``GruTimeout``.
"""

from __future__ import annotations

import errno as _errno
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Awaitable

from nodes.errors import InternalError, InvalidArgument, ModelError, NotFound, Released
from nodes.locks import WaitQueue
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, Mm, check_user_address, check_user_span
from nodes.secondary.base import InflightAccesses, InvalidateSeq, SecondaryMmu, keys_in_span, page_align, vpn_span

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import Runtime

GRUMAXINVAL = 1024  # ranges of more pages than this drop the whole ASID (grutlbpurge.c)
DEFAULT_TLB_ENTRIES = 2048
DEFAULT_FLUSH_PER_PAGE_US = 2.0  # one TLB-invalidate instruction: "a few usec"
DEFAULT_FULL_FLUSH_US = 10.0  # drop the ASID: one ASID-wide invalidate, a few usec
GRU_TIMEOUT_US = 10_000_000.0  # a GRU operation that never completes is fatal after 10 s
# how a dropin is checked against invalidations that ran while its lookup was in flight
GRU_DROPINS = {
    "guarded": "the v3.10 ms_range_active check, and a retry if an invalidation of the page began or ended "
               "on the owner after the lookup (the owner's invalidate sequence, as KVM's mmu_notifier_retry)",
    "v3.10": "the v3.10 check alone: ms_range_active after the lookup (sound only when the lookup is atomic)",
}


class GruTimeout(ModelError):
    """A GRU operation (here: a TLB dropin) did not complete within the GRU timeout; the
    hardware declares the context dead."""

    errno = _errno.ETIMEDOUT


@dataclass
class GruTlbEntry:
    """One translation in the GRU TLB."""

    pfn: int
    stamp: tuple[int, int, int]  # the page's contents at dropin: what a read must return
    writable: bool  # dropped in for a write (tfh_write_restart's write argument)


@dataclass
class GruStats:
    """Counters of one GRU (the driver's STAT() counters, roughly)."""

    accesses: int = 0
    tlb_hits: int = 0
    dropins: int = 0  # translations installed
    refused_dropins: int = 0  # misses that found ms_range_active != 0 and had to wait
    retries: int = 0  # lookups discarded because a range became active meanwhile
    guard_retries: int = 0  # lookups discarded by the guard: a later invalidation overtook the answer
    flushes: int = 0  # TLB flush operations (one per invalidate callout)
    pages_flushed: int = 0  # per-page TLB-invalidate instructions issued
    full_flushes: int = 0  # ASID drops (range above GRUMAXINVAL pages)
    fenced_flushes: int = 0  # flushes (and releases) that waited for accesses in flight through dropped entries
    evictions: int = 0  # LRU replacements
    dropped: int = 0  # translations dropped for any reason
    unpaired_range_ends: int = 0  # range_end that took ms_range_active below zero
    timeouts: int = 0


class GruMmu(SecondaryMmu):
    """The GRU's view of one mm (struct gru_mm_struct): its notifier, its TLB, its counter."""

    def __init__(
        self,
        runtime: "Runtime",
        owner: "OwnerPort",
        mm_id: int,
        name: str,
        *,
        tlb_entries: int = DEFAULT_TLB_ENTRIES,
        flush_per_page_us: float = DEFAULT_FLUSH_PER_PAGE_US,
        full_flush_us: float = DEFAULT_FULL_FLUSH_US,
        gru_timeout_us: float = GRU_TIMEOUT_US,
        dropin: str = "guarded",
    ):
        super().__init__(runtime, owner, mm_id, name)
        if dropin not in GRU_DROPINS:
            raise InvalidArgument(f"GRU {name}: dropin must be one of {tuple(GRU_DROPINS)}, got {dropin!r}")
        if not isinstance(tlb_entries, int) or tlb_entries <= 0:
            raise InvalidArgument(f"GRU {name}: tlb_entries must be a positive integer, got {tlb_entries!r}")
        for what, value in (("flush_per_page_us", flush_per_page_us), ("full_flush_us", full_flush_us)):
            if value < 0:
                raise InvalidArgument(f"GRU {name}: {what} must not be negative, got {value!r}")
        if gru_timeout_us <= 0:
            raise InvalidArgument(f"GRU {name}: gru_timeout_us must be positive, got {gru_timeout_us!r}")
        self.tlb_entries = tlb_entries
        self.flush_per_page_us = float(flush_per_page_us)
        self.full_flush_us = float(full_flush_us)
        self.gru_timeout_us = float(gru_timeout_us)
        # invariant: len(tlb) <= tlb_entries; keyed by vpn, least recently used first
        self.tlb: OrderedDict[int, GruTlbEntry] = OrderedDict()
        # invariant: no entry is installed while ms_range_active != 0 (checked in _install)
        self.ms_range_active = 0
        self.ms_released = False  # set by ->release; no dropin after it
        self.ms_wait_queue = WaitQueue(f"{name}.ms_wait_queue")
        self.dropin = dropin
        self.seqs = InvalidateSeq()  # the guard: lookups in flight and the callouts overtaking them
        self.inflight = InflightAccesses(name)  # GRU instructions issued and not yet complete, by vpn
        self.stats = GruStats()

    # -- the notifier ops (gru_mmuops) ------------------------------------------------------

    def _check_callout(self, mm: Mm, op: str) -> None:
        """A callout must be about the mm this GRU maps (one from another partition names it
        by id): ``NotFound`` naming both otherwise, before anything changes."""
        if mm.id != self.mm_id:
            raise NotFound(f"GRU {self.name}: {op} is about mm {mm.id!r}, but this GRU maps mm {self.mm_id}")

    async def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        """gru_invalidate_range_start(): count the range active (no dropin from now until the
        paired range_end), then flush it: gru_flush_tlb_range(). A malformed range (empty,
        reversed, outside user space) is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_start")
        check_user_span(start, end, f"GRU {self.name}: invalidate_range_start")
        self.seqs.invalidated(mm.invalidate_seq, start, end)
        self.ms_range_active += 1
        await self._flush_range(start, end)

    async def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """gru_invalidate_range_end(): ``if (atomic_dec_and_test(&ms_range_active))
        wake_up_all(&ms_wait_queue)``. As in the kernel, an unpaired end takes the counter
        below zero (dropins then stay refused); it is counted in ``stats``. A malformed range
        is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_end")
        check_user_span(start, end, f"GRU {self.name}: invalidate_range_end")
        self.seqs.invalidated(mm.invalidate_seq, start, end)
        self.ms_range_active -= 1
        if self.ms_range_active < 0:
            self.stats.unpaired_range_ends += 1
        if self.ms_range_active == 0:
            self.ms_wait_queue.wake_all()

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        """gru_invalidate_page(): flush one page; ``ms_range_active`` is not touched. An
        address outside user space is ``InvalidArgument``."""
        self._check_callout(mm, "invalidate_page")
        check_user_address(address, f"GRU {self.name}: invalidate_page")
        page = page_align(address)
        self.seqs.invalidated(mm.invalidate_seq, page, page + PAGE_SIZE)
        await self._flush_range(page, page + PAGE_SIZE)

    async def release(self, mm: Mm) -> None:
        """gru_release(): ``ms_released = 1``. The kernel's TLB entries for the ASID die with
        the context; here they are dropped at once so the owner's oracle sees them gone before
        exit frees the pages, and, like a flush, release returns once the GRU instructions
        already issued through them are done. Dropins waiting on the queue are woken and
        fail."""
        self._check_callout(mm, "release")
        self.ms_released = True
        self._drop(list(self.tlb))
        self.ms_wait_queue.wake_all()
        if await self.inflight.fence(0, TASK_SIZE >> PAGE_SHIFT):
            self.stats.fenced_flushes += 1

    # -- TLB flushing -----------------------------------------------------------------------

    async def _flush_range(self, start: int, end: int) -> None:
        """gru_flush_tlb_range(): per-page TLB invalidates, or an ASID drop above GRUMAXINVAL
        pages. The instructions take time; the translations are gone when they complete, and
        the flush completes once the GRU instructions issued through them are done (the fence
        of ``InflightAccesses``). The kernel issues them only to GRUs where a context of this mm
        is loaded; the model's context stays loaded while the GruMmu lives, so every flush is
        charged."""
        first, last = vpn_span(start, end)
        npages = last - first + 1
        self.stats.flushes += 1
        if npages > GRUMAXINVAL:
            self.stats.full_flushes += 1
            await self.runtime.sleep(self.full_flush_us)
            self._drop(list(self.tlb))
            fenced = await self.inflight.fence(0, TASK_SIZE >> PAGE_SHIFT)  # the whole ASID
        else:
            self.stats.pages_flushed += npages
            await self.runtime.sleep(npages * self.flush_per_page_us)
            if self.tlb:
                self._drop(keys_in_span(self.tlb, first, last))
            # nothing in flight: nothing to wait for (the fence would return at once)
            fenced = bool(self.inflight) and await self.inflight.fence(first, last)
        if fenced:
            self.stats.fenced_flushes += 1

    def _drop(self, vpns: list[int]) -> None:
        """Remove these TLB entries (absent ones are skipped) and report them dropped."""
        pfns = [e.pfn for e in (self.tlb.pop(v, None) for v in vpns) if e is not None]
        if pfns:
            self.stats.dropped += len(pfns)
            self.owner.translations_dropped(self, self.mm_id, pfns)

    # -- TLB dropin -------------------------------------------------------------------------

    async def access(self, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """A GRU instruction touching ``address`` of the mm (a remote DMA): a TLB hit reads at
        once; a miss runs the dropin (gru_user_dropin's loop around gru_try_dropin) and then
        reads; the read counts as in flight until it completes. Returns the stamp read. Raises
        ``Released`` after ->release, ``GruTimeout`` if the dropin cannot complete within
        ``gru_timeout_us``, and whatever get_user_pages raises (``BadAddress`` for an unmapped
        address: the kernel's SIGSEGV). The guarded dropin also discards an answer that an
        invalidation of the page overtook (see the module docstring)."""
        t0 = self.runtime.now()
        vpn = address >> PAGE_SHIFT
        page = vpn << PAGE_SHIFT
        self.stats.accesses += 1
        refused = False
        while True:
            if self.ms_released:
                raise Released(f"GRU {self.name}: access to {address:#x} after release of mm {self.mm_id}")
            entry = self.tlb.get(vpn)
            if entry is not None and (entry.writable or not write):
                self.tlb.move_to_end(vpn)
                self.stats.tlb_hits += 1
                return await self._read(vpn, page, entry)
            # TLB miss: gru_user_dropin()
            if self.ms_range_active != 0:
                if not refused:
                    self.stats.refused_dropins += 1
                    refused = True
                await self._wait_range_inactive(t0, address)
                continue
            read = self.seqs.read_begin(page, page + PAGE_SIZE) if self.dropin == "guarded" else None
            try:
                refs = await self.owner.get_user_pages(self.mm_id, page, 1, write=write, pin=False)
            finally:
                if read is not None:
                    self.seqs.read_end(read)
            ref = refs[0]
            # -- no suspension point from here to the install and its report --
            self._check_timeout(t0, address)
            if self.ms_released:
                continue  # raises Released above
            if self.ms_range_active != 0:  # gru_try_dropin(): "TLB is being flushed"
                self.stats.retries += 1
                continue
            if read is not None and read.retry(ref.invalidate_seq):  # overtaken by an invalidation
                self.stats.guard_retries += 1
                continue
            self._install(vpn, ref.pfn, ref.stamp, write)
            return await self._read(vpn, page, self.tlb[vpn])

    def _read(self, vpn: int, page: int, entry: GruTlbEntry) -> Awaitable[tuple[int, int, int]]:
        """The remote read through ``entry``, in flight until its answer is back."""
        return self.inflight.access(vpn, self.owner.dma_read(self, self.mm_id, page, entry.pfn, entry.stamp))

    def _install(self, vpn: int, pfn: int, stamp: tuple[int, int, int], writable: bool) -> None:
        """tfh_write_restart(): drop the translation into the TLB (evicting the least recently
        used one if full) and report it to the owner at this same instant."""
        if self.ms_range_active != 0 or self.ms_released:
            raise InternalError(f"GRU {self.name}: install of vpn {vpn:#x} with a range active or after release")
        if vpn in self.tlb:  # a read-only entry upgraded by a write dropin
            self._drop([vpn])
        while len(self.tlb) >= self.tlb_entries:
            victim = next(iter(self.tlb))
            self.stats.evictions += 1
            self._drop([victim])
        self.tlb[vpn] = GruTlbEntry(pfn, stamp, writable)
        self.stats.dropins += 1
        self.owner.translation_established(self, self.mm_id, vpn << PAGE_SHIFT, pfn)

    async def _wait_range_inactive(self, t0: float, address: int) -> None:
        """wait_event(ms_wait_queue, ms_range_active == 0), bounded by the GRU timeout (a
        supervised timer task wakes the queue when the deadline passes)."""
        self._check_timeout(t0, address)
        remaining = t0 + self.gru_timeout_us - self.runtime.now()
        timer = self.runtime.spawn(self._timeout_wake(remaining), name=f"{self.name}.gru_timeout")
        try:
            while self.ms_range_active != 0 and not self.ms_released:
                await self.ms_wait_queue.wait()
                self._check_timeout(t0, address)
        finally:
            timer.cancel()

    async def _timeout_wake(self, us: float) -> None:
        await self.runtime.sleep(us)
        self.ms_wait_queue.wake_all()

    def _check_timeout(self, t0: float, address: int) -> None:
        waited = self.runtime.now() - t0
        if waited >= self.gru_timeout_us:
            self.stats.timeouts += 1
            raise GruTimeout(
                f"GRU {self.name}: dropin of {address:#x} in mm {self.mm_id} did not complete in "
                f"{waited:.0f} us (timeout {self.gru_timeout_us:.0f} us; ms_range_active="
                f"{self.ms_range_active})"
            )

    # -- inspection -------------------------------------------------------------------------

    def translation(self, address: int) -> GruTlbEntry | None:
        """The TLB entry for ``address``, if any (no LRU update)."""
        return self.tlb.get(address >> PAGE_SHIFT)

    def __repr__(self) -> str:
        return (
            f"GruMmu({self.name}, mm {self.mm_id}, {len(self.tlb)}/{self.tlb_entries} entries, "
            f"ms_range_active={self.ms_range_active}, dropin {self.dropin}{', released' if self.ms_released else ''})"
        )

