"""The MMU-notifier core of one partition, with the semantics of Linux v3.10
(``mm/mmu_notifier.c`` after d34883d4e3, ``include/linux/mmu_notifier.h``).

A secondary MMU subclasses ``MmuNotifier`` and overrides the ops it implements; the core calls
an op only if it is overridden, exactly as the kernel calls ``mn->ops->op`` only if non-NULL.
Every callout wrapper has the same shape: take the SRCU read lock, walk the mm's notifier list
(an RCU hlist) **sequentially**, call each present op, drop the read lock. Because the SRCU
domain is global to the partition (``srcu.scope: global``), ``synchronize()`` in unregister and
in release at exit waits for every callout in flight on the partition, for any mm
(21a92735f6). The ``parallel`` fan-out (all notifiers called at once) is an mmusim option, off
by default; the kernel only walks sequentially.

The modes ``v5.10`` and ``v6.6`` (``MODERN``) are the modern core beside that history: each range
is a ``MmuNotifierRange`` with its event and flags; a range that may not block (the OOM reaper's,
``nodes.vmops.oom_reap_task``) has its callouts run as in non_block_start() and a notifier may
refuse it with -EAGAIN; ->invalidate_range (v6.6: ->arch_invalidate_secondary_tlbs) and
->clear_young are called, ->invalidate_page is not; mmu_notifier_get/put count users. Each
difference names its commit where it is made.

Unregister racing exit (the reason ->release may run twice, and why unregister must
synchronize even when it did not call ->release itself):

    exit_mmap (task B)                      mmu_notifier_unregister (task A)
    ------------------                      ---------------------------------
    srcu_read_lock
    ->release(mn)   [sleeps: remote]        hashed? yes
                                            srcu_read_lock; ->release(mn); unlock
    srcu_read_unlock
    lock; hlist_del_init_rcu(mn); unlock    lock; hlist_del_init_rcu(mn) [no-op]; unlock
    synchronize_srcu                        synchronize_srcu
    [Required: no method of mn runs after either synchronize returns; ->release at most twice]
"""

from __future__ import annotations

import contextvars
import enum
import errno
import functools
from dataclasses import dataclass
from types import CoroutineType
from typing import TYPE_CHECKING, Any, Awaitable, Callable, Iterator

from nodes.errors import InvalidArgument, NullPointerDereference, SleepingInAtomicContext
from nodes.mm import Mm, mm_drop_all_locks, mm_take_all_locks
from nodes.runtime import Runtime, SpinLock, TaskSignals, call_maybe_async, current_cpu, op_awaitable, run_atomic, wait_all
from nodes.srcu_base import SrcuBase

if TYPE_CHECKING:
    from nodes.interval import MmuItree
    from nodes.oracle import Oracle

FANOUTS = ("sequential", "parallel")


class MmuNotifier:
    """One secondary MMU's notifier (struct mmu_notifier + its mmu_notifier_ops).

    Override the ops the secondary implements; leave the others alone (absent). Sleepable ops
    may be ``async def``; the three atomic ops may be ``async def`` too (a remote secondary's
    are), but they are driven in atomic context and any suspension raises
    ``SleepingInAtomicContext`` naming the op and this notifier.
    """

    #: A driver written against the modern ops: under the v5.10 and v6.6 cores its
    #: invalidate_range_start/end get the ``MmuNotifierRange`` alone (5d6527a784f7). Others get
    #: (mm, start, end) there too: the 5.10 GRU, XPMEM and KVM drivers read only range->mm,
    #: ->start and ->end, so their v3.10 ops stand for them unchanged.
    takes_range = False

    def __init__(self, name: str):
        self.name = name
        self.hlist = HlistNode(self)
        self.mm: Mm | None = None  # the mm it was registered on
        self.users = 0  # subscription->users (2c7933f53f6b): gets not yet put; 1 from register

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name})"

    def release(self, mm: Mm) -> Any:
        """Called either by unregister or when the mm is being destroyed by exit_mmap, always
        before all pages are freed, under the SRCU read lock. May sleep. The secondary must
        drop every mapping of ``mm`` and stop establishing new ones: after it returns no
        secondary access to ``mm``'s pages may happen. It can run twice for one notifier if
        unregister races exit (see the module docstring)."""
        raise NotImplementedError

    def clear_flush_young(self, mm: Mm, address: int) -> Any:
        """Called by page_referenced()/try_to_unmap() under the page-table lock (atomic: must
        not sleep). Clear the secondary's accessed bit for ``address`` and return non-zero if
        it was set. The core ORs the results of all notifiers."""
        raise NotImplementedError

    def test_young(self, mm: Mm, address: int) -> Any:
        """Like clear_flush_young but only tests, without clearing (khugepaged). Under the
        page-table lock: must not sleep. The core stops at the first non-zero answer."""
        raise NotImplementedError

    def change_pte(self, mm: Mm, address: int, pte: tuple[int, int]) -> Any:
        """Called by set_pte_at_notify() *before* the primary pte at ``address`` is set to
        ``pte`` = (pfn, flags) (KSM, COW). Under the page-table lock: must not sleep. Since
        6bdb913f0a every caller brackets it with invalidate_range_start/end, so a secondary
        that does nothing here is still correct."""
        raise NotImplementedError

    def invalidate_page(self, mm: Mm, address: int) -> Any:
        """Called after the primary pte for ``address`` was cleared and before the page can be
        freed (the caller still holds a reference). May sleep. The secondary must drop its
        translation of ``address`` before returning."""
        raise NotImplementedError

    def invalidate_range_start(self, mm: Mm, start: int, end: int) -> Any:
        """Called before the primary ptes in [start, end) are torn down, with no spinlock
        held. May sleep. After it returns and until the paired invalidate_range_end the
        secondary must not establish any translation in the range (e.g. refuse faults), and
        must have dropped the ones it had."""
        raise NotImplementedError

    def invalidate_range_end(self, mm: Mm, start: int, end: int) -> Any:
        """Called after the primary ptes in [start, end) were torn down. May sleep. Pairs with
        one invalidate_range_start of the same range (unless the notifier was unregistered in
        between). Pages of the range may be freed right after it returns."""
        raise NotImplementedError

    # -- the modern kernels' ops (MODERN_OPS): called only by the v5.10 and v6.6 cores --------

    def invalidate_range(self, mm: Mm, start: int, end: int) -> Any:
        """v5.10 (0f0a327fa12c, Linux 3.19; for a secondary sharing the CPU page tables, an
        IOMMU): flush the secondary TLB for [start, end). Called under the page-table lock
        from ptep_clear_flush_notify() / mmu_notifier_invalidate_range(), and again from
        invalidate_range_end() unless the caller used the only_end variant (0f10851ea475):
        must not sleep. Gone in v6.6, where it is ``arch_invalidate_secondary_tlbs``."""
        raise NotImplementedError

    def arch_invalidate_secondary_tlbs(self, mm: Mm, start: int, end: int) -> Any:
        """v6.6 (1af5a8109904, renaming ->invalidate_range): called from the architecture's
        TLB flush of [start, end), in whatever context that flush runs (under the page-table
        lock at a ptep_clear_flush()): must not sleep. invalidate_range_end no longer calls
        it (ec8832d007cb)."""
        raise NotImplementedError

    def clear_young(self, mm: Mm, start: int, end: int) -> Any:
        """Since 632116f64463 (Linux 4.3): like clear_flush_young but the secondary need not
        flush its TLB (idle page tracking). Under the page-table lock: must not sleep. The
        core ORs the results."""
        raise NotImplementedError

    # mmu_notifier_get/put (2c7933f53f6b, Linux 5.4): ops->alloc_notifier(mm) builds the one
    # notifier of a (mm, ops) pair, ops->free_notifier(mn) frees it from call_srcu() after the
    # last put. Methods of the driver, not callouts: the core calls them through ``get``/``put``.

    @classmethod
    def alloc_notifier(cls, mm: Mm) -> "MmuNotifier":
        """ops->alloc_notifier(): a new notifier for ``mm`` (``mmu_notifier_get``)."""
        raise InvalidArgument(f"{cls.__name__} has no alloc_notifier: it cannot be got with mmu_notifier_get")

    def free_notifier(self) -> None:
        """ops->free_notifier(): the last ``put``'s SRCU callback frees the notifier."""


