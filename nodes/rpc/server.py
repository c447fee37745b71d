"""The gRPC server of one partition: ``OwnerService`` and ``SecondaryService`` servicers, health, and
optional injected latency.

The servicers are thin (DESIGN.md): each RPC decodes its request with ``codec``, calls the
model (``OwnerService`` or ``SecondaryService`` of ``nodes/remote.py``), and encodes the result;
a model error is answered with its status code (``status``) and its class name in the trailing
metadata. Anything else raised is a bug in mmusim: INTERNAL, logged with its traceback, and the
server keeps serving. A request addressed to another partition (metadata ``mmusim-dst``) is
NOT_FOUND.

The standard ``grpc.health.v1.Health`` service reports both services SERVING while the server
runs. ``latency_us(src, dst)``, if given, delays each request by the modelled distance between
the calling partition (metadata ``mmusim-src``) and this one, and ``callout_latency_us`` each
callout besides: latency injection in the application, as the machines have no netem. A
request of the instrument's own probe (metadata ``mmusim-probe``) is not delayed: it measures
what the transport costs without the model (``GrpcInterconnect.probe``).

Identity (``nodes/rpc/identity.py``): a server given its partition's ``PartitionIdentity``
serves mutual TLS only. The TLS handshake requires a client certificate of the run's CA: a
client without one, or with one of another CA, or without TLS, is refused before any request
is read (gRPC in Python cannot answer such a client with a status: it sees UNAVAILABLE,
"failed to connect to all addresses; ... Socket closed", and ``GrpcInterconnect`` raises
``Unreachable``). Then every request must claim to come from the partition its certificate
names (``check_caller``): a claim (metadata ``mmusim-src``) that is missing or names another
partition is PERMISSION_DENIED, and so is a request to the owner for a secondary of another
partition (its ``host``). A server without an identity speaks plaintext and listens on a
loopback address only; no server listens on a wildcard address (0.0.0.0, ::): each binds the
address of its own node.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import ipaddress
import logging
import math
from typing import Any, Callable, Generator, Iterator

import grpc
from google.protobuf.message import DecodeError
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodes.remote import OwnerService, SecondaryService
from nodes.rpc import codec
from nodes.rpc.identity import PartitionIdentity
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.status import ERROR_KEY, code_of
from nodes.runtime import call_maybe_async

log = logging.getLogger(__name__)

SRC_KEY = "mmusim-src"  # request metadata: the calling partition
DST_KEY = "mmusim-dst"  # request metadata: the partition the request is for
PROBE_KEY = "mmusim-probe"  # request metadata: the instrument's probe, which no latency is injected into
OWNER_SERVICE_NAME = "mmusim.v2.OwnerService"  # full names, as the health service reports them
SECONDARY_SERVICE_NAME = "mmusim.v2.SecondaryService"
STREAM_SERVICE_NAME = "mmusim.v2.StreamService"
EXCHANGE = f"/{STREAM_SERVICE_NAME}/Exchange"  # the one RPC of StreamService, by full name
STREAM_IN_FLIGHT = 256  # requests of one stream being handled or waiting to be answered
MAX_CONCURRENT_STREAMS = 256  # HTTP/2 streams (unary calls in flight, or open streams) per connection


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


async def _call_model(partition: str, method: codec.Method, target: Callable[..., Any],
                      request: Any) -> tuple[Any, grpc.StatusCode, str, str | None]:
    """Handle one decoded request: (reply, OK, "", None), or (None, code, details, the model
    error's class name) for a model error, or INTERNAL without a class name for anything else
    (a bug in mmusim, logged with its traceback). Unary and stream requests both end here."""
    try:
        result = await call_maybe_async(target, *method.decode(request))
        return method.encode_result(result), grpc.StatusCode.OK, "", None
    except Exception as e:  # noqa: BLE001 - every error is answered, none is dropped
        code = code_of(e)
        if code is None:
            log.exception("partition %s: %s failed with a bug in mmusim", partition, method.rpc)
            return None, grpc.StatusCode.INTERNAL, f"mmusim bug in {method.rpc}: {type(e).__name__}: {e}", None
        return None, code, str(e), type(e).__name__


def _handler(partition: str, method: codec.Method, target: Callable[..., Any], checked: bool) -> Callable[..., Any]:
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if checked:
            await check_caller(context, method.rpc, request)
        dst = _metadata(context, DST_KEY)
        if dst is not None and dst != partition:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this is partition {partition}, not {dst}",
                                trailing_metadata=((ERROR_KEY, "NotFound"),))
        reply, code, details, error = await _call_model(partition, method, target, request)
        if code != grpc.StatusCode.OK:
            await context.abort(code, details, trailing_metadata=((ERROR_KEY, error),) if error else ())
        return reply

    handle.__name__ = method.rpc
    return handle


Route = tuple[codec.Method, Callable[..., Any]]  # an RPC and the model method it reaches


def owner_routes(owner: OwnerService) -> dict[str, Route]:
    """The RPCs of ``mmusim.v2.OwnerService`` by name, each with the method of ``owner`` it calls."""
    return {m.rpc: (m, getattr(owner, m.call)) for m in codec.OWNER.values()}


def secondary_routes(secondary: SecondaryService) -> dict[str, Route]:
    """The RPCs of ``mmusim.v2.SecondaryService`` by name: the callouts reach
    ``secondary.callout``, the others their own method."""
    routes: dict[str, Route] = {m.rpc: (m, secondary.callout) for m in codec.SECONDARY.values()}
    routes.update({m.rpc: (m, getattr(secondary, m.call)) for m in codec.SECONDARY_METHODS.values()})
    return routes


def owner_servicer(owner: OwnerService, *, checked: bool) -> pb_grpc.OwnerServiceServicer:
    """The ``mmusim.v2.OwnerService`` servicer of ``owner``'s partition (``checked``: each
    request's caller checked against its certificate, ``check_caller``)."""
    body = {rpc: _handler(owner.name, m, target, checked) for rpc, (m, target) in owner_routes(owner).items()}
    return type("OwnerServiceServicer", (pb_grpc.OwnerServiceServicer,), body)()


def secondary_servicer(secondary: SecondaryService, *, checked: bool) -> pb_grpc.SecondaryServiceServicer:
    """The ``mmusim.v2.SecondaryService`` servicer of a partition hosting secondaries
    (``checked``: as ``owner_servicer``)."""
    body = {rpc: _handler(secondary.name, m, target, checked)
            for rpc, (m, target) in secondary_routes(secondary).items()}
    return type("SecondaryServiceServicer", (pb_grpc.SecondaryServiceServicer,), body)()


class InjectedLatency(grpc.aio.ServerInterceptor):
    """Delays each request by ``latency_us(src, dst)`` microseconds (when the caller names
    itself) plus ``callout_us`` for a callout (a ``SecondaryService`` request) before it is handled."""

    def __init__(self, partition: str, latency_us: Callable[[str, str], float] | None, callout_us: float = 0.0):
        self.partition = partition
        self.latency_us = latency_us
        self.callout_us = callout_us

    def delay_s(self, src: str | None, method: str, probe: bool) -> float:
        """The delay of one request of ``method`` (its full name, ``/package.Service/Rpc``)
        from ``src`` (None: it names no caller): none for the instrument's probe."""
        if probe:
            return 0.0
        delay_us = self.latency_us(src, self.partition) if self.latency_us is not None and src is not None else 0.0
        if method.startswith(f"/{SECONDARY_SERVICE_NAME}/"):
            delay_us += self.callout_us
        return max(delay_us, 0.0) / 1e6

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:  # a stream delays each request itself
            return handler
        metadata = dict(details.invocation_metadata or ())
        delay_s = self.delay_s(metadata.get(SRC_KEY), details.method, PROBE_KEY in metadata)
        if delay_s <= 0:
            return handler
        inner = handler.unary_unary

        async def delayed(request: Any, context: Any) -> Any:
            await asyncio.sleep(delay_s)
            return await inner(request, context)

        return grpc.unary_unary_rpc_method_handler(
            delayed, request_deserializer=handler.request_deserializer, response_serializer=handler.response_serializer
        )


async def check_caller(context: grpc.aio.ServicerContext, what: str, request: Any) -> None:
    """Under mutual TLS, before a request is handled: the partition it claims to come from
    (metadata ``mmusim-src``) must be the one partition its caller's certificate names, and so
    must the partition a request to the owner acts for (its ``host`` field: the partition the
    secondary lives on, which is the caller); else it is answered PERMISSION_DENIED
    (UNAUTHENTICATED if the connection has no peer certificate at all, which the TLS handshake
    already prevents). Health checks too: every caller of a partition is a partition."""
    await _check_host(context, what, request, await _check_peer(context, what))


async def _check_peer(context: grpc.aio.ServicerContext, method: str) -> str:
    """The partition the caller's certificate names, if its request claims to come from it."""
    names = sorted(n.decode() if isinstance(n, bytes) else n for n in context.peer_identities() or ())
    if not names:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, f"{method}: the caller presented no certificate")
    claimed = _metadata(context, SRC_KEY)
    if len(names) != 1 or claimed != names[0]:
        claim = f"claims to be partition {claimed}" if claimed is not None else f"names no partition ({SRC_KEY})"
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{method}: the caller {claim}, but its certificate is for {', '.join(names)}",
                            trailing_metadata=((ERROR_KEY, "PermissionDenied"),))
    return names[0]


