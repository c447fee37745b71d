"""Topology and latency model of the sim backend (cluster/topology.py): distributions, spec
parsing and its error messages, hop matrices, and LatencyModel.one_way."""

from __future__ import annotations

import math
import os
import pathlib
import random
import subprocess
import sys

import numpy as np
import pytest

from cluster.topology import (
    LatencyDist,
    LatencyModel,
    Topology,
    TopologyError,
    UnknownPartition,
    parse_latency,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
N = 20_000
W = "topology.hop_latency"


def draws(spec: object, seed: int = 1, n: int = N) -> np.ndarray:
    d = parse_latency(spec, W)
    rng = random.Random(seed)
    return np.array([d.sample(rng) for _ in range(n)])


# -- distributions ------------------------------------------------------------------------------


def test_bare_number_and_constant_are_exact_and_draw_nothing() -> None:
    assert parse_latency(2, W) == parse_latency({"dist": "constant", "value": 2.0}, W)
    rng = random.Random(5)
    state = rng.getstate()
    d = parse_latency(0.05, W)
    assert all(d.sample(rng) == 0.05 for _ in range(100))
    assert rng.getstate() == state
    assert d.mean == 0.05 and parse_latency(0, W).sample(rng) == 0.0


def test_uniform_stays_in_bounds_with_the_right_mean() -> None:
    x = draws({"dist": "uniform", "low": 1.0, "high": 3.0})
    assert x.min() >= 1.0 and x.max() <= 3.0
    assert x.min() < 1.01 and x.max() > 2.99
    assert abs(x.mean() - 2.0) < 0.02
    assert parse_latency({"dist": "uniform", "low": 1, "high": 3}, W).mean == 2.0
    assert (draws({"dist": "uniform", "low": 4, "high": 4}, n=10) == 4.0).all()


def test_lognormal_median_and_sigma() -> None:
    x = draws({"dist": "lognormal", "median": 10.0, "sigma": 1.0})
    assert x.min() > 0
    assert abs(np.median(x) / 10.0 - 1) < 0.05
    assert abs(np.log(x).std() - 1.0) < 0.05
    d = parse_latency({"dist": "lognormal", "median": 10.0, "sigma": 1.0}, W)
    assert d.mean == pytest.approx(10.0 * math.exp(0.5))
    assert abs(x.mean() / d.mean - 1) < 0.05


def test_pareto_minimum_and_tail_index() -> None:
    scale, alpha = 2.0, 1.5
    x = draws({"dist": "pareto", "scale": scale, "alpha": alpha})
    assert x.min() >= scale
    # maximum-likelihood tail index: n / sum(log(x / scale))
    alpha_hat = len(x) / np.log(x / scale).sum()
    assert abs(alpha_hat / alpha - 1) < 0.05
    # survival function P(X > 10 scale) = 10 ** -alpha
    assert abs((x > 10 * scale).mean() / 10**-alpha - 1) < 0.15
    # a heavy tail: the worst draw is far above the median
    assert x.max() > 100 * np.median(x)
    assert parse_latency({"dist": "pareto", "scale": 2, "alpha": 1.5}, W).mean == pytest.approx(6.0)
    assert parse_latency({"dist": "pareto", "scale": 2, "alpha": 1.0}, W).mean == math.inf
    assert parse_latency({"dist": "pareto", "scale": 2, "alpha": 0.5}, W).mean == math.inf


def test_pareto_overflow_is_inf_not_an_exception() -> None:
    class Tiny(random.Random):
        def random(self) -> float:
            return 1.0 - 2.0**-53  # U = 2**-53, the smallest (0, 1] value random() can give

    assert LatencyDist.pareto(1.0, 0.01).sample(Tiny()) == math.inf


QUANTILED = [{"dist": "constant", "value": 3.0}, {"dist": "uniform", "low": 1, "high": 3},
             {"dist": "lognormal", "median": 10, "sigma": 1.0}, {"dist": "pareto", "scale": 2, "alpha": 1.5}]


@pytest.mark.parametrize("spec", QUANTILED)
def test_quantile_inverts_what_sample_draws(spec: dict) -> None:
    d = parse_latency(spec, W)
    x = draws(spec)
    ps = np.array([0.1, 0.5, 0.9, 0.99])
    q = d.quantile(ps)
    assert q.shape == ps.shape and (np.diff(q) >= 0).all()
    if spec["dist"] == "constant":
        assert (q == 3.0).all()
    else:  # the fraction of draws at or below each quantile is its probability
        assert np.abs(np.array([(x <= v).mean() for v in q]) - ps).max() < 0.015
    with pytest.raises(TopologyError, match="quantile"):
        d.quantile([0.5, 1.0])


@pytest.mark.parametrize(
    "spec",
    [
        {"dist": "uniform", "low": 0, "high": 5},
        {"dist": "lognormal", "median": 1, "sigma": 0.7},
        {"dist": "pareto", "scale": 0.5, "alpha": 1.1},
    ],
)
def test_same_seed_same_sequence_other_seed_differs(spec: dict) -> None:
    a, b, c = draws(spec, seed=7, n=200), draws(spec, seed=7, n=200), draws(spec, seed=8, n=200)
    assert a.tolist() == b.tolist()
    assert a.tolist() != c.tolist()


def test_sequence_is_identical_in_another_process() -> None:
    spec = {"dist": "lognormal", "median": 3, "sigma": 0.5}
    d, rng = parse_latency(spec, W), random.Random(42)
    here = [repr(d.sample(rng)) for _ in range(50)]
    code = (
        "import random; from cluster.topology import parse_latency\n"
        f"d = parse_latency({spec!r}, 'x'); r = random.Random(42)\n"
        "print(' '.join(repr(d.sample(r)) for _ in range(50)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True,
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT), "PYTHONHASHSEED": "123"},
    ).stdout.split()
    assert out == here


