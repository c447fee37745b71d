"""Benchmark of the gRPC interconnect (printed, never asserted): what a cross-partition callout
costs against a raw gRPC ping, in plaintext and over mutual TLS, measured side by side between
the same two processes.

Process A hosts partition p0 twice, once in plaintext and once with a TLS identity of a CA made
for the run (each with an mm of one page), and drives the benchmark; process B hosts partition
p1 twice the same way, whose GRUs map those mms (registered over gRPC), and a bare grpc.aio ping
service twice (plaintext, and TLS with p1's certificate: the transport's cost without the
identity check). Then, alternating in rounds so that every path sees the same machine state:

1. latency: a raw unary ping A -> B, against p0's notifier core calling
   ``invalidate_range_start`` + ``invalidate_range_end`` for the page (two RPCs to B's GRU,
   plus the model's work on both sides). Goal: the pair costs at most 2.5x one ping.
2. a new channel's first call (TCP connect, and for TLS the handshake with both certificates):
   what a partition pays once per destination.
3. throughput with 1, 16 and 64 in flight: pings per second against callouts per second (each
   range_start/end pair counts two). Goal: at 64 in flight, callouts reach 0.7x the pings.

Each figure is printed for plaintext and TLS with their ratio (TLS / plaintext).

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
from nodes.rpc.identity import ClusterCA, PartitionIdentity

BASE = 0x10000000
PING = "/mmusim.bench.Ping/Ping"
MODES = ("plaintext", "tls")
NEW_CHANNELS = 30  # new channels per mode and round for the first-call figure


def _ping_server() -> grpc.aio.Server:
    async def ping(request: bytes, context: Any) -> bytes:
        return request

    handler = grpc.method_handlers_generic_handler(
        "mmusim.bench.Ping", {"Ping": grpc.unary_unary_rpc_method_handler(ping)})
    server = grpc.aio.server()
    server.add_generic_rpc_handlers((handler,))
    return server


def _channel(address: str, identity: PartitionIdentity | None, dst: str) -> grpc.aio.Channel:
    # a fresh connection every time, not one shared with an earlier channel of this process
    options = [("grpc.use_local_subchannel_pool", 1)]
    if identity is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, identity.channel_credentials(),
                                   options=options + list(identity.target_name(dst)))


def process_b(owners: dict[str, str], mm_ids: dict[str, int], identity: PartitionIdentity, conn: Any) -> None:
    """Partition p1 in each mode with a GRU on that mode's p0 mm, and the ping services; serve
    until told to stop."""

    async def main() -> None:
        parts, pings, ready = {}, {}, {}
        for mode in MODES:
            ident = identity if mode == "tls" else None
            p1 = parts[mode] = LivePartition("p1", identity=ident, nframes=1024, cpus=2)
            await p1.start()
            p1.connect({"p0": owners[mode]})
            ping = pings[mode] = _ping_server()
            if ident is None:
                port = ping.add_insecure_port("127.0.0.1:0")
            else:
                port = ping.add_secure_port("127.0.0.1:0", ident.server_credentials())
            await ping.start()
            ready[mode] = (p1.address, f"127.0.0.1:{port}")
        conn.send(("ready", ready))
        for mode, p1 in parts.items():  # after p0 knows p1's address
            p1.objects["gru"] = await p1.gru("p0", mm_ids[mode])
        conn.send(("registered",))
        await asyncio.get_running_loop().run_in_executor(None, conn.recv)  # "stop"
        for mode, p1 in parts.items():
            await p1.objects["gru"].unregister()
            await pings[mode].stop(0)
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


def _row(label: str, plain: float, tls: float, unit: str) -> str:
    return f"  {label:<34} {plain:9.0f} {unit:<4} {tls:9.0f} {unit:<4} {tls / plain:6.2f}x"


async def bench(seconds: float, rounds: int) -> None:
    ca = ClusterCA.generate()
    ids = ca.issue_all(["p0", "p1"])
    p0s: dict[str, LivePartition] = {}
    mms: dict[str, Any] = {}
    for mode in MODES:
        p0 = p0s[mode] = LivePartition("p0", identity=ids["p0"] if mode == "tls" else None, nframes=1024, cpus=2)
        await p0.start()
        mm = mms[mode] = p0.partition.create_mm()
        await vmops.mmap(p0.partition, mm, BASE, PAGE_SIZE)
        await vmops.populate(p0.partition, mm, BASE, PAGE_SIZE)
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=process_b, args=({m: p.address for m, p in p0s.items()},
                                                {m: mm.id for m, mm in mms.items()}, ids["p1"], there), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    _, ready = await loop.run_in_executor(None, here.recv)
    for mode, (p1_address, _) in ready.items():
        p0s[mode].connect({"p1": p1_address})
    await loop.run_in_executor(None, here.recv)  # the GRUs are registered
    identity_of = {"plaintext": None, "tls": ids["p0"]}
    channels = {m: _channel(ready[m][1], identity_of[m], "p1") for m in MODES}
    calls = {m: ch.unary_unary(PING) for m, ch in channels.items()}
    payload = b"x" * 64

    def ping_op(mode: str) -> Any:
        async def ping() -> None:
            await calls[mode](payload, timeout=5.0)
        return ping

    def pair_op(mode: str) -> Any:
        core, mm = p0s[mode].partition.core, mms[mode]

        async def callout_pair() -> None:
            await core.invalidate_range_start(mm, BASE, BASE + PAGE_SIZE)
            await core.invalidate_range_end(mm, BASE, BASE + PAGE_SIZE)
        return callout_pair

    async def first_call(mode: str) -> float:
        t0 = time.perf_counter()
        ch = _channel(ready[mode][1], identity_of[mode], "p1")
        await ch.unary_unary(PING)(payload, timeout=5.0)
        elapsed = time.perf_counter() - t0
        await ch.close()
        return elapsed

    ops = {(kind, m): (ping_op(m) if kind == "ping" else pair_op(m)) for kind in ("ping", "pair") for m in MODES}
    for _ in range(50):  # warm up every path: channels, caches
        for op in ops.values():
            await op()

    lat: dict[tuple[str, str], list[float]] = {k: [] for k in ops}
    new: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for key, op in ops.items():
            for _ in range(100):
                t0 = time.perf_counter()
                await op()
                lat[key].append(time.perf_counter() - t0)
        for mode in MODES:
            new[mode].extend([await first_call(mode) for _ in range(NEW_CHANNELS)])
    med = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
    print(f"latency (median of {len(lat['ping', 'tls'])} each, alternating in {rounds} rounds):")
    print(f"  {'':<34} {'plaintext':>14} {'mutual TLS':>14} {'TLS/plain':>7}")
    print(_row("raw grpc.aio unary ping", med["ping", "plaintext"], med["ping", "tls"], "us"))
    print(_row("invalidate_range_start + end pair", med["pair", "plaintext"], med["pair", "tls"], "us"))
    for mode in MODES:
        print(f"    {mode}: the pair is {med['pair', mode] / med['ping', mode]:.2f}x one ping (goal <= 2.5x)")
    first = {m: statistics.median(v) * 1e6 for m, v in new.items()}
    print(_row(f"new channel + first ping (n={len(new['tls'])})", first["plaintext"], first["tls"], "us"))

    print(f"throughput ({seconds:.1f} s per measurement, best of {rounds} alternating rounds):")
    print(f"  {'':<34} {'plaintext':>14} {'mutual TLS':>14} {'TLS/plain':>7}")
    for k in (1, 16, 64):
        best: dict[tuple[str, str], float] = {}
        for _ in range(rounds):
            for (kind, mode), op in ops.items():
                r = (1 if kind == "ping" else 2) * await _rate(op, k, seconds)
                best[kind, mode] = max(best.get((kind, mode), 0.0), r)
        print(_row(f"{k:>2} in flight: pings", best["ping", "plaintext"], best["ping", "tls"], "/s"))
        print(_row(f"{k:>2} in flight: callouts", best["pair", "plaintext"], best["pair", "tls"], "/s"))
        goal = "   (goal >= 0.7x at 64)" if k == 64 else ""
        print(f"    callouts/pings: plaintext {best['pair', 'plaintext'] / best['ping', 'plaintext']:.2f}, "
              f"TLS {best['pair', 'tls'] / best['ping', 'tls']:.2f}{goal}")
    for mode, p0 in p0s.items():
        print(f"  {mode}: owner faults: {len(p0.owner_service.faults)}; "
              f"invariant violations on p0: {len(p0.partition.check_invariants())}")

    for ch in channels.values():
        await ch.close()
    here.send("stop")
    await loop.run_in_executor(None, child.join, 30)
    for p0 in p0s.values():
        await p0.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(bench(args.seconds, args.rounds))
