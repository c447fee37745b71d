"""Topology and latency model for the virtual-time (sim) backend.

The sim backend sends every cross-partition message (an ``invalidate_range_start`` callout, its
answer, a remote fault) through an in-memory interconnect. This module says how long such a
message takes:

- ``Topology``: the partitions by name and the number of interconnect hops between each pair
  (uniform, ring, an explicit matrix, or a two-level NUMAlink-like tree).
- ``LatencyDist`` / ``parse_latency``: one latency knob from a scenario spec: a bare number (a
  constant) or a mapping naming a distribution (constant, uniform, lognormal, pareto, or
  empirical: measured samples, drawn uniformly).
- ``LatencyModel``: ``one_way(hops, nbytes, kind, rng)`` = hops x one per-hop sample + a per-byte
  cost + an optional extra delay for that kind of message + an optional floor (the fixed cost
  of the instrument's own software stack, added to every message; see ``workloads/calibration.py``).

All times are **microseconds** (floats). Randomness comes only from the ``random.Random`` the
caller passes in (never the global ``random`` module, never numpy's global state), and only
through ``rng.random()``, ``rng.gauss()`` and ``rng.uniform()``, so one seed gives one sequence of
latencies in every process. For scale (REFERENCE.md section 8): a NUMAlink switch round trip is
about 0.05 us, a short NUMAlink MPI message about 1 us, a GRU TLB invalidate a few us, and PCIe ATS
or RDMA ODP invalidations have tails three to four orders of magnitude above their common case,
which is what ``pareto`` is for: tails, not means, make exit and unregister hang.

Every malformed spec raises ``TopologyError`` (a ``ValueError``) whose message starts with the key
path and names the bad value, e.g. ``topology.hop_latency.sigma: must be > 0, got -1``.
"""

from __future__ import annotations

import math
import numbers
import random
import statistics
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

__all__ = [
    "TopologyError",
    "UnknownPartition",
    "LatencyDist",
    "parse_latency",
    "Topology",
    "LatencyModel",
]


class TopologyError(ValueError):
    """A malformed topology or latency spec, or a bad argument to one of this module's APIs.

    The message starts with the key path of the bad value (``topology.hop_latency.sigma``) and
    ends with the value itself (``got -1``).
    """


class UnknownPartition(TopologyError, KeyError):
    """A partition name the topology does not know. Both a ``ValueError`` and a ``KeyError``."""

    def __str__(self) -> str:  # KeyError would repr() the message; keep it readable
        return str(self.args[0]) if self.args else ""


_STANDARD_NORMAL = statistics.NormalDist()

# distribution name -> its parameter names, in canonical order
_DISTS: dict[str, tuple[str, ...]] = {
    "constant": ("value",),
    "uniform": ("low", "high"),
    "lognormal": ("median", "sigma"),
    "pareto": ("scale", "alpha"),
    "empirical": ("samples",),
}


def _is_number(x: Any) -> bool:
    """A real number that is not a bool (``True`` is an int in Python, but never a latency)."""
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _number(x: Any, path: str, *, minimum: float, strict: bool, unit: str = "") -> float:
    """Check ``x`` is a finite real number >= minimum (> if strict) and return it as a float."""
    if not _is_number(x):
        raise TopologyError(f"{path}: must be a number{unit}, got {x!r}")
    v = float(x)
    if not math.isfinite(v):
        raise TopologyError(f"{path}: must be finite, got {x!r}")
    if (strict and not v > minimum) or (not strict and not v >= minimum):
        raise TopologyError(f"{path}: must be {'>' if strict else '>='} {minimum:g}, got {x!r}")
    return v


def _samples(x: Any, path: str) -> tuple[float, ...]:
    """Check ``x`` is a non-empty list of finite latencies >= 0; return them sorted (the
    canonical form: two lists of the same values are one distribution)."""
    if isinstance(x, (str, bytes, Mapping)) or not isinstance(x, (Sequence, np.ndarray)):
        raise TopologyError(f"{path}: must be a list of latencies (us), got {x!r}")
    if len(x) == 0:
        raise TopologyError(f"{path}: must be a list of at least 1 latency (us), got {list(x)!r}")
    return tuple(sorted(_number(v, f"{path}[{i}]", minimum=0.0, strict=False) for i, v in enumerate(x)))


