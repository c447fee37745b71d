"""What the model is given rather than reaching for: time, tasks and atomic context.

The model in ``nodes/`` never reads the wall clock and never creates an unsupervised task. It
receives a ``Runtime`` built from a ``Clock`` (``cluster/`` provides a virtual clock for the sim
backend and a wall clock for the ray backend). All times are microseconds.

Atomic context mirrors the kernel's preempt count: code that holds a spinlock (the page-table
lock, a notifier list lock) runs in atomic context and must not sleep. In this model "sleep"
means "suspend the coroutine". ``run_atomic`` drives a callout's coroutine by hand and raises
``SleepingInAtomicContext`` the moment it would suspend, so a secondary that needs the network
for an op the kernel calls under a spinlock is caught, named, and never half-run.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import inspect
import types
from typing import Any, Awaitable, Callable, Coroutine, Generator, Protocol

from nodes.errors import InternalError, SleepingInAtomicContext

_current_tasks = asyncio.tasks._current_tasks  # the running task of each loop (Runtime.current_task)


class Clock(Protocol):
    """An injected source of time, in microseconds."""

    def now(self) -> float:
        """The current time, in microseconds since an arbitrary origin."""

    def sleep(self, us: float) -> Awaitable[None]:
        """An awaitable suspending the awaiting task for ``us`` microseconds."""


# The stack of atomic sections the running code is inside, innermost last. Only synchronous
# code runs while it is non-empty (that is the point of atomic context), so one module-level
# stack is exact even with many tasks.
_atomic_stack: list[str] = []


def in_atomic() -> bool:
    """True while the running code holds a spinlock or runs a non-sleeping callout."""
    return bool(_atomic_stack)


def might_sleep(what: str) -> None:
    """The kernel's might_sleep(): raise if ``what`` is about to sleep in atomic context."""
    if _atomic_stack:
        raise SleepingInAtomicContext(
            f"BUG: sleeping function {what} called from atomic context "
            f"(inside {_atomic_stack[-1]})"
        )


class SpinLock:
    """A spinlock: held only by synchronous code, so holding it is atomic context.

    ``with lock:`` marks the body atomic; an attempt to sleep inside it raises
    ``SleepingInAtomicContext``. Taking a spinlock already held is a self-deadlock in the kernel
    and an ``InternalError`` here (no other task can run while synchronous code holds it).
    """

    def __init__(self, name: str):
        self.name = name
        self.held = False  # invariant: True only while a synchronous `with` body runs

    def __enter__(self) -> "SpinLock":
        if self.held:
            raise InternalError(f"spinlock {self.name} taken recursively: self-deadlock")
        self.held = True
        _atomic_stack.append(f"spinlock {self.name}")
        return self

    def __exit__(self, *exc: object) -> None:
        _atomic_stack.pop()
        self.held = False


def run_atomic(what: str, fn: Callable[..., Any], *args: Any) -> Any:
    """Call ``fn(*args)`` in atomic context and return its result.

    ``fn`` may be a plain function or a coroutine function. A coroutine is driven by hand: if it
    finishes without suspending, its value is returned; if it suspends (awaits the network, a
    lock, the clock) it is closed and ``SleepingInAtomicContext`` names ``what``.
    """
    _atomic_stack.append(what)
    try:
        result = fn(*args)
        if inspect.iscoroutine(result):
            try:
                result.send(None)
            except StopIteration as done:
                return done.value
            result.close()
            raise SleepingInAtomicContext(
                f"BUG: scheduling while atomic: {what} suspended; it is called under a "
                f"spinlock and must not sleep"
            )
        if inspect.isawaitable(result):
            raise SleepingInAtomicContext(f"BUG: {what} returned an awaitable in atomic context")
        return result
    finally:
        _atomic_stack.pop()


def call_maybe_async(fn: Callable[..., Any], *args: Any) -> Awaitable[Any]:
    """Call a sleepable op that may be written as a plain or an async function; await what
    this returns (``await call_maybe_async(op, ...)``): ``op_awaitable(fn(*args))``."""
    return op_awaitable(fn(*args))


def op_awaitable(result: Any) -> Awaitable[Any]:
    """What to await of what a sleepable op returned: an async op's coroutine (or any
    awaitable) as it is, so awaiting it costs no frame of this function's; a plain op's result
    wrapped in an awaitable that gives it at once. The callouts' hot paths call the op
    themselves and come here only for what is not a coroutine
    (``r if type(r) is CoroutineType else op_awaitable(r)``): no frame for an async op."""
    if type(result) is _CoroutineType or inspect.isawaitable(result):
        return result
    return _Done(result)


