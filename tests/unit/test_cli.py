"""The command line: ``mmusim run``, ``sweep``, ``scenarios`` and ``report`` on the sim backend,
and the one clear line and exit status 2 for every kind of bad input."""

from __future__ import annotations

import json

import pytest

from workloads.cli import main
from workloads.scenario import builtin_scenarios


def test_run_writes_results_events_and_a_plot_and_report_re_renders_them(tmp_path, capsys):
    out = tmp_path / "q"
    assert main(["run", "quickstart", "--out", str(out), "--seed", "5", "--set", "measure.exits=2",
                 "--set", "measure.unregisters=20"]) == 0
    printed = capsys.readouterr().out
    assert "unregister_srcu_wait" in printed and "0 violations" in printed
    result = json.loads((out / "results.json").read_text())
    assert {"scenario", "backend", "seed", "config", "metrics", "invariants"} <= set(result)
    assert result["seed"] == 5 and result["config"]["measure"]["exits"] == 2
    for name in ("exit_hang", "exit_srcu_wait", "unregister_hang", "unregister_srcu_wait", "invalidate_range", "callout_rtt"):
        m = result["metrics"][name]
        assert {"unit", "n", "p50", "p90", "p99", "p999", "max", "mean", "ci95", "beyond"} <= set(m)
        for key in ("p50", "p99"):  # the 95 % interval of each, around it
            assert m["ci95"][key][0] <= m[key] <= m["ci95"][key][1]
    assert result["metrics"]["exit_hang"]["beyond"]["p50"] == 1  # 2 exits: the p50 is the first
    assert "* fewer than 10 events beyond this percentile" in printed and "95% CI" in printed
    rows = (out / "events.csv").read_text().splitlines()
    assert rows[0] == "metric,t_us,value_us,partition,mm,detail" and len(rows) > 10
    (out / "hang.png").unlink()
    assert main(["report", str(out)]) == 0
    assert (out / "hang.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "exit_hang" in capsys.readouterr().out


def test_sweep_runs_each_value_and_writes_the_sweep(tmp_path, capsys):
    out = tmp_path / "s"
    assert main(["sweep", "quickstart", "--vary", "srcu.scope=global,per_mm", "--out", str(out),
                 "--set", "measure.unregisters=3", "--set", "measure.exits=1"]) == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["key"] == "srcu.scope" and sweep["values"] == ["global", "per_mm"]
    assert (out / "sweep.png").exists() and (out / "srcu.scope=per_mm" / "results.json").exists()
    assert "srcu.scope=per_mm" in capsys.readouterr().out


def test_a_parallel_sweep_writes_what_a_serial_one_does_with_a_line_per_point(tmp_path, capsys):
    argv = ["sweep", "quickstart", "--vary", "srcu.scope=global,per_mm", "--set", "measure.unregisters=3",
            "--set", "measure.exits=1"]
    assert main(argv + ["--out", str(tmp_path / "serial")]) == 0
    capsys.readouterr()
    assert main(argv + ["--out", str(tmp_path / "par"), "--jobs", "2"]) == 0
    err = capsys.readouterr().err
    assert "2/2 points" in err and "srcu.scope=per_mm" in err
    for value in ("global", "per_mm"):
        runs = [json.loads((tmp_path / d / f"srcu.scope={value}" / "results.json").read_text()) for d in ("serial", "par")]
        for r in runs:
            r.pop("wall_time_s")
        assert runs[0] == runs[1] and runs[0]["trace_digest"]
        assert (tmp_path / "par" / f"srcu.scope={value}" / "hang.png").exists()
    assert (tmp_path / "par" / "sweep.json").read_text() == (tmp_path / "serial" / "sweep.json").read_text()
    assert main(argv + ["--jobs", "2", "--backend", "ray"]) == 2
    assert "--jobs" in capsys.readouterr().err


def test_scenarios_lists_every_built_in_on_one_line_each(capsys):
    assert main(["scenarios"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines] == [name for name, _ in builtin_scenarios()]
    assert len(lines) == len(builtin_scenarios()) == 9


@pytest.mark.parametrize("argv, expected", [
    (["run", "no-such-scenario"], "no-such-scenario"),
    (["run", "quickstart", "--set", "activity.streems=3"], "activity.streems"),
    (["run", "quickstart", "--set", "srcu.scope=sideways"], "srcu.scope"),
    (["run", "quickstart", "--set", "noequals"], "noequals"),
    (["sweep", "quickstart"], "sweep"),
    (["sweep", "quickstart", "--vary", "fanout"], "--vary"),
    (["report", "/nonexistent/dir"], "/nonexistent/dir"),
])
def test_bad_input_exits_2_with_one_line_naming_it(argv, expected, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("mmusim: ") and err.count("\n") == 1 and expected in err


def test_a_scenario_file_with_a_typo_names_the_file_and_the_key(tmp_path, capsys):
    bad = tmp_path / "mine.yaml"
    bad.write_text("partitions: 2\nactivity:\n  streams: 2\n  rat: 100\n")
    assert main(["run", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "mine.yaml" in err and "activity.rat" in err and "rate" in err and err.count("\n") == 1


def test_an_invariant_violation_exits_1(tmp_path, monkeypatch, capsys):
    import workloads.harness as harness

    real = harness.run_scenario

    def with_violation(*args, **kwargs):  # type: ignore[no-untyped-def]
        result, events = real(*args, **kwargs)
        result["invariants"] = {**result["invariants"], "violations": 1, "details": ["invariant 1: planted"]}
        return result, events

    monkeypatch.setattr(harness, "run_scenario", with_violation)
    assert main(["run", "quickstart", "--out", str(tmp_path / "v"), "--set", "measure.unregisters=1",
                 "--set", "measure.exits=0"]) == 1
    assert "planted" in capsys.readouterr().out


def test_run_takes_the_semantics_of_a_step_of_the_seed_history(tmp_path, capsys):
    out = tmp_path / "r"
    assert main(["run", "quickstart", "--semantics", "rcu+sleep", "--out", str(out), "--seed", "1"]) in (0, 1)
    result = json.loads((out / "results.json").read_text())
    assert result["config"]["semantics"] == "rcu+sleep"
    with pytest.raises(SystemExit) as e:
        main(["run", "quickstart", "--semantics", "v9.99"])
    assert e.value.code == 2


def test_a_reader_that_goes_away_ends_the_command_quietly(monkeypatch, capsys):
    # `mmusim run ... | head`: the pipe breaks under a later print; no usage error, no traceback
    import workloads.cli as cli

    def closed(args):
        raise BrokenPipeError(32, "Broken pipe")

    monkeypatch.setattr(cli, "_cmd_scenarios", closed)
    assert main(["scenarios"]) == cli.EXIT_BROKEN_PIPE == 141
    assert capsys.readouterr().err == ""
