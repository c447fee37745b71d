"""What a run and a sweep leave on disk, and re-rendering them (``mmusim report DIR``).

A **run** directory (``write_run``) holds:

``results.json``
    The run's result (``RunResult`` below, the schema of DESIGN.md), pretty-printed with a
    stable key order: the top-level keys in schema order, metrics in ``METRIC_NAMES`` order,
    each metric's summary keys in ``SUMMARY_KEYS`` order, everything else sorted. Non-finite
    floats are written as ``null`` so the file is strict JSON. Written last and atomically, so
    a directory with a ``results.json`` is a finished run. Each metric also carries ``ci95``
    (``{"p50": [lo, hi], "p99": [lo, hi]}``, null without events) and ``beyond`` (the events
    beyond each percentile), see ``workloads/metrics.py``; results written before they existed
    have neither, and render without intervals.
``events.csv``
    One row per measured event, header ``metric,t_us,value_us,partition,mm,detail`` (csv
    module, UTF-8; an ``mm`` of None is an empty field).
``hang.png``
    One panel per metric of ``HANG_METRICS`` that has events: a histogram of the events' values
    (log-spaced bins and a log x-axis when the positive values span more than two decades;
    zeros, if any, are counted in the first bin and said so in the legend), p50 and p99 marked,
    the figure titled with scenario, backend and seed and each panel with its metric and n.

A **sweep** directory (``write_sweep``) holds one run directory per value of the varied knob,
``<key>=<value>/`` (``run_dir``; the caller writes them with ``write_run``), and:

``sweep.json``
    ``{"key", "values", "runs": [{"value", "dir", "metrics": {name: summary},
    "invariants": {"checked", "violations"}}], "scenario", "backend"}``: ``dir`` is relative
    to the sweep directory, ``summary`` is the metric's ``SUMMARY_KEYS`` block with its
    ``ci95`` and ``beyond`` when the run has them (no histogram), scenario and backend are the
    first run's. Written last.
``sweep.csv``
    One row per value x metric (every metric any run reported), header
    ``value,metric,n,p50,p90,p99,p999,max,mean,p50_ci_lo,p50_ci_hi,p99_ci_lo,p99_ci_hi``;
    empty fields where a metric has no data (or its run no intervals).
``sweep.png``
    One panel per metric of ``HANG_METRICS`` with data in some run: p50, p90, p99 and max
    against the knob's values (categorical x for strings and other non-numbers, numeric x for
    numbers, log x when they are positive and span more than two decades).

Plots use matplotlib's object API (``matplotlib.figure.Figure``, which saves through the Agg
canvas): pyplot is never imported here, so no GUI backend is touched, the process-wide backend
is left as it was, and no figure is kept in pyplot's registry; every figure is dropped after
it is saved. File names are fixed (``RUN_FILES``, ``SWEEP_FILES``).

``render(dir)`` regenerates the PNGs of a finished run or sweep from its JSON and CSV files and
returns the text of ``summary_table`` (for a sweep, one compact table per value). A table marks
with ``*``, and footnotes, a percentile with too few events beyond it (``metrics.too_few_beyond``).
A directory that is not a finished run or sweep, or one whose files are corrupt, raises
``ReportError`` (a ``ValueError``) with one line naming the directory and the file.
"""

from __future__ import annotations

import csv
import json
import math
import os
import tempfile
from operator import itemgetter
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Optional, Sequence, TypedDict

import numpy as np
from matplotlib.figure import Figure

from workloads.metrics import (BOOTSTRAP_RESAMPLES, CI_PERCENTILES, INTERVAL_KEYS, MIN_BEYOND, PERCENTILES,
                               SUMMARY_KEYS, too_few_beyond)
from workloads.scenario import DURATION_UNITS

# -- the schema ----------------------------------------------------------------------------

#: every metric name the harness reports, in the order tables and files list them
METRIC_NAMES = ("exit_hang", "exit_srcu_wait", "exit_release", "unregister_hang", "unregister_srcu_wait",
                "unregister_release", "invalidate_range", "callout_rtt")
#: the metrics plotted in hang.png and sweep.png (the release phases are in the tables only)
HANG_METRICS = ("exit_hang", "exit_srcu_wait", "unregister_hang", "unregister_srcu_wait", "invalidate_range",
                "callout_rtt")
#: the top-level keys of results.json that DESIGN.md requires, and the order the rest follow
REQUIRED_KEYS = ("scenario", "backend", "seed", "config", "metrics", "invariants")
RESULT_KEY_ORDER = REQUIRED_KEYS + ("activity", "faults", "wall_time_s", "virtual_time_us", "trace_digest")
EVENT_COLUMNS = ("metric", "t_us", "value_us", "partition", "mm", "detail")
SWEEP_CSV_COLUMNS = ("value", "metric", "n", "p50", "p90", "p99", "p999", "max", "mean") + tuple(
    f"{p}_ci_{end}" for p in CI_PERCENTILES for end in ("lo", "hi"))