OPS = (
    "release",
    "clear_flush_young",
    "test_young",
    "change_pte",
    "invalidate_page",
    "invalidate_range_start",
    "invalidate_range_end",
)
#: The ops the modern cores add (the v5.10 and v6.6 modes only). Each runs under a spinlock, so
#: none is carried over the wire to a secondary on another partition (``OPS`` are, all of them).
MODERN_OPS = ("invalidate_range", "arch_invalidate_secondary_tlbs", "clear_young")
ATOMIC_OPS = ("clear_flush_young", "test_young", "change_pte") + MODERN_OPS
#: The ops a modern core hands the range to (5d6527a784f7, Linux 5.0), if the notifier takes it.
RANGE_OPS = ("invalidate_range_start", "invalidate_range_end")

# The core's semantics, one per step of the seed history (REFERENCE section 3); each changes only
# what its commit changed. v3.10 (d34883d4e3) is the default; the others reproduce their bug.
SEMANTICS = {
    "v3.10": "d34883d4e3: the fixed core (release before unhash, hlist_del_init_rcu, SRCU)",
    "rcu": "cddb8a5c14..21a92735f6: callouts under RCU may not sleep: a secondary whose callouts "
           "sleep (on another partition) is refused at register",
    "rcu+sleep": "the rcu core with a sleeping secondary let in anyway: synchronize_rcu() does not "
                 "wait for callouts that sleep, so exit and unregister return while they run",
    "release-after-unhash": "before 3ad3d901bb: release and unregister unhash the notifier, then call "
                            "->release: an invalidate in between finds no notifier and frees the page",
    "unregister-race": "3ad3d901bb..751efd8610: unregister tests 'hashed', calls ->release, then "
                       "hlist_del_rcu(): exit unhashing in between makes it a NULL dereference",
    "unhash-then-release": "751efd8610..d34883d4e3: both paths unhash under the lock first, then call "
                           "->release: the window of 3ad3d901bb is back",
    "change-pte-unwrapped": "before 6bdb913f0a: set_pte_at_notify is not bracketed by range_start/end "
                            "and change_pte falls back to invalidate_page, under the page-table lock",
    "lazy-alloc": "e0f3c3f78d (reverted by 35cfa2b0b4): the per-mm bookkeeping is allocated after "
                  "mm_take_all_locks(): the allocation can enter reclaim, which takes an anon_vma "
                  "lock already held",
}


# The two modern kernels, as modes beside the history (REFERENCE section 7). Each differs from
# v3.10 only where a commit changed the core; the commit is named where the mode's behaviour is.
MODERN = ("v5.10", "v6.6")
SEMANTICS["v5.10"] = ("Linux 5.10: struct mmu_notifier_range with event and flags, non-blocking "
                      "invalidate_range_start (the OOM reaper), mmu_interval_notifier, "
                      "mmu_notifier_get/put, ->invalidate_range, ->clear_young; no ->invalidate_page")
SEMANTICS["v6.6"] = ("Linux 6.6: as v5.10, with MMU_NOTIFY_EXCLUSIVE, a failed non-blocking start "
                     "unwound by calling every ->invalidate_range_end (c2655835fd8c, 5.12), and "
                     "->invalidate_range renamed ->arch_invalidate_secondary_tlbs, called from the "
                     "arch TLB flush (1af5a8109904)")
# The OOM reaper's own history (not the core's): the mode lets the race finder show the bug
# that 4d4bbd8526a8 closed, with the v3.10 core otherwise (nothing else of the core changed it).
SEMANTICS["oom-reap-unnotified"] = ("aac453635549..4d4bbd8526a8: the OOM reaper (Linux 4.6) unmaps a "
                                    "victim's memory without calling the notifiers: a secondary "
                                    "still maps the pages it frees")
#: The modes with an OOM reaper (``vmops.oom_reap_task``); v3.10 and its history had none.
OOM_REAPER_MODES = MODERN + ("oom-reap-unnotified",)


class MmuNotifierEvent(enum.IntEnum):
    """enum mmu_notifier_event (include/linux/mmu_notifier.h, 6f4f13e8d9e2, Linux 5.2): why a
    range is being invalidated, so that a secondary can skip what does not concern it.
    ``EXCLUSIVE`` is 5.14's (device-exclusive access); the rest are in 5.10. Which call site
    passes which (v5.10's, as in ``nodes.vmops``): munmap's and exit's unmap_vmas() and the OOM
    reaper UNMAP; mprotect's change_protection() PROTECTION_VMA; fork's copy_page_range()
    PROTECTION_PAGE; try_to_unmap_one() (reclaim and page migration), KSM's
    write_protect_page()/replace_page(), the COW fault and khugepaged CLEAR."""

    UNMAP = 0  # the range is unmapped (munmap, exit): its pages may be freed
    CLEAR = 1  # the ptes are cleared, the pages stay (reclaim, madvise(DONTNEED), ...)
    PROTECTION_VMA = 2  # the VMA's protection changes (mprotect)
    PROTECTION_PAGE = 3  # one page's protection changes (write-protect for KSM, COW)
    SOFT_DIRTY = 4  # soft-dirty tracking clears the dirty bits
    RELEASE = 5  # the mm is going away: the interval notifiers' range at __mmu_notifier_release
    MIGRATE = 6  # migrate_vma() to or from device memory (998427b3ad2c, 5.10), with the pgmap owner
    EXCLUSIVE = 7  # a device takes exclusive access (make_device_exclusive_range; 5.14)


