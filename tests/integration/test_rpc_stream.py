"""The stream transport (``interconnect.transport: stream``, ``nodes/rpc/client.py``) on its
own: what a long-lived stream adds to the unary path, which every other integration test
already runs on both transports.

- A stream that breaks in the middle of an invalidation fences exactly the partition it led
  to: the owner's other secondaries keep getting their callouts, on their own streams.
- A stream that breaks fails the requests in flight on it as ``Unreachable``, and the next
  request opens a new stream.
- A request whose deadline passes is cancelled on the server too, and the stream stays open.
- Concurrent callouts to one secondary share stream messages, yet each is answered on its own
  and the secondary sees them in the order they were made.
- A request is started at once by the task reading the stream: one that waits is finished by
  the task that started it (``current_task()`` stays the same across its wait, as locks and SRCU
  readers need), while requests that never wait are answered meanwhile.
- A caller cancelled while its request is being written does not cancel the stream: the write
  is not the caller's (gRPC would cancel the whole stream).
- Requests are refused on a stream exactly as on a unary call: a stream opened with one
  partition's certificate claiming another is PERMISSION_DENIED before any request is read.
"""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from cluster.live import LivePartition
from nodes import vmops
from nodes.errors import PermissionDenied, Unreachable
from nodes.mm import PAGE_SIZE
from nodes.notifier import MmuNotifier
from nodes.rpc.pb import interconnect_pb2 as pb
from nodes.rpc.pb import interconnect_pb2_grpc as pb_grpc
from nodes.rpc.server import DST_KEY, OWNER_SERVICE_NAME, SRC_KEY

from liveparts import run_live

BASE = 0x10000000
P = PAGE_SIZE


def stream(live: LivePartition, dst: str) -> Any:
    """The open stream from ``live`` to partition ``dst`` (there must be one)."""
    (s,) = [s for (_, d, src), s in live.interconnect._streams.items() if (d, src) == (dst, live.name)]
    return s


async def until(cond: Any, what: str, limit: int = 5000) -> None:
    """Yield to the loop until ``cond()`` holds; bounded, so a stall fails the test."""
    for _ in range(limit):
        if cond():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"gave up waiting for {what}")


async def mapped(p: LivePartition, npages: int) -> Any:
    mm = p.partition.create_mm()
    await vmops.mmap(p.partition, mm, BASE, npages * P)
    await vmops.populate(p.partition, mm, BASE, npages * P)
    return mm


def test_a_stream_broken_mid_invalidation_fences_exactly_that_partition():
    async def body(p0, p1, p2):
        a = p0.partition
        mm = await mapped(p0, 16)
        slow = await p1.gru("p0", mm.id, flush_per_page_us=50_000.0)  # its flush stays in flight
        other = await p2.gru("p0", mm.id)
        for k in range(8):
            await slow.access(BASE + k * P)
            await other.access(BASE + k * P)
        await p1.flush_reports()
        await p2.flush_reports()
        munmap = asyncio.ensure_future(vmops.munmap(a, mm, BASE, 4 * P))
        await until(lambda: slow.stats.flushes >= 1, "p1 to start flushing")
        stream(p0, "p1").call.cancel()  # the stream p0 -> p1 breaks; p1 itself is alive
        await munmap
        assert [(f.host, f.during.split(" of ")[0]) for f in p0.owner_service.faults] == [
            ("p1", "invalidate_range_start")]
        assert p0.owner_service.fenced_hosts == {"p1"}
        assert all(other.translation(BASE + k * P) is None for k in range(4))  # p2 got its callouts
        assert all(other.translation(BASE + k * P) is not None for k in range(4, 8))
        await vmops.munmap(a, mm, BASE + 4 * P, 4 * P)  # p2 still gets callouts, on its own stream
        assert all(other.translation(BASE + k * P) is None for k in range(8))
        assert p0.interconnect.written["streams"] == 2  # p0 -> p1 and p0 -> p2, none re-opened to p1
        await p2.flush_reports()
        assert a.check_invariants() == []
        await vmops.exit_mmap(a, mm)
        assert a.check_invariants(final=True) == []

    run_live(body, "p0", "p1", "p2", transport="stream", deadline_us=5_000_000.0)