RUN_FILES = ("results.json", "events.csv", "hang.png")
SWEEP_FILES = ("sweep.json", "sweep.csv", "sweep.png")
#: how many invariant-violation details and faults a summary table shows before "... and N more"
SHOW_DETAILS = 5


class MetricSummary(TypedDict, total=False):
    """One metric of ``RunResult.metrics``: ``HdrHistogram.summary()`` plus its ``to_json()``.
    The percentile fields, max and mean are None when n == 0."""

    unit: str  # "us"
    n: int
    p50: Optional[float]
    p90: Optional[float]
    p99: Optional[float]
    p999: Optional[float]
    max: Optional[float]
    mean: Optional[float]
    ci95: dict[str, Optional[list[float]]]  # CI_PERCENTILES -> [lo, hi], None when n == 0
    beyond: dict[str, int]  # PERCENTILES -> events beyond it
    histogram: dict[str, Any]


class Invariants(TypedDict):
    checked: int
    violations: int
    details: list[str]


class RunResult(TypedDict, total=False):
    """What the harness hands ``write_run`` (and what results.json holds). The keys of
    ``REQUIRED_KEYS`` are required; times are microseconds except ``wall_time_s``."""

    scenario: str
    backend: Literal["sim", "ray"]
    seed: int
    config: dict[str, Any]
    metrics: dict[str, MetricSummary]
    invariants: Invariants
    activity: dict[str, dict[str, Any]]  # per background operation: {"done": n, "refused": {errno: n}}
    faults: list[str]
    wall_time_s: float
    virtual_time_us: Optional[float]
    trace_digest: Optional[str]


class Event(TypedDict, total=False):
    """One measured event, one row of events.csv. ``metric``, ``t_us`` (when it ended, run
    time) and ``value_us`` are required; ``partition`` and ``detail`` default to "" and ``mm``
    to None."""

    metric: str
    t_us: float
    value_us: float
    partition: str
    mm: Optional[int]
    detail: str


class ReportError(ValueError):
    """A result directory that is not a finished run or sweep, or a corrupt file in one; or a
    result handed to ``write_run``/``write_sweep`` that does not follow the schema. The message
    is one line naming the directory or key and the file."""


# -- writing a run -------------------------------------------------------------------------


def write_run(out_dir: str | os.PathLike[str], result: Mapping[str, Any], events: Iterable[Mapping[str, Any]]) -> list[Path]:
    """Write results.json, events.csv and hang.png into ``out_dir`` (created if needed) and
    return their paths in that order. results.json is written last, so it marks the run as
    finished. A result missing a required key raises ``ReportError`` naming it before anything
    is written; an event missing metric, t_us or value_us raises it naming the event, leaving no
    file behind."""
    out = Path(out_dir)
    _check_result(result, "result")
    doc = _canonical_result(result)
    out.mkdir(parents=True, exist_ok=True)
    values = _write_events(out / "events.csv", events)
    _plot_hang(out / "hang.png", doc, values)
    _write_json(out / "results.json", doc)
    return [out / name for name in RUN_FILES]


