"""A lock-dependency checker in the spirit of the kernel's lockdep (``kernel/locking/lockdep.c``).

Every ``Mutex`` acquisition is reported here with the task that takes it. The checker keeps, per
event loop (one sim run, or one live partition's process):

- the locks each task holds, so that a task taking a lock it already holds is reported as
  "possible recursive locking detected": that task will wait for itself forever;
- a graph of lock *classes* (all anon_vma locks are one class, as in lockdep): taking class B
  while holding class A adds the edge A -> B; an edge that closes a cycle is reported as
  "possible circular locking dependency", the inversion, even if no deadlock happened this time.

As in lockdep, ``fs_reclaim`` is a pseudo-lock: direct reclaim "takes" it for its duration
(``reclaim_map``), so taking a lock inside reclaim, and entering reclaim with a lock held, are
both orderings it learns. Reports are collected, never raised: the run carries on (and, for a
recursive lock, deadlocks, which the virtual-time loop reports as ``Deadlock``).
"""

from __future__ import annotations

import asyncio
import weakref
from contextlib import contextmanager
from typing import Any, Iterator

_checkers: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, LockDep]" = weakref.WeakKeyDictionary()


class LockDep:
    """The lock-dependency state of one event loop."""

    def __init__(self) -> None:
        self.held: dict[Any, list[tuple[str, Any]]] = {}  # task -> [(class, lock)], in order taken
        self.edges: dict[str, set[str]] = {}  # class -> classes taken while it was held
        self.reports: list[str] = []
        self._reported: set[tuple[str, str]] = set()

    def _reaches(self, src: str, dst: str) -> bool:
        seen, todo = set(), [src]
        while todo:
            c = todo.pop()
            if c == dst:
                return True
            if c not in seen:
                seen.add(c)
                todo.extend(self.edges.get(c, ()))
        return False

    def acquire(self, task: Any, cls: str, lock: Any, what: str) -> None:
        """``task`` is about to take ``lock`` of class ``cls`` (``what`` names it)."""
        held = self.held.setdefault(task, [])
        for hcls, hlock in held:
            if hlock is lock:
                self.reports.append(
                    f"possible recursive locking detected: task {_name(task)} already holds {what} and "
                    f"tries to take it again: it will wait for itself forever")
                continue
            if hcls == cls:
                continue  # same-class nesting (mm_take_all_locks takes every anon_vma: annotated)
            if self._reaches(cls, hcls) and (hcls, cls) not in self._reported:
                self._reported.add((hcls, cls))
                self.reports.append(
                    f"possible circular locking dependency: task {_name(task)} takes {cls} ({what}) while "
                    f"holding {hcls}, but {cls} -> ... -> {hcls} was seen before")
            self.edges.setdefault(hcls, set()).add(cls)

    def acquired(self, task: Any, cls: str, lock: Any) -> None:
        self.held.setdefault(task, []).append((cls, lock))

    def released(self, task: Any, lock: Any) -> None:
        held = self.held.get(task, [])
        for i in range(len(held) - 1, -1, -1):
            if held[i][1] is lock:
                del held[i]
                break
        if not held:
            self.held.pop(task, None)


def _name(task: Any) -> str:
    return task.get_name() if hasattr(task, "get_name") else repr(task)


def checker() -> LockDep | None:
    """The checker of the running loop (made on first use); None outside a loop."""
    try:
        loop = asyncio.get_running_loop()
    except RuntimeError:
        return None
    dep = _checkers.get(loop)
    if dep is None:
        dep = _checkers[loop] = LockDep()
    return dep


@contextmanager
def reclaim_map() -> Iterator[None]:
    """Direct reclaim as lockdep's ``fs_reclaim`` pseudo-lock: held for the duration."""
    dep = checker()
    task = asyncio.current_task()
    token = object()
    if dep is not None:
        dep.acquire(task, "fs_reclaim", token, "fs_reclaim (direct reclaim)")
        dep.acquired(task, "fs_reclaim", token)
    try:
        yield
    finally:
        if dep is not None:
            dep.released(task, token)
