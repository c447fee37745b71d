"""The exceptions of the partition model, in three families.

- ``ModelError`` and its subclasses: misuse at an API boundary (a bad address, a bad size, a
  missing permission), or a partition that does not answer (``Unreachable``). Each carries the errno the kernel would return, and its message names
  the bad value. The rpc layer maps each to one gRPC status code.
- ``KernelBug``: the simulated kernel did something the real kernel would oops or BUG() on
  (sleeping in atomic context, dereferencing a deleted list entry, synchronize_srcu() inside its
  own read section). These are findings about the modelled semantics, not misuse.
- ``InternalError``: mmusim itself broke one of its own invariants. Never expected; always a bug
  in this code base.
"""

from __future__ import annotations

import errno as _errno


class ModelError(Exception):
    """A request the model refuses, with the errno the kernel would return."""

    errno: int = _errno.EINVAL

    def __init__(self, message: str):
        super().__init__(message)
        self.message = message


class InvalidArgument(ModelError):
    """EINVAL: a malformed request (unaligned address, non-positive size, bad flags)."""

    errno = _errno.EINVAL


class BadAddress(ModelError):
    """EFAULT: an address outside every VMA of the mm."""

    errno = _errno.EFAULT


class Unmapped(BadAddress):
    """ENOMEM: part of the range is not mapped (mprotect, madvise, mlock over a hole). The
    kernel's do_mprotect_pkey() answers -ENOMEM, not -EFAULT, for a hole in its range."""

    errno = _errno.ENOMEM


class PermissionDenied(ModelError):
    """EACCES: the caller lacks the permission (XPMEM segment permits, owner-only calls)."""

    errno = _errno.EACCES


class Exists(InvalidArgument):
    """EEXIST: mmap(MAP_FIXED_NOREPLACE) over a range that is already (partly) mapped."""

    errno = _errno.EEXIST


class NotFound(ModelError):
    """ENOENT: an unknown mm, notifier, segment or access permit id."""

    errno = _errno.ENOENT


class Interrupted(ModelError):
    """EINTR: a pending signal interrupted an interruptible wait (mm_take_all_locks)."""

    errno = _errno.EINTR


class OutOfMemory(ModelError):
    """ENOMEM: the partition's frame allocator has no free frame left."""

    errno = _errno.ENOMEM


class Released(ModelError):
    """Use of a secondary MMU or attachment after its ->release: the mm is going away."""

    errno = _errno.ESRCH


class Busy(ModelError):
    """EBUSY/EAGAIN: the operation could not be done now (a pinned page cannot migrate)."""

    errno = _errno.EAGAIN


class Overflow(InvalidArgument):
    """EOVERFLOW: a range whose last byte is past the end of the address type (an interval
    notifier of length 0, or start + length - 1 beyond ULONG_MAX)."""

    errno = _errno.EOVERFLOW


class Unreachable(ModelError):
    """A message to or from another partition got no answer in time: the partition is dead,
    cut off, or the message was lost (gRPC's UNAVAILABLE / DEADLINE_EXCEEDED)."""

    errno = _errno.EHOSTUNREACH


class KernelBug(Exception):
    """The simulated kernel hit a condition the real one would BUG()/oops on."""


class SleepingInAtomicContext(KernelBug):
    """A callout that runs under a spinlock (change_pte, clear_flush_young, test_young, or
    anything called with the page-table lock held) tried to sleep: the kernel's
    "BUG: scheduling while atomic"."""


class NullPointerDereference(KernelBug):
    """A list operation touched an entry that was already deleted (hlist_del_rcu of an
    unhashed node: the oops of commit 751efd8610)."""


class SrcuDeadlock(KernelBug):
    """synchronize() called inside a read-side critical section of the same SRCU domain; the
    kernel's lockdep says "Illegal synchronize_srcu() in same-type SRCU read-side critical
    section" and the call would never return."""


class InternalError(Exception):
    """mmusim broke one of its own invariants: a bug in mmusim, not in the modelled kernel."""
