"""The KVM-style shadow MMU of nodes/secondary/kvm.py (REFERENCE section 5, invariants 1, 2, 6).

mmu_notifier_count / mmu_notifier_seq retries when an invalidation races a fault (exact retry
counts and virtual times, with the lookup behind a network round trip), the accessed bit through
the atomic callouts (clear_flush_young / test_young called by the core under the page-table
lock, and by reclaim), change_pte repointing an spte, and release.
"""

from __future__ import annotations

import numpy as np
import pytest

from nodes import vmops
from nodes.errors import BadAddress, InvalidArgument, KernelBug, NotFound, Released
from nodes.mm import PAGE_SHIFT, PAGE_SIZE, PTE_PRESENT, PTE_WRITE, PTE_YOUNG, TASK_SIZE
from nodes.notifier import OPS, has_op
from nodes.owner import LocalOwner
from nodes.partition import Partition
from nodes.runtime import Runtime
from nodes.secondary.kvm import KvmMmu
from doubles import DelayedOwner

P = PAGE_SIZE
BASE = 0x4000_0000
NPAGES = 32
REFAULT = 1.0


async def setup(rt: Runtime, *, one_way_us: float = 0.0, kvm_cls=KvmMmu, **config):
    p = Partition(rt, nframes=4096)
    mm = p.create_mm()
    mm.add_vma(BASE, NPAGES * P)
    owner = DelayedOwner(p, one_way_us) if one_way_us else LocalOwner(p)
    kvm = kvm_cls(rt, owner, mm.id, "kvm0", refault_us=REFAULT, **config)
    await kvm.register()
    return p, mm, kvm


async def timed(rt: Runtime, coro):
    result = await coro
    return result, rt.now()


def test_kvm_implements_all_seven_ops(vrun):
    async def body(rt):
        _, _, kvm = await setup(rt)
        return {op for op in OPS if has_op(kvm, op)}

    assert vrun(body) == set(OPS)


def test_malformed_callouts_are_refused_before_anything_changes(vrun):
    """A callout from another partition can carry anything: a bad range or address, a pte
    that is no frame or has bits no pte has, another mm. Refused with the value named; the
    counters and sptes are untouched (an unpaired but well-formed range_end is still the
    kernel's BUG_ON, below)."""
    async def body(rt):
        p, mm, kvm = await setup(rt)
        await kvm.access(BASE)
        other = p.create_mm()
        with pytest.raises(InvalidArgument, match="empty range"):
            await kvm.invalidate_range_start(mm, BASE, BASE)
        with pytest.raises(InvalidArgument, match="outside user space"):
            kvm.invalidate_range_end(mm, -P, BASE)
        with pytest.raises(InvalidArgument, match="address -0x1 is outside user space"):
            await kvm.invalidate_page(mm, -1)
        with pytest.raises(InvalidArgument, match="frame -3, not a frame number"):
            kvm.change_pte(mm, BASE, (-3, PTE_PRESENT))
        with pytest.raises(InvalidArgument, match="pte flags 256 outside the PTE_"):
            kvm.change_pte(mm, BASE, (7, 256))
        with pytest.raises(InvalidArgument, match=f"address {TASK_SIZE:#x} is outside"):
            kvm.clear_flush_young(mm, TASK_SIZE)
        with pytest.raises(InvalidArgument, match="outside user space"):
            kvm.test_young(mm, -P)
        with pytest.raises(NotFound, match=f"test_young is about mm {other.id}, but this VM maps mm {mm.id}"):
            kvm.test_young(other, BASE)
        with pytest.raises(NotFound, match=f"release is about mm {other.id}"):
            kvm.release(other)
        spte = kvm.spte(BASE)
        assert (kvm.mmu_notifier_count, kvm.mmu_notifier_seq, kvm.released) == (0, 0, False)
        assert spte is not None and spte.young and p.oracle.ok

    vrun(body)


