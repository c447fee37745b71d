"""An analytic model of the global-SRCU hang: how long a scenario's measured unregisters and
exits wait in ``synchronize_srcu()`` (``unregister_srcu_wait``, ``exit_srcu_wait``), predicted
from its activity without running it (``mmusim predict``). The derivation, its assumptions and
the validation against the sim are in ``docs/srcu-hang-model.md``; in short:

1. **The wait, given the readers** (``srcu_wait``). A measured teardown calls
   ``synchronize_srcu()`` when no grace period runs (the harness measures one teardown at a
   time, and each one's grace period has ended before the next starts), so the caller runs
   v3.10's ``srcu_advance_batches()`` itself: the inactive index is empty (the last grace
   period drained it), the flip is immediate, and the old index is drained by
   ``try_check_zero`` with ``T = max(trycount, 2)`` checks ``5 us`` apart (``trycount`` 2, 12
   when expedited); if readers remain, the worker checks once per jiffy ``J``, counted from the
   last failed check. With ``R`` the largest residual time of the readers in flight at the
   call, ``W = min{b in 0, 5, ..., 5(T-1), 5(T-1) + J, 5(T-1) + 2J, ... : b >= R}``. Readers
   that start after the flip use the other index and never delay it.
2. **The readers** (``_Stream``). Each background stream is a renewal-reward process: a
   Poisson gap of mean ``1/activity.rate``, one operation (its read sections: munmap =
   range_start + range_end; mprotect = 2 calls x (range_start + range_end) per VMA piece of
   the range; migrate = one invalidate_page per page), then the secondaries' faults back.
   A read section is the walk over the mm's notifiers: per notifier one callout round trip
   (hops x hop latency + the callout's extra latency + a calibrated floor if given, each way,
   sampled independently) plus the GRU's handling (its TLB flush, 2 us a page); sequential
   walks add, ``fanout: parallel`` takes the slowest. By the renewal-reward theorem a stream
   observed at a random time is in a read section with residual > r with probability
   ``G(r) = sum over sections of E[clip(D - r, 0, a)] / E[cycle]``, where ``a`` bounds the
   section's age by the time the stream has run (a finite-horizon correction that keeps heavy
   tails finite; with light tails ``a`` never binds and this is the equilibrium
   (length-biased residual) distribution). ``G(0) = rho``, the fraction of time in a section.
3. **The partition**. ``synchronize_srcu()`` on a global domain waits for every stream of the
   partition: ``P(R <= r) = (1 - G(r)) ** S`` for ``S`` independent streams. So
   ``P(W <= b) = P(R <= b)`` at every wait value ``b``; the mean, the p99 and ``P(W = 0)``
   follow, and so does the p99 that an HDR histogram of ``n`` samples reports (the median of
   its order statistic), which is what a run's ``p99`` is.
4. **Heavy tails** (a pareto latency with alpha <= 2): the expectation over runs is set by
   sections too rare for most runs to have, and a run's measurements share its longest ones;
   ``Prediction.typical`` is the same prediction with the sections longer than the one the
   partition's streams start about once per run left out: what a typical run measures.

The section lengths are integrated numerically: one Latin-hypercube sample (``SAMPLES`` points,
fixed seed, so a prediction is deterministic) of each latency's quantile function
(``LatencyDist.quantile``), summed into the network part of a section; every GRU handling time
is a constant shift of it. Where the model does not apply it refuses (``NotModelled``, naming
the knob): XPMEM and KVM secondaries, operations other than munmap/mprotect/migrate, other
semantics than v3.10, latencies without a finite mean. ``srcu.scope: per_mm`` (the measured mms
carry no background activity: no wait) and ``teardown: put`` (unregister does not wait) are
predicted exactly.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from cluster.topology import LatencyDist, parse_latency
from nodes.secondary.gru import DEFAULT_FLUSH_PER_PAGE_US, DEFAULT_FULL_FLUSH_US, GRUMAXINVAL
from nodes.srcu import SYNCHRONIZE_SRCU_EXP_TRYCOUNT, SYNCHRONIZE_SRCU_READER_DELAY_US, SYNCHRONIZE_SRCU_TRYCOUNT
from workloads.harness import TOUCHED_PER_OP, StudySpec
from workloads.metrics import PERCENTILES
from workloads.scenario import Scenario, ScenarioError

__all__ = [
    "NotModelled", "WaitPrediction", "PartitionInputs", "Prediction", "MeasurementPoint",
    "Comparison", "predict", "compare", "scenario_of_run", "jiffy_us", "srcu_wait", "design_points", "points_of", "measured_points",
    "format_predictions", "format_comparison", "WAIT_METRICS", "MODELLED_OPS",
]

SAMPLES = 1 << 16  # Latin-hypercube points per latency
SAMPLE_SEED = 20130630  # fixed: a prediction is a function of the scenario alone
MODELLED_OPS = ("munmap", "mprotect", "migrate")
WAIT_METRICS = ("unregister_srcu_wait", "exit_srcu_wait")
_TAIL = 1e-12  # a wait value whose probability of being exceeded is below this ends the grid


class NotModelled(ScenarioError):
    """A scenario the model does not cover: ``str()`` names the scenario, the knob and why."""


def jiffy_us(scenario: Scenario) -> float:
    """One jiffy of the scenario's partitions, in us (``1e6 / kernel.hz``, as the scenario
    gives it to its partitions' SRCU). SRCU's worker polls once per jiffy."""
    return float(scenario.sim_config().jiffy_us)


def _wait_values(jiffy: float, trycount: int, delay_us: float, up_to: float) -> np.ndarray:
    """The values a fast-path synchronize_srcu() wait can take, ascending, up to the first one
    at or above ``up_to``: 0, then each fast-path check (``delay_us`` apart, T - 1 of them
    after the first), then each jiffy of the worker after the last failed check."""
    tries = max(trycount, 2)  # srcu_advance_batches() drains the old index with max(trycount, 2)
    fast = [delay_us * k for k in range(tries)] if delay_us > 0 else [0.0]
    last = fast[-1]
    jiffies = max(1, math.ceil(max(up_to - last, 0.0) / jiffy))
    return np.concatenate([np.array(fast), last + jiffy * np.arange(1, jiffies + 1)])


def srcu_wait(residual_us: float, *, jiffy: float, trycount: int = SYNCHRONIZE_SRCU_TRYCOUNT,
              delay_us: float = SYNCHRONIZE_SRCU_READER_DELAY_US) -> float:
    """How long a synchronize_srcu() that finds no grace period running waits when the last of
    the readers in flight at the call ends ``residual_us`` later (0 or less: none in flight):
    the first fast-path check (``delay_us`` apart, ``max(trycount, 2)`` in all) or worker check
    (once per ``jiffy`` after the last failed one) that comes at or after the reader's end."""
    if residual_us <= 0:
        return 0.0
    values = _wait_values(jiffy, trycount, delay_us, residual_us)
    return float(values[np.searchsorted(values, residual_us, side="left")])


