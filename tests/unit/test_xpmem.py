"""XPMEM as a secondary MMU, nodes/secondary/xpmem.py (REFERENCE section 5, invariants 1, 6).

The API's argument and permission checks (each error names the bad value), pinning on fault,
teardown through invalidate_range_end / invalidate_page / release in the kernel's "unpin, then
zap" order, and a fault whose lookup races a munmap of the source. All on the virtual-time loop
with a real ``Partition`` reached only through an owner port.
"""

from __future__ import annotations

import errno

import pytest

from nodes import vmops
from nodes.errors import BadAddress, InvalidArgument, NotFound, PermissionDenied, Released
from nodes.mm import PAGE_SIZE
from nodes.notifier import OPS, has_op
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary.xpmem import XPMEM_RDONLY, XPMEM_RDWR, XpmemCred, XpmemDriver

P = PAGE_SIZE
BASE = 0x4000_0000
NPAGES = 32
OWNER = XpmemCred(tgid=100, uid=1000, gid=100)
PEER = XpmemCred(tgid=200, uid=2000, gid=200)  # another user, another group
GROUPMATE = XpmemCred(tgid=300, uid=3000, gid=300, groups=frozenset({100}))
SAME_USER = XpmemCred(tgid=400, uid=1000, gid=999)
ROOT = XpmemCred(tgid=1, uid=0, gid=0)


class RecordingOwner(LocalOwner):
    """``LocalOwner`` that logs unpins and drops in order, and can put a network round trip of
    ``one_way_us`` each way on get/put_user_pages."""

    def __init__(self, partition: Partition, one_way_us: float = 0.0):
        super().__init__(partition)
        self.one_way_us = one_way_us
        self.log: list[tuple[str, list[int]]] = []

    async def _wire(self) -> None:
        if self.one_way_us:
            await self.part.runtime.sleep(self.one_way_us)

    async def get_user_pages(self, mm_id, address, npages, *, write, pin):
        await self._wire()
        try:
            return await super().get_user_pages(mm_id, address, npages, write=write, pin=pin)
        finally:
            await self._wire()

    async def put_user_pages(self, mm_id, pfns):
        await self._wire()
        self.log.append(("unpin", [int(f) for f in pfns]))
        await super().put_user_pages(mm_id, pfns)
        await self._wire()

    def translations_dropped(self, mn, mm_id, pfns):
        self.log.append(("zap", [int(f) for f in pfns]))
        super().translations_dropped(mn, mm_id, pfns)


async def setup(rt: Runtime, *, one_way_us: float = 0.0):
    p = Partition(rt, nframes=4096)
    mm = p.create_mm()
    mm.add_vma(BASE, NPAGES * P)
    owner = RecordingOwner(p, one_way_us)
    drv = XpmemDriver(rt, owner, mm.id, "xpmem0", cred=OWNER)
    await drv.register()
    return p, mm, drv, owner


async def attached(rt: Runtime, *, npages: int = 8, mode: int = XPMEM_RDWR, **kw):
    p, mm, drv, owner = await setup(rt, **kw)
    segid = await drv.make(BASE, NPAGES * P, 0o600)
    apid = await drv.get(segid, mode, SAME_USER)
    att = await drv.attach(apid, 0, npages * P, SAME_USER)
    return p, mm, drv, owner, segid, apid, att


def test_xpmem_implements_only_range_end_invalidate_page_and_release(vrun):
    async def body(rt):
        _, _, drv, _ = await setup(rt)
        return {op for op in OPS if has_op(drv.notifier, op)}

    assert vrun(body) == {"invalidate_range_end", "invalidate_page", "release"}


@pytest.mark.parametrize(
    "vaddr, size, mode, message",
    [
        (BASE + 1, P, 0o600, "vaddr 0x40000001 is not a page-aligned"),
        (BASE, 0, 0o600, "size 0 is not positive"),
        (BASE, -P, 0o600, "size -4096 is not positive"),
        (BASE, P + 1, 0o600, r"size 4097 \(0x1001\) is not a multiple"),
        (BASE, P, 0o1000, "permit_mode 0o1000 has bits outside 0o777"),
        (BASE, P, -1, "permit_mode -0o1 has bits outside 0o777"),
    ],
)
def test_make_rejects_bad_arguments_naming_the_value(vrun, vaddr, size, mode, message):
    async def body(rt):
        p, mm, drv, _ = await setup(rt)
        with pytest.raises(InvalidArgument, match=message) as e:
            await drv.make(vaddr, size, mode)
        assert e.value.errno == errno.EINVAL
        assert p.xpmem.segments_of(mm.id) == {}

    vrun(body)


