"""The hang study on the sim backend checks the physics, not just the plumbing: each knob moves
the measured hang the way the model's mechanism says it must, by a ratio with margin
(workloads/harness.py, the built-in scenarios)."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.harness import METRICS, run_scenario
from workloads.scenario import load_scenario


def study(name: str, **values):  # type: ignore[no-untyped-def]
    s = load_scenario(name)
    for key, value in values.items():
        s = s.with_value(key.replace("__", "."), value)
    result, events = run_scenario(s)
    assert result["invariants"]["violations"] == 0, result["invariants"]["details"][:5]
    return result, events


# quickstart measures 100 exits and 100 unregisters (enough for its p90); tests that check
# something else measure fewer, to stay lean
FEW = {"measure__exits": 5, "measure__unregisters": 10}


def mean(result, metric: str) -> float:  # type: ignore[no-untyped-def]
    return result["metrics"][metric]["mean"]


def test_the_result_has_every_metric_and_the_events_match_the_histograms():
    result, events = study("quickstart")
    assert set(result["metrics"]) == set(METRICS)
    device = ("device_fault", "device_invalidate")  # ODP MRs' own timings: a GRU run has none
    assert all(result["metrics"][m]["n"] == 0 for m in device)
    for metric in (m for m in METRICS if m not in device):
        values = [e["value_us"] for e in events if e["metric"] == metric]
        m = result["metrics"][metric]
        assert m["n"] == len(values) > 0
        assert m["max"] == pytest.approx(max(values), abs=0.001)
        assert m["p50"] == pytest.approx(float(np.percentile(values, 50, method="inverted_cdf")), rel=1e-3, abs=0.001)
    s = load_scenario("quickstart")
    assert result["metrics"]["exit_hang"]["n"] == s.get("measure.exits")
    assert result["metrics"]["unregister_hang"]["n"] == s.get("measure.unregisters")


def test_unregister_hang_grows_with_activity_streams():
    idle, _ = study("hang-vs-activity", activity__streams=0)
    busy, _ = study("hang-vs-activity", activity__streams=8)
    assert mean(idle, "unregister_srcu_wait") == 0.0  # no reader anywhere: the fast path
    assert mean(busy, "unregister_srcu_wait") > 500.0  # a callout is nearly always in flight
    assert mean(busy, "unregister_hang") > 5 * mean(idle, "unregister_hang")


def test_hang_grows_with_callout_latency():
    fast, _ = study("hang-vs-activity", activity__streams=4, callout__latency=20)
    slow, _ = study("hang-vs-activity", activity__streams=4, callout__latency=400)
    for metric in ("unregister_hang", "exit_hang", "invalidate_range", "callout_rtt"):
        assert mean(slow, metric) > 2 * mean(fast, metric), metric


def test_per_mm_srcu_removes_the_wait_caused_by_other_mms():
    glob, _ = study("global-vs-per-mm-srcu", srcu__scope="global")
    per_mm, _ = study("global-vs-per-mm-srcu", srcu__scope="per_mm")
    assert mean(glob, "unregister_srcu_wait") > 300.0
    assert per_mm["metrics"]["unregister_srcu_wait"]["max"] == 0.0  # the measured mm has no reader of its own
    assert mean(per_mm, "unregister_hang") * 3 < mean(glob, "unregister_hang")


def test_put_removes_the_synchronize_wait_from_unregister():
    unreg, _ = study("unregister-vs-put", teardown="unregister")
    put, _ = study("unregister-vs-put", teardown="put")
    assert mean(unreg, "unregister_srcu_wait") > 100.0
    assert put["metrics"]["unregister_srcu_wait"]["max"] == 0.0
    assert put["metrics"]["unregister_hang"]["max"] * 10 < mean(unreg, "unregister_hang")


def test_parallel_fanout_shortens_invalidate_range_with_several_secondaries():
    seq, _ = study("sequential-vs-parallel-fanout", fanout="sequential")
    par, _ = study("sequential-vs-parallel-fanout", fanout="parallel")
    assert seq["metrics"]["invalidate_range"]["p50"] > 2.5 * par["metrics"]["invalidate_range"]["p50"]


@pytest.mark.parametrize("kind", ["gru", "xpmem", "kvm"])
def test_every_secondary_kind_and_the_whole_mix_run_clean(kind):
    mix = {"munmap": 1, "mprotect": 1, "migrate": 1, "ksm": 1, "reclaim": 1, "thp": 1, "cow": 1}
    result, events = study("quickstart", secondary__kind=kind, activity__mix=mix, activity__streams=3, **FEW)
    assert result["faults"] == []
    assert {e["detail"] for e in events if e["metric"] == "callout_rtt"}  # callouts happened


def test_the_same_seed_gives_the_same_run():
    a, ea = study("quickstart", seed=3, **FEW)
    b, eb = study("quickstart", seed=3, **FEW)
    assert a["trace_digest"] == b["trace_digest"] and ea == eb
    assert a["metrics"] == b["metrics"]  # the bootstrap intervals too
    c, _ = study("quickstart", seed=4, **FEW)
    assert c["trace_digest"] != a["trace_digest"]
