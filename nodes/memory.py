"""Physical memory of one partition: a frame allocator with refcounts, pins and stamps.

Every array is indexed by page frame number (pfn) and vectorised, so a partition can hold a
million frames (about 28 bytes each here, plus 4 for the oracle's secondary-map count) and a VM
operation on a million pages runs without a per-page Python loop.

A frame's *contents* are a stamp: (owner mm id, virtual page number, generation). The
generation is fresh on every allocation, so a read through a translation that outlived its
frame (the frame was freed and reused) sees a different stamp and is caught by invariant 6.

Refcounts follow the kernel's page->_count: one reference per pte that maps the frame, one per
get_user_pages pin (a pin is also counted in ``pincount``, as FOLL_PIN would), one per
transient holder. A frame returns to the allocator exactly when its refcount drops to zero.
"""

from __future__ import annotations

from typing import Callable

import numpy as np

from nodes.errors import InternalError, OutOfMemory

FREE_OWNER = -1  # owner of a free frame


def _counts(pfns: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The distinct pfns (ascending) and how often each occurs: a bincount, which for pfns
    of one partition is far cheaper than a sort-based unique."""
    counts = np.bincount(pfns)
    uniq = np.flatnonzero(counts)
    return uniq, counts[uniq].astype(np.int32)


class FrameTable:
    """The frames of one partition."""

    def __init__(self, nframes: int):
        if nframes <= 0:
            raise ValueError(f"a partition needs at least one frame, got nframes={nframes}")
        self.nframes = nframes
        # invariant: refcount[p] == 0 exactly for the frames on the free stack
        self.refcount = np.zeros(nframes, dtype=np.int32)
        # invariant: 0 <= pincount[p] <= refcount[p]
        self.pincount = np.zeros(nframes, dtype=np.int32)
        # the stamp: what a reader of the frame sees
        self.owner = np.full(nframes, FREE_OWNER, dtype=np.int32)
        self.vpn = np.zeros(nframes, dtype=np.int64)
        self.gen = np.zeros(nframes, dtype=np.uint32)
        # free stack: free_stack[:free_top] are the free pfns; low pfns handed out first
        self.free_stack = np.arange(nframes - 1, -1, -1, dtype=np.int32)
        self.free_top = nframes
        self._next_gen = 1
        # PageKsm: frames merged by KSM (write-protected, shared; never reused by a COW fault)
        self.ksm: set[int] = set()
        # called with the pfns about to return to the allocator (the oracle checks them)
        self.on_free: Callable[[np.ndarray], None] | None = None

    # -- allocation -------------------------------------------------------------------------

    @property
    def nfree(self) -> int:
        return self.free_top

    def alloc(self, owner: int, vpns: np.ndarray | list[int] | int) -> np.ndarray:
        """Allocate one frame per entry of ``vpns``, stamped (owner, vpn, fresh generation),
        each with refcount 1. Raises ``OutOfMemory`` naming the shortfall; allocates nothing
        then."""
        vpns = np.atleast_1d(np.asarray(vpns, dtype=np.int64))
        n = len(vpns)
        if n > self.free_top:
            raise OutOfMemory(
                f"out of frames: asked for {n}, {self.free_top} of {self.nframes} are free"
            )
        pfns = self.free_stack[self.free_top - n : self.free_top][::-1].copy()
        self.free_top -= n
        self.refcount[pfns] = 1
        self.pincount[pfns] = 0
        self.owner[pfns] = owner
        self.vpn[pfns] = vpns
        self.gen[pfns] = np.arange(self._next_gen, self._next_gen + n, dtype=np.uint64).astype(
            np.uint32
        )
        self._next_gen += n
        return pfns

    def get(self, pfns: np.ndarray | list[int] | int) -> None:
        """get_page(): take one more reference on each frame (repeats count twice)."""
        pfns = np.atleast_1d(np.asarray(pfns, dtype=np.int64))
        self._check_allocated(pfns, "get_page")
        np.add.at(self.refcount, pfns, 1)

    def put(self, pfns: np.ndarray | list[int] | int) -> np.ndarray:
        """put_page(): drop one reference on each frame; frames reaching zero are freed.
        Returns the pfns that returned to the allocator."""
        pfns = np.atleast_1d(np.asarray(pfns, dtype=np.int64))
        if len(pfns) == 0:
            return pfns
        self._check_allocated(pfns, "put_page")
        uniq, drops = _counts(pfns)
        over = drops > self.refcount[uniq]
        if over.any():  # repeats would drive refcount below zero without ever freeing
            bad = int(uniq[over][0])
            raise InternalError(
                f"put_page of frame {bad}: {int(drops[over][0])} drops of "
                f"{int(self.refcount[bad])} reference(s)"
            )
        self.refcount[uniq] -= drops
        freed = uniq[self.refcount[uniq] == 0]
        if len(freed):
            self._free(freed)
        return freed

    def pin(self, pfns: np.ndarray | list[int] | int) -> None:
        """A long-term get_user_pages pin: a reference that also counts in ``pincount``."""
        pfns = np.atleast_1d(np.asarray(pfns, dtype=np.int64))
        self._check_allocated(pfns, "pin")
        np.add.at(self.refcount, pfns, 1)
        np.add.at(self.pincount, pfns, 1)

    def unpin(self, pfns: np.ndarray | list[int] | int) -> np.ndarray:
        """Drop a pin (and its reference). Returns the pfns that were freed by it."""
        pfns = np.atleast_1d(np.asarray(pfns, dtype=np.int64))
        if len(pfns) == 0:
            return pfns
        self._check_allocated(pfns, "unpin")
        uniq, drops = _counts(pfns)
        short = drops > self.pincount[uniq]
        if short.any():
            bad = int(uniq[short][0])
            raise InternalError(f"unpin of frame {bad}: {int(drops[short][0])} unpin(s) of {int(self.pincount[bad])} pin(s)")
        self.pincount[uniq] -= drops
        return self.put(pfns)

    def _free(self, pfns: np.ndarray) -> None:
        if self.on_free is not None:
            self.on_free(pfns)
        n = len(pfns)
        self.owner[pfns] = FREE_OWNER
        self.pincount[pfns] = 0
        if self.ksm:
            self.ksm.difference_update(pfns.tolist())
        self.free_stack[self.free_top : self.free_top + n] = pfns
        self.free_top += n

    def _check_allocated(self, pfns: np.ndarray, what: str) -> None:
        if len(pfns) == 0:
            return
        if pfns.min() < 0 or pfns.max() >= self.nframes:
            raise InternalError(f"{what} of pfn outside 0..{self.nframes - 1}")
        if (self.refcount[pfns] <= 0).any():
            bad = int(pfns[self.refcount[pfns] <= 0][0])
            raise InternalError(f"{what} of free frame {bad}")

    # -- contents ---------------------------------------------------------------------------

    def stamp(self, pfn: int) -> tuple[int, int, int]:
        """The contents of one frame: (owner, vpn, generation)."""
        return int(self.owner[pfn]), int(self.vpn[pfn]), int(self.gen[pfn])

    def copy_contents(self, dst: np.ndarray, src: np.ndarray) -> None:
        """copy_page(): the destination frames now hold what the sources held. The generation
        of ``dst`` stays fresh (it is a different frame); owner and vpn are copied."""
        self.owner[dst] = self.owner[src]
        self.vpn[dst] = self.vpn[src]

    def is_free(self, pfn: int) -> bool:
        return self.refcount[pfn] == 0

    def allocated(self) -> np.ndarray:
        """The pfns currently allocated."""
        return np.flatnonzero(self.refcount > 0)

    def bytes_per_frame(self) -> float:
        arrays = (self.refcount, self.pincount, self.owner, self.vpn, self.gen, self.free_stack)
        return sum(a.nbytes for a in arrays) / self.nframes
