"""Sleeping locks of the simulated kernel: the rw-semaphore (mmap_sem) and the mutex.

Both are FIFO and fair in the way Linux's are: once a writer waits on an rw-semaphore, readers
that arrive after it queue behind it (no writer starvation); when the lock is released the
front of the queue is granted, all consecutive readers at once. Taking either in atomic context
raises ``SleepingInAtomicContext`` (might_sleep()). Spinlocks live in ``nodes.runtime``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from contextlib import asynccontextmanager
from typing import AsyncIterator

from nodes import lockdep
from nodes.errors import InternalError
from nodes.runtime import might_sleep


class RwSemaphore:
    """Linux's rw_semaphore: many readers or one writer."""

    def __init__(self, name: str):
        self.name = name
        self.readers = 0  # invariant: readers == 0 or not writer
        self.writer = False
        self._waiters: deque[tuple[bool, asyncio.Future[None]]] = deque()  # (is_write, fut)

    def __repr__(self) -> str:
        return f"RwSemaphore({self.name}, readers={self.readers}, writer={self.writer})"

    @property
    def contended(self) -> bool:
        return bool(self._waiters)

    async def down_read(self) -> None:
        might_sleep(f"down_read({self.name})")
        if not self.writer and not self._waiters:
            self.readers += 1
            return
        await self._wait(False)

    def try_down_read(self) -> bool:
        """down_read_trylock() (mmap_read_trylock()): take it for read if that needs no wait
        (no writer, no one queued); never sleeps."""
        if self.writer or self._waiters:
            return False
        self.readers += 1
        return True

    async def down_write(self) -> None:
        might_sleep(f"down_write({self.name})")
        if not self.writer and self.readers == 0 and not self._waiters:
            self.writer = True
            return
        await self._wait(True)

    def up_read(self) -> None:
        if self.readers <= 0:
            raise InternalError(f"up_read({self.name}) without a reader")
        self.readers -= 1
        self._grant()

    def up_write(self) -> None:
        if not self.writer:
            raise InternalError(f"up_write({self.name}) without the writer")
        self.writer = False
        self._grant()

    async def _wait(self, is_write: bool) -> None:
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (is_write, fut)
        self._waiters.append(entry)
        try:
            await fut
        except BaseException:
            if fut.done() and not fut.cancelled():
                # granted but we are leaving: give it back
                if is_write:
                    self.up_write()
                else:
                    self.up_read()
            else:
                self._waiters.remove(entry)
                self._grant()
            raise

    def _grant(self) -> None:
        if self.writer:
            return
        while self._waiters:
            is_write, fut = self._waiters[0]
            if is_write:
                if self.readers == 0:
                    self._waiters.popleft()
                    self.writer = True
                    fut.set_result(None)
                return
            self._waiters.popleft()
            self.readers += 1
            fut.set_result(None)

    @asynccontextmanager
    async def read(self) -> AsyncIterator[None]:
        await self.down_read()
        try:
            yield
        finally:
            self.up_read()

    @asynccontextmanager
    async def write(self) -> AsyncIterator[None]:
        await self.down_write()
        try:
            yield
        finally:
            self.up_write()


class Mutex:
    """A sleeping mutex (FIFO), with might_sleep() on lock, checked by ``nodes.lockdep``
    (``lock_class``: the lockdep class; all anon_vma locks are one class)."""

    def __init__(self, name: str, lock_class: str | None = None):
        self.name = name
        self.lock_class = lock_class if lock_class is not None else name
        self._lock = asyncio.Lock()

    @property
    def locked(self) -> bool:
        return self._lock.locked()

    async def lock(self) -> None:
        might_sleep(f"mutex_lock({self.name})")
        dep = lockdep.checker()
        task = asyncio.current_task()
        if dep is not None:
            dep.acquire(task, self.lock_class, self, self.name)
        await self._lock.acquire()
        if dep is not None:
            dep.acquired(task, self.lock_class, self)

    def trylock(self) -> bool:
        """mutex_trylock(): take the mutex if that needs no sleep (it is free and no one waits
        for it), else return False at once. Never sleeps, so it may be called where sleeping is
        not allowed (a non-blockable invalidate). As in the kernel, lockdep records the lock as
        held but a trylock adds no ordering dependency (it cannot wait, so cannot deadlock)."""
        acquire = self._lock.acquire()
        try:
            acquire.send(None)  # asyncio.Lock.acquire() returns without suspending when it can
        except StopIteration:
            dep = lockdep.checker()
            if dep is not None:
                dep.acquired(asyncio.current_task(), self.lock_class, self)
            return True
        acquire.close()  # it would have waited: withdraw from the queue
        return False

    def unlock(self) -> None:
        dep = lockdep.checker()
        if dep is not None:
            dep.released(asyncio.current_task(), self)
        self._lock.release()

    async def __aenter__(self) -> "Mutex":
        await self.lock()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.unlock()


class WaitQueue:
    """A wait queue (wait_queue_head_t): sleepers wait for the next ``wake_all``. Callers loop
    on their condition, as kernel code does around wait_event()."""

    def __init__(self, name: str):
        self.name = name
        # what the sleepers since the last wake_all wait for; None while no one sleeps (a wake-up
        # with no sleeper, the common case, then does nothing, as wake_up_all of an empty queue)
        self._event: asyncio.Event | None = None

    async def wait(self) -> None:
        might_sleep(f"wait_event({self.name})")
        if self._event is None:
            self._event = asyncio.Event()
        await self._event.wait()

    def wake_all(self) -> None:
        event = self._event
        if event is not None:
            self._event = None
            event.set()
