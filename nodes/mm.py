"""Address spaces: the ``mm``, its VMAs and its page table.

The page table is kept per VMA as two numpy arrays indexed by page within the VMA: ``pfn``
(-1 where no frame is mapped) and ``flags`` (PTE_* bits). A VMA split (munmap or mprotect of
part of a VMA) slices the arrays, so every VM operation works on whole ranges at once.

Locks, as in the kernel:
- ``mmap_sem``: an rw-semaphore; faults and get_user_pages read it, munmap/mprotect/fork/
  THP collapse and notifier registration write it.
- ``page_table_lock``: a spinlock; pte updates and the non-sleeping callouts run under it.
- one ``anon_vma`` mutex per VMA: rmap walks (reclaim, migration, KSM) take it, and
  ``mm_take_all_locks`` takes all of them (interruptibly) to register a notifier.

Lifetime mirrors ``mm_users`` (address-space users; exit_mmap runs when it reaches zero) and
``mm_count`` (references to the struct; a registered notifier holds one).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Iterator

import numpy as np

from nodes.errors import BadAddress, Exists, Interrupted, InvalidArgument
from nodes.locks import Mutex, RwSemaphore, WaitQueue
from nodes.runtime import SpinLock, TaskSignals

if TYPE_CHECKING:
    from nodes.notifier import MmuNotifierMm

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
HPAGE_PMD_NR = 512  # pages in a transparent huge page (2 MiB on x86-64 / ia64 4K pages)
HPAGE_PMD_SIZE = HPAGE_PMD_NR * PAGE_SIZE
TASK_SIZE = 1 << 47

PTE_PRESENT = 1
PTE_WRITE = 2
PTE_YOUNG = 4
PTE_DIRTY = 8
PTE_SWAP = 16  # not present: the contents were written to swap by reclaim
PTE_MIGRATION = 32  # not present: a migration entry; faults wait for the migration
# not present: a device-private entry (the page is in a device's memory; nodes/migrate_device.py);
# the pte's pfn names the device page, and a fault migrates it back (migrate_to_ram)
PTE_DEVICE_PRIVATE = 64

PROT_READ = 1
PROT_WRITE = 2


def check_range(start: int, length: int, what: str = "range") -> int:
    """Validate a page-aligned user range; returns its end. Names the bad value."""
    if not isinstance(start, (int, np.integer)) or not isinstance(length, (int, np.integer)):
        raise InvalidArgument(f"{what}: start and length must be integers, got {start!r}, {length!r}")
    if start % PAGE_SIZE:
        raise InvalidArgument(f"{what}: start {start:#x} is not page aligned")
    if length <= 0:
        raise InvalidArgument(f"{what}: length {length} is not positive")
    if length % PAGE_SIZE:
        raise InvalidArgument(f"{what}: length {length} is not a multiple of the page size")
    if start < 0 or start + length > TASK_SIZE:
        raise InvalidArgument(f"{what}: [{start:#x}, {start + length:#x}) is outside user space")
    return start + length


def check_user_address(address: int, what: str, *, aligned: bool = False) -> int:
    """Validate one user virtual address: an integer in [0, TASK_SIZE), page aligned if
    ``aligned``. Returns it; ``InvalidArgument`` naming the bad value otherwise."""
    if not isinstance(address, (int, np.integer)):
        raise InvalidArgument(f"{what}: address {address!r} is not an integer")
    if not 0 <= address < TASK_SIZE:
        raise InvalidArgument(f"{what}: address {address:#x} is outside user space [0, {TASK_SIZE:#x})")
    if aligned and address % PAGE_SIZE:
        raise InvalidArgument(f"{what}: address {address:#x} is not page aligned")
    return address


def check_user_span(start: int, end: int, what: str) -> None:
    """Validate the range [start, end) of an invalidation: integers, non-empty, inside user
    space. Not necessarily page aligned (an exported invalidate need not be)."""
    if (type(start) is not int or type(end) is not int) and (  # (the common case first, without isinstance)
            not isinstance(start, (int, np.integer)) or not isinstance(end, (int, np.integer))):
        raise InvalidArgument(f"{what}: start and end must be integers, got {start!r}, {end!r}")
    if start >= end:
        raise InvalidArgument(f"{what}: empty range [{start:#x}, {end:#x})")
    if start < 0 or end > TASK_SIZE:
        raise InvalidArgument(f"{what}: [{start:#x}, {end:#x}) is outside user space [0, {TASK_SIZE:#x})")


@dataclass(eq=False)
class Vma:
    """A virtual memory area [start, end) of anonymous memory, with its slice of the page
    table."""

    start: int
    end: int
    prot: int
    # invariant: len(pfn) == len(flags) == (end - start) // PAGE_SIZE
    pfn: np.ndarray = field(repr=False)
    flags: np.ndarray = field(repr=False)
    anon_vma_lock: Mutex = field(repr=False)

    @classmethod
    def new(cls, start: int, end: int, prot: int, anon_vma_lock: Mutex) -> "Vma":
        n = (end - start) >> PAGE_SHIFT
        return cls(start, end, prot, np.full(n, -1, dtype=np.int64), np.zeros(n, np.uint8), anon_vma_lock)

    @property
    def npages(self) -> int:
        return (self.end - self.start) >> PAGE_SHIFT

    @property
    def writable(self) -> bool:
        return bool(self.prot & PROT_WRITE)

    def index(self, addr: int) -> int:
        return (addr - self.start) >> PAGE_SHIFT

    def pages(self, start: int, end: int) -> slice:
        """The slice of this VMA's arrays covering [start, end) clipped to the VMA."""
        lo = max(start, self.start)
        hi = min(end, self.end)
        return slice(self.index(lo), self.index(hi))

    def split(self, addr: int) -> tuple["Vma", "Vma"]:
        """Split at page-aligned ``addr`` (strictly inside): the kernel's split_vma(). Both
        halves share the anon_vma, as in the kernel."""
        i = self.index(addr)
        lo = Vma(self.start, addr, self.prot, self.pfn[:i].copy(), self.flags[:i].copy(), self.anon_vma_lock)
        hi = Vma(addr, self.end, self.prot, self.pfn[i:].copy(), self.flags[i:].copy(), self.anon_vma_lock)
        return lo, hi


