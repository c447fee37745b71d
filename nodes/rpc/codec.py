"""Messages <-> model calls: for each RPC, how the model's arguments become a request, how a
request becomes the arguments again, and the same for the reply. One table per service; the
servicers (``server.py``) and the client (``client.py``) are both built from it, so a field
is translated in exactly one place.

The model side is ``nodes/remote.py``: an ``OwnerService`` method called with the positional
arguments ``RemoteOwner`` passes to ``Interconnect.call``, and ``SecondaryService.callout``
with ``(notifier_id, op, mm_id, mm_name, op_args, invalidate_seq)``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from google.protobuf.message import Message

from nodes.errors import InvalidArgument
from nodes.owner import PageRef
from nodes.secondary.xpmem import XpmemCred, XpmemGrant
from nodes.rpc.pb import interconnect_pb2 as pb


@dataclass(frozen=True)
class Method:
    """One RPC: ``rpc`` in the proto service; ``call`` the model method it reaches."""

    rpc: str
    call: str
    request: type[Message]
    reply: type[Message]
    encode: Callable[..., Message]  # model args -> request
    decode: Callable[[Any], tuple[Any, ...]]  # request -> model args
    encode_result: Callable[[Any], Message]  # model result -> reply
    decode_result: Callable[[Any], Any]  # reply -> model result


def build(cls: type[Message], **fields: Any) -> Message:
    """``cls(**fields)``, refusing a value the field cannot carry with ``InvalidArgument``
    naming it (an int beyond int64, a str where a number goes) instead of protobuf's errors."""
    try:
        return cls(**fields)
    except (ValueError, TypeError) as e:
        raise InvalidArgument(f"{cls.DESCRIPTOR.name}: cannot encode {fields!r}: {e}") from None


def _nothing(reply: type[Message]) -> Callable[[Any], Message]:
    """The ``encode_result`` of an RPC whose model call returns nothing: its empty reply."""
    return lambda _=None: reply()


def _none(_: Any) -> None:
    return None


def _timing(reply: type[Message]) -> Callable[[tuple[float, float, float]], Message]:
    """The ``encode_result`` of a teardown RPC: ``reply`` carrying its ``TeardownTiming``."""
    return lambda t: reply(timing=pb.TeardownTiming(total_us=t[0], release_us=t[1], srcu_wait_us=t[2]))


def _untiming(m: Any) -> tuple[float, float, float]:
    return (m.timing.total_us, m.timing.release_us, m.timing.srcu_wait_us)


def _stamp(s: tuple[int, int, int]) -> Any:
    return build(pb.Stamp, mm=s[0], vpn=s[1], generation=s[2])


def _unstamp(m: Any) -> tuple[int, int, int]:
    return (m.mm, m.vpn, m.generation)


def _pages(refs: list[PageRef]) -> Message:
    return pb.GetUserPagesResponse(
        pages=[pb.PageRef(address=r.address, pfn=r.pfn, stamp=_stamp(r.stamp), writable=r.writable,
                          invalidate_seq=r.invalidate_seq) for r in refs]
    )


def _hmm_pages(refs: list[PageRef]) -> Message:
    return pb.HmmRangeFaultResponse(
        pages=[pb.PageRef(address=r.address, pfn=r.pfn, stamp=_stamp(r.stamp), writable=r.writable,
                          invalidate_seq=r.invalidate_seq) for r in refs]
    )


def _unpages(m: Any) -> list[PageRef]:
    return [PageRef(p.address, p.pfn, _unstamp(p.stamp), p.writable, p.invalidate_seq) for p in m.pages]


def _gup(host: str, mm_id: int, address: int, npages: int, write: bool, pin: bool, request_id: int = 0) -> Message:
    return build(pb.GetUserPagesRequest, host=host, mm_id=mm_id, address=address, npages=npages, write=write, pin=pin,
                 request_id=request_id)


