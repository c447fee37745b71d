"""Scenario files: the independent variables of one hang study, as YAML, validated on load.

A scenario says how many partitions and mms there are, what background notifier activity runs
while the harness measures exits and unregisters, how slow the interconnect and the secondaries'
callouts are, and which SRCU / fan-out / teardown variant the owner uses. Everything is checked
before anything starts: an unknown key, a wrong type or an impossible value raises
``ScenarioError``, whose ``str()`` is one line naming the file (or ``built-in NAME``), the key
path, what was expected and what was given::

    quickstart.yaml: activity.streams: expected an integer >= 0, got -3
    my.yaml: activity.strems: unknown key; did you mean activity.streams? (expected one of: ...)
    built-in quickstart: --set srcu.scope=per-mm: srcu.scope: expected one of global, per_mm, got 'per-mm'; did you mean 'per_mm'?

Use::

    s = load_scenario("quickstart")                    # a built-in, or a path to a .yaml file
    s = s.with_overrides(["activity.streams=8", "callout.latency={dist: pareto, scale: 20, alpha: 1.5}"])
    run = run_sim(s.sim_config(), workload)            # or s.ray_config(address=...)
    for value, point in s.sweep_points(): ...          # a sweep: one scenario per value

Schema (``KNOBS`` holds it; defaults in brackets; times in microseconds)::

    name                 str, one line      [the file stem; required in built-ins, = the stem]
    description          str, one line      ['' ; required in built-ins: `mmusim scenarios` prints it]
    question             str                ['' ; the research question, for the README]
    partitions           positive int       [2]
    cpus_per_partition   positive int       [4]
    mms                  positive int       [2]   owned by each partition, carrying activity
    secondaries_per_mm   positive int       [1]
    nframes              auto | positive int [auto]  frames per partition, see Scenario.nframes
    secondary.kind       gru | xpmem | kvm | odp | hmm | sva  [gru]  odp: an RDMA ODP MR
                                                  (nodes/secondary/odp.py); hmm: a GPU mirroring the
                                                  mm (nodes/secondary/hmm.py); both only with
                                                  semantics v5.10 or v6.6 (their interval notifier)
                                                  and teardown unregister; sva: an IOMMU SVA device
                                                  (ATS/PRI), under semantics v5.10 or v6.6 only, sim
                                                  backend only (nodes/secondary/sva.py)
    gru.dropin           guarded | v3.10    [guarded]  how a GRU on another partition checks a
                                                  dropin whose lookup crossed the network
                                                  (nodes/secondary/gru.py, GRU_DROPINS)
    sva.iommu            intel | smmuv3     [intel]  the owner's IOMMU driver: what it does when an
                                                  ATS invalidation completion times out
                                                  (nodes/secondary/sva.py, IOMMUS)
    sva.completion       latency            [2]   an SVA device's ATS invalidation completion
    activity.streams     int >= 0           [2]   concurrent background streams of VM operations
    activity.mix         {op: weight >= 0}  [{munmap: 1}]  ops: munmap mprotect migrate ksm
                                                  reclaim thp cow oom_reap; missing ops weigh 0;
                                                  some weight > 0 when streams > 0; oom_reap
                                                  only under a semantics with an OOM reaper
    activity.rate        positive number    [1000]  operations per second per stream
    activity.pages       positive int       [64]  pages per operation
    callout.latency      latency            [20]  extra one-way latency of each callout
    topology.hop_latency latency            [1.0] per hop, one way
    topology.hops        positive int       [1]   between any two partitions
    interconnect.transport unary | stream   [stream] how requests travel between partitions
                                                  on the ray backend: long-lived streams
                                                  (nodes/rpc/client.py), or one gRPC call each,
                                                  for comparison (nodes/rpc/__init__.py).
                                                  The sim backend's interconnect has no transport.
    srcu.scope           global | per_mm    [global]
    srcu.expedited       bool               [false]
    srcu.algorithm       classic | tree     [classic]  classic: the two-index SRCU of v3.10
                                                  kernel/srcu.c (nodes/srcu.py); tree: Tree SRCU
                                                  of v5.10 kernel/rcu/srcutree.c (nodes/srcu_tree.py).
                                                  Independent of semantics.
    srcu.fanout_leaf     int in 2..64       [16]  tree: CPUs per srcu_node leaf (CONFIG_RCU_FANOUT_LEAF)
    srcu.fanout          int in 2..64       [64]  tree: children per inner srcu_node (CONFIG_RCU_FANOUT)
    srcu.exp_holdoff     number >= 0 (us)   [25]  tree: a synchronize_srcu() this soon after a grace
                                                  period is not auto-expedited (exp_holdoff; 0: never)
    srcu.tree_version    v5.10 | v5.19-rc1 | v6.6 [v5.10]  tree: the delay policy of that kernel's
                                                  srcu_get_delay() and its callers (v5.19-rc1:
                                                  282d8998e997; v6.6: its fixes 8f870e6eb8c0 and
                                                  4f2bfd9494a0); nodes/srcu_tree.py
    kernel.hz            100 | 250 | 300 | 1000 [1000]  CONFIG_HZ: SRCU's worker polls once a
                                                  jiffy (1e6 / hz us; v3.10 SRCU_INTERVAL)
    fanout               sequential | parallel [sequential]
    teardown             unregister | put   [unregister]
    measure.exits        int >= 0           [5]
    measure.unregisters  int >= 0           [10]  (at least one of the two > 0)
    duration             positive us, or '250ms' / '2s' / '500us'  [100ms]  stored in us (float)
    seed                 int                [0]
    sweep                {key: KNOB, values: [v1, ...]} or null [null]

A *latency* is a bare number of microseconds or a mapping naming a distribution, exactly what
``cluster.topology.parse_latency`` takes: ``{dist: lognormal, median: 50, sigma: 1.0}``,
``{dist: pareto, scale: 20, alpha: 1.5}``, ``{dist: uniform, low: 1, high: 3}``,
``{dist: constant, value: 5}``. Latencies are kept in ``values`` as the user wrote them.

A *knob path* (for ``sweep.key``, ``--set`` and ``Scenario.with_value``) is any dotted path of
the schema above except name, description, question and sweep, or one level below
``activity.mix`` (``activity.mix.migrate``) or below a latency given as a mapping
(``callout.latency.alpha``). ``--set`` may also set name, description, question, sweep and
``sweep.key`` / ``sweep.values``; a mapping given for a section (``activity={streams: 4}``) is
merged into it, while a mapping given for a knob (``activity.mix={migrate: 1}``) replaces it.

YAML 1.1 reads unquoted ``yes``/``no``/``on``/``off`` as booleans and ``1e3`` as a string; both
are refused where they do not fit, with the value shown. Duplicate keys are refused.
"""

