"""A virtual-time asyncio event loop with a seeded scheduler and a hashable trace.

The loop is asyncio's own selector loop with its inner step (``_run_once``) replaced, in the
spirit of SimPy's ``Environment.step`` and trio's ``MockClock(autojump)``:

- ``time()`` is a virtual time in **microseconds** (one loop time unit is one us). When no
  callback is ready the clock jumps straight to the next timer; when nothing is ready and no
  timer is pending it raises ``Deadlock``: every task waits on something no one will do.
- Which ready callback runs next is chosen by a ``SchedulingPolicy``: ``fifo`` (asyncio's own
  order, the default), ``random`` (uniform among the ready callbacks, seeded) or ``pct``
  (probabilistic concurrency testing: random task priorities with d-1 priority change points,
  Burckhardt et al., ASPLOS 2010), or ``ReplayPolicy`` (the decisions of an earlier run).
- Every step is fed to a ``Trace``: (virtual time, which task or callback ran), plus the model
  events the model reports through ``Runtime.trace``. Its digest identifies the interleaving:
  the same seed gives the same digest, in any process.

Every coroutine the loop runs runs in a ``SimTask``: asyncio's Task rewritten so that a virtual
sleep is a heap push and a heap pop, SimPy-style, with no Future; ``loop.create_future()``
makes a ``SimFuture``, which wakes the task awaiting it straight from the ready queue. Both
are C ``asyncio.Future`` subclasses, so awaiting, gathering, cancelling, ``current_task()``
and per-task contextvars behave as on asyncio's own loop.

Two helpers serve the interconnect's request path: ``wait_until(fut, when)`` waits for a
SimFuture or SimTask with a deadline that is one entry in the sleeper heap (no Future, no timer
handle; dead entries are swept so memory stays flat), and ``loop.start_task`` starts a task
whose first step, under FIFO, runs at once as its own task.

Model code must use the injected ``VirtualClock``; asyncio helpers that take seconds
(``asyncio.wait_for``) would read them as microseconds on this loop.
"""

from __future__ import annotations

import array
import asyncio
import collections.abc
import contextvars
import functools
import hashlib
import heapq
import random
import selectors
import struct
import sys
import types
from collections import deque
from typing import Any, Awaitable, Coroutine, Generator, Sequence, TypeVar

try:
    import cython
except ImportError:  # Cython is not installed: this is the pure module
    class cython:  # type: ignore[no-redef]
        """Stands in for Cython's own pure-Python ``cython`` module: only ``compiled`` is read."""

        compiled = False
COMPILED: bool = cython.compiled  # True in the build Cython compiled from this file (see setup.py)

T = TypeVar("T")

POLICIES = ("fifo", "random", "pct")
TRACE_LEVELS = ("off", "hash", "full")
_MIN_SCHEDULED_TIMER_HANDLES = 100
_MIN_CANCELLED_TIMER_HANDLES_FRACTION = 0.5
_INF = float("inf")


class Deadlock(Exception):
    """Every task waits and no timer is pending: nothing can ever happen again."""


class ReplayDiverged(Exception):
    """A replayed run reached a state the recorded decisions do not fit: the code or the
    configuration differs from the run that was recorded."""


_BATCH = 4096  # trace entries hashed at a time (Trace.BATCH)
_EVENT = 1  # the code of a model event's entry (its text is the next of Trace._events)
_MOVED = 1 << 63  # the bit that makes a code a move of the virtual time (Trace.at)
_CODES_KEPT = 65536  # names whose code Trace.code remembers (then it forgets them all: see there)


class Trace:
    """What ran when: a running digest of every step and model event, and optionally the
    whole list (``level="full"``).

    Entries are buffered as uint64 *codes* in ``_codes`` and hashed in batches: a step is the
    code of the name of who ran (``Trace.code``: 63 bits of the BLAKE2b of the name, so that a
    step hashes eight bytes whatever its name's length; a task keeps its code in
    ``_Run.tcode``), a move of the virtual time is the float64's bits with the top bit set
    (``_MOVED``: the time is never negative, so its own top bit is clear; recording it formats
    nothing), and a model event is ``_EVENT``, its ``kind\x01detail`` the next of ``_events``.
    The digest is of two streams, each the concatenation of its batches, so it does not depend
    on where batches end: the codes' bytes (little-endian) and the events, each followed by a
    NUL."""

    def __init__(self, level: str = "hash"):
        if level not in TRACE_LEVELS:
            raise ValueError(f"trace level must be one of {TRACE_LEVELS}, got {level!r}")
        self.level = level
        self.BATCH = _BATCH  # entries hashed at a time (a test makes batches smaller)
        self._hash = hashlib.blake2b(digest_size=16)  # the codes
        self._events_hash = hashlib.blake2b(digest_size=16)
        self._codes = array.array("Q")
        self._moves = 0  # entries of _codes that are moves of the time
        self._events: list[str] = []  # the text of each _EVENT entry of _codes
        self._code_of: dict[str, int] = {}  # name -> code (Trace.code)
        self._names: dict[int, str] = {}  # code -> name, for the entries (level "full" only)
        self._now = 0.0  # the time last recorded
        self._full_now = 0.0  # the time of the last line of ``entries``
        self._entries: list[str] = []
        self._steps = 0
        self.events = 0

    @property
    def steps(self) -> int:
        """Scheduling steps recorded (0 when the level is ``off``)."""
        return self._steps + len(self._codes) - len(self._events) - self._moves

    def code(self, name: str) -> cython.ulonglong:
        """The code a step of ``name`` records: the first eight bytes of the BLAKE2b of its
        UTF-8, little-endian, without the top bit (``_MOVED``), and 2 or 3 for 0 or 1
        (``_EVENT``). A function of the name alone: the codes of the last ``_CODES_KEPT``
        names are remembered, and forgetting them changes nothing but the time, so a run that
        names a million tasks apart (as unnamed tasks are, ``qualname#N``) keeps its memory
        flat."""
        code = self._code_of.get(name)
        if code is None:
            if len(self._code_of) >= _CODES_KEPT:
                self._code_of.clear()
            code = int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "little") & (_MOVED - 1)
            if code <= _EVENT:
                code += 2
            self._code_of[name] = code
            if self.level == "full":
                self._names[code] = name
        return code

    def at(self, now: float) -> None:
        """Note the virtual time, if it has moved since last noted."""
        if now != self._now:
            _trace_move(self, now)

    def step(self, now: float, key: str) -> None:
        self.at(now)
        _trace_code(self._codes, self.code(key))
        if len(self._codes) >= self.BATCH:
            self._flush()

    def event(self, now: float, kind: str, detail: str) -> None:
        self.events += 1
        if self.level != "off":
            self.at(now)
            self._events.append(f"{kind}\x01{detail}")
            _trace_code(self._codes, _EVENT)
            if len(self._codes) >= self.BATCH:
                self._flush()

    def _flush(self) -> None:
        codes, events = self._codes, self._events
        if not codes:
            return
        self._steps += len(codes) - len(events) - self._moves
        self._moves = 0
        if _BIG_ENDIAN:
            packed = array.array("Q", codes)
            packed.byteswap()
            self._hash.update(packed)
        else:
            self._hash.update(codes)
        if events:
            self._events_hash.update("\x00".join(events).encode())
            self._events_hash.update(b"\x00")
        if self.level == "full":
            texts, names = iter(events), self._names
            for c in codes:
                if c & _MOVED:
                    self._full_now = struct.unpack("<d", (c & (_MOVED - 1)).to_bytes(8, "little"))[0]
                elif c == _EVENT:
                    kind, detail = next(texts).split("\x01", 1)
                    self._entries.append(f"{self._full_now!r} {kind} {detail}\n")
                else:
                    self._entries.append(f"{self._full_now!r} run {names[c]}\n")
        del codes[:]
        events.clear()

    @property
    def entries(self) -> list[str]:
        """Every line of the trace (``level="full"`` only): ``time kind detail``."""
        self._flush()
        return self._entries

    def digest(self) -> str:
        self._flush()
        return hashlib.blake2b(self._hash.digest() + self._events_hash.digest(), digest_size=16).hexdigest()


