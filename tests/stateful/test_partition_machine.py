"""A hypothesis state machine over one partition: random VM operations, secondary faults and
reads, register/unregister and exit, over several mms and all three secondary kinds, with every
oracle checked as an ``@invariant`` after each step.

The machine runs the real model on a persistent virtual-time loop: each rule runs its coroutines
to completion (some rules race a VM operation against a secondary access or an unregister), so
between steps the partition is quiescent and the whole-partition sweep applies too.

Every GRU is across the network from the mm it maps (``DelayedOwner``, tests/doubles.py: a
lookup's answer is ``GRU_ONE_WAY_US`` on the wire), so a GRU's dropin can be overtaken by an
invalidation, as it can between partitions; KVM and XPMEM look pages up in the owner's process.

The hazards the model exists for are met on every stream, by construction:

- every run starts from the same state (``__init__``, published by the ``@initialize`` rules):
  mm0 with a GRU and a KVM that map each of its pages, mm1 with an XPMEM attachment that maps
  (pins) each of its pages;
- and, before any rule, with drawn parameters (more ``@initialize`` rules, which run in every
  example whatever rules swarm testing leaves enabled): some pages of mm0 are unmapped under the
  GRU and the KVM that map them; a new GRU or KVM on mm1 maps a page and is unregistered while
  the callout of an operation on that page is in flight in it; on a new mm whose pages a GRU
  and a KVM map, compaction (migrate_pages() holding neither mmap_sem nor an mm reference)
  migrates a few pages while munmap or mprotect cuts part of that range out of its VMA, so the
  VMA is split or removed while the migration sleeps in invalidate_page; and a new GRU on a new
  mm faults a page in for a write while the page is unmapped, made read-only or migrated, the
  operation starting the moment the owner's answer leaves (the answer in flight);
- after that the rules keep meeting them: munmap, mprotect, migrate and reclaim first have
  every secondary of the mm map the pages they are about to change (unless ``untouched`` is
  drawn); ``migrate_racing`` races compaction, the move_pages() syscall or reclaim against a
  munmap or mprotect of part of the range; ``race`` runs a secondary fault and a VM operation
  at once or with the operation overtaking a GRU's answer (``in_flight``); and unregister runs
  alone (``during="nothing"``) or the moment the first callout of a VM operation to that
  secondary begins (``called``), so that the callout is in flight (asleep in the GRU's or KVM's
  TLB flush, or XPMEM's zap) while unregister runs.

Beside the oracles (``no_violation``: invariants 1-6 as they happen) and the frame sweep
(``frames_accounted_for``: invariant 7), two invariants hold whenever the machine is quiescent:
no migration entry is left in any VMA (``no_migration_entry_left``), and every translation in a
registered GRU's TLB is of the frame the pte maps, and writable only where the pte is
(``gru_translations_match_the_page_tables``: the oracle does not watch write-protects).

The machine can fail: each planted bug is found under every one of ``SEEDS`` (explicit seeds,
each its own stream; ``hypothesis_seed_alone`` keeps a seed's stream the same whatever was
imported before):

- ``test_machine_catches_a_page_freed_before_the_invalidate``: unmap_region frees the gathered
  pages *before* the range_start callout (the "freed page still mapped in secondary MMU" class),
  invariant 1;
- ``test_machine_catches_an_unregister_that_does_not_synchronize``: unregister returns without
  synchronize_srcu(), so a callout in flight finishes after it returned, invariant 4;
- ``test_machine_catches_migration_racing_munmap``: migration and reclaim as before the
  rmap-race fix (``plant_stale_vma_bugs``, tests/doubles.py) keep using the VMA they found a
  page in after sleeping, though munmap or mprotect split or removed it: a frame mapped only by
  a dead VMA copy (invariant 7) or a migration entry left behind;
- ``test_machine_catches_the_unguarded_dropin``: every GRU with the v3.10 dropin
  (``GruMmu(dropin="v3.10")``) installs the page an invalidation overtook while the lookup's
  answer was in flight: a translation of a freed frame (invariant 1), of the frame a migration
  left, or a writable translation of a write-protected page (``gru_translations_match_the_page_tables``).
"""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any, Callable