# -- the read sections of one stream --------------------------------------------------------


def _lhs(dist: LatencyDist, rng: np.random.Generator, scale: float = 1.0) -> np.ndarray:
    """A Latin-hypercube sample of ``scale`` x ``dist``: one value at each of ``SAMPLES``
    equally spaced ranks, in random order (so sums of independent latencies pair ranks at
    random)."""
    ranks = (rng.permutation(SAMPLES) + 0.5) / SAMPLES
    return scale * dist.quantile(ranks)


def _gru_flush_us(pages: float) -> float:
    """gru_flush_tlb_range(): per-page invalidates, or one ASID drop above GRUMAXINVAL pages."""
    return DEFAULT_FULL_FLUSH_US if pages > GRUMAXINVAL else pages * DEFAULT_FLUSH_PER_PAGE_US


@dataclass
class _VmaPieces:
    """How many VMA pieces an mprotect of ``pages`` pages at a uniformly random start in a
    ``region``-page region covers, after some operations of the mix on it.

    VMAs split but never merge (``nodes/vmops.py``): every munmap and mprotect leaves VMA
    boundaries at its two ends, and a munmap (remapped as one VMA) clears the boundaries inside
    its range. Page boundary x is one after j operations with probability
    ``a / (a + c) * (1 - (1 - a - c) ** j)`` (a: an operation ends at x; c: a munmap covers
    it); an mprotect covers ``1 +`` the boundaries strictly inside its range, and its
    mprotect_fixup() calls the notifiers once per piece."""

    inside: np.ndarray  # per boundary x: the probability that an operation's range holds it strictly inside
    settle: np.ndarray  # a + c
    limit: np.ndarray  # a / (a + c)

    @classmethod
    def of(cls, region: int, pages: int, w_munmap: float, w_mprotect: float) -> "_VmaPieces":
        starts = region - pages + 1
        x = np.arange(1, region, dtype=np.float64)
        ends = ((x <= region - pages).astype(float) + (x >= pages).astype(float)) / starts
        inside = (np.minimum(region - pages, x - 1) - np.maximum(0, x - pages + 1) + 1).clip(0) / starts
        a = (w_munmap + w_mprotect) * ends
        settle = a + w_munmap * inside
        with np.errstate(invalid="ignore", divide="ignore"):
            limit = np.where(settle > 0, a / settle, 0.0)
        return cls(inside, settle, limit)

    def after(self, ops_done: float) -> float:
        p = self.limit * (1.0 - (1.0 - self.settle) ** max(ops_done, 0.0))
        return 1.0 + float((self.inside * p).sum())


@dataclass
class _Sections:
    """The network part of one read section (every notifier of the mm), as a sorted sample,
    with what E[(B - s)^+] needs."""

    base: np.ndarray  # sorted
    tail_sum: np.ndarray  # tail_sum[i] = sum(base[i:])

    @classmethod
    def of(cls, sample: np.ndarray) -> "_Sections":
        base = np.sort(sample)
        tail_sum = np.concatenate([np.cumsum(base[::-1])[::-1], [0.0]])
        return cls(base, tail_sum)

    def excess(self, s: np.ndarray) -> np.ndarray:
        """E[(B - s)^+] at each s."""
        i = np.searchsorted(self.base, s, side="right")
        return (self.tail_sum[i] - s * (len(self.base) - i)) / len(self.base)

    def clipped(self, shift: float, r: np.ndarray, age: float) -> np.ndarray:
        """E[clip(B + shift - r, 0, age)] at each r: the mean time, up to ``age``, that a section
        of length B + shift spends more than r before its end."""
        s = r - shift
        if math.isinf(age):
            return self.excess(s)
        return self.excess(s) - self.excess(s + age)


