"""The instrument's own floor (``GrpcInterconnect.probe``): null RPCs and null callouts between
two live partitions, past any injected latency, not counted as modelled traffic."""

from __future__ import annotations

import asyncio

import pytest

from nodes.errors import Unreachable
from nodes.remote import PROBE_NOTIFIER, SECONDARY_SERVICE

INJECTED_US = 30_000_000.0  # 30 s per callout: far past the deadline below
DEADLINE_US = 1_000_000.0


def test_the_probe_times_null_rpcs_and_null_callouts_and_counts_no_message(live):
    async def body(p0, p1):
        got = await p0.interconnect.probe("p0", "p1", 7)
        assert sorted(got) == ["model_us", "rpc_us"]
        assert len(got["rpc_us"]) == len(got["model_us"]) == 7
        assert all(v > 0 for v in got["rpc_us"] + got["model_us"])
        assert sum(p0.interconnect.messages.values()) == 0  # not modelled traffic
        assert p0.partition.check_invariants(final=True) == [] and p1.partition.check_invariants(final=True) == []

    live(body, "p0", "p1")


def test_no_latency_is_injected_into_the_probe_but_a_plain_callout_gets_it(live):
    """With 30 s injected into every callout and a 1 s deadline, the probe's null callouts
    still answer (nothing was injected into them), while the same null callout sent as a
    plain request waits out the injection and misses its deadline."""

    async def body(p0, p1):
        got = await p0.interconnect.probe("p0", "p1", 3)
        assert len(got["model_us"]) == 3
        with pytest.raises(Unreachable):
            await p0.interconnect.call("p0", "p1", SECONDARY_SERVICE, "callout", PROBE_NOTIFIER,
                                       "invalidate_range_start", 0, "probe", (0, 4096), 0, kind="callout")

    live(body, "p0", "p1", callout_latency_us=INJECTED_US, deadline_us=DEADLINE_US)


@pytest.mark.parametrize("count", [0, -1, 2.0, True])
def test_a_bad_probe_count_is_refused_naming_it(live, count):
    async def body(p0, p1):
        with pytest.raises(ValueError, match=f"probe count must be an integer >= 1, got {count!r}"):
            await p0.interconnect.probe("p0", "p1", count)

    live(body, "p0", "p1")


def test_probing_a_partition_without_an_address_is_unreachable(live):
    async def body(p0, p1):
        with pytest.raises(Unreachable, match="no address for partition 'p7'"):
            await p0.interconnect.probe("p0", "p7", 1)

    live(body, "p0", "p1")


def test_the_loaded_probe_keeps_probing_until_stopped_and_gives_up_on_a_dead_partition(live):
    from cluster.live import LoadedProbe

    async def body(p0, p1, p2):
        probe = LoadedProbe(p0, ["p1", "p2"], 0.0)  # no pause: as many as the loop allows

        async def laps(n):  # until p1 has n more samples; each lap awaits real round trips
            target = len(probe.samples["p1"]) + n
            # a probe that died or hangs fails the test instead of stalling it: it is given
            # twelve times the interconnect's deadline, which ends any call it makes
            give_up = asyncio.get_running_loop().time() + 12 * p0.interconnect.deadline_us / 1e6
            while len(probe.samples["p1"]) < target:
                assert not probe._task.done(), f"the probe ended early: {probe._task.exception()!r}"
                if asyncio.get_running_loop().time() > give_up:
                    pytest.fail(f"the probe is stuck: samples {({d: len(v) for d, v in probe.samples.items()})}, "
                                f"p1 needs {target}; it waits at {probe._task.get_stack(limit=3)}")
                await p0.interconnect.null_rpc("p0", "p1")

        await laps(3)
        assert len(probe.samples["p2"]) >= 2
        await p2.server.stop(0)  # p2 dies while p0 probes it
        await laps(3)  # by now a lap has met the dead p2
        given_up_at = len(probe.samples["p2"])
        await laps(3)
        got = await probe.stop()
        assert len(got["p2"]) == given_up_at  # probed no more, and what it answered is kept
        assert len(got["p1"]) >= 9 and all(v > 0 for v in got["p1"] + got["p2"])
        assert sum(p0.interconnect.messages.values()) == 0

    live(body, "p0", "p1", "p2")
