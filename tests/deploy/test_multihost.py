"""mmusim on a real multi-host Ray cluster: three network namespaces on this machine, each a host
with its own address (``ray_hosts``, conftest.py), a Ray head in one and workers in the others.

- ``mmusim run quickstart --backend ray --address HEAD:6379`` from inside the head's host puts
  one partition on each host (results.json's ``placement``), measures the hang and keeps its
  invariants.
- A host whose link goes down in the middle of an invalidation (``ip -n HOST link set eth0
  down``) is fenced by the owner, which finishes the munmap and the exit; the dead host's
  partition is lost, the others report clean invariants.

Every process that talks to a host address runs inside a host; everything is bounded in time
and torn down by pid.
"""

from __future__ import annotations

import json
import queue
import subprocess
import threading
import time
from typing import IO, Any

import pytest

from ray_hosts import HERE, RayHosts, tail

pytestmark = pytest.mark.slow

RUN_TIMEOUT_S = 180.0  # one mmusim run or fault drive, start-up included; a bound, not a measurement
EXITS, UNREGISTERS = 5, 10  # measured by the quickstart run: fewer than the scenario's, enough to see each part
HANG_METRICS = ("exit_hang", "exit_release", "exit_srcu_wait", "unregister_hang", "unregister_release",
                "unregister_srcu_wait", "invalidate_range", "callout_rtt")


def test_quickstart_runs_one_partition_per_host_with_measured_hangs_and_clean_invariants(ray_hosts: RayHosts) -> None:
    hosts = ray_hosts.hosts
    out = ray_hosts.base / "quickstart"
    log = ray_hosts.base / "quickstart.log"
    with open(log, "w") as f:
        proc = ray_hosts.python(0, ["-m", "workloads.cli", "run", "quickstart", "--backend", "ray", "--address",
                                    ray_hosts.address, "--set", "partitions=3", "--set", f"measure.exits={EXITS}",
                                    "--set", f"measure.unregisters={UNREGISTERS}", "--out", str(out)],
                                stdout=f, stderr=subprocess.STDOUT)
        try:
            code = proc.wait(timeout=RUN_TIMEOUT_S)
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    printed = log.read_text(errors="replace")
    assert code == 0, f"mmusim run exited {code}:\n{printed[-4000:]}"
    assert "invariants:" in printed and "0 violations" in printed  # the summary table was printed
    print(f"\nquickstart across three hosts:\n{printed}")  # the figures, in the test's output (-s)

    result = json.loads((out / "results.json").read_text())
    assert result["backend"] == "ray" and result["scenario"] == "quickstart"
    placement = result["placement"]
    assert sorted(placement) == ["p0", "p1", "p2"]
    on_host = {name: hosts.index_of(p["address"]) for name, p in placement.items()}
    assert sorted(on_host.values()) == [0, 1, 2], on_host  # one partition on each host
    assert on_host["p0"] == 0  # the driver's node comes first
    assert len({p["node_id"] for p in placement.values()}) == 3 and not any(p["lost"] for p in placement.values())

    metrics = result["metrics"]
    assert metrics["exit_hang"]["n"] == EXITS and metrics["unregister_hang"]["n"] == UNREGISTERS
    assert metrics["callout_rtt"]["n"] > 0 and metrics["invalidate_range"]["n"] > 0
    for name in HANG_METRICS:
        m = metrics[name]
        assert m["unit"] == "us" and all(isinstance(m[k], (int, float)) for k in ("p50", "p90", "p99", "max", "mean"))
        assert 0 <= m["p50"] <= m["p99"] <= m["max"], (name, m)
    # the hang is made of the parts it measures: each exit waited on its release and SRCU wait
    assert metrics["exit_hang"]["max"] >= metrics["exit_release"]["max"] > 0
    assert metrics["callout_rtt"]["p50"] > 0  # a callout crossed hosts: it took real time
    assert result["invariants"] == {"checked": result["invariants"]["checked"], "violations": 0, "details": []}
    assert result["invariants"]["checked"] > 0 and result["faults"] == []
    events = (out / "events.csv").read_text().splitlines()
    assert events[0].startswith("metric,") and len(events) > 15


