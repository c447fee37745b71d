"""A hypothesis state machine over one mm's interval tree (nodes/interval.py, v5.10 semantics):
inserts, removes, overlapping invalidate_range_start/end spans left open across steps (so many
are active at once), blockable or not, and device faults (``doubles.IntervalMirror``), run
beside a plain reference model of mm/mmu_notifier.c's rules:

- the sequence is odd exactly from the first start that overlaps a notifier in the tree (or an
  insert while a range is active) until the last end; every notifier overlapping a start's range
  at that moment, and no other, gets that start's cur_seq;
- an insert while the sequence is odd is deferred, a remove then waits; the last end applies the
  deferred list and releases the removes; a remove of a deferred insert only drops it;
- a fault waits in read_begin while its notifier's last invalidation is the one in progress.

After every step the real tree must match the model (``tree_matches_the_model``) and the
oracles must be clean (invariants 2, 3, 4: no translation inside a window, no invalidate after
a remove returned)."""

from __future__ import annotations

import asyncio
from typing import Any

from doubles import IntervalMirror
import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from cluster.vtime import VirtualClock, VirtualTimeLoop
from nodes import owner as owner_module
from nodes import vmops
from nodes.mm import PAGE_SIZE
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime

P = PAGE_SIZE
BASE = 0x10000000
NPAGES = 16
NONBLOCK = 0


class IntervalMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.rt: Runtime = self.run(self._runtime())
        self.p = Partition(self.rt, nframes=256, semantics="v5.10")
        self.mm = self.p.create_mm()
        self.run(vmops.mmap(self.p, self.mm, BASE, NPAGES * P))
        self.run(vmops.populate(self.p, self.mm, BASE, NPAGES * P))
        self.owner = LocalOwner(self.p)
        self.made = 0
        # the reference model
        self.odd = False
        self.active: list[tuple[int, int]] = []  # ranges started and not ended, in start order
        self.tree: set[IntervalMirror] = set()
        self.deferred_insert: set[IntervalMirror] = set()
        self.deferred_remove: set[IntervalMirror] = set()
        self.live: list[IntervalMirror] = []  # inserted and no remove begun
        self.removing: dict[IntervalMirror, asyncio.Task[Any]] = {}
        self.faults: list[tuple[IntervalMirror, int, asyncio.Task[Any]]] = []

    async def _runtime(self) -> Runtime:
        return Runtime(VirtualClock())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    def settle(self) -> None:
        self.run(self.rt.sleep(1))

    def spawn(self, coro: Any, name: str) -> asyncio.Task[Any]:
        async def start() -> asyncio.Task[Any]:
            return self.rt.spawn(coro, name=name)

        return self.run(start())

    def itree(self) -> Any:
        assert self.mm.notifier_mm is not None and self.mm.notifier_mm.itree is not None
        return self.mm.notifier_mm.itree

    def _last_end(self) -> None:
        """The model's mn_itree_inv_end when the last active range ends."""
        if self.odd:
            self.odd = False
            self.tree |= self.deferred_insert
            self.tree -= self.deferred_remove
            self.deferred_insert.clear()
            self.deferred_remove.clear()

    # -- rules --------------------------------------------------------------------------------

    @precondition(lambda self: len(self.live) + len(self.removing) < 6)
    @rule(first=st.integers(0, NPAGES - 1), npages=st.integers(1, 6))
    def insert(self, first: int, npages: int) -> None:
        self.made += 1
        dev = IntervalMirror(self.owner, self.mm.id, f"dev{self.made}")
        self.run(dev.insert(BASE + first * P, min(npages, NPAGES - first) * P))
        if self.odd:
            self.deferred_insert.add(dev)
        else:
            self.tree.add(dev)
            if self.active:
                self.odd = True
        self.live.append(dev)
        t = self.itree()
        assert dev.mni.invalidate_seq & 1 and (dev.mni.invalidate_seq == t.invalidate_seq) == self.odd

    @precondition(lambda self: self.made and len(self.active) < 4)  # the tree counts ranges begun after it
    @rule(first=st.integers(0, NPAGES - 1), npages=st.integers(1, 8), blockable=st.booleans())
    def start(self, first: int, npages: int, blockable: bool) -> None:
        start, end = BASE + first * P, BASE + min(first + npages, NPAGES) * P
        hit = {d for d in self.tree if d.mni.start < end and start <= d.mni.last}
        if hit:
            self.odd = True
        before = {d: len(d.calls) for d in self.live + list(self.removing)}
        ret = self.run(self.p.core.invalidate_range_start(self.mm, start, end, flags=1 if blockable else NONBLOCK))
        assert ret == 0  # no driver lock is held between steps: even a non-blockable start succeeds
        self.active.append((start, end))
        seq = self.itree().invalidate_seq
        called = {d for d, n in before.items() if len(d.calls) > n}
        assert called == hit, (sorted(d.mni.name for d in called), sorted(d.mni.name for d in hit))
        assert all(d.calls[-1][:3] == (seq, start, end) for d in called)

    @precondition(lambda self: self.active)
    @rule(which=st.integers(0, 3))
    def end(self, which: int) -> None:
        start, end = self.active.pop(which % len(self.active))
        self.run(self.p.core.invalidate_range_end(self.mm, start, end))
        if not self.active:
            self._last_end()
        self.settle()

    @precondition(lambda self: self.live)
    @rule(which=st.integers(0, 5))
    def remove(self, which: int) -> None:
        dev = self.live.pop(which % len(self.live))
        task = self.spawn(dev.remove(), f"remove {dev.mni.name}")
        self.settle()
        if dev in self.deferred_insert:
            self.deferred_insert.discard(dev)
            assert task.done()
        elif self.odd:
            self.deferred_remove.add(dev)
            assert not task.done(), f"remove of {dev.mni.name} returned while the tree was invalidating"
            self.removing[dev] = task
        else:
            self.tree.discard(dev)
            assert task.done()

    @precondition(lambda self: self.live and len(self.faults) < 4)
    @rule(which=st.integers(0, 5), page=st.integers(0, 5))
    def fault(self, which: int, page: int) -> None:
        dev = self.live[which % len(self.live)]
        address = dev.mni.start + min(page * P, dev.mni.last + 1 - dev.mni.start - P)
        task = self.spawn(dev.fault(address), f"fault {dev.mni.name}")
        self.settle()
        waits = dev.mni.invalidate_seq == self.itree().invalidate_seq
        assert task.done() != waits
        if not task.done():
            self.faults.append((dev, address, task))

    # -- invariants ---------------------------------------------------------------------------

    @invariant()
    def tree_matches_the_model(self) -> None:
        if self.mm.notifier_mm is None or self.mm.notifier_mm.itree is None:
            assert not self.made
            return
        t = self.itree()
        assert bool(t.invalidate_seq & 1) == self.odd
        assert t.active_invalidate_ranges == len(self.active)
        assert set(t.tree) == {d.mni for d in self.tree}
        starts = [m.start for m in t.tree]
        assert starts == sorted(starts)
        assert {m for m in t.deferred if not m.in_tree} == {d.mni for d in self.deferred_insert}
        assert {m for m in t.deferred if m.in_tree} == {d.mni for d in self.deferred_remove}
        for dev, task in list(self.removing.items()):
            assert task.done() == (dev not in self.deferred_remove)
            if task.done():
                task.result()
                del self.removing[dev]
        for dev, address, task in list(self.faults):
            if task.done():
                assert task.result() == self.mm.pte(address)[0]
                self.faults.remove((dev, address, task))

    @invariant()
    def no_violation(self) -> None:
        assert [str(v) for v in self.p.oracle.violations] == []

    def teardown(self) -> None:
        try:
            while self.active:
                self.end(0)
            self.run(self.rt.join())
            assert self.p.check_invariants(final=True) == []
        finally:
            self.loop.close()