#: mmu_notifier_range.flags: the invalidation may sleep (the only flag; 93065ac753e4 made it a
#: bool, 27560ee96f40 a flag). The OOM reaper's mmu_notifier_invalidate_range_start_nonblock() clears it.
MMU_NOTIFIER_RANGE_BLOCKABLE = 1 << 0


@dataclass(slots=True)
class MmuNotifierRange:
    """struct mmu_notifier_range (ac46d4f3c432, Linux 5.0; the ops take it since 5d6527a784f7):
    what the modern core hands invalidate_range_start/end instead of (mm, start, end).
    ``owner`` is the pgmap owner of a MIGRATE event (a device skips invalidations its own
    migration caused): 5.10's ``migrate_pgmap_owner`` (998427b3ad2c), renamed ``owner`` in
    5.14; both names read it here. Invariant: ``start < end`` (the core checks it)."""

    mm: Mm
    start: int
    end: int
    event: MmuNotifierEvent = MmuNotifierEvent.UNMAP
    flags: int = MMU_NOTIFIER_RANGE_BLOCKABLE
    owner: Any = None

    def blockable(self) -> bool:
        """mmu_notifier_range_blockable(): may the callout sleep?"""
        return bool(self.flags & MMU_NOTIFIER_RANGE_BLOCKABLE)

    @property
    def migrate_pgmap_owner(self) -> Any:
        """The v5.10 name of ``owner``."""
        return self.owner


#: The range of the range callout in progress on this task (None outside one, and under the
#: v3.10 core): how a driver that keeps the (mm, start, end) shape reads range->flags, as 5.10's
#: KVM passes them down to kvm_unmap_hva_range().
current_range: contextvars.ContextVar[MmuNotifierRange | None] = contextvars.ContextVar("current_range", default=None)


def mmu_notifier_range_blockable() -> bool:
    """mmu_notifier_range_blockable() of the range callout in progress (True outside one)."""
    rng = current_range.get()
    return rng is None or rng.blockable()


def _fmt_args(args: tuple[Any, ...]) -> str:
    return "(" + ", ".join(hex(a) if isinstance(a, int) and a > 4096 else repr(a) for a in args) + ")"


def has_op(mn: MmuNotifier, op: str) -> bool:
    """True if ``mn`` implements ``op`` (the kernel's ``if (mn->ops->op)``)."""
    return getattr(type(mn), op) is not getattr(MmuNotifier, op)


def _answered(mn: MmuNotifier, r: Any, mm: Mm, args: tuple[Any, ...], range: "MmuNotifierRange | None",
              after: Callable[..., None] | None, failed: Callable[..., None] | None) -> int:
    """What a walk of ``op(mm, *args)`` (in ``range``, under a modern core) does with ``mn``'s
    answer ``r``: a non-zero int (a modern start's -EAGAIN) goes to ``failed(mn, range, r)``
    and is returned; otherwise ``mn`` gets ``after(mn, mm, *args)``, and 0 is returned."""
    if isinstance(r, int) and r and failed is not None:
        failed(mn, range, r)
        return r
    if after is not None:
        after(mn, mm, *args)
    return 0


# -- the RCU hlist ----------------------------------------------------------------------------

_POISON = object()  # LIST_POISON2: what hlist_del_rcu leaves in pprev


class HlistNode:
    """struct hlist_node: ``next`` and ``pprev`` (here the predecessor object, head or node)."""

    __slots__ = ("owner", "next", "pprev")

    def __init__(self, owner: Any):
        self.owner = owner
        self.next: HlistNode | None = None
        self.pprev: Any = None  # None: unhashed; _POISON: deleted by hlist_del_rcu

    def unhashed(self) -> bool:
        return self.pprev is None


class Hlist:
    """An RCU-protected hlist_head. Writers hold the list spinlock; readers walk under SRCU
    and see a deleted node's ``next`` still intact, as RCU readers do."""

    def __init__(self) -> None:
        self.next: HlistNode | None = None  # hlist_head.first

    def empty(self) -> bool:
        return self.next is None

    def add_head_rcu(self, node: HlistNode) -> None:
        node.next = self.next
        if node.next is not None:
            node.next.pprev = node
        self.next = node
        node.pprev = self

    @staticmethod
    def _unlink(node: HlistNode, op: str) -> None:
        if node.pprev is None or node.pprev is _POISON:
            state = "unhashed" if node.pprev is None else "already deleted (LIST_POISON2)"
            raise NullPointerDereference(
                f"BUG: {op} of {node.owner!r}, whose hlist entry is {state}: *pprev = next "
                f"dereferences a bad pointer"
            )
        node.pprev.next = node.next
        if node.next is not None:
            node.next.pprev = node.pprev

    def del_rcu(self, node: HlistNode) -> None:
        """hlist_del_rcu(): unlink, poison pprev, keep next for concurrent readers."""
        self._unlink(node, "hlist_del_rcu")
        node.pprev = _POISON

    def del_init_rcu(self, node: HlistNode) -> None:
        """hlist_del_init_rcu(): unlink if hashed and mark unhashed; a no-op if unhashed."""
        if node.unhashed():
            return
        self._unlink(node, "hlist_del_init_rcu")
        node.pprev = None

    def walk(self) -> Iterator[Any]:
        """hlist_for_each_entry_rcu(): yields owners; a node deleted behind the walker's back
        still leads on to its successors."""
        node = self.next
        while node is not None:
            yield node.owner
            node = node.next


class MmuNotifierMm:
    """struct mmu_notifier_mm: an mm's notifier list and the spinlock its writers take, and
    the mm's invalidate sequence.

    ``invalidate_seq`` is not in v3.10's struct: it is what the kernel later kept in its
    successor, ``struct mmu_notifier_subscriptions`` (``invalidate_seq``, Linux 5.5), and what
    KVM keeps for itself as ``kvm->mmu_notifier_seq``, here kept by the owner so that it can
    travel: the core bumps it when an invalidation begins (``invalidate_range_start``,
    ``invalidate_page``) and when a range ends (``invalidate_range_end``), before calling any
    notifier; a remote fault's answer carries the value read before its lookup (``PageRef``)
    and every invalidate callout carries the value after its bump (``MmRef``), so that a
    secondary on another partition can tell whether an invalidation began or ended after its
    lookup (``nodes.secondary.base.InvalidateSeq``). It only grows.
    """

    def __init__(self, mm: Mm):
        self.list = Hlist()
        self.lock = SpinLock(f"{mm.name}.mmu_notifier_mm.lock")
        self.invalidate_seq = 0  # invariant: never decreases
        # the interval-notifier half (nodes/interval.py; its own, odd/even, invalidate_seq): set
        # by the first register with no notifier, the modern modes' subscriptions->has_itree
        self.itree: "MmuItree | None" = None


