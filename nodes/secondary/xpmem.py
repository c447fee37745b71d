"""XPMEM as a secondary MMU: cross-partition attachments of another process's memory.

Mirrors the hpc/xpmem kernel module (``kernel/xpmem_make.c``, ``xpmem_get.c``,
``xpmem_attach.c``, ``xpmem_pfn.c``, ``xpmem_mmu_notifier.c``). The objects, as in the kernel:

- ``XpmemDriver``: the XPMEM thread group of one *source* mm (struct xpmem_thread_group). It
  owns the segments made from that mm and the access permits handed out for them, and it embeds
  the mmu notifier registered on the source mm (``tg->mmu_not``: here ``driver.notifier``, an
  ``XpmemMmuNotifier``). The API object and the notifier are separate because both have a
  ``release``: XPMEM's ``release(apid)`` and the notifier's ``->release``.
- a segment (``make``): a page-aligned range of the source mm, its permit mode, owned by the
  source process.
- an access permit (``get``): the right of one process (an attacher identity) to attach a
  segment, read-only or read-write; the permission check is IPC-style (``xpmem_ipcperms``).
- an attachment (``attach``): a range of the attacher's address space mapping part of the
  segment. A fault on it pins the source page (remote get_user_pages with a pin) and maps it;
  the attacher's pte holds that pin until it is zapped.

The notifier implements only ``invalidate_range_end``, ``invalidate_page`` and ``release``:
XPMEM acts once the primary ptes are gone. For each attachment overlapping the range, under
the attachment's invalidate mutex, it unpins the pages and then zaps the attacher's ptes
(xpmem_clear_PTEs_of_att(): "Unpin the pages", then zap_vma_ptes()). Safety comes from the pin
(the frame cannot be freed while pinned), not from blocking faults.

A fault racing an invalidation across the network. The kernel's fault handler holds the source
mm's mmap_sem for read across the page lookup *and* the remap, so a munmap of the source cannot
run in between. Across the network the fault cannot hold the owner's mmap_sem while the reply
travels back, so each attachment carries an invalidate sequence (as KVM's mmu_notifier_seq):

    fault (attacher partition)               munmap (source partition)
    --------------------------               -------------------------
    seq = att.invalidate_seq
    get_user_pages(pin) -- request ---->     page pinned, mmap_sem dropped
                                             range_start (XPMEM: nothing), zap primary ptes
                                             range_end -> under invalidate_mutex:
                                               invalidate_seq += 1; nothing mapped yet
                        <--- reply ------    pages freed, except the pinned one
    seq changed: unpin, retry -> EFAULT
    [Required: a pinned page is mapped only if no range_end for it ran since the lookup began;
     otherwise the pin would outlive the source mapping until detach]
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from nodes.errors import BadAddress, InvalidArgument, NotFound, PermissionDenied, Released
from nodes.locks import Mutex
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, Mm
from nodes.notifier import MmuNotifier, TeardownTiming
from nodes.secondary.base import keys_in_span, page_align

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import Runtime, TaskSignals

XPMEM_RDONLY = 0x1
XPMEM_RDWR = 0x2
S_IRUSR = 0o400
S_IWUSR = 0o200
_ATTACH_BASE = 0x7F00_0000_0000  # where attachments are placed in attacher address spaces


def _fmt(value: object, spec: str = "#x") -> str:
    """A value for an error message: ``spec``-formatted if it is an int, repr otherwise."""
    return format(value, spec) if isinstance(value, int) else repr(value)


@dataclass(frozen=True)
class XpmemCred:
    """The calling process: its thread group id (owner-only calls compare it) and its
    credentials (permission checks use them). uid 0 has CAP_IPC_OWNER."""

    tgid: int
    uid: int
    gid: int
    groups: frozenset[int] = frozenset()

    def in_group(self, gid: int) -> bool:
        """in_group_p(): the primary or a supplementary group."""
        return self.gid == gid or gid in self.groups


@dataclass
class XpmemPte:
    """One attacher pte mapping a pinned source page (remap_pfn_range)."""

    pfn: int
    stamp: tuple[int, int, int]
    writable: bool


@dataclass(eq=False)
class XpmemSegment:
    """struct xpmem_segment: [vaddr, vaddr+size) of the source mm."""

    segid: int
    vaddr: int
    size: int
    permit_mode: int
    aps: list["XpmemAccessPermit"] = field(default_factory=list)
    destroyed: bool = False

    @property
    def end(self) -> int:
        return self.vaddr + self.size


@dataclass(eq=False)
class XpmemAccessPermit:
    """struct xpmem_access_permit: one process's right to attach a segment."""

    apid: int
    segment: XpmemSegment
    mode: int  # XPMEM_RDONLY or XPMEM_RDWR
    cred: XpmemCred  # the process that got it (its thread group owns the apid)
    attachments: list["XpmemAttachment"] = field(default_factory=list)
    destroyed: bool = False