def test_global_random_module_is_refused() -> None:
    with pytest.raises(TopologyError, match="random.Random"):
        LatencyDist.uniform(0, 1).sample(random)  # type: ignore[arg-type]
    with pytest.raises(TopologyError, match="random.Random"):
        LatencyModel(LatencyDist.constant(1)).one_way(1, 0, "x", np.random)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "spec",
    [
        0,
        1.5,
        {"dist": "constant", "value": 0},
        {"dist": "uniform", "low": 0.5, "high": 2},
        {"dist": "lognormal", "median": 2, "sigma": 0.25},
        {"dist": "pareto", "scale": 1, "alpha": 0.9},
        {"dist": "empirical", "samples": [3, 1.5, 0, 7]},
        {"dist": "empirical", "samples": [2]},
    ],
)
def test_to_spec_round_trips_and_describe_is_one_line(spec: object) -> None:
    d = parse_latency(spec, W)
    s = d.to_spec()
    assert isinstance(s, dict) and s["dist"] == d.dist
    assert parse_latency(s, W) == d
    text = d.describe()
    assert d.dist in text and "us" in text and "\n" not in text


def test_shortcuts_and_direct_construction_are_validated() -> None:
    assert LatencyDist.lognormal(2, 0.5) == parse_latency({"dist": "lognormal", "sigma": 0.5, "median": 2}, W)
    assert LatencyDist.lognormal(2, 0.5).param("sigma") == 0.5
    with pytest.raises(TopologyError, match=r"LatencyDist\.sigma: must be > 0, got -1"):
        LatencyDist.lognormal(2, -1)
    with pytest.raises(TopologyError, match="LatencyDist.params"):
        LatencyDist("uniform", (("low", 1.0),))
    with pytest.raises(TopologyError, match="LatencyDist.dist"):
        LatencyDist("gamma", ())


