"""workloads/report.py: the files a run and a sweep leave behind (results.json in the DESIGN
schema, events.csv, hang.png; sweep.json, sweep.csv, sweep.png), the summary table, and
``render`` re-creating the plots from the files or refusing a directory that is not a finished
run or sweep with one line naming the file. Synthetic results from HdrHistogram, seeded."""

from __future__ import annotations

import csv
import gc
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # before pyplot, which the leak test imports

import matplotlib.image  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from workloads import report  # noqa: E402
from workloads.metrics import PERCENTILES, HdrHistogram, metric_result, samples_beyond  # noqa: E402
from workloads.report import ReportError  # noqa: E402

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
DESIGN_KEYS = {"scenario", "backend", "seed", "config", "metrics", "invariants"}
SUMMARY_KEYS = {"unit", "n", "p50", "p90", "p99", "p999", "max", "mean"}
# (lognormal median us, sigma, events): exit_hang spans many decades, callout_rtt less than two
SHAPES = {"exit_hang": (400.0, 2.0, 3000), "exit_srcu_wait": (300.0, 1.5, 3000), "unregister_hang": (200.0, 1.0, 500),
          "unregister_srcu_wait": (150.0, 1.0, 500), "invalidate_range": (80.0, 0.5, 4000), "callout_rtt": (40.0, 0.2, 8000)}
EMPTY = ("exit_release", "unregister_release")


def synthetic_run(seed: int = 7, scale: float = 1.0, shapes=SHAPES, scenario: str = "quickstart"):
    """A result dict as the harness makes it and one event per recorded value."""
    rng = np.random.default_rng(seed)
    metrics, events = {}, []
    for name, (median, sigma, n) in shapes.items():
        values = rng.lognormal(np.log(median * scale), sigma, n)
        h = HdrHistogram()
        h.record(values)
        metrics[name] = metric_result(h, seed=seed, metric=name)
        ends = np.cumsum(rng.exponential(100.0, n))
        for t, v, mm in zip(ends, values, rng.integers(0, 4, n)):
            events.append({"metric": name, "t_us": float(t), "value_us": float(v), "partition": f"p{mm % 2}",
                           "mm": None if mm == 3 else int(mm), "detail": "munmap, 2 secondaries"})
    for name in EMPTY:
        metrics[name] = metric_result(HdrHistogram(), seed=seed, metric=name)
    result = {"scenario": scenario, "backend": "sim", "seed": seed,
              "config": {"partitions": 2, "activity": {"streams": 4, "mix": {"munmap": 1.0}}, "callout": {"latency": 50}},
              "metrics": metrics, "invariants": {"checked": 12345, "violations": 0, "details": []}, "faults": [],
              "wall_time_s": 3.25, "virtual_time_us": 1.5e6, "trace_digest": "0123456789abcdef0123"}
    return result, events


def without_intervals(result):
    """``result`` as results.json was written before metrics carried ci95 and beyond."""
    return {**result, "metrics": {name: {k: v for k, v in m.items() if k not in ("ci95", "beyond")}
                                  for name, m in result["metrics"].items()}}


@pytest.fixture(scope="module")
def run_data():
    return synthetic_run()


def assert_real_png(path: Path, min_bytes: int = 10_000) -> np.ndarray:
    data = path.read_bytes()
    assert data[:8] == PNG_SIGNATURE
    assert len(data) > min_bytes
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] >= 300 and img.shape[1] >= 400
    # not a blank canvas: many distinct colours, and a good share of non-white pixels
    rgb = (img[..., :3] * 255).astype(np.uint8).reshape(-1, 3)
    assert len(np.unique(rgb, axis=0)) > 50
    assert (rgb.min(axis=1) < 200).mean() > 0.02
    return img


def read_csv(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.reader(f))


def assert_intervals(doc) -> None:
    """Each metric of a results.json carries ci95 (p50 and p99 inside their intervals) and
    the events beyond each percentile."""
    for name, m in doc["metrics"].items():
        assert m["beyond"] == {k: samples_beyond(pct, m["n"]) for k, pct in PERCENTILES.items()}, name
        if not m["n"]:
            assert m["ci95"] == {"p50": None, "p99": None}
            continue
        for key in ("p50", "p99"):
            lo, hi = m["ci95"][key]
            assert lo <= m[key] <= hi, (name, key)


