"""Sleepable RCU, the classic two-index algorithm of Linux v3.10 ``kernel/srcu.c``.

Readers increment a per-CPU counter ``c[idx]`` for the index ``completed & 1`` and may sleep
inside their read section; they may unlock on another CPU (only the sums matter). A grace
period waits for the readers of *both* indexes, so that a reader delayed between fetching its
index and incrementing the counter is still waited for:

    srcu_advance_batches(trycount):
        idx = 1 ^ (completed & 1)                 # the inactive index: late readers only
        if not try_check_zero(idx, trycount): return           # retry after a jiffy
        batch_done += batch_check1                             # stranded earlier batch
        if batch_check0 empty: return
        completed += 1                                         # the flip
        batch_check1 += batch_check0
        if not try_check_zero(idx ^ 1, max(trycount, 2)): return
        batch_done += batch_check1

    synchronize(): if no grace period is running, the caller becomes the "processing owner"
    and runs srcu_advance_batches itself (the fast path: 2 tries, 12 when expedited, 5 us
    apart); otherwise it queues on batch_queue. Whatever is left is handed to a worker that
    runs process_srcu once per jiffy until every batch is done.

Readers that start after the flip use the other index, so they never delay the grace period
(no starvation). Concurrent synchronize callers queued while a grace period runs share the next
one. ``synchronize()`` from inside a read section of the same domain would never return; like
the kernel's lockdep check it raises ``SrcuDeadlock`` instead.

The interface, its statistics and the read-section bookkeeping are shared with Tree SRCU
(``nodes/srcu_base.py``, ``nodes/srcu_tree.py``); a partition's ``srcu.algorithm`` picks one.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable

from nodes.errors import InternalError
from nodes.runtime import Runtime, might_sleep
from nodes.srcu_base import (  # noqa: F401  (re-exported: the timing constants' historical home)
    DEFAULT_HZ,
    DEFAULT_JIFFY_US,
    HZ_CHOICES,
    SYNCHRONIZE_SRCU_READER_DELAY_US,
    SrcuBase,
    SrcuCallback as _Callback,
    SrcuStatistics,
    jiffy_us,
)

SYNCHRONIZE_SRCU_TRYCOUNT = 2
SYNCHRONIZE_SRCU_EXP_TRYCOUNT = 12
SRCU_CALLBACK_BATCH = 10


@dataclass
class _Batch:
    items: deque[_Callback] = field(default_factory=deque)

    def __bool__(self) -> bool:
        return bool(self.items)

    def move_from(self, other: "_Batch") -> None:
        self.items.extend(other.items)
        other.items.clear()


class Srcu(SrcuBase):
    """One SRCU domain (struct srcu_struct) of the classic algorithm. See the module docstring."""

    ALGORITHM = "classic"

    def __init__(
        self,
        runtime: Runtime,
        ncpus: int,
        *,
        name: str = "srcu",
        jiffy_us: float = DEFAULT_JIFFY_US,
        reader_delay_us: float = SYNCHRONIZE_SRCU_READER_DELAY_US,
        trycount: int = SYNCHRONIZE_SRCU_TRYCOUNT,
        expedited_trycount: int = SYNCHRONIZE_SRCU_EXP_TRYCOUNT,
    ):
        super().__init__(runtime, ncpus, name=name, jiffy_us=jiffy_us, reader_delay_us=reader_delay_us)
        if trycount < 1 or expedited_trycount < 1:
            raise ValueError(f"bad SRCU trycount: trycount={trycount}, expedited_trycount={expedited_trycount}")
        self.trycount = trycount
        self.expedited_trycount = expedited_trycount
        # per-CPU counters; a reader may lock on one CPU and unlock on another, so a single
        # CPU's c[] may go negative; invariant: sum over CPUs of c[*][i] >= 0
        self.c = [[0, 0] for _ in range(ncpus)]
        self._readers = [0, 0]  # invariant: _readers[i] == sum over CPUs of c[*][i], and >= 0
        self.seq = [[0, 0] for _ in range(ncpus)]
        self.completed = 0
        self.running = False  # a grace-period owner (caller or worker) is active
        self.batch_queue = _Batch()
        self.batch_check0 = _Batch()
        self.batch_check1 = _Batch()
        self.batch_done = _Batch()

    def __repr__(self) -> str:
        return f"Srcu({self.name}, completed={self.completed}, readers={self.readers_active()})"

    def _statistics_state(self) -> dict[str, Any]:
        return {"completed": self.completed}

    # -- readers ----------------------------------------------------------------------------

    def read_lock(self, cpu: int = 0) -> int:
        """srcu_read_lock(): enter a read section on ``cpu``; returns the index to unlock."""
        if not 0 <= cpu < self.ncpus:
            raise self._bad_cpu(cpu)
        idx = self.completed & 1
        self.c[cpu][idx] += 1
        self._readers[idx] += 1
        self.seq[cpu][idx] += 1  # after the smp_mb() in the kernel
        self._note_lock()
        return idx

    def read_unlock(self, idx: int, cpu: int = 0) -> None:
        """srcu_read_unlock(): leave a read section, possibly on another CPU than it began."""
        if not 0 <= cpu < self.ncpus:
            raise self._bad_cpu(cpu)
        if idx != 0 and idx != 1:
            raise self._bad_idx(idx)
        if self._readers[idx] <= 0:
            raise InternalError(f"srcu_read_unlock({idx}) on {self.name} with no reader on that index")
        self.c[cpu][idx] -= 1
        self._readers[idx] -= 1
        self._note_unlock()

    def readers_active(self) -> int:
        return sum(c[0] + c[1] for c in self.c)

    def _readers_active_idx_check(self, idx: int) -> bool:
        """srcu_readers_active_idx_check(): True when index ``idx`` is stably zero.

        The kernel sums seq[idx], then c[idx], then seq[idx] again, and treats the index as
        idle only if the counts are zero and no reader incremented seq in between. Here the
        three sums run without a suspension point, so the re-check can only confirm; it is
        kept so the check reads like the kernel's.
        """
        self._stats["reader_checks"] += 1
        s = sum(q[idx] for q in self.seq)
        if sum(c[idx] for c in self.c) != 0:
            return False
        return sum(q[idx] for q in self.seq) == s

    async def _try_check_zero(self, idx: int, trycount: int) -> bool:
        """try_check_zero(): up to ``trycount`` checks, ``reader_delay_us`` apart (udelay)."""
        while True:
            if self._readers_active_idx_check(idx):
                return True
            trycount -= 1
            if trycount <= 0:
                return False
            await self.runtime.sleep(self.reader_delay_us)

    # -- grace periods ----------------------------------------------------------------------

    async def _advance_batches(self, trycount: int) -> None:
        """srcu_advance_batches(): see the module docstring."""
        idx = 1 ^ (self.completed & 1)
        if not self.batch_check0 and not self.batch_check1:
            return
        if not await self._try_check_zero(idx, trycount):
            return
        if self.batch_check1:
            self._stats["grace_periods"] += 1
        self.batch_done.move_from(self.batch_check1)
        if not self.batch_check0:
            return
        self.completed += 1  # srcu_flip(): new readers now use the other index
        self.batch_check1.move_from(self.batch_check0)
        if not await self._try_check_zero(idx ^ 1, max(trycount, 2)):
            return
        self._stats["grace_periods"] += 1
        self.batch_done.move_from(self.batch_check1)

    def _invoke_callbacks(self) -> None:
        """srcu_invoke_callbacks(): up to SRCU_CALLBACK_BATCH callbacks from batch_done."""
        for _ in range(SRCU_CALLBACK_BATCH):
            if not self.batch_done:
                return
            self._invoke(self.batch_done.items.popleft())

    def _reschedule(self) -> None:
        """srcu_reschedule(): hand the processing to the worker, or stop running."""
        if not (self.batch_done or self.batch_check1 or self.batch_check0 or self.batch_queue):
            self.running = False
            return
        self._queue_work(self.jiffy_us)

    def _queue_work(self, delay_us: float) -> None:
        self.runtime.spawn(self._process_after(delay_us), name=f"process_srcu[{self.name}]")

    async def _process_after(self, delay_us: float) -> None:
        """process_srcu(), run from the (delayed) worker."""
        await self.runtime.sleep(delay_us)
        self._stats["worker_runs"] += 1
        self.batch_check0.move_from(self.batch_queue)  # srcu_collect_new()
        await self._advance_batches(1)
        self._invoke_callbacks()
        self._reschedule()

    async def _synchronize(self, trycount: int) -> None:
        """__synchronize_srcu()."""
        might_sleep(f"synchronize_srcu({self.name})")
        self._check_not_reader("synchronize_srcu")
        self._stats["synchronize_calls"] += 1
        t0 = self.runtime.now()
        done_fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        head = _Callback(lambda: done_fut.done() or done_fut.set_result(None), "wakeme_after_rcu", t0)
        done_inline = False
        if not self.running:
            self.running = True  # steal the processing owner
            self.batch_check0.items.append(head)
            await self._advance_batches(trycount)
            if self.batch_done:
                if self.batch_done.items[0] is not head:
                    raise InternalError(f"{self.name}: fast path finished someone else's batch")
                self.batch_done.items.popleft()
                done_inline = True
                self._stats["fast_path_completions"] += 1
            self._reschedule()  # give the processing owner to the worker
        else:
            self.batch_queue.items.append(head)
        if not done_inline:
            await done_fut
        self._waited(t0)

    async def synchronize(self) -> None:
        """synchronize_srcu(): return after every read section that began before the call has
        ended (2 fast-path tries)."""
        await self._synchronize(self.trycount)

    async def synchronize_expedited(self) -> None:
        """synchronize_srcu_expedited(): the same wait with 12 fast-path tries instead of 2."""
        self._stats["expedited_calls"] += 1
        await self._synchronize(self.expedited_trycount)

    def call_srcu(self, func: Callable[[], Any], what: str = "callback") -> None:
        """call_srcu(): run ``func`` (which must not sleep) after a grace period, without
        waiting for it here."""
        self._stats["call_srcu_calls"] += 1
        self.batch_queue.items.append(_Callback(func, what, self.runtime.now()))
        if not self.running:
            self.running = True
            self._queue_work(0.0)