BAD_SPECS = [
    # (spec, key path in the message, bad value in the message)
    (-1, W, "-1"),
    (True, W, "True"),
    ("5us", W, "'5us'"),
    (None, W, "None"),
    (float("nan"), W, "nan"),
    (float("inf"), W, "inf"),
    ({"value": 1}, f"{W}.dist", "'value': 1"),
    ({"dist": "gamma", "k": 2}, f"{W}.dist", "'gamma'"),
    ({"dist": 3}, f"{W}.dist", "3"),
    ({"dist": "constant"}, f"{W}.value", "'dist': 'constant'"),
    ({"dist": "constant", "value": -2}, f"{W}.value", "-2"),
    ({"dist": "constant", "value": 1, "jitter": 0.5}, f"{W}.jitter", "0.5"),
    ({"dist": "constant", "value": "1"}, f"{W}.value", "'1'"),
    ({"dist": "uniform", "low": 3, "high": 1}, f"{W}.high", "got 1"),
    ({"dist": "uniform", "low": -1, "high": 1}, f"{W}.low", "-1"),
    ({"dist": "uniform", "low": 1}, f"{W}.high", "'low': 1"),
    ({"dist": "lognormal", "median": 0, "sigma": 1}, f"{W}.median", "got 0"),
    ({"dist": "lognormal", "median": 1, "sigma": -1}, f"{W}.sigma", "must be > 0, got -1"),
    ({"dist": "lognormal", "median": 1, "sigma": True}, f"{W}.sigma", "True"),
    ({"dist": "lognormal", "mean": 1, "sigma": 1}, f"{W}.mean", "1"),
    ({"dist": "pareto", "scale": 1, "alpha": 0}, f"{W}.alpha", "got 0"),
    ({"dist": "pareto", "scale": -3, "alpha": 2}, f"{W}.scale", "-3"),
    ({"dist": "pareto", "scale": 1}, f"{W}.alpha", "'scale': 1"),
    ({"dist": "pareto", "scale": [1], "alpha": 2}, f"{W}.scale", "[1]"),
]


