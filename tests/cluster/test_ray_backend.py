"""The ray backend on a three-node Ray cluster on this machine (``ray_cluster``, conftest.py):
partitions placed one per node, a GRU and an XPMEM attachment on p1 mapping an mm of p0 over
gRPC, a partition killed in the middle of an invalidation, clean-up after a failing workload,
and bring-up errors.

Functions run on partitions (``RayCluster.on``) are module-level coroutines; this module is not
importable in Ray's worker processes (pytest put its directory on the driver's path only), so
it is registered to be pickled by value."""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import subprocess
import sys
import textwrap
import time
from dataclasses import asdict
from typing import Any, Awaitable, Callable

import grpc
import pytest
import ray
import ray.cloudpickle
from grpc_health.v1 import health_pb2, health_pb2_grpc

from cluster.ray_backend import DEFAULT_PROBE_COUNT, HopLatency, RayCluster, RayConfig, probe_address, run_ray
from nodes import vmops
from nodes.errors import NotFound
from nodes.mm import PAGE_SIZE
from nodes.rpc.identity import ClusterCA

pytestmark = pytest.mark.ray
ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])

BASE = 0x10000000
POLL_LIMIT_S = 60.0  # a bound on waiting for a condition, not a measurement


def config(ray_cluster, **kw: Any) -> RayConfig:
    kw.setdefault("bind_host", "127.0.0.1")
    return RayConfig(address=ray_cluster.address, nframes=4096, cpus=2, **kw)


async def wait_until(probe: Callable[[], Awaitable[Any]], ok: Callable[[Any], bool], what: str) -> Any:
    """Poll ``probe()`` until ``ok`` holds for its answer; fail after ``POLL_LIMIT_S``."""
    limit = time.monotonic() + POLL_LIMIT_S
    while True:
        seen = await probe()
        if ok(seen):
            return seen
        if time.monotonic() > limit:
            raise AssertionError(f"gave up waiting for {what}; last seen {seen!r}")
        await asyncio.sleep(0.005)  # poll interval: the condition, not the sleep, synchronises


# -- functions run on a partition (pickled to its actor) ---------------------------------------


async def whoami(ctx) -> tuple[str, str, str]:
    return ctx.name, ctx.partition.name, ctx.address