_CoroutineType = types.CoroutineType


class _Done:
    """An awaitable that gives ``value`` at once, without suspending."""

    __slots__ = ("value",)

    def __init__(self, value: Any):
        self.value = value

    def __await__(self) -> Generator[Any, None, Any]:
        return self.value
        yield  # a generator: awaiting returns value without suspending


class Runtime:
    """A clock plus supervised task spawning, handed to every model object.

    Every task spawned here is tracked; the first failure is kept and re-raised by ``check()``
    and ``join()``, so no error is ever dropped (the kernel analogue: a workqueue item that
    oopses is not silently forgotten).
    """

    def __init__(self, clock: Clock):
        self.clock = clock
        # the event loop the clock runs on, if it names one (a VirtualClock made in its loop
        # does), else None: asked of the clock, not of asyncio, whose get_running_loop() makes a
        # getpid() system call each time on Python 3.11 (to notice a fork)
        self.loop: asyncio.AbstractEventLoop | None = getattr(clock, "loop", None)
        if self.loop is not None:
            # current_task() as one C call, without a Python frame (SRCU's readers ask it at every
            # read_lock and read_unlock): asyncio's table of running tasks, read for this loop
            self.current_task = functools.partial(_current_tasks.get, self.loop)  # type: ignore[method-assign]
        # a dict, not a set: iteration in creation order keeps runs deterministic
        self._tasks: dict[asyncio.Task[Any], None] = {}
        self._failures: list[BaseException] = []

    def now(self) -> float:
        return self.clock.now()

    def running_loop(self) -> asyncio.AbstractEventLoop:
        """``asyncio.get_running_loop()``: the clock's loop when it names one (``loop``)."""
        loop = self.loop
        return asyncio.get_running_loop() if loop is None else loop

    def current_task(self) -> asyncio.Task[Any] | None:
        """``asyncio.current_task()``, the running task of ``running_loop()``, read from the
        table asyncio's C tasks keep (as current_task does) without asking for the running loop.
        A runtime whose clock names its loop has this as a ``functools.partial`` of the table's
        ``get`` instead (``__init__``): the same answer."""
        loop = self.loop
        if loop is None:
            return asyncio.current_task()
        return _current_tasks.get(loop)

    def sleep(self, us: float) -> Awaitable[None]:
        """An awaitable that sleeps ``us`` microseconds (``await runtime.sleep(us)``); returned
        straight from the clock, without a coroutine frame of its own (the simulator's hot
        path)."""
        if _atomic_stack:
            might_sleep("sleep")
        if us < 0:
            raise InternalError(f"negative sleep of {us} us")
        return self.clock.sleep(us)

    def trace(self, kind: str, detail: str) -> None:
        """Report a model event to the clock's trace, if it keeps one (the sim backend's does:
        the events enter the run's digest)."""
        tracer = getattr(self.clock, "trace", None)
        if tracer is not None:
            tracer(kind, detail)

    def spawn(self, coro: Coroutine[Any, Any, Any], *, name: str) -> asyncio.Task[Any]:
        """Start ``coro`` as a supervised task."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks[task] = None
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.pop(task, None)
        if not task.cancelled() and task.exception() is not None:
            self._failures.append(task.exception())  # type: ignore[arg-type]

    def check(self) -> None:
        """Re-raise the first failure of any spawned task."""
        if self._failures:
            raise self._failures[0]

    async def join(self) -> None:
        """Wait until every spawned task (and any they spawn) has finished; then ``check()``."""
        while self._tasks:
            await asyncio.wait(list(self._tasks))
        self.check()

    @property
    def pending_tasks(self) -> int:
        return len(self._tasks)


async def wait_all(aws: list[Awaitable[Any]]) -> list[Any]:
    """Await all ``aws`` concurrently and return their results; the first error propagates
    after every one has finished (no task is left running behind an error)."""
    results = await asyncio.gather(*aws, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r
    return results


# The CPU the running task is on, for per-CPU state (SRCU counters). Tasks inherit it from the
# task that spawned them; workloads set it per stream.
current_cpu: contextvars.ContextVar[int] = contextvars.ContextVar("current_cpu", default=0)


class TaskSignals:
    """The signal state of the task doing a call (the part of ``current`` the model needs):
    interruptible waits such as mm_take_all_locks() fail with EINTR when a signal is pending."""

    def __init__(self, name: str = "task"):
        self.name = name
        self.pending: str | None = None

    def send(self, sig: str = "SIGKILL") -> None:
        self.pending = sig

    def signal_pending(self) -> bool:
        return self.pending is not None
