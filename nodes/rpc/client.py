"""The client side of the gRPC interconnect: ``GrpcInterconnect`` (the ``Interconnect`` of
``nodes/remote.py`` over gRPC) and ``ReportSink`` (oracle reports to an owner in another process).

Every call has a deadline. A failed call raises the model error the server answered (by the
class name in its trailing metadata, else by status code); a partition that does not answer in
time, or cannot be reached, raises ``Unreachable``, which is what makes an owner fence it.
Channels are opened once per destination and kept (a new channel costs milliseconds).

With an identity (``nodes/rpc/identity.py``) every channel is mutual TLS: it shows this
partition's certificate and accepts only a server whose certificate names the destination
partition, whatever address the directory gives for it. A server that is not that partition
(or has no certificate of the run's CA) fails the handshake: the call is UNAVAILABLE ("... Hostname
Verification Check failed" or "... Socket closed") and raises ``Unreachable``, as a partition
that cannot be reached does. A request the server refuses for the caller's identity is
``PermissionDenied``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.errors import ModelError, Unreachable
from nodes.mm import PAGE_SIZE
from nodes.remote import OWNER_SERVICE, PROBE_NOTIFIER, SECONDARY_SERVICE
from nodes.rpc import codec
from nodes.rpc.identity import PartitionIdentity
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.server import DST_KEY, PROBE_KEY, SRC_KEY
from nodes.rpc.status import ERROR_KEY, error_from
from nodes.runtime import Runtime

DEFAULT_DEADLINE_US = 5_000_000.0  # five seconds: a Python RPC on a loaded 2-core machine can take 100 ms


def raise_from_rpc_error(e: grpc.aio.AioRpcError, what: str) -> None:
    """Re-raise a failed call as the model error it carries."""
    name = dict(e.trailing_metadata() or ()).get(ERROR_KEY)
    raise error_from(e.code(), e.details() or "", name if isinstance(name, str) else None, what) from None


class GrpcInterconnect:
    """Requests from this process's partitions to services on others, over gRPC.

    ``directory`` maps a partition name to its server's address (host:port); it may be
    updated as partitions come up. ``identity``: this process's partition's, for mutual TLS;
    None: plaintext (loopback tests)."""

    def __init__(self, directory: dict[str, str], *, identity: PartitionIdentity | None,
                 deadline_us: float = DEFAULT_DEADLINE_US):
        if not deadline_us > 0:
            raise ValueError(f"deadline_us must be positive, got {deadline_us!r}")
        self.directory = directory
        self.identity = identity
        self.deadline_us = float(deadline_us)
        self.messages: Counter[str] = Counter()  # by kind, as the sim interconnect counts them
        # by (address, destination): under TLS a channel accepts only the partition it was made for
        self._channels: dict[tuple[str, str], grpc.aio.Channel] = {}
        self._stubs: dict[tuple[str, str, str], Any] = {}

    def _stub(self, dst: str, service: str) -> Any:
        channel = self._channel(dst)
        stub = self._stubs.get((self.directory[dst], dst, service))
        if stub is None:
            stub = (pb_grpc.OwnerServiceStub if service == OWNER_SERVICE else pb_grpc.SecondaryServiceStub)(channel)
            self._stubs[(self.directory[dst], dst, service)] = stub
        return stub

    def _channel(self, dst: str) -> grpc.aio.Channel:
        address = self.directory.get(dst)
        if address is None:
            raise Unreachable(f"no address for partition {dst!r}; known: {sorted(self.directory)}")
        channel = self._channels.get((address, dst))
        if channel is None:
            if self.identity is None:
                channel = grpc.aio.insecure_channel(address)
            else:
                channel = grpc.aio.secure_channel(address, self.identity.channel_credentials(),
                                                  options=self.identity.target_name(dst))
            self._channels[(address, dst)] = channel
        return channel

    async def call(self, src: str, dst: str, service: str, method: str, *args: Any, kind: str = "rpc",
                   nbytes: int = 64) -> Any:
        """Send ``service.method(*args)`` from ``src`` to partition ``dst`` and await the answer.
        ``nbytes`` is for the sim's latency model; gRPC sends what the message is."""
        return await self._send(src, dst, service, method, args, kind=kind)

    async def probe(self, src: str, dst: str, count: int) -> dict[str, list[float]]:
        """The instrument's own floor from ``src`` to ``dst``: ``count`` null RPCs
        (``null_rpc``) and ``count`` null callouts (``null_callout``), one at a time. Returns
        their round trips in microseconds, ``{"rpc_us": [...], "model_us": [...]}``."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"probe count must be an integer >= 1, got {count!r}")
        rpc_us = [await self.null_rpc(src, dst) for _ in range(count)]
        model_us = [await self.null_callout(src, dst) for _ in range(count)]
        return {"rpc_us": rpc_us, "model_us": model_us}

    async def null_rpc(self, src: str, dst: str) -> float:
        """One null RPC from ``src`` to ``dst``, the health service's Check (gRPC and nothing
        else), no latency injected; its round trip in microseconds."""
        health = health_pb2_grpc.HealthStub(self._channel(dst))
        t0 = time.perf_counter()
        try:
            await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=self.deadline_us / 1e6,
                               metadata=((SRC_KEY, src), (DST_KEY, dst), (PROBE_KEY, "1")))
        except grpc.aio.AioRpcError as e:
            raise_from_rpc_error(e, f"the probe's health check from {src} to {dst}")
        return (time.perf_counter() - t0) * 1e6

    async def null_callout(self, src: str, dst: str) -> float:
        """One null callout from ``src`` to ``dst``: an ``invalidate_range_start`` of ``dst``'s
        ``NullNotifier``, the path of every callout (encoding, the servicer, the notifier's
        lookup and dispatch, the answer) without any secondary's work, no latency injected,
        not counted in ``messages``; its round trip in microseconds."""
        args = (PROBE_NOTIFIER, "invalidate_range_start", 0, "probe", (0, PAGE_SIZE), 0)
        t0 = time.perf_counter()
        await self._send(src, dst, SECONDARY_SERVICE, "callout", args, metadata=((PROBE_KEY, "1"),))
        return (time.perf_counter() - t0) * 1e6

    async def _send(self, src: str, dst: str, service: str, method: str, args: tuple[Any, ...], *,
                    kind: str | None = None, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
        """The request of ``call`` (counted in ``messages`` under ``kind``, unless None), with
        ``metadata`` besides the partitions'."""
        if service == OWNER_SERVICE:
            m = codec.OWNER.get(method)
            if m is None:
                raise ValueError(f"the Owner service has no method {method!r}; known: {sorted(codec.OWNER)}")
            request = m.encode(*args)
        elif service == SECONDARY_SERVICE and method == "callout":
            m, request = codec.encode_callout(*args)
        elif service == SECONDARY_SERVICE and method in codec.SECONDARY_METHODS:
            m = codec.SECONDARY_METHODS[method]
            request = m.encode(*args)
        else:
            raise ValueError(f"no RPC for {service}.{method}")
        stub = self._stub(dst, service)
        if kind is not None:
            self.messages[kind] += 1
        try:
            reply = await getattr(stub, m.rpc)(
                request, timeout=self.deadline_us / 1e6, metadata=((SRC_KEY, src), (DST_KEY, dst), *metadata))
        except grpc.aio.AioRpcError as e:
            raise_from_rpc_error(e, f"{m.rpc} from {src} to {dst}")
        return m.decode_result(reply)

    async def close(self) -> None:
        for channel in self._channels.values():
            await channel.close()
        self._channels.clear()
        self._stubs.clear()


