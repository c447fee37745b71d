"""Benchmark of the sim backend (printed, never asserted).

1. Scale: 256 partitions in one process; partition i owns an mm mapped by a GRU on partition
   i+1, and keeps invalidating it (exported invalidate_range_start/end), until 1,000,000
   callouts have crossed the interconnect. Prints callouts and scheduler steps per wall second.
2. The same event chain in SimPy and in mmusim's virtual-time loop, side by side in this
   process: two processes playing ping-pong through a timeout (each waits for the ball, holds
   it for one time unit, passes it back). Prints events per wall second of each and the ratio;
   and, for reference, the bare chain of timeouts with no hand-off.

Run: python benchmarks/bench_sim.py [--callouts N] [--partitions N] [--chain N]
(``MMUSIM_PURE=1`` runs the pure module rather than the compiled scheduler core; the first
line says which ran.)
"""

from __future__ import annotations

import argparse
import asyncio
import time

import cluster
from cluster.sim import SimCluster, SimConfig, run_sim
from cluster.vtime import Trace, VirtualClock, VirtualTimeLoop, run_virtual
from nodes import vmops
from nodes.mm import PAGE_SIZE

BASE = 0x10000000


def scale(partitions: int, callouts: int) -> None:
    per_owner = max(1, callouts // (2 * partitions))  # each round is a start and an end

    async def workload(c: SimCluster) -> int:
        names = list(c.partitions)

        async def owner(i: int) -> None:
            p = c.partition(names[i])
            mm = p.create_mm()
            await vmops.mmap(p, mm, BASE, PAGE_SIZE)
            await c.gru(names[(i + 1) % len(names)], names[i], mm, name=f"gru{i}")
            for _ in range(per_owner):
                await p.core.invalidate_range_start(mm, BASE, BASE + PAGE_SIZE)
                await p.core.invalidate_range_end(mm, BASE, BASE + PAGE_SIZE)

        tasks = [c.runtime.spawn(owner(i), name=f"owner{i}") for i in range(len(names))]
        for t in tasks:
            await t
        return sum(c.interconnect.messages.values())

    config = SimConfig(partitions=partitions, nframes=64, cpus=2, topology="numalink", hop_latency=0.05, trace="hash")
    t0 = time.perf_counter()
    run = run_sim(config, workload)
    wall = time.perf_counter() - t0
    n_callouts = 2 * per_owner * partitions
    print(f"scale: {partitions} partitions, {n_callouts:,} callouts ({run.result:,} messages) in {wall:.1f} s wall, "
          f"{run.virtual_time_us / 1e3:.1f} virtual ms")
    goal = {32: 100_000, 256: 60_000}.get(partitions)
    print(f"  {n_callouts / wall:,.0f} callouts per wall second; {run.steps / wall:,.0f} scheduler steps per wall second"
          + (f" (goal, issue 15: >= {goal:,} at {partitions} partitions)" if goal else ""))
    print(f"  trace digest {run.trace_digest}; invariant violations: {len(run.violations)}")


def simpy_ping_pong(n: int) -> float:
    import simpy

    env = simpy.Environment()
    count = [0]
    balls = [env.event(), env.event()]

    def player(me: int) -> object:
        while count[0] < n:
            yield balls[me]
            balls[me] = env.event()
            yield env.timeout(1)
            count[0] += 1
            balls[1 - me].succeed()

    env.process(player(0))
    env.process(player(1))
    balls[0].succeed()
    t0 = time.perf_counter()
    env.run()
    return count[0] / (time.perf_counter() - t0)


def mmusim_ping_pong(n: int, trace: str) -> float:
    count = [0]

    async def main() -> None:
        clock = VirtualClock()
        loop = asyncio.get_running_loop()
        balls = [loop.create_future(), loop.create_future()]

        async def player(me: int) -> None:
            while count[0] < n:
                await balls[me]
                balls[me] = loop.create_future()
                await clock.sleep(1)
                count[0] += 1
                balls[1 - me].set_result(None)

        balls[0].set_result(None)
        await asyncio.gather(player(0), player(1))

    loop = VirtualTimeLoop(trace=Trace(trace))
    t0 = time.perf_counter()
    run_virtual(main(), loop=loop)
    return count[0] / (time.perf_counter() - t0)


def simpy_timeouts(n: int) -> float:
    import simpy

    env = simpy.Environment()
    count = [0]

    def proc() -> object:
        while count[0] < n:
            yield env.timeout(1)
            count[0] += 1

    env.process(proc())
    env.process(proc())
    t0 = time.perf_counter()
    env.run()
    return count[0] / (time.perf_counter() - t0)


def mmusim_timeouts(n: int, trace: str) -> float:
    count = [0]

    async def main() -> None:
        clock = VirtualClock()

        async def proc() -> None:
            while count[0] < n:
                await clock.sleep(1)
                count[0] += 1

        await asyncio.gather(proc(), proc())

    loop = VirtualTimeLoop(trace=Trace(trace))
    t0 = time.perf_counter()
    run_virtual(main(), loop=loop)
    return count[0] / (time.perf_counter() - t0)


def chains(n: int, repeats: int = 3) -> None:
    print(f"event chains, {n:,} events each, best of {repeats}, side by side in this process:")
    rows = [
        ("ping-pong through a timeout", simpy_ping_pong, mmusim_ping_pong),
        ("timeouts only", simpy_timeouts, mmusim_timeouts),
    ]
    for label, sp, ours in rows:
        s = max(sp(n) for _ in range(repeats))
        o_off = max(ours(n, "off") for _ in range(repeats))
        o_hash = max(ours(n, "hash") for _ in range(repeats))
        print(f"  {label:<28} SimPy {s:>11,.0f}/s   mmusim {o_off:>11,.0f}/s (trace off, ratio {o_off / s:.2f})"
              f"   {o_hash:>11,.0f}/s (trace hashed, ratio {o_hash / s:.2f})")
        print(f"  {'':<28} goals (issue 15): >= 2x SimPy, trace off (floor 1.2x); hashed >= 0.9x of off: "
              f"{o_hash / o_off:.2f}x")


if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--partitions", type=int, default=256)
    ap.add_argument("--callouts", type=int, default=1_000_000)
    ap.add_argument("--chain", type=int, default=200_000)
    args = ap.parse_args()
    print(f"cluster.vtime: {cluster.VTIME_BUILD}")
    chains(args.chain)
    scale(args.partitions, args.callouts)