class Mm:
    """One address space (struct mm_struct) on a partition."""

    def __init__(self, mm_id: int, partition_name: str = "p0"):
        self.id = mm_id
        self.name = f"{partition_name}/mm{mm_id}"
        self.vmas: list[Vma] = []  # invariant: sorted by start, non-overlapping
        self.mmap_sem = RwSemaphore(f"{self.name}.mmap_sem")
        self.page_table_lock = SpinLock(f"{self.name}.page_table_lock")
        self.users = 1  # mm_users: exit_mmap() runs when it reaches 0
        self.count = 1  # mm_count: the struct lives while > 0; a registered notifier holds one
        self.notifier_mm: "MmuNotifierMm | None" = None  # mm->mmu_notifier_mm, set on first register
        self.exited = False  # exit_mmap has finished: no VMA, no page left
        self.all_locks_taken: list[Mutex] = []  # held between mm_take/drop_all_locks
        self.migration_wq = WaitQueue(f"{self.name}.migration")  # woken when migration ptes go
        self.oom_victim = False  # MMF_OOM_VICTIM: the OOM killer chose it (vmops.oom_reap_task)
        self.oom_skip = False  # MMF_OOM_SKIP: the OOM reaper is done with it, or exit_mmap is

    @property
    def invalidate_seq(self) -> int:
        """The notifier core's invalidate sequence of this mm (``MmuNotifierMm.invalidate_seq``;
        0 while no notifier was ever registered). A callout to a secondary on another partition
        carries it in its ``MmRef``; a local one reads it here."""
        return 0 if self.notifier_mm is None else self.notifier_mm.invalidate_seq

    def __repr__(self) -> str:
        return f"Mm({self.name}, {len(self.vmas)} vmas)"

    # -- VMAs -------------------------------------------------------------------------------

    def find_vma(self, addr: int) -> Vma | None:
        """The VMA containing ``addr``, or None."""
        for v in self.vmas:
            if v.start <= addr < v.end:
                return v
            if v.start > addr:
                return None
        return None

    def vma_or_fault(self, addr: int) -> Vma:
        """The VMA containing ``addr``; ``BadAddress`` (EFAULT) naming it otherwise."""
        v = self.find_vma(addr)
        if v is None:
            raise BadAddress(f"address {addr:#x} is outside every VMA of {self.name}")
        return v

    def vmas_in(self, start: int, end: int) -> list[Vma]:
        """The VMAs overlapping [start, end), in address order."""
        return [v for v in self.vmas if v.start < end and v.end > start]

    def add_vma(self, start: int, length: int, prot: int = PROT_READ | PROT_WRITE) -> Vma:
        """mmap(MAP_ANONYMOUS|MAP_FIXED_NOREPLACE): a new anonymous VMA at [start, start+length).
        Overlap with an existing VMA is EEXIST (``Exists``) naming both ranges."""
        end = check_range(start, length, "mmap")
        for v in self.vmas_in(start, end):
            raise Exists(
                f"mmap: [{start:#x}, {end:#x}) overlaps existing VMA [{v.start:#x}, {v.end:#x}) of {self.name}"
            )
        vma = Vma.new(start, end, prot, Mutex(f"{self.name}.anon_vma@{start:#x}", "anon_vma"))
        self.vmas.append(vma)
        self.vmas.sort(key=lambda v: v.start)
        return vma

    def holes(self, start: int, end: int) -> list[tuple[int, int]]:
        """The unmapped gaps of [start, end), as (start, end) pairs in address order."""
        gaps, at = [], start
        for v in self.vmas_in(start, end):
            if v.start > at:
                gaps.append((at, v.start))
            at = max(at, v.end)
        if at < end:
            gaps.append((at, end))
        return gaps

    def split_at(self, addr: int) -> None:
        """Make ``addr`` a VMA boundary if it falls strictly inside a VMA."""
        v = self.find_vma(addr)
        if v is None or v.start == addr:
            return
        i = self.vmas.index(v)
        self.vmas[i : i + 1] = list(v.split(addr))

    def remove_vmas(self, start: int, end: int) -> list[Vma]:
        """Detach the VMAs inside [start, end) (after ``split_at`` both ends) and return them."""
        gone = [v for v in self.vmas if v.start >= start and v.end <= end]
        self.vmas = [v for v in self.vmas if not (v.start >= start and v.end <= end)]
        return gone

    # -- page table -------------------------------------------------------------------------

    def pte(self, addr: int) -> tuple[int, int]:
        """(pfn, flags) of the pte for ``addr``; (-1, 0) where nothing is mapped."""
        v = self.vma_or_fault(addr)
        i = v.index(addr)
        return int(v.pfn[i]), int(v.flags[i])

    def iter_present(self, start: int, end: int) -> Iterator[tuple[Vma, slice, np.ndarray]]:
        """For each VMA piece in [start, end): (vma, slice, mask of present ptes)."""
        for v in self.vmas_in(start, end):
            sl = v.pages(start, end)
            yield v, sl, (v.flags[sl] & PTE_PRESENT) != 0

    def mapped_pfns(self) -> np.ndarray:
        """Every pfn this mm's page table maps (with repeats), for accounting."""
        parts = [v.pfn[(v.flags & PTE_PRESENT) != 0] for v in self.vmas]
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.int64)

    def resident_pages(self) -> int:
        return int(sum(((v.flags & PTE_PRESENT) != 0).sum() for v in self.vmas))