import numpy as np
import pytest
from doubles import DelayedOwner, plant_stale_vma_bugs
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    Bundle,
    RuleBasedStateMachine,
    consumes,
    initialize,
    invariant,
    multiple,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cluster.vtime import VirtualClock, VirtualTimeLoop
from nodes import vmops
from nodes.errors import BadAddress, Busy, Released
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, PROT_READ, PROT_WRITE, PTE_MIGRATION, PTE_PRESENT, PTE_WRITE, Mm
from nodes.notifier import MODERN, OPS, MmuNotifier, NotifierCore, has_op
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary import XPMEM_RDWR, GruMmu, KvmMmu, XpmemCred, XpmemDriver

BASE = 0x40000000
NPAGES = 16
MAX_MMS = 7
EXPECTED = (BadAddress, Released, Busy)  # refusals a random client legitimately gets
RACED_OPS = ("munmap", "migrate", "reclaim", "mprotect", "cow")  # what can happen to a page a fault wants
DURING = ("munmap", "mprotect", "migrate", "exit", "nothing")  # what an unregister can meet
XPMEM_ZAP_PER_PAGE_US = 1.0  # XPMEM's zap takes time, as the GRU's and KVM's flushes do
# a GRU looks pages up across the network: an answer is in flight this long, longer than any
# VM operation of the machine on a page takes (its callouts included)
GRU_ONE_WAY_US = 100.0
LOOKUP_RACED_OPS = ("munmap", "mprotect", "migrate")  # what can overtake a GRU lookup's answer
MIGRATIONS = ("compaction", "syscall", "reclaim")  # rmap walks that sleep in invalidate_page
MIGRATION_RACERS = ("munmap", "mprotect")  # what can split or remove the VMA meanwhile

pytestmark = pytest.mark.usefixtures("hypothesis_seed_alone")

Secondary = tuple[str, Any, Any]  # (kind, the GruMmu / KvmMmu / XpmemDriver, XPMEM's attachment)


def called(mn: MmuNotifier) -> asyncio.Event:
    """A probe on one notifier: an event set when the core calls any op of ``mn``, at the
    start of the call (the ops are wrapped on this instance only; ``has_op`` looks at the
    class, so the core calls exactly the ops it called before)."""
    event = asyncio.Event()
    for op in OPS:
        if has_op(mn, op):
            def probe(*args: Any, _method: Callable[..., Any] = getattr(mn, op)) -> Any:
                event.set()
                return _method(*args)

            setattr(mn, op, probe)
    return event