OWNER: dict[str, Method] = {
    m.call: m
    for m in (
        Method(
            "RegisterNotifier", "register", pb.RegisterNotifierRequest, pb.RegisterNotifierResponse,
            lambda host, nid, name, ops, mm_id: build(
                pb.RegisterNotifierRequest, host=host, notifier_id=nid, name=name, ops=list(ops), mm_id=mm_id),
            lambda r: (r.host, r.notifier_id, r.name, list(r.ops), r.mm_id),
            _nothing(pb.RegisterNotifierResponse), _none,
        ),
        Method(
            "UnregisterNotifier", "unregister", pb.UnregisterNotifierRequest, pb.UnregisterNotifierResponse,
            lambda host, nid, mm_id: build(pb.UnregisterNotifierRequest, host=host, notifier_id=nid, mm_id=mm_id),
            lambda r: (r.host, r.notifier_id, r.mm_id),
            _timing(pb.UnregisterNotifierResponse), _untiming,
        ),
        Method(
            "PutNotifier", "put", pb.PutNotifierRequest, pb.PutNotifierResponse,
            lambda host, nid, mm_id: build(pb.PutNotifierRequest, host=host, notifier_id=nid, mm_id=mm_id),
            lambda r: (r.host, r.notifier_id, r.mm_id),
            _timing(pb.PutNotifierResponse), _untiming,
        ),
        Method(
            "GetUserPages", "get_user_pages", pb.GetUserPagesRequest, pb.GetUserPagesResponse,
            _gup,
            lambda r: (r.host, r.mm_id, r.address, r.npages, r.write, r.pin, r.request_id),
            _pages, _unpages,
        ),
        Method(
            "AbortPins", "abort_pins", pb.AbortPinsRequest, pb.AbortPinsResponse,
            lambda host, rid: build(pb.AbortPinsRequest, host=host, request_id=rid),
            lambda r: (r.host, r.request_id),
            lambda n: pb.AbortPinsResponse(unpinned=n), lambda m: m.unpinned,
        ),
        Method(
            "PutUserPages", "put_user_pages", pb.PutUserPagesRequest, pb.PutUserPagesResponse,
            lambda host, mm_id, pfns: build(pb.PutUserPagesRequest, host=host, mm_id=mm_id, pfns=[int(p) for p in pfns]),
            lambda r: (r.host, r.mm_id, list(r.pfns)),
            _nothing(pb.PutUserPagesResponse), _none,
        ),
        Method(
            "DmaRead", "dma_read", pb.DmaReadRequest, pb.DmaReadResponse,
            lambda host, nid, mm_id, address, pfn, expected: build(
                pb.DmaReadRequest, host=host, notifier_id=nid, mm_id=mm_id, address=address, pfn=pfn,
                expected=_stamp(expected)),
            lambda r: (r.host, r.notifier_id, r.mm_id, r.address, r.pfn, _unstamp(r.expected)),
            lambda s: pb.DmaReadResponse(stamp=_stamp(s)), lambda m: _unstamp(m.stamp),
        ),
        Method(
            "ReportTranslations", "report_translations", pb.ReportTranslationsRequest, pb.ReportTranslationsResponse,
            lambda host, nid, mm_id, address, pfns, established: build(
                pb.ReportTranslationsRequest, host=host, notifier_id=nid, mm_id=mm_id, address=address,
                pfns=[int(p) for p in pfns], established=established),
            lambda r: (r.host, r.notifier_id, r.mm_id, r.address, list(r.pfns), r.established),
            _nothing(pb.ReportTranslationsResponse), _none,
        ),
        Method(
            "Exit", "exit", pb.ExitRequest, pb.ExitResponse,
            lambda mm_id: build(pb.ExitRequest, mm_id=mm_id),
            lambda r: (r.mm_id,),
            _timing(pb.ExitResponse), _untiming,
        ),
    )
}


def _cred(c: XpmemCred) -> Any:
    return build(pb.XpmemCred, tgid=c.tgid, uid=c.uid, gid=c.gid, groups=sorted(c.groups))


def _uncred(m: Any) -> XpmemCred:
    return XpmemCred(m.tgid, m.uid, m.gid, frozenset(m.groups))


