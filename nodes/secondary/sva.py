"""IOMMU SVA (shared virtual addressing) as a secondary MMU: a PCIe device on another
partition bound to a process address space, walking the CPU's page tables through ATS/PRI.

Modelled on Linux 5.10 and 6.6: ``iommu_sva_bind_device()`` (drivers/iommu/iommu.c in 5.10,
iommu-sva.c in 6.6), the Intel driver (drivers/iommu/intel/svm.c: ``intel_svm_bind_mm``,
``intel_invalidate_range`` in 5.10, ``intel_arch_invalidate_secondary_tlbs`` in 6.6,
``intel_mm_release``, ``prq_event_thread``; drivers/iommu/intel/dmar.c: ``qi_submit_sync``,
``qi_check_fault``) and the SMMUv3 driver (drivers/iommu/arm/arm-smmu-v3/arm-smmu-v3-sva.c:
``arm_smmu_mm_invalidate_range`` (5.11+) / ``arm_smmu_mm_arch_invalidate_secondary_tlbs``
(6.6), ``arm_smmu_mm_release``; arm-smmu-v3.c: ``arm_smmu_atc_inv_domain``,
``arm_smmu_cmdq_issue_cmdlist``, ``arm_smmu_cmdq_poll_until_sync``). Written from those
sources, not copied. Only the modern modes have it (``nodes.notifier.MODERN``): the ops it
needs, ->invalidate_range (5.10) and ->arch_invalidate_secondary_tlbs (6.6), are not in v3.10.

Where the pieces live::

    device partition (host)                     owner partition
    -----------------------                     ---------------
    SvaDevice: its ATC (translations)           SvaIommu: the IOMMU (page walk, PRI queue,
      access: ATC hit -> DMA read                 invalidation queue) and one IommuSvaBond
      ATC miss -> ATS Translation Request --->    per bound device: the mmu_notifier the
                <--- translation, or none         driver registered (release and the
      none -> PRI Page Request ------------->     secondary-TLB op), on the mm, locally
                <--- Page Group Response          (handle_mm_fault answered it)
      SvaDeviceService <--- ATS Invalidate Request --- the bond's op (pte cleared)
                  ---- Invalidate Completion ----> ... the IOMMU driver waits for it

The device shares the CPU page tables: no get_user_pages, no pin. Safety comes from the
invalidation: the core calls the bond's ->invalidate_range (v5.10: from
mmu_notifier_invalidate_range_end() and after ptep_clear_flush_notify()) or
->arch_invalidate_secondary_tlbs (v6.6: from the arch TLB flush, 1af5a8109904) after a pte was
cleared and before its page is freed; the driver invalidates the IOMMU's own IOTLB and issues an
ATS invalidation to the device (Intel: a PASID-based device-TLB descriptor and a wait
descriptor, ``qi_flush_dev_iotlb_pasid`` + ``qi_submit_sync``; SMMUv3: CMDQ_OP_ATC_INV and a
CMD_SYNC) and *spins* until the completion is in, with the page-table lock held: spinning is
allowed in atomic context, sleeping is not.

The atomic-context question, and what this model does. The op is called under the page-table
lock (``ATOMIC_OPS``; the core drives it with ``run_atomic``), so it may not suspend, and in
this model an atomic section takes no virtual time: a wait for a completion from another
partition cannot elapse inside it (the core has no spin-wait primitive: see the report of issue
14). So the op does, synchronously, what the driver does before it spins: it invalidates the
IOMMU's caches (the bond stops handing out what it translated) and posts the ATS invalidation;
the spin itself runs on as a supervised task of the bond (``_spin``) that holds what the
spinning CPU holds, so that the rest of the machine sees the kernel's ordering:

- the callout's SRCU read-side section: the op runs inside the core's srcu_read_lock, and the
  spin holds a read lock of the same domain (from its first step, at the op's instant) until the
  completion (or the give-up), so an exit or
  an unregister on the partition (synchronize_srcu) waits for it, as it waits for a CPU spinning
  inside the callout; and no method of the bond runs after its unregister returned;
- the pages: the caller frees the range's pages right after the op returns (tlb_finish_mmu,
  after the spin); here the spin holds a pin on each frame the IOMMU translated for the device
  in the range since the last invalidation, dropped when the spin ends, so no such frame returns
  to the allocator before the device has completed (or the driver gave up: SMMUv3 below);
- the time: the spin's duration (post to completion or give-up) is what the CPU would have spent
  inside the op; it is recorded as the op's callout time in the core's timings (``callout_rtt``
  under the op's name), in ``SvaStats.spin_us``, and in the run's trace.

What it does not hold: the CPU and the page-table lock (the caller goes on at once, and other
CPUs do not contend for that lock). So the owner's ``invalidate_range`` span (range_start to
range_end) does not contain the spin, though in v5.10 the kernel's does (range_end calls
->invalidate_range first); in v6.6 the flush after a munmap's range_end is outside it in the
kernel too (tlb_finish_mmu). ``->release`` is sleepable, so its wait for the whole-PASID
invalidation is a plain await, on the core's own time.

The completion and its time-out. The device completes an invalidation after a latency drawn
from ``completion_us`` (injected: the scenario's ``sva.completion``), once the accesses it
issued through the dropped translations are done (``InflightAccesses``); it may use the
translations until it completes, as PCIe ATS lets it. PCIe allows a device up to its
Invalidation Completion Timeout (1 minute, +50% -0%: up to 90 s, REFERENCE section 8). The
IOMMU's wait is bounded by its time-out, and what the kernel does then differs by driver
(``IOMMUS``):

- ``intel``: qi_submit_sync() has no software time-out; the hardware reports an Invalidation
  Time-out Error (ITE) when the device-TLB invalidation does not complete within PCIe's
  completion time-out (here ``PCIE_INV_COMPLETION_TIMEOUT_US``, the 90 s maximum); qi_check_fault()
  aborts the wait descriptors and returns -EAGAIN, and qi_submit_sync() resubmits the batch
  (``goto restart``): 5.10 and 6.6 retry for as long as the device does not answer (a later
  kernel gives up when the device is gone, ``pci_device_is_present()``). The model resubmits up
  to ``MAX_ITE`` times, then raises ``AtsInvalidationHang`` (the CPU would spin on forever).
- ``smmuv3``: the driver polls the CMD_SYNC for ARM_SMMU_POLL_TIMEOUT_US (1 s), then logs
  "CMD_SYNC timeout" and returns -ETIMEDOUT, which the notifier op ignores: the caller goes on
  and frees the pages while the device may still hold their translations. The model does the
  same, so the oracle reports what that does (invariant 1: a frame freed while the device maps
  it) when a device is slower than 1 s.

A translation answered while an invalidation of its page was on its way is discarded by the
device (PCIe ATS: a Translation Completion that an Invalidate Request overtook must not be
used): the device marks its outstanding requests that an arriving invalidation overlaps stale,
and retries them.

One bond per bound device (the Intel driver keeps one notifier per mm for all its devices;
each device's flush is then one wait of that notifier's op in turn, as here one op per bond).
"""

