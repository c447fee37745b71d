"""Secondary MMUs on another partition: both ends of the wire, over an injected interconnect.

A GRU or XPMEM secondary on partition B maps pages of an mm on partition A. Two services and
two proxies carry that across the interconnect:

    partition B (secondary host)                    partition A (owner)
    ----------------------------                    -------------------
    GruMmu / XpmemDriver                            NotifierCore (SRCU, list walk)
      |  OwnerPort calls                              |  ops of a RemoteNotifier
    RemoteOwner  ------ get_user_pages, register -->  OwnerService
    SecondaryService <---- callout(op, ...) --------  RemoteNotifier

- ``RemoteOwner`` (on B) is the ``OwnerPort`` of a secondary whose mm lives on A: each call is a
  request to A's ``OwnerService``.
- ``OwnerService`` (on A) registers a ``RemoteNotifier`` on the mm for each remote secondary;
  the notifier core calls it like any notifier, and each op it implements is a request to B's
  ``SecondaryService``, which calls the real secondary. The core therefore sleeps for the
  network inside ``invalidate_range_start`` under its SRCU read lock, as it would for GRU
  callouts across NUMAlink. The atomic ops (``change_pte``, ``clear_flush_young``,
  ``test_young``) are forwarded too, and so raise ``SleepingInAtomicContext``: a secondary on
  another partition cannot honour an op the kernel calls under a spinlock.
- A pinning get_user_pages whose answer is lost is undone by the secondary's side
  (``abort_pins``), so a pin is never held for a request no one saw answered.
- Interval notifiers (the modern modes, ``nodes.interval``): a secondary on B inserts its
  ``MmuIntervalNotifier`` through ``RemoteOwner``; A's ``OwnerService`` puts a
  ``RemoteIntervalNotifier`` in the mm's tree, whose ``invalidate`` is a request to B
  (``SecondaryService.interval_invalidate``: the range, its event and flags, and ``cur_seq``),
  answered with B's verdict and the notifier's sequence after it, which A mirrors for
  ``mmu_interval_read_begin``. The secondary's read_begin is a request to A (it may wait there
  for an invalidation to end, within the request's deadline); its read_retry and set_seq are
  local, on its own notifier. A range that may not block is refused at once (False: a callout
  sleeps), so a non-blocking start answers -EAGAIN.
- Fencing: when a callout to B gets no answer (``Unreachable``: B died, or its link did), A
  fences B: every notifier B registered is treated as released (no more callouts), every page
  B pinned is unpinned, the oracle forgets B's translations, and the fault is recorded in
  ``OwnerService.faults``. The operation that hit the fault then completes. Exit and unregister
  on A therefore finish even with a dead secondary.

The interconnect is injected (``Interconnect``): the sim backend's in-memory one sleeps for a
modelled latency; the ray backend's is gRPC. Arguments are plain data so either can carry
them. Oracle reports (translations established or dropped) are not modelled traffic: they go
straight to the owner's oracle through ``oracle_sink``, because the oracle is an observer with
a global view, not part of the machine.
"""

from __future__ import annotations

import errno
from collections import Counter
from dataclasses import dataclass, field
from types import CoroutineType
from typing import Any, Awaitable, Callable, Protocol

import numpy as np

from nodes.errors import InvalidArgument, NotFound, PermissionDenied, Unreachable
from nodes.migrate_device import DevPagemapOps, MigrateSrc
from nodes.interval import (MmuIntervalNotifier, MmuIntervalNotifierOps, mmu_interval_notifier_insert,
                            mmu_interval_notifier_remove, mmu_interval_read_begin)
from nodes.mm import Mm
from nodes.notifier import OPS, RANGE_OPS, MmuNotifier, MmuNotifierEvent, MmuNotifierRange, TeardownTiming, has_op
from nodes.owner import LocalOwner, MmRef, PageRef
from nodes.partition import Partition
from nodes.runtime import call_maybe_async, op_awaitable
from nodes.secondary.xpmem import XpmemCred, XpmemGrant
from nodes.vmops import exit_mmap

OWNER_SERVICE = "owner"
PIN_REQUESTS_KEPT = 4096  # pinning requests per host an abort can still undo
ABORT_ATTEMPTS = 8  # tries to undo a pinning request whose answer was lost
SECONDARY_SERVICE = "secondary"


class Interconnect(Protocol):
    """Sends a request from one partition to a service on another and awaits the answer.
    Model errors raised by the handler come back as the same errors; a partition that does
    not answer in time gives ``Unreachable``."""

    async def call(
        self, src: str, dst: str, service: str, method: str, *args: Any, kind: str = "rpc", nbytes: int = 64
    ) -> Any: ...


# -- the owner's side ---------------------------------------------------------------------------


def _forwarding_op(op: str) -> Any:
    if op in RANGE_OPS:
        return _forwarding_range_op(op)

    def forward(self: "RemoteNotifier", mm: Mm, *args: Any) -> Awaitable[Any]:
        # returns OwnerService.forward's coroutine, so the core awaits it with no frame between
        return self.service.forward(self, op, mm, args)

    forward.__name__ = op
    forward.__doc__ = f"Forward {op} to the secondary's partition (see MmuNotifier.{op})."
    return forward


def _forwarding_range_op(op: str) -> Any:
    def forward(self: "RemoteNotifier", *args: Any) -> Any:
        if len(args) == 3:  # the v3.10 core: (mm, start, end)
            return self.service.forward(self, op, args[0], args[1:])
        (rng,) = args  # a modern core's MmuNotifierRange
        if not rng.blockable():
            # The callout would wait for the network: a start in a non-blocking range (the OOM
            # reaper's) answers -EAGAIN at once and the secondary never hears of the range, so
            # an end in one (v6.6's unwind of that failure) has nothing to end either.
            return -errno.EAGAIN if op == "invalidate_range_start" else 0
        return self.service.forward(self, op, rng.mm, (rng.start, rng.end))

    forward.__name__ = op
    forward.__doc__ = (f"Forward {op} to the secondary's partition (see MmuNotifier.{op}); under a modern core, "
                       f"-EAGAIN for a range that may not block (the network would).")
    return forward


