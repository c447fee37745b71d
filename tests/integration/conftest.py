"""Integration tests: partitions served by grpc.aio on 127.0.0.1 port 0, in this process, in
real time (no Ray). ``live_pair`` runs a test body with two connected partitions, p0 and p1,
and stops them afterwards whatever happened."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from cluster.live import LivePartition


async def started(*names: str, **config: Any) -> list[LivePartition]:
    parts = [LivePartition(n, nframes=4096, cpus=2, jiffy_us=1000.0, **config) for n in names]
    directory = {p.name: await p.start() for p in parts}
    for p in parts:
        p.connect(directory)
    return parts


def run_live(body: Callable[..., Awaitable[Any]], *names: str, **config: Any) -> Any:
    async def main() -> Any:
        parts = await started(*names, **config)
        try:
            return await body(*parts)
        finally:
            for p in parts:
                await p.stop()

    return asyncio.run(main())


@pytest.fixture
def live() -> Callable[..., Any]:
    """``live(body, "p0", "p1", **config)``: run ``body(p0, p1)`` on fresh live partitions."""
    return run_live