from __future__ import annotations

import copy
import difflib
import math
import os
import re
import statistics
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

import yaml

from cluster.topology import parse_latency
from nodes.notifier import MODERN, OOM_REAPER_MODES, SEMANTICS
from nodes.rpc import DEFAULT_TRANSPORT, TRANSPORTS
from nodes.notifier import FANOUTS
from nodes.partition import SRCU_ALGORITHMS, SRCU_SCOPES
from nodes.srcu import DEFAULT_HZ, HZ_CHOICES, jiffy_us
from nodes.srcu_tree import (
    CONFIG_RCU_FANOUT,
    CONFIG_RCU_FANOUT_LEAF,
    DEFAULT_SRCU_EXP_HOLDOFF_US,
    DEFAULT_TREE_VERSION,
    RCU_FANOUT_RANGE,
    TREE_VERSIONS,
)
from nodes.secondary.gru import GRU_DROPINS
from nodes.secondary.sva import IOMMUS

if TYPE_CHECKING:
    from cluster.ray_backend import RayConfig
    from cluster.sim import SimConfig

__all__ = [
    "ScenarioError",
    "Scenario",
    "load_scenario",
    "builtin_scenarios",
    "KNOBS",
    "Knob",
    "OPS",
    "SECONDARY_KINDS",
    "TEARDOWNS",
]

OPS = ("munmap", "mprotect", "migrate", "ksm", "reclaim", "thp", "cow", "oom_reap")  # workloads.activity's
SECONDARY_KINDS = ("gru", "xpmem", "kvm", "odp", "hmm", "sva")
# the kinds whose driver holds an interval notifier (the modern modes; no put): what each is
INTERVAL_KINDS = {"odp": "an ODP MR", "hmm": "an HMM device mirror"}
TEARDOWNS = ("unregister", "put")  # put: mmu_notifier_put, the free deferred with call_srcu
LATENCY_PARAMS = ("value", "low", "high", "median", "sigma", "scale", "alpha")  # every dist's
DURATION_UNITS = {"us": 1.0, "ms": 1_000.0, "s": 1_000_000.0, "min": 60_000_000.0}
MIN_AUTO_NFRAMES = 65536
BUILTIN_PACKAGE = "workloads"
BUILTIN_DIR = "scenarios"
_DESCRIBED = ("name", "description", "question", "field_report", "sweep")  # not knobs one can sweep


class ScenarioError(ValueError):
    """A scenario that cannot be used: a bad file, key, value or ``--set`` override.

    ``str()`` is one line: ``SOURCE: [ORIGIN: ][PATH: ]DETAIL``, where ``source`` is the file as
    given (or ``built-in NAME``), ``origin`` the offending ``--set key=value`` (if any), ``path``
    the dotted key path or a YAML ``line L, column C``, and ``detail`` says what was expected and
    what was given.
    """

    def __init__(self, source: str, path: str | None, detail: str, origin: str | None = None):
        self.source = source
        self.path = path
        self.detail = detail
        self.origin = origin
        super().__init__(self._line())

    def _line(self) -> str:
        parts = [p for p in (self.source, self.origin, self.path, self.detail) if p]
        return re.sub(r"\s*[\r\n]+\s*", " ", ": ".join(parts))

    def __str__(self) -> str:
        return self._line()

    def __reduce__(self) -> Any:  # picklable (Ray ships exceptions between processes)
        return (ScenarioError, (self.source, self.path, self.detail, self.origin))


class _Invalid(Exception):
    """Internal: a bad value at ``path``; callers turn it into a ``ScenarioError``."""

    def __init__(self, path: str, detail: str):
        super().__init__(f"{path}: {detail}")
        self.path = path
        self.detail = detail


# ---------------------------------------------------------------------------------------------
# value checks: each takes (value, key path) and returns the value to store, or raises _Invalid


def _show(v: Any) -> str:
    r = repr(v)
    return r if len(r) <= 100 else r[:97] + "..."


def _bad(path: str, expected: str, got: Any) -> _Invalid:
    hint = ""
    if isinstance(got, str) and re.fullmatch(r"\s*[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+\s*", got):
        hint = " (YAML 1.1 reads 1e3 as a string: write 1000 or 1.0e+3)"
    return _Invalid(path, f"expected {expected}, got {_show(got)}{hint}")


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _positive_int(v: Any, path: str) -> int:
    if not _is_int(v) or v < 1:
        raise _bad(path, "a positive integer", v)
    return v


def _count(v: Any, path: str) -> int:
    if not _is_int(v) or v < 0:
        raise _bad(path, "an integer >= 0", v)
    return v


def _any_int(v: Any, path: str) -> int:
    if not _is_int(v):
        raise _bad(path, "an integer", v)
    return v


def _positive_number(v: Any, path: str) -> int | float:
    if not _is_number(v) or v <= 0:
        raise _bad(path, "a positive number", v)
    return v


def _number(v: Any, path: str) -> int | float:
    if not _is_number(v) or v < 0:
        raise _bad(path, "a number >= 0", v)
    return v


