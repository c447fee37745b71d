"""The gRPC face of a partition, RPC by RPC and status code by status code (grpc.aio on
127.0.0.1 port 0, no Ray).

- Every RPC of ``mmusim.v2.OwnerService`` and ``mmusim.v2.SecondaryService`` answers a valid request sent
  with the raw stubs (on the transport under test: unary calls, or ``Exchange`` streams), against real state: an mm with mapped pages on p0, and on p1 a GRU, a
  KVM-style shadow MMU and an XPMEM driver registered on p0's mms.
- Every status code of the contract is produced by a realistic request, and comes back through
  ``GrpcInterconnect.call`` as the model error it was (``nodes/errors.py``); the whole table
  round-trips (a secondary refusing a callout with each model error).
- The standard health service answers SERVING; every call carries a deadline.
- Regression tests for the bugs the hostile requests found in ``nodes/remote.py`` and
  ``nodes/secondary/xpmem.py``.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.live import LivePartition
from nodes import errors, vmops
from nodes.errors import (
    BadAddress,
    InvalidArgument,
    NotFound,
    OutOfMemory,
    PermissionDenied,
    Released,
    Unreachable,
)
from nodes.mm import PAGE_SIZE, PTE_PRESENT, PTE_WRITE, TASK_SIZE
from nodes.notifier import OPS, MmuNotifier, has_op
from nodes.rpc import codec
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.server import DST_KEY, OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME
from nodes.rpc.status import ERROR_KEY, code_of
from nodes.secondary.gru import GruMmu
from nodes.secondary.kvm import KvmMmu
from nodes.secondary.xpmem import XPMEM_RDONLY, XPMEM_RDWR, XpmemCred
from rawstub import raw_stubs

C = grpc.StatusCode
P = PAGE_SIZE
BASE = 0x1000_0000
SOURCE = XpmemCred(tgid=50, uid=1000, gid=1000)  # the XPMEM source process (mm X)
ALICE = XpmemCred(tgid=60, uid=1000, gid=1000)  # an attacher in the owner's uid
BOB = XpmemCred(tgid=70, uid=2000, gid=2000)  # an attacher in neither its uid nor gid
SEG_MODE = 0o640
INTERVAL_RPCS = {"IntervalNotifierInsert", "IntervalNotifierRemove", "IntervalReadBegin", "IntervalInvalidate",
                 "HmmRangeFault"}


def cred(c: XpmemCred) -> Any:
    return pb.XpmemCred(tgid=c.tgid, uid=c.uid, gid=c.gid, groups=sorted(c.groups))


def nid_of(p: LivePartition, mn: MmuNotifier) -> str:
    """The id a secondary's notifier has on its partition (what callouts name it by)."""
    return next(k for k, v in p.secondary_service.notifiers.items() if v is mn)


@dataclass
class Rig:
    p0: LivePartition
    p1: LivePartition
    mm: Any  # on p0, 16 pages mapped and populated; the GRU on p1 maps it
    gru: GruMmu
    kvm_mm: Any
    kvm: KvmMmu
    x_mm: Any
    xp: Any  # XpmemDriver on p1 for x_mm; one segment, permit and attachment
    segid: int
    apid: int
    att: Any
    owner: Any  # raw OwnerService stub to p0 (rawstub.py)
    secondary: Any  # raw SecondaryService stub to p1
    channels: list[grpc.aio.Channel]
    stubs: dict[str, tuple[Any, Any]]  # partition -> its raw (owner, secondary) stubs
    streams: list[Any]  # the StreamStubs to close

    @property
    def nid(self) -> dict[str, str]:
        return {"gru": nid_of(self.p1, self.gru), "kvm": nid_of(self.p1, self.kvm), "xp": nid_of(self.p1, self.xp.notifier)}

    def target(self, kind: str, mm: Any = None) -> Any:
        mm = mm or {"gru": self.mm, "kvm": self.kvm_mm, "xp": self.x_mm}[kind]
        return pb.CalloutTarget(notifier_id=self.nid[kind], mm_id=mm.id, mm_name=mm.name)

    async def close(self) -> None:
        for streams in self.streams:
            await streams.close()
        for ch in self.channels:
            await ch.close()


async def mapped(p: LivePartition, npages: int = 16) -> Any:
    a = p.partition
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, npages * P)
    await vmops.populate(a, mm, BASE, npages * P)
    return mm