# -- write_run ------------------------------------------------------------------------------


def test_write_run_writes_results_events_and_plot(tmp_path, run_data):
    result, events = run_data
    out = tmp_path / "new" / "run"  # created, parents too
    written = report.write_run(out, result, events)
    assert written == [out / "results.json", out / "events.csv", out / "hang.png"]
    assert all(p.is_file() for p in written)
    assert sorted(p.name for p in out.iterdir()) == ["events.csv", "hang.png", "results.json"]  # no temp files left

    doc = json.loads((out / "results.json").read_text(encoding="utf-8"))
    assert DESIGN_KEYS <= doc.keys()
    assert list(doc)[:6] == ["scenario", "backend", "seed", "config", "metrics", "invariants"]
    assert doc["invariants"] == {"checked": 12345, "violations": 0, "details": []}
    assert doc["config"] == result["config"] and doc["trace_digest"] == result["trace_digest"]
    assert set(doc["metrics"]) == set(SHAPES) | set(EMPTY)
    for name, m in doc["metrics"].items():
        assert SUMMARY_KEYS <= m.keys() and m["unit"] == "us"
        assert {k: m[k] for k in SUMMARY_KEYS} == {k: result["metrics"][name][k] for k in SUMMARY_KEYS}
        again = HdrHistogram.from_json(m["histogram"])  # the histogram round-trips
        assert again.summary() == {k: result["metrics"][name][k] for k in again.summary()}
    assert doc["metrics"]["exit_release"]["n"] == 0 and doc["metrics"]["exit_release"]["p99"] is None
    assert_intervals(doc)
    assert doc["metrics"]["unregister_hang"]["beyond"]["p99"] == 5  # of 500 events
    assert report.load_run(out)[0] == doc

    rows = read_csv(out / "events.csv")
    assert rows[0] == ["metric", "t_us", "value_us", "partition", "mm", "detail"]
    assert len(rows) - 1 == len(events)
    for row, ev in zip(rows[1:], events):
        assert row[0] == ev["metric"] and float(row[1]) == ev["t_us"] and float(row[2]) == ev["value_us"]
        assert row[3] == ev["partition"] and row[5] == ev["detail"]
        assert row[4] == ("" if ev["mm"] is None else str(ev["mm"]))
    assert any(ev["mm"] is None for ev in events)  # the empty-mm case was exercised

    assert_real_png(out / "hang.png")