@pytest.mark.parametrize(("spec", "path", "value"), BAD_SPECS)
def test_bad_spec_names_key_path_and_value(spec: object, path: str, value: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_latency(spec, W)
    msg = str(info.value)
    assert isinstance(info.value, TopologyError)
    assert msg.startswith(path + ":"), msg
    assert value in msg, msg


def test_exact_message_form() -> None:
    with pytest.raises(ValueError, match=r"^topology\.hop_latency\.sigma: must be > 0, got -1$"):
        parse_latency({"dist": "lognormal", "median": 1, "sigma": -1}, "topology.hop_latency")


# -- topology -----------------------------------------------------------------------------------

NAMES = [f"p{i}" for i in range(8)]


def test_uniform_topology() -> None:
    t = Topology.uniform(NAMES, hops=2)
    assert len(t) == 8 and t.names == tuple(NAMES)
    assert t.hops("p0", "p0") == 0 and t.hops("p0", "p7") == 2 and t.hops("p3", "p1") == 2
    assert isinstance(t.hops("p0", "p1"), int)
    assert t.matrix.dtype.kind == "i" and not t.matrix.flags.writeable
    assert Topology.uniform(["solo"]).hops("solo", "solo") == 0
    assert "uniform" in t.describe() and "8 partitions" in t.describe()
    assert "1 partition" in Topology.uniform(["solo"]).describe()


def test_ring_distances() -> None:
    t = Topology.ring(NAMES)
    assert [t.hops("p0", n) for n in NAMES] == [0, 1, 2, 3, 4, 3, 2, 1]
    assert t.hops("p6", "p1") == 3 and t.hops("p1", "p6") == 3
    assert (t.matrix == t.matrix.T).all()
    odd = Topology.ring(["a", "b", "c", "d", "e"])
    assert [odd.hops("a", n) for n in "abcde"] == [0, 1, 2, 2, 1]
    assert Topology.ring(["a", "b"]).hops("a", "b") == 1
    assert "max 4" in t.describe()


def test_numalink_groups() -> None:
    t = Topology.numalink(NAMES[:6] + ["q0", "q1"], per_router=3)
    # routers: [p0 p1 p2] [p3 p4 p5] [q0 q1]
    assert t.hops("p0", "p2") == 1 and t.hops("p3", "p5") == 1 and t.hops("q0", "q1") == 1
    assert t.hops("p2", "p3") == 3 and t.hops("p0", "q1") == 3
    assert t.hops("p4", "p4") == 0
    assert "numalink" in t.describe() and "3 router" in t.describe()
    default = Topology.numalink(NAMES)
    assert default.hops("p0", "p3") == 1 and default.hops("p3", "p4") == 3
    with pytest.raises(ValueError, match=r"topology\.per_router: must be a positive integer, got 0"):
        Topology.numalink(NAMES, per_router=0)


def test_from_matrix_accepts_lists_and_arrays() -> None:
    m = [[0, 1, 5], [1, 0, 2], [5, 2, 0]]
    t = Topology.from_matrix(["a", "b", "c"], m)
    assert t.hops("a", "c") == 5 and t.hops("c", "b") == 2
    assert Topology.from_matrix(["a", "b", "c"], np.array(m)).matrix.tolist() == m


@pytest.mark.parametrize(
    ("matrix", "message"),
    [
        ([[0, 1], [1, 0]], "topology.matrix: expected 3 rows for 3 names, got 2"),
        ([[0, 1, 1], [1, 0], [1, 1, 0]], "topology.matrix[1]: expected 3 entries, got 2"),
        ([[1, 1, 1], [1, 0, 1], [1, 1, 0]], "topology.matrix[0][0]: diagonal must be 0, got 1"),
        ([[0, 1, 1], [1, 0, 0], [1, 0, 0]], "topology.matrix[1][2]: must be a positive integer, got 0"),
        ([[0, 1, 1], [1, 0, -2], [1, -2, 0]], "topology.matrix[1][2]: must be a positive integer, got -2"),
        ([[0, 1.5, 1], [1.5, 0, 1], [1, 1, 0]], "topology.matrix[0][1]: must be a positive integer, got 1.5"),
        ([[0, True, 1], [1, 0, 1], [1, 1, 0]], "topology.matrix[0][1]: must be a positive integer, got True"),
        ([[0, 1, 2], [1, 0, 3], [2, 4, 0]], "topology.matrix[2][1]: must equal matrix[1][2] (3) (symmetric), got 4"),
        ("nope", "topology.matrix: must be a list of rows, got 'nope'"),
        (np.zeros((3, 3, 1), dtype=int), "topology.matrix: expected 3x3 for 3 names, got shape (3, 3, 1)"),
    ],
)
def test_from_matrix_errors_name_the_cell(matrix: object, message: str) -> None:
    with pytest.raises(ValueError) as info:
        Topology.from_matrix(["a", "b", "c"], matrix)
    assert str(info.value).startswith(message), str(info.value)


@pytest.mark.parametrize(
    ("names", "message"),
    [
        ([], "topology.names: must not be empty"),
        (["a", "b", "a"], "topology.names[2]: duplicate name (also names[0]), got 'a'"),
        (["a", ""], "topology.names[1]: must be a non-empty string, got ''"),
        (["a", 3], "topology.names[1]: must be a non-empty string, got 3"),
        ("abc", "topology.names: must be a list of partition names, got 'abc'"),
    ],
)
def test_bad_names(names: object, message: str) -> None:
    for build in (Topology.uniform, Topology.ring, Topology.numalink):
        with pytest.raises(ValueError) as info:
            build(names)  # type: ignore[arg-type]
        assert str(info.value).startswith(message), str(info.value)


def test_bad_uniform_hops_and_custom_where() -> None:
    with pytest.raises(ValueError, match=r"^topology\.hops: must be a positive integer, got 0$"):
        Topology.uniform(NAMES, hops=0)
    with pytest.raises(ValueError, match=r"^scenario\.topology\.hops: must be a positive integer, got True$"):
        Topology.uniform(NAMES, hops=True, where="scenario.topology")


def test_unknown_partition_is_a_key_error_naming_it() -> None:
    t = Topology.ring(NAMES)
    with pytest.raises(KeyError) as info:
        t.hops("p0", "p99")
    assert isinstance(info.value, ValueError) and isinstance(info.value, UnknownPartition)
    assert "'p99'" in str(info.value) and "topology.hops" in str(info.value)
    with pytest.raises(UnknownPartition, match="'zz'"):
        t.hops("zz", "p0")
    with pytest.raises(UnknownPartition, match=r"\['x'\]"):
        t.hops(["x"], "p0")  # type: ignore[arg-type]
    assert "p3" in t and "zz" not in t and t.index("p3") == 3


def test_large_topology_builds_quickly() -> None:
    names = [f"p{i}" for i in range(1024)]
    t = Topology.numalink(names, per_router=16)
    assert t.hops("p0", "p15") == 1 and t.hops("p15", "p16") == 3 and len(t) == 1024
    assert Topology.ring(names).hops("p0", "p512") == 512


# -- latency model ------------------------------------------------------------------------------


def test_one_way_exact_for_constants() -> None:
    m = LatencyModel.from_spec(1.0)
    rng = random.Random(0)
    assert m.one_way(3, 0, "callout", rng) == 3.0
    assert m.one_way(0, 0, "callout", rng) == 0.0
    m2 = LatencyModel.from_spec({"dist": "constant", "value": 0.05}, per_byte_us=0.001)
    assert m2.one_way(2, 4096, "x", rng) == 2 * 0.05 + 4096 * 0.001
    assert m2.one_way(0, 100, "x", rng) == 100 * 0.001


def test_one_way_draws_one_sample_per_message_scaled_by_hops() -> None:
    m = LatencyModel.from_spec({"dist": "uniform", "low": 1, "high": 2})
    a, b = random.Random(3), random.Random(3)
    for hops in (1, 2, 5):
        assert m.one_way(hops, 0, "x", a) == hops * m.per_hop.sample(b)
    # no hops: no draw at all
    state = a.getstate()
    assert m.one_way(0, 0, "x", a) == 0.0 and a.getstate() == state


def test_extra_latency_per_kind() -> None:
    m = LatencyModel.from_spec(
        1.0,
        extra={"callout": 10, "reply": {"dist": "uniform", "low": 2, "high": 3}},
    )
    rng = random.Random(1)
    assert m.one_way(3, 0, "callout", rng) == 13.0
    assert m.one_way(3, 0, "fault", rng) == 3.0
    r = m.one_way(1, 0, "reply", rng)
    assert 3.0 <= r <= 4.0
    assert m.mean_one_way(3, 0, "callout") == 13.0 and m.mean_one_way(1, 0, "reply") == 3.5
    assert "callout" in m.describe() and "per hop constant 1 us" in m.describe()


def test_sampler_draws_what_the_sum_of_its_parts_draws_in_order() -> None:
    """A sampler (what the sim's interconnect keeps per route) gives the floats of the
    documented sum, term by term from a twin rng: per hop, per byte, extra, floor."""
    m = LatencyModel.from_spec({"dist": "lognormal", "median": 0.05, "sigma": 0.3}, per_byte_us=0.001,
                               extra={"callout": {"dist": "uniform", "low": 1, "high": 2}},
                               floor={"dist": "pareto", "scale": 3, "alpha": 1.2})
    a, b = random.Random(5), random.Random(5)
    draw = m.sampler(3, 64, "callout", a)
    for _ in range(20):
        want = 3 * m.per_hop.sample(b)
        want += 64 * 0.001
        want += m.extra["callout"].sample(b)
        want += m.floor.sample(b)  # type: ignore[union-attr]
        assert draw() == want
    assert a.getstate() == b.getstate()
    with pytest.raises(TopologyError, match="hops"):
        m.sampler(-1, 0, "x", a)


def test_a_constant_sampler_follows_a_change_of_its_model() -> None:
    """Made of constants, a sampler sums once and draws nothing; a study that changes the
    model while it runs (an extra latency for the kind) gets the new latency at the next draw."""
    m = LatencyModel.from_spec(0.5)
    rng = random.Random(2)
    draw = m.sampler(2, 64, "read", rng)
    state = rng.getstate()
    assert draw() == 1.0 and rng.getstate() == state
    m.extra["read"] = parse_latency(100.0, "read")
    assert draw() == 101.0
    m.per_hop = parse_latency({"dist": "uniform", "low": 1, "high": 1}, "hop")
    assert draw() == 102.0


def test_one_way_is_deterministic_per_seed() -> None:
    m = LatencyModel.from_spec(
        {"dist": "lognormal", "median": 0.05, "sigma": 0.3},
        extra={"callout": {"dist": "pareto", "scale": 3, "alpha": 1.2}},
    )
    seq = lambda seed: [m.one_way(h, 64, "callout", random.Random(seed)) for h in range(1, 6)]  # noqa: E731
    assert seq(9) == seq(9) and seq(9) != seq(10)
    assert all(v >= 3 for v in seq(9))


def test_model_spec_round_trip_and_errors() -> None:
    m = LatencyModel.from_spec(
        {"dist": "pareto", "scale": 1, "alpha": 2}, per_byte_us=0.5, extra={"callout": 3}
    )
    assert LatencyModel.from_spec(**m.to_spec()) == m
    with pytest.raises(ValueError, match=r"^topology\.extra\.callout\.sigma: must be > 0, got 0$"):
        LatencyModel.from_spec(1, extra={"callout": {"dist": "lognormal", "median": 1, "sigma": 0}})
    with pytest.raises(ValueError, match=r"^topology\.per_byte_us: must be >= 0, got -0\.1$"):
        LatencyModel.from_spec(1, per_byte_us=-0.1)
    with pytest.raises(ValueError, match=r"^sc\.net\.hop_latency: .*got 'fast'$"):
        LatencyModel.from_spec("fast", where="sc.net")
    with pytest.raises(ValueError, match=r"^topology\.extra: must be a mapping.*got \[1\]$"):
        LatencyModel.from_spec(1, extra=[1])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="LatencyModel.per_hop"):
        LatencyModel(1.0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"one_way\.hops: must be an integer >= 0, got -1"):
        m.one_way(-1, 0, "x", random.Random(0))
    with pytest.raises(ValueError, match=r"one_way\.nbytes: must be an integer >= 0, got 1\.5"):
        m.one_way(1, 1.5, "x", random.Random(0))  # type: ignore[arg-type]


