"""Interval notifiers: ``struct mmu_interval_notifier`` and the per-mm interval tree of Linux 5.5
(99cb252f5e68 "mm/mmu_notifier: add an interval tree notifier"), as ``mm/mmu_notifier.c`` has
them in v5.10 and v6.6, with the fixes since: c9682d10271e (insert checks mm_users, the mmget()
its caller must hold, not mm_count; in v5.10) and 319561669a59 (remove reads the sequence under
the lock while it waits; 5.18, and 5.10.113 stable). Only the modern modes (``MODERN``) have
them: under any older semantics an insert is refused, naming the semantics.

A driver (ODP, HMM, SVA, a device secondary on another partition) subscribes to a range of an
mm instead of to the whole mm: ``mmu_interval_notifier_insert(core, mni, mm, start, length,
ops)``. An invalidation of the mm calls ``ops.invalidate(mni, range, cur_seq)`` of each
notifier whose interval overlaps the range, before the hlist notifiers (the core calls
``MmuItree.invalidate`` from ``invalidate_range_start`` and ``MmuItree.inv_end`` from
``invalidate_range_end``). There is no ``invalidate_range_end`` op: the end is one
``mn_itree_inv_end()`` for the whole tree.

The read side is a collision-retry scheme like a seqcount, with many writers at once
(``mmu_interval_read_begin``)::

    fault (driver)                            invalidation (core)
    --------------                            -------------------
    seq = mmu_interval_read_begin(mni)
      [waits while mni's last invalidate is the one in progress]
    get_user_pages / hmm_range_fault          mn_itree_inv_start_range:
      (may sleep)                               lock; invalidate_seq |= 1 (odd); cur_seq = it
                                              ops.invalidate(mni, range, cur_seq):
                                                driver lock
                                                  mmu_interval_set_seq(mni, cur_seq)
                                                  zap the device's ptes in range
                                                driver unlock
    driver lock                               ... primary ptes torn down ...
      if mmu_interval_read_retry(mni, seq):   mn_itree_inv_end (the last active range):
          unlock; start again                   invalidate_seq += 1 (even); deferred
      install the device's ptes                 inserts/removes done; wake_up_all(wq)
    driver unlock
    [Required: a pte installed under the driver lock after read_retry() said no was read after
     every invalidation of it that had begun: an invalidation that sets the sequence first zaps
     it; one that set it before the lock is caught by read_retry]

For a device secondary (ODP, HMM, SVA), wherever it lives, the surface is: subclass
``MmuIntervalNotifierOps`` (``invalidate``), hold an ``MmuIntervalNotifier``, and through its
``OwnerPort`` call ``interval_notifier_insert(mni, mm_id, start, length, ops)``,
``interval_read_begin(mni)`` and ``interval_notifier_remove(mni)``; ``mmu_interval_set_seq``,
``mmu_interval_read_retry`` and ``mmu_interval_check_retry`` are local to its notifier.
``tests/doubles.py`` ``IntervalMirror`` is the whole pattern in forty lines.

The tree. The kernel keeps an augmented rb-tree (``rb_root_cached itree``) of intervals
[start, last] with ``last`` inclusive; this model keeps a list sorted by ``(start, insertion
order)`` and scans it. That gives the same notifiers in the same order as
``interval_tree_iter_first``/``_next`` (ascending start; among equal starts, insertion order,
as the rb-tree inserts an equal key to the right), at O(n) per walk rather than O(log n + k):
the semantics, not the rb-tree.

Sequence and tree, under ``lock`` (the subscriptions' spinlock, shared with the hlist):

- ``invalidate_seq`` starts at 2 and is odd exactly while the tree is "fully excluded": some
  range is being invalidated and it overlapped a notifier (or a notifier was inserted during
  it). While it is odd the tree may not change: inserts and removes go to ``deferred`` and are
  done by the last ``mn_itree_inv_end()``, which makes it even again (rtnl_unlock() style).
- ``active_invalidate_ranges`` counts the invalidate_range_start..end spans in progress; an
  odd sequence implies at least one.
- A notifier's own ``invalidate_seq`` is always odd: ``seq - 1`` when inserted idle, the odd
  sequence when inserted during an invalidation, then each ``cur_seq`` its driver records.

No SRCU: the tree is walked without one (unlike the hlist). A walk happens only while the
sequence is odd, when the tree cannot change, and a removal that finds the tree invalidating
waits (``wq``) until the sequence moves on, i.e. until every walk that could reach the notifier
has ended. The refcount is the mm's: insert takes ``mmgrab()`` (``mm.count``), remove drops it
once the notifier is out; after remove returns, the driver may free the notifier.

Oracle reports (``nodes.oracle``): each ``ops.invalidate`` call is a callout of op
``"invalidate"`` (invariant 4: none after remove returned); one that returns True opens the
notifier's window on the range (invariant 2), closed when that range ends.
"""

