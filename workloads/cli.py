"""The ``mmusim`` command line."""

from __future__ import annotations

import argparse
import sys


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="mmusim", description="Simulate cross-partition MMU-notifier invalidation.")
    sub = parser.add_subparsers(dest="command", required=True)
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

    if args.command == "demo":
        from workloads.demo import format_results, run_demo

        if args.callout_latency < 0:
            parser.error(f"--callout-latency must be >= 0, got {args.callout_latency}")
        if args.address is not None and args.backend != "ray":
            parser.error("--address applies to --backend ray only")
        try:
            results = run_demo(args.streams, args.pages, args.unregisters, args.cpus, args.callout_latency, seed=args.seed,
                               backend=args.backend, address=args.address)
        except ConnectionError as e:  # a Ray address that does not answer
            print(f"mmusim: {e}", file=sys.stderr)
            return 2
        print(format_results(results))
        return 1 if any(r.violations for r in results) else 0
    return 2  # pragma: no cover - argparse refuses unknown commands


if __name__ == "__main__":
    sys.exit(main())
