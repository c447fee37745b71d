"""The seed history's semantics and the race finder (nodes/notifier.py SEMANTICS,
nodes/lockdep.py, workloads/races.py, ``mmusim check``).

The budget: each buggy mode's bug is found within the first 30 seeds of the race workload, with
the random scheduler and with PCT, and it is the bug its commit message names; v3.10 runs the
same 30 seeds of both clean."""

from __future__ import annotations

import asyncio

import pytest

from doubles import plant_stale_vma_bugs
from nodes.locks import Mutex
from nodes.lockdep import LockDep, checker, reclaim_map
from workloads.cli import main
from workloads.races import RaceConfig, run_once, search, shrink

BUDGET = 30

# mode -> (finding kind, words its message must contain)
EXPECTED = {
    "rcu": ("SleepingInAtomicContext", "may not sleep"),
    "rcu+sleep": ("violation", "inv 4: notifier method ran after unregister returned"),
    "release-after-unhash": ("violation", "inv 1: frame freed while a secondary maps"),
    "unhash-then-release": ("violation", "inv 1: frame freed while a secondary maps"),
    "unregister-race": ("NullPointerDereference", "hlist_del_rcu"),
    "change-pte-unwrapped": ("SleepingInAtomicContext", "the change_pte fallback"),
    "lazy-alloc": ("lockdep", "possible recursive locking detected"),
    # the OOM reaper's history (4.6's reaper, fixed by 4d4bbd8526a8), beside the core's
    "oom-reap-unnotified": ("violation", "inv 1: frame freed while a secondary maps"),
}


@pytest.mark.parametrize("scheduler", ["random", "pct"])
@pytest.mark.parametrize("mode", sorted(EXPECTED))
def test_each_buggy_mode_shows_its_bug_within_the_budget(mode, scheduler):
    f = search(mode, scheduler, BUDGET, RaceConfig())
    assert f is not None, f"{mode} ran {BUDGET} seeds clean"
    kind, words = EXPECTED[mode]
    assert f.kind == kind and words in f.what, (f.kind, f.what)


@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_v3_10_runs_the_same_budget_clean(scheduler):
    assert search("v3.10", scheduler, BUDGET, RaceConfig()) is None


def test_replaying_a_reported_seed_reproduces_the_identical_trace():
    f = search("release-after-unhash", "pct", BUDGET, RaceConfig())
    again = run_once(f.semantics, f.scheduler, f.seed, f.race)
    assert again is not None and again.digest == f.digest and again.trace == f.trace and again.what == f.what


def test_shrinking_keeps_the_bug_with_a_smaller_workload():
    f = search("unregister-race", "random", BUDGET, RaceConfig())
    small = shrink(f, BUDGET)
    assert small.kind == f.kind == "NullPointerDereference"
    assert set(small.race.tasks) <= set(f.race.tasks) and len(small.race.tasks) < len(f.race.tasks)
    assert {"unregister", "exit"} <= set(small.race.tasks)  # the two paths of the race
    assert small.race.pages <= f.race.pages
    # and the fewest of the seed's scheduling choices (then FIFO) that still show it
    assert small.race.choices is not None and small.race.choices <= small.choices_made
    again = run_once(small.semantics, small.scheduler, small.seed, small.race)
    assert again is not None and again.digest == small.digest


def test_check_prints_the_finding_and_how_to_replay_it_and_exits_1(capsys):
    assert main(["check", "--semantics", "unregister-race", "--seeds", str(BUDGET)]) == 1
    out = capsys.readouterr().out
    assert "NullPointerDereference" in out and "exit unhashes p1:gru0" in out
    replay = next(line.split("replay: ", 1)[1] for line in out.splitlines() if "replay: " in line)
    assert replay.startswith("mmusim check --semantics unregister-race")
    assert main(replay.split()[1:]) == 1  # the printed command replays it exactly
    again = capsys.readouterr().out
    digest = next(line for line in out.splitlines() if "trace digest" in line)
    assert digest in again


def test_check_of_v3_10_exits_0_and_bad_arguments_exit_2(capsys):
    assert main(["check", "--semantics", "v3.10", "--seeds", "5"]) == 0
    assert "clean" in capsys.readouterr().out
    for argv in (["check", "--semantics", "v2.6"], ["check", "--semantics", "rcu", "--tasks", "bogus"],
                 ["check"]):
        with pytest.raises(SystemExit) as e:
            main(argv)
        assert e.value.code == 2


CHECK_SEEDS = 50  # mmusim check's default --seeds