@dataclass(eq=False)
class XpmemAttachment:
    """struct xpmem_attachment: [vaddr, vaddr+size) of the attacher maps
    [segment.vaddr+offset, +size) of the source."""

    ap: XpmemAccessPermit
    offset: int
    size: int
    vaddr: int  # at_vaddr, in the attacher's address space
    invalidate_mutex: Mutex
    # the attacher's ptes, keyed by page index within the attachment; each holds one pin
    ptes: dict[int, XpmemPte] = field(default_factory=dict)
    invalidate_seq: int = 0  # bumped under invalidate_mutex by every overlapping invalidation
    destroyed: bool = False  # XPMEM_FLAG_DESTROYING: detached

    @property
    def segment(self) -> XpmemSegment:
        return self.ap.segment

    @property
    def src_start(self) -> int:
        """The source address the attachment's first page maps (att->vaddr)."""
        return self.ap.segment.vaddr + self.offset

    @property
    def src_end(self) -> int:
        return self.src_start + self.size

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT


@dataclass
class XpmemStats:
    """Counters of one XPMEM thread group."""

    accesses: int = 0
    pte_hits: int = 0
    faults: int = 0  # attacher ptes installed (each with a pin)
    retries: int = 0  # faults whose pin was given back (raced an invalidation or a fault)
    pins: int = 0
    unpins: int = 0
    zapped: int = 0  # attacher ptes zapped
    invalidations: int = 0  # notifier callouts that overlapped at least one attachment


class XpmemMmuNotifier(MmuNotifier):
    """xpmem_mmuops: the notifier embedded in a thread group (``tg->mmu_not``)."""

    def __init__(self, driver: "XpmemDriver", name: str):
        super().__init__(name)
        self.driver = driver

    async def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """xpmem_invalidate_range(): "XPMEM only uses the invalidate_range_end() portion",
        when the primary ptes of the range are gone. Unpin, then zap, every overlapping
        attachment page."""
        await self.driver._invalidate(start, end)

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        """xpmem_invalidate_page(): the range form for the one page."""
        start = page_align(address)
        await self.driver._invalidate(start, start + PAGE_SIZE)

    async def release(self, mm: Mm) -> None:
        """xpmem_mmu_release() -> xpmem_teardown(): the source mm is going away; every
        attachment of its segments is torn down (unpinned, zapped) and the thread group is
        dead: later calls raise ``Released``."""
        await self.driver._teardown()


