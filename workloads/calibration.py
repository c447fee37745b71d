"""Calibrating the sim's latency model to the instrument: the floor under every message.

A ray run's callouts cross Python, gRPC and Ray on the way out and back, a cost the sim's
interconnect does not otherwise have. The ray backend measures it with a probe (a null callout
from the owner partition to a null notifier on another, no injected latency, no model work) and
writes the round trips to the run's ``results.json``::

    "overhead": {"p0->p1": {"n": 50, "rpc_p50": .., "rpc_p99": .., "model_p50": .., "model_p99": ..,
                            "rpc_us": [..], "model_us": [..]}, "p1->p0": {...}}

This module turns those round trips into the sim's ``LatencyModel.floor`` (``cluster/topology.py``):
a one-way latency that every message draws once, so that a request and its reply together
reproduce what the probe measured.

- ``fit_floor(rtt_us, method)``: the one-way ``LatencyDist`` whose two-draw sum matches the round
  trips, by ``lognormal`` (method of moments) or ``empirical`` (the round trips halved).
- ``Calibration``: a fitted floor with where it came from (scenario, seed, pairs probed, samples,
  each pair's model p50/p99); ``from_overhead`` / ``from_results`` build one from a probe,
  ``save`` / ``load`` keep it in a JSON file (``"version": 1``) that ``mmusim run --calibration
  FILE`` reads.

Every bad input raises ``CalibrationError`` (a ``ValueError``) naming the file, the key and the
bad value.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from cluster.topology import LatencyDist, TopologyError, parse_latency

__all__ = ["CalibrationError", "Calibration", "fit_floor", "FIT_METHODS", "CALIBRATION_VERSION"]

CALIBRATION_VERSION = 1
FIT_METHODS = ("lognormal", "empirical")
PROBES = ("loaded", "idle")  # the ray run's null callouts under the workload's load, or at bring-up
PROBE_KEYS = {"idle": ("model_us", "model_p50", "model_p99"), "loaded": ("loaded_us", "loaded_p50", "loaded_p99")}
MIN_SAMPLES = 2  # a spread needs two


class CalibrationError(ValueError):
    """A calibration that cannot be made or read: too few or bad samples, an unknown method,
    results without a probe, a missing or malformed calibration file."""


def _is_number(x: Any) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, (bool, np.bool_))


def _round_trips(rtt_us: Any, where: str) -> list[float]:
    """``rtt_us`` as a list of floats: at least ``MIN_SAMPLES``, each finite and >= 0."""
    if isinstance(rtt_us, (str, bytes, Mapping)) or not isinstance(rtt_us, (Sequence, np.ndarray)):
        raise CalibrationError(f"{where}: expected a list of round trips (us), got {rtt_us!r}")
    if len(rtt_us) < MIN_SAMPLES:
        raise CalibrationError(f"{where}: expected at least {MIN_SAMPLES} round trips, got {len(rtt_us)}: "
                               f"{list(rtt_us)!r}")
    out = []
    for i, x in enumerate(rtt_us):
        if not _is_number(x) or not math.isfinite(float(x)) or float(x) < 0:
            raise CalibrationError(f"{where}[{i}]: expected a finite round trip >= 0 (us), got {x!r}")
        out.append(float(x))
    return out


def fit_floor(rtt_us: Sequence[float], method: str) -> LatencyDist:
    """The one-way floor ``H`` whose sum of two independent draws (a request and its reply each
    draw one, ``LatencyModel.one_way``) reproduces the measured round trips ``rtt_us`` (us).

    - ``lognormal``: the method of moments. With ``R = H1 + H2``, ``E[H] = E[R] / 2`` and
      ``Var[H] = Var[R] / 2`` (R's sample variance); a lognormal with that mean and variance
      has ``sigma^2 = ln(1 + Var[H] / E[H]^2)`` and ``median = E[H] exp(-sigma^2 / 2)``. The
      sum of two such draws keeps R's mean and variance; its shape is close to R's when R is
      itself roughly lognormal (the usual shape of a software stack's latency).
    - ``empirical``: the round trips halved, each as likely. H keeps R's mean and median
      (halved), but the sum of two independent halves has half R's variance: the simulated
      round trip has the measured mean and about the measured median, with a narrower tail
      (a slow round trip is slow both ways at once, which two independent draws rarely are).

    Refuses (``CalibrationError``) fewer than 2 round trips, one that is not a finite number
    >= 0, an unknown method, and for ``lognormal`` round trips without spread (all equal: use
    ``empirical``) or with a mean of 0.
    """
    xs = _round_trips(rtt_us, "rtt_us")
    if method == "empirical":
        return LatencyDist.empirical([x / 2.0 for x in xs])
    if method != "lognormal":
        raise CalibrationError(f"method: expected one of {', '.join(FIT_METHODS)}, got {method!r}")
    a = np.asarray(xs)
    mean, var = float(a.mean()), float(a.var(ddof=1))
    if mean <= 0.0:
        raise CalibrationError(f"rtt_us: a lognormal needs a mean round trip > 0, got {mean!r}")
    if var <= 0.0:
        raise CalibrationError(f"rtt_us: every round trip is {xs[0]!r} us: no spread to fit a lognormal to "
                               f"(use method 'empirical')")
    e_h, var_h = mean / 2.0, var / 2.0
    sigma2 = math.log1p(var_h / (e_h * e_h))
    return LatencyDist.lognormal(e_h * math.exp(-sigma2 / 2.0), math.sqrt(sigma2))


@dataclass(frozen=True)
class PairProbe:
    """What the probe measured on one pair of partitions (``p0->p1``: from owner p0 to a null
    notifier on p1): how many null callouts, and their round trips' p50 and p99 (us)."""

    n: int
    model_p50: float
    model_p99: float

    def to_json(self) -> dict[str, Any]:
        return {"n": self.n, "model_p50": self.model_p50, "model_p99": self.model_p99}


@dataclass(frozen=True)
class Calibration:
    """A fitted floor and where it came from.

    Invariants (checked in ``__post_init__``): ``floor`` is a ``LatencyDist``; ``method`` is one
    of ``FIT_METHODS``; ``samples`` is the number of round trips the fit used, the sum of the
    pairs' ``n``.
    """

    floor: LatencyDist  # one way, per message
    method: str
    scenario: str | None = None  # the ray run's
    seed: int | None = None
    pairs: dict[str, PairProbe] = field(default_factory=dict)  # "p0->p1" -> its probe, in pair order
    samples: int = 0
    probe: str = "idle"  # which of the run's probes was fitted (PROBES)

    def __post_init__(self) -> None:
        if not isinstance(self.floor, LatencyDist):
            raise CalibrationError(f"floor: expected a LatencyDist, got {self.floor!r}")
        if self.method not in FIT_METHODS:
            raise CalibrationError(f"method: expected one of {', '.join(FIT_METHODS)}, got {self.method!r}")
        if self.probe not in PROBES:
            raise CalibrationError(f"probe: expected one of {', '.join(PROBES)}, got {self.probe!r}")
        total = sum(p.n for p in self.pairs.values())
        if self.pairs and total != self.samples:
            raise CalibrationError(f"samples: expected the pairs' total {total}, got {self.samples!r}")

    # -- making one -----------------------------------------------------------------------------

    @classmethod
    def from_overhead(cls, overhead: Any, method: str, *, scenario: str | None = None,
                      seed: int | None = None, probe: str = "idle") -> "Calibration":
        """Fit the floor to the null callouts' round trips of every pair of a probe (the
        ``overhead`` of a ray run's results, pooled in pair order): those of the probe at
        bring-up (``probe="idle"``, ``model_us``) or of the probe under the workload's own load
        (``"loaded"``, ``loaded_us``). Refuses a missing or empty ``overhead``: the results
        come from a run without the instrument's probe (a sim run, or a ray run that did not
        probe); and ``"loaded"`` for a pair the loaded probe did not measure."""
        if probe not in PROBES:
            raise CalibrationError(f"probe: expected one of {', '.join(PROBES)}, got {probe!r}")
        key, p50_key, p99_key = PROBE_KEYS[probe]
        if overhead is None or (isinstance(overhead, Mapping) and not overhead):
            raise CalibrationError("overhead: none in these results: they come from a run without the instrument's "
                                   "probe (not a ray run, or a ray run that did not probe); calibrate from the "
                                   "results.json of a ray run")
        if not isinstance(overhead, Mapping):
            raise CalibrationError(f"overhead: expected a mapping of pair -> probe, got {overhead!r}")
        pooled: list[float] = []
        pairs: dict[str, PairProbe] = {}
        for pair in sorted(overhead):
            where = f"overhead.{pair}"
            got = overhead[pair]
            where = f"overhead.{pair}"
            if not isinstance(got, Mapping) or key not in got:
                hint = " (the run's probe under load was off: calibrate with the idle probe)" if probe == "loaded" else ""
                raise CalibrationError(f"{where}: expected a probe with {key} (round trips, us){hint}, got "
                                       f"{sorted(got) if isinstance(got, Mapping) else got!r}")
            xs = _round_trips(got[key], f"{where}.{key}")
            p50, p99 = (float(v) for v in np.percentile(xs, [50, 99]))
            for k in (p50_key, p99_key):  # the probe's own, if it gave them
                given = got.get(k)
                if given is not None and not (_is_number(given) and math.isfinite(float(given))):
                    raise CalibrationError(f"{where}.{k}: expected a finite number (us), got {given!r}")
            pairs[str(pair)] = PairProbe(len(xs), float(got.get(p50_key, p50)), float(got.get(p99_key, p99)))
            pooled += xs
        return cls(fit_floor(pooled, method), method, scenario, seed, pairs, len(pooled), probe)

    @classmethod
    def from_results(cls, result: Mapping[str, Any], method: str, probe: str = "idle") -> "Calibration":
        """``from_overhead`` of a results document (``results.json`` as loaded), with its
        scenario and seed."""
        return cls.from_overhead(result.get("overhead"), method, scenario=result.get("scenario"),
                                 seed=result.get("seed"), probe=probe)

    # -- the file -------------------------------------------------------------------------------

    def to_json(self) -> dict[str, Any]:
        """The file's document: ``{"version": 1, "floor": <latency spec>, "method": ...,
        "provenance": {"scenario", "seed", "pairs", "samples", "per_pair": {pair: {"n",
        "model_p50", "model_p99"}}}}``."""
        return {
            "version": CALIBRATION_VERSION,
            "floor": self.floor.to_spec(),
            "method": self.method,
            "provenance": {
                "scenario": self.scenario,
                "seed": self.seed,
                "probe": self.probe,
                "pairs": list(self.pairs),
                "samples": self.samples,
                "per_pair": {k: v.to_json() for k, v in self.pairs.items()},
            },
        }

    def save(self, path: str | Path) -> Path:
        """Write ``to_json()`` to ``path`` (its directory must exist); returns the path."""
        p = Path(path)
        p.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        return p

    def save_into(self, directory: str | Path) -> Path:
        """``save`` as ``calibration.json`` in ``directory`` (made if missing)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        return self.save(d / "calibration.json")

    @classmethod
    def load(cls, path: str | Path) -> "Calibration":
        """Read a file ``save`` wrote. Errors name the file, the key and the bad value: a missing
        file, not JSON, another version, a bad floor or method, malformed provenance."""
        p = Path(path)
        try:
            text = p.read_text()
        except FileNotFoundError:
            raise CalibrationError(f"{p}: no such calibration file") from None
        except OSError as e:
            raise CalibrationError(f"{p}: cannot read the calibration file: {e.strerror or e}") from None
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise CalibrationError(f"{p}: not a calibration file: not JSON ({e})") from None
        if not isinstance(doc, dict):
            raise CalibrationError(f"{p}: not a calibration file: expected a JSON object, got {doc!r}")
        if doc.get("version") != CALIBRATION_VERSION or isinstance(doc.get("version"), bool):
            raise CalibrationError(f"{p}: version: expected {CALIBRATION_VERSION}, got {doc.get('version')!r}")
        if "floor" not in doc:
            raise CalibrationError(f"{p}: floor: missing (a latency spec, e.g. {{\"dist\": \"lognormal\", ...}})")
        try:
            floor = parse_latency(doc["floor"], "floor")
        except TopologyError as e:
            raise CalibrationError(f"{p}: {e}") from None
        method = doc.get("method")
        if method not in FIT_METHODS:
            raise CalibrationError(f"{p}: method: expected one of {', '.join(FIT_METHODS)}, got {method!r}")
        prov = doc.get("provenance", {})
        if not isinstance(prov, dict):
            raise CalibrationError(f"{p}: provenance: expected an object, got {prov!r}")
        scenario, seed, probe = prov.get("scenario"), prov.get("seed"), prov.get("probe", "idle")
        if probe not in PROBES:
            raise CalibrationError(f"{p}: provenance.probe: expected one of {', '.join(PROBES)}, got {probe!r}")
        if scenario is not None and not isinstance(scenario, str):
            raise CalibrationError(f"{p}: provenance.scenario: expected a scenario name, got {scenario!r}")
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool)):
            raise CalibrationError(f"{p}: provenance.seed: expected an integer, got {seed!r}")
        per_pair = prov.get("per_pair", {})
        if not isinstance(per_pair, dict):
            raise CalibrationError(f"{p}: provenance.per_pair: expected an object of pair -> probe, got {per_pair!r}")
        pairs = {}
        for pair, entry in per_pair.items():
            where = f"{p}: provenance.per_pair.{pair}"
            if not isinstance(entry, dict):
                raise CalibrationError(f"{where}: expected {{n, model_p50, model_p99}}, got {entry!r}")
            n = entry.get("n")
            if not isinstance(n, int) or isinstance(n, bool) or n < 1:
                raise CalibrationError(f"{where}.n: expected a positive integer, got {n!r}")
            for key in ("model_p50", "model_p99"):
                v = entry.get(key)
                if not _is_number(v) or not math.isfinite(float(v)):
                    raise CalibrationError(f"{where}.{key}: expected a finite number (us), got {v!r}")
            pairs[pair] = PairProbe(n, float(entry["model_p50"]), float(entry["model_p99"]))
        listed = prov.get("pairs", list(pairs))
        if listed != list(pairs):
            raise CalibrationError(f"{p}: provenance.pairs: expected the pairs of per_pair {list(pairs)!r}, "
                                   f"got {listed!r}")
        samples = prov.get("samples", sum(v.n for v in pairs.values()))
        if not isinstance(samples, int) or isinstance(samples, bool) or samples < 0:
            raise CalibrationError(f"{p}: provenance.samples: expected an integer >= 0, got {samples!r}")
        try:
            return cls(floor, method, scenario, seed, pairs, samples, probe)
        except CalibrationError as e:
            raise CalibrationError(f"{p}: provenance.{e}") from None

    # -- using one ------------------------------------------------------------------------------

    def describe(self) -> str:
        """One line: the floor, the method and where it came from."""
        src = (f"{self.samples} {self.probe} round trips over {len(self.pairs)} pair(s)" if self.pairs
               else "no probe recorded")
        run = f" of {self.scenario} seed {self.seed}" if self.scenario is not None else ""
        return f"floor {self.floor.describe()} one way per message ({self.method} fit to {src}{run})"

    def results_entry(self, path: str | Path) -> dict[str, Any]:
        """What a calibrated run records in its results.json under ``"calibration"``."""
        return {"file": str(path), "floor": self.floor.to_spec(), "method": self.method}


# -- both backends on one scale: ``mmusim calibrate`` -------------------------------------------

#: the agreement goal of a calibrated sim run against the ray run it was calibrated from, per
#: percentile: sim / ray within [low, high], for the metrics the goal names
AGREEMENT = {"p50": (0.75, 1.33), "p99": (0.5, 2.0)}
AGREED_METRICS = ("callout_rtt", "invalidate_range", "unregister_hang", "exit_hang")


@dataclass(frozen=True)
class MetricAgreement:
    """One metric of a ray run beside the same metric of the calibrated sim run: p50 and p99
    of each (us, None without events), their ratios sim / ray, and for the metrics of
    ``AGREED_METRICS`` whether each ratio is within ``AGREEMENT`` (None: no goal, or no
    figure to compare)."""

    metric: str
    ray: dict[str, float | None]
    sim: dict[str, float | None]
    ratio: dict[str, float | None]
    within: dict[str, bool | None]

    def to_json(self) -> dict[str, Any]:
        return {"metric": self.metric, "ray": self.ray, "sim": self.sim, "ratio": self.ratio, "within": self.within}


def agreement(ray: Mapping[str, Any], sim: Mapping[str, Any]) -> list[MetricAgreement]:
    """Each metric of the ray result ``ray`` beside the calibrated sim result ``sim``."""
    rows = []
    for metric, r in ray["metrics"].items():
        s = sim["metrics"].get(metric) or {}
        got_ray = {q: r.get(q) for q in AGREEMENT}
        got_sim = {q: s.get(q) for q in AGREEMENT}
        ratio = {q: (got_sim[q] / got_ray[q] if got_ray[q] and got_sim[q] is not None else None) for q in AGREEMENT}
        within = {q: (None if metric not in AGREED_METRICS or ratio[q] is None
                      else AGREEMENT[q][0] <= ratio[q] <= AGREEMENT[q][1]) for q in AGREEMENT}
        rows.append(MetricAgreement(metric, got_ray, got_sim, ratio, within))
    return rows


def agreement_table(rows: Sequence[MetricAgreement]) -> str:
    """The side-by-side table ``mmusim calibrate`` prints: per metric, ray and sim p50 and p99
    (us) and their ratios, each goal met (``ok``) or missed (``MISS``), then one line per miss
    naming the metric, the percentile and by how much."""
    def us(v: float | None) -> str:
        return "-" if v is None else (f"{v:,.0f}" if abs(v) >= 100 else f"{v:.1f}")

    def ratio(row: MetricAgreement, q: str) -> str:
        r, ok = row.ratio[q], row.within[q]
        return ("-" if r is None else f"{r:.2f}x") + ("" if ok is None else (" ok" if ok else " MISS"))

    header = ["metric", "ray p50", "sim p50", "sim/ray", "ray p99", "sim p99", "sim/ray"]
    body = [[row.metric, us(row.ray["p50"]), us(row.sim["p50"]), ratio(row, "p50"), us(row.ray["p99"]),
             us(row.sim["p99"]), ratio(row, "p99")] for row in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]
    lines = ["  ".join([r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]).rstrip()
             for r in [header] + body]
    goals = ", ".join(f"{q} within {lo:g}-{hi:g}x" for q, (lo, hi) in AGREEMENT.items())
    lines.append(f"goal ({', '.join(AGREED_METRICS)}): {goals}")
    for row in rows:
        for q in AGREEMENT:
            if row.within[q] is False:
                lo, hi = AGREEMENT[q]
                how = "lower" if row.ratio[q] < lo else "higher"  # type: ignore[operator]
                lines.append(f"MISS {row.metric} {q}: the sim's is {row.ratio[q]:.2f}x the ray run's, {how} than "
                             f"{lo if how == 'lower' else hi:g}x")
    if all(row.within[q] is not False for row in rows for q in AGREEMENT):
        lines.append("every goal met")
    return "\n".join(lines)
