"""Integration tests: partitions served by grpc.aio on 127.0.0.1 port 0, in this process, in
real time (no Ray). ``live`` runs a test body with connected partitions (p0, p1, ...) and
stops them afterwards whatever happened. They speak plaintext unless ``tls=True``: then mutual
TLS with identities issued by a CA made for the test (``nodes/rpc/identity.py``)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import pytest

from cluster.live import LivePartition
from nodes.rpc.identity import ClusterCA


async def started(*names: str, tls: bool = False, **config: Any) -> list[LivePartition]:
    identities = ClusterCA.generate().issue_all(list(names)) if tls else dict.fromkeys(names)
    parts = [LivePartition(n, identity=identities[n], nframes=4096, cpus=2, jiffy_us=1000.0, **config) for n in names]
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
    """``live(body, "p0", "p1", **config)``: run ``body(p0, p1)`` on fresh live partitions
    (``tls=True``: over mutual TLS)."""
    return run_live
