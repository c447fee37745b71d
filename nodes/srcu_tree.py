"""Sleepable RCU, Tree SRCU of Linux 4.12+ ``kernel/rcu/srcutree.c``, as of v5.10, with the
delay policy of v5.10, v5.19-rc1 or v6.6 (``tree_version``).

History: dad81a2026841b (2017-03-25) started ``kernel/rcu/srcutree.c``; da915ad5cf25 ("srcu:
Parallelize callback handling", 4.12) gave it the ``srcu_node`` combining tree, the per-CPU
``srcu_data`` with their own callback lists, and the grace-period sequence ``srcu_gp_seq``;
2da4b2a7fd8d ("srcu: Expedite first synchronize_srcu() when idle", 4.12) made a
``synchronize_srcu()`` on an idle domain expedited, holding off for ``exp_holdoff`` (25 us) after
a grace period. This module models v5.10 (the LTS kernel the modern notifier modes use); what
later kernels changed in the delay policy is modelled as ``tree_version`` (below), the rest of
what v6.6 changed is listed at the end.

Readers, per CPU (struct srcu_data), on the index ``srcu_idx & 1``::

    read_lock(cpu):          idx = srcu_idx & 1; srcu_lock_count[idx] += 1 (this cpu); mb B
    read_unlock(idx, cpu):   mb C; srcu_unlock_count[idx] += 1 (this cpu, maybe another one)
    readers_active_idx_check(idx): u = sum(unlock[idx]); mb A; return sum(lock[idx]) == u

Unlocks are summed first: a reader counted in ``u`` was counted in the locks too, so equality
means the index had no reader at some instant of the check. Readers that start after the flip
use the other index and never delay the grace period (no starvation).

Grace periods: ``srcu_gp_seq`` carries a counter and, in its two low bits, the state
(SRCU_STATE_IDLE, SCAN1, SCAN2); ``rcu_seq_snap()`` is the value at which a grace period that
starts after now has ended. A request files a callback and funnels the need up the tree::

    __call_srcu(cb, do_norm) on this cpu's srcu_data:
        enqueue cb; advance(srcu_gp_seq); s = snap(srcu_gp_seq); accelerate(s)
        if srcu_data.srcu_gp_seq_needed < s: srcu_funnel_gp_start(s)
        elif expedited and srcu_data.srcu_gp_seq_needed_exp < s: srcu_funnel_exp_start(s)
    srcu_funnel_gp_start(s): leaf to root, record s in srcu_have_cbs[ctr(s) % 4] (and this
        CPU's bit in the leaf's srcu_data_have_cbs); stop at the first node already holding
        s or later: that request shares a grace period someone else asked for. At the root:
        srcu_gp_seq_needed = s; if idle, srcu_gp_start() and queue process_srcu after
        srcu_get_delay().
    process_srcu (a delayed work): srcu_advance_state(); srcu_reschedule(srcu_get_delay())
    srcu_advance_state:
        IDLE:  nothing needed: return; else srcu_gp_start() -> SCAN1
        SCAN1: try_check_zero(inactive index, 1), else retry later; srcu_flip() -> SCAN2
        SCAN2: try_check_zero(old index, 2), else retry later; srcu_gp_end()
    srcu_gp_end: rcu_seq_end(); each leaf whose srcu_have_cbs holds this grace period
        schedules srcu_invoke_callbacks on the CPUs of srcu_data_have_cbs after
        srcu_get_delay() (taken before the end); the next grace period starts at once if
        one is needed.
    srcu_get_delay: 0 while an expedited grace period is needed (srcu_gp_seq <
        srcu_gp_seq_needed_exp), else SRCU_INTERVAL (one jiffy).
    try_check_zero(idx, n): n checks, n + 1 when expedited, SRCU_RETRY_CHECK_DELAY (5 us) apart.
    synchronize_srcu: srcu_might_be_idle() ? synchronize_srcu_expedited : __synchronize_srcu;
        both = __call_srcu(wakeme_after_rcu) and wait for it.

So with no reader an expedited grace period takes no time, a normal one two jiffies (one to
the first process_srcu, one more to the callback invocation); a reader sleeping T holds a
normal one to the first jiffy poll after T plus a jiffy, and an expedited one to about T
(v5.10 re-runs process_srcu at once, checking every 5 us, for as long as readers remain).

The delay policy by version (``tree_version``; ``jiffies`` is the tick count, now // jiffy)::

    v5.10 (4.12 to 5.18): as above.
    v5.19-rc1, 282d8998e997 "srcu: Prevent expedited GPs and blocking readers from consuming
    CPU" (an expedited grace period waiting for a reader that sleeps re-ran process_srcu
    without end, and kept kernel live patching from getting its CPU):
        srcu_gp_start: srcu_gp_start = jiffies; srcu_n_exp_nodelay = 0 (also after the flip
            and before srcu_gp_end: a new phase)
        srcu_get_delay: jbase = 0 if expedited else SRCU_INTERVAL; while a grace period is in
            progress jbase += jiffies - srcu_gp_start; a 0 is a no-delay instance, and past
            SRCU_MAX_NODELAY_PHASE (1) of them in the phase it is 1; at most SRCU_MAX_INTERVAL (10)
        srcu_gp_end, srcu_funnel_gp_start: !!srcu_get_delay(): one jiffy, or none
        process_srcu: past SRCU_MAX_NODELAY (100) no-delay runs in one jiffy, delay one jiffy
    So an expedited grace period whose second check finds a reader sleeps a jiffy, and being a
    jiffy old by then, delays its callbacks one more: a reader of microseconds costs two
    jiffies (8 ms at HZ 250; the qemu boot of the report, workloads/scenarios/
    srcu-expedited-regression.yaml).
    v6.6, the two fixes in v5.19 (unchanged in the delay policy to v6.6):
        8f870e6eb8c0 "srcu: Block less aggressively for expedited grace periods": the age is
            counted from the jiffy before this one (time_after(jiffies - 1, srcu_gp_start)),
            no-delay instances only while a grace period is in progress, SRCU_MAX_NODELAY_PHASE 3;
        4f2bfd9494a0 "srcu: Make expedited RCU grace periods block even less frequently": the
            limits are the parameters srcu_max_nodelay_phase (default 2 * USEC_PER_SEC / HZ /
            5, clamped to 3..1000: about a jiffy of 5 us polls, counting process_srcu's own
            reading) and srcu_max_nodelay (that or 100 if larger; srcu_nodelay_limits());
            srcu_retry_check_delay (5 us) is try_check_zero()'s udelay; try_check_zero() reads
            the delay once, before its first check; srcu_gp_end's callback delay is 0 after
            an expedited grace period, else one jiffy.

Workqueues: ``process_srcu`` and each CPU's ``srcu_invoke_callbacks`` are work items: queueing
one that is already pending does nothing, and one execution runs at a time. A delay of n
jiffies is n * ``jiffy_us`` from now (as in ``nodes/srcu.py``; the kernel's timer fires at the
n-th tick, up to a jiffy sooner). ``rcu_gp_is_expedited()`` (the rcupdate.rcu_expedited boot
parameter) is not modelled: false. Python integers do not wrap, so ``counter_wrap_check`` is not
modelled either. v5.10's ``__call_srcu`` holds ``srcu_read_lock()`` while it files the request;
filing does not sleep here, so no grace period could see that reader: not modelled.

Not modelled from v5.19-rc1 on, whatever ``tree_version``: an ``srcu_struct`` starts small
(``srcu_size_state`` SRCU_SIZE_SMALL, also 5.19-rc1: every callback on CPU 0's ``srcu_data``, no
``srcu_node`` tree) and becomes big on contention; ``__call_srcu`` became
``srcu_gp_start_if_needed`` with the polled grace-period API; the srcu_max_nodelay_phase,
srcu_max_nodelay and srcu_retry_check_delay boot parameters keep their defaults (attributes of a
domain, ``reader_delay_us`` for the last). The delays stay n * jiffy from now where the kernel's
timer fires at the n-th tick, while the age counts ticks.
"""

