"""XPMEM as a secondary MMU: cross-partition attachments of another process's memory.

Mirrors the hpc/xpmem kernel module (``kernel/xpmem_make.c``, ``xpmem_get.c``,
``xpmem_attach.c``, ``xpmem_pfn.c``, ``xpmem_mmu_notifier.c``), split the way SGI's
cross-partition XPMEM splits it: what belongs to the *source* lives on the partition that owns
the source mm, what belongs to an *attacher* lives on the attacher's partition.

- ``XpmemSegments`` (source side, one per partition, ``partition.xpmem``): the segments made from
  its mms (``make``: a page-aligned range of the source mm and its permit mode, owned by the
  source process) and the access permits handed out for them (``get``: the right of one process
  to attach a segment, read-only or read-write; the check is IPC-style, ``xpmem_ipcperms``), and
  a record of each attachment (``attach``), so that ``release`` and ``remove`` can tear the
  attachments down wherever they are.
- ``XpmemDriver`` (attacher side, one per source mm per attaching partition): the attachments
  made there, their ptes, and the mmu notifier registered on the source mm (``tg->mmu_not``:
  here ``driver.notifier``, an ``XpmemMmuNotifier``). An attachment maps part of a segment into
  the attacher's address space; a fault on it pins the source page (remote get_user_pages with
  a pin) and maps it; the attacher's pte holds that pin until it is zapped. The driver reaches
  the source side through its ``OwnerPort`` (in-process, or over the interconnect), and the
  source side reaches the driver back to detach (``detach_by_owner``). The API object and the
  notifier are separate because both have a ``release``: XPMEM's ``release(apid)`` and the
  notifier's ``->release``.

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
from typing import TYPE_CHECKING, Protocol

from nodes.errors import BadAddress, InvalidArgument, NotFound, PermissionDenied, Released
from nodes.locks import Mutex
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, TASK_SIZE, Mm, check_user_address, check_user_span
from nodes.notifier import MmuNotifier, TeardownTiming
from nodes.secondary.base import InflightAccesses, keys_in_span, page_align

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.partition import Partition
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
    mm_id: int
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
    attachments: dict[int, "XpmemAttacher"] = field(default_factory=dict)  # attachment id -> where it lives
    destroyed: bool = False


class XpmemAttacher(Protocol):
    """Where an attachment lives, as the source side reaches it: the attacher's driver
    in-process, or a proxy that sends the request to the attacher's partition."""

    async def detach_by_owner(self, attachment_ids: list[int]) -> None:
        """Tear these attachments down (unpin, zap): their permit or segment is going away."""


@dataclass(frozen=True)
class XpmemGrant:
    """What the source side answers an attach with."""

    attachment_id: int
    src_start: int  # the source address the attachment's first page maps
    size: int
    mode: int  # the permit's mode


@dataclass
class _SourceTg:
    """The source half of one source mm's thread group."""

    cred: XpmemCred  # the source process: owner of every segment made from the mm
    segments: dict[int, XpmemSegment] = field(default_factory=dict)
    next_seg: int = 1
    next_ap: int = 1


