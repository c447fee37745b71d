"""The ``mmusim`` command line.

    mmusim run SCENARIO [--backend sim|ray] [--seed N] [--set k=v ...] [--out DIR] [--address ADDR]
                        [--calibration FILE] [--tls-ca CERT KEY | --no-tls]
    mmusim sweep SCENARIO [--vary key=v1,v2,...] [--jobs N] [same options as run]
    mmusim scenarios
    mmusim report DIR
    mmusim check [SCENARIO] --semantics MODE [--seeds N] [--scheduler random|pct] [--gru-dropin guarded|v3.10]
                 [--secondary gru|odp|hmm|sva]
    mmusim predict SCENARIO [--set k=v ...] [--sweep] [--compare DIR] [--calibration FILE]
    mmusim calibrate SCENARIO [--address ADDR | --from RAY_RUN_DIR] [--method lognormal|empirical]
                              [--probe loaded|idle] [--seed N] [--set k=v ...] [--out DIR]
                              [--tls-ca CERT KEY | --no-tls]
    mmusim demo [...]

``--calibration FILE`` (sim backend only) adds the floor a calibration file holds
(``workloads/calibration.py``) to every message of the sim's interconnect; the run's results.json
records it under ``"calibration"``. ``mmusim calibrate`` makes such a file from a ray run's
probe of the instrument's floor, runs the calibrated sim beside it and prints how far they agree.

Exit status: 0 when a run finished and its invariants held; 1 when it finished with an
invariant violation; 2 for bad input (a missing scenario, a bad key or value, a bad override, a
Ray address that does not answer, a bad calibration file), with one line saying what was wrong.
"""

from __future__ import annotations