def _write_events(path: Path, events: Iterable[Mapping[str, Any]]) -> dict[str, list[float]]:
    """Write events.csv; return the values of each metric (for the plot)."""
    values: dict[str, list[float]] = {}
    required = itemgetter("metric", "t_us", "value_us")

    def rows() -> Iterable[tuple[Any, ...]]:
        for i, ev in enumerate(events):
            try:
                metric, t_us, value_us = required(ev)
            except (KeyError, TypeError) as e:
                raise ReportError(f"event {i} has no {e} field (an event needs metric, t_us and value_us): {ev!r}") from None
            values.setdefault(metric, []).append(float(value_us))
            mm = ev.get("mm")
            yield metric, _num(t_us), _num(value_us), ev.get("partition", ""), "" if mm is None else int(mm), ev.get("detail", "")

    with _atomic(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(EVENT_COLUMNS)
        w.writerows(rows())
    return values


def _num(v: Any) -> Any:
    """A float or int as csv should print it (numpy scalars as plain Python numbers)."""
    if isinstance(v, (int, np.integer)) and not isinstance(v, bool):
        return int(v)
    return float(v)


# -- writing a sweep -----------------------------------------------------------------------


def run_dir(out_dir: str | os.PathLike[str], key: str, value: Any) -> Path:
    """Where the run of ``key=value`` of a sweep in ``out_dir`` goes: ``out_dir/<key>=<value>``.
    The harness writes each run there with ``write_run`` before calling ``write_sweep``."""
    return Path(out_dir) / _dir_name(key, value)


def write_sweep(out_dir: str | os.PathLike[str], key: str, values: Sequence[Any], results: Sequence[Mapping[str, Any]]) -> list[Path]:
    """Write sweep.json, sweep.csv and sweep.png for the runs of ``key`` over ``values``
    (``results[i]`` is the run of ``values[i]``, whose files are in ``run_dir(out_dir, key,
    values[i])``) and return their paths in that order. Values must be JSON values and give
    distinct directory names."""
    out = Path(out_dir)
    if not isinstance(key, str) or not key:
        raise ReportError(f"a sweep needs a knob name, got key={key!r}")
    values = list(values)
    results = list(results)
    if len(values) != len(results):
        raise ReportError(f"sweep of {key}: {len(values)} values but {len(results)} results")
    if not values:
        raise ReportError(f"sweep of {key}: no values")
    dirs = [_dir_name(key, v) for v in values]
    if len(set(dirs)) != len(dirs):
        dup = next(d for d in dirs if dirs.count(d) > 1)
        raise ReportError(f"sweep of {key}: two values give the same run directory {dup!r}")
    runs = []
    for i, (value, d, res) in enumerate(zip(values, dirs, results)):
        _check_result(res, f"sweep of {key}, result {i} ({d})")
        doc = _canonical_result(res)
        inv = doc["invariants"]
        runs.append({"value": _jsonable(value), "dir": d,
                     "metrics": {name: {**{k: m.get(k) for k in SUMMARY_KEYS}, **{k: m[k] for k in INTERVAL_KEYS if k in m}}
                                 for name, m in doc["metrics"].items()},
                     "invariants": {"checked": inv.get("checked"), "violations": inv.get("violations")}})
    sweep = {"key": key, "values": [_jsonable(v) for v in values], "runs": runs,
             "scenario": _jsonable(results[0]["scenario"]), "backend": _jsonable(results[0]["backend"])}
    out.mkdir(parents=True, exist_ok=True)
    _write_sweep_csv(out / "sweep.csv", sweep)
    _plot_sweep(out / "sweep.png", sweep)
    _write_json(out / "sweep.json", sweep)
    return [out / name for name in SWEEP_FILES]


def _write_sweep_csv(path: Path, sweep: Mapping[str, Any]) -> None:
    names = _ordered_names(n for run in sweep["runs"] for n in run["metrics"])
    with _atomic(path, "w") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(SWEEP_CSV_COLUMNS)
        for run in sweep["runs"]:
            for name in names:
                m = run["metrics"].get(name) or {}
                ci = m.get("ci95") or {}
                ends = [("" if ci.get(p) is None else ci[p][i]) for p in CI_PERCENTILES for i in (0, 1)]
                w.writerow([value_text(run["value"]), name, m.get("n", 0)]
                           + ["" if m.get(k) is None else m[k] for k in SUMMARY_KEYS[2:]] + ends)


def _dir_name(key: str, value: Any) -> str:
    text = f"{key}={value_text(value)}"
    return "".join("_" if c in '/\\\0' or c.isspace() or not c.isprintable() else c for c in text)


def value_text(value: Any) -> str:
    """A knob value as the CLI would spell it: strings as-is, true/false, numbers, JSON else."""
    if isinstance(value, str):
        return value
    if isinstance(value, (bool, np.bool_)):
        return "true" if value else "false"
    if isinstance(value, (int, float, np.integer, np.floating)):
        return str(_num(value))
    return json.dumps(_jsonable(value), sort_keys=True, separators=(",", ":"))


# -- the text table ------------------------------------------------------------------------


def summary_table(result: Mapping[str, Any]) -> str:
    """The end-of-run table: a heading line, one row per metric (n, p50, p90, p99, max, mean in
    microseconds, right-aligned, "-" where the metric has no data; after p50 and p99 their 95 %
    interval, when the result has them), a percentile with too few events beyond it marked and
    footnoted, the invariants line (the first few violation details under it), and the faults
    if there were any."""
    _check_result(result, "result")
    lines = [_heading(result)]
    metrics = result["metrics"]
    with_ci = any("ci95" in m for m in metrics.values())
    columns = [c for p in ("p50", "p90", "p99") for c in ((p, f"ci95.{p}") if with_ci and p in CI_PERCENTILES else (p,))]
    floor = result.get("floor") or {}
    shares = {name: f.get("share_of_p50") for name, f in (floor.get("metrics") or {}).items()}
    table, marked = _table(metrics, ("n", *columns, "max", "mean", *(("floor",) if shares else ())),
                           with_empty=True, floor=shares)
    lines += table + _footnotes(marked, with_ci)
    if shares:
        loaded = floor.get("loaded_p50_us")
        lines.append(f"floor: the share of p50 that is the instrument's own (the metric's round trips to other "
                     f"partitions x a null callout's p50, {_fmt(floor.get('model_p50_us'))} us, probed at "
                     "bring-up); reported, not subtracted"
                     + ("" if loaded is None else f". Under the run's own load a null callout took {_fmt(loaded)} us"))
    lines += _invariants_lines(result["invariants"])
    lines += _activity_lines(result.get("activity") or {})
    lines += field_report_lines(result)
    faults = list(result.get("faults") or [])
    if faults:
        lines.append(f"faults: {len(faults)}")
        lines += [f"  {f}" for f in faults[:SHOW_DETAILS]]
        if len(faults) > SHOW_DETAILS:
            lines.append(f"  ... and {len(faults) - SHOW_DETAILS} more")
    return "\n".join(lines)


def _heading(result: Mapping[str, Any]) -> str:
    parts = [f"{result['scenario']}", f"backend={result['backend']}", f"seed={result['seed']}"]
    if isinstance(result.get("wall_time_s"), (int, float)):
        parts.append(f"wall={result['wall_time_s']:.1f}s")
    if isinstance(result.get("virtual_time_us"), (int, float)):
        parts.append(f"virtual={_fmt(result['virtual_time_us'])}us")
    if result.get("trace_digest"):
        parts.append(f"trace={str(result['trace_digest'])[:16]}")
    return "  ".join(parts)


def _table(metrics: Mapping[str, Mapping[str, Any]], columns: Sequence[str], *, with_empty: bool,
           indent: str = "", floor: Mapping[str, Any] | None = None) -> tuple[list[str], bool]:
    """The lines of a table of ``metrics`` with ``columns`` (summary keys; ``"ci95.p50"`` is the
    95 % interval of p50; ``"floor"`` the share of p50 that is the instrument's floor, from
    ``floor``: metric -> share or None), and whether a percentile in it is marked: a
    percentile cell ends in ``*`` when too few events lie beyond it (``too_few_beyond``), else
    in a space."""
    header = ["metric"] + [_header(c) for c in columns]
    rows = []
    marked = False
    for name in _ordered_names(metrics):
        m = metrics[name]
        if not with_empty and not m.get("n"):
            continue
        row = [name]
        for c in columns:
            if c == "n":
                row.append(_fmt_n(m.get("n")))
            elif c == "floor":
                share = (floor or {}).get(name)
                row.append("-" if share is None else f"{share:.0%}")
            elif c.startswith("ci95."):
                iv = (m.get("ci95") or {}).get(c.removeprefix("ci95."))
                row.append("-" if iv is None else f"{_fmt(iv[0])}..{_fmt(iv[1])}")
            elif c in PERCENTILES:
                mark = m.get(c) is not None and too_few_beyond(PERCENTILES[c], int(m["n"]))
                marked = marked or mark
                row.append(_fmt(m.get(c)) + ("*" if mark else " "))
            else:
                row.append(_fmt(m.get(c)))
        rows.append(row)
    if not rows:
        return [f"{indent}(no metrics)"], False
    widths = [max(len(r[i]) for r in [header] + rows) for i in range(len(header))]
    out = []
    for r in [header] + rows:
        cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
        out.append(indent + "  ".join(cells).rstrip())
    return out, marked


def _header(column: str) -> str:
    if column in ("n", "floor"):
        return column
    if column.startswith("ci95."):
        return "95% CI"
    return f"{column} us" + (" " if column in PERCENTILES else "")  # the mark's place


def _footnotes(marked: bool, with_ci: bool) -> list[str]:
    """The lines under a table: what ``*`` means (if a cell has it) and how the intervals were
    made (if the table shows them)."""
    lines = []
    if marked:
        lines.append(f"* fewer than {MIN_BEYOND} events beyond this percentile: it rests on the few largest; "
                     "measure more before quoting it")
    if with_ci:
        lines.append(f"95% CI: bootstrap over the metric's events ({BOOTSTRAP_RESAMPLES:,} resamples, "
                     "seeded from the run's seed)")
    return lines


def _invariants_lines(inv: Mapping[str, Any], *, details: bool = True, indent: str = "") -> list[str]:
    violations = inv.get("violations") or 0
    lines = [f"{indent}invariants: {inv.get('checked', 0)} checked, {violations} violation{'' if violations == 1 else 's'}"]
    shown = list(inv.get("details") or []) if details else []
    lines += [f"{indent}  {d}" for d in shown[:SHOW_DETAILS]]
    if len(shown) > SHOW_DETAILS:
        lines.append(f"{indent}  ... and {len(shown) - SHOW_DETAILS} more")
    return lines


def _activity_lines(activity: Mapping[str, Mapping[str, Any]]) -> list[str]:
    """One line per background operation: how many were done, and how many the kernel refused,
    by errno (streams sharing an mm race as threads of one process)."""
    if not activity:
        return []
    lines = ["activity:"]
    for op, c in activity.items():
        refused = c.get("refused") or {}
        why = ", ".join(f"{name} {n:,}" for name, n in sorted(refused.items()))
        lines.append(f"  {op:<9} {_fmt_n(c.get('done'))} done" + (f", refused: {why}" if why else ""))
    return lines


def field_report_lines(result: Mapping[str, Any]) -> list[str]:
    """The comparison with the field report the scenario reproduces (its ``field_report``):
    what was reported and where, the model's figure for the same metric and percentile, and
    whether it falls inside the reported range. Nothing when the scenario cites none."""
    report = (result.get("config") or {}).get("field_report")
    if not report:
        return []
    metric, pct = report["metric"], report["percentile"]
    value = (result["metrics"].get(metric) or {}).get(pct)
    low, high = float(report["low"]), float(report["high"])
    lines = [f"field report: {report['figure']}", f"  source: {report['source']}"]
    if value is None:
        lines.append(f"  model: no {metric} measured, nothing to compare")
        return lines
    value = float(value)
    if value < low:
        verdict = f"below the reported range ({value / low:.2g}x its low end)"
    elif value > high:
        verdict = f"above the reported range ({value / high:.2g}x its high end)"
    else:
        verdict = "inside the reported range: reproduced"
    lines.append(f"  model: {metric} {pct} {duration_text(value)} against {duration_text(low)}-{duration_text(high)} "
                 f"reported: {verdict}")
    return lines


def duration_text(us: float) -> str:
    """A duration in microseconds in the largest of a scenario's duration units
    (``workloads.scenario.DURATION_UNITS``) that keeps it >= 1: '47 min', '1.2 s'."""
    for unit, size in sorted(DURATION_UNITS.items(), key=lambda item: -item[1]):
        if abs(us) >= size or size == 1.0:
            return f"{us / size:.3g} {unit}"
    raise AssertionError("DURATION_UNITS has no unit of 1 us")


def _fmt_n(n: Any) -> str:
    return "0" if n is None else f"{int(n):,}"


def _fmt(v: Any) -> str:
    """A latency in microseconds for a table: "-" for none, more decimals for small values."""
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "-"
    v = float(v)
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3f}"


