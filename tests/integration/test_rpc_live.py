"""The model over gRPC: a secondary on p1 maps an mm of p0; faults, callouts, exit and
unregister cross real sockets; errors come back as the model errors they were."""

from __future__ import annotations

import asyncio

import pytest

from nodes import vmops
from nodes.errors import BadAddress, NotFound, Released
from nodes.mm import PAGE_SIZE

BASE = 0x10000000


async def _mapped(p, npages=16):
    mm = p.partition.create_mm()
    await vmops.mmap(p.partition, mm, BASE, npages * PAGE_SIZE)
    await vmops.populate(p.partition, mm, BASE, npages * PAGE_SIZE)
    return mm


def test_gru_on_p1_faults_p0_pages_and_munmap_on_p0_invalidates_it(live):
    async def body(p0, p1):
        mm = await _mapped(p0)
        gru = await p1.gru("p0", mm.id)
        stamps = [await gru.access(BASE + i * PAGE_SIZE) for i in range(4)]
        assert [s[1] for s in stamps] == [(BASE >> 12) + i for i in range(4)]  # the pages' own stamps
        assert len(gru.tlb) == 4
        await p1.flush_reports()
        assert int(p0.partition.oracle.smap.sum()) == 4  # the owner's oracle knows of them
        await vmops.munmap(p0.partition, mm, BASE, 2 * PAGE_SIZE)  # callouts cross to p1
        assert len(gru.tlb) == 2
        assert p0.interconnect.messages["callout"] >= 2
        await p1.flush_reports()
        assert p0.partition.check_invariants() == []
        t = await gru.unregister()
        assert t.total_us > 0 and t.srcu_wait_us >= 0
        assert p0.partition.check_invariants(final=True) == []

    live(body, "p0", "p1")


def test_exit_on_p0_releases_the_remote_gru_and_is_timed(live):
    async def body(p0, p1):
        mm = await _mapped(p0)
        gru = await p1.gru("p0", mm.id)
        await gru.access(BASE)
        total, release, wait = await p1.interconnect.call("p1", "p0", "owner", "exit", mm.id)
        assert total >= release >= 0 and wait >= 0
        assert gru.ms_released  # ->release reached p1 over gRPC
        with pytest.raises(Released):
            await gru.access(BASE)
        await p1.flush_reports()
        assert p0.partition.check_invariants(final=True) == []

    live(body, "p0", "p1")


def test_model_errors_come_back_as_themselves(live):
    async def body(p0, p1):
        mm = await _mapped(p0, npages=2)
        gru = await p1.gru("p0", mm.id)
        with pytest.raises(BadAddress, match=hex(BASE + 64 * PAGE_SIZE)):
            await gru.access(BASE + 64 * PAGE_SIZE)  # outside every VMA of p0's mm
        with pytest.raises(NotFound, match="mm 999"):
            await p1.interconnect.call("p1", "p0", "owner", "get_user_pages", "p1", 999, BASE, 1, False, False)
        p1.directory["p7"] = p0.address  # a request for p7 that reaches p0
        with pytest.raises(NotFound, match="this is partition p0, not p7"):
            await p1.interconnect.call("p1", "p7", "owner", "exit", mm.id)
        await gru.unregister()

    live(body, "p0", "p1")


def test_xpmem_attach_from_p1_faults_pages_of_p0_and_remove_on_p0_detaches_it(live):
    from nodes.secondary.xpmem import XPMEM_RDWR, XpmemCred

    source, attacher = XpmemCred(tgid=10, uid=1000, gid=1000), XpmemCred(tgid=20, uid=1000, gid=1000)

    async def body(p0, p1):
        mm = await _mapped(p0)
        drv = await p1.xpmem("p0", mm.id, cred=source)
        segid = await drv.make(BASE, 16 * PAGE_SIZE, 0o600)  # XpmemMake, served by p0
        assert list(p0.partition.xpmem.segments_of(mm.id)) == [segid]
        att = await drv.attach(await drv.get(segid, XPMEM_RDWR, attacher), 0, 8 * PAGE_SIZE, attacher)
        for k in range(6):
            await drv.access(att, att.vaddr + k * PAGE_SIZE)  # pinning faults over gRPC
        frames = p0.partition.frames
        assert int(frames.pincount.sum()) == 6
        await vmops.munmap(p0.partition, mm, BASE, 2 * PAGE_SIZE)  # range_end crosses to p1
        assert sorted(att.ptes) == [2, 3, 4, 5] and int(frames.pincount.sum()) == 4
        await p0.partition.xpmem.remove(segid, source)  # p0 asks p1 to detach
        assert att.destroyed and int(frames.pincount.sum()) == 0
        assert p0.partition.xpmem.attachments == {}
        await drv.unregister()
        await p1.flush_reports()
        assert p0.partition.check_invariants(final=True) == []
        assert p0.owner_service.faults == []

    live(body, "p0", "p1")


@pytest.mark.parametrize("dropin", ["guarded", "v3.10"])
def test_dropin_overtaken_by_an_invalidation_over_grpc_is_retried_unless_v3_10(live, dropin):
    """The owner's invalidate sequence crosses real sockets both ways: p0's answer to the GRU's
    lookup is held until a migration of the page has finished (its invalidate_page reached p1
    carrying a later sequence). The guarded GRU discards the answer and looks again; the v3.10
    one installs the freed frame, which the owner's oracle reports."""
    import asyncio

    async def body(p0, p1):
        mm = await _mapped(p0, 1)
        gru = await p1.gru("p0", mm.id)
        local = p0.owner_service.local  # where p0's servicer looks pages up
        real_lookup = local.get_user_pages
        answered, release = asyncio.Event(), asyncio.Event()

        async def held_lookup(*args, **kwargs):
            refs = await real_lookup(*args, **kwargs)
            if not answered.is_set():  # the first answer waits on the wire
                answered.set()
                await release.wait()
            return refs

        local.get_user_pages = held_lookup
        old = mm.pte(BASE)[0]
        dropin_task = asyncio.ensure_future(gru.access(BASE))
        await asyncio.wait_for(answered.wait(), 10)
        assert await vmops.migrate_pages(p0.partition, mm, BASE, PAGE_SIZE) == 1  # old frame freed
        release.set()
        stamp = await dropin_task
        await p1.flush_reports()
        entry = gru.translation(BASE)
        if dropin == "guarded":
            assert gru.stats.guard_retries == 1 and entry.pfn == mm.pte(BASE)[0] != old
            assert stamp == p0.partition.frames.stamp(entry.pfn)
            assert p0.partition.oracle.violations == []
        else:
            assert gru.stats.guard_retries == 0 and entry.pfn == old
            assert {v.invariant for v in p0.partition.oracle.violations} >= {1}

    live(body, "p0", "p1", gru_dropin=dropin)


def test_a_ray_partition_host_builds_its_partition_with_every_field_of_the_config():
    # the ray backend's actor body, without Ray: semantics and the SRCU algorithm reach the core
    from cluster.ray_backend import PartitionHost, RayConfig

    async def body() -> tuple[str, str]:
        host = PartitionHost("p0", RayConfig(partitions=2, semantics="unregister-race", srcu_algorithm="tree",
                                             tls=False, nframes=4096))
        await host.start("127.0.0.1", None)
        try:
            return host.live.partition.core.semantics, host.live.partition.srcu_for(None).statistics().algorithm
        finally:
            await host.live.stop()

    assert asyncio.run(body()) == ("unregister-race", "tree")