import argparse
import io
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2
EXIT_BROKEN_PIPE = 128 + 13  # as the shell reports a filter that SIGPIPE ended


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _integer(text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None


class Progress:
    """A progress bar on ``stream`` (stderr), redrawn in place when it is a terminal; when it is
    not, nothing until ``close()`` (or, with ``lines=True``, one line per update), so logs stay
    readable. ``unit`` names what is counted."""

    def __init__(self, label: str, stream: TextIO | None = None, width: int = 30, *,
                 unit: str = "measurements", lines: bool = False):
        self.label = label
        self.stream = stream if stream is not None else sys.stderr
        self.width = width
        self.unit = unit
        self.t0 = time.monotonic()
        self.tty = self.stream.isatty()
        self.lines = lines

    def __call__(self, done: int, total: int, note: str = "") -> None:
        if not self.tty and not self.lines:
            return
        filled = self.width * done // max(total, 1)
        bar = "#" * filled + "-" * (self.width - filled)
        note = f" ({note})" if note else ""
        line = f"{self.label} [{bar}] {done}/{total} {self.unit}, {time.monotonic() - self.t0:.1f} s{note}"
        self.stream.write(f"\r{line}" if self.tty else f"{line}\n")
        self.stream.flush()

    def close(self) -> None:
        if self.tty:
            self.stream.write("\n")
        self.stream.flush()


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("scenario", help="a built-in scenario's name (see `mmusim scenarios`) or a YAML file")
    p.add_argument("--backend", choices=("sim", "ray"), default="sim",
                   help="sim: one process, virtual time (default); ray: partitions as Ray actors over gRPC")
    p.add_argument("--seed", type=_integer, default=None, help="the run's seed (default: the scenario's)")
    from nodes.notifier import SEMANTICS

    p.add_argument("--semantics", choices=tuple(SEMANTICS), default=None,
                   help="the notifier core of a step of the seed history (default: the scenario's, v3.10)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a knob, e.g. --set srcu.scope=per_mm (repeatable)")
    p.add_argument("--out", type=Path, default=None, help="where to write the results (default: results/<scenario>)")
    p.add_argument("--address", default=None,
                   help="ray backend: the Ray cluster (host:port, auto); default: RAY_ADDRESS, else a new local Ray")
    _add_tls_options(p)
    _add_calibration_option(p)


def _add_tls_options(p: argparse.ArgumentParser) -> None:
    tls = p.add_mutually_exclusive_group()
    tls.add_argument("--tls-ca", nargs=2, default=None, metavar=("CERT", "KEY"),
                     help="ray backend: the partitions' certificates are issued by this CA (PEM files; the key "
                          "readable by its owner only); default: a CA made for the run")
    tls.add_argument("--no-tls", action="store_true",
                     help="ray backend: plaintext between the partitions, on loopback addresses only "
                          "(default: mutual TLS)")


def _add_calibration_option(p: argparse.ArgumentParser) -> None:
    p.add_argument("--calibration", type=Path, default=None, metavar="FILE",
                   help="sim backend: a calibration file (from `mmusim calibrate`); its floor, the instrument's own "
                        "cost per message, is added to every message of the sim's interconnect")


def _calibration(args: argparse.Namespace) -> Any:
    """The ``Calibration`` of ``--calibration`` (None without one); refused off the sim backend,
    whose runs already cross the instrument's stack."""
    if args.calibration is None:
        return None
    from workloads.calibration import Calibration, CalibrationError

    backend = getattr(args, "backend", "sim")
    if backend != "sim":
        raise CalibrationError(f"--calibration {args.calibration}: applies to --backend sim only, got --backend "
                               f"{backend} (a {backend} run has the instrument's floor itself)")
    return Calibration.load(args.calibration)


def _sim_extra(calibration: Any) -> dict[str, Any] | None:
    """The ``SimConfig`` fields a calibration sets (``run_scenario``'s ``sim_extra``)."""
    return None if calibration is None else {"floor_latency": calibration.floor}


def _scenario(args: argparse.Namespace) -> Any:
    from workloads.scenario import load_scenario

    # --semantics is applied with the --set pairs (last, so it wins), so that the checks across
    # knobs (an oom_reap weight needs a semantics with an OOM reaper) see both
    semantics = [] if args.semantics is None else [f"semantics={args.semantics}"]
    s = load_scenario(args.scenario).with_overrides(list(args.overrides) + semantics)
    if args.seed is not None:
        s = s.with_value("seed", args.seed)
    return s


def _ray_extra(args: argparse.Namespace) -> dict[str, Any]:
    """The ``RayConfig`` fields of the TLS options (``--tls-ca``, ``--no-tls``)."""
    if args.backend != "ray" and (args.tls_ca is not None or args.no_tls):
        from workloads.scenario import ScenarioError

        raise ScenarioError("--tls-ca" if args.tls_ca is not None else "--no-tls", None,
                            "an option of --backend ray only")
    if args.no_tls:
        return {"tls": False}
    if args.tls_ca is not None:
        return {"tls_ca_cert": args.tls_ca[0], "tls_ca_key": args.tls_ca[1]}
    return {}


def _out_dir(args: argparse.Namespace, s: Any, suffix: str = "") -> Path:
    return args.out if args.out is not None else Path("results") / f"{s.name}{suffix}"


def _run_shown(label: str | None, scenario: Any, backend: str, **kw: Any) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``run_scenario`` with a progress line named ``label`` (None: no line), closed however
    the run ends."""
    from workloads.harness import run_scenario

    progress = Progress(label) if label is not None else None
    try:
        return run_scenario(scenario, backend, progress=progress, **kw)
    finally:
        if progress is not None:
            progress.close()


def _cmd_run(args: argparse.Namespace) -> int:
    from workloads.report import summary_table, write_run

    s = _scenario(args)
    cal = _calibration(args)
    out = _out_dir(args, s)
    ray_extra = _ray_extra(args)
    result, events = _run_shown(f"{s.name} ({args.backend}{', calibrated' if cal is not None else ''})", s,
                                args.backend, address=args.address, sim_extra=_sim_extra(cal), ray_extra=ray_extra)
    if cal is not None:
        result["calibration"] = cal.results_entry(args.calibration)
        print(f"calibrated: {cal.describe()}")
    files = write_run(out, result, events)
    print(summary_table(result))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return EXIT_VIOLATION if result["invariants"]["violations"] else EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from workloads.report import render, run_dir, write_sweep
    from workloads.scenario import ScenarioError

    s = _scenario(args)
    cal = _calibration(args)
    if args.vary is not None:
        key, sep, values = args.vary.partition("=")
        if not sep or not key or not values:
            raise ScenarioError("--vary", None, f"expected KEY=V1,V2,..., got {args.vary!r}")
        s = s.with_overrides([f"sweep={{key: {key}, values: [{values}]}}"])
    points = s.sweep_points()
    if not points:
        raise ScenarioError(s.source, "sweep", "a sweep: give --vary KEY=V1,V2,... (this scenario declares none)")
    key = s.get("sweep.key")
    out = _out_dir(args, s, "-sweep")
    jobs = min(args.jobs, len(points))
    if jobs > 1 and args.backend != "sim":
        raise ScenarioError("--jobs", None, f"parallel points need the sim backend (a Ray run has its cluster to itself), "
                            f"got --jobs {args.jobs} with --backend {args.backend}")
    ray_extra = _ray_extra(args)
    calibration = None if cal is None else cal.results_entry(args.calibration)
    runs = [(point, run_dir(out, key, value), args.backend, args.address, _sim_extra(cal), ray_extra, calibration)
            for value, point in points]
    if jobs > 1:  # each worker writes its point's files (and draws its plot) itself
        results = _run_points_in_parallel(runs, jobs, Progress(f"{s.name} sweep of {key} ({jobs} processes)",
                                                               unit="points", lines=True),
                                          [f"{key}={value}" for value, _ in points])
    else:
        results = [_sweep_point(*run, label=f"{key}={value} ({args.backend}{', calibrated' if cal is not None else ''})")
                   for (value, _), run in zip(points, runs)]
    violations = sum(r["invariants"]["violations"] for r in results)
    write_sweep(out, key, [v for v, _ in points], results)
    if cal is not None:
        print(f"calibrated: {cal.describe()}")
    print(render(out, runs=False))
    print(f"wrote {out}")
    return EXIT_VIOLATION if violations else EXIT_OK


def _sweep_point(point: Any, out_dir: Path, backend: str, address: str | None, sim_extra: dict[str, Any] | None,
                 ray_extra: dict[str, Any], calibration: dict[str, Any] | None, label: str | None = None) -> Any:
    """Run one point of a sweep, write its files into ``out_dir`` and return its result; with
    a progress bar of its measurements when ``label`` is given (a serial sweep's). A parallel
    sweep runs this in a worker process: a sim run is a function of its scenario, seed and
    config alone, so a point gives there what it gives in a serial sweep."""
    from workloads.report import write_run

    result, events = _run_shown(label, point, backend, address=address, sim_extra=sim_extra, ray_extra=ray_extra)
    if calibration is not None:
        result["calibration"] = calibration
    write_run(out_dir, result, events)
    return result


def _run_points_in_parallel(runs: list[tuple[Any, ...]], jobs: int, progress: Progress, labels: list[str]) -> list[Any]:
    """``_sweep_point(*run)`` for each of ``runs`` in ``jobs`` worker processes; the results in
    the order of ``runs``. ``progress`` gets a line as each point finishes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: list[Any] = [None] * len(runs)
    try:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_sweep_point, *run): i for i, run in enumerate(runs)}
            progress(0, len(runs))
            for n, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                out[i] = fut.result()
                progress(n, len(runs), labels[i])
    finally:
        progress.close()
    return out


