"""The analytic model of the global-SRCU hang (workloads/predict.py, docs/srcu-hang-model.md):
its wait rule against nodes/srcu.py itself, exact cases, two points of hang-vs-activity against
the sim, and the scenarios it refuses."""

from __future__ import annotations

import asyncio
import math

import numpy as np
import pytest

from nodes.runtime import Runtime
from nodes.srcu import Srcu
from workloads.cli import main
from workloads.harness import run_scenario
from workloads.predict import (
    MeasurementPoint, NotModelled, jiffy_us, points_of, predict, srcu_wait,
)
from workloads.scenario import load_scenario

JIFFY = 1000.0


# -- the wait rule is the code's --------------------------------------------------------------


@pytest.mark.parametrize("expedited", [False, True])
@pytest.mark.parametrize("residual", [0.0, 3.0, 7.0, 52.0, 58.0, 120.0, 999.0, 1003.0, 1010.0, 2600.0, 4321.0])
def test_srcu_wait_is_what_synchronize_srcu_waits_for_one_reader(vrun, residual, expedited):
    """A reader in flight that ends ``residual`` us after synchronize_srcu() is called (no grace
    period running): the wait the model derives is the wait nodes/srcu.py gives, exactly."""
    async def body(rt: Runtime) -> float:
        srcu = Srcu(rt, 4, name="s", jiffy_us=JIFFY)
        holding = asyncio.Event()

        async def reader() -> None:
            idx = srcu.read_lock(1)
            holding.set()
            await rt.sleep(residual)
            srcu.read_unlock(idx, 1)

        if residual > 0:
            rt.spawn(reader(), name="reader")
            await holding.wait()  # the reader holds its index before the caller starts
        t0 = rt.now()
        await (srcu.synchronize_expedited() if expedited else srcu.synchronize())
        return rt.now() - t0

    measured = vrun(body)
    assert measured == srcu_wait(residual, jiffy=JIFFY, trycount=12 if expedited else 2)


def test_srcu_wait_rounds_to_the_fast_path_checks_then_to_jiffies():
    assert srcu_wait(0.0, jiffy=JIFFY) == 0.0
    assert srcu_wait(4.0, jiffy=JIFFY) == 5.0  # the second check, 5 us after the first
    assert srcu_wait(6.0, jiffy=JIFFY) == 1005.0  # the worker, a jiffy after the last failed check
    assert srcu_wait(1006.0, jiffy=JIFFY) == 2005.0
    assert srcu_wait(54.0, jiffy=JIFFY, trycount=12) == 55.0  # expedited: 12 checks
    assert srcu_wait(56.0, jiffy=250.0, trycount=12) == 305.0


# -- exact cases --------------------------------------------------------------------------------


def _one_stream(**knobs):
    """One stream of munmaps with constant latencies on p0's only background mm."""
    s = load_scenario("hang-vs-activity").with_overrides(
        ["sweep=null", "mms=1", "activity.streams=1", "activity.mix={munmap: 1}", "activity.pages=16"]
        + [f"{k}={v}" for k, v in knobs.items()])
    return s


def _exact(sections: list[float], cycle: float, values: np.ndarray) -> np.ndarray:
    """P(W <= b) for one stream whose cycle holds constant sections ``sections``: the stream is
    in a section with more than b left with probability sum((d - b)^+) / cycle."""
    return np.array([1.0 - sum(max(d - b, 0.0) for d in sections) / cycle for b in values])


@pytest.mark.parametrize("callout", [50, 700])
def test_one_stream_of_constant_sections_gives_the_closed_form(callout):
    """munmap: range_start (round trip 2 x (1 + callout) us, plus the GRU's flush of 16 pages,
    2 us each) and range_end (the round trip); the cycle adds the 1 ms Poisson gap and the GRU's
    faults back (two pages, two round trips each, the second page a hit 1 time in 16)."""
    s = _one_stream(**{"callout.latency": callout})
    rtt = 2 * (1.0 + callout)
    sections = [rtt + 2.0 * 16, rtt]
    cycle = 1000.0 + sum(sections) + (4 - 1 / 16) * 2 * 1.0
    late = [MeasurementPoint("unregister_srcu_wait", 0, 5e5)]  # long after the start: no age bound
    w = predict(s, late).metrics["unregister_srcu_wait"]
    assert np.allclose(np.cumsum(w.probs), _exact(sections, cycle, w.values_us), atol=1e-9)
    jiffies = math.ceil((max(sections) - 5.0) / JIFFY)
    assert w.values_us[-1] == 5.0 + JIFFY * jiffies  # the longest possible wait
    assert w.p_no_wait == pytest.approx(1.0 - sum(sections) / cycle)


def test_no_activity_means_no_wait():
    s = load_scenario("hang-vs-activity").with_value("sweep", None).with_value("activity.streams", 0)
    p = predict(s)
    for w in p.metrics.values():
        assert (w.mean_us, w.p99_us, w.p_no_wait) == (0.0, 0.0, 1.0)