from __future__ import annotations

import errno
from typing import TYPE_CHECKING, Any, Awaitable

from nodes.errors import InternalError, InvalidArgument, Overflow
from nodes.locks import WaitQueue
from nodes.notifier import MODERN, MmuNotifierEvent, MmuNotifierRange, MMU_NOTIFIER_RANGE_BLOCKABLE
from nodes.runtime import call_maybe_async, might_sleep, run_atomic

if TYPE_CHECKING:
    from nodes.mm import Mm
    from nodes.notifier import MmuNotifierMm, NotifierCore

ULONG_MAX = (1 << 64) - 1  # the last address an interval may end at (unsigned long)
ITREE_OP = "invalidate"  # the op name of an interval notifier's callout, for the oracle and traces


class MmuIntervalNotifierOps:
    """struct mmu_interval_notifier_ops: what a driver gives ``mmu_interval_notifier_insert``.
    Subclass it and override ``invalidate``; a plain or an ``async def`` method."""

    def invalidate(self, mni: "MmuIntervalNotifier", range: MmuNotifierRange, cur_seq: int) -> bool | Awaitable[bool]:
        """Called when ``range`` of the notifier's mm, which overlaps ``mni``'s interval, is about
        to be invalidated (``range.event`` says why), before the primary ptes change, with no
        lock of the core held. Under the driver's own lock (the one its fault path holds around
        ``mmu_interval_read_retry``), call ``mmu_interval_set_seq(mni, cur_seq)``, then drop the
        device's translations of the range; return True. From then until the range ends the
        driver must not install a translation in it: its faults see ``read_retry`` true.

        May sleep if ``range.blockable()``. If not (the OOM reaper), it must not sleep: if it
        would have to (the lock is taken: ``Mutex.trylock()`` failed, or the work crosses the
        network) it returns False, and ``invalidate_range_start`` answers -EAGAIN (the OOM
        reaper's caller then calls no end and tries later). The core drives it with no suspension allowed then: a sleep is
        ``SleepingInAtomicContext``. Returning False for a blockable range is a driver bug the
        kernel WARNs about and ignores (recorded in ``MmuItree.warnings``).

        Not called after ``mmu_interval_notifier_remove(mni)`` returned, and may not itself call
        remove (it would wait for itself)."""
        raise NotImplementedError


class MmuIntervalNotifier:
    """struct mmu_interval_notifier: one driver's subscription to [start, last] of an mm.

    Fields set by insert: ``mm``, ``ops``, ``start``, ``last`` (inclusive, as the kernel's
    interval_tree_node; ``end`` = last + 1) and the first ``invalidate_seq``. ``invalidate_seq``
    is then written only through ``mmu_interval_set_seq`` (by the driver's ``invalidate``) and
    read by ``mmu_interval_read_begin``/``_retry``. Invariant: it is odd once inserted.

    A secondary on another partition holds one too, for its own fault path (read_retry,
    set_seq); the tree holding it is the owner's (``nodes.remote``), reached through the
    secondary's ``OwnerPort``."""

    def __init__(self, name: str):
        self.name = name
        self.mm: Any = None  # the Mm (on the owner), or the MmRef of a secondary's copy
        self.ops: MmuIntervalNotifierOps | None = None
        self.start = 0
        self.last = 0
        self.invalidate_seq = 0
        self.itree: MmuItree | None = None  # the owner's tree it is inserted in, from insert to remove
        self.in_tree = False  # !RB_EMPTY_NODE(&interval_tree.rb): in the sorted list
        self.deferred = False  # on deferred_list (an insert or a remove waiting for inv_end)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name} [{self.start:#x}, {self.last:#x}])"

    @property
    def end(self) -> int:
        return self.last + 1

    def overlaps(self, start: int, last: int) -> bool:
        """Whether [start, last] (inclusive) meets this notifier's interval."""
        return self.start <= last and start <= self.last


