"""The SRCU of nodes/srcu.py (Linux v3.10 kernel/srcu.c), on virtual time; the properties any
SRCU must have are parametrized over both algorithms (``ALGORITHMS``: classic, and Tree SRCU of
nodes/srcu_tree.py, whose own tests are in test_srcu_tree.py).

Timing facts of the algorithm the exact-time assertions below rely on (reader delay 5 us):
- the fast path checks an index ``trycount`` times, ``reader_delay_us`` apart, so a normal
  synchronize called at ``t`` with an old reader active gives up at ``t + 5`` and hands the
  grace period to the worker, which first runs at ``t + 5 + jiffy`` and then once per jiffy;
- a worker run that finds the old index empty completes the waiters at that instant.
"""

from __future__ import annotations

import asyncio
import bisect
import itertools
import random
from dataclasses import dataclass

import pytest

from nodes.errors import InternalError, SleepingInAtomicContext, SrcuDeadlock
from nodes.runtime import Runtime, SpinLock, current_cpu
from nodes.partition import SRCU_ALGORITHMS
from nodes.srcu import SRCU_CALLBACK_BATCH, Srcu
from nodes.srcu_tree import SRCU_STATE_IDLE, TreeSrcu

ALGORITHMS = tuple(SRCU_ALGORITHMS)

DELAY = 5.0  # SYNCHRONIZE_SRCU_READER_DELAY_US
OWN = 2 * 11 * DELAY  # longest fast path: two expedited polls of 12 tries, 5 us apart


async def hold_reader(rt: Runtime, srcu: Srcu, us: float, cpu: int = 0, unlock_cpu: int | None = None,
                      log: list | None = None) -> int:
    """A reader that takes the read lock now, sleeps ``us`` and unlocks; logs (start, end)."""
    idx = srcu.read_lock(cpu)
    start = rt.now()
    await rt.sleep(us)
    srcu.read_unlock(idx, cpu if unlock_cpu is None else unlock_cpu)
    if log is not None:
        log.append((start, rt.now()))
    return idx


def net_count(s, cpu: int, idx: int) -> int:
    """Read sections counted on ``cpu`` for index ``idx``: classic's c[cpu][idx], Tree SRCU's
    lock - unlock counts (negative where readers unlocked on this CPU what they locked
    elsewhere)."""
    if isinstance(s, TreeSrcu):
        sdp = s.sda[cpu]
        return sdp.srcu_lock_count[idx] - sdp.srcu_unlock_count[idx]
    return s.c[cpu][idx]


def idle(s) -> bool:
    """No grace period running or wanted, nothing queued."""
    if isinstance(s, TreeSrcu):
        return s.gp_state() == SRCU_STATE_IDLE and not s.work.pending and s.srcu_gp_seq == s.srcu_gp_seq_needed
    return not s.running


def first_tick_after(first: float, period: float, t: float) -> float:
    """The first of ``first, first+period, ...`` strictly after ``t`` (no tie allowed: a tie
    would make the answer depend on timer order, which the tests avoid by construction)."""
    tick = first
    while tick <= t:
        assert tick != t, f"test setup error: worker tick {tick} coincides with event at {t}"
        tick += period
    return tick


# -- fast path, single reader, flips ------------------------------------------------------------


def test_no_readers_fast_path_takes_no_time(vrun):
    async def body(rt: Runtime):
        s = Srcu(rt, 4, name="s")
        await s.synchronize()
        assert rt.now() == 0.0
        st = s.statistics()
        assert st.completed == 1
        assert st.fast_path_completions == 1
        assert st.grace_periods == 1
        assert st.worker_runs == 0
        assert st.reader_checks == 2  # one check per index, each succeeding at once
        assert st.waits == 1 and st.wait_total_us == 0.0 and st.wait_max_us == 0.0
        await s.synchronize()
        await s.synchronize_expedited()
        st = s.statistics()
        assert rt.now() == 0.0
        assert st.completed == 3  # one flip per grace period
        assert st.fast_path_completions == 3
        assert st.synchronize_calls == 3 and st.expedited_calls == 1
        assert not s.running and rt.pending_tasks == 0

    vrun(body)


