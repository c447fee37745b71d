"""Calibrating the sim to the instrument (workloads/calibration.py): fitting a one-way floor to
probed round trips, the calibration file, the sim's floor (cluster/sim.py ``floor_latency``),
``predict`` with a floor, and ``--calibration`` on the command line."""

from __future__ import annotations

import json
import math
import random
import statistics

import numpy as np
import pytest

from cluster.sim import SimConfig
from cluster.topology import LatencyDist, LatencyModel
from workloads.calibration import CALIBRATION_VERSION, Calibration, CalibrationError, PairProbe, fit_floor
from workloads.cli import main
from workloads.harness import run_scenario
from workloads.predict import compare, measured_points, predict
from workloads.scenario import load_scenario

TRUE_FLOOR = LatencyDist.lognormal(120.0, 0.35)  # one way, us: about what Python + gRPC costs


def probe_round_trips(floor: LatencyDist, n: int, seed: int) -> list[float]:
    """What the probe would measure if the instrument were the sim's model with only ``floor``: a
    request and its reply, each one ``one_way`` draw (no hops, no extra)."""
    m = LatencyModel(LatencyDist.constant(0.0), floor=floor)
    rng = random.Random(seed)
    return [m.one_way(0, 64, "callout", rng) + m.one_way(0, 64, "callout", rng) for _ in range(n)]


def overhead_of(pairs: dict[str, list[float]]) -> dict[str, dict[str, object]]:
    """An ``overhead`` entry of a ray run's results, as the probe writes it."""
    return {pair: {"n": len(xs), "rpc_p50": 1.0, "rpc_p99": 2.0, "model_p50": float(np.percentile(xs, 50)),
                   "model_p99": float(np.percentile(xs, 99)), "rpc_us": [1.0] * len(xs), "model_us": xs}
            for pair, xs in pairs.items()}


@pytest.fixture(scope="module")
def small_quickstart():
    return load_scenario("quickstart").with_overrides(["measure.exits=10", "measure.unregisters=10"])


# -- the fit --------------------------------------------------------------------------------------


def test_lognormal_fit_recovers_the_one_way_floor_from_round_trips() -> None:
    rtt = probe_round_trips(TRUE_FLOOR, 40_000, seed=3)
    fit = fit_floor(rtt, "lognormal")
    assert fit.dist == "lognormal"
    assert fit.param("median") == pytest.approx(TRUE_FLOOR.param("median"), rel=0.03)
    assert fit.param("sigma") == pytest.approx(TRUE_FLOOR.param("sigma"), rel=0.03)
    # and the fitted floor's two-draw round trip reproduces the measured one
    again = probe_round_trips(fit, 40_000, seed=4)
    assert statistics.fmean(again) == pytest.approx(statistics.fmean(rtt), rel=0.01)
    assert statistics.median(again) == pytest.approx(statistics.median(rtt), rel=0.02)


def test_lognormal_fit_is_the_method_of_moments_on_half_the_round_trip() -> None:
    rtt = [200.0, 260.0, 240.0, 300.0]
    fit = fit_floor(rtt, "lognormal")
    e_h, var_h = statistics.fmean(rtt) / 2, statistics.variance(rtt) / 2
    assert fit.mean == pytest.approx(e_h, rel=1e-12)
    variance = (math.exp(fit.param("sigma") ** 2) - 1) * fit.mean ** 2  # a lognormal's
    assert variance == pytest.approx(var_h, rel=1e-12)


def test_empirical_fit_halves_the_round_trips_and_keeps_mean_and_median() -> None:
    rtt = probe_round_trips(TRUE_FLOOR, 2_001, seed=5)
    fit = fit_floor(rtt, "empirical")
    assert fit.dist == "empirical" and len(fit.param("samples")) == len(rtt)
    assert 2 * fit.mean == pytest.approx(statistics.fmean(rtt), rel=1e-12)
    assert 2 * statistics.median(fit.param("samples")) == pytest.approx(statistics.median(rtt), rel=1e-12)
    # two independent halves: the mean of the simulated round trip is the measured one, its
    # spread narrower (half the variance)
    again = probe_round_trips(fit, 20_000, seed=6)
    assert statistics.fmean(again) == pytest.approx(statistics.fmean(rtt), rel=0.01)
    assert statistics.variance(again) == pytest.approx(statistics.variance(rtt) / 2, rel=0.1)