_BIG_ENDIAN = sys.byteorder == "big"


class SchedulingPolicy:
    """Chooses which of the ready callbacks runs next."""

    name = "policy"

    def choose(self, keys: Sequence[Any]) -> int:
        """``keys`` identifies the ready callbacks (a task, or a callback); return an index."""
        raise NotImplementedError


class RandomPolicy(SchedulingPolicy):
    """Uniformly random among the ready callbacks."""

    name = "random"

    def __init__(self, seed: int):
        self.rng = random.Random(seed)

    def choose(self, keys: Sequence[Any]) -> int:
        return self.rng.randrange(len(keys))


class PctPolicy(SchedulingPolicy):
    """PCT: each task gets a random priority when first seen; the highest-priority ready task
    runs; at ``depth - 1`` randomly chosen steps (within ``horizon``) the running task drops
    below every other. Callbacks that are not task steps (future callbacks) run first."""

    name = "pct"

    def __init__(self, seed: int, depth: int = 3, horizon: int = 20_000):
        if depth < 1 or horizon < depth:
            raise ValueError(f"pct needs depth >= 1 and horizon >= depth, got depth={depth}, horizon={horizon}")
        self.rng = random.Random(seed)
        self.depth = depth
        self.change_points = set(self.rng.sample(range(1, horizon), depth - 1))
        self.priority: dict[Any, float] = {}
        self._low = 0.0
        self._steps = 0

    def choose(self, keys: Sequence[Any]) -> int:
        best, best_prio = 0, None
        for i, key in enumerate(keys):
            if not isinstance(key, _TASKS):
                return i
            prio = self.priority.get(key)
            if prio is None:
                prio = self.priority[key] = self.depth + self.rng.random()
            if best_prio is None or prio > best_prio:
                best, best_prio = i, prio
        self._steps += 1
        if self._steps in self.change_points:
            self._low -= 1.0
            self.priority[keys[best]] = self._low
        return best


class LimitedPolicy(SchedulingPolicy):
    """``inner``'s choices for the first ``choices`` steps that have one, then FIFO (the first
    ready callback): a run that differs from ``inner``'s only after that many choices. The race
    finder shrinks a finding to the fewest seeded choices that still show it."""

    name = "limited"

    def __init__(self, inner: SchedulingPolicy, choices: int):
        if choices < 0:
            raise ValueError(f"choices must be >= 0, got {choices!r}")
        self.inner = inner
        self.choices = choices
        self._made = 0

    def choose(self, keys: Sequence[Any]) -> int:
        if self._made >= self.choices:
            return 0
        self._made += 1
        return self.inner.choose(keys)


class ReplayPolicy(SchedulingPolicy):
    """Re-make the choices recorded by an earlier run (``VirtualTimeLoop.decisions``)."""

    name = "replay"

    def __init__(self, decisions: Sequence[int]):
        self.decisions = list(decisions)
        self._next = 0

    def choose(self, keys: Sequence[Any]) -> int:
        if self._next >= len(self.decisions):
            raise ReplayDiverged(f"replay ran out of decisions after {self._next}")
        i = self.decisions[self._next]
        self._next += 1
        if i >= len(keys):
            raise ReplayDiverged(f"decision {self._next - 1} picks {i} of {len(keys)} ready callbacks")
        return i


def make_policy(name: str, seed: int) -> SchedulingPolicy | None:
    """The policy called ``name`` (None for fifo, which needs no choices)."""
    if name == "fifo":
        return None
    if name == "random":
        return RandomPolicy(seed)
    if name == "pct":
        return PctPolicy(seed)
    raise ValueError(f"scheduler must be one of {POLICIES}, got {name!r}")


class _NoIoSelector(selectors.BaseSelector):
    """The loop's selector: registrations are kept (asyncio registers its self-pipe) but never
    polled; the virtual loop never waits for I/O."""

    def __init__(self) -> None:
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def select(self, timeout: float | None = None) -> list[Any]:
        return []

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class _Ready(list):  # type: ignore[type-arg]
    """A callback on the virtual loop's ready queue, ``[callback, args, context]``: what
    ``VirtualTimeLoop.call_soon`` returns instead of an ``asyncio.Handle``. It is built in C
    (no Python ``__init__``), which matters because Future done-callbacks come through
    ``call_soon``. It has ``Handle``'s public ``cancel()`` and ``cancelled()``."""

    __slots__ = ()

    def cancel(self) -> None:
        self[0] = None

    def cancelled(self) -> bool:
        return self[0] is None