async def mapped_mm(ctx, npages: int) -> int:
    """A new mm on this partition with ``npages`` populated pages at BASE; returns its id."""
    mm = ctx.partition.create_mm()
    await vmops.mmap(ctx.partition, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(ctx.partition, mm, BASE, npages * PAGE_SIZE)
    return mm.id


async def gru_access(ctx, owner: str, mm_id: int, name: str, first: int, npages: int, gru_config: dict) -> dict:
    """A GRU here on mm ``mm_id`` of ``owner`` (kept in ctx.objects) touching ``npages`` pages
    from page ``first``; returns the page numbers its reads saw and its TLB size."""
    gru = await ctx.gru(owner, mm_id, name, **gru_config)
    stamps = [await gru.access(BASE + (first + i) * PAGE_SIZE) for i in range(npages)]
    await ctx.flush_reports()
    return {"vpns": [s[1] for s in stamps], "tlb": len(gru.tlb)}


async def gru_state(ctx, name: str) -> dict:
    g = ctx.objects[name]
    return {"tlb": len(g.tlb), "range_active": g.ms_range_active, "flushes": g.stats.flushes,
            "released": g.ms_released}


async def owner_translations(ctx) -> int:
    """How many secondary translations of this partition's frames its oracle knows of."""
    return int(ctx.partition.oracle.smap.sum())


async def munmap_pages(ctx, mm_id: int, first: int, npages: int) -> int:
    """munmap on this partition; returns the callouts it has sent so far."""
    await vmops.munmap(ctx.partition, ctx.partition.mm(mm_id), BASE + first * PAGE_SIZE, npages * PAGE_SIZE)
    return ctx.interconnect.messages["callout"]


async def stream_use(ctx) -> dict:
    """This partition's transport and what its stream transport wrote: streams opened,
    messages written, requests (and cancellations) in them."""
    return {"transport": ctx.interconnect.transport, **ctx.interconnect.written}


async def unregister_gru(ctx, name: str) -> dict:
    return asdict(await ctx.objects.pop(name).unregister())


async def exit_mm(ctx, mm_id: int) -> dict:
    return asdict(await vmops.exit_mmap(ctx.partition, ctx.partition.mm(mm_id)))


async def xpmem_attach_and_read(ctx, owner: str, mm_id: int, npages: int) -> dict:
    """XPMEM here for source mm ``mm_id`` of ``owner``: make a segment (XpmemMake, served by the
    owner), get a permit and attach (XpmemGet, XpmemAttach), then read ``npages`` pages (each a
    pinning remote fault); the driver and attachment are kept in ctx.objects."""
    from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

    source, attacher = XpmemCred(tgid=10, uid=1000, gid=1000), XpmemCred(tgid=20, uid=1000, gid=1000)
    drv = await ctx.xpmem(owner, mm_id, "xp", cred=source)
    segid = await drv.make(BASE, 16 * PAGE_SIZE, 0o600)
    att = await drv.attach(await drv.get(segid, XPMEM_RDWR, attacher), 0, 16 * PAGE_SIZE, attacher)
    ctx.objects["xp.att"] = att
    stamps = [await drv.access(att, att.vaddr + i * PAGE_SIZE) for i in range(npages)]
    await ctx.flush_reports()
    return {"vpns": [s[1] for s in stamps], "ptes": sorted(att.ptes)}


async def xpmem_state(ctx) -> dict:
    att = ctx.objects["xp.att"]
    return {"ptes": sorted(att.ptes), "destroyed": att.destroyed, "released": ctx.objects["xp"].released}


async def pins_and_segments(ctx, mm_id: int) -> dict:
    return {"pins": int(ctx.partition.frames.pincount.sum()), "segments": len(ctx.partition.xpmem.segments_of(mm_id))}


async def look_up_missing_mm(ctx) -> None:
    ctx.partition.mm(999)


async def identity_of(ctx) -> dict:
    """The identity this partition serves and calls with: its name and its CA's certificate."""
    i = ctx.identity
    return {"name": i.name, "ca_pem": i.ca_pem} if i is not None else {"name": None, "ca_pem": None}


async def call_as(ctx, claimed: str, dst: str) -> str:
    """A null callout to ``dst`` claiming to come from ``claimed``: "ok" or the error raised."""
    try:
        await ctx.interconnect.null_callout(claimed, dst)
    except Exception as e:  # noqa: BLE001 - the error is the answer
        return f"{type(e).__name__}: {e}"
    return "ok"


def listening_hosts(port: int) -> set[str]:
    """The local addresses of the sockets listening on TCP ``port`` on this machine (the
    kernel's table, /proc/net/tcp and tcp6: what is bound, not what a server says)."""
    hosts = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                local, state = line.split()[1], line.split()[3]
                ip_hex, port_hex = local.split(":")
                if state != "0A" or int(port_hex, 16) != port:  # 0A: TCP_LISTEN
                    continue
                raw = b"".join(bytes.fromhex(ip_hex[i:i + 8])[::-1] for i in range(0, len(ip_hex), 8))
                ip = ipaddress.ip_address(raw)
                hosts.add(str(getattr(ip, "ipv4_mapped", None) or ip))  # gRPC binds IPv4 as ::ffff:a.b.c.d
    return hosts


async def plaintext_health(address: str) -> str:
    """A plaintext health check of ``address`` from the driver: its status name or error code."""
    async with grpc.aio.insecure_channel(address) as ch:
        try:
            reply = await health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10.0)
        except grpc.aio.AioRpcError as e:
            return e.code().name
    return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)


# -- tests --------------------------------------------------------------------------------------


def test_partitions_land_on_distinct_nodes_and_serve_on_their_addresses(ray_cluster):
    async def workload(c: RayCluster):
        return {name: await c.on(name, whoami) for name in c.names}

    run = run_ray(config(ray_cluster, partitions=3, bind_host=None), workload)
    assert run.backend == "ray" and run.wall_time_us > 0 and run.bringup_us > 0
    assert sorted(run.placement) == ["p0", "p1", "p2"]
    assert len(set(run.placement.values())) == 3  # one partition per Ray node
    node_ip = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    for name, (ctx_name, part_name, address) in run.result.items():
        assert ctx_name == part_name == name  # `on` ran where the partition lives
        assert address == run.addresses[name]
        # bind_host=None: each server listens on the address of the node it was placed on
        assert address.rsplit(":", 1)[0] == node_ip[run.placement[name]]
    assert {node_ip[n] for n in run.placement.values()} == set(ray_cluster.node_ips)
    assert run.faults == [] and run.violations == [] and run.lost == []