def _cmd_calibrate(args: argparse.Namespace) -> int:
    """Run the scenario on Ray (or take a finished ray run, ``--from``), fit the sim's floor to
    the run's probe, run the same scenario and seed on the calibrated sim, and print and write
    the two side by side."""
    import json

    from workloads.calibration import Calibration, agreement, agreement_table
    from workloads.predict import scenario_of_run
    from workloads.report import ReportError, load_run, summary_table, write_run

    if args.source is not None:
        if (args.overrides or args.seed is not None or args.semantics is not None or args.address is not None
                or args.tls_ca is not None or args.no_tls):
            raise ReportError("--from: the ray run is taken as it was recorded: --set, --seed, --semantics, "
                              "--address and the TLS options do not apply")
        ray_result, _ = load_run(args.source)
        if ray_result["backend"] != "ray":
            raise ReportError(f"{args.source}: a {ray_result['backend']} run; calibrate from a ray run (one made "
                              "with --backend ray, which probes the instrument's floor)")
        s = scenario_of_run(args.source, ray_result)
        if args.scenario not in (s.name, str(args.source)):
            raise ReportError(f"{args.source}: a run of {s.name!r}, not of {args.scenario!r}")
    else:
        s = _scenario(args)
    out = _out_dir(args, s, "-calibrate")
    if args.source is None:
        ray_result, events = _run_shown(f"{s.name} (ray)", s, "ray", address=args.address, ray_extra=_ray_extra(args))
        write_run(out / "ray", ray_result, events)
        print(summary_table(ray_result))
    cal = Calibration.from_results(ray_result, args.method, probe=args.probe)
    cal_path = cal.save_into(out)
    print(f"calibrated: {cal.describe()}")
    sim_result, events = _run_shown(f"{s.name} (sim, calibrated)", s, "sim", sim_extra=_sim_extra(cal))
    sim_result["calibration"] = cal.results_entry(cal_path)
    write_run(out / "sim", sim_result, events)
    rows = agreement(ray_result, sim_result)
    print(agreement_table(rows))
    (out / "agreement.json").write_text(json.dumps({"scenario": s.name, "seed": s.get("seed"), "calibration": cal.to_json(),
                                                    "metrics": [r.to_json() for r in rows]}, indent=2) + "\n")
    print(f"wrote {cal_path}, {out / 'agreement.json'}, {out / 'sim'}" + ("" if args.source else f", {out / 'ray'}"))
    violations = ray_result["invariants"]["violations"] + sim_result["invariants"]["violations"]
    return EXIT_VIOLATION if violations else EXIT_OK


