"""The ray backend's clock: real time, in microseconds (the ``Clock`` of ``nodes/runtime.py``).

Only ``cluster/`` reads the wall clock; the model receives it injected, as it receives the
sim backend's virtual clock."""

from __future__ import annotations

import asyncio
import time
from typing import Awaitable


class WallClock:
    """Monotonic wall time in microseconds; sleeping suspends the task for real."""

    def now(self) -> float:
        return time.monotonic() * 1e6

    def sleep(self, us: float) -> Awaitable[None]:
        return asyncio.sleep(max(0.0, us) / 1e6)
