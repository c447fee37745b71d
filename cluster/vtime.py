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

Model code must use the injected ``VirtualClock``; asyncio helpers that take seconds
(``asyncio.wait_for``) would read them as microseconds on this loop.
"""

from __future__ import annotations

import asyncio
import hashlib
import heapq
import random
import selectors
from collections import deque
from typing import Any, Coroutine, Sequence, TypeVar

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


class Trace:
    """What ran when: a running digest of every step and model event, and optionally the
    whole list (``level="full"``). Entries are buffered and hashed in batches."""

    _BATCH = 4096

    def __init__(self, level: str = "hash"):
        if level not in TRACE_LEVELS:
            raise ValueError(f"trace level must be one of {TRACE_LEVELS}, got {level!r}")
        self.level = level
        self._hash = hashlib.blake2b(digest_size=16)
        self._buf: list[tuple[float, str, str]] = []
        self._entries: list[str] = []
        self.steps = 0
        self.events = 0

    def step(self, now: float, key: str) -> None:
        self.steps += 1
        self._buf.append((now, "run", key))
        if len(self._buf) >= self._BATCH:
            self._flush()

    def event(self, now: float, kind: str, detail: str) -> None:
        self.events += 1
        if self.level != "off":
            self._buf.append((now, kind, detail))
            if len(self._buf) >= self._BATCH:
                self._flush()

    def _flush(self) -> None:
        lines = [f"{t!r} {kind} {what}\n" for t, kind, what in self._buf]
        self._buf.clear()
        self._hash.update("".join(lines).encode())
        if self.level == "full":
            self._entries.extend(lines)

    @property
    def entries(self) -> list[str]:
        """Every line of the trace (``level="full"`` only)."""
        self._flush()
        return self._entries

    def digest(self) -> str:
        self._flush()
        return self._hash.hexdigest()


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
            if not isinstance(key, asyncio.Task):
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


class _Sleep(asyncio.Future):  # type: ignore[type-arg]
    """The future returned by ``VirtualClock.sleep``: the task that awaits it is woken straight
    from the loop's sleeper heap. It is a C ``asyncio.Future`` (so awaiting it and reading its
    result run in C) whose done-callback is kept here instead of being scheduled through
    ``call_soon``: the hot path of a simulation, tasks sleeping for latencies, is then a heap
    push and a heap pop."""

    __slots__ = ("_when", "_wake", "_wake_context")

    def add_done_callback(self, fn: Any, *, context: Any = None) -> None:
        # only the awaiting Task calls this, once, while the sleep is pending
        self._wake = fn
        self._wake_context = context
        loop = self._loop
        loop._sleeper_seq += 1
        heapq.heappush(loop._sleepers, (self._when, loop._sleeper_seq, self))

    def cancel(self, msg: Any = None) -> bool:
        if not super().cancel(msg=msg):
            return False
        wake = getattr(self, "_wake", None)
        if wake is not None:  # wake the sleeping task now, with CancelledError
            self.get_loop().call_soon(wake, self, context=self._wake_context)
        return True


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time (microseconds); see the module docstring."""

    def __init__(self, policy: SchedulingPolicy | None = None, trace: Trace | None = None):
        self._virtual_now = 0.0
        super().__init__(selector=_NoIoSelector())
        self.policy = policy
        self.trace = trace if trace is not None else Trace("hash")
        self.decisions: list[int] = []  # index chosen at each step with more than one ready
        self._task_keys: dict[asyncio.Task[Any], str] = {}
        self._tasks_seen = 0
        self._sleepers: list[tuple[float, int, _Sleep]] = []  # heap of pending sleeps
        self._sleeper_seq = 0

    def sleep(self, us: float) -> _Sleep:
        """An awaitable that resumes the awaiting task ``us`` virtual microseconds from now."""
        fut = _Sleep(loop=self)
        fut._when = self._virtual_now + us
        return fut

    def get_debug(self) -> bool:
        return False  # asked by every Future created; the virtual loop has no debug mode

    def time(self) -> float:
        return self._virtual_now

    def _key(self, handle: asyncio.Handle) -> tuple[Any, str]:
        """(scheduling key, trace name) of a ready handle: its task, or its callback."""
        return self._key_of(handle._callback)  # type: ignore[attr-defined]

    def _key_of(self, cb: Any) -> tuple[Any, str]:
        task = getattr(cb, "__self__", None)
        if isinstance(task, asyncio.Task):
            name = self._task_keys.get(task)
            if name is None:
                self._tasks_seen += 1
                given = task.get_name()
                # asyncio's default names count tasks process-wide: use the coroutine instead
                name = given if not given.startswith("Task-") else f"{task.get_coro().__qualname__}#{self._tasks_seen}"
                self._task_keys[task] = name
                task.add_done_callback(self._task_keys.pop)
            return task, name
        return cb, getattr(cb, "__qualname__", type(cb).__name__)

    def _run_once(self) -> None:
        sched = self._scheduled  # type: ignore[attr-defined]
        ready: deque[asyncio.Handle] = self._ready  # type: ignore[attr-defined]
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
        sleepers = self._sleepers
        if not ready:
            if self._stopping:  # type: ignore[attr-defined]
                return
            nxt = min(sched[0]._when if sched else _INF, sleepers[0][0] if sleepers else _INF)
            if nxt == _INF:
                raise Deadlock(
                    f"deadlock at virtual time {self._virtual_now:.3f} us: every task is "
                    f"waiting and no timer is pending"
                )
            if nxt > self._virtual_now:
                self._virtual_now = nxt  # the clock jumps to the next timer
        now = self._virtual_now
        while sched and sched[0]._when <= now:
            handle = heapq.heappop(sched)
            handle._scheduled = False
            ready.append(handle)
        trace = self.trace
        tracing = trace.level != "off"
        if self.policy is None:  # fifo: due sleepers in time order, then asyncio's own batch
            while True:
                while sleepers and sleepers[0][0] <= now:
                    sleep = heapq.heappop(sleepers)[2]
                    if sleep.done():  # cancelled
                        continue
                    sleep.set_result(None)
                    if tracing:
                        trace.step(now, self._key_of(sleep._wake)[1])
                    sleep._wake_context.run(sleep._wake, sleep)
                for _ in range(len(ready)):
                    handle = ready.popleft()
                    if handle._cancelled:
                        continue
                    if tracing:
                        trace.step(now, self._key(handle)[1])
                    handle._run()
                # While only sleepers are due next, go on here rather than through
                # run_forever: the simulator's hot path.
                if ready or self._stopping or not sleepers:  # type: ignore[attr-defined]
                    return
                nxt = sleepers[0][0]
                if sched and sched[0]._when <= nxt:
                    return
                if nxt > now:
                    self._virtual_now = now = nxt
        while sleepers and sleepers[0][0] <= now:
            sleep = heapq.heappop(sleepers)[2]
            if not sleep.done():
                sleep.set_result(None)
                ready.append(asyncio.Handle(sleep._wake, (sleep,), self, sleep._wake_context))
        live = [h for h in ready if not h._cancelled]
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
        handle._run()


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

    def now(self) -> float:
        if self._loop is not None:
            return self._loop.time()
        return asyncio.get_running_loop().time()

    def sleep(self, us: float) -> Any:
        """An awaitable resuming the awaiting task ``us`` virtual microseconds from now."""
        loop = self._loop if self._loop is not None else asyncio.get_running_loop()
        return loop.sleep(us)  # type: ignore[attr-defined]

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
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()