class _Core:
    """The scheduling state of a ``VirtualTimeLoop`` that every step reads and writes: the
    virtual time, the sleeper heap with its sequence numbers, and the ready queue (the loop's
    own ``_ready``). It is an object of its own so that the compiled build keeps it in a C
    struct (vtime.pxd); the pure module reads it as plain attributes."""

    __slots__ = ("now", "sleepers", "seq", "dead", "ready", "ready_append", "stopping", "tasks_made", "future_kwargs")

    def __init__(self) -> None:
        self.now = 0.0  # the virtual time, in microseconds
        self.sleepers: list[tuple[float, int, _Run]] = []  # heap of (wake-up time, seq, sleeping task)
        self.seq = 0  # the last sequence number given to a sleeper entry
        self.dead = 0  # roughly how many entries of sleepers are dead (wait_until)
        self.ready: Any = None  # the loop's ready queue, set once the loop has made it
        self.ready_append: Any = None  # its append (a bound method: no look-up per call)
        self.stopping = False  # the loop's ``_stopping`` (loop.stop() was called)
        self.tasks_made = 0  # how many SimTasks the loop has made (the last one's ``_Run.seq``)
        self.future_kwargs: dict[str, Any] = {}  # {"loop": the loop}: what makes a Future of the loop (_new_future)


class _Run:
    """What the scheduler keeps of a ``SimTask``: its coroutine, context and name, and the
    state of its suspension. The sleeper heap and the ready queue hold these, and a
    ``SimFuture``'s waiter is one; ``task`` is the ``SimTask`` itself (the Future that is
    awaited, the key a scheduling policy sees). An object of its own for the same reason as
    ``_Core``.

    Invariants: ``sleeping`` is the sequence number of the task's live entry in the sleeper
    heap, or 0 when it has none (an entry whose number differs is dead); ``fut_waiter`` is the
    Future the task waits for, or None; ``timed`` is set only while a ``wait_until`` waits,
    and then ``timed._waiter`` is this run; ``task`` is None once the task is done (it is never
    stepped again, and the task and its run are then no reference cycle).

    The compiled build makes one without calling ``__init__`` (``_setup_task``): every field
    this leaves at None, 0 or False is the C struct's own initial value."""

    __slots__ = ("task", "loop", "core", "coro", "context", "name", "seq", "tcode", "sleeping", "must_cancel",
                 "cancel_message", "cancels", "fut_waiter", "timed")

    def __init__(self, task: "SimTask", loop: "VirtualTimeLoop", coro: Coroutine[Any, Any, Any],
                 context: contextvars.Context, name: str, seq: int):
        self.task = task
        self.loop = loop
        self.core = loop._core
        self.coro = coro
        self.context = context
        self.name = name
        self.seq = seq  # creation order (``SimTask._seq``): a deterministic order for tasks
        self.tcode = 0  # the code of the name in a trace (Trace.code), once a step of it is traced
        self.sleeping = 0
        self.must_cancel = False
        self.cancel_message: Any = None  # Task._cancel_message
        self.cancels = 0  # Task._num_cancels_requested
        self.fut_waiter: Any = None
        self.timed: Any = None  # the SimFuture of a ``wait_until`` in progress


def _wake(run: _Run) -> None:
    """The Future ``run``'s task waits for is done: put the task on the ready queue (the
    deadline of a wait_until, if it was one, is dead)."""
    run.fut_waiter = None
    run.sleeping = 0
    run.core.ready_append(run)


def _step_run(run: _Run, exc: Any) -> None:
    """Run the task's coroutine to its next suspension (``Task.__step``), in its context.

    As asyncio's ``_enter_task``, it makes the task ``asyncio.current_task()`` (a dict store);
    unlike ``_leave_task``, it leaves it so when the step ends, as the next task's step only
    overwrites it. Whoever runs anything else on the loop (a callback), or leaves the loop's
    step, takes it out, as ``_leave_task`` does: what a step or a callback sees is asyncio's,
    at half the dict stores."""
    task = run.task
    if task is None:  # (Task.__step's check)
        raise asyncio.InvalidStateError(f"_step(): task {run.name!r} is already done")
    if run.must_cancel:
        if not isinstance(exc, asyncio.CancelledError):
            exc = task._make_cancelled_error()
        run.must_cancel = False
    loop = run.loop
    _current_tasks[loop] = task
    try:
        if exc is not None:
            result = run.coro.throw(exc)
        elif cython.compiled:
            result = _send_none(run.coro)  # coro.send(None), in C (vtime.pxd)
        else:
            result = run.coro.send(None)
    except BaseException as e:
        task._finish(e)
        return
    if type(result) is float:  # a virtual sleep until ``result``: into the sleeper heap
        core: _Core = run.core
        core.seq += 1
        run.sleeping = core.seq
        if cython.compiled:
            _heap_push(core.sleepers, (result, core.seq, run))  # heapq's, in C (vtime.pxd)
        else:
            _heappush(core.sleepers, (result, core.seq, run))
        if run.must_cancel:  # it cancelled itself, then slept
            run.sleeping = 0
            loop.call_soon(task._step, context=run.context)
    elif cython.compiled and type(result) is SimFuture:  # the test below, in C (vtime.pxd)
        if _get_waiter(result) is None and _future_blocking(result) and _future_loop(result) is loop:
            _future_unblock(result)  # result._asyncio_future_blocking = False
            _set_waiter(result, run)  # result._waiter = run
            run.fut_waiter = result
            if run.must_cancel and result.cancel(msg=run.cancel_message):
                run.must_cancel = False
        else:
            task._suspend(result)
    elif (type(result) is SimFuture and result._waiter is None and result._asyncio_future_blocking
          and result._loop is loop):
        # waits for a SimFuture, which will put it on the ready queue
        result._asyncio_future_blocking = False
        result._waiter = run
        run.fut_waiter = result
        if run.must_cancel and result.cancel(msg=run.cancel_message):
            run.must_cancel = False
    else:
        task._suspend(result)


