"""Shared helpers for the unit tests: run a test body on the virtual-time loop.

``vrun(body)`` creates a fresh ``VirtualTimeLoop``, builds a ``Runtime(VirtualClock())`` inside
it, awaits ``body(rt)``, then (unless ``join=False``) awaits ``rt.join()`` so a failure in any
task the test or the model spawned is re-raised instead of dropped. Virtual time starts at 0;
one loop time unit is one microsecond.

``settle(rt)`` advances virtual time by one microsecond. On the virtual loop time only moves
when no task is ready, so when it returns every task has run as far as it can at the earlier
instant (blocked on a lock, a future, or a timer): a deterministic quiescence point, not a
guess at how long something takes.
"""

from __future__ import annotations

from typing import Any, Awaitable, Callable

import pytest

from cluster.vtime import VirtualClock, run_virtual
from nodes.runtime import Runtime


def _vrun(body: Callable[[Runtime], Awaitable[Any]], *, join: bool = True) -> Any:
    async def main() -> Any:
        rt = Runtime(VirtualClock())
        result = await body(rt)
        if join:
            await rt.join()
        return result

    return run_virtual(main())


@pytest.fixture
def vrun() -> Callable[..., Any]:
    return _vrun


async def settle(rt: Runtime) -> None:
    await rt.sleep(1)


@pytest.fixture(name="settle")
def settle_fixture() -> Callable[[Runtime], Awaitable[None]]:
    return settle