@pytest.mark.parametrize(
    "T, jiffy",
    [(3500, 1000), (3500, 250), (12345, 1000), (800, 1000), (30_000, 4000)],
)
def test_single_sleeping_reader_delays_synchronize(vrun, settle, T, jiffy):
    async def body(rt: Runtime):
        s = Srcu(rt, 2, name="s", jiffy_us=jiffy)
        log: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, T, log=log), name="reader")
        await settle(rt)  # t=1: the reader holds index 0
        t_call = rt.now()
        assert t_call == 1.0 and s.readers_active() == 1
        await s.synchronize()
        t_ret = rt.now()
        ((r_start, r_end),) = log
        assert (r_start, r_end) == (0.0, float(T))
        assert r_end <= t_ret <= T + 2 * jiffy
        # two fast-path tries at t=1 and t=6 fail; the worker polls at 6 + k*jiffy
        expected = first_tick_after(t_call + DELAY + jiffy, jiffy, r_end)
        assert t_ret == expected
        st = s.statistics()
        assert st.fast_path_completions == 0
        assert st.worker_runs == round((expected - (t_call + DELAY)) / jiffy)
        assert st.completed == 1 and st.grace_periods == 1
        assert st.wait_max_us == expected - t_call

    vrun(body)


def test_reader_starting_after_the_flip_does_not_delay_the_grace_period(vrun, settle):
    async def body(rt: Runtime):
        s = Srcu(rt, 2, name="s")
        old: list[tuple[float, float]] = []
        new: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, 3500, log=old), name="old-reader")
        await settle(rt)  # t=1
        ret: list[float] = []

        async def sync() -> None:
            await s.synchronize()
            ret.append(rt.now())

        rt.spawn(sync(), name="sync")
        await settle(rt)  # t=2: the synchronize has flipped and polls index 0
        assert s.completed == 1
        new_task = rt.spawn(hold_reader(rt, s, 100_000, log=new), name="new-reader")
        await settle(rt)  # t=3
        assert s.c[0] == [1, 1]  # the old reader on index 0, the new one on index 1
        while not ret:
            assert rt.now() < 50_000, "synchronize never returned"
            await rt.sleep(100)
        # the old reader ends at 3500; the worker polls at 1006, 2006, 3006, 4006
        assert ret == [4006.0]
        assert old == [(0.0, 3500.0)]
        assert new == [] and not new_task.done()  # still reading when the grace period ended
        # a later synchronize *does* wait for it: it began before that call
        t_call = rt.now()
        await s.synchronize()
        assert new == [(2.0, 100_002.0)]
        assert rt.now() == first_tick_after(t_call + DELAY + 1000, 1000, 100_002.0)
        assert s.completed == 2

    vrun(body)


def test_reader_may_unlock_on_another_cpu(vrun, settle):
    async def body(rt: Runtime):
        s = Srcu(rt, 4, name="s")
        t = rt.spawn(hold_reader(rt, s, 2500, cpu=0, unlock_cpu=3), name="migrating-reader")
        await settle(rt)
        assert s.c[0][0] == 1 and s.readers_active() == 1
        await s.synchronize()  # waits for the reader even though it unlocks elsewhere
        assert t.done() and rt.now() == 3006.0
        # per-CPU counters: +1 on CPU 0, -1 on CPU 3, the sum is what counts
        assert s.c[0][0] == 1 and s.c[3][0] == -1
        assert sum(c[0] for c in s.c) == 0 and s.readers_active() == 0
        assert s.seq[0][0] == 1
        t0 = rt.now()
        await s.synchronize()  # no reader left: fast path, no time
        assert rt.now() == t0
        assert s.statistics().fast_path_completions == 1

    vrun(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_reader_api_misuse_is_named(vrun, algorithm):
    kind = SRCU_ALGORITHMS[algorithm]

    async def body(rt: Runtime):
        s = kind(rt, 2, name="dom")
        with pytest.raises(ValueError, match=r"cpu 2 outside 0\.\.1 of SRCU domain dom"):
            s.read_lock(2)
        with pytest.raises(ValueError, match="index must be 0 or 1, got 7"):
            s.read_unlock(7)
        with pytest.raises(InternalError, match=r"srcu_read_unlock\(1\) on dom with no reader"):
            s.read_unlock(1)
        idx = s.read_lock(1)
        with pytest.raises(ValueError, match="cpu -1 outside"):
            s.read_unlock(idx, -1)
        s.read_unlock(idx, 0)
        assert s.readers_active() == 0

    vrun(body)
    with pytest.raises(ValueError, match="at least one CPU"):
        kind(Runtime(None), 0)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="jiffy_us=0"):
        kind(Runtime(None), 1, jiffy_us=0)  # type: ignore[arg-type]


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_read_section_context_manager_unlocks_on_error(vrun, algorithm):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 2, name="s")
        with pytest.raises(KeyError):
            async with s.read_section(cpu=1, unlock_cpu=0) as idx:
                assert idx == 0 and s.readers_active() == 1
                raise KeyError("inside")
        assert s.readers_active() == 0
        assert net_count(s, 1, 0) == 1 and net_count(s, 0, 0) == -1

    vrun(body)


