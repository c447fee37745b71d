"""Latency metrics: an HDR histogram (Gil Tene's HdrHistogram layout, in numpy), the summary
the results schema asks for (n, p50, p90, p99, p999, max, mean; microseconds), and how far
each percentile can be trusted: a seeded bootstrap confidence interval for p50 and p99, and
the count of events beyond each percentile.

Values are recorded as integer nanoseconds, so a microsecond latency keeps three decimals. The
buckets are log-linear: each power-of-two range is split into ``2 ** unit_magnitude`` equal
sub-buckets, which keeps every recorded value within a relative error of 10 ** -digits (three
significant digits by default), at any magnitude, in a few tens of kilobytes.

A percentile is the event of nearest rank: the p-th percentile of n events is the one of rank
``r = ceil(p/100 * n)`` in ascending order (``nearest_rank``), so ``n - r`` events lie beyond
it (``samples_beyond``). With fewer than ``MIN_BEYOND`` (10) of them the percentile rests on
the few largest events and moves with each one; reports mark it (``too_few_beyond``). ``metric_result`` is the
block of one metric in results.json: the summary, ``ci95``, ``beyond`` and the histogram.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any, Iterable

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
SUMMARY_KEYS = ("unit", "n", "p50", "p90", "p99", "p999", "max", "mean")
CI_PERCENTILES = ("p50", "p99")  # the percentiles that get a confidence interval
CI_LEVEL = 0.95
BOOTSTRAP_RESAMPLES = 10_000
MIN_BEYOND = 10  # a percentile with fewer events beyond it is marked in the tables
INTERVAL_KEYS = ("ci95", "beyond")  # what ``HdrHistogram.intervals`` adds to a metric's summary


def nearest_rank(pct: float, n: int) -> int:
    """The rank (1-based, ascending) of the p-th percentile's event among ``n`` events (n > 0):
    ``max(1, ceil(pct/100 * n))``, the rule ``value_at_percentile`` uses."""
    return max(1, math.ceil(pct / 100.0 * n))


def samples_beyond(pct: float, n: int) -> int:
    """How many of ``n`` events rank above the p-th percentile's event (0 when n is 0)."""
    return n - nearest_rank(pct, n) if n else 0


def too_few_beyond(pct: float, n: int) -> bool:
    """The marking rule: a percentile of ``n`` events (n > 0) with fewer than ``MIN_BEYOND``
    events beyond it, which tables mark with ``*``."""
    return n > 0 and samples_beyond(pct, n) < MIN_BEYOND