async def rig(p0: LivePartition, p1: LivePartition) -> Rig:
    mm, kvm_mm, x_mm = await mapped(p0), await mapped(p0, 8), await mapped(p0)
    gru = await p1.gru("p0", mm.id)
    for k in range(4):
        await gru.access(BASE + k * P)
    kvm = KvmMmu(p1.runtime, p1.owner_port("p0"), kvm_mm.id, "kvm@p1")
    await kvm.register()
    await kvm.access(BASE)
    await kvm.access(BASE + P)
    xp = await p1.xpmem("p0", x_mm.id, cred=SOURCE)
    segid = await xp.make(BASE, 16 * P, SEG_MODE)
    apid = await xp.get(segid, XPMEM_RDWR, ALICE)
    att = await xp.attach(apid, 0, 8 * P, ALICE)
    for k in range(2):
        await xp.access(att, att.vaddr + k * P)
    await p1.flush_reports()
    c0, c1 = grpc.aio.insecure_channel(p0.address), grpc.aio.insecure_channel(p1.address)
    (o0, s0, st0), (o1, s1, st1) = (raw_stubs(c, p0.interconnect.transport) for c in (c0, c1))
    return Rig(p0, p1, mm, gru, kvm_mm, kvm, x_mm, xp, segid, apid, att, o0, s1, [c0, c1],
               {"p0": (o0, s0), "p1": (o1, s1)}, [x for x in (st0, st1) if x is not None])


async def status(call: Any) -> tuple[C, str | None, str]:
    """(code, model error class name, details) of a raw call that is expected to fail."""
    try:
        await call
    except grpc.aio.AioRpcError as e:
        name = dict(e.trailing_metadata() or ()).get(ERROR_KEY)
        return e.code(), name if isinstance(name, str) else None, e.details() or ""
    raise AssertionError("the call succeeded")


async def refused(r: Rig, dst: str, service: str, method: str, *args: Any, cls: type[Exception], code: C,
                  match: str) -> None:
    """``service.method(*args)`` sent to ``dst`` is refused twice alike: raw, with status
    ``code`` and ``cls``'s name in the trailing metadata; through ``GrpcInterconnect.call``
    (from the other partition), as exactly ``cls`` with a message matching ``match``."""
    if service == "owner":
        m = codec.OWNER[method]
        request = m.encode(*args)
    elif method == "callout":
        m, request = codec.encode_callout(*args)
    else:
        m = codec.SECONDARY_METHODS[method]
        request = m.encode(*args)
    stub = r.stubs[dst][0 if service == "owner" else 1]
    code_, name, details = await status(getattr(stub, m.rpc)(request, timeout=5.0))
    assert (code_, name) == (code, cls.__name__), details
    src = r.p1 if dst == "p0" else r.p0
    with pytest.raises(cls, match=match) as info:
        await src.interconnect.call(src.name, dst, service, method, *args)
    assert type(info.value) is cls