OWNER.update({
    m.call: m
    for m in (
        Method(
            "XpmemMake", "xpmem_make", pb.XpmemMakeRequest, pb.XpmemMakeResponse,
            lambda mm_id, vaddr, size, mode, cred: build(
                pb.XpmemMakeRequest, mm_id=mm_id, vaddr=vaddr, size=size, permit_mode=mode, cred=_cred(cred)),
            lambda r: (r.mm_id, r.vaddr, r.size, r.permit_mode, _uncred(r.cred)),
            lambda segid: pb.XpmemMakeResponse(segid=segid), lambda m: m.segid,
        ),
        Method(
            "XpmemGet", "xpmem_get", pb.XpmemGetRequest, pb.XpmemGetResponse,
            lambda segid, flags, cred: build(pb.XpmemGetRequest, segid=segid, flags=flags, cred=_cred(cred)),
            lambda r: (r.segid, r.flags, _uncred(r.cred)),
            lambda apid: pb.XpmemGetResponse(apid=apid), lambda m: m.apid,
        ),
        Method(
            "XpmemAttach", "xpmem_attach", pb.XpmemAttachRequest, pb.XpmemAttachResponse,
            lambda host, nid, apid, offset, size, cred: build(
                pb.XpmemAttachRequest, host=host, notifier_id=nid, apid=apid, offset=offset, size=size, cred=_cred(cred)),
            lambda r: (r.host, r.notifier_id, r.apid, r.offset, r.size, _uncred(r.cred)),
            lambda g: pb.XpmemAttachResponse(
                attachment_id=g.attachment_id, src_start=g.src_start, size=g.size, mode=g.mode),
            lambda m: XpmemGrant(m.attachment_id, m.src_start, m.size, m.mode),
        ),
        Method(
            "XpmemDetach", "xpmem_detach", pb.XpmemDetachRequest, pb.XpmemDetachResponse,
            lambda host, aid, cred: build(
                pb.XpmemDetachRequest, host=host, attachment_id=aid, **({} if cred is None else {"cred": _cred(cred)})),
            lambda r: (r.host, r.attachment_id, _uncred(r.cred) if r.HasField("cred") else None),
            _nothing(pb.XpmemDetachResponse), _none,
        ),
        Method(
            "XpmemRelease", "xpmem_release", pb.XpmemReleaseRequest, pb.XpmemReleaseResponse,
            lambda apid, cred: build(pb.XpmemReleaseRequest, apid=apid, cred=_cred(cred)),
            lambda r: (r.apid, _uncred(r.cred)),
            _nothing(pb.XpmemReleaseResponse), _none,
        ),
        Method(
            "XpmemRemove", "xpmem_remove", pb.XpmemRemoveRequest, pb.XpmemRemoveResponse,
            lambda segid, cred: build(pb.XpmemRemoveRequest, segid=segid, cred=_cred(cred)),
            lambda r: (r.segid, _uncred(r.cred)),
            _nothing(pb.XpmemRemoveResponse), _none,
        ),
    )
})


OWNER.update({
    m.call: m
    for m in (
        Method(
            "IntervalNotifierInsert", "interval_insert", pb.IntervalNotifierInsertRequest,
            pb.IntervalNotifierInsertResponse,
            lambda host, nid, name, mm_id, start, length: build(
                pb.IntervalNotifierInsertRequest, host=host, notifier_id=nid, name=name, mm_id=mm_id, start=start,
                length=length),
            lambda r: (r.host, r.notifier_id, r.name, r.mm_id, r.start, r.length),
            lambda seq: pb.IntervalNotifierInsertResponse(invalidate_seq=seq), lambda m: m.invalidate_seq,
        ),
        Method(
            "IntervalNotifierRemove", "interval_remove", pb.IntervalNotifierRemoveRequest,
            pb.IntervalNotifierRemoveResponse,
            lambda host, nid: build(pb.IntervalNotifierRemoveRequest, host=host, notifier_id=nid),
            lambda r: (r.host, r.notifier_id),
            _nothing(pb.IntervalNotifierRemoveResponse), _none,
        ),
        Method(
            "IntervalReadBegin", "interval_read_begin", pb.IntervalReadBeginRequest, pb.IntervalReadBeginResponse,
            lambda host, nid: build(pb.IntervalReadBeginRequest, host=host, notifier_id=nid),
            lambda r: (r.host, r.notifier_id),
            lambda seq: pb.IntervalReadBeginResponse(seq=seq), lambda m: m.seq,
        ),
        Method(
            "HmmRangeFault", "hmm_range_fault", pb.HmmRangeFaultRequest, pb.HmmRangeFaultResponse,
            lambda host, nid, mm_id, address, npages, write, seq: build(
                pb.HmmRangeFaultRequest, host=host, notifier_id=nid, mm_id=mm_id, address=address, npages=npages,
                write=write, notifier_seq=seq),
            lambda r: (r.host, r.notifier_id, r.mm_id, r.address, r.npages, r.write, r.notifier_seq),
            _hmm_pages, _unpages,
        ),
    )
})


def _target(nid: str, mm_id: int, mm_name: str, invalidate_seq: int = 0) -> dict[str, Any]:
    """A request's ``CalloutTarget``, as the fields its request is built with (``build``): a
    nested message given as a dict is set in place, without a message of its own to copy in
    (a third of a callout's encoding, issue 13)."""
    return {"notifier_id": nid, "mm_id": mm_id, "mm_name": mm_name, "invalidate_seq": invalidate_seq}


def _callout(op: str, args_of: Callable[[Any], tuple[Any, ...]]) -> Callable[[Any], tuple[Any, ...]]:
    """request -> the arguments of ``SecondaryService.callout`` for ``op``."""
    def decode(r: Any) -> tuple[Any, ...]:
        return (r.target.notifier_id, op, r.target.mm_id, r.target.mm_name, args_of(r), r.target.invalidate_seq)
    return decode


def _young(reply: type[Message]) -> Callable[[Any], Message]:
    """The ``encode_result`` of an accessed-bit callout: ``reply`` carrying how many were young."""
    return lambda n: build(reply, young=int(n or 0))