@pytest.mark.parametrize("rtt, method, message", [
    ([], "lognormal", r"^rtt_us: expected at least 2 round trips, got 0"),
    ([250.0], "empirical", r"^rtt_us: expected at least 2 round trips, got 1: \[250\.0\]$"),
    ([250.0, float("nan")], "lognormal", r"^rtt_us\[1\]: expected a finite round trip >= 0 \(us\), got nan$"),
    ([float("inf"), 1.0], "empirical", r"^rtt_us\[0\]: expected a finite round trip >= 0 \(us\), got inf$"),
    ([250.0, -1.0], "lognormal", r"^rtt_us\[1\]: expected a finite round trip >= 0 \(us\), got -1\.0$"),
    ([250.0, "300"], "lognormal", r"^rtt_us\[1\]: expected a finite round trip >= 0 \(us\), got '300'$"),
    ("250", "lognormal", r"^rtt_us: expected a list of round trips \(us\), got '250'$"),
    ([250.0, 260.0], "normal", r"^method: expected one of lognormal, empirical, got 'normal'$"),
    ([250.0, 250.0], "lognormal", r"^rtt_us: every round trip is 250\.0 us: no spread"),
    ([0.0, 0.0], "lognormal", r"^rtt_us: a lognormal needs a mean round trip > 0, got 0\.0$"),
])
def test_fit_refuses_bad_round_trips_naming_the_value(rtt, method, message) -> None:
    with pytest.raises(CalibrationError, match=message):
        fit_floor(rtt, method)


# -- Calibration: from a probe, and its file ---------------------------------------------------


def test_from_overhead_pools_every_pair_and_keeps_provenance() -> None:
    a, b = probe_round_trips(TRUE_FLOOR, 50, seed=1), probe_round_trips(TRUE_FLOOR, 30, seed=2)
    overhead = overhead_of({"p1->p0": b, "p0->p1": a})
    cal = Calibration.from_overhead(overhead, "lognormal", scenario="quickstart", seed=7)
    assert cal.floor == fit_floor(a + b, "lognormal")  # pooled in pair order
    assert (cal.method, cal.scenario, cal.seed, cal.samples) == ("lognormal", "quickstart", 7, 80)
    assert list(cal.pairs) == ["p0->p1", "p1->p0"]
    assert cal.pairs["p1->p0"] == PairProbe(30, overhead["p1->p0"]["model_p50"], overhead["p1->p0"]["model_p99"])
    assert "80 idle round trips over 2 pair(s) of quickstart seed 7" in cal.describe()


def test_from_overhead_names_a_bad_sample_by_pair_and_index() -> None:
    overhead = overhead_of({"p0->p1": [100.0, 200.0, 150.0]})
    overhead["p0->p1"]["model_us"][2] = -5.0
    with pytest.raises(CalibrationError, match=r"^overhead\.p0->p1\.model_us\[2\]: expected a finite round trip"
                                               r" >= 0 \(us\), got -5\.0$"):
        Calibration.from_overhead(overhead, "empirical")
    with pytest.raises(CalibrationError, match=r"^overhead\.p0->p1: expected a probe with model_us"):
        Calibration.from_overhead({"p0->p1": {"n": 3}}, "empirical")


@pytest.mark.parametrize("overhead", [None, {}])
def test_from_overhead_refuses_results_without_a_probe(overhead) -> None:
    with pytest.raises(CalibrationError, match=r"run without the instrument's probe \(not a ray run"):
        Calibration.from_overhead(overhead, "lognormal")