@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_unguarded_gru_dropin_shows_within_the_default_budget_and_the_guard_runs_those_seeds_clean(scheduler):
    """The v3.10 core with the v3.10 GRU dropin: a dropin that an invalidation overtakes
    installs a translation of the old frame (freed, or read after reuse). The guarded dropin
    (the default) runs the same seeds clean."""
    f = search("v3.10", scheduler, CHECK_SEEDS, RaceConfig(gru_dropin="v3.10"))
    assert f is not None and f.kind == "violation", f"the v3.10 dropin ran {CHECK_SEEDS} seeds clean"
    assert "inv 1: frame freed while a secondary maps" in f.what or "inv 6:" in f.what, f.what
    assert "faults" in f.race.tasks and "--gru-dropin v3.10" in f.replay_command()
    assert search("v3.10", scheduler, CHECK_SEEDS, RaceConfig(gru_dropin="guarded")) is None


@pytest.mark.parametrize("scheduler", ["random", "pct"])
def test_migration_racing_a_vma_split_planted_back_shows_within_the_budget(scheduler, monkeypatch):
    """The pre-fix migrate_pages (it kept writing to the VMA it found before it slept in
    invalidate_page) planted back: the race workload's mprotect of half the pages splits the
    VMA under the compaction, and the process's last touches and the final sweep show it,
    without being told; the fixed code runs the budget clean (test_v3_10_runs_the_same_budget_clean)."""
    plant_stale_vma_bugs(monkeypatch)
    f = search("v3.10", scheduler, BUDGET, RaceConfig())
    assert f is not None, f"the planted stale-VMA migration ran {BUDGET} seeds clean"
    assert {"migrate", "mprotect"} <= set(f.race.tasks), f.race


def test_check_gru_dropin_prints_a_replay_that_reproduces_it(capsys):
    assert main(["check", "--semantics", "v3.10", "--gru-dropin", "v3.10", "--no-shrink"]) == 1
    out = capsys.readouterr().out
    replay = next(line.split("replay: ", 1)[1] for line in out.splitlines() if "replay: " in line)
    assert "--gru-dropin v3.10" in replay
    assert main(replay.split()[1:]) == 1
    digest = next(line for line in out.splitlines() if "trace digest" in line)
    assert digest in capsys.readouterr().out
    with pytest.raises(SystemExit) as e:
        main(["check", "--semantics", "v3.10", "--gru-dropin", "v3.11"])
    assert e.value.code == 2
    assert "invalid choice: 'v3.11'" in capsys.readouterr().err


def test_check_explores_a_hang_study_scenario_too(capsys):
    assert main(["check", "quickstart", "--semantics", "rcu", "--seeds", "2"]) == 1
    out = capsys.readouterr().out
    assert "SleepingInAtomicContext" in out and "--set semantics=rcu" in out


def test_lockdep_reports_a_circular_dependency_between_two_lock_classes():
    dep = LockDep()
    a, b = object(), object()
    dep.acquire("t1", "A", a, "A")
    dep.acquired("t1", "A", a)
    dep.acquire("t1", "B", b, "B")  # A -> B
    dep.acquired("t1", "B", b)
    dep.released("t1", b)
    dep.released("t1", a)
    assert dep.reports == []
    dep.acquire("t2", "B", b, "B")
    dep.acquired("t2", "B", b)
    dep.acquire("t2", "A", a, "A")  # B -> A closes the cycle
    assert len(dep.reports) == 1 and "circular locking dependency" in dep.reports[0]


def test_lockdep_sees_reclaim_under_a_held_lock_and_the_self_deadlock():
    """lazy-alloc in miniature: holding an anon_vma lock, the task enters reclaim (fs_reclaim),
    whose rmap walk takes the same lock: both the inversion and the recursion are reported
    before the task blocks on itself."""
    async def main_() -> list[str]:
        m = Mutex("mm.anon_vma", "anon_vma")
        await m.lock()
        with reclaim_map():
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(0.01):  # this task would wait for itself forever
                    await m.lock()
        m.unlock()
        dep = checker()
        return list(dep.reports) if dep is not None else []

    reports = asyncio.run(main_())
    assert any("recursive locking detected" in r for r in reports)
    assert any("circular locking dependency" in r and "fs_reclaim" in r for r in reports)


def test_a_limited_policy_makes_the_seeded_choices_then_fifo():
    from cluster.vtime import LimitedPolicy, RandomPolicy

    seeded, limited = RandomPolicy(7), LimitedPolicy(RandomPolicy(7), 3)
    keys = list(range(10))
    assert [limited.choose(keys) for _ in range(6)] == [seeded.choose(keys) for _ in range(3)] + [0, 0, 0]
    with pytest.raises(ValueError, match="-1"):
        LimitedPolicy(RandomPolicy(1), -1)