def _cmd_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from workloads import races

    tasks = races.TASKS if args.tasks is None else tuple(t for t in args.tasks.split(",") if t)
    try:
        races.check_tasks(tasks, args.secondary or "gru")
    except ValueError as e:
        parser.error(f"--{e}")
    if args.choices is not None and args.choices < 0:
        parser.error(f"--choices: expected an integer >= 0, got {args.choices}")
    race = races.RaceConfig(pages=args.pages, grus=args.grus, tasks=tasks, choices=args.choices,
                            gru_dropin=args.gru_dropin or "guarded", secondary=args.secondary or "gru")
    try:
        races.check_secondary(args.semantics, race.secondary)
    except ValueError as e:
        parser.error(f"--secondary {race.secondary}: {e}")
    if args.scenario != "race":
        from workloads.scenario import load_scenario

        s = load_scenario(args.scenario)
        dropin = ""
        if args.secondary is not None:
            s = s.with_value("secondary.kind", args.secondary)
            dropin += f" --set secondary.kind={args.secondary}"
        if args.gru_dropin is not None:
            s = s.with_value("gru.dropin", args.gru_dropin)
            dropin += f" --set gru.dropin={args.gru_dropin}"
        f = races.check_scenario(s, args.semantics, args.scheduler, args.seeds)
        if f is None:
            print(f"clean: {args.seeds} seeds of {s.name} under {args.semantics!r} ({args.scheduler} scheduler, "
                  f"{s.get('gru.dropin')} GRU dropin)")
            return EXIT_OK
        print(f"FOUND under semantics {f.semantics!r} in scenario {s.name}, seed {f.seed} ({f.scheduler}):")
        print(f"  {f.kind}: {f.what}")
        print(f"  replay: mmusim run {s.name} --set semantics={f.semantics}{dropin} --seed {f.seed}")
        return EXIT_VIOLATION
    if args.replay is not None:
        f = races.run_once(args.semantics, args.scheduler, args.replay, race)
        if f is None:
            print(f"clean: seed {args.replay} under {args.semantics!r}")
            return EXIT_OK
        print(races.format_finding(f))
        return EXIT_VIOLATION
    f = races.search(args.semantics, args.scheduler, args.seeds, race)
    if f is None:
        print(f"clean: {args.seeds} seeds of the race workload ({race.describe()}) under {args.semantics!r}, "
              f"{args.scheduler} scheduler")
        return EXIT_OK
    first = f.race
    if not args.no_shrink:
        f = races.shrink(f, args.seeds)
    print(races.format_finding(f, shrunk_from=first))
    return EXIT_VIOLATION


def _cmd_predict(args: argparse.Namespace) -> int:
    from workloads.predict import compare, format_comparison, format_predictions, predict
    from workloads.scenario import ScenarioError

    if args.compare is not None:
        if args.overrides or args.sweep or args.calibration is not None:
            raise ScenarioError("--compare", None, "each run is predicted from the config (and calibration) it "
                                "recorded: --set, --sweep and --calibration do not apply with --compare")
        from workloads.report import load_sweep
        from workloads.scenario import load_scenario

        rows = compare(args.compare, load_scenario(args.scenario).name)
        key = load_sweep(args.compare)["key"] if (args.compare / "sweep.json").exists() else None
        print(format_comparison(key, rows))
        return EXIT_OK
    s = _scenario(args)
    cal = _calibration(args)
    floor = None if cal is None else cal.floor
    points = s.sweep_points()
    if args.sweep and not points:
        raise ScenarioError(s.source, "sweep", "--sweep: this scenario declares none (add one with "
                            "--set 'sweep={key: KNOB, values: [V1, V2]}')")
    if points:
        print(format_predictions(s.get("sweep.key"), [(value, predict(point, floor=floor)) for value, point in points]))
    else:
        print(format_predictions(None, [(None, predict(s, floor=floor))]))
    if cal is not None:
        print(f"calibrated: {cal.describe()}")
    return EXIT_OK