class MmuItree:
    """The interval-tree half of struct mmu_notifier_subscriptions (``has_itree`` is this being
    present on ``MmuNotifierMm.itree``): the tree, its sequence, the deferred list, the wait
    queue. Made by the first ``mmu_notifier_register(NULL, mm)`` (``NotifierCore.register``
    with no notifier); lives as long as the mm's notifier bookkeeping."""

    def __init__(self, nmm: "MmuNotifierMm", mm: "Mm", core: "NotifierCore"):
        self.mm = mm
        self.lock = nmm.lock  # subscriptions->lock: one spinlock for the hlist and the tree
        self.core = core  # what the tree reports to: the partition's oracle, runtime and trace
        self.oracle = core.oracle
        self.runtime = core.runtime
        # invariant: odd => active_invalidate_ranges > 0 and the tree does not change
        self.invalidate_seq = 2
        self.active_invalidate_ranges = 0  # invariant: >= 0
        self.tree: list[MmuIntervalNotifier] = []  # invariant: sorted by (start, insertion order)
        self.deferred: list[MmuIntervalNotifier] = []  # hlist_add_head order: newest first
        self.wq = WaitQueue(f"{mm.name}.itree.wq")
        self.warnings: list[str] = []  # the kernel's WARN_ONs on this tree, for tests and traces

    def is_invalidating(self) -> bool:
        """mn_itree_is_invalidating(): the sequence is odd. Caller holds ``lock``."""
        return bool(self.invalidate_seq & 1)

    def _check(self) -> None:
        if self.active_invalidate_ranges < 0 or (self.is_invalidating() and not self.active_invalidate_ranges):
            raise InternalError(f"{self.mm.name} itree: invalidate_seq {self.invalidate_seq} with "
                                f"{self.active_invalidate_ranges} active ranges")

    def _warn(self, what: str) -> None:
        self.warnings.append(what)
        self.runtime.trace("warn", f"WARNING: {what}")

    # -- the tree --------------------------------------------------------------------------

    def _tree_insert(self, mni: MmuIntervalNotifier) -> None:
        """interval_tree_insert(): after every notifier of the same or a lower start."""
        at = len(self.tree)
        while at and self.tree[at - 1].start > mni.start:
            at -= 1
        self.tree.insert(at, mni)
        mni.in_tree = True

    def _tree_remove(self, mni: MmuIntervalNotifier) -> None:
        """interval_tree_remove()."""
        self.tree.remove(mni)
        mni.in_tree = False

    def _overlapping(self, start: int, last: int, after: int = -1) -> tuple[int, MmuIntervalNotifier | None]:
        """interval_tree_iter_first() (``after`` -1) / _next(): the first notifier past index
        ``after`` overlapping [start, last], with its index."""
        for i in range(after + 1, len(self.tree)):
            mni = self.tree[i]
            if mni.start > last:
                break
            if mni.last >= start:
                return i, mni
        return -1, None

    # -- the write side: the core's invalidations ------------------------------------------

    def inv_start_range(self, range: MmuNotifierRange) -> tuple[int, MmuIntervalNotifier | None, int]:
        """mn_itree_inv_start_range(): count the range active; if it overlaps a notifier, make
        the sequence odd. Returns the first overlapping notifier (and its index) and cur_seq."""
        with self.lock:
            self.active_invalidate_ranges += 1
            i, mni = self._overlapping(range.start, range.end - 1)
            if mni is not None:
                self.invalidate_seq |= 1
            return i, mni, self.invalidate_seq

    async def invalidate(self, range: MmuNotifierRange) -> int:
        """mn_itree_invalidate(), called by invalidate_range_start before the hlist's walk: each
        overlapping notifier's ``ops.invalidate(mni, range, cur_seq)``, in tree order; 0. A
        False from a non-blockable range ends this range at once (mn_itree_inv_end) and
        answers -EAGAIN: the core returns it without walking the hlist, and the caller may not
        call invalidate_range_end. A False from a blockable range is the kernel's WARN_ON, and
        the walk goes on."""
        i, mni, cur_seq = self.inv_start_range(range)
        frozen = len(self.tree)
        while mni is not None:
            if not await self._call(mni, range, cur_seq):
                if range.blockable():
                    self._warn(f"{ITREE_OP} of interval notifier {mni.name} returned false for a blockable "
                               f"range [{range.start:#x}, {range.end:#x})")
                else:
                    if self.core.trace_callouts:
                        self.runtime.trace("notifier", f"invalidate_range_start [{range.start:#x}, {range.end:#x}) "
                                           f"of {self.mm.name}: interval notifier {mni.name} would sleep: -EAGAIN")
                    self.inv_end(range.start, range.end)
                    return -errno.EAGAIN
            if len(self.tree) != frozen:  # cannot happen while the sequence is odd
                raise InternalError(f"{self.mm.name} itree changed during an invalidation walk")
            i, mni = self._overlapping(range.start, range.end - 1, i)
        return 0

    async def _call(self, mni: MmuIntervalNotifier, range: MmuNotifierRange, cur_seq: int) -> bool:
        """One ``ops.invalidate``, reported to the oracle; driven with no sleep allowed when the
        range is not blockable."""
        assert mni.ops is not None
        self.oracle.callout(mni, self.mm, ITREE_OP, (range.start, range.end, cur_seq))
        if self.core.trace_callouts:
            self.runtime.trace("callout", f"{ITREE_OP}([{range.start:#x}, {range.end:#x}), {range.event.name}, "
                                          f"seq {cur_seq}) -> {mni.name} on {self.mm.name}")
        timings = self.core.timings
        t0 = self.runtime.now() if timings.enabled else 0.0
        try:
            if range.blockable():
                ok = await call_maybe_async(mni.ops.invalidate, mni, range, cur_seq)
            else:
                ok = run_atomic(f"{ITREE_OP} of interval notifier {mni.name} (a non-blockable range)",
                                mni.ops.invalidate, mni, range, cur_seq)
        finally:
            self.oracle.callout_done(mni, self.mm, ITREE_OP)
            if timings.enabled and range.blockable():  # as the core times a sleepable callout
                timings.callout(self.runtime.now(), self.runtime.now() - t0, self.mm, ITREE_OP)
        if not isinstance(ok, bool):
            raise InvalidArgument(f"{ITREE_OP} of interval notifier {mni.name} returned {ok!r}, not a bool")
        if ok:
            self.oracle.interval_invalidated(mni, self.mm, range.start, range.end)
        return ok

    def inv_end(self, start: int, end: int) -> None:
        """mn_itree_inv_end(), called by invalidate_range_end before the hlist's walk (and by a
        failed or released range): one active range fewer; the last one makes the sequence
        even, does the deferred inserts and removes, and wakes ``wq``. [start, end) is the
        range ending, for the oracle only (the kernel's takes none)."""
        self.oracle.interval_range_ended(self.mm, start, end)
        with self.lock:
            if not self.active_invalidate_ranges:
                # a range that began before the mm had interval notifiers, which the tree never
                # counted: the register's mm_take_all_locks() excludes every VM operation's range,
                # but not an exported invalidate by a driver holding none of those locks (the
                # kernel's unsigned count would wrap here)
                self._warn(f"invalidate_range_end [{start:#x}, {end:#x}) of {self.mm.name} began before "
                           f"its interval notifiers were registered")
                return
            self.active_invalidate_ranges -= 1
            if self.active_invalidate_ranges or not self.is_invalidating():
                self._check()
                return
            self.invalidate_seq += 1
            for mni in self.deferred:
                if mni.in_tree:
                    self._tree_remove(mni)
                else:
                    self._tree_insert(mni)
                mni.deferred = False
            self.deferred.clear()
        self.wq.wake_all()

    async def release(self) -> None:
        """mn_itree_release(), called by __mmu_notifier_release (exit_mmap) before the hlist's
        ->release: every notifier gets ``invalidate`` of the whole address space, event
        RELEASE, blockable; then the range ends. The notifiers stay in the tree: their drivers
        still remove them."""
        range = MmuNotifierRange(self.mm, 0, ULONG_MAX, MmuNotifierEvent.RELEASE, MMU_NOTIFIER_RANGE_BLOCKABLE)
        await self.invalidate(range)
        self.inv_end(range.start, range.end)

    def seq_released(self, seq: int) -> bool:
        """mmu_interval_seq_released() (319561669a59): has the sequence moved on from ``seq``?
        Read under the lock, so a remove cannot return between inv_end's increment and its
        processing of the deferred list (here that step is one atomic section anyway)."""
        with self.lock:
            return self.invalidate_seq != seq