# -- batching, expedited, call_srcu ------------------------------------------------------------


@pytest.mark.parametrize("n_late", [8, 15])
def test_concurrent_synchronize_calls_share_grace_periods(vrun, settle, n_late):
    async def body(rt: Runtime):
        s = Srcu(rt, 2, name="s")
        rt.spawn(hold_reader(rt, s, 3500), name="reader")
        await settle(rt)  # t=1
        rets: list[tuple[str, float]] = []

        async def sync(name: str) -> None:
            await s.synchronize()
            rets.append((name, rt.now()))

        rt.spawn(sync("owner"), name="owner")  # runs the grace period, hands it to the worker
        await rt.sleep(9)  # t=10: the grace period is running
        for i in range(n_late):
            rt.spawn(sync(f"late{i}"), name=f"late{i}")
        await rt.join()
        assert len(rets) == 1 + n_late
        st = s.statistics()
        # the owner's grace period, then one more for every caller that queued behind it
        assert st.grace_periods == 2 < 1 + n_late
        assert st.completed == 2
        assert st.synchronize_calls == 1 + n_late and st.waits == 1 + n_late
        # the worker at 4006 ends both grace periods and wakes at most SRCU_CALLBACK_BATCH
        # waiters; the rest are woken by the next worker run, one jiffy later
        first = min(1 + n_late, SRCU_CALLBACK_BATCH)
        assert rets[0] == ("owner", 4006.0)
        assert [t for _, t in rets] == [4006.0] * first + [5006.0] * (1 + n_late - first)

    vrun(body)


def test_expedited_finishes_inline_where_normal_needs_the_worker(vrun, settle):
    async def run(rt: Runtime, expedited: bool) -> tuple[float, object]:
        s = Srcu(rt, 2, name="exp" if expedited else "norm")
        rt.spawn(hold_reader(rt, s, 30), name="short-reader")
        await settle(rt)  # t=1
        t0 = rt.now()
        await (s.synchronize_expedited() if expedited else s.synchronize())
        return rt.now() - t0, s.statistics()

    async def body_exp(rt: Runtime):
        return await run(rt, True)

    async def body_norm(rt: Runtime):
        return await run(rt, False)

    wait, st = vrun(body_exp)
    # 12 tries at 1, 6, ..., 56: the reader ends at 30, the check at 31 finds it gone
    assert wait == 30.0
    assert st.fast_path_completions == 1 and st.worker_runs == 0 and st.expedited_calls == 1
    assert st.reader_checks == 1 + 7  # inactive index once, then 7 checks of the old one
    wait, st = vrun(body_norm)
    # 2 tries at 1 and 6 fail; the worker runs at 1006
    assert wait == 1005.0
    assert st.fast_path_completions == 0 and st.worker_runs == 1 and st.expedited_calls == 0


def test_expedited_with_a_long_reader_falls_back_to_the_worker(vrun, settle):
    async def body(rt: Runtime):
        s = Srcu(rt, 1, name="s")
        rt.spawn(hold_reader(rt, s, 1000), name="reader")
        await settle(rt)
        await s.synchronize_expedited()
        # 12 tries from t=1 to t=56 fail; the worker runs at 1056
        assert rt.now() == 1056.0
        st = s.statistics()
        assert st.fast_path_completions == 0 and st.worker_runs == 1

    vrun(body)


def test_call_srcu_runs_after_the_grace_period(vrun, settle):
    async def body(rt: Runtime):
        s = Srcu(rt, 2, name="s")
        log: list[tuple[float, float]] = []
        rt.spawn(hold_reader(rt, s, 3500, log=log), name="reader")
        await settle(rt)  # t=1
        ran: list[tuple[float, int]] = []
        s.call_srcu(lambda: ran.append((rt.now(), s.readers_active())), "cb")
        assert rt.now() == 1.0 and ran == []  # call_srcu does not wait
        await rt.sleep(3499)  # t=3500: the reader is exiting right now
        assert ran == []
        await rt.join()
        # the worker starts at once (t=1), flips, polls at 6: busy; then 1006, ..., 4006
        assert ran == [(4006.0, 0)]
        assert log == [(0.0, 3500.0)]
        st = s.statistics()
        assert st.call_srcu_calls == 1 and st.callbacks_invoked == 1 and st.grace_periods == 1
        assert not s.running

    vrun(body)


