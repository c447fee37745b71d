"""Tree SRCU (nodes/srcu_tree.py, Linux v5.10 kernel/rcu/srcutree.c), on virtual time.

The properties both algorithms share (a grace period waits for every earlier reader, misuse
errors, SrcuDeadlock, callbacks that sleep, the torture run) are parametrized over both in
test_srcu.py; this file holds what is Tree SRCU's own. Timing facts the exact-time assertions
rely on (SRCU_RETRY_CHECK_DELAY 5 us, SRCU_INTERVAL one jiffy J):
- a normal request starts the grace period at once (SCAN1) and queues process_srcu one jiffy
  later; each run checks the inactive index once, flips, then checks the old index twice, 5 us
  apart, and if readers remain runs again one jiffy after it ended;
- the grace period's end schedules the callbacks one more jiffy later (srcu_get_delay() taken
  before the end), so a normal synchronize with no reader takes 2 J;
- an expedited request queues process_srcu with no delay, each check gets one more try, and a
  run that finds readers runs again at once: the old index is checked every 5 us;
- synchronize() is expedited when the domain looks idle: no callback pending on this CPU, no
  grace period in progress or needed, and none ended within exp_holdoff (25 us). A domain
  made at t reads the clock then, so a synchronize before t + 25 is a normal one.
"""

from __future__ import annotations

import pytest

from cluster.config import PartitionConfig
from cluster.sim import SimConfig
from nodes.errors import InternalError, SrcuDeadlock
from nodes.partition import Partition, SrcuOptions, make_srcu
from nodes.runtime import Runtime, current_cpu
from nodes.srcu import Srcu
from nodes.srcu_base import SrcuCallback
from nodes.srcu_tree import (
    SRCU_MAX_INTERVAL,
    TREE_VERSIONS,
    RCU_DONE_TAIL,
    RCU_NEXT_READY_TAIL,
    RCU_NEXT_TAIL,
    RCU_WAIT_TAIL,
    SRCU_STATE_IDLE,
    SRCU_STATE_SCAN1,
    SRCU_STATE_SCAN2,
    SegCbList,
    TreeSrcu,
    rcu_seq_end,
    rcu_seq_set_state,
    rcu_seq_snap,
    rcu_seq_start,
    rcu_seq_state,
    srcu_node_geometry,
    srcu_nodelay_limits,
)
from workloads.scenario import ScenarioError, load_scenario

DELAY = 5.0


async def hold_reader(rt: Runtime, srcu, us: float, cpu: int = 0, unlock_cpu: int | None = None,
                      log: list | None = None) -> int:
    """A reader that takes the read lock now, sleeps ``us`` and unlocks; logs (start, end)."""
    idx = srcu.read_lock(cpu)
    start = rt.now()
    await rt.sleep(us)
    srcu.read_unlock(idx, cpu if unlock_cpu is None else unlock_cpu)
    if log is not None:
        log.append((start, rt.now()))
    return idx


def on_cpu(cpu: int, coro):  # type: ignore[no-untyped-def]
    """``coro`` run with current_cpu = ``cpu`` (what a workload stream sets)."""
    async def run():  # type: ignore[no-untyped-def]
        current_cpu.set(cpu)
        return await coro

    return run()


# -- the grace-period sequence ------------------------------------------------------------------


def test_rcu_seq_counter_and_state_bits():
    assert rcu_seq_snap(0) == 4  # idle at counter 0: the next grace period ends at 4
    assert rcu_seq_start(0) == 1 and rcu_seq_state(1) == SRCU_STATE_SCAN1
    # a grace period in progress may have scanned already: a new request needs the one after
    assert rcu_seq_snap(1) == 8 and rcu_seq_snap(2) == 8
    assert rcu_seq_set_state(1, SRCU_STATE_SCAN2) == 2
    assert rcu_seq_end(2) == 4 and rcu_seq_state(4) == SRCU_STATE_IDLE and rcu_seq_snap(4) == 8
    with pytest.raises(InternalError, match="rcu_seq_start.* while a grace period is in progress"):
        rcu_seq_start(2)
    with pytest.raises(InternalError, match="rcu_seq_end.* with no grace period in progress"):
        rcu_seq_end(4)


