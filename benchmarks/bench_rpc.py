"""Benchmark of the gRPC interconnect (printed, never asserted): what a cross-partition callout
costs against raw gRPC, on both transports (``unary``: one call per request; ``stream``:
long-lived bidirectional streams, ``nodes/rpc/client.py``), in plaintext and over mutual TLS,
measured side by side between the same two processes.

Process A hosts partition p0 once per mode (plaintext, and TLS with an identity of a CA made
for the run) and transport, each with an mm of one page, and drives the benchmark; process B
hosts partition p1 the same way, whose GRUs map those mms (registered over gRPC), and a bare
grpc.aio ping service per mode (plaintext, and TLS with p1's certificate: the transport's cost
without the identity check) with a unary ping and a bidirectional-stream echo. Then,
alternating in rounds so that every path sees the same machine state:

1. latency: a raw unary ping A -> B and a raw stream ping (one message each way on an open
   stream), against p0's notifier core calling ``invalidate_range_start`` +
   ``invalidate_range_end`` for the page (two requests to B's GRU, plus the model's work on
   both sides) on each transport. Goal (issue 13): on the stream transport the pair costs at
   most 1.2x one raw unary ping (floor 1.6x).
2. a new channel's first call (TCP connect, and for TLS the handshake with both certificates):
   what a partition pays once per destination.
3. throughput with 1, 16 and 64 in flight: raw unary pings and raw stream messages per second
   (each in-flight loop on a stream of its own), against callouts per second on each
   transport (each range_start/end pair counts two). Goal: at 64 in flight, stream callouts
   reach 0.9x the raw stream messages.

Each figure is printed for plaintext and TLS with their ratio (TLS / plaintext). With the
latencies, the CPU time each process spent per round trip (``time.process_time``, every thread
of the process: gRPC's own included), A's and B's: what a path costs whatever else the machine
runs, as wall-clock figures on a shared machine are not.

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
from nodes.rpc import TRANSPORTS
from nodes.rpc.identity import ClusterCA, PartitionIdentity

BASE = 0x10000000
PING = "/mmusim.bench.Ping/Ping"
ECHO = "/mmusim.bench.Ping/Echo"
MODES = ("plaintext", "tls")
NEW_CHANNELS = 30  # new channels per mode and round for the first-call figure


def _ping_server() -> grpc.aio.Server:
    async def ping(request: bytes, context: Any) -> bytes:
        return request

    async def echo(requests: Any, context: Any) -> Any:
        async for request in requests:
            yield request

    handler = grpc.method_handlers_generic_handler("mmusim.bench.Ping", {
        "Ping": grpc.unary_unary_rpc_method_handler(ping), "Echo": grpc.stream_stream_rpc_method_handler(echo)})
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


PATHS = [(mode, transport) for mode in MODES for transport in TRANSPORTS]


def process_b(owners: dict[tuple[str, str], str], mm_ids: dict[tuple[str, str], int], identity: PartitionIdentity,
              conn: Any) -> None:
    """Partition p1 for each mode and transport with a GRU on that path's p0 mm, and the ping
    services; serve until told to stop."""

    async def main() -> None:
        parts, pings, ready, ping_at = {}, {}, {}, {}
        for mode in MODES:
            ident = identity if mode == "tls" else None
            ping = pings[mode] = _ping_server()
            if ident is None:
                port = ping.add_insecure_port("127.0.0.1:0")
            else:
                port = ping.add_secure_port("127.0.0.1:0", ident.server_credentials())
            await ping.start()
            ping_at[mode] = f"127.0.0.1:{port}"
        for mode, transport in PATHS:
            ident = identity if mode == "tls" else None
            p1 = parts[mode, transport] = LivePartition("p1", identity=ident, nframes=1024, cpus=2, transport=transport)
            await p1.start()
            p1.connect({"p0": owners[mode, transport]})
            ready[mode, transport] = p1.address
        conn.send(("ready", ready, ping_at))
        for path, p1 in parts.items():  # after p0 knows p1's address
            p1.objects["gru"] = await p1.gru("p0", mm_ids[path])
        conn.send(("registered",))
        while await asyncio.get_running_loop().run_in_executor(None, conn.recv) == "cpu":  # until "stop"
            conn.send(time.process_time())
        for path, p1 in parts.items():
            await p1.objects["gru"].unregister()
            await p1.stop()
        for ping in pings.values():
            await ping.stop(0)

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
    return f"  {label:<42} {plain:9.0f} {unit:<4} {tls:9.0f} {unit:<4} {tls / plain:6.2f}x"


class _StreamPing:
    """A raw ping on an open bidirectional stream: one message each way."""

    def __init__(self, channel: grpc.aio.Channel):
        self.call = channel.stream_stream(ECHO)()

    async def __call__(self, payload: bytes) -> None:
        await self.call.write(payload)
        await self.call.read()


async def bench(seconds: float, rounds: int) -> None:
    ca = ClusterCA.generate()
    ids = ca.issue_all(["p0", "p1"])
    p0s: dict[tuple[str, str], LivePartition] = {}
    mms: dict[tuple[str, str], Any] = {}
    for mode, transport in PATHS:
        p0 = p0s[mode, transport] = LivePartition("p0", identity=ids["p0"] if mode == "tls" else None, nframes=1024,
                                                  cpus=2, transport=transport)
        await p0.start()
        mm = mms[mode, transport] = p0.partition.create_mm()
        await vmops.mmap(p0.partition, mm, BASE, PAGE_SIZE)
        await vmops.populate(p0.partition, mm, BASE, PAGE_SIZE)
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    child = ctx.Process(target=process_b, args=({k: p.address for k, p in p0s.items()},
                                                {k: mm.id for k, mm in mms.items()}, ids["p1"], there), daemon=True)
    child.start()
    loop = asyncio.get_running_loop()
    _, ready, ping_at = await loop.run_in_executor(None, here.recv)
    for path, p1_address in ready.items():
        p0s[path].connect({"p1": p1_address})
    await loop.run_in_executor(None, here.recv)  # the GRUs are registered
    identity_of = {"plaintext": None, "tls": ids["p0"]}
    channels = {m: _channel(ping_at[m], identity_of[m], "p1") for m in MODES}
    calls = {m: ch.unary_unary(PING) for m, ch in channels.items()}
    payload = b"x" * 64

    def ping_op(mode: str) -> Any:
        async def ping() -> None:
            await calls[mode](payload, timeout=5.0)
        return ping

    def stream_ping_op(mode: str) -> Any:
        streams: list[_StreamPing] = []  # one per concurrent loop: _rate's loops take them in turn

        async def stream_ping() -> None:
            s = streams.pop() if streams else _StreamPing(channels[mode])
            try:
                await s(payload)
            finally:
                streams.append(s)
        return stream_ping

    def pair_op(path: tuple[str, str]) -> Any:
        core, mm = p0s[path].partition.core, mms[path]

        async def callout_pair() -> None:
            await core.invalidate_range_start(mm, BASE, BASE + PAGE_SIZE)
            await core.invalidate_range_end(mm, BASE, BASE + PAGE_SIZE)
        return callout_pair

    async def first_call(mode: str) -> float:
        t0 = time.perf_counter()
        ch = _channel(ping_at[mode], identity_of[mode], "p1")
        await ch.unary_unary(PING)(payload, timeout=5.0)
        elapsed = time.perf_counter() - t0
        await ch.close()
        return elapsed

    ops: dict[tuple[str, str], Any] = {}
    for m in MODES:
        ops["ping", m] = ping_op(m)
        ops["stream ping", m] = stream_ping_op(m)
        for t in TRANSPORTS:
            ops[f"pair {t}", m] = pair_op((m, t))
    for _ in range(50):  # warm up every path: channels, streams, caches
        for op in ops.values():
            await op()

    async def cpu_b() -> float:
        here.send("cpu")
        return await loop.run_in_executor(None, here.recv)

    lat: dict[tuple[str, str], list[float]] = {k: [] for k in ops}
    cpu: dict[tuple[str, str], list[float]] = {k: [0.0, 0.0] for k in ops}  # seconds, A's and B's
    new: dict[str, list[float]] = {m: [] for m in MODES}
    for _ in range(rounds):
        for key, op in ops.items():
            b0, a0 = await cpu_b(), time.process_time()
            for _ in range(100):
                t0 = time.perf_counter()
                await op()
                lat[key].append(time.perf_counter() - t0)
            a1 = time.process_time()
            cpu[key][0] += a1 - a0
            cpu[key][1] += await cpu_b() - b0
        for mode in MODES:
            new[mode].extend([await first_call(mode) for _ in range(NEW_CHANNELS)])
    med = {k: statistics.median(v) * 1e6 for k, v in lat.items()}
    head = f"  {'':<42} {'plaintext':>14} {'mutual TLS':>14} {'TLS/plain':>7}"
    print(f"latency (median of {len(lat['ping', 'tls'])} each, alternating in {rounds} rounds):")
    print(head)
    print(_row("raw grpc.aio unary ping", med["ping", "plaintext"], med["ping", "tls"], "us"))
    print(_row("raw grpc.aio stream ping (open stream)", med["stream ping", "plaintext"], med["stream ping", "tls"],
               "us"))
    for t in TRANSPORTS:
        print(_row(f"range_start + end pair, {t}", med[f"pair {t}", "plaintext"], med[f"pair {t}", "tls"], "us"))
    for mode in MODES:
        ratios = ", ".join(f"{t} {med[f'pair {t}', mode] / med['ping', mode]:.2f}x" for t in TRANSPORTS)
        print(f"    {mode}: the pair vs one raw unary ping: {ratios} (goal, stream: <= 1.2x, floor 1.6x)")
    print("  CPU per round trip (process time, A / B):")
    for kind, label in (("ping", "raw unary ping"), ("stream ping", "raw stream ping"),
                        *((f"pair {t}", f"range_start or end, {t}") for t in TRANSPORTS)):
        trips = {m: len(lat[kind, m]) * (2 if kind.startswith("pair") else 1) for m in MODES}
        print("    " + f"{label:<30}" + "".join(
            f"  {m}: {cpu[kind, m][0] / trips[m] * 1e6:4.0f} / {cpu[kind, m][1] / trips[m] * 1e6:4.0f} us" for m in MODES))
    first = {m: statistics.median(v) * 1e6 for m, v in new.items()}
    print(_row(f"new channel + first ping (n={len(new['tls'])})", first["plaintext"], first["tls"], "us"))

    print(f"throughput ({seconds:.1f} s per measurement, best of {rounds} alternating rounds):")
    print(head)
    for k in (1, 16, 64):
        best: dict[tuple[str, str], float] = {}
        for _ in range(rounds):
            for (kind, mode), op in ops.items():
                r = (2 if kind.startswith("pair") else 1) * await _rate(op, k, seconds)
                best[kind, mode] = max(best.get((kind, mode), 0.0), r)
        print(_row(f"{k:>2} in flight: raw unary pings", best["ping", "plaintext"], best["ping", "tls"], "/s"))
        print(_row(f"{k:>2} in flight: raw stream messages", best["stream ping", "plaintext"],
                   best["stream ping", "tls"], "/s"))
        for t in TRANSPORTS:
            print(_row(f"{k:>2} in flight: callouts, {t}", best[f"pair {t}", "plaintext"], best[f"pair {t}", "tls"], "/s"))
        for mode in MODES:
            ratios = ", ".join(f"{t} {best[f'pair {t}', mode] / best['stream ping', mode]:.2f}" for t in TRANSPORTS)
            goal = "   (goal, stream: >= 0.9 at 64)" if k == 64 else ""
            print(f"    {mode}: callouts / raw stream messages: {ratios}; callouts / raw unary pings: "
                  f"{best['pair stream', mode] / best['ping', mode]:.2f} stream, "
                  f"{best['pair unary', mode] / best['ping', mode]:.2f} unary{goal}")
    for path, p0 in p0s.items():
        written = p0.interconnect.written
        coalesced = f"; {written['calls'] / written['messages']:.2f} requests per stream message" if written else ""
        print(f"  {path[0]}, {path[1]}: owner faults: {len(p0.owner_service.faults)}; "
              f"invariant violations on p0: {len(p0.partition.check_invariants())}{coalesced}")

    for ch in channels.values():
        await ch.close()
    here.send("stop")
    await loop.run_in_executor(None, child.join, 30)
    for p0 in p0s.values():
        await p0.stop()


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=1.0, help="per throughput measurement")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    asyncio.run(bench(args.seconds, args.rounds))