@pytest.mark.parametrize("algorithm, at", [("classic", 0.0), ("tree", 2000.0)])
def test_call_srcu_non_suspending_async_callback_is_fine(vrun, algorithm, at):
    """Classic: the worker starts at once and finds no reader. Tree: a normal grace period,
    process_srcu one jiffy later, the callbacks one more jiffy after its end."""
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 1, name="s")
        ran: list[float] = []

        async def cb() -> int:
            ran.append(rt.now())
            return 1

        s.call_srcu(cb, "async-cb")
        await rt.join()
        assert ran == [at]

    vrun(body)


@pytest.mark.parametrize(
    "how, message",
    [
        ("runtime.sleep", r"sleeping function sleep called from atomic context \(inside srcu callback bad-cb on dom\)"),
        ("clock.sleep", r"scheduling while atomic: srcu callback bad-cb on dom suspended"),
    ],
)
@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_call_srcu_callback_that_sleeps_is_a_bug(vrun, how, message, algorithm):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 1, name="dom")
        reached: list[str] = []

        async def cb() -> None:
            reached.append("before")
            if how == "runtime.sleep":
                await rt.sleep(10)
            else:
                await rt.clock.sleep(10)
            reached.append("after")  # never: the callback is not half-run

        s.call_srcu(cb, "bad-cb")
        with pytest.raises(SleepingInAtomicContext, match=message):
            await rt.join()
        assert reached == ["before"]
        with pytest.raises(SleepingInAtomicContext):
            rt.check()

    vrun(body, join=False)


# -- synchronize inside a read section ---------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_synchronize_inside_own_read_section_is_srcu_deadlock(vrun, algorithm):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 2, name="dom")
        other = SRCU_ALGORITHMS[algorithm](rt, 2, name="other")
        await rt.sleep(100)  # past Tree SRCU's exp_holdoff: an idle domain is expedited
        idx = s.read_lock(1)
        with pytest.raises(SrcuDeadlock, match="Illegal synchronize_srcu.. on dom inside its own read-side"):
            await s.synchronize()
        with pytest.raises(SrcuDeadlock):
            await s.synchronize_expedited()
        assert s.statistics().synchronize_calls == 0
        await other.synchronize()  # another domain: fine, and instantaneous
        assert rt.now() == 100.0 and other.completed == 1
        s.read_unlock(idx, 1)
        await s.synchronize()
        assert s.completed == 1

    vrun(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_synchronize_inside_read_section_context_manager_is_srcu_deadlock(vrun, algorithm):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 1, name="dom")
        async with s.read_section():
            async with s.read_section():
                pass
            with pytest.raises(SrcuDeadlock):  # still one section open
                await s.synchronize()
        await s.synchronize()

    vrun(body)


@pytest.mark.parametrize("algorithm, at", [("classic", 2005.0), ("tree", 3005.0)])
def test_synchronize_from_another_task_waits_for_the_reader(vrun, settle, algorithm, at):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 1, name="dom")
        done: list[float] = []

        async def other() -> None:
            await s.synchronize()
            done.append(rt.now())

        idx = s.read_lock()
        rt.spawn(other(), name="other")
        await rt.sleep(2000)
        assert done == []
        s.read_unlock(idx)
        await rt.join()
        # classic: tries at 0 and 5; worker at 1005, 2005. Tree (a normal grace period: the
        # domain is new): process_srcu at 1000 (checks 1000, 1005), 2005 finds the reader
        # gone; the waiter's callback runs a jiffy later
        assert done == [at]

    vrun(body)


@pytest.mark.parametrize("algorithm", ALGORITHMS)
def test_synchronize_under_a_spinlock_is_sleeping_in_atomic(vrun, algorithm):
    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 1, name="dom")
        with SpinLock("ptl"):
            with pytest.raises(SleepingInAtomicContext, match=r"synchronize_srcu\(dom\).*inside spinlock ptl"):
                await s.synchronize()

    vrun(body)