# -- re-rendering --------------------------------------------------------------------------


def render(directory: str | os.PathLike[str], *, runs: bool = True) -> str:
    """Regenerate the PNGs of the finished run or sweep in ``directory`` from its JSON and CSV
    files and return its summary text. A sweep re-renders sweep.png and (unless ``runs`` is
    False: ``mmusim sweep`` has just drawn them) each run's hang.png, and returns one compact
    table per value. Raises ``ReportError`` (one line naming the directory
    and the file) when the directory is not a finished run or sweep or a file is corrupt."""
    d = Path(directory)
    if not d.exists():
        raise ReportError(f"{d}: no such directory")
    if not d.is_dir():
        raise ReportError(f"{d}: not a directory")
    if (d / "sweep.json").exists():
        return _render_sweep(d, runs)
    if not (d / "results.json").exists():
        raise ReportError(f"{d}: not a finished run or sweep: no results.json (nor sweep.json)")
    result, values = load_run(d)
    _plot_hang(d / "hang.png", result, values)
    return summary_table(result)


def load_run(directory: str | os.PathLike[str]) -> tuple[dict[str, Any], dict[str, list[float]]]:
    """The result of the finished run in ``directory`` and its events' values by metric."""
    d = Path(directory)
    result = _read_json(d, "results.json")
    try:
        _check_result(result, "")
    except ReportError as e:
        raise ReportError(f"{d}: corrupt results.json: {e}") from None
    return result, _read_event_values(d)


