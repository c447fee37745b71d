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

A dropin racing an invalidation across the network (the lookup is a remote get_user_pages that
sleeps, so the check must come after it; the kernel's lookup is an atomic pte walk and it checks
once, before):

    dropin (secondary partition)             munmap (owner partition)
    ----------------------------             ------------------------
    wait_event(ms_range_active == 0)
    get_user_pages() ---- request ------->   page found, reference dropped
                                             invalidate_range_start -> ms_range_active = 1,
                                               flush (the page is not in the TLB yet)
                     <--- reply ----------   zap ptes ...
    ms_range_active != 0: discard, retry
    wait_event(ms_range_active == 0)         invalidate_range_end -> 0, wake_up_all
    get_user_pages() -> EFAULT (unmapped)    pages freed
    [Required: no install between the flush and range_end; the check, the install and the
     report happen with no suspension point between them]

The TLB here belongs to this mm's ASID on the GRU serving it: ``tlb_entries`` translations, LRU
replacement (an evicted translation is reported dropped). A GRU operation that does not complete
within ``gru_timeout_us`` (10 s in hardware) is fatal: a dropin that waits longer raises
``GruTimeout``.
"""

from __future__ import annotations

import errno as _errno
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING

from nodes.errors import InternalError, InvalidArgument, ModelError, NotFound, Released
from nodes.locks import WaitQueue
from nodes.mm import PAGE_SHIFT, Mm, check_user_address, check_user_span
from nodes.secondary.base import SecondaryMmu, keys_in_span, page_align, vpn_span

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import Runtime

GRUMAXINVAL = 1024  # ranges of more pages than this drop the whole ASID (grutlbpurge.c)
DEFAULT_TLB_ENTRIES = 2048
DEFAULT_FLUSH_PER_PAGE_US = 2.0  # one TLB-invalidate instruction: "a few usec"
DEFAULT_FULL_FLUSH_US = 10.0  # drop the ASID: one ASID-wide invalidate, a few usec
GRU_TIMEOUT_US = 10_000_000.0  # a GRU operation that never completes is fatal after 10 s


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
    flushes: int = 0  # TLB flush operations (one per invalidate callout)
    pages_flushed: int = 0  # per-page TLB-invalidate instructions issued
    full_flushes: int = 0  # ASID drops (range above GRUMAXINVAL pages)
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
    ):
        super().__init__(runtime, owner, mm_id, name)
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
        self.ms_range_active += 1
        await self._flush_range(start, end)

    async def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """gru_invalidate_range_end(): ``if (atomic_dec_and_test(&ms_range_active))
        wake_up_all(&ms_wait_queue)``. As in the kernel, an unpaired end takes the counter
        below zero (dropins then stay refused); it is counted in ``stats``. A malformed range
        is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_end")
        check_user_span(start, end, f"GRU {self.name}: invalidate_range_end")
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
        await self._flush_range(page_align(address), page_align(address) + (1 << PAGE_SHIFT))

    def release(self, mm: Mm) -> None:
        """gru_release(): ``ms_released = 1``. The kernel's TLB entries for the ASID die with
        the context; here they are dropped at once so the owner's oracle sees them gone before
        exit frees the pages. Dropins waiting on the queue are woken and fail."""
        self._check_callout(mm, "release")
        self.ms_released = True
        self._drop(list(self.tlb))
        self.ms_wait_queue.wake_all()

    # -- TLB flushing -----------------------------------------------------------------------

    async def _flush_range(self, start: int, end: int) -> None:
        """gru_flush_tlb_range(): per-page TLB invalidates, or an ASID drop above GRUMAXINVAL
        pages. The instructions take time; the translations are gone when they complete. The
        kernel issues them only to GRUs where a context of this mm is loaded; the model's
        context stays loaded while the GruMmu lives, so every flush is charged."""
        first, last = vpn_span(start, end)
        npages = last - first + 1
        self.stats.flushes += 1
        if npages > GRUMAXINVAL:
            self.stats.full_flushes += 1
            await self.runtime.sleep(self.full_flush_us)
            self._drop(list(self.tlb))
        else:
            self.stats.pages_flushed += npages
            await self.runtime.sleep(npages * self.flush_per_page_us)
            self._drop(keys_in_span(self.tlb, first, last))

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
        reads. Returns the stamp read. Raises ``Released`` after ->release, ``GruTimeout`` if
        the dropin cannot complete within ``gru_timeout_us``, and whatever get_user_pages
        raises (``BadAddress`` for an unmapped address: the kernel's SIGSEGV)."""
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
                return await self.owner.dma_read(self, self.mm_id, page, entry.pfn, entry.stamp)
            # TLB miss: gru_user_dropin()
            if self.ms_range_active != 0:
                if not refused:
                    self.stats.refused_dropins += 1
                    refused = True
                await self._wait_range_inactive(t0, address)
                continue
            refs = await self.owner.get_user_pages(self.mm_id, page, 1, write=write, pin=False)
            ref = refs[0]
            # -- no suspension point from here to the install and its report --
            self._check_timeout(t0, address)
            if self.ms_released:
                continue  # raises Released above
            if self.ms_range_active != 0:  # gru_try_dropin(): "TLB is being flushed"
                self.stats.retries += 1
                continue
            self._install(vpn, ref.pfn, ref.stamp, write)
            entry = self.tlb[vpn]
            return await self.owner.dma_read(self, self.mm_id, page, entry.pfn, entry.stamp)

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
            f"ms_range_active={self.ms_range_active}{', released' if self.ms_released else ''})"
        )

