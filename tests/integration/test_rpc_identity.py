"""Identity between partitions over real sockets: mutual TLS with certificates of one CA
(``nodes/rpc/identity.py``). The model works over it; a caller without a certificate of the
run's CA is refused at the handshake; a certificate for p1 used to call as p2, or to act for a
secondary of p2, is refused with PERMISSION_DENIED; a client accepts only a server whose certificate names the partition it
dials; no server listens on a wildcard address, nor without TLS off loopback.

What a refused handshake looks like to the client, as measured here (grpcio 1.85): the call
fails with UNAVAILABLE, "failed to connect to all addresses; ... Socket closed" (the server
closes the connection; gRPC in Python cannot answer it with UNAUTHENTICATED), which
``GrpcInterconnect`` raises as ``Unreachable``."""

from __future__ import annotations

import asyncio

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.live import LivePartition
from nodes import vmops
from nodes.errors import PermissionDenied, Unreachable
from nodes.mm import PAGE_SIZE
from nodes.rpc.client import GrpcInterconnect
from nodes.rpc.identity import ClusterCA, PartitionIdentity
from nodes.rpc.server import DST_KEY, SRC_KEY

BASE = 0x10000000
CHECK_TIMEOUT_S = 5.0  # a bound on a call that must fail or answer, not a measurement


async def _mapped(p: LivePartition, npages: int = 4):
    mm = p.partition.create_mm()
    await vmops.mmap(p.partition, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(p.partition, mm, BASE, npages * PAGE_SIZE)
    return mm


async def _health(channel: grpc.aio.Channel, metadata: tuple[tuple[str, str], ...] = ()) -> int:
    """A health check over ``channel``; its status (or the AioRpcError it raised)."""
    try:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=CHECK_TIMEOUT_S, metadata=metadata)
        return reply.status
    finally:
        await channel.close()


def _tls_channel(address: str, dst: str, *, ca_pem: bytes, key_pem: bytes | None = None,
                 cert_pem: bytes | None = None) -> grpc.aio.Channel:
    creds = grpc.ssl_channel_credentials(root_certificates=ca_pem, private_key=key_pem, certificate_chain=cert_pem)
    return grpc.aio.secure_channel(address, creds, options=PartitionIdentity.target_name(dst))


def test_the_model_works_over_mutual_tls(live):
    async def body(p0, p1):
        assert p0.identity.name == "p0" and p1.identity.name == "p1"
        mm = await _mapped(p0)
        gru = await p1.gru("p0", mm.id)  # registration p1 -> p0, faults, reports
        stamps = [await gru.access(BASE + i * PAGE_SIZE) for i in range(4)]
        assert [s[1] for s in stamps] == [(BASE >> 12) + i for i in range(4)]
        await vmops.munmap(p0.partition, mm, BASE, 2 * PAGE_SIZE)  # callouts p0 -> p1
        assert len(gru.tlb) == 2
        assert await p0.interconnect.null_rpc("p0", "p1") > 0
        await p1.flush_reports()
        assert p0.owner_service.faults == []  # nobody was fenced: every call was answered
        await gru.unregister()
        assert p0.partition.check_invariants(final=True) == []

    live(body, "p0", "p1", tls=True)


def test_a_client_without_a_certificate_of_the_run_is_refused_at_the_handshake(live):
    async def body(p0, p1):
        ca_pem = p1.interconnect.identity.ca_pem
        mine = p1.interconnect.identity
        claim = ((SRC_KEY, "p1"), (DST_KEY, "p0"))
        # the control: p1's own certificate is let in
        assert await _health(_tls_channel(p0.address, "p0", ca_pem=ca_pem, key_pem=mine.key_pem,
                                          cert_pem=mine.cert_pem), claim) == health_pb2.HealthCheckResponse.SERVING
        stranger = ClusterCA.generate().issue("p1")  # the right name, from another CA
        refused = {
            "plaintext": grpc.aio.insecure_channel(p0.address),
            "TLS without a client certificate": _tls_channel(p0.address, "p0", ca_pem=ca_pem),
            "a certificate of another CA": _tls_channel(p0.address, "p0", ca_pem=ca_pem, key_pem=stranger.key_pem,
                                                        cert_pem=stranger.cert_pem),
        }
        for what, channel in refused.items():
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await _health(channel, claim)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE, what
            assert "Socket closed" in (info.value.details() or ""), (what, info.value.details())
        # the interconnect of a partition whose certificate is of another CA: Unreachable
        outsider = GrpcInterconnect({"p0": p0.address}, identity=stranger, deadline_us=CHECK_TIMEOUT_S * 1e6)
        try:
            mm = await _mapped(p0)
            with pytest.raises(Unreachable, match="UNAVAILABLE"):
                await outsider.call("p1", "p0", "owner", "register", "p1", "n1", "gru", [], mm.id)
        finally:
            await outsider.close()
        assert p0.owner_service.notifiers == {}  # no request got through

    live(body, "p0", "p1", tls=True)


