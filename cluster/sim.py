"""The sim backend: a whole cluster of partitions in one process, on a virtual clock, from a
seed.

The unchanged ``nodes/`` model runs for every partition; only time (``VirtualTimeLoop``),
scheduling (a seeded ``SchedulingPolicy``) and the network (``SimInterconnect``) are swapped,
in the spirit of FoundationDB's simulation. The same config and seed give the same trace digest
and the same metrics, in any process.

Entry point::

    config = SimConfig(partitions=4, hop_latency=1.0, seed=7)

    async def workload(c: SimCluster):
        a, b = c.partition("p0"), c.partition("p1")
        mm = a.create_mm()
        ...
        gru = await c.gru(host="p1", owner="p0", mm=mm)   # registered through the interconnect
        ...
        return {"hang_us": t.total_us}

    run = run_sim(config, workload)   # SimRun: result, trace digest, virtual time, faults
"""

from __future__ import annotations

import gc
import math
import random
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Generic, TypeVar

from nodes.mm import Mm
from nodes.owner import LocalOwner, OwnerPort
from nodes.partition import Partition
from nodes.remote import OWNER_SERVICE, SECONDARY_SERVICE, Fault, OwnerService, RemoteOwner, SecondaryService
from nodes.runtime import Runtime
from nodes.secondary.gru import GruMmu
from nodes.secondary.hmm import HmmMirror
from nodes.secondary.kvm import KvmMmu
from nodes.secondary.odp import OdpMr
from nodes.secondary.sva import IOMMUS, SVA_DEVICE_SERVICE, SVA_SERVICE, SvaDevice, SvaDeviceService, SvaIommu
from nodes.secondary.xpmem import XpmemDriver

from cluster.config import PartitionConfig
from cluster.context import SecondaryFactory
from cluster.interconnect import DEFAULT_DEADLINE_US, SimInterconnect
from cluster.topology import LatencyDist, LatencyModel, Topology, parse_latency
from cluster.vtime import POLICIES, TRACE_LEVELS, Trace, VirtualClock, VirtualTimeLoop, make_policy, run_virtual

T = TypeVar("T")
TOPOLOGIES = ("uniform", "ring", "numalink")
# The cyclic collector's young-generation threshold during a run (``run_sim``; CPython's default
# is 700 container objects allocated and not yet freed). A run's steps allocate coroutines,
# tasks and tuples; most die by reference count, but those in flight reach the default often,
# and each pass walks the young objects alive, every tenth the older ones, and now and then the
# whole heap, which grows with the partitions: at 256 partitions about 12% of a callout's
# instructions (callgrind) went there, at 32 about 4%. Cyclic garbage still goes, a pass later:
# memory stays flat. It decides nothing a run does (the same digests).
GC_YOUNG_THRESHOLD = 20_000