def _check_params(dist: str, params: Mapping[str, Any], where: str) -> dict[str, Any]:
    """Validate the parameters of ``dist`` (keys already known to be exactly the right ones)."""
    out: dict[str, Any] = {}
    if dist == "constant":
        out["value"] = _number(params["value"], f"{where}.value", minimum=0.0, strict=False)
    elif dist == "uniform":
        low = _number(params["low"], f"{where}.low", minimum=0.0, strict=False)
        high = _number(params["high"], f"{where}.high", minimum=0.0, strict=False)
        if high < low:
            raise TopologyError(f"{where}.high: must be >= low ({low:g}), got {params['high']!r}")
        out.update(low=low, high=high)
    elif dist == "lognormal":
        out["median"] = _number(params["median"], f"{where}.median", minimum=0.0, strict=True)
        out["sigma"] = _number(params["sigma"], f"{where}.sigma", minimum=0.0, strict=True)
    elif dist == "pareto":
        out["scale"] = _number(params["scale"], f"{where}.scale", minimum=0.0, strict=True)
        out["alpha"] = _number(params["alpha"], f"{where}.alpha", minimum=0.0, strict=True)
    elif dist == "empirical":
        out["samples"] = _samples(params["samples"], f"{where}.samples")
    else:  # pragma: no cover - callers check dist first
        raise TopologyError(f"{where}.dist: unknown distribution {dist!r}")
    return out


def _check_rng(rng: Any, where: str) -> None:
    """Refuse anything but a ``random.Random`` (in particular the global ``random`` module)."""
    if not isinstance(rng, random.Random):
        raise TopologyError(f"{where}: rng must be a random.Random seeded by the caller, got {rng!r}")


