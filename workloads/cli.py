"""The ``mmusim`` command line.

    mmusim run SCENARIO [--backend sim|ray] [--seed N] [--set k=v ...] [--out DIR] [--address ADDR]
    mmusim sweep SCENARIO [--vary key=v1,v2,...] [--jobs N] [same options as run]
    mmusim scenarios
    mmusim report DIR
    mmusim check [SCENARIO] --semantics MODE [--seeds N] [--scheduler random|pct] [--gru-dropin guarded|v3.10]
    mmusim predict SCENARIO [--set k=v ...] [--sweep] [--compare DIR]
    mmusim demo [...]

Exit status: 0 when a run finished and its invariants held; 1 when it finished with an
invariant violation; 2 for bad input (a missing scenario, a bad key or value, a bad override, a
Ray address that does not answer), with one line saying what was wrong.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any, Callable, TextIO

EXIT_OK, EXIT_VIOLATION, EXIT_USAGE = 0, 1, 2


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


def _scenario(args: argparse.Namespace) -> Any:
    from workloads.scenario import load_scenario

    s = load_scenario(args.scenario).with_overrides(args.overrides)
    if args.seed is not None:
        s = s.with_value("seed", args.seed)
    if args.semantics is not None:
        s = s.with_value("semantics", args.semantics)
    return s


def _out_dir(args: argparse.Namespace, s: Any, suffix: str = "") -> Path:
    return args.out if args.out is not None else Path("results") / f"{s.name}{suffix}"


def _cmd_run(args: argparse.Namespace) -> int:
    from workloads.harness import run_scenario
    from workloads.report import summary_table, write_run

    s = _scenario(args)
    out = _out_dir(args, s)
    progress = Progress(f"{s.name} ({args.backend})")
    try:
        result, events = run_scenario(s, args.backend, address=args.address, progress=progress)
    finally:
        progress.close()
    files = write_run(out, result, events)
    print(summary_table(result))
    print(f"wrote {', '.join(str(f) for f in files)}")
    return EXIT_VIOLATION if result["invariants"]["violations"] else EXIT_OK


def _cmd_sweep(args: argparse.Namespace) -> int:
    from workloads.report import render, run_dir, write_run, write_sweep
    from workloads.scenario import ScenarioError

    s = _scenario(args)
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
    results = []
    if jobs > 1:  # each worker writes its point's files (and draws its plot) itself
        results = _run_points_in_parallel([(point, run_dir(out, key, value)) for value, point in points], jobs,
                                          Progress(f"{s.name} sweep of {key} ({jobs} processes)", unit="points",
                                                   lines=True), [f"{key}={value}" for value, _ in points])
    else:
        for value, point in points:
            result, events = _run_point_with_progress(point, f"{key}={value} ({args.backend})", args.backend,
                                                      args.address)
            write_run(run_dir(out, key, value), result, events)
            results.append(result)
    violations = sum(r["invariants"]["violations"] for r in results)
    write_sweep(out, key, [v for v, _ in points], results)
    print(render(out, runs=False))
    print(f"wrote {out}")
    return EXIT_VIOLATION if violations else EXIT_OK


def _run_point_with_progress(point: Any, label: str, backend: str, address: str | None) -> tuple[Any, Any]:
    """One point of a serial sweep, with its own progress bar of measurements."""
    from workloads.harness import run_scenario

    progress = Progress(label)
    try:
        return run_scenario(point, backend, address=address, progress=progress)
    finally:
        progress.close()


def _run_point(point: Any, out_dir: Path) -> Any:
    """One point of a parallel sweep, in a worker process: run it on the sim backend, write its
    files into ``out_dir`` and return its result. A sim run is a function of its scenario and
    seed alone, so a point gives what it gives in a serial sweep."""
    from workloads.harness import run_scenario
    from workloads.report import write_run

    result, events = run_scenario(point, "sim")
    write_run(out_dir, result, events)
    return result


def _run_points_in_parallel(points: list[tuple[Any, Path]], jobs: int, progress: Progress,
                            labels: list[str]) -> list[Any]:
    """Run ``points`` (scenario, output directory) in ``jobs`` worker processes; their results
    in the order of ``points``. ``progress`` gets a line as each point finishes."""
    from concurrent.futures import ProcessPoolExecutor, as_completed

    out: list[Any] = [None] * len(points)
    try:
        with ProcessPoolExecutor(max_workers=jobs) as pool:
            futures = {pool.submit(_run_point, point, d): i for i, (point, d) in enumerate(points)}
            progress(0, len(points))
            for n, fut in enumerate(as_completed(futures), 1):
                i = futures[fut]
                out[i] = fut.result()
                progress(n, len(points), labels[i])
    finally:
        progress.close()
    return out


def _cmd_check(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from workloads import races

    tasks = races.TASKS if args.tasks is None else tuple(t for t in args.tasks.split(",") if t)
    unknown = [t for t in tasks if t not in races.TASKS]
    if unknown or not tasks:
        parser.error(f"--tasks: expected a comma-separated subset of {','.join(races.TASKS)}, got {args.tasks!r}")
    if args.choices is not None and args.choices < 0:
        parser.error(f"--choices: expected an integer >= 0, got {args.choices}")
    race = races.RaceConfig(pages=args.pages, grus=args.grus, tasks=tasks, choices=args.choices,
                            gru_dropin=args.gru_dropin or "guarded")
    if args.scenario != "race":
        from workloads.scenario import load_scenario

        s = load_scenario(args.scenario)
        dropin = ""
        if args.gru_dropin is not None:
            s = s.with_value("gru.dropin", args.gru_dropin)
            dropin = f" --set gru.dropin={args.gru_dropin}"
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
        if args.overrides or args.sweep:
            raise ScenarioError("--compare", None, "each run is predicted from the config it recorded: "
                                "--set and --sweep do not apply with --compare")
        from workloads.report import load_sweep
        from workloads.scenario import load_scenario

        rows = compare(args.compare, load_scenario(args.scenario).name)
        key = load_sweep(args.compare)["key"] if (args.compare / "sweep.json").exists() else None
        print(format_comparison(key, rows))
        return EXIT_OK
    s = _scenario(args)
    points = s.sweep_points()
    if args.sweep and not points:
        raise ScenarioError(s.source, "sweep", "--sweep: this scenario declares none (add one with "
                            "--set 'sweep={key: KNOB, values: [V1, V2]}')")
    if points:
        print(format_predictions(s.get("sweep.key"), [(value, predict(point)) for value, point in points]))
    else:
        print(format_predictions(None, [(None, predict(s))]))
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
    predict.set_defaults(seed=None, semantics=None)
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
    }
    from workloads.report import ReportError
    from workloads.scenario import ScenarioError

    try:
        return commands[args.command](args)
    except (ScenarioError, ReportError, ConnectionError) as e:  # bad input: one clear line
        print(f"mmusim: {e}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