@dataclass
class SimConfig(PartitionConfig):
    """Everything that shapes a sim run (the partition fields are ``PartitionConfig``'s).
    Latency fields take what ``parse_latency`` takes: a bare number of microseconds or a
    mapping naming a distribution."""

    KIND: ClassVar[str] = "sim config"

    topology: str = "uniform"  # uniform | ring | numalink
    hop_latency: Any = 1.0  # per hop, one way
    per_byte_us: float = 0.0
    callout_latency: Any = None  # extra one-way latency of each callout message
    fault_latency: Any = None  # extra one-way latency of each remote fault (get_user_pages) message
    # one-way floor under every message of every kind: the instrument's own software stack, fitted to
    # a ray run's probe (workloads/calibration.py); None: no floor, and nothing more drawn
    floor_latency: Any = None
    loss: float = 0.0
    deadline_us: float = DEFAULT_DEADLINE_US  # of every call; inf: none, as a kernel driver's call into its device
    crashes: dict[str, float] = field(default_factory=dict)  # partition -> virtual time (us)
    # partition -> (start, length) in us: its services answer nothing in that window, and then
    # everything held (SimInterconnect.stall_at)
    stalls: dict[str, tuple[float, float]] = field(default_factory=dict)
    scheduler: str = "fifo"  # fifo | random | pct
    seed: int = 0
    trace: str = "hash"  # off | hash | full
    choices: int | None = None  # only the first N scheduling choices are the seeded policy's; then FIFO
    reclaim_watermark: float = 0.0  # below this fraction of free frames an allocation reclaims
    sva_iommu: str = "intel"  # the IOMMU of every partition, for SVA devices (nodes.secondary.sva.IOMMUS)
    sva_completion: Any = 2.0  # an SVA device's ATS invalidation completion latency (a latency)

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_choice("topology", TOPOLOGIES)
        self.check_choice("scheduler", POLICIES)
        self.check_choice("trace", TRACE_LEVELS)
        self.check_choice("sva_iommu", tuple(IOMMUS))
        if not isinstance(self.seed, int) or isinstance(self.seed, bool):
            raise self.bad("seed", "an integer", self.seed)
        if self.choices is not None and (not isinstance(self.choices, int) or isinstance(self.choices, bool)
                                         or self.choices < 0):
            raise self.bad("choices", "None or an integer >= 0", self.choices)
        if self.deadline_us != math.inf:
            self.check_number("deadline_us", positive=True)
        self.check_number("per_byte_us", positive=False)
        self.check_number("loss", positive=False)
        if self.loss >= 1:
            raise self.bad("loss", "a probability in [0, 1)", self.loss)
        names = set(self.names)
        for p, at in self.crashes.items():
            if p not in names:
                raise self.bad(f"crashes.{p}", f"a partition name ({', '.join(self.names)})", p)
            self.check_number(f"crashes.{p}", positive=False, value=at)
        for p, window in self.stalls.items():
            if p not in names:
                raise self.bad(f"stalls.{p}", f"a partition name ({', '.join(self.names)})", p)
            if not isinstance(window, (tuple, list)) or len(window) != 2:
                raise self.bad(f"stalls.{p}", "(start, length) in us", window)
            self.check_number(f"stalls.{p}.start", positive=False, value=window[0])
            self.check_number(f"stalls.{p}.length", positive=True, value=window[1])
        self.hop_dist: LatencyDist = parse_latency(self.hop_latency, "hop_latency")
        self.callout_dist: LatencyDist | None = (
            None if self.callout_latency is None else parse_latency(self.callout_latency, "callout_latency")
        )
        self.fault_dist: LatencyDist | None = (
            None if self.fault_latency is None else parse_latency(self.fault_latency, "fault_latency")
        )
        self.floor_dist: LatencyDist | None = (
            None if self.floor_latency is None else parse_latency(self.floor_latency, "floor_latency")
        )
        self.sva_completion_dist: LatencyDist = parse_latency(self.sva_completion, "sva_completion")

@dataclass
class SimRun(Generic[T]):
    """The outcome of ``run_sim``."""

    result: T
    trace_digest: str
    steps: int
    virtual_time_us: float
    decisions: list[int]
    faults: list[Fault]
    violations: list[str]
    trace_entries: list[str]