@dataclass(frozen=True)
class LatencyDist:
    """One latency distribution, in microseconds.

    ``dist`` is one of ``constant``, ``uniform``, ``lognormal``, ``pareto``, ``empirical``;
    ``params`` holds its parameters as ``(name, value)`` pairs in canonical order:

    - constant ``(value,)``: always ``value`` (>= 0); draws nothing from the rng.
    - uniform ``(low, high)``: ``rng.uniform(low, high)``, 0 <= low <= high.
    - lognormal ``(median, sigma)``: ``median * exp(sigma * N(0, 1))``, median > 0, sigma > 0.
    - pareto ``(scale, alpha)``: ``scale / U ** (1 / alpha)`` with U uniform in (0, 1]: classic
      Pareto with minimum ``scale`` and tail index ``alpha`` (scale > 0, alpha > 0); P(X > x) =
      (scale / x) ** alpha. The mean is infinite for alpha <= 1.
    - empirical ``(samples,)``: one of the measured ``samples`` (a tuple of at least one latency
      >= 0, kept sorted), each as likely: ``samples[floor(n * rng.random())]``. Always one
      ``rng.random()`` draw, even with one sample. Its mean, quantiles and median are the
      samples'; it never draws a value outside [min, max] of them.

    Invariant (checked in ``__post_init__``): ``dist`` is known and ``params`` are exactly its
    parameters, each finite and in range. Build one with ``parse_latency`` or the class-method
    shortcuts (``LatencyDist.constant(1.0)``).
    """

    dist: str
    params: tuple[tuple[str, Any], ...]  # each a float, but empirical's samples: a sorted tuple of floats

    def __post_init__(self) -> None:
        where = "LatencyDist"
        if self.dist not in _DISTS:
            raise TopologyError(
                f"{where}.dist: unknown distribution {self.dist!r} (expected one of {', '.join(_DISTS)})"
            )
        given = dict(self.params)
        if len(given) != len(self.params) or set(given) != set(_DISTS[self.dist]):
            raise TopologyError(
                f"{where}.params: dist {self.dist!r} takes exactly {', '.join(_DISTS[self.dist])}, "
                f"got {self.params!r}"
            )
        checked = _check_params(self.dist, given, where)
        object.__setattr__(self, "params", tuple((k, checked[k]) for k in _DISTS[self.dist]))

    # -- shortcuts ------------------------------------------------------------------------------

    @classmethod
    def constant(cls, value: float) -> "LatencyDist":
        """Always ``value`` us."""
        return cls("constant", (("value", value),))

    @classmethod
    def uniform(cls, low: float, high: float) -> "LatencyDist":
        """Uniform on [low, high] us."""
        return cls("uniform", (("low", low), ("high", high)))

    @classmethod
    def lognormal(cls, median: float, sigma: float) -> "LatencyDist":
        """``median * exp(sigma * N(0,1))`` us."""
        return cls("lognormal", (("median", median), ("sigma", sigma)))

    @classmethod
    def pareto(cls, scale: float, alpha: float) -> "LatencyDist":
        """Pareto with minimum ``scale`` us and tail index ``alpha``."""
        return cls("pareto", (("scale", scale), ("alpha", alpha)))

    @classmethod
    def empirical(cls, samples: Sequence[float]) -> "LatencyDist":
        """One of ``samples`` (us), each as likely."""
        return cls("empirical", (("samples", samples),))

    # -- use ------------------------------------------------------------------------------------

    def param(self, name: str) -> Any:
        """The value of parameter ``name`` (``KeyError`` if this distribution has none such): a
        float, or for empirical's ``samples`` the sorted tuple of floats."""
        for k, v in self.params:
            if k == name:
                return v
        raise KeyError(name)

    def sample(self, rng: random.Random) -> float:
        """Draw one latency in us from ``rng`` (a caller-seeded ``random.Random``).

        Uses only ``rng.random()``, ``rng.gauss()`` and ``rng.uniform()``. A constant draws
        nothing. An astronomically large draw (a lognormal with huge sigma, a pareto with tiny
        alpha) that overflows a float is returned as ``inf``.
        """
        _check_rng(rng, "LatencyDist.sample")
        return self._sample(rng)

    def _sample(self, rng: random.Random) -> float:
        """``sample`` of an rng already checked (``LatencyModel.sampler`` checks it once)."""
        d = self.dist
        p = self.params
        if d == "constant":
            return p[0][1]
        if d == "uniform":
            return rng.uniform(p[0][1], p[1][1])
        if d == "lognormal":
            try:
                return p[0][1] * math.exp(p[1][1] * rng.gauss(0.0, 1.0))
            except OverflowError:
                return math.inf
        if d == "empirical":
            xs = p[0][1]
            return xs[min(int(rng.random() * len(xs)), len(xs) - 1)]  # random() < 1: the min only guards rounding
        # pareto: U in (0, 1] so the minimum is exactly scale and U is never 0
        u = 1.0 - rng.random()
        try:
            return p[0][1] * u ** (-1.0 / p[1][1])
        except OverflowError:
            return math.inf

    def quantile(self, p: Any) -> np.ndarray:
        """The inverse of the distribution function, in us, at each probability of ``p`` (an
        array or scalar, every value in (0, 1)): what ``sample`` returns for the rng's draw
        that puts it at that rank. For analytic models that integrate over the distribution
        (``workloads/predict.py``) instead of sampling it; a pareto or lognormal quantile that
        overflows a float is ``inf``."""
        q = np.asarray(p, dtype=np.float64)
        if q.size and not ((q > 0.0) & (q < 1.0)).all():
            bad = q[~((q > 0.0) & (q < 1.0))].flat[0]
            raise TopologyError(f"LatencyDist.quantile: probabilities must be in (0, 1), got {bad!r}")
        d = self.dist
        with np.errstate(over="ignore"):
            if d == "constant":
                return np.full(q.shape, self.param("value"))
            if d == "uniform":
                return self.param("low") + q * (self.param("high") - self.param("low"))
            if d == "lognormal":
                z = np.vectorize(_STANDARD_NORMAL.inv_cdf, otypes=[np.float64])(q) if q.size else q
                return self.param("median") * np.exp(self.param("sigma") * z)
            if d == "empirical":  # sample()'s index for a draw at rank q
                xs = np.asarray(self.param("samples"), dtype=np.float64)
                return xs[np.minimum(np.floor(q * xs.size).astype(np.int64), xs.size - 1)]
            return self.param("scale") * (1.0 - q) ** (-1.0 / self.param("alpha"))

    @property
    def mean(self) -> float:
        """The expected value in us (``inf`` for a pareto with alpha <= 1)."""
        d = self.dist
        if d == "constant":
            return self.param("value")
        if d == "uniform":
            return (self.param("low") + self.param("high")) / 2.0
        if d == "lognormal":
            try:
                return self.param("median") * math.exp(self.param("sigma") ** 2 / 2.0)
            except OverflowError:
                return math.inf
        if d == "empirical":
            return math.fsum(self.param("samples")) / len(self.param("samples"))
        alpha, scale = self.param("alpha"), self.param("scale")
        return math.inf if alpha <= 1.0 else alpha * scale / (alpha - 1.0)

    def describe(self) -> str:
        """A one-line human description, e.g. ``lognormal median 2 us, sigma 0.5 (mean 2.27 us)``."""
        d = self.dist
        if d == "constant":
            return f"constant {self.param('value'):g} us"
        if d == "uniform":
            return f"uniform [{self.param('low'):g}, {self.param('high'):g}] us (mean {self.mean:.3g} us)"
        if d == "lognormal":
            return (
                f"lognormal median {self.param('median'):g} us, sigma {self.param('sigma'):g} "
                f"(mean {self.mean:.3g} us)"
            )
        if d == "empirical":
            xs = self.param("samples")
            return (
                f"empirical {len(xs)} sample{'s' if len(xs) != 1 else ''}, median {statistics.median(xs):.3g} us, "
                f"range [{xs[0]:.3g}, {xs[-1]:.3g}] us (mean {self.mean:.3g} us)"
            )
        mean = "infinite" if math.isinf(self.mean) else f"{self.mean:.3g} us"
        return f"pareto scale {self.param('scale'):g} us, alpha {self.param('alpha'):g} (mean {mean})"

    def to_spec(self) -> dict[str, Any]:
        """The mapping form, e.g. ``{"dist": "uniform", "low": 1.0, "high": 3.0}`` (empirical's
        samples as a list, so the form is JSON).

        ``parse_latency(d.to_spec(), where) == d`` for every ``LatencyDist`` ``d``.
        """
        return {"dist": self.dist, **{k: list(v) if isinstance(v, tuple) else v for k, v in self.params}}