class XpmemSegments:
    """The source side of XPMEM on one partition: segments made from its mms, the permits
    handed out for them, and where their attachments live (see the module docstring). Every
    call names the bad value in its error; a source mm that has exited gives ``Released``."""

    def __init__(self, partition: "Partition"):
        self.part = partition
        self.tgs: dict[int, _SourceTg] = {}
        self.aps: dict[int, XpmemAccessPermit] = {}
        self.attachments: dict[int, tuple[XpmemAccessPermit, XpmemAttacher]] = {}
        self._next_attachment = 1

    def _live_tg(self, mm_id: int, what: str) -> _SourceTg:
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"{what}: no mm {mm_id} on partition {self.part.name}")
        if mm.exited:
            raise Released(f"{what}: source mm {mm_id} of {self.part.name} has exited (after release)")
        tg = self.tgs.get(mm_id)
        if tg is None:
            raise NotFound(f"{what}: mm {mm_id} of {self.part.name} has made no segment")
        return tg

    def segments_of(self, mm_id: int) -> dict[int, XpmemSegment]:
        """The live segments made from mm ``mm_id``."""
        tg = self.tgs.get(mm_id)
        return {} if tg is None else dict(tg.segments)

    def make(self, mm_id: int, vaddr: int, size: int, permit_mode: int, cred: XpmemCred) -> int:
        """xpmem_make(): share [vaddr, vaddr+size) of source mm ``mm_id``; returns the segid.
        vaddr page aligned, size positive and a page multiple, permit bits within 0777: else
        ``InvalidArgument`` naming the value. The first make fixes the source process (cred);
        a make of the same mm by another thread group is ``PermissionDenied``."""
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"xpmem_make: no mm {mm_id} on partition {self.part.name}")
        if mm.exited:
            raise Released(f"xpmem_make: source mm {mm_id} has exited (after release)")
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
        tg = self.tgs.setdefault(mm_id, _SourceTg(cred))
        if cred.tgid != tg.cred.tgid:
            raise PermissionDenied(f"xpmem_make: mm {mm_id} belongs to tgid {tg.cred.tgid}, not to caller tgid {cred.tgid}")
        segid = (mm_id << 32) | tg.next_seg
        tg.next_seg += 1
        tg.segments[segid] = XpmemSegment(segid, mm_id, vaddr, size, permit_mode)
        return segid

    def _segment(self, segid: int, what: str) -> tuple[_SourceTg, XpmemSegment]:
        if not isinstance(segid, int) or segid < 0:
            raise NotFound(f"{what}: no segment with segid {_fmt(segid)}")
        tg = self.tgs.get(segid >> 32)
        if tg is None:
            raise NotFound(f"{what}: no segment with segid {_fmt(segid)}")
        tg = self._live_tg(segid >> 32, what)
        seg = tg.segments.get(segid)
        if seg is None or seg.destroyed:
            raise NotFound(f"{what}: no segment with segid {_fmt(segid)}")
        return tg, seg

    def _ap(self, apid: int, what: str) -> XpmemAccessPermit:
        ap = self.aps.get(apid) if isinstance(apid, int) else None
        if ap is None or ap.destroyed:
            raise NotFound(f"{what}: no access permit with apid {_fmt(apid)}")
        self._live_tg(ap.segment.mm_id, what)
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
        if flags not in (XPMEM_RDONLY, XPMEM_RDWR):
            raise InvalidArgument(f"xpmem_get: flags {flags!r} is not XPMEM_RDONLY ({XPMEM_RDONLY}) or XPMEM_RDWR ({XPMEM_RDWR})")
        tg, seg = self._segment(segid, "xpmem_get")
        want = "read" if flags == XPMEM_RDONLY else "read-write"
        ok = self._ipcperms(cred, tg.cred, seg.permit_mode, S_IRUSR)
        if ok and flags == XPMEM_RDWR:
            ok = self._ipcperms(cred, tg.cred, seg.permit_mode, S_IWUSR)
        if not ok:
            raise PermissionDenied(
                f"xpmem_get: uid {cred.uid} gid {cred.gid} may not {want}-attach segid {segid:#x} "
                f"(owner uid {tg.cred.uid} gid {tg.cred.gid}, permit_mode {seg.permit_mode:#o})"
            )
        apid = (seg.mm_id << 32) | (1 << 31) | tg.next_ap
        tg.next_ap += 1
        ap = XpmemAccessPermit(apid, seg, flags, cred)
        seg.aps.append(ap)
        self.aps[apid] = ap
        return apid

    def attach(self, apid: int, offset: int, size: int, cred: XpmemCred, attacher: XpmemAttacher) -> XpmemGrant:
        """xpmem_attach(), the source half: check that ``cred``'s process may attach
        [offset, offset+size) of the permit's segment (offset and size page aligned, size
        positive, the range inside the segment: else ``InvalidArgument``; only the permit's
        process may attach with it: EACCES) and record where the attachment lives."""
        ap = self._ap(apid, "xpmem_attach")
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
        attachment_id = self._next_attachment
        self._next_attachment += 1
        ap.attachments[attachment_id] = attacher
        self.attachments[attachment_id] = (ap, attacher)
        return XpmemGrant(attachment_id, seg.vaddr + offset, size, ap.mode)

    def detached(self, attachment_id: int, cred: XpmemCred | None = None) -> None:
        """The attacher detached ``attachment_id`` (xpmem_detach): forget it. Only the
        permit's process may detach (EACCES); an unknown or already forgotten attachment is a
        no-op, as detaching twice is in the kernel."""
        entry = self.attachments.get(attachment_id)
        if entry is None:
            return
        ap, _ = entry
        if cred is not None and cred.tgid != ap.cred.tgid:
            raise PermissionDenied(
                f"xpmem_detach: attachment {attachment_id} belongs to tgid {ap.cred.tgid}, not to caller tgid {cred.tgid}"
            )
        del self.attachments[attachment_id]
        ap.attachments.pop(attachment_id, None)

    async def release(self, apid: int, cred: XpmemCred) -> None:
        """xpmem_release(): give up permit ``apid``, detaching its attachments wherever they
        live. Only the permit's process may release it (``PermissionDenied``, EACCES)."""
        ap = self._ap(apid, "xpmem_release")
        if cred.tgid != ap.cred.tgid:
            raise PermissionDenied(f"xpmem_release: apid {apid:#x} belongs to tgid {ap.cred.tgid}, not to caller tgid {cred.tgid}")
        await self._release_ap(ap)

    async def _release_ap(self, ap: XpmemAccessPermit) -> None:
        """xpmem_release_ap(): detach every attachment of the permit (each attacher once,
        with all of its ids), then forget the permit."""
        if ap.destroyed:
            return
        ap.destroyed = True
        by_attacher: dict[int, tuple[XpmemAttacher, list[int]]] = {}
        for aid, attacher in ap.attachments.items():
            by_attacher.setdefault(id(attacher), (attacher, []))[1].append(aid)
        for attacher, ids in by_attacher.values():
            await attacher.detach_by_owner(ids)
        for aid in list(ap.attachments):
            self.attachments.pop(aid, None)
        ap.attachments.clear()
        if ap in ap.segment.aps:
            ap.segment.aps.remove(ap)
        self.aps.pop(ap.apid, None)

    async def remove(self, segid: int, cred: XpmemCred) -> None:
        """xpmem_remove(): withdraw segment ``segid``; every permit of it is released and every
        attachment torn down (unpinned). Only the segment's owner may remove it (EACCES)."""
        tg, seg = self._segment(segid, "xpmem_remove")
        if cred.tgid != tg.cred.tgid:
            raise PermissionDenied(f"xpmem_remove: segid {segid:#x} belongs to tgid {tg.cred.tgid}, not to caller tgid {cred.tgid}")
        seg.destroyed = True
        for ap in list(seg.aps):
            await self._release_ap(ap)
        tg.segments.pop(seg.segid, None)


