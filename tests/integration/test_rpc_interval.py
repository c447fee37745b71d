"""Interval notifiers over gRPC (nodes/interval.py, nodes/remote.py): a device on p1 holds an
``mmu_interval_notifier`` on an mm of p0, whose core runs Linux 5.10's semantics. The insert,
read_begin and remove are OwnerService requests; each invalidation of an overlapping range is
a SecondaryService ``IntervalInvalidate`` carrying the range, its event and cur_seq. The other
integration tests run v3.10 partitions, which refuse these RPCs (test_rpc_hostile.py)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from doubles import IntervalMirror

from nodes import vmops
from nodes.errors import InvalidArgument
from nodes.mm import PAGE_SIZE
from nodes.notifier import MMU_NOTIFIER_RANGE_BLOCKABLE, MmuNotifierEvent
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.server import DST_KEY
from nodes.secondary.odp import OdpMr
from rawstub import raw_stubs

P = PAGE_SIZE
BASE = 0x10000000


async def _mapped(p: Any, npages: int = 8) -> Any:
    mm = p.partition.create_mm()
    await vmops.mmap(p.partition, mm, BASE, npages * P)
    await vmops.populate(p.partition, mm, BASE, npages * P)
    return mm


def test_a_device_on_p1_faults_and_is_invalidated_by_p0_over_grpc(live):
    async def body(p0: Any, p1: Any) -> None:
        mm = await _mapped(p0)
        dev = IntervalMirror(p1.owner_port("p0"), mm.id, "mirror@p1")
        await dev.insert(BASE, 4 * P)
        itree = mm.notifier_mm.itree
        assert (itree.invalidate_seq, dev.mni.invalidate_seq) == (2, 1)
        pfns = [await dev.fault(BASE + k * P) for k in range(4)]
        assert pfns == [mm.pte(BASE + k * P)[0] for k in range(4)]
        await p1.flush_reports()
        assert int(p0.partition.oracle.smap.sum()) == 4
        await vmops.munmap(p0.partition, mm, BASE, 2 * P)  # an IntervalInvalidate to p1
        assert sorted(dev.ptes) == [BASE + 2 * P, BASE + 3 * P]
        assert dev.calls == [(3, BASE, BASE + 2 * P, "UNMAP")] and itree.invalidate_seq == 4
        assert p0.owner_service.interval_notifiers[("p1", dev.owner._id(dev.mni))].invalidate_seq == 3  # mirrored
        await vmops.munmap(p0.partition, mm, BASE + 4 * P, 4 * P)  # outside its interval: no callout
        assert len(dev.calls) == 1
        await dev.remove()
        assert itree.tree == [] and p0.owner_service.interval_notifiers == {}
        await p1.flush_reports()
        assert p0.partition.check_invariants() == []

    live(body, "p0", "p1", semantics="v5.10")


def test_an_odp_mr_on_p1_faults_through_hmm_range_fault_and_is_invalidated_over_grpc(live):
    """An RDMA ODP MR (nodes/secondary/odp.py) on p1 over an mm of p0: its device page faults
    are IntervalReadBegin and HmmRangeFault requests, p0's munmap an IntervalInvalidate that
    zaps its MTT before the pages are freed, its dereg an IntervalNotifierRemove."""
    async def body(p0: Any, p1: Any) -> None:
        mm = await _mapped(p0)
        mr = OdpMr(p1.runtime, p1.owner_port("p0"), mm.id, "odp@p1", start=BASE, length=4 * P)
        await mr.register()
        stamps = [await mr.access(BASE + k * P) for k in range(4)]
        assert [s[:2] for s in stamps] == [(mm.id, (BASE >> 12) + k) for k in range(4)]
        await p1.flush_reports()
        assert int(p0.partition.oracle.smap.sum()) == 4 and int(p0.partition.frames.pincount.sum()) == 0
        await vmops.munmap(p0.partition, mm, BASE, 2 * P)
        assert sorted(mr.mtt) == [2, 3]
        await mr.unregister()
        await p1.flush_reports()
        assert mm.notifier_mm.itree.tree == [] and int(p0.partition.oracle.smap.sum()) == 0
        assert p0.partition.check_invariants() == []

    live(body, "p0", "p1", semantics="v5.10")


def test_each_interval_rpc_answers_a_valid_raw_request(live):
    """Raw stubs, as test_rpc_errors.py's test_every_rpc_answers_a_valid_request sends the rest."""
    async def body(p0: Any, p1: Any) -> None:
        mm = await _mapped(p0)
        dev = IntervalMirror(p1.owner_port("p0"), mm.id, "raw")
        dev.mni.ops, dev.mni.start, dev.mni.last = dev, BASE, BASE + 2 * P - 1
        nid = p1.secondary_service.add(dev.mni)
        c0, c1 = grpc.aio.insecure_channel(p0.address), grpc.aio.insecure_channel(p1.address)
        (o, _, st0), (_, s, st1) = (raw_stubs(c, p0.interconnect.transport) for c in (c0, c1))
        try:
            def md(dst: str) -> tuple[tuple[str, str], ...]:
                return ((DST_KEY, dst), ("mmusim-src", "p1"))

            seq = (await o.IntervalNotifierInsert(pb.IntervalNotifierInsertRequest(
                host="p1", notifier_id=nid, name="raw", mm_id=mm.id, start=BASE, length=2 * P),
                timeout=5.0, metadata=md("p0"))).invalidate_seq
            assert seq == 1 and [m.name for m in mm.notifier_mm.itree.tree] == ["p1:raw"]
            assert (await o.IntervalReadBegin(pb.IntervalReadBeginRequest(host="p1", notifier_id=nid),
                                              timeout=5.0, metadata=md("p0"))).seq == 1
            pages = (await o.HmmRangeFault(pb.HmmRangeFaultRequest(
                host="p1", notifier_id=nid, mm_id=mm.id, address=BASE + P, npages=1, write=False, notifier_seq=1),
                timeout=5.0, metadata=md("p0"))).pages
            assert [(pg.address, pg.pfn, pg.invalidate_seq) for pg in pages] == [(BASE + P, mm.pte(BASE + P)[0], 1)]
            assert int(p0.partition.frames.pincount.sum()) == 0  # hmm_range_fault pins nothing
            reply = await s.IntervalInvalidate(pb.IntervalInvalidateRequest(
                target=pb.CalloutTarget(notifier_id=nid, mm_id=mm.id, mm_name=mm.name), start=BASE, end=BASE + P,
                event=int(MmuNotifierEvent.MIGRATE), flags=MMU_NOTIFIER_RANGE_BLOCKABLE, cur_seq=7),
                timeout=5.0, metadata=md("p1"))
            assert (reply.ok, reply.invalidate_seq) == (True, 7)
            assert dev.calls == [(7, BASE, BASE + P, "MIGRATE")]
            await o.IntervalNotifierRemove(pb.IntervalNotifierRemoveRequest(host="p1", notifier_id=nid),
                                           timeout=5.0, metadata=md("p0"))
            assert mm.notifier_mm.itree.tree == []
            with pytest.raises(InvalidArgument, match="cur_seq 4 is not an invalidation's"):
                await p0.interconnect.call("p0", "p1", "secondary", "interval_invalidate", nid, mm.id, mm.name,
                                           BASE, BASE + P, 0, 1, 4)
        finally:
            for streams in (st0, st1):
                if streams is not None:
                    await streams.close()
            await c0.close()
            await c1.close()

    live(body, "p0", "p1", semantics="v6.6")


def test_a_v3_10_owner_refuses_an_interval_notifier_naming_its_semantics(live):
    async def body(p0: Any, p1: Any) -> None:
        mm = await _mapped(p0)
        dev = IntervalMirror(p1.owner_port("p0"), mm.id, "old")
        with pytest.raises(InvalidArgument, match="the 'v3.10' notifier core has no interval notifiers"):
            await dev.insert(BASE, P)
        assert p1.secondary_service.notifiers.keys() == {"probe"} and mm.notifier_mm is None

    live(body, "p0", "p1")