class RemoteNotifier(MmuNotifier):
    """The owner-side stand-in of a secondary that lives on another partition. Built per set
    of ops (``remote_notifier_class``) so the core sees exactly the ops the secondary has.
    Under a modern core it takes the range (``takes_range``): the wire still carries (start,
    end), the secondary's 5.10 driver reading nothing else, but blockability is read here."""

    takes_range = True

    def __init__(self, service: "OwnerService", host: str, notifier_id: str, name: str):
        super().__init__(f"{host}:{name}")
        self.service = service
        self.host = host
        self.notifier_id = notifier_id
        self.fenced = False  # the host stopped answering: treated as released from then on
        self.sleeps = True  # every op waits for the network


_proxy_classes: dict[tuple[frozenset[str], bool], type[RemoteNotifier]] = {}


def remote_notifier_class(ops: frozenset[str], *, modern: bool = False) -> type[RemoteNotifier]:
    """The ``RemoteNotifier`` subclass implementing exactly ``ops``; for a ``modern`` core, a
    secondary with an invalidate_range_end but no start gets a start of the proxy's own
    (``_refusing_start``), since its end would have to cross the network in a range that may
    not block."""
    unknown = ops - set(OPS)
    if unknown:
        raise InvalidArgument(f"unknown notifier ops {sorted(unknown)}; known: {list(OPS)}")
    guard = modern and "invalidate_range_end" in ops and "invalidate_range_start" not in ops
    cls = _proxy_classes.get((ops, guard))
    if cls is None:
        body = {op: _forwarding_op(op) for op in sorted(ops)}
        if guard:
            body["invalidate_range_start"] = _refusing_start
        cls = type(f"RemoteNotifier[{','.join(sorted(ops))}{',guard' if guard else ''}]", (RemoteNotifier,), body)
        _proxy_classes[(ops, guard)] = cls
    return cls


def _refusing_start(self: "RemoteNotifier", rng: Any) -> int:
    """The proxy's own invalidate_range_start, for a secondary without one (XPMEM hooks only
    the end): nothing to forward in a blockable range; -EAGAIN in one that may not block, so
    that the core's caller skips the range and no end is owed to the secondary (5.10's rule: a
    notifier that would sleep fails its non-blocking start; its end cannot fail)."""
    return 0 if rng.blockable() else -errno.EAGAIN


_refusing_start.local = True  # type: ignore[attr-defined]  # answered here: not timed as a round trip


class RemoteIntervalNotifier(MmuIntervalNotifier):
    """The owner-side stand-in of an interval notifier that a secondary on another partition
    holds: in the owner's tree, with ``REMOTE_INTERVAL_OPS``. Its ``invalidate_seq`` mirrors the
    secondary's notifier's, as each invalidate's answer carries it (between a callout and its
    answer it may lag: then read_begin here returns the older sequence, and the secondary's
    read_retry, against its own, says retry: the kernel's race of read_begin with set_seq)."""

    def __init__(self, service: "OwnerService", host: str, notifier_id: str, name: str):
        super().__init__(f"{host}:{name}")
        self.service = service
        self.host = host
        self.notifier_id = notifier_id
        self.fenced = False  # the host stopped answering, or lost the notifier: no more callouts