class XpmemDriver:
    """The XPMEM thread group of one source mm: its segments, permits and notifier."""

    def __init__(
        self,
        runtime: "Runtime",
        owner: "OwnerPort",
        mm_id: int,
        name: str,
        *,
        cred: XpmemCred,
        zap_per_page_us: float = 0.0,
    ):
        if zap_per_page_us < 0:
            raise InvalidArgument(f"XPMEM {name}: zap_per_page_us must not be negative, got {zap_per_page_us!r}")
        self.runtime = runtime
        self.owner = owner
        self.mm_id = mm_id
        self.name = name
        self.cred = cred  # the source process: owner of every segment made here
        self.zap_per_page_us = float(zap_per_page_us)
        self.notifier = XpmemMmuNotifier(self, name)
        self.registered = False
        self.released = False  # the notifier's ->release ran: XPMEM_FLAG_DESTROYING on the tg
        self.segments: dict[int, XpmemSegment] = {}
        self.aps: dict[int, XpmemAccessPermit] = {}
        self._next_seg = 1
        self._next_ap = 1
        self._next_at_vaddr: dict[int, int] = {}  # per attacher tgid
        self.stats = XpmemStats()

    def __repr__(self) -> str:
        return (
            f"XpmemDriver({self.name}, mm {self.mm_id}, {len(self.segments)} segments, "
            f"{len(self.aps)} permits{', released' if self.released else ''})"
        )

    # -- registration -----------------------------------------------------------------------

    async def register(self, current: "TaskSignals | None" = None) -> None:
        """xpmem_mmu_notifier_init(): register the notifier on the source mm."""
        await self.owner.register(self.notifier, self.mm_id, current)
        self.registered = True

    async def unregister(self) -> TeardownTiming:
        """xpmem_mmu_notifier_unlink(): mmu_notifier_unregister() (which calls ->release if
        exit has not)."""
        return await self.owner.unregister(self.notifier, self.mm_id)

    def _check_live(self, what: str) -> None:
        if self.released:
            raise Released(f"XPMEM {self.name}: {what} after release of source mm {self.mm_id}")

    # -- make / get / attach ----------------------------------------------------------------

    def make(self, vaddr: int, size: int, permit_mode: int) -> int:
        """xpmem_make(): share [vaddr, vaddr+size) of the source mm; returns the segid.
        vaddr page aligned, size positive and a page multiple, permit bits within 0777: else
        ``InvalidArgument`` naming the value."""
        self._check_live("make")
        if not self.registered:
            raise InvalidArgument(f"XPMEM {self.name}: make before register(): the notifier must be on mm {self.mm_id}")
        if not isinstance(vaddr, int) or vaddr < 0 or vaddr % PAGE_SIZE:
            raise InvalidArgument(f"xpmem_make: vaddr {_fmt(vaddr)} is not a page-aligned address")
        if not isinstance(size, int) or size <= 0:
            raise InvalidArgument(f"xpmem_make: size {size!r} is not positive")
        if size % PAGE_SIZE:
            raise InvalidArgument(f"xpmem_make: size {size} ({size:#x}) is not a multiple of the page size")
        if vaddr + size > TASK_SIZE:
            raise InvalidArgument(f"xpmem_make: [{vaddr:#x}, {vaddr + size:#x}) is outside user space")
        if not isinstance(permit_mode, int) or permit_mode < 0 or permit_mode & ~0o777:
            raise InvalidArgument(f"xpmem_make: permit_mode {_fmt(permit_mode, '#o')} has bits outside 0o777")
        segid = (self.mm_id << 32) | self._next_seg
        self._next_seg += 1
        self.segments[segid] = XpmemSegment(segid, vaddr, size, permit_mode)
        return segid

    def _segment(self, segid: int) -> XpmemSegment:
        seg = self.segments.get(segid)
        if seg is None or seg.destroyed:
            raise NotFound(f"XPMEM {self.name}: no segment with segid {_fmt(segid)}")
        return seg

    def _ap(self, apid: int) -> XpmemAccessPermit:
        ap = self.aps.get(apid)
        if ap is None or ap.destroyed:
            raise NotFound(f"XPMEM {self.name}: no access permit with apid {_fmt(apid)}")
        return ap

    @staticmethod
    def _ipcperms(cred: XpmemCred, owner: XpmemCred, mode: int, flag: int) -> bool:
        """xpmem_ipcperms(): the owner's, group's or others' bits of ``mode`` must include the
        requested access; CAP_IPC_OWNER (uid 0 here) overrides."""
        requested = (flag >> 6) | (flag >> 3) | flag
        granted = mode
        if cred.uid == owner.uid:
            granted >>= 6
        elif cred.in_group(owner.gid):
            granted >>= 3
        return not (requested & ~granted & 0o7) or cred.uid == 0

    def get(self, segid: int, flags: int, cred: XpmemCred) -> int:
        """xpmem_get(): a permit for ``cred``'s process to attach segment ``segid``, read-only
        (XPMEM_RDONLY) or read-write (XPMEM_RDWR). Read needs S_IRUSR in the applicable bits of
        the permit mode, RDWR also S_IWUSR (``PermissionDenied``, EACCES); bad flags are
        ``InvalidArgument``; an unknown segid is ``NotFound``. Returns the apid."""
        self._check_live("get")
        if flags not in (XPMEM_RDONLY, XPMEM_RDWR):
            raise InvalidArgument(f"xpmem_get: flags {flags!r} is not XPMEM_RDONLY ({XPMEM_RDONLY}) or XPMEM_RDWR ({XPMEM_RDWR})")
        seg = self._segment(segid)
        want = "read" if flags == XPMEM_RDONLY else "read-write"
        ok = self._ipcperms(cred, self.cred, seg.permit_mode, S_IRUSR)
        if ok and flags == XPMEM_RDWR:
            ok = self._ipcperms(cred, self.cred, seg.permit_mode, S_IWUSR)
        if not ok:
            raise PermissionDenied(
                f"xpmem_get: uid {cred.uid} gid {cred.gid} may not {want}-attach segid {segid:#x} "
                f"(owner uid {self.cred.uid} gid {self.cred.gid}, permit_mode {seg.permit_mode:#o})"
            )
        apid = (self.mm_id << 32) | (1 << 31) | self._next_ap
        self._next_ap += 1
        ap = XpmemAccessPermit(apid, seg, flags, cred)
        seg.aps.append(ap)
        self.aps[apid] = ap
        return apid

    def attach(self, apid: int, offset: int, size: int, cred: XpmemCred) -> XpmemAttachment:
        """xpmem_attach(): map [offset, offset+size) of the permit's segment into ``cred``'s
        address space; returns the attachment (its ``vaddr`` is the attach address). offset
        and size page aligned, size positive, the range inside the segment: else
        ``InvalidArgument``. Only the permit's process may attach with it (EACCES)."""
        self._check_live("attach")
        ap = self._ap(apid)
        if cred.tgid != ap.cred.tgid:
            raise PermissionDenied(f"xpmem_attach: apid {apid:#x} belongs to tgid {ap.cred.tgid}, not to caller tgid {cred.tgid}")
        seg = ap.segment
        if not isinstance(offset, int) or offset < 0 or offset % PAGE_SIZE:
            raise InvalidArgument(f"xpmem_attach: offset {_fmt(offset)} is not a page-aligned offset")
        if not isinstance(size, int) or size <= 0 or size % PAGE_SIZE:
            raise InvalidArgument(f"xpmem_attach: size {_fmt(size)} is not a positive multiple of the page size")
        if offset + size > seg.size:
            raise InvalidArgument(
                f"xpmem_attach: [offset {offset:#x}, +{size:#x}) is outside segid {seg.segid:#x} of size {seg.size:#x}"
            )
        at_vaddr = self._next_at_vaddr.get(cred.tgid, _ATTACH_BASE)
        self._next_at_vaddr[cred.tgid] = at_vaddr + size + PAGE_SIZE  # a guard page between
        att = XpmemAttachment(ap, offset, size, at_vaddr, Mutex(f"{self.name}.att@{at_vaddr:#x}.invalidate_mutex"))
        ap.attachments.append(att)
        return att

    # -- detach / release / remove ----------------------------------------------------------

    async def detach(self, att: XpmemAttachment, cred: XpmemCred | None = None) -> None:
        """xpmem_detach(): unmap the attachment: under its invalidate mutex mark it
        destroying, unpin its pages, zap its ptes. Detaching twice is a no-op (as in the
        kernel). With ``cred``, only the permit's process may detach (EACCES)."""
        if cred is not None and cred.tgid != att.ap.cred.tgid:
            raise PermissionDenied(
                f"xpmem_detach: attachment at {att.vaddr:#x} belongs to tgid {att.ap.cred.tgid}, not to caller tgid {cred.tgid}"
            )
        await self._detach_att(att)

    async def _detach_att(self, att: XpmemAttachment) -> None:
        """xpmem_detach_att(): also used by release, remove and teardown."""
        async with att.invalidate_mutex:
            if att.destroyed:
                return
            att.destroyed = True
            att.invalidate_seq += 1
            await self._unpin_and_zap(att, list(att.ptes))
        if att in att.ap.attachments:
            att.ap.attachments.remove(att)

    async def release(self, apid: int, cred: XpmemCred) -> None:
        """xpmem_release(): give up permit ``apid``, detaching its attachments. Only the
        permit's process may release it (``PermissionDenied``, EACCES)."""
        self._check_live("release")
        ap = self._ap(apid)
        if cred.tgid != ap.cred.tgid:
            raise PermissionDenied(f"xpmem_release: apid {apid:#x} belongs to tgid {ap.cred.tgid}, not to caller tgid {cred.tgid}")
        await self._release_ap(ap)

    async def _release_ap(self, ap: XpmemAccessPermit) -> None:
        """xpmem_release_ap()."""
        if ap.destroyed:
            return
        ap.destroyed = True
        for att in list(ap.attachments):
            await self._detach_att(att)
        if ap in ap.segment.aps:
            ap.segment.aps.remove(ap)
        self.aps.pop(ap.apid, None)

    async def remove(self, segid: int, cred: XpmemCred) -> None:
        """xpmem_remove(): withdraw segment ``segid``; every permit of it is released and every
        attachment torn down (unpinned). Only the segment's owner may remove it (EACCES)."""
        self._check_live("remove")
        seg = self._segment(segid)
        if cred.tgid != self.cred.tgid:
            raise PermissionDenied(f"xpmem_remove: segid {segid:#x} belongs to tgid {self.cred.tgid}, not to caller tgid {cred.tgid}")
        await self._remove_seg(seg)

    async def _remove_seg(self, seg: XpmemSegment) -> None:
        """xpmem_remove_seg()."""
        if seg.destroyed:
            return
        seg.destroyed = True
        for ap in list(seg.aps):
            await self._release_ap(ap)
        self.segments.pop(seg.segid, None)

    # -- faults -----------------------------------------------------------------------------

    async def access(self, att: XpmemAttachment, address: int, *, write: bool = False) -> tuple[int, int, int]:
        """An access by the attacher to ``address`` of its attachment ``att`` (a remote read):
        a mapped page reads at once; otherwise xpmem_fault_handler(): pin the source page
        (remote get_user_pages with a pin), then map it and report the translation, unless an
        invalidation of the attachment ran meanwhile (then give the pin back and retry).
        Returns the stamp read. ``Released`` after the source mm's ->release; ``BadAddress``
        outside the attachment, on a detached attachment, or for an unmapped source page;
        ``PermissionDenied`` for a write through a read-only permit."""
        self.stats.accesses += 1
        if not isinstance(address, int) or not att.vaddr <= address < att.vaddr + att.size:
            raise BadAddress(f"XPMEM {self.name}: address {_fmt(address)} is outside the attachment [{att.vaddr:#x}, {att.vaddr + att.size:#x})")
        if write and att.ap.mode != XPMEM_RDWR:
            raise PermissionDenied(f"XPMEM {self.name}: write to {address:#x} through read-only apid {att.ap.apid:#x}")
        idx = (address - att.vaddr) >> PAGE_SHIFT
        src = att.src_start + (idx << PAGE_SHIFT)
        while True:
            self._check_live(f"access to {address:#x}")
            if att.destroyed:
                raise BadAddress(f"XPMEM {self.name}: address {address:#x}: the attachment was detached")
            pte = att.ptes.get(idx)
            if pte is not None:
                self.stats.pte_hits += 1
                return await self.owner.dma_read(self.notifier, self.mm_id, src, pte.pfn, pte.stamp)
            seq = att.invalidate_seq
            refs = await self.owner.get_user_pages(self.mm_id, src, 1, write=att.ap.mode == XPMEM_RDWR, pin=True)
            ref = refs[0]
            self.stats.pins += 1
            # -- no suspension point from this check to the install and its report --
            if self.released or att.destroyed or att.invalidate_seq != seq or idx in att.ptes:
                # raced ->release, a detach, an invalidation, or a fault that mapped it first
                # (the kernel's "old_pfn == pfn: put_page()")
                self.stats.retries += 1
                self.stats.unpins += 1
                await self.owner.put_user_pages(self.mm_id, [ref.pfn])
                continue
            att.ptes[idx] = XpmemPte(ref.pfn, ref.stamp, ref.writable)
            self.owner.translation_established(self.notifier, self.mm_id, src, ref.pfn)
            self.stats.faults += 1
            return await self.owner.dma_read(self.notifier, self.mm_id, src, ref.pfn, ref.stamp)

    # -- invalidation -----------------------------------------------------------------------

    async def _invalidate(self, start: int, end: int) -> None:
        """xpmem_invalidate_PTEs_range() -> xpmem_clear_PTEs_range(): every attachment of every
        segment overlapping [start, end)."""
        hit = False
        for seg in list(self.segments.values()):
            if seg.destroyed or seg.end <= start or seg.vaddr >= end:
                continue
            for ap in list(seg.aps):
                for att in list(ap.attachments):
                    if att.src_start < end and att.src_end > start:
                        hit = True
                        await self._clear_ptes_of_att(att, start, end)
        if hit:
            self.stats.invalidations += 1

    async def _clear_ptes_of_att(self, att: XpmemAttachment, start: int, end: int) -> None:
        """xpmem_clear_PTEs_of_att(from_mmu=1): under the invalidate mutex, unpin the
        attachment's pages in the overlap, then zap their ptes."""
        async with att.invalidate_mutex:
            if att.destroyed:
                return
            att.invalidate_seq += 1  # before any suspension: a fault in flight will retry
            lo = max(start, att.src_start)
            hi = min(end, att.src_end)
            first = (lo - att.src_start) >> PAGE_SHIFT
            last = ((hi - 1) - att.src_start) >> PAGE_SHIFT
            await self._unpin_and_zap(att, keys_in_span(att.ptes, first, last))

    async def _unpin_and_zap(self, att: XpmemAttachment, idxs: list[int]) -> None:
        """xpmem_unpin_pages() then zap_vma_ptes(): the kernel's order. Caller holds the
        invalidate mutex. The ptes are removed only after the unpin completes."""
        ptes = [(i, att.ptes[i]) for i in idxs if i in att.ptes]
        if not ptes:
            return
        pfns = [p.pfn for _, p in ptes]
        await self.owner.put_user_pages(self.mm_id, pfns)
        self.stats.unpins += len(pfns)
        if self.zap_per_page_us:
            await self.runtime.sleep(len(pfns) * self.zap_per_page_us)
        for i, _ in ptes:
            del att.ptes[i]
        self.stats.zapped += len(pfns)
        self.owner.translations_dropped(self.notifier, self.mm_id, pfns)

    async def _teardown(self) -> None:
        """xpmem_teardown(): the source mm is going away (->release). Every segment is
        removed, which releases every permit and detaches every attachment."""
        self.released = True
        for seg in list(self.segments.values()):
            await self._remove_seg(seg)

    # -- inspection -------------------------------------------------------------------------

    def attachments(self) -> list[XpmemAttachment]:
        """Every live attachment of this thread group's segments."""
        return [att for seg in self.segments.values() for ap in seg.aps for att in ap.attachments]

    def pinned_pfns(self) -> list[int]:
        """The frames pinned on behalf of the attachments (one entry per attacher pte)."""
        return [p.pfn for att in self.attachments() for p in att.ptes.values()]