# keyed by notifier op; each reaches SecondaryService.callout
SECONDARY: dict[str, Method] = {
    m.call: m
    for m in (
        Method(
            "InvalidateRangeStart", "invalidate_range_start",
            pb.InvalidateRangeStartRequest, pb.InvalidateRangeStartResponse,
            lambda t, start, end: build(pb.InvalidateRangeStartRequest, target=t, start=start, end=end),
            _callout("invalidate_range_start", lambda r: (r.start, r.end)),
            _nothing(pb.InvalidateRangeStartResponse), _none,
        ),
        Method(
            "InvalidateRangeEnd", "invalidate_range_end", pb.InvalidateRangeEndRequest, pb.InvalidateRangeEndResponse,
            lambda t, start, end: build(pb.InvalidateRangeEndRequest, target=t, start=start, end=end),
            _callout("invalidate_range_end", lambda r: (r.start, r.end)), _nothing(pb.InvalidateRangeEndResponse), _none,
        ),
        Method(
            "InvalidatePage", "invalidate_page", pb.InvalidatePageRequest, pb.InvalidatePageResponse,
            lambda t, address: build(pb.InvalidatePageRequest, target=t, address=address),
            _callout("invalidate_page", lambda r: (r.address,)), _nothing(pb.InvalidatePageResponse), _none,
        ),
        Method(
            "Release", "release", pb.ReleaseRequest, pb.ReleaseResponse,
            lambda t: build(pb.ReleaseRequest, target=t),
            _callout("release", lambda r: ()), _nothing(pb.ReleaseResponse), _none,
        ),
        Method(
            "ChangePte", "change_pte", pb.ChangePteRequest, pb.ChangePteResponse,
            lambda t, address, pte: build(pb.ChangePteRequest, target=t, address=address, pfn=pte[0], flags=pte[1]),
            _callout("change_pte", lambda r: (r.address, (r.pfn, r.flags))), _nothing(pb.ChangePteResponse), _none,
        ),
        Method(
            "ClearFlushYoung", "clear_flush_young", pb.ClearFlushYoungRequest, pb.ClearFlushYoungResponse,
            lambda t, address: build(pb.ClearFlushYoungRequest, target=t, address=address),
            _callout("clear_flush_young", lambda r: (r.address,)), _young(pb.ClearFlushYoungResponse), lambda m: m.young,
        ),
        Method(
            "TestYoung", "test_young", pb.TestYoungRequest, pb.TestYoungResponse,
            lambda t, address: build(pb.TestYoungRequest, target=t, address=address),
            _callout("test_young", lambda r: (r.address,)), _young(pb.TestYoungResponse), lambda m: m.young,
        ),
    )
}


# other requests to a partition hosting secondaries, keyed by SecondaryService method
SECONDARY_METHODS: dict[str, Method] = {
    m.call: m
    for m in (
        Method(
            "XpmemDetachAttachments", "xpmem_detach",
            pb.XpmemDetachAttachmentsRequest, pb.XpmemDetachAttachmentsResponse,
            lambda nid, ids: build(
                pb.XpmemDetachAttachmentsRequest, target=_target(nid, 0, ""), attachment_ids=list(ids)),
            lambda r: (r.target.notifier_id, list(r.attachment_ids)),
            _nothing(pb.XpmemDetachAttachmentsResponse), _none,
        ),
        Method(
            "IntervalInvalidate", "interval_invalidate", pb.IntervalInvalidateRequest, pb.IntervalInvalidateResponse,
            lambda nid, mm_id, mm_name, start, end, event, flags, cur_seq: build(
                pb.IntervalInvalidateRequest, target=_target(nid, mm_id, mm_name), start=start, end=end, event=event,
                flags=flags, cur_seq=cur_seq),
            lambda r: (r.target.notifier_id, r.target.mm_id, r.target.mm_name, r.start, r.end, r.event, r.flags,
                       r.cur_seq),
            lambda res: build(pb.IntervalInvalidateResponse, ok=res[0], invalidate_seq=res[1]),
            lambda m: (m.ok, m.invalidate_seq),
        ),
    )
}


def encode_callout(notifier_id: str, op: str, mm_id: int, mm_name: str, args: tuple[Any, ...],
                   invalidate_seq: int = 0) -> tuple[Method, Message]:
    """The RPC and request carrying ``SecondaryService.callout(notifier_id, op, ...)``."""
    m = SECONDARY.get(op)
    if m is None:
        raise InvalidArgument(f"no RPC for notifier op {op!r}; known: {sorted(SECONDARY)}")
    return m, m.encode(_target(notifier_id, mm_id, mm_name, invalidate_seq), *args)