def _host_refusal(method: str, request: Any, caller: str) -> str | None:
    """Why a request that acts for a partition (a ``host`` field) may not: it acts for its
    caller only. None if it may."""
    host = getattr(request, "host", None)
    if host is not None and host != caller:
        return f"{method}: partition {caller} cannot act for partition {host!r}"
    return None


async def _check_host(context: grpc.aio.ServicerContext, method: str, request: Any, caller: str) -> None:
    """A request that acts for a partition acts for its caller only (``_host_refusal``)."""
    refusal = _host_refusal(method, request, caller)
    if refusal is not None:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED, refusal,
                            trailing_metadata=((ERROR_KEY, "PermissionDenied"),))


class CheckedHealth(health.aio.HealthServicer):
    """The standard health service, each request's caller checked first (``check_caller``)."""

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check_caller(context, "Check", request)
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await check_caller(context, "Watch", request)
        await super().Watch(request, context)


Answer = tuple[int, str, str, bytes]  # a request's answer: status code, details, model error class name, reply


class _Resumed:
    """Awaiting this finishes ``coro``, a coroutine already stepped once by hand (its step
    yielded ``step``), in context ``ctx``, as part of the awaiting task: what the task awaits
    is what the coroutine awaits (``yield from``, picked up after the first step), and a
    cancellation of the task is thrown into the coroutine where it waits."""

    __slots__ = ("coro", "ctx", "step")

    def __init__(self, coro: Any, ctx: contextvars.Context, step: Any):
        self.coro, self.ctx, self.step = coro, ctx, step

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, run, value = self.coro, self.ctx.run, self.step
        while True:
            try:
                sent = yield value
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as e:  # noqa: BLE001 - thrown into the task: the coroutine's to handle
                try:
                    value = run(coro.throw, e)
                except StopIteration as done:
                    return done.value
            else:
                try:
                    value = run(coro.send, sent)
                except StopIteration as done:
                    return done.value


