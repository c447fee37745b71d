"""``kernel.hz``, the scenario's CONFIG_HZ, on the sim backend: it sets the jiffy SRCU's worker
polls with (v3.10 ``SRCU_INTERVAL`` is one jiffy), so a grace period that the fast path could
not finish ends on a jiffy tick. Exact virtual times, no wall clock.

The timing facts (``nodes/srcu.py``; reader delay 5 us): a synchronize at ``t`` that finds an
old reader tries twice, at ``t`` and ``t + 5``, then hands the grace period to the worker,
which runs at ``t + 5 + k * jiffy`` for k = 1, 2, ...; the first run after the reader's end
completes it. So every wait is 0 (no reader), 5 (the second try succeeded) or 5 + k jiffies.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from cluster.sim import SimCluster, run_sim
from workloads.harness import run_scenario
from workloads.scenario import load_scenario

DELAY = 5.0  # SYNCHRONIZE_SRCU_READER_DELAY_US
READER_US = 25_000.0  # how long the reader sleeps in its read section


@pytest.mark.parametrize(("hz", "ticks"), [(100, 3), (250, 7), (300, 8), (1000, 25)])
def test_a_sleeping_reader_delays_synchronize_to_a_whole_number_of_jiffies(hz: int, ticks: int) -> None:
    config = load_scenario("quickstart").with_value("kernel.hz", hz).sim_config()
    jiffy = 1e6 / hz

    async def workload(c: SimCluster) -> tuple[float, int]:
        srcu, rt = c.partition("p0").srcu, c.runtime

        async def reader() -> None:
            async with srcu.read_section():
                await rt.sleep(READER_US)

        task = rt.spawn(reader(), name="reader")
        await rt.sleep(1.0)  # the reader holds its index
        t0 = rt.now()
        await srcu.synchronize()
        await task
        return rt.now() - t0, srcu.statistics().worker_runs

    run = run_sim(config, workload)
    wait, worker_runs = run.result
    # the first worker run after the reader's end, at t = READER_US
    assert ticks == math.floor((READER_US - 1.0 - DELAY) / jiffy) + 1
    assert wait == pytest.approx(DELAY + ticks * jiffy, abs=1e-6)
    assert worker_runs == ticks
    assert wait >= READER_US - 1.0  # never before the reader is gone


def test_the_hang_studys_srcu_waits_come_in_jiffies_of_kernel_hz() -> None:
    waits = {}
    for hz in (100, 1000):
        s = load_scenario("quickstart").with_overrides([f"kernel.hz={hz}", "measure.exits=4", "measure.unregisters=12"])
        result, events = run_scenario(s)
        assert result["invariants"]["violations"] == 0
        w = np.array([e["value_us"] for e in events if e["metric"] in ("exit_srcu_wait", "unregister_srcu_wait")])
        jiffy = 1e6 / hz
        ticks = np.round((w - DELAY) / jiffy)
        on_a_tick = np.isclose(w, DELAY + ticks * jiffy, atol=1e-6) & (ticks >= 0)
        assert (on_a_tick | (w == 0.0)).all(), w[~(on_a_tick | (w == 0.0))]
        waits[hz] = w[ticks >= 1]
        assert waits[hz].size >= 2  # the worker's polling was measured, not only the fast path
    # the same one-jiffy waits, ten times longer at HZ=100
    assert np.median(waits[100]) / np.median(waits[1000]) == pytest.approx((10_000 + DELAY) / (1_000 + DELAY))