def test_get_checks_flags_segid_and_ipc_permissions(vrun):
    async def body(rt):
        _, _, drv, _ = await setup(rt)
        private = await drv.make(BASE, P, 0o600)
        group_ro = await drv.make(BASE + P, P, 0o640)
        world_ro = await drv.make(BASE + 2 * P, P, 0o644)
        with pytest.raises(InvalidArgument, match="flags 3 is not XPMEM_RDONLY") as e:
            await drv.get(private, XPMEM_RDONLY | XPMEM_RDWR, SAME_USER)
        assert e.value.errno == errno.EINVAL
        with pytest.raises(NotFound, match=f"segid {private + 99:#x}") as e:
            await drv.get(private + 99, XPMEM_RDONLY, SAME_USER)
        assert e.value.errno == errno.ENOENT
        denied = [
            (private, XPMEM_RDONLY, PEER),
            (private, XPMEM_RDONLY, GROUPMATE),
            (group_ro, XPMEM_RDWR, GROUPMATE),
            (group_ro, XPMEM_RDONLY, PEER),
            (world_ro, XPMEM_RDWR, PEER),
        ]
        for segid, flags, cred in denied:
            with pytest.raises(PermissionDenied, match=f"uid {cred.uid} .* segid {segid:#x}") as e:
                await drv.get(segid, flags, cred)
            assert e.value.errno == errno.EACCES
        allowed = [
            (private, XPMEM_RDWR, SAME_USER),  # the owner's bits apply to the same uid
            (group_ro, XPMEM_RDONLY, GROUPMATE),  # a supplementary group counts
            (world_ro, XPMEM_RDONLY, PEER),
            (private, XPMEM_RDWR, ROOT),  # CAP_IPC_OWNER
        ]
        apids = [await drv.get(segid, flags, cred) for segid, flags, cred in allowed]
        assert len(set(apids)) == len(apids)

    vrun(body)


def test_attach_checks_apid_owner_offset_and_size(vrun):
    async def body(rt):
        _, _, drv, _ = await setup(rt)
        segid = await drv.make(BASE, 4 * P, 0o644)
        apid = await drv.get(segid, XPMEM_RDONLY, PEER)
        with pytest.raises(NotFound, match=f"apid {apid + 1:#x}"):
            await drv.attach(apid + 1, 0, P, PEER)
        with pytest.raises(PermissionDenied, match=f"apid {apid:#x} belongs to tgid 200, not to caller tgid 400") as e:
            await drv.attach(apid, 0, P, SAME_USER)
        assert e.value.errno == errno.EACCES
        for offset, size, message in [
            (1, P, "offset 0x1 is not a page-aligned"),
            (-P, P, "offset -0x1000 is not a page-aligned"),
            (0, 0, "size 0x0 is not a positive multiple"),
            (0, P - 1, "size 0xfff is not a positive multiple"),
            (P, 4 * P, r"\[offset 0x1000, \+0x4000\) is outside segid"),
        ]:
            with pytest.raises(InvalidArgument, match=message):
                await drv.attach(apid, offset, size, PEER)
        att = await drv.attach(apid, P, 3 * P, PEER)
        assert (att.src_start, att.size) == (BASE + P, 3 * P)

    vrun(body)


def test_release_and_remove_are_owner_only_and_unknown_ids_are_enoent(vrun):
    async def body(rt):
        _, _, drv, _ = await setup(rt)
        segid = await drv.make(BASE, P, 0o644)
        apid = await drv.get(segid, XPMEM_RDONLY, PEER)
        with pytest.raises(PermissionDenied, match=f"xpmem_release: apid {apid:#x} belongs to tgid 200"):
            await drv.release(apid, SAME_USER)
        with pytest.raises(PermissionDenied, match=f"xpmem_remove: segid {segid:#x} belongs to tgid 100"):
            await drv.remove(segid, PEER)
        with pytest.raises(NotFound, match=f"apid {apid + 7:#x}"):
            await drv.release(apid + 7, PEER)
        with pytest.raises(NotFound, match=f"segid {segid + 7:#x}"):
            await drv.remove(segid + 7, OWNER)
        await drv.release(apid, PEER)
        with pytest.raises(NotFound):
            await drv.attach(apid, 0, P, PEER)
        await drv.remove(segid, OWNER)
        with pytest.raises(NotFound):
            await drv.get(segid, XPMEM_RDONLY, PEER)

    vrun(body)


def test_make_before_register_is_refused(vrun):
    async def body(rt):
        p = Partition(rt, nframes=16)
        mm = p.create_mm()
        drv = XpmemDriver(rt, LocalOwner(p), mm.id, "x", cred=OWNER)
        with pytest.raises(InvalidArgument, match="make before register"):
            await drv.make(BASE, P, 0o600)

    vrun(body)


