"""Raw stubs of a partition's ``OwnerService`` and ``SecondaryService`` for the integration
tests, on either transport: ``unary``, the generated stubs; ``stream``, the same calls carried
on ``StreamService.Exchange`` streams, bypassing ``GrpcInterconnect`` as the generated stubs do.

A stream stub's call takes what a generated stub's does (``request, timeout=, metadata=``) and
fails the same way, with a ``grpc.aio.AioRpcError`` carrying the request's status code, details
and model error class name (trailing metadata ``mmusim-error``); a stream the server ends
(refused as a whole, or broken) fails each of its requests in flight with the stream's status.
Requests with the same metadata share one stream, so concurrent ones are multiplexed on it.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any

import grpc

from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.server import OWNER_SERVICE_NAME, PROBE_KEY, SECONDARY_SERVICE_NAME
from nodes.rpc.status import ERROR_KEY, status_code

GENERATED = {"OwnerService": pb_grpc.OwnerServiceStub, "SecondaryService": pb_grpc.SecondaryServiceStub}
FULL_NAME = {"OwnerService": OWNER_SERVICE_NAME, "SecondaryService": SECONDARY_SERVICE_NAME}
REPLY = {m.name: m.output_type.name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}


def rpc_error(code: grpc.StatusCode, details: str, error: str | None = None) -> grpc.aio.AioRpcError:
    trailing = grpc.aio.Metadata(*(((ERROR_KEY, error),) if error else ()))
    return grpc.aio.AioRpcError(code, grpc.aio.Metadata(), trailing, details)


class _RawStream:
    def __init__(self, channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...]):
        self.call = pb_grpc.StreamServiceStub(channel).Exchange(metadata=metadata)
        self.pending: dict[int, asyncio.Future[Any]] = {}
        self.ended: grpc.aio.AioRpcError | None = None
        self.ids = itertools.count(1)
        self.writing = asyncio.Lock()  # one write at a time on a call (gRPC allows no more)
        self.reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for message in self.call:
                for reply in message.replies:
                    future = self.pending.pop(reply.id, None)
                    if future is not None and not future.done():
                        future.set_result(reply)
            self.ended = rpc_error(grpc.StatusCode.UNAVAILABLE, "the server closed the stream")
        except grpc.aio.AioRpcError as e:
            self.ended = e
        finally:
            for future in self.pending.values():
                if not future.done():
                    future.set_exception(self.ended or rpc_error(grpc.StatusCode.CANCELLED, "closed"))

    async def request(self, method: str, body: bytes, timeout_s: float, probe: bool) -> Any:
        if self.ended is not None:
            raise self.ended
        rid = next(self.ids)
        future = self.pending[rid] = asyncio.get_running_loop().create_future()
        try:
            async with asyncio.timeout(timeout_s):
                try:
                    async with self.writing:
                        await self.call.initial_metadata()  # accepted, or refused (then done)
                        await self.call.write(pb.ExchangeRequest(calls=[pb.StreamCall(
                            id=rid, method=method, request=body, timeout_us=timeout_s * 1e6, probe=probe)]))
                except (asyncio.InvalidStateError, grpc.aio.AioRpcError):  # it ended: its status says how
                    self.ended = rpc_error(await self.call.code(), await self.call.details() or "",
                                           dict(await self.call.trailing_metadata() or ()).get(ERROR_KEY))
                    raise self.ended from None
                return await future
        except TimeoutError:
            raise rpc_error(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded") from None
        finally:
            self.pending.pop(rid, None)
            if future.done() and not future.cancelled():
                future.exception()  # the reader may have failed it too, after a failed write did

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


class StreamStub:
    """The calls of one service, each sent on the stream of its metadata (``StreamStubs``)."""

    def __init__(self, owner: "StreamStubs", service: str):
        self._owner = owner
        self._service = service

    def __getattr__(self, rpc: str) -> Any:
        async def call(request: Any, *, timeout: float, metadata: tuple[tuple[str, str], ...] = ()) -> Any:
            return await self._owner.send(self._service, rpc, request, timeout, tuple(metadata))
        return call


class StreamStubs:
    """Stream stubs over ``channel``, one stream per distinct metadata."""

    def __init__(self, channel: grpc.aio.Channel):
        self.channel = channel
        self.streams: dict[tuple[tuple[str, str], ...], _RawStream] = {}

    def stub(self, service: str) -> StreamStub:
        return StreamStub(self, service)

    async def send(self, service: str, rpc: str, request: Any, timeout_s: float,
                   metadata: tuple[tuple[str, str], ...]) -> Any:
        probe = any(k == PROBE_KEY for k, _ in metadata)
        key = tuple((k, v) for k, v in metadata if k != PROBE_KEY)
        stream = self.streams.get(key)
        if stream is None or stream.ended is not None:
            stream = self.streams[key] = _RawStream(self.channel, key)
        reply = await stream.request(f"/{FULL_NAME[service]}/{rpc}", request.SerializeToString(), timeout_s, probe)
        if reply.code != 0:
            raise rpc_error(status_code(reply.code), reply.details, reply.error or None)
        return getattr(pb, REPLY[rpc]).FromString(reply.reply)

    async def close(self) -> None:
        streams, self.streams = list(self.streams.values()), {}
        for stream in streams:
            await stream.close()


def raw_stubs(channel: grpc.aio.Channel, transport: str) -> tuple[Any, Any, StreamStubs | None]:
    """(OwnerService stub, SecondaryService stub, the StreamStubs to close or None) on
    ``channel`` for ``transport``."""
    if transport == "unary":
        return GENERATED["OwnerService"](channel), GENERATED["SecondaryService"](channel), None
    streams = StreamStubs(channel)
    return streams.stub("OwnerService"), streams.stub("SecondaryService"), streams
