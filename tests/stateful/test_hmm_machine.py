"""A hypothesis state machine over an HMM device mirror (nodes/secondary/hmm.py) of one mm, under
v5.10: device accesses (faults through hmm_range_fault), CPU accesses on the owner (which fault
device-private pages back: migrate_to_ram), migrations to device memory, munmap and mmap again,
mprotect, and a device access racing an munmap, beside a plain model of what the device page
table may hold.

After every step (each runs to completion, the races included):

- the oracles are clean (the owner's and the device memory's, on the same partition here);
- every device pte agrees with the owner's page table: a pte of system memory maps the frame the
  owner's pte maps now (present), and a pte of device memory the device page the owner's
  device-private entry names (dmirror's coherence: the notifier keeps the mirror exact);
- every device page allocated is referred to by exactly one device-private entry.

At the end the mm exits and the mirror is removed: no device page is left allocated, and every
frame is accounted for."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, seed, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test

from cluster.vtime import VirtualClock, VirtualTimeLoop
from nodes import migrate_device, vmops
from nodes.errors import ModelError
from nodes.mm import PAGE_SIZE, PROT_READ, PROT_WRITE, PTE_DEVICE_PRIVATE, PTE_PRESENT
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary import hmm as hmm_module
from nodes.secondary.hmm import DeviceMemory, HmmMirror

P = PAGE_SIZE
BASE = 0x10000000
NPAGES = 8
ONE_WAY_US = 4.0
pages = st.integers(0, NPAGES - 1)


class DistantOwner(LocalOwner):
    """``LocalOwner`` as seen from another partition: each answer of read_begin and
    hmm_range_fault takes ``ONE_WAY_US`` to come back (the request's way is not needed for the
    races: the answer in flight is the window an invalidation can overtake)."""

    async def interval_read_begin(self, mni: Any) -> int:
        seq = await super().interval_read_begin(mni)
        await self.part.runtime.sleep(ONE_WAY_US)
        return seq

    async def hmm_range_fault(self, *args: Any, **kw: Any) -> Any:
        refs = await super().hmm_range_fault(*args, **kw)
        await self.part.runtime.sleep(ONE_WAY_US)
        return refs


class HmmMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.loop = VirtualTimeLoop()
        self.rt: Runtime = self.run(self._runtime())
        self.p = Partition(self.rt, nframes=128, semantics="v5.10")
        self.mm = self.p.create_mm()
        self.run(vmops.mmap(self.p, self.mm, BASE, NPAGES * P))
        self.run(vmops.populate(self.p, self.mm, BASE, NPAGES * P))
        self.dev = HmmMirror(self.rt, DistantOwner(self.p), self.mm.id, "gpu", tlb_invalidate_us=3.0,
                             devmem=DeviceMemory("gpu", 6, self.p.oracle))
        self.run(self.dev.register())

    async def _runtime(self) -> Runtime:
        return Runtime(VirtualClock())

    def run(self, coro: Any) -> Any:
        return self.loop.run_until_complete(coro)

    async def _quietly(self, coro: Any) -> None:
        try:
            await coro
        except ModelError:  # refused by the model (a hole, read-only, device memory full): the race
            pass

    def attempt(self, *coros: Any) -> None:
        """Run these concurrently to completion, each refusal a kernel answer, not a failure."""
        async def all_of() -> None:
            await asyncio.gather(*(self._quietly(c) for c in coros))

        self.run(all_of())

    # -- rules ----------------------------------------------------------------------------------

    @rule(k=pages, write=st.booleans())
    def device_access(self, k: int, write: bool) -> None:
        self.attempt(self.dev.access(BASE + k * P, write=write))

    @rule(k=pages, write=st.booleans())
    def cpu_access(self, k: int, write: bool) -> None:
        self.attempt(vmops.touch(self.p, self.mm, BASE + k * P, write=write))

    @rule(k=pages, n=st.integers(1, 4))
    def migrate_to_device(self, k: int, n: int) -> None:
        n = min(n, NPAGES - k)
        self.attempt(self.dev.migrate_to_device(BASE + k * P, n))

    @rule(k=pages, n=st.integers(1, 3))
    def munmap_and_mmap(self, k: int, n: int) -> None:
        n = min(n, NPAGES - k)
        self.attempt(vmops.munmap(self.p, self.mm, BASE + k * P, n * P))
        self.attempt(vmops.mmap(self.p, self.mm, BASE + k * P, n * P))

    @rule(k=pages, writable=st.booleans())
    def mprotect(self, k: int, writable: bool) -> None:
        self.attempt(vmops.mprotect(self.p, self.mm, BASE + k * P, P, PROT_READ | (PROT_WRITE if writable else 0)))

    @rule(k=pages, j=pages, delay=st.integers(0, 12))
    def device_fault_races_munmap(self, k: int, j: int, delay: int) -> None:
        async def later() -> None:
            await self.rt.sleep(delay)
            await vmops.munmap(self.p, self.mm, BASE + j * P, P)
            await vmops.mmap(self.p, self.mm, BASE + j * P, P)

        self.attempt(self.dev.access(BASE + k * P), later())

    @rule(k=pages, delay=st.integers(0, 12))
    def cpu_fault_races_migration(self, k: int, delay: int) -> None:
        async def later() -> None:
            await self.rt.sleep(delay)
            await vmops.touch(self.p, self.mm, BASE + k * P)

        self.attempt(self.dev.migrate_to_device(BASE, NPAGES // 2), later())

    # -- invariants -----------------------------------------------------------------------------

    @invariant()
    def oracles_are_clean(self) -> None:
        assert [str(v) for v in self.p.oracle.violations] == []

    @invariant()
    def the_device_mirrors_the_owner(self) -> None:
        for vpn, pte in self.dev.pt.items():
            vma = self.mm.find_vma(vpn * P)
            assert vma is not None, f"device pte of {vpn * P:#x}, which no VMA covers"
            i = vma.index(vpn * P)
            flags, value = int(vma.flags[i]), int(vma.pfn[i])
            if pte.device < 0:
                assert flags & PTE_PRESENT and value == pte.pfn, f"device pte of {vpn * P:#x} maps {pte.pfn}, the owner {value}"
            else:
                assert flags & PTE_DEVICE_PRIVATE and migrate_device.split_device_entry(value)[1] == pte.device

    @invariant()
    def device_pages_are_accounted_for(self) -> None:
        entries = migrate_device.count_device_private(self.p).get(self.dev.pgmap_owner, 0)
        assert entries == self.dev.devmem.allocated

    def teardown(self) -> None:
        try:
            self.run(vmops.exit_mmap(self.p, self.mm))
            self.run(self.dev.unregister())
            assert self.dev.devmem.allocated == 0
            assert [str(v) for v in self.p.check_invariants(final=True)] == []
            assert [str(v) for v in self.p.oracle.violations] == []
        finally:
            self.loop.close()


MACHINE_SETTINGS = settings(max_examples=40, stateful_step_count=30, deadline=None, database=None,
                            suppress_health_check=[HealthCheck.too_slow])


def test_hmm_machine() -> None:
    run_state_machine_as_test(HmmMachine, settings=MACHINE_SETTINGS)


def test_hmm_machine_catches_a_device_that_skips_read_retry(monkeypatch: pytest.MonkeyPatch) -> None:
    """Planted: the fault installs without mmu_interval_read_retry(): an answer an invalidation
    overtook is installed, a translation inside its window or of a frame since freed."""
    monkeypatch.setattr(hmm_module, "mmu_interval_read_retry", lambda mni, seq: False)
    with pytest.raises(AssertionError):
        run_state_machine_as_test(seed(0)(lambda: HmmMachine()), settings=settings(
            MACHINE_SETTINGS, max_examples=100, phases=[Phase.generate]))