# -- the driver's API -----------------------------------------------------------------------------


def _require_modern(core: "NotifierCore", what: str) -> None:
    if not core.modern:
        raise InvalidArgument(
            f"{what}: the {core.semantics!r} notifier core has no interval notifiers (they came with "
            f"Linux 5.5, 99cb252f5e68); run with semantics {' or '.join(repr(m) for m in MODERN)}")


def _itree_of(mni: MmuIntervalNotifier, what: str) -> MmuItree:
    if mni.itree is None:
        raise InvalidArgument(
            f"{what}({mni.name}): the notifier is not inserted in an mm of this partition (a secondary "
            f"on another partition reaches its owner's tree through its OwnerPort)")
    return mni.itree


def _check_interval(mni: MmuIntervalNotifier, start: int, length: int) -> int:
    """The interval's last address; ``Overflow`` (EOVERFLOW) for length 0 or one past ULONG_MAX."""
    if not isinstance(start, int) or not isinstance(length, int) or start < 0 or length < 0:
        raise InvalidArgument(f"mmu_interval_notifier_insert({mni.name}): start {start!r} and length "
                              f"{length!r} must be integers >= 0")
    if length == 0 or start + length - 1 > ULONG_MAX:
        raise Overflow(f"mmu_interval_notifier_insert({mni.name}): start {start:#x} length {length:#x} "
                       f"has no last address within unsigned long")
    return start + length - 1