from __future__ import annotations

import asyncio
import inspect
import math
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from nodes.errors import InternalError
from nodes.runtime import Runtime, current_cpu, might_sleep
from nodes.srcu_base import (
    DEFAULT_JIFFY_US,
    SYNCHRONIZE_SRCU_READER_DELAY_US,
    SrcuBase,
    SrcuCallback,
    SrcuStatistics,
)

# kernel/rcu/rcu.h: the grace-period sequence
RCU_SEQ_CTR_SHIFT = 2
RCU_SEQ_STATE_MASK = (1 << RCU_SEQ_CTR_SHIFT) - 1
# include/linux/srcutree.h
SRCU_STATE_IDLE = 0
SRCU_STATE_SCAN1 = 1
SRCU_STATE_SCAN2 = 2
SRCU_HAVE_CBS = 4  # ARRAY_SIZE(srcu_node->srcu_have_cbs)
SRCU_INTERVAL = 1  # jiffies: the base delay when no expedited grace period is pending
# The delay policy (srcu_get_delay() and its callers) by kernel version, the srcu.tree_version
# knob; the rest of the algorithm is v5.10's in all three (see the module docstring):
#   v5.10      srcu_get_delay() is 0 or SRCU_INTERVAL (as from 4.12 to 5.18)
#   v5.19-rc1  282d8998e997 "srcu: Prevent expedited GPs and blocking readers from consuming CPU"
#   v6.6       v5.19's two fixes of it, unchanged to v6.6: 8f870e6eb8c0 "srcu: Block less
#              aggressively for expedited grace periods" and 4f2bfd9494a0 "srcu: Make expedited
#              RCU grace periods block even less frequently"
TREE_VERSIONS = ("v5.10", "v5.19-rc1", "v6.6")
DEFAULT_TREE_VERSION = "v5.10"
SRCU_MAX_INTERVAL = 10  # 282d8998e997: the most a slow reader's grace period adds, in jiffies
SRCU_MAX_NODELAY_PHASE = 1  # 282d8998e997: no-delay instances allowed per grace-period phase
SRCU_MAX_NODELAY = 100  # 282d8998e997: process_srcu runs with no delay allowed in one jiffy
# 4f2bfd9494a0: the defaults of the srcu_max_nodelay_phase and srcu_max_nodelay parameters
SRCU_DEFAULT_MAX_NODELAY_PHASE_LO = 3
SRCU_DEFAULT_MAX_NODELAY_PHASE_HI = 1000
DEFAULT_SRCU_EXP_HOLDOFF_US = 25.0  # DEFAULT_SRCU_EXP_HOLDOFF, 25 * 1000 ns: the exp_holdoff parameter
# kernel/rcu/Kconfig (64-bit): the srcu_node tree's shape, shared with Tree RCU
CONFIG_RCU_FANOUT = 64
CONFIG_RCU_FANOUT_LEAF = 16
RCU_FANOUT_RANGE = (2, 64)
RCU_NUM_LVLS_MAX = 4  # include/linux/rcu_node_tree.h

# kernel/rcu/rcu_segcblist.h: the segments of a callback list, oldest first
RCU_DONE_TAIL, RCU_WAIT_TAIL, RCU_NEXT_READY_TAIL, RCU_NEXT_TAIL = range(4)


def rcu_seq_ctr(s: int) -> int:
    return s >> RCU_SEQ_CTR_SHIFT


def rcu_seq_state(s: int) -> int:
    return s & RCU_SEQ_STATE_MASK


def rcu_seq_set_state(s: int, state: int) -> int:
    return (s & ~RCU_SEQ_STATE_MASK) + state


def rcu_seq_start(s: int) -> int:
    """The sequence once a grace period has started (state 1)."""
    if rcu_seq_state(s):
        raise InternalError(f"rcu_seq_start({s:#x}) while a grace period is in progress")
    return s + 1


def rcu_seq_end(s: int) -> int:
    """The sequence once the grace period in progress has ended (state 0, counter + 1)."""
    if not rcu_seq_state(s):
        raise InternalError(f"rcu_seq_end({s:#x}) with no grace period in progress")
    return (s | RCU_SEQ_STATE_MASK) + 1