class _Exchange:
    """The state of one open stream on the server: the requests being handled (by id), the
    answers waiting to be written, and the slots bounding both (``STREAM_IN_FLIGHT``).

    A slot is taken when a request is read and given back when its answer has been written
    (or it was cancelled), so a caller that sends without reading holds at most
    ``STREAM_IN_FLIGHT`` requests and answers here: then the server stops reading its stream,
    and HTTP/2 flow control stops the caller.

    Answers are written without a writer task: an answer is added to the message being
    gathered, which is written (``flush``) when the requests of the message read have all been
    started (their answers go together), at once for a request that finished after waiting,
    or, if a write is in progress, when it ends (``_step``)."""

    def __init__(self, context: grpc.aio.ServicerContext, requests: Any, src: str | None,
                 caller: str | None) -> None:
        self.loop = asyncio.get_running_loop()
        self.context = context
        self.requests = requests  # the stream's messages, as bytes
        self.src, self.caller = src, caller  # the calling partition, as it claims and as its certificate says
        # invariant: the requests whose handling waits for something (the others are answered
        # as they are read), by id, each with the task finishing it, its deadline's timer and
        # the request; an id leaves when its request is answered or dropped (``done``)
        self.handling: dict[int, tuple[asyncio.Task[None], asyncio.TimerHandle, Any]] = {}
        self.expired: set[int] = set()  # ids in handling stopped by their deadline, to answer DEADLINE_EXCEEDED
        self.answers = pb.ExchangeResponse()  # the next message: answers not yet written
        self.writing = 0  # answers in the write in progress, if any
        self.held = 0  # invariant: slots taken, 0 <= held <= STREAM_IN_FLIGHT
        self.room: asyncio.Future[None] | None = None  # what the reader awaits while every slot is taken
        self.closing = False  # no more answers come: the writes end when the last is written
        self.reader: asyncio.Task[None] | None = None  # the task reading the stream now
        # the writes' end: None once closing and every answer is written, or the error a write
        # failed with (then nothing more is written)
        self.write_end: asyncio.Future[None] = self.loop.create_future()
        # the reading's end: None (the caller is done sending, or a write failed), the
        # details of a refusal (INVALID_ARGUMENT), or the error reading raised
        self.read_end: asyncio.Future[str | None] = self.loop.create_future()

    async def take(self) -> None:
        """Take a slot, waiting for one if every slot is taken (only the task reading the
        stream takes slots, one at a time)."""
        while self.held >= STREAM_IN_FLIGHT:
            self.room = self.loop.create_future()
            await self.room
        self.held += 1

    def give(self, n: int = 1) -> None:
        self.held -= n
        room, self.room = self.room, None
        if room is not None and not room.done():
            room.set_result(None)

    def flush(self) -> None:
        """Write the gathered answers now, unless a write is in progress (they go when it
        ends) or one failed; once closing with nothing left to write, the writes end."""
        if self.writing or self.write_end.done():
            return
        if not self.answers.replies:
            if self.closing:
                self.write_end.set_result(None)
            return
        message, self.answers = self.answers, pb.ExchangeResponse()
        self.writing = len(message.replies)
        self._step(self.context.write(message))

    def _step(self, write: Any, _: Any = None) -> None:
        """Drive the write in progress (``write``, gRPC's coroutine) to its next wait, as
        ``client._Stream._step`` drives a request's: no task runs it, so no cancellation of
        the task that answered reaches it. When it ends, its slots are given back and what
        gathered meanwhile is written; if it fails, the writes end with its error and so does
        the reading (the caller is gone, or stopped reading)."""
        try:
            waiting = write.send(None)
        except StopIteration:
            self.give(self.writing)
            self.writing = 0
            self.flush()
            return
        except BaseException as e:  # noqa: BLE001 - the stream's handler raises it
            self.writing = 0
            if not self.write_end.done():
                self.write_end.set_exception(e)
            self.end_reading(None)
            return
        if waiting is None:  # a bare yield: step again soon
            self.loop.call_soon(self._step, write)
        else:
            waiting._asyncio_future_blocking = False
            waiting.add_done_callback(functools.partial(self._step, write))

    def done(self, rid: int, answer: Answer | None, *, flush: bool = True) -> None:
        """Request ``rid`` ended: queue its ``answer`` (written now if ``flush``, else by the
        reader's next ``flush``), or, for None (the caller gave it up), give its slot back."""
        entry = self.handling.pop(rid, None)
        if entry is not None:
            self.expired.discard(rid)
            entry[1].cancel()
        if answer is None:
            self.give()
            return
        code, details, error, reply = answer
        if code == 0 and not details and not error:  # an answer: the other fields stay at their defaults
            self.answers.replies.add(id=rid, reply=reply)
        else:
            self.answers.replies.add(id=rid, code=code, details=details, error=error, reply=reply)
        if flush:
            self.flush()

    def stop(self, rid: int, *, expired: bool) -> None:
        """Stop handling request ``rid`` (its task is cancelled): its caller gave it up (no
        answer), or its deadline passed (``expired``: answered DEADLINE_EXCEEDED). A request
        answered already, or never sent, is not stopped."""
        entry = self.handling.get(rid)
        if entry is None:
            return
        if expired:
            self.expired.add(rid)
        else:
            self.expired.discard(rid)
        entry[0].cancel()

    def expire(self, rid: int) -> None:
        """Request ``rid``'s deadline passed (its timer)."""
        self.stop(rid, expired=True)

    def ended(self, call: Any) -> Answer | None:
        """The answer of a request stopped by ``stop``: DEADLINE_EXCEEDED if its deadline
        passed, else none."""
        if call.id not in self.expired:
            return None
        return (grpc.StatusCode.DEADLINE_EXCEEDED.value[0],
                f"{call.method.rpartition('/')[2]}: deadline of {call.timeout_us:.0f} us exceeded", "", b"")

    def end_reading(self, how: str | None) -> None:
        if not self.read_end.done():
            self.read_end.set_result(how)


