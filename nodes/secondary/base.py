"""What every secondary MMU of this package shares: an owner port, an mm id, registration.

A secondary MMU lives (in this project) on another partition than the mm it maps. It reaches
the owning partition only through an ``OwnerPort`` (``nodes.owner``): get_user_pages, unpin,
register/unregister its notifier, report the translations it installs and drops, and read
through them (remote DMA). It never touches the owner's frames or page tables itself, so the
same class runs unchanged when the port is an RPC client.

``SecondaryMmu`` adds nothing to the notifier ops: the core calls an op only if the subclass
overrides it (``nodes.notifier.has_op``), exactly as the kernel calls ``mn->ops->op`` only if
the driver filled it in.

Two pieces the secondaries share for ordering their own work against the owner's
invalidations across the network: ``InvalidateSeq`` (a fault's install is retried if an
invalidation of its page began or ended on the owner after the lookup: the guarded GRU dropin)
and ``InflightAccesses`` (an invalidation returns only once the accesses issued through the
translations it dropped are done: the GRU's TLB flush, XPMEM's zap).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Awaitable, Collection, TypeVar

from nodes.locks import WaitQueue
from nodes.mm import PAGE_SHIFT, PAGE_SIZE
from nodes.notifier import MmuNotifier, TeardownTiming, has_op
from nodes.owner import MmRef
from nodes.runtime import Runtime, call_maybe_async

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import TaskSignals

T = TypeVar("T")


def page_align(address: int) -> int:
    """The page containing ``address`` (PAGE_MASK)."""
    return address & ~(PAGE_SIZE - 1)


def vpn_span(start: int, end: int) -> tuple[int, int]:
    """The virtual page numbers [first, last] an address range [start, end) touches (the range
    of an exported invalidate need not be page aligned)."""
    return start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT


def keys_in_span(entries: Collection[int], first: int, last: int) -> list[int]:
    """The keys of ``entries`` (a dict or set keyed by page number) within [first, last], found
    by walking whichever is smaller: the span or the entries. An invalidation of a huge range
    (an exported invalidate up to TASK_SIZE) then costs O(entries), not O(pages in range)."""
    if last - first + 1 <= len(entries):
        return [k for k in range(first, last + 1) if k in entries]
    return [k for k in entries if first <= k <= last]


class SecondaryMmu(MmuNotifier):
    """A secondary MMU's notifier bound to one mm of an owning partition, reached via a port.

    Subclasses override the ops their kernel driver implements and nothing else.
    """

    def __init__(self, runtime: Runtime, owner: "OwnerPort", mm_id: int, name: str):
        super().__init__(name)
        self.runtime = runtime
        self.owner = owner
        self.mm_id = mm_id

    async def register(self, current: "TaskSignals | None" = None) -> None:
        """mmu_notifier_register() of this notifier on the owner's mm ``mm_id``."""
        await self.owner.register(self, self.mm_id, current)

    async def unregister(self) -> TeardownTiming:
        """mmu_notifier_unregister(): returns once no method of this notifier can run."""
        return await self.owner.unregister(self, self.mm_id)

    async def put(self) -> TeardownTiming:
        """The driver is done with the mm: it tears its own state down (its ->release, run by
        itself rather than called by the core), then mmu_notifier_put() (Linux 5.4), which
        returns without waiting for callouts in flight; see ``NotifierCore.put``."""
        if has_op(self, "release"):
            await call_maybe_async(self.release, MmRef(self.mm_id, f"mm{self.mm_id}"))
        return await self.owner.put(self, self.mm_id)


class SeqRead:
    """One lookup in flight, as ``InvalidateSeq`` follows it: the pages [start, end) it looks
    up and the latest owner sequence of an overlapping callout that arrived meanwhile."""

    __slots__ = ("start", "end", "seen")

    def __init__(self, start: int, end: int):
        self.start = start
        self.end = end
        self.seen = -1  # no overlapping callout arrived yet

    def retry(self, looked_up_at: int) -> bool:
        """mmu_interval_read_retry(): an invalidation of these pages began or ended on the owner
        after the lookup (whose answer carried ``looked_up_at``), and its callout arrived here
        before the answer."""
        return self.seen > looked_up_at