from __future__ import annotations

from collections import Counter, OrderedDict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Awaitable, Callable

import numpy as np

from nodes.errors import BadAddress, Busy, InvalidArgument, KernelBug, ModelError, NotFound, Released, Unreachable
from nodes.locks import WaitQueue
from nodes.mm import PAGE_SHIFT, PTE_WRITE, TASK_SIZE, Mm, check_user_address
from nodes.notifier import MODERN, TeardownTiming
from nodes.remote import OWNER_SERVICE, RemoteNotifier
from nodes.runtime import current_cpu
from nodes.secondary.base import InflightAccesses, keys_in_span, page_align, vpn_span

if TYPE_CHECKING:
    from nodes.partition import Partition
    from nodes.remote import Interconnect, OwnerService
    from nodes.runtime import Runtime

SVA_SERVICE = "sva"  # on the owner partition: the IOMMU (bind, ATS, PRI, completions)
SVA_DEVICE_SERVICE = "sva.device"  # on the device's partition: ATS invalidation requests
IOMMUS = {
    "intel": "VT-d: qi_submit_sync() spins until the wait descriptor is done; an ITE (the device-TLB "
             "invalidation timed out) aborts it and the batch is resubmitted (goto restart)",
    "smmuv3": "SMMUv3: the CMD_SYNC is polled for ARM_SMMU_POLL_TIMEOUT_US (1 s), then 'CMD_SYNC timeout' "
              "and the op returns (the error is ignored): the caller frees the pages anyway",
}
ARM_SMMU_POLL_TIMEOUT_US = 1_000_000.0  # arm-smmu-v3.h: "1s!"
PCIE_INV_COMPLETION_TIMEOUT_US = 90_000_000.0  # PCIe ATS Invalidate Completion Timeout: 1 min +50% -0%
MAX_ITE = 8  # model: Intel resubmits after an ITE this many times, then AtsInvalidationHang
ATS_ROUNDS = 16  # model: ATS/PRI rounds one device access may take before it fails (Busy)
DEFAULT_ATC_ENTRIES = 64
DEFAULT_COMPLETION_US = 2.0  # an ATS invalidation completion when the device is not busy: microseconds
IOMMU_PAGE_RESP_SUCCESS, IOMMU_PAGE_RESP_INVALID = 0, 1  # enum iommu_page_response_code


def default_timeout_us(iommu: str) -> float:
    """How long the IOMMU driver waits for one ATS invalidation before its time-out path."""
    return ARM_SMMU_POLL_TIMEOUT_US if iommu == "smmuv3" else PCIE_INV_COMPLETION_TIMEOUT_US


class AtsInvalidationHang(KernelBug):
    """The Intel driver resubmitted a device-TLB invalidation ``MAX_ITE`` times and the device
    never completed it: qi_submit_sync() in 5.10/6.6 would spin on forever (with the page-table
    lock held and interrupts off: the hard-lockup detector's report)."""


