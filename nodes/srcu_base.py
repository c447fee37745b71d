"""What every SRCU algorithm of the model shares: the ``Srcu`` interface, its statistics, the
read-section bookkeeping behind the ``SrcuDeadlock`` check, and the kernel's timing constants.

Two algorithms implement the interface: the classic two-index SRCU of Linux v3.10
``kernel/srcu.c`` (``nodes/srcu.py``) and Tree SRCU of Linux 4.12+ ``kernel/rcu/srcutree.c``
(``nodes/srcu_tree.py``). A partition builds one or the other (``nodes/partition.py``,
``SRCU_ALGORITHMS``); the notifier core only uses what is here:

    idx = srcu.read_lock(cpu)        # srcu_read_lock(): enter a read section that may sleep
    srcu.read_unlock(idx, cpu)       # srcu_read_unlock(), possibly on another CPU
    async with srcu.read_section(cpu) as idx: ...
    await srcu.synchronize()         # synchronize_srcu()
    await srcu.synchronize_expedited()
    srcu.call_srcu(func, what)       # call_srcu(): func() after a grace period, not waited for
    srcu.readers_active(), srcu.statistics()

Readers are counted per CPU (the ``cpu`` arguments; the notifier core passes
``nodes.runtime.current_cpu``); only the sums over CPUs matter. ``synchronize()`` from inside a
read section of the same domain would never return; like the kernel's lockdep check
("Illegal synchronize_srcu() in same-type SRCU read-side critical section") it raises
``SrcuDeadlock``. Time comes from the injected runtime, never from the wall clock.
"""

from __future__ import annotations

from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, ClassVar

from nodes.errors import SrcuDeadlock
from nodes.runtime import Runtime, run_atomic


#: udelay() between two checks of an index: v3.10 SYNCHRONIZE_SRCU_READER_DELAY, v5.10
#: SRCU_RETRY_CHECK_DELAY (and v6.6's srcu_retry_check_delay default): 5 us in all three
SYNCHRONIZE_SRCU_READER_DELAY_US = 5.0
#: the kernel's CONFIG_HZ choices (kernel/Kconfig.hz: HZ_100, HZ_250, HZ_300, HZ_1000)
HZ_CHOICES = (100, 250, 300, 1000)
DEFAULT_HZ = 1000


def jiffy_us(hz: int) -> float:
    """One jiffy at ``hz`` ticks a second, in microseconds: the interval SRCU's worker polls at
    (v3.10 ``SRCU_INTERVAL`` and v5.10 Tree SRCU's ``SRCU_INTERVAL`` are one jiffy). ``hz``
    must be one of ``HZ_CHOICES``."""
    if isinstance(hz, bool) or hz not in HZ_CHOICES:
        raise ValueError(f"HZ must be one of {', '.join(map(str, HZ_CHOICES))} (CONFIG_HZ), got {hz!r}")
    return 1_000_000.0 / hz


DEFAULT_JIFFY_US = jiffy_us(DEFAULT_HZ)


@dataclass
class SrcuStatistics:
    """Counters of one SRCU domain, for reports and tests (either algorithm)."""

    name: str
    completed: int  # the flip counter (v3.10 ->completed, Tree SRCU ->srcu_idx): one per grace period
    grace_periods: int  # grace periods that ended with something waiting for them
    synchronize_calls: int
    expedited_calls: int  # synchronize_expedited() calls
    fast_path_completions: int  # classic: synchronize calls finished inline (Tree SRCU has no inline path: 0)
    worker_runs: int  # process_srcu invocations
    reader_checks: int  # srcu_readers_active_idx_check calls
    call_srcu_calls: int
    callbacks_invoked: int
    waits: int  # completed synchronize calls
    wait_total_us: float
    wait_max_us: float
    readers_active: int  # read sections currently open
    algorithm: str = "classic"


@dataclass(eq=False)
class SrcuCallback:
    """An rcu_head: what call_srcu() queued (``func`` must not sleep), and when."""

    func: Callable[[], Any]
    what: str
    queued_at: float = 0.0