def _resume(run: _Run) -> None:
    """Step ``run``'s task in its context: ``run.context.run(_step_run, run, None)``, which
    the compiled build does in C (entering and leaving the context as ``Context.run`` does)."""
    if cython.compiled:
        PyContext_Enter(run.context)
        try:
            _step_run(run, None)
        finally:
            PyContext_Exit(run.context)
    else:
        run.context.run(_step_run, run, None)


class SimFuture(asyncio.Future):  # type: ignore[type-arg]
    """``loop.create_future()`` on the virtual loop: an ``asyncio.Future`` (a C one) that
    remembers the one ``SimTask`` awaiting it, if any (its ``_Run``), and puts that task
    straight on the ready queue when it completes; the task's resumption then reads the
    outcome (``await`` of a done Future returns its result or raises its exception). Other
    done-callbacks go the asyncio way, through ``call_soon``. This is how a task wakes another
    (a lock release, an SRCU grace period, a message delivered) at the cost of one Python
    frame."""

    if COMPILED:  # a slot (no dict per Future), set to None by whoever makes one (_new_future, SimTask)
        __slots__ = ("_waiter",)
    else:
        _waiter: "_Run | None" = None  # a class default: no __init__ to run per Future

    def set_result(self, result: Any) -> None:
        if cython.compiled:  # Future.set_result and self._waiter, in C (vtime.pxd)
            _future_set_result_c(self, result)
            waiter = _get_waiter(self)
            if waiter is not None:  # this is how one task wakes another
                _wake(waiter)
                _set_waiter(self, None)
            return
        _future_set_result(self, result)
        waiter = self._waiter
        if waiter is not None:  # this is how one task wakes another
            _wake(waiter)
            self._waiter = None

    def set_exception(self, exception: Any) -> None:
        _future_set_exception(self, exception)
        self._wake_waiter()

    def cancel(self, msg: Any = None) -> bool:
        if not _future_cancel(self, msg=msg):
            return False
        self._wake_waiter()
        return True

    def _wake_waiter(self) -> None:
        """Put the SimTask awaiting this (if any) on the ready queue."""
        waiter = self._waiter
        if waiter is not None:
            _wake(waiter)
            self._waiter = None


_future_set_result = asyncio.Future.set_result
_future_base_init = asyncio.Future.__init__
_CoroutineType = types.CoroutineType
if cython.compiled:  # where _get_waiter and _set_waiter find the slot, and the C Future's own
    _waiter_init(SimFuture.__dict__["_waiter"])
    _future_type_init(asyncio.Future)
    _future_init(asyncio.Future.__dict__["set_result"], asyncio.Future.__dict__["_asyncio_future_blocking"],
                 asyncio.Future.__dict__["_loop"])
_future_set_exception = asyncio.Future.set_exception
_future_cancel = asyncio.Future.cancel


class SimTask(SimFuture):
    """The virtual loop's Task: asyncio's ``Task`` (``asyncio/tasks.py``, ``__step`` and
    ``__wakeup``) rewritten so that a virtual sleep costs no Future.

    It is an ``asyncio.Future`` (a C one), so it can be awaited, gathered, waited on and
    cancelled like any task, ``asyncio.current_task()`` returns it while it runs, and
    ``asyncio.all_tasks()`` lists it. What differs is the hot path of a simulation, a task
    sleeping for a latency: the sleep yields its wake-up time (a float), and the task files
    itself straight into the loop's sleeper heap, SimPy-style; the loop steps it from there.
    Anything else a coroutine awaits (a Future, a lock, another task) goes the asyncio way.
    What the scheduler reads at every step is kept in the task's ``_Run``.

    Only a ``SimTask`` understands a virtual sleep; ``VirtualTimeLoop.create_task`` makes one
    for every coroutine the loop runs (``asyncio.Task(coro)`` made by hand would refuse the
    sleep with "bad yield")."""

    # ``_log_destroy_pending`` is a slot for asyncio to set (run_until_complete does); a SimTask
    # logs no "Task was destroyed but it is pending!", so nothing reads it
    __slots__ = ("_run", "_log_destroy_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], *, loop: "VirtualTimeLoop", name: str | None = None,
                 context: contextvars.Context | None = None, eager: bool = False):
        _future_base_init(self, loop=loop)  # (SimFuture has no __init__ of its own: the C Future's, without a super())
        _setup_task(self, loop, coro, context if context is not None else contextvars.copy_context(), name)
        if not eager:  # an eager task's first step is run by ``VirtualTimeLoop.start_task``
            _schedule_task(loop, self)

    @property
    def _name(self) -> str:
        return self._run.name

    @property
    def _seq(self) -> int:
        """Creation order: a deterministic order for tasks."""
        return self._run.seq

    def get_coro(self) -> Coroutine[Any, Any, Any]:
        return self._run.coro

    def get_name(self) -> str:
        return self._run.name

    def set_name(self, value: object) -> None:
        self._run.name = str(value)
        self._run.tcode = 0  # the trace's code is the old name's

    def get_context(self) -> contextvars.Context:
        return self._run.context

    def cancelling(self) -> int:
        return self._run.cancels

    def uncancel(self) -> int:
        run = self._run
        if run.cancels > 0:
            run.cancels -= 1
        return run.cancels

    def cancel(self, msg: Any = None) -> bool:
        """As ``Task.cancel``; a sleeping task is woken now, with ``CancelledError``."""
        if self.done():
            return False
        run = self._run
        run.cancels += 1
        if run.fut_waiter is not None and run.fut_waiter.cancel(msg=msg):
            return True  # the waiter's callback steps this task with CancelledError
        run.must_cancel = True
        run.cancel_message = msg
        timed = run.timed
        if timed is not None:  # a wait_until: stop waiting for its future (which is not cancelled)
            run.timed = None
            timed._waiter = None
        if run.sleeping:
            run.sleeping = 0  # its heap entry is dead
            self._loop.call_soon(self._step, context=run.context)
        return True

    def set_result(self, result: Any) -> None:
        raise RuntimeError("SimTask does not support set_result()")

    def set_exception(self, exception: Any) -> None:
        raise RuntimeError("SimTask does not support set_exception()")

    def _step(self, exc: BaseException | None = None) -> None:
        """Run the coroutine to its next suspension (``Task.__step``); the loop's hot paths
        call ``_step_run`` on the task's ``_Run`` directly."""
        _step_run(self._run, exc)

    def _finish(self, e: BaseException) -> None:
        """The coroutine returned or raised ``e``. The task's ``_Run`` lets go of the task,
        which it never steps again: the two are then no reference cycle, and a finished task
        is freed as soon as its last holder lets go of it, rather than by the cyclic garbage
        collector (a run makes a task per request)."""
        run = self._run
        run.task = None
        if isinstance(e, StopIteration):
            if run.must_cancel:  # cancelled while returning
                run.must_cancel = False
                super().cancel(msg=run.cancel_message)
            else:
                SimFuture.set_result(self, e.value)  # (super().set_result, without a super object per task)
        elif isinstance(e, asyncio.CancelledError):
            super().cancel()
        else:
            super().set_exception(e)
            if isinstance(e, (KeyboardInterrupt, SystemExit)):
                raise e

    def _suspend(self, result: Any) -> None:
        """The coroutine yielded ``result``, not a sleep: wait for a Future, or run again."""
        loop = self._loop
        run = self._run
        if type(result) is _Until:  # wait_until: the future's waiter and a sleeper, whichever is first
            fut, when = result
            fut._waiter = run
            run.timed = fut
            core: _Core = run.core
            core.seq += 1
            run.sleeping = core.seq
            if cython.compiled:
                _heap_push(core.sleepers, (when, core.seq, run))
            else:
                _heappush(core.sleepers, (when, core.seq, run))
            if run.must_cancel:
                run.timed = None
                fut._waiter = None
                run.sleeping = 0
                loop.call_soon(self._step, context=run.context)
            return
        if getattr(result, "_asyncio_future_blocking", None) is not None:
            if result.get_loop() is not loop:
                new_exc: BaseException = RuntimeError(
                    f"Task {self!r} got Future {result!r} attached to a different loop")
            elif not result._asyncio_future_blocking:
                new_exc = RuntimeError(f"yield was used instead of yield from in task {self!r} with {result!r}")
            elif result is self:
                new_exc = RuntimeError(f"Task cannot await on itself: {self!r}")
            else:
                result._asyncio_future_blocking = False
                result.add_done_callback(self._wakeup, context=run.context)
                run.fut_waiter = result
                if run.must_cancel and result.cancel(msg=run.cancel_message):
                    run.must_cancel = False
                return
        elif result is None:  # a bare yield: run again in the next step
            loop.call_soon(self._step, context=run.context)
            return
        else:
            new_exc = RuntimeError(f"Task got bad yield: {result!r}")
        loop.call_soon(self._step, new_exc, context=run.context)

    def _wakeup(self, future: "asyncio.Future[Any]") -> None:
        """The Future this task awaited is done (``Task.__wakeup``)."""
        self._run.fut_waiter = None
        try:
            future.result()
        except BaseException as exc:
            self._step(exc)
        else:
            self._step()