def _fanout(v: Any, path: str) -> int:
    """An srcu_node fanout: CONFIG_RCU_FANOUT(_LEAF)'s range on 64-bit kernels."""
    lo, hi = RCU_FANOUT_RANGE
    if not _is_int(v) or not lo <= v <= hi:
        raise _bad(path, f"an integer in {lo}..{hi}", v)
    return v


def _boolean(v: Any, path: str) -> bool:
    if not isinstance(v, bool):
        raise _bad(path, "true or false", v)
    return v


def _choice(choices: Sequence[str]) -> Callable[[Any, str], str]:
    def check(v: Any, path: str) -> str:
        if not isinstance(v, str) or v not in choices:
            err = _bad(path, f"one of {', '.join(choices)}", v)
            if isinstance(v, str):
                guess = difflib.get_close_matches(v.lower().replace("-", "_"), choices, n=1, cutoff=0.6)
                if guess:
                    err = _Invalid(path, f"{err.detail}; did you mean {guess[0]!r}?")
            raise err
        return v

    return check


def _hz(v: Any, path: str) -> int:
    """CONFIG_HZ: one of the kernel's choices (``nodes.srcu.HZ_CHOICES``)."""
    if not _is_int(v) or v not in HZ_CHOICES:
        raise _bad(path, f"one of {', '.join(map(str, HZ_CHOICES))} (CONFIG_HZ, ticks per second)", v)
    return v


def _one_line(v: Any, path: str) -> str:
    if not isinstance(v, str) or "\n" in v.strip():
        raise _bad(path, "a one-line string", v)
    return v.strip()


def _name(v: Any, path: str) -> str:
    if not isinstance(v, str) or not v.strip() or "\n" in v.strip():
        raise _bad(path, "a non-empty one-line string", v)
    return v.strip()


def _text(v: Any, path: str) -> str:
    if not isinstance(v, str):
        raise _bad(path, "a string", v)
    return v.strip()


def _deadline(v: Any, path: str) -> float | str:
    """``auto`` (the backend's own: 1 s on the sim, 5 s on ray), ``none`` (no deadline, as a
    kernel driver's call into its device has none; sim only) or a duration. The words are kept
    as strings, so that results.json stays plain JSON."""
    if isinstance(v, str) and v.strip() in ("auto", "none"):
        return v.strip()
    try:
        return _duration(v, path)
    except _Invalid as e:
        raise _Invalid(path, e.detail.replace("expected a positive", "expected auto, none or a positive", 1)) from None


def _deadline_fields(value: float | str) -> dict[str, float]:
    """The config fields of the ``interconnect.deadline`` knob's value: none for ``auto``,
    ``deadline_us=inf`` for ``none``."""
    if value == "auto":
        return {}
    return {"deadline_us": math.inf if value == "none" else float(value)}


def _start(v: Any, path: str) -> float:
    """A duration or 0 (from the start of the run)."""
    if _is_number(v) and v == 0:
        return 0.0
    return _duration(v, path)


def _partition_name(v: Any, path: str) -> str | None:
    """None, or a partition name p0, p1, ... (checked against ``partitions`` in the cross checks)."""
    if v is None:
        return None
    if not isinstance(v, str) or not re.fullmatch(r"p\d+", v):
        raise _bad(path, "null or a partition name (p0, p1, ...)", v)
    return v


FIELD_REPORT_KEYS = ("source", "figure", "metric", "percentile", "low", "high")


def _field_report(v: Any, path: str) -> dict[str, Any] | None:
    """None, or what a field report measured, for the run to print beside the model's figure:
    ``{source: URL or citation, figure: what was reported, metric: a harness metric,
    percentile: p50 | p90 | p99 | max (default p50), low: duration, high: duration}``."""
    if v is None:
        return None
    from workloads.harness import METRICS  # the harness imports nothing of this module's at load

    if not isinstance(v, dict):
        raise _bad(path, "null or a mapping with " + ", ".join(FIELD_REPORT_KEYS), v)
    for key in v:
        if key not in FIELD_REPORT_KEYS:
            raise _unknown(path, key, list(FIELD_REPORT_KEYS))
    for key in ("source", "figure", "metric", "low", "high"):
        if key not in v:
            raise _Invalid(f"{path}.{key}", "expected a value, got none (missing)")
    out = {"source": _one_line(v["source"], f"{path}.source"), "figure": _one_line(v["figure"], f"{path}.figure"),
           "metric": _choice(METRICS)(v["metric"], f"{path}.metric"),
           "percentile": _choice(("p50", "p90", "p99", "max"))(v.get("percentile", "p50"), f"{path}.percentile"),
           "low": _duration(v["low"], f"{path}.low"), "high": _duration(v["high"], f"{path}.high")}
    if out["low"] > out["high"]:
        raise _Invalid(f"{path}.low", f"expected low <= high ({out['high']:g} us), got {out['low']:g} us")
    return out


def _nframes(v: Any, path: str) -> int | str:
    if v == "auto" and isinstance(v, str):
        return v
    if not _is_int(v) or v < 1:
        raise _bad(path, "'auto' or a positive integer (frames per partition)", v)
    return v


def _latency(v: Any, path: str) -> Any:
    """Check with ``parse_latency``; keep the value as given."""
    try:
        parse_latency(v, path)
    except ValueError as e:
        where, sep, rest = str(e).partition(": ")
        if not sep or not where.startswith(path):
            where, rest = path, str(e)
        # parse_latency's wording, turned into "expected ..., got ..." where it is not already
        rest = re.sub(r"^missing, required for (dist \S+), got (.*)$", r"expected a number (required for \1), got none in \2", rest)
        rest = re.sub(r"^missing \(expected (one of [^)]*)\), got (.*)$", r"expected a distribution name (\1), got none in \2", rest)
        rest = re.sub(r"^unknown distribution (.*) \(expected (one of [^)]*)\)$", r"expected \2, got \1", rest)
        rest = re.sub(r"^must be finite\b", "expected a finite number", rest)
        rest = re.sub(r"^must be ([<>]=?) ", r"expected a number \1 ", rest)
        rest = re.sub(r"^must be ", "expected ", rest)
        raise _Invalid(where, rest) from None
    return copy.deepcopy(v)