def _cmd_scenarios(args: argparse.Namespace) -> int:
    from workloads.scenario import builtin_scenarios

    rows = builtin_scenarios()
    width = max(len(name) for name, _ in rows)
    for name, description in rows:
        print(f"{name:<{width}}  {description}")
    return EXIT_OK


def _cmd_report(args: argparse.Namespace) -> int:
    from workloads.report import render

    print(render(args.dir))
    return EXIT_OK


def _cmd_demo(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from workloads.demo import format_results, run_demo

    if args.callout_latency < 0:
        parser.error(f"--callout-latency must be >= 0, got {args.callout_latency}")
    if args.address is not None and args.backend != "ray":
        parser.error("--address applies to --backend ray only")
    results = run_demo(args.streams, args.pages, args.unregisters, args.cpus, args.callout_latency, seed=args.seed,
                       backend=args.backend, address=args.address)
    print(format_results(results))
    return EXIT_VIOLATION if any(r.violations for r in results) else EXIT_OK


def _quiet_stdout() -> None:
    """Point stdout at /dev/null, so that the interpreter's last flush at exit does not raise
    the broken pipe again (the recipe of the signal module's documentation)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, io.UnsupportedOperation):  # no real stdout (a test's capture)
        pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmusim", description="Simulate cross-partition MMU-notifier invalidation.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a scenario: measured exits and unregisters under notifier activity")
    _add_run_options(run)
    sweep = sub.add_parser("sweep", help="run a scenario once per value of one knob")
    _add_run_options(sweep)
    sweep.add_argument("--vary", default=None, metavar="KEY=V1,V2,...",
                       help="the knob and its values (default: the scenario's own sweep)")
    sweep.add_argument("--jobs", "-j", type=_positive_int, default=1, metavar="N",
                       help="sim backend: run up to N points at once, each in its own process "
                            "(default 1; the results are those of a serial sweep)")
    sub.add_parser("scenarios", help="list the built-in scenarios")
    from nodes.notifier import SEMANTICS

    check = sub.add_parser("check", help="explore interleavings under a semantics of the seed history, "
                                         "stop at the first violation, shrink it, print how to replay it")
    check.add_argument("scenario", nargs="?", default="race",
                       help="'race' (the built-in race workload, the default) or a hang-study scenario")
    check.add_argument("--semantics", required=True, choices=tuple(SEMANTICS), help="the notifier core to check")
    check.add_argument("--seeds", type=_positive_int, default=50, help="how many seeds to try (default 50)")
    check.add_argument("--scheduler", choices=("random", "pct"), default="random",
                       help="how the seeded scheduler picks among ready tasks (default random)")
    check.add_argument("--replay", type=_integer, default=None, metavar="SEED",
                       help="run this one seed and print what happened (as a finding reports it)")
    check.add_argument("--pages", type=_positive_int, default=8, help="race workload: pages of the mm (default 8)")
    check.add_argument("--grus", type=_positive_int, default=2, help="race workload: GRUs mapping it (default 2)")
    check.add_argument("--tasks", default=None,
                       help="race workload: the concurrent tasks, comma-separated (default all of them)")
    check.add_argument("--choices", type=_integer, default=None, metavar="N",
                       help="race workload: only the first N scheduling choices are the seed's, then FIFO")
    from nodes.secondary.gru import GRU_DROPINS

    check.add_argument("--gru-dropin", choices=tuple(GRU_DROPINS), default=None,
                       help="how the GRUs check a dropin: guarded (default) or v3.10 (unguarded: races "
                            "invalidations that overtake the lookup)")
    from workloads.races import RACE_SECONDARIES

    check.add_argument("--secondary", choices=RACE_SECONDARIES, default=None,
                       help="what maps the mm from p1: GRUs (default), RDMA ODP MRs, HMM device mirrors "
                            "or IOMMU SVA devices (all but GRUs: --semantics v5.10 or v6.6 only; --grus counts "
                            "them); for a scenario, its secondary.kind")
    check.add_argument("--no-shrink", action="store_true", help="report the first finding as found")
    predict = sub.add_parser("predict", help="predict the unregister and exit synchronize_srcu() wait from the "
                                             "scenario's activity (an analytic model, docs/srcu-hang-model.md)")
    predict.add_argument("scenario", help="a built-in scenario's name or a YAML file")
    predict.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                         help="override a knob, e.g. --set activity.streams=4 (repeatable)")
    predict.add_argument("--sweep", action="store_true",
                         help="one row per point of the scenario's sweep (the default when it declares one)")
    predict.add_argument("--compare", type=Path, default=None, metavar="DIR",
                         help="a finished `mmusim sweep` or `mmusim run` directory: predicted beside measured, per run")
    _add_calibration_option(predict)
    predict.set_defaults(seed=None, semantics=None)
    from workloads.calibration import FIT_METHODS, PROBES

    calibrate = sub.add_parser("calibrate", help="run a scenario on Ray, fit the sim's latency floor to the "
                                                 "instrument's probe, run it on the calibrated sim, compare")
    calibrate.add_argument("scenario", help="a built-in scenario's name or a YAML file")
    calibrate.add_argument("--seed", type=_integer, default=None, help="the run's seed (default: the scenario's)")
    calibrate.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                           help="override a knob (repeatable)")
    calibrate.add_argument("--address", default=None,
                           help="the Ray cluster (host:port, auto); default: RAY_ADDRESS, else a new local Ray")
    calibrate.add_argument("--from", dest="source", type=Path, default=None, metavar="DIR",
                           help="a finished ray run (`mmusim run --backend ray` directory) instead of a new one")
    calibrate.add_argument("--method", choices=FIT_METHODS, default="lognormal",
                           help="the floor's distribution: lognormal (fitted by moments, default) or empirical")
    calibrate.add_argument("--probe", choices=PROBES, default="loaded",
                           help="fit the null callouts timed under the workload's load (default) or at bring-up (idle)")
    calibrate.add_argument("--out", type=Path, default=None,
                           help="where to write (default results/<scenario>-calibrate): calibration.json, "
                                "agreement.json, ray/ and sim/")
    _add_tls_options(calibrate)
    calibrate.set_defaults(semantics=None, backend="ray")
    report = sub.add_parser("report", help="re-render the tables and plots of a finished run or sweep")
    report.add_argument("dir", type=Path)

    demo = sub.add_parser("demo", help="the global-SRCU unregister hang across two partitions, global vs per-mm SRCU")
    demo.add_argument("--streams", type=_positive_int, default=8, help="background mms with GRU traffic (default 8)")
    demo.add_argument("--pages", type=_positive_int, default=512, help="pages each stream maps and unmaps per round (default 512)")
    demo.add_argument("--unregisters", type=_positive_int, default=50, help="measured unregisters (default 50)")
    demo.add_argument("--cpus", type=_positive_int, default=4, help="CPUs of the owning partition (default 4)")
    demo.add_argument("--callout-latency", type=float, default=100.0, help="one-way wire time of a callout, us (default 100)")
    demo.add_argument("--seed", type=int, default=0, help="seed of the run (default 0)")
    demo.add_argument("--backend", choices=("sim", "ray"), default="sim",
                      help="sim: one process, virtual time (default); ray: partitions as Ray actors over gRPC")
    demo.add_argument("--address", default=None,
                      help="ray backend: the Ray cluster to use (host:port, auto); default: RAY_ADDRESS, else a new local Ray")
    args = parser.parse_args(argv)

    commands: dict[str, Callable[[argparse.Namespace], int]] = {
        "run": _cmd_run, "sweep": _cmd_sweep, "scenarios": _cmd_scenarios, "report": _cmd_report,
        "demo": lambda a: _cmd_demo(a, parser),
        "check": lambda a: _cmd_check(a, parser),
        "predict": _cmd_predict,
        "calibrate": _cmd_calibrate,
    }
    from nodes.rpc.identity import IdentityError
    from workloads.calibration import CalibrationError
    from workloads.report import ReportError
    from workloads.scenario import ScenarioError

    try:
        return commands[args.command](args)
    except BrokenPipeError:  # the reader went away (`mmusim run ... | head`): stop quietly, as a filter does
        _quiet_stdout()
        return EXIT_BROKEN_PIPE
    except (ScenarioError, ReportError, CalibrationError, ConnectionError, IdentityError) as e:  # bad input: one clear line
        print(f"mmusim: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
