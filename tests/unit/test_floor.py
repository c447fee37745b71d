"""The instrument's floor in a ray result: which pairs are probed, the per-pair statistics, how
many round trips lie on each metric's path, the ``floor`` block, and the summary's floor column."""

from __future__ import annotations

import numpy as np
import pytest

from cluster.ray_backend import RayConfig
from workloads import report
from workloads.harness import StudySpec, floor_calls, floor_stats, floor_summary, talking_pairs
from workloads.scenario import load_scenario


def spec(**changes):
    s = load_scenario("quickstart")
    for k, v in changes.items():
        s = s.with_value(k, v)
    return StudySpec.from_scenario(s)


def test_the_pairs_probed_are_each_owner_and_the_hosts_of_its_secondaries_both_ways():
    names = ["p0", "p1", "p2", "p3"]
    pairs = talking_pairs(names, spec(partitions=4, secondaries_per_mm=2))
    # p_i's secondaries live on p_{i+1} and p_{i+2}: ring neighbours at distance 1 and 2, both ways
    expected = {(a, b) for i, a in enumerate(names) for d in (1, 2) for b in [names[(i + d) % 4]]}
    expected |= {(b, a) for a, b in expected}
    assert set(pairs) == expected and len(pairs) == len(set(pairs))
    assert talking_pairs(names, spec(partitions=4, **{"secondary.kind": "kvm"})) == []  # KVM is local
    assert talking_pairs(["p0"], spec(partitions=1)) == []


def test_floor_stats_are_the_percentiles_of_the_samples():
    rng = np.random.default_rng(3)
    rpc, model = list(rng.lognormal(5, 0.3, 200)), list(rng.lognormal(6, 0.3, 200))
    got = floor_stats({"rpc_us": rpc, "model_us": model})
    assert got["n"] == 200 and got["rpc_us"] == rpc and got["model_us"] == model
    assert got["rpc_p50"] == pytest.approx(np.percentile(rpc, 50)) and got["model_p99"] == pytest.approx(np.percentile(model, 99))
    assert got["rpc_p50"] < got["rpc_p99"] and got["model_p50"] < got["model_p99"]


@pytest.mark.parametrize("fanout, walk", [("sequential", 3), ("parallel", 1)])
def test_the_round_trips_on_each_metric_path(fanout, walk):
    calls = floor_calls(spec(partitions=4, secondaries_per_mm=3), fanout)
    assert calls["exit_hang"] == calls["exit_release"] == walk  # one ->release walk over the mm's secondaries
    assert calls["invalidate_range"] == 2 * walk  # start and end
    assert calls["unregister_hang"] == calls["unregister_release"] == calls["callout_rtt"] == 1
    assert calls["exit_srcu_wait"] == calls["unregister_srcu_wait"] == 0
    assert set(calls) == set(report.METRIC_NAMES)
    assert set(floor_calls(spec(**{"secondary.kind": "kvm"}), fanout).values()) == {0}


def test_the_floor_block_is_calls_times_the_null_callouts_p50_and_its_share_of_each_p50():
    overhead = {"p0->p1": floor_stats({"rpc_us": [10.0, 20.0, 30.0], "model_us": [100.0, 200.0, 300.0]}),
                "p1->p0": floor_stats({"rpc_us": [40.0], "model_us": [400.0]})}
    metrics = {"exit_hang": {"p50": 1000.0}, "callout_rtt": {"p50": 500.0}, "unregister_hang": {"p50": None}}
    got = floor_summary(overhead, {"exit_hang": 2, "callout_rtt": 1, "unregister_hang": 1}, metrics)
    pooled = float(np.percentile([100.0, 200.0, 300.0, 400.0], 50))
    assert got["model_p50_us"] == pooled and got["rpc_p50_us"] == float(np.percentile([10.0, 20.0, 30.0, 40.0], 50))
    assert got["metrics"]["exit_hang"] == {"calls": 2, "floor_us": 2 * pooled, "share_of_p50": 2 * pooled / 1000.0}
    assert got["metrics"]["callout_rtt"]["share_of_p50"] == pooled / 500.0
    assert got["metrics"]["unregister_hang"]["share_of_p50"] is None  # no events, no share
    assert floor_summary({}, {"exit_hang": 1}, metrics) == {}  # no probe, no floor


def test_the_summary_prints_the_floor_share_beside_each_metric_only_when_probed():
    from tests.unit.test_report import synthetic_run

    result, _ = synthetic_run()
    plain = report.summary_table(result)
    assert "floor" not in plain
    shares = {"exit_hang": 0.25, "callout_rtt": 0.5}
    probed = {**result, "backend": "ray",
              "floor": {"model_p50_us": 123.0, "rpc_p50_us": 45.0,
                        "metrics": {m: {"calls": 1, "floor_us": 1.0, "share_of_p50": shares.get(m)} for m in shares}}}
    table = report.summary_table(probed)
    header = table.splitlines()[1]
    assert header.split()[-1] == "floor"
    rows = {line.split()[0]: line.split()[-1] for line in table.splitlines()[2:] if line.split()}
    assert rows["exit_hang"] == "25%" and rows["callout_rtt"] == "50%" and rows["exit_srcu_wait"] == "-"
    assert "null callout's p50, 123.0 us" in table and "not subtracted" in table


@pytest.mark.parametrize("key, value, expected", [
    ("probe_count", -1, "an integer >= 0"),
    ("probe_count", 2.5, "an integer >= 0"),
    ("probe_pairs", [("p0", "p0")], "(src, dst) pairs"),
    ("probe_pairs", [("p0", "p9")], "(src, dst) pairs"),
    ("probe_pairs", "p0->p1", "(src, dst) pairs"),
])
def test_a_bad_probe_config_is_refused_naming_the_key_and_value(key, value, expected):
    with pytest.raises(ValueError) as e:
        RayConfig(**{key: value})
    assert str(e.value).startswith(f"ray config {key}: expected") and expected in str(e.value) and repr(value) in str(e.value)