def test_every_rpc_answers_a_valid_request(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        a, called = p0.partition, set()
        try:
            async def ok(stub: Any, rpc: str, request: Any) -> Any:
                called.add(rpc)
                return await getattr(stub, rpc)(request, timeout=5.0, metadata=((DST_KEY, "p0" if stub is r.owner else "p1"),))

            o, s = r.owner, r.secondary
            # -- Owner: faults, pins, reads
            reply = await ok(o, "GetUserPages", pb.GetUserPagesRequest(host="p1", mm_id=r.mm.id, address=BASE + 5, npages=2))
            assert [(pg.address, pg.pfn, pg.writable) for pg in reply.pages] == [
                (BASE + k * P, r.mm.pte(BASE + k * P)[0], True) for k in range(2)]
            assert (reply.pages[0].stamp.mm, reply.pages[0].stamp.vpn) == (r.mm.id, BASE >> 12)
            pinned = await ok(o, "GetUserPages", pb.GetUserPagesRequest(
                host="p1", mm_id=r.mm.id, address=BASE, npages=3, pin=True, request_id=7))
            pfns = [pg.pfn for pg in pinned.pages]
            assert [int(a.frames.pincount[pfn]) for pfn in pfns] == [1, 1, 1]
            assert (await ok(o, "AbortPins", pb.AbortPinsRequest(host="p1", request_id=7))).unpinned == 3
            pinned = await ok(o, "GetUserPages", pb.GetUserPagesRequest(
                host="p1", mm_id=r.mm.id, address=BASE, npages=3, pin=True, request_id=8))
            await ok(o, "PutUserPages", pb.PutUserPagesRequest(host="p1", mm_id=r.mm.id, pfns=[pg.pfn for pg in pinned.pages]))
            assert [int(a.frames.pincount[pfn]) for pfn in pfns] == [0, 0, 0]
            e = r.gru.translation(BASE)
            read = await ok(o, "DmaRead", pb.DmaReadRequest(
                host="p1", notifier_id=r.nid["gru"], mm_id=r.mm.id, address=BASE, pfn=e.pfn,
                expected=pb.Stamp(mm=e.stamp[0], vpn=e.stamp[1], generation=e.stamp[2])))
            assert (read.stamp.mm, read.stamp.vpn, read.stamp.generation) == e.stamp
            # -- Owner: a second GRU on p1, registered, reported and unregistered by hand
            gru2 = GruMmu(p1.runtime, p1.owner_port("p0"), r.mm.id, "gru2")
            nid2 = p1.secondary_service.add(gru2)
            await ok(o, "RegisterNotifier", pb.RegisterNotifierRequest(
                host="p1", notifier_id=nid2, name="gru2", ops=[op for op in OPS if has_op(gru2, op)], mm_id=r.mm.id))
            assert ("p1", nid2) in p0.owner_service.notifiers
            pfn = r.mm.pte(BASE + 9 * P)[0]
            before = int(a.oracle.smap[pfn])
            await ok(o, "ReportTranslations", pb.ReportTranslationsRequest(
                host="p1", notifier_id=nid2, mm_id=r.mm.id, address=BASE + 9 * P, pfns=[pfn], established=True))
            assert int(a.oracle.smap[pfn]) == before + 1
            await ok(o, "ReportTranslations", pb.ReportTranslationsRequest(
                host="p1", notifier_id=nid2, mm_id=r.mm.id, pfns=[pfn], established=False))
            assert int(a.oracle.smap[pfn]) == before
            t = await ok(o, "UnregisterNotifier", pb.UnregisterNotifierRequest(host="p1", notifier_id=nid2, mm_id=r.mm.id))
            assert t.timing.total_us >= t.timing.release_us >= 0 and t.timing.srcu_wait_us >= 0
            assert gru2.ms_released and ("p1", nid2) not in p0.owner_service.notifiers  # ->release crossed to p1
            # -- Owner: a third GRU, dropped with mmu_notifier_put: no ->release callout, no wait
            gru3 = GruMmu(p1.runtime, p1.owner_port("p0"), r.mm.id, "gru3")
            nid3 = p1.secondary_service.add(gru3)
            await ok(o, "RegisterNotifier", pb.RegisterNotifierRequest(
                host="p1", notifier_id=nid3, name="gru3", ops=[op for op in OPS if has_op(gru3, op)], mm_id=r.mm.id))
            t = await ok(o, "PutNotifier", pb.PutNotifierRequest(host="p1", notifier_id=nid3, mm_id=r.mm.id))
            assert (t.timing.release_us, t.timing.srcu_wait_us) == (0.0, 0.0) and not gru3.ms_released
            assert ("p1", nid3) not in p0.owner_service.notifiers
            # -- Owner: XPMEM's source side
            seg = (await ok(o, "XpmemMake", pb.XpmemMakeRequest(
                mm_id=r.x_mm.id, vaddr=BASE, size=8 * P, permit_mode=0o644, cred=cred(SOURCE)))).segid
            assert seg in a.xpmem.segments_of(r.x_mm.id)
            apid = (await ok(o, "XpmemGet", pb.XpmemGetRequest(segid=seg, flags=XPMEM_RDONLY, cred=cred(BOB)))).apid
            grant = await ok(o, "XpmemAttach", pb.XpmemAttachRequest(
                host="p1", notifier_id=r.nid["xp"], apid=apid, offset=2 * P, size=4 * P, cred=cred(BOB)))
            assert (grant.src_start, grant.size, grant.mode) == (BASE + 2 * P, 4 * P, XPMEM_RDONLY)
            await ok(o, "XpmemDetach", pb.XpmemDetachRequest(host="p1", attachment_id=grant.attachment_id, cred=cred(BOB)))
            assert grant.attachment_id not in a.xpmem.attachments
            await ok(o, "XpmemRelease", pb.XpmemReleaseRequest(apid=apid, cred=cred(BOB)))
            assert apid not in a.xpmem.aps
            await ok(o, "XpmemRemove", pb.XpmemRemoveRequest(segid=seg, cred=cred(SOURCE)))
            assert seg not in a.xpmem.segments_of(r.x_mm.id)
            # -- Secondary: each callout, to the secondary that has the op
            await ok(s, "InvalidateRangeStart", pb.InvalidateRangeStartRequest(
                target=r.target("gru"), start=BASE, end=BASE + P))
            assert r.gru.ms_range_active == 1 and r.gru.translation(BASE) is None
            await ok(s, "InvalidateRangeEnd", pb.InvalidateRangeEndRequest(
                target=r.target("gru"), start=BASE, end=BASE + P))
            assert r.gru.ms_range_active == 0
            await ok(s, "InvalidatePage", pb.InvalidatePageRequest(target=r.target("gru"), address=BASE + P))
            assert r.gru.translation(BASE + P) is None and r.gru.translation(BASE + 2 * P) is not None
            assert (await ok(s, "TestYoung", pb.TestYoungRequest(target=r.target("kvm"), address=BASE))).young == 1
            cleared = await ok(s, "ClearFlushYoung", pb.ClearFlushYoungRequest(target=r.target("kvm"), address=BASE))
            assert cleared.young == 1
            assert (await ok(s, "TestYoung", pb.TestYoungRequest(target=r.target("kvm"), address=BASE))).young == 0
            await ok(s, "ChangePte", pb.ChangePteRequest(
                target=r.target("kvm"), address=BASE + P, pfn=r.kvm_mm.pte(BASE + P)[0], flags=PTE_PRESENT | PTE_WRITE))
            assert r.kvm.spte(BASE + P) is None and r.kvm.stats.change_pte_drops == 1  # a writable pte drops it
            pins = int(a.frames.pincount.sum())
            await ok(s, "XpmemDetachAttachments", pb.XpmemDetachAttachmentsRequest(
                target=r.target("xp"), attachment_ids=[r.att.id]))
            assert r.att.destroyed and int(a.frames.pincount.sum()) == pins - 2
            await ok(s, "Release", pb.ReleaseRequest(target=r.target("gru")))
            assert r.gru.ms_released and not r.gru.tlb
            # -- Owner: Exit last (it releases what is registered on the mm)
            t = await ok(o, "Exit", pb.ExitRequest(mm_id=r.kvm_mm.id))
            assert r.kvm_mm.exited and r.kvm.released and t.timing.total_us >= t.timing.release_us >= 0
            await p1.flush_reports()
            assert a.check_invariants() == []
            rpcs = {m.name for svc in (OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME)
                    for m in pb.DESCRIPTOR.services_by_name[svc.split(".")[-1]].methods}
            # the interval notifiers' need a modern core: test_rpc_interval.py sends them
            assert called == rpcs - INTERVAL_RPCS, f"no valid request sent for {sorted(rpcs - INTERVAL_RPCS - called)}"
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_health_service_reports_both_services_serving(live):
    async def body(p0, p1):
        for p in (p0, p1):
            async with grpc.aio.insecure_channel(p.address) as ch:
                stub = health_pb2_grpc.HealthStub(ch)
                for service in ("", OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME):
                    reply = await stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5.0)
                    assert reply.status == health_pb2.HealthCheckResponse.SERVING, (p.name, service)
                code, _, _ = await status(stub.Check(health_pb2.HealthCheckRequest(service="mmusim.v2.Nope"), timeout=5.0))
                assert code == C.NOT_FOUND

    live(body, "p0", "p1")