def test_gp_seq_goes_idle_scan1_scan2_idle_with_a_sleeping_reader(vrun, settle):
    J = 1000.0

    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t", jiffy_us=J)
        log: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, 3500, log=log), name="reader")
        await settle(rt)  # t=1: within exp_holdoff of the domain's birth, so not expedited
        states: list[tuple[float, int, int, int]] = []

        async def watch() -> None:
            for t in (500, 1500, 3900, 4500):
                await rt.sleep(t - rt.now())
                states.append((rt.now(), s.gp_state(), s.srcu_gp_seq, s.srcu_idx))

        rt.spawn(watch(), name="watch")
        assert (s.gp_state(), s.srcu_gp_seq, s.srcu_gp_seq_needed) == (SRCU_STATE_IDLE, 0, 0)
        await s.synchronize()
        # process_srcu at 1001: SCAN1 passes, flip, SCAN2 checks at 1001, 1006 fail; again at
        # 2006 (2006, 2011), 3011 (3011, 3016); at 4016 the reader (gone at 3500) is gone:
        # the grace period ends, and the callback runs one jiffy later
        assert rt.now() == 5016.0
        assert log == [(0.0, 3500.0)]
        assert states == [
            (500.0, SRCU_STATE_SCAN1, 1, 0),  # started by the request, waiting for the worker
            (1500.0, SRCU_STATE_SCAN2, 2, 1),  # flipped: new readers use index 1
            (3900.0, SRCU_STATE_SCAN2, 2, 1),
            (4500.0, SRCU_STATE_IDLE, 4, 1),  # ended at 4016; the waiter wakes at 5016
        ]
        st = s.statistics()
        assert (st.gp_seq, st.gp_seq_needed, st.completed, st.grace_periods) == (4, 4, 1, 1)
        assert st.worker_runs == 4 and st.auto_expedited == 0 and st.callback_runs == 1
        assert st.algorithm == "tree" and st.wait_max_us == 5015.0

    vrun(body)


# -- expedited and normal delays --------------------------------------------------------------


@pytest.mark.parametrize("J", [1000.0, 4000.0, 10_000.0])
def test_no_reader_idle_is_expedited_busy_takes_two_jiffies(vrun, J):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 4, name="t", jiffy_us=J)
        await rt.sleep(100)
        await s.synchronize()  # idle: no grace period for 100 us > exp_holdoff
        assert rt.now() == 100.0
        assert s.statistics().auto_expedited == 1
        await s.synchronize()  # a grace period ended just now: a normal one
        assert rt.now() == 100.0 + 2 * J
        await s.synchronize_expedited()  # expedited: no delay anywhere
        assert rt.now() == 100.0 + 2 * J
        await rt.sleep(25)  # exactly exp_holdoff after the last end: idle again
        t0 = rt.now()
        await s.synchronize()
        assert rt.now() == t0
        st = s.statistics()
        assert st.auto_expedited == 2 and st.expedited_calls == 1 and st.synchronize_calls == 4
        assert st.grace_periods == 4 and st.completed == 4 and st.fast_path_completions == 0

    vrun(body)


def test_exp_holdoff_zero_never_auto_expedites(vrun):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 1, name="t", exp_holdoff_us=0.0)
        await rt.sleep(10_000)
        await s.synchronize()
        assert rt.now() == 12_000.0 and s.statistics().auto_expedited == 0

    vrun(body)


def test_pending_callbacks_on_this_cpu_make_synchronize_normal(vrun):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t")
        await rt.sleep(100)
        ran: list[float] = []
        s.call_srcu(lambda: ran.append(rt.now()), "cb")  # CPU 0 now has a callback pending
        await s.synchronize()  # not idle: shares the grace period call_srcu asked for
        assert s.statistics().auto_expedited == 0
        assert ran == [2100.0] and rt.now() == 2100.0

    vrun(body)


@pytest.mark.parametrize("T", [30.0, 3500.0, 12_345.0])
def test_expedited_polls_every_5us_normal_every_jiffy(vrun, settle, T):
    J = 1000.0

    async def run(rt: Runtime, expedited: bool) -> tuple[float, object]:
        s = TreeSrcu(rt, 2, name="t", jiffy_us=J)
        rt.spawn(hold_reader(rt, s, T), name="reader")
        await settle(rt)  # t=1
        await (s.synchronize_expedited() if expedited else s.synchronize())
        return rt.now(), s.statistics()

    async def exp(rt: Runtime):
        return await run(rt, True)

    async def norm(rt: Runtime):
        return await run(rt, False)

    t_exp, st = vrun(exp)
    # checks at 1, 6, 11, ...: the first after the reader's end at T
    first = 1.0
    while first <= T:
        first += DELAY
    assert t_exp == first
    assert st.worker_runs == pytest.approx((first - 1) / (2 * DELAY), abs=1)
    t_norm, st = vrun(norm)
    # runs at 1001 (checks 1001, 1006), then a jiffy after each run's end: 2006, 3011, ...;
    # the grace period ends at the first run after T, the waiter wakes a jiffy later
    run_at = 1 + J
    while run_at + DELAY <= T:  # both checks of the run before T's end fail
        run_at += J + DELAY
    end = run_at if run_at > T else run_at + DELAY
    assert t_norm == end + J
    assert t_exp < t_norm