def test_a_broken_stream_fails_its_requests_unreachable_and_the_next_request_reopens_it():
    delay_us = {"p1": 10e6}  # p0's server holds p1's requests this long, until set to 0

    async def body(p0, p1):
        mm = await mapped(p0, 4)
        gup = ("get_user_pages", "p1", mm.id, BASE, 1, False, False)
        in_flight = [asyncio.ensure_future(p1.interconnect.call("p1", "p0", "owner", *gup)) for _ in range(3)]
        await until(lambda: p0.server.stream_servicer.in_flight() == 3, "the requests to reach p0")
        stream(p1, "p0").call.cancel()
        for request in in_flight:
            with pytest.raises(Unreachable, match="GetUserPages from p1 to p0"):
                await request
        delay_us["p1"] = 0.0
        (page,) = await p1.interconnect.call("p1", "p0", "owner", *gup)
        assert page.pfn == mm.pte(BASE)[0]
        assert p1.interconnect.written["streams"] == 2

    run_live(body, "p0", "p1", transport="stream", latency_us=lambda src, dst: delay_us.get(src, 0.0))


def test_a_request_past_its_deadline_is_cancelled_on_the_server_and_the_stream_stays_open():
    delay_us = {"p1": 60e6}

    async def body(p0, p1):
        mm = await mapped(p0, 4)
        gup = ("get_user_pages", "p1", mm.id, BASE, 1, False, False)
        with pytest.raises(Unreachable, match="GetUserPages from p1 to p0: DEADLINE_EXCEEDED"):
            await p1.interconnect.call("p1", "p0", "owner", *gup)
        await until(lambda: p0.server.stream_servicer.in_flight() == 0, "p0 to drop the request")
        # a task cancelled while its request is in flight: the server drops it too
        task = asyncio.ensure_future(p1.interconnect.call("p1", "p0", "owner", *gup))
        await until(lambda: p0.server.stream_servicer.in_flight() == 1, "the request to reach p0")
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await until(lambda: p0.server.stream_servicer.in_flight() == 0, "p0 to drop the cancelled request")
        delay_us["p1"] = 0.0
        assert len(await p1.interconnect.call("p1", "p0", "owner", *gup)) == 1
        assert p1.interconnect.written["streams"] == 1  # the same stream throughout
        assert p1.interconnect.written["calls"] == 5  # three requests, two cancellations

    run_live(body, "p0", "p1", transport="stream", deadline_us=200_000.0,
             latency_us=lambda src, dst: delay_us.get(src, 0.0))


class Recorder(MmuNotifier):
    """A secondary that records the callouts it gets, in order, and answers test_young with
    the page's number, so each answer can be told from the others."""

    def __init__(self) -> None:
        super().__init__("recorder")
        self.seen: list[int] = []

    async def invalidate_range_start(self, mm: Any, start: int, end: int) -> None:
        self.seen.append(start)
        await asyncio.sleep(0)

    def test_young(self, mm: Any, address: int) -> int:
        self.seen.append(address)
        return address // P