MACHINE_SETTINGS = settings(max_examples=60, stateful_step_count=40, deadline=None, database=None,
                            suppress_health_check=[HealthCheck.too_slow])


def test_interval_machine() -> None:
    run_state_machine_as_test(IntervalMachine, settings=MACHINE_SETTINGS)


async def remove_without_waiting(mni: Any) -> None:
    """mmu_interval_notifier_remove() with its wait_event() taken out (a planted bug): it
    returns while its removal is still on the deferred list, so a start before the last end
    still calls the notifier's invalidate."""
    t = mni.itree
    with t.lock:
        if t.is_invalidating():
            if mni.in_tree:
                t.deferred.insert(0, mni)
                mni.deferred = True
            else:
                t.deferred.remove(mni)
                mni.deferred = False
        else:
            t._tree_remove(mni)
    mni.itree = None
    t.mm.count -= 1
    t.oracle.interval_removed(mni, t.mm)


@pytest.mark.parametrize("n", (1, 2, 3))
def test_interval_machine_catches_a_remove_that_does_not_wait(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    monkeypatch.setattr(owner_module, "mmu_interval_notifier_remove", remove_without_waiting)
    with pytest.raises(AssertionError, match="returned while the tree was invalidating|inv 4: "):
        run_state_machine_as_test(seed(n)(lambda: IntervalMachine()), settings=settings(
            MACHINE_SETTINGS, max_examples=200, phases=[Phase.generate]))