@dataclass(eq=False)
class XpmemAttachment:
    """struct xpmem_attachment, on the attacher's partition: [vaddr, vaddr+size) of the
    attacher maps [src_start, src_start+size) of the source mm."""

    id: int  # the source side's attachment id
    apid: int
    mode: int  # the permit's: XPMEM_RDONLY or XPMEM_RDWR
    tgid: int  # the attaching process (the permit's)
    src_start: int  # the source address the attachment's first page maps (att->vaddr)
    size: int
    vaddr: int  # at_vaddr, in the attacher's address space
    invalidate_mutex: Mutex
    inflight: InflightAccesses  # the attacher's accesses through its ptes not yet done, by page index
    # the attacher's ptes, keyed by page index within the attachment; each holds one pin
    ptes: dict[int, XpmemPte] = field(default_factory=dict)
    invalidate_seq: int = 0  # bumped under invalidate_mutex by every overlapping invalidation
    destroyed: bool = False  # XPMEM_FLAG_DESTROYING: detached

    @property
    def src_end(self) -> int:
        return self.src_start + self.size

    @property
    def npages(self) -> int:
        return self.size >> PAGE_SHIFT


@dataclass
class XpmemStats:
    """Counters of one XPMEM driver."""

    accesses: int = 0
    pte_hits: int = 0
    faults: int = 0  # attacher ptes installed (each with a pin)
    retries: int = 0  # faults whose pin was given back (raced an invalidation or a fault)
    pins: int = 0
    unpins: int = 0
    zapped: int = 0  # attacher ptes zapped
    invalidations: int = 0  # notifier callouts that overlapped at least one attachment
    fenced_zaps: int = 0  # zaps that waited for accesses in flight through the zapped ptes


