"""Benchmark of the hang study's operating envelope on the sim backend (printed, never asserted).

1. hang-vs-activity on 4 partitions with 10 ms callouts, activity.streams from 1 to 256: for
   each, the wall seconds of the run, the callouts it made, the background operations done and
   refused (streams sharing an mm race as threads of one process), the unregister hang p50 and
   p99 with their 95 % intervals, and the invariant violations (0 is the only good answer).
   The growth of wall seconds against callouts is the cost of heavier activity.
2. Every built-in scenario at 16x its activity.streams: wall seconds, callouts, violations.

Run: python benchmarks/bench_envelope.py [--streams 1,2,4,...] [--duration 100ms] [--skip-builtins]
"""

from __future__ import annotations

import argparse
import time
from typing import Any

from workloads.harness import run_scenario
from workloads.scenario import builtin_scenarios, load_scenario


def run(scenario: Any) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    result, _ = run_scenario(scenario)
    return result, time.perf_counter() - t0


def _interval(m: dict[str, Any], q: str) -> str:
    ci = (m.get("ci95") or {}).get(q)
    value = m.get(q)
    if value is None:
        return "-"
    return f"{value:,.0f}" + (f" [{ci[0]:,.0f}, {ci[1]:,.0f}]" if ci else "")


def _ops(result: dict[str, Any]) -> tuple[int, int]:
    activity = result.get("activity") or {}
    done = sum(c["done"] for c in activity.values())
    refused = sum(sum(c["refused"].values()) for c in activity.values())
    return done, refused


def envelope(streams: list[int], duration: str) -> None:
    print("hang-vs-activity, 4 partitions, callout.latency 10 ms, duration", duration)
    header = f"{'streams':>7}  {'wall s':>7}  {'callouts':>9}  {'ops done':>8}  {'refused':>7}  " \
             f"{'unregister p50 us [95% CI]':>30}  {'p99 us [95% CI]':>30}  violations"
    print(header)
    base = load_scenario("hang-vs-activity").with_value("partitions", 4).with_value("callout.latency", 10_000)
    base = base.with_value("duration", duration)
    for n in streams:
        result, wall = run(base.with_value("activity.streams", n))
        m = result["metrics"]
        done, refused = _ops(result)
        print(f"{n:>7}  {wall:>7.1f}  {m['callout_rtt']['n']:>9,}  {done:>8,}  {refused:>7,}  "
              f"{_interval(m['unregister_hang'], 'p50'):>30}  {_interval(m['unregister_hang'], 'p99'):>30}  "
              f"{result['invariants']['violations']}", flush=True)


def builtins_at_16x() -> None:
    print("\nevery built-in at 16x its activity.streams")
    print(f"{'scenario':<32}  {'streams':>7}  {'wall s':>7}  {'callouts':>9}  {'refused':>7}  violations")
    for name, _ in builtin_scenarios():
        s = load_scenario(name)
        streams = 16 * max(1, s.get("activity.streams"))
        result, wall = run(s.with_value("activity.streams", streams))
        _, refused = _ops(result)
        print(f"{name:<32}  {streams:>7}  {wall:>7.1f}  {result['metrics']['callout_rtt']['n']:>9,}  {refused:>7,}  "
              f"{result['invariants']['violations']}", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--streams", default="1,2,4,8,16,32,64,128,256", help="activity.streams values, comma-separated")
    ap.add_argument("--duration", default="100ms", help="the scenario's duration (default: its own, 100ms)")
    ap.add_argument("--skip-builtins", action="store_true", help="only the streams envelope")
    args = ap.parse_args()
    envelope([int(x) for x in args.streams.split(",")], args.duration)
    if not args.skip_builtins:
        builtins_at_16x()


if __name__ == "__main__":
    main()