_DURATION = re.compile(r"\s*((?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?)\s*(us|ms|min|s)\s*")


def _duration(v: Any, path: str) -> float:
    """A positive number of microseconds, or a string with a unit: '500us', '250ms', '2s'."""
    expected = "a positive number of microseconds or a string like '250ms' (units us, ms, s, min)"
    if _is_number(v):
        us = float(v)
    elif isinstance(v, str) and (m := _DURATION.fullmatch(v)):
        us = float(m.group(1)) * DURATION_UNITS[m.group(2)]
    else:
        raise _bad(path, expected, v)
    if not math.isfinite(us) or us <= 0:
        raise _bad(path, expected, v)
    return us


def _mix(v: Any, path: str) -> dict[str, int | float]:
    if not isinstance(v, dict):
        raise _bad(path, f"a mapping of operation weights over {', '.join(OPS)}", v)
    for op in v:
        if op not in OPS:
            raise _unknown(path, op, OPS, what="operation")
    out: dict[str, int | float] = {}
    for op in OPS:
        w = v.get(op, 0)
        if not _is_number(w) or w < 0:
            raise _bad(f"{path}.{op}", "a weight: a number >= 0", w)
        out[op] = w
    return out


def _sweep(v: Any, path: str) -> dict[str, Any] | None:
    if v is None:
        return None
    if not isinstance(v, dict):
        raise _bad(path, "a mapping {key: KNOB PATH, values: [v1, v2, ...]} or null", v)
    for k in v:
        if k not in ("key", "values"):
            raise _unknown(path, k, ("key", "values"))
    if "key" not in v:
        raise _Invalid(f"{path}.key", "expected a knob path such as activity.streams, got nothing (missing)")
    key = v["key"]
    if not isinstance(key, str) or not _sweepable(key):
        err = _bad(f"{path}.key", "a knob path such as activity.streams", key)
        if isinstance(key, str):
            guess = difflib.get_close_matches(key, _sweepable_paths(), n=1, cutoff=0.6)
            if guess:
                err = _Invalid(err.path, f"{err.detail}; did you mean {guess[0]}?")
        raise err
    values = v.get("values")
    if not isinstance(values, list) or not values:
        raise _bad(f"{path}.values", f"a non-empty list of values for {key}", values)
    for i, x in enumerate(values):
        if x in values[:i]:
            raise _bad(f"{path}.values[{i}]", f"distinct values (the same as values[{values.index(x)}])", x)
    return {"key": key, "values": copy.deepcopy(values)}


# ---------------------------------------------------------------------------------------------
# the schema


@dataclass(frozen=True)
class Knob:
    """One entry of the schema: its default, its check, and the keys one may address below it
    (the operations of ``activity.mix``, a latency mapping's parameters, ``sweep.key/values``)."""

    default: Any
    check: Callable[[Any, str], Any]
    expected: str
    sub: tuple[str, ...] = ()


KNOBS: dict[str, Knob] = {
    "name": Knob(None, _name, "a non-empty one-line string (default: the file stem)"),
    "description": Knob("", _one_line, "a one-line string"),
    "question": Knob("", _text, "a string"),
    "partitions": Knob(2, _positive_int, "a positive integer"),
    "cpus_per_partition": Knob(4, _positive_int, "a positive integer"),
    "mms": Knob(2, _positive_int, "a positive integer"),
    "secondaries_per_mm": Knob(1, _positive_int, "a positive integer"),
    "nframes": Knob("auto", _nframes, "'auto' or a positive integer"),
    "secondary.kind": Knob("gru", _choice(SECONDARY_KINDS), " | ".join(SECONDARY_KINDS)),
    "gru.dropin": Knob("guarded", _choice(tuple(GRU_DROPINS)), " | ".join(GRU_DROPINS)),
    "sva.iommu": Knob("intel", _choice(tuple(IOMMUS)), " | ".join(IOMMUS)),
    "sva.completion": Knob(2.0, _latency, "a latency", LATENCY_PARAMS),
    "activity.streams": Knob(2, _count, "an integer >= 0"),
    "activity.mix": Knob({op: (1 if op == "munmap" else 0) for op in OPS}, _mix, "weights >= 0 over " + ", ".join(OPS), OPS),
    "activity.rate": Knob(1000, _positive_number, "a positive number (operations per second per stream)"),
    "activity.pages": Knob(64, _positive_int, "a positive integer (pages per operation)"),
    "callout.latency": Knob(20, _latency, "a latency", LATENCY_PARAMS),
    "topology.hop_latency": Knob(1.0, _latency, "a latency", LATENCY_PARAMS),
    "topology.hops": Knob(1, _positive_int, "a positive integer"),
    "interconnect.transport": Knob(DEFAULT_TRANSPORT, _choice(TRANSPORTS), " | ".join(TRANSPORTS)),
    "interconnect.deadline": Knob("auto", _deadline, "auto, none, or a positive number of us or '1s'"),
    "stall.partition": Knob(None, _partition_name, "null or a partition name (p0, p1, ...)"),
    "stall.start": Knob(0.0, _start, "0 or a positive number of us or '10ms'"),
    "stall.length": Knob(60_000_000.0, _duration, "a positive number of us or '50min'"),
    "srcu.scope": Knob("global", _choice(SRCU_SCOPES), " | ".join(SRCU_SCOPES)),
    "srcu.expedited": Knob(False, _boolean, "true or false"),
    "srcu.algorithm": Knob("classic", _choice(tuple(SRCU_ALGORITHMS)), " | ".join(SRCU_ALGORITHMS)),
    "srcu.fanout_leaf": Knob(CONFIG_RCU_FANOUT_LEAF, _fanout, "an integer in 2..64"),
    "srcu.fanout": Knob(CONFIG_RCU_FANOUT, _fanout, "an integer in 2..64"),
    "srcu.exp_holdoff": Knob(DEFAULT_SRCU_EXP_HOLDOFF_US, _number, "a number >= 0 (us)"),
    "srcu.tree_version": Knob(DEFAULT_TREE_VERSION, _choice(TREE_VERSIONS), " | ".join(TREE_VERSIONS)),
    "kernel.hz": Knob(DEFAULT_HZ, _hz, " | ".join(map(str, HZ_CHOICES))),
    "semantics": Knob("v3.10", _choice(tuple(SEMANTICS)), " | ".join(SEMANTICS)),
    "fanout": Knob("sequential", _choice(FANOUTS), " | ".join(FANOUTS)),
    "teardown": Knob("unregister", _choice(TEARDOWNS), " | ".join(TEARDOWNS)),
    "measure.exits": Knob(5, _count, "an integer >= 0"),
    "measure.unregisters": Knob(10, _count, "an integer >= 0"),
    "duration": Knob(100_000.0, _duration, "a positive number of us or '250ms', '2s', '500us'"),
    "seed": Knob(0, _any_int, "an integer"),
    "field_report": Knob(None, _field_report, "null or {source, figure, metric, percentile, low, high}", FIELD_REPORT_KEYS),
    "sweep": Knob(None, _sweep, "{key: KNOB PATH, values: [...]} or null", ("key", "values")),
}


