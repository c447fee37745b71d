"""The global-SRCU hang across partitions, on the sim backend (issue 3's physics check).

Partition p0 owns every mm; remote GRUs on p1 map them, so each callout is an SRCU reader on p0
that lasts a network round trip (2 x callout latency L) plus the GRU's flush. K background
streams keep such readers in flight on other mms of p0 while a notifier on a measured mm is
unregistered again and again. The unregister's synchronize_srcu() must outlast the readers in
flight: it is bounded by 2 x the longest reader plus two polling intervals (REFERENCE section
4), it grows with L and with K's overlap, and a per-mm SRCU removes it.
"""

from __future__ import annotations

import numpy as np
import pytest

from cluster.sim import SimCluster, SimConfig, run_sim
from nodes.secondary.gru import DEFAULT_FLUSH_PER_PAGE_US
from workloads.demo import hang_workload

PAGES = 128
JIFFY = 1000.0


def study(latency_us: float, streams: int, scope: str = "global", unregisters: int = 20, seed: int = 1) -> np.ndarray:
    config = SimConfig(
        partitions=2, cpus=4, nframes=(streams + 2) * PAGES + 4096, srcu_scope=scope, jiffy_us=JIFFY,
        hop_latency=0.0, callout_latency=latency_us, seed=seed,
    )

    async def workload(c: SimCluster):  # type: ignore[no-untyped-def]
        return await hang_workload(c, streams, PAGES, unregisters, config.cpus, seed)

    run = run_sim(config, workload)
    assert run.violations == []
    return np.asarray(run.result[0])


def longest_reader(latency_us: float) -> float:
    """range_start of a stream's munmap: there, flush PAGES pages, back."""
    return 2 * latency_us + PAGES * DEFAULT_FLUSH_PER_PAGE_US


@pytest.mark.parametrize("latency_us", [50.0, 400.0, 1600.0])
def test_unregister_wait_is_bounded_by_twice_the_longest_reader_plus_polling(latency_us: float) -> None:
    waits = study(latency_us, streams=4)
    assert waits.max() <= 2 * longest_reader(latency_us) + 2 * JIFFY + 10 * 5.0  # + reader-check delays
    assert waits.max() > 0  # some unregister did find a reader in flight


def test_unregister_wait_grows_with_callout_latency() -> None:
    means = [study(L, streams=4).mean() for L in (50.0, 400.0, 1600.0)]
    print("mean unregister srcu wait (us) for L = 50, 400, 1600:", [round(m, 1) for m in means])
    assert means[0] < means[1] < means[2]
    assert means[2] > 1.5 * means[0]


def test_unregister_wait_grows_with_the_streams_overlap() -> None:
    means = [study(400.0, streams=k).mean() for k in (1, 4, 12)]
    print("mean unregister srcu wait (us) for K = 1, 4, 12 streams:", [round(m, 1) for m in means])
    assert means[0] < means[2]
    assert means[0] <= means[1] <= means[2]


def test_per_mm_srcu_removes_the_wait_caused_by_other_mms() -> None:
    glob = study(400.0, streams=4, scope="global")
    per_mm = study(400.0, streams=4, scope="per_mm")
    assert glob.mean() > 500.0
    assert per_mm.max() == 0.0