if cython.compiled:  # where _set_run finds the slot
    _run_slot_init(SimTask.__dict__["_run"])


def _setup_task(task: SimTask, loop: "VirtualTimeLoop", coro: Coroutine[Any, Any, Any], context: contextvars.Context,
                name: str | None) -> _Run:
    """What a new ``SimTask`` holds besides the C Future's state, made once that is: its
    ``_Run`` (in its ``_run`` slot; its ``_waiter`` is None). ``SimTask.__init__`` and the
    compiled build's ``_new_task`` share it."""
    if type(coro) is not _CoroutineType and not asyncio.iscoroutine(coro):  # (a native coroutine: no call)
        raise TypeError(f"a coroutine was expected, got {coro!r}")
    core: _Core = loop._core
    core.tasks_made += 1
    if name is None:
        name = f"{getattr(coro, '__qualname__', 'task')}#{core.tasks_made}"
    run: _Run
    if cython.compiled:  # the fields in C, without _Run.__init__ (vtime.pxd); the rest start None, 0 or False
        run = _Run.__new__(_Run)
        run.task = task
        run.loop = loop
        run.core = core
        run.coro = coro
        run.context = context
        run.name = name
        run.seq = core.tasks_made
        _set_run(task, run)  # task._run = run, in C (vtime.pxd)
        _set_waiter(task, None)
        return run
    run = task._run = _Run(task, loop, coro, context, name, core.tasks_made)
    task._waiter = None
    return run


def _new_task(loop: "VirtualTimeLoop", coro: Coroutine[Any, Any, Any], name: str | None,
              context: contextvars.Context | None) -> SimTask:
    """``SimTask(coro, loop=loop, name=name, context=context, eager=True)``: a task of the
    loop, neither scheduled nor registered. The compiled build makes it in C, as
    ``_FutureMaker`` makes a Future (the C Future's ``__init__`` with the loop's keyword dict),
    then ``_setup_task``."""
    if cython.compiled:
        task = _new_future(SimTask, loop._core.future_kwargs)
        _setup_task(task, loop, coro, context if context is not None else contextvars.copy_context(), name)
        return task
    return SimTask(coro, loop=loop, name=name, context=context, eager=True)


def _schedule_task(loop: "VirtualTimeLoop", task: SimTask) -> None:
    """What ``Task.__init__`` does last: the new task's first step queued, and the task listed
    by ``asyncio.all_tasks()``."""
    loop.call_soon(task._step, context=task._run.context)
    _register_task(task)


class _FutureMaker:
    """``loop.create_future()`` in the compiled build: ``SimFuture(loop=loop)`` with its
    ``_waiter`` slot set to None, made in C with a keyword dict made once (the C Future's
    ``__init__`` only reads it), so a Future costs no dict of its own.

    The loop is always passed. A Future made without one asks asyncio's C
    ``get_running_loop``, which on Python 3.11 makes a ``getpid()`` system call every time (to
    notice a fork): a cost that instruction counts do not show (callgrind counts no kernel
    time), and that made ping-pong slower in wall clock while its instruction count fell."""

    def __init__(self, loop: "VirtualTimeLoop"):
        self.kwargs = loop._core.future_kwargs

    def __call__(self) -> SimFuture:
        fut = _new_future(SimFuture, self.kwargs)  # SimFuture(loop=loop), in C (vtime.pxd)
        _set_waiter(fut, None)  # fut._waiter = None, in C (vtime.pxd)
        return fut


class _Until(tuple):  # type: ignore[type-arg]
    """``(future, when)``: what ``wait_until`` yields to the ``SimTask`` awaiting it."""

    __slots__ = ()