class SrcuBase:
    """The ``Srcu`` interface and the bookkeeping both algorithms share (struct srcu_struct's
    outside). A subclass provides the counters, the grace-period machinery and
    ``_statistics_state()``."""

    ALGORITHM: ClassVar[str]
    STATISTICS: ClassVar[type[SrcuStatistics]] = SrcuStatistics

    def __init__(self, runtime: Runtime, ncpus: int, *, name: str, jiffy_us: float, reader_delay_us: float):
        if isinstance(ncpus, bool) or not isinstance(ncpus, int) or ncpus <= 0:
            raise ValueError(f"an SRCU domain needs at least one CPU, got ncpus={ncpus!r}")
        if not jiffy_us > 0 or not reader_delay_us >= 0:
            raise ValueError(f"bad SRCU timing: jiffy_us={jiffy_us}, reader_delay_us={reader_delay_us}")
        self.runtime = runtime
        self.ncpus = ncpus
        self.name = name
        self.jiffy_us = jiffy_us
        self.reader_delay_us = reader_delay_us
        self._holders: dict[object, int] = {}  # task -> open read sections (for SrcuDeadlock)
        self._stats: dict[str, Any] = dict(
            grace_periods=0, synchronize_calls=0, expedited_calls=0, fast_path_completions=0,
            worker_runs=0, reader_checks=0, call_srcu_calls=0, callbacks_invoked=0, waits=0,
            wait_total_us=0.0, wait_max_us=0.0,
        )

    # -- the interface a subclass implements ---------------------------------------------------

    def read_lock(self, cpu: int = 0) -> int:
        """srcu_read_lock(): enter a read section on ``cpu``; returns the index to unlock."""
        raise NotImplementedError

    def read_unlock(self, idx: int, cpu: int = 0) -> None:
        """srcu_read_unlock(): leave a read section, possibly on another CPU than it began."""
        raise NotImplementedError

    def readers_active(self) -> int:
        """Read sections open now (the sum over CPUs and indexes)."""
        raise NotImplementedError

    async def synchronize(self) -> None:
        """synchronize_srcu(): return after every read section that began before the call has
        ended."""
        raise NotImplementedError

    async def synchronize_expedited(self) -> None:
        """synchronize_srcu_expedited(): the same wait, polling harder."""
        raise NotImplementedError

    def call_srcu(self, func: Callable[[], Any], what: str = "callback") -> None:
        """call_srcu(): run ``func`` (which must not sleep) after a grace period, without
        waiting for it here."""
        raise NotImplementedError

    def _statistics_state(self) -> dict[str, Any]:
        """The state fields of ``statistics()`` (``completed`` and the algorithm's own)."""
        raise NotImplementedError

    # -- shared --------------------------------------------------------------------------------

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.name}, {self._statistics_state()}, readers={self.readers_active()})"

    def _bad_cpu(self, cpu: int) -> ValueError:
        """The error of a read_lock/read_unlock on a CPU the domain does not have (its callers
        check ``0 <= cpu < ncpus`` themselves: the readers' hot path)."""
        return ValueError(f"cpu {cpu} outside 0..{self.ncpus - 1} of SRCU domain {self.name}")

    @staticmethod
    def _bad_idx(idx: int) -> ValueError:
        """The error of a read_unlock with an index that is neither 0 nor 1."""
        return ValueError(f"srcu index must be 0 or 1, got {idx!r}")

    def _note_lock(self) -> None:
        """The running task entered a read section (what lockdep's dep_map records)."""
        task = self.runtime.current_task()
        if task is not None:
            holders = self._holders
            holders[task] = holders.get(task, 0) + 1

    def _note_unlock(self) -> None:
        task = self.runtime.current_task()
        n = self._holders.get(task) if task is not None else None
        if n:
            if n == 1:
                del self._holders[task]
            else:
                self._holders[task] = n - 1

    def _check_not_reader(self, what: str) -> None:
        """lockdep's "Illegal synchronize_srcu() in same-type SRCU read-side critical section":
        ``what`` waits for a grace period the running task's own read section holds up."""
        task = self.runtime.current_task()
        if task is not None and self._holders.get(task):
            raise SrcuDeadlock(
                f"Illegal {what}() on {self.name} inside its own read-side critical "
                f"section (task {task.get_name()}): this would never return"
            )

    @asynccontextmanager
    async def read_section(self, cpu: int = 0, unlock_cpu: int | None = None) -> AsyncIterator[int]:
        """``async with srcu.read_section(cpu) as idx:`` a read section that may sleep."""
        idx = self.read_lock(cpu)
        try:
            yield idx
        finally:
            self.read_unlock(idx, cpu if unlock_cpu is None else unlock_cpu)

    def _invoke(self, cb: SrcuCallback) -> None:
        """Run one callback whose grace period has ended, in atomic context (the kernel runs
        SRCU callbacks under local_bh_disable(): they must not sleep)."""
        self._stats["callbacks_invoked"] += 1
        run_atomic(f"srcu callback {cb.what} on {self.name}", cb.func)

    def _waited(self, t0: float) -> None:
        """A synchronize call that began at ``t0`` returns now."""
        wait = self.runtime.now() - t0
        self._stats["waits"] += 1
        self._stats["wait_total_us"] += wait
        self._stats["wait_max_us"] = max(self._stats["wait_max_us"], wait)

    def statistics(self) -> SrcuStatistics:
        return self.STATISTICS(
            name=self.name, algorithm=self.ALGORITHM, readers_active=self.readers_active(),
            **self._statistics_state(), **self._stats,
        )