def test_an_expedited_request_does_not_hurry_a_queued_normal_worker(vrun):
    """v5.10: srcu_funnel_exp_start() marks the grace period expedited but queues nothing;
    process_srcu, already pending for one jiffy, is not re-queued sooner (queue_delayed_work()
    on a pending work does nothing). From its first run on there is no delay."""
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t")
        done: dict[str, float] = {}

        async def sync(name: str, expedited: bool) -> None:
            await (s.synchronize_expedited() if expedited else s.synchronize())
            done[name] = rt.now()

        rt.spawn(sync("normal", False), name="normal")  # t=0: not idle (domain just made)
        await rt.sleep(10)
        rt.spawn(sync("exp", True), name="exp")  # needs the next grace period, expedited
        await rt.join()
        # the first grace period ends at 1000 with an expedited one needed, so the normal
        # waiter's callbacks run at once (cbdelay 0) and the second grace period too
        assert done == {"normal": 1000.0, "exp": 1000.0}
        assert s.statistics().grace_periods == 2

    vrun(body)


# -- readers after the flip, sharing -----------------------------------------------------------


def test_reader_starting_after_the_flip_does_not_delay_the_grace_period(vrun, settle):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t")
        old: list[tuple[float, float]] = []
        new: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, 3500, log=old), name="old")
        await settle(rt)
        ret: list[float] = []

        async def sync() -> None:
            await s.synchronize()
            ret.append(rt.now())

        rt.spawn(sync(), name="sync")
        await rt.sleep(1500 - rt.now())  # flipped at 1001
        assert s.srcu_idx == 1 and s.gp_state() == SRCU_STATE_SCAN2
        new_task = rt.spawn(hold_reader(rt, s, 100_000, cpu=1, log=new), name="new")
        await settle(rt)
        assert s.sda[1].srcu_lock_count == [0, 1]
        while not ret:
            await rt.sleep(100)
        assert ret == [5016.0] and old == [(0.0, 3500.0)]
        assert new == [] and not new_task.done()
        t0 = rt.now()
        await s.synchronize()  # began after the new reader: waits for it
        assert new == [(1500.0, 101_500.0)] and rt.now() > 101_500.0 and rt.now() - t0 < 100_000 + 3 * 1000

    vrun(body)


@pytest.mark.parametrize("n_late", [3, 12])
def test_concurrent_synchronize_calls_share_grace_periods(vrun, settle, n_late):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 4, name="t")
        rt.spawn(hold_reader(rt, s, 3500), name="reader")
        await settle(rt)
        rets: list[tuple[str, float]] = []

        async def sync(name: str) -> None:
            await s.synchronize()
            rets.append((name, rt.now()))

        rt.spawn(sync("first"), name="first")
        await rt.sleep(9)  # the first grace period has started: the late ones need the next
        for i in range(n_late):
            rt.spawn(on_cpu(i % 4, sync(f"late{i}")), name=f"late{i}")
        await rt.join()
        st = s.statistics()
        assert st.grace_periods == 2 and st.synchronize_calls == 1 + n_late
        # one late caller asked for the grace period; a late one on another CPU found it asked
        # for at the (only) srcu_node; one on a CPU that had asked already stopped at its
        # srcu_data (srcu_gp_seq_needed) without funnelling at all
        assert st.funnel_shared == min(n_late, 4) - 1
        assert dict(rets)["first"] == 5016.0
        # the first grace period ends at 4016 and the second starts at once (srcu_gp_end);
        # its first run at 4016 finds both indexes empty: it ends there, callbacks at 5016
        assert {t for name, t in rets if name != "first"} == {5016.0}

    vrun(body)