def rcu_seq_snap(s: int) -> int:
    """The value of the sequence once a full grace period that starts after now has ended."""
    return (s + 2 * RCU_SEQ_STATE_MASK + 1) & ~RCU_SEQ_STATE_MASK


def rcu_seq_done(s: int, snap: int) -> bool:
    return s >= snap


def srcu_nodelay_limits(version: str, hz: int) -> tuple[int, int]:
    """The no-delay limits of Tree SRCU ``version`` at CONFIG_HZ ``hz``: (per grace-period phase,
    per jiffy of process_srcu runs). v5.19-rc1: SRCU_MAX_NODELAY_PHASE (1) and SRCU_MAX_NODELAY
    (100). v6.6 (4f2bfd9494a0): the parameter defaults, SRCU_DEFAULT_MAX_NODELAY_PHASE =
    2 * USEC_PER_SEC / HZ / SRCU_DEFAULT_RETRY_CHECK_DELAY (5 us) clamped to 3..1000, "to allow
    non-sleeping poll upto one jiffies time duration" (twice: process_srcu reads the delay
    too), and SRCU_DEFAULT_MAX_NODELAY, that or 100 if larger. v5.10 has no limit: (0, 0)."""
    check_tree_version(version)
    if version == "v5.10":
        return 0, 0
    if version == "v5.19-rc1":
        return SRCU_MAX_NODELAY_PHASE, SRCU_MAX_NODELAY
    phase = 2 * 1_000_000 // hz // 5  # C's unsigned long arithmetic, left to right
    phase = min(max(phase, SRCU_DEFAULT_MAX_NODELAY_PHASE_LO), SRCU_DEFAULT_MAX_NODELAY_PHASE_HI)
    return phase, max(phase, 100)


def check_tree_version(version: Any) -> str:
    """``version`` if it is one of ``TREE_VERSIONS``, else a ValueError naming it."""
    if not isinstance(version, str) or version not in TREE_VERSIONS:
        raise ValueError(f"srcu tree_version must be one of {', '.join(TREE_VERSIONS)} (the delay policy of "
                         f"that kernel's srcutree.c), got {version!r}")
    return version


def srcu_node_geometry(ncpus: int, fanout_leaf: int = CONFIG_RCU_FANOUT_LEAF,
                       fanout: int = CONFIG_RCU_FANOUT) -> tuple[list[int], list[int]]:
    """rcu_init_geometry() and rcu_init_levelspread(): the number of srcu_nodes on each level
    of the tree, root first, and each level's spread (children per node; CPUs per leaf on the
    last level), balanced over ``ncpus`` as the kernel does without rcu_fanout_exact."""
    for key, v in (("fanout_leaf", fanout_leaf), ("fanout", fanout)):
        lo, hi = RCU_FANOUT_RANGE
        if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
            raise ValueError(f"srcu {key} must be an integer in {lo}..{hi} (CONFIG_RCU_FANOUT"
                             f"{'_LEAF' if key == 'fanout_leaf' else ''}), got {v!r}")
    capacity = [fanout_leaf]
    while ncpus > capacity[-1]:
        capacity.append(capacity[-1] * fanout)
    levels = len(capacity)
    if levels > RCU_NUM_LVLS_MAX:
        raise ValueError(f"{ncpus} CPUs need a {levels}-level srcu_node tree with fanout_leaf={fanout_leaf}, "
                         f"fanout={fanout}; the kernel allows {RCU_NUM_LVLS_MAX}")
    counts = [math.ceil(ncpus / capacity[levels - 1 - i]) for i in range(levels)]
    spread = [0] * levels
    prev = ncpus
    for i in reversed(range(levels)):
        spread[i] = math.ceil(prev / counts[i])
        prev = counts[i]
    return counts, spread


class SegCbList:
    """struct rcu_segcblist: one CPU's callbacks in four segments, oldest first. DONE: ready
    to invoke; WAIT: waiting for the grace period ``gp_seq[WAIT]``; NEXT_READY: for
    ``gp_seq[NEXT_READY]``; NEXT: no grace period assigned yet. The kernel keeps one list with
    a tail pointer per segment; here each segment is its own deque, with the same operations.
    Invariant: NEXT_READY holds callbacks only if WAIT does."""

    def __init__(self) -> None:
        self.segs: list[deque[SrcuCallback]] = [deque() for _ in range(4)]
        self.gp_seq = [0] * 4

    def __len__(self) -> int:  # rcu_segcblist_n_cbs()
        return sum(len(seg) for seg in self.segs)

    def _rest_empty(self) -> bool:
        """rcu_segcblist_restempty(DONE): no callback past the DONE segment."""
        return not any(self.segs[RCU_WAIT_TAIL:])

    def ready_cbs(self) -> bool:
        return bool(self.segs[RCU_DONE_TAIL])

    def pend_cbs(self) -> bool:
        return not self._rest_empty()

    def enqueue(self, cb: SrcuCallback) -> None:
        self.segs[RCU_NEXT_TAIL].append(cb)

    def entrain(self, cb: SrcuCallback) -> bool:
        """rcu_segcblist_entrain(): append ``cb`` to the last non-empty segment, so that it is
        invoked after every callback already queued; False (not queued) if there is none."""
        if not len(self):
            return False
        i = RCU_NEXT_TAIL
        while i > RCU_DONE_TAIL and not self.segs[i]:
            i -= 1
        self.segs[i].append(cb)
        return True

    def extract_done(self) -> list[SrcuCallback]:
        done = list(self.segs[RCU_DONE_TAIL])
        self.segs[RCU_DONE_TAIL].clear()
        return done

    def advance(self, seq: int) -> None:
        """rcu_segcblist_advance(): move the segments whose grace period ``seq`` has reached
        to DONE, and close the gap they leave."""
        if self._rest_empty():
            return
        i = RCU_WAIT_TAIL
        while i < RCU_NEXT_TAIL and not seq < self.gp_seq[i]:
            self.segs[RCU_DONE_TAIL].extend(self.segs[i])
            self.segs[i].clear()
            i += 1
        if i == RCU_WAIT_TAIL:
            return
        j = RCU_WAIT_TAIL
        while i < RCU_NEXT_TAIL and not self._rest_empty():
            self.segs[j], self.segs[i] = self.segs[i], self.segs[j]  # segs[j] was emptied above
            self.gp_seq[j] = self.gp_seq[i]
            i += 1
            j += 1

    def accelerate(self, seq: int) -> bool:
        """rcu_segcblist_accelerate(): give the callbacks with no grace period, and those
        waiting for one that ends after ``seq``, the grace period ``seq``: merge them into the
        oldest segment that can hold it. False if nothing changed."""
        if self._rest_empty():
            return False
        i = RCU_NEXT_READY_TAIL
        while i > RCU_DONE_TAIL:
            if self.segs[i] and self.gp_seq[i] < seq:
                break
            i -= 1
        i += 1
        if i >= RCU_NEXT_TAIL:
            return False
        for k in range(i + 1, RCU_NEXT_TAIL + 1):
            self.segs[i].extend(self.segs[k])
            self.segs[k].clear()
        for k in range(i, RCU_NEXT_TAIL):
            self.gp_seq[k] = seq
        return True