class Lines:
    """The lines a child process prints, read by a thread, waited for with a bound."""

    def __init__(self, stream: IO[str]):
        self.queue: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        self.thread = threading.Thread(target=self._read, args=(stream,), daemon=True)
        self.thread.start()

    def _read(self, stream: IO[str]) -> None:
        for line in stream:
            self.queue.put(line)
        self.queue.put(None)

    def next_event(self, deadline: float) -> dict[str, Any] | None:
        """The next JSON event line, or None once the output ends; fails at ``deadline``."""
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no event before the deadline; printed so far: {self.seen[-20:]}")
            try:
                line = self.queue.get(timeout=left)
            except queue.Empty:
                continue
            if line is None:
                return None
            self.seen.append(line.rstrip())
            if line.startswith("{"):
                return json.loads(line)


def test_a_host_taken_off_the_network_mid_invalidation_is_fenced_and_the_run_finishes(ray_hosts: RayHosts) -> None:
    hosts = ray_hosts.hosts
    err_log = ray_hosts.base / "fault-driver.err"
    deadline = time.monotonic() + RUN_TIMEOUT_S
    with open(err_log, "w") as err:
        proc = ray_hosts.python(0, [str(HERE / "fault_driver.py"), ray_hosts.address],
                                stdout=subprocess.PIPE, stderr=err, text=True)
        lines = Lines(proc.stdout)  # type: ignore[arg-type]
        try:
            signal = lines.next_event(deadline)
            assert signal is not None and signal["event"] == "in_flight", \
                f"the driver ended before the invalidation reached p2: {lines.seen[-20:]}\n{tail(err_log)}"
            victim = hosts.index_of(signal["address"])
            assert victim != 0, "p2 landed on the driver's host"
            hosts.link_down(victim)  # p2 is inside invalidate_range_start: its host drops off the network
            done = lines.next_event(deadline)
            code = proc.wait(timeout=max(deadline - time.monotonic(), 1.0))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            lines.thread.join(timeout=10.0)  # the pipe ends with the process
            proc.stdout.close()  # type: ignore[union-attr]
    assert code == 0 and done is not None and done["event"] == "done", \
        f"the fault driver exited {code}: {lines.seen[-20:]}\n{tail(err_log)}"

    on_host = {name: hosts.index_of(p["address"]) for name, p in done["placement"].items()}
    assert sorted(on_host.values()) == [0, 1, 2] and on_host["p2"] == victim
    r = done["result"]
    assert r["p1_tlb"] == 4 and r["p2_tlb"] == 4
    assert r["p2_in_flight"]["range_active"] == 1 and r["p2_in_flight"]["tlb"] == 4  # caught mid-flush
    # the owner fenced exactly the partition on the host that went down, during that callout
    assert [f["host"] for f in done["faults"]] == ["p2"], done["faults"]
    fault = done["faults"][0]
    assert fault["during"].startswith("invalidate_range_start of p2"), fault
    assert "DEADLINE_EXCEEDED" in fault["error"] or "UNAVAILABLE" in fault["error"], fault
    assert fault["notifiers"] and all(n.startswith("p2:") for n in fault["notifiers"]), fault
    assert done["lost"] == ["p2"]  # its actor could not report: its host is gone
    # ... and finished: p1's GRU was invalidated (range closed, TLB flushed), exit released it
    assert r["p1_after_munmap"]["tlb"] == 0 and r["p1_after_munmap"]["range_active"] == 0
    assert r["exit"]["total_us"] >= r["exit"]["release_us"] >= 0 and r["exit"]["total_us"] > 0
    assert r["p1_after_exit"]["released"] is True
    assert done["violations"] == [] and done["report_problems"] == []