def bootstrap_seed(seed: int, metric: str, key: str) -> int:
    """The bootstrap's seed for percentile ``key`` of ``metric`` in a run of ``seed``: the same
    run gives the same intervals, and each interval has its own stream."""
    digest = hashlib.sha256(f"mmusim-bootstrap-{seed}-{metric}-{key}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


class HdrHistogram:
    """Counts of values in [0, highest] ns with ``digits`` significant decimal digits."""

    def __init__(self, highest_us: float = 3.6e9, digits: int = 3):
        if not 1 <= digits <= 5:
            raise ValueError(f"digits must be 1..5, got {digits!r}")
        if not highest_us > 0:
            raise ValueError(f"highest_us must be positive, got {highest_us!r}")
        self.digits = digits
        self.highest = int(highest_us * 1000)
        # sub-buckets per power of two: enough that one sub-bucket is < 10**-digits of its value
        self.sub_bits = math.ceil(math.log2(2 * 10**digits))
        self.sub_count = 1 << self.sub_bits
        self.half = self.sub_count >> 1
        self.buckets = max(1, math.ceil(math.log2(max(self.highest, 1) / (self.sub_count - 1))) + 1)
        self.counts = np.zeros((self.buckets + 1) * self.half, dtype=np.int64)
        self.n = 0
        self.total_ns = 0  # for the exact mean
        self.max_ns = 0
        self.min_ns: int | None = None

    # -- layout -----------------------------------------------------------------------------

    def _index(self, v: np.ndarray) -> np.ndarray:
        """Bucket-array index of each value (ns, int64, >= 0)."""
        # bucket b holds [sub_count << (b-1), sub_count << b) at resolution 2**b (b >= 1);
        # bucket 0 holds [0, sub_count) exactly
        mag = np.floor(np.log2(np.maximum(v, 1) | (self.sub_count - 1))).astype(np.int64) - (self.sub_bits - 1)
        mag = np.maximum(mag, 0)
        sub = v >> mag  # in [half, sub_count) for mag >= 1, [0, sub_count) for mag 0
        return (mag + 1) * self.half + (sub - self.half)

    def _lowest(self, idx: np.ndarray) -> np.ndarray:
        """The lowest value (ns) each index stands for."""
        idx = np.asarray(idx, dtype=np.int64)
        bucket = idx // self.half - 1
        sub = idx % self.half + self.half
        return np.where(bucket < 0, sub - self.half, sub << np.maximum(bucket, 0))

    def _width(self, idx: np.ndarray) -> np.ndarray:
        bucket = np.maximum(np.asarray(idx, dtype=np.int64) // self.half - 1, 0)
        return np.left_shift(np.int64(1), bucket)

    # -- recording --------------------------------------------------------------------------

    def record(self, us: float | Iterable[float]) -> None:
        """Record one latency or many (microseconds, >= 0). A value above the histogram's
        range is refused with its value named."""
        arr = np.atleast_1d(np.asarray(us, dtype=np.float64))
        if arr.size == 0:
            return
        if not np.isfinite(arr).all() or (arr < 0).any():
            bad = arr[~np.isfinite(arr) | (arr < 0)][0]
            raise ValueError(f"a latency must be a finite number of microseconds >= 0, got {bad!r}")
        ns = np.rint(arr * 1000).astype(np.int64)
        if ns.max() > self.highest:
            raise ValueError(f"latency {ns.max() / 1000:.3f} us is above the histogram's highest {self.highest / 1000:.0f} us")
        np.add.at(self.counts, self._index(ns), 1)
        self.n += int(ns.size)
        self.total_ns += int(ns.sum())
        self.max_ns = max(self.max_ns, int(ns.max()))
        self.min_ns = int(ns.min()) if self.min_ns is None else min(self.min_ns, int(ns.min()))

    def merge(self, other: "HdrHistogram") -> None:
        if (other.digits, other.highest) != (self.digits, self.highest):
            raise ValueError("histograms of different ranges or precision cannot be merged")
        self.counts += other.counts
        self.n += other.n
        self.total_ns += other.total_ns
        self.max_ns = max(self.max_ns, other.max_ns)
        if other.min_ns is not None:
            self.min_ns = other.min_ns if self.min_ns is None else min(self.min_ns, other.min_ns)

    # -- reading ----------------------------------------------------------------------------

    def value_at_percentile(self, pct: float) -> float:
        """The value (us) at or below which ``pct`` percent of the recorded values fall, within
        the histogram's precision (the highest value of that bucket, capped at the max seen)."""
        if self.n == 0:
            return float("nan")
        return float(self._values_at_ranks(np.int64(nearest_rank(pct, self.n))))

    def _values_at_ranks(self, ranks: np.ndarray) -> np.ndarray:
        """The recorded value (us) of each rank (1-based, ascending; 1 <= rank <= n): the
        highest value of its bucket, capped at the max seen."""
        idx = np.searchsorted(np.cumsum(self.counts), ranks)
        hi = self._lowest(idx) + self._width(idx) - 1
        return np.minimum(hi, self.max_ns) / 1000.0

    def percentile_interval(self, pct: float, *, seed: int, resamples: int = BOOTSTRAP_RESAMPLES,
                            level: float = CI_LEVEL) -> tuple[float, float] | None:
        """A ``level`` confidence interval (us) for the p-th percentile: a percentile bootstrap
        over the recorded events, seeded; None when nothing was recorded.

        Each resample draws n of the recorded events with replacement and takes its p-th
        percentile as ``value_at_percentile`` does (its event of rank r = ``nearest_rank``);
        the interval runs from the (1 - level)/2 to the (1 + level)/2 quantile of the
        ``resamples`` resampled percentiles (each end is a recorded value). A resample is drawn
        by its order statistic, exactly and in O(1): drawing n events is drawing n uniform
        U_i in [0, 1) and taking the event at sorted index floor(n * U_i); floor is monotone,
        so the resample's r-th smallest is the event at index floor(n * U_(r)), and the r-th
        smallest of n uniforms, U_(r), is Beta(r, n - r + 1). So a metric of a million events
        costs what one of ten does."""
        if not 0.0 < level < 1.0:
            raise ValueError(f"level must be in (0, 1), got {level!r}")
        if not isinstance(resamples, int) or resamples < 1:
            raise ValueError(f"resamples must be a positive integer, got {resamples!r}")
        if self.n == 0:
            return None
        n, r = self.n, nearest_rank(pct, self.n)
        u = np.random.default_rng(seed).beta(r, n - r + 1, size=resamples)
        index = np.minimum(np.floor(n * u).astype(np.int64), n - 1)  # 0-based sorted index
        boot = self._values_at_ranks(index + 1)
        lo, hi = np.quantile(boot, [(1.0 - level) / 2.0, (1.0 + level) / 2.0], method="inverted_cdf")
        return float(lo), float(hi)

    @property
    def mean(self) -> float:
        return self.total_ns / self.n / 1000.0 if self.n else float("nan")

    def summary(self) -> dict[str, Any]:
        """The results-schema block of this metric (DESIGN.md)."""
        out: dict[str, Any] = {"unit": "us", "n": self.n}
        for key, pct in PERCENTILES.items():
            out[key] = self.value_at_percentile(pct) if self.n else None
        out["max"] = self.max_ns / 1000.0 if self.n else None
        out["mean"] = self.mean if self.n else None
        return out

    def intervals(self, *, seed: int, metric: str) -> dict[str, Any]:
        """``{"ci95": {p: [lo, hi] or None}, "beyond": {p: count}}``: the 95 % bootstrap interval
        of each of ``CI_PERCENTILES`` (seeded from the run's ``seed`` and the ``metric`` name)
        and the events beyond each of ``PERCENTILES``."""
        ci = {}
        for key in CI_PERCENTILES:
            iv = self.percentile_interval(PERCENTILES[key], seed=bootstrap_seed(seed, metric, key))
            ci[key] = None if iv is None else list(iv)
        return {"ci95": ci, "beyond": {key: samples_beyond(pct, self.n) for key, pct in PERCENTILES.items()}}

    def to_json(self) -> dict[str, Any]:
        """The non-empty buckets, for results.json (re-readable with ``from_json``)."""
        nz = np.nonzero(self.counts)[0]
        return {"digits": self.digits, "highest_us": self.highest / 1000.0, "n": self.n, "total_ns": self.total_ns,
                "max_ns": self.max_ns, "min_ns": self.min_ns, "buckets": [[int(i), int(self.counts[i])] for i in nz]}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "HdrHistogram":
        h = cls(highest_us=data["highest_us"], digits=data["digits"])
        for i, c in data["buckets"]:
            h.counts[i] = c
        h.n, h.total_ns, h.max_ns, h.min_ns = data["n"], data["total_ns"], data["max_ns"], data["min_ns"]
        return h


def metric_result(h: HdrHistogram, *, seed: int, metric: str) -> dict[str, Any]:
    """The block of one metric in results.json: the summary, its intervals (seeded from the
    run's ``seed``) and the histogram."""
    return {**h.summary(), **h.intervals(seed=seed, metric=metric), "histogram": h.to_json()}