class _Work:
    """A work item on a workqueue (struct work_struct / delayed_work): queueing it while it is
    pending does nothing; one execution at a time (workqueues are non-reentrant); the pending
    bit clears when an execution starts, so it may be queued again while it runs."""

    def __init__(self, runtime: Runtime, name: str, fn: Callable[[], Awaitable[None] | None]):
        self.runtime = runtime
        self.name = name
        self.fn = fn
        self.pending = False  # WORK_STRUCT_PENDING: queued (or its timer armed), not started
        self._exclusive = asyncio.Lock()

    def queue(self, delay_us: float = 0.0) -> bool:
        """queue_work() (``delay_us`` 0) / queue_delayed_work(); False if already pending."""
        if self.pending:
            return False
        self.pending = True
        self.runtime.spawn(self._execute(delay_us), name=self.name)
        return True

    async def _execute(self, delay_us: float) -> None:
        if delay_us > 0:
            await self.runtime.sleep(delay_us)
        async with self._exclusive:
            self.pending = False
            result = self.fn()
            if inspect.isawaitable(result):
                await result


class _Timer:
    """srcu_data->delay_work, a timer_list armed with timer_reduce(): it queues ``work`` when it
    expires. timer_reduce() only ever moves an armed timer earlier; here every delay is one
    SRCU_INTERVAL from now and time does not go back, so an armed timer always expires
    first and re-arming it is a no-op (checked)."""

    def __init__(self, runtime: Runtime, work: _Work):
        self.runtime = runtime
        self.work = work
        self.expires: float | None = None  # None: not armed

    def reduce(self, expires: float) -> None:
        if self.expires is not None:
            if expires < self.expires:
                raise InternalError(f"{self.work.name}: timer_reduce() to {expires} before {self.expires}")
            return
        self.expires = expires
        self.runtime.spawn(self._fire(expires), name=f"{self.work.name}.delay_work")

    async def _fire(self, expires: float) -> None:
        await self.runtime.sleep(max(0.0, expires - self.runtime.now()))
        self.expires = None
        self.work.queue()  # srcu_delay_timer(): queue_work_on(sdp->cpu, ...)


class SrcuNode:
    """struct srcu_node: one node of the combining tree. ``srcu_have_cbs[ctr % 4]`` is the
    latest grace period requested through this node for that slot (state bits 1 once it has
    ended); a leaf's ``srcu_data_have_cbs`` has a bit per CPU of its group with callbacks
    waiting for it."""

    def __init__(self, level: int, index: int, parent: "SrcuNode | None"):
        self.level = level
        self.index = index
        self.srcu_parent = parent
        self.srcu_have_cbs = [0] * SRCU_HAVE_CBS
        self.srcu_data_have_cbs = [0] * SRCU_HAVE_CBS
        self.srcu_gp_seq_needed_exp = 0
        self.grplo = -1  # invariant: the CPUs below this node are grplo..grphi
        self.grphi = -1

    def __repr__(self) -> str:
        return f"SrcuNode(level {self.level} #{self.index}, cpus {self.grplo}..{self.grphi})"


class SrcuData:
    """struct srcu_data: one CPU's part of a domain: its reader counters, its callbacks, the
    grace periods it has asked for, and its srcu_invoke_callbacks work."""

    def __init__(self, cpu: int, mynode: SrcuNode, work: _Work, runtime: Runtime):
        self.cpu = cpu
        self.mynode = mynode
        self.grpmask = 1 << (cpu - mynode.grplo)
        # a reader may lock on one CPU and unlock on another, so only the sums over CPUs of
        # lock - unlock count; invariant: those sums are >= 0
        self.srcu_lock_count = [0, 0]
        self.srcu_unlock_count = [0, 0]
        self.srcu_cblist = SegCbList()
        self.srcu_cblist_invoking = False
        self.srcu_gp_seq_needed = 0  # the latest grace period this CPU has asked for
        self.srcu_gp_seq_needed_exp = 0
        self.work = work
        self.delay_work = _Timer(runtime, work)


@dataclass
class TreeSrcuStatistics(SrcuStatistics):
    """``SrcuStatistics`` and Tree SRCU's own state and counters."""

    gp_seq: int = 0  # srcu_gp_seq: counter << 2 | state
    gp_seq_needed: int = 0
    gp_seq_needed_exp: int = 0
    auto_expedited: int = 0  # synchronize() calls made expedited by srcu_might_be_idle()
    funnel_shared: int = 0  # requests that found their grace period already asked for at a node
    callback_runs: int = 0  # srcu_invoke_callbacks executions
    barrier_calls: int = 0