# -- empirical distribution and the floor ---------------------------------------------------------


def test_empirical_draws_each_sample_equally_often_and_nothing_else() -> None:
    samples = [5.0, 1.0, 3.0, 3.0]
    x = draws({"dist": "empirical", "samples": samples})
    values, counts = np.unique(x, return_counts=True)
    assert list(values) == sorted(set(samples))
    # 3.0 is listed twice: twice as likely; each listed sample 1/4, within 4 standard errors
    expected = np.array([1, 2, 1]) / 4 * N
    assert np.all(np.abs(counts - expected) < 4 * np.sqrt(N * 0.25 * 0.75))
    d = parse_latency({"dist": "empirical", "samples": samples}, W)
    assert d.mean == sum(samples) / len(samples) and abs(x.mean() - d.mean) < 0.05 * d.mean
    assert d.param("samples") == tuple(sorted(samples))  # kept sorted: one form per multiset
    assert d == LatencyDist.empirical(sorted(samples)) and "4 samples" in d.describe()


def test_empirical_quantile_is_what_sample_returns_at_that_rank() -> None:
    d = LatencyDist.empirical([4.0, 0.5, 2.0, 9.0, 1.0])
    rng = random.Random(17)
    for _ in range(200):
        u = random.Random()
        u.setstate(rng.getstate())
        rank = u.random()  # the one draw sample() makes
        assert d.sample(rng) == float(d.quantile(rank)) and rng.getstate() == u.getstate()
    assert list(d.quantile([0.01, 0.5, 0.99])) == [0.5, 2.0, 9.0]