_COMPACT_MIN = 4096  # dead sleeper entries before the heap is worth compacting


def wait_until(fut: SimFuture, when: float) -> Awaitable[bool]:
    """Wait for ``fut`` (a ``SimFuture`` or ``SimTask`` of the running virtual loop, awaited
    by no one else) until virtual time ``when``; True if it is done by then. It is not
    cancelled when the deadline passes (``asyncio.wait(timeout=...)``'s contract), and a
    cancelled waiter leaves it alone.

    This is a deadline without a Future or a timer handle: the awaiting task is at once the
    future's waiter and a sleeper until ``when``, and whichever comes first wakes it (the
    other is then dead: a future's wake-up kills the sleeper entry, the deadline unhooks the
    waiter). Dead entries of deadlines that never came are swept out of the heap once they
    are more than half of it, so memory stays flat however many calls a run makes."""
    return _WaitUntil(fut, when)


class _WaitUntil:
    """The awaitable ``wait_until`` returns (an object with ``__await__`` rather than a
    ``types.coroutine`` generator, which the compiled build could not make awaitable without
    a Python wrapper)."""

    __slots__ = ("fut", "when")

    def __init__(self, fut: SimFuture, when: float):
        self.fut = fut
        self.when = when

    def __await__(self) -> Generator[Any, None, bool]:
        fut, when = self.fut, self.when
        if fut.done():
            return True
        loop = fut._loop
        core: _Core = loop._core
        if when <= core.now:
            return False
        if fut._waiter is not None:
            raise RuntimeError(f"wait_until: {fut!r} is already awaited by {fut._waiter.task!r}")
        task = _current_tasks.get(loop)
        run = task._run if task is not None else None
        try:
            yield _Until((fut, when))
        finally:
            if run is not None:
                run.timed = None
            if fut._waiter is run:  # the deadline came first (or the waiter was cancelled)
                fut._waiter = None
        if not fut.done():
            return False
        core.dead += 1  # woken by the future: its deadline entry is dead
        if core.dead > _COMPACT_MIN and core.dead * 2 > len(core.sleepers):
            loop._compact_sleepers()
        return True