class ReportSink:
    """The ``oracle_sink`` of a ``RemoteOwner`` whose owner is in another process: reports of
    translations established and dropped, sent to the owner in the order they were made by one
    supervised task (the model calls the sink synchronously, at the moment of install). A
    report the owner cannot be reached for is counted in ``lost`` (a fenced partition's
    translations are forgotten by the owner anyway); one the owner refuses (the notifier was
    unregistered meanwhile) is kept in ``refused`` with the owner's reason."""

    def __init__(self, runtime: Runtime, interconnect: GrpcInterconnect, host: str, owner: str):
        self.runtime = runtime
        self.interconnect = interconnect
        self.host = host
        self.owner = owner
        self.lost = 0
        self.refused: list[str] = []
        self._queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self._task = runtime.spawn(self._send_all(), name=f"{host}->{owner} oracle reports")

    def translation_established(self, host: str, notifier_id: str, mm_id: int, address: int, pfn: int) -> None:
        self._queue.put_nowait((host, notifier_id, mm_id, address, [pfn], True))

    def translations_dropped(self, host: str, notifier_id: str, mm_id: int, pfns: Any) -> None:
        self._queue.put_nowait((host, notifier_id, mm_id, 0, [int(p) for p in pfns], False))

    async def _send_all(self) -> None:
        while (report := await self._queue.get()) is not None:
            try:
                await self.interconnect.call(self.host, self.owner, OWNER_SERVICE, "report_translations", *report,
                                             kind="report")
            except Unreachable:
                self.lost += 1
            except ModelError as e:
                self.refused.append(f"{type(e).__name__}: {e}")
            finally:
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every report made so far has been answered (or lost)."""
        await self._queue.join()

    async def close(self) -> None:
        await self.flush()
        self._queue.put_nowait(None)
        await self._task