def test_empirical_with_one_sample_is_that_value_but_still_draws_once() -> None:
    d = LatencyDist.empirical([2.5])
    a, b = random.Random(4), random.Random(4)
    assert d.sample(a) == 2.5 and d.mean == 2.5
    b.random()
    assert a.getstate() == b.getstate()


@pytest.mark.parametrize("samples, message", [
    ([], r"^topology\.hop_latency\.samples: must be a list of at least 1 latency \(us\), got \[\]$"),
    ([1, -2], r"^topology\.hop_latency\.samples\[1\]: must be >= 0, got -2$"),
    ([1, float("nan")], r"^topology\.hop_latency\.samples\[1\]: must be finite, got nan$"),
    ([float("inf")], r"^topology\.hop_latency\.samples\[0\]: must be finite, got inf$"),
    ([1, True], r"^topology\.hop_latency\.samples\[1\]: must be a number, got True$"),
    ("12", r"^topology\.hop_latency\.samples: must be a list of latencies \(us\), got '12'$"),
    (3.0, r"^topology\.hop_latency\.samples: must be a list of latencies \(us\), got 3\.0$"),
])
def test_bad_empirical_samples_name_the_key_and_value(samples: object, message: str) -> None:
    with pytest.raises(TopologyError, match=message):
        parse_latency({"dist": "empirical", "samples": samples}, W)