def test_from_results_refuses_a_sim_run(small_quickstart) -> None:
    result, _ = run_scenario(small_quickstart, "sim")
    assert "overhead" not in result
    with pytest.raises(CalibrationError, match=r"without the instrument's probe"):
        Calibration.from_results(result, "lognormal")
    result["overhead"] = overhead_of({"p0->p1": [300.0, 320.0, 310.0]})
    cal = Calibration.from_results(result, "empirical")
    assert (cal.scenario, cal.seed) == ("quickstart", result["seed"]) and cal.floor.mean == pytest.approx(155.0)


@pytest.mark.parametrize("method", ["lognormal", "empirical"])
def test_calibration_file_round_trips(tmp_path, method) -> None:
    overhead = overhead_of({"p0->p1": probe_round_trips(TRUE_FLOOR, 50, 1),
                            "p1->p0": probe_round_trips(TRUE_FLOOR, 50, 2)})
    cal = Calibration.from_overhead(overhead, method, scenario="quickstart", seed=0)
    path = cal.save(tmp_path / "cal.json")
    doc = json.loads(path.read_text())
    assert doc["version"] == CALIBRATION_VERSION == 1 and doc["floor"]["dist"] == method
    assert doc["provenance"]["pairs"] == ["p0->p1", "p1->p0"] and doc["provenance"]["samples"] == 100
    assert Calibration.load(path) == cal


def _file(tmp_path, doc) -> str:
    path = tmp_path / "cal.json"
    path.write_text(doc if isinstance(doc, str) else json.dumps(doc))
    return str(path)


GOOD = {"version": 1, "floor": {"dist": "lognormal", "median": 120.0, "sigma": 0.3}, "method": "lognormal",
        "provenance": {"scenario": "quickstart", "seed": 0, "pairs": ["p0->p1"], "samples": 50,
                       "per_pair": {"p0->p1": {"n": 50, "model_p50": 250.0, "model_p99": 400.0}}}}


@pytest.mark.parametrize("change, message", [
    (lambda d: "{not json", r": not a calibration file: not JSON"),
    (lambda d: [1, 2], r": not a calibration file: expected a JSON object, got \[1, 2\]$"),
    (lambda d: {**d, "version": 2}, r": version: expected 1, got 2$"),
    (lambda d: {k: v for k, v in d.items() if k != "version"}, r": version: expected 1, got None$"),
    (lambda d: {k: v for k, v in d.items() if k != "floor"}, r": floor: missing"),
    (lambda d: {**d, "floor": {"dist": "lognormal", "median": -1, "sigma": 0.3}},
     r": floor\.median: must be > 0, got -1$"),
    (lambda d: {**d, "floor": {"dist": "gamma", "k": 2}}, r": floor\.dist: unknown distribution 'gamma'"),
    (lambda d: {**d, "method": "guess"}, r": method: expected one of lognormal, empirical, got 'guess'$"),
    (lambda d: {**d, "provenance": {**d["provenance"], "seed": "zero"}},
     r": provenance\.seed: expected an integer, got 'zero'$"),
    (lambda d: {**d, "provenance": {**d["provenance"], "per_pair": {"p0->p1": {"n": 50, "model_p50": "x",
                                                                                 "model_p99": 1.0}}}},
     r": provenance\.per_pair\.p0->p1\.model_p50: expected a finite number \(us\), got 'x'$"),
    (lambda d: {**d, "provenance": {**d["provenance"], "samples": 49}},
     r": provenance\.samples: expected the pairs' total 50, got 49$"),
])
def test_load_names_the_file_and_the_bad_key(tmp_path, change, message) -> None:
    path = _file(tmp_path, change(json.loads(json.dumps(GOOD))))
    with pytest.raises(CalibrationError, match="^" + path.replace(".", r"\.") + message):
        Calibration.load(path)


def test_load_a_missing_file(tmp_path) -> None:
    with pytest.raises(CalibrationError, match=r"nope\.json: no such calibration file$"):
        Calibration.load(tmp_path / "nope.json")
    assert Calibration.load(_file(tmp_path, GOOD)).floor == LatencyDist.lognormal(120.0, 0.3)