def _build_tree() -> dict[str, Any]:
    tree: dict[str, Any] = {}
    for path, knob in KNOBS.items():
        node = tree
        *sections, leaf = path.split(".")
        for s in sections:
            node = node.setdefault(s, {})
        node[leaf] = knob
    return tree


_TREE = _build_tree()


def _join(prefix: str, key: Any) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


def _unknown(prefix: str, key: Any, known: Sequence[str], what: str = "key") -> _Invalid:
    """An unknown key below ``prefix``, with the closest known key if one is close."""
    if not isinstance(key, str):
        hint = " (YAML reads unquoted yes/no/on/off as booleans: quote it)" if isinstance(key, bool) else ""
        return _Invalid(_join(prefix, repr(key)), f"expected a key name (a string), got {_show(key)}{hint}")
    guess = difflib.get_close_matches(key, known, n=1, cutoff=0.6)
    suggestion = _join(prefix, guess[0]) if guess else None
    if suggestion is None and not prefix:  # a knob written at the wrong level: streams -> activity.streams
        last = {p.rsplit(".", 1)[-1]: p for p in KNOBS if "." in p}
        near = difflib.get_close_matches(key, list(last), n=1, cutoff=0.8)
        suggestion = last[near[0]] if near else None
    hint = f"; did you mean {suggestion}?" if suggestion else ""
    return _Invalid(_join(prefix, key), f"unknown {what}{hint} (expected one of: {', '.join(known)})")


def _sweepable(path: str) -> bool:
    """Whether ``path`` names a knob one can vary: a schema leaf (not name, description,
    question, sweep), or one level below activity.mix or a latency."""
    parts = path.split(".")
    node: Any = _TREE
    for i, part in enumerate(parts):
        if isinstance(node, dict):
            if part not in node:
                return False
            node = node[part]
            continue
        # below a knob: exactly one more part, one of its sub keys
        return i == len(parts) - 1 and part in node.sub and node is not KNOBS["sweep"]
    return isinstance(node, Knob) and path not in _DESCRIBED


def _sweepable_paths() -> list[str]:
    out = [p for p in KNOBS if p not in _DESCRIBED]
    out += [f"activity.mix.{op}" for op in OPS]
    return out


def _validate_tree(doc: Any, tree: dict[str, Any], prefix: str) -> dict[str, Any]:
    """Check ``doc`` against one level of the schema and fill the defaults (no cross checks)."""
    if doc is None and prefix:  # a section written with nothing under it
        doc = {}
    if not isinstance(doc, dict):
        what = "scenario knobs" if not prefix else f"{prefix} knobs ({', '.join(tree)})"
        raise _bad(prefix or "top level", f"a mapping of {what}", doc)
    for key in doc:
        if key not in tree:
            raise _unknown(prefix, key, list(tree))
    out: dict[str, Any] = {}
    for key, node in tree.items():
        path = _join(prefix, key)
        if isinstance(node, dict):
            out[key] = _validate_tree(doc.get(key), node, path)
        elif key in doc:
            out[key] = node.check(doc[key], path)
        else:
            out[key] = copy.deepcopy(node.default)
    return out


def _check_cross(values: dict[str, Any]) -> None:
    """The checks that look at more than one knob, and every sweep value applied in turn."""
    streams, mix = values["activity"]["streams"], values["activity"]["mix"]
    if streams > 0 and not any(w > 0 for w in mix.values()):
        raise _Invalid("activity.mix", f"expected at least one weight > 0 while activity.streams is {streams}, got all weights 0")
    if mix.get("oom_reap", 0) > 0 and values["semantics"] not in OOM_REAPER_MODES:
        raise _Invalid("activity.mix.oom_reap", f"expected weight 0 under semantics {values['semantics']!r}, which has "
                                                f"no OOM reaper (modes with one: {', '.join(OOM_REAPER_MODES)}), "
                                                f"got {mix['oom_reap']}")
    kind = values["secondary"]["kind"]
    what = INTERVAL_KINDS.get(kind)
    if what is not None and values["semantics"] not in MODERN:
        raise _Invalid("secondary.kind", f"expected semantics {' or '.join(MODERN)} with secondary.kind {kind} ({what} "
                                         f"needs an interval notifier, Linux 5.5), got semantics {values['semantics']!r}")
    if what is not None and values["teardown"] != "unregister":
        raise _Invalid("teardown", f"expected unregister with secondary.kind {kind} ({what} is torn down by removing its "
                                   f"interval notifier, which has no mmu_notifier_put), got {values['teardown']!r}")
    if kind == "sva" and values["semantics"] not in MODERN:
        raise _Invalid("secondary.kind", f"expected semantics {' or '.join(MODERN)} for 'sva' (IOMMU SVA needs "
                                         f"->invalidate_range or ->arch_invalidate_secondary_tlbs), got semantics "
                                         f"{values['semantics']!r}")
    m = values["measure"]
    if m["exits"] == 0 and m["unregisters"] == 0:
        raise _Invalid("measure", "expected measure.exits or measure.unregisters > 0, got both 0 (nothing to measure)")
    stalled = values["stall"]["partition"]
    if stalled is not None and int(stalled[1:]) >= values["partitions"]:
        raise _Invalid("stall.partition", f"expected one of p0..p{values['partitions'] - 1} (partitions is "
                                          f"{values['partitions']}), got {stalled!r}")
    sweep = values["sweep"]
    if sweep is not None:
        for i, v in enumerate(sweep["values"]):
            try:
                _point(values, sweep["key"], v)
            except _Invalid as e:
                raise _Invalid(f"sweep.values[{i}]", f"{e.path}: {e.detail}") from None