class SimCluster:
    """The partitions of one sim run, wired through one ``SimInterconnect``."""

    def __init__(self, config: SimConfig, runtime: Runtime):
        self.config = config
        self.runtime = runtime
        names = config.names
        if config.topology == "uniform":
            topo = Topology.uniform(names, hops=config.hops)
        elif config.topology == "ring":
            topo = Topology.ring(names)
        else:
            topo = Topology.numalink(names)
        self.topology = topo
        extra = {kind: dist for kind, dist in (("callout", config.callout_dist), ("fault", config.fault_dist))
                 if dist is not None}
        self.latency = LatencyModel(config.hop_dist, config.per_byte_us, extra, config.floor_dist)
        # model randomness has its own stream, apart from the scheduler's
        self.rng = random.Random(f"mmusim-interconnect-{config.seed}")
        self.interconnect = SimInterconnect(runtime, topo, self.latency, self.rng, loss=config.loss, deadline_us=config.deadline_us)
        self.partitions: dict[str, Partition] = {}
        self.owner_services: dict[str, OwnerService] = {}
        self.secondary_services: dict[str, SecondaryService] = {}
        self.sva_iommus: dict[str, SvaIommu] = {}
        self.sva_devices: dict[str, SvaDeviceService] = {}
        # the SVA devices' completion latencies have their own stream: no other draw moves
        self.sva_rng = random.Random(f"mmusim-sva-{config.seed}")
        for name in names:
            p = Partition(
                runtime, name=name, nframes=config.nframes, ncpus=config.cpus, srcu_scope=config.srcu_scope,
                jiffy_us=config.jiffy_us, fanout=config.fanout, expedited=config.srcu_expedited,
                semantics=config.semantics, reclaim_watermark=config.reclaim_watermark, srcu=config.srcu,
            )
            self.partitions[name] = p
            self.owner_services[name] = OwnerService(p, self.interconnect)
            self.secondary_services[name] = SecondaryService(name)
            self.interconnect.serve(name, OWNER_SERVICE, self.owner_services[name])
            self.interconnect.serve(name, SECONDARY_SERVICE, self.secondary_services[name])
            self.sva_iommus[name] = SvaIommu(p, self.interconnect, self.owner_services[name], iommu=config.sva_iommu)
            self.sva_devices[name] = SvaDeviceService(name)
            self.interconnect.serve(name, SVA_SERVICE, self.sva_iommus[name])
            self.interconnect.serve(name, SVA_DEVICE_SERVICE, self.sva_devices[name])
        for name, at in config.crashes.items():
            self.interconnect.crash_at(name, at)
        for name, (start, length) in config.stalls.items():
            self.interconnect.stall_at(name, start, length)
        self._contexts: dict[str, SimPartitionContext] = {}

    def partition(self, name: str) -> Partition:
        p = self.partitions.get(name)
        if p is None:
            raise KeyError(f"no partition {name!r}; the cluster has {', '.join(self.partitions)}")
        return p

    def owner_port(self, host: str, owner: str) -> OwnerPort:
        """How a secondary on ``host`` reaches the mms of ``owner``: in-process on the same
        partition, through the interconnect otherwise."""
        self.partition(host)
        if host == owner:
            return LocalOwner(self.partition(owner))
        return RemoteOwner(self.interconnect, self.secondary_services[host], owner, self.owner_services[owner])

    async def gru(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> GruMmu:
        """A GRU on ``host`` mapping ``mm`` of ``owner``, registered (across the interconnect
        when host != owner)."""
        return await self.context(host).gru(owner, mm.id, name, **config)

    async def kvm(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> KvmMmu:
        """A KVM-style shadow MMU on ``host`` for ``mm`` of ``owner``, registered."""
        return await self.context(host).kvm(owner, mm.id, name, **config)

    async def odp(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> OdpMr:
        """An ODP MR registered by a NIC on ``host`` over ``start``, ``length`` of ``mm`` of ``owner``."""
        return await self.context(host).odp(owner, mm.id, name, **config)

    async def xpmem(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> XpmemDriver:
        """An XPMEM driver on ``host`` for source ``mm`` of ``owner``, its notifier registered."""
        return await self.context(host).xpmem(owner, mm.id, name, **config)

    async def hmm(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> HmmMirror:
        """An HMM device mirror on ``host`` of ``mm`` of ``owner``, its interval notifier inserted."""
        return await self.context(host).hmm(owner, mm.id, name, **config)

    async def sva(self, host: str, owner: str, mm: Mm, name: str | None = None, **config: Any) -> SvaDevice:
        """An SVA device on ``host`` bound to ``mm`` of ``owner`` (its IOMMU)."""
        return await self.context(host).sva(owner, mm.id, name, **config)

    @property
    def names(self) -> list[str]:
        return list(self.partitions)

    def context(self, name: str) -> "SimPartitionContext":
        """Partition ``name`` as workload code running on it sees it (``cluster/context.py``)."""
        ctx = self._contexts.get(name)
        if ctx is None:
            ctx = self._contexts[name] = SimPartitionContext(self, name)
        return ctx

    async def on(self, name: str, fn: Callable[..., Awaitable[Any]], *args: Any) -> Any:
        """Run ``fn(ctx, *args)`` on partition ``name``: here, in this process."""
        return await fn(self.context(name), *args)

    @property
    def faults(self) -> list[Fault]:
        return [f for s in self.owner_services.values() for f in s.faults]

    def violations(self) -> list[str]:
        return [str(v) for p in self.partitions.values() for v in p.oracle.violations]


class SimPartitionContext(SecondaryFactory):
    """A ``PartitionContext`` (``cluster/context.py``) of the sim backend."""

    def __init__(self, cluster: SimCluster, name: str):
        self.cluster = cluster
        self.name = name
        self.partition = cluster.partition(name)
        self.runtime = cluster.runtime
        self.objects: dict[str, Any] = {}
        self.gru_dropin = cluster.config.gru_dropin

    def owner_port(self, owner: str) -> OwnerPort:
        return self.cluster.owner_port(self.name, owner)

    @property
    def sva_iommu(self) -> SvaIommu:
        """This partition's IOMMU, which SVA devices bound to its mms reach."""
        return self.cluster.sva_iommus[self.name]

    async def sva(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> SvaDevice:
        """An SVA device here bound to mm ``mm_id`` of ``owner`` (another partition: the
        device reaches its IOMMU across the interconnect), kept in ``objects``; its completion
        latency is the run's ``sva_completion`` unless ``config`` gives ``completion_us``."""
        c = self.cluster
        if owner == self.name:
            raise ValueError(f"an SVA device on {owner} bound to an mm of {owner}: this model's SVA devices sit on "
                             f"another partition than the mm (the harness places them so)")
        dist, rng = c.config.sva_completion_dist, c.sva_rng
        config.setdefault("completion_us", lambda: dist.sample(rng))
        dev = SvaDevice(self.runtime, c.interconnect, c.sva_devices[self.name], owner, c.owner_services[owner], mm_id,
                        name or self._default_name("sva", owner, mm_id), **config)
        await dev.bind()
        self.objects[dev.name] = dev
        return dev

    async def flush_reports(self) -> None:
        """Nothing to wait for: reports reach the owner's oracle at once in one process."""


def run_sim(
    config: SimConfig,
    workload: Callable[[SimCluster], Awaitable[T]],
    *,
    replay: list[int] | None = None,
    keep_loop: dict[str, Any] | None = None,
) -> SimRun[T]:
    """Build the cluster of ``config`` on a fresh virtual-time loop, run ``workload`` on it,
    wait for every supervised task, and return what happened. ``replay``: the decisions of an
    earlier run (``SimRun.decisions``) to re-make instead of the seeded policy's. ``keep_loop``:
    a dict that gets the loop as ``"loop"``, so a caller can read the trace of a run that raised."""
    from cluster.vtime import LimitedPolicy, ReplayPolicy

    policy = ReplayPolicy(replay) if replay is not None else make_policy(config.scheduler, config.seed)
    if config.choices is not None and policy is not None and replay is None:
        policy = LimitedPolicy(policy, config.choices)
    loop = VirtualTimeLoop(policy=policy, trace=Trace(config.trace))
    if keep_loop is not None:
        keep_loop["loop"] = loop
    holder: dict[str, Any] = {}

    async def main() -> T:
        runtime = Runtime(VirtualClock())
        cluster = SimCluster(config, runtime)
        holder["cluster"] = cluster
        result = await workload(cluster)
        await runtime.join()
        return result

    thresholds = gc.get_threshold()
    gc.set_threshold(max(thresholds[0], GC_YOUNG_THRESHOLD), *thresholds[1:])
    try:
        result = run_virtual(main(), loop=loop)
    finally:
        gc.set_threshold(*thresholds)
    cluster: SimCluster = holder["cluster"]
    return SimRun(
        result=result,
        trace_digest=loop.trace.digest(),
        steps=loop.trace.steps,
        virtual_time_us=loop.time(),
        decisions=list(loop.decisions),
        faults=cluster.faults,
        violations=cluster.violations(),
        trace_entries=loop.trace.entries if config.trace == "full" else [],
    )