# -- the calibrated sim ---------------------------------------------------------------------------


def test_sim_config_validates_the_floor() -> None:
    assert SimConfig(floor_latency={"dist": "empirical", "samples": [3, 4]}).floor_dist == LatencyDist.empirical([3, 4])
    assert SimConfig().floor_dist is None
    with pytest.raises(ValueError, match=r"^floor_latency\.samples\[0\]: must be >= 0, got -3$"):
        SimConfig(floor_latency={"dist": "empirical", "samples": [-3]})
    with pytest.raises(ValueError, match=r"^floor_latency: expected a number \(us\) or a mapping"):
        SimConfig(floor_latency="fast")


def test_a_constant_floor_adds_twice_itself_to_the_callout_round_trip(small_quickstart) -> None:
    base, _ = run_scenario(small_quickstart, "sim")
    floor_us = 50.0
    cal, _ = run_scenario(small_quickstart, "sim", sim_extra={"floor_latency": LatencyDist.constant(floor_us)})
    p50, p50_cal = base["metrics"]["callout_rtt"]["p50"], cal["metrics"]["callout_rtt"]["p50"]
    # a request and its reply each cross the floor once; the histogram's precision is 0.1 %
    assert abs((p50_cal - p50) - 2 * floor_us) <= 0.002 * p50_cal
    assert cal["trace_digest"] != base["trace_digest"]


def test_a_constant_floor_is_one_more_hop_latency_on_one_hop(small_quickstart) -> None:
    """Every message of a one-hop topology crosses one hop, so a constant floor F and F more
    per hop are the same model: the same run, in the sim and in predict."""
    floor = LatencyDist.constant(30.0)
    hop = small_quickstart.get("topology.hop_latency")
    wider = small_quickstart.with_value("topology.hop_latency", hop + 30.0)
    a, _ = run_scenario(small_quickstart, "sim", sim_extra={"floor_latency": floor})
    b, _ = run_scenario(wider, "sim")
    assert a["trace_digest"] == b["trace_digest"] and a["metrics"] == b["metrics"]
    pa, pb = predict(small_quickstart, floor=floor), predict(wider)
    for m in pa.metrics:
        assert pa.metrics[m].mean_us == pytest.approx(pb.metrics[m].mean_us, rel=1e-9)
    assert predict(small_quickstart).metrics["unregister_srcu_wait"].mean_us < pa.metrics["unregister_srcu_wait"].mean_us


# -- the command line -----------------------------------------------------------------------------


def _cal_file(tmp_path) -> str:
    rtt = probe_round_trips(TRUE_FLOOR, 60, seed=9)
    cal = Calibration.from_overhead(overhead_of({"p0->p1": rtt}), "lognormal", scenario="quickstart", seed=0)
    return str(cal.save(tmp_path / "cal.json"))


def test_run_with_a_calibration_records_it(tmp_path, capsys) -> None:
    path = _cal_file(tmp_path)
    small = ["--set", "measure.exits=5", "--set", "measure.unregisters=5"]
    assert main(["run", "quickstart", "--out", str(tmp_path / "plain"), *small]) == 0
    assert main(["run", "quickstart", "--out", str(tmp_path / "cal"), "--calibration", path, *small]) == 0
    assert "calibrated: floor lognormal" in capsys.readouterr().out
    plain = json.loads((tmp_path / "plain" / "results.json").read_text())
    cal = json.loads((tmp_path / "cal" / "results.json").read_text())
    floor = Calibration.load(path).floor
    assert "calibration" not in plain
    assert cal["calibration"] == {"file": path, "floor": floor.to_spec(), "method": "lognormal"}
    # the floor is under every callout: the round trip's p50 grows by about two floors' medians
    grew = cal["metrics"]["callout_rtt"]["p50"] - plain["metrics"]["callout_rtt"]["p50"]
    assert 1.5 * floor.param("median") < grew < 3 * floor.mean
    # predict --compare predicts each run with the floor it recorded
    run_dir = tmp_path / "cal"
    (c,) = compare(run_dir)
    s = load_scenario("quickstart").with_overrides(["measure.exits=5", "measure.unregisters=5"])
    expected = predict(s, measured_points(run_dir), floor)
    (c_plain,) = compare(tmp_path / "plain")
    for m in expected.metrics:
        assert c.prediction.metrics[m].mean_us == expected.metrics[m].mean_us
        assert c_plain.prediction.metrics[m].mean_us == predict(s, measured_points(tmp_path / "plain")).metrics[m].mean_us