class StreamServicer:
    """``mmusim.v2.StreamService``: the requests of both services on long-lived streams
    (``interconnect.transport: stream``, the proto says how). Each request is handled as its
    unary RPC is (``_call_model``), started in the order the requests arrive, with the same
    injected latency (``InjectedLatency.delay_s``, none for a probe), the same ``host`` check
    under mutual TLS, and its own deadline; a cancelled request is stopped and not answered.
    The caller's certificate is checked once, when the stream opens (``_check_peer``), as the
    unary path checks it on each call; so is ``mmusim-dst``.

    A request is started by the task reading the stream, at once (Python 3.12's eager tasks,
    by hand): most requests never wait (a callout whose secondary does its part at once), and
    are answered without a task of their own, which is most of what a request costs here. A
    request that does wait is finished by the task that started it, as one task from start
    to end (``asyncio.current_task()``, which locks and SRCU readers are tracked by, stays the
    same), and a new task reads on: requests that wait are handled concurrently, as before.

    Answers ready together are written in one message, as the client writes requests: while
    one message is being written, the next gathers."""

    def __init__(self, partition: str, routes: dict[str, Route], *, checked: bool,
                 latency: "InjectedLatency | None"):
        self.partition = partition
        self.routes = routes  # by full method name
        self.checked = checked
        self.latency = latency
        self.open: set[_Exchange] = set()  # the streams open now

    def in_flight(self) -> int:
        """Requests being handled or waiting to be answered, over every open stream."""
        return sum(x.held for x in self.open)

    def handler(self) -> grpc.GenericRpcHandler:
        """The handler to add to a server. Requests arrive as bytes, parsed here, so that a
        message that cannot be parsed ends the stream INVALID_ARGUMENT rather than INTERNAL."""
        return grpc.method_handlers_generic_handler(STREAM_SERVICE_NAME, {
            "Exchange": grpc.stream_stream_rpc_method_handler(
                self.exchange, request_deserializer=None, response_serializer=pb.ExchangeResponse.SerializeToString)})

    async def exchange(self, requests: Any, context: grpc.aio.ServicerContext) -> None:
        caller = await _check_peer(context, "Exchange") if self.checked else None
        dst = _metadata(context, DST_KEY)
        if dst is not None and dst != self.partition:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this is partition {self.partition}, not {dst}",
                                trailing_metadata=((ERROR_KEY, "NotFound"),))
        src = _metadata(context, SRC_KEY)
        # the stream is accepted: a caller waits for this before it writes, so a refusal above
        # reaches it as the stream's status, not as a failed write
        await context.send_initial_metadata(())
        state = _Exchange(context, requests.__aiter__(), src, caller)
        self.open.add(state)
        state.reader = state.loop.create_task(self._read(state, iter(())))
        try:
            refusal = await state.read_end
            if refusal is not None:
                await self._refuse(context, refusal)
            if state.handling and not state.write_end.done():  # the caller is done sending: answer what is in flight
                await asyncio.wait([task for task, _, _ in state.handling.values()])
            state.closing = True
            state.flush()
            await state.write_end
        finally:
            tasks = [task for task, _, _ in state.handling.values()]
            if state.reader is not None:
                tasks.append(state.reader)
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if not state.write_end.done():  # a write in progress ends with the stream: nothing awaits it
                state.write_end.cancel()
            elif not state.write_end.cancelled():
                state.write_end.exception()  # raised above, or the stream ended otherwise
            self.open.discard(state)

    async def _read(self, state: _Exchange, calls: Iterator[Any]) -> None:
        """Start the requests of ``calls``, then of each message read from the stream, in
        order, until the stream ends (``_Exchange.read_end``). A request whose handling waits
        is finished here, and reading goes on in a new task (the class doc)."""
        loop = state.loop
        try:
            while True:
                for call in calls:
                    if call.cancel:
                        state.stop(call.id, expired=False)
                        continue
                    if call.id <= 0 or call.id in state.handling:
                        what = "is not > 0" if call.id <= 0 else "is already in flight"
                        state.flush()  # what was answered before it
                        state.end_reading(f"Exchange: request id {call.id} {what}")
                        return
                    if state.held >= STREAM_IN_FLIGHT:
                        state.flush()  # the answers gathered give their slots back once written
                        await state.take()
                    else:
                        state.held += 1
                    read_at = loop.time()
                    coro = self._answer(call, state.src, state.caller)
                    ctx = contextvars.copy_context()
                    try:
                        step = ctx.run(coro.send, None)
                    except StopIteration as answered:
                        state.done(call.id, answered.value, flush=False)
                        continue
                    except Exception as e:  # noqa: BLE001 - answered INTERNAL, as on a unary call
                        state.done(call.id, self._bug(call, e), flush=False)
                        continue
                    # the request waits: a new task reads on, and this one finishes the request
                    state.flush()
                    state.reader = loop.create_task(self._read(state, calls))
                    await self._finish(state, call, _Resumed(coro, ctx, step), read_at)
                    return
                state.flush()  # the answers of the message's requests, together
                if state.write_end.done():  # a write failed: the caller is gone, or stopped reading
                    state.end_reading(None)
                    return
                try:
                    raw = await state.requests.__anext__()
                except StopAsyncIteration:
                    state.end_reading(None)
                    return
                try:
                    message = pb.ExchangeRequest.FromString(raw)
                except DecodeError as e:
                    state.end_reading(f"Exchange: a message of {len(raw)} bytes is not an ExchangeRequest: {e}")
                    return
                calls = iter(message.calls)
        except asyncio.CancelledError:
            raise
        except BaseException as e:  # noqa: BLE001 - reading failed: the stream's handler raises it
            if not state.read_end.done():
                state.read_end.set_exception(e)

    async def _finish(self, state: _Exchange, call: Any, rest: _Resumed, read_at: float) -> None:
        """Finish a request whose handling waits, within its deadline, and answer it."""
        task = asyncio.current_task()
        assert task is not None
        # a request that waits had a valid timeout (a refused one is answered at once)
        timer = state.loop.call_at(read_at + call.timeout_us / 1e6, state.expire, call.id)
        state.handling[call.id] = (task, timer, call)
        try:
            answer = await rest
        except asyncio.CancelledError:  # stopped (_Exchange.stop): answered only if its deadline passed
            state.done(call.id, state.ended(call))
            raise
        except Exception as e:  # noqa: BLE001 - a bug in mmusim: answered INTERNAL, as on a unary call
            answer = self._bug(call, e)
        state.done(call.id, answer)

    def _bug(self, call: Any, e: Exception) -> Answer:
        log.exception("partition %s: request %d on a stream failed with a bug in mmusim", self.partition, call.id,
                      exc_info=e)
        return (grpc.StatusCode.INTERNAL.value[0], f"mmusim bug in {call.method!r}: {type(e).__name__}: {e}", "", b"")

    @staticmethod
    async def _refuse(context: grpc.aio.ServicerContext, details: str) -> None:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, details,
                            trailing_metadata=((ERROR_KEY, "InvalidArgument"),))

    async def _answer(self, call: Any, src: str | None, caller: str | None) -> Answer:
        """The answer to ``call``: (status code, details, model error class name or "",
        the reply serialized)."""
        def refused(code: grpc.StatusCode, details: str, error: str | None) -> Answer:
            return code.value[0], details, error or "", b""

        route = self.routes.get(call.method)
        if route is None:
            return refused(grpc.StatusCode.UNIMPLEMENTED, f"no method {call.method!r} on a stream", None)
        method, target = route
        if not (call.timeout_us > 0 and math.isfinite(call.timeout_us)):
            return refused(grpc.StatusCode.INVALID_ARGUMENT, f"{method.rpc}: timeout_us must be a positive number of "
                                                             f"microseconds, got {call.timeout_us!r}", "InvalidArgument")
        try:
            request = method.request.FromString(call.request)
        except DecodeError as e:
            return refused(grpc.StatusCode.INVALID_ARGUMENT, f"{method.rpc}: {len(call.request)} bytes are not a "
                                                             f"{method.request.DESCRIPTOR.name}: {e}", "InvalidArgument")
        delay_s = self.latency.delay_s(src, call.method, call.probe) if self.latency is not None else 0.0
        if delay_s > 0:
            await asyncio.sleep(delay_s)
        if caller is not None:
            refusal = _host_refusal(method.rpc, request, caller)
            if refusal is not None:
                return refused(grpc.StatusCode.PERMISSION_DENIED, refusal, "PermissionDenied")
        reply, code, details, error = await _call_model(self.partition, method, target, request)
        if code != grpc.StatusCode.OK:
            return refused(code, details, error)
        return 0, "", "", reply.SerializeToString()