def test_partitions_speak_mutual_tls_by_default_and_listen_on_their_node_only(ray_cluster):
    async def workload(c: RayCluster):
        return {
            "identities": {n: await c.on(n, identity_of) for n in c.names},
            "listening": {n: listening_hosts(int(a.rsplit(":", 1)[1])) for n, a in c.addresses.items()},
            "plaintext": {n: await plaintext_health(a) for n, a in c.addresses.items()},
            "as_itself": await c.on("p1", call_as, "p1", "p0"),
            "as_p2": await c.on("p1", call_as, "p2", "p0"),
        }

    run = run_ray(config(ray_cluster, partitions=3, bind_host=None), workload)
    r = run.result
    node_ip = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes()}
    for name in run.addresses:
        assert r["identities"][name]["name"] == name  # each actor was handed its own identity
        # bound to its node's own address, and to nothing else (no 0.0.0.0, no ::)
        assert r["listening"][name] == {node_ip[run.placement[name]]}
        assert r["plaintext"][name] == "UNAVAILABLE"  # a client without a certificate is refused
    assert len({i["ca_pem"] for i in r["identities"].values()}) == 1  # one CA for the run
    assert r["as_itself"] == "ok"
    assert r["as_p2"].startswith("PermissionDenied: ") and "claims to be partition p2, but its certificate is for p1" in r["as_p2"]
    assert run.faults == [] and run.violations == []
    # the keys went to the actors as arguments: none is in a file of Ray's session (logs, spills)
    for root, _, files in os.walk(ray_cluster.temp_dir):
        for f in files:
            path = os.path.join(root, f)
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    assert b"PRIVATE KEY" not in fh.read(), path


def test_tls_off_explicitly_on_loopback_and_a_users_ca(ray_cluster, tmp_path):
    async def workload(c: RayCluster):
        return {"identity": await c.on("p0", identity_of), "plaintext": await plaintext_health(c.addresses["p0"]),
                "call": await c.on("p1", call_as, "p1", "p0")}

    off = run_ray(config(ray_cluster, partitions=2, tls=False), workload).result
    assert off == {"identity": {"name": None, "ca_pem": None}, "plaintext": "SERVING", "call": "ok"}
    ca = ClusterCA.generate()
    cert, key = tmp_path / "ca.pem", tmp_path / "ca.key"
    cert.write_bytes(ca.cert_pem)
    key.write_bytes(ca.key_pem)
    key.chmod(0o600)
    mine = run_ray(config(ray_cluster, partitions=2, tls_ca_cert=str(cert), tls_ca_key=str(key)), workload).result
    assert mine == {"identity": {"name": "p0", "ca_pem": ca.cert_pem}, "plaintext": "UNAVAILABLE", "call": "ok"}
    key.chmod(0o644)  # a CA key others can read is refused before any actor is made
    with pytest.raises(ValueError, match=r"ca\.key' is accessible by others \(mode 0644\)"):
        run_ray(config(ray_cluster, partitions=2, tls_ca_cert=str(cert), tls_ca_key=str(key)), workload)