def _read_event_values(d: Path) -> dict[str, list[float]]:
    path = d / "events.csv"
    values: dict[str, list[float]] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.reader(f)
            header = next(reader, None)
            if header is None or tuple(header) != EVENT_COLUMNS:
                raise ReportError(f"{d}: corrupt events.csv: header is {header!r}, expected {','.join(EVENT_COLUMNS)}")
            for row in reader:
                if len(row) != len(EVENT_COLUMNS):
                    raise ReportError(f"{d}: corrupt events.csv: line {reader.line_num} has {len(row)} fields, expected {len(EVENT_COLUMNS)}")
                try:
                    v = float(row[2])
                except ValueError:
                    raise ReportError(f"{d}: corrupt events.csv: line {reader.line_num}: value_us {row[2]!r} is not a number") from None
                values.setdefault(row[0], []).append(v)
    except FileNotFoundError:
        raise ReportError(f"{d}: not a finished run: no events.csv") from None
    except (UnicodeDecodeError, csv.Error) as e:
        raise ReportError(f"{d}: corrupt events.csv: {_one_line(e)}") from None
    return values


def load_sweep(directory: str | os.PathLike[str]) -> dict[str, Any]:
    """The sweep.json of the sweep in ``directory``, checked."""
    d = Path(directory)
    sweep = _read_json(d, "sweep.json")
    problem = _sweep_problem(sweep)
    if problem:
        raise ReportError(f"{d}: corrupt sweep.json: {problem}")
    return sweep


