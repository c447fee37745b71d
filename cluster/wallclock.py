"""The ray backend's clock: real time, in microseconds (the ``Clock`` of ``nodes/runtime.py``).

Only ``cluster/`` reads the wall clock; the model receives it injected, as it receives the
sim backend's virtual clock.

Short waits. The model charges microseconds for work a CPU does (a GRU flushing 16 TLB
entries takes 32 us). An asyncio timer cannot wait that long: the loop's epoll rounds its
timeout *up* to whole milliseconds, so ``asyncio.sleep(32e-6)`` on a quiet loop takes about
1 ms, 30 times too long. A wait shorter than ``SPIN_BELOW_US`` is therefore spent spinning on
the monotonic clock, as the CPU the model charges would be busy (the task does not yield: the
CPU did not either); longer waits are asyncio timers.
"""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable

SPIN_BELOW_US = 1000.0  # epoll's timeout granularity: one millisecond


class WallClock:
    """Monotonic wall time in microseconds; sleeping takes real time."""

    def now(self) -> float:
        return time.monotonic() * 1e6

    def sleep(self, us: float) -> Awaitable[None]:
        if us >= SPIN_BELOW_US:
            return asyncio.sleep(us / 1e6)
        if us > 0:
            end = time.monotonic() + us / 1e6
            while time.monotonic() < end:
                pass
        return _spent()


async def _spent() -> None:
    """An awaitable that completes without suspending."""