async def mmu_interval_notifier_insert(core: "NotifierCore", mni: MmuIntervalNotifier, mm: "Mm", start: int,
                                       length: int, ops: MmuIntervalNotifierOps) -> None:
    """mmu_interval_notifier_insert(): subscribe ``mni`` to [start, start + length) of ``mm``
    (a partition's ``core``: the kernel's is global). The first insert on an mm registers the
    mm for interval notifiers (mmu_notifier_register(NULL, mm): mmap_sem for write and
    mm_take_all_locks, so it may sleep). On return ``ops.invalidate`` will be called for every
    overlapping invalidation, but the notifier may not be in the tree yet (inserted during an
    invalidation, it is deferred to its end): establish translations only through
    ``mmu_interval_read_begin``. The caller holds an mm_users reference."""
    _require_modern(core, "mmu_interval_notifier_insert")
    might_sleep("mmu_interval_notifier_insert")
    nmm = mm.notifier_mm
    if nmm is None or nmm.itree is None:
        await core.register(None, mm)
    _insert(core, mni, mm, start, length, ops)


async def mmu_interval_notifier_insert_locked(core: "NotifierCore", mni: MmuIntervalNotifier, mm: "Mm", start: int,
                                              length: int, ops: MmuIntervalNotifierOps) -> None:
    """mmu_interval_notifier_insert_locked(): the same, the caller holding mmap_sem for write."""
    _require_modern(core, "mmu_interval_notifier_insert_locked")
    if not mm.mmap_sem.writer:
        raise InvalidArgument(f"mmu_interval_notifier_insert_locked({mni.name}) on {mm.name} without "
                              f"mmap_sem held for write")
    nmm = mm.notifier_mm
    if nmm is None or nmm.itree is None:
        await core.register_locked(None, mm)
    _insert(core, mni, mm, start, length, ops)


def _insert(core: "NotifierCore", mni: MmuIntervalNotifier, mm: "Mm", start: int, length: int,
            ops: MmuIntervalNotifierOps) -> None:
    """__mmu_interval_notifier_insert()."""
    if mni.itree is not None:
        raise InvalidArgument(f"interval notifier {mni.name} is already inserted on {mni.mm.name}")
    last = _check_interval(mni, start, length)
    if mm.users <= 0:  # WARN_ON: the caller must hold mmget() (c9682d10271e)
        raise InvalidArgument(f"mmu_interval_notifier_insert({mni.name}) on {mm.name}, whose mm_users is "
                              f"{mm.users} (the caller must hold an mmget() reference)")
    assert mm.notifier_mm is not None and mm.notifier_mm.itree is not None
    itree = mm.notifier_mm.itree
    mni.mm, mni.ops, mni.start, mni.last = mm, ops, start, last
    mni.in_tree = mni.deferred = False
    mm.count += 1  # mmgrab(): pairs with the mmdrop in remove
    with itree.lock:
        if itree.active_invalidate_ranges:
            # a range in progress may cover this interval: its notifier starts as invalidated
            if itree.is_invalidating():
                itree.deferred.insert(0, mni)
                mni.deferred = True
            else:
                itree.invalidate_seq |= 1
                itree._tree_insert(mni)
            mni.invalidate_seq = itree.invalidate_seq
        else:
            # odd, and not the current sequence: read_begin does not wait
            mni.invalidate_seq = itree.invalidate_seq - 1
            itree._tree_insert(mni)
        itree._check()
    mni.itree = itree
    core.oracle.interval_inserted(mni, mm)
    if core.trace_callouts:
        core.runtime.trace("notifier", f"interval notifier {mni.name} [{start:#x}, {last:#x}] inserted on {mm.name}"
                           f"{' (deferred)' if mni.deferred else ''}")


