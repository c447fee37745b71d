"""A KVM-style shadow MMU as a secondary MMU: sptes, mmu_notifier_count and mmu_notifier_seq.

Mirrors the notifier half of ``virt/kvm/kvm_main.c`` (v3.10) and the fault side of
``arch/x86/kvm/mmu.c``: shadow ptes (sptes) keyed by the host virtual address they translate,
each with a pfn, a writable bit and an accessed ("young") bit, all under ``kvm->mmu_lock`` (a
spinlock). Every notifier op implemented:

- ``invalidate_range_start``: ``mmu_notifier_count++``, unmap the sptes of the range, flush the
  remote TLBs before returning ("we've to flush the tlb before the pages can be freed").
- ``invalidate_range_end``: ``mmu_notifier_seq++`` then ``mmu_notifier_count--``.
- ``invalidate_page``: ``mmu_notifier_seq++``, unmap the one spte, flush.
- ``change_pte`` (under the primary's page-table lock, must not sleep): ``mmu_notifier_seq++``
  and kvm_set_spte_hva(): a writable new pte drops the spte; a read-only one repoints the spte at
  the new pfn, read-only and not young.
- ``clear_flush_young`` / ``test_young`` (under the page-table lock): the spte's accessed bit.
- ``release``: kvm_arch_flush_shadow_all(): drop every spte.

A fault resolves the page with a sleeping lookup and then re-checks under ``mmu_lock``
(mmu_notifier_retry()):

    vcpu fault                                   invalidation on the owner
    ----------                                   -------------------------
    mmu_seq = mmu_notifier_seq; smp_rmb()
    get_user_pages()  [sleeps: remote]           range_start: count++, unmap sptes, flush
                                                 ... primary ptes zapped ...
                                                 range_end: seq++, count--
    spin_lock(mmu_lock)
    count != 0 or seq != mmu_seq: retry          <- the page may be freed already
    else: install spte (and report it)
    spin_unlock(mmu_lock)
    [Required: an spte is installed only if no invalidation of it started since mmu_seq was read]

The flush (kvm_flush_remote_tlbs(), IPIs) runs under ``mmu_lock`` in the kernel; here its cost
``flush_us`` is slept after the lock is dropped but before the op returns, which keeps the
guarantee (flushed before the op returns) and the spinlock rule (no sleeping under it). A retried
fault re-enters the guest and faults again: ``refault_us`` models that round trip and keeps a
fault that keeps losing the race from spinning at one instant of virtual time.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from nodes.errors import InvalidArgument, KernelBug, NotFound, Released
from nodes.notifier import mmu_notifier_range_blockable
from nodes.mm import (
    PAGE_SHIFT,
    PTE_DIRTY,
    PTE_MIGRATION,
    PTE_PRESENT,
    PTE_SWAP,
    PTE_WRITE,
    PTE_YOUNG,
    Mm,
    check_user_address,
    check_user_span,
)
from nodes.runtime import SpinLock
from nodes.secondary.base import SecondaryMmu, keys_in_span, vpn_span

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import Runtime

DEFAULT_FLUSH_US = 1.0  # kvm_flush_remote_tlbs(): IPIs to the vcpus
DEFAULT_REFAULT_US = 1.0  # a retried fault: back into the guest, fault again
PTE_FLAGS = PTE_PRESENT | PTE_WRITE | PTE_YOUNG | PTE_DIRTY | PTE_SWAP | PTE_MIGRATION  # what a pte may carry


@dataclass
class Spte:
    """One shadow pte."""

    pfn: int
    writable: bool
    young: bool  # the accessed bit (shadow_accessed_mask)
    # What a read through it must return. None after change_pte repointed the spte: the
    # notifier is given only (pfn, flags), so the expectation is learned on first use (see
    # ``KvmMmu._learn_stamp``).
    stamp: tuple[int, int, int] | None


@dataclass
class KvmStats:
    """Counters of one KVM shadow MMU."""

    accesses: int = 0
    spte_hits: int = 0
    faults: int = 0  # faults that installed an spte
    retries: int = 0  # faults discarded by mmu_notifier_retry()
    sptes_zapped: int = 0
    flushes: int = 0  # kvm_flush_remote_tlbs()
    change_pte_updates: int = 0  # sptes repointed by change_pte
    change_pte_drops: int = 0  # sptes dropped by change_pte (writable new pte)
    stamp_lookups: int = 0  # extra lookups to learn what a repointed spte must read


class KvmMmu(SecondaryMmu):
    """A VM's shadow MMU for one host mm (struct kvm's mmu half)."""

    def __init__(
        self,
        runtime: "Runtime",
        owner: "OwnerPort",
        mm_id: int,
        name: str,
        *,
        flush_us: float = DEFAULT_FLUSH_US,
        refault_us: float = DEFAULT_REFAULT_US,
    ):
        super().__init__(runtime, owner, mm_id, name)
        if flush_us < 0:
            raise InvalidArgument(f"KVM {name}: flush_us must not be negative, got {flush_us!r}")
        if refault_us <= 0:
            raise InvalidArgument(f"KVM {name}: refault_us must be positive, got {refault_us!r}")
        self.flush_us = float(flush_us)
        self.refault_us = float(refault_us)
        self.mmu_lock = SpinLock(f"{name}.mmu_lock")
        self.sptes: dict[int, Spte] = {}  # keyed by host vpn; guarded by mmu_lock
        # invariant: mmu_notifier_count >= 0 (BUG_ON in range_end); it is the number of
        # range_start..range_end windows open, and no spte is installed while it is non-zero
        self.mmu_notifier_count = 0
        self.mmu_notifier_seq = 0  # bumped by every invalidation that ended
        self.released = False
        self.stats = KvmStats()

    # -- the notifier ops (kvm_mmu_notifier_ops) --------------------------------------------

    def _check_callout(self, mm: Mm, op: str, address: int | None = None) -> None:
        """A callout must be about the mm this VM's memory is (one from another partition
        names it by id: ``NotFound`` naming both otherwise) and name a user address
        (``InvalidArgument``); checked before anything changes."""
        if mm.id != self.mm_id:
            raise NotFound(f"KVM {self.name}: {op} is about mm {mm.id!r}, but this VM maps mm {self.mm_id}")
        if address is not None:
            check_user_address(address, f"KVM {self.name}: {op}")

    async def invalidate_range_start(self, mm: Mm, start: int, end: int) -> None:
        """kvm_mmu_notifier_invalidate_range_start(). A malformed range (empty, reversed,
        outside user space) is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_start")
        check_user_span(start, end, f"KVM {self.name}: invalidate_range_start")
        with self.mmu_lock:
            self.mmu_notifier_count += 1
            first, last = vpn_span(start, end)
            need_flush = self._zap(keys_in_span(self.sptes, first, last))
        if need_flush:
            await self._flush_remote_tlbs(blockable=mmu_notifier_range_blockable())

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """kvm_mmu_notifier_invalidate_range_end(): seq first, then count (smp_wmb between).
        A malformed range is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_end")
        check_user_span(start, end, f"KVM {self.name}: invalidate_range_end")
        with self.mmu_lock:
            self.mmu_notifier_seq += 1
            self.mmu_notifier_count -= 1
            count = self.mmu_notifier_count
        if count < 0:
            raise KernelBug(f"BUG_ON(kvm->mmu_notifier_count < 0) in {self.name}: range_end "
                            f"[{start:#x}, {end:#x}) without a range_start")

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        """kvm_mmu_notifier_invalidate_page()."""
        self._check_callout(mm, "invalidate_page", address)
        with self.mmu_lock:
            self.mmu_notifier_seq += 1
            need_flush = self._zap([address >> PAGE_SHIFT])
        if need_flush:
            await self._flush_remote_tlbs()

    def change_pte(self, mm: Mm, address: int, pte: tuple[int, int]) -> None:
        """kvm_mmu_notifier_change_pte() -> kvm_set_spte_hva() -> kvm_set_pte_rmapp(). Runs
        under the primary's page-table lock: synchronous, never sleeps. ``pte`` must be a
        present frame and PTE_* flags (``InvalidArgument`` naming the bad value)."""
        self._check_callout(mm, "change_pte", address)
        new_pfn, flags = pte
        if not isinstance(new_pfn, (int, np.integer)) or new_pfn < 0:
            raise InvalidArgument(
                f"KVM {self.name}: change_pte of {address:#x} to frame {new_pfn!r}, not a frame number")
        if not isinstance(flags, (int, np.integer)) or flags < 0 or flags & ~PTE_FLAGS:
            raise InvalidArgument(f"KVM {self.name}: change_pte of {address:#x} with pte flags {flags!r} "
                                  f"outside the PTE_* bits {PTE_FLAGS:#x}")
        vpn = address >> PAGE_SHIFT
        with self.mmu_lock:
            self.mmu_notifier_seq += 1
            spte = self.sptes.get(vpn)
            if spte is None:
                return
            if flags & PTE_WRITE:
                self._zap([vpn])
                self.stats.change_pte_drops += 1
            else:
                self.owner.translations_dropped(self, self.mm_id, [spte.pfn])
                self.sptes[vpn] = Spte(int(new_pfn), writable=False, young=False, stamp=None)
                self.owner.translation_established(self, self.mm_id, vpn << PAGE_SHIFT, int(new_pfn))
                self.stats.change_pte_updates += 1
            self.stats.flushes += 1  # need_flush; the IPI cost is not modelled in atomic context

    def clear_flush_young(self, mm: Mm, address: int) -> int:
        """kvm_mmu_notifier_clear_flush_young() -> kvm_age_hva(): clear the accessed bit and
        return whether it was set (flushing if so). Under the page-table lock."""
        self._check_callout(mm, "clear_flush_young", address)
        with self.mmu_lock:
            spte = self.sptes.get(address >> PAGE_SHIFT)
            young = spte is not None and spte.young
            if young:
                spte.young = False  # type: ignore[union-attr]
                self.stats.flushes += 1
        return int(young)

    def test_young(self, mm: Mm, address: int) -> int:
        """kvm_mmu_notifier_test_young() -> kvm_test_age_hva(). Under the page-table lock."""
        self._check_callout(mm, "test_young", address)
        with self.mmu_lock:
            spte = self.sptes.get(address >> PAGE_SHIFT)
            return int(spte is not None and spte.young)

    def release(self, mm: Mm) -> None:
        """kvm_mmu_notifier_release() -> kvm_arch_flush_shadow_all(): drop every spte. No
        spte is installed after it (faults raise ``Released``)."""
        self._check_callout(mm, "release")
        with self.mmu_lock:
            self.released = True
            self._zap(list(self.sptes))

    # -- helpers ----------------------------------------------------------------------------

    def _zap(self, vpns: list[int]) -> bool:
        """Drop these sptes (absent ones skipped) and report them; caller holds mmu_lock.
        Returns whether anything was dropped (the kernel's need_tlb_flush)."""
        pfns = [s.pfn for s in (self.sptes.pop(v, None) for v in vpns) if s is not None]
        if pfns:
            self.stats.sptes_zapped += len(pfns)
            self.owner.translations_dropped(self, self.mm_id, pfns)
        return bool(pfns)

    async def _flush_remote_tlbs(self, *, blockable: bool = True) -> None:
        """kvm_flush_remote_tlbs(): ``flush_us`` slept (see the module docstring). In a range
        that may not block (the OOM reaper's, under a modern core) nothing is slept: 5.10's
        kvm_mmu_notifier_invalidate_range_start() flushes under mmu_lock, busy-waiting for
        the IPIs, and answers 0; a wait the model can only charge by sleeping is left out."""
        self.stats.flushes += 1
        if blockable:
            await self.runtime.sleep(self.flush_us)

    def mmu_notifier_retry(self, mmu_seq: int) -> bool:
        """mmu_notifier_retry(kvm, mmu_seq): an invalidation is running or ended since the
        fault read ``mmu_seq``. Caller holds mmu_lock."""
        return self.mmu_notifier_count != 0 or self.mmu_notifier_seq != mmu_seq

    # -- the fault path ---------------------------------------------------------------------

    async def access(self, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """A guest access to host address ``address`` (a remote read): an spte hit reads at
        once (setting young); a miss runs tdp_page_fault(): read mmu_notifier_seq, resolve the
        page with get_user_pages (sleeps), then under mmu_lock retry if mmu_notifier_retry(),
        else install the spte and report it. Returns the stamp read. Raises ``Released`` after
        ->release, and whatever get_user_pages raises (``BadAddress``: the guest gets a fault
        it cannot resolve)."""
        vpn = address >> PAGE_SHIFT
        page = vpn << PAGE_SHIFT
        self.stats.accesses += 1
        while True:
            if self.released:
                raise Released(f"KVM {self.name}: access to {address:#x} after release of mm {self.mm_id}")
            spte = self.sptes.get(vpn)
            if spte is not None and (spte.writable or not write):
                if spte.stamp is None:
                    await self._learn_stamp(vpn, spte)
                    continue  # the spte may have changed while we looked
                spte.young = True
                self.stats.spte_hits += 1
                return await self.owner.dma_read(self, self.mm_id, page, spte.pfn, spte.stamp)
            mmu_seq = self.mmu_notifier_seq  # smp_rmb() follows in the kernel
            refs = await self.owner.get_user_pages(self.mm_id, page, 1, write=write, pin=False)
            ref = refs[0]
            installed = None
            with self.mmu_lock:
                if self.released:
                    continue  # raises Released above
                if not self.mmu_notifier_retry(mmu_seq):
                    if vpn in self.sptes:  # replaced (a write fault on a read-only spte)
                        self._zap([vpn])
                    installed = Spte(ref.pfn, writable=ref.writable, young=True, stamp=ref.stamp)
                    self.sptes[vpn] = installed
                    self.owner.translation_established(self, self.mm_id, page, ref.pfn)
                    self.stats.faults += 1
            if installed is None:
                self.stats.retries += 1
                await self.runtime.sleep(self.refault_us)
                continue
            return await self.owner.dma_read(self, self.mm_id, page, installed.pfn, installed.stamp)  # type: ignore[arg-type]

    async def _learn_stamp(self, vpn: int, spte: Spte) -> None:
        """Learn what a spte repointed by change_pte must read: the contents of the page the
        primary maps at that address now (change_pte is only given (pfn, flags), and atomic
        context cannot ask the owner). Costs one extra lookup the real KVM does not make; a
        spte that no longer matches the primary then reads a wrong stamp and the owner's oracle
        reports it (invariant 6). In v3.10 every change_pte is bracketed by range_start/end,
        which already dropped the spte, so this only runs when change_pte found one."""
        self.stats.stamp_lookups += 1
        refs = await self.owner.get_user_pages(self.mm_id, vpn << PAGE_SHIFT, 1, write=False, pin=False)
        if self.sptes.get(vpn) is spte and spte.stamp is None:
            spte.stamp = refs[0].stamp

    # -- inspection -------------------------------------------------------------------------

    def spte(self, address: int) -> Spte | None:
        """The spte for ``address``, if any."""
        return self.sptes.get(address >> PAGE_SHIFT)

    def __repr__(self) -> str:
        return (
            f"KvmMmu({self.name}, mm {self.mm_id}, {len(self.sptes)} sptes, count="
            f"{self.mmu_notifier_count}, seq={self.mmu_notifier_seq}"
            f"{', released' if self.released else ''})"
        )
