"""The exit/unregister harness: background notifier activity on many mms and partitions, and
meanwhile the measured exits and unregisters, on either backend.

What a run measures (microseconds; one event each, and an HDR histogram per metric):

- ``exit_hang``, ``exit_release``, ``exit_srcu_wait``: a process whose mm is mapped by
  ``secondaries_per_mm`` secondaries on other partitions exits: exit_mmap's total, its
  ->release callouts, and the synchronize_srcu() after them.
- ``unregister_hang``, ``unregister_release``, ``unregister_srcu_wait``: a secondary on another
  partition is torn down (``teardown``: mmu_notifier_unregister, or mmu_notifier_put): the
  total, its ->release callout, and the synchronize_srcu() wait.
- ``invalidate_range``: every invalidate_range_start-to-end span, owner side, of an mm with
  notifiers (exit_mmap's unmapping after ->release calls no one and is not counted).
- ``callout_rtt``: every sleepable callout as the owner's core saw it: for a secondary on
  another partition, the round trip.
- ``device_fault``, ``device_invalidate`` (ODP and HMM secondaries only, on the secondary's partition):
  each device page fault from pagefault_mr's entry to its unlock (retries included), and each
  blockable invalidate from mlx5_ib_invalidate_range's entry to its return (its wait for
  umem_mutex and its zapping UMRs), as the driver saw them. The core times an mm with interval
  notifiers as any: their spans are in ``invalidate_range``, their invalidate callouts in
  ``callout_rtt``.

The setup: each partition owns ``mms`` background mms; each is mapped by ``secondaries_per_mm``
secondaries of ``secondary.kind`` on the next partitions (round robin; a KVM shadow MMU on the
owner itself, see ``_hosts``). ``activity.streams``
streams each work on one of those mms, choosing VM operations by ``activity.mix`` at Poisson
arrivals of ``activity.rate`` per second, each on ``activity.pages`` pages, and make the
secondaries fault some of the pages back (``workloads/activity.py``). Streams sharing an mm race
as threads of one process; the result's ``activity`` counts, per operation, those ``done`` and
those ``refused`` by the kernel (``{errno: n}``: an operation with a step refused -ENOMEM, say,
because another stream unmapped part of its range). The measured exits and
unregisters (shuffled, then dealt round robin to the owner partitions) are spread over
``duration`` at seeded random points; each owner measures its series concurrently with the
others', since a series waits on its own owner's SRCU domain only. What a series exits and
tears down is set up before its first measurement (the mms, mapped and faulted in by their
secondaries), so each measurement is the exit or the teardown alone. The streams run until the
last measurement is done. Oracles are on throughout: the run's invariant violations are in
its result, never dropped.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass
from typing import Any, Callable

from cluster.context import Cluster
from nodes.errors import Unreachable
from workloads import activity
from workloads.metrics import HdrHistogram, metric_result
from workloads.scenario import INTERVAL_KINDS

METRICS = (
    "exit_hang", "exit_release", "exit_srcu_wait",
    "unregister_hang", "unregister_release", "unregister_srcu_wait",
    "invalidate_range", "callout_rtt", "device_fault", "device_invalidate",
)
EXIT_PAGES = 16  # pages of a measured exit's mm
TOUCHED_PER_OP = 2  # pages each secondary faults back after a stream's operation
LOADED_PROBE_PERIOD_S = 0.02  # ray backend: a null callout per talking pair this often while measuring

Progress = Callable[[int, int], None]  # (measurements done, measurements in all)


@dataclass(frozen=True)
class StudySpec:
    """What the harness takes from a scenario (plain data, so it pickles)."""

    partitions: int
    cpus: int
    mms: int
    secondaries_per_mm: int
    kind: str
    streams: int
    mix: dict[str, float]
    rate: float
    pages: int
    teardown: str
    exits: int
    unregisters: int
    duration_us: float
    seed: int

    @classmethod
    def from_scenario(cls, s: Any) -> "StudySpec":
        return cls(
            partitions=s.get("partitions"), cpus=s.get("cpus_per_partition"), mms=s.get("mms"),
            secondaries_per_mm=s.get("secondaries_per_mm"), kind=s.get("secondary.kind"),
            streams=s.get("activity.streams"), mix=dict(s.get("activity.mix")), rate=float(s.get("activity.rate")),
            pages=s.get("activity.pages"), teardown=s.get("teardown"), exits=s.get("measure.exits"),
            unregisters=s.get("measure.unregisters"), duration_us=float(s.get("duration")), seed=s.get("seed"),
        )

    @property
    def region_pages(self) -> int:
        """Pages of each background mm's region: room for ranges to differ, and a whole 2 MiB
        block when THP collapse is in the mix."""
        thp = 512 if self.mix.get("thp", 0) > 0 else 0
        return max(4 * self.pages, thp, 16)

    def frames_needed(self) -> int:
        """Frames one partition needs at most: its background regions (twice: a COW fork or a
        migration holds old and new pages at once), measured mms, slack."""
        return 2 * self.mms * self.region_pages + (self.exits + self.unregisters + 4) * EXIT_PAGES + 1024


def _hosts(names: list[str], owner_index: int, count: int, kind: str = "gru") -> list[str]:
    """Where the secondaries of an mm of partition ``owner_index`` live: the next partitions,
    round robin (the owner itself when it is the only partition). A KVM shadow MMU lives with
    the mm it shadows: KVM runs in the kernel that owns the guest's memory, and its
    clear_flush_young/test_young/change_pte are called under the page-table lock, which no
    network call can honour (``SleepingInAtomicContext``)."""
    n = len(names)
    if n == 1 or kind == "kvm":
        return [names[owner_index]] * count
    return [names[(owner_index + 1 + j % (n - 1)) % n] for j in range(count)]


async def study(c: Cluster, spec: StudySpec, progress: Progress | None = None,
                probe_period_s: float | None = None) -> dict[str, Any]:
    """Run the study on cluster ``c``; returns ``{"events": [...], "checked": int, ...}``
    (events as ``workloads/report.py`` takes them). ``probe_period_s`` (ray backend): while
    the measurements run (from the end of every series' setup to the last measurement), each
    partition of ``talking_pairs`` times a null callout to its peers this often
    (``cluster.live.LoadedProbe``), returned as ``"loaded_probe": {"src->dst": [us, ...]}``:
    the instrument's floor under the load the measurements saw."""
    names = c.names
    rt = c.runtime
    rng = random.Random(f"mmusim-harness-{spec.seed}")
    events: list[dict[str, Any]] = []
    t0 = rt.now()

    def record(metric: str, value: float, partition: str, mm: int | None, detail: str) -> None:
        events.append({"metric": metric, "t_us": rt.now() - t0, "value_us": float(value), "partition": partition,
                       "mm": mm, "detail": detail})

    for name in names:
        await c.on(name, activity.enable_timings)

    # -- the background mms and their secondaries ------------------------------------------
    background: list[tuple[str, int, list[tuple[str, str]]]] = []  # (owner, mm id, [(host, secondary)])
    for i, owner in enumerate(names):
        for m in range(spec.mms):
            mm_id = await c.on(owner, activity.new_mm, spec.region_pages)
            secs = []
            for j, host in enumerate(_hosts(names, i, spec.secondaries_per_mm, spec.kind)):
                sname = f"bg.{owner}.mm{mm_id}.{j}"
                await c.on(host, activity.attach, spec.kind, owner, mm_id, sname, spec.region_pages)
                secs.append((host, sname))
            background.append((owner, mm_id, secs))

    # -- the streams ----------------------------------------------------------------------
    stop = False
    ops = [op for op in activity.OPS if spec.mix.get(op, 0) > 0]
    weights = [spec.mix[op] for op in ops]

    counts = {op: {"done": 0, "refused": {}} for op in ops}  # results.json "activity"

    async def stream(k: int) -> None:
        srng = random.Random(f"mmusim-stream-{spec.seed}-{k}")
        owner, mm_id, secs = background[k % len(background)]
        cpu = k % spec.cpus
        await rt.sleep(srng.uniform(0, 1e6 / spec.rate))  # staggered starts
        while not stop:
            op = srng.choices(ops, weights)[0]
            first = srng.randrange(0, spec.region_pages - spec.pages + 1)
            refused = await c.on(owner, activity.vm_op, op, mm_id, first, spec.pages, cpu)
            count_op(counts[op], refused)
            for host, sname in secs:
                pages = [first + srng.randrange(spec.pages) for _ in range(TOUCHED_PER_OP)]
                await c.on(host, activity.touch, sname, pages)
            await rt.sleep(srng.expovariate(spec.rate) * 1e6)  # Poisson arrivals

    tasks = [rt.spawn(stream(k), name=f"stream{k}") for k in range(spec.streams if ops else 0)]

    # -- the measurements -----------------------------------------------------------------
    # Each owner partition measures its own series, concurrently with the others': a series
    # waits on that owner's SRCU domain only (its exits, and the unregisters of secondaries
    # mapping its mms), so the series do not wait for each other, as the processes of
    # different partitions would not.
    measured = {owner: await c.on(owner, activity.new_mm, 1) for owner in names}
    order = ["unregister"] * spec.unregisters + ["exit"] * spec.exits
    rng.shuffle(order)
    total = len(order)
    done = 0
    probed: dict[str, list[str]] = {}  # src -> its peers, for the loaded probe
    for src, dst in talking_pairs(names, spec) if probe_period_s else ():
        probed.setdefault(src, []).append(dst)
    set_up = 0  # series whose setup is done: the last one starts the loaded probe

    async def setup_done() -> None:
        nonlocal set_up
        set_up += 1
        if set_up == len(names):
            for src, dsts in probed.items():
                await c.on(src, activity.start_loaded_probe, dsts, probe_period_s)

    async def series(oi: int, items: list[tuple[int, str]]) -> None:
        nonlocal done
        owner = names[oi]
        srng = random.Random(f"mmusim-measure-{spec.seed}-{owner}")
        exit_hosts = _hosts(names, oi, spec.secondaries_per_mm, spec.kind)
        teardown_host = _hosts(names, oi, 1, spec.kind)[0]
        # Set up before the first measurement, unmeasured: the mms that will exit, each mapped
        # by its secondaries with 4 pages faulted in, and the secondaries that will be torn
        # down, each mapping page 0 of the owner's measured mm (processes and secondaries that
        # have run a while), in one call per partition. Each measurement is then one call:
        # the exit, or the teardown, itself.
        exiting = [i for i, what in items if what == "exit"]
        exit_mm = dict(zip(exiting, await c.on(owner, activity.new_mms, len(exiting), EXIT_PAGES)))
        attachments: dict[str, list[tuple[int, str, int, list[int]]]] = {}
        for i, what in items:
            if what == "exit":
                for j, host in enumerate(exit_hosts):
                    attachments.setdefault(host, []).append((exit_mm[i], f"x{i}.{j}", EXIT_PAGES, list(range(4))))
            else:
                attachments.setdefault(teardown_host, []).append((measured[owner], f"m{i}", 1, [0]))
        for host, atts in attachments.items():
            await c.on(host, activity.attach_all, spec.kind, owner, atts)
        await setup_done()
        gap = spec.duration_us / (len(items) + 1)
        for i, what in items:
            await rt.sleep(srng.uniform(0.5, 1.5) * gap)  # random phase against the streams
            if what == "unregister":
                tot, rel, wait = await c.on(teardown_host, activity.teardown, f"m{i}", spec.teardown)
                for metric, v in (("unregister_hang", tot), ("unregister_release", rel),
                                  ("unregister_srcu_wait", wait)):
                    record(metric, v, owner, measured[owner], f"{spec.teardown} of a {spec.kind} on {teardown_host}")
            else:
                tot, rel, wait = await c.on(owner, activity.exit_mm, exit_mm[i])
                for metric, v in (("exit_hang", tot), ("exit_release", rel), ("exit_srcu_wait", wait)):
                    record(metric, v, owner, exit_mm[i], f"exit with {len(exit_hosts)} {spec.kind} secondaries")
            done += 1
            if progress is not None:
                progress(done, total)
        for host in dict.fromkeys(exit_hosts):  # not measured: the exits already released them
            await c.on(host, activity.teardown_all, [f"x{i}.{j}" for i in exiting
                                                     for j, h in enumerate(exit_hosts) if h == host], "unregister")

    loops = [rt.spawn(series(oi, [(i, w) for i, w in enumerate(order) if i % len(names) == oi]),
                      name=f"measure.{names[oi]}") for oi in range(len(names))]
    for loop in loops:
        await loop
    loaded = {}
    for src in probed:
        for dst, us in (await c.on(src, activity.stop_loaded_probe)).items():
            loaded[f"{src}->{dst}"] = us
    remaining = spec.duration_us - (rt.now() - t0)
    if remaining > 0:
        await rt.sleep(remaining)  # the activity runs for the whole duration
    stop = True
    for task in tasks:
        await task

    # -- what the partitions measured, then clean up ----------------------------------------
    checked = 0
    grus: dict[str, dict[str, int]] = {}  # partition -> the counters of the GRUs there
    svas: dict[str, dict[str, float]] = {}  # partition -> the counters of its IOMMU's SVA bonds
    for name in names:
        got = await c.on(name, activity.collect)
        checked += got["checked"]
        grus[name] = got["gru"]
        svas[name] = got.get("sva", {})
        for when, us, mm_id, op in got["callouts"]:
            events.append({"metric": "callout_rtt", "t_us": when - t0, "value_us": us, "partition": name, "mm": mm_id,
                           "detail": op})
        for when, us, mm_id, what in got["device"]:
            events.append({"metric": f"device_{what}", "t_us": when - t0, "value_us": us, "partition": name,
                           "mm": mm_id, "detail": f"ODP MR on {name}"})
        for when, us, mm_id, what in got["ranges"]:
            events.append({"metric": "invalidate_range", "t_us": when - t0, "value_us": us, "partition": name,
                           "mm": mm_id, "detail": what})
    # A partition that is down or stalled past the deadline cannot answer the clean-up's calls:
    # each such call is skipped and reported, the rest of the clean-up goes on.
    skipped: list[str] = []

    async def clean(host: str, fn: Any, *args: Any) -> None:
        try:
            await c.on(host, fn, *args)
        except Unreachable as e:
            skipped.append(f"clean-up {fn.__name__}{args} on {host} skipped: {e}")

    for owner, mm_id, secs in background:
        for host, sname in secs:
            await clean(host, activity.teardown, sname, "unregister")
        await clean(owner, activity.exit_mm, mm_id)
    for owner, mm_id in measured.items():
        await clean(owner, activity.exit_mm, mm_id)
    events.sort(key=lambda e: e["t_us"])
    return {"events": events, "checked": checked, "activity": counts, "gru": grus, "sva": svas, "loaded_probe": loaded,
            "skipped": skipped}


def count_op(count: dict[str, Any], refused: list[str]) -> None:
    """Count one background operation: ``done`` when every step of it was done, else once in
    ``refused`` under each errno a step of it got."""
    if not refused:
        count["done"] += 1
    for name in sorted(set(refused)):
        count["refused"][name] = count["refused"].get(name, 0) + 1


def histograms(events: list[dict[str, Any]]) -> dict[str, HdrHistogram]:
    """One HDR histogram per metric (empty ones too)."""
    hists = {m: HdrHistogram() for m in METRICS}
    by_metric: dict[str, list[float]] = {m: [] for m in METRICS}
    for e in events:
        by_metric[e["metric"]].append(e["value_us"])
    for m, values in by_metric.items():
        hists[m].record(values)
    return hists


def gru_summary(dropin: str, by_partition: dict[str, dict[str, int]]) -> dict[str, Any]:
    """The ``gru`` block of results.json: the dropin mode and, over every GRU of the run (and
    per partition hosting them), dropins installed, lookups retried because a range was active
    when the answer came (``range_retries``, the v3.10 check), lookups retried by the guard
    (``dropin_retries``) and flushes that waited for accesses in flight (``fenced_flushes``)."""
    names = {"dropins": "dropins", "retries": "range_retries", "guard_retries": "dropin_retries",
             "fenced_flushes": "fenced_flushes"}
    totals = {out: sum(c.get(k, 0) for c in by_partition.values()) for k, out in names.items()}
    hosts = {p: {names[k]: v for k, v in c.items()} for p, c in by_partition.items() if any(c.values())}
    return {"dropin": dropin, **totals, "by_partition": hosts}


def sva_summary(iommu: str, by_partition: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The ``sva`` block of results.json (``secondary.kind: sva``): the IOMMU driver and, over
    every owner's IOMMU (and per owner), the ATS invalidations the atomic op posted, those
    completed in time (the releases' whole-PASID ones too),
    Intel's ITEs (each a resubmission), SMMUv3's CMD_SYNC time-outs (each an invalidation given
    up), the PRI page requests served, the atomic ops' spins and the longest (``nodes.secondary.sva``)."""
    totals: dict[str, float] = {}
    for counts in by_partition.values():
        for k, v in counts.items():
            totals[k] = max(totals.get(k, 0), v) if k == "spin_max_us" else totals.get(k, 0) + v
    return {"iommu": iommu, **totals, "by_partition": {p: c for p, c in by_partition.items() if any(c.values())}}


def run_scenario(scenario: Any, backend: str = "sim", *, address: str | None = None,
                 progress: Progress | None = None, sim_extra: dict[str, Any] | None = None,
                 ray_extra: dict[str, Any] | None = None,
                 ) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """Run ``scenario`` (``workloads/scenario.py``) on ``backend``; returns the result document
    (the schema of DESIGN.md, as ``workloads/report.py`` writes it) and the events.
    ``sim_extra``: more ``SimConfig`` fields (a scheduler, a trace level) for the sim backend;
    ``ray_extra``: more ``RayConfig`` fields (the TLS options) for the ray backend."""
    spec = StudySpec.from_scenario(scenario)

    async def workload(c: Cluster) -> dict[str, Any]:
        return await study(c, spec, progress, LOADED_PROBE_PERIOD_S if backend == "ray" else None)

    if backend not in ("sim", "ray"):
        raise ValueError(f"backend must be sim or ray, got {backend!r}")
    if backend == "ray" and spec.kind == "sva":
        raise ValueError(f"scenario {scenario.name}: secondary.kind 'sva' runs on the sim backend only (the IOMMU "
                         f"SVA services, nodes/secondary/sva.py, are not on the wire), got backend 'ray'")
    config = scenario.sim_config(**(sim_extra or {})) if backend == "sim" else scenario.ray_config(
        address=address, **(ray_extra or {}))
    if config.nframes < spec.frames_needed():
        raise ValueError(f"scenario {scenario.name}: nframes {config.nframes} is too small for its mms and "
                         f"measurements; at least {spec.frames_needed()} are needed")
    wall = time.monotonic()
    placement: dict[str, dict[str, Any]] | None = None
    if backend == "sim":
        from cluster.sim import run_sim

        srun = run_sim(config, workload)
        out, violations, faults = srun.result, srun.violations, srun.faults
        virtual: float | None = srun.virtual_time_us
        digest: str | None = srun.trace_digest
    else:
        from cluster.ray_backend import run_ray

        config.probe_pairs = talking_pairs(config.names, spec)
        rrun = run_ray(config, workload)
        out, violations, faults = rrun.result, rrun.violations, rrun.faults
        violations = violations + [f"oracle report lost or refused: {p}" for p in rrun.report_problems]
        virtual, digest = None, None
        # where each partition ran: its Ray node and its gRPC server's host:port (host = the node's address)
        placement = {name: {"node_id": node, "address": rrun.addresses.get(name), "lost": name in rrun.lost}
                     for name, node in rrun.placement.items()}
    events = out["events"]
    hists = histograms(events)
    result = {
        "scenario": scenario.name,
        "backend": backend,
        "seed": spec.seed,
        "config": scenario.to_dict(),
        "metrics": {m: metric_result(h, seed=spec.seed, metric=m) for m, h in hists.items()},
        "invariants": {"checked": out["checked"], "violations": len(violations), "details": [str(v) for v in violations]},
        "activity": out["activity"],
        "faults": [f"{f.host} fenced during {f.during}: {f.error}" for f in faults] + out["skipped"],
        "gru": gru_summary(scenario.get("gru.dropin"), out["gru"]),
        **({"sva": sva_summary(scenario.get("sva.iommu"), out["sva"])} if spec.kind == "sva" else {}),
        "wall_time_s": time.monotonic() - wall,
        "virtual_time_us": virtual,
        "trace_digest": digest,
    }
    if placement is not None:
        result["placement"] = placement
        samples = {pair: {**probe, "loaded_us": out["loaded_probe"].get(pair, [])} for pair, probe in rrun.overhead.items()}
        result["overhead"] = {pair: floor_stats(probe) for pair, probe in samples.items()}
        # what the partitions spoke: mutual TLS with a CA made for the run or the user's, or plaintext
        result["tls"] = ("user CA" if config.tls_ca_cert else "run CA") if config.tls else "off"
        result["floor"] = floor_summary(result["overhead"], floor_calls(spec, scenario.get("fanout")), result["metrics"])
    return result, events


def floor_stats(samples: dict[str, list[float]]) -> dict[str, Any]:
    """One pair's ``overhead`` entry from its probe's round trips: ``n``, ``rpc_p50``,
    ``rpc_p99``, ``model_p50``, ``model_p99`` (microseconds; numpy's linear percentiles) and
    the samples themselves (``rpc_us``, ``model_us``), so that a fit can use the whole shape;
    with samples of the loaded probe (``loaded_us``) also ``loaded_n``, ``loaded_p50`` and
    ``loaded_p99``."""
    import numpy as np

    out: dict[str, Any] = {"n": len(samples["model_us"])}
    kinds = ("rpc", "model", "loaded") if samples.get("loaded_us") else ("rpc", "model")
    for kind in kinds:
        values = np.asarray(samples[f"{kind}_us"], dtype=float)
        out[f"{kind}_p50"], out[f"{kind}_p99"] = (float(v) for v in np.percentile(values, [50, 99]))
    if "loaded" in kinds:
        out["loaded_n"] = len(samples["loaded_us"])
    for kind in kinds:
        out[f"{kind}_us"] = [float(v) for v in samples[f"{kind}_us"]]
    return out


def talking_pairs(names: list[str], spec: StudySpec) -> list[tuple[str, str]]:
    """The (src, dst) partitions that talk in a study of ``spec``: each owner and the hosts of
    its secondaries (``_hosts``), both ways (callouts one way, faults and registration the
    other). The ray backend probes its floor over these."""
    pairs: dict[tuple[str, str], None] = {}
    for i, owner in enumerate(names):
        for host in _hosts(names, i, spec.secondaries_per_mm, spec.kind):
            if host != owner:
                pairs[(owner, host)] = pairs[(host, owner)] = None
    return list(pairs)


def floor_calls(spec: StudySpec, fanout: str) -> dict[str, int]:
    """How many round trips to another partition lie on each metric's own path, in a study of
    ``spec``: a callout is one; an invalidate_range span walks the mm's notifiers twice (start
    and end), an exit's ->release walk once, over ``secondaries_per_mm`` remote secondaries one
    after another (``sequential``, the kernel's list walk), or all at once (``parallel``: one);
    an unregister calls its own ->release. A synchronize_srcu() wait has none on its path: it
    waits for other callouts, whose floors are theirs. A KVM shadow MMU, or a single partition,
    has none at all (its callouts are local); an ODP MR's or an HMM mirror's unregister_release
    (its dereg's zap, the mirror's pt dropped) is local too."""
    remote = 0 if spec.kind == "kvm" or spec.partitions == 1 else spec.secondaries_per_mm
    walk = min(remote, 1) if fanout == "parallel" else remote
    one = min(remote, 1)
    # an ODP MR's dereg zaps its own MTT, an HMM mirror its pt (no round trip), before the
    # notifier's remove (one)
    release = 0 if spec.kind in INTERVAL_KINDS else one
    return {"exit_hang": walk, "exit_release": walk, "exit_srcu_wait": 0, "unregister_hang": one,
            "unregister_release": release, "unregister_srcu_wait": 0, "invalidate_range": 2 * walk, "callout_rtt": one}


def floor_summary(overhead: dict[str, dict[str, Any]], calls: dict[str, int],
                  metrics: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """The ``floor`` block of a ray result: the null callout's and null RPC's p50 over every
    probed pair's samples (and the null callout's under the workload's load, None without that
    probe), and for each metric the round trips on its path (``floor_calls``),
    their floor (calls x the null callout's p50) and its share of the metric's p50 (None when
    the metric has no p50). The figures are reported beside the metric, never subtracted from
    it. Empty without a probe."""
    import numpy as np

    model = [v for pair in overhead.values() for v in pair["model_us"]]
    rpc = [v for pair in overhead.values() for v in pair["rpc_us"]]
    loaded = [v for pair in overhead.values() for v in pair.get("loaded_us", ())]
    if not model:
        return {}
    model_p50, rpc_p50 = float(np.percentile(model, 50)), float(np.percentile(rpc, 50))
    loaded_p50 = float(np.percentile(loaded, 50)) if loaded else None
    per_metric = {}
    for name, k in calls.items():
        p50 = (metrics.get(name) or {}).get("p50")
        floor = k * model_p50
        per_metric[name] = {"calls": k, "floor_us": floor, "share_of_p50": floor / p50 if p50 else None}
    return {"model_p50_us": model_p50, "rpc_p50_us": rpc_p50, "loaded_p50_us": loaded_p50, "metrics": per_metric}