def test_sweep_and_predict_take_a_calibration(tmp_path, capsys) -> None:
    path = _cal_file(tmp_path)
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "--vary", "srcu.scope=global,per_mm", "--out", str(out), "--calibration",
                 path, "--set", "measure.unregisters=3", "--set", "measure.exits=1"]) == 0
    for scope in ("global", "per_mm"):
        doc = json.loads((out / f"srcu.scope={scope}" / "results.json").read_text())
        assert doc["calibration"]["file"] == path
    capsys.readouterr()
    assert main(["predict", "quickstart", "--calibration", path]) == 0
    assert "calibrated: floor lognormal" in capsys.readouterr().out


@pytest.mark.parametrize("argv, expected", [
    (["run", "quickstart", "--backend", "ray", "--calibration", "CAL"], "applies to --backend sim only, got --backend ray"),
    (["sweep", "quickstart", "--backend", "ray", "--calibration", "CAL"], "applies to --backend sim only"),
    (["run", "quickstart", "--calibration", "MISSING"], "no such calibration file"),
    (["predict", "quickstart", "--calibration", "NOTJSON"], "not a calibration file: not JSON"),
    (["predict", "quickstart", "--compare", "DIR", "--calibration", "CAL"], "--calibration do not apply with --compare"),
])
def test_bad_calibration_use_exits_2_with_one_line(tmp_path, capsys, argv, expected) -> None:
    (tmp_path / "bad.json").write_text("{oops")
    subs = {"CAL": _cal_file(tmp_path), "MISSING": str(tmp_path / "missing.json"),
            "NOTJSON": str(tmp_path / "bad.json"), "DIR": str(tmp_path)}
    assert main([subs.get(a, a) for a in argv]) == 2
    err = capsys.readouterr().err.strip()
    assert expected in err and len(err.splitlines()) == 1


# -- mmusim calibrate ---------------------------------------------------------------------------

def _as_ray_run(tmp_path, name: str, overhead) -> str:
    """A finished run of quickstart, made on the sim and recorded as a ray run's would be: its
    backend ray and, unless None, the probe's ``overhead``."""
    out = tmp_path / name
    assert main(["run", "quickstart", "--out", str(out), "--set", "measure.exits=5",
                 "--set", "measure.unregisters=5"]) == 0
    doc = json.loads((out / "results.json").read_text())
    doc["backend"] = "ray"
    if overhead is None:
        doc.pop("overhead", None)
    else:
        doc["overhead"] = overhead
    (out / "results.json").write_text(json.dumps(doc))
    return str(out)