@dataclass
class _Stream:
    """One background stream: per operation of the mix, ``counts[t]`` read sections of type t,
    each ``shifts[t]`` us of GRU handling on top of the network part; ``other_us`` of
    non-section time per cycle (the Poisson gap and the secondaries' faults back)."""

    sections: _Sections
    counts: np.ndarray
    shifts: np.ndarray
    other_us: float
    pieces: float  # VMA pieces per mprotect call

    def cycle_us(self, age: float) -> float:
        """The mean cycle, each section counted up to ``age`` (infinite: the stationary one)."""
        r0 = np.zeros(1)
        busy = sum(c * float(self.sections.clipped(h, r0, age)[0]) for c, h in zip(self.counts, self.shifts))
        return self.other_us + busy

    def residual_tail(self, r: np.ndarray, age: float) -> np.ndarray:
        """G(r): the probability that the stream, seen at a moment ``age`` after it started, is
        in a read section that ends more than r later."""
        busy = sum(c * self.sections.clipped(h, r, age) for c, h in zip(self.counts, self.shifts))
        return np.clip(busy / self.cycle_us(age), 0.0, 1.0)

    def mean_section_us(self) -> float:
        n = float(self.counts.sum())
        mean_b = float(self.sections.base.mean())
        return float((self.counts * (mean_b + self.shifts)).sum()) / n if n else 0.0


# -- the result -------------------------------------------------------------------------------


@dataclass(frozen=True)
class MeasurementPoint:
    """One measured synchronize_srcu(): which metric, on which partition (its index), and when
    (us after the study began)."""

    metric: str
    partition: int
    t_us: float


@dataclass
class WaitPrediction:
    """The predicted distribution of one wait metric over the scenario's measurements."""

    metric: str
    n: int  # measurements of this metric (the points the prediction averages over)
    mean_us: float
    p99_us: float  # of the distribution
    sample_p99_us: float | None  # the median p99 an HDR histogram of n samples reports (its rank-ceil(0.99 n) value)
    p_no_wait: float
    sd_us: float  # of one measurement; the mean of n has a standard error of sd / sqrt(n)
    values_us: np.ndarray = field(repr=False)  # the values the wait can take
    probs: np.ndarray = field(repr=False)  # and their probabilities

    def quantile(self, q: float) -> float:
        """The smallest wait value whose distribution function reaches ``q`` (in [0, 1])."""
        cdf = np.cumsum(self.probs)
        return float(self.values_us[min(int(np.searchsorted(cdf, q - 1e-12, side="left")), len(cdf) - 1)])


@dataclass
class PartitionInputs:
    """What the model derived for one partition, so a user can see why it predicts what it does
    (at mid-run: sections counted up to half the duration)."""

    partition: str
    streams: int
    ops_per_s: float  # each stream's achieved rate (a closed loop: below activity.rate when ops are long)
    sections_per_op: float
    sections_per_s: float  # read sections started per second on the partition (lambda)
    mean_section_us: float
    rho: float  # the fraction of time one stream is inside a read section
    p_reader: float  # the probability that some reader is in flight at a random moment: 1 - (1 - rho) ** streams
    mprotect_pieces: float  # VMA pieces each mprotect call covers


@dataclass
class Prediction:
    """``predict``'s answer for one scenario."""

    scenario: str
    jiffy_us: float
    trycount: int
    expedited: bool
    scope: str
    teardown: str
    metrics: dict[str, WaitPrediction]  # the expectation over runs
    typical: dict[str, WaitPrediction]  # a typical run's: sections rarer than once per run left out
    partitions: list[PartitionInputs]
    notes: list[str]  # where the model's assumptions are strained for this scenario


# -- building the model -------------------------------------------------------------------


def _refuse(s: Scenario, path: str, why: str) -> NotModelled:
    return NotModelled(s.source, path, f"the SRCU-hang model does not cover this: {why}")


def _check_latency(s: Scenario, d: LatencyDist, path: str) -> None:
    if not math.isfinite(d.mean):
        raise _refuse(s, path, f"{d.describe()} has no finite mean, so a stream's cycle has none either "
                               f"(pareto needs alpha > 1)")


def _network_sample(s: Scenario, rng: np.random.Generator, floor: LatencyDist | None) -> np.ndarray:
    """The network part of one read section on the mm: for each of the mm's notifiers one callout
    round trip (hops x a per-hop sample + the callout's extra latency + the calibrated floor,
    each way), summed over a sequential walk or the slowest of a parallel one. Zero when the
    secondaries are on the owner itself (one partition: no interconnect)."""
    cfg = s.sim_config()
    n = s.get("secondaries_per_mm")
    if s.get("partitions") == 1:
        return np.zeros(SAMPLES)
    trips = []
    for _ in range(n):
        rtt = np.zeros(SAMPLES)
        for _way in range(2):  # request and reply, each its own one_way() draw
            rtt = rtt + _lhs(cfg.hop_dist, rng, float(cfg.hops))
            if cfg.callout_dist is not None:
                rtt = rtt + _lhs(cfg.callout_dist, rng)
            if floor is not None:
                rtt = rtt + _lhs(floor, rng)
        trips.append(rtt)
    return np.max(trips, axis=0) if s.get("fanout") == "parallel" else np.sum(trips, axis=0)