@dataclass
class SvaStats:
    """Counters of one bond (owner side) or device."""

    ats_requests: int = 0  # ATS Translation Requests
    ats_misses: int = 0  # answered "not present" (R=W=0): the device must issue a page request
    page_requests: int = 0  # PRI Page Requests
    page_request_failures: int = 0  # answered IOMMU_PAGE_RESP_INVALID
    installed: int = 0  # ATC entries installed
    stale_translations: int = 0  # Translation Completions discarded: an invalidation overtook them
    invalidations: int = 0  # ATS Invalidate Requests posted (owner) / received (device)
    completions: int = 0  # Invalidate Completions that arrived in time (owner) / were sent (device)
    ite: int = 0  # Intel: Invalidation Time-out Errors, each followed by a resubmission
    cmd_sync_timeouts: int = 0  # SMMUv3: CMD_SYNC polls that timed out (the invalidation given up)
    evictions: int = 0
    dropped: int = 0  # ATC entries dropped for any reason
    spin_us: list[float] = field(default_factory=list)  # each atomic op's spin, post to completion


#: what a run reports of its IOMMUs (``SvaIommu.counters``), from their bonds' ``SvaStats``
COUNTERS = ("invalidations", "completions", "ite", "cmd_sync_timeouts", "page_requests", "spins")


def _counters(stats: SvaStats) -> dict[str, int]:
    return {"invalidations": stats.invalidations, "completions": stats.completions, "ite": stats.ite,
            "cmd_sync_timeouts": stats.cmd_sync_timeouts, "page_requests": stats.page_requests,
            "spins": len(stats.spin_us)}


# -- the owner's side: the IOMMU and its bonds ------------------------------------------------


class _Completion:
    """One ATS invalidation the IOMMU waits for (a wait descriptor's status / a CMD_SYNC)."""

    __slots__ = ("done", "queue")

    def __init__(self, name: str):
        self.done = False
        self.queue = WaitQueue(name)


class IommuSvaBond(RemoteNotifier):
    """The mmu_notifier an IOMMU driver registers on the mm when a device on ``host`` is bound
    to it (struct intel_svm's notifier in 5.10 / 6.6; arm_smmu_mmu_notifier), with the PASID.
    Its ops are ->release and the secondary-TLB op of the mode (``bond_class``); it is a
    ``RemoteNotifier`` in that it stands on the owner for a device elsewhere (fencing, oracle
    reports), but its ops run here, in the owner's kernel, as the driver's do.

    ``issued`` is the IOMMU's record of what it translated for the device and no completed
    invalidation has covered since (vpn -> frames): a superset of the device's ATC. An
    invalidation takes a snapshot of its range's entries when it is posted and removes them
    when it completes (or the driver gives up on it), not before: until then the device may
    still hold them, and another invalidation of the same pages (the OOM reaper's, while an
    unbind's release waits) must find them to pin them. Invariant: a frame in ``issued`` is
    still mapped by the page table, or pinned by a spin, or a release's wait is in progress."""

    takes_range = False  # implements no range op

    def __init__(self, iommu: "SvaIommu", host: str, notifier_id: str, name: str, mm: Mm, pasid: int):
        super().__init__(iommu.owner_service, host, notifier_id, name)
        self.iommu = iommu
        self.runtime = iommu.part.runtime
        self.mm_id = mm.id
        self.pasid = pasid
        self.torn_down = False  # the PASID entry is cleared (release): no translation, no page request
        self.issued: dict[int, Counter[int]] = {}
        self.stats = SvaStats()

    def _post_invalidation(self, mm: Mm, start: int, end: int, op: str) -> None:
        """The secondary-TLB op (called under the page-table lock, must not sleep):
        intel_invalidate_range() -> intel_flush_svm_range_dev() (5.10),
        intel_arch_invalidate_secondary_tlbs() (6.6), arm_smmu_mm_invalidate_range() ->
        arm_smmu_tlb_inv_range_asid() + arm_smmu_atc_inv_domain(). The IOTLB invalidation
        takes effect at once (the bond forgets what it translated in the range); the ATS
        invalidation is posted and the spin for its completion starts (see the module
        docstring: it holds an SRCU read lock and pins the frames until it ends)."""
        if self.fenced or mm.id != self.mm_id:
            return
        taken = self._snapshot(start, end)
        pfns = [pfn for c in taken.values() for pfn in c.elements()]
        part = self.iommu.part
        if pfns:
            part.frames.pin(np.asarray(pfns, dtype=np.int64))
        self.stats.invalidations += 1
        self.runtime.spawn(self._spin(mm, start, end, op, taken, pfns, current_cpu.get(), self.runtime.now()),
                           name=f"{self.name}.{op}")

    def _snapshot(self, start: int, end: int) -> dict[int, Counter[int]]:
        """What the IOMMU translated in [start, end) that an invalidation posted now covers."""
        first, last = vpn_span(start, end)
        return {vpn: Counter(self.issued[vpn]) for vpn in keys_in_span(self.issued, first, last)}

    def _settle(self, taken: dict[int, Counter[int]]) -> None:
        """The invalidation that took ``taken`` is over: the device holds none of it any more
        (or the driver gave up and no longer cares); translations made since are kept."""
        for vpn, pfns in taken.items():
            left = self.issued.get(vpn)
            if left is not None:
                left.subtract(pfns)
                left += Counter()  # drop the entries at zero
                if not left:
                    del self.issued[vpn]

    async def _spin(self, mm: Mm, start: int, end: int, op: str, taken: dict[int, Counter[int]], pfns: list[int],
                    cpu: int, t0: float) -> None:
        """The driver's spin after it posted the invalidation (qi_submit_sync's wait loop,
        arm_smmu_cmdq_poll_until_sync), ended by the completion or the driver's time-out path,
        inside a read section of the mm's SRCU domain. The section is taken here, at the task's
        first step (the same virtual instant as the op), not in the op: the SRCU domain ties a
        read section to the task that takes it (its deadlock check), and the caller, which in
        the kernel would still be spinning, goes on here and may itself synchronize."""
        srcu = self.iommu.part.core.srcu_for(mm)
        idx = srcu.read_lock(cpu)
        try:
            await self.iommu.invalidate_device(self, start, end, what=op)
        finally:
            us = self.runtime.now() - t0
            self._settle(taken)
            srcu.read_unlock(idx, cpu)
            if pfns:
                self.iommu.part.frames.unpin(np.asarray(pfns, dtype=np.int64))
            self.stats.spin_us.append(us)
            timings = self.iommu.part.core.timings
            if timings.enabled:
                timings.callout(self.runtime.now(), us, mm, op)
            self.runtime.trace("sva", f"{op}({start:#x}, {end:#x}) of {self.name}: spun {us:.1f} us")

    async def release(self, mm: Mm) -> None:
        """intel_mm_release() -> intel_pasid_tear_down_entry() (the PASID entry cleared, then
        the PASID cache, the IOTLB and the device TLB flushed, waiting as qi_submit_sync()
        does); arm_smmu_mm_release() (a quiet context descriptor, the ASID's TLB and the whole
        ATC of the PASID invalidated, waiting for the CMD_SYNC). May sleep: the wait is real
        time here. After it the device translates nothing of ``mm``."""
        if mm.id != self.mm_id:
            raise NotFound(f"SVA bond {self.name}: release of mm {mm.id}, but the bond is on mm {self.mm_id}")
        self.torn_down = True
        taken = self._snapshot(0, TASK_SIZE)
        try:
            if not self.fenced:
                await self.iommu.invalidate_device(self, 0, TASK_SIZE, what="release")
        finally:
            self._settle(taken)