class RemoteIntervalOps(MmuIntervalNotifierOps):
    """The ops of every ``RemoteIntervalNotifier``: its invalidate is a request to the
    secondary's partition, which sleeps, so a range that may not block gets False at once."""

    def invalidate(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> Any:
        if not range.blockable():
            return False
        assert isinstance(mni, RemoteIntervalNotifier)
        return mni.service.forward_interval(mni, range, cur_seq)


REMOTE_INTERVAL_OPS = RemoteIntervalOps()


@dataclass
class Fault:
    """A secondary's partition that stopped answering, as the owner saw it."""

    host: str
    when: float
    during: str  # the callout that found out
    error: str
    unpinned: int  # pages the fence unpinned
    notifiers: list[str] = field(default_factory=list)


class OwnerService:
    """What an owner partition serves to secondaries on other partitions."""

    def __init__(self, partition: Partition, interconnect: Interconnect):
        self.part = partition
        self.name = partition.name
        self.interconnect = interconnect
        self.local = LocalOwner(partition)
        self.notifiers: dict[tuple[str, str], RemoteNotifier] = {}
        self.interval_notifiers: dict[tuple[str, str], RemoteIntervalNotifier] = {}
        # invariant: pins[host][pfn] == pins held by secondaries on host (their references)
        self.pins: dict[str, Counter[int]] = {}
        self.fenced_hosts: set[str] = set()
        self.faults: list[Fault] = []
        # host -> {request id -> (mm id, pfns)} of its latest pinning get_user_pages, so that a
        # request whose reply was lost can be undone (abort_pins); oldest forgotten first
        self._pin_requests: dict[str, dict[int, tuple[int, list[int]]]] = {}
        self._xpmem_attachers: dict[RemoteNotifier, RemoteXpmemAttacher] = {}
        self._unregistering: set[tuple[str, str]] = set()  # (host, notifier id) of unregisters in flight
        self._pagemaps: dict[tuple[str, str], RemotePagemap] = {}  # device memory of other partitions

    # -- requests from secondaries ----------------------------------------------------------

    def _notifier(self, host: str, notifier_id: str) -> RemoteNotifier:
        mn = self.notifiers.get((host, notifier_id))
        if mn is None:
            raise NotFound(f"no notifier {notifier_id!r} of partition {host} on {self.name}")
        return mn

    def _reader(self, host: str, notifier_id: str) -> RemoteNotifier | RemoteIntervalNotifier:
        """The stand-in of ``host``'s notifier ``notifier_id``, of either kind: what the reads
        and oracle reports of a secondary name."""
        mn = self.notifiers.get((host, notifier_id)) or self.interval_notifiers.get((host, notifier_id))
        if mn is None:
            raise NotFound(f"no notifier {notifier_id!r} of partition {host} on {self.name}")
        return mn

    def _interval(self, host: str, notifier_id: str) -> RemoteIntervalNotifier:
        mni = self.interval_notifiers.get((host, notifier_id))
        if mni is None:
            raise NotFound(f"no interval notifier {notifier_id!r} of partition {host} on {self.name}")
        return mni

    def _check_host(self, host: str) -> None:
        if host in self.fenced_hosts:
            raise Unreachable(f"partition {host} was fenced by {self.name} and may not come back")

    async def register(self, host: str, notifier_id: str, name: str, ops: list[str], mm_id: int) -> None:
        self._check_host(host)
        if (host, notifier_id) in self.notifiers:
            raise NotFound(f"notifier {notifier_id!r} of partition {host} is already registered on {self.name}")
        mn = remote_notifier_class(frozenset(ops), modern=self.part.core.modern)(self, host, notifier_id, name)
        self.notifiers[(host, notifier_id)] = mn
        try:
            await self.part.core.register(mn, self.part.mm(mm_id))
        except BaseException:
            del self.notifiers[(host, notifier_id)]
            raise

    async def unregister(self, host: str, notifier_id: str, mm_id: int) -> tuple[float, float, float]:
        mn = self._notifier(host, notifier_id)
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"no mm {mm_id} on partition {self.name}")
        key = (host, notifier_id)
        if key in self._unregistering:  # a retry racing the first try: one unregister runs
            raise NotFound(f"notifier {notifier_id!r} of partition {host} is being unregistered from {self.name}")
        self._unregistering.add(key)
        try:
            t = await self.part.core.unregister(mn, mm)
        finally:
            self._unregistering.discard(key)
        del self.notifiers[key]
        return (t.total_us, t.release_us, t.srcu_wait_us)

    async def put(self, host: str, notifier_id: str, mm_id: int) -> tuple[float, float, float]:
        """mmu_notifier_put() of a remote secondary (see ``NotifierCore.put``)."""
        mn = self._notifier(host, notifier_id)
        mm = self.part.mms.get(mm_id)
        if mm is None:
            raise NotFound(f"no mm {mm_id} on partition {self.name}")
        t = await self.part.core.put(mn, mm)
        del self.notifiers[(host, notifier_id)]
        return (t.total_us, t.release_us, t.srcu_wait_us)

    async def interval_insert(self, host: str, notifier_id: str, name: str, mm_id: int, start: int, length: int) -> int:
        """mmu_interval_notifier_insert() of ``host``'s notifier on mm ``mm_id``; returns the
        notifier's first sequence, for the secondary's own copy."""
        self._check_host(host)
        key = (host, notifier_id)
        if key in self.notifiers or key in self.interval_notifiers:
            raise InvalidArgument(f"notifier {notifier_id!r} of partition {host} is already registered on {self.name}")
        mni = RemoteIntervalNotifier(self, host, notifier_id, name)
        self.interval_notifiers[key] = mni
        try:
            await mmu_interval_notifier_insert(self.part.core, mni, self.part.mm(mm_id), start, length,
                                               REMOTE_INTERVAL_OPS)
        except BaseException:
            del self.interval_notifiers[key]
            raise
        return mni.invalidate_seq

    async def interval_remove(self, host: str, notifier_id: str) -> None:
        """mmu_interval_notifier_remove(): returns once no invalidate of it runs here."""
        mni = self._interval(host, notifier_id)
        key = (host, notifier_id)
        if key in self._unregistering:  # a retry racing the first try: one remove runs
            raise NotFound(f"interval notifier {notifier_id!r} of partition {host} is being removed from {self.name}")
        self._unregistering.add(key)
        try:
            await mmu_interval_notifier_remove(mni)
        finally:
            self._unregistering.discard(key)
        del self.interval_notifiers[key]

    async def interval_read_begin(self, host: str, notifier_id: str) -> int:
        """mmu_interval_read_begin() of ``host``'s notifier, here where the tree is."""
        self._check_host(host)
        return await mmu_interval_read_begin(self._interval(host, notifier_id))

    async def hmm_range_fault(self, host: str, notifier_id: str, mm_id: int, address: int, npages: int, write: bool,
                              notifier_seq: int, dev_private_owner: str | None = None) -> list[PageRef]:
        """hmm_range_fault() for ``host``'s interval notifier ``notifier_id`` (an ODP MR's): the
        walk here, where the mm is, against the stand-in's mirrored sequence (a lagging mirror
        only lets a stale answer through to the secondary's read_retry, which has the last
        word). Nothing is pinned, so nothing is kept for an abort. ``dev_private_owner``: an
        HMM device's pages in its own memory are reported as such."""
        self._check_host(host)
        return await self.local.hmm_range_fault(self._interval(host, notifier_id), mm_id, address, npages,
                                                write=write, notifier_seq=notifier_seq,
                                                dev_private_owner=dev_private_owner)

    async def migrate_vma_setup(self, host: str, notifier_id: str, mm_id: int, start: int, npages: int,
                                pgmap_owner: str, pagemap_id: str) -> tuple[int, list[MigrateSrc]]:
        """migrate_vma_setup() for ``host``'s device, whose memory its pagemap ``pagemap_id``
        there serves (``RemotePagemap``)."""
        self._check_host(host)
        pgmap = self._pagemaps.get((host, pagemap_id))
        if pgmap is None:
            pgmap = self._pagemaps[(host, pagemap_id)] = RemotePagemap(self, host, pagemap_id, pgmap_owner)
        elif pgmap.pgmap_owner != pgmap_owner:
            raise InvalidArgument(f"pagemap {pagemap_id!r} of {host} serves {pgmap.pgmap_owner!r}, not {pgmap_owner!r}")
        return await self.local.migrate_vma_setup(self._interval(host, notifier_id), mm_id, start, npages, pgmap)

    async def migrate_vma_finalize(self, host: str, notifier_id: str, migration_id: int, dst: list[int]) -> list[bool]:
        self._check_host(host)
        return await self.local.migrate_vma_finalize(self._interval(host, notifier_id), migration_id, dst)

    async def get_user_pages(
        self, host: str, mm_id: int, address: int, npages: int, write: bool, pin: bool, request_id: int = 0
    ) -> list[PageRef]:
        self._check_host(host)
        refs = await self.local.get_user_pages(mm_id, address, npages, write=write, pin=pin)
        if pin:
            if host in self.fenced_hosts:  # fenced while the lookup ran: give the pins back
                await self.local.put_user_pages(mm_id, [r.pfn for r in refs])
                raise Unreachable(f"partition {host} was fenced by {self.name} during get_user_pages")
            self.pins.setdefault(host, Counter()).update(r.pfn for r in refs)
            recent = self._pin_requests.setdefault(host, {})
            recent[request_id] = (mm_id, [r.pfn for r in refs])
            if len(recent) > PIN_REQUESTS_KEPT:
                del recent[next(iter(recent))]
        return refs

    async def abort_pins(self, host: str, request_id: int) -> int:
        """The pinning get_user_pages ``request_id`` of ``host`` got no answer there: if it
        was served, drop the pins it took (the secondary never learned of them). Returns the
        pages unpinned. Idempotent; nothing to do for a fenced host (the fence dropped its pins)."""
        mm_id, pfns = self._pin_requests.get(host, {}).pop(request_id, (0, []))
        if pfns:
            await self.put_user_pages(host, mm_id, pfns)
        return len(pfns)

    async def put_user_pages(self, host: str, mm_id: int, pfns: list[int]) -> None:
        held = self.pins.get(host, Counter())
        need = Counter(pfns)
        for pfn, n in need.items():  # all or nothing: check every frame before dropping any pin
            if held[pfn] < n:
                have = "no pin" if held[pfn] <= 0 else f"only {held[pfn]} pin(s), not {n},"
                raise NotFound(f"partition {host} holds {have} on frame {pfn} of {self.name}")
        held.subtract(need)
        await self.local.put_user_pages(mm_id, pfns)

    async def dma_read(self, host: str, notifier_id: str, mm_id: int, address: int, pfn: int, expected: tuple[int, int, int]) -> tuple[int, int, int]:
        self._check_host(host)
        return await self.local.dma_read(self._reader(host, notifier_id), mm_id, address, pfn, expected)

    async def exit(self, mm_id: int) -> tuple[float, float, float]:
        """The owning process of mm ``mm_id`` exits (mmput -> exit_mmap): (total, release,
        SRCU wait) in microseconds."""
        t = await exit_mmap(self.part, self.part.mm(mm_id))
        return (t.total_us, t.release_us, t.srcu_wait_us)

    # -- XPMEM's source side, for drivers on other partitions --------------------------------

    async def xpmem_make(self, mm_id: int, vaddr: int, size: int, permit_mode: int, cred: XpmemCred) -> int:
        return self.part.xpmem.make(mm_id, vaddr, size, permit_mode, cred)

    async def xpmem_get(self, segid: int, flags: int, cred: XpmemCred) -> int:
        return self.part.xpmem.get(segid, flags, cred)

    async def xpmem_attach(self, host: str, notifier_id: str, apid: int, offset: int, size: int, cred: XpmemCred) -> XpmemGrant:
        """Record the attachment as living with ``host``'s notifier ``notifier_id``: release
        and remove reach it there (``RemoteXpmemAttacher``)."""
        self._check_host(host)
        mn = self._notifier(host, notifier_id)
        attacher = self._xpmem_attachers.get(mn)
        if attacher is None:
            attacher = self._xpmem_attachers[mn] = RemoteXpmemAttacher(self, mn)
        return self.part.xpmem.attach(apid, offset, size, cred, attacher)

    async def xpmem_detach(self, host: str, attachment_id: int, cred: XpmemCred | None) -> None:
        entry = self.part.xpmem.attachments.get(attachment_id)
        if entry is not None:
            attacher = entry[1]
            if not (isinstance(attacher, RemoteXpmemAttacher) and attacher.mn.host == host):
                raise PermissionDenied(f"xpmem_detach: attachment {attachment_id} does not live on partition {host}")
        self.part.xpmem.detached(attachment_id, cred)

    async def xpmem_release(self, apid: int, cred: XpmemCred) -> None:
        await self.part.xpmem.release(apid, cred)

    async def xpmem_remove(self, segid: int, cred: XpmemCred) -> None:
        await self.part.xpmem.remove(segid, cred)

    # -- oracle reports (not modelled traffic) ----------------------------------------------

    def report_translations(self, host: str, notifier_id: str, mm_id: int, address: int, pfns: list[int], established: bool) -> None:
        """A report from a secondary's partition in another process (the gRPC sink): one
        translation of ``address`` to ``pfns[0]`` established, or translations to ``pfns``
        dropped."""
        if host in self.fenced_hosts:
            return
        mn = self._reader(host, notifier_id)
        nframes = self.part.frames.nframes
        bad = [p for p in pfns if not 0 <= p < nframes]
        if bad:
            raise InvalidArgument(f"frame {bad[0]} is not a frame of partition {self.name} (0..{nframes - 1})")
        if established:
            if len(pfns) != 1:
                raise InvalidArgument(f"an established translation names one frame, got {len(pfns)}: {pfns[:4]}")
            self.translation_established(host, notifier_id, mm_id, address, pfns[0])
        else:
            if not self.part.oracle.holds(mn, pfns):
                raise InvalidArgument(f"notifier {notifier_id!r} of {host} does not hold translations to all of {pfns[:8]}")
            self.translations_dropped(host, notifier_id, mm_id, pfns)

    def translation_established(self, host: str, notifier_id: str, mm_id: int, address: int, pfn: int) -> None:
        if host in self.fenced_hosts:
            return  # a fenced partition can no longer reach this partition's memory
        self.local.translation_established(self._reader(host, notifier_id), mm_id, address, pfn)

    def translations_dropped(self, host: str, notifier_id: str, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        if host in self.fenced_hosts:
            return  # the fence already forgot every translation of this host
        self.local.translations_dropped(self._reader(host, notifier_id), mm_id, pfns)

    # -- callouts to secondaries ------------------------------------------------------------

    async def forward(self, mn: RemoteNotifier, op: str, mm: Mm, args: tuple[Any, ...]) -> Any:
        """A callout of ``mn``: a request to its host's SecondaryService, or nothing if the
        host was fenced. ``Unreachable`` fences the host and the callout returns as if the
        secondary had done its part (it can no longer touch the owner's memory). ``NotFound``
        (the host has no such notifier, or it lacks the op: it went away, or was never there)
        fences that notifier alone: no more callouts, its translations forgotten."""
        if mn.fenced:
            return 0
        try:
            return await self.interconnect.call(
                self.name, mn.host, SECONDARY_SERVICE, "callout", mn.notifier_id, op, mm.id, mm.name, args,
                mm.invalidate_seq, kind="callout",
            )
        except Unreachable as e:
            self.fence(mn.host, during=f"{op} of {mn.name}", error=str(e))
            return 0
        except NotFound as e:
            mn.fenced = True
            self.part.oracle.forget_notifier(mn)
            self.faults.append(Fault(mn.host, self.part.runtime.now(), f"{op} of {mn.name}", str(e), 0, [mn.name]))
            return 0

    async def forward_interval(self, mni: RemoteIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> bool:
        """An invalidate of ``mni``: a request to its host, whose answer is the secondary's
        verdict and its notifier's sequence after it (mirrored here). A fenced or unreachable
        host counts as done (True), as ``forward`` treats an hlist callout."""
        if mni.fenced:
            return True
        try:
            ok, seq = await self.interconnect.call(
                self.name, mni.host, SECONDARY_SERVICE, "interval_invalidate", mni.notifier_id, range.mm.id,
                range.mm.name, range.start, range.end, int(range.event), range.flags, cur_seq,
                # a MIGRATE range's pgmap owner (the sim's wire only: mmusim.v2 has no field for it yet)
                *(() if range.owner is None else (range.owner,)), kind="callout",
            )
        except Unreachable as e:
            self.fence(mni.host, during=f"invalidate of {mni.name}", error=str(e))
            return True
        except NotFound as e:
            mni.fenced = True
            self.part.oracle.forget_notifier(mni)
            self.faults.append(Fault(mni.host, self.part.runtime.now(), f"invalidate of {mni.name}", str(e), 0, [mni.name]))
            return True
        if seq not in (mni.invalidate_seq, cur_seq):
            raise InvalidArgument(f"invalidate of {mni.name} answered sequence {seq!r}: neither its last "
                                  f"({mni.invalidate_seq}) nor this invalidation's ({cur_seq})")
        mni.invalidate_seq = max(mni.invalidate_seq, seq)
        return ok

    def fence(self, host: str, *, during: str, error: str) -> None:
        """Treat every secondary of ``host`` as released and drop its pins (see module doc)."""
        if host in self.fenced_hosts:
            return
        self.fenced_hosts.add(host)
        names = []
        for (h, _), mn in [*self.notifiers.items(), *self.interval_notifiers.items()]:
            if h == host:
                mn.fenced = True
                names.append(mn.name)
                self.part.oracle.forget_notifier(mn)
        held = self.pins.pop(host, Counter())
        self._pin_requests.pop(host, None)  # the fence drops every pin; nothing left to abort
        pfns = [pfn for pfn, n in held.items() for _ in range(n)]
        if pfns:
            self.part.frames.unpin(np.asarray(pfns, dtype=np.int64))
        self.faults.append(Fault(host, self.part.runtime.now(), during, error, len(pfns), names))
        self.part.runtime.trace("fence", f"{self.name} fenced {host} during {during}: {len(pfns)} unpinned")


class RemotePagemap:
    """The dev_pagemap_ops of a device on another partition, as the owner calls them
    (``nodes.migrate_device.DevPagemapOps``): requests to the device's partition. A device
    that does not answer a migrate_to_ram leaves the fault with VM_FAULT_SIGBUS (the data is in
    its memory); a page_free it does not hear frees nothing on a partition that is gone."""

    def __init__(self, service: OwnerService, host: str, pagemap_id: str, pgmap_owner: str):
        self.service = service
        self.host = host
        self.pagemap_id = pagemap_id
        self.pgmap_owner = pgmap_owner

    async def migrate_to_ram(self, mm_id: int, address: int, dpfn: int) -> tuple[int, int]:
        s = self.service
        owner, vpn = await s.interconnect.call(s.name, self.host, SECONDARY_SERVICE, "devmem_migrate_to_ram",
                                               self.pagemap_id, mm_id, address, dpfn, kind="fault")
        return int(owner), int(vpn)

    async def page_free(self, dpfns: list[int]) -> None:
        s = self.service
        try:
            await s.interconnect.call(s.name, self.host, SECONDARY_SERVICE, "devmem_page_free", self.pagemap_id,
                                      [int(d) for d in dpfns], kind="callout")
        except Unreachable as e:
            s.fence(self.host, during=f"page_free of {self.pgmap_owner}", error=str(e))


class RemoteXpmemAttacher:
    """Where XPMEM attachments made through a remote driver live, as the source side reaches
    them: a request to the driver's partition to detach them. A partition that does not answer
    is fenced, which drops every pin it held, so the detach is done either way."""

    def __init__(self, service: OwnerService, mn: RemoteNotifier):
        self.service = service
        self.mn = mn

    async def detach_by_owner(self, attachment_ids: list[int]) -> None:
        mn = self.mn
        if mn.fenced:
            return
        try:
            await self.service.interconnect.call(
                self.service.name, mn.host, SECONDARY_SERVICE, "xpmem_detach", mn.notifier_id, list(attachment_ids),
                kind="callout",
            )
        except Unreachable as e:
            self.service.fence(mn.host, during=f"xpmem detach of {mn.name}", error=str(e))
        except NotFound:
            pass  # no XPMEM driver there by that id (gone, or never one): nothing to detach


# -- the secondary's side -----------------------------------------------------------------------


PROBE_NOTIFIER = "probe"  # the id of every SecondaryService's NullNotifier (added ids hold a '#')


class NullNotifier(MmuNotifier):
    """The instrument's probe target, not a secondary of the modelled machine: its
    ``invalidate_range_start`` does nothing, so a callout to it costs only what every callout
    costs besides its secondary's work (the transport, the request's decoding, the notifier's
    lookup and dispatch, the answer). The ray backend times callouts to it at bring-up: the
    floor under each of a run's callouts (``cluster/ray_backend.py``)."""

    def __init__(self) -> None:
        super().__init__("null notifier")

    def invalidate_range_start(self, mm: Any, start: int, end: int) -> None:
        return None


class SecondaryService:
    """What a partition hosting secondaries serves to owners: the callouts. Besides the
    secondaries added here, it serves a ``NullNotifier`` as ``PROBE_NOTIFIER``, registered on
    no mm (no owner calls it unasked)."""

    def __init__(self, name: str):
        self.name = name
        self.notifiers: dict[str, MmuNotifier | MmuIntervalNotifier] = {PROBE_NOTIFIER: NullNotifier()}
        self.pagemaps: dict[str, DevPagemapOps] = {}  # device memory served to owners (HMM migration)
        self._next_id = 0
        # (notifier class, op) of the callouts found to name an op of a notifier of that class: a
        # notifier of that class needs no second look (an op is a method of its class, see
        # ``has_op``); a few entries per class, whatever the run's length
        self._callout_ops: set[tuple[type, str]] = set()
        # set when oracle reports travel asynchronously (to an owner in another process): the
        # reports a callout makes then reach their owner before the callout returns, as they
        # do in-process; it answers what to await, or None when no report is on its way
        self.flush_reports: Callable[[], Awaitable[None] | None] | None = None

    def add_pagemap(self, pgmap: DevPagemapOps) -> str:
        """Serve the dev_pagemap_ops of a device here to the owners it migrates to; its id (the
        same for the same pgmap: one device, one pagemap)."""
        for pid, known in self.pagemaps.items():
            if known is pgmap:
                return pid
        self._next_id += 1
        pid = f"{pgmap.pgmap_owner}#{self._next_id}"
        self.pagemaps[pid] = pgmap
        return pid

    def _pagemap(self, pagemap_id: str) -> DevPagemapOps:
        pgmap = self.pagemaps.get(pagemap_id)
        if pgmap is None:
            raise NotFound(f"no device pagemap {pagemap_id!r} on partition {self.name}")
        return pgmap

    async def devmem_migrate_to_ram(self, pagemap_id: str, mm_id: int, address: int, dpfn: int) -> tuple[int, int]:
        """An owner's CPU faults on a page in this device's memory (dev_pagemap_ops.migrate_to_ram)."""
        out = await self._pagemap(pagemap_id).migrate_to_ram(mm_id, address, dpfn)
        if self.flush_reports is not None and (reports := self.flush_reports()) is not None:
            await reports
        return out

    async def devmem_page_free(self, pagemap_id: str, dpfns: list[int]) -> None:
        """dev_pagemap_ops.page_free() of pages no owner pte refers to any more."""
        await self._pagemap(pagemap_id).page_free(list(dpfns))

    def add(self, mn: MmuNotifier | MmuIntervalNotifier) -> str:
        self._next_id += 1
        nid = f"{mn.name}#{self._next_id}"
        self.notifiers[nid] = mn
        return nid

    async def callout(self, notifier_id: str, op: str, mm_id: int, mm_name: str, args: tuple[Any, ...],
                      invalidate_seq: int = 0) -> Any:
        """Call ``op`` of notifier ``notifier_id`` here about the owner's mm ``mm_id``, as the
        owner's core would: the mm is an ``MmRef`` carrying the owner's invalidate sequence as
        the callout left (a negative one is ``InvalidArgument``)."""
        mn = self.notifiers.get(notifier_id)
        if (type(mn), op) not in self._callout_ops:  # not a class and op already found good
            if mn is None:
                raise NotFound(f"no notifier {notifier_id!r} on partition {self.name}")
            if not isinstance(mn, MmuNotifier) or op not in OPS or not has_op(mn, op):
                raise NotFound(f"notifier {notifier_id!r} on partition {self.name} has no op {op!r}")
            self._callout_ops.add((type(mn), op))
        if not isinstance(invalidate_seq, int) or invalidate_seq < 0:
            raise InvalidArgument(f"callout {op} to {notifier_id!r} on partition {self.name}: invalidate_seq "
                                  f"{invalidate_seq!r} is not a sequence number (an integer >= 0)")
        r = getattr(mn, op)(MmRef(mm_id, mm_name, invalidate_seq), *args)  # (call_maybe_async, without its frame)
        result = await (r if type(r) is CoroutineType else op_awaitable(r))
        if self.flush_reports is not None and (reports := self.flush_reports()) is not None:
            await reports
        return result


    async def interval_invalidate(self, notifier_id: str, mm_id: int, mm_name: str, start: int, end: int, event: int,
                                  flags: int, cur_seq: int, owner: str | None = None) -> tuple[bool, int]:
        """The owner's tree calls ``ops.invalidate`` of interval notifier ``notifier_id`` here:
        returns its verdict and the notifier's sequence after it. ``owner`` is a MIGRATE
        range's pgmap owner (``MmuNotifierRange.owner``), named by a string on the wire."""
        mni = self.notifiers.get(notifier_id)
        if not isinstance(mni, MmuIntervalNotifier) or mni.ops is None:
            raise NotFound(f"no interval notifier {notifier_id!r} on partition {self.name}")
        what = f"invalidate of {notifier_id!r} on partition {self.name}"
        if not isinstance(cur_seq, int) or cur_seq < 0 or not cur_seq & 1:
            raise InvalidArgument(f"{what}: cur_seq {cur_seq!r} is not an invalidation's (odd) sequence")
        if not isinstance(start, int) or not isinstance(end, int) or not 0 <= start < end:
            raise InvalidArgument(f"{what}: range [{start!r}, {end!r}) is empty or negative")
        if event not in MmuNotifierEvent.__members__.values():
            raise InvalidArgument(f"{what}: event {event!r} is not an mmu_notifier_event")
        if owner is not None and not isinstance(owner, str):
            raise InvalidArgument(f"{what}: pgmap owner {owner!r} is not a name (a string)")
        rng = MmuNotifierRange(MmRef(mm_id, mm_name), start, end, MmuNotifierEvent(event), flags, owner)  # type: ignore[arg-type]
        ok = await call_maybe_async(mni.ops.invalidate, mni, rng, cur_seq)
        if self.flush_reports is not None and (reports := self.flush_reports()) is not None:
            await reports
        if not isinstance(ok, bool):
            raise InvalidArgument(f"{what}: the driver answered {ok!r}, not a bool")
        return ok, mni.invalidate_seq

    async def xpmem_detach(self, notifier_id: str, attachment_ids: list[int]) -> None:
        """The source side of an XPMEM driver here tears these attachments down."""
        mn = self.notifiers.get(notifier_id)
        if mn is None:
            raise NotFound(f"no notifier {notifier_id!r} on partition {self.name}")
        detach = getattr(getattr(mn, "driver", None), "detach_by_owner", None)
        if detach is None:
            raise NotFound(f"notifier {notifier_id!r} on partition {self.name} is not an XPMEM driver's")
        await detach(list(attachment_ids))
        if self.flush_reports is not None and (reports := self.flush_reports()) is not None:
            await reports


class RemoteOwner:
    """The ``OwnerPort`` of secondaries on ``host`` whose mm lives on partition ``owner``."""

    def __init__(self, interconnect: Interconnect, host: SecondaryService, owner: str, oracle_sink: Any):
        self.interconnect = interconnect
        self.host = host
        self.partition = owner
        self.oracle_sink = oracle_sink
        self._ids: dict[MmuNotifier | MmuIntervalNotifier, str] = {}
        self._requests = 0  # ids of pinning get_user_pages requests

    def _id(self, mn: MmuNotifier | MmuIntervalNotifier) -> str:
        nid = self._ids.get(mn)
        if nid is None:
            raise NotFound(f"notifier {mn.name} was never registered through partition {self.host.name}")
        return nid

    async def _call(self, method: str, *args: Any, kind: str = "rpc") -> Any:
        flush = getattr(self.oracle_sink, "flush", None)
        if flush is not None:  # a sink in another process: reports made so far arrive first
            await flush()
        return await self.interconnect.call(self.host.name, self.partition, OWNER_SERVICE, method, *args, kind=kind)

    async def get_user_pages(self, mm_id: int, address: int, npages: int, *, write: bool, pin: bool) -> list[PageRef]:
        """A pinning request whose answer is lost may still have pinned pages on the owner:
        then the pins are undone (``abort_pins``, retried a few times) before ``Unreachable``
        reaches the caller, so no pin outlives a request its secondary never saw answered."""
        if not pin:
            return await self._call("get_user_pages", self.host.name, mm_id, address, npages, write, pin, kind="fault")
        self._requests += 1
        rid = self._requests
        try:
            return await self._call("get_user_pages", self.host.name, mm_id, address, npages, write, pin, rid, kind="fault")
        except Unreachable:
            for _ in range(ABORT_ATTEMPTS):
                try:
                    await self._call("abort_pins", self.host.name, rid)
                    break
                except Unreachable:
                    continue
            raise

    async def put_user_pages(self, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        await self._call("put_user_pages", self.host.name, mm_id, [int(p) for p in pfns])

    async def register(self, mn: MmuNotifier, mm_id: int, current: Any = None) -> None:
        if current is not None:
            raise ValueError("a remote register cannot carry the caller's signal state")
        nid = self.host.add(mn)
        self._ids[mn] = nid
        ops = [op for op in OPS if has_op(mn, op)]
        try:
            await self._call("register", self.host.name, nid, mn.name, ops, mm_id)
        except BaseException:
            del self._ids[mn]
            self.host.notifiers.pop(nid, None)
            raise

    async def unregister(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        nid = self._id(mn)
        total, release, wait = await self._call("unregister", self.host.name, nid, mm_id)
        del self._ids[mn]
        self.host.notifiers.pop(nid, None)
        return TeardownTiming(total, release, wait)

    async def put(self, mn: MmuNotifier, mm_id: int) -> TeardownTiming:
        nid = self._id(mn)
        total, release, wait = await self._call("put", self.host.name, nid, mm_id)
        del self._ids[mn]
        self.host.notifiers.pop(nid, None)
        return TeardownTiming(total, release, wait)

    async def interval_notifier_insert(self, mni: MmuIntervalNotifier, mm_id: int, start: int, length: int,
                                       ops: MmuIntervalNotifierOps) -> None:
        """The notifier is ready here before the request leaves (an invalidate may reach it
        before the answer does); its first sequence comes with the answer, unless an invalidate
        was faster (sequences only grow)."""
        if mni in self._ids:
            raise InvalidArgument(f"interval notifier {mni.name} is already inserted through partition {self.host.name}")
        nid = self.host.add(mni)
        self._ids[mni] = nid
        mni.mm, mni.ops, mni.start, mni.last = MmRef(mm_id, f"{self.partition}/mm{mm_id}"), ops, start, start + length - 1
        mni.invalidate_seq = 0
        try:
            seq = await self._call("interval_insert", self.host.name, nid, mni.name, mm_id, start, length)
        except BaseException:
            del self._ids[mni]
            self.host.notifiers.pop(nid, None)
            mni.ops = None
            raise
        mni.invalidate_seq = max(mni.invalidate_seq, seq)

    async def interval_notifier_remove(self, mni: MmuIntervalNotifier) -> None:
        nid = self._id(mni)
        await self._call("interval_remove", self.host.name, nid)
        del self._ids[mni]
        self.host.notifiers.pop(nid, None)

    async def interval_read_begin(self, mni: MmuIntervalNotifier) -> int:
        return await self._call("interval_read_begin", self.host.name, self._id(mni), kind="fault")

    async def hmm_range_fault(self, mni: MmuIntervalNotifier, mm_id: int, address: int, npages: int, *,
                              write: bool, notifier_seq: int, dev_private_owner: str | None = None) -> list[PageRef]:
        """A request to the owner (no pin is taken there, so a lost answer leaves nothing to undo).
        ``dev_private_owner`` travels only when given (the sim's wire: mmusim.v2 has no field)."""
        return await self._call("hmm_range_fault", self.host.name, self._id(mni), mm_id, address, npages, write,
                                notifier_seq, *(() if dev_private_owner is None else (dev_private_owner,)),
                                kind="fault")

    async def migrate_vma_setup(self, mni: MmuIntervalNotifier, mm_id: int, start: int, npages: int,
                                pgmap: DevPagemapOps) -> tuple[int, list[MigrateSrc]]:
        """The device's pagemap is served here (``SecondaryService.add_pagemap``, once) for the
        owner's calls back; the request names it."""
        return await self._call("migrate_vma_setup", self.host.name, self._id(mni), mm_id, start, npages,
                                pgmap.pgmap_owner, self.host.add_pagemap(pgmap))

    async def migrate_vma_finalize(self, mni: MmuIntervalNotifier, migration_id: int, dst: list[int]) -> list[bool]:
        return await self._call("migrate_vma_finalize", self.host.name, self._id(mni), migration_id,
                                [int(d) for d in dst])

    async def dma_read(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int, expected: tuple[int, int, int]) -> tuple[int, int, int]:
        return await self._call("dma_read", self.host.name, self._id(mn), mm_id, address, pfn, expected, kind="read")

    async def xpmem_make(self, mm_id: int, vaddr: int, size: int, permit_mode: int, cred: XpmemCred) -> int:
        return await self._call("xpmem_make", mm_id, vaddr, size, permit_mode, cred)

    async def xpmem_get(self, segid: int, flags: int, cred: XpmemCred) -> int:
        return await self._call("xpmem_get", segid, flags, cred)

    async def xpmem_attach(self, mn: MmuNotifier, apid: int, offset: int, size: int, cred: XpmemCred) -> XpmemGrant:
        return await self._call("xpmem_attach", self.host.name, self._id(mn), apid, offset, size, cred)

    async def xpmem_detach(self, mn: MmuNotifier, attachment_id: int, cred: XpmemCred | None) -> None:
        await self._call("xpmem_detach", self.host.name, attachment_id, cred)

    async def xpmem_release(self, apid: int, cred: XpmemCred) -> None:
        await self._call("xpmem_release", apid, cred)

    async def xpmem_remove(self, segid: int, cred: XpmemCred) -> None:
        await self._call("xpmem_remove", segid, cred)

    def translation_established(self, mn: MmuNotifier, mm_id: int, address: int, pfn: int) -> None:
        self.oracle_sink.translation_established(self.host.name, self._id(mn), mm_id, address, pfn)

    def translations_dropped(self, mn: MmuNotifier, mm_id: int, pfns: list[int] | np.ndarray) -> None:
        self.oracle_sink.translations_dropped(self.host.name, self._id(mn), mm_id, pfns)
