from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Stamp(_message.Message):
    __slots__ = ("mm", "vpn", "generation")
    MM_FIELD_NUMBER: _ClassVar[int]
    VPN_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    mm: int
    vpn: int
    generation: int
    def __init__(self, mm: _Optional[int] = ..., vpn: _Optional[int] = ..., generation: _Optional[int] = ...) -> None: ...

class PageRef(_message.Message):
    __slots__ = ("address", "pfn", "stamp", "writable", "invalidate_seq")
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    STAMP_FIELD_NUMBER: _ClassVar[int]
    WRITABLE_FIELD_NUMBER: _ClassVar[int]
    INVALIDATE_SEQ_FIELD_NUMBER: _ClassVar[int]
    address: int
    pfn: int
    stamp: Stamp
    writable: bool
    invalidate_seq: int
    def __init__(self, address: _Optional[int] = ..., pfn: _Optional[int] = ..., stamp: _Optional[_Union[Stamp, _Mapping]] = ..., writable: _Optional[bool] = ..., invalidate_seq: _Optional[int] = ...) -> None: ...

class TeardownTiming(_message.Message):
    __slots__ = ("total_us", "release_us", "srcu_wait_us")
    TOTAL_US_FIELD_NUMBER: _ClassVar[int]
    RELEASE_US_FIELD_NUMBER: _ClassVar[int]
    SRCU_WAIT_US_FIELD_NUMBER: _ClassVar[int]
    total_us: float
    release_us: float
    srcu_wait_us: float
    def __init__(self, total_us: _Optional[float] = ..., release_us: _Optional[float] = ..., srcu_wait_us: _Optional[float] = ...) -> None: ...

class RegisterNotifierRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "name", "ops", "mm_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    OPS_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    name: str
    ops: _containers.RepeatedScalarFieldContainer[str]
    mm_id: int
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., name: _Optional[str] = ..., ops: _Optional[_Iterable[str]] = ..., mm_id: _Optional[int] = ...) -> None: ...

class RegisterNotifierResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UnregisterNotifierRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "mm_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    mm_id: int
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ...) -> None: ...

class UnregisterNotifierResponse(_message.Message):
    __slots__ = ("timing",)
    TIMING_FIELD_NUMBER: _ClassVar[int]
    timing: TeardownTiming
    def __init__(self, timing: _Optional[_Union[TeardownTiming, _Mapping]] = ...) -> None: ...

class PutNotifierRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "mm_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    mm_id: int
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ...) -> None: ...

class PutNotifierResponse(_message.Message):
    __slots__ = ("timing",)
    TIMING_FIELD_NUMBER: _ClassVar[int]
    timing: TeardownTiming
    def __init__(self, timing: _Optional[_Union[TeardownTiming, _Mapping]] = ...) -> None: ...

class GetUserPagesRequest(_message.Message):
    __slots__ = ("host", "mm_id", "address", "npages", "write", "pin", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NPAGES_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    mm_id: int
    address: int
    npages: int
    write: bool
    pin: bool
    request_id: int
    def __init__(self, host: _Optional[str] = ..., mm_id: _Optional[int] = ..., address: _Optional[int] = ..., npages: _Optional[int] = ..., write: _Optional[bool] = ..., pin: _Optional[bool] = ..., request_id: _Optional[int] = ...) -> None: ...

class GetUserPagesResponse(_message.Message):
    __slots__ = ("pages",)
    PAGES_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedCompositeFieldContainer[PageRef]
    def __init__(self, pages: _Optional[_Iterable[_Union[PageRef, _Mapping]]] = ...) -> None: ...

class AbortPinsRequest(_message.Message):
    __slots__ = ("host", "request_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    REQUEST_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    request_id: int
    def __init__(self, host: _Optional[str] = ..., request_id: _Optional[int] = ...) -> None: ...

class AbortPinsResponse(_message.Message):
    __slots__ = ("unpinned",)
    UNPINNED_FIELD_NUMBER: _ClassVar[int]
    unpinned: int
    def __init__(self, unpinned: _Optional[int] = ...) -> None: ...

class PutUserPagesRequest(_message.Message):
    __slots__ = ("host", "mm_id", "pfns")
    HOST_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    PFNS_FIELD_NUMBER: _ClassVar[int]
    host: str
    mm_id: int
    pfns: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, host: _Optional[str] = ..., mm_id: _Optional[int] = ..., pfns: _Optional[_Iterable[int]] = ...) -> None: ...

class PutUserPagesResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class DmaReadRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "mm_id", "address", "pfn", "expected")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    EXPECTED_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    mm_id: int
    address: int
    pfn: int
    expected: Stamp
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ..., address: _Optional[int] = ..., pfn: _Optional[int] = ..., expected: _Optional[_Union[Stamp, _Mapping]] = ...) -> None: ...