@dataclass
class _Workload:
    """What every stream of the scenario does per operation, derived once (see ``_Stream``)."""

    weights: dict[str, float]  # of the modelled operations, summing to 1
    pages: int
    per_walk: int  # notifiers whose handling a section adds up: all on a sequential walk, one on a parallel
    other_us: float  # the mean Poisson gap and the secondaries' faults back, per cycle
    fragmentation: _VmaPieces

    @classmethod
    def of(cls, s: Scenario, floor: LatencyDist | None = None) -> "_Workload":
        spec = StudySpec.from_scenario(s)
        total = sum(spec.mix.values())
        w = {op: spec.mix.get(op, 0) / total for op in MODELLED_OPS}
        # the secondaries fault TOUCHED_PER_OP pages of the range back (a GRU TLB miss: a remote
        # get_user_pages, then the DMA read: two round trips; a page touched twice hits the second time)
        cfg = s.sim_config()
        one_way = 0.0
        if spec.partitions > 1:
            one_way = cfg.hops * cfg.hop_dist.mean + (floor.mean if floor is not None else 0.0)
        trips = 2 * TOUCHED_PER_OP - (TOUCHED_PER_OP - 1) / spec.pages
        touch = spec.secondaries_per_mm * trips * 2 * one_way
        per_walk = spec.secondaries_per_mm if s.get("fanout") == "sequential" else 1
        return cls(w, spec.pages, per_walk, 1e6 / spec.rate + touch,
                   _VmaPieces.of(spec.region_pages, spec.pages, w["munmap"], w["mprotect"]))

    def stream(self, sections: _Sections, ops_done: float) -> _Stream:
        """A stream's sections and cycle after ``ops_done`` operations on its mm."""
        w, pages = self.weights, self.pages
        pieces = self.fragmentation.after(ops_done) if w["mprotect"] else 1.0
        counts = np.array([
            w["munmap"],  # munmap's range_start over its whole range
            2 * pieces * w["mprotect"],  # mprotect's range_start, per VMA piece, two calls
            w["munmap"] + 2 * pieces * w["mprotect"],  # every range_end
            pages * w["migrate"],  # migrate: invalidate_page per page
        ])
        shifts = self.per_walk * np.array([_gru_flush_us(pages), _gru_flush_us(pages / pieces), 0.0, _gru_flush_us(1)])
        return _Stream(sections, counts, shifts, self.other_us, pieces)

    def stream_at(self, sections: _Sections, age: float) -> _Stream:
        """The stream as seen ``age`` us after it started: its mm's VMAs fragmented by the
        operations done by then (a fixed point: the operations done depend on the cycle)."""
        st = self.stream(sections, math.inf)
        if not self.weights["mprotect"]:
            return st
        for _ in range(4):
            st = self.stream(sections, age / st.cycle_us(age))
        return st


def _stream_partitions(s: Scenario) -> tuple[list[int], list[int]]:
    """Per partition: its streams, and how many of them share an mm with another stream. As
    ``workloads/harness.py``'s study() lays them out: each partition owns ``mms`` background
    mms (partition-major order) and stream k works on mm ``k % (partitions * mms)``."""
    nparts, mms, streams = s.get("partitions"), s.get("mms"), s.get("activity.streams")
    per_mm = [0] * (nparts * mms)
    for k in range(streams):
        per_mm[k % len(per_mm)] += 1
    counts = [sum(per_mm[i * mms:(i + 1) * mms]) for i in range(nparts)]
    shared = [sum(c for c in per_mm[i * mms:(i + 1) * mms] if c > 1) for i in range(nparts)]
    return counts, shared