_current_tasks = asyncio.tasks._current_tasks  # what asyncio.current_task() reads
_register_task = asyncio.tasks._register_task  # what asyncio.all_tasks() lists
_heappush = heapq.heappush
_heappop = heapq.heappop
_TASKS = (asyncio.Task, SimTask)


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time (microseconds); see the module docstring."""

    # ``get_debug`` is asked by every Future made, and the virtual loop has no debug mode: it
    # is ``bool`` (``bool()`` is False), held in a slot, a data descriptor that the C Future's
    # method call reads without looking in the loop's __dict__ first.
    __slots__ = ("get_debug",)

    def __init__(self, policy: SchedulingPolicy | None = None, trace: Trace | None = None):
        self.get_debug = bool  # type: ignore[method-assign]
        self._core = core = _Core()
        core.future_kwargs = {"loop": self}
        super().__init__(selector=_NoIoSelector())
        core.ready = self._ready  # type: ignore[attr-defined]
        core.ready_append = self._ready.append  # type: ignore[attr-defined]
        self.policy = policy
        self.trace = trace if trace is not None else Trace("hash")
        self.decisions: list[int] = []  # index chosen at each step with more than one ready
        # ``loop.create_future()``, as a C callable: a Future costs no Python frame to make
        if COMPILED:
            self.create_future = _FutureMaker(self)  # type: ignore[method-assign]
        else:
            self.create_future = functools.partial(SimFuture, loop=self)  # type: ignore[method-assign]

    @property
    def _stopping(self) -> bool:
        """asyncio's own flag (``stop()`` sets it, ``run_forever`` clears it), kept in the
        ``_Core``, where the FIFO loop reads it at every pass without a look-up."""
        return self._core.stopping

    @_stopping.setter
    def _stopping(self, value: bool) -> None:
        self._core.stopping = value

    @property
    def _sleepers(self) -> list[tuple[float, int, _Run]]:
        """The heap of sleeping tasks' entries (``_Core.sleepers``)."""
        return self._core.sleepers

    def create_task(self, coro: Coroutine[Any, Any, T], *, name: str | None = None,
                    context: contextvars.Context | None = None) -> SimTask:
        """Every coroutine this loop runs runs in a ``SimTask``."""
        self._check_closed()  # type: ignore[attr-defined]
        task = _new_task(self, coro, name, context)
        _schedule_task(self, task)
        return task

    def start_task(self, coro: Coroutine[Any, Any, T], *, name: str) -> SimTask:
        """A ``SimTask`` for ``coro`` that starts as soon as it can. Under FIFO its first step
        runs now, inside the running step, as its own task (``current_task()`` is the new
        task while it runs, then the caller again), like Python 3.12's eager tasks: one step
        instead of one queued behind whatever else is ready, and the step is recorded in the
        trace under the new task's name. Under a seeded policy it is queued like any new task,
        so that when it starts stays one of the policy's choices (the race finder explores
        it). The interconnect starts a request's handler this way."""
        if self.policy is not None:
            return SimTask(coro, loop=self, name=name)
        task = _new_task(self, coro, name, None)
        run: _Run = task._run
        trace: Trace = self.trace
        if trace.level != "off":
            trace.step(self._core.now, run.name)
        caller = _current_tasks.get(self)
        try:
            _resume(run)
        finally:
            if caller is not None:
                _current_tasks[self] = caller
            else:
                _current_tasks.pop(self, None)
        if not task.done():  # as 3.12's eager tasks: one done in its first step never enters all_tasks()
            _register_task(task)
        return task

    def _compact_sleepers(self) -> None:
        """Drop the dead entries of the sleeper heap (in place: the running step holds it)."""
        core: _Core = self._core
        sleepers = core.sleepers
        sleepers[:] = [e for e in sleepers if e[2].sleeping == e[1]]
        heapq.heapify(sleepers)
        core.dead = 0

    def call_soon(self, callback: Any, *args: Any, context: contextvars.Context | None = None) -> Any:
        """As ``BaseEventLoop.call_soon``, but queues a ``_Ready`` rather than a Handle."""
        if self._closed:  # type: ignore[attr-defined]
            raise RuntimeError("Event loop is closed")
        entry = _Ready((callback, args, context if context is not None else contextvars.copy_context()))
        self._ready.append(entry)  # type: ignore[attr-defined]
        return entry

    def time(self) -> float:
        return self._core.now

    def _key(self, entry: Any) -> tuple[Any, str]:
        """(scheduling key, trace name) of a ready entry (a task's ``_Run``, a ``_Ready`` or a
        Handle): its task, or its callback."""
        if type(entry) is _Run:
            return entry.task, entry.name
        return self._key_of(entry[0] if type(entry) is _Ready else entry._callback)

    def _run_entry(self, entry: Any) -> None:
        """Run a ready entry, as ``Handle._run`` does: an exception goes to the exception handler."""
        if type(entry) is _Run:
            _resume(entry)
            return
        if type(entry) is not _Ready:
            entry._run()
            return
        fn, args, context = entry
        try:
            context.run(fn, *args)
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            self._callback_failed(fn, args, exc)

    def _callback_failed(self, fn: Any, args: tuple[Any, ...], exc: BaseException) -> None:
        """A callback raised: report it to the exception handler, as ``Handle._run`` does."""
        self.call_exception_handler({"message": f"Exception in callback {fn!r}{args!r}", "exception": exc})

    def _key_of(self, cb: Any) -> tuple[Any, str]:
        task = getattr(cb, "__self__", None)
        if isinstance(task, SimTask):
            return task, task._run.name
        return cb, getattr(cb, "__qualname__", type(cb).__name__)

    def _run_once(self) -> None:
        sched = self._scheduled  # type: ignore[attr-defined]
        ready: deque[Any] = self._ready  # type: ignore[attr-defined]
        if len(sched) > _MIN_SCHEDULED_TIMER_HANDLES and (
            self._timer_cancelled_count / len(sched) > _MIN_CANCELLED_TIMER_HANDLES_FRACTION  # type: ignore[attr-defined]
        ):
            live = [h for h in sched if not h._cancelled]
            for h in sched:
                if h._cancelled:
                    h._scheduled = False
            heapq.heapify(live)
            self._scheduled = sched = live  # type: ignore[attr-defined]
            self._timer_cancelled_count = 0  # type: ignore[attr-defined]
        while sched and sched[0]._cancelled:
            self._timer_cancelled_count -= 1  # type: ignore[attr-defined]
            heapq.heappop(sched)._scheduled = False
        core: _Core = self._core
        sleepers = core.sleepers
        while sleepers and sleepers[0][2].sleeping != sleepers[0][1]:
            _heappop(sleepers)  # the sleep of a task cancelled meanwhile
        if not ready:
            if self._stopping:  # type: ignore[attr-defined]
                return
            nxt = min(sched[0]._when if sched else _INF, sleepers[0][0] if sleepers else _INF)
            if nxt == _INF:
                raise Deadlock(
                    f"deadlock at virtual time {core.now:.3f} us: every task is "
                    f"waiting and no timer is pending"
                )
            if nxt > core.now:
                core.now = nxt  # the clock jumps to the next timer
        now = core.now
        while sched and sched[0]._when <= now:
            handle = heapq.heappop(sched)
            handle._scheduled = False
            ready.append(handle)
        trace: Trace = self.trace
        if self.policy is None:
            _run_fifo(self, core, trace, sched)
            return
        tracing = trace.level != "off"
        while sleepers and sleepers[0][0] <= now:
            _, seq, run = _heappop(sleepers)
            if run.sleeping == seq:
                run.sleeping = 0
                timed = run.timed
                if timed is not None:  # a wait_until's deadline: its future must not wake it too
                    timed._waiter = None
                ready.append(_Ready((run.task._step, (), run.context)))
        live = [h for h in ready if type(h) is _Run or not (h[0] is None if type(h) is _Ready else h._cancelled)]
        if len(live) <= 1:
            i = 0
        else:  # before ready is cleared: if the policy raises (ReplayDiverged), nothing is lost
            i = self.policy.choose([self._key(h)[0] for h in live])
            self.decisions.append(i)
        ready.clear()
        if not live:
            return
        handle = live.pop(i)
        ready.extend(live)
        if tracing:
            trace.step(now, self._key(handle)[1])
        try:
            self._run_entry(handle)
        finally:
            _current_tasks.pop(self, None)  # no task runs now (see _step_run)


def _trace_move(trace: Trace, now: float) -> None:
    """Append a move of the virtual time to ``now`` to a trace's batch (``Trace.at``)."""
    trace._now = now
    trace._moves += 1
    if cython.compiled:
        _codes_append(trace._codes, _double_bits(now) | _MOVED)  # in C (vtime.pxd)
    else:
        trace._codes.append(int.from_bytes(struct.pack("<d", now), "little") | _MOVED)


def _trace_code(codes: array.array, code: cython.ulonglong) -> None:
    """Append a step's code to a trace's batch (``Trace._codes``)."""
    if cython.compiled:
        _codes_append(codes, code)  # array.append, in C (vtime.pxd)
    else:
        codes.append(code)


def _trace_run(codes: array.array, run: _Run, trace: Trace) -> None:
    """Append the code of a task's step to a trace's batch: the task's own (``_Run.tcode``,
    worked out at its first traced step)."""
    code = run.tcode
    if not code:
        code = run.tcode = trace.code(run.name)
    _trace_code(codes, code)


