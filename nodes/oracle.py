"""The invariant oracles of REFERENCE section 6, checked as events happen.

The notifier core, the frame allocator, the VM operations and the secondary MMUs report events
here; each event is checked at once and every violation is recorded with what went wrong, where
(partition, mm, notifier, frame, address) and when (the injected clock). Nothing is raised from
here: a run carries on and its report lists the violations. ``check_invariants()`` adds the
whole-partition sweep (frame accounting) for quiescent points and the end of a run.

1. A frame never returns to the allocator while any secondary maps or pins it.
2. No secondary translation is established inside an active range_start..range_end window
   that covers it (for notifiers that implement range_start; XPMEM, which does not, relies on
   its pins, which invariant 1 watches). For an interval notifier (``nodes.interval``) the
   window opens when its ``invalidate`` of the range returns True and closes when that range
   ends (or fails with EAGAIN, or is exit's RELEASE pass).
3. Every range_start is paired with one range_end.
4. After unregister returns, no method of that notifier runs; after an interval notifier's
   remove returns, no ``invalidate`` of it runs.
5. release runs before exit frees pages; a notifier gets release at most twice, and twice only
   when unregister and exit raced (one from each).
6. A read through a secondary translation returns the stamp the translation was made for.
7. Every frame is accounted for: free, or referenced exactly by the ptes of live mms and pins.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Iterable

import numpy as np

from nodes.errors import InternalError
from nodes.memory import FrameTable
from nodes.mm import Mm

if TYPE_CHECKING:
    from nodes.notifier import MmuNotifier

INVARIANTS = {
    1: "frame freed while a secondary maps or pins it",
    2: "secondary translation established inside an invalidate window",
    3: "invalidate_range_start/end not paired",
    4: "notifier method ran after unregister returned",
    5: "release missing before exit freed pages, or run too often",
    6: "read through a secondary translation returned the wrong page",
    7: "frame not accounted for",
}


@dataclass
class Violation:
    invariant: int
    what: str
    when: float
    where: dict[str, Any] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return INVARIANTS[self.invariant]

    def __str__(self) -> str:
        where = ", ".join(f"{k}={v}" for k, v in self.where.items())
        return f"[inv {self.invariant}: {self.name}] t={self.when:.3f}us {self.what} ({where})"


class Oracle:
    """The oracles of one partition (the owner side of every frame)."""

    MAX_DETAILS_PER_EVENT = 8  # a vectorised event reports at most this many frames by number

    def __init__(self, frames: FrameTable, now: Callable[[], float], partition: str = "p0"):
        self.frames = frames
        self.now = now
        self.partition = partition
        frames.on_free = self.frames_freed
        # invariant: smap[p] == number of live secondary translations of frame p
        self.smap = np.zeros(frames.nframes, dtype=np.int32)
        self.violations: list[Violation] = []
        self.checked = Counter[str]()  # events checked, per kind
        self._windows: dict[MmuNotifier, list[tuple[int, int, int]]] = defaultdict(list)
        self._mm_ranges: dict[int, Counter[tuple[int, int]]] = defaultdict(Counter)
        self._releases: dict[MmuNotifier, list[str]] = defaultdict(list)
        self._registered: dict[int, set[MmuNotifier]] = defaultdict(set)
        self._unregistered: set[MmuNotifier] = set()
        self._interval: set[Any] = set()  # interval notifiers inserted (and not yet removed)
        # invariant: sum over notifiers of _translations[mn][p] == smap[p]
        self._translations: dict[MmuNotifier, Counter[int]] = defaultdict(Counter)

    # -- recording --------------------------------------------------------------------------

    def violation(self, invariant: int, what: str, **where: Any) -> None:
        self.violations.append(Violation(invariant, what, self.now(), {"partition": self.partition, **where}))

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> dict[str, Any]:
        """The ``invariants`` block of results.json."""
        return {
            "checked": dict(self.checked),
            "violations": len(self.violations),
            "details": [str(v) for v in self.violations],
        }

    # -- notifier core events ---------------------------------------------------------------

    def registered(self, mn: MmuNotifier, mm: Mm) -> None:
        self._registered[mm.id].add(mn)
        self._unregistered.discard(mn)
        self._releases.pop(mn, None)

    def callout(self, mn: MmuNotifier, mm: Mm, op: str, args: tuple[Any, ...]) -> None:
        self.checked["callout"] += 1
        if mn in self._unregistered:
            self.violation(4, f"{op}{args} called after unregister returned", mm=mm.name, notifier=mn.name)
        if op == "invalidate_range_end":
            start, end = args
            w = self._windows.get(mn)
            if w and (mm.id, start, end) in w:
                w.remove((mm.id, start, end))

    def callout_done(self, mn: MmuNotifier, mm: Mm, op: str) -> None:
        """A callout of ``mn`` returned: if its unregister returned first, the method ran after
        unregister returned (invariant 4: what the rcu modes' synchronize_rcu() lets happen)."""
        if mn in self._unregistered:
            self.violation(4, f"{op} was still running when unregister returned", mm=mm.name, notifier=mn.name)

    def range_started(self, mn: MmuNotifier, mm: Mm, start: int, end: int) -> None:
        """``mn``'s range_start returned: its window is open until its range_end is called."""
        self._windows[mn].append((mm.id, start, end))

    def mm_range_start(self, mm: Mm, start: int, end: int) -> None:
        open_ranges = self._mm_ranges[mm.id]
        open_ranges[(start, end)] = open_ranges.get((start, end), 0) + 1

    def mm_range_end(self, mm: Mm, start: int, end: int) -> None:
        self.checked["range_end"] += 1
        open_ranges = self._mm_ranges[mm.id]
        n = open_ranges.get((start, end), 0)
        if n <= 0:
            self.violation(3, f"invalidate_range_end [{start:#x}, {end:#x}) without a range_start", mm=mm.name)
            return
        if n == 1:
            open_ranges.pop((start, end))  # no range of these bounds is open any more
        else:
            open_ranges[(start, end)] = n - 1

    def mm_range_abandoned(self, mm: Mm, start: int, end: int) -> None:
        """A non-blocking range_start of ``mm`` failed (-EAGAIN): its caller may not call
        range_end (mmu_notifier_invalidate_range_start_nonblock()), so no range_end will pair
        with it and the range is no longer open."""
        open_ranges = self._mm_ranges[mm.id]
        if open_ranges[(start, end)] <= 0:
            raise InternalError(f"range_start [{start:#x}, {end:#x}) of {mm.name} abandoned but never started")
        open_ranges[(start, end)] -= 1
        if not open_ranges[(start, end)]:
            del open_ranges[(start, end)]

    # -- interval notifier events (nodes/interval.py) -----------------------------------------
    # Their ``invalidate`` calls are reported through ``callout``/``callout_done`` (op
    # "invalidate"), which check invariant 4 for them as for any notifier.

    def interval_inserted(self, mni: Any, mm: Mm) -> None:
        self._interval.add(mni)
        self._unregistered.discard(mni)

    def interval_invalidated(self, mni: Any, mm: Mm, start: int, end: int) -> None:
        """``mni``'s invalidate of [start, end) returned True: its window is open until the
        range ends (``interval_range_ended``)."""
        self._windows[mni].append((mm.id, start, end))

    def interval_range_ended(self, mm: Mm, start: int, end: int) -> None:
        """The range [start, end) of ``mm`` ended for the interval tree (mn_itree_inv_end): close
        the window it opened on each interval notifier (one per range in progress)."""
        for mni in self._interval:
            w = self._windows.get(mni)
            if w and (mm.id, start, end) in w:
                w.remove((mm.id, start, end))

    def interval_removed(self, mni: Any, mm: Mm) -> None:
        """mmu_interval_notifier_remove(mni) returned: no invalidate of it may run from now on."""
        self._interval.discard(mni)
        self._unregistered.add(mni)
        self._windows.pop(mni, None)

    def released(self, mn: MmuNotifier, mm: Mm, by: str) -> None:
        self.checked["release"] += 1
        runs = self._releases[mn]
        runs.append(by)
        if len(runs) > 2:
            self.violation(5, f"release ran {len(runs)} times ({', '.join(runs)})", mm=mm.name, notifier=mn.name)
        elif len(runs) == 2 and runs[0] == runs[1]:
            self.violation(5, f"release ran twice from {by}, not from an unregister/exit race", mm=mm.name, notifier=mn.name)

    def unregistered(self, mn: MmuNotifier, mm: Mm) -> None:
        self._unregistered.add(mn)
        self._registered[mm.id].discard(mn)
        self._windows.pop(mn, None)

    def exit_freeing(self, mm: Mm) -> None:
        """exit_mmap is about to free ``mm``'s pages: every notifier still registered with a
        release op must have been released."""
        from nodes.notifier import has_op

        self.checked["exit"] += 1
        for mn in self._registered.get(mm.id, ()):
            if has_op(mn, "release") and not self._releases.get(mn):
                self.violation(5, "exit frees pages before ->release ran", mm=mm.name, notifier=mn.name)

    # -- secondary MMU events ---------------------------------------------------------------

    def translation_established(self, mn: MmuNotifier, mm: Mm, address: int, pfn: int) -> None:
        self.checked["translation"] += 1
        for mm_id, start, end in self._windows.get(mn, ()):
            if mm_id == mm.id and start <= address < end:
                self.violation(
                    2, f"translation of {address:#x} -> pfn {pfn} inside window [{start:#x}, {end:#x})",
                    mm=mm.name, notifier=mn.name, address=hex(address), pfn=pfn,
                )
                break
        if self.frames.is_free(pfn):
            self.violation(1, f"translation of {address:#x} to free frame {pfn}", mm=mm.name, notifier=mn.name, pfn=pfn)
        self.smap[pfn] += 1
        self._translations[mn][pfn] += 1

    def translations_dropped(self, mn: MmuNotifier, pfns: Iterable[int] | np.ndarray) -> None:
        pfns = np.asarray(list(pfns) if not isinstance(pfns, np.ndarray) else pfns, dtype=np.int64)
        if len(pfns) == 0:
            return
        held = self._translations[mn]
        held.subtract(pfns.tolist())
        if min(held[int(p)] for p in np.unique(pfns)) < 0:
            raise InternalError(f"notifier {mn.name} dropped a translation it did not hold")
        np.subtract.at(self.smap, pfns, 1)
        if (self.smap[pfns] < 0).any():
            raise InternalError(f"secondary translation count of frame {pfns[self.smap[pfns] < 0][0]} below zero")

    def holds(self, mn: MmuNotifier, pfns: Iterable[int]) -> bool:
        """Whether ``mn`` holds a translation to each of ``pfns`` (counted with repeats)."""
        need = Counter(pfns)
        held = self._translations.get(mn, Counter())
        return all(held[p] >= n for p, n in need.items())

    def forget_notifier(self, mn: MmuNotifier) -> int:
        """A fenced secondary (its partition is gone) holds no translation any more: drop them
        all. Returns how many there were."""
        held = self._translations.pop(mn, Counter())
        pfns = [pfn for pfn, n in held.items() for _ in range(n)]
        if pfns:
            np.subtract.at(self.smap, np.asarray(pfns, dtype=np.int64), 1)
        return len(pfns)

    def dma_read(self, mn: MmuNotifier, mm: Mm, address: int, pfn: int, expected: tuple[int, int, int]) -> tuple[int, int, int]:
        """A remote read through ``mn``'s translation of ``address``: returns what the frame
        holds and checks it against what the translation was made for."""
        self.checked["read"] += 1
        actual = self.frames.stamp(pfn)
        if self.frames.is_free(pfn) or actual != expected:
            state = "free" if self.frames.is_free(pfn) else f"stamp {actual}"
            self.violation(
                6, f"read of {address:#x} through pfn {pfn} expected stamp {expected}, frame is {state}",
                mm=mm.name, notifier=mn.name, address=hex(address), pfn=pfn,
            )
        return actual

    # -- memory events ----------------------------------------------------------------------

    def frames_freed(self, pfns: np.ndarray) -> None:
        self.checked["free"] += len(pfns)
        bad = pfns[(self.smap[pfns] > 0) | (self.frames.pincount[pfns] > 0)]
        for pfn in bad[: self.MAX_DETAILS_PER_EVENT]:
            self.violation(
                1, f"frame {int(pfn)} freed while mapped by {int(self.smap[pfn])} secondary "
                f"translation(s) and pinned {int(self.frames.pincount[pfn])} time(s)",
                pfn=int(pfn), stamp=self.frames.stamp(int(pfn)),
            )
        if len(bad) > self.MAX_DETAILS_PER_EVENT:
            self.violation(1, f"{len(bad) - self.MAX_DETAILS_PER_EVENT} more frames freed while mapped or pinned")

    # -- sweep ------------------------------------------------------------------------------

    def check_invariants(self, mms: Iterable[Mm], *, final: bool = False) -> list[Violation]:
        """Sweep the partition (invariant 7, and 3 at the end). Call at a quiescent point: no
        VM operation half-done. ``final``: the run is over, so no window may be open and no
        page may stay pinned. Returns the violations this sweep found (also recorded)."""
        before = len(self.violations)
        self.checked["sweep"] += 1
        mapped = [mm.mapped_pfns() for mm in mms if not mm.exited]
        refs = np.bincount(np.concatenate(mapped).astype(np.int64), minlength=self.frames.nframes) if mapped else np.zeros(self.frames.nframes, np.int64)
        expected = refs + self.frames.pincount
        wrong = np.flatnonzero(expected != self.frames.refcount)
        for pfn in wrong[: self.MAX_DETAILS_PER_EVENT]:
            self.violation(
                7, f"frame {int(pfn)} has refcount {int(self.frames.refcount[pfn])} but {int(refs[pfn])} "
                f"pte(s) and {int(self.frames.pincount[pfn])} pin(s) of live mms", pfn=int(pfn),
            )
        if len(wrong) > self.MAX_DETAILS_PER_EVENT:
            self.violation(7, f"{len(wrong) - self.MAX_DETAILS_PER_EVENT} more frames not accounted for")
        if final:
            for mm_id, ranges in self._mm_ranges.items():
                for (start, end), n in ranges.items():
                    self.violation(3, f"{n} invalidate_range_start [{start:#x}, {end:#x}) never ended", mm=f"mm{mm_id}")
            pinned = np.flatnonzero(self.frames.pincount > 0)
            if len(pinned):
                self.violation(7, f"{len(pinned)} frame(s) still pinned at the end of the run, e.g. pfn {int(pinned[0])}")
        return self.violations[before:]