def design_points(s: Scenario) -> list[MeasurementPoint]:
    """The measurements the harness makes, in expectation: position i of the shuffled order is
    dealt to partition ``i % partitions``, whose series runs its j-th measurement about
    ``(j + 1) * duration / (n + 1)`` us in (n: the series' length; ``harness.study``), and is
    an unregister or an exit with the probabilities of their counts; so each metric averages
    over every position."""
    n_u, n_e = s.get("measure.unregisters"), s.get("measure.exits")
    total, parts = n_u + n_e, s.get("partitions")
    duration = float(s.get("duration"))
    series = [len(range(k, total, parts)) for k in range(parts)]  # each partition's series length
    return [MeasurementPoint(metric, i % parts, (i // parts + 1) * duration / (series[i % parts] + 1))
            for metric, n in (("unregister_srcu_wait", n_u), ("exit_srcu_wait", n_e)) if n
            for i in range(total)]


def points_of(events: Sequence[dict[str, Any]]) -> list[MeasurementPoint]:
    """The measurements among a run's events (``run_scenario``'s, or events.csv rows): metric,
    partition (``p<i>``), and the moment its synchronize_srcu() began (the event's time less
    its wait). Raises ``ValueError`` naming a malformed event."""
    points = []
    for e in events:
        if e["metric"] not in WAIT_METRICS:
            continue
        try:
            part = str(e["partition"])
            if not part.startswith("p"):
                raise ValueError(part)
            points.append(MeasurementPoint(e["metric"], int(part[1:]), float(e["t_us"]) - float(e["value_us"])))
        except (ValueError, KeyError, TypeError):
            raise ValueError(f"a measurement event without partition p<i>, t_us and value_us: {e!r}") from None
    return points


def measured_points(run_dir: str | Path) -> list[MeasurementPoint]:
    """``points_of`` the events.csv of the finished run in ``run_dir``."""
    from workloads.report import EVENT_COLUMNS, ReportError

    path = Path(run_dir) / "events.csv"
    try:
        with open(path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            if tuple(reader.fieldnames or ()) != EVENT_COLUMNS:
                raise ReportError(f"{run_dir}: corrupt events.csv: header {reader.fieldnames!r}, "
                                  f"expected {','.join(EVENT_COLUMNS)}")
            return points_of(list(reader))
    except FileNotFoundError:
        raise ReportError(f"{run_dir}: not a finished run: no events.csv") from None
    except (ValueError, UnicodeDecodeError, csv.Error) as e:
        if isinstance(e, ReportError):
            raise
        raise ReportError(f"{run_dir}: corrupt events.csv: {e}") from None


def _sample_p99(values: np.ndarray, cdf: np.ndarray, n: int) -> float | None:
    """The median of what an HDR histogram of n samples reports as p99: its
    max(1, ceil(0.99 n))-th smallest value (``HdrHistogram.value_at_percentile``)."""
    if n <= 0:
        return None
    k = max(1, math.ceil(PERCENTILES["p99"] / 100.0 * n))
    js = np.arange(k, n + 1)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1) for j in js])
    f = np.clip(cdf, 1e-300, 1.0)
    g = np.clip(1.0 - cdf, 0.0, 1.0)
    with np.errstate(divide="ignore"):
        logs = logc[None, :] + js[None, :] * np.log(f)[:, None] + (n - js)[None, :] * np.log(np.where(g > 0, g, 1e-300))[:, None]
    prob = np.exp(logs).sum(axis=1)
    prob[g <= 0] = 1.0
    i = int(np.searchsorted(prob >= 0.5, True))
    return float(values[min(i, len(values) - 1)])


def _summary(metric: str, values: np.ndarray, cdfs: np.ndarray, n: int) -> WaitPrediction:
    """One metric's prediction from the distribution function at ``values`` of each point."""
    cdf = cdfs.mean(axis=0) if len(cdfs) else np.ones(len(values))
    cdf[-1] = 1.0
    probs = np.diff(np.concatenate([[0.0], cdf])).clip(0.0)
    mean = float((values * probs).sum())
    sd = math.sqrt(max(float((values ** 2 * probs).sum()) - mean ** 2, 0.0))
    p99 = float(values[min(int(np.searchsorted(cdf, 0.99 - 1e-12)), len(values) - 1)])
    return WaitPrediction(metric, n, mean, p99, _sample_p99(values, cdf, n), float(cdf[0]), sd, values, probs)


def _no_wait(metric: str, n: int) -> WaitPrediction:
    return _summary(metric, np.zeros(1), np.ones((1, 1)), n)