class CoreTimings:
    """What the harness measures inside the core, when ``enabled``: each sleepable callout's
    duration as the core saw it (for a secondary on another partition, the round trip) and each
    invalidate_range_start-to-end span of an mm that had notifiers when it began (a span with
    none to call, such as exit_mmap's unmapping after ->release, involves no secondary).
    Samples are (end time, microseconds, mm id, op)."""

    def __init__(self) -> None:
        self.enabled = False
        self.callouts: list[tuple[float, float, int, str]] = []
        self.ranges: list[tuple[float, float, int, str]] = []
        self._open: dict[tuple[int, int, int], list[float]] = {}

    def callout(self, now: float, us: float, mm: Mm, op: str) -> None:
        self.callouts.append((now, us, mm.id, op))

    def range_started(self, mm: Mm, start: int, end: int, now: float) -> None:
        self._open.setdefault((mm.id, start, end), []).append(now)

    def range_ended(self, mm: Mm, start: int, end: int, now: float) -> None:
        begun = self._open.get((mm.id, start, end))
        if begun:  # the first of the same range still open (they end in the order they began)
            self.ranges.append((now, now - begun.pop(0), mm.id, f"[{start:#x}, {end:#x})"))


@dataclass
class TeardownTiming:
    """How long one unregister or exit took, in microseconds."""

    total_us: float
    release_us: float  # the ->release callout(s)
    srcu_wait_us: float  # the synchronize_srcu() at the end