def test_funnel_shares_a_grace_period_across_cpus_and_leaves(vrun, settle):
    """Eight CPUs, two per leaf (fanout_leaf=2): four leaves under one root. Requests for the
    same grace period from CPUs 0, 1, 2 and 5 reach the root once; each leaf records the CPUs
    whose callbacks wait, and only those CPUs run srcu_invoke_callbacks."""
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 8, name="t", fanout_leaf=2)
        assert [len(level) for level in s.levels] == [1, 4]
        assert [(n.grplo, n.grphi) for n in s.levels[1]] == [(0, 1), (2, 3), (4, 5), (6, 7)]
        assert [sdp.grpmask for sdp in s.sda] == [1, 2] * 4
        rt.spawn(hold_reader(rt, s, 3500), name="reader")
        await settle(rt)
        rt.spawn(on_cpu(7, s.synchronize()), name="first")  # starts grace period 4
        await settle(rt)
        ran: list[tuple[int, int]] = []
        for cpu in (0, 1, 2, 5):
            def cb(cpu: int = cpu) -> None:
                ran.append((cpu, current_cpu.get()))
            rt.spawn(on_cpu(cpu, _call(s, cb)), name=f"call{cpu}")
        await settle(rt)
        s_next = 8
        root, leaves = s.levels[0][0], s.levels[1]
        slot = (s_next >> 2) % 4
        assert root.srcu_have_cbs[slot] == s_next and s.srcu_gp_seq_needed == s_next
        assert [leaf.srcu_have_cbs[slot] for leaf in leaves] == [s_next, s_next, s_next, 0]
        assert [leaf.srcu_data_have_cbs[slot] for leaf in leaves] == [0b11, 0b01, 0b10, 0]
        # CPU 1 shared at its leaf (CPU 0 was first there), CPUs 2 and 5 at the root
        assert s.statistics().funnel_shared == 3
        await rt.join()
        assert sorted(ran) == [(0, 0), (1, 1), (2, 2), (5, 5)]  # each on its own CPU
        st = s.statistics()
        assert st.grace_periods == 2
        # CPU 7's waiter (grace period 4) and the four CPUs of grace period 8
        assert st.callback_runs == 5
        assert [leaf.srcu_data_have_cbs[slot] for leaf in leaves] == [0, 0, 0, 0]

    vrun(body)


async def _call(s: TreeSrcu, cb) -> None:  # type: ignore[no-untyped-def]
    s.call_srcu(cb, "cb")


# -- call_srcu ------------------------------------------------------------------------------


def test_call_srcu_runs_in_order_after_the_readers_before_it(vrun, settle):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t")
        log: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, 3500, log=log), name="reader")
        await settle(rt)
        ran: list[tuple[str, float, int]] = []
        for i in range(5):
            s.call_srcu(lambda i=i: ran.append((f"a{i}", rt.now(), s.readers_active())), f"a{i}")
        assert ran == []
        await rt.sleep(2000)  # t=2001: grace period 4 in SCAN2; these need grace period 8
        for i in range(3):
            s.call_srcu(lambda i=i: ran.append((f"b{i}", rt.now(), s.readers_active())), f"b{i}")
        await rt.join()
        # grace period 4 ends at 4016 (callbacks 5016); 8 starts at once and ends at 4016 too
        # (its first run finds both indexes empty): one srcu_invoke_callbacks runs them all
        assert [name for name, _, _ in ran] == ["a0", "a1", "a2", "a3", "a4", "b0", "b1", "b2"]
        assert {t for _, t, _ in ran} == {5016.0} and all(r == 0 for _, _, r in ran)
        assert log == [(0.0, 3500.0)]
        st = s.statistics()
        assert st.call_srcu_calls == 8 and st.callbacks_invoked == 8 and st.grace_periods == 2

    vrun(body)


def test_call_srcu_does_not_wait_and_later_callbacks_wait_for_later_readers(vrun, settle):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 1, name="t")
        ran: list[tuple[str, float]] = []
        s.call_srcu(lambda: ran.append(("early", rt.now())), "early")  # t=0, no reader
        await settle(rt)
        rt.spawn(hold_reader(rt, s, 5000), name="reader")  # t=1, before the flip at 1000
        await settle(rt)
        s.call_srcu(lambda: ran.append(("late", rt.now())), "late")  # t=2: the next grace period
        await rt.join()
        # grace period 4 (early): its run at 1000 finds index 1 empty, flips, and waits for
        # index 0, where the reader (begun before the flip) is: checks at 1000, 1005, then
        # 2005, ..., 5020 finds it gone; callbacks a jiffy later. Grace period 8 (late) starts
        # at 5020 and ends in its first run, at once: its callback is due at 6020 as well, and
        # CPU 0's one srcu_invoke_callbacks runs both, in order
        assert ran == [("early", 6020.0), ("late", 6020.0)]
        st = s.statistics()
        assert st.grace_periods == 2 and st.callback_runs == 1