async def mmu_interval_notifier_remove(mni: MmuIntervalNotifier) -> None:
    """mmu_interval_notifier_remove(): unsubscribe. If the tree is invalidating, the removal
    is deferred to the last mn_itree_inv_end() and this waits for it (an insert still deferred
    is simply dropped): once it returns no ``ops.invalidate`` of ``mni`` runs or will run, and
    the driver may free it. May sleep; not from within ``ops.invalidate``."""
    itree = _itree_of(mni, "mmu_interval_notifier_remove")
    might_sleep("mmu_interval_notifier_remove")
    mm = itree.mm
    seq = 0
    with itree.lock:
        if itree.is_invalidating():
            if not mni.in_tree:  # inserted after the tree froze: drop the deferred insert
                itree.deferred.remove(mni)
                mni.deferred = False
            else:
                itree.deferred.insert(0, mni)
                mni.deferred = True
                seq = itree.invalidate_seq
        else:
            itree._tree_remove(mni)
    mni.itree = None  # the driver may not use it for read_begin any more
    if seq:
        while not itree.seq_released(seq):
            await itree.wq.wait()
    mm.count -= 1  # mmdrop(): pairs with the mmgrab in insert
    itree.oracle.interval_removed(mni, mm)


async def mmu_interval_read_begin(mni: MmuIntervalNotifier) -> int:
    """mmu_interval_read_begin(): begin a read of the notifier's range; pass the result to
    ``mmu_interval_read_retry`` under the driver's lock before installing what was read. If
    the notifier's last invalidation is the one in progress (its sequence is the tree's), wait
    on ``wq`` until the tree's sequence moves on. The answer may already be stale: the caller
    bounds its own retries."""
    itree = _itree_of(mni, "mmu_interval_read_begin")
    with itree.lock:
        seq = mni.invalidate_seq
        is_invalidating = seq == itree.invalidate_seq
    if is_invalidating:
        might_sleep("mmu_interval_read_begin")
        while itree.invalidate_seq == seq:
            await itree.wq.wait()
    return seq


def mmu_interval_read_retry(mni: MmuIntervalNotifier, seq: int) -> bool:
    """mmu_interval_read_retry(): True if an invalidation of the notifier's range began since
    ``mmu_interval_read_begin`` returned ``seq``. Call it under the driver's lock (the one
    ``invalidate`` takes around ``mmu_interval_set_seq``), and install only if it is False."""
    return mni.invalidate_seq != seq


def mmu_interval_check_retry(mni: MmuIntervalNotifier, seq: int) -> bool:
    """mmu_interval_check_retry(): the same test without the driver's lock (READ_ONCE), to give
    up early on work that will be retried anyway; a False here proves nothing."""
    return mni.invalidate_seq != seq


def mmu_interval_set_seq(mni: MmuIntervalNotifier, cur_seq: int) -> None:
    """mmu_interval_set_seq(): record that the invalidation ``cur_seq`` reached ``mni``; call it
    from ``ops.invalidate`` under the driver's lock. ``cur_seq`` is always odd (the tree's
    sequence while it invalidates); anything else is ``InvalidArgument``."""
    if not isinstance(cur_seq, int) or cur_seq < 0 or not cur_seq & 1:
        raise InvalidArgument(f"mmu_interval_set_seq({mni.name}, {cur_seq!r}): cur_seq must be the odd "
                              f"sequence the invalidation was given")
    mni.invalidate_seq = cur_seq
