"""Live partitions for the integration tests, in this process on 127.0.0.1 port 0 (no Ray):
``started`` makes and connects them, ``run_live`` runs a test body on them and stops them
afterwards whatever happened (the ``live`` fixture of ``conftest.py`` is ``run_live`` on each
transport in turn)."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

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