def test_floor_is_drawn_last_on_every_message_of_every_kind() -> None:
    base = LatencyModel.from_spec({"dist": "lognormal", "median": 2, "sigma": 0.5}, per_byte_us=0.01,
                                  extra={"callout": {"dist": "uniform", "low": 0, "high": 3}})
    floor = LatencyDist.lognormal(40, 0.3)
    m = LatencyModel(base.per_hop, base.per_byte_us, base.extra, floor)
    for hops, kind in ((1, "callout"), (3, "fault"), (0, "rpc")):
        a, b = random.Random(hops), random.Random(hops)
        without = base.one_way(hops, 64, kind, b)
        assert m.one_way(hops, 64, kind, a) == without + floor.sample(b)  # the same draws, then the floor's
        assert a.getstate() == b.getstate()
    assert m.mean_one_way(2, 64, "callout") == base.mean_one_way(2, 64, "callout") + floor.mean
    assert m.mean_one_way(0, 0, "rpc") == floor.mean
    assert "floor lognormal median 40" in m.describe() and "floor" not in base.describe()


def test_no_floor_draws_nothing_more() -> None:
    m = LatencyModel.from_spec({"dist": "pareto", "scale": 1, "alpha": 1.5}, extra={"callout": 3})
    assert m.floor is None and LatencyModel.from_spec(1.0, floor=None).floor is None
    a, b = random.Random(8), random.Random(8)
    m.one_way(2, 0, "callout", a)
    b.random()  # the per-hop pareto's one draw; the constant extra draws nothing
    assert a.getstate() == b.getstate()


def test_floor_spec_round_trip_and_errors() -> None:
    m = LatencyModel.from_spec(1, extra={"callout": 3}, floor={"dist": "empirical", "samples": [10, 12, 30]})
    assert m.to_spec()["floor"] == {"dist": "empirical", "samples": [10.0, 12.0, 30.0]}
    assert LatencyModel.from_spec(**m.to_spec()) == m
    assert "floor" not in LatencyModel.from_spec(1).to_spec()
    with pytest.raises(TopologyError, match=r"^topology\.floor\.sigma: must be > 0, got 0$"):
        LatencyModel.from_spec(1, floor={"dist": "lognormal", "median": 1, "sigma": 0})
    with pytest.raises(TopologyError, match=r"^LatencyModel\.floor: must be a LatencyDist or None, got 5$"):
        LatencyModel(LatencyDist.constant(1), floor=5)  # type: ignore[arg-type]
