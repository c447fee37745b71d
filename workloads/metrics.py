"""Latency metrics: an HDR histogram (Gil Tene's HdrHistogram layout, in numpy) and the summary
the results schema asks for (n, p50, p90, p99, p999, max, mean; microseconds).

Values are recorded as integer nanoseconds, so a microsecond latency keeps three decimals. The
buckets are log-linear: each power-of-two range is split into ``2 ** unit_magnitude`` equal
sub-buckets, which keeps every recorded value within a relative error of 10 ** -digits (three
significant digits by default), at any magnitude, in a few tens of kilobytes.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}
SUMMARY_KEYS = ("unit", "n", "p50", "p90", "p99", "p999", "max", "mean")


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
        rank = max(1, math.ceil(pct / 100.0 * self.n))
        idx = int(np.searchsorted(np.cumsum(self.counts), rank))
        hi = int(self._lowest(np.int64(idx)) + self._width(np.int64(idx)) - 1)
        return min(hi, self.max_ns) / 1000.0

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
