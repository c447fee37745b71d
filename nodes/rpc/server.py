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
import ipaddress
import logging
from typing import Any, Callable

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from nodes.remote import OwnerService, SecondaryService
from nodes.rpc import codec
from nodes.rpc.identity import PartitionIdentity
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.status import ERROR_KEY, code_of
from nodes.runtime import call_maybe_async

log = logging.getLogger(__name__)

SRC_KEY = "mmusim-src"  # request metadata: the calling partition
DST_KEY = "mmusim-dst"  # request metadata: the partition the request is for
PROBE_KEY = "mmusim-probe"  # request metadata: the instrument's probe, which no latency is injected into
OWNER_SERVICE_NAME = "mmusim.v2.OwnerService"  # full names, as the health service reports them
SECONDARY_SERVICE_NAME = "mmusim.v2.SecondaryService"


def _metadata(context: grpc.aio.ServicerContext, key: str) -> str | None:
    for k, v in context.invocation_metadata() or ():
        if k == key:
            return v if isinstance(v, str) else v.decode()
    return None


def _handler(partition: str, method: codec.Method, target: Callable[..., Any], checked: bool) -> Callable[..., Any]:
    async def handle(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        if checked:
            await check_caller(context, method.rpc, request)
        dst = _metadata(context, DST_KEY)
        if dst is not None and dst != partition:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"this is partition {partition}, not {dst}",
                                trailing_metadata=((ERROR_KEY, "NotFound"),))
        try:
            result = await call_maybe_async(target, *method.decode(request))
            return method.encode_result(result)
        except Exception as e:  # noqa: BLE001 - every error is answered, none is dropped
            code = code_of(e)
            if code is None:
                log.exception("partition %s: %s failed with a bug in mmusim", partition, method.rpc)
                await context.abort(grpc.StatusCode.INTERNAL, f"mmusim bug in {method.rpc}: {type(e).__name__}: {e}")
            await context.abort(code, str(e), trailing_metadata=((ERROR_KEY, type(e).__name__),))

    handle.__name__ = method.rpc
    return handle


def owner_servicer(owner: OwnerService, *, checked: bool) -> pb_grpc.OwnerServiceServicer:
    """The ``mmusim.v2.OwnerService`` servicer of ``owner``'s partition (``checked``: each
    request's caller checked against its certificate, ``check_caller``)."""
    body = {m.rpc: _handler(owner.name, m, getattr(owner, m.call), checked) for m in codec.OWNER.values()}
    return type("OwnerServiceServicer", (pb_grpc.OwnerServiceServicer,), body)()


def secondary_servicer(secondary: SecondaryService, *, checked: bool) -> pb_grpc.SecondaryServiceServicer:
    """The ``mmusim.v2.SecondaryService`` servicer of a partition hosting secondaries
    (``checked``: as ``owner_servicer``)."""
    body = {m.rpc: _handler(secondary.name, m, secondary.callout, checked) for m in codec.SECONDARY.values()}
    body.update({m.rpc: _handler(secondary.name, m, getattr(secondary, m.call), checked)
                 for m in codec.SECONDARY_METHODS.values()})
    return type("SecondaryServiceServicer", (pb_grpc.SecondaryServiceServicer,), body)()


class InjectedLatency(grpc.aio.ServerInterceptor):
    """Delays each request by ``latency_us(src, dst)`` microseconds (when the caller names
    itself) plus ``callout_us`` for a callout (a ``SecondaryService`` request) before it is handled."""

    def __init__(self, partition: str, latency_us: Callable[[str, str], float] | None, callout_us: float = 0.0):
        self.partition = partition
        self.latency_us = latency_us
        self.callout_us = callout_us

    async def intercept_service(self, continuation: Any, details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        metadata = dict(details.invocation_metadata or ())
        if PROBE_KEY in metadata:
            return handler
        src = metadata.get(SRC_KEY)
        delay_us = self.latency_us(src, self.partition) if self.latency_us is not None and src is not None else 0.0
        if details.method.startswith(f"/{SECONDARY_SERVICE_NAME}/"):
            delay_us += self.callout_us
        if delay_us <= 0:
            return handler
        delay_s = delay_us / 1e6
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


async def _check_host(context: grpc.aio.ServicerContext, method: str, request: Any, caller: str) -> None:
    """A request that acts for a partition (a ``host`` field) acts for its caller only."""
    host = getattr(request, "host", None)
    if host is not None and host != caller:
        await context.abort(grpc.StatusCode.PERMISSION_DENIED,
                            f"{method}: partition {caller} cannot act for partition {host!r}",
                            trailing_metadata=((ERROR_KEY, "PermissionDenied"),))


class CheckedHealth(health.aio.HealthServicer):
    """The standard health service, each request's caller checked first (``check_caller``)."""

    async def Check(self, request: Any, context: grpc.aio.ServicerContext) -> Any:
        await check_caller(context, "Check", request)
        return await super().Check(request, context)

    async def Watch(self, request: Any, context: grpc.aio.ServicerContext) -> None:
        await check_caller(context, "Watch", request)
        await super().Watch(request, context)


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
        interceptors = [InjectedLatency(self.name, latency_us, callout_latency_us)] if inject else []
        self.server = grpc.aio.server(interceptors=interceptors)
        checked = identity is not None  # checked in the servicers: an interceptor costs every call
        pb_grpc.add_OwnerServiceServicer_to_server(owner_servicer(owner, checked=checked), self.server)
        pb_grpc.add_SecondaryServiceServicer_to_server(secondary_servicer(secondary, checked=checked), self.server)
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
        for service in ("", OWNER_SERVICE_NAME, SECONDARY_SERVICE_NAME):
            await self.health.set(service, health_pb2.HealthCheckResponse.SERVING)
        self.address = f"{host}:{bound}"
        return self.address

    async def stop(self, grace_s: float | None = None) -> None:
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
