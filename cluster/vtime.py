"""A virtual-time asyncio event loop: the clock only moves when every task is waiting.

The loop is asyncio's own selector loop with two things swapped, in the spirit of SimPy's
``Environment`` and trio's ``MockClock(autojump)``:
- ``time()`` returns a virtual time, in **microseconds** (one loop time unit is one us);
- the selector never blocks: asked to wait ``t`` for I/O, it advances the virtual clock by ``t``
  and reports no I/O. Asked to wait forever (no ready task, no timer) it raises ``Deadlock``:
  every task is blocked on something no one will ever do.

So ``await clock.sleep(1e6)`` takes one virtual second and almost no real time, and model code
runs unchanged. Only the injected ``VirtualClock`` should be used by the model; asyncio helpers
that take seconds (``asyncio.wait_for``) would read them as microseconds on this loop.
"""

from __future__ import annotations

import asyncio
import selectors
from typing import Any, Coroutine, TypeVar

T = TypeVar("T")


class Deadlock(Exception):
    """Every task waits and no timer is pending: nothing can ever happen again."""


class _VirtualSelector(selectors.BaseSelector):
    """A selector with no I/O: 'waiting' for ``timeout`` advances the virtual clock."""

    def __init__(self, loop: "VirtualTimeLoop"):
        self._loop = loop
        self._keys: dict[Any, selectors.SelectorKey] = {}

    def register(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()
        key = selectors.SelectorKey(fileobj, fd, events, data)
        self._keys[fileobj] = key
        return key

    def unregister(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys.pop(fileobj)

    def modify(self, fileobj: Any, events: int, data: Any = None) -> selectors.SelectorKey:
        self._keys.pop(fileobj, None)
        return self.register(fileobj, events, data)

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is None:
            raise Deadlock(
                f"deadlock at virtual time {self._loop.time():.3f} us: every task is waiting "
                f"and no timer is pending"
            )
        if timeout > 0:
            self._loop._advance(timeout)
        return []

    def get_key(self, fileobj: Any) -> selectors.SelectorKey:
        return self._keys[fileobj]

    def get_map(self) -> Any:
        return self._keys

    def close(self) -> None:
        self._keys.clear()


class VirtualTimeLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on virtual time (microseconds); see the module docstring."""

    def __init__(self) -> None:
        self._virtual_now = 0.0
        super().__init__(selector=_VirtualSelector(self))
        self._clock_resolution = 1e-6  # timers due within a picosecond of now fire now

    def time(self) -> float:
        return self._virtual_now

    def _advance(self, us: float) -> None:
        self._virtual_now += us


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

    async def sleep(self, us: float) -> None:
        await asyncio.sleep(us)


def run_virtual(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` to completion on a fresh virtual-time loop and return its result.

    Tasks still pending when ``coro`` returns are cancelled and awaited, so nothing outlives
    the run.
    """
    loop = VirtualTimeLoop()
    try:
        return loop.run_until_complete(coro)
    finally:
        try:
            pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
            for t in pending:
                t.cancel()
            if pending:
                loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        finally:
            loop.close()