def test_output_is_deterministic_and_key_order_stable(tmp_path, run_data):
    result, events = run_data
    shuffled = dict(reversed(list(result.items())))  # key order of the input does not matter
    shuffled["metrics"] = dict(reversed(list(result["metrics"].items())))
    report.write_run(tmp_path / "a", result, events)
    report.write_run(tmp_path / "b", shuffled, events)
    for name in ("results.json", "events.csv", "hang.png"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    doc = json.loads((tmp_path / "a" / "results.json").read_text())
    assert list(doc["metrics"]) == [n for n in report.METRIC_NAMES if n in doc["metrics"]]


def test_numpy_values_and_nan_make_strict_json(tmp_path, run_data):
    result, events = run_data
    odd = {**result, "seed": np.int64(3), "wall_time_s": np.float64(2.5), "virtual_time_us": float("nan"),
           "config": {**result["config"], "weights": np.array([0.5, 0.5])}}
    report.write_run(tmp_path, odd, events[:10])
    text = (tmp_path / "results.json").read_text()
    doc = json.loads(text, parse_constant=lambda c: pytest.fail(f"non-standard JSON constant {c}"))
    assert doc["seed"] == 3 and doc["wall_time_s"] == 2.5 and doc["virtual_time_us"] is None
    assert doc["config"]["weights"] == [0.5, 0.5]


def test_many_events(tmp_path):
    """A run of 100k+ events is written and read back in one piece."""
    result, events = synthetic_run(seed=3, shapes={"callout_rtt": (40.0, 0.3, 60_000), "invalidate_range": (90.0, 1.0, 60_000)})
    report.write_run(tmp_path, result, events)
    assert len(read_csv(tmp_path / "events.csv")) == 120_001
    values = report.load_run(tmp_path)[1]
    assert {k: len(v) for k, v in values.items()} == {"callout_rtt": 60_000, "invalidate_range": 60_000}


def test_write_run_refuses_a_result_or_event_out_of_schema(tmp_path, run_data):
    result, events = run_data
    bad = {k: v for k, v in result.items() if k != "invariants"}
    with pytest.raises(ReportError, match="'invariants'"):
        report.write_run(tmp_path / "r1", bad, events)
    assert not (tmp_path / "r1").exists()
    with pytest.raises(ReportError, match=r"metrics\.exit_hang has no 'p50'"):
        report.write_run(tmp_path / "r2", {**result, "metrics": {"exit_hang": {"unit": "us", "n": 1}}}, events)
    broken = events[:5] + [{"metric": "exit_hang", "t_us": 1.0}]
    with pytest.raises(ReportError, match="event 5 has no 'value_us'"):
        report.write_run(tmp_path / "r3", result, broken)
    assert list((tmp_path / "r3").iterdir()) == []  # neither events.csv nor its temporary file


# -- the plot -------------------------------------------------------------------------------


def test_hang_figure_has_a_panel_per_metric_with_data(run_data):
    result, events = run_data
    values: dict[str, list[float]] = {}
    for ev in events:
        values.setdefault(ev["metric"], []).append(ev["value_us"])
    values["unregister_release"] = [1.0, 2.0]  # a release phase: in the table, not the hang plot
    fig = report.hang_figure(result, values)
    axes = {ax.get_title().split(" ")[0]: ax for ax in fig.axes}
    assert list(axes) == list(SHAPES)  # HANG_METRICS order, nothing else
    assert "quickstart" in fig.get_suptitle() and "sim" in fig.get_suptitle()
    for name, ax in axes.items():
        assert f"n={SHAPES[name][2]:,}" in ax.get_title()
        assert "microseconds" in ax.get_xlabel()
        labels = [t.get_text() for t in ax.get_legend().get_texts()]
        p50, p99 = result["metrics"][name]["p50"], result["metrics"][name]["p99"]
        assert any(lab.startswith("p50 = ") for lab in labels) and any(lab.startswith("p99 = ") for lab in labels)
        vlines = sorted(line.get_xdata()[0] for line in ax.get_lines())
        assert vlines == pytest.approx(sorted([p50, p99]))
    # exit_hang spans about eight decades: log x; callout_rtt (sigma 0.2) well under two: linear
    assert axes["exit_hang"].get_xscale() == "log"
    assert axes["callout_rtt"].get_xscale() == "linear"

    only_one = report.hang_figure(result, {"callout_rtt": values["callout_rtt"]})
    assert [ax.get_title().split(" ")[0] for ax in only_one.axes] == ["callout_rtt"]
    nothing = report.hang_figure(result, {})
    assert [t.get_text() for ax in nothing.axes for t in ax.texts] == ["no measured events"]


def test_hang_figure_of_values_too_close_for_sixty_bins_has_one_bin(run_data):
    result, _ = run_data
    values = {"unregister_srcu_wait": [1005.0, 1005.0 + 1e-10, 1005.0]}  # numpy refuses 60 bins here
    (ax,) = report.hang_figure(result, values).axes
    assert ax.get_title() == "unregister_srcu_wait (n=3)"
    assert ax.get_xscale() == "linear"


def test_figures_are_not_leaked(tmp_path):
    import matplotlib.pyplot as plt

    result, events = synthetic_run(seed=5, shapes={"exit_hang": (400.0, 2.0, 200), "callout_rtt": (40.0, 0.2, 200)})
    report.write_run(tmp_path / "warm", result, events)
    gc.collect()
    before = sum(isinstance(o, Figure) for o in gc.get_objects())
    for i in range(2):
        report.write_run(tmp_path / str(i), result, events)
    report.render(tmp_path / "0")
    gc.collect()
    assert sum(isinstance(o, Figure) for o in gc.get_objects()) == before
    assert plt.get_fignums() == []  # nothing went through pyplot


# -- render ---------------------------------------------------------------------------------


def test_render_recreates_the_plot_and_returns_the_table(tmp_path, run_data):
    result, events = run_data
    report.write_run(tmp_path, result, events)
    original = (tmp_path / "hang.png").read_bytes()
    (tmp_path / "hang.png").unlink()
    text = report.render(tmp_path)
    assert (tmp_path / "hang.png").read_bytes() == original
    assert_real_png(tmp_path / "hang.png")
    assert text == report.summary_table(result)
    rows = {line.split()[0]: line.split() for line in text.splitlines()}
    for name in SHAPES:
        assert rows[name][1] == f"{SHAPES[name][2]:,}"
    assert "invariants: 12,345 checked, 0 violations" in text or "invariants: 12345 checked, 0 violations" in text


# -- summary_table --------------------------------------------------------------------------


def test_summary_table_rows_dashes_and_invariants(run_data):
    result, _ = run_data
    text = report.summary_table(result)
    lines = text.splitlines()
    assert lines[0].split()[:3] == ["quickstart", "backend=sim", "seed=7"]
    header = lines[1].split()
    assert header[0] == "metric" and header[1] == "n" and "p50" in header and "mean" in header
    assert all(col in lines[1] for col in ("p50", "p90", "p99", "max", "mean"))
    table = lines[1:1 + 1 + len(SHAPES) + len(EMPTY)]
    assert len({len(line) for line in table}) == 1  # aligned: every row as wide as the header
    rows = {line.split()[0]: line.split() for line in table[1:]}
    assert list(rows) == [n for n in report.METRIC_NAMES if n in rows]
    # n, p50, its 95% CI, p90, p99, its 95% CI, max, mean
    for name in EMPTY:
        assert rows[name][1:] == ["0", "-", "-", "-", "-", "-", "-", "-"]
    eh = result["metrics"]["exit_hang"]
    assert rows["exit_hang"][2] == report._fmt(eh["p50"]) and rows["exit_hang"][7] == report._fmt(eh["max"])
    lo, hi = eh["ci95"]["p99"]
    assert rows["exit_hang"][6] == f"{report._fmt(lo)}..{report._fmt(hi)}"
    assert "-" not in rows["exit_hang"]
    assert lines[-1] == "invariants: 12345 checked, 0 violations"
    assert "faults" not in text


def thin(n: int, seed: int = 1):
    """A result whose every metric has ``n`` events."""
    return synthetic_run(seed=seed, shapes={name: (median, sigma, n) for name, (median, sigma, _) in SHAPES.items()})[0]


def test_summary_table_marks_a_percentile_with_fewer_than_10_events_beyond_it():
    lines = report.summary_table(thin(50)).splitlines()
    header = lines[1]
    row = next(line for line in lines if line.startswith("exit_hang"))
    # 50 events: 25 beyond p50, 5 beyond p90, 0 beyond p99; a mark ends the cell, a space else
    cells = row.split()
    assert not cells[2].endswith("*") and cells[4].endswith("*") and cells[5].endswith("*")
    assert header.index("p90 us") + len("p90 us") + 1 == row.index(cells[4]) + len(cells[4])  # the mark under its place
    assert len({len(line) for line in lines[1:1 + 1 + len(SHAPES) + len(EMPTY)]}) == 1  # still aligned
    assert "* fewer than 10 events beyond this percentile" in "\n".join(lines)
    assert any(line.startswith("95% CI: bootstrap over the metric's events") for line in lines)
    plenty = report.summary_table(thin(1000))  # 10 beyond p99: nothing marked, no footnote
    assert "*" not in plenty


def test_an_old_result_without_intervals_still_renders(tmp_path, run_data):
    result, events = run_data
    old = without_intervals(thin(50))
    report.write_run(tmp_path / "old", old, events[:100])
    text = report.render(tmp_path / "old")
    assert "95% CI" not in text and ".." not in text  # no interval columns
    assert "* fewer than 10 events beyond" in text  # the mark needs only n
    header = text.splitlines()[1].split()
    assert header[:4] == ["metric", "n", "p50", "us"]
    key, values = "seed", [1, 2]
    report.write_sweep(tmp_path / "sweep", key, values, [old, result])
    runs = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["runs"]
    assert "ci95" not in runs[0]["metrics"]["exit_hang"] and "ci95" in runs[1]["metrics"]["exit_hang"]
    rows = [r for r in read_csv(tmp_path / "sweep" / "sweep.csv")[1:] if r[1] == "exit_hang"]
    assert rows[0][9:] == ["", "", "", ""] and all(rows[1][9:])


def test_a_result_with_a_malformed_interval_is_refused(tmp_path, run_data):
    result, events = run_data
    bad = {**result, "metrics": {**result["metrics"], "exit_hang": {**result["metrics"]["exit_hang"], "ci95": {"p50": [1.0]}}}}
    with pytest.raises(ReportError, match=r"metrics\.exit_hang\.ci95\.p50 is not \[lo, hi\]: \[1\.0\]"):
        report.write_run(tmp_path, bad, events)


def test_summary_table_violations_and_faults(run_data):
    result, _ = run_data
    details = [f"oracle {i}: a secondary still maps a freed frame" for i in range(7)]
    bad = {**result, "invariants": {"checked": 10, "violations": 7, "details": details},
           "faults": ["p1 crashed at 1000 us", "p1 fenced by p0"]}
    text = report.summary_table(bad)
    assert "invariants: 10 checked, 7 violations" in text
    assert details[0] in text and details[4] in text and details[5] not in text
    assert "... and 2 more" in text
    assert "faults: 2" in text and "p1 fenced by p0" in text


# -- write_sweep ----------------------------------------------------------------------------


# a sweep's runs are smaller (every PNG costs matplotlib most of a second)
SWEEP_SHAPES = {"exit_hang": (400.0, 2.0, 500), "unregister_srcu_wait": (100.0, 1.0, 300), "callout_rtt": (40.0, 0.2, 800)}


def make_sweep(out: Path, key: str, values: list, scales: list[float]) -> list[dict]:
    results = []
    for i, (value, scale) in enumerate(zip(values, scales)):
        result, events = synthetic_run(seed=100 + i, scale=scale, shapes=SWEEP_SHAPES, scenario="hang-vs-activity")
        report.write_run(report.run_dir(out, key, value), result, events)
        results.append(result)
    return results


def test_write_sweep_numeric_knob(tmp_path):
    key, values = "activity.streams", [1, 16, 256]
    results = make_sweep(tmp_path, key, values, [1, 9, 81])
    written = report.write_sweep(tmp_path, key, values, results)
    assert written == [tmp_path / "sweep.json", tmp_path / "sweep.csv", tmp_path / "sweep.png"]

    sweep = json.loads((tmp_path / "sweep.json").read_text())
    assert sweep["key"] == key and sweep["values"] == values
    assert [r["value"] for r in sweep["runs"]] == values
    for run, result in zip(sweep["runs"], results):
        assert run["dir"] == f"{key}={run['value']}"
        assert (tmp_path / run["dir"] / "results.json").is_file()
        keys = report.SUMMARY_KEYS + ("ci95", "beyond")
        assert run["metrics"]["exit_hang"] == {k: result["metrics"]["exit_hang"][k] for k in keys}
        assert "histogram" not in run["metrics"]["exit_hang"]

    rows = read_csv(tmp_path / "sweep.csv")
    assert rows[0] == ["value", "metric", "n", "p50", "p90", "p99", "p999", "max", "mean",
                       "p50_ci_lo", "p50_ci_hi", "p99_ci_lo", "p99_ci_hi"]
    metrics = set(SWEEP_SHAPES) | set(EMPTY)
    assert len(rows) - 1 == len(values) * len(metrics)
    assert {(r[0], r[1]) for r in rows[1:]} == {(str(v), m) for v in values for m in metrics}
    eh = {int(r[0]): float(r[5]) for r in rows[1:] if r[1] == "exit_hang"}  # p99 grows with the scale
    assert [eh[v] for v in values] == sorted(eh.values())
    assert [r[2:] for r in rows[1:] if r[1] == "exit_release"] == [["0"] + [""] * 10] * len(values)
    for r, result in zip([r for r in rows[1:] if r[1] == "exit_hang"], results):  # the intervals, as results.json has them
        ci = result["metrics"]["exit_hang"]["ci95"]
        assert [float(x) for x in r[9:]] == ci["p50"] + ci["p99"]

    assert_real_png(tmp_path / "sweep.png")
    fig = report.sweep_figure(sweep)
    assert [ax.get_title().split(" ")[0] for ax in fig.axes] == list(SWEEP_SHAPES)
    ax = fig.axes[0]
    assert ax.get_xscale() == "log" and ax.get_xlabel() == key and "microseconds" in ax.get_ylabel()
    assert [line.get_label() for line in ax.get_lines()] == ["p50", "p90", "p99", "max"]
    assert list(ax.get_lines()[0].get_xdata()) == values


def test_write_sweep_categorical_knob_and_render(tmp_path):
    key, values = "srcu.scope", ["global", "per_mm"]
    results = make_sweep(tmp_path, key, values, [10, 1])
    report.write_sweep(tmp_path, key, values, results)
    fig = report.sweep_figure(json.loads((tmp_path / "sweep.json").read_text()))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == values and ax.get_xscale() == "linear"

    for path in [tmp_path / "sweep.png", tmp_path / "srcu.scope=global" / "hang.png"]:
        path.unlink()
    text = report.render(tmp_path)
    assert_real_png(tmp_path / "sweep.png")
    assert_real_png(tmp_path / "srcu.scope=global" / "hang.png")
    assert text.splitlines()[0].startswith("sweep of srcu.scope over 2 values")
    *blocks, footnote = text.split("\n\n")[1:]
    assert footnote.startswith("* fewer than 10 events beyond")  # p99 of 300 unregister_srcu_waits has 3
    assert [b.splitlines()[0].split()[0] for b in blocks] == ["srcu.scope=global", "srcu.scope=per_mm"]
    for block in blocks:
        names = [line.split()[0] for line in block.splitlines()[2:-1]]
        assert names == list(SWEEP_SHAPES)  # compact: metrics with data only
        assert block.splitlines()[-1].strip() == "invariants: 12345 checked, 0 violations"


def test_write_sweep_refusals(tmp_path, run_data):
    result, _ = run_data
    with pytest.raises(ReportError, match="2 values but 1 results"):
        report.write_sweep(tmp_path, "seed", [1, 2], [result])
    with pytest.raises(ReportError, match="same run directory"):
        report.write_sweep(tmp_path, "x", ["a b", "a_b"], [result, result])
    assert report.run_dir(tmp_path, "callout.latency", {"dist": "pareto", "alpha": 1.5}).parent == tmp_path


# -- render refusals --------------------------------------------------------------------------


def one_line_naming(excinfo, directory: Path, filename: str) -> None:
    msg = str(excinfo.value)
    assert "\n" not in msg and str(directory) in msg and filename in msg, msg


def test_render_refuses_an_empty_or_missing_directory(tmp_path):
    with pytest.raises(ReportError) as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "results.json")
    assert isinstance(e.value, ValueError)
    with pytest.raises(ReportError, match="no such directory"):
        report.render(tmp_path / "nope")