class InvalidateSeq:
    """The owner's invalidate sequence, as a secondary on another partition follows it for its
    lookups in flight: the guard of a remote fault.

    The pieces are the kernel's, spread over two partitions: the owner's core bumps
    ``invalidate_seq`` of the mm when an invalidation begins or a range ends
    (``NotifierCore._bump_invalidate_seq``, as ``mn_itree_inv_start_range()``/
    ``mn_itree_inv_end()`` bump ``subscriptions->invalidate_seq``); a fault's answer carries the
    value read before its lookup (``PageRef.invalidate_seq``: mmu_interval_read_begin()); each
    callout carries the value after its bump (``MmRef.invalidate_seq``: the ``cur_seq`` an
    interval notifier's ->invalidate() is given) and the secondary records it for the lookups
    in flight that it overlaps (``invalidated``: mmu_interval_set_seq()); before installing, the
    secondary retries if one of them is later than its answer's (``SeqRead.retry``:
    mmu_interval_read_retry(), KVM's ``mmu_notifier_seq != mmu_seq``). The other half of KVM's
    mmu_notifier_retry(), ``mmu_notifier_count != 0``, is the secondary's own count of ranges
    open (the GRU's ``ms_range_active``). Check and install happen with no suspension point
    between them, as the kernel does both under the driver's lock.

    Why the answer's sequence alone is not enough, and why a callout's is compared only with
    the lookups it overlaps while they are in flight: the secondary cannot read the owner's
    sequence at install time (that would be another round trip), but every invalidation that
    can make the answer stale calls this secondary before the owner frees or changes the page,
    and so reaches it either before the answer (it is recorded here: retry) or after (the
    callout flushes what was installed). A callout that began before the lookup carries a
    sequence the answer already includes. A sequence recorded only for the lookups in flight
    also bounds what a wrong one can do: one retry of each, not every later fault.
    """

    def __init__(self) -> None:
        self._reads: set[SeqRead] = set()

    def read_begin(self, start: int, end: int) -> SeqRead:
        """A lookup of [start, end) is about to be sent: follow it until ``read_end``."""
        read = SeqRead(start, end)
        self._reads.add(read)
        return read

    def read_end(self, read: SeqRead) -> None:
        self._reads.discard(read)

    def invalidated(self, seq: int, start: int, end: int) -> None:
        """A callout about [start, end) carrying the owner's sequence ``seq`` arrived (call it
        before the op's first suspension point)."""
        for read in self._reads:
            if read.start < end and start < read.end and seq > read.seen:
                read.seen = seq


class InflightAccesses:
    """The accesses a secondary issued through its translations and that have not completed,
    per page, and the fence an invalidation waits on before it returns.

    Hardware completes an invalidation only once the accesses already issued through the
    translations it drops are done: the GRU's TLB flush, like a PCIe ATS Invalidate Request,
    is acknowledged (ATS: the Invalidate Completion) only after every request that used the
    old translation has completed, and a CPU acknowledges a TLB-shootdown IPI only after its
    loads through the old entry retired. Without this fence a remote read issued through a valid
    translation could reach the owner after the invalidation returned and the frame was freed.
    It is always on: it is what the hardware does, not a variant to compare.

        access (secondary partition)          munmap (owner partition)
        ----------------------------          ------------------------
        TLB hit: dma_read ---- request --->   (on the wire)
                                              range_start -> flush: entry dropped,
                                                fence: wait for the access ...
                          <--- reply ------   read served: the frame is still the page's
        access done: fence returns  ------>   ... range_start returns, zap, range_end,
                                              pages freed
        [Required: no access issued through a dropped translation is served after the
         invalidation that dropped it returned]
    """

    def __init__(self, name: str):
        self._next = 0
        self._live: dict[int, int] = {}  # access number -> its key (page); the accesses in flight
        self._done = WaitQueue(f"{name}.inflight")

    def __len__(self) -> int:
        return len(self._live)

    async def access(self, key: int, request: Awaitable[T]) -> T:
        """Await ``request``, an access through the translation of page ``key``, counted in
        flight until it completes (or fails)."""
        ticket = self._next
        self._next += 1
        self._live[ticket] = key
        try:
            return await request
        finally:
            del self._live[ticket]
            self._done.wake_all()

    async def fence(self, first: int, last: int) -> bool:
        """Wait until every access to a page in [first, last] that is in flight now has
        completed (accesses issued later are not waited for); returns whether it had to wait.
        Call it after the translations were dropped, so that no new access starts through
        them. Returns at once, without a suspension point, when none is in flight."""
        issued = [t for t, key in self._live.items() if first <= key <= last]
        waited = False
        while any(t in self._live for t in issued):
            waited = True
            await self._done.wait()
        return waited