def test_srcu_barrier_waits_for_every_queued_callback(vrun, settle):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 4, name="t")
        await s.srcu_barrier()  # nothing queued: returns at once
        assert rt.now() == 0.0
        ran: list[tuple[int, float]] = []
        rt.spawn(hold_reader(rt, s, 2500), name="reader")
        await settle(rt)
        for cpu in (0, 3):
            rt.spawn(on_cpu(cpu, _call(s, lambda cpu=cpu: ran.append((cpu, rt.now())))), name=f"c{cpu}")
        await settle(rt)
        await s.srcu_barrier()
        assert sorted(c for c, _ in ran) == [0, 3] and rt.now() >= max(t for _, t in ran) > 2500
        st = s.statistics()
        assert st.barrier_calls == 2 and st.callbacks_invoked == 4  # two callbacks, two barrier callbacks
        idx = s.read_lock(0)
        with pytest.raises(SrcuDeadlock, match=r"Illegal srcu_barrier\(\) on t inside its own read-side"):
            await s.srcu_barrier()
        s.read_unlock(idx, 0)

    vrun(body)


# -- the callback list and the tree's shape ---------------------------------------------------


def test_segcblist_accelerate_advance_entrain():
    cbl = SegCbList()
    a, b, c, d = (SrcuCallback(lambda: None, n) for n in "abcd")
    assert not cbl.accelerate(4) and not cbl.entrain(a)  # empty: nothing to do
    cbl.enqueue(a)
    assert cbl.accelerate(4)  # a waits for grace period 4
    assert list(cbl.segs[RCU_WAIT_TAIL]) == [a] and cbl.gp_seq[RCU_WAIT_TAIL] == 4
    cbl.enqueue(b)
    assert cbl.accelerate(8)  # b for 8, behind a
    assert list(cbl.segs[RCU_NEXT_READY_TAIL]) == [b] and cbl.gp_seq[RCU_NEXT_READY_TAIL] == 8
    cbl.enqueue(c)
    assert cbl.accelerate(8)  # c joins b's segment
    assert list(cbl.segs[RCU_NEXT_READY_TAIL]) == [b, c] and not cbl.segs[RCU_NEXT_TAIL]
    assert cbl.entrain(d)  # behind the last callback, in its segment
    assert list(cbl.segs[RCU_NEXT_READY_TAIL]) == [b, c, d]
    assert cbl.pend_cbs() and not cbl.ready_cbs()
    cbl.advance(3)  # grace period 4 not over: nothing moves
    assert not cbl.ready_cbs()
    cbl.advance(4)
    assert list(cbl.segs[RCU_DONE_TAIL]) == [a]
    assert list(cbl.segs[RCU_WAIT_TAIL]) == [b, c, d] and cbl.gp_seq[RCU_WAIT_TAIL] == 8  # moved down
    assert cbl.extract_done() == [a] and len(cbl) == 3
    cbl.advance(8)
    assert cbl.extract_done() == [b, c, d] and len(cbl) == 0 and not cbl.pend_cbs()


@pytest.mark.parametrize(
    "ncpus, leaf, fanout, counts, spread",
    [
        (4, 16, 64, [1], [4]),  # the default: one srcu_node, root and leaf
        (16, 16, 64, [1], [16]),
        (17, 16, 64, [1, 2], [2, 9]),  # balanced: 9 + 8 CPUs, not 16 + 1
        (20, 16, 64, [1, 2], [2, 10]),
        (8, 2, 64, [1, 4], [4, 2]),
        (9, 2, 2, [1, 2, 3, 5], [2, 2, 2, 2]),
    ],
)
def test_srcu_node_geometry_is_the_kernels(ncpus, leaf, fanout, counts, spread):
    assert srcu_node_geometry(ncpus, leaf, fanout) == (counts, spread)


def test_cpus_map_to_leaves_and_leaves_to_parents(vrun):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 20, name="t")
        leaves = s.levels[-1]
        assert [s.sda[c].mynode for c in (0, 9, 10, 19)] == [leaves[0], leaves[0], leaves[1], leaves[1]]
        assert all(leaf.srcu_parent is s.levels[0][0] for leaf in leaves)
        assert (s.levels[0][0].grplo, s.levels[0][0].grphi) == (0, 19)
        assert s.sda[13].grpmask == 1 << 3

    vrun(body)


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(fanout_leaf=1), r"srcu fanout_leaf must be an integer in 2\.\.64 \(CONFIG_RCU_FANOUT_LEAF\), got 1"),
        (dict(fanout=65), r"srcu fanout must be an integer in 2\.\.64 \(CONFIG_RCU_FANOUT\), got 65"),
        (dict(exp_holdoff_us=-1.0), r"exp_holdoff must be >= 0 us .*got -1\.0"),
        (dict(ncpus=0), r"at least one CPU, got ncpus=0"),
    ],
)
def test_bad_tree_parameters_are_named(kw, message):
    ncpus = kw.pop("ncpus", 4)
    with pytest.raises(ValueError, match=message):
        TreeSrcu(Runtime(None), ncpus, **kw)  # type: ignore[arg-type]