class XpmemMmuNotifier(MmuNotifier):
    """xpmem_mmuops: the notifier embedded in a thread group (``tg->mmu_not``)."""

    def __init__(self, driver: "XpmemDriver", name: str):
        super().__init__(name)
        self.driver = driver

    def _check_callout(self, mm: Mm, op: str) -> None:
        """A callout must be about the source mm (one from another partition names it by id)."""
        if mm.id != self.driver.mm_id:
            raise NotFound(f"XPMEM {self.name}: {op} is about mm {mm.id!r}, but the source mm is {self.driver.mm_id}")

    async def invalidate_range_end(self, mm: Mm, start: int, end: int) -> None:
        """xpmem_invalidate_range(): "XPMEM only uses the invalidate_range_end() portion",
        when the primary ptes of the range are gone. Unpin, then zap, every overlapping
        attachment page. A malformed range is ``InvalidArgument`` and changes nothing."""
        self._check_callout(mm, "invalidate_range_end")
        check_user_span(start, end, f"XPMEM {self.name}: invalidate_range_end")
        await self.driver._invalidate(start, end)

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        """xpmem_invalidate_page(): the range form for the one page."""
        self._check_callout(mm, "invalidate_page")
        check_user_address(address, f"XPMEM {self.name}: invalidate_page")
        start = page_align(address)
        await self.driver._invalidate(start, start + PAGE_SIZE)

    async def release(self, mm: Mm) -> None:
        """xpmem_mmu_release() -> xpmem_teardown(): the source mm is going away; every
        attachment is torn down (unpinned, zapped) and the driver is dead: later calls raise
        ``Released``."""
        self._check_callout(mm, "release")
        await self.driver._teardown()