def test_gru_on_p1_maps_p0_over_grpc_munmap_invalidates_exit_and_unregister_are_timed(ray_cluster):
    async def workload(c: RayCluster):
        out: dict[str, Any] = {}
        mm_id = await c.on("p0", mapped_mm, 16)
        out["g1"] = await c.on("p1", gru_access, "p0", mm_id, "g1", 0, 4, {})
        out["owner_translations"] = await c.on("p0", owner_translations)
        out["callouts"] = await c.on("p0", munmap_pages, mm_id, 0, 2)  # invalidates pages 0-1 on p1
        out["g1_after_munmap"] = await c.on("p1", gru_state, "g1")
        out["unregister"] = await c.on("p1", unregister_gru, "g1")  # timed on p0, the owner
        out["g2"] = await c.on("p1", gru_access, "p0", mm_id, "g2", 2, 3, {})
        out["exit"] = await c.on("p0", exit_mm, mm_id)  # ->release crosses to p1
        out["g2_after_exit"] = await c.on("p1", gru_state, "g2")
        return out

    # injected latency (50 us a hop) runs in every request's path: exercised, not measured
    run = run_ray(config(ray_cluster, partitions=2, hop_latency_us=50.0), workload)
    r = run.result
    assert run.placement["p0"] != run.placement["p1"]
    assert r["g1"] == {"vpns": [(BASE >> 12) + i for i in range(4)], "tlb": 4}  # the pages' own stamps
    assert r["owner_translations"] == 4  # p0's oracle learned of p1's translations over gRPC
    assert r["callouts"] >= 2  # invalidate_range_start and _end went to p1
    assert r["g1_after_munmap"]["tlb"] == 2 and r["g1_after_munmap"]["range_active"] == 0
    assert r["unregister"]["total_us"] > 0 and r["unregister"]["srcu_wait_us"] >= 0
    assert r["g2"] == {"vpns": [(BASE >> 12) + i for i in range(2, 5)], "tlb": 3}
    assert r["exit"]["total_us"] > 0 and r["exit"]["total_us"] >= r["exit"]["release_us"] >= 0
    assert r["g2_after_exit"]["released"] and r["g2_after_exit"]["tlb"] == 0
    assert run.violations == [] and run.faults == [] and run.lost == [] and run.report_problems == []


def test_the_stream_transport_carries_a_run_of_callouts_and_remote_faults_between_actors(ray_cluster):
    """``interconnect.transport: stream`` on the ray backend (mutual TLS, as by default): a GRU
    on p1 faults p0's pages, p0's munmap invalidates them and its exit releases the GRU, all on
    long-lived streams (one per direction); the model's state and invariants are as on the unary
    transport (the test above)."""
    async def workload(c: RayCluster):
        out: dict[str, Any] = {}
        mm_id = await c.on("p0", mapped_mm, 8)
        out["g"] = await c.on("p1", gru_access, "p0", mm_id, "g", 0, 4, {})
        out["owner_translations"] = await c.on("p0", owner_translations)
        out["callouts"] = await c.on("p0", munmap_pages, mm_id, 0, 2)
        out["g_after_munmap"] = await c.on("p1", gru_state, "g")
        out["exit"] = await c.on("p0", exit_mm, mm_id)
        out["g_after_exit"] = await c.on("p1", gru_state, "g")
        out["p0"], out["p1"] = await c.on("p0", stream_use), await c.on("p1", stream_use)
        return out

    run = run_ray(config(ray_cluster, partitions=2, transport="stream"), workload)
    r = run.result
    assert r["g"] == {"vpns": [(BASE >> 12) + i for i in range(4)], "tlb": 4}
    assert r["owner_translations"] == 4
    assert r["callouts"] >= 2 and r["g_after_munmap"]["tlb"] == 2 and r["g_after_munmap"]["range_active"] == 0
    assert r["exit"]["total_us"] > 0 and r["g_after_exit"]["released"] and r["g_after_exit"]["tlb"] == 0
    for side in ("p0", "p1"):  # p0's callouts to p1, p1's faults and reports to p0: each on one stream
        use = r[side]
        assert use["transport"] == "stream" and use["streams"] == 1, use
        assert use["calls"] >= use["messages"] >= 1, use
    assert r["p0"]["calls"] >= r["callouts"]  # every callout travelled on p0's stream
    assert run.violations == [] and run.faults == [] and run.lost == [] and run.report_problems == []