def test_a_tree_deeper_than_the_kernels_is_refused():
    with pytest.raises(ValueError, match=r"33 CPUs need a 6-level srcu_node tree with fanout_leaf=2, fanout=2; the kernel allows 4"):
        srcu_node_geometry(33, 2, 2)


# -- configuration ---------------------------------------------------------------------------


def test_partition_builds_the_algorithm_for_every_domain(vrun):
    async def body(rt: Runtime):
        for algorithm, kind in (("classic", Srcu), ("tree", TreeSrcu)):
            for scope in ("global", "per_mm"):
                p = Partition(rt, nframes=64, ncpus=2, srcu_scope=scope, srcu=SrcuOptions(algorithm, fanout_leaf=2))
                mm = p.create_mm()
                srcu = p.srcu_for(mm)
                assert type(srcu) is kind and srcu.statistics().algorithm == algorithm
        tree = make_srcu(rt, 6, SrcuOptions("tree", fanout_leaf=3), name="x")
        assert isinstance(tree, TreeSrcu) and [len(level) for level in tree.levels] == [1, 2]

    vrun(body)
    with pytest.raises(ValueError, match=r"srcu algorithm must be one of \('classic', 'tree'\), got 'rcu'"):
        SrcuOptions("rcu")


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(srcu_algorithm="tree2"), r"sim config srcu_algorithm: expected one of \('classic', 'tree'\), got 'tree2'"),
        (dict(srcu_fanout_leaf=1), r"sim config srcu_fanout_leaf: expected an integer in 2\.\.64, got 1"),
        (dict(srcu_fanout=True), r"sim config srcu_fanout: expected an integer in 2\.\.64, got True"),
        (dict(srcu_exp_holdoff_us=-5), r"sim config srcu_exp_holdoff_us: expected a number >= 0, got -5"),
    ],
)
def test_sim_config_refuses_bad_srcu_values(kw, message):
    with pytest.raises(ValueError, match=message):
        SimConfig(**kw)


@pytest.mark.parametrize(
    "override, message",
    [
        ("srcu.algorithm=trees", r"srcu\.algorithm: expected one of classic, tree, got 'trees'; did you mean 'tree'\?"),
        ("srcu.fanout_leaf=100", r"srcu\.fanout_leaf: expected an integer in 2\.\.64, got 100"),
        ("srcu.exp_holdoff=-1", r"srcu\.exp_holdoff: expected a number >= 0, got -1"),
    ],
)
def test_scenario_refuses_bad_srcu_knobs(override, message):
    with pytest.raises(ScenarioError, match=message):
        load_scenario("quickstart").with_overrides([override])


def test_scenario_knobs_reach_the_config_and_the_results_config():
    s = load_scenario("quickstart").with_overrides(
        ["srcu.algorithm=tree", "srcu.fanout_leaf=2", "srcu.fanout=4", "srcu.exp_holdoff=0"])
    cfg = s.sim_config()
    assert cfg.srcu == SrcuOptions("tree", 2, 4, 0)
    assert s.to_dict()["srcu"]["algorithm"] == "tree"
    default = load_scenario("quickstart").sim_config()
    assert default.srcu == SrcuOptions() and default.srcu.algorithm == "classic"
    assert isinstance(PartitionConfig().srcu, SrcuOptions)


def test_predict_refuses_tree_srcu_naming_the_knob():
    from workloads.predict import NotModelled, predict

    with pytest.raises(NotModelled, match=r"srcu\.algorithm: the SRCU-hang model does not cover this: .*classic SRCU, got 'tree'"):
        predict(load_scenario("quickstart").with_overrides(["srcu.algorithm=tree"]))


def test_a_tree_srcu_run_is_a_function_of_its_seed():
    from workloads.harness import run_scenario

    s = load_scenario("global-vs-per-mm-srcu").with_overrides(
        ["srcu.algorithm=tree", "measure.exits=3", "measure.unregisters=4", "duration=30ms"])
    a, _ = run_scenario(s)
    b, _ = run_scenario(s)
    c, _ = run_scenario(s.with_value("srcu.algorithm", "classic"))
    assert a["trace_digest"] == b["trace_digest"] and a["metrics"] == b["metrics"]
    assert c["trace_digest"] != a["trace_digest"]
    assert a["invariants"]["violations"] == 0 and a["config"]["srcu"]["algorithm"] == "tree"