def test_a_certificate_for_p1_used_to_call_as_p2_is_permission_denied(live):
    async def body(p0, p1, p2):
        mm = await _mapped(p0)
        # the control: p1 calling as itself registers
        await p1.interconnect.call("p1", "p0", "owner", "register", "p1", "n1", "gru", [], mm.id)
        assert ("p1", "n1") in p0.owner_service.notifiers
        # p1's certificate, claiming p2, on the owner service, a callout, and the health service
        with pytest.raises(PermissionDenied, match="claims to be partition p2, but its certificate is for p1"):
            await p1.interconnect.call("p2", "p0", "owner", "register", "p2", "n2", "gru", [], mm.id)
        assert ("p2", "n2") not in p0.owner_service.notifiers
        with pytest.raises(PermissionDenied, match="certificate is for p1"):
            await p1.interconnect.null_callout("p2", "p0")
        with pytest.raises(PermissionDenied, match="certificate is for p1"):
            await p1.interconnect.null_rpc("p2", "p0")
        # and a request that claims no partition at all
        mine = p1.interconnect.identity
        channel = _tls_channel(p0.address, "p0", ca_pem=mine.ca_pem, key_pem=mine.key_pem, cert_pem=mine.cert_pem)
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await _health(channel, ((DST_KEY, "p0"),))
        assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert f"names no partition ({SRC_KEY})" in info.value.details()
        # the health service's stream too
        channel = _tls_channel(p0.address, "p0", ca_pem=mine.ca_pem, key_pem=mine.key_pem, cert_pem=mine.cert_pem)
        try:
            watch = health_pb2_grpc.HealthStub(channel).Watch(health_pb2.HealthCheckRequest(service=""),
                                                             timeout=CHECK_TIMEOUT_S, metadata=((SRC_KEY, "p2"),))
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await watch.read()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
            assert "Watch: the caller claims to be partition p2, but its certificate is for p1" in info.value.details()
        finally:
            await channel.close()
        # p1 claiming to be itself, but acting for a secondary of p2 (the request's host)
        with pytest.raises(PermissionDenied, match="partition p1 cannot act for partition 'p2'"):
            await p1.interconnect.call("p1", "p0", "owner", "register", "p2", "n2", "gru", [], mm.id)
        with pytest.raises(PermissionDenied, match="partition p1 cannot act for partition 'p2'"):
            await p1.interconnect.call("p1", "p0", "owner", "get_user_pages", "p2", mm.id, BASE, 1, False, True)
        assert ("p2", "n2") not in p0.owner_service.notifiers and int(p0.partition.frames.pincount.sum()) == 0
        # p2 itself is let in
        await p2.interconnect.call("p2", "p0", "owner", "register", "p2", "n2", "gru", [], mm.id)
        assert ("p2", "n2") in p0.owner_service.notifiers

    live(body, "p0", "p1", "p2", tls=True)


def test_a_client_accepts_only_the_partition_it_dials(live):
    async def body(p0, p1, p2):
        p1.directory["p2"] = p0.address  # a directory that sends p2's calls to p0
        with pytest.raises(Unreachable, match="Hostname Verification Check failed"):
            await p1.interconnect.null_rpc("p1", "p2")
        assert await p1.interconnect.null_rpc("p1", "p0") > 0  # p0 under its own name answers

    live(body, "p0", "p1", "p2", tls=True)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "[::]", ""])
def test_no_server_listens_on_every_interface(host):
    async def body():
        p = LivePartition("p9", identity=ClusterCA.generate().issue("p9"), nframes=64, cpus=2)
        try:
            with pytest.raises(ValueError, match="its node's own address, not on every interface"):
                await p.start(host, 0)
        finally:
            await p.stop()

    asyncio.run(body())


def test_a_server_without_tls_listens_on_loopback_only():
    async def body():
        p = LivePartition("p9", identity=None, nframes=64, cpus=2)
        try:
            with pytest.raises(ValueError, match="without TLS listens on a loopback address only, not '192.0.2.1'"):
                await p.start("192.0.2.1", 0)  # refused before anything binds
            assert (await p.start("127.0.0.1", 0)).startswith("127.0.0.1:")
        finally:
            await p.stop()

    asyncio.run(body())


def test_a_partition_serves_only_under_its_own_identity():
    with pytest.raises(ValueError, match="partition p0 cannot serve with the identity of partition p1"):
        LivePartition("p0", identity=ClusterCA.generate().issue("p1"), nframes=64, cpus=2)