def test_concurrent_callouts_share_messages_yet_each_is_answered_alone_and_in_order():
    async def body(p0, p1):
        recorder = Recorder()
        nid = p1.secondary_service.add(recorder)
        call = p0.interconnect.call
        await call("p0", "p1", "secondary", "callout", nid, "test_young", 1, "m", (BASE,))  # opens the stream
        recorder.seen.clear()
        before = dict(p0.interconnect.written)
        n = 64
        starts = [BASE + k * P for k in range(n)]
        await asyncio.gather(*(call("p0", "p1", "secondary", "callout", nid, "invalidate_range_start", 1, "m",
                                    (s, s + P)) for s in starts))
        assert recorder.seen == starts  # in the order the tasks made them
        young = await asyncio.gather(*(call("p0", "p1", "secondary", "callout", nid, "test_young", 1, "m", (s,))
                                       for s in starts))
        assert young == [s // P for s in starts]  # each its own answer
        written = {k: p0.interconnect.written[k] - before.get(k, 0) for k in ("messages", "calls", "streams")}
        assert written["calls"] == 2 * n and written["streams"] == 0
        assert written["messages"] < n, written  # coalesced: fewer messages than requests

    run_live(body, "p0", "p1", transport="stream")


class Waiter(MmuNotifier):
    """A secondary whose invalidate_range_start waits until released, recording the task it
    runs in before and after the wait; its test_young answers at once."""

    def __init__(self) -> None:
        super().__init__("waiter")
        self.release = asyncio.Event()
        self.tasks: list[tuple[Any, Any]] = []

    async def invalidate_range_start(self, mm: Any, start: int, end: int) -> None:
        before = asyncio.current_task()
        await self.release.wait()
        self.tasks.append((before, asyncio.current_task()))

    def test_young(self, mm: Any, address: int) -> int:
        return address // P


def test_a_request_that_waits_keeps_its_task_while_requests_that_do_not_are_answered():
    async def body(p0, p1):
        waiter = Waiter()
        nid = p1.secondary_service.add(waiter)
        call = p0.interconnect.call
        waiting = [asyncio.ensure_future(call("p0", "p1", "secondary", "callout", nid, "invalidate_range_start", 1,
                                              "m", (BASE + k * P, BASE + (k + 1) * P))) for k in range(3)]
        await until(lambda: p1.server.stream_servicer.in_flight() == 3, "the callouts to reach p1")
        for k in range(5):  # answered while the three wait, on the same stream
            assert await call("p0", "p1", "secondary", "callout", nid, "test_young", 1, "m", (BASE + k * P,)) == \
                BASE // P + k
        assert not any(w.done() for w in waiting)
        waiter.release.set()
        await asyncio.gather(*waiting)
        assert len(waiter.tasks) == 3
        assert all(before is after and before is not None for before, after in waiter.tasks)
        assert len({before for before, _ in waiter.tasks}) == 3  # each waited in a task of its own
        assert p0.interconnect.written["streams"] == 1

    run_live(body, "p0", "p1", transport="stream")


def test_a_caller_cancelled_while_its_request_is_written_leaves_the_stream_open():
    async def body(p0, p1):
        waiter = Waiter()
        nid = p1.secondary_service.add(waiter)
        call = p0.interconnect.call
        assert await call("p0", "p1", "secondary", "callout", nid, "test_young", 1, "m", (BASE,)) == BASE // P
        for _ in range(20):
            task = asyncio.ensure_future(call("p0", "p1", "secondary", "callout", nid, "invalidate_range_start", 1,
                                              "m", (BASE, BASE + P)))
            await asyncio.sleep(0)  # its first step: its message handed to gRPC, the write in progress
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
        assert await call("p0", "p1", "secondary", "callout", nid, "test_young", 1, "m", (BASE + P,)) == BASE // P + 1
        assert p0.interconnect.written["streams"] == 1  # never broken, never re-opened
        await until(lambda: p1.server.stream_servicer.in_flight() == 0, "p1 to drop the cancelled callouts")
        assert p0.owner_service.faults == []

    run_live(body, "p0", "p1", transport="stream")


def test_a_stream_opened_with_p1s_certificate_claiming_p2_is_refused():
    async def body(p0, p1, p2):
        mm = await mapped(p0, 1)
        with pytest.raises(PermissionDenied, match="Exchange: the caller claims to be partition p2, but its "
                                                   "certificate is for p1"):
            await p1.interconnect.call("p2", "p0", "owner", "register", "p2", "n2", "gru", [], mm.id)
        # raw: the stream ends PERMISSION_DENIED and no request on it is handled
        ident = p1.identity
        channel = grpc.aio.secure_channel(p0.address, ident.channel_credentials(), options=ident.target_name("p0"))
        try:
            call = pb_grpc.StreamServiceStub(channel).Exchange(metadata=((SRC_KEY, "p2"), (DST_KEY, "p0")))
            request = pb.RegisterNotifierRequest(host="p2", notifier_id="n3", name="gru", mm_id=mm.id)
            with pytest.raises(grpc.aio.AioRpcError) as info:  # on the write if the refusal came first
                await call.write(pb.ExchangeRequest(calls=[pb.StreamCall(
                    id=1, method=f"/{OWNER_SERVICE_NAME}/RegisterNotifier", request=request.SerializeToString(),
                    timeout_us=5e6)]))
                await call.read()
            assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
        finally:
            await channel.close()
        assert p0.owner_service.notifiers == {}
        # p1 as itself, acting for p2 (the request's host): refused per request, the stream lives on
        with pytest.raises(PermissionDenied, match="partition p1 cannot act for partition 'p2'"):
            await p1.interconnect.call("p1", "p0", "owner", "register", "p2", "n2", "gru", [], mm.id)
        await p1.interconnect.call("p1", "p0", "owner", "register", "p1", "n1", "gru", [], mm.id)
        assert list(p0.owner_service.notifiers) == [("p1", "n1")]

    run_live(body, "p0", "p1", "p2", transport="stream", tls=True)