# -- the delay policy by kernel version (srcu.tree_version) --------------------------------------
#
# srcu_get_delay() of each version, in jiffies (J = 1000 us, HZ 1000 in these tests):
# - v5.10: 0 while an expedited grace period is pending, else SRCU_INTERVAL (1);
# - v5.19-rc1 (282d8998e997): that base plus the grace period's age in jiffies while one is in
#   progress, at most SRCU_MAX_INTERVAL (10); a 0 is a no-delay instance, and past
#   SRCU_MAX_NODELAY_PHASE (1) of them in a phase it is 1;
# - v6.6 (8f870e6eb8c0, 4f2bfd9494a0): the age counts from the jiffy before this one, and the
#   no-delay instances allowed per phase are about a jiffy of 5 us polls (400 at HZ 1000).


def _gp_in_progress(s: TreeSrcu, *, expedited: bool, age: int) -> None:
    """Put ``s`` in SCAN1 of a grace period that started ``age`` jiffies ago (white box: the
    fields srcu_gp_start() sets)."""
    s.srcu_gp_seq = rcu_seq_start(0)
    s.srcu_gp_seq_needed = 4
    s.srcu_gp_seq_needed_exp = 4 if expedited else 0
    s.srcu_gp_start = s._jiffies() - age
    s.srcu_n_exp_nodelay = 0


@pytest.mark.parametrize("version, expedited, age, delays", [
    # v5.10: the age does not count, and a zero delay has no limit
    ("v5.10", True, 0, [0, 0, 0, 0]), ("v5.10", True, 30, [0, 0]), ("v5.10", False, 3, [1, 1]),
    # v5.19-rc1: one no-delay instance a phase, then a jiffy; the age counts from this jiffy
    ("v5.19-rc1", True, 0, [0, 1, 1]), ("v5.19-rc1", True, 1, [1, 1]), ("v5.19-rc1", True, 2, [2]),
    ("v5.19-rc1", True, 30, [10]), ("v5.19-rc1", False, 3, [4]),
    # v6.6: a grace period one jiffy old is not delayed yet; two jiffies: one
    ("v6.6", True, 0, [0, 0, 0]), ("v6.6", True, 1, [0, 0]), ("v6.6", True, 2, [1]),
    ("v6.6", True, 30, [10]), ("v6.6", False, 3, [3]),
])
def test_srcu_get_delay_of_each_version(vrun, version, expedited, age, delays):
    async def body(rt: Runtime):
        await rt.sleep(40_500)  # mid-jiffy 40
        s = TreeSrcu(rt, 2, name="t", jiffy_us=1000.0, tree_version=version)
        assert s._get_delay() == 1  # idle, nothing expedited: SRCU_INTERVAL in every version
        _gp_in_progress(s, expedited=expedited, age=age)
        assert [s._get_delay() for _ in delays] == delays

    vrun(body)


def test_v6_6_allows_about_a_jiffy_of_no_delay_polls_per_phase(vrun):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t", jiffy_us=1000.0, tree_version="v6.6")
        assert (s.srcu_max_nodelay_phase, s.srcu_max_nodelay) == (400, 400)  # 2 * 1e6 / 1000 / 5
        _gp_in_progress(s, expedited=True, age=0)
        got = [s._get_delay() for _ in range(401)]
        assert got[:400] == [0] * 400 and got[400] == 1

    vrun(body)


@pytest.mark.parametrize("version, hz, limits", [
    ("v5.10", 1000, (0, 0)),  # no limit
    ("v5.19-rc1", 250, (1, 100)),  # SRCU_MAX_NODELAY_PHASE, SRCU_MAX_NODELAY
    ("v6.6", 1000, (400, 400)),
    ("v6.6", 250, (1000, 1000)),  # 1600, clamped to SRCU_DEFAULT_MAX_NODELAY_PHASE_HI
    ("v6.6", 10_000, (40, 100)),  # SRCU_DEFAULT_MAX_NODELAY is at least 100
    ("v6.6", 1_000_000, (3, 100)),  # clamped to SRCU_DEFAULT_MAX_NODELAY_PHASE_LO
])
def test_no_delay_limits_of_each_version(version, hz, limits):
    assert srcu_nodelay_limits(version, hz) == limits


async def _expedited_wait(rt: Runtime, s: TreeSrcu, reader_us: float) -> float:
    """The wait of one synchronize_srcu_expedited() that a reader, in since just before it,
    holds up for ``reader_us``."""
    rt.spawn(hold_reader(rt, s, reader_us), name="reader")
    await rt.sleep(1)
    t0 = rt.now()
    await s.synchronize_expedited()
    return rt.now() - t0


@pytest.mark.parametrize("version", TREE_VERSIONS)
def test_an_expedited_grace_period_with_no_reader_takes_no_time_in_every_version(vrun, version):
    async def body(rt: Runtime):
        s = TreeSrcu(rt, 2, name="t", jiffy_us=4000.0, tree_version=version)
        for _ in range(5):
            t0 = rt.now()
            await s.synchronize_expedited()
            assert rt.now() == t0

    vrun(body)