class XpmemDriver:
    """XPMEM on an attaching partition for one source mm: its attachments and notifier; the
    segments and permits are the source side's (``XpmemSegments``), reached through the
    owner port."""

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
        self.cred = cred  # the source process (make and remove through this driver act as it)
        self.zap_per_page_us = float(zap_per_page_us)
        self.notifier = XpmemMmuNotifier(self, name)
        self.registered = False
        self.released = False  # the notifier's ->release ran: XPMEM_FLAG_DESTROYING on the tg
        self.attachments: dict[int, XpmemAttachment] = {}  # by the source side's attachment id
        self._next_at_vaddr: dict[int, int] = {}  # per attacher tgid
        self.stats = XpmemStats()

    def __repr__(self) -> str:
        return (
            f"XpmemDriver({self.name}, mm {self.mm_id}, {len(self.attachments)} attachments"
            f"{', released' if self.released else ''})"
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

    async def put(self) -> TeardownTiming:
        """Tear every attachment down here, then mmu_notifier_put() (Linux 5.4): returns
        without waiting for callouts in flight; see ``NotifierCore.put``."""
        await self._teardown()
        return await self.owner.put(self.notifier, self.mm_id)

    def _check_live(self, what: str) -> None:
        if self.released:
            raise Released(f"XPMEM {self.name}: {what} after release of source mm {self.mm_id}")

    # -- make / get / attach: requests to the source side -----------------------------------

    async def make(self, vaddr: int, size: int, permit_mode: int) -> int:
        """xpmem_make() by the source process (``cred``), through the owner port."""
        self._check_live("make")
        if not self.registered:
            raise InvalidArgument(f"XPMEM {self.name}: make before register(): the notifier must be on mm {self.mm_id}")
        return await self.owner.xpmem_make(self.mm_id, vaddr, size, permit_mode, self.cred)

    async def get(self, segid: int, flags: int, cred: XpmemCred) -> int:
        """xpmem_get() (see ``XpmemSegments.get``); returns the apid."""
        self._check_live("get")
        return await self.owner.xpmem_get(segid, flags, cred)

    async def attach(self, apid: int, offset: int, size: int, cred: XpmemCred) -> XpmemAttachment:
        """xpmem_attach(): the source side checks and records it (``XpmemSegments.attach``);
        the attachment is mapped here, at the next free address of ``cred``'s process."""
        self._check_live("attach")
        if not self.registered:
            raise InvalidArgument(f"XPMEM {self.name}: attach before register(): the notifier must be on mm {self.mm_id}")
        grant = await self.owner.xpmem_attach(self.notifier, apid, offset, size, cred)
        at_vaddr = self._next_at_vaddr.get(cred.tgid, _ATTACH_BASE)
        self._next_at_vaddr[cred.tgid] = at_vaddr + grant.size + PAGE_SIZE  # a guard page between
        att = XpmemAttachment(grant.attachment_id, apid, grant.mode, cred.tgid, grant.src_start, grant.size, at_vaddr,
                              Mutex(f"{self.name}.att@{at_vaddr:#x}.invalidate_mutex", "xpmem_att.invalidate_mutex"),
                              InflightAccesses(f"{self.name}.att@{at_vaddr:#x}"))
        self.attachments[att.id] = att
        if self.released:  # ->release ran while the request travelled: tear it down at once
            await self._detach_att(att)
        return att

    # -- detach / release / remove ----------------------------------------------------------

    async def detach(self, att: XpmemAttachment, cred: XpmemCred | None = None) -> None:
        """xpmem_detach(): unmap the attachment: under its invalidate mutex mark it
        destroying, unpin its pages, zap its ptes; then the source side forgets it. Detaching
        twice is a no-op (as in the kernel). With ``cred``, only the permit's process may
        detach (EACCES)."""
        if cred is not None and cred.tgid != att.tgid:
            raise PermissionDenied(
                f"xpmem_detach: attachment at {att.vaddr:#x} belongs to tgid {att.tgid}, not to caller tgid {cred.tgid}"
            )
        if att.destroyed:
            return
        await self._detach_att(att)
        if not self.released:
            await self.owner.xpmem_detach(self.notifier, att.id, cred)

    async def _detach_att(self, att: XpmemAttachment) -> None:
        """xpmem_detach_att(): also used by release, remove and teardown."""
        async with att.invalidate_mutex:
            if att.destroyed:
                return
            att.destroyed = True
            att.invalidate_seq += 1
            await self._unpin_and_zap(att, list(att.ptes))
        self.attachments.pop(att.id, None)

    async def detach_by_owner(self, attachment_ids: list[int]) -> None:
        """The source side tears these attachments down (their permit was released or their
        segment removed): detach each one here. Unknown ids are already gone."""
        for aid in attachment_ids:
            att = self.attachments.get(aid)
            if att is not None:
                await self._detach_att(att)

    async def release(self, apid: int, cred: XpmemCred) -> None:
        """xpmem_release() (see ``XpmemSegments.release``): the permit's attachments, here
        and on any other partition, are detached."""
        self._check_live("release")
        await self.owner.xpmem_release(apid, cred)

    async def remove(self, segid: int, cred: XpmemCred) -> None:
        """xpmem_remove() (see ``XpmemSegments.remove``): every permit of the segment is
        released and every attachment torn down, wherever it lives."""
        self._check_live("remove")
        await self.owner.xpmem_remove(segid, cred)

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
        if write and att.mode != XPMEM_RDWR:
            raise PermissionDenied(f"XPMEM {self.name}: write to {address:#x} through read-only apid {att.apid:#x}")
        idx = (address - att.vaddr) >> PAGE_SHIFT
        src = att.src_start + (idx << PAGE_SHIFT)
        while True:
            self._check_live(f"access to {address:#x}")
            if att.destroyed:
                raise BadAddress(f"XPMEM {self.name}: address {address:#x}: the attachment was detached")
            pte = att.ptes.get(idx)
            if pte is not None:
                self.stats.pte_hits += 1
                return await att.inflight.access(idx, self.owner.dma_read(self.notifier, self.mm_id, src, pte.pfn, pte.stamp))
            seq = att.invalidate_seq
            refs = await self.owner.get_user_pages(self.mm_id, src, 1, write=att.mode == XPMEM_RDWR, pin=True)
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
            return await att.inflight.access(idx, self.owner.dma_read(self.notifier, self.mm_id, src, ref.pfn, ref.stamp))

    # -- invalidation -----------------------------------------------------------------------

    async def _invalidate(self, start: int, end: int) -> None:
        """xpmem_invalidate_PTEs_range() -> xpmem_clear_PTEs_range(): every attachment
        overlapping [start, end)."""
        hit = False
        for att in list(self.attachments.values()):
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
        invalidate mutex. The ptes are removed only after the unpin completes, and the zap
        completes (its TLB flush) only once the attacher's accesses already issued through
        them are done (``InflightAccesses``): an invalidation does not return, and so the source
        does not free the page, while a read through the old pte is still on its way."""
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
        if await att.inflight.fence(min(i for i, _ in ptes), max(i for i, _ in ptes)):
            self.stats.fenced_zaps += 1

    async def _teardown(self) -> None:
        """xpmem_teardown(): the source mm is going away (->release). Every attachment is
        detached; the source side's records die with the source mm."""
        self.released = True
        for att in list(self.attachments.values()):
            await self._detach_att(att)

    # -- inspection -------------------------------------------------------------------------

    def live_attachments(self) -> list[XpmemAttachment]:
        """Every live attachment made through this driver."""
        return [att for att in self.attachments.values() if not att.destroyed]

    def pinned_pfns(self) -> list[int]:
        """The frames pinned on behalf of the attachments (one entry per attacher pte)."""
        return [p.pfn for att in self.attachments.values() for p in att.ptes.values()]