def _sweep_problem(sweep: Any) -> str | None:
    if not isinstance(sweep, dict):
        return f"expected an object, got {type(sweep).__name__}"
    for k in ("key", "values", "runs"):
        if k not in sweep:
            return f"no {k!r} key"
    if not isinstance(sweep["runs"], list) or not sweep["runs"]:
        return "'runs' is not a non-empty list"
    for i, run in enumerate(sweep["runs"]):
        if not isinstance(run, dict) or not {"value", "dir", "metrics"} <= run.keys():
            return f"runs[{i}] lacks value, dir or metrics"
        if not isinstance(run["dir"], str) or Path(run["dir"]).is_absolute() or ".." in Path(run["dir"]).parts:
            return f"runs[{i}].dir {run['dir']!r} is not a directory name inside the sweep"
        problem = _metrics_problem(run["metrics"])
        if problem:
            return f"runs[{i}].metrics{problem}"
    return None


def _render_sweep(d: Path, runs: bool = True) -> str:
    sweep = load_sweep(d)
    # each run first: a missing or broken run directory stops before anything is rewritten
    loaded = [load_run(d / run["dir"]) for run in sweep["runs"]]
    for run, (result, values) in zip(sweep["runs"], loaded):
        if runs:
            _plot_hang(d / run["dir"] / "hang.png", result, values)
    _plot_sweep(d / "sweep.png", sweep)
    head = f"sweep of {sweep['key']} over {len(sweep['runs'])} values"
    if sweep.get("scenario"):
        head += f"  ({sweep['scenario']}, backend={sweep.get('backend')})"
    lines = [head]
    marked = False
    for run, (result, _) in zip(sweep["runs"], loaded):
        lines.append("")
        lines.append(f"{sweep['key']}={value_text(run['value'])}  ({run['dir']}/)")
        table, run_marked = _table(run["metrics"], ("n", "p50", "p99", "max"), with_empty=False, indent="  ")
        marked = marked or run_marked
        lines += table
        lines += _invariants_lines(result["invariants"], details=False, indent="  ")
    if marked:
        lines += [""] + _footnotes(True, False)
    return "\n".join(lines)


def _read_json(d: Path, name: str) -> Any:
    path = d / name
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ReportError(f"{d}: not a finished {'sweep' if name == 'sweep.json' else 'run'}: no {name}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ReportError(f"{d}: cannot read {name}: {_one_line(e)}") from None
    try:
        return json.loads(text)
    except ValueError as e:
        raise ReportError(f"{d}: corrupt {name}: {_one_line(e)}") from None


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# -- checking and normalising a result -----------------------------------------------------


def _check_result(result: Any, where: str) -> None:
    """Raise ReportError unless ``result`` has the schema's keys and well-formed metrics."""
    prefix = f"{where}: " if where else ""
    if not isinstance(result, Mapping):
        raise ReportError(f"{prefix}expected a result object, got {type(result).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:
        raise ReportError(f"{prefix}no {', '.join(map(repr, missing))} key (a result needs {', '.join(REQUIRED_KEYS)})")
    problem = _metrics_problem(result["metrics"])
    if problem:
        raise ReportError(f"{prefix}metrics{problem}")
    inv = result["invariants"]
    if not isinstance(inv, Mapping) or not {"checked", "violations"} <= inv.keys():
        raise ReportError(f"{prefix}invariants must be an object with checked, violations and details, got {inv!r}")


def _metrics_problem(metrics: Any) -> str | None:
    if not isinstance(metrics, Mapping):
        return f" is not an object: {metrics!r}"
    for name, m in metrics.items():
        if not isinstance(m, Mapping):
            return f".{name} is not an object"
        for k in ("n",) + tuple(SUMMARY_KEYS[2:]):
            if k not in m:
                return f".{name} has no {k!r}"
            v = m[k]
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating))):
                return f".{name}.{k} is not a number: {v!r}"
        if m["n"] is None:
            return f".{name}.n is null"
        ci = m.get("ci95")
        if ci is not None:
            if not isinstance(ci, Mapping):
                return f".{name}.ci95 is not an object: {ci!r}"
            for p, iv in ci.items():
                if iv is not None and not (isinstance(iv, (list, tuple)) and len(iv) == 2 and all(
                        isinstance(x, (int, float)) and not isinstance(x, bool) for x in iv)):
                    return f".{name}.ci95.{p} is not [lo, hi]: {iv!r}"
    return None


