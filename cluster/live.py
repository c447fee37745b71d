"""One partition served over gRPC in this process, in real time: the ray backend's unit, and its
``PartitionContext`` (``cluster/context.py``).

``LivePartition`` is the plain model (``Partition``, its ``OwnerService`` and
``SecondaryService`` from ``nodes/remote.py``) plus a grpc.aio ``PartitionServer`` and a
``GrpcInterconnect`` to the other partitions. A Ray actor wraps one (``cluster/ray_backend.py``);
integration tests run several in one process on port 0, without Ray.

Secondaries made here (``gru``, ``xpmem``) map an mm of another partition through a
``RemoteOwner``: faults and registration go to the owner over gRPC, callouts come back to this
partition's server, oracle reports go to the owner through a ``ReportSink``.

``identity`` is the partition's ``PartitionIdentity`` (``nodes/rpc/identity.py``): its server
and its clients speak mutual TLS with it. It must be given: None, plaintext, is for runs on
loopback only, and is said explicitly.
"""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

from cluster.context import SecondaryFactory
from cluster.wallclock import WallClock
from nodes.owner import LocalOwner, OwnerPort
from nodes.errors import ModelError
from nodes.partition import Partition, SrcuOptions
from nodes.remote import OwnerService, RemoteOwner, SecondaryService
from nodes.rpc import DEFAULT_TRANSPORT
from nodes.rpc.client import DEFAULT_DEADLINE_US, GrpcInterconnect, ReportSink
from nodes.rpc.identity import PartitionIdentity
from nodes.rpc.server import PartitionServer
from nodes.runtime import Runtime


class LivePartition(SecondaryFactory):
    """A partition, its gRPC server, and its clients to the other partitions."""

    def __init__(
        self,
        name: str,
        *,
        identity: PartitionIdentity | None,
        nframes: int = 65536,
        cpus: int = 4,
        srcu_scope: str = "global",
        jiffy_us: float = 1000.0,
        fanout: str = "sequential",
        expedited: bool = False,
        deadline_us: float = DEFAULT_DEADLINE_US,
        latency_us: Callable[[str, str], float] | None = None,
        callout_latency_us: float = 0.0,
        gru_dropin: str = "guarded",
        transport: str = DEFAULT_TRANSPORT,
        semantics: str = "v3.10",
        srcu: SrcuOptions = SrcuOptions(),
    ):
        self.name = name
        self.identity = identity  # for mutual TLS; None: plaintext, on loopback only
        self.gru_dropin = gru_dropin  # how GRUs made here check a dropin (cluster/context.py)
        self.runtime = Runtime(WallClock())
        self.partition = Partition(self.runtime, name=name, nframes=nframes, ncpus=cpus, srcu_scope=srcu_scope,
                                   jiffy_us=jiffy_us, fanout=fanout, expedited=expedited, srcu=srcu,
                                   semantics=semantics)
        self.directory: dict[str, str] = {}
        self.interconnect = GrpcInterconnect(self.directory, identity=identity, deadline_us=deadline_us,
                                             transport=transport)  # unary | stream (nodes/rpc/client.py)
        self.owner_service = OwnerService(self.partition, self.interconnect)
        self.secondary_service = SecondaryService(name)
        self.secondary_service.flush_reports = self.reports_in_flight
        self.server = PartitionServer(self.owner_service, self.secondary_service, identity=identity,
                                      latency_us=latency_us, callout_latency_us=callout_latency_us)
        self._sinks: dict[str, ReportSink] = {}
        self.objects: dict[str, Any] = {}  # what workload code keeps here (cluster/context.py)
        self.address: str | None = None
        self.loaded_probe: LoadedProbe | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: ephemeral); returns the address."""
        self.address = await self.server.start(host, port)
        self.directory[self.name] = self.address
        return self.address

    def connect(self, directory: dict[str, str]) -> None:
        """Learn the addresses of the other partitions."""
        self.directory.update(directory)

    def owner_port(self, owner: str) -> OwnerPort:
        """How a secondary here reaches the mms of ``owner``: in-process when it is this
        partition, over gRPC otherwise."""
        if owner == self.name:
            return LocalOwner(self.partition)
        sink = self._sinks.get(owner)
        if sink is None:
            sink = self._sinks[owner] = ReportSink(self.runtime, self.interconnect, self.name, owner)
        return RemoteOwner(self.interconnect, self.secondary_service, owner, sink)

    def start_loaded_probe(self, dsts: list[str], period_s: float) -> None:
        """Probe the floor from here to ``dsts`` under whatever load runs until
        ``stop_loaded_probe`` (``LoadedProbe``)."""
        if self.loaded_probe is not None:
            raise RuntimeError(f"partition {self.name} is already probing")
        self.loaded_probe = LoadedProbe(self, dsts, period_s)

    async def stop_loaded_probe(self) -> dict[str, list[float]]:
        """Stop the loaded probe; its null callouts' round trips per destination ({} if none ran)."""
        probe, self.loaded_probe = self.loaded_probe, None
        return {} if probe is None else await probe.stop()

    async def flush_reports(self) -> None:
        """Wait until every oracle report made here has reached its owner."""
        for sink in self._sinks.values():
            await sink.flush()

    def reports_in_flight(self) -> Awaitable[None] | None:
        """``flush_reports`` if a report made here has not been answered yet, else None: a
        callout that made none (most) awaits nothing (``SecondaryService.flush_reports``)."""
        for sink in self._sinks.values():
            if sink.unanswered:
                return self.flush_reports()
        return None

    def report_problems(self) -> list[str]:
        """Oracle reports of secondaries here that did not reach their owner: lost (owner
        unreachable) or refused (with the owner's reason)."""
        problems = []
        for owner, sink in self._sinks.items():
            if sink.lost:
                problems.append(f"{self.name}->{owner}: {sink.lost} oracle reports lost (owner unreachable)")
            problems.extend(f"{self.name}->{owner}: refused: {r}" for r in sink.refused)
        return problems

    async def stop(self) -> None:
        """Close the report sinks and clients, stop serving, and join every task. The server
        stops whatever else fails; the first failure is raised."""
        try:
            await self.stop_loaded_probe()
            for sink in self._sinks.values():
                await sink.close()
        finally:
            try:
                await self.interconnect.close()
            finally:
                await self.server.stop(0)
                await self.runtime.join()


class LoadedProbe:
    """The instrument's floor as a workload's own traffic makes it: from partition ``live``, a
    null callout (``GrpcInterconnect.null_callout``) to each of ``dsts`` every ``period_s``
    until stopped. It waits where the run's callouts wait: behind the other work of both
    partitions' event loops and of the machine. A destination that stops answering (a killed
    partition) is probed no more; what it answered before is kept."""

    def __init__(self, live: "LivePartition", dsts: list[str], period_s: float):
        self.live = live
        self.samples: dict[str, list[float]] = {d: [] for d in dsts}
        self._stop = asyncio.Event()
        self._task = asyncio.ensure_future(self._run(float(period_s)))

    async def _run(self, period_s: float) -> None:
        alive = list(self.samples)
        while alive:  # a lap at least, however soon it is stopped
            for dst in list(alive):
                try:
                    self.samples[dst].append(await self.live.interconnect.null_callout(self.live.name, dst))
                except ModelError:  # Unreachable, or an error answered: no floor to measure there
                    alive.remove(dst)
            if self._stop.is_set():
                break
            try:
                await asyncio.wait_for(self._stop.wait(), period_s)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> dict[str, list[float]]:
        self._stop.set()
        await self._task
        return self.samples
