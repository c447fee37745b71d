"""A corner of the hang study's operating envelope, in CI: heavy activity, where many streams
share each mm and race as threads of one process (benchmarks/bench_envelope.py measures the
whole envelope, 1 to 256 streams, and every built-in at 16x its streams)."""

from __future__ import annotations

import pytest

from workloads.harness import run_scenario
from workloads.scenario import builtin_scenarios, load_scenario


def _heavy(result: dict) -> None:  # type: ignore[type-arg]
    assert result["invariants"]["violations"] == 0, result["invariants"]["details"][:3]
    activity = result["activity"]
    assert activity and all(c["done"] + sum(c["refused"].values()) > 0 for c in activity.values()), activity


@pytest.mark.parametrize("knobs", [
    # the run of the issue that crashed: two streams on one mm, one munmaps while one mprotects
    {"seed": 5, "activity.streams": 64, "callout.latency": 5000, "secondaries_per_mm": 2},
    {"seed": 5, "activity.streams": 64, "callout.latency": 10_000, "partitions": 4},
], ids=["64-streams-5ms-2-secondaries", "64-streams-10ms-4-partitions"])
def test_hang_vs_activity_with_16_streams_per_mm_completes_clean(knobs: dict) -> None:  # type: ignore[type-arg]
    s = load_scenario("hang-vs-activity")
    for key, value in knobs.items():
        s = s.with_value(key, value)
    result, _ = run_scenario(s)
    _heavy(result)
    refused = sum(sum(c["refused"].values()) for c in result["activity"].values())
    assert refused > 0  # 16 streams per mm do race: some operations get the kernel's refusal
    assert result["metrics"]["unregister_hang"]["n"] == s.get("measure.unregisters")


@pytest.mark.parametrize("name", [name for name, _ in builtin_scenarios()])
def test_every_builtin_at_16x_its_streams_completes_clean(name: str) -> None:
    s = load_scenario(name)
    s = s.with_value("activity.streams", 16 * s.get("activity.streams")).with_value("duration", "20ms")
    s = s.with_value("measure.exits", 5).with_value("measure.unregisters", 5)  # the activity is the subject
    if s.get("stall.partition") is not None:  # a field report's stall of minutes: one second will do here
        s = s.with_value("stall.length", "1s")
    result, _ = run_scenario(s)
    _heavy(result)