class TreeSrcu(SrcuBase):
    """One Tree SRCU domain (struct srcu_struct). See the module docstring for the algorithm."""

    ALGORITHM = "tree"
    STATISTICS = TreeSrcuStatistics

    def __init__(
        self,
        runtime: Runtime,
        ncpus: int,
        *,
        name: str = "srcu",
        jiffy_us: float = DEFAULT_JIFFY_US,
        reader_delay_us: float = SYNCHRONIZE_SRCU_READER_DELAY_US,
        exp_holdoff_us: float = DEFAULT_SRCU_EXP_HOLDOFF_US,
        fanout_leaf: int = CONFIG_RCU_FANOUT_LEAF,
        fanout: int = CONFIG_RCU_FANOUT,
        tree_version: str = DEFAULT_TREE_VERSION,
    ):
        super().__init__(runtime, ncpus, name=name, jiffy_us=jiffy_us, reader_delay_us=reader_delay_us)
        # the delay policy of that kernel (TREE_VERSIONS); _since() orders them
        self.tree_version = check_tree_version(tree_version)
        self.hz = round(1_000_000 / jiffy_us)  # CONFIG_HZ, for v6.6's default no-delay limits
        self.srcu_max_nodelay_phase, self.srcu_max_nodelay = srcu_nodelay_limits(tree_version, self.hz)
        if not exp_holdoff_us >= 0:
            raise ValueError(f"srcu exp_holdoff must be >= 0 us (0: never auto-expedite), got {exp_holdoff_us!r}")
        self.exp_holdoff_us = exp_holdoff_us
        counts, spread = srcu_node_geometry(ncpus, fanout_leaf, fanout)
        self.fanout_leaf = fanout_leaf
        self.fanout = fanout
        # init_srcu_struct_nodes(): the tree, root first, breadth first
        self.levels: list[list[SrcuNode]] = []
        for level, count in enumerate(counts):
            above = self.levels[level - 1] if level else None
            self.levels.append([SrcuNode(level, i, above[i // spread[level - 1]] if above else None)
                                for i in range(count)])
        self.nodes = [snp for level in self.levels for snp in level]
        leaves = self.levels[-1]
        self.sda: list[SrcuData] = []
        for cpu in range(ncpus):
            leaf = leaves[cpu // spread[-1]]
            snp: SrcuNode | None = leaf
            while snp is not None:
                if snp.grplo < 0:
                    snp.grplo = cpu
                snp.grphi = cpu
                snp = snp.srcu_parent
            work = _Work(runtime, f"srcu_invoke_callbacks[{name}/cpu{cpu}]", self._callbacks_work(cpu))
            self.sda.append(SrcuData(cpu, leaf, work, runtime))
        self.srcu_idx = 0  # the flip counter; readers use srcu_idx & 1
        self._readers = [0, 0]  # invariant: sum over CPUs of lock[i] - unlock[i], and >= 0
        self.srcu_gp_seq = 0
        self.srcu_gp_seq_needed = 0  # the latest grace period anyone asked for
        self.srcu_gp_seq_needed_exp = 0  # ... and the latest one asked for expedited
        self.srcu_last_gp_end = runtime.now()  # init_srcu_struct_fields() reads the clock
        # from v5.19-rc1 (282d8998e997), read by srcu_get_delay() and process_srcu only:
        self.srcu_gp_start = 0  # jiffies when the grace period in progress started
        self.srcu_n_exp_nodelay = 0  # no-delay instances in this grace-period phase
        self.reschedule_jiffies = 0  # the jiffy of process_srcu's last no-delay run ...
        self.reschedule_count = 0  # ... and how many there were in it (0 after a delay)
        self.srcu_barrier_seq = 0
        self._barrier_mutex = asyncio.Lock()
        self.work = _Work(runtime, f"process_srcu[{name}]", self._process_srcu)
        # srcu_gp_mutex: only process_srcu advances the state, and it is one work item, so
        # the mutex is never contended; invariant: at most one srcu_advance_state() at a time
        self._advancing = False
        self._stats.update(auto_expedited=0, funnel_shared=0, callback_runs=0, barrier_calls=0)

    def _statistics_state(self) -> dict[str, Any]:
        return {"completed": self.srcu_idx, "gp_seq": self.srcu_gp_seq,
                "gp_seq_needed": self.srcu_gp_seq_needed, "gp_seq_needed_exp": self.srcu_gp_seq_needed_exp}

    @property
    def completed(self) -> int:
        """srcu_batches_completed(): srcu_idx, one flip per grace period (classic's
        ``completed``)."""
        return self.srcu_idx

    def gp_state(self) -> int:
        """rcu_seq_state(srcu_gp_seq): SRCU_STATE_IDLE, SCAN1 or SCAN2."""
        return rcu_seq_state(self.srcu_gp_seq)

    # -- readers ----------------------------------------------------------------------------

    def read_lock(self, cpu: int = 0) -> int:
        """__srcu_read_lock(): enter a read section on ``cpu``; returns the index to unlock."""
        if not 0 <= cpu < self.ncpus:
            raise self._bad_cpu(cpu)
        sdp = self.sda[cpu]
        idx = self.srcu_idx & 1
        sdp.srcu_lock_count[idx] += 1
        self._readers[idx] += 1
        self._note_lock()
        return idx

    def read_unlock(self, idx: int, cpu: int = 0) -> None:
        """__srcu_read_unlock(): leave a read section, possibly on another CPU than it began."""
        if not 0 <= cpu < self.ncpus:
            raise self._bad_cpu(cpu)
        if idx != 0 and idx != 1:
            raise self._bad_idx(idx)
        sdp = self.sda[cpu]
        if self._readers[idx] <= 0:
            raise InternalError(f"srcu_read_unlock({idx}) on {self.name} with no reader on that index")
        sdp.srcu_unlock_count[idx] += 1
        self._readers[idx] -= 1
        self._note_unlock()

    def readers_active(self) -> int:
        return sum(sum(sdp.srcu_lock_count) - sum(sdp.srcu_unlock_count) for sdp in self.sda)

    def _readers_active_idx_check(self, idx: int) -> bool:
        """srcu_readers_active_idx_check(): the unlocks are summed first, then (after smp_mb()
        A) the locks; equal sums mean index ``idx`` had no reader at some instant between.
        Here the two sums run without a suspension point."""
        self._stats["reader_checks"] += 1
        unlocks = sum(sdp.srcu_unlock_count[idx] for sdp in self.sda)
        return sum(sdp.srcu_lock_count[idx] for sdp in self.sda) == unlocks

    async def _try_check_zero(self, idx: int, trycount: int) -> bool:
        """try_check_zero(): ``trycount`` checks (one more while srcu_get_delay() is 0: an
        expedited grace period is pending and, from v5.19-rc1, not yet delayed),
        ``reader_delay_us`` apart (udelay; v6.6's srcu_retry_check_delay). Up to v5.19-rc1 the
        delay is read after each failed check, v6.6 reads it once, before the first
        (4f2bfd9494a0)."""
        read_once = self._since("v6.6")
        curdelay = (0 if self._get_delay() else 1) if read_once else 0
        while True:
            if self._readers_active_idx_check(idx):
                return True
            trycount -= 1
            if not read_once:
                curdelay = 0 if self._get_delay() else 1
            if trycount + curdelay <= 0:
                return False
            await self.runtime.sleep(self.reader_delay_us)

    def _flip(self) -> None:
        """srcu_flip(): new readers use the other index from now on."""
        self.srcu_idx += 1

    # -- grace periods ----------------------------------------------------------------------

    def _since(self, version: str) -> bool:
        """Whether the modelled kernel is ``version`` (of TREE_VERSIONS) or later."""
        return TREE_VERSIONS.index(self.tree_version) >= TREE_VERSIONS.index(version)

    def _jiffies(self) -> int:
        """The jiffies counter: the ticks since time 0 (one every ``jiffy_us``)."""
        return int(self.runtime.now() // self.jiffy_us)

    def _get_delay(self) -> int:
        """srcu_get_delay(), in jiffies. v5.10: 0 while an expedited grace period is pending,
        else SRCU_INTERVAL. From v5.19-rc1 (282d8998e997) the grace period's age in jiffies
        is added while one is in progress, at most SRCU_MAX_INTERVAL in all, and a 0 counts
        as a no-delay instance of the phase: past ``srcu_max_nodelay_phase`` of them it is 1.
        v6.6 (8f870e6eb8c0) counts the age from the jiffy before this one (a grace period
        that started just before a tick is not one jiffy old at once) and counts no-delay
        instances only while a grace period is in progress."""
        jbase = 0 if self.srcu_gp_seq < self.srcu_gp_seq_needed_exp else SRCU_INTERVAL
        if not self._since("v5.19-rc1"):
            return jbase
        in_progress = self.gp_state() != SRCU_STATE_IDLE
        if self._since("v6.6"):
            if not in_progress:
                return jbase
            j = self._jiffies() - 1
            if j > self.srcu_gp_start:  # time_after(j, gpstart)
                jbase += j - self.srcu_gp_start
        elif in_progress:
            jbase += self._jiffies() - self.srcu_gp_start
        if not jbase:
            self.srcu_n_exp_nodelay += 1
            if self.srcu_n_exp_nodelay > self.srcu_max_nodelay_phase:
                jbase = 1
        return min(jbase, SRCU_MAX_INTERVAL)

    def _gp_start(self, cpu: int) -> None:
        """srcu_gp_start(), on ``cpu``: file that CPU's new callbacks for the grace period
        about to start, then start it (SCAN1)."""
        if self.srcu_gp_seq >= self.srcu_gp_seq_needed:
            raise InternalError(f"{self.name}: srcu_gp_start() with no grace period needed "
                                f"(gp_seq {self.srcu_gp_seq:#x}, needed {self.srcu_gp_seq_needed:#x})")
        cbl = self.sda[cpu].srcu_cblist
        cbl.advance(self.srcu_gp_seq)
        cbl.accelerate(rcu_seq_snap(self.srcu_gp_seq))
        self.srcu_gp_start = self._jiffies()
        self.srcu_n_exp_nodelay = 0
        self.srcu_gp_seq = rcu_seq_start(self.srcu_gp_seq)
        if self.gp_state() != SRCU_STATE_SCAN1:
            raise InternalError(f"{self.name}: grace period started in state {self.gp_state()}")

    def _schedule_cbs_sdp(self, sdp: SrcuData, delay: int) -> None:
        """srcu_schedule_cbs_sdp(): invoke ``sdp``'s ready callbacks on its CPU after ``delay``
        jiffies (srcu_queue_delayed_work_on)."""
        if not delay:
            sdp.work.queue()
        else:
            sdp.delay_work.reduce(self.runtime.now() + delay * self.jiffy_us)

    def _schedule_cbs_snp(self, snp: SrcuNode, mask: int, delay: int) -> None:
        """srcu_schedule_cbs_snp(): the CPUs of leaf ``snp`` whose bit is set in ``mask``."""
        for cpu in range(snp.grplo, snp.grphi + 1):
            if mask & (1 << (cpu - snp.grplo)):
                self._schedule_cbs_sdp(self.sda[cpu], delay)

    def _gp_end(self) -> None:
        """srcu_gp_end(): end the grace period, start callback invocation where callbacks
        waited for it, and start the next grace period if one is needed."""
        if self.gp_state() != SRCU_STATE_SCAN2:
            raise InternalError(f"{self.name}: srcu_gp_end() in state {self.gp_state()}")
        # the callbacks' delay: v5.10 srcu_get_delay(); v5.19-rc1 !!srcu_get_delay(), the age
        # included; v6.6 (4f2bfd9494a0) none after an expedited grace period, else one jiffy
        if self._since("v6.6"):
            cbdelay = 0 if self.srcu_gp_seq < self.srcu_gp_seq_needed_exp else 1
        else:
            cbdelay = self._get_delay()
            if self._since("v5.19-rc1"):
                cbdelay = min(cbdelay, 1)
        self.srcu_last_gp_end = self.runtime.now()
        self.srcu_gp_seq = rcu_seq_end(self.srcu_gp_seq)
        gpseq = self.srcu_gp_seq
        self.srcu_gp_seq_needed_exp = max(self.srcu_gp_seq_needed_exp, gpseq)
        self._stats["grace_periods"] += 1
        idx = rcu_seq_ctr(gpseq) % SRCU_HAVE_CBS
        leaf_level = len(self.levels) - 1
        for snp in self.nodes:  # srcu_for_each_node_breadth_first()
            cbs = snp.level == leaf_level and snp.srcu_have_cbs[idx] == gpseq
            snp.srcu_have_cbs[idx] = rcu_seq_set_state(gpseq, 1)
            snp.srcu_gp_seq_needed_exp = max(snp.srcu_gp_seq_needed_exp, gpseq)
            mask = snp.srcu_data_have_cbs[idx]
            snp.srcu_data_have_cbs[idx] = 0
            if cbs:
                self._schedule_cbs_snp(snp, mask, cbdelay)
        if self.gp_state() == SRCU_STATE_IDLE and self.srcu_gp_seq < self.srcu_gp_seq_needed:
            self._gp_start(self._this_cpu())
            self._reschedule(0)

    def _funnel_exp_start(self, snp: SrcuNode | None, s: int) -> None:
        """srcu_funnel_exp_start(): mark grace period ``s``, already asked for, as expedited, from
        ``snp`` up to the root; stop where a node already has it."""
        while snp is not None:
            if rcu_seq_done(self.srcu_gp_seq, s) or snp.srcu_gp_seq_needed_exp >= s:
                return
            snp.srcu_gp_seq_needed_exp = s
            snp = snp.srcu_parent
        self.srcu_gp_seq_needed_exp = max(self.srcu_gp_seq_needed_exp, s)

    def _funnel_gp_start(self, sdp: SrcuData, s: int, do_norm: bool) -> None:
        """srcu_funnel_gp_start(): ask for grace period ``s`` from ``sdp``'s leaf up. The first
        request through a node records it; later ones stop there (they share it), having made
        sure their callbacks will be invoked. The request that reaches the root starts the grace
        period if none is running."""
        idx = rcu_seq_ctr(s) % SRCU_HAVE_CBS
        snp: SrcuNode | None = sdp.mynode
        while snp is not None:
            if rcu_seq_done(self.srcu_gp_seq, s) and snp is not sdp.mynode:
                return  # the grace period is over and the leaf has our callbacks recorded
            if snp.srcu_have_cbs[idx] >= s:
                self._stats["funnel_shared"] += 1
                snp_seq = snp.srcu_have_cbs[idx]
                if snp is sdp.mynode and snp_seq == s:
                    snp.srcu_data_have_cbs[idx] |= sdp.grpmask
                if snp is sdp.mynode and snp_seq != s:
                    # a later grace period is recorded here (or this one ended): our
                    # callbacks may be ready already; invoke them ourselves
                    self._schedule_cbs_sdp(sdp, SRCU_INTERVAL if do_norm else 0)
                    return
                if not do_norm:
                    self._funnel_exp_start(snp, s)
                return
            snp.srcu_have_cbs[idx] = s
            if snp is sdp.mynode:
                snp.srcu_data_have_cbs[idx] |= sdp.grpmask
            if not do_norm:
                snp.srcu_gp_seq_needed_exp = max(snp.srcu_gp_seq_needed_exp, s)
            snp = snp.srcu_parent
        # the top of the tree: make sure the grace period will start
        self.srcu_gp_seq_needed = max(self.srcu_gp_seq_needed, s)
        if not do_norm:
            self.srcu_gp_seq_needed_exp = max(self.srcu_gp_seq_needed_exp, s)
        if not rcu_seq_done(self.srcu_gp_seq, s) and self.gp_state() == SRCU_STATE_IDLE:
            self._gp_start(sdp.cpu)
            # v5.10 srcu_get_delay(); from v5.19-rc1 !!srcu_get_delay(): one jiffy at most
            delay = self._get_delay()
            self.work.queue((min(delay, 1) if self._since("v5.19-rc1") else delay) * self.jiffy_us)

    async def _advance_state(self) -> None:
        """srcu_advance_state(): push the state to SCAN2 and end the grace period once both
        indexes have drained (see the module docstring)."""
        if self._advancing:
            raise InternalError(f"{self.name}: srcu_advance_state() re-entered (srcu_gp_mutex)")
        self._advancing = True
        try:
            if self.gp_state() == SRCU_STATE_IDLE:
                if self.srcu_gp_seq >= self.srcu_gp_seq_needed:
                    return  # nothing to do
                self._gp_start(self._this_cpu())
            if self.gp_state() == SRCU_STATE_SCAN1:
                if not await self._try_check_zero(1 ^ (self.srcu_idx & 1), 1):
                    return  # readers present, retry later
                self._flip()
                self.srcu_gp_seq = rcu_seq_set_state(self.srcu_gp_seq, SRCU_STATE_SCAN2)
                self.srcu_n_exp_nodelay = 0  # a new phase (read from v5.19-rc1)
            if self.gp_state() == SRCU_STATE_SCAN2:
                # read sections are normally short: check at least twice after the flip
                if not await self._try_check_zero(1 ^ (self.srcu_idx & 1), 2):
                    return
                self.srcu_n_exp_nodelay = 0
                self._gp_end()
        finally:
            self._advancing = False

    def _reschedule(self, delay: int) -> None:
        """srcu_reschedule(): go idle if every request is met, else (starting a grace period if
        none is running) run process_srcu again after ``delay`` jiffies."""
        if self.srcu_gp_seq >= self.srcu_gp_seq_needed:
            if self.gp_state() != SRCU_STATE_IDLE:
                raise InternalError(f"{self.name}: grace period {self.srcu_gp_seq:#x} running past every request")
            return
        if self.gp_state() == SRCU_STATE_IDLE:
            self._gp_start(self._this_cpu())
        self.work.queue(delay * self.jiffy_us)

    async def _process_srcu(self) -> None:
        """process_srcu(), the workqueue function driving grace periods. From v5.19-rc1
        (282d8998e997) at most ``srcu_max_nodelay`` runs in one jiffy reschedule with no
        delay; the next is delayed one jiffy."""
        self._stats["worker_runs"] += 1
        await self._advance_state()
        curdelay = self._get_delay()
        if self._since("v5.19-rc1"):
            if curdelay:
                self.reschedule_count = 0
            else:
                j = self._jiffies()
                if self.reschedule_jiffies == j:
                    self.reschedule_count += 1
                    if self.reschedule_count > self.srcu_max_nodelay:
                        curdelay = 1
                else:
                    self.reschedule_count = 1
                    self.reschedule_jiffies = j
        self._reschedule(curdelay)

    def _callbacks_work(self, cpu: int) -> Callable[[], None]:
        def run() -> None:
            current_cpu.set(cpu)  # queue_work_on(sdp->cpu): the work runs on that CPU
            self._invoke_callbacks(self.sda[cpu])

        return run

    def _invoke_callbacks(self, sdp: SrcuData) -> None:
        """srcu_invoke_callbacks(): invoke every ready callback of ``sdp``, in order."""
        self._stats["callback_runs"] += 1
        cbl = sdp.srcu_cblist
        cbl.advance(self.srcu_gp_seq)
        if sdp.srcu_cblist_invoking or not cbl.ready_cbs():
            return  # someone else on the job, or nothing to do
        sdp.srcu_cblist_invoking = True
        for cb in cbl.extract_done():
            self._invoke(cb)
        cbl.accelerate(rcu_seq_snap(self.srcu_gp_seq))
        sdp.srcu_cblist_invoking = False
        if cbl.ready_cbs():
            self._schedule_cbs_sdp(sdp, 0)

    def _this_cpu(self) -> int:
        cpu = current_cpu.get()
        if not 0 <= cpu < self.ncpus:
            raise self._bad_cpu(cpu)
        return cpu

    def _call_srcu(self, cb: SrcuCallback, do_norm: bool) -> None:
        """__call_srcu(): queue ``cb`` on this CPU's srcu_data for the next grace period and
        make sure that grace period is asked for."""
        sdp = self.sda[self._this_cpu()]
        cbl = sdp.srcu_cblist
        cbl.enqueue(cb)
        cbl.advance(self.srcu_gp_seq)
        s = rcu_seq_snap(self.srcu_gp_seq)
        cbl.accelerate(s)
        needgp = needexp = False
        if sdp.srcu_gp_seq_needed < s:
            sdp.srcu_gp_seq_needed = s
            needgp = True
        if not do_norm and sdp.srcu_gp_seq_needed_exp < s:
            sdp.srcu_gp_seq_needed_exp = s
            needexp = True
        if needgp:
            self._funnel_gp_start(sdp, s, do_norm)
        elif needexp:
            self._funnel_exp_start(sdp.mynode, s)

    def _might_be_idle(self) -> bool:
        """srcu_might_be_idle(): no callbacks pending on this CPU, no grace period ended within
        ``exp_holdoff_us``, none in progress or needed."""
        if self.sda[self._this_cpu()].srcu_cblist.pend_cbs():
            return False
        t, tlast = self.runtime.now(), self.srcu_last_gp_end
        if self.exp_holdoff_us == 0 or tlast <= t < tlast + self.exp_holdoff_us:
            return False  # too soon after the last grace period
        return not self.srcu_gp_seq < self.srcu_gp_seq_needed

    def _may_wait(self, what: str) -> None:
        might_sleep(f"{what}({self.name})")
        self._check_not_reader(what)

    async def _synchronize(self, do_norm: bool) -> None:
        """__synchronize_srcu(): queue wakeme_after_rcu and wait for it."""
        self._stats["synchronize_calls"] += 1
        t0 = self.runtime.now()
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._call_srcu(SrcuCallback(lambda: done.done() or done.set_result(None), "wakeme_after_rcu", t0), do_norm)
        await done
        self._waited(t0)

    async def synchronize(self) -> None:
        """synchronize_srcu(): return after every read section that began before the call has
        ended; expedited when the domain looks idle (srcu_might_be_idle)."""
        self._may_wait("synchronize_srcu")
        if self._might_be_idle():
            self._stats["auto_expedited"] += 1
            await self._synchronize(do_norm=False)
        else:
            await self._synchronize(do_norm=True)

    async def synchronize_expedited(self) -> None:
        """synchronize_srcu_expedited(): the same wait, with no delay between the worker's runs."""
        self._may_wait("synchronize_srcu")
        self._stats["expedited_calls"] += 1
        await self._synchronize(do_norm=False)

    def call_srcu(self, func: Callable[[], Any], what: str = "callback") -> None:
        """call_srcu(): run ``func`` (which must not sleep) after a grace period, without
        waiting for it here; callbacks queued on one CPU run in the order they were queued."""
        self._stats["call_srcu_calls"] += 1
        self._call_srcu(SrcuCallback(func, what, self.runtime.now()), do_norm=True)

    async def srcu_barrier(self) -> None:
        """srcu_barrier(): wait until every callback call_srcu() queued before this call has
        run (a barrier callback is entrained behind the last one of each CPU)."""
        self._may_wait("srcu_barrier")
        self._stats["barrier_calls"] += 1
        s = rcu_seq_snap(self.srcu_barrier_seq)
        async with self._barrier_mutex:
            if rcu_seq_done(self.srcu_barrier_seq, s):
                return  # someone else did our work for us
            self.srcu_barrier_seq = rcu_seq_start(self.srcu_barrier_seq)
            done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            count = [1]  # srcu_barrier_cpu_cnt; the initial 1 holds it above 0 while posting

            def barrier_cb() -> None:
                count[0] -= 1
                if not count[0]:
                    done.set_result(None)

            for sdp in self.sda:
                count[0] += 1
                if not sdp.srcu_cblist.entrain(SrcuCallback(barrier_cb, "srcu_barrier_cb", self.runtime.now())):
                    count[0] -= 1
            barrier_cb()  # drop the initial count
            await done
            self.srcu_barrier_seq = rcu_seq_end(self.srcu_barrier_seq)
