"""A hypothesis state machine over one partition: random VM operations, secondary faults and
reads, register/unregister and exit, over several mms and all three secondary kinds, with every
oracle checked as an ``@invariant`` after each step.

The machine runs the real model on a persistent virtual-time loop: each rule runs its coroutines
to completion (some rules race a VM operation against a secondary access), so between steps the
partition is quiescent and the whole-partition sweep applies too.

``test_machine_catches_a_planted_bug`` shows the machine can fail: with ``unmap_region`` made to
free the gathered pages *before* invalidate_range_end (the "freed page still mapped in
secondary MMU" class of bug), the machine finds a violation.
"""

from __future__ import annotations

import asyncio

import numpy as np
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, consumes, invariant, precondition, rule, run_state_machine_as_test

from cluster.vtime import VirtualClock, VirtualTimeLoop
from nodes import vmops
from nodes.errors import BadAddress, Busy, ModelError, Released
from nodes.mm import PAGE_SIZE, PROT_READ, PROT_WRITE
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary import XPMEM_RDWR, GruMmu, KvmMmu, XpmemCred, XpmemDriver

BASE = 0x40000000
NPAGES = 16
MAX_MMS = 5
EXPECTED = (BadAddress, Released, Busy)  # refusals a random client legitimately gets


class PartitionMachine(RuleBasedStateMachine):
    mms = Bundle("mms")
    secondaries = Bundle("secondaries")

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.rt: Runtime = self.run(self._make_runtime())
        self.p = Partition(self.rt, nframes=2048, ncpus=2, jiffy_us=100.0)
        self.owner = LocalOwner(self.p)
        self.live_mms = 0
        self.attacher = XpmemCred(tgid=900, uid=1000, gid=1000)

    async def _make_runtime(self) -> Runtime:
        return Runtime(VirtualClock())

    def run(self, coro):  # type: ignore[no-untyped-def]
        return self.loop.run_until_complete(coro)

    def run_all(self, *coros):  # type: ignore[no-untyped-def]
        """Run ``coros`` concurrently; expected refusals are results, anything else raises."""
        async def together():  # type: ignore[no-untyped-def]
            return await asyncio.gather(*coros, return_exceptions=True)

        results = self.run(together())
        for r in results:
            if isinstance(r, BaseException) and not isinstance(r, EXPECTED):
                raise r
        return results

    def teardown(self) -> None:
        try:
            if not self.loop.is_closed():
                self.run(self.rt.join())
        finally:
            self.loop.close()

    # -- address spaces ---------------------------------------------------------------------

    @precondition(lambda self: self.live_mms < MAX_MMS)
    @rule(target=mms)
    def new_mm(self):  # type: ignore[no-untyped-def]
        mm = self.p.create_mm()
        self.run(vmops.mmap(self.p, mm, BASE, NPAGES * PAGE_SIZE))
        self.live_mms += 1
        return mm

    @precondition(lambda self: self.live_mms < MAX_MMS)
    @rule(target=mms, parent=mms)
    def fork(self, parent):  # type: ignore[no-untyped-def]
        if parent.exited:
            return parent
        child = self.run(vmops.fork(self.p, parent))
        self.live_mms += 1
        return child

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), write=st.booleans())
    def touch(self, mm, page, write):  # type: ignore[no-untyped-def]
        self.run_all(vmops.touch(self.p, mm, BASE + page * PAGE_SIZE, write=write))

    @rule(mm=mms)
    def populate(self, mm):  # type: ignore[no-untyped-def]
        if not mm.exited and mm.vmas:
            self.run_all(vmops.populate(self.p, mm, mm.vmas[0].start, mm.vmas[0].end - mm.vmas[0].start, write=mm.vmas[0].writable))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4))
    def munmap(self, mm, page, n):  # type: ignore[no-untyped-def]
        self.run_all(vmops.munmap(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), writable=st.booleans())
    def mprotect(self, mm, page, n, writable):  # type: ignore[no-untyped-def]
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        self.run_all(vmops.mprotect(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE, prot))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4))
    def migrate(self, mm, page, n):  # type: ignore[no-untyped-def]
        self.run_all(vmops.migrate_pages(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4))
    def reclaim(self, mm, page, n):  # type: ignore[no-untyped-def]
        self.run_all(vmops.reclaim(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(a=mms, b=mms, pa=st.integers(0, NPAGES - 1), pb=st.integers(0, NPAGES - 1))
    def ksm(self, a, b, pa, pb):  # type: ignore[no-untyped-def]
        if a is not b:
            self.run_all(vmops.ksm_merge(self.p, a, BASE + pa * PAGE_SIZE, b, BASE + pb * PAGE_SIZE))

    @rule(mm=consumes(mms))
    def exit(self, mm):  # type: ignore[no-untyped-def]
        if not mm.exited:
            self.run_all(vmops.exit_mmap(self.p, mm))
            self.live_mms -= 1

    # -- secondaries ------------------------------------------------------------------------

    @rule(target=secondaries, mm=mms, kind=st.sampled_from(["gru", "kvm", "xpmem"]))
    def attach_secondary(self, mm, kind):  # type: ignore[no-untyped-def]
        if mm.exited:
            return ("none", None, None)
        name = f"{kind}{len(self.p.oracle.checked)}-{self.rt.now():.0f}"
        if kind == "gru":
            sec = GruMmu(self.rt, self.owner, mm.id, name, tlb_entries=8)
            self.run(sec.register())
            return ("gru", sec, None)
        if kind == "kvm":
            sec = KvmMmu(self.rt, self.owner, mm.id, name)
            self.run(sec.register())
            return ("kvm", sec, None)
        drv = XpmemDriver(self.rt, self.owner, mm.id, name, cred=XpmemCred(tgid=mm.id, uid=1000, gid=1000))
        self.run(drv.register())
        segid = self.run(drv.make(BASE, NPAGES * PAGE_SIZE, 0o600))
        apid = self.run(drv.get(segid, XPMEM_RDWR, self.attacher))
        att = self.run(drv.attach(apid, 0, NPAGES * PAGE_SIZE, self.attacher))
        return ("xpmem", drv, att)

    def _access(self, sec, page: int, write: bool):  # type: ignore[no-untyped-def]
        kind, obj, att = sec
        if kind == "xpmem":
            return obj.access(att, att.vaddr + page * PAGE_SIZE, write=write)
        return obj.access(BASE + page * PAGE_SIZE, write=write)

    @rule(sec=secondaries, page=st.integers(0, NPAGES - 1), write=st.booleans())
    def secondary_access(self, sec, page, write):  # type: ignore[no-untyped-def]
        if sec[0] != "none":
            self.run_all(self._access(sec, page, write))

    @rule(sec=secondaries, mm=mms, page=st.integers(0, NPAGES - 1), op=st.sampled_from(["munmap", "migrate", "reclaim", "mprotect", "cow"]))
    def race(self, sec, mm, page, op):  # type: ignore[no-untyped-def]
        """A secondary fault racing a VM operation on the same page."""
        if sec[0] == "none":
            return
        addr = BASE + page * PAGE_SIZE
        vm = {
            "munmap": lambda: vmops.munmap(self.p, mm, addr, PAGE_SIZE),
            "migrate": lambda: vmops.migrate_pages(self.p, mm, addr, PAGE_SIZE),
            "reclaim": lambda: vmops.reclaim(self.p, mm, addr, PAGE_SIZE),
            "mprotect": lambda: vmops.mprotect(self.p, mm, addr, PAGE_SIZE, PROT_READ),
            "cow": lambda: vmops.touch(self.p, mm, addr, write=True),
        }[op]()
        self.run_all(self._access(sec, page, False), vm)

    @rule(sec=consumes(secondaries))
    def unregister(self, sec):  # type: ignore[no-untyped-def]
        kind, obj, _ = sec
        if kind == "none":
            return
        mm = self.p.mms[obj.mm_id]
        self.run_all(obj.unregister())
        assert mm.count >= 0

    # -- the oracles ------------------------------------------------------------------------

    @invariant()
    def no_violation(self) -> None:
        assert self.p.oracle.violations == [], "\n".join(str(v) for v in self.p.oracle.violations)

    @invariant()
    def frames_accounted_for(self) -> None:
        found = self.p.check_invariants()
        assert found == [], "\n".join(str(v) for v in found)

    @invariant()
    def no_task_failed(self) -> None:
        self.rt.check()


MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)


def test_partition_machine() -> None:
    run_state_machine_as_test(PartitionMachine, settings=MACHINE_SETTINGS)


def test_machine_catches_a_planted_bug(monkeypatch: pytest.MonkeyPatch) -> None:
    """Plant the bug class of the seed history ("freed page still mapped in secondary MMU"):
    unmap_region frees the gathered pages before invalidate_range_start has told the
    secondaries, so a GRU or KVM translation outlives its frame. The machine must find it."""

    async def unmap_region_freeing_early(p, mm, start, end):  # type: ignore[no-untyped-def]
        gathered = []
        for vma, sl, present in mm.iter_present(start, end):
            with mm.page_table_lock:
                gathered.append(vma.pfn[sl][present].copy())
                vma.pfn[sl] = -1
                vma.flags[sl] = 0
        if gathered:
            p.frames.put(np.concatenate(gathered))  # BUG: freed before the secondaries know
        await p.core.invalidate_range_start(mm, start, end)
        await p.core.invalidate_range_end(mm, start, end)

    monkeypatch.setattr(vmops, "unmap_region", unmap_region_freeing_early)
    with pytest.raises(AssertionError, match=r"inv 1: frame freed while a secondary maps or pins it"):
        run_state_machine_as_test(PartitionMachine, settings=MACHINE_SETTINGS)