def predict(scenario: Scenario, points: Sequence[MeasurementPoint] | None = None,
            floor: LatencyDist | None = None) -> Prediction:
    """Predict ``unregister_srcu_wait`` and ``exit_srcu_wait`` of ``scenario`` (a point: its
    sweep, if any, is ignored; use ``sweep_points()``). ``points``: the measurements to average
    over (``measured_points`` of a finished run); by default the harness's design
    (``design_points``). ``floor``: a calibrated floor (``workloads/calibration.py``), one draw
    added to every message each way, as the sim's ``LatencyModel.floor`` does. Raises
    ``NotModelled`` where the model does not apply."""
    s = scenario
    if s.get("semantics") != "v3.10":
        raise _refuse(s, "semantics", f"it is derived for v3.10's notifier core and SRCU, got {s.get('semantics')!r}")
    if s.get("srcu.algorithm") != "classic":
        raise _refuse(s, "srcu.algorithm", f"it is derived for v3.10's classic SRCU, got {s.get('srcu.algorithm')!r} "
                                           f"(Tree SRCU auto-expedites and polls differently)")
    if s.get("secondary.kind") != "gru":
        raise _refuse(s, "secondary.kind", f"only GRU secondaries (constant TLB-flush handling times) are modelled, "
                                           f"got {s.get('secondary.kind')!r}, whose callouts depend on its state "
                                           f"(XPMEM's pins and nested put_user_pages, KVM's sptes)")
    mix = s.get("activity.mix")
    for op, weight in mix.items():
        if weight > 0 and op not in MODELLED_OPS:
            raise _refuse(s, f"activity.mix.{op}", f"only {', '.join(MODELLED_OPS)} have modelled read sections, "
                                                   f"got weight {weight} for {op}")
    cfg = s.sim_config()
    _check_latency(s, cfg.hop_dist, "topology.hop_latency")
    if cfg.callout_dist is not None:
        _check_latency(s, cfg.callout_dist, "callout.latency")
    if floor is not None:
        _check_latency(s, floor, "calibration.floor")
    jiffy = jiffy_us(s)
    expedited = bool(s.get("srcu.expedited"))
    trycount = SYNCHRONIZE_SRCU_EXP_TRYCOUNT if expedited else SYNCHRONIZE_SRCU_TRYCOUNT
    scope, teardown = s.get("srcu.scope"), s.get("teardown")
    names = cfg.names
    pts = list(design_points(s) if points is None else points)
    for p in pts:
        if p.metric not in WAIT_METRICS or not 0 <= p.partition < len(names):
            raise ValueError(f"measurement point {p!r}: expected a metric of {WAIT_METRICS} on partition 0..{len(names) - 1}")
    if points is None:
        counts = {"unregister_srcu_wait": s.get("measure.unregisters"), "exit_srcu_wait": s.get("measure.exits")}
    else:
        counts = {m: sum(1 for p in pts if p.metric == m) for m in WAIT_METRICS}
    streams, shared = _stream_partitions(s)
    notes: list[str] = []
    duration = float(s.get("duration"))
    total = s.get("measure.unregisters") + s.get("measure.exits")

    rng = np.random.default_rng(SAMPLE_SEED)
    sections = _Sections.of(_network_sample(s, rng, floor))
    stagger = 0.5e6 / float(s.get("activity.rate"))  # the mean of the streams' staggered starts
    work = _Workload.of(s, floor)
    mid = work.stream_at(sections, duration / 2)
    r0 = np.zeros(1)
    rho_mid = float(mid.residual_tail(r0, duration / 2)[0])
    inputs = []
    for i, name in enumerate(names):
        n_st = streams[i]
        ops = float(1e6 / mid.cycle_us(duration / 2))
        per_op = float(mid.counts.sum())
        inputs.append(PartitionInputs(
            name, n_st, ops if n_st else 0.0, per_op, n_st * ops * per_op, mid.mean_section_us(),
            rho_mid if n_st else 0.0, 1.0 - (1.0 - rho_mid) ** n_st, float(mid.pieces)))

    waits_zero = scope == "per_mm"
    if waits_zero:
        notes.append("srcu.scope per_mm: each teardown waits only for readers of its own mm, and the measured mms "
                     "carry no background activity: no wait")
    if any(shared):
        notes.append(f"{sum(shared)} streams share an mm with another stream: they serialise on mmap_sem and race "
                     f"(refused steps), which the model ignores (it treats every stream as independent)")
    if teardown == "put":
        notes.append("teardown put: unregister defers the free with call_srcu and does not wait; the grace periods "
                     "it starts run in the worker, and an exit that finds one running waits for the next (the "
                     "two-phase wait, up to two more jiffies): the model assumes it never does (measurements on a "
                     f"partition are about {len(names) * duration / (total + 1):.0f} us apart)")
    alphas = [d.param("alpha") for d in (cfg.hop_dist, cfg.callout_dist, floor) if d is not None and d.dist == "pareto"]
    if alphas and min(alphas) <= 2.0:
        notes.append("a pareto latency with alpha <= 2: a read section's length has infinite variance, so the "
                     "stationary mean wait is infinite; the model bounds each section's age by the time its stream "
                     "has run, and a run's measured mean is set by its few longest callouts, which its measurements "
                     "share (they are not independent: sd / sqrt(n) understates the spread between runs); compare a "
                     "single run with the typical-run prediction")

    # the longest a section can be: the longest network part, and the most handling (one VMA piece)
    up_to = float(sections.base[-1] + work.stream(sections, 0.0).shifts.max())
    values = _wait_values(jiffy, trycount, SYNCHRONIZE_SRCU_READER_DELAY_US, up_to)
    waits = [m for m in WAIT_METRICS if not (waits_zero or not any(streams)
                                             or (m == "unregister_srcu_wait" and teardown == "put"))]

    def distributions(sections_of: dict[int, _Sections]) -> dict[str, WaitPrediction]:
        out = {m: _no_wait(m, counts[m]) for m in WAIT_METRICS if m not in waits}
        cache: dict[tuple[int, float], np.ndarray] = {}
        for metric in waits:
            cdfs = []
            for p in pts:
                if p.metric != metric:
                    continue
                n_st = streams[p.partition]
                if n_st == 0:
                    cdfs.append(np.ones(len(values)))
                    continue
                age = float(f"{max(p.t_us - stagger, 1.0):.2g}")  # 2 digits: the answer moves under 1e-3
                if (n_st, age) not in cache:
                    st = work.stream_at(sections_of[n_st], age)
                    cache[(n_st, age)] = (1.0 - st.residual_tail(values, age)) ** n_st
                cdfs.append(cache[(n_st, age)])
            out[metric] = _summary(metric, values, np.array(cdfs), counts[metric])
        return {m: _trimmed(out[m]) for m in WAIT_METRICS}

    metrics = distributions({n: sections for n in set(streams) if n})
    # the typical run: sections longer than the one the partition's streams start about once in
    # a run are left out (a run's mean is set by its longest sections; with a heavy tail the
    # expectation over runs is far above what a typical run measures)
    typical_of = {}
    for n in set(streams):
        if n:
            per_run = n * 1e6 / mid.cycle_us(duration / 2) * float(mid.counts.sum()) * duration / 1e6
            keep = max(int(round(SAMPLES * (1.0 - 1.0 / max(per_run, 2.0)))), SAMPLES // 2)
            typical_of[n] = _Sections.of(sections.base[:keep])
    typical = distributions(typical_of)
    return Prediction(s.name, jiffy, max(trycount, 2), expedited, scope, teardown, metrics, typical, inputs, notes)


def _trimmed(wp: WaitPrediction) -> WaitPrediction:
    """``wp`` with its grid of wait values cut where the rest has less than _TAIL probability."""
    keep = max(1, int(np.searchsorted(np.cumsum(wp.probs), 1.0 - _TAIL)) + 1)
    return WaitPrediction(wp.metric, wp.n, wp.mean_us, wp.p99_us, wp.sample_p99_us, wp.p_no_wait, wp.sd_us,
                          wp.values_us[:keep], wp.probs[:keep])


# -- comparing with finished runs, and the text tables ------------------------------------------


@dataclass
class Comparison:
    """One measured run beside the prediction made from its own recorded config and
    measurements."""

    value: Any  # the sweep value of the run (None for a single run)
    run_dir: Path
    prediction: Prediction
    measured: dict[str, dict[str, Any]]  # metric -> its results.json summary, plus "p_no_wait"


def scenario_of_run(run_dir: Path, result: dict[str, Any]) -> Scenario:
    """The scenario a run recorded in its results.json ``config`` (every knob)."""
    c = result["config"]
    try:
        return Scenario(c["name"], c["description"], c["question"], f"{run_dir}/results.json", c)
    except (KeyError, TypeError):
        from workloads.report import ReportError

        raise ReportError(f"{run_dir}: corrupt results.json: its config is not a scenario") from None


def _floor_of(run_dir: Path, result: dict[str, Any]) -> LatencyDist | None:
    """The calibrated floor a run recorded in its results.json ``calibration`` (None: none)."""
    cal = result.get("calibration")
    if cal is None:
        return None
    try:
        return parse_latency(cal["floor"], "calibration.floor")
    except (KeyError, TypeError, ValueError) as e:
        from workloads.report import ReportError

        raise ReportError(f"{run_dir}: corrupt results.json: its calibration has no valid floor ({e})") from None


def compare(directory: str | Path, scenario_name: str | None = None) -> list[Comparison]:
    """Predict each run of the finished sweep or run in ``directory`` (written by ``mmusim sweep``
    or ``mmusim run``) from its recorded config, its calibrated floor if it had one (its
    ``calibration`` entry) and its measurements' partitions and times, beside what it
    measured. ``scenario_name``: refuse runs of another scenario."""
    from workloads.report import ReportError, load_run, load_sweep

    d = Path(directory)
    if not d.is_dir():
        raise ReportError(f"{d}: no such directory")
    if (d / "sweep.json").exists():
        runs = [(run["value"], d / run["dir"]) for run in load_sweep(d)["runs"]]
    else:
        runs = [(None, d)]
    out = []
    for value, run_dir in runs:
        result, values = load_run(run_dir)
        if scenario_name is not None and result["scenario"] != scenario_name:
            raise ReportError(f"{run_dir}: a run of {result['scenario']!r}, not of {scenario_name!r}")
        if result["backend"] != "sim":
            raise ReportError(f"{run_dir}: a {result['backend']} run; the model predicts the sim backend's virtual time")
        s = scenario_of_run(run_dir, result)
        prediction = predict(s, measured_points(run_dir), _floor_of(run_dir, result))
        measured = {}
        for metric in WAIT_METRICS:
            summary = dict(result["metrics"].get(metric) or {})
            got = values.get(metric, [])
            summary["p_no_wait"] = sum(1 for v in got if v == 0) / len(got) if got else None
            measured[metric] = summary
        out.append(Comparison(value, run_dir, prediction, measured))
    return out


def _us(v: float | None) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    return f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}"