def parse_latency(spec: Any, where: str) -> LatencyDist:
    """Parse one latency knob of a scenario spec; ``where`` is its key path for error messages.

    ``spec`` is a bare number (a constant, in us, >= 0) or a mapping with a ``dist`` key and
    exactly that distribution's parameters::

        {dist: constant, value: X}             X >= 0
        {dist: uniform, low: A, high: B}       0 <= A <= B
        {dist: lognormal, median: M, sigma: S} M > 0, S > 0
        {dist: pareto, scale: XM, alpha: A}    XM > 0, A > 0
        {dist: empirical, samples: [X, ...]}   at least one X, each X >= 0

    A ``LatencyDist`` is returned as is. Anything else (unknown ``dist``, unknown or missing keys,
    a non-number or a bool, NaN or infinity, a value out of range, an empty list of samples)
    raises ``TopologyError`` naming ``where`` plus the key (``samples[3]`` for one sample) and
    the bad value.
    """
    if isinstance(spec, LatencyDist):
        return spec
    if _is_number(spec):
        return LatencyDist.constant(_number(spec, where, minimum=0.0, strict=False, unit=" (us)"))
    if not isinstance(spec, Mapping):
        raise TopologyError(
            f"{where}: expected a number (us) or a mapping with a 'dist' key, got {spec!r}"
        )
    if "dist" not in spec:
        raise TopologyError(
            f"{where}.dist: missing (expected one of {', '.join(_DISTS)}), got {dict(spec)!r}"
        )
    dist = spec["dist"]
    if not isinstance(dist, str) or dist not in _DISTS:
        raise TopologyError(
            f"{where}.dist: unknown distribution {dist!r} (expected one of {', '.join(_DISTS)})"
        )
    wanted = _DISTS[dist]
    for key in spec:
        if key != "dist" and key not in wanted:
            raise TopologyError(
                f"{where}.{key}: unknown key for dist {dist!r} (expected {', '.join(wanted)}), "
                f"got {key!r}: {spec[key]!r}"
            )
    for key in wanted:
        if key not in spec:
            raise TopologyError(
                f"{where}.{key}: missing, required for dist {dist!r}, got {dict(spec)!r}"
            )
    checked = _check_params(dist, {k: spec[k] for k in wanted}, where)
    return LatencyDist(dist, tuple((k, checked[k]) for k in wanted))


# ---------------------------------------------------------------------------------------------
# topology


def _check_names(names: Iterable[str], where: str) -> tuple[str, ...]:
    """Names are non-empty strings, unique, and there is at least one."""
    if isinstance(names, (str, bytes)) or not isinstance(names, Iterable):
        raise TopologyError(f"{where}.names: must be a list of partition names, got {names!r}")
    out = tuple(names)
    if not out:
        raise TopologyError(f"{where}.names: must not be empty, got {list(out)!r}")
    seen: dict[str, int] = {}
    for i, n in enumerate(out):
        if not isinstance(n, str) or not n:
            raise TopologyError(f"{where}.names[{i}]: must be a non-empty string, got {n!r}")
        if n in seen:
            raise TopologyError(f"{where}.names[{i}]: duplicate name (also names[{seen[n]}]), got {n!r}")
        seen[n] = i
    return out


