"""The HDR histogram of workloads/metrics.py: percentiles within its precision of the exact
ones, at every magnitude; merge; a JSON round trip; clear refusals."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.metrics import HdrHistogram


@pytest.mark.parametrize("sigma", [0.1, 1.5, 3.0])
def test_percentiles_are_within_three_significant_digits(sigma):
    rng = np.random.default_rng(7)
    values = rng.lognormal(mean=4.0, sigma=sigma, size=50_000)
    h = HdrHistogram()
    h.record(values)
    for pct in (50, 90, 99, 99.9):
        exact = float(np.percentile(values, pct, method="inverted_cdf"))
        assert abs(h.value_at_percentile(pct) - exact) <= max(exact * 1e-3, 0.001)
    s = h.summary()
    assert s["n"] == 50_000 and s["unit"] == "us"
    assert s["max"] == pytest.approx(values.max(), abs=0.001)
    assert s["mean"] == pytest.approx(values.mean(), abs=0.001)
    assert s["p50"] <= s["p90"] <= s["p99"] <= s["p999"] <= s["max"]


def test_small_values_are_exact_and_merge_and_json_round_trip():
    a, b = HdrHistogram(), HdrHistogram()
    a.record([0.0, 0.001, 1.0, 5.0])
    b.record([5.0, 7.5, 1e6])
    a.merge(b)
    assert a.n == 7 and a.value_at_percentile(100) == 1e6 and a.value_at_percentile(1) == 0.0
    assert a.value_at_percentile(50) == pytest.approx(5.0, rel=1e-3)  # 5000 ns: a 4 ns bucket
    again = HdrHistogram.from_json(a.to_json())
    assert again.summary() == a.summary()
    assert (again.counts == a.counts).all()


def test_refusals_name_the_value():
    h = HdrHistogram(highest_us=1000.0)
    with pytest.raises(ValueError, match="-1.0"):
        h.record(-1.0)
    with pytest.raises(ValueError, match="nan"):
        h.record([1.0, float("nan")])
    with pytest.raises(ValueError, match="2000.000 us is above"):
        h.record(2000.0)
    assert h.n == 0 and h.summary()["p50"] is None
    with pytest.raises(ValueError, match="cannot be merged"):
        h.merge(HdrHistogram(digits=2))