def test_xpmem_attach_on_p1_faults_p0_pages_over_grpc_and_munmap_and_exit_reach_it(ray_cluster):
    async def workload(c: RayCluster):
        out: dict[str, Any] = {}
        mm_id = await c.on("p0", mapped_mm, 16)
        out["attach"] = await c.on("p1", xpmem_attach_and_read, "p0", mm_id, 6)
        out["p0_after_faults"] = await c.on("p0", pins_and_segments, mm_id)
        await c.on("p0", munmap_pages, mm_id, 0, 2)  # range_end crosses to p1: unpin, then zap
        out["after_munmap"] = await c.on("p1", xpmem_state)
        out["p0_after_munmap"] = await c.on("p0", pins_and_segments, mm_id)
        out["exit"] = await c.on("p0", exit_mm, mm_id)  # ->release tears p1's attachment down
        out["after_exit"] = await c.on("p1", xpmem_state)
        out["p0_after_exit"] = await c.on("p0", pins_and_segments, mm_id)
        return out

    run = run_ray(config(ray_cluster, partitions=2), workload)
    r = run.result
    assert run.placement["p0"] != run.placement["p1"]
    assert r["attach"] == {"vpns": [(BASE >> 12) + i for i in range(6)], "ptes": list(range(6))}
    assert r["p0_after_faults"] == {"pins": 6, "segments": 1}  # the segment lives on the source's partition
    assert r["after_munmap"] == {"ptes": [2, 3, 4, 5], "destroyed": False, "released": False}
    assert r["p0_after_munmap"]["pins"] == 4
    assert r["exit"]["total_us"] > 0 and r["exit"]["release_us"] > 0
    assert r["after_exit"] == {"ptes": [], "destroyed": True, "released": True}
    assert r["p0_after_exit"]["pins"] == 0
    assert run.violations == [] and run.faults == [] and run.lost == [] and run.report_problems == []


def test_a_partition_killed_mid_invalidation_is_fenced_and_exit_completes(ray_cluster):
    # 16 pages at 250 ms a page: p1's GRU takes 4 s to flush the range, well inside the 10 s
    # deadline, so without the kill the munmap would complete with no fault at all.
    npages, flush_us = 16, 250_000.0

    async def workload(c: RayCluster):
        mm_id = await c.on("p0", mapped_mm, npages)
        await c.on("p1", gru_access, "p0", mm_id, "slow", 0, 4, {"flush_per_page_us": flush_us})
        munmap = asyncio.ensure_future(c.on("p0", munmap_pages, mm_id, 0, npages))
        try:
            # p1 is inside gru_invalidate_range_start: the range is active, the flush sleeping
            seen = await wait_until(lambda: c.on("p1", gru_state, "slow"), lambda s: s["range_active"] > 0,
                                    "p1 to receive invalidate_range_start")
            assert not munmap.done()
            c.kill("p1")
        except BaseException:
            munmap.cancel()
            raise
        callouts = await munmap  # p0's callout fails, p0 fences p1 and finishes the munmap
        exit_timing = await c.on("p0", exit_mm, mm_id)
        return {"seen": seen, "callouts": callouts, "exit": exit_timing}

    run = run_ray(config(ray_cluster, partitions=2, deadline_us=10_000_000.0), workload)
    r = run.result
    assert r["seen"]["flushes"] == 1 and r["seen"]["tlb"] == 4  # killed before the flush completed
    assert run.lost == ["p1"]  # p1 could not report
    assert [f.host for f in run.faults] == ["p1"]  # p0 fenced p1, once
    fault = run.faults[0]
    assert fault.during.startswith("invalidate_range_start of p1:")
    assert "UNAVAILABLE" in fault.error or "DEADLINE_EXCEEDED" in fault.error
    assert fault.notifiers and all(n.startswith("p1:") for n in fault.notifiers)
    assert r["exit"]["total_us"] > 0  # exit on p0 completes with p1 gone
    assert run.violations == []  # p0's oracle: no frame freed while a live partition mapped it


def test_a_failing_workload_propagates_and_leaves_no_actor_behind(ray_cluster):
    seen: dict[str, Any] = {}

    async def workload(c: RayCluster):
        seen["actors"] = dict(c.actors)
        seen["placement"] = dict(c.placement)
        await c.on("p1", look_up_missing_mm)

    with pytest.raises(NotFound, match="no live mm 999 on partition p1"):  # the model's error, through Ray
        run_ray(config(ray_cluster, partitions=2, placement="pack"), workload)
    assert set(seen["placement"].values()) == {ray.get_runtime_context().get_node_id()}  # pack: the driver's node
    for name, actor in seen["actors"].items():
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(actor.node_id.remote(), timeout=POLL_LIMIT_S)


