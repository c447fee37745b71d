"""Scenario files (``workloads/scenario.py``): the built-ins load and map onto both backends'
configs, defaults are filled, ``--set`` overrides work, and every kind of bad input is refused
with one line naming the file, the key path, what was expected and what was given."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import pytest

from cluster.ray_backend import RayConfig
from cluster.sim import SimConfig
from workloads.metrics import MIN_BEYOND, samples_beyond
from workloads.scenario import OPS, Scenario, ScenarioError, builtin_scenarios, load_scenario

BUILTINS = [
    "cross-partition-distance",
    "global-vs-per-mm-srcu",
    "hang-vs-activity",
    "heavy-tail",
    "odp-fault-rate",
    "quickstart",
    "sequential-vs-parallel-fanout",
    "srcu-expedited-regression",
    "stuck-secondary",
    "unregister-vs-put",
]
# the field reports: scenarios sized as the incident they reproduce, on the sim only when they
# inject what the ray backend cannot (a stall)
FIELD_REPORTS = ["odp-fault-rate", "srcu-expedited-regression", "stuck-secondary"]

DEFAULTS: dict[str, Any] = {
    "description": "",
    "question": "",
    "partitions": 2,
    "cpus_per_partition": 4,
    "mms": 2,
    "secondaries_per_mm": 1,
    "nframes": "auto",
    "secondary": {"kind": "gru"},
    "gru": {"dropin": "guarded"},
    "sva": {"iommu": "intel", "completion": 2.0},
    "activity": {
        "streams": 2,
        "mix": {"munmap": 1, "mprotect": 0, "migrate": 0, "ksm": 0, "reclaim": 0, "thp": 0, "cow": 0, "oom_reap": 0},
        "rate": 1000,
        "pages": 64,
    },
    "callout": {"latency": 20},
    "topology": {"hop_latency": 1.0, "hops": 1},
    "interconnect": {"transport": "stream", "deadline": "auto"},
    "stall": {"partition": None, "start": 0.0, "length": 60_000_000.0},
    "srcu": {"scope": "global", "expedited": False, "algorithm": "classic", "fanout_leaf": 16, "fanout": 64,
             "exp_holdoff": 25.0, "tree_version": "v5.10"},
    "kernel": {"hz": 1000},
    "semantics": "v3.10",
    "fanout": "sequential",
    "teardown": "unregister",
    "measure": {"exits": 5, "unregisters": 10},
    "duration": 100_000.0,
    "seed": 0,
    "field_report": None,
    "sweep": None,
}


def write(tmp_path: Path, text: str, name: str = "s.yaml") -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def refusal(fn: Any, *args: Any) -> str:
    """The message of the ScenarioError ``fn(*args)`` raises, checked to be one line."""
    with pytest.raises(ScenarioError) as info:
        fn(*args)
    msg = str(info.value)
    assert "\n" not in msg and msg == msg.strip(), repr(msg)
    return msg


# -- built-ins -----------------------------------------------------------------------------------


def test_builtin_list_is_sorted_and_complete() -> None:
    listed = builtin_scenarios()
    assert [n for n, _ in listed] == BUILTINS
    for name, description in listed:
        assert description and "\n" not in description, name


@pytest.mark.parametrize("name", BUILTINS)
def test_every_builtin_loads_and_builds_both_configs(name: str) -> None:
    s = load_scenario(name)
    assert s.name == name and s.source == f"built-in {name}"
    assert s.description and s.question
    assert set(s.values) == {"name"} | set(DEFAULTS)
    sim = s.sim_config()
    assert isinstance(sim, SimConfig)
    assert (sim.partitions, sim.cpus, sim.nframes, sim.srcu_scope, sim.fanout, sim.hops, sim.seed) == (
        s.get("partitions"), s.get("cpus_per_partition"), s.nframes, s.get("srcu.scope"), s.get("fanout"),
        s.get("topology.hops"), s.get("seed"))
    assert sim.srcu_expedited == s.get("srcu.expedited")
    assert sim.jiffy_us == 1e6 / s.get("kernel.hz")
    assert sim.callout_latency == s.get("callout.latency") and sim.hop_latency == s.get("topology.hop_latency")
    if s.get("stall.partition") is not None:
        assert name in FIELD_REPORTS
        assert "stall.partition" in refusal(s.ray_config)  # a stall is the sim interconnect's
        assert sim.stalls == {s.get("stall.partition"): (s.get("stall.start"), s.get("stall.length"))}
    else:
        ray = s.ray_config(address="auto")
        assert isinstance(ray, RayConfig)
        assert (ray.partitions, ray.cpus, ray.nframes, ray.srcu_scope, ray.fanout, ray.hops, ray.address) == (
            sim.partitions, sim.cpus, sim.nframes, sim.srcu_scope, sim.fanout, sim.hops, "auto")
        assert ray.jiffy_us == sim.jiffy_us
        assert ray.transport == s.get("interconnect.transport")
    # modest sizes: the harness runs every point of a sweep (quickstart, one run, measures more)
    assert (s.get("field_report") is not None) == (name in FIELD_REPORTS)
    assert name in FIELD_REPORTS or (s.get("partitions") <= 4 and s.get("duration") <= 200_000)
    assert s.get("measure.exits") + s.get("measure.unregisters") <= (200 if name == "quickstart" else 30)
    for value, point in s.sweep_points():
        assert point.get("sweep") is None
        assert point.get(s.get("sweep.key")) == value
        point.sim_config()
        if point.get("stall.partition") is None:
            point.ray_config()


def test_builtin_sweeps_vary_the_knobs_the_issue_names() -> None:
    sweeps = {name: load_scenario(name).get("sweep") for name in BUILTINS}
    assert sweeps["quickstart"] is None
    assert sweeps["hang-vs-activity"] == {"key": "activity.streams", "values": [0, 1, 2, 4, 8]}
    assert sweeps["global-vs-per-mm-srcu"] == {"key": "srcu.scope", "values": ["global", "per_mm"]}
    assert sweeps["sequential-vs-parallel-fanout"] == {"key": "fanout", "values": ["sequential", "parallel"]}
    assert load_scenario("sequential-vs-parallel-fanout").get("secondaries_per_mm") == 4
    assert sweeps["unregister-vs-put"] == {"key": "teardown", "values": ["unregister", "put"]}
    assert sweeps["cross-partition-distance"] == {"key": "topology.hop_latency", "values": [1, 10, 100, 1000]}
    assert load_scenario("cross-partition-distance").get("partitions") == 4
    heavy = load_scenario("heavy-tail")
    assert heavy.get("callout.latency") == {"dist": "pareto", "scale": 20, "alpha": 1.5}
    assert [p.get("callout.latency") for _, p in heavy.sweep_points()] == [
        {"dist": "pareto", "scale": 20, "alpha": a} for a in (3.0, 2.0, 1.5, 1.2)]
    odp = load_scenario("odp-fault-rate")  # the device's fault rate follows the operations' rate
    assert sweeps["odp-fault-rate"]["key"] == "activity.rate" and odp.get("secondary.kind") == "odp"


def test_quickstart_is_small_but_measures_enough_for_its_p90() -> None:
    s = load_scenario("quickstart")
    assert (s.get("partitions"), s.get("activity.streams"), s.get("duration")) == (2, 2, 100_000.0)
    for what in ("exits", "unregisters"):  # 10 events beyond p90: its p90 is not marked
        assert samples_beyond(90.0, s.get(f"measure.{what}")) >= MIN_BEYOND


# -- defaults and values -------------------------------------------------------------------------


def test_defaults_are_filled_and_the_name_is_the_file_stem(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 3\n", "my-study.yaml")
    s = load_scenario(path)
    assert s.name == "my-study" and s.source == path and s.description == "" and s.question == ""
    assert s.to_dict() == {"name": "my-study", **DEFAULTS, "seed": 3}
    assert s.nframes == 65536


def test_a_missing_mix_op_weighs_zero_and_sections_may_be_empty(tmp_path: Path) -> None:
    s = load_scenario(write(tmp_path, "activity:\n  mix: {cow: 2, thp: 0.5}\nsrcu:\n"))
    assert s.get("activity.mix") == {op: {"cow": 2, "thp": 0.5}.get(op, 0) for op in OPS}
    assert s.get("srcu") == DEFAULTS["srcu"]


@pytest.mark.parametrize(("given", "us"), [("250ms", 250_000.0), ("2s", 2_000_000.0), ("500us", 500.0),
                                           ("1.5 ms", 1_500.0), (1500, 1500.0), (0.5, 0.5)])
def test_duration_is_stored_in_microseconds(tmp_path: Path, given: Any, us: float) -> None:
    text = f"duration: {given}\n" if not isinstance(given, str) else f"duration: '{given}'\n"
    assert load_scenario(write(tmp_path, text)).get("duration") == us


def test_nframes_auto_grows_with_the_scenario_and_an_explicit_value_wins(tmp_path: Path) -> None:
    big = load_scenario(write(tmp_path, "activity: {streams: 64, pages: 4096}\n"))
    assert big.nframes >= 4 * 4096 * 64 and big.nframes & (big.nframes - 1) == 0
    assert big.sim_config().nframes == big.nframes
    assert load_scenario(write(tmp_path, "nframes: 1000\n")).nframes == 1000


def test_get_returns_copies_and_refuses_unknown_paths() -> None:
    s = load_scenario("quickstart")
    s.get("activity.mix")["munmap"] = 99
    assert s.get("activity.mix.munmap") == 2
    assert refusal(s.get, "activity.strems") == (
        "built-in quickstart: activity.strems: unknown key; did you mean activity.streams? "
        "(expected one of: streams, mix, rate, pages)")


def test_a_scenario_built_directly_is_validated() -> None:
    values = load_scenario("quickstart").to_dict()
    values["activity"]["streams"] = -1
    assert refusal(Scenario, "quickstart", values["description"], values["question"], "mine", values) == (
        "mine: activity.streams: expected an integer >= 0, got -1")


# -- overrides -----------------------------------------------------------------------------------


def test_overrides_nested_flow_mappings_bools_and_strings() -> None:
    base = load_scenario("quickstart")
    s = base.with_overrides([
        "activity.streams=8",
        "callout.latency={dist: pareto, scale: 20, alpha: 1.5}",
        "srcu.scope=per_mm",
        "srcu.expedited=true",
        "duration=250ms",
        "topology.hop_latency={dist: lognormal, median: 50, sigma: 1.0}",
    ])
    assert s.get("activity.streams") == 8
    assert s.get("callout.latency") == {"dist": "pareto", "scale": 20, "alpha": 1.5}
    assert (s.get("srcu.scope"), s.get("srcu.expedited"), s.get("duration")) == ("per_mm", True, 250_000.0)
    assert s.sim_config().srcu_scope == "per_mm" and s.sim_config().srcu_expedited is True
    assert s.ray_config().hop_latency_us == 50.0  # a lognormal's median
    assert base.get("activity.streams") == 2 and base.get("srcu.scope") == "global"  # unchanged


def test_gru_dropin_reaches_both_configs_and_a_bad_one_is_refused_naming_it() -> None:
    base = load_scenario("quickstart")
    assert base.get("gru.dropin") == "guarded" and base.sim_config().gru_dropin == "guarded"
    s = base.with_overrides(["gru.dropin=v3.10"])
    assert s.sim_config().gru_dropin == "v3.10" and s.ray_config().gru_dropin == "v3.10"
    msg = refusal(base.with_overrides, ["gru.dropin=gaurded"])
    assert msg == ("built-in quickstart: --set gru.dropin=gaurded: gru.dropin: expected one of guarded, v3.10, "
                   "got 'gaurded'; did you mean 'guarded'?")
    with pytest.raises(ValueError, match=r"sim config gru_dropin: expected one of \('guarded', 'v3.10'\), got 'v3'"):
        base.sim_config(gru_dropin="v3")


def test_override_a_section_merges_and_a_knob_mapping_replaces() -> None:
    s = load_scenario("quickstart").with_overrides(["activity={streams: 5}", "activity.mix={ksm: 1}"])
    assert s.get("activity.streams") == 5 and s.get("activity.pages") == 64
    assert s.get("activity.mix") == {op: int(op == "ksm") for op in OPS}


def test_override_one_mix_weight_and_one_latency_parameter() -> None:
    s = load_scenario("heavy-tail").with_overrides(["activity.mix.cow=3", "callout.latency.alpha=2.5"])
    assert s.get("activity.mix.cow") == 3 and s.get("activity.mix.munmap") == 2
    assert s.get("callout.latency") == {"dist": "pareto", "scale": 20, "alpha": 2.5}
    assert s.ray_config().hop_latency_us == 1.0


def test_cross_checks_run_after_all_overrides() -> None:
    s = load_scenario("quickstart").with_overrides(["measure.exits=0", "measure.unregisters=3"])
    assert s.get("measure") == {"exits": 0, "unregisters": 3}
    s = load_scenario("quickstart").with_overrides(["activity.streams=0", "activity.mix={munmap: 0}"])
    assert s.get("activity.streams") == 0


def test_override_a_sweep_and_with_value() -> None:
    s = load_scenario("quickstart").with_overrides(["sweep={key: activity.mix.migrate, values: [0, 1, 4]}"])
    assert [(v, p.get("activity.mix.migrate")) for v, p in s.sweep_points()] == [(0, 0), (1, 1), (4, 4)]
    t = s.with_value("sweep.values", [2, 3])
    assert t.get("sweep") == {"key": "activity.mix.migrate", "values": [2, 3]}
    assert t.with_value("sweep", None).sweep_points() == []


def test_sim_config_extra_fields_win() -> None:
    cfg = load_scenario("quickstart").sim_config(scheduler="random", seed=9)
    assert (cfg.scheduler, cfg.seed) == ("random", 9)


def test_kernel_hz_sets_the_jiffy_of_both_backends() -> None:
    s = load_scenario("quickstart")
    assert s.get("kernel.hz") == 1000 and s.sim_config().jiffy_us == 1000.0  # the default: HZ=1000
    for hz, jiffy in ((100, 10_000.0), (250, 4_000.0), (300, 1e6 / 300), (1000, 1_000.0)):
        t = s.with_overrides([f"kernel.hz={hz}"])
        assert t.sim_config().jiffy_us == t.ray_config().jiffy_us == jiffy
    points = s.with_overrides(["sweep={key: kernel.hz, values: [100, 1000]}"]).sweep_points()
    assert [p.sim_config().jiffy_us for _, p in points] == [10_000.0, 1_000.0]


def test_ray_config_reduces_a_distribution_to_a_typical_value() -> None:
    s = load_scenario("quickstart")
    assert s.with_value("topology.hop_latency", {"dist": "pareto", "scale": 7, "alpha": 1.5}).ray_config().hop_latency_us == 7.0
    assert s.with_value("topology.hop_latency", {"dist": "uniform", "low": 2, "high": 4}).ray_config().hop_latency_us == 3.0
    assert s.with_value("topology.hop_latency", 12).ray_config().hop_latency_us == 12.0


# -- refusals: files -----------------------------------------------------------------------------

BAD_FILES = [
    # unknown keys, with the closest known key
    ("activity:\n  strems: 3\n",
     "activity.strems: unknown key; did you mean activity.streams? (expected one of: streams, mix, rate, pages)"),
    ("streams: 3\n", "streams: unknown key; did you mean activity.streams? (expected one of: name, "),
    ("srcu: {scopes: global}\n", "srcu.scopes: unknown key; did you mean srcu.scope? (expected one of: scope, expedited, algorithm, fanout_leaf, fanout, exp_holdoff, tree_version)"),
    ("srcu:\n  on: true\n", "srcu.True: expected a key name (a string), got True (YAML reads unquoted"),
    # wrong types
    ("partitions: true\n", "partitions: expected a positive integer, got True"),
    ("mms: 2.0\n", "mms: expected a positive integer, got 2.0"),
    ("activity: {rate: fast}\n", "activity.rate: expected a positive number, got 'fast'"),
    ("srcu: {expedited: 1}\n", "srcu.expedited: expected true or false, got 1"),
    ("seed: '7'\n", "seed: expected an integer, got '7'"),
    ("activity: 3\n", "activity: expected a mapping of activity knobs (streams, mix, rate, pages), got 3"),
    ("- 1\n", "top level: expected a mapping of scenario knobs, got [1]"),
    ("", "top level: expected a mapping of scenario knobs, got an empty document"),
    ("description: [a, b]\n", "description: expected a one-line string, got ['a', 'b']"),
    # impossible values
    ("activity: {streams: -3}\n", "activity.streams: expected an integer >= 0, got -3"),
    ("cpus_per_partition: 0\n", "cpus_per_partition: expected a positive integer, got 0"),
    ("activity: {rate: 0}\n", "activity.rate: expected a positive number, got 0"),
    ("measure: {exits: 0, unregisters: 0}\n",
     "measure: expected measure.exits or measure.unregisters > 0, got both 0 (nothing to measure)"),
    ("secondary: {kind: KVM}\n", "secondary.kind: expected one of gru, xpmem, kvm, odp, hmm, sva, got 'KVM'; did you mean 'kvm'?"),
    ("srcu: {scope: per-mm}\n", "srcu.scope: expected one of global, per_mm, got 'per-mm'; did you mean 'per_mm'?"),
    ("teardown: free\n", "teardown: expected one of unregister, put, got 'free'"),
    ("kernel: {hz: 500}\n", "kernel.hz: expected one of 100, 250, 300, 1000 (CONFIG_HZ, ticks per second), got 500"),
    ("kernel: {hz: 1000.0}\n", "kernel.hz: expected one of 100, 250, 300, 1000 (CONFIG_HZ, ticks per second), got 1000.0"),
    ("kernel: {hz: '250'}\n", "kernel.hz: expected one of 100, 250, 300, 1000 (CONFIG_HZ, ticks per second), got '250'"),
    ("kernel: {hz: true}\n", "kernel.hz: expected one of 100, 250, 300, 1000 (CONFIG_HZ, ticks per second), got True"),
    ("kernel: {HZ: 100}\n", "kernel.HZ: unknown key (expected one of: hz)"),
    ("nframes: many\n", "nframes: expected 'auto' or a positive integer (frames per partition), got 'many'"),
    ("activity: {rate: 1e3}\n", "activity.rate: expected a positive number, got '1e3' (YAML 1.1 reads 1e3 as a string"),
    # the mix
    ("activity: {mix: {migrat: 1}}\n",
     "activity.mix.migrat: unknown operation; did you mean activity.mix.migrate? "
     "(expected one of: munmap, mprotect, migrate, ksm, reclaim, thp, cow, oom_reap)"),
    ("activity: {mix: {munmap: -1}}\n", "activity.mix.munmap: expected a weight: a number >= 0, got -1"),
    ("activity: {mix: {munmap: 0}}\n",
     "activity.mix: expected at least one weight > 0 while activity.streams is 2, got all weights 0"),
    ("activity: {mix: munmap}\n",
     "activity.mix: expected a mapping of operation weights over munmap, mprotect, migrate, ksm, reclaim, thp, cow, oom_reap, got 'munmap'"),
    # latencies
    ("callout: {latency: {dist: pareto, scale: 20}}\n",
     "callout.latency.alpha: expected a number (required for dist 'pareto'), got none in {'dist': 'pareto', 'scale': 20}"),
    ("callout: {latency: {dist: lognormal, median: 50, sigma: -1}}\n", "callout.latency.sigma: expected a number > 0, got -1"),
    ("callout: {latency: {dist: weibull, k: 1}}\n",
     "callout.latency.dist: expected one of constant, uniform, lognormal, pareto, empirical, got 'weibull'"),
    ("callout: {latency: {dist: pareto, scale: 20, alpha: 1, k: 2}}\n",
     "callout.latency.k: unknown key for dist 'pareto' (expected scale, alpha), got 'k': 2"),
    ("topology: {hop_latency: fast}\n",
     "topology.hop_latency: expected a number (us) or a mapping with a 'dist' key, got 'fast'"),
    ("topology: {hop_latency: -1}\n", "topology.hop_latency: expected a number >= 0, got -1"),
    # durations
    ("duration: 10 hours\n",
     "duration: expected a positive number of microseconds or a string like '250ms' (units us, ms, s, min), got '10 hours'"),
    ("duration: 0ms\n",
     "duration: expected a positive number of microseconds or a string like '250ms' (units us, ms, s, min), got '0ms'"),
    ("duration: -5\n",
     "duration: expected a positive number of microseconds or a string like '250ms' (units us, ms, s, min), got -5"),
    # sweeps
    ("sweep: {key: activity.streams, values: [0, 1, -2]}\n",
     "sweep.values[2]: activity.streams: expected an integer >= 0, got -2"),
    ("sweep: {key: srcu.scope, values: [global, per_cpu]}\n",
     "sweep.values[1]: srcu.scope: expected one of global, per_mm, got 'per_cpu'"),
    ("sweep: {key: callout.latency.alpha, values: [1.5]}\n",
     "sweep.values[0]: callout.latency.alpha: expected callout.latency to be a mapping to set alpha in, "
     "got callout.latency = 20; set callout.latency as a whole"),
    ("sweep: {key: activity.stream, values: [0, 1]}\n",
     "sweep.key: expected a knob path such as activity.streams, got 'activity.stream'; did you mean activity.streams?"),
    ("sweep: {key: name, values: [a, b]}\n", "sweep.key: expected a knob path such as activity.streams, got 'name'"),
    ("sweep: {key: seed, values: []}\n", "sweep.values: expected a non-empty list of values for seed, got []"),
    ("sweep: {key: seed, values: [1, 2, 1]}\n", "sweep.values[2]: expected distinct values (the same as values[0]), got 1"),
    ("sweep: {key: seed, value: [1]}\n", "sweep.value: unknown key; did you mean sweep.values? (expected one of: key, values)"),
]


@pytest.mark.parametrize(("text", "message"), BAD_FILES, ids=[m.split(":")[0] + f"-{i}" for i, (_, m) in enumerate(BAD_FILES)])
def test_a_bad_file_is_refused_in_one_line_naming_file_key_and_expectation(tmp_path: Path, text: str, message: str) -> None:
    path = write(tmp_path, text)
    msg = refusal(load_scenario, path)
    assert msg.startswith(f"{path}: {message}"), msg
    assert "expected" in msg


def test_a_yaml_syntax_error_names_the_line(tmp_path: Path) -> None:
    path = write(tmp_path, "activity:\n  streams: 2\n mix: {munmap: 1}\n")
    msg = refusal(load_scenario, path)
    assert msg.startswith(f"{path}: line 3, column 2: YAML syntax error: ")
    path = write(tmp_path, "seed: 1\npartitions: [2\n")
    assert refusal(load_scenario, path).startswith(f"{path}: line 3, column 1: YAML syntax error: ")


def test_a_duplicate_key_is_refused_with_its_line(tmp_path: Path) -> None:
    path = write(tmp_path, "seed: 1\nactivity:\n  streams: 2\n  streams: 3\n")
    assert refusal(load_scenario, path) == f"{path}: line 4, column 3: YAML syntax error: duplicate key 'streams'"


def test_a_missing_file_lists_the_builtins(tmp_path: Path) -> None:
    path = str(tmp_path / "nosuch.yaml")
    assert refusal(load_scenario, path) == (
        f"{path}: no such scenario file; expected a path to a .yaml file or a built-in name "
        f"(built-ins: {', '.join(BUILTINS)})")


def test_an_unknown_builtin_names_the_closest_and_lists_them() -> None:
    assert refusal(load_scenario, "quickstrat") == (
        "quickstrat: expected a built-in scenario name or a path to a .yaml file, got neither; "
        f"did you mean quickstart? (built-ins: {', '.join(BUILTINS)})")


def test_a_file_that_is_not_yaml_is_refused(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_bytes(b"\xff\xfe\x00")
    assert refusal(load_scenario, str(tmp_path / "notes.txt")).startswith(f"{tmp_path / 'notes.txt'}: expected UTF-8 text")
    assert refusal(load_scenario, str(tmp_path) + "/").startswith(f"{tmp_path}/: cannot read the scenario file")


# -- refusals: --set -----------------------------------------------------------------------------

BAD_SETS = [
    (["activity.streams"], "--set activity.streams: expected key.path=value (e.g. activity.streams=4), got 'activity.streams'"),
    (["=3"], "--set =3: expected key.path=value, got no key path before '=' in '=3'"),
    (["activity..streams=3"], "--set activity..streams=3: activity..streams: expected a dotted key path such as activity.streams"),
    (["activity.strems=3"],
     "--set activity.strems=3: activity.strems: unknown key; did you mean activity.streams? (expected one of: streams, mix, rate, pages)"),
    (["activity.streams=-1"], "--set activity.streams=-1: activity.streams: expected an integer >= 0, got -1"),
    (["partitions=yes"], "--set partitions=yes: partitions: expected a positive integer, got True"),
    (["callout.latency={dist: pareto, scale: 20"],
     "--set callout.latency={dist: pareto, scale: 20: callout.latency: expected a YAML value (a scalar, [a, list] or {a: mapping}), "
     "got '{dist: pareto, scale: 20' ("),
    (["callout.latency={dist: pareto, scale: -20, alpha: 1.5}"],
     "--set callout.latency={dist: pareto, scale: -20, alpha: 1.5}: callout.latency.scale: expected a number > 0, got -20"),
    (["callout.latency.alpha=2"],
     "--set callout.latency.alpha=2: callout.latency.alpha: expected callout.latency to be a mapping to set alpha in, "
     "got callout.latency = 20; set callout.latency as a whole"),
    (["seed.x=1"], "--set seed.x=1: seed.x: unknown key: seed is a single value, not a section"),
    (["kernel.hz=10000"],
     "--set kernel.hz=10000: kernel.hz: expected one of 100, 250, 300, 1000 (CONFIG_HZ, ticks per second), got 10000"),
    (["duration=2 weeks"],
     "--set duration=2 weeks: duration: expected a positive number of microseconds or a string like '250ms' (units us, ms, s, min), got '2 weeks'"),
    (["activity.streams=4", "measure.exits=0", "measure.unregisters=0"],
     "--set measure.exits=0 --set measure.unregisters=0: measure: expected measure.exits or measure.unregisters > 0, got both 0"),
    (["activity.mix={migrate: 0}"],
     "--set activity.mix={migrate: 0}: activity.mix: expected at least one weight > 0 while activity.streams is 2, got all weights 0"),
    (["sweep={key: fanout, values: [sequential, diagonal]}"],
     "--set sweep={key: fanout, values: [sequential, diagonal]}: sweep.values[1]: fanout: expected one of sequential, parallel, got 'diagonal'"),
    (["sweep.values=[1, 2]"], "--set sweep.values=[1, 2]: sweep.key: expected a knob path such as activity.streams, got nothing (missing)"),
]


@pytest.mark.parametrize(("pairs", "message"), BAD_SETS, ids=[p[-1] for p, _ in BAD_SETS])
def test_a_bad_override_is_refused_in_one_line_naming_the_set(pairs: list[str], message: str) -> None:
    msg = refusal(load_scenario("quickstart").with_overrides, pairs)
    assert msg.startswith(f"built-in quickstart: {message}"), msg


def test_a_bad_with_value_names_the_key_path() -> None:
    assert refusal(load_scenario("quickstart").with_value, "fanout", "diagonal") == (
        "built-in quickstart: fanout: expected one of sequential, parallel, got 'diagonal'")


def test_with_overrides_refuses_a_bare_string() -> None:
    with pytest.raises(TypeError, match="list of 'key.path=value' strings"):
        load_scenario("quickstart").with_overrides("seed=1")  # type: ignore[arg-type]


def test_a_scenario_error_survives_pickling() -> None:
    err = ScenarioError("built-in x", "seed", "expected an integer, got 'a'", "--set seed=a")
    back = pickle.loads(pickle.dumps(err))
    assert str(back) == str(err) == "built-in x: --set seed=a: seed: expected an integer, got 'a'"
    assert (back.source, back.path, back.origin) == ("built-in x", "seed", "--set seed=a")


def test_the_transport_is_a_knob_and_a_bad_one_is_refused_naming_it():
    s = load_scenario("quickstart")
    assert s.with_overrides(["interconnect.transport=stream"]).ray_config().transport == "stream"
    with pytest.raises(ScenarioError, match=r"interconnect.transport: expected one of unary, stream, got 'streams'; "
                                            r"did you mean 'stream'\?"):
        s.with_overrides(["interconnect.transport=streams"])