async def mm_take_all_locks(mm: Mm, current: TaskSignals | None = None) -> None:
    """mm_take_all_locks(): take every anon_vma lock of ``mm`` (each shared lock once), checking
    for a pending signal before each; on a signal drop what was taken and fail with EINTR.
    The caller holds mmap_sem for write."""
    taken: list[Mutex] = []
    try:
        for v in mm.vmas:
            if current is not None and current.signal_pending():
                raise Interrupted(
                    f"mm_take_all_locks on {mm.name} interrupted by pending {current.pending} "
                    f"of {current.name} at VMA [{v.start:#x}, {v.end:#x}); nothing was changed"
                )
            if any(lock is v.anon_vma_lock for lock in taken):
                continue
            await v.anon_vma_lock.lock()
            taken.append(v.anon_vma_lock)
        if current is not None and current.signal_pending():
            raise Interrupted(
                f"mm_take_all_locks on {mm.name} interrupted by pending {current.pending} of "
                f"{current.name}; nothing was changed"
            )
    except BaseException:
        for lock in reversed(taken):
            lock.unlock()
        raise
    mm.all_locks_taken = taken


def mm_drop_all_locks(mm: Mm) -> None:
    """mm_drop_all_locks(): release what mm_take_all_locks took."""
    for lock in reversed(mm.all_locks_taken):
        lock.unlock()
    mm.all_locks_taken = []