def test_v5_19_rc1_turns_a_short_readers_expedited_wait_into_two_jiffies(vrun):
    J = 4000.0  # HZ 250

    def wait(version: str) -> float:
        async def body(rt: Runtime):
            await rt.sleep(100)
            return await _expedited_wait(rt, TreeSrcu(rt, 2, name="t", jiffy_us=J, tree_version=version), 300)

        return vrun(body)

    # v5.10 and v6.6 poll every 5 us until the reader is gone (299 us after the request); v5.19-rc1
    # polls once more (its one no-delay instance of SCAN2), sleeps a jiffy, finds the reader gone
    # and, the grace period now a jiffy old, invokes the callback one more jiffy later
    assert wait("v5.10") == wait("v6.6") == 300.0
    assert wait("v5.19-rc1") == 5 + 2 * J


def test_from_v5_19_rc1_a_blocking_reader_no_longer_keeps_the_worker_polling(vrun):
    """282d8998e997's purpose: an expedited grace period waiting for a reader that sleeps
    (20 jiffies here) re-ran process_srcu without delay for as long as the reader slept."""
    J = 1000.0

    def run(version: str) -> tuple[float, int]:
        async def body(rt: Runtime):
            s = TreeSrcu(rt, 2, name="t", jiffy_us=J, tree_version=version)
            waited = await _expedited_wait(rt, s, 20 * J)
            return waited, s.statistics().reader_checks

        return vrun(body)

    (w510, c510), (w519, c519), (w66, c66) = run("v5.10"), run("v5.19-rc1"), run("v6.6")
    assert min(w510, w519, w66) >= 20 * J - 1  # each still waits for the reader
    assert w510 < 20 * J + 10 and max(w519, w66) <= 20 * J + 2 * SRCU_MAX_INTERVAL * J
    assert c510 > 20 * J / DELAY  # a check every 5 us throughout
    assert c519 < 40 and c66 < 2 * 400 + 40  # a jiffy of polls at most (v6.6), then sleeps


def test_v6_6_process_srcu_runs_without_delay_at_most_srcu_max_nodelay_times_a_jiffy(vrun):
    """With srcutree.srcu_max_nodelay_phase set very large (the thread's experiment), the
    per-jiffy limit of process_srcu's no-delay runs still delays the worker a jiffy."""
    J = 10_000.0  # HZ 100: a reader of half a jiffy needs ~250 runs of 2 checks 5 us apart

    def wait(max_nodelay: int) -> float:
        async def body(rt: Runtime):
            s = TreeSrcu(rt, 2, name="t", jiffy_us=J, tree_version="v6.6")
            s.srcu_max_nodelay_phase = 10**6  # the boot parameters
            s.srcu_max_nodelay = max_nodelay
            return await _expedited_wait(rt, s, J / 2)

        return vrun(body)

    assert wait(10**6) <= J / 2 + 2 * DELAY  # polled throughout
    assert wait(100) > J  # the 101st run of the jiffy waited a jiffy


def test_tree_version_reaches_the_domain_and_bad_versions_are_named(vrun):
    async def body(rt: Runtime):
        s = make_srcu(rt, 2, SrcuOptions("tree", tree_version="v5.19-rc1"), name="x")
        assert isinstance(s, TreeSrcu) and s.tree_version == "v5.19-rc1"
        assert TreeSrcu(rt, 2, name="y").tree_version == "v5.10"  # the default

    vrun(body)
    message = r"srcu tree_version must be one of v5\.10, v5\.19-rc1, v6\.6 .*got 'v5\.19'"
    with pytest.raises(ValueError, match=message):
        SrcuOptions("tree", tree_version="v5.19")
    with pytest.raises(ValueError, match=message):
        TreeSrcu(Runtime(None), 2, tree_version="v5.19")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match=r"sim config srcu_tree_version: expected one of \('v5\.10', 'v5\.19-rc1', 'v6\.6'\), got '6\.6'"):
        SimConfig(srcu_tree_version="6.6")
    with pytest.raises(ScenarioError, match=r"srcu\.tree_version: expected one of v5\.10, v5\.19-rc1, v6\.6, got 'v5\.19'"):
        load_scenario("quickstart").with_overrides(["srcu.tree_version=v5.19"])
    s = load_scenario("quickstart").with_overrides(["srcu.algorithm=tree", "srcu.tree_version=v6.6"])
    assert s.sim_config().srcu == SrcuOptions("tree", tree_version="v6.6")