def _ordered_names(names: Iterable[str]) -> list[str]:
    seen = set(names)
    return [n for n in METRIC_NAMES if n in seen] + sorted(seen - set(METRIC_NAMES))


def _canonical_result(result: Mapping[str, Any]) -> dict[str, Any]:
    """The result as plain JSON values, keys in the stable order results.json uses."""
    doc: dict[str, Any] = {}
    for k in RESULT_KEY_ORDER:
        if k in result:
            doc[k] = result[k]
    for k in sorted(set(result) - set(RESULT_KEY_ORDER)):
        doc[k] = result[k]
    metrics = {}
    for name in _ordered_names(result["metrics"]):
        m = result["metrics"][name]
        ordered = {k: m[k] for k in SUMMARY_KEYS if k in m}
        for k in sorted(set(m) - set(SUMMARY_KEYS)):
            ordered[k] = _jsonable(m[k], sort=(k != "histogram"))
        metrics[name] = {k: _jsonable(v) for k, v in ordered.items()}
    doc["metrics"] = metrics
    return {k: (v if k == "metrics" else _jsonable(v)) for k, v in doc.items()}


def _jsonable(v: Any, sort: bool = True) -> Any:
    """Plain JSON values: numpy scalars and arrays converted, non-finite floats as None, tuples
    as lists, dict keys as strings (sorted unless ``sort`` is false)."""
    if isinstance(v, Mapping):
        items = [(str(k), x) for k, x in v.items()]
        if sort:
            items.sort(key=itemgetter(0))
        return {k: _jsonable(x, sort) for k, x in items}
    if isinstance(v, (list, tuple, np.ndarray)):
        return [_jsonable(x, sort) for x in v]
    if isinstance(v, (bool, np.bool_)):
        return bool(v)
    if isinstance(v, np.integer):
        return int(v)
    if isinstance(v, (float, np.floating)):
        f = float(v)
        return f if math.isfinite(f) else None
    if v is None or isinstance(v, (str, int)):
        return v
    if isinstance(v, os.PathLike):
        return os.fspath(v)
    raise ReportError(f"{v!r} ({type(v).__name__}) cannot be written to a results file")


def _write_json(path: Path, doc: Any) -> None:
    with _atomic(path, "w") as f:
        json.dump(doc, f, indent=2, allow_nan=False, ensure_ascii=False)
        f.write("\n")


class _atomic:
    """Write to a temporary file beside ``path`` and rename it over ``path`` on success."""

    def __init__(self, path: Path, mode: str):
        self.path, self.mode = path, mode

    def __enter__(self):
        fd, self.tmp = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.f = os.fdopen(fd, self.mode, newline="", encoding="utf-8") if "b" not in self.mode else os.fdopen(fd, self.mode)
        return self.f

    def __exit__(self, exc_type, exc, tb):
        self.f.close()
        if exc_type is None:
            os.replace(self.tmp, self.path)
        else:
            os.unlink(self.tmp)
        return False


# -- plots ---------------------------------------------------------------------------------

_PCT_STYLE = {"p50": ("tab:blue", "-"), "p90": ("tab:green", "--"), "p99": ("tab:red", "-."), "max": ("black", ":")}
_DPI = 100


def _spans_decades(positive: np.ndarray) -> bool:
    return positive.size > 0 and positive.max() > 100 * positive.min()


def _plot_hang(path: Path, result: Mapping[str, Any], values: Mapping[str, Sequence[float]]) -> None:
    _save(hang_figure(result, values), path)


def hang_figure(result: Mapping[str, Any], values: Mapping[str, Sequence[float]]) -> Figure:
    """The figure of hang.png: one panel per metric of ``HANG_METRICS`` with (finite) values in
    ``values`` (metric -> event values, us). Not registered with pyplot: drop it when done."""
    arrays = {n: np.asarray(values.get(n, ()), dtype=np.float64) for n in HANG_METRICS}
    arrays = {n: a[np.isfinite(a)] for n, a in arrays.items()}
    names = [n for n in HANG_METRICS if arrays[n].size > 0]
    title = f"hang distribution: {result['scenario']} on {result['backend']} (seed {result['seed']})"
    fig, axes = _panels(len(names), title, "no measured events")
    for ax, name in zip(axes, names):
        _hist_panel(ax, name, arrays[name], result["metrics"].get(name) or {})
    return fig


def _panels(n: int, title: str, empty: str) -> tuple[Figure, list[Any]]:
    """A figure titled ``title`` with ``n`` panels, two per row (one if ``n`` is 1); with none,
    one blank panel saying ``empty``."""
    ncols = 2 if n > 1 else 1
    nrows = max(1, math.ceil(n / ncols))
    fig = Figure(figsize=(6.4 * ncols, 3.8 * nrows + 0.6), dpi=_DPI, layout="constrained")
    fig.suptitle(title)
    if not n:
        ax = fig.add_subplot()
        ax.set_axis_off()
        ax.text(0.5, 0.5, empty, ha="center", va="center", transform=ax.transAxes)
    return fig, [fig.add_subplot(nrows, ncols, i + 1) for i in range(n)]