def _positive_int(x: Any, path: str) -> int:
    """An integer >= 1 (a bool is not an integer here; an integral float such as 2.0 is)."""
    if isinstance(x, (bool, np.bool_)) or not _is_number(x):
        raise TopologyError(f"{path}: must be a positive integer, got {x!r}")
    if isinstance(x, numbers.Integral):
        v = int(x)
    else:
        f = float(x)
        if not math.isfinite(f) or f != int(f):
            raise TopologyError(f"{path}: must be a positive integer, got {x!r}")
        v = int(f)
    if v < 1:
        raise TopologyError(f"{path}: must be a positive integer, got {x!r}")
    return v


class Topology:
    """Named partitions and the number of interconnect hops between each pair.

    Invariants (checked at construction): at least one partition; names unique non-empty
    strings; the hop matrix is an n x n numpy int array, symmetric, zero on the diagonal and
    >= 1 off it. ``hops(a, b)`` is two dict lookups and one array read: O(1).

    Build one with ``uniform``, ``ring``, ``from_matrix`` or ``numalink``. Each takes a
    keyword ``where`` (default ``"topology"``) used as the key path in error messages.
    """

    def __init__(self, names: Sequence[str], matrix: np.ndarray, *, kind: str = "matrix",
                 where: str = "topology"):
        """Use the class-method constructors; this one checks ``matrix`` against ``names``."""
        self._names = _check_names(names, where)
        n = len(self._names)
        m = np.asarray(matrix)
        if m.shape != (n, n):
            raise TopologyError(
                f"{where}.matrix: expected {n}x{n} for {n} names, got shape {m.shape!r}"
            )
        if not np.issubdtype(m.dtype, np.integer):
            raise TopologyError(f"{where}.matrix: must hold integers, got dtype {m.dtype}")
        bad_diag = np.flatnonzero(np.diagonal(m) != 0)
        if bad_diag.size:
            i = int(bad_diag[0])
            raise TopologyError(f"{where}.matrix[{i}][{i}]: diagonal must be 0, got {int(m[i, i])}")
        off = ~np.eye(n, dtype=bool)
        bad = np.argwhere(off & (m < 1))
        if bad.size:
            i, j = (int(x) for x in bad[0])
            raise TopologyError(f"{where}.matrix[{i}][{j}]: must be a positive integer, got {int(m[i, j])}")
        asym = np.argwhere(np.triu(m != m.T))
        if asym.size:
            i, j = (int(x) for x in asym[0])
            raise TopologyError(
                f"{where}.matrix[{j}][{i}]: must equal matrix[{i}][{j}] ({int(m[i, j])}) "
                f"(symmetric), got {int(m[j, i])}"
            )
        self._m = np.array(m, dtype=np.int64)
        self._m.setflags(write=False)
        self._index = {name: i for i, name in enumerate(self._names)}
        self._kind = kind
        self._where = where

    # -- constructors ---------------------------------------------------------------------------

    @classmethod
    def uniform(cls, names: Sequence[str], hops: int = 1, *, where: str = "topology") -> "Topology":
        """Every distinct pair of partitions is ``hops`` (a positive integer) apart."""
        names_t = _check_names(names, where)
        h = _positive_int(hops, f"{where}.hops")
        n = len(names_t)
        m = np.full((n, n), h, dtype=np.int64)
        np.fill_diagonal(m, 0)
        return cls(names_t, m, kind=f"uniform(hops={h})", where=where)

    @classmethod
    def ring(cls, names: Sequence[str], *, where: str = "topology") -> "Topology":
        """Partitions on a ring in the order given; hops = the shorter way round."""
        names_t = _check_names(names, where)
        n = len(names_t)
        idx = np.arange(n)
        d = np.abs(idx[:, None] - idx[None, :])
        m = np.minimum(d, n - d).astype(np.int64)
        return cls(names_t, m, kind="ring", where=where)

    @classmethod
    def from_matrix(cls, names: Sequence[str], matrix: Any, *, where: str = "topology") -> "Topology":
        """An explicit hop matrix: a list of lists (or 2-D array), ``matrix[i][j]`` the hops
        between ``names[i]`` and ``names[j]``. It must be n x n, symmetric, 0 on the diagonal and
        a positive integer off it; the error names the first bad cell, e.g.
        ``topology.matrix[1][2]: must be a positive integer, got 0``.
        """
        names_t = _check_names(names, where)
        n = len(names_t)
        if isinstance(matrix, np.ndarray):
            if matrix.ndim != 2:
                raise TopologyError(
                    f"{where}.matrix: expected {n}x{n} for {n} names, got shape {matrix.shape!r}"
                )
            rows: Sequence[Any] = list(matrix)
        elif isinstance(matrix, Sequence) and not isinstance(matrix, (str, bytes)):
            rows = matrix
        else:
            raise TopologyError(f"{where}.matrix: must be a list of rows, got {matrix!r}")
        if len(rows) != n:
            raise TopologyError(f"{where}.matrix: expected {n} rows for {n} names, got {len(rows)}")
        m = np.zeros((n, n), dtype=np.int64)
        for i, row in enumerate(rows):
            if isinstance(row, (str, bytes)) or not isinstance(row, (Sequence, np.ndarray)):
                raise TopologyError(f"{where}.matrix[{i}]: must be a row of {n} integers, got {row!r}")
            if len(row) != n:
                raise TopologyError(
                    f"{where}.matrix[{i}]: expected {n} entries, got {len(row)}: {list(row)!r}"
                )
            for j, cell in enumerate(row):
                path = f"{where}.matrix[{i}][{j}]"
                if i == j:
                    if isinstance(cell, (bool, np.bool_)) or not _is_number(cell) or cell != 0:
                        raise TopologyError(f"{path}: diagonal must be 0, got {cell!r}")
                else:
                    m[i, j] = _positive_int(cell, path)
        return cls(names_t, m, kind="matrix", where=where)

    @classmethod
    def numalink(cls, names: Sequence[str], per_router: int = 4, *,
                 where: str = "topology") -> "Topology":
        """A two-level simplification of SGI UV NUMAlink.

        Partitions are packed, in the order given, into router groups of ``per_router``
        (names[0:per_router] share the first router, and so on). Two partitions on the same
        router are 1 hop apart (through that router); partitions on different routers are 3 hops
        apart (leaf router -> upper-level router -> leaf router). Real UV systems wire NUMAlink
        as paired blades behind hub ASICs, fat trees and (UV 2000) enhanced hypercubes, with
        distances that vary more; this keeps only the near/far split that matters for callout
        latency. Scale per hop from REFERENCE.md section 8 (~0.05 us per switch round trip).
        """
        names_t = _check_names(names, where)
        k = _positive_int(per_router, f"{where}.per_router")
        group = np.arange(len(names_t)) // k
        m = np.where(group[:, None] == group[None, :], 1, 3).astype(np.int64)
        np.fill_diagonal(m, 0)
        nrouters = int(group[-1]) + 1
        return cls(names_t, m, kind=f"numalink(per_router={k}, {nrouters} router(s))", where=where)

    # -- queries --------------------------------------------------------------------------------

    @property
    def names(self) -> tuple[str, ...]:
        """The partition names, in the order given at construction."""
        return self._names

    @property
    def matrix(self) -> np.ndarray:
        """The hop matrix (read-only int64 array, rows and columns in ``names`` order)."""
        return self._m

    @property
    def kind(self) -> str:
        """Which constructor built this topology, with its parameters (``ring``, ``matrix``...)."""
        return self._kind

    def __len__(self) -> int:
        """The number of partitions."""
        return len(self._names)

    def __contains__(self, name: object) -> bool:
        """Whether ``name`` is one of the partitions."""
        return name in self._index

    def index(self, name: str) -> int:
        """The position of ``name`` in ``names``; ``UnknownPartition`` if it is not there."""
        try:
            return self._index[name]
        except (KeyError, TypeError):
            raise UnknownPartition(self._unknown(name)) from None

    def hops(self, a: str, b: str) -> int:
        """Interconnect hops between partitions ``a`` and ``b`` (0 when ``a == b``). O(1).

        An unknown name raises ``UnknownPartition`` (a ``KeyError`` and a ``ValueError``) naming it.
        """
        try:
            i = self._index[a]
        except (KeyError, TypeError):
            raise UnknownPartition(self._unknown(a)) from None
        try:
            j = self._index[b]
        except (KeyError, TypeError):
            raise UnknownPartition(self._unknown(b)) from None
        return int(self._m.item(i, j))

    def _unknown(self, name: object) -> str:
        shown = ", ".join(self._names[:8]) + (", ..." if len(self._names) > 8 else "")
        return f"{self._where}.hops: unknown partition {name!r} ({len(self._names)} known: {shown})"

    def describe(self) -> str:
        """One line: the kind, the partition count and min/mean/max hops between distinct pairs."""
        n = len(self._names)
        if n == 1:
            return f"{self._kind}: 1 partition ({self._names[0]}), no hops"
        off = self._m[~np.eye(n, dtype=bool)]
        return (
            f"{self._kind}: {n} partitions, hops between distinct partitions "
            f"min {int(off.min())}, mean {float(off.mean()):.3g}, max {int(off.max())}"
        )

    def __repr__(self) -> str:
        return f"Topology({self.describe()})"