def test_a_ray_address_that_does_not_answer_is_named_quickly(ray_cluster, tmp_path):
    # in a fresh process, not connected to Ray: run_ray must not wait minutes on ray.init
    script = textwrap.dedent("""
        import sys
        from cluster.ray_backend import RayConfig, run_ray

        async def workload(c):
            return 0

        try:
            run_ray(RayConfig(address="127.0.0.1:1", connect_timeout_s=5), workload)
        except ConnectionError as e:
            print(f"ConnectionError: {e}")
            sys.exit(3)
        """)
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    child = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env,
                           timeout=120, cwd=tmp_path)
    assert child.returncode == 3, child.stdout + child.stderr
    assert "ConnectionError: no Ray cluster at 127.0.0.1:1" in child.stdout
    # this process is connected to the test cluster: another address is refused, by name
    with pytest.raises(ValueError, match=r"ray config address '127\.0\.0\.1:1'.*already connected"):
        run_ray(RayConfig(address="127.0.0.1:1"), lambda c: asyncio.sleep(0))


def test_the_address_probe_accepts_a_gcs_and_refuses_a_port_that_does_not_speak_grpc(ray_cluster):
    probe_address(ray_cluster.address, 10.0)  # the test cluster's GCS answers
    with socket.create_server(("127.0.0.1", 0)) as silent:  # accepts connections, never says a word
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        with pytest.raises(ConnectionError, match=f"no Ray cluster at {address}: .* does not speak gRPC"):
            probe_address(address, 1.0)


@pytest.mark.parametrize("key, value, expected", [
    ("partitions", 0, "a positive integer"),
    ("nframes", 1.5, "a positive integer"),
    ("cpus", True, "a positive integer"),
    ("srcu_scope", "per_cpu", "one of"),
    ("jiffy_us", 0, "a positive number"),
    ("fanout", "broadcast", "one of"),
    ("deadline_us", float("nan"), "a positive number"),
    ("placement", "scatter", "one of"),
    ("hop_latency_us", -1.0, "a number >= 0"),
    ("address", "no-port", "host:port"),
    ("address", "10.0.0.1:99999", "host:port"),
    ("bind_host", "", "None or a host"),
    ("tls", "off", "true or false"),
])
def test_config_names_the_bad_key_and_value(key, value, expected):
    with pytest.raises(ValueError) as e:
        RayConfig(**{key: value})
    message = str(e.value)
    assert message.startswith(f"ray config {key}: expected") and expected in message and repr(value) in message


def test_hop_latency_is_hops_times_the_per_hop_latency():
    lat = HopLatency(["p0", "p1", "p2"], 3, 20.0)
    assert lat("p0", "p2") == 60.0 and lat("p1", "p1") == 0.0
    assert lat("p9", "p0") == 0.0  # an unknown sender is not delayed; the service refuses it


def test_the_demo_workload_runs_unchanged_on_ray(ray_cluster):
    """The hang workload of ``mmusim demo``, written against ``cluster.on``, runs on two
    partition actors: every measured unregister completes, its timing comes back, nothing is
    violated. (The figures are wall-clock times on a shared machine: not asserted.)"""
    from workloads.demo import format_results, run_demo

    results = run_demo(streams=2, pages=64, unregisters=4, cpus=2, callout_latency_us=50.0,
                       backend="ray", address=ray_cluster.address)
    assert [r.srcu_scope for r in results] == ["global", "per_mm"]
    for r in results:
        assert r.backend == "ray" and r.violations == []
        assert len(r.unregister_srcu_wait_us) == 4 and len(r.unregister_total_us) == 4
        assert all(0 <= w <= t for w, t in zip(r.unregister_srcu_wait_us, r.unregister_total_us))
    assert "Ray actors over gRPC" in format_results(results)