def _run_fifo(loop: VirtualTimeLoop, core: _Core, trace: Trace, sched: list[Any]) -> None:
    """``VirtualTimeLoop._run_once`` under FIFO, once due timers are queued: due sleepers in
    time order, then asyncio's own batch. While there is more to do, go on here rather than
    through run_forever: the simulator's hot path. ``asyncio.current_task()`` is None when it
    returns, and while a callback runs (see _step_run)."""
    ready = core.ready
    sleepers: list = core.sleepers
    now: float = core.now
    tracing = trace.level != "off"
    if tracing and now != trace._now:
        trace.at(now)
    codes: array.array = trace._codes  # a step appends the code of who ran (after trace.at(now))
    popleft = ready.popleft
    entry: tuple
    run: _Run
    seq: cython.longlong
    when: cython.double
    try:
        while True:
            while sleepers:  # the due sleepers
                entry = sleepers[0]
                when = entry[0]
                if when > now:
                    break
                if cython.compiled:
                    _heap_pop(sleepers)  # heapq's, in C (vtime.pxd)
                else:
                    _heappop(sleepers)
                run = entry[2]
                seq = entry[1]
                if run.sleeping != seq:  # cancelled meanwhile
                    continue
                run.sleeping = 0
                if tracing:
                    _trace_run(codes, run, trace)
                _resume(run)
            for _ in range(len(ready)):
                handle = popleft()
                if type(handle) is _Run:  # woken by the SimFuture it awaited
                    run = handle
                    if tracing:
                        _trace_run(codes, run, trace)
                    _resume(run)
                    continue
                if type(handle) is _Ready:  # (_run_entry, inlined: the hot path)
                    fn, args, context = handle
                    if fn is None:  # cancelled
                        continue
                    if tracing:
                        _trace_code(codes, trace.code(loop._key_of(fn)[1]))
                    _current_tasks.pop(loop, None)  # no task runs now (see _step_run)
                    try:
                        context.run(fn, *args)
                    except (SystemExit, KeyboardInterrupt):
                        raise
                    except BaseException as exc:
                        loop._callback_failed(fn, args, exc)
                    continue
                if handle._cancelled:
                    continue
                if tracing:
                    _trace_code(codes, trace.code(loop._key(handle)[1]))
                _current_tasks.pop(loop, None)
                handle._run()
            if tracing and len(codes) >= trace.BATCH:
                trace._flush()
            if core.stopping:  # loop.stop() was called
                return
            if not ready:  # nothing more now: jump to the next sleeper, unless a timer is first
                while sleepers:
                    entry = sleepers[0]
                    run = entry[2]
                    seq = entry[1]
                    if run.sleeping == seq:
                        break
                    if cython.compiled:
                        _heap_pop(sleepers)  # the sleep of a task cancelled meanwhile
                    else:
                        _heappop(sleepers)
                if not sleepers:
                    return
                when = sleepers[0][0]
                if sched and sched[0]._when <= when:
                    return
                if when > now:
                    core.now = now = when
                    if tracing:  # the clock moves only here
                        _trace_move(trace, now)
            elif sched and sched[0]._when <= now:
                return  # a timer is due too: let the next _run_once queue it in order
    finally:
        _current_tasks.pop(loop, None)  # no task runs now (see _step_run)


class _Sleep:
    """What ``VirtualClock.sleep`` returns in the compiled build: an awaitable that yields its
    wake-up time ``when`` once, then returns, as the pure module's generator does. (Cython
    compiles a generator into one that ``types.coroutine`` cannot make awaitable without a
    Python wrapper; this is an extension type there, see vtime.pxd.)"""

    def __init__(self, when: float):
        self.when = when
        self.yielded = False

    def __await__(self) -> "_Sleep":
        return self

    def __iter__(self) -> "_Sleep":
        return self

    def __next__(self) -> float:
        if self.yielded:
            raise StopIteration
        self.yielded = True
        return self.when

    # a coroutine's methods, so that it can also be a task's coroutine (``create_task(clock.sleep(t))``)
    def send(self, value: Any) -> float:
        return self.__next__()

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> float:
        """As a generator suspended at its yield: the exception comes straight out."""
        self.yielded = True
        if val is None:
            val = typ() if isinstance(typ, type) else typ
        if tb is not None:
            val = val.with_traceback(tb)
        raise val

    def close(self) -> None:
        self.yielded = True


collections.abc.Coroutine.register(_Sleep)


if COMPILED:
    _sleep_until: Any = _Sleep
else:
    @types.coroutine
    def _sleep_until(when: float) -> Generator[float, None, None]:
        """What ``VirtualClock.sleep`` returns in the pure module: a generator that yields
        ``when`` once (the compiled build's is a ``_Sleep``)."""
        yield when


class VirtualClock:
    """The ``Clock`` of a ``VirtualTimeLoop``: microseconds, exact for integer sums.

    Made inside a running loop, it remembers that loop, so ``now()`` also answers between
    steps (for example when an oracle sweep runs outside the loop)."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None):
        if loop is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                loop = None
        self._loop = loop
        self._core = getattr(loop, "_core", None)  # the loop's _Core, if it is a VirtualTimeLoop

    @property
    def loop(self) -> asyncio.AbstractEventLoop | None:
        """The loop it was made for (or in), if any (``Runtime.loop``)."""
        return self._loop

    def now(self) -> float:
        core: _Core = self._core
        if core is not None:  # loop.time(), read where it keeps it
            return core.now
        if self._loop is not None:
            return self._loop.time()
        return asyncio.get_running_loop().time()

    def sleep(self, us: float | int) -> Awaitable[None]:
        """Resume the awaiting task ``us`` virtual microseconds from now: the awaitable yields
        the wake-up time to the ``SimTask`` awaiting it, which files itself in the loop's
        sleeper heap."""
        core: _Core = self._core
        if core is None:
            core = asyncio.get_running_loop()._core  # type: ignore[attr-defined]
        if cython.compiled:  # _Sleep(when), without a call of __init__
            s: _Sleep = _Sleep.__new__(_Sleep)
            s.when = core.now + _as_double(us)  # (an int ``us`` makes no float)
            return s
        return _sleep_until(core.now + us)

    def trace(self, kind: str, detail: str) -> None:
        """Record a model event in the loop's trace."""
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        if isinstance(loop, VirtualTimeLoop):
            loop.trace.event(loop.time(), kind, detail)


def run_virtual(coro: Coroutine[Any, Any, T], *, loop: VirtualTimeLoop | None = None) -> T:
    """Run ``coro`` to completion on ``loop`` (a fresh FIFO virtual-time loop by default) and
    return its result. Tasks still pending when ``coro`` returns are cancelled and awaited, so
    nothing outlives the run; the loop is closed."""
    loop = loop if loop is not None else VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    except BaseException:
        loop.policy = None  # the policy may be what failed (a diverged replay): clean up in fifo order
        raise
    finally:
        try:
            # all_tasks() is a set (ordered by address): cancel in creation order, deterministically
            pending = sorted((t for t in asyncio.all_tasks(loop) if not t.done()), key=lambda t: getattr(t, "_seq", 0))
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()