class NotifierCore:
    """The mmu_notifier core of one partition (mm/mmu_notifier.c)."""

    def __init__(
        self,
        runtime: Runtime,
        srcu_for: Callable[[Mm], SrcuBase],
        oracle: "Oracle",
        *,
        fanout: str = "sequential",
        expedited: bool = False,
        semantics: str = "v3.10",
    ):
        if fanout not in FANOUTS:
            raise ValueError(f"fanout must be one of {FANOUTS}, got {fanout!r}")
        if semantics not in SEMANTICS:
            raise ValueError(f"semantics must be one of {tuple(SEMANTICS)}, got {semantics!r}")
        self.semantics = semantics
        self.modern = semantics in MODERN  # the v5.10 and v6.6 modes, not a step of the history
        # rcu: the read side is rcu_read_lock(), which a sleeping callout does not hold across its
        # sleep, and synchronize_rcu() waits only for readers that do not sleep
        self.rcu = semantics in ("rcu", "rcu+sleep")
        self.unhash_before_release = semantics in ("release-after-unhash", "unhash-then-release")
        # since 6bdb913f0a every caller brackets set_pte_at_notify with range_start/end
        self.wraps_set_pte = semantics != "change-pte-unwrapped"
        self.runtime = runtime
        self.srcu_for = srcu_for
        self.oracle = oracle
        self.fanout = fanout
        # mmusim option, not kernel behaviour: unregister and release wait with
        # synchronize_srcu_expedited() instead of synchronize_srcu()
        self.expedited = expedited
        self.timings = CoreTimings()
        self.trace_callouts = False  # report every callout to the run's trace (mmusim check)
        # v6.6: ->invalidate_range is ->arch_invalidate_secondary_tlbs (1af5a8109904), called from
        # the arch TLB flush only (ec8832d007cb: not from range_end); v5.10 calls
        # ->invalidate_range from range_end as well
        self.tlb_op = "arch_invalidate_secondary_tlbs" if semantics == "v6.6" else "invalidate_range"
        # c2655835fd8c (5.12): a failed non-blocking start calls every ->invalidate_range_end
        self.unwind_failed_start = semantics == "v6.6"
        self.oom_reaper = semantics in OOM_REAPER_MODES
        self.warnings: list[str] = []  # the kernel's WARN_ON()s that fired (it goes on)
        # lazy-alloc's kmalloc under mm_take_all_locks may enter direct reclaim (set by Partition)
        self.direct_reclaim: Callable[[], Awaitable[None]] | None = None

    # -- the walk ---------------------------------------------------------------------------

    @staticmethod
    def has_notifiers(mm: Mm) -> bool:
        """mm_has_notifiers(): the inline wrappers return at once when this is False."""
        return mm.notifier_mm is not None and not mm.notifier_mm.list.empty()

    @staticmethod
    def has_subscribers(mm: Mm) -> bool:
        """Whether an invalidation of ``mm`` calls anyone: a notifier on its list, or (the modern
        cores) an interval notifier tree. What the timings count: a span that calls no one is
        not timed."""
        nmm = mm.notifier_mm
        return nmm is not None and (not nmm.list.empty() or nmm.itree is not None)

    async def _call(self, mn: MmuNotifier, mm: Mm, op: str, args: tuple[Any, ...] = (),
                    range: MmuNotifierRange | None = None) -> Any:
        """One callout, ``op(mm, *args)``. With a modern core's ``range`` a notifier that
        ``takes_range`` gets it alone; and a range that is not blockable is called as the kernel
        brackets it, non_block_start()/non_block_end() (312364f3534c): a callout that sleeps
        there is ``SleepingInAtomicContext``."""
        oracle = self.oracle
        oracle.callout(mn, mm, op, args)
        if self.trace_callouts:
            self.runtime.trace("callout", f"{op}{_fmt_args(args)} -> {mn.name} on {mm.name}")
        timed = self.timings.enabled
        t0 = self.runtime.now() if timed else 0.0
        try:
            if range is not None:
                call = (range,) if mn.takes_range else (mm, *args)
                token = current_range.set(range)
                try:
                    if not range.blockable():
                        return run_atomic(f"{op} of notifier {mn.name} in a non-blocking range "
                                          f"(non_block_start())", getattr(mn, op), *call)
                    return await call_maybe_async(getattr(mn, op), *call)
                finally:
                    current_range.reset(token)
            r = getattr(mn, op)(mm, *args)  # (call_maybe_async, without its frame)
            return await (r if type(r) is CoroutineType else op_awaitable(r))
        finally:
            oracle.callout_done(mn, mm, op)
            # an op a proxy answers itself (``local``: nodes.remote) is no round trip to time
            if timed and self.timings.enabled and not getattr(getattr(mn, op), "local", False):
                self.timings.callout(self.runtime.now(), self.runtime.now() - t0, mm, op)

    def _note(self, what: str) -> None:
        """A list change, for the run's trace when callouts are traced (mmusim check)."""
        if self.trace_callouts:
            self.runtime.trace("notifier", what)

    async def _synchronize(self, srcu: SrcuBase) -> None:
        if self.rcu:
            return  # synchronize_rcu(): no reader that sleeps is waited for (the rcu modes' bug)
        await (srcu.synchronize_expedited() if self.expedited else srcu.synchronize())

    async def _walk(self, mm: Mm, op: str, *args: Any, after: Callable[..., None] | None = None,
                    range: MmuNotifierRange | None = None, failed: Callable[..., None] | None = None) -> int:
        """Call ``op`` on every notifier of ``mm`` that has it, under the SRCU read lock. A
        callout answering a non-zero int (a modern start's -EAGAIN) is reported to ``failed``
        (``failed(mn, range, answer)``) and does not get ``after`` (``after(mn, mm, *args)``);
        the walk goes on, and returns the last such answer, as mn_hlist_invalidate_range_start()
        does (``ret = _ret``). (No closure here: its cells would be made at every walk.)"""
        nmm = mm.notifier_mm
        if nmm is None or nmm.list.next is None:  # not has_notifiers(mm) (inline: the walk's hot path)
            return 0
        ret = 0
        srcu = self.srcu_for(mm)
        cpu = current_cpu.get()
        idx = srcu.read_lock(cpu)
        try:
            if self.fanout == "parallel":
                ret = await self._fan_out(nmm, mm, op, args, after, range, failed)
            else:
                absent = getattr(MmuNotifier, op)  # has_op(mn, op) is getattr(type(mn), op) is not this
                # Hlist.walk(), without a generator: each node's next is read only after its
                # callout returned (lazily: the list may change as we sleep)
                node = nmm.list.next
                while node is not None:
                    mn = node.owner
                    if getattr(type(mn), op) is not absent:
                        r = await self._call(mn, mm, op, args, range)
                        if after is not None or failed is not None:
                            ret = _answered(mn, r, mm, args, range, after, failed) or ret
                    node = node.next
        finally:
            srcu.read_unlock(idx, cpu)
        return ret

    async def _fan_out(self, nmm: "MmuNotifierMm", mm: Mm, op: str, args: tuple[Any, ...],
                       after: Callable[..., None] | None, range: MmuNotifierRange | None,
                       failed: Callable[..., None] | None) -> int:
        """``_walk``'s callouts under ``fanout: parallel``, an mmusim option, not kernel
        behaviour: every notifier at once, wait for all; the last non-zero answer."""
        ret = 0

        async def one(mn: MmuNotifier) -> None:
            nonlocal ret
            ret = _answered(mn, await self._call(mn, mm, op, args, range), mm, args, range, after, failed) or ret

        await wait_all([one(mn) for mn in nmm.list.walk() if has_op(mn, op)])
        return ret

    def _walk_atomic(self, mm: Mm, op: str, *args: Any, stop_at_first: bool = False,
                     fallback: str | None = None) -> int:
        """The walk for ops called under the page-table lock: synchronous, no sleeping. A
        notifier without ``op`` gets ``fallback`` (with the address alone), if it has that."""
        if not self.has_notifiers(mm):
            return 0
        assert mm.notifier_mm is not None
        srcu = self.srcu_for(mm)
        cpu = current_cpu.get()
        idx = srcu.read_lock(cpu)
        result = 0
        try:
            for mn in mm.notifier_mm.list.walk():
                if not has_op(mn, op):
                    if fallback is not None and has_op(mn, fallback):
                        self.oracle.callout(mn, mm, fallback, args[:1])
                        self._note(f"{op}({args[0]:#x}) falls back to {fallback} -> {mn.name}, page-table lock held")
                        run_atomic(f"{fallback} of notifier {mn.name} (the {op} fallback)",
                                   getattr(mn, fallback), mm, args[0])
                    continue
                self.oracle.callout(mn, mm, op, args)
                r = run_atomic(f"{op} of notifier {mn.name}", getattr(mn, op), mm, *args)
                result |= int(bool(r)) if op != "change_pte" else 0
                if stop_at_first and r:
                    break
        finally:
            srcu.read_unlock(idx, cpu)
        return result

    # -- callouts ---------------------------------------------------------------------------

    @staticmethod
    def _bump_invalidate_seq(mm: Mm) -> None:
        """An invalidation of ``mm`` begins or a range ends: ``invalidate_seq += 1`` (see
        ``MmuNotifierMm``), before any notifier is called. Nothing to do without notifiers
        (mm_has_notifiers(): the inline wrapper returns at once)."""
        if mm.notifier_mm is not None:
            mm.notifier_mm.invalidate_seq += 1

    def _warn(self, what: str) -> None:
        """A WARN_ON() of the kernel fired: recorded (and traced); the kernel goes on."""
        self.warnings.append(what)
        self.runtime.trace("warning", what)

    async def invalidate_page(self, mm: Mm, address: int) -> None:
        """mmu_notifier_invalidate_page(). Not in the modern cores: 369ea8242c0f (Linux 4.13)
        replaced its calls by range_start/end around the pte change, and the series' last
        patch ("mm/mmu_notifier: kill invalidate_page") removed the op."""
        if self.modern:
            raise InvalidArgument(f"mmu_notifier_invalidate_page({address:#x}) on {mm.name}: there is none under "
                                  f"{self.semantics} (its callers use range_start/end since 369ea8242c0f, Linux 4.13)")
        self._bump_invalidate_seq(mm)
        await self._walk(mm, "invalidate_page", address)

    def _range(self, mm: Mm, start: int, end: int, event: MmuNotifierEvent, flags: int,
               owner: Any) -> MmuNotifierRange | None:
        """mmu_notifier_range_init(): the range a modern core hands its notifiers; None (the
        v3.10 calls) otherwise. The v3.10 core knows no flags: a non-blocking range is refused."""
        if self.modern:
            return MmuNotifierRange(mm, start, end, MmuNotifierEvent(event), flags, owner)
        if not flags & MMU_NOTIFIER_RANGE_BLOCKABLE:
            raise InvalidArgument(f"a non-blocking invalidate of {mm.name} under {self.semantics}: only the modern "
                                  f"cores have MMU_NOTIFIER_RANGE_BLOCKABLE (93065ac753e4, Linux 4.19)")
        return None

    async def invalidate_range_start(self, mm: Mm, start: int, end: int, *,
                                     event: MmuNotifierEvent = MmuNotifierEvent.UNMAP,
                                     flags: int = MMU_NOTIFIER_RANGE_BLOCKABLE, owner: Any = None) -> int:
        """mmu_notifier_invalidate_range_start(). Exported (fa794199e3): a driver may call it
        for a range no VMA describes (SGI's extended vma), so the range is not checked against
        the VMAs, only for sanity. The modern cores take the range's ``event``, ``flags`` and
        ``owner`` (``MmuNotifierRange``) and answer 0 or, for a range that is not blockable, a
        notifier's -EAGAIN (``_start_failed``); v3.10 answers 0."""
        if start >= end:
            raise InvalidArgument(f"invalidate_range_start: empty range [{start:#x}, {end:#x})")
        # (the v3.10 calls' range is None: _range() is called only when it has more to do)
        rng = (None if not self.modern and flags & MMU_NOTIFIER_RANGE_BLOCKABLE
               else self._range(mm, start, end, event, flags, owner))
        self.oracle.mm_range_start(mm, start, end)
        # a span that calls no one is not timed, nor the OOM reaper's (not the study's subject)
        if self.timings.enabled and self.has_subscribers(mm) and flags & MMU_NOTIFIER_RANGE_BLOCKABLE:
            self.timings.range_started(mm, start, end, self.runtime.now())
        self._bump_invalidate_seq(mm)
        nmm = mm.notifier_mm
        if nmm is not None and nmm.itree is not None:  # (no coroutine for _itree_invalidate to make when there is none)
            ret = await self._itree_invalidate(mm, rng)
            if ret:
                return ret
        ret = await self._walk(mm, "invalidate_range_start", start, end, after=self.oracle.range_started, range=rng,
                               failed=None if rng is None else self._start_failed)
        if ret:
            await self._unwind_failed_start(rng)
        return ret

    def _start_failed(self, mn: MmuNotifier, rng: MmuNotifierRange, ret: int) -> None:
        """mn_hlist_invalidate_range_start() of v5.10 when one start answers ``ret``: the walk
        goes on (every notifier is called), the error is returned; WARN_ON(blockable ||
        ret != -EAGAIN). v6.6 (c2655835fd8c) also WARNs if that notifier has an
        invalidate_range_end: the core cannot tell it that its own start failed."""
        self._note(f"invalidate_range_start of {mn.name} failed with {ret} in a "
                   f"{'' if rng.blockable() else 'non-'}blockable range")
        if rng.blockable() or ret != -errno.EAGAIN:
            self._warn(f"WARNING: invalidate_range_start of {mn.name} on {rng.mm.name} failed with {ret} in a "
                       f"{'' if rng.blockable() else 'non-'}blockable range (only -EAGAIN, only when not blockable)")
        if self.unwind_failed_start and has_op(mn, "invalidate_range_end"):
            self._warn(f"WARNING: {mn.name} failed invalidate_range_start on {rng.mm.name} and has "
                       f"invalidate_range_end: a start that does -EAGAIN can't also do end (c2655835fd8c)")

    async def _unwind_failed_start(self, rng: MmuNotifierRange | None) -> None:
        """A start failed. In a non-blockable range the caller will not call end (oom_reap:
        ``continue``); a blockable caller ignores the answer (the kernel's wrapper is void, the
        failure was WARNed) and calls end. v5.10 leaves it there, so a notifier whose start
        succeeded beside a non-blockable failure never gets its end (the pairing c2655835fd8c
        restored); v6.6 calls every notifier's end now, whatever the range, those that failed
        included (here in a read section of its own, in the range's context)."""
        assert rng is not None
        mm, start, end = rng.mm, rng.start, rng.end
        if not rng.blockable():
            self.oracle.mm_range_abandoned(mm, start, end)
        if self.unwind_failed_start:
            self._bump_invalidate_seq(mm)
            await self._walk(mm, "invalidate_range_end", start, end, range=rng)

    async def invalidate_range_start_nonblock(self, mm: Mm, start: int, end: int, *,
                                              event: MmuNotifierEvent = MmuNotifierEvent.UNMAP) -> int:
        """mmu_notifier_invalidate_range_start_nonblock() (93065ac753e4): the start with
        MMU_NOTIFIER_RANGE_BLOCKABLE cleared, for the OOM reaper. 0, or -EAGAIN: then the
        caller must not call invalidate_range_end."""
        return await self.invalidate_range_start(mm, start, end, event=event, flags=0)

    async def invalidate_range_end(self, mm: Mm, start: int, end: int, *,
                                   event: MmuNotifierEvent = MmuNotifierEvent.UNMAP,
                                   flags: int = MMU_NOTIFIER_RANGE_BLOCKABLE, owner: Any = None,
                                   only_end: bool = False) -> None:
        """mmu_notifier_invalidate_range_end(). Exported, like the start. v5.10 calls
        ->invalidate_range first unless ``only_end`` (0f10851ea475: the caller already did,
        under the page-table lock); here every notifier's before any ->invalidate_range_end
        (the kernel does both per notifier; an earlier flush of a secondary TLB is harmless)."""
        if start >= end:
            raise InvalidArgument(f"invalidate_range_end: empty range [{start:#x}, {end:#x})")
        rng = (None if not self.modern and flags & MMU_NOTIFIER_RANGE_BLOCKABLE
               else self._range(mm, start, end, event, flags, owner))
        self.oracle.mm_range_end(mm, start, end)
        self._bump_invalidate_seq(mm)
        self._itree_inv_end(mm, start, end)
        if rng is not None and not only_end and self.tlb_op == "invalidate_range":
            self._walk_atomic(mm, "invalidate_range", start, end)
        await self._walk(mm, "invalidate_range_end", start, end, range=rng)
        if self.timings.enabled:
            self.timings.range_ended(mm, start, end, self.runtime.now())

    def invalidate_range(self, mm: Mm, start: int, end: int) -> None:
        """v5.10's mmu_notifier_invalidate_range() (ptep_clear_flush_notify(), and callers
        that cleared a pte under the page-table lock), v6.6's
        mmu_notifier_arch_invalidate_secondary_tlbs() (the arch TLB flush): each notifier's
        ``tlb_op``. Caller holds the page-table lock. Nothing in v3.10 and its history."""
        if self.modern:
            self._walk_atomic(mm, self.tlb_op, start, end)

    def clear_young(self, mm: Mm, start: int, end: int) -> int:
        """mmu_notifier_clear_young() (632116f64463): OR of every notifier's answer. Caller
        holds the page-table lock. A modern op: 0 elsewhere."""
        return self._walk_atomic(mm, "clear_young", start, end) if self.modern else 0

    # -- the interval notifiers' hooks (nodes/interval.py): v5.10's __mmu_notifier_invalidate_range_
    #    start/end and __mmu_notifier_release call the tree first, then walk the hlist ----------

    async def _itree_invalidate(self, mm: Mm, rng: MmuNotifierRange | None) -> int:
        """mn_itree_invalidate() if the mm has interval notifiers (subscriptions->has_itree): 0,
        or -EAGAIN, which the start returns at once (the hlist is not walked). The tree's range
        is then already ended; the start is undone for the oracle, since its caller will not
        call the end (only a non-blockable range fails, and those are not timed). Only the
        modern cores have interval notifiers, so ``rng`` is their range."""
        itree = mm.notifier_mm.itree if mm.notifier_mm is not None else None
        if itree is None:
            return 0
        assert rng is not None
        ret = await itree.invalidate(rng)
        if ret:
            self.oracle.mm_range_abandoned(mm, rng.start, rng.end)
        return ret

    def _itree_inv_end(self, mm: Mm, start: int, end: int) -> None:
        """mn_itree_inv_end() if the mm has interval notifiers."""
        itree = mm.notifier_mm.itree if mm.notifier_mm is not None else None
        if itree is not None:
            itree.inv_end(start, end)

    def clear_flush_young(self, mm: Mm, address: int) -> int:
        """mmu_notifier_clear_flush_young(): OR of every notifier's answer. Caller holds the
        page-table lock."""
        return self._walk_atomic(mm, "clear_flush_young", address)

    def test_young(self, mm: Mm, address: int) -> int:
        """mmu_notifier_test_young(): stops at the first non-zero answer. Caller holds the
        page-table lock."""
        return self._walk_atomic(mm, "test_young", address, stop_at_first=True)

    def change_pte(self, mm: Mm, address: int, pte: tuple[int, int]) -> None:
        """mmu_notifier_change_pte(). Caller holds the page-table lock. Before 6bdb913f0a
        (``change-pte-unwrapped``) a notifier without change_pte got invalidate_page instead,
        here, under the page-table lock: a sleeping invalidate in atomic context."""
        self._walk_atomic(mm, "change_pte", address, pte,
                          fallback=None if self.wraps_set_pte else "invalidate_page")

    # -- registration -----------------------------------------------------------------------

    async def register(self, mn: MmuNotifier | None, mm: Mm, *, current: TaskSignals | None = None) -> None:
        """mmu_notifier_register(): takes mmap_sem for write itself. ``mn`` None (the modern
        modes only) registers the mm for interval notifiers (``nodes.interval``), as
        mmu_interval_notifier_insert() does with mmu_notifier_register(NULL, mm)."""
        await self._do_register(mn, mm, take_mmap_sem=True, current=current)

    async def register_locked(self, mn: MmuNotifier | None, mm: Mm, *, current: TaskSignals | None = None) -> None:
        """__mmu_notifier_register(): the caller already holds mmap_sem for write."""
        if not mm.mmap_sem.writer:
            raise InvalidArgument(f"__mmu_notifier_register on {mm.name} without mmap_sem held for write")
        await self._do_register(mn, mm, take_mmap_sem=False, current=current)

    async def _do_register(self, mn: MmuNotifier | None, mm: Mm, *, take_mmap_sem: bool,
                           current: TaskSignals | None) -> None:
        """do_mmu_notifier_register() of v3.10 (35cfa2b0b4: allocate before taking locks)."""
        if mn is None:
            return await self._register_itree(mm, take_mmap_sem=take_mmap_sem, current=current)
        if mm.users <= 0:
            raise InvalidArgument(f"register of {mn.name} on {mm.name}, whose mm_users is 0 (exiting)")
        if not mn.hlist.unhashed():
            raise InvalidArgument(f"notifier {mn.name} is already registered on {mn.mm!r}")
        if self.semantics == "rcu" and getattr(mn, "sleeps", False):
            raise SleepingInAtomicContext(
                f"register of {mn.name} on {mm.name} refused: under the rcu core (before 21a92735f6) "
                f"callouts run inside rcu_read_lock() and may not sleep, and this secondary's callouts "
                f"sleep (they cross the network); semantics 'rcu+sleep' lets it in to show what breaks")
        lazy = self.semantics == "lazy-alloc"
        # kmalloc before any lock (35cfa2b0b4): allocation may enter reclaim
        prealloc = None if lazy else MmuNotifierMm(mm)
        if take_mmap_sem:
            await mm.mmap_sem.down_write()
        try:
            await mm_take_all_locks(mm, current)  # EINTR here changes nothing
            try:
                if lazy and mm.notifier_mm is None:
                    # e0f3c3f78d: kmalloc(GFP_KERNEL) with every anon_vma lock held; under memory
                    # pressure it enters direct reclaim, whose rmap walk takes an anon_vma lock
                    if self.direct_reclaim is not None:
                        await self.direct_reclaim()
                    prealloc = MmuNotifierMm(mm)
                if mm.notifier_mm is None:
                    mm.notifier_mm = prealloc
                mm.count += 1  # the notifier pins the mm struct
                with mm.notifier_mm.lock:
                    mm.notifier_mm.list.add_head_rcu(mn.hlist)
                mn.mm = mm
                mn.users = 1
                self.oracle.registered(mn, mm)
            finally:
                mm_drop_all_locks(mm)
        finally:
            if take_mmap_sem:
                mm.mmap_sem.up_write()

    async def _register_itree(self, mm: Mm, *, take_mmap_sem: bool, current: TaskSignals | None) -> None:
        """__mmu_notifier_register(NULL, mm) of v5.10: the bookkeeping allocated first, then under
        mmap_sem (write) and mm_take_all_locks() installed and marked has_itree. Pins nothing:
        each interval notifier's insert takes its own mmgrab()."""
        if not self.modern:
            raise InvalidArgument(f"register with no notifier (interval notifiers) on {mm.name}: the "
                                  f"{self.semantics!r} core has none; semantics {MODERN} have them")
        if mm.users <= 0:
            raise InvalidArgument(f"register of interval notifiers on {mm.name}, whose mm_users is 0 (exiting)")
        from nodes.interval import MmuItree

        prealloc = MmuNotifierMm(mm) if mm.notifier_mm is None else None
        if take_mmap_sem:
            await mm.mmap_sem.down_write()
        try:
            await mm_take_all_locks(mm, current)
            try:
                if mm.notifier_mm is None:
                    mm.notifier_mm = prealloc
                nmm = mm.notifier_mm
                assert nmm is not None
                if nmm.itree is None:
                    nmm.itree = MmuItree(nmm, mm, self)
            finally:
                mm_drop_all_locks(mm)
        finally:
            if take_mmap_sem:
                mm.mmap_sem.up_write()

    async def unregister(self, mn: MmuNotifier, mm: Mm) -> TeardownTiming:
        """mmu_notifier_unregister() of v3.10 (d34883d4e3)."""
        if mn.mm is not mm:
            raise InvalidArgument(f"unregister of {mn.name} from {mm.name}, where it was never registered")
        t0 = self.runtime.now()
        release_us = 0.0
        srcu = self.srcu_for(mm)
        if not mn.hlist.unhashed():
            assert mm.notifier_mm is not None
            if self.unhash_before_release:  # the bug of these modes: unhash, then ->release
                with mm.notifier_mm.lock:
                    self._note(f"unregister unhashes {mn.name} (before ->release)")
                    mm.notifier_mm.list.del_init_rcu(mn.hlist)
            # Run ->release ourselves: exit_mmap has not, and will not find mn once we unhash it.
            cpu = current_cpu.get()
            idx = srcu.read_lock(cpu)
            try:
                if has_op(mn, "release"):
                    t1 = self.runtime.now()
                    await self._call(mn, mm, "release")
                    release_us = self.runtime.now() - t1
                    self.oracle.released(mn, mm, "unregister")
            finally:
                srcu.read_unlock(idx, cpu)
            if self.semantics == "unregister-race":
                with mm.notifier_mm.lock:  # 3ad3d901bb: exit may have unhashed mn meanwhile
                    self._note(f"unregister: hlist_del_rcu({mn.name})")
                    mm.notifier_mm.list.del_rcu(mn.hlist)
            elif not self.unhash_before_release:
                with mm.notifier_mm.lock:
                    self._note(f"unregister unhashes {mn.name}")
                    mm.notifier_mm.list.del_init_rcu(mn.hlist)
        # Wait for any running method to finish, including ->release run by exit instead of us.
        t2 = self.runtime.now()
        await self._synchronize(srcu)
        t3 = self.runtime.now()
        mm.count -= 1  # mmdrop()
        mn.mm = None
        self.oracle.unregistered(mn, mm)
        return TeardownTiming(t3 - t0, release_us, t3 - t2)

    async def release(self, mm: Mm) -> TeardownTiming:
        """__mmu_notifier_release() of v3.10, called by exit_mmap before any page is freed.
        The modern cores release the interval tree first (mn_itree_release()) and walk the
        hlist, and synchronize_srcu(), only if it has notifiers (mn_hlist_release()): an mm with
        interval notifiers alone waits for no grace period at exit."""
        t0 = self.runtime.now()
        if mm.notifier_mm is None:
            return TeardownTiming(0.0, 0.0, 0.0)
        nmm = mm.notifier_mm
        if nmm.itree is not None:
            await nmm.itree.release()  # mn_itree_release(), before the hlist's
        if self.modern and nmm.list.empty():  # v5.10: if (!hlist_empty(...)) mn_hlist_release()
            t1 = self.runtime.now()
            return TeardownTiming(t1 - t0, t1 - t0, 0.0)
        srcu = self.srcu_for(mm)
        if self.unhash_before_release:
            # the bug of these modes: each notifier is unhashed, then its ->release runs (the
            # lock is dropped around it); an invalidate meanwhile no longer finds it
            while True:
                with nmm.lock:
                    if nmm.list.empty():
                        break
                    assert nmm.list.next is not None
                    mn = nmm.list.next.owner
                    self._note(f"exit unhashes {mn.name} (before ->release)")
                    nmm.list.del_init_rcu(nmm.list.next)
                if has_op(mn, "release"):
                    cpu = current_cpu.get()
                    idx = srcu.read_lock(cpu)
                    try:
                        await self._call(mn, mm, "release")
                        self.oracle.released(mn, mm, "exit")
                    finally:
                        srcu.read_unlock(idx, cpu)
            t1 = self.runtime.now()
            await self._synchronize(srcu)
            return TeardownTiming(self.runtime.now() - t0, t1 - t0, self.runtime.now() - t1)
        await self._walk(mm, "release", after=functools.partial(self.oracle.released, by="exit"))
        t1 = self.runtime.now()
        with nmm.lock:
            while not nmm.list.empty():
                assert nmm.list.next is not None
                self._note(f"exit unhashes {nmm.list.next.owner.name}")
                nmm.list.del_init_rcu(nmm.list.next)
        # Do not free pages until every ->release that unregister started has finished.
        await self._synchronize(srcu)
        t2 = self.runtime.now()
        return TeardownTiming(t2 - t0, t1 - t0, t2 - t1)

    async def put(self, mn: MmuNotifier, mm: Mm) -> TeardownTiming:
        """mmu_notifier_put() of Linux 5.4 (2c7933f53f), not of v3.10: the study's
        ``teardown=put``. The driver has stopped using the mm (it tore its own state down:
        recorded as its release, "put"); the notifier is unhashed at once and freed from
        call_srcu() once every reader has left. No ->release callout and no synchronize_srcu():
        the caller does not wait for callouts in flight on other mms. The notifier counts as
        unregistered only when the callback runs, so a callout still in flight is not a
        method running after unregister. Refcounted as 5.4's is: each ``get`` of the notifier
        takes a user, the last put unhashes it, and the callback ends with ops->free_notifier."""
        if mn.mm is not mm:
            raise InvalidArgument(f"put of {mn.name} on {mm.name}, where it is not registered")
        t0 = self.runtime.now()
        if mn.users <= 0:
            self._warn(f"WARNING: mmu_notifier_put of {mn.name} on {mm.name} with no user left")
            return TeardownTiming(0.0, 0.0, 0.0)
        mn.users -= 1
        if mn.users:  # another get still holds it (mmu_notifier_get of the same ops)
            return TeardownTiming(self.runtime.now() - t0, 0.0, 0.0)
        if not mn.hlist.unhashed():
            self.oracle.released(mn, mm, "put")
            assert mm.notifier_mm is not None
            with mm.notifier_mm.lock:
                mm.notifier_mm.list.del_init_rcu(mn.hlist)

        def free_notifier() -> None:  # mmu_notifier_free_rcu(): ops->free_notifier, mmdrop
            mm.count -= 1
            mn.mm = None
            self.oracle.unregistered(mn, mm)
            mn.free_notifier()

        self.srcu_for(mm).call_srcu(free_notifier, what=f"free_notifier({mn.name})")
        return TeardownTiming(self.runtime.now() - t0, 0.0, 0.0)

    async def get(self, cls: type[MmuNotifier], mm: Mm) -> MmuNotifier:
        """mmu_notifier_get() (2c7933f53f6b, Linux 5.4): the one notifier of ``cls`` (the ops
        table) on ``mm``, taking a user; built by ``cls.alloc_notifier(mm)`` and registered if
        there is none, freed by ``cls.free_notifier`` if the registration fails. Takes
        mmap_sem for write, as mmu_notifier_get() does around mmu_notifier_get_locked()."""
        if not self.modern:
            raise InvalidArgument(f"mmu_notifier_get under {self.semantics}: there is none before Linux 5.4")
        async with mm.mmap_sem.write():
            if mm.notifier_mm is not None:
                with mm.notifier_mm.lock:  # find_get_mmu_notifier()
                    for mn in mm.notifier_mm.list.walk():
                        if type(mn) is cls:
                            mn.users += 1
                            return mn
            mn = cls.alloc_notifier(mm)
            try:
                await self.register_locked(mn, mm)
            except BaseException:
                mn.free_notifier()
                raise
            return mn

    # -- set_pte_at_notify ------------------------------------------------------------------

    def set_pte_at_notify(self, mm: Mm, address: int, pte: tuple[int, int], set_pte: Callable[[], None]) -> None:
        """set_pte_at_notify(): change_pte callout *before* the primary pte is set. Caller
        holds the page-table lock and (since 6bdb913f0a) brackets the call with
        invalidate_range_start/end."""
        self.change_pte(mm, address, pte)
        set_pte()