# ---------------------------------------------------------------------------------------------
# latency model


@dataclass
class LatencyModel:
    """How long one message takes to cross the interconnect, in us.

    ``one_way(hops, nbytes, kind, rng)`` = ``hops * per_hop.sample(rng)`` (one sample per
    message, scaled by the hop count; nothing drawn when hops == 0) ``+ nbytes * per_byte_us``
    ``+ extra[kind].sample(rng)`` (when ``kind`` has an extra entry, e.g. ``"callout"`` -> the
    secondary's own callout handling time) ``+ floor.sample(rng)`` (when there is a floor).

    ``floor`` is the one-way cost of the software stack a real run's messages cross whatever
    their kind, size or distance (on the ray backend: Python, gRPC and Ray serialisation),
    which the sim does not otherwise have: fitted to a ray run's probe by
    ``workloads/calibration.py``. A request and its reply each draw one. ``None`` (the default)
    draws nothing, so a model without a floor gives the latencies it always gave.

    Invariants (checked in ``__post_init__``): ``per_hop``, every ``extra`` value and ``floor``
    (unless None) is a ``LatencyDist``; ``per_byte_us`` is a finite number >= 0; ``extra`` keys
    are strings.
    """

    per_hop: LatencyDist
    per_byte_us: float = 0.0
    extra: dict[str, LatencyDist] = field(default_factory=dict)
    floor: LatencyDist | None = None

    def __post_init__(self) -> None:
        where = "LatencyModel"
        if not isinstance(self.per_hop, LatencyDist):
            raise TopologyError(f"{where}.per_hop: must be a LatencyDist, got {self.per_hop!r}")
        self.per_byte_us = _number(self.per_byte_us, f"{where}.per_byte_us", minimum=0.0, strict=False)
        if not isinstance(self.extra, Mapping):
            raise TopologyError(f"{where}.extra: must be a mapping of kind -> LatencyDist, got {self.extra!r}")
        for k, v in self.extra.items():
            if not isinstance(k, str):
                raise TopologyError(f"{where}.extra: keys must be message kinds (str), got {k!r}")
            if not isinstance(v, LatencyDist):
                raise TopologyError(f"{where}.extra.{k}: must be a LatencyDist, got {v!r}")
        self.extra = dict(self.extra)
        if self.floor is not None and not isinstance(self.floor, LatencyDist):
            raise TopologyError(f"{where}.floor: must be a LatencyDist or None, got {self.floor!r}")

    @classmethod
    def from_spec(cls, hop_latency: Any, per_byte_us: Any = 0.0, extra: Mapping[str, Any] | None = None,
                  where: str = "topology", floor: Any = None) -> "LatencyModel":
        """Build a model from scenario-spec values; errors name ``where.hop_latency``,
        ``where.per_byte_us``, ``where.extra.<kind>`` or ``where.floor`` (plus the parameter key)
        and the bad value. Each latency is anything ``parse_latency`` accepts; ``floor`` may also
        be None (no floor).
        """
        per_hop = parse_latency(hop_latency, f"{where}.hop_latency")
        pb = _number(per_byte_us, f"{where}.per_byte_us", minimum=0.0, strict=False)
        ex: dict[str, LatencyDist] = {}
        if extra is not None:
            if not isinstance(extra, Mapping):
                raise TopologyError(
                    f"{where}.extra: must be a mapping of message kind -> latency, got {extra!r}"
                )
            for k, v in extra.items():
                if not isinstance(k, str) or not k:
                    raise TopologyError(f"{where}.extra: keys must be message kinds (str), got {k!r}")
                ex[k] = parse_latency(v, f"{where}.extra.{k}")
        fl = None if floor is None else parse_latency(floor, f"{where}.floor")
        return cls(per_hop, pb, ex, fl)

    def one_way(self, hops: int, nbytes: int, kind: str, rng: random.Random) -> float:
        """The one-way latency in us of a ``kind`` message of ``nbytes`` bytes over ``hops`` hops.

        Draws from ``rng`` in a fixed order: the per-hop sample (only if hops > 0), then the
        extra sample for ``kind`` (only if there is one), then the floor (only if there is one,
        and whatever ``hops``, ``nbytes`` and ``kind``). With a constant 1.0 per hop, 3 hops and
        no per-byte cost the result is exactly 3.0.
        """
        return self.sampler(hops, nbytes, kind, rng)()

    def sampler(self, hops: int, nbytes: int, kind: str, rng: random.Random) -> Callable[[], float]:
        """``one_way(hops, nbytes, kind, rng)`` with its arguments fixed and checked once: a
        function of nothing that draws what ``one_way`` draws, in the same order, and adds the
        same terms in the same order (so it gives the same floats), from the model as it is at
        each draw (a study may change it while it runs); when every part is a constant, the sum
        is made once and given while the parts stay the same. For a path that sends many messages of
        one kind between the same two partitions (the sim's interconnect keeps one per route)."""
        # (type(x) is int first: the common case, without the numbers.Integral ABC check)
        if type(hops) is not int and (isinstance(hops, bool) or not isinstance(hops, numbers.Integral)) or hops < 0:
            raise TopologyError(f"LatencyModel.one_way.hops: must be an integer >= 0, got {hops!r}")
        if type(nbytes) is not int and (isinstance(nbytes, bool) or not isinstance(nbytes, numbers.Integral)) or nbytes < 0:
            raise TopologyError(f"LatencyModel.one_way.nbytes: must be an integer >= 0, got {nbytes!r}")
        _check_rng(rng, "LatencyModel.one_way.rng")

        def draw() -> float:
            t = 0.0
            if hops:
                t = hops * self.per_hop._sample(rng)
            if nbytes and self.per_byte_us:
                t += nbytes * self.per_byte_us
            ex = self.extra.get(kind)
            if ex is not None:
                t += ex._sample(rng)
            if self.floor is not None:  # last: a model without one draws exactly what it always drew
                t += self.floor._sample(rng)
            return t

        hop, per_byte, ex, floor = self.per_hop, self.per_byte_us, self.extra.get(kind), self.floor
        if not all(d is None or d.dist == "constant" for d in (hop if hops else None, ex, floor)):
            return draw
        fixed = draw()  # draws nothing: every part is a constant

        def constant() -> float:
            # the sum made once, while the model's parts are those it was made of (a LatencyDist
            # is frozen: the same object, the same value)
            if self.per_hop is hop and self.extra.get(kind) is ex and self.floor is floor and self.per_byte_us == per_byte:
                return fixed
            return draw()
        return constant

    def mean_one_way(self, hops: int, nbytes: int, kind: str) -> float:
        """The expected value of ``one_way(hops, nbytes, kind, rng)`` (may be ``inf``)."""
        t = hops * self.per_hop.mean if hops else 0.0
        t += nbytes * self.per_byte_us
        ex = self.extra.get(kind)
        t += ex.mean if ex is not None else 0.0
        return t + (self.floor.mean if self.floor is not None else 0.0)

    def to_spec(self) -> dict[str, Any]:
        """The spec form, ``LatencyModel.from_spec(**m.to_spec()) == m`` (for a results config).
        ``floor`` is there only when the model has one."""
        spec: dict[str, Any] = {
            "hop_latency": self.per_hop.to_spec(),
            "per_byte_us": self.per_byte_us,
            "extra": {k: v.to_spec() for k, v in self.extra.items()},
        }
        if self.floor is not None:
            spec["floor"] = self.floor.to_spec()
        return spec

    def describe(self) -> str:
        """One line: per-hop distribution, per-byte cost, the extra delay of each kind and the
        floor under every message."""
        parts = [f"per hop {self.per_hop.describe()}"]
        if self.per_byte_us:
            parts.append(f"{self.per_byte_us:g} us/byte")
        for k, v in sorted(self.extra.items()):
            parts.append(f"{k} +{v.describe()}")
        if self.floor is not None:
            parts.append(f"every message +floor {self.floor.describe()}")
        return "; ".join(parts)