def _ratio(pred: float | None, meas: float | None) -> str:
    if pred is None or meas is None:
        return "-"
    if meas == 0:
        return "=" if pred == 0 else "inf"
    return f"{pred / meas:.2f}"


def _header(p: Prediction) -> str:
    return (f"v3.10 SRCU ({p.scope}{', expedited' if p.expedited else ''}), teardown {p.teardown}: a synchronize_srcu() "
            f"checks the old index {p.trycount} times {SYNCHRONIZE_SRCU_READER_DELAY_US:g} us apart, then the worker "
            f"once per jiffy ({p.jiffy_us:g} us)")


def _inputs_lines(label: str, width: int, p: Prediction) -> list[str]:
    return [f"{label:<{width}} {i.partition:<4} {i.streams:>7} {i.ops_per_s:>7.0f} {i.sections_per_op:>8.1f} "
            f"{i.sections_per_s:>11,.0f} {i.mean_section_us:>8.1f} {i.rho:>6.3f} {i.p_reader:>9.3f} "
            f"{i.mprotect_pieces:>7.2f}" for i in p.partitions]


def _labels(key: str | None, values: Sequence[Any], default: Sequence[str]) -> tuple[str, list[str], int]:
    from workloads.report import value_text

    head = key or "scenario"
    labels = [value_text(v) for v in values] if key else list(default)
    return head, labels, max([len(head)] + [len(x) for x in labels])