def test_mmusim_run_quickstart_on_ray_writes_the_results(ray_cluster, tmp_path, capsys):
    """``mmusim run quickstart --backend ray``: the same harness as on the sim backend, on three
    actors, writing results.json, events.csv and hang.png; every measured event is there."""
    import json

    from workloads.cli import main

    out = tmp_path / "quickstart-ray"
    exits, unregisters = 5, 10  # fewer than the scenario's: this checks the path, not the figures
    assert main(["run", "quickstart", "--backend", "ray", "--address", ray_cluster.address, "--out", str(out),
                 "--set", f"measure.exits={exits}", "--set", f"measure.unregisters={unregisters}"]) == 0
    result = json.loads((out / "results.json").read_text())
    assert result["backend"] == "ray" and result["invariants"]["violations"] == 0
    assert result["tls"] == "run CA"  # the partitions spoke mutual TLS, as they do unless told not to
    assert result["metrics"]["exit_hang"]["n"] == exits and result["metrics"]["unregister_hang"]["n"] == unregisters
    assert result["metrics"]["callout_rtt"]["n"] > 0 and result["virtual_time_us"] is None
    assert (out / "hang.png").read_bytes()[:4] == b"\x89PNG"
    # the instrument's floor, probed at bring-up between the partitions that talk (p0 <-> p1)
    assert sorted(result["overhead"]) == ["p0->p1", "p1->p0"]
    for pair in result["overhead"].values():
        assert pair["n"] == DEFAULT_PROBE_COUNT == len(pair["model_us"]) == len(pair["rpc_us"])
        assert 0 < pair["model_p50"] <= pair["model_p99"] and 0 < pair["rpc_p50"] <= pair["rpc_p99"]
        assert pair["loaded_n"] == len(pair["loaded_us"]) >= 1 and 0 < pair["loaded_p50"] <= pair["loaded_p99"]
    floor = result["floor"]["metrics"]
    assert floor["callout_rtt"]["calls"] == 1 and floor["exit_srcu_wait"]["calls"] == 0
    assert floor["callout_rtt"]["floor_us"] == result["floor"]["model_p50_us"] > 0
    assert result["floor"]["loaded_p50_us"] > 0  # the probe under the measurements' load
    printed = capsys.readouterr().out
    assert "unregister_srcu_wait" in printed and "floor:" in printed


def test_mmusim_calibrate_runs_on_ray_fits_the_floor_and_compares_with_the_sim(ray_cluster, tmp_path, capsys):
    """``mmusim calibrate quickstart`` on the test cluster: a ray run with its probes, a floor
    fitted to its null callouts under load, the calibrated sim run of the same scenario and
    seed, and the table of both. (The agreement itself is a figure of this machine: printed,
    not asserted.)"""
    import json

    from workloads.calibration import Calibration, fit_floor
    from workloads.cli import main

    out = tmp_path / "cal"
    assert main(["calibrate", "quickstart", "--address", ray_cluster.address, "--out", str(out),
                 "--set", "measure.exits=5", "--set", "measure.unregisters=5"]) == 0
    ray = json.loads((out / "ray" / "results.json").read_text())
    sim = json.loads((out / "sim" / "results.json").read_text())
    assert ray["backend"] == "ray" and sim["backend"] == "sim" and ray["seed"] == sim["seed"]
    assert ray["invariants"]["violations"] == 0 == sim["invariants"]["violations"]
    loaded = [v for pair in sorted(ray["overhead"]) for v in ray["overhead"][pair]["loaded_us"]]
    cal = Calibration.load(out / "calibration.json")
    assert cal.probe == "loaded" and cal.floor == fit_floor(loaded, "lognormal")
    assert sim["calibration"]["floor"] == cal.floor.to_spec()
    assert {r["metric"] for r in json.loads((out / "agreement.json").read_text())["metrics"]} == set(ray["metrics"])
    assert "sim/ray" in capsys.readouterr().out


@pytest.mark.parametrize("nodes, placement, expected", [
    ({"a": "127.0.0.2", "b": "127.0.0.3"}, {"p0": "a", "p1": "b"}, None),  # loopback nodes: their own addresses
    ({"a": "192.0.2.2"}, {"p0": "a", "p1": "a"}, "127.0.0.1"),  # a local Ray: one node
    ({"a": "192.0.2.2", "b": "192.0.2.3"}, {"p0": "a", "p1": "b"}, ValueError),  # hosts apart: no loopback
])
def test_a_plaintext_run_listens_on_loopback_or_is_refused(monkeypatch, nodes, placement, expected):
    import ray

    from cluster.ray_backend import plaintext_bind_host

    monkeypatch.setattr(ray, "nodes", lambda: [{"NodeID": k, "NodeManagerAddress": v} for k, v in nodes.items()])
    if expected is ValueError:
        with pytest.raises(ValueError, match="192.0.2.2, 192.0.2.3; keep TLS on"):
            plaintext_bind_host(None, placement)
    else:
        assert plaintext_bind_host(None, placement) == expected
    assert plaintext_bind_host("::1", placement) == "::1"  # given: as given