class DmaReadResponse(_message.Message):
    __slots__ = ("stamp",)
    STAMP_FIELD_NUMBER: _ClassVar[int]
    stamp: Stamp
    def __init__(self, stamp: _Optional[_Union[Stamp, _Mapping]] = ...) -> None: ...

class ReportTranslationsRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "mm_id", "address", "pfns", "established")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PFNS_FIELD_NUMBER: _ClassVar[int]
    ESTABLISHED_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    mm_id: int
    address: int
    pfns: _containers.RepeatedScalarFieldContainer[int]
    established: bool
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ..., address: _Optional[int] = ..., pfns: _Optional[_Iterable[int]] = ..., established: _Optional[bool] = ...) -> None: ...

class ReportTranslationsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ExitRequest(_message.Message):
    __slots__ = ("mm_id",)
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    mm_id: int
    def __init__(self, mm_id: _Optional[int] = ...) -> None: ...

class ExitResponse(_message.Message):
    __slots__ = ("timing",)
    TIMING_FIELD_NUMBER: _ClassVar[int]
    timing: TeardownTiming
    def __init__(self, timing: _Optional[_Union[TeardownTiming, _Mapping]] = ...) -> None: ...

class XpmemCred(_message.Message):
    __slots__ = ("tgid", "uid", "gid", "groups")
    TGID_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    tgid: int
    uid: int
    gid: int
    groups: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, tgid: _Optional[int] = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., groups: _Optional[_Iterable[int]] = ...) -> None: ...