def test_calibrate_from_a_ray_run_fits_writes_and_compares(tmp_path, capsys) -> None:
    idle = probe_round_trips(TRUE_FLOOR, 200, 1)
    loaded = probe_round_trips(LatencyDist.lognormal(400.0, 0.5), 200, 2)
    overhead = {pair: {**entry, "loaded_us": loaded} for pair, entry in overhead_of({"p0->p1": idle}).items()}
    ray_dir = _as_ray_run(tmp_path, "ray", overhead)
    out = tmp_path / "cal"
    capsys.readouterr()
    assert main(["calibrate", "quickstart", "--from", ray_dir, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    cal = Calibration.load(out / "calibration.json")
    assert cal.probe == "loaded" and cal.method == "lognormal" and cal.samples == 200  # the default: under load
    assert cal.floor == fit_floor(loaded, "lognormal")
    doc = json.loads((out / "agreement.json").read_text())
    rows = {r["metric"]: r for r in doc["metrics"]}
    ray = json.loads((tmp_path / "ray" / "results.json").read_text())
    sim = json.loads((out / "sim" / "results.json").read_text())
    assert sim["backend"] == "sim" and sim["calibration"]["floor"] == cal.floor.to_spec()
    for metric, row in rows.items():  # each ratio is the sim's figure over the ray run's
        for q in ("p50", "p99"):
            r, s = ray["metrics"][metric][q], sim["metrics"][metric][q]
            assert row["ratio"][q] == (s / r if r and s is not None else None)
    assert rows["exit_srcu_wait"]["within"] == {"p50": None, "p99": None}  # no goal for it
    assert "sim/ray" in printed and "goal (callout_rtt, invalidate_range, unregister_hang, exit_hang)" in printed
    # the idle probe instead, and an empirical fit
    assert main(["calibrate", "quickstart", "--from", ray_dir, "--out", str(tmp_path / "idle"), "--probe", "idle",
                 "--method", "empirical"]) == 0
    assert Calibration.load(tmp_path / "idle" / "calibration.json").floor == fit_floor(idle, "empirical")


def test_agreement_names_each_miss_and_by_how_much() -> None:
    from workloads.calibration import agreement, agreement_table

    def result(**p50s):
        return {"metrics": {m: {"p50": v, "p99": 2 * v if v is not None else None} for m, v in p50s.items()}}

    rows = agreement(result(callout_rtt=100.0, exit_hang=100.0, exit_srcu_wait=10.0, unregister_hang=None),
                     result(callout_rtt=120.0, exit_hang=50.0, exit_srcu_wait=100.0, unregister_hang=5.0))
    by = {r.metric: r for r in rows}
    assert by["callout_rtt"].within == {"p50": True, "p99": True} and by["callout_rtt"].ratio["p50"] == 1.2
    assert by["exit_hang"].within == {"p50": False, "p99": True}  # 0.5x: below 0.75; the p99 0.5x is just in
    assert by["exit_srcu_wait"].within == {"p50": None, "p99": None}  # 10x, but no goal
    assert by["unregister_hang"].ratio == {"p50": None, "p99": None}  # no ray figure to compare with
    table = agreement_table(rows)
    assert "MISS exit_hang p50: the sim's is 0.50x the ray run's, lower than 0.75x" in table
    assert "every goal met" not in table and table.count("MISS ") == 2  # the row's mark and the line
    assert "every goal met" in agreement_table([by["callout_rtt"]])


@pytest.mark.parametrize("overhead, backend, expected", [
    (None, "ray", "without the instrument's probe"),
    ({"p0->p1": {"model_us": [1.0, 2.0]}}, "ray", "expected a probe with loaded_us"),
    (None, "sim", "a sim run; calibrate from a ray run"),
])
def test_calibrate_refuses_a_run_it_cannot_calibrate_from(tmp_path, capsys, overhead, backend, expected) -> None:
    run = _as_ray_run(tmp_path, "run", overhead)
    if backend == "sim":
        doc = json.loads((tmp_path / "run" / "results.json").read_text())
        (tmp_path / "run" / "results.json").write_text(json.dumps({**doc, "backend": "sim"}))
    capsys.readouterr()
    assert main(["calibrate", "quickstart", "--from", run, "--out", str(tmp_path / "cal")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmusim: ") and expected in err and err.count("\n") == 1
    assert not (tmp_path / "cal" / "calibration.json").exists()


def test_calibrate_from_refuses_overrides_and_another_scenario(tmp_path, capsys) -> None:
    run = _as_ray_run(tmp_path, "run", overhead_of({"p0->p1": [1.0, 2.0, 3.0]}))
    assert main(["calibrate", "quickstart", "--from", run, "--set", "seed=3"]) == 2
    assert "--set, --seed, --semantics, --address and the TLS options do not apply" in capsys.readouterr().err
    assert main(["calibrate", "heavy-tail", "--from", run]) == 2
    assert "a run of 'quickstart', not of 'heavy-tail'" in capsys.readouterr().err