class SvaBond510(IommuSvaBond):
    """The 5.10 ops (intel_mmuops: .release, .invalidate_range)."""

    def invalidate_range(self, mm: Mm, start: int, end: int) -> None:
        self._post_invalidation(mm, start, end, "invalidate_range")


class SvaBond66(IommuSvaBond):
    """The 6.6 ops (intel_mmuops / arm_smmu_mmu_notifier_ops: .release,
    .arch_invalidate_secondary_tlbs, 1af5a8109904)."""

    def arch_invalidate_secondary_tlbs(self, mm: Mm, start: int, end: int) -> None:
        self._post_invalidation(mm, start, end, "arch_invalidate_secondary_tlbs")


def bond_class(semantics: str) -> type[IommuSvaBond]:
    """The bond of ``semantics``; ``InvalidArgument`` naming it outside the modern modes."""
    if semantics == "v5.10":
        return SvaBond510
    if semantics == "v6.6":
        return SvaBond66
    raise InvalidArgument(
        f"IOMMU SVA needs semantics {' or '.join(MODERN)} (->invalidate_range in v5.10, "
        f"->arch_invalidate_secondary_tlbs in v6.6); "
        f"the core has semantics {semantics!r}, which has neither op")


class SvaIommu:
    """The IOMMU of an owner partition, as devices on other partitions reach it (``SVA_SERVICE``):
    bind/unbind (iommu_sva_bind_device / iommu_sva_unbind_device), ATS translation requests (the
    IOMMU walks the page table), PRI page requests (the driver's handle_mm_fault), and the ATS
    invalidation completions its bonds wait for."""

    def __init__(self, partition: "Partition", interconnect: "Interconnect", owner_service: "OwnerService", *,
                 iommu: str = "intel", timeout_us: float | None = None):
        if iommu not in IOMMUS:
            raise InvalidArgument(f"IOMMU of {partition.name}: expected one of {tuple(IOMMUS)}, got {iommu!r}")
        self.part = partition
        self.name = partition.name
        self.interconnect = interconnect
        self.owner_service = owner_service
        self.iommu = iommu
        self.timeout_us = default_timeout_us(iommu) if timeout_us is None else float(timeout_us)
        if not self.timeout_us > 0:
            raise InvalidArgument(f"IOMMU of {partition.name}: timeout_us must be positive, got {timeout_us!r}")
        self.bonds: dict[tuple[str, str], IommuSvaBond] = {}
        self.pasids: dict[int, int] = {}  # mm id -> PASID (mm->pasid: one per mm, shared by its devices)
        self._next_pasid = 1
        self._next_tag = 0
        self._waiting: dict[int, _Completion] = {}  # invalidation tag -> its wait descriptor
        self._retired = Counter[str]()  # the counters (COUNTERS) of bonds already unbound
        self._retired_max = 0.0  # their longest spin

    def _bond(self, host: str, notifier_id: str) -> IommuSvaBond:
        bond = self.bonds.get((host, notifier_id))
        if bond is None:
            raise NotFound(f"no SVA bond {notifier_id!r} of partition {host} on {self.name}")
        return bond

    async def bind(self, host: str, notifier_id: str, name: str, mm_id: int) -> int:
        """iommu_sva_bind_device(dev, mm): a PASID for the mm and the driver's notifier
        registered on it (mmu_notifier_register in intel_svm_bind_mm, mmu_notifier_get in
        arm_smmu_mmu_notifier_get); returns the PASID."""
        self.owner_service._check_host(host)
        cls = bond_class(self.part.core.semantics)
        mm = self.part.mm(mm_id)
        key = (host, notifier_id)
        if key in self.bonds:
            raise InvalidArgument(f"SVA bond {notifier_id!r} of partition {host} is already bound on {self.name}")
        pasid = self.pasids.get(mm_id)
        if pasid is None:
            pasid = self.pasids[mm_id] = self._next_pasid
            self._next_pasid += 1
        bond = cls(self, host, notifier_id, name, mm, pasid)
        self.bonds[key] = self.owner_service.notifiers[key] = bond
        try:
            await self.part.core.register(bond, mm)
        except BaseException:
            del self.bonds[key], self.owner_service.notifiers[key]
            raise
        return pasid

    async def unbind(self, host: str, notifier_id: str, mm_id: int, how: str) -> tuple[float, float, float]:
        """iommu_sva_unbind_device(): intel_svm_unbind_mm() -> mmu_notifier_unregister()
        (``how="unregister"``), or arm_smmu_mmu_notifier_put() -> mmu_notifier_put() (``"put"``:
        the driver tears the PASID down itself first, then the free waits in call_srcu).
        Returns (total, release, SRCU wait) in microseconds."""
        bond = self._bond(host, notifier_id)
        mm = self.part.mms.get(mm_id)
        if mm is None or bond.mm_id != mm_id:
            raise NotFound(f"SVA unbind of {notifier_id!r} from mm {mm_id} on {self.name}: not bound there")
        if how == "unregister":
            t = await self.part.core.unregister(bond, mm)
        elif how == "put":
            t0 = self.runtime_now()
            if not bond.hlist.unhashed():
                await bond.release(mm)
            t = await self.part.core.put(bond, mm)
            t = TeardownTiming(self.runtime_now() - t0, t.release_us, t.srcu_wait_us)
        else:
            raise InvalidArgument(f"SVA unbind: how must be 'unregister' or 'put', got {how!r}")
        del self.bonds[(host, notifier_id)]
        self.owner_service.notifiers.pop((host, notifier_id), None)
        self._retired.update(_counters(bond.stats))
        self._retired_max = max([self._retired_max, *bond.stats.spin_us])
        return (t.total_us, t.release_us, t.srcu_wait_us)

    def counters(self) -> dict[str, float]:
        """``COUNTERS`` summed over every bond this IOMMU had, bound or unbound (``spins``: the
        atomic ops' spins, ``spin_max_us``: the longest)."""
        total = Counter(self._retired)
        for bond in self.bonds.values():
            total.update(_counters(bond.stats))
        out: dict[str, float] = {k: total.get(k, 0) for k in COUNTERS}
        out["spin_max_us"] = max([self._retired_max] + [max(b.stats.spin_us, default=0.0) for b in self.bonds.values()])
        return out

    def runtime_now(self) -> float:
        return self.part.runtime.now()

    async def ats_translate(self, host: str, notifier_id: str, mm_id: int, address: int,
                            write: bool) -> tuple[int, tuple[int, int, int], bool] | None:
        """An ATS Translation Request: the IOMMU walks the PASID's page table (the CPU's) and
        answers the translation, or none (R=W=0) when the pte is not present, or not writable
        for a write: the device must then issue a page request. No fault here, no reference
        taken: the page stays the page table's. A torn-down PASID answers a translation fault
        (``Released``)."""
        self.owner_service._check_host(host)
        bond = self._bond(host, notifier_id)
        if bond.torn_down or bond.fenced:
            raise Released(f"SVA bond {bond.name}: PASID {bond.pasid} is torn down (the mm was released)")
        mm = self.part.mm(mm_id)
        check_user_address(address, f"ATS translation request of {bond.name}", aligned=True)
        bond.stats.ats_requests += 1
        from nodes.vmops import _follow_page  # follow_page(): the IOMMU's walk, no fault

        pte = _follow_page(mm, address)
        if pte is None or (write and not pte[0].flags[pte[1]] & PTE_WRITE):
            bond.stats.ats_misses += 1
            return None
        vma, i = pte
        pfn = int(vma.pfn[i])
        bond.issued.setdefault(address >> PAGE_SHIFT, Counter())[pfn] += 1
        return pfn, self.part.frames.stamp(pfn), bool(vma.flags[i] & PTE_WRITE)

    async def page_request(self, host: str, notifier_id: str, mm_id: int, address: int, write: bool) -> int:
        """A PRI Page Request, as the driver's fault handler serves it (5.10 prq_event_thread,
        6.6 iommu_sva_handle_iopf): mmget_not_zero(mm), mmap_read_lock, the VMA's access check,
        handle_mm_fault(); the Page Group Response is SUCCESS, or INVALID on any failure."""
        self.owner_service._check_host(host)
        bond = self._bond(host, notifier_id)
        bond.stats.page_requests += 1
        mm = self.part.mm(mm_id)
        if bond.torn_down or mm.users <= 0:
            bond.stats.page_request_failures += 1
            return IOMMU_PAGE_RESP_INVALID
        from nodes import vmops

        try:
            async with mm.mmap_sem.read():
                await vmops.handle_mm_fault(self.part, mm, address, write=write)
        except ModelError:
            bond.stats.page_request_failures += 1
            return IOMMU_PAGE_RESP_INVALID
        return IOMMU_PAGE_RESP_SUCCESS

    async def ats_completion(self, host: str, tag: int) -> None:
        """An Invalidate Completion from the device: the wait descriptor (CMD_SYNC) of ``tag``
        is done. One that comes after the driver stopped waiting (an aborted or given-up
        invalidation) finds no one."""
        c = self._waiting.get(tag)
        if c is not None:
            c.done = True
            c.queue.wake_all()

    async def invalidate_device(self, bond: IommuSvaBond, start: int, end: int, *, what: str) -> bool:
        """Issue an ATS invalidation of [start, end) to ``bond``'s device and wait for its
        completion, bounded by the time-out, with the driver's time-out path (``IOMMUS``).
        True when the device completed it."""
        ite = 0
        while not bond.fenced:
            self._next_tag += 1
            tag = self._next_tag
            c = self._waiting[tag] = _Completion(f"{bond.name}.inv{tag}")
            deadline = self.part.runtime.now() + self.timeout_us
            try:
                try:
                    await self.interconnect.call(self.name, bond.host, SVA_DEVICE_SERVICE, "ats_invalidate",
                                                 bond.notifier_id, start, end, tag, kind="callout")
                except Unreachable as e:
                    self.owner_service.fence(bond.host, during=f"{what} of {bond.name}", error=str(e))
                    return False
                except NotFound:
                    return False  # the device was unbound meanwhile: nothing left to invalidate
                await self._wait(c, deadline)
            finally:
                del self._waiting[tag]
            if c.done:
                bond.stats.completions += 1
                return True
            if self.iommu == "smmuv3":
                bond.stats.cmd_sync_timeouts += 1
                self.part.runtime.trace("sva", f"arm-smmu-v3: CMD_SYNC timeout ({what} of {bond.name}, "
                                               f"[{start:#x}, {end:#x}))")
                return False
            ite += 1
            bond.stats.ite += 1
            self.part.runtime.trace("sva", f"DMAR: Invalidation Time-out Error (ITE) cleared ({what} of {bond.name}); "
                                           f"resubmitting")
            if ite >= MAX_ITE:
                raise AtsInvalidationHang(
                    f"qi_submit_sync: the device-TLB invalidation [{start:#x}, {end:#x}) of {bond.name} (PASID "
                    f"{bond.pasid}) timed out {ite} times ({self.timeout_us:.0f} us each); Linux 5.10/6.6 "
                    f"resubmits it forever, spinning in {what}")
        return False

    async def _wait(self, c: _Completion, deadline: float) -> None:
        """Spin until ``c`` is done or ``deadline`` passes (a supervised timer ends the wait)."""
        rt = self.part.runtime
        if c.done:
            return
        expired = False

        async def expire() -> None:
            nonlocal expired
            await rt.sleep(max(0.0, deadline - rt.now()))
            expired = True
            c.queue.wake_all()

        timer = rt.spawn(expire(), name=f"{c.queue.name}.timeout")
        try:
            while not c.done and not expired:
                await c.queue.wait()
        finally:
            timer.cancel()