# -- the overlapping-readers bound --------------------------------------------------------------


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("T", [3000, 7000, 20_000])
def test_synchronize_completes_under_continuous_overlapping_readers(vrun, T, algorithm):
    """Readers each lasting T, a new one every T/4 forever: the partition never has zero
    readers, yet a grace period ends, because readers after the flip use the other index."""
    J = 1000.0

    async def body(rt: Runtime):
        s = SRCU_ALGORITHMS[algorithm](rt, 4, name="s", jiffy_us=J)
        starts: list[float] = []
        stop = [False]

        async def reader(cpu: int) -> None:
            idx = s.read_lock(cpu)
            starts.append(rt.now())
            await rt.sleep(T)
            s.read_unlock(idx, (cpu + 1) % 4)

        async def spawner() -> None:
            i = 0
            while not stop[0]:
                rt.spawn(reader(i % 4), name=f"reader{i}")
                i += 1
                await rt.sleep(T / 4)

        rt.spawn(spawner(), name="spawner")
        results: dict[str, tuple[float, float, int]] = {}

        async def sync(name: str) -> None:
            t0 = rt.now()
            await s.synchronize()
            results[name] = (t0, rt.now(), s.readers_active())

        t_a = 8 * T + 137  # in the middle of the stream, not at a reader boundary
        await rt.sleep(t_a)
        rt.spawn(sync("a"), name="sync-a")
        await rt.sleep(T / 2)
        rt.spawn(sync("b"), name="sync-b")  # queues behind a's grace period
        while len(results) < 2:
            assert rt.now() < t_a + 20 * T, f"no grace period after {rt.now() - t_a} us: starved"
            await rt.sleep(J)
        stop[0] = True
        await rt.join()

        a0, a1, a_readers = results["a"]
        b0, b1, b_readers = results["b"]
        assert a0 == t_a and b0 == t_a + T / 2
        assert a_readers > 0 and b_readers > 0  # never a moment without readers

        def last_end_before(t: float) -> float:
            return max(x for x in starts if x < t) + T

        for t0, t1 in ((a0, a1), (b0, b1)):
            assert t1 - t0 <= 2 * T + 2 * J
            assert last_end_before(t0) <= t1  # every reader begun before the call had ended
        if algorithm == "tree":  # its own timing is in test_srcu_tree.py
            assert s.completed >= 2 and s.statistics().grace_periods >= 2
            return

        # a flips at t_a; its old index drains at the end of the last reader before t_a; the
        # worker polls at t_a + 5 + k*J. The run that finds it drained has already collected
        # b: it flips for b at that tick, polls b's old index twice (tick, tick + 5) in vain,
        # and only then invokes the callbacks, waking a at tick + 5.
        tick_a = first_tick_after(t_a + DELAY + J, J, last_end_before(t_a))
        assert a1 == tick_a + DELAY
        # b waits for the readers that began before its flip at tick_a; the worker polls at
        # tick_a + 5 + k*J
        exp_b = first_tick_after(tick_a + DELAY + J, J, last_end_before(tick_a))
        assert b1 == exp_b
        assert s.completed == 2 and s.statistics().grace_periods == 2

    vrun(body)


# -- torture ------------------------------------------------------------------------------------


@dataclass
class _Reader:
    start_seq: int
    start: float
    end_seq: int = -1
    end: float = -1.0


@dataclass
class _Sync:
    call_seq: int
    call: float
    expedited: bool
    ret_seq: int = -1
    ret: float = -1.0
    completed_after: int = -1
    readers_at_ret: int = -1


@dataclass
class _Cb:
    call_seq: int
    run_seq: int = -1


class _TracingSrcu(Srcu):
    """An Srcu that records every flip (write to ``completed``) as (seq, time, value)."""

    def __init__(self, *args, seq: itertools.count, **kw):
        self._seq = seq
        self.flips: list[tuple[int, float, int]] = []
        super().__init__(*args, **kw)

    @property
    def completed(self) -> int:  # type: ignore[override]
        return self._completed

    @completed.setter
    def completed(self, value: int) -> None:
        if hasattr(self, "_completed"):
            assert value == self._completed + 1, "completed only ever advances by one flip"
            self.flips.append((next(self._seq), self.runtime.now(), value))
        self._completed = value