def check_bind_host(host: str, *, secure: bool) -> None:
    """Refuse to listen on a wildcard address (every interface: 0.0.0.0, ::, an empty host),
    and, without TLS, on anything but a loopback address; ``ValueError`` names the host."""
    bare = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    try:
        ip = ipaddress.ip_address(bare)
    except ValueError:
        ip = None
    if bare in ("", "*") or (ip is not None and ip.is_unspecified):
        raise ValueError(f"a partition server listens on its node's own address, not on every interface: {host!r}")
    if not secure and bare != "localhost" and (ip is None or not ip.is_loopback):
        raise ValueError(f"a partition server without TLS listens on a loopback address only, not {host!r}; "
                         f"give it an identity (mutual TLS)")


class PartitionServer:
    """A grpc.aio server for one partition's ``OwnerService`` and ``SecondaryService``:
    mutual TLS as ``identity`` (the partition's, ``nodes/rpc/identity.py``), or plaintext on
    loopback if it is None."""

    def __init__(self, owner: OwnerService, secondary: SecondaryService, *, identity: PartitionIdentity | None,
                 latency_us: Callable[[str, str], float] | None = None, callout_latency_us: float = 0.0):
        if owner.name != secondary.name:
            raise ValueError(f"owner service of {owner.name} and secondary service of {secondary.name} differ")
        if not callout_latency_us >= 0:
            raise ValueError(f"callout_latency_us must be >= 0, got {callout_latency_us!r}")
        if identity is not None and identity.name != owner.name:
            raise ValueError(f"partition {owner.name} cannot serve with the identity of partition {identity.name}")
        self.name = owner.name
        self.identity = identity
        inject = latency_us is not None or callout_latency_us > 0
        latency = InjectedLatency(self.name, latency_us, callout_latency_us) if inject else None
        # at most this many streams (calls in flight) per connection: what a caller opening
        # streams it never reads can hold here
        options = [("grpc.max_concurrent_streams", MAX_CONCURRENT_STREAMS)]
        self.server = grpc.aio.server(interceptors=[latency] if latency is not None else [], options=options)
        checked = identity is not None  # checked in the servicers: an interceptor costs every call
        pb_grpc.add_OwnerServiceServicer_to_server(owner_servicer(owner, checked=checked), self.server)
        pb_grpc.add_SecondaryServiceServicer_to_server(secondary_servicer(secondary, checked=checked), self.server)
        routes = {f"/{OWNER_SERVICE_NAME}/{rpc}": r for rpc, r in owner_routes(owner).items()}
        routes.update({f"/{SECONDARY_SERVICE_NAME}/{rpc}": r for rpc, r in secondary_routes(secondary).items()})
        self.stream_servicer = StreamServicer(self.name, routes, checked=checked, latency=latency)
        self.server.add_generic_rpc_handlers((self.stream_servicer.handler(),))
        self.health = CheckedHealth() if checked else health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.address: str | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Listen on ``host:port`` (port 0: an ephemeral one) and return the address. The host
        is the node's own address (``check_bind_host``)."""
        check_bind_host(host, secure=self.identity is not None)
        target = f"{host}:{port}"
        if self.identity is None:
            bound = self.server.add_insecure_port(target)
        else:
            bound = self.server.add_secure_port(target, self.identity.server_credentials())
        if bound == 0:
            raise OSError(f"partition {self.name}: cannot listen on {host}:{port}")
        await self.server.start()
        for service in ("", OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME, STREAM_SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace_s: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