class XpmemMakeRequest(_message.Message):
    __slots__ = ("mm_id", "vaddr", "size", "permit_mode", "cred")
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    VADDR_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    PERMIT_MODE_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    mm_id: int
    vaddr: int
    size: int
    permit_mode: int
    cred: XpmemCred
    def __init__(self, mm_id: _Optional[int] = ..., vaddr: _Optional[int] = ..., size: _Optional[int] = ..., permit_mode: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemMakeResponse(_message.Message):
    __slots__ = ("segid",)
    SEGID_FIELD_NUMBER: _ClassVar[int]
    segid: int
    def __init__(self, segid: _Optional[int] = ...) -> None: ...

class XpmemGetRequest(_message.Message):
    __slots__ = ("segid", "flags", "cred")
    SEGID_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    segid: int
    flags: int
    cred: XpmemCred
    def __init__(self, segid: _Optional[int] = ..., flags: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemGetResponse(_message.Message):
    __slots__ = ("apid",)
    APID_FIELD_NUMBER: _ClassVar[int]
    apid: int
    def __init__(self, apid: _Optional[int] = ...) -> None: ...

class XpmemAttachRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "apid", "offset", "size", "cred")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    APID_FIELD_NUMBER: _ClassVar[int]
    OFFSET_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    apid: int
    offset: int
    size: int
    cred: XpmemCred
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., apid: _Optional[int] = ..., offset: _Optional[int] = ..., size: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemAttachResponse(_message.Message):
    __slots__ = ("attachment_id", "src_start", "size", "mode")
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    SRC_START_FIELD_NUMBER: _ClassVar[int]
    SIZE_FIELD_NUMBER: _ClassVar[int]
    MODE_FIELD_NUMBER: _ClassVar[int]
    attachment_id: int
    src_start: int
    size: int
    mode: int
    def __init__(self, attachment_id: _Optional[int] = ..., src_start: _Optional[int] = ..., size: _Optional[int] = ..., mode: _Optional[int] = ...) -> None: ...

class XpmemDetachRequest(_message.Message):
    __slots__ = ("host", "attachment_id", "cred")
    HOST_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_ID_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    host: str
    attachment_id: int
    cred: XpmemCred
    def __init__(self, host: _Optional[str] = ..., attachment_id: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemDetachResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class XpmemReleaseRequest(_message.Message):
    __slots__ = ("apid", "cred")
    APID_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    apid: int
    cred: XpmemCred
    def __init__(self, apid: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class XpmemRemoveRequest(_message.Message):
    __slots__ = ("segid", "cred")
    SEGID_FIELD_NUMBER: _ClassVar[int]
    CRED_FIELD_NUMBER: _ClassVar[int]
    segid: int
    cred: XpmemCred
    def __init__(self, segid: _Optional[int] = ..., cred: _Optional[_Union[XpmemCred, _Mapping]] = ...) -> None: ...

class XpmemRemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntervalNotifierInsertRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "name", "mm_id", "start", "length")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    LENGTH_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    name: str
    mm_id: int
    start: int
    length: int
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., name: _Optional[str] = ..., mm_id: _Optional[int] = ..., start: _Optional[int] = ..., length: _Optional[int] = ...) -> None: ...

class IntervalNotifierInsertResponse(_message.Message):
    __slots__ = ("invalidate_seq",)
    INVALIDATE_SEQ_FIELD_NUMBER: _ClassVar[int]
    invalidate_seq: int
    def __init__(self, invalidate_seq: _Optional[int] = ...) -> None: ...

class IntervalNotifierRemoveRequest(_message.Message):
    __slots__ = ("host", "notifier_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ...) -> None: ...

class IntervalNotifierRemoveResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntervalReadBeginRequest(_message.Message):
    __slots__ = ("host", "notifier_id")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ...) -> None: ...

class IntervalReadBeginResponse(_message.Message):
    __slots__ = ("seq",)
    SEQ_FIELD_NUMBER: _ClassVar[int]
    seq: int
    def __init__(self, seq: _Optional[int] = ...) -> None: ...

class HmmRangeFaultRequest(_message.Message):
    __slots__ = ("host", "notifier_id", "mm_id", "address", "npages", "write", "notifier_seq")
    HOST_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    NPAGES_FIELD_NUMBER: _ClassVar[int]
    WRITE_FIELD_NUMBER: _ClassVar[int]
    NOTIFIER_SEQ_FIELD_NUMBER: _ClassVar[int]
    host: str
    notifier_id: str
    mm_id: int
    address: int
    npages: int
    write: bool
    notifier_seq: int
    def __init__(self, host: _Optional[str] = ..., notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ..., address: _Optional[int] = ..., npages: _Optional[int] = ..., write: _Optional[bool] = ..., notifier_seq: _Optional[int] = ...) -> None: ...

class HmmRangeFaultResponse(_message.Message):
    __slots__ = ("pages",)
    PAGES_FIELD_NUMBER: _ClassVar[int]
    pages: _containers.RepeatedCompositeFieldContainer[PageRef]
    def __init__(self, pages: _Optional[_Iterable[_Union[PageRef, _Mapping]]] = ...) -> None: ...

class CalloutTarget(_message.Message):
    __slots__ = ("notifier_id", "mm_id", "mm_name", "invalidate_seq")
    NOTIFIER_ID_FIELD_NUMBER: _ClassVar[int]
    MM_ID_FIELD_NUMBER: _ClassVar[int]
    MM_NAME_FIELD_NUMBER: _ClassVar[int]
    INVALIDATE_SEQ_FIELD_NUMBER: _ClassVar[int]
    notifier_id: str
    mm_id: int
    mm_name: str
    invalidate_seq: int
    def __init__(self, notifier_id: _Optional[str] = ..., mm_id: _Optional[int] = ..., mm_name: _Optional[str] = ..., invalidate_seq: _Optional[int] = ...) -> None: ...

class InvalidateRangeStartRequest(_message.Message):
    __slots__ = ("target", "start", "end")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    start: int
    end: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class InvalidateRangeStartResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvalidateRangeEndRequest(_message.Message):
    __slots__ = ("target", "start", "end")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    start: int
    end: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ...) -> None: ...

class InvalidateRangeEndResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class InvalidatePageRequest(_message.Message):
    __slots__ = ("target", "address")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    address: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., address: _Optional[int] = ...) -> None: ...

class InvalidatePageResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ReleaseRequest(_message.Message):
    __slots__ = ("target",)
    TARGET_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ...) -> None: ...

class ReleaseResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ChangePteRequest(_message.Message):
    __slots__ = ("target", "address", "pfn", "flags")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    PFN_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    address: int
    pfn: int
    flags: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., address: _Optional[int] = ..., pfn: _Optional[int] = ..., flags: _Optional[int] = ...) -> None: ...

class ChangePteResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ClearFlushYoungRequest(_message.Message):
    __slots__ = ("target", "address")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    address: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., address: _Optional[int] = ...) -> None: ...

class ClearFlushYoungResponse(_message.Message):
    __slots__ = ("young",)
    YOUNG_FIELD_NUMBER: _ClassVar[int]
    young: int
    def __init__(self, young: _Optional[int] = ...) -> None: ...

class TestYoungRequest(_message.Message):
    __slots__ = ("target", "address")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ADDRESS_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    address: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., address: _Optional[int] = ...) -> None: ...

class TestYoungResponse(_message.Message):
    __slots__ = ("young",)
    YOUNG_FIELD_NUMBER: _ClassVar[int]
    young: int
    def __init__(self, young: _Optional[int] = ...) -> None: ...

class XpmemDetachAttachmentsRequest(_message.Message):
    __slots__ = ("target", "attachment_ids")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    ATTACHMENT_IDS_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    attachment_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., attachment_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class XpmemDetachAttachmentsResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class IntervalInvalidateRequest(_message.Message):
    __slots__ = ("target", "start", "end", "event", "flags", "cur_seq")
    TARGET_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    FLAGS_FIELD_NUMBER: _ClassVar[int]
    CUR_SEQ_FIELD_NUMBER: _ClassVar[int]
    target: CalloutTarget
    start: int
    end: int
    event: int
    flags: int
    cur_seq: int
    def __init__(self, target: _Optional[_Union[CalloutTarget, _Mapping]] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., event: _Optional[int] = ..., flags: _Optional[int] = ..., cur_seq: _Optional[int] = ...) -> None: ...

class IntervalInvalidateResponse(_message.Message):
    __slots__ = ("ok", "invalidate_seq")
    OK_FIELD_NUMBER: _ClassVar[int]
    INVALIDATE_SEQ_FIELD_NUMBER: _ClassVar[int]
    ok: bool
    invalidate_seq: int
    def __init__(self, ok: _Optional[bool] = ..., invalidate_seq: _Optional[int] = ...) -> None: ...

class StreamCall(_message.Message):
    __slots__ = ("id", "method", "request", "timeout_us", "probe", "cancel")
    ID_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    REQUEST_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_US_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    CANCEL_FIELD_NUMBER: _ClassVar[int]
    id: int
    method: str
    request: bytes
    timeout_us: float
    probe: bool
    cancel: bool
    def __init__(self, id: _Optional[int] = ..., method: _Optional[str] = ..., request: _Optional[bytes] = ..., timeout_us: _Optional[float] = ..., probe: _Optional[bool] = ..., cancel: _Optional[bool] = ...) -> None: ...

class ExchangeRequest(_message.Message):
    __slots__ = ("calls",)
    CALLS_FIELD_NUMBER: _ClassVar[int]
    calls: _containers.RepeatedCompositeFieldContainer[StreamCall]
    def __init__(self, calls: _Optional[_Iterable[_Union[StreamCall, _Mapping]]] = ...) -> None: ...

class StreamReply(_message.Message):
    __slots__ = ("id", "code", "details", "error", "reply")
    ID_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    REPLY_FIELD_NUMBER: _ClassVar[int]
    id: int
    code: int
    details: str
    error: str
    reply: bytes
    def __init__(self, id: _Optional[int] = ..., code: _Optional[int] = ..., details: _Optional[str] = ..., error: _Optional[str] = ..., reply: _Optional[bytes] = ...) -> None: ...

class ExchangeResponse(_message.Message):
    __slots__ = ("replies",)
    REPLIES_FIELD_NUMBER: _ClassVar[int]
    replies: _containers.RepeatedCompositeFieldContainer[StreamReply]
    def __init__(self, replies: _Optional[_Iterable[_Union[StreamReply, _Mapping]]] = ...) -> None: ...
