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

Transports (``transport``): ``unary`` sends each request as its own unary call; ``stream``
sends it on a long-lived ``StreamService.Exchange`` stream to its destination (``_Stream``, one
per source and destination partition, opened on first use), with a request id, its own
deadline and a cancellation if the caller gives up on it, and the answer raises exactly what
the unary call's would. Requests that are ready while the stream's previous message is being
written go together in the next message: the transport coalesces, the model does not (each
request is answered on its own, and the server starts them in the order they were sent). A
stream that breaks (the partition died, its link did, or the server refused the stream) fails
every request in flight on it, as ``Unreachable`` unless the server said otherwise (a stream
refused for the caller's identity is ``PermissionDenied``), and the next request opens a new one.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import time
from collections import Counter
from typing import Any, Callable

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nodes.errors import ModelError, Unreachable
from nodes.mm import PAGE_SIZE
from nodes.remote import OWNER_SERVICE, PROBE_NOTIFIER, SECONDARY_SERVICE
from nodes.rpc import DEFAULT_TRANSPORT, TRANSPORTS, codec
from nodes.rpc.identity import PartitionIdentity
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.server import DST_KEY, OWNER_SERVICE_NAME, PROBE_KEY, SECONDARY_SERVICE_NAME, SRC_KEY
from nodes.rpc.status import ERROR_KEY, error_from, status_code
from nodes.runtime import Runtime

DEFAULT_DEADLINE_US = 5_000_000.0  # five seconds: a Python RPC on a loaded 2-core machine can take 100 ms


def error_of_status(code: grpc.StatusCode, details: str | None, trailing: Any, what: str) -> Exception:
    """The model error an ended call (or stream) carries: its status code and details, and the
    error's class name in its trailing metadata (``mmusim-error``), if it has one."""
    name = dict(trailing or ()).get(ERROR_KEY)
    return error_from(code, details or "", name if isinstance(name, str) else None, what)


def error_of_rpc(e: grpc.aio.AioRpcError, what: str) -> Exception:
    """The model error a failed call (or stream) carries."""
    return error_of_status(e.code(), e.details(), e.trailing_metadata(), what)


def raise_from_rpc_error(e: grpc.aio.AioRpcError, what: str) -> None:
    """Re-raise a failed call as the model error it carries."""
    raise error_of_rpc(e, what) from None


class _Broken(Exception):
    """What a request in flight on a stream that broke is failed with; ``_Stream.request``
    raises the model error of the break in its place, naming the request."""


class _Expired(Exception):
    """What a request whose deadline passed is failed with; ``_Stream.request`` raises
    DEADLINE_EXCEEDED's ``Unreachable`` in its place, as a unary call's deadline would."""


def _unreachable(why: str, what: str) -> Exception:
    return Unreachable(f"{what}: {why}")


class _Stream:
    """One long-lived ``Exchange`` stream from partition ``src`` to ``dst`` on ``channel``:
    requests in flight by id, writes that send whatever requests are waiting as one message
    (``_flush``), a writer task that opens the stream and breaks it if a write fails, and a
    reader task that hands each answer to its request. ``on_break`` is called
    once, when the stream breaks or is closed; every request still in flight then fails.

    The per-request work is kept to what the request needs (a Python RPC here costs its
    handoffs between tasks, and each is counted, issue 13): a request is added to the message
    being gathered (``outbox``), which is written at once if no write is in progress (by
    ``_flush``, in the requesting task, without a handoff to a writer task), else when the
    write in progress ends; deadlines are kept by one timer per stream, armed for the
    earliest deadline in flight (``_expire``), not a timer per request."""

    def __init__(self, channel: grpc.aio.Channel, src: str, dst: str, on_break: Callable[["_Stream"], None],
                 written: Counter[str]):
        self.src, self.dst = src, dst
        self.written = written  # stream messages and the requests (and cancellations) in them
        self.call = pb_grpc.StreamServiceStub(channel).Exchange(metadata=((SRC_KEY, src), (DST_KEY, dst)))
        # invariant: the requests in flight by id, each with its future (not done until the
        # request's caller has been told, by the reader, _expire or _break) and its deadline
        # (loop time); oldest first
        self.pending: dict[int, tuple[asyncio.Future[Any], float]] = {}
        self.outbox = pb.ExchangeRequest()  # the next message: StreamCalls not yet written
        # set when it broke (then nothing more is sent on it): the error of a request it failed
        self.broken: Callable[[str], Exception] | None = None
        self._on_break = on_break
        self._ids = itertools.count(1)
        self._loop = asyncio.get_running_loop()
        self._open = False  # the server accepted the stream: requests may be written
        self._writing = 0  # requests (and cancellations) in the write in progress, if any
        self._failed: asyncio.Future[BaseException] = self._loop.create_future()  # a write failed: how
        self._timer: asyncio.TimerHandle | None = None  # at the earliest deadline in pending, if any
        self._writer = asyncio.ensure_future(self._write())
        self._reader = asyncio.ensure_future(self._read())

    async def request(self, method: str, body: bytes, timeout_s: float, probe: bool, what: Callable[[], str]) -> Any:
        """Send one request (``method``: the unary RPC's full name, ``body``: its request
        serialized; ``what()`` names it in errors) and await its ``StreamReply``. Its deadline
        passing is ``Unreachable`` (DEADLINE_EXCEEDED, as a unary call's) and, like a
        cancellation, tells the server; the stream breaking raises the error of the break."""
        if self.broken is not None:
            raise self.broken(what())
        rid = next(self._ids)
        future = self._loop.create_future()
        deadline = self._loop.time() + timeout_s
        self.pending[rid] = (future, deadline)
        if self._timer is None or deadline < self._timer.when():
            self._arm(deadline)
        if probe:
            self.outbox.calls.add(id=rid, method=method, request=body, timeout_us=timeout_s * 1e6, probe=True)
        else:  # (a field left at its default costs nothing to set)
            self.outbox.calls.add(id=rid, method=method, request=body, timeout_us=timeout_s * 1e6)
        if not self._writing:
            self._flush()
        try:
            return await future
        except _Expired:
            raise error_from(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", None, what()) from None
        except _Broken:
            assert self.broken is not None
            raise self.broken(what()) from None
        finally:
            if self.pending.pop(rid, None) is not None and self.broken is None:  # given up on
                self.outbox.calls.add(id=rid, cancel=True)
                self._flush()

    def _flush(self) -> None:
        """Write the gathered requests now, unless a write is in progress (they go when it
        ends) or the stream is not open yet (they go when it is)."""
        if self._writing or not self._open or not self.outbox.calls or self.broken is not None:
            return
        message, self.outbox = self.outbox, pb.ExchangeRequest()
        self._writing = len(message.calls)
        # counted as handed to gRPC (its completion may come after the answers it brings)
        self.written["messages"] += 1
        self.written["calls"] += self._writing
        self._step(self.call.write(message))

    def _step(self, write: Any, _: Any = None) -> None:
        """Drive the write in progress (``write``, gRPC's coroutine) to its next wait, as a
        task would (``Task.__step``): the first step runs in the requesting task, so the
        message is handed to gRPC at once; the next when what it waits for is done. No task
        runs it, so no caller's cancellation can reach it: gRPC cancels the whole stream when
        a write is cancelled. When it ends, what gathered meanwhile is written; if it fails,
        the writer task breaks the stream with its status."""
        try:
            waiting = write.send(None)
        except StopIteration:
            self._writing = 0
            self._flush()
            return
        except BaseException as e:  # noqa: BLE001 - handed to the writer task, which breaks the stream
            self._writing = 0
            if not self._failed.done():
                self._failed.set_result(e)
            return
        if waiting is None:  # a bare yield (asyncio.sleep(0)): step again soon
            self._loop.call_soon(self._step, write)
        else:
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(functools.partial(self._step, write))

    def _arm(self, deadline: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(deadline, self._expire)

    def _expire(self) -> None:
        """The earliest deadline came: fail every request in flight whose deadline has passed
        (its caller then tells the server), and arm the timer for the next."""
        self._timer = None
        now = self._loop.time()
        soonest = None
        for future, deadline in self.pending.values():
            if deadline <= now:
                if not future.done():
                    future.set_exception(_Expired())
            elif soonest is None or deadline < soonest:
                soonest = deadline
        if soonest is not None:
            self._arm(soonest)

    async def _write(self) -> None:
        try:
            await self.call.initial_metadata()  # the server accepted the stream (or refused it: done)
            if self.call.done():
                raise asyncio.InvalidStateError("the stream was refused")
            self._open = True
            self._flush()  # what was requested before
            raise await self._failed  # the writes go on without this task, until one fails
        except asyncio.CancelledError:
            raise
        except (asyncio.InvalidStateError, grpc.aio.AioRpcError):  # the stream ended: its status says how
            try:  # (a write racing the end fails with INTERNAL, whatever the status)
                code = await asyncio.wait_for(self.call.code(), 1.0)
                details, trailing = await self.call.details(), await self.call.trailing_metadata()
            except (asyncio.TimeoutError, grpc.aio.AioRpcError):
                code, details, trailing = grpc.StatusCode.UNAVAILABLE, "the stream could not be written", None
            self._break(functools.partial(error_of_status, code, details, trailing))

    async def _read(self) -> None:
        try:
            async for message in self.call:
                for reply in message.replies:
                    entry = self.pending.pop(reply.id, None)
                    if entry is not None and not entry[0].done():
                        entry[0].set_result(reply)
        except grpc.aio.AioRpcError as e:
            self._break(functools.partial(error_of_rpc, e))
        except asyncio.CancelledError:
            self._break(functools.partial(_unreachable, f"the stream from {self.src} was closed"))
            raise
        else:
            self._break(functools.partial(_unreachable, f"partition {self.dst} closed the stream from {self.src}"))

    def _break(self, error: Callable[[str], Exception]) -> None:
        if self.broken is not None:
            return
        self.broken = error
        pending, self.pending = self.pending, {}
        for future, _ in pending.values():
            if not future.done():
                future.set_exception(_Broken())
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._failed.done() and self._writer is not asyncio.current_task():
            self._writer.cancel()  # it waits for a write to fail, and none will be made now
        self.call.cancel()
        self._on_break(self)

    async def close(self) -> None:
        self._break(functools.partial(_unreachable, f"the stream from {self.src} was closed"))
        for task in (self._writer, self._reader):
            task.cancel()
        await asyncio.gather(self._writer, self._reader, return_exceptions=True)


_FULL_NAME = {OWNER_SERVICE: OWNER_SERVICE_NAME, SECONDARY_SERVICE: SECONDARY_SERVICE_NAME}


@functools.lru_cache(maxsize=None)
def _full_name(service: str, rpc: str) -> str:
    """The full name of ``service``'s RPC ``rpc`` (``/package.Service/Rpc``), as a stream request names it."""
    return f"/{_FULL_NAME[service]}/{rpc}"


class GrpcInterconnect:
    """Requests from this process's partitions to services on others, over gRPC.

    ``directory`` maps a partition name to its server's address (host:port); it may be
    updated as partitions come up. ``identity``: this process's partition's, for mutual TLS;
    None: plaintext (loopback tests). ``transport``: ``unary`` or ``stream`` (module doc)."""

    def __init__(self, directory: dict[str, str], *, identity: PartitionIdentity | None,
                 deadline_us: float = DEFAULT_DEADLINE_US, transport: str = DEFAULT_TRANSPORT):
        if not deadline_us > 0:
            raise ValueError(f"deadline_us must be positive, got {deadline_us!r}")
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}, got {transport!r}")
        self.directory = directory
        self.identity = identity
        self.deadline_us = float(deadline_us)
        self.transport = transport
        # by (address, destination, source): open streams, one per direction per pair
        self._streams: dict[tuple[str, str, str], _Stream] = {}
        # stream transport: "streams" opened, "messages" written on them, "calls" in those
        # (requests and cancellations); calls > messages when requests were coalesced
        self.written: Counter[str] = Counter()
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
        await self._send(src, dst, SECONDARY_SERVICE, "callout", args, probe=True)
        return (time.perf_counter() - t0) * 1e6

    async def _send(self, src: str, dst: str, service: str, method: str, args: tuple[Any, ...], *,
                    kind: str | None = None, probe: bool = False) -> Any:
        """The request of ``call`` (counted in ``messages`` under ``kind``, unless None) on
        this interconnect's transport; ``probe``: the instrument's (no latency injected)."""
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
        if kind is not None:
            self.messages[kind] += 1
        if self.transport == "stream":
            def what() -> str:  # made only for an error
                return f"{m.rpc} from {src} to {dst}"

            stream = self._streams.get((self.directory.get(dst), dst, src)) or self._stream(src, dst)
            reply = await stream.request(_full_name(service, m.rpc), request.SerializeToString(),
                                         self.deadline_us / 1e6, probe, what)
            if reply.code != 0:
                raise error_from(status_code(reply.code), reply.details, reply.error or None, what())
            return m.decode_result(m.reply.FromString(reply.reply))
        what = f"{m.rpc} from {src} to {dst}"
        stub = self._stub(dst, service)
        try:
            reply = await getattr(stub, m.rpc)(
                request, timeout=self.deadline_us / 1e6, metadata=((SRC_KEY, src), (DST_KEY, dst), *(((PROBE_KEY, "1"),) if probe else ())))
        except grpc.aio.AioRpcError as e:
            raise_from_rpc_error(e, what)
        return m.decode_result(reply)

    def _stream(self, src: str, dst: str) -> _Stream:
        """The open stream from ``src`` to ``dst``, opened if there is none (or it broke)."""
        channel = self._channel(dst)
        key = (self.directory[dst], dst, src)
        stream = self._streams.get(key)
        if stream is None:
            def forget(broken: _Stream) -> None:
                if self._streams.get(key) is broken:
                    del self._streams[key]

            stream = self._streams[key] = _Stream(channel, src, dst, forget, self.written)
            self.written["streams"] += 1
        return stream

    async def close(self) -> None:
        for stream in list(self._streams.values()):
            await stream.close()
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
        self.unanswered = 0  # invariant: reports queued or being sent, not yet answered (or lost)
        self._queue: asyncio.Queue[tuple[Any, ...] | None] = asyncio.Queue()
        self._task = runtime.spawn(self._send_all(), name=f"{host}->{owner} oracle reports")

    def translation_established(self, host: str, notifier_id: str, mm_id: int, address: int, pfn: int) -> None:
        self.unanswered += 1
        self._queue.put_nowait((host, notifier_id, mm_id, address, [pfn], True))

    def translations_dropped(self, host: str, notifier_id: str, mm_id: int, pfns: Any) -> None:
        self.unanswered += 1
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
                self.unanswered -= 1
                self._queue.task_done()

    async def flush(self) -> None:
        """Wait until every report made so far has been answered (or lost)."""
        await self._queue.join()

    async def close(self) -> None:
        await self.flush()
        self._queue.put_nowait(None)
        await self._task
