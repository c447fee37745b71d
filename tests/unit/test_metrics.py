"""The HDR histogram of workloads/metrics.py: percentiles within its precision of the exact
ones, at every magnitude; merge; a JSON round trip; clear refusals. The trust in a percentile:
the events beyond it, and a seeded bootstrap interval that holds the true percentile about 95 %
of the time and narrows with the events."""

from __future__ import annotations

import numpy as np
import pytest

from workloads.metrics import (CI_PERCENTILES, PERCENTILES, SUMMARY_KEYS, HdrHistogram, bootstrap_seed, metric_result,
                               nearest_rank, samples_beyond, too_few_beyond)


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


# -- how far a percentile can be trusted: events beyond it, bootstrap intervals ------------------


def test_the_events_beyond_a_percentile_follow_its_nearest_rank():
    assert [nearest_rank(90.0, n) for n in (1, 9, 10, 100, 101)] == [1, 9, 9, 90, 91]
    assert {key: samples_beyond(pct, 100) for key, pct in PERCENTILES.items()} == {"p50": 50, "p90": 10, "p99": 1, "p999": 0}
    assert samples_beyond(99.0, 1000) == 10 and samples_beyond(99.0, 999) == 9
    assert samples_beyond(50.0, 0) == 0
    # the marking rule: fewer than 10 beyond
    assert [too_few_beyond(90.0, n) for n in (0, 5, 99, 100, 1000)] == [False, True, True, False, False]
    assert [too_few_beyond(99.0, n) for n in (100, 999, 1000)] == [True, True, False]
    h = HdrHistogram()
    h.record(np.arange(1.0, 101.0))  # 1..100 us: the p90 is the 90th event, 10 lie beyond it
    assert h.value_at_percentile(90) == pytest.approx(90.0, rel=1e-3)  # within the histogram's precision
    assert h.intervals(seed=0, metric="m")["beyond"] == {"p50": 50, "p90": 10, "p99": 1, "p999": 0}


def test_a_resample_drawn_by_its_order_statistic_is_the_plain_bootstrap():
    """percentile_interval draws each resample's percentile as the event at sorted index
    floor(n * Beta(r, n - r + 1)); resampling n events and taking the r-th smallest must give the
    same distribution over the events."""
    n, r, reps = 12, 6, 40_000
    rng = np.random.default_rng(3)
    plain = np.sort(rng.integers(0, n, size=(reps, n)), axis=1)[:, r - 1]
    drawn = np.minimum(np.floor(n * rng.beta(r, n - r + 1, size=reps)).astype(int), n - 1)
    p_plain = np.bincount(plain, minlength=n) / reps
    p_drawn = np.bincount(drawn, minlength=n) / reps
    assert np.abs(np.cumsum(p_plain) - np.cumsum(p_drawn)).max() < 0.015
    assert p_plain[r - 1] > 0.2  # the test has power: mass concentrates near the rank


def coverage(pct: float, n: int, truth: float, trials: int = 300) -> float:
    rng = np.random.default_rng(11)
    hits = 0
    for t in range(trials):
        h = HdrHistogram()
        h.record(rng.exponential(100.0, n))
        lo, hi = h.percentile_interval(pct, seed=t, resamples=2000)
        hits += lo <= truth <= hi
    return hits / trials


@pytest.mark.parametrize(("pct", "n"), [(50.0, 200), (99.0, 3000)])
def test_the_95_percent_interval_holds_the_true_percentile_about_95_percent_of_the_time(pct, n):
    truth = -100.0 * np.log(1.0 - pct / 100.0)  # of an exponential distribution, mean 100 us
    assert 0.90 <= coverage(pct, n, truth) <= 0.99


def test_the_interval_narrows_with_the_events_and_is_the_same_for_the_same_seed():
    rng = np.random.default_rng(5)
    widths = []
    for n in (100, 10_000):
        h = HdrHistogram()
        h.record(rng.lognormal(4.0, 1.0, n))
        lo, hi = h.percentile_interval(50.0, seed=1)
        assert lo <= h.value_at_percentile(50.0) <= hi
        assert h.percentile_interval(50.0, seed=1) == (lo, hi)
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 5  # 1/sqrt(100) of it, with margin
    one = HdrHistogram()
    one.record([7.0])
    assert one.percentile_interval(99.0, seed=0) == (7.0, 7.0)
    assert HdrHistogram().percentile_interval(50.0, seed=0) is None


def test_the_intervals_of_a_run_are_seeded_from_its_seed_and_the_metric():
    h = HdrHistogram()
    h.record(np.random.default_rng(2).exponential(100.0, 50))
    a = metric_result(h, seed=4, metric="exit_hang")
    assert a == metric_result(h, seed=4, metric="exit_hang")
    assert a["ci95"]["p50"] == list(h.percentile_interval(50.0, seed=bootstrap_seed(4, "exit_hang", "p50")))
    assert len({bootstrap_seed(s, m, k) for s in (4, 5) for m in ("exit_hang", "unregister_hang") for k in ("p50", "p99")}) == 8
    # the seed drives the resamples: with few of them, the ends move with it
    assert len({h.percentile_interval(50.0, seed=s, resamples=20) for s in range(10)}) > 1
    assert set(a) == set(SUMMARY_KEYS) | {"ci95", "beyond", "histogram"}
    assert set(a["ci95"]) == set(CI_PERCENTILES) and all(len(a["ci95"][k]) == 2 for k in CI_PERCENTILES)
    empty = metric_result(HdrHistogram(), seed=4, metric="exit_hang")
    assert empty["ci95"] == {"p50": None, "p99": None} and empty["beyond"]["p50"] == 0


def test_bad_bootstrap_parameters_are_refused_naming_the_value():
    h = HdrHistogram()
    h.record([1.0, 2.0])
    with pytest.raises(ValueError, match="level must be in .0, 1., got 95"):
        h.percentile_interval(50.0, seed=0, level=95)
    with pytest.raises(ValueError, match="resamples must be a positive integer, got 0"):
        h.percentile_interval(50.0, seed=0, resamples=0)