def _validate(doc: Any, *, cross: bool = True, default_name: str | None = None) -> dict[str, Any]:
    values = _validate_tree(doc, _TREE, "")
    if values["name"] is None:
        if default_name is None:
            raise _Invalid("name", "expected a non-empty one-line string, got nothing (missing)")
        values["name"] = default_name
    if cross:
        _check_cross(values)
    return values


def _assign(doc: dict[str, Any], path: str, value: Any) -> None:
    """Set ``path`` in ``doc`` (a validated values dict, changed in place) to ``value``: a
    mapping given for a section is merged into it; below a knob (a mix op, a latency
    parameter, sweep.key/values) the knob's current mapping is copied and changed."""
    parts = path.split(".")
    if not all(re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", p) for p in parts):
        raise _Invalid(path or "''", "expected a dotted key path such as activity.streams")
    node: Any = _TREE
    cur = doc
    prefix = ""
    for i, part in enumerate(parts):
        here = _join(prefix, part)
        last = i == len(parts) - 1
        if isinstance(node, dict):
            if part not in node:
                raise _unknown(prefix, part, list(node))
            child = node[part]
            if last:
                if isinstance(child, dict) and isinstance(value, dict) and isinstance(cur.get(part), dict):
                    cur[part] = {**cur[part], **value}
                else:
                    cur[part] = value
                return
            if isinstance(child, dict):
                cur = cur.setdefault(part, {})
            node, prefix = child, here
            continue
        # ``node`` is a knob and ``part`` a key below it
        knob, owner = node, prefix
        if not knob.sub or not last:
            raise _Invalid(path, f"unknown key: {owner} is a single value, not a section")
        if part not in knob.sub:
            raise _unknown(owner, part, knob.sub)
        current = cur.get(owner.rsplit(".", 1)[-1])
        if current is None and knob is KNOBS["sweep"]:
            current = {}
        if not isinstance(current, dict):
            raise _Invalid(path, f"expected {owner} to be a mapping to set {part} in, got {owner} = {_show(current)}; set {owner} as a whole")
        cur[owner.rsplit(".", 1)[-1]] = {**current, part: value}
        return
    raise AssertionError(f"_assign: {path!r} ended without a value set")  # every last part returns above


def _point(values: dict[str, Any], key: str, value: Any) -> dict[str, Any]:
    """``values`` with ``key`` set to ``value`` and no sweep, fully validated."""
    doc = copy.deepcopy(values)
    doc["sweep"] = None
    _assign(doc, key, value)
    return _validate(doc)


def _parse_value(text: str) -> Any:
    return yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader


# ---------------------------------------------------------------------------------------------
# the scenario


@dataclass(frozen=True)
class Scenario:
    """A validated scenario.

    Invariant (checked in ``__post_init__``): ``values`` is the full validated nested dict, every
    default filled in (``nframes`` may be ``'auto'``; ``duration`` in us; ``activity.mix`` names
    all seven operations; latencies as the user gave them), and ``name``, ``description``,
    ``question`` equal its entries. Do not mutate ``values``; ``to_dict()`` gives a copy.
    """

    name: str
    description: str
    question: str
    source: str  # the file as given, or "built-in NAME"
    values: dict[str, Any]

    def __post_init__(self) -> None:
        try:
            values = _validate(copy.deepcopy(self.values), default_name=self.name)
        except _Invalid as e:
            raise ScenarioError(self.source, e.path, e.detail) from None
        object.__setattr__(self, "values", values)
        for key in ("name", "description", "question"):
            if getattr(self, key) != values[key]:
                raise ScenarioError(self.source, key, f"expected the Scenario field to equal values[{key!r}] ({values[key]!r}), got {getattr(self, key)!r}")

    @classmethod
    def _of(cls, values: dict[str, Any], source: str) -> "Scenario":
        return cls(values["name"], values["description"], values["question"], source, values)

    def get(self, path: str) -> Any:
        """The value at dotted ``path`` (``"activity.streams"``, ``"srcu"``, ``"activity.mix.cow"``),
        a copy; an unknown path is a ``ScenarioError`` naming the closest key."""
        cur: Any = self.values
        prefix = ""
        for part in path.split("."):
            if not isinstance(cur, dict):
                raise ScenarioError(self.source, path, f"unknown key: {prefix} is {_show(cur)}, not a section")
            if part not in cur:
                e = _unknown(prefix, part, list(cur))
                raise ScenarioError(self.source, e.path, e.detail)
            cur = cur[part]
            prefix = _join(prefix, part)
        return copy.deepcopy(cur)

    @property
    def nframes(self) -> int:
        """Frames per partition: ``nframes`` if given, else (``auto``) generously
        ``4 * max(activity.pages, 512) * (mms * (1 + secondaries_per_mm) + activity.streams +
        measure.exits + measure.unregisters)`` rounded up to a power of two, at least 65536
        (512: a THP collapse needs a whole 2 MiB region)."""
        v = self.values
        if v["nframes"] != "auto":
            return int(v["nframes"])
        units = (v["mms"] * (1 + v["secondaries_per_mm"]) + v["activity"]["streams"]
                 + v["measure"]["exits"] + v["measure"]["unregisters"])
        need = 4 * max(v["activity"]["pages"], 512) * units
        return max(MIN_AUTO_NFRAMES, 1 << (need - 1).bit_length())

    def with_value(self, path: str, value: Any) -> "Scenario":
        """A copy with knob ``path`` set to ``value`` (a Python value, e.g. from a sweep), fully
        validated; a bad path or value is a ``ScenarioError`` naming the key path."""
        doc = copy.deepcopy(self.values)
        try:
            _assign(doc, path, value)
            return Scenario._of(_validate(doc), self.source)
        except _Invalid as e:
            raise ScenarioError(self.source, e.path, e.detail) from None

    def with_overrides(self, pairs: Sequence[str]) -> "Scenario":
        """A copy with each ``"key.path=value"`` applied in order (the value read as a YAML scalar
        or flow value: ``srcu.scope=per_mm``, ``srcu.expedited=true``, ``duration=250ms``,
        ``callout.latency={dist: pareto, scale: 20, alpha: 1.5}``, ``sweep.values=[1, 2]``).
        A malformed pair, an unknown key or a bad value is a ``ScenarioError`` naming
        ``--set key.path=value``; a check across knobs (mix vs streams, measure, sweep values)
        runs after all pairs and names the pairs that touched that section."""
        if isinstance(pairs, str):
            raise TypeError(f"pairs must be a list of 'key.path=value' strings, got the str {pairs!r}")
        doc = copy.deepcopy(self.values)
        applied: list[tuple[str, str]] = []
        for pair in pairs:
            origin = f"--set {pair}"
            if not isinstance(pair, str) or "=" not in pair:
                raise ScenarioError(self.source, None, f"expected key.path=value (e.g. activity.streams=4), got {_show(pair)}", origin)
            key, _, text = pair.partition("=")
            key = key.strip()
            if not key:
                raise ScenarioError(self.source, None, f"expected key.path=value, got no key path before '=' in {pair!r}", origin)
            try:
                value = _parse_value(text)
            except yaml.YAMLError as e:
                problem = getattr(e, "problem", None) or str(e)
                raise ScenarioError(self.source, key, f"expected a YAML value (a scalar, [a, list] or {{a: mapping}}), got {text.strip()!r} ({problem})", origin) from None
            try:
                _assign(doc, key, value)
                doc = _validate(doc, cross=False)
            except _Invalid as e:
                raise ScenarioError(self.source, e.path, e.detail, origin) from None
            applied.append((key, pair))
        try:
            _check_cross(doc)
        except _Invalid as e:
            section = e.path.split(".")[0]
            touched = [p for k, p in applied if k.split(".")[0] == section] if section != "sweep" else []
            origin = " ".join(f"--set {p}" for p in (touched or [p for _, p in applied])) or None
            raise ScenarioError(self.source, e.path, e.detail, origin) from None
        return Scenario._of(doc, self.source)

    def sweep_points(self) -> list[tuple[Any, "Scenario"]]:
        """``[(value, scenario with sweep.key = value and no sweep), ...]`` for a sweep, in the
        order of ``sweep.values``; ``[]`` when the scenario has no sweep."""
        sweep = self.values["sweep"]
        if sweep is None:
            return []
        return [(copy.deepcopy(v), Scenario._of(_point(self.values, sweep["key"], v), self.source)) for v in sweep["values"]]

    def to_dict(self) -> dict[str, Any]:
        """A deep copy of ``values``: loadable again, and the ``config`` of a results.json."""
        return copy.deepcopy(self.values)

    def _partition_fields(self) -> dict[str, Any]:
        """The ``PartitionConfig`` fields (``cluster/config.py``) of this scenario."""
        v = self.values
        return dict(
            partitions=v["partitions"],
            cpus=v["cpus_per_partition"],
            nframes=self.nframes,
            srcu_scope=v["srcu"]["scope"],
            srcu_expedited=v["srcu"]["expedited"],
            srcu_algorithm=v["srcu"]["algorithm"],
            srcu_fanout_leaf=v["srcu"]["fanout_leaf"],
            srcu_fanout=v["srcu"]["fanout"],
            srcu_exp_holdoff_us=v["srcu"]["exp_holdoff"],
            srcu_tree_version=v["srcu"]["tree_version"],
            jiffy_us=jiffy_us(v["kernel"]["hz"]),
            fanout=v["fanout"],
            hops=v["topology"]["hops"],
            semantics=v["semantics"],
            gru_dropin=v["gru"]["dropin"],
        )

    def sim_config(self, **extra: Any) -> "SimConfig":
        """The ``SimConfig`` of this scenario's partitions; ``extra`` sets other SimConfig fields
        (scheduler, trace, topology, ...) and wins over the scenario's."""
        from cluster.sim import SimConfig

        v = self.values
        kw = self._partition_fields()
        kw.update(
            hop_latency=copy.deepcopy(v["topology"]["hop_latency"]),
            callout_latency=copy.deepcopy(v["callout"]["latency"]),
            **_deadline_fields(v["interconnect"]["deadline"]),
            stalls=({} if v["stall"]["partition"] is None
                    else {v["stall"]["partition"]: (v["stall"]["start"], v["stall"]["length"])}),
            seed=v["seed"],
            sva_iommu=v["sva"]["iommu"],
            sva_completion=copy.deepcopy(v["sva"]["completion"]),
        )
        kw.update(extra)
        return SimConfig(**kw)

    def ray_config(self, address: str | None = None, **extra: Any) -> "RayConfig":
        """The ``RayConfig`` of this scenario's partitions on Ray at ``address`` (see
        ``RayConfig.address``); ``extra`` sets other RayConfig fields and wins.

        RayConfig injects fixed latencies (``hop_latency_us`` per hop, ``callout_latency_us``
        per callout) on top of the real network, so a distribution is reduced to a typical
        value (constant: its value; uniform: the midpoint; lognormal: the median; pareto: the
        scale, its minimum; empirical: the samples' median): the real run has its own tail."""
        from cluster.ray_backend import RayConfig

        v = self.values

        def typical_us(latency: Any, key: str) -> float:
            d = parse_latency(latency, key)
            if d.dist == "uniform":
                return (d.param("low") + d.param("high")) / 2.0
            if d.dist == "empirical":
                return float(statistics.median(d.param("samples")))
            return float(d.param({"constant": "value", "lognormal": "median", "pareto": "scale"}[d.dist]))

        if v["stall"]["partition"] is not None:
            raise ScenarioError(self.source, "stall.partition", "expected null on the ray backend (a stall is "
                                f"injected by the sim's interconnect), got {v['stall']['partition']!r}")
        if v["interconnect"]["deadline"] == "none":
            raise ScenarioError(self.source, "interconnect.deadline", "expected a duration on the ray backend "
                                "(every gRPC call has a deadline), got none")
        kw = self._partition_fields()
        kw.update(
            hop_latency_us=typical_us(v["topology"]["hop_latency"], "topology.hop_latency"),
            callout_latency_us=typical_us(v["callout"]["latency"], "callout.latency"),
            transport=v["interconnect"]["transport"],
            **_deadline_fields(v["interconnect"]["deadline"]),
            address=address,
        )
        kw.update(extra)
        return RayConfig(**kw)


# ---------------------------------------------------------------------------------------------
# loading


class _StrictLoader(yaml.SafeLoader):
    """A SafeLoader that refuses duplicate keys in a mapping (PyYAML keeps the last silently)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        if isinstance(node, yaml.MappingNode):
            seen: set[Any] = set()
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    dup = key in seen
                    seen.add(key)
                except TypeError:  # an unhashable key: the base class reports it
                    continue
                if dup:
                    raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


_StrictLoader.add_constructor(yaml.resolver.BaseResolver.DEFAULT_MAPPING_TAG, _StrictLoader.construct_mapping)


def _from_text(text: str, source: str, default_name: str) -> Scenario:
    try:
        doc = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 - a SafeLoader
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None) or getattr(e, "context_mark", None)
        where = f"line {mark.line + 1}, column {mark.column + 1}" if mark is not None else None
        problem = getattr(e, "problem", None) or str(e)
        raise ScenarioError(source, where, f"YAML syntax error: {problem}") from None
    if doc is None:
        raise ScenarioError(source, "top level", "expected a mapping of scenario knobs, got an empty document")
    try:
        values = _validate(doc, default_name=default_name)
    except _Invalid as e:
        raise ScenarioError(source, e.path, e.detail) from None
    return Scenario._of(values, source)


def _builtin_dir() -> Any:
    return resources.files(BUILTIN_PACKAGE) / BUILTIN_DIR


def _builtin_names() -> list[str]:
    d = _builtin_dir()
    if not d.is_dir():
        return []
    return sorted(p.name[: -len(".yaml")] for p in d.iterdir() if p.name.endswith(".yaml"))


def _load_builtin(name: str) -> Scenario:
    """A built-in must name itself after its file and have a description and a question."""
    source = f"built-in {name}"
    content = (_builtin_dir() / f"{name}.yaml").read_text(encoding="utf-8")
    scenario = _from_text(content, source, default_name=name)
    given = yaml.load(content, Loader=_StrictLoader).get("name")  # noqa: S506 - a SafeLoader
    if given != name:
        raise ScenarioError(source, "name", f"expected {name!r} (a built-in is named after its file), got {given!r}")
    for key in ("description", "question"):
        if not scenario.values[key]:
            raise ScenarioError(source, key, f"expected a non-empty string in a built-in, got {scenario.values[key]!r}")
    return scenario


def load_scenario(name_or_path: str | os.PathLike[str]) -> Scenario:
    """Load and validate a scenario: a path to a ``.yaml``/``.yml`` file, or a built-in's name.

    A missing file or an unknown built-in is a ``ScenarioError`` listing the built-ins; a YAML
    syntax error is one naming the line; a bad key or value is one naming the key path."""
    text = os.fspath(name_or_path)
    names = _builtin_names()
    listing = f"built-ins: {', '.join(names)}" if names else "no built-ins are installed"
    is_path = isinstance(name_or_path, os.PathLike) or text.lower().endswith((".yaml", ".yml")) or "/" in text or os.sep in text
    if not is_path:
        if text in names:
            return _load_builtin(text)
        if Path(text).is_file():
            raise ScenarioError(text, None, f"expected a .yaml or .yml scenario file or a built-in name, got this file ({listing})")
        guess = difflib.get_close_matches(text, names, n=1, cutoff=0.6)
        hint = f"; did you mean {guess[0]}?" if guess else ""
        raise ScenarioError(text, None, f"expected a built-in scenario name or a path to a .yaml file, got neither{hint} ({listing})")
    path = Path(text)
    try:
        content = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ScenarioError(text, None, f"no such scenario file; expected a path to a .yaml file or a built-in name ({listing})") from None
    except UnicodeDecodeError as e:
        raise ScenarioError(text, None, f"expected UTF-8 text, got undecodable bytes at offset {e.start}") from None
    except OSError as e:
        raise ScenarioError(text, None, f"cannot read the scenario file: {e.strerror or e}") from None
    return _from_text(content, text, default_name=path.stem)


def builtin_scenarios() -> list[tuple[str, str]]:
    """``[(name, description), ...]`` of the built-in scenarios, sorted by name (each loaded and
    validated, so a broken built-in is a ``ScenarioError`` here)."""
    return [(name, load_scenario(name).description) for name in _builtin_names()]