def _notes(predictions: Sequence[Prediction]) -> list[str]:
    seen: list[str] = []
    for p in predictions:
        seen += [n for n in p.notes if n not in seen]
    return [""] + [f"note: {n}" for n in seen] if seen else []


def format_predictions(key: str | None, rows: Sequence[tuple[Any, Prediction]]) -> str:
    """The text ``mmusim predict`` prints: the derived inputs per partition, then each wait
    metric's prediction, one row per point (sweep value)."""
    head, labels, w = _labels(key, [v for v, _ in rows], [p.scenario for _, p in rows])
    first = rows[0][1]
    lines = [f"{first.scenario}: {_header(first)}", "",
             "inputs (mid-run). Per stream: ops/s achieved, read sections per op, rho = its fraction of time in a "
             "section, pieces = VMA pieces per mprotect; per partition: sections/s, P(reader) = 1 - (1 - rho)^streams",
             f"{head:<{w}} {'part':<4} {'streams':>7} {'ops/s':>7} {'sec/op':>8} {'sections/s':>11} {'mean us':>8} "
             f"{'rho':>6} {'P(reader)':>9} {'pieces':>7}"]
    for label, (_, p) in zip(labels, rows):
        lines += _inputs_lines(label, w, p)
    lines += ["", "predicted wait (us). mean, sd, p99: the expectation over runs; typical run: sections rarer than "
                  "once per run left out; p99 of n: the median of what an HDR histogram of the run's n measurements "
                  "reports",
              f"{head:<{w}} {'metric':<21} {'n':>5} {'P(no wait)':>10} {'mean':>9} {'sd':>9} {'p99':>9} "
              f"{'typ. mean':>9} {'p99 of n':>9}"]
    for label, (_, p) in zip(labels, rows):
        for m, wp in p.metrics.items():
            t = p.typical[m]
            lines.append(f"{label:<{w}} {m:<21} {wp.n:>5} {wp.p_no_wait:>10.3f} {_us(wp.mean_us):>9} {_us(wp.sd_us):>9} "
                         f"{_us(wp.p99_us):>9} {_us(t.mean_us):>9} {_us(t.sample_p99_us):>9}")
    return "\n".join(lines + _notes([p for _, p in rows]))


def format_comparison(key: str | None, rows: Sequence[Comparison]) -> str:
    """The text ``mmusim predict --compare DIR`` prints: per run and wait metric, predicted
    beside measured, and their ratios."""
    head, labels, w = _labels(key, [c.value for c in rows], [str(c.run_dir) for c in rows])
    first = rows[0].prediction
    lines = [f"{first.scenario}: {_header(first)}",
             "predicted from each run's recorded config and its measurements' partitions and times. pred: the "
             "expectation over runs; typ: a typical run's (sections rarer than once per run left out); ratio = "
             "predicted / measured; z = (measured - pred) / (sd / sqrt(n)); p99 typ: the median of what an HDR "
             "histogram of n measurements of a typical run reports",
             f"{head:<{w}} {'metric':<21} {'n':>5} {'P0 pred':>7} {'meas':>6} {'mean pred':>9} {'typ':>9} {'meas':>9} "
             f"{'ratio':>6} {'typ':>6} {'z':>6} {'p99 typ':>9} {'meas':>9} {'ratio':>6}"]
    for label, c in zip(labels, rows):
        for m, wp in c.prediction.metrics.items():
            t = c.prediction.typical[m]
            meas = c.measured[m]
            mean, p99, p0 = meas.get("mean"), meas.get("p99"), meas.get("p_no_wait")
            se = wp.sd_us / math.sqrt(wp.n) if wp.n else 0.0
            if mean is None:
                z = "-"
            elif se == 0:
                z = "0" if mean == wp.mean_us else "inf"
            else:
                z = f"{(mean - wp.mean_us) / se:+.1f}"
            lines.append(f"{label:<{w}} {m:<21} {wp.n:>5} {wp.p_no_wait:>7.3f} {('-' if p0 is None else f'{p0:.3f}'):>6} "
                         f"{_us(wp.mean_us):>9} {_us(t.mean_us):>9} {_us(mean):>9} {_ratio(wp.mean_us, mean):>6} "
                         f"{_ratio(t.mean_us, mean):>6} {z:>6} {_us(t.sample_p99_us):>9} {_us(p99):>9} "
                         f"{_ratio(t.sample_p99_us, p99):>6}")
    return "\n".join(lines + _notes([c.prediction for c in rows]))