def test_invalid_argument_for_an_address_outside_any_vma_or_a_malformed_request(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        mm, bad = r.mm.id, dict(code=C.INVALID_ARGUMENT)
        try:
            outside = BASE + 64 * P
            await refused(r, "p0", "owner", "get_user_pages", "p1", mm, outside, 1, False, False, cls=BadAddress,
                          match=f"address {outside:#x} is outside every VMA", **bad)
            await refused(r, "p0", "owner", "get_user_pages", "p1", mm, BASE, -1, False, False, cls=InvalidArgument,
                          match="npages must be a positive integer, got -1", **bad)
            await refused(r, "p0", "owner", "get_user_pages", "p1", mm, TASK_SIZE - P, 2, False, False,
                          cls=InvalidArgument, match="is outside user space", **bad)
            await refused(r, "p0", "owner", "get_user_pages", "p1", mm, 2**63 - P, 2**40, False, True,
                          cls=InvalidArgument, match="is outside user space", **bad)  # would overflow int64
            e = r.gru.translation(BASE)
            await refused(r, "p0", "owner", "dma_read", "p1", r.nid["gru"], mm, BASE, 1 << 40, e.stamp,
                          cls=InvalidArgument, match=f"{1 << 40} is not a frame of partition p0", **bad)
            await refused(r, "p0", "owner", "dma_read", "p1", r.nid["gru"], r.kvm_mm.id, BASE, e.pfn, e.stamp,
                          cls=InvalidArgument, match=f"registered on p0/mm{mm}, not on p0/mm{r.kvm_mm.id}", **bad)
            await refused(r, "p0", "owner", "report_translations", "p1", r.nid["gru"], mm, BASE + 1, [e.pfn], True,
                          cls=InvalidArgument, match=f"address {BASE + 1:#x} is not page aligned", **bad)
            await refused(r, "p0", "owner", "register", "p1", "x#1", "x", ["invalidate_range"], mm,
                          cls=InvalidArgument, match="unknown notifier ops", **bad)
            await refused(r, "p0", "owner", "xpmem_make", r.x_mm.id, BASE + 1, P, 0o600, SOURCE,
                          cls=InvalidArgument, match="vaddr 0x10000001 is not a page-aligned address", **bad)
            await refused(r, "p0", "owner", "xpmem_get", r.segid, 3, ALICE,
                          cls=InvalidArgument, match="flags 3 is not XPMEM_RDONLY", **bad)
            await refused(r, "p1", "secondary", "callout", r.nid["gru"], "invalidate_range_start", mm, "m",
                          (BASE + P, BASE), cls=InvalidArgument, match=r"empty range \[0x10001000, 0x10000000\)", **bad)
            await refused(r, "p1", "secondary", "callout", r.nid["kvm"], "change_pte", r.kvm_mm.id, "m",
                          (BASE, (-1, PTE_PRESENT)), cls=InvalidArgument, match="frame -1, not a frame number", **bad)
            assert r.gru.ms_range_active == 0 and r.kvm.mmu_notifier_seq == 0  # refused before any change
            await p1.flush_reports()
            assert p0.partition.check_invariants() == []
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_not_found_for_an_unknown_mm_notifier_segment_permit_or_partition(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        mm, nf = r.mm.id, dict(cls=NotFound, code=C.NOT_FOUND)
        try:
            await refused(r, "p0", "owner", "get_user_pages", "p1", 999, BASE, 1, False, False,
                          match="no live mm 999 on partition p0", **nf)
            await refused(r, "p0", "owner", "exit", 0, match="no live mm 0", **nf)
            await refused(r, "p0", "owner", "unregister", "p1", "gru#99", mm,
                          match="no notifier 'gru#99' of partition p1 on p0", **nf)
            await refused(r, "p0", "owner", "put_user_pages", "p1", mm, [4000],
                          match="partition p1 holds no pin on frame 4000", **nf)
            await refused(r, "p0", "owner", "xpmem_get", 12345, XPMEM_RDONLY, ALICE,
                          match="no segment with segid 0x3039", **nf)
            await refused(r, "p0", "owner", "xpmem_attach", "p1", r.nid["xp"], 77, 0, P, ALICE,
                          match="no access permit with apid 0x4d", **nf)
            await refused(r, "p1", "secondary", "callout", "nope#1", "invalidate_page", mm, "m", (BASE,),
                          match="no notifier 'nope#1' on partition p1", **nf)
            await refused(r, "p1", "secondary", "callout", r.nid["gru"], "change_pte", mm, "m", (BASE, (1, 1)),
                          match="has no op 'change_pte'", **nf)
            await refused(r, "p1", "secondary", "callout", r.nid["gru"], "release", r.kvm_mm.id, "m", (),
                          match=f"release is about mm {r.kvm_mm.id}, but this GRU maps mm {mm}", **nf)
            await refused(r, "p1", "secondary", "xpmem_detach", r.nid["gru"], [1],
                          match="is not an XPMEM driver's", **nf)
            assert not r.gru.ms_released
            # a request for a partition that reaches another one
            p1.directory["p7"] = p0.address
            with pytest.raises(NotFound, match="this is partition p0, not p7"):
                await p1.interconnect.call("p1", "p7", "owner", "exit", mm)
            code, name, _ = await status(r.owner.Exit(pb.ExitRequest(mm_id=mm), metadata=((DST_KEY, "p1"),), timeout=5.0))
            assert (code, name) == (C.NOT_FOUND, "NotFound") and not r.mm.exited
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_permission_denied_for_xpmem_eacces(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        denied = dict(cls=PermissionDenied, code=C.PERMISSION_DENIED)
        try:
            await refused(r, "p0", "owner", "xpmem_get", r.segid, XPMEM_RDONLY, BOB,
                          match="uid 2000 gid 2000 may not read-attach", **denied)
            await refused(r, "p0", "owner", "xpmem_get", r.segid, XPMEM_RDWR, XpmemCred(71, 3000, 1000),
                          match="may not read-write-attach", **denied)  # the group may read only
            await refused(r, "p0", "owner", "xpmem_remove", r.segid, ALICE,
                          match="belongs to tgid 50, not to caller tgid 60", **denied)
            await refused(r, "p0", "owner", "xpmem_attach", "p1", r.nid["xp"], r.apid, 0, P, BOB,
                          match="belongs to tgid 60, not to caller tgid 70", **denied)
            assert list(p0.partition.xpmem.segments_of(r.x_mm.id)) == [r.segid]
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_failed_precondition_for_use_after_release(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        gone = dict(cls=Released, code=C.FAILED_PRECONDITION)
        try:
            # XPMEM on a source mm that has exited
            await p1.interconnect.call("p1", "p0", "owner", "exit", r.x_mm.id)
            assert r.xp.released
            await refused(r, "p0", "owner", "xpmem_get", r.segid, XPMEM_RDONLY, ALICE,
                          match=f"source mm {r.x_mm.id} of p0 has exited", **gone)
            # an mm whose exit has begun (its GRU's ->release is held on p1): mm_users is 0
            started, go = asyncio.Event(), asyncio.Event()
            release = r.gru.release

            async def held_release(mm: Any) -> None:
                started.set()
                await go.wait()
                await release(mm)

            r.gru.release = held_release  # type: ignore[method-assign]
            first = asyncio.ensure_future(p1.interconnect.call("p1", "p0", "owner", "exit", r.mm.id))
            await started.wait()
            await refused(r, "p0", "owner", "exit", r.mm.id, match=f"p0/mm{r.mm.id} is exiting or gone", **gone)
            await refused(r, "p0", "owner", "get_user_pages", "p1", r.mm.id, BASE, 1, False, False,
                          match="is exiting or gone", **gone)
            go.set()
            await first
            assert r.mm.exited and r.gru.ms_released
            await p1.flush_reports()
            assert p0.partition.check_invariants() == []
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_resource_exhausted_when_no_frame_is_free(live):
    async def body(p0, p1):
        a = p0.partition
        mm = a.create_mm()
        npages = a.frames.nframes + 8
        await vmops.mmap(a, mm, BASE, npages * P)
        with pytest.raises(OutOfMemory, match=f"out of frames: asked for 1, 0 of {a.frames.nframes} are free"):
            await p1.interconnect.call("p1", "p0", "owner", "get_user_pages", "p1", mm.id, BASE, npages, False, True)
        async with grpc.aio.insecure_channel(p0.address) as ch:
            code, name, _ = await status(pb_grpc.OwnerServiceStub(ch).GetUserPages(
                pb.GetUserPagesRequest(host="p1", mm_id=mm.id, address=BASE, npages=npages), timeout=5.0))
        assert (code, name) == (C.RESOURCE_EXHAUSTED, "OutOfMemory")
        assert int(a.frames.pincount.sum()) == 0  # all or nothing: the pins taken were dropped
        assert a.check_invariants() == []

    live(body, "p0", "p1")


class Refusing(MmuNotifier):
    """A secondary whose invalidate_page refuses with whatever error it is given: how a callout
    answered with each model error looks to the owner."""

    def __init__(self) -> None:
        super().__init__("refusing")
        self.error: BaseException | None = None

    def invalidate_page(self, mm: Any, address: int) -> None:
        assert self.error is not None
        raise self.error


ERROR_CLASSES = sorted(
    (cls for cls in vars(errors).values()
     if isinstance(cls, type) and issubclass(cls, (errors.ModelError, errors.KernelBug))
     and cls not in (errors.ModelError, errors.KernelBug)),
    key=lambda cls: cls.__name__,
)


def test_every_model_error_round_trips_with_its_status_code_including_aborted(live):
    """No request the model serves today yields EINTR or EAGAIN (nor the kernel bugs), so the
    whole table is checked with a secondary that refuses a callout with each error: its status
    on the wire, and the same class and message out of ``GrpcInterconnect.call``."""
    expected = {errors.Interrupted: C.ABORTED, errors.Busy: C.ABORTED, errors.OutOfMemory: C.RESOURCE_EXHAUSTED,
                errors.Released: C.FAILED_PRECONDITION, errors.PermissionDenied: C.PERMISSION_DENIED,
                errors.NotFound: C.NOT_FOUND, errors.Unreachable: C.UNAVAILABLE,
                errors.BadAddress: C.INVALID_ARGUMENT, errors.InvalidArgument: C.INVALID_ARGUMENT}

    async def body(p0, p1):
        refusing = Refusing()
        nid = p1.secondary_service.add(refusing)
        args = (nid, "invalidate_page", 1, "p0/mm1", (BASE,))
        _, request = codec.encode_callout(*args)
        async with grpc.aio.insecure_channel(p1.address) as ch:
            stub = pb_grpc.SecondaryServiceStub(ch)
            for cls in ERROR_CLASSES + [errors.InternalError, KeyError]:
                refusing.error = cls(f"refused with {cls.__name__} at {BASE:#x}")
                code, name, details = await status(stub.InvalidatePage(request, timeout=5.0))
                if cls in (errors.InternalError, KeyError):  # not a model error: a bug in mmusim
                    assert (code, name) == (C.INTERNAL, None) and cls.__name__ in details
                    with pytest.raises(errors.InternalError, match=f"rpc failed with INTERNAL: .*{cls.__name__}"):
                        await p0.interconnect.call("p0", "p1", "secondary", "callout", *args)
                    continue
                assert (code, name) == (code_of(refusing.error), cls.__name__)
                assert code == expected.get(cls, C.INTERNAL if issubclass(cls, errors.KernelBug) else code)
                with pytest.raises(cls, match=f"refused with {cls.__name__} at {BASE:#x}") as info:
                    await p0.interconnect.call("p0", "p1", "secondary", "callout", *args)
                assert type(info.value) is cls
        assert set(expected) <= set(ERROR_CLASSES)

    live(body, "p0", "p1")


def test_unavailable_for_an_unreachable_or_fenced_partition(live):
    async def body(p0, p1):
        a = p0.partition
        mm = await mapped(p0)
        p2 = LivePartition("p2", identity=None, nframes=64, cpus=2)
        p1.directory["p2"] = p0.directory["p2"] = await p2.start()
        p2.connect(p0.directory)
        gru = await p2.gru("p0", mm.id)
        await gru.access(BASE)
        await p2.flush_reports()
        await p2.stop()  # p2 is gone
        with pytest.raises(Unreachable, match="Exit from p1 to p2: UNAVAILABLE"):
            await p1.interconnect.call("p1", "p2", "owner", "exit", 1)
        with pytest.raises(Unreachable, match="no address for partition 'p9'"):
            await p1.interconnect.call("p1", "p9", "owner", "exit", 1)
        await vmops.munmap(a, mm, BASE, P)  # the callout to p2 finds it gone: p0 fences it
        assert [f.host for f in p0.owner_service.faults] == ["p2"]
        async with grpc.aio.insecure_channel(p0.address) as ch:
            code, name, details = await status(pb_grpc.OwnerServiceStub(ch).GetUserPages(
                pb.GetUserPagesRequest(host="p2", mm_id=mm.id, address=BASE + P, npages=1), timeout=5.0))
        assert (code, name) == (C.UNAVAILABLE, "Unreachable") and "fenced by p0" in details
        with pytest.raises(Unreachable, match="partition p2 was fenced by p0"):
            await p1.interconnect.call("p1", "p0", "owner", "get_user_pages", "p2", mm.id, BASE + P, 1, False, True)
        assert a.check_invariants() == []

    live(body, "p0", "p1")


# every method GrpcInterconnect can send, with arguments that encode (what they mean does not
# matter: the server never gets to them before the deadline)
SAMPLE_ARGS: dict[tuple[str, str], tuple[Any, ...]] = {
    **{("owner", m): args for m, args in {
        "register": ("p1", "n#1", "n", ["release"], 1),
        "unregister": ("p1", "n#1", 1),
        "put": ("p1", "n#1", 1),
        "get_user_pages": ("p1", 1, BASE, 1, False, True, 3),
        "abort_pins": ("p1", 3),
        "put_user_pages": ("p1", 1, [5]),
        "dma_read": ("p1", "n#1", 1, BASE, 5, (1, 2, 3)),
        "report_translations": ("p1", "n#1", 1, BASE, [5], True),
        "exit": (1,),
        "xpmem_make": (1, BASE, P, 0o600, SOURCE),
        "xpmem_get": (1 << 32 | 1, XPMEM_RDONLY, ALICE),
        "xpmem_attach": ("p1", "n#1", 7, 0, P, ALICE),
        "xpmem_detach": ("p1", 1, None),
        "interval_insert": ("p1", "n#1", "n", 1, BASE, P),
        "interval_remove": ("p1", "n#1"),
        "interval_read_begin": ("p1", "n#1"),
        "hmm_range_fault": ("p1", "n#1", 1, BASE, 1, False, 1),
        "xpmem_release": (7, ALICE),
        "xpmem_remove": (1 << 32 | 1, SOURCE),
    }.items()},
    **{("callout", op): args for op, args in {
        "invalidate_range_start": (BASE, BASE + P),
        "invalidate_range_end": (BASE, BASE + P),
        "invalidate_page": (BASE,),
        "release": (),
        "change_pte": (BASE, (5, 1)),
        "clear_flush_young": (BASE,),
        "test_young": (BASE,),
    }.items()},
    ("secondary", "xpmem_detach"): ("n#1", [1]),
    ("secondary", "interval_invalidate"): ("n#1", 1, "m", BASE, BASE + P, 0, 1, 3),
}


def test_every_call_carries_a_deadline(transport):
    """A partition whose server answers only after 60 s (injected latency): every request
    GrpcInterconnect can send gives up at the caller's deadline with ``Unreachable``."""
    assert {m for s, m in SAMPLE_ARGS if s == "owner"} == set(codec.OWNER)
    assert {m for s, m in SAMPLE_ARGS if s == "callout"} == set(codec.SECONDARY)
    assert {m for s, m in SAMPLE_ARGS if s == "secondary"} == set(codec.SECONDARY_METHODS)

    async def main() -> None:
        slow = LivePartition("p0", identity=None, nframes=64, cpus=2, latency_us=lambda src, dst: 60e6,
                             transport=transport)
        caller = LivePartition("p1", identity=None, nframes=64, cpus=2, deadline_us=200_000.0, transport=transport)
        try:
            directory = {"p0": await slow.start(), "p1": await caller.start()}
            caller.connect(directory)

            async def send(kind: str, method: str, args: tuple[Any, ...]) -> BaseException | None:
                try:
                    if kind == "owner":
                        await caller.interconnect.call("p1", "p0", "owner", method, *args)
                    elif kind == "callout":
                        await caller.interconnect.call("p1", "p0", "secondary", "callout", "n#1", method, 1, "m", args)
                    else:
                        await caller.interconnect.call("p1", "p0", "secondary", method, *args)
                except Exception as e:  # noqa: BLE001 - checked below
                    return e
                return None

            # bounded by the caller's deadline; the outer bound only turns a hang into a failure
            results = await asyncio.wait_for(
                asyncio.gather(*(send(k, m, args) for (k, m), args in SAMPLE_ARGS.items())), timeout=30)
            for (kind, method), e in zip(SAMPLE_ARGS, results):
                assert isinstance(e, Unreachable) and "DEADLINE_EXCEEDED" in str(e), (kind, method, e)
        finally:
            await caller.stop()
            await slow.stop()

    asyncio.run(main())


# -- bugs the hostile requests found in the owner and XPMEM services, now fixed ------------------


def test_put_user_pages_refusing_one_frame_changes_no_pin_count(live):
    async def body(p0, p1):
        a = p0.partition
        mm = await mapped(p0)
        refs = await p1.interconnect.call("p1", "p0", "owner", "get_user_pages", "p1", mm.id, BASE, 1, False, True, 1)
        pfn = refs[0].pfn
        with pytest.raises(NotFound, match="holds no pin on frame 4000"):
            await p1.interconnect.call("p1", "p0", "owner", "put_user_pages", "p1", mm.id, [pfn, 4000])
        assert p0.owner_service.pins["p1"][pfn] == int(a.frames.pincount[pfn]) == 1
        await p1.interconnect.call("p1", "p0", "owner", "put_user_pages", "p1", mm.id, [pfn])  # still its to put

    live(body, "p0", "p1")


def test_a_repeated_unregister_while_one_is_in_flight_is_refused(live):
    async def body(p0, p1):
        a = p0.partition
        mm = await mapped(p0)
        gru = await p1.gru("p0", mm.id)
        count = mm.count
        request = pb.UnregisterNotifierRequest(host="p1", notifier_id=nid_of(p1, gru), mm_id=mm.id)
        async with grpc.aio.insecure_channel(p0.address) as ch:
            stub = pb_grpc.OwnerServiceStub(ch)

            async def unregister() -> C:
                try:
                    await stub.UnregisterNotifier(request, timeout=5.0)
                    return C.OK
                except grpc.aio.AioRpcError as e:
                    return e.code()

            codes = await asyncio.gather(unregister(), unregister())  # a retry racing the first try
        assert sorted(c.name for c in codes) == ["NOT_FOUND", "OK"]
        assert mm.count == count - 1 and a.oracle.violations == []

    live(body, "p0", "p1")


def test_munmap_and_exit_complete_when_a_registered_secondary_does_not_know_its_notifier(live):
    async def body(p0, p1):
        a = p0.partition
        mm = await mapped(p0)
        # registered for p1, which has no such notifier (a stale or hostile registration)
        await p1.interconnect.call("p1", "p0", "owner", "register", "p1", "ghost#9", "ghost",
                                   ["release", "invalidate_range_start", "invalidate_range_end"], mm.id)
        await vmops.munmap(a, mm, BASE, P)
        await p1.interconnect.call("p1", "p0", "owner", "exit", mm.id)
        assert mm.exited and a.check_invariants() == []

    live(body, "p0", "p1")


def test_xpmem_detach_naming_another_partitions_attachment_is_refused(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        try:
            with pytest.raises((NotFound, PermissionDenied)):
                await p0.interconnect.call("p0", "p0", "owner", "xpmem_detach", "p7", r.att.id, None)
            assert r.att.id in p0.partition.xpmem.attachments
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_xpmem_attach_through_a_notifier_that_is_not_xpmems_is_refused(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        try:
            try:  # ALICE's own permit, attached "through" p1's GRU
                await p1.interconnect.call("p1", "p0", "owner", "xpmem_attach", "p1", r.nid["gru"], r.apid, 0, P, ALICE)
            except InvalidArgument:
                pass
            await p0.partition.xpmem.remove(r.segid, SOURCE)  # must reach every attachment
            assert r.att.destroyed and p0.partition.xpmem.attachments == {}
        finally:
            await r.close()

    live(body, "p0", "p1")


def test_xpmem_callouts_refuse_another_mm_and_a_malformed_range(live):
    async def body(p0, p1):
        r = await rig(p0, p1)
        try:
            code, _, _ = await status(r.secondary.InvalidateRangeEnd(
                pb.InvalidateRangeEndRequest(target=r.target("xp"), start=BASE + P, end=BASE), timeout=5.0))
            assert code == C.INVALID_ARGUMENT
            code, _, _ = await status(r.secondary.InvalidateRangeEnd(
                pb.InvalidateRangeEndRequest(target=r.target("xp", r.mm), start=BASE, end=BASE + 8 * P), timeout=5.0))
            assert code == C.NOT_FOUND
            assert len(r.att.ptes) == 2  # nothing was unpinned
        finally:
            await r.close()

    live(body, "p0", "p1")