def _hist_panel(ax: Any, name: str, v: np.ndarray, summary: Mapping[str, Any]) -> None:
    """A histogram of ``v`` with p50 and p99 marked: the summary's (the HDR histogram's, as in
    the table) when it has them, else computed from the values."""
    n = v.size
    positive = v[v > 0]
    log_x = _spans_decades(positive)
    zeros = int((v <= 0).sum())
    if log_x:
        lo, hi = positive.min(), positive.max()
        bins = np.geomspace(lo, hi, 61)
        shown = np.clip(v, lo, hi)  # zeros (if any) in the first bin, said so in the legend
    else:
        lo, hi = float(v.min()), float(v.max())
        bins = np.linspace(lo, hi, 61)
        if not (np.diff(bins) > 0).all():  # (nearly) one value: 60 bins would not be distinct
            bins = np.array([lo - 0.5, hi + 0.5])
        shown = v
    counts, edges = np.histogram(shown, bins=bins)
    log_y = counts.max() > 100 * max(counts[counts > 0].min(), 1)
    ax.stairs(counts, edges, fill=True, color="tab:gray", alpha=0.6,
              label=f"events ({zeros:,} zero, in the first bin)" if log_x and zeros else "events")
    for key, pct in (("p50", 50.0), ("p99", 99.0)):
        q = summary.get(key) if summary.get("n") else None
        q = float(np.percentile(v, pct, method="inverted_cdf")) if q is None else float(q)
        color, style = _PCT_STYLE[key]
        ax.axvline(max(q, edges[0]) if log_x else q, color=color, linestyle=style, linewidth=1.5,
                   label=f"{key} = {_fmt(q)} us")
    if log_x:
        ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
        ax.set_ylim(bottom=0.8)
    ax.set_title(f"{name} (n={n:,})")
    ax.set_xlabel("latency (microseconds)" + (", log scale" if log_x else ""))
    ax.set_ylabel("events" + (", log scale" if log_y else ""))
    ax.legend(fontsize="small", loc="best")
    ax.grid(True, which="major", alpha=0.3)


def _plot_sweep(path: Path, sweep: Mapping[str, Any]) -> None:
    _save(sweep_figure(sweep), path)


def sweep_figure(sweep: Mapping[str, Any]) -> Figure:
    """The figure of sweep.png for a sweep.json document. Not registered with pyplot."""
    runs = sweep["runs"]
    key = sweep["key"]
    names = [n for n in HANG_METRICS if any((run["metrics"].get(n) or {}).get("n") for run in runs)]
    raw = [run["value"] for run in runs]
    numeric = all(isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) for x in raw)
    if numeric:
        x = np.asarray(raw, dtype=np.float64)
        order = np.argsort(x, kind="stable")
        log_x = bool((x > 0).all()) and _spans_decades(x)
    else:
        x = np.arange(len(raw), dtype=np.float64)
        order = np.arange(len(raw))
        log_x = False
    title = f"hang percentiles against {key}"
    if sweep.get("scenario"):
        title += f": {sweep['scenario']} on {sweep.get('backend')}"
    fig, axes = _panels(len(names), title, "no measured events in any run")
    for ax, name in zip(axes, names):
        every = []
        for stat, (color, style) in _PCT_STYLE.items():
            y = np.array([_as_float((run["metrics"].get(name) or {}).get(stat)) for run in runs])
            every.append(y)
            ax.plot(x[order], y[order], color=color, linestyle=style, marker="o", markersize=4, label=stat)
        ys = np.concatenate(every)
        if _spans_decades(ys[np.isfinite(ys) & (ys > 0)]):
            ax.set_yscale("log", nonpositive="mask")
        if log_x:
            ax.set_xscale("log")
        if not numeric:
            ax.set_xticks(x, [value_text(v) for v in raw], rotation=30 if len(raw) > 4 else 0)
            ax.set_xlim(-0.5, len(raw) - 0.5)
        ax.set_title(f"{name} against {key}")
        ax.set_xlabel(key)
        ax.set_ylabel("latency (microseconds)")
        ax.legend(fontsize="small")
        ax.grid(True, alpha=0.3)
    return fig


def _as_float(v: Any) -> float:
    return float("nan") if v is None else float(v)


def _save(fig: Figure, path: Path) -> None:
    """Save ``fig`` as a PNG at ``path`` (atomically, no timestamp in the metadata) and drop it."""
    try:
        with _atomic(path, "wb") as f:
            fig.savefig(f, format="png", metadata={"Software": None})
    finally:
        fig.clear()
