"""Benchmark of the gRPC interconnect (printed, never asserted): what a cross-partition callout
costs against a raw gRPC ping, measured side by side between the same two processes.

Process A hosts partition p0 (an mm of one page) and drives the benchmark; process B hosts
partition p1, whose GRU maps that mm (registered over gRPC), and a bare grpc.aio ping service.
Then, alternating in rounds so both see the same machine state:

1. latency: a raw unary ping A -> B, against p0's notifier core calling
   ``invalidate_range_start`` + ``invalidate_range_end`` for the page (two RPCs to B's GRU,
   plus the model's work on both sides). Goal: the pair costs at most 2.5x one ping.
2. throughput with 1, 16 and 64 in flight: pings per second against callouts per second (each
   range_start/end pair counts two). Goal: at 64 in flight, callouts reach 0.7x the pings.

Run: python benchmarks/bench_rpc.py [--seconds S] [--rounds N]
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import statistics
import time
from typing import Any

import grpc

from cluster.live import LivePartition
from nodes import vmops
from nodes.mm import PAGE_SIZE

BASE = 0x10000000
PING = "/mmusim.bench.Ping/Ping"


def _ping_server() -> grpc.aio.Server:
    async def ping(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "mmusim.bench.Ping", {"Ping": grpc.unary_unary_rpc_method_handler(ping)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    return server


def process_b(owner_address: str, mm_id: int, conn: Any) -> None:
    """Partition p1 with a GRU on p0's mm, and the ping service; serve until told to stop."""

    async def main() -> None:
        p1 = LivePartition("p1", identity=None, nframes=1024, cpus=2)
        await p1.start()
        p1.connect({"p0": owner_address})
        ping = _ping_server()
        port = ping.add_insecure_port("127.0.0.1:0")
        await ping.start()
        conn.send(("ready", p1.address, f"127.0.0.1:{port}"))
        p1.objects["gru"] = await p1.gru("p0", mm_id)  # after p0 knows p1's address
        conn.send(("registered",))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        await p1.objects["gru"].unregister()
        await ping.stop(0)
        await p1.stop()

    asyncio.run(main())


async def _rate(op: Any, in_flight: int, seconds: float) -> float:
    """Operations per second with ``in_flight`` concurrent loops of ``op`` for ``seconds``."""
    done = 0
    stop_at = time.perf_counter() + seconds

    async def loop() -> None:
        nonlocal done
        while time.perf_counter() < stop_at:
            await op()
            done += 1

    t0 = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(in_flight)))
    return done / (time.perf_counter() - t0)


async def bench(seconds: float, rounds: int) -> None:
    p0 = LivePartition("p0", identity=None, nframes=1024, cpus=2)
    await p0.start()
    a = p0.partition
    mm = a.create_mm()
    await vmops.mmap(a, mm, BASE, PAGE_SIZE)
    await vmops.populate(a, mm, BASE, PAGE_SIZE)
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=process_b, args=(p0.address, mm.id, there), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    _, p1_address, ping_address = await loop.run_in_executor(None, here.recv)
    p0.connect({"p1": p1_address})
    await loop.run_in_executor(None, here.recv)  # the GRU is registered on mm
    channel = grpc.aio.insecure_channel(ping_address)
    ping_call = channel.unary_unary(PING)
    payload = b"x" * 64

    async def ping() -> None:
        await ping_call(payload, timeout=5.0)

    async def callout_pair() -> None:
        await a.core.invalidate_range_start(mm, BASE, BASE + PAGE_SIZE)
        await a.core.invalidate_range_end(mm, BASE, BASE + PAGE_SIZE)

    for _ in range(50):  # warm up both paths: channels, caches
        await ping()
        await callout_pair()

    lat_ping, lat_pair = [], []
    for _ in range(rounds):
        for samples, op in ((lat_ping, ping), (lat_pair, callout_pair)):
            for _ in range(100):
                t0 = time.perf_counter()
                await op()
                samples.append(time.perf_counter() - t0)
    ping_us = statistics.median(lat_ping) * 1e6
    pair_us = statistics.median(lat_pair) * 1e6
    print(f"latency (median of {len(lat_ping)} each, alternating in {rounds} rounds):")
    print(f"  raw grpc.aio unary ping            {ping_us:8.0f} us")
    print(f"  invalidate_range_start + end pair  {pair_us:8.0f} us   ratio {pair_us / ping_us:.2f}x one ping (goal <= 2.5x)")

    print(f"throughput ({seconds:.1f} s per measurement, best of {rounds} alternating rounds):")
    for k in (1, 16, 64):
        pings, callouts = [], []
        for _ in range(rounds):
            pings.append(await _rate(ping, k, seconds))
            callouts.append(2 * await _rate(callout_pair, k, seconds))
        p, c = max(pings), max(callouts)
        goal = "   (goal >= 0.7x at 64)" if k == 64 else ""
        print(f"  {k:>2} in flight: pings {p:8.0f}/s   callouts {c:8.0f}/s   ratio {c / p:.2f}{goal}")
    print(f"  owner faults: {len(p0.owner_service.faults)}; "
          f"invariant violations on p0: {len(a.check_invariants())}")

    here.send("stop")
    await loop.run_in_executor(None, child.join, 30)
    await channel.close()
    await p0.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(bench(args.seconds, args.rounds))