# -- the device's side -------------------------------------------------------------------------


@dataclass
class AtcEntry:
    """One translation in the device's ATC."""

    pfn: int
    stamp: tuple[int, int, int]  # the page's contents when translated: what a read must return
    writable: bool


class _Outstanding:
    """An ATS Translation Request in flight, and whether an invalidation overtook it."""

    __slots__ = ("vpn", "stale")

    def __init__(self, vpn: int):
        self.vpn = vpn
        self.stale = False


class SvaDeviceService:
    """What a partition hosting SVA devices serves to IOMMUs (``SVA_DEVICE_SERVICE``): ATS
    invalidation requests."""

    def __init__(self, name: str):
        self.name = name
        self.devices: dict[str, SvaDevice] = {}
        self._next_id = 0

    def add(self, dev: "SvaDevice") -> str:
        self._next_id += 1
        nid = f"{dev.name}#sva{self._next_id}"
        self.devices[nid] = dev
        return nid

    async def ats_invalidate(self, notifier_id: str, start: int, end: int, tag: int) -> None:
        dev = self.devices.get(notifier_id)
        if dev is None:
            raise NotFound(f"no SVA device {notifier_id!r} on partition {self.name}")
        dev.invalidate_request(start, end, tag)


class SvaDevice:
    """A PCIe function with ATS and PRI on partition ``host``, bound (a PASID) to mm ``mm_id``
    of partition ``owner``: its ATC, its translation and page requests, and the completion of
    the invalidations its IOMMU sends it. Oracle reports go to the owner through
    ``oracle_sink`` at the instant of install and of drop, as the other secondaries'."""

    def __init__(self, runtime: "Runtime", interconnect: "Interconnect", devices: SvaDeviceService, owner: str,
                 oracle_sink: Any, mm_id: int, name: str, *, atc_entries: int = DEFAULT_ATC_ENTRIES,
                 completion_us: Callable[[], float] | None = None):
        if not isinstance(atc_entries, int) or atc_entries <= 0:
            raise InvalidArgument(f"SVA device {name}: atc_entries must be a positive integer, got {atc_entries!r}")
        self.runtime = runtime
        self.interconnect = interconnect
        self.devices = devices
        self.host = devices.name
        self.owner = owner
        self.oracle_sink = oracle_sink
        self.mm_id = mm_id
        self.name = name
        self.atc_entries = atc_entries
        self.completion_us = completion_us or (lambda: DEFAULT_COMPLETION_US)
        # invariant: len(atc) <= atc_entries; keyed by vpn, least recently used first
        self.atc: OrderedDict[int, AtcEntry] = OrderedDict()
        self.notifier_id: str | None = None
        self.pasid: int | None = None
        self.unbound = False
        self.inflight = InflightAccesses(name)
        self._outstanding: set[_Outstanding] = set()
        self.stats = SvaStats()

    def __repr__(self) -> str:
        return f"SvaDevice({self.name}, mm {self.mm_id} of {self.owner}, PASID {self.pasid}, {len(self.atc)} ATC entries)"

    async def _call(self, method: str, *args: Any, kind: str = "fault") -> Any:
        return await self.interconnect.call(self.host, self.owner, SVA_SERVICE, method, *args, kind=kind)

    async def bind(self) -> int:
        """iommu_sva_bind_device(): the PASID the device tags its requests with."""
        if self.notifier_id is not None:
            raise InvalidArgument(f"SVA device {self.name} is already bound (PASID {self.pasid})")
        nid = self.devices.add(self)
        try:
            self.pasid = await self._call("bind", self.host, nid, self.name, self.mm_id, kind="rpc")
        except BaseException:
            del self.devices.devices[nid]
            raise
        self.notifier_id = nid
        return self.pasid

    register = bind  # what the harness's secondaries are made with

    async def unregister(self) -> TeardownTiming:
        """iommu_sva_unbind_device() with the driver's mmu_notifier_unregister (Intel)."""
        return await self._unbind("unregister")

    async def put(self) -> TeardownTiming:
        """iommu_sva_unbind_device() with the driver's mmu_notifier_put (SMMUv3)."""
        return await self._unbind("put")

    async def _unbind(self, how: str) -> TeardownTiming:
        if self.notifier_id is None or self.unbound:
            raise InvalidArgument(f"SVA device {self.name} is not bound")
        total, release, wait = await self._call("unbind", self.host, self.notifier_id, self.mm_id, how, kind="rpc")
        self.unbound = True
        self._drop(list(self.atc))  # the PASID's ATC was invalidated by the release; nothing is left
        del self.devices.devices[self.notifier_id]
        return TeardownTiming(total, release, wait)

    # -- DMA through the ATC ----------------------------------------------------------------

    async def access(self, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """A DMA of the device to ``address`` of the bound mm: an ATC hit reads at once; a
        miss sends an ATS Translation Request; one answered "not present" sends a PRI Page
        Request and, on SUCCESS, translates again. Returns the stamp read. Raises ``Released``
        when the PASID is torn down or the device unbound, ``BadAddress`` when the page
        request is answered INVALID (the device's DMA fails), ``Busy`` after ``ATS_ROUNDS``."""
        if self.notifier_id is None:
            raise InvalidArgument(f"SVA device {self.name}: access to {address:#x} before bind")
        check_user_address(address, f"SVA device {self.name}: access")
        vpn = address >> PAGE_SHIFT
        page = vpn << PAGE_SHIFT
        for _ in range(ATS_ROUNDS):
            if self.unbound:
                raise Released(f"SVA device {self.name}: access to {address:#x} after unbind")
            entry = self.atc.get(vpn)
            if entry is not None and (entry.writable or not write):
                self.atc.move_to_end(vpn)
                return await self._read(vpn, page, entry)
            req = _Outstanding(vpn)
            self._outstanding.add(req)
            self.stats.ats_requests += 1
            try:
                answer = await self._call("ats_translate", self.host, self.notifier_id, self.mm_id, page, write)
            finally:
                self._outstanding.discard(req)
            # -- no suspension point from here to the install and its report --
            if req.stale:  # an invalidation of the page arrived while the answer was on its way
                self.stats.stale_translations += 1
                continue
            if answer is None:
                self.stats.ats_misses += 1
                self.stats.page_requests += 1
                resp = await self._call("page_request", self.host, self.notifier_id, self.mm_id, page, write)
                if resp != IOMMU_PAGE_RESP_SUCCESS:
                    self.stats.page_request_failures += 1
                    raise BadAddress(f"SVA device {self.name}: page request for {address:#x} (PASID {self.pasid}) "
                                     f"answered INVALID")
                continue
            if self.unbound:
                continue  # raises Released above
            pfn, stamp, writable = answer
            self._install(vpn, pfn, tuple(stamp), writable)
            return await self._read(vpn, page, self.atc[vpn])
        raise Busy(f"SVA device {self.name}: no translation of {address:#x} after {ATS_ROUNDS} ATS/PRI rounds")

    def _read(self, vpn: int, page: int, entry: AtcEntry) -> Awaitable[tuple[int, int, int]]:
        """The DMA read through ``entry``, in flight until its answer is back."""
        return self.inflight.access(vpn, self.interconnect.call(
            self.host, self.owner, OWNER_SERVICE, "dma_read", self.host, self.notifier_id, self.mm_id, page,
            entry.pfn, entry.stamp, kind="read"))

    def _install(self, vpn: int, pfn: int, stamp: tuple[int, int, int], writable: bool) -> None:
        """Cache the translation (evicting the least recently used entry if the ATC is full)
        and report it to the owner at this same instant."""
        if vpn in self.atc:  # a read-only entry upgraded by a write translation
            self._drop([vpn])
        while len(self.atc) >= self.atc_entries:
            self.stats.evictions += 1
            self._drop([next(iter(self.atc))])
        self.atc[vpn] = AtcEntry(pfn, stamp, writable)
        self.stats.installed += 1
        self.oracle_sink.translation_established(self.host, self.notifier_id, self.mm_id, vpn << PAGE_SHIFT, pfn)

    def _drop(self, vpns: list[int]) -> None:
        pfns = [e.pfn for e in (self.atc.pop(v, None) for v in vpns) if e is not None]
        if pfns:
            self.stats.dropped += len(pfns)
            self.oracle_sink.translations_dropped(self.host, self.notifier_id, self.mm_id, pfns)

    # -- ATS invalidation --------------------------------------------------------------------

    def invalidate_request(self, start: int, end: int, tag: int) -> None:
        """An ATS Invalidate Request arrived: requests outstanding for its pages are marked
        stale now; the completion follows after the device's completion latency (``_complete``)."""
        first, last = vpn_span(start, end)
        for req in self._outstanding:
            if first <= req.vpn <= last:
                req.stale = True
        self.stats.invalidations += 1
        latency = float(self.completion_us())
        if latency < 0:
            raise InvalidArgument(f"SVA device {self.name}: a completion latency of {latency} us")
        self.runtime.spawn(self._complete(first, last, tag, latency), name=f"{self.name}.inv{tag}")

    async def _complete(self, first: int, last: int, tag: int, latency: float) -> None:
        """After ``latency``: drop the range's entries (the device used them until now), wait
        for the DMA issued through them, send the Invalidate Completion. A completion that does
        not reach the IOMMU is one it times out on."""
        await self.runtime.sleep(latency)
        self._drop(keys_in_span(self.atc, first, last))
        await self.inflight.fence(first, last)
        self.stats.completions += 1
        try:
            await self.interconnect.call(self.host, self.owner, SVA_SERVICE, "ats_completion", self.host, tag,
                                         kind="callout")
        except Unreachable:
            pass  # the IOMMU's wait times out: its time-out path (IOMMUS) runs there

    def translation(self, address: int) -> AtcEntry | None:
        """The ATC entry for ``address``, if any (no LRU update)."""
        return self.atc.get(page_align(address) >> PAGE_SHIFT)


__all__ = [
    "ARM_SMMU_POLL_TIMEOUT_US", "COUNTERS", "AtcEntry", "AtsInvalidationHang", "IOMMUS", "IommuSvaBond", "MAX_ITE",
    "PCIE_INV_COMPLETION_TIMEOUT_US", "SVA_DEVICE_SERVICE", "SVA_SERVICE", "SvaBond510", "SvaBond66", "SvaDevice",
    "SvaDeviceService", "SvaIommu", "SvaStats", "bond_class", "default_timeout_us",
]