def test_render_refuses_corrupt_or_incomplete_runs(tmp_path, run_data):
    result, events = run_data
    report.write_run(tmp_path, result, events[:50])
    good = (tmp_path / "results.json").read_text()

    (tmp_path / "results.json").write_text(good[: len(good) // 2])  # truncated
    with pytest.raises(ReportError, match="corrupt results.json") as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "results.json")

    (tmp_path / "results.json").write_text(json.dumps({"scenario": "x", "backend": "sim"}))  # valid JSON, wrong shape
    with pytest.raises(ReportError, match="corrupt results.json.*'seed'") as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "results.json")

    (tmp_path / "results.json").write_text(good)
    (tmp_path / "events.csv").write_text("metric,when\nexit_hang,1\n")
    with pytest.raises(ReportError, match="corrupt events.csv") as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "events.csv")

    (tmp_path / "events.csv").unlink()
    with pytest.raises(ReportError) as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "events.csv")


def test_render_refuses_a_corrupt_sweep_or_one_with_a_run_missing(tmp_path):
    key, values = "fanout", ["sequential", "parallel"]
    results = make_sweep(tmp_path, key, values, [2, 1])
    report.write_sweep(tmp_path, key, values, results)
    good = (tmp_path / "sweep.json").read_text()

    (tmp_path / "sweep.json").write_text("{not json")
    with pytest.raises(ReportError, match="corrupt sweep.json") as e:
        report.render(tmp_path)
    one_line_naming(e, tmp_path, "sweep.json")

    (tmp_path / "sweep.json").write_text(good)
    run = tmp_path / "fanout=parallel"
    (run / "results.json").unlink()
    (tmp_path / "sweep.png").unlink()
    with pytest.raises(ReportError) as e:
        report.render(tmp_path)
    one_line_naming(e, run, "results.json")
    assert not (tmp_path / "sweep.png").exists()  # nothing re-rendered from a broken sweep