def test_fault_installs_a_young_spte_and_reports_it(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        stamp = await kvm.access(BASE + 5 * P, write=True)
        pfn, flags = mm.pte(BASE + 5 * P)
        spte = kvm.spte(BASE + 5 * P)
        assert (spte.pfn, spte.writable, spte.young) == (pfn, True, True)
        assert stamp == p.frames.stamp(pfn) and p.oracle.smap[pfn] == 1
        assert p.frames.pincount[pfn] == 0  # KVM does not pin: it relies on the notifier
        assert (kvm.stats.faults, kvm.stats.retries) == (1, 0)
        assert p.oracle.ok

    vrun(body)


def test_fault_retries_when_an_invalidation_ended_during_its_lookup(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt, one_way_us=10)
        fault = rt.spawn(timed(rt, kvm.access(BASE)), name="fault")
        await rt.sleep(5)
        await p.core.invalidate_range_start(mm, BASE, BASE + P)
        await p.core.invalidate_range_end(mm, BASE, BASE + P)  # both at t=5: seq 0 -> 1
        assert (kvm.mmu_notifier_count, kvm.mmu_notifier_seq) == (0, 1)
        stamp, t = await fault
        # reply at 20: seq changed -> retry; refault at 21, second reply at 41 -> install
        assert kvm.stats.retries == 1
        assert t == 2 * 20 + REFAULT
        assert stamp == p.frames.stamp(mm.pte(BASE)[0])
        assert p.oracle.ok

    vrun(body)


def test_fault_keeps_retrying_while_an_invalidation_is_in_progress(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt, one_way_us=10)
        fault = rt.spawn(timed(rt, kvm.access(BASE)), name="fault")
        await rt.sleep(5)
        await p.core.invalidate_range_start(mm, BASE, BASE + P)  # count = 1 from t=5
        await rt.sleep(100 - rt.now())
        await p.core.invalidate_range_end(mm, BASE, BASE + P)  # count = 0, seq = 1 at t=100
        _, t = await fault
        # replies at 20, 41, 62, 83 see count != 0; the one at 104 sees seq != the 0 read at
        # 84; the lookup started at 105 (seq 1) installs at 125
        assert kvm.stats.retries == 5
        assert t == 125
        assert p.oracle.ok, p.oracle.violations

    vrun(body)


class KvmIgnoringRetry(KvmMmu):
    """A broken KVM: never retries a fault that raced an invalidation."""

    def mmu_notifier_retry(self, mmu_seq: int) -> bool:
        return False


@pytest.mark.parametrize("kvm_cls, expected", [(KvmMmu, set()), (KvmIgnoringRetry, {6})])
def test_oracle_catches_a_fault_installed_after_munmap_freed_its_page(vrun, kvm_cls, expected):
    async def body(rt):
        p, mm, kvm = await setup(rt, one_way_us=10, kvm_cls=kvm_cls)
        await vmops.touch(p, mm, BASE, write=True)

        async def fault() -> None:
            try:
                await kvm.access(BASE)
            except BadAddress:
                pass

        task = rt.spawn(fault(), name="fault")
        await rt.sleep(12)  # the lookup ran at 10; its reply lands at 20
        await vmops.munmap(p, mm, BASE, P)  # frees the page the reply names
        await vmops.touch(p, mm, BASE + 4 * P, write=True)  # and reuses it: a wrong read (6)
        await task
        return {v.invariant for v in p.oracle.violations}

    assert vrun(body) == expected


def test_young_bit_through_the_atomic_callouts_of_the_core(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        await kvm.access(BASE)
        with mm.page_table_lock:  # the callers' context: no SleepingInAtomicContext
            assert p.core.test_young(mm, BASE) == 1
            assert p.core.clear_flush_young(mm, BASE) == 1
            assert p.core.clear_flush_young(mm, BASE) == 0
            assert p.core.test_young(mm, BASE) == 0
            assert p.core.test_young(mm, BASE + P) == 0  # no spte there
        assert kvm.spte(BASE).young is False
        await kvm.access(BASE)  # a hit sets it again
        with mm.page_table_lock:
            assert p.core.test_young(mm, BASE) == 1

    vrun(body)


def test_reclaim_keeps_a_page_the_guest_touched_and_then_unmaps_the_spte(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        await kvm.access(BASE)
        pfn, _ = mm.pte(BASE)
        assert await vmops.reclaim(p, mm, BASE, P) == 0  # primary young: kept, both cleared
        assert kvm.spte(BASE).young is False
        await kvm.access(BASE)  # only the spte becomes young
        assert not mm.pte(BASE)[1] & PTE_YOUNG
        assert await vmops.reclaim(p, mm, BASE, P) == 0  # kept because the guest touched it
        assert await vmops.reclaim(p, mm, BASE, P) == 1  # nobody did: invalidate_page
        assert kvm.spte(BASE) is None and p.frames.is_free(pfn)
        assert p.oracle.ok, p.oracle.violations
        await kvm.access(BASE)  # faults the page back in from "swap"
        assert p.oracle.ok

    vrun(body)


def _replace_pte(p: Partition, mm, address: int, flags: int) -> tuple[int, int]:
    """What do_wp_page does under the PT lock, bracketed by the caller: a new frame with the
    same contents mapped with set_pte_at_notify (change_pte first); returns (old, new)."""
    vma = mm.vma_or_fault(address)
    i = vma.index(address)
    old = int(vma.pfn[i])
    new = int(p.frames.alloc(mm.id, [address >> PAGE_SHIFT])[0])
    p.frames.copy_contents(np.array([new]), np.array([old]))
    with mm.page_table_lock:

        def set_pte() -> None:
            vma.pfn[i], vma.flags[i] = new, flags

        p.core.set_pte_at_notify(mm, address, (new, flags), set_pte)
    return old, new


def test_change_pte_repoints_the_spte_read_only(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        await kvm.access(BASE, write=True)
        seq = kvm.mmu_notifier_seq
        # unbracketed, as before 6bdb913f0a: change_pte finds the spte
        old, new = _replace_pte(p, mm, BASE, PTE_PRESENT)
        spte = kvm.spte(BASE)
        assert (spte.pfn, spte.writable, spte.young) == (new, False, False)
        assert kvm.mmu_notifier_seq == seq + 1 and kvm.stats.change_pte_updates == 1
        assert (p.oracle.smap[old], p.oracle.smap[new]) == (0, 1)
        p.frames.put(old)  # the old page goes; the spte no longer maps it
        assert await kvm.access(BASE) == p.frames.stamp(new)
        assert kvm.stats.stamp_lookups == 1
        assert p.oracle.ok, p.oracle.violations

    vrun(body)


def test_change_pte_to_a_writable_pte_drops_the_spte(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        await kvm.access(BASE, write=True)
        old, new = _replace_pte(p, mm, BASE, PTE_PRESENT | PTE_WRITE)
        assert kvm.spte(BASE) is None and kvm.stats.change_pte_drops == 1
        assert p.oracle.smap[old] == 0
        p.frames.put(old)
        assert p.oracle.ok

    vrun(body)


def test_ksm_merge_brackets_change_pte_so_the_spte_is_already_gone(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        mm_a = p.create_mm()
        mm_a.add_vma(BASE, P)
        await vmops.touch(p, mm_a, BASE, write=True)
        await kvm.access(BASE, write=True)  # the guest maps mm's page
        assert await vmops.ksm_merge(p, mm_a, BASE, mm, BASE)
        assert kvm.spte(BASE) is None and kvm.stats.change_pte_updates == 0
        kpfn = mm_a.pte(BASE)[0]
        assert await kvm.access(BASE) == p.frames.stamp(kpfn)  # now the KSM page, read-only
        assert kvm.spte(BASE).pfn == kpfn and not kvm.spte(BASE).writable
        assert p.oracle.ok, p.oracle.violations

    vrun(body)


def test_munmap_zaps_sptes_and_later_faults_fail(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        for k in range(4):
            await kvm.access(BASE + k * P, write=True)
        await vmops.munmap(p, mm, BASE, 2 * P)
        assert sorted(kvm.sptes) == [(BASE >> PAGE_SHIFT) + 2, (BASE >> PAGE_SHIFT) + 3]
        with pytest.raises(BadAddress):
            await kvm.access(BASE)
        assert (kvm.mmu_notifier_count, kvm.mmu_notifier_seq) == (0, 1)
        assert p.oracle.violations == []

    vrun(body)


def test_release_at_exit_drops_every_spte(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        for k in range(4):
            await kvm.access(BASE + k * P)
        await vmops.exit_mmap(p, mm)
        assert kvm.released and kvm.sptes == {}
        with pytest.raises(Released):
            await kvm.access(BASE)
        assert p.oracle.violations == []
        assert p.check_invariants(final=True) == []

    vrun(body)


def test_unpaired_range_end_is_the_kernels_bug_on(vrun):
    async def body(rt):
        p, mm, kvm = await setup(rt)
        with pytest.raises(KernelBug, match="mmu_notifier_count < 0"):
            await p.core.invalidate_range_end(mm, BASE, BASE + P)

    vrun(body)