class PartitionMachine(RuleBasedStateMachine):
    mms = Bundle("mms")
    secondaries = Bundle("secondaries")
    gru_dropin = "guarded"  # every GRU's dropin (GruMmu's default; a test plants "v3.10")
    semantics = "v3.10"  # the partition's notifier core (a test runs the modern ones)

    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.rt: Runtime = self.run(self._make_runtime())
        self.p = Partition(self.rt, nframes=2048, ncpus=2, jiffy_us=100.0, semantics=self.semantics)
        self.owner = LocalOwner(self.p)
        self.gru_owner = DelayedOwner(self.p, GRU_ONE_WAY_US)  # every GRU is across the network
        self.attacher = XpmemCred(tgid=900, uid=1000, gid=1000)
        self.attached: list[Secondary] = []  # registered and not unregistered yet
        # the starting state: every page of mm0 mapped by a GRU and a KVM, of mm1 by XPMEM
        self.start_mms = [self._new_mm(), self._new_mm()]
        mm0, mm1 = self.start_mms
        self.start_secondaries = [self._attach(mm0, "gru", tlb_entries=NPAGES), self._attach(mm0, "kvm"),
                                  self._attach(mm1, "xpmem")]
        for mm in self.start_mms:
            self._map_into_secondaries(mm, 0, NPAGES, write=True)

    @property
    def live_mms(self) -> int:
        return sum(not mm.exited for mm in self.p.mms.values())

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

    @initialize(target=mms)
    def mapped_mms(self):  # type: ignore[no-untyped-def]
        return multiple(*self.start_mms)

    @initialize(target=secondaries)
    def mapping_secondaries(self):  # type: ignore[no-untyped-def]
        return multiple(*self.start_secondaries)

    @initialize(page=st.integers(0, NPAGES - 1), n=st.integers(1, 4))
    def start_unmapping_under_secondaries(self, page, n):  # type: ignore[no-untyped-def]
        """Pages of mm0 that its GRU and KVM map are unmapped."""
        self.munmap(self.start_mms[0], page, n, untouched=False)

    @precondition(lambda self: self.live_mms < MAX_MMS)
    @rule(target=mms)
    def new_mm(self):  # type: ignore[no-untyped-def]
        return self._new_mm()

    def _new_mm(self, *, populated: bool = False) -> Mm:
        mm = self.p.create_mm()
        self.run(vmops.mmap(self.p, mm, BASE, NPAGES * PAGE_SIZE))
        if populated:
            self.run(vmops.populate(self.p, mm, BASE, NPAGES * PAGE_SIZE))
        return mm

    @precondition(lambda self: self.live_mms < MAX_MMS)
    @rule(target=mms, parent=mms)
    def fork(self, parent):  # type: ignore[no-untyped-def]
        if parent.exited:
            return parent
        return self.run(vmops.fork(self.p, parent))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), write=st.booleans())
    def touch(self, mm, page, write):  # type: ignore[no-untyped-def]
        self.run_all(vmops.touch(self.p, mm, BASE + page * PAGE_SIZE, write=write))

    @rule(mm=mms)
    def populate(self, mm):  # type: ignore[no-untyped-def]
        if not mm.exited and mm.vmas:
            self.run_all(vmops.populate(self.p, mm, mm.vmas[0].start, mm.vmas[0].end - mm.vmas[0].start, write=mm.vmas[0].writable))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), untouched=st.booleans())
    def munmap(self, mm, page, n, untouched):  # type: ignore[no-untyped-def]
        if not untouched:
            self._map_into_secondaries(mm, page, n)
        self.run_all(vmops.munmap(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), writable=st.booleans(), untouched=st.booleans())
    def mprotect(self, mm, page, n, writable, untouched):  # type: ignore[no-untyped-def]
        if not untouched:
            self._map_into_secondaries(mm, page, n)
        prot = PROT_READ | (PROT_WRITE if writable else 0)
        self.run_all(vmops.mprotect(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE, prot))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), untouched=st.booleans())
    def migrate(self, mm, page, n, untouched):  # type: ignore[no-untyped-def]
        if not untouched:
            self._map_into_secondaries(mm, page, n)
        self.run_all(vmops.migrate_pages(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(1, 4), untouched=st.booleans())
    def reclaim(self, mm, page, n, untouched):  # type: ignore[no-untyped-def]
        if not untouched:
            self._map_into_secondaries(mm, page, n)
        self.run_all(vmops.reclaim(self.p, mm, BASE + page * PAGE_SIZE, n * PAGE_SIZE))

    @rule(mm=mms, page=st.integers(0, NPAGES - 1), n=st.integers(2, 4), data=st.data(),
          how=st.sampled_from(MIGRATIONS), racer=st.sampled_from(MIGRATION_RACERS))
    def migrate_racing(self, mm, page, n, data, how, racer):  # type: ignore[no-untyped-def]
        if not mm.exited:
            self._migrate_racing(mm, page, n, data, how, racer)

    @initialize(target=mms, page=st.integers(0, NPAGES - 4), n=st.integers(2, 4), data=st.data(),
                racer=st.sampled_from(MIGRATION_RACERS))
    def start_compacting_under_a_munmap(self, page, n, data, racer):  # type: ignore[no-untyped-def]
        """A new mm whose pages a GRU and a KVM map: compaction migrates some of them while
        part of that range is unmapped or made read-only."""
        mm = self._new_mm(populated=True)
        self._attach(mm, "gru")
        self._attach(mm, "kvm")
        self._migrate_racing(mm, page, n, data, "compaction", racer)
        return mm

    def _migrate_racing(self, mm: Mm, page: int, n: int, data: st.DataObject, how: str, racer: str) -> None:
        """Every secondary of ``mm`` maps pages ``page`` .. ``page+n-1`` (so each
        invalidate_page sleeps in their flushes); then ``how`` (compaction: migrate_pages()
        holding neither mmap_sem nor an mm reference; the move_pages() syscall; reclaim) walks
        them while ``racer`` (munmap, or mprotect to read-only) cuts a part of the range out of
        its VMA: the VMA the walk found a page in is split or removed while it sleeps."""
        n = min(n, NPAGES - page)
        first = data.draw(st.integers(page, page + n - 1), label="cut_first")
        count = data.draw(st.integers(1, page + n - first), label="cut_pages")
        self._map_into_secondaries(mm, page, n)
        start, length = BASE + page * PAGE_SIZE, n * PAGE_SIZE
        walk = (vmops.reclaim(self.p, mm, start, length) if how == "reclaim"
                else vmops.migrate_pages(self.p, mm, start, length, reason=how))
        cut = (BASE + first * PAGE_SIZE, count * PAGE_SIZE)
        cutting = (vmops.munmap(self.p, mm, *cut) if racer == "munmap"
                   else vmops.mprotect(self.p, mm, *cut, PROT_READ))
        self.run_all(walk, cutting)

    @rule(a=mms, b=mms, pa=st.integers(0, NPAGES - 1), pb=st.integers(0, NPAGES - 1))
    def ksm(self, a, b, pa, pb):  # type: ignore[no-untyped-def]
        if a is not b:
            self.run_all(vmops.ksm_merge(self.p, a, BASE + pa * PAGE_SIZE, b, BASE + pb * PAGE_SIZE))

    @rule(mm=consumes(mms))
    def exit(self, mm):  # type: ignore[no-untyped-def]
        if not mm.exited:
            self.run_all(vmops.exit_mmap(self.p, mm))

    def _vm_op(self, op: str, mm: Mm, page: int):  # type: ignore[no-untyped-def]
        """The coroutine of VM operation ``op`` on one page of ``mm`` (``exit``: all of it)."""
        addr = BASE + page * PAGE_SIZE
        ops: dict[str, Callable[[], Any]] = {
            "munmap": lambda: vmops.munmap(self.p, mm, addr, PAGE_SIZE),
            "migrate": lambda: vmops.migrate_pages(self.p, mm, addr, PAGE_SIZE),
            "reclaim": lambda: vmops.reclaim(self.p, mm, addr, PAGE_SIZE),
            "mprotect": lambda: vmops.mprotect(self.p, mm, addr, PAGE_SIZE, PROT_READ),
            "cow": lambda: vmops.touch(self.p, mm, addr, write=True),
            "exit": lambda: vmops.exit_mmap(self.p, mm),
        }
        return ops[op]()

    # -- secondaries ------------------------------------------------------------------------

    @rule(target=secondaries, mm=mms, kind=st.sampled_from(["gru", "kvm", "xpmem"]))
    def attach_secondary(self, mm, kind):  # type: ignore[no-untyped-def]
        if mm.exited:
            return ("none", None, None)
        return self._attach(mm, kind)

    def _attach(self, mm: Mm, kind: str, *, tlb_entries: int = 8) -> Secondary:
        name = f"{kind}{len(self.p.oracle.checked)}-{self.rt.now():.0f}"
        sec: Secondary
        if kind == "gru":
            gru = GruMmu(self.rt, self.gru_owner, mm.id, name, tlb_entries=tlb_entries, dropin=self.gru_dropin)
            self.run(gru.register())
            sec = ("gru", gru, None)
        elif kind == "kvm":
            kvm = KvmMmu(self.rt, self.owner, mm.id, name)
            self.run(kvm.register())
            sec = ("kvm", kvm, None)
        else:
            drv = XpmemDriver(self.rt, self.owner, mm.id, name, cred=XpmemCred(tgid=mm.id, uid=1000, gid=1000),
                              zap_per_page_us=XPMEM_ZAP_PER_PAGE_US)
            self.run(drv.register())
            segid = self.run(drv.make(BASE, NPAGES * PAGE_SIZE, 0o600))
            apid = self.run(drv.get(segid, XPMEM_RDWR, self.attacher))
            att = self.run(drv.attach(apid, 0, NPAGES * PAGE_SIZE, self.attacher))
            sec = ("xpmem", drv, att)
        self.attached.append(sec)
        return sec

    def _mm_of(self, sec: Secondary) -> Mm:
        return self.p.mms[sec[1].mm_id]

    def _access(self, sec: Secondary, page: int, write: bool):  # type: ignore[no-untyped-def]
        kind, obj, att = sec
        if kind == "xpmem":
            return obj.access(att, att.vaddr + page * PAGE_SIZE, write=write)
        return obj.access(BASE + page * PAGE_SIZE, write=write)

    def _map_into_secondaries(self, mm: Mm, page: int, n: int, *, write: bool = False) -> None:
        """Every secondary still registered on ``mm`` accesses pages ``page`` .. ``page+n-1``
        (refusals are results: a page unmapped, an mm exiting)."""
        for sec in self.attached:
            if sec[1].mm_id == mm.id:
                for k in range(page, min(page + n, NPAGES)):
                    self.run_all(self._access(sec, k, write))

    @rule(sec=secondaries, page=st.integers(0, NPAGES - 1), write=st.booleans())
    def secondary_access(self, sec, page, write):  # type: ignore[no-untyped-def]
        if sec[0] != "none":
            self.run_all(self._access(sec, page, write))

    @rule(sec=secondaries, mm=mms, page=st.integers(0, NPAGES - 1), op=st.sampled_from(RACED_OPS),
          write=st.booleans(), in_flight=st.booleans())
    def race(self, sec, mm, page, op, write, in_flight):  # type: ignore[no-untyped-def]
        """A secondary fault racing a VM operation on the same page: both start at once, or
        (``in_flight``) the operation starts the moment the owner has answered a GRU's lookup
        (``_race_lookup``)."""
        if sec[0] != "none" and not mm.exited:
            if in_flight:
                self._race_lookup(sec, mm, page, op, write)
            else:
                self.run_all(self._access(sec, page, write), self._vm_op(op, mm, page))

    @initialize(target=mms, page=st.integers(0, NPAGES - 1), op=st.sampled_from(LOOKUP_RACED_OPS))
    def start_overtaking_a_gru_lookup(self, page, op):  # type: ignore[no-untyped-def]
        """A new GRU on a new mm faults a page in for a write; the page is unmapped, made
        read-only or migrated while the owner's answer is on its way back to the GRU."""
        mm = self._new_mm(populated=True)
        self._race_lookup(self._attach(mm, "gru"), mm, page, op, True)
        return mm

    def _race_lookup(self, sec: Secondary, mm: Mm, page: int, op: str, write: bool) -> None:
        """``sec`` accesses ``page``; VM operation ``op`` on it starts the moment the owner's
        answer to a GRU lookup leaves (``DelayedOwner.answer_sent``), or once the access is
        done if it made none (a TLB hit, a refusal, not a GRU). The invalidation then
        overtakes the answer: the GRU must not install the page it names (the guarded dropin)."""
        answered = self.gru_owner.answer_sent
        answered.clear()

        async def fault():  # type: ignore[no-untyped-def]
            try:
                return await self._access(sec, page, write)
            finally:
                answered.set()

        async def vm_op():  # type: ignore[no-untyped-def]
            await answered.wait()
            return await self._vm_op(op, mm, page)

        self.run_all(fault(), vm_op())

    @rule(sec=consumes(secondaries), page=st.integers(0, NPAGES - 1), during=st.sampled_from(DURING))
    def unregister(self, sec, page, during):  # type: ignore[no-untyped-def]
        """mmu_notifier_unregister(), alone (``nothing``) or racing a VM operation on a page
        the secondary maps (``_unregister_during``)."""
        if sec[0] == "none":
            return
        mm = self._mm_of(sec)
        if during == "nothing" or mm.exited:
            self.attached.remove(sec)
            self.run_all(sec[1].unregister())
        else:
            self._unregister_during(sec, page, during)
        assert mm.count >= 0

    @initialize(kind=st.sampled_from(["gru", "kvm"]), page=st.integers(0, NPAGES - 1), during=st.sampled_from(DURING[:3]))
    def start_unregistering_during_a_callout(self, kind, page, during):  # type: ignore[no-untyped-def]
        """A new GRU or KVM on mm1 (mm0's pages may be unmapped by now) is unregistered while
        a callout to it is in flight."""
        self._unregister_during(self._attach(self.start_mms[1], kind), page, during)

    def _unregister_during(self, sec: Secondary, page: int, during: str) -> None:
        """``sec`` maps ``page``, then VM operation ``during`` runs on it and ``sec`` is
        unregistered the moment the operation's first callout to it begins, so that the callout
        is in flight while unregister runs (``exit``: the unregister-versus-exit race of the
        notifier core's docstring). Unregister must not return before the callout is done."""
        kind, obj, _ = sec
        mm = self._mm_of(sec)
        self.attached.remove(sec)
        self.run_all(self._access(sec, page, True))
        in_callout = called(obj.notifier if kind == "xpmem" else obj)

        async def vm_op():  # type: ignore[no-untyped-def]
            try:
                return await self._vm_op(during, mm, page)
            finally:
                in_callout.set()  # it made no callout to the secondary: unregister now

        async def unregister():  # type: ignore[no-untyped-def]
            await in_callout.wait()
            return await obj.unregister()

        self.run_all(vm_op(), unregister())

    # -- the oracles ------------------------------------------------------------------------

    @invariant()
    def no_violation(self) -> None:
        assert self.p.oracle.violations == [], "\n".join(str(v) for v in self.p.oracle.violations)

    @invariant()
    def frames_accounted_for(self) -> None:
        found = self.p.check_invariants()
        assert found == [], "\n".join(str(v) for v in found)

    @invariant()
    def no_migration_entry_left(self) -> None:
        """Quiescent: every migration that replaced a pte by a migration entry removed it
        again (remove_migration_ptes()), whatever split or removed the VMA meanwhile."""
        left = [f"{mm.name} [{v.start:#x}, {v.end:#x})" for mm in self.p.mms.values() if not mm.exited
                for v in mm.vmas if (v.flags & PTE_MIGRATION).any()]
        assert left == [], f"migration entries left in {', '.join(left)}"

    @invariant()
    def gru_translations_match_the_page_tables(self) -> None:
        """Quiescent: every translation in a registered GRU's TLB is of the frame the owner's
        pte maps, and writable only where the pte is (no translation outlives an unmap, a
        migration, a COW break or a write-protect)."""
        wrong = []
        for kind, gru, _ in self.attached:
            if kind != "gru" or self.p.mms[gru.mm_id].exited or gru.ms_released:
                continue
            mm = self.p.mms[gru.mm_id]
            for vpn, entry in gru.tlb.items():
                address = vpn << PAGE_SHIFT
                pfn, flags = mm.pte(address) if mm.find_vma(address) else (-1, 0)
                if not flags & PTE_PRESENT or pfn != entry.pfn or (entry.writable and not flags & PTE_WRITE):
                    wrong.append(f"{gru.name}: {address:#x} -> pfn {entry.pfn}{' writable' if entry.writable else ''}, "
                                 f"pte pfn {pfn} flags {flags:#x}")
        assert wrong == [], "stale GRU translations: " + "; ".join(wrong)

    @invariant()
    def no_task_failed(self) -> None:
        self.rt.check()


SEEDS = (1, 2, 3, 4, 5)
MACHINE_SETTINGS = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    database=None,  # no example saved by one run replays in another: the seed alone decides
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
# A planted bug must be found in the first example of every seed (the @initialize rules meet
# both hazards in every example); the failing program is reported as found, not shrunk.
PLANTED_SETTINGS = settings(MACHINE_SETTINGS, max_examples=3, phases=[Phase.generate])


def run_machine(n: int, machine_settings: settings) -> None:
    """The machine as a test, on the stream of seed ``n``."""
    run_state_machine_as_test(seed(n)(lambda: PartitionMachine()), settings=machine_settings)


def test_partition_machine() -> None:
    run_machine(0, MACHINE_SETTINGS)


@pytest.mark.parametrize("semantics", MODERN)
def test_partition_machine_under_the_modern_cores(monkeypatch: pytest.MonkeyPatch, semantics: str) -> None:
    """The same machine under v5.10 and v6.6 (nodes/notifier.py MODERN): the oracles and the
    reference model agree there too (migration and reclaim bracket each page with
    range_start/end instead of invalidate_page), on a smaller budget."""
    monkeypatch.setattr(PartitionMachine, "semantics", semantics)
    run_machine(0, settings(MACHINE_SETTINGS, max_examples=max(5, MACHINE_SETTINGS.max_examples // 4)))


async def unmap_region_freeing_early(p, mm, start, end):  # type: ignore[no-untyped-def]
    """vmops.unmap_region with the bug planted: the gathered pages go back to the allocator
    before invalidate_range_start has told the secondaries."""
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


@pytest.mark.parametrize("n", SEEDS)
def test_machine_catches_a_page_freed_before_the_invalidate(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """The bug class of the seed history ("freed page still mapped in secondary MMU"): a GRU
    or KVM translation outlives its frame."""
    monkeypatch.setattr(vmops, "unmap_region", unmap_region_freeing_early)
    with pytest.raises(AssertionError, match=r"inv 1: frame freed while a secondary maps or pins it"):
        run_machine(n, PLANTED_SETTINGS)


@pytest.mark.parametrize("n", SEEDS)
def test_machine_catches_an_unregister_that_does_not_synchronize(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """mmu_notifier_unregister() without its synchronize_srcu(): it returns while a callout to
    the notifier is still running (what d34883d4e3's "no method of mn runs after this returns"
    rules out). Only unregister's synchronize is skipped; exit's still waits."""
    in_unregister = contextvars.ContextVar("in_unregister", default=False)  # per task
    unregister, synchronize = NotifierCore.unregister, NotifierCore._synchronize

    async def unregister_marked(self, mn, mm):  # type: ignore[no-untyped-def]
        token = in_unregister.set(True)  # seen by this task only, not by a concurrent exit
        try:
            return await unregister(self, mn, mm)
        finally:
            in_unregister.reset(token)

    async def synchronize_but_not_in_unregister(self, srcu):  # type: ignore[no-untyped-def]
        if in_unregister.get():
            return  # BUG: unregister does not wait for the callouts in flight
        await synchronize(self, srcu)

    monkeypatch.setattr(NotifierCore, "unregister", unregister_marked)
    monkeypatch.setattr(NotifierCore, "_synchronize", synchronize_but_not_in_unregister)
    with pytest.raises(AssertionError, match=r"inv 4: notifier method ran after unregister returned"):
        run_machine(n, PLANTED_SETTINGS)


@pytest.mark.parametrize("n", SEEDS)
def test_machine_catches_migration_racing_munmap(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Migration and reclaim as they were before the rmap-race fix (``plant_stale_vma_bugs``):
    compaction keeps using the VMA it found a page in after sleeping in invalidate_page,
    though munmap or mprotect split or removed it meanwhile."""
    plant_stale_vma_bugs(monkeypatch)
    with pytest.raises(AssertionError, match=r"migration entries left in|inv 7: frame not accounted for"):
        run_machine(n, PLANTED_SETTINGS)


@pytest.mark.parametrize("n", SEEDS)
def test_machine_catches_the_unguarded_dropin(monkeypatch: pytest.MonkeyPatch, n: int) -> None:
    """Every GRU with the v3.10 dropin (``GruMmu(dropin="v3.10")``): it installs the page an
    invalidation overtook while the lookup's answer was on the wire."""
    monkeypatch.setattr(PartitionMachine, "gru_dropin", "v3.10")
    with pytest.raises(AssertionError, match=r"inv 1: frame freed while a secondary maps or pins it|stale GRU translations"):
        run_machine(n, PLANTED_SETTINGS)