def test_fault_pins_the_source_page_and_maps_it_once(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        frames = p.frames
        stamp = await drv.access(att, att.vaddr + 2 * P + 8)
        pfn, _ = mm.pte(BASE + 2 * P)
        assert stamp == frames.stamp(pfn)
        assert (frames.pincount[pfn], frames.refcount[pfn]) == (1, 2)  # the pin and the pte
        assert p.oracle.smap[pfn] == 1
        assert await drv.access(att, att.vaddr + 2 * P) == stamp  # mapped: no second pin
        assert frames.pincount[pfn] == 1
        assert (drv.stats.faults, drv.stats.pte_hits) == (1, 1)
        with pytest.raises(BadAddress, match="outside the attachment"):
            await drv.access(att, att.vaddr + att.size)
        assert p.oracle.ok

    vrun(body)


def test_write_through_a_read_only_permit_is_refused(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt, mode=XPMEM_RDONLY)
        await drv.access(att, att.vaddr)
        with pytest.raises(PermissionDenied, match=f"read-only apid {apid:#x}"):
            await drv.access(att, att.vaddr, write=True)

    vrun(body)


def test_munmap_of_the_source_unpins_then_zaps_in_range_end(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        for k in range(4):
            await drv.access(att, att.vaddr + k * P)
        pfns = sorted(mm.pte(BASE + k * P)[0] for k in range(4))
        nfree = p.frames.nfree
        owner.log.clear()
        await vmops.munmap(p, mm, BASE + 2 * P, 4 * P)  # pages 2..5: two of them mapped
        assert [(what, sorted(f)) for what, f in owner.log] == [("unpin", pfns[2:]), ("zap", pfns[2:])]
        assert sorted(att.ptes) == [0, 1]
        assert [int(p.frames.pincount[f]) for f in pfns] == [1, 1, 0, 0]
        assert p.frames.nfree == nfree + 2  # freed once unpinned, by munmap after range_end
        assert (drv.stats.unpins, drv.stats.zapped, drv.stats.invalidations) == (2, 2, 1)
        with pytest.raises(BadAddress):
            await drv.access(att, att.vaddr + 2 * P)  # the source page is gone
        assert p.oracle.violations == []

    vrun(body)


def test_pinned_page_survives_a_munmap_that_races_the_fault_until_unpinned(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt, one_way_us=10)
        pfn = await vmops.touch(p, mm, BASE, write=True)

        async def fault() -> None:
            with pytest.raises(BadAddress):
                await drv.access(att, att.vaddr)

        task = rt.spawn(fault(), name="fault")
        await rt.sleep(12)  # pinned at t=10; the reply is on the wire until t=20
        assert p.frames.pincount[pfn] == 1
        await vmops.munmap(p, mm, BASE, P)  # range_end finds nothing mapped yet
        # the primary pte and munmap's reference are gone; the pin alone keeps the frame
        assert mm.find_vma(BASE) is None
        assert not p.frames.is_free(pfn) and p.frames.refcount[pfn] == 1
        await task  # the fault saw the invalidation, unpinned and retried into EFAULT
        assert p.frames.is_free(pfn)
        assert att.ptes == {}
        assert drv.stats.retries == 1 and drv.stats.faults == 0
        assert [what for what, _ in owner.log] == ["unpin"]
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []

    vrun(body)


def test_invalidate_page_of_migration_unpins_so_the_page_can_move(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        await drv.access(att, att.vaddr)
        old, _ = mm.pte(BASE)
        assert await vmops.migrate_pages(p, mm, BASE, P) == 1
        assert att.ptes == {} and p.frames.is_free(old)
        stamp = await drv.access(att, att.vaddr)
        new, _ = mm.pte(BASE)
        assert new != old and stamp == p.frames.stamp(new) and p.frames.pincount[new] == 1
        assert p.oracle.violations == []

    vrun(body)


def test_detach_release_and_remove_unpin_everything(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        att2 = await drv.attach(apid, 0, 2 * P, SAME_USER)
        other = await drv.attach(await drv.get(segid, XPMEM_RDWR, ROOT), 4 * P, 2 * P, ROOT)
        for a in (att, att2, other):
            await drv.access(a, a.vaddr)
            await drv.access(a, a.vaddr + P)
        assert int(p.frames.pincount.sum()) == 6
        with pytest.raises(PermissionDenied):
            await drv.detach(att2, PEER)
        await drv.detach(att2, SAME_USER)
        await drv.detach(att2)  # twice: a no-op
        assert int(p.frames.pincount.sum()) == 4
        with pytest.raises(BadAddress, match="detached"):
            await drv.access(att2, att2.vaddr)
        await drv.release(apid, SAME_USER)  # detaches att
        assert int(p.frames.pincount.sum()) == 2 and att.destroyed
        await drv.remove(segid, OWNER)  # tears down ROOT's attachment
        assert int(p.frames.pincount.sum()) == 0 and other.destroyed
        assert p.xpmem.segments_of(mm.id) == {} and p.xpmem.aps == {} and p.xpmem.attachments == {}
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []

    vrun(body)


def test_release_at_exit_tears_down_before_pages_are_freed(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        for k in range(3):
            await drv.access(att, att.vaddr + k * P)
        await vmops.exit_mmap(p, mm)
        assert drv.released and att.destroyed and int(p.frames.pincount.sum()) == 0
        with pytest.raises(Released, match="after release"):
            await drv.access(att, att.vaddr)
        with pytest.raises(Released):
            await drv.make(BASE, P, 0o600)
        with pytest.raises(Released):
            await drv.get(segid, XPMEM_RDONLY, PEER)
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []

    vrun(body)


def test_unregister_runs_release_and_unpins(vrun):
    async def body(rt):
        p, mm, drv, owner, segid, apid, att = await attached(rt)
        await drv.access(att, att.vaddr)
        await drv.unregister()
        assert drv.released and int(p.frames.pincount.sum()) == 0
        assert p.oracle.violations == []

    vrun(body)