class _TracingTreeSrcu(TreeSrcu):
    """A TreeSrcu that records every flip (srcu_flip()) as (seq, time, srcu_idx after it)."""

    def __init__(self, *args, seq: itertools.count, **kw):
        self._seq = seq
        self.flips: list[tuple[int, float, int]] = []
        super().__init__(*args, **kw)

    def _flip(self) -> None:
        super()._flip()
        self.flips.append((next(self._seq), self.runtime.now(), self.srcu_idx))


@pytest.mark.parametrize("algorithm", ALGORITHMS)
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_torture(vrun, seed, algorithm):
    """rcutorture-style: sleeping readers on random CPUs (unlocking on random CPUs), several
    concurrent synchronizers (some expedited) on their own CPUs and a call_srcu stream, for
    4000 virtual ms; readers pause for 40 ms in every 100 ms. Tree SRCU runs with two CPUs per
    leaf, so requests funnel through two srcu_nodes. The flip-timing bounds (2. below) are
    classic's; the rest holds for both.
    Events are ordered by a global sequence number, so same-instant ties are exact."""
    NCPUS, J = 4, 1000.0
    DURATION = 4_000_000.0
    N_READERS, N_SYNCS = 8, 4

    async def body(rt: Runtime):
        rng = random.Random(seed)
        seq = itertools.count()
        if algorithm == "tree":
            s = _TracingTreeSrcu(rt, NCPUS, name="torture", jiffy_us=J, seq=seq, fanout_leaf=2)
        else:
            s = _TracingSrcu(rt, NCPUS, name="torture", jiffy_us=J, seq=seq)
        readers: list[_Reader] = []
        syncs: list[_Sync] = []
        cbs: list[_Cb] = []
        negative_cpu_counter = [False]

        def reader_len() -> float:
            r = rng.random()
            if r < 0.6:
                return rng.uniform(0, 20)
            if r < 0.9:
                return rng.uniform(0, 3 * J)
            return rng.uniform(0, 25 * J)

        async def reader_stream() -> None:
            while rt.now() < DURATION:
                await rt.sleep(rng.expovariate(1 / 300))
                # readers pause in the last 40 ms of every 100 ms, so grace periods see both
                # a busy domain (worker path) and an idle one (fast path)
                phase = rt.now() % 100_000
                if phase > 60_000:
                    await rt.sleep(100_000 - phase)
                cpu = rng.randrange(NCPUS)
                idx = s.read_lock(cpu)
                assert idx == s.completed & 1
                rec = _Reader(next(seq), rt.now())
                readers.append(rec)
                await rt.sleep(reader_len())
                s.read_unlock(idx, rng.randrange(NCPUS))
                rec.end_seq, rec.end = next(seq), rt.now()
                assert all(sum(net_count(s, c, i) for c in range(NCPUS)) >= 0 for i in (0, 1))
                if any(net_count(s, c, i) < 0 for c in range(NCPUS) for i in (0, 1)):
                    negative_cpu_counter[0] = True

        async def sync_stream(i: int) -> None:
            current_cpu.set(i % NCPUS)  # Tree SRCU files each request on this CPU's srcu_data
            while rt.now() < DURATION:
                await rt.sleep(rng.uniform(0, 3 * J))
                rec = _Sync(next(seq), rt.now(), rng.random() < 0.3)
                syncs.append(rec)
                await (s.synchronize_expedited() if rec.expedited else s.synchronize())
                rec.ret_seq, rec.ret = next(seq), rt.now()
                rec.completed_after = s.completed
                rec.readers_at_ret = s.readers_active()

        async def callback_stream() -> None:
            current_cpu.set(NCPUS - 1)
            while rt.now() < DURATION:
                await rt.sleep(rng.uniform(0, 2 * J))
                rec = _Cb(next(seq))
                cbs.append(rec)
                done = asyncio.Event()

                def cb(rec: _Cb = rec, done: asyncio.Event = done) -> None:
                    rec.run_seq = next(seq)
                    done.set()

                s.call_srcu(cb, "torture-cb")
                await done.wait()

        for i in range(N_READERS):
            rt.spawn(reader_stream(), name=f"reader{i}")
        for i in range(N_SYNCS):
            rt.spawn(sync_stream(i), name=f"sync{i}")
        rt.spawn(callback_stream(), name="callbacks")
        await rt.join()
        return s, readers, syncs, cbs, negative_cpu_counter[0]

    s, readers, syncs, cbs, negative_cpu_counter = vrun(body)

    # sanity: the run did what it was meant to
    assert len(readers) > 10_000 and len(syncs) > 300 and len(cbs) > 100
    assert all(r.end_seq >= 0 for r in readers) and all(x.ret_seq >= 0 for x in syncs)
    assert all(c.run_seq >= 0 for c in cbs)
    assert s.readers_active() == 0 and idle(s)
    assert negative_cpu_counter
    st = s.statistics()
    assert st.worker_runs > 0 and st.expedited_calls > 0
    if algorithm == "classic":
        assert st.fast_path_completions > 0
    else:  # idle domains expedited, and requests shared at an srcu_node
        assert st.auto_expedited > 0 and st.funnel_shared > 0
    assert st.grace_periods < len(syncs) + len(cbs)  # batching happened
    assert st.completed == len(s.flips)

    # readers sorted by start; prefix maxima of their ends answer "have all readers that
    # started before event X ended before event Y?" in O(log n)
    readers.sort(key=lambda r: r.start_seq)
    start_seqs = [r.start_seq for r in readers]
    max_end_seq = list(itertools.accumulate((r.end_seq for r in readers), max))
    max_end = list(itertools.accumulate((r.end for r in readers), max))
    flip_seqs = [f[0] for f in s.flips]

    def latest_end_of_readers_before(seq_no: int) -> tuple[int, float]:
        n = bisect.bisect_left(start_seqs, seq_no)
        return (max_end_seq[n - 1], max_end[n - 1]) if n else (-1, float("-inf"))

    overlapped = 0
    for x in syncs:
        # 1. the grace period waits for every reader that began before the call
        end_seq, _ = latest_end_of_readers_before(x.call_seq)
        assert end_seq < x.ret_seq, f"{x}: a reader that began before the call was still reading"
        # a grace period contains a flip
        lo = bisect.bisect_right(flip_seqs, x.call_seq)
        hi = bisect.bisect_left(flip_seqs, x.ret_seq)
        after = s.flips[lo:hi]
        assert after, f"{x}: returned without a flip after the call"
        # ... and every reader that began before the first flip after the call has ended
        end_seq, _ = latest_end_of_readers_before(after[0][0])
        assert end_seq < x.ret_seq
        # 2. readers that began after the flip that serves this call never delay it. The
        # serving flip is the first flip after the call, or the second when the call queued
        # behind a fast path that was about to flip (that flip comes within OWN of the call).
        # A flip happens at the first worker run (one every <= J + DELAY, a run lasting at most
        # DELAY) after the call was collected and the inactive index drained; the inactive
        # index then holds only readers that began before the previous flip. So, with
        # slack = J + 2*DELAY:
        #   first flip  <= max(call + OWN, end of readers that began before the call) + slack
        #   second flip <= max(first flip, call + OWN, end of readers before the first) + slack
        #   return      <= max(serving flip, end of readers that began before it) + slack
        # A grace period that waited for a reader beginning after its flip, or a flip that
        # waited for readers of the active index, overshoots these once the readers are long.
        # Tree SRCU: no fast path (own = 0); the serving flip is the first after the call, or
        # the second when the call came while a grace period was in SCAN1 (that one flips
        # first); a run checks the index at most J + DELAY after the previous one, and the
        # callbacks run at most a jiffy after the grace period ends: slack = 2J + 2*DELAY.
        own, slack = (OWN, J + 2 * DELAY) if algorithm == "classic" else (0.0, 2 * J + 2 * DELAY)
        _, end_before_call = latest_end_of_readers_before(x.call_seq)
        first = after[0]
        assert first[1] <= max(x.call + own, end_before_call) + slack, f"{x}: first flip {first} late"
        if len(after) > 1:
            _, end_before_first = latest_end_of_readers_before(first[0])
            second = after[1]
            bound = max(first[1], x.call + own, end_before_first) + slack
            assert second[1] <= bound, f"{x}: second flip {second} later than {bound}"
        serving = after[min(1, len(after) - 1)]
        _, last_end = latest_end_of_readers_before(serving[0])
        bound = max(serving[1], last_end, x.call + own) + slack
        assert x.ret <= bound, f"{x}: delayed past {bound} by readers that began after its flip"
        if x.readers_at_ret > 0:
            overlapped += 1
    # the bound had bite: many grace periods ended while later readers were still reading
    assert overlapped > 100

    for c in cbs:
        end_seq, _ = latest_end_of_readers_before(c.call_seq)
        assert end_seq < c.run_seq, f"{c}: callback ran before a pre-existing reader ended"