def test_per_mm_srcu_and_put_leave_no_wait_to_predict_but_a_global_exit_still_waits():
    s = load_scenario("hang-vs-activity").with_overrides(["sweep=null", "activity.streams=4"])
    assert predict(s).metrics["unregister_srcu_wait"].mean_us > 400
    per_mm = predict(s.with_value("srcu.scope", "per_mm"))
    assert all(w.mean_us == 0.0 and w.p_no_wait == 1.0 for w in per_mm.metrics.values())
    put = predict(s.with_value("teardown", "put"))
    assert put.metrics["unregister_srcu_wait"].mean_us == 0.0
    assert put.metrics["exit_srcu_wait"].mean_us > 400
    assert any("call_srcu" in n for n in put.notes)


def test_the_jiffy_comes_from_kernel_hz():
    assert jiffy_us(load_scenario("quickstart")) == 1000.0  # HZ=1000, the default
    assert jiffy_us(load_scenario("quickstart").with_value("kernel.hz", 250)) == 4000.0


# -- against the sim ----------------------------------------------------------------------------


@pytest.mark.parametrize("overrides", [
    ["activity.streams=4"],  # the scenario's own counts: 4 streams on p0, a wait nearly certain there
    ["activity.streams=1", "measure.unregisters=100", "measure.exits=50", "duration=500ms"],  # rho itself
])
def test_prediction_matches_the_sim_on_hang_vs_activity(overrides):
    s = load_scenario("hang-vs-activity").with_overrides(["sweep=null"] + overrides)
    result, events = run_scenario(s)
    p = predict(s, points_of(events))
    for metric, w in p.metrics.items():
        got = [e["value_us"] for e in events if e["metric"] == metric]
        assert len(got) == w.n == s.get("measure." + metric.split("_")[0] + "s")
        assert 0.8 <= w.mean_us / result["metrics"][metric]["mean"] <= 1.25, (metric, w.mean_us, result["metrics"][metric])
        assert abs(w.p_no_wait - sum(v == 0 for v in got) / len(got)) < 0.15
        assert w.sample_p99_us == result["metrics"][metric]["p99"] == 1005.0
    # the model puts every stream on p0 (mms=4 per partition): so does the harness
    assert {e["partition"] for e in events if e["metric"] == "callout_rtt" and e["detail"] != "release"} == {"p0"}


# -- refused --------------------------------------------------------------------------------------


@pytest.mark.parametrize("override, knob", [
    ("secondary.kind=xpmem", "secondary.kind"),
    ("activity.mix={munmap: 1, ksm: 1}", "activity.mix.ksm"),
    ("semantics=rcu", "semantics"),
    ("callout.latency={dist: pareto, scale: 20, alpha: 0.9}", "callout.latency"),
])
def test_what_the_model_does_not_cover_is_refused_naming_the_knob(override, knob):
    s = load_scenario("quickstart").with_overrides([override])
    with pytest.raises(NotModelled) as e:
        predict(s)
    assert knob in str(e.value) and "\n" not in str(e.value)


def test_predict_prints_one_row_per_sweep_point_and_metric(capsys):
    assert main(["predict", "hang-vs-activity"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if "_srcu_wait " in line]
    assert [(r[0], r[1]) for r in rows] == [(v, m) for v in ("0", "1", "2", "4", "8")
                                            for m in ("unregister_srcu_wait", "exit_srcu_wait")]
    assert rows[0][4] == "0.0" and float(rows[-1][4].replace(",", "")) > 900  # mean: none at 0 streams, ~a jiffy at 8


@pytest.mark.parametrize("argv, expected", [
    (["predict", "no-such-scenario"], "no-such-scenario"),
    (["predict", "quickstart", "--sweep"], "sweep"),
    (["predict", "quickstart", "--set", "secondary.kind=kvm"], "secondary.kind"),
    (["predict", "quickstart", "--compare", "/nonexistent/dir"], "/nonexistent/dir"),
    (["predict", "quickstart", "--compare", ".", "--set", "activity.streams=1"], "--compare"),
])
def test_predict_bad_input_exits_2_with_one_line(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmusim: ") and err.count("\n") == 1 and expected in err


def test_compare_sets_a_finished_run_beside_its_prediction(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "hang-vs-activity", "--set", "activity.streams=2", "--out", str(out)]) == 0
    capsys.readouterr()
    assert main(["predict", "hang-vs-activity", "--compare", str(out)]) == 0
    rows = {line.split()[1]: line.split() for line in capsys.readouterr().out.splitlines() if "_srcu_wait " in line}
    assert set(rows) == {"unregister_srcu_wait", "exit_srcu_wait"}
    for metric, row in rows.items():
        n, pred, meas, ratio = int(row[2]), *(float(x.replace(",", "")) for x in (row[5], row[7], row[8]))
        assert n == (10 if metric.startswith("unregister") else 5)
        assert ratio == pytest.approx(pred / meas, abs=0.006)
    assert main(["predict", "quickstart", "--compare", str(out)]) == 2  # a run of another scenario
    err = capsys.readouterr().err
    assert "hang-vs-activity" in err and "quickstart" in err and err.count("\n") == 1
