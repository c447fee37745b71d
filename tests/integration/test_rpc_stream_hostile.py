"""A hostile peer on the stream transport (issue 13, point 4; the 10,000 generated requests run
on both transports in ``test_rpc_hostile.py``): frames that are not an ``ExchangeRequest``, a
frame larger than the server takes, and a peer that opens a stream, floods it and never reads
its answers. Each time the server stays up and serves everyone else, holds at most
``STREAM_IN_FLIGHT`` requests of the stream, frees them when the peer goes, and no invariant
breaks."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from nodes.notifier import MmuNotifier
from nodes.remote import PROBE_NOTIFIER
from nodes.rpc import codec
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.server import DST_KEY, SECONDARY_SERVICE_NAME, SRC_KEY, STREAM_IN_FLIGHT, STREAM_SERVICE_NAME

from liveparts import run_live

EXCHANGE = f"/{STREAM_SERVICE_NAME}/Exchange"
MAX_RECEIVE = 4 * 1024 * 1024  # gRPC's default limit of a received message


def raw_exchange(channel: grpc.aio.Channel, src: str, dst: str) -> Any:
    """An Exchange stream whose frames are written as given bytes (no serializer)."""
    call = channel.stream_stream(EXCHANGE, request_serializer=None,
                                 response_deserializer=pb.ExchangeResponse.FromString)
    return call(metadata=((SRC_KEY, src), (DST_KEY, dst)))


class HeldNotifier(MmuNotifier):
    """A notifier whose ``invalidate_range_start`` waits until ``release`` is set: callouts to
    it stay in flight on the server for as long as a test needs."""

    def __init__(self) -> None:
        super().__init__("held")
        self.release = asyncio.Event()

    async def invalidate_range_start(self, mm: Any, start: int, end: int) -> None:
        await self.release.wait()


def null_callouts(first_id: int, n: int, notifier: str = PROBE_NOTIFIER) -> bytes:
    """One ExchangeRequest of ``n`` probe callouts to ``notifier`` (by default the null one),
    ids from ``first_id``."""
    m, request = codec.encode_callout(notifier, "invalidate_range_start", 0, "probe", (0, 4096), 0)
    body = request.SerializeToString()
    return pb.ExchangeRequest(calls=[pb.StreamCall(id=first_id + k, method=f"/{SECONDARY_SERVICE_NAME}/{m.rpc}",
                                                   request=body, timeout_us=30e6, probe=True)
                                     for k in range(n)]).SerializeToString()


async def still_serving(p0, p1) -> None:
    """p0 still answers p1's callouts and null RPCs, and neither partition broke an invariant."""
    assert await p1.interconnect.null_callout("p1", "p0") > 0
    assert await p1.interconnect.null_rpc("p1", "p0") > 0
    assert p0.partition.check_invariants() == [] and p1.partition.check_invariants() == []


@pytest.mark.parametrize("frame, what", [
    (null_callouts(1, 3)[:-7], "truncated"),  # cut inside the last call
    (b"\xff" * 64, "garbage"),
    (b"\x0a\x80\x80\x80\x80\x10", "a length past the end"),
])
def test_a_frame_that_is_not_an_exchange_request_ends_only_its_stream(frame, what):
    async def body(p0, p1):
        channel = grpc.aio.insecure_channel(p0.address)
        try:
            call = raw_exchange(channel, "p1", "p0")
            await call.write(frame)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, what
            assert "is not an ExchangeRequest" in info.value.details()
        finally:
            await channel.close()
        await still_serving(p0, p1)
        assert p0.server.stream_servicer.in_flight() == 0

    run_live(body, "p0", "p1", transport="stream")


def test_an_oversized_frame_is_refused_and_the_server_serves_on():
    async def body(p0, p1):
        channel = grpc.aio.insecure_channel(p0.address)
        try:
            call = raw_exchange(channel, "p1", "p0")
            await call.write(b"\x0a" + b"\x00" * (MAX_RECEIVE + 1024))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                async for _ in call:
                    pass
            assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        finally:
            await channel.close()
        await still_serving(p0, p1)

    run_live(body, "p0", "p1", transport="stream")


def test_a_peer_that_floods_a_stream_and_never_reads_holds_a_bounded_share_of_the_server():
    """10,000 requests written as fast as the stream takes them, each held in flight on the
    server (a notifier that does not answer until released), no answer read: the server takes
    exactly STREAM_IN_FLIGHT of them (then stops reading: HTTP/2 flow control holds the rest
    at the peer), serves other callers meanwhile, and frees them all when the peer goes."""

    async def body(p0, p1):
        servicer = p0.server.stream_servicer
        held = p0.secondary_service.notifiers["held"] = HeldNotifier()
        channel = grpc.aio.insecure_channel(p0.address)
        peak = 0
        try:
            call = raw_exchange(channel, "p1", "p0")

            async def flood() -> None:
                for first in range(1, 10_000, 100):
                    await call.write(null_callouts(first, 100, "held"))

            writer = asyncio.ensure_future(flood())
            for _ in range(5000):  # bounded: until the server holds its cap
                peak = max(peak, servicer.in_flight())
                assert peak <= STREAM_IN_FLIGHT
                if peak == STREAM_IN_FLIGHT:
                    break
                await asyncio.sleep(0.001)
            assert peak == STREAM_IN_FLIGHT  # the peer wrote more than the server took
            await still_serving(p0, p1)  # on its own stream, meanwhile
            assert servicer.in_flight() == STREAM_IN_FLIGHT  # held: no more taken, none let go
            writer.cancel()
            await asyncio.gather(writer, return_exceptions=True)
        finally:
            await channel.close()
            held.release.set()
        for _ in range(5000):  # the peer is gone: what it held is freed
            if servicer.in_flight() == 0 and len(servicer.open) <= 1:
                break
            await asyncio.sleep(0.001)
        assert servicer.in_flight() == 0 and len(servicer.open) <= 1  # p1's own stream may stay open
        await still_serving(p0, p1)

    run_live(body, "p0", "p1", transport="stream")
