"""The ray backend: each partition in its own Ray actor, talking gRPC to the others, in real time.

The unchanged ``nodes/`` model runs for every partition inside a ``LivePartition``
(``cluster/live.py``): the plain ``Partition``, its grpc.aio server on the actor's node, and its
clients to the other partitions. ``PartitionHost`` wraps one; it is an ordinary class, made an
async Ray actor only here, at the edge (``ray.remote(...)(PartitionHost)`` inside a function),
so ``nodes/`` never imports ray and importing this module does not need Ray running.

Bring-up (``run_ray``): connect to Ray (an existing connection of this process; else
``RayConfig.address``, else ``RAY_ADDRESS``, else a new local Ray), place one actor per
partition (``spread``: partition i on alive node i mod n, pinned with a hard
``NodeAffinitySchedulingStrategy``, so one per node when the cluster has enough nodes and round
robin otherwise; ``pack``: all on the driver's node), issue every partition its identity
(below), start every gRPC server on an ephemeral port of its node's own address, hand every
partition the directory of addresses, probe the instrument's own floor between
the partitions that will talk (``probe_floor``: null RPCs and null callouts, no injected
latency; ``RayRun.overhead``), then run the workload on the driver::

    config = RayConfig(partitions=2)

    async def mapped(ctx, npages):             # runs in p0's actor: module level, pickled
        mm = ctx.partition.create_mm()
        ...
        return mm.id

    async def workload(c: RayCluster):
        mm_id = await c.on("p0", mapped, 16)
        ...
        return {...}

    run = run_ray(config, workload)   # RayRun: result, faults, violations, wall time, placement

At the end every partition's oracle reports are flushed, each partition runs its final
invariant sweep and reports its faults (the partitions it fenced), and every actor is stopped
and killed, also when the workload raised. A partition whose actor died (``RayCluster.kill``,
a lost node) is listed in ``RayRun.lost``; the others' reports name it in ``faults``.

Identity (``nodes/rpc/identity.py``): the partitions authenticate each other with mutual TLS.
The driver makes a CA for the run (or loads the user's: ``tls_ca_cert``, ``tls_ca_key``) and
issues each partition a key and a certificate naming it; each actor gets its own in its
``start`` call, as bytes through Ray (never in a file; as private as Ray's own traffic, so on a
network that is not trusted, turn on Ray's TLS as well), and never the CA's key. A caller
without a certificate of the run's CA is refused at the handshake, one whose certificate names
another partition than it claims is PERMISSION_DENIED (``nodes/rpc/server.py``). ``tls=False``
turns this off: plaintext, which the servers accept only on loopback addresses.

Workload functions given to ``RayCluster.on`` are pickled to the actors: module-level coroutine
functions of an importable module (or of ``__main__``, which cloudpickle sends by value), with
plain-data arguments and results (``cluster/context.py``).
"""

from __future__ import annotations

import asyncio
import os
import socket
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Awaitable, Callable, ClassVar, Generic, TypeVar

from nodes.remote import Fault
from nodes.rpc import DEFAULT_TRANSPORT, TRANSPORTS
from nodes.rpc.client import DEFAULT_DEADLINE_US
from nodes.rpc.identity import ClusterCA, PartitionIdentity
from nodes.runtime import Runtime

from cluster.config import PartitionConfig
from cluster.context import PartitionFn
from cluster.topology import Topology, UnknownPartition
from cluster.wallclock import WallClock

T = TypeVar("T")
PLACEMENTS = ("spread", "pack")
DEFAULT_MAX_CONCURRENCY = 10_000  # callouts, faults and workload calls share one actor's loop
ACTOR_CPUS = 0  # partitions wait on the network far more than they compute: many fit a 2-core node
STOP_TIMEOUT_S = 30.0  # for a partition to stop, and then for its actor to end
DEFAULT_PROBE_COUNT = 32  # null calls of each kind per pair at bring-up: about 0.2 s for 2 partitions


def _bad(key: str, expected: str, value: Any) -> ValueError:
    return ValueError(f"ray config {key}: expected {expected}, got {value!r}")


def _split_address(address: str) -> tuple[str, int] | None:
    """(host, port) of ``[ray://]host:port`` (IPv6 hosts in brackets), or None if malformed."""
    target = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = target.rpartition(":")
    host = host[1:-1] if host.startswith("[") and host.endswith("]") else host
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return None
    return host, int(port)


@dataclass
class RayConfig(PartitionConfig):
    """Everything that shapes a ray run: the partition fields of ``PartitionConfig``, and
    where the partitions run and how they reach each other."""

    KIND: ClassVar[str] = "ray config"

    deadline_us: float = DEFAULT_DEADLINE_US  # of every gRPC call between partitions
    # how requests travel between partitions: one unary gRPC call each, or long-lived streams
    # (nodes/rpc/client.py; interconnect.transport of a scenario)
    transport: str = DEFAULT_TRANSPORT
    # None: RAY_ADDRESS if set, else a new local Ray; or "host:port" of a cluster's GCS,
    # "ray://host:port" (Ray Client), "auto" (the cluster `ray start` made on this machine),
    # "local" (a new local Ray). A process already connected to Ray uses that connection.
    address: str | None = None
    placement: str = "spread"  # spread | pack
    hop_latency_us: float = 0.0  # injected per request: hops x this, on the receiving server
    callout_latency_us: float = 0.0  # injected besides into each callout, on the secondary's server
    bind_host: str | None = None  # where each gRPC server listens; None: its node's IP address
    connect_timeout_s: float = 10.0  # how long a Ray address may take to answer before giving up
    max_concurrency: int = DEFAULT_MAX_CONCURRENCY  # concurrent calls into one partition's actor
    # the instrument's floor, probed at bring-up (``probe_floor``): null calls of each kind per
    # pair (0: no probe), over ``probe_pairs`` ((src, dst) partitions; None: every ordered pair)
    probe_count: int = DEFAULT_PROBE_COUNT
    probe_pairs: list[tuple[str, str]] | None = None
    # mutual TLS between the partitions, with a CA made for the run, or the user's (a PEM
    # certificate and the path of its unencrypted key, readable by its owner only). False:
    # plaintext, for runs on loopback addresses only (the servers refuse any other)
    tls: bool = True
    tls_ca_cert: str | None = None
    tls_ca_key: str | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        self.check_positive_int("max_concurrency")
        if not isinstance(self.probe_count, int) or isinstance(self.probe_count, bool) or self.probe_count < 0:
            raise self.bad("probe_count", "an integer >= 0", self.probe_count)
        if self.probe_pairs is not None:
            names = set(self.names)
            pairs = self.probe_pairs
            if not isinstance(pairs, (list, tuple)) or not all(
                    isinstance(p, (list, tuple)) and len(p) == 2 and p[0] in names and p[1] in names and p[0] != p[1]
                    for p in pairs):
                raise self.bad("probe_pairs", f"None or (src, dst) pairs of two of {sorted(names)}", pairs)
            self.probe_pairs = [(str(a), str(b)) for a, b in pairs]
        self.check_choice("placement", PLACEMENTS)
        self.check_choice("transport", TRANSPORTS)
        self.check_number("deadline_us", positive=True)
        self.check_number("hop_latency_us", positive=False)
        self.check_number("callout_latency_us", positive=False)
        self.check_number("connect_timeout_s", positive=True)
        if self.address is not None:
            if not isinstance(self.address, str) or (
                self.address not in ("auto", "local") and _split_address(self.address) is None
            ):
                raise self.bad("address", "None, 'auto', 'local', 'host:port' or 'ray://host:port'", self.address)
        if self.bind_host is not None and (not isinstance(self.bind_host, str) or not self.bind_host):
            raise self.bad("bind_host", "None or a host name or IP address", self.bind_host)
        if not isinstance(self.tls, bool):
            raise self.bad("tls", "true or false", self.tls)
        for key in ("tls_ca_cert", "tls_ca_key"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, (str, os.PathLike)) or not os.fspath(v)):
                raise self.bad(key, "None or the path of a PEM file", v)
        if (self.tls_ca_cert is None) != (self.tls_ca_key is None):
            raise self.bad("tls_ca_cert/tls_ca_key", "both (the CA's certificate and key) or neither",
                           (self.tls_ca_cert, self.tls_ca_key))
        if not self.tls and self.tls_ca_cert is not None:
            raise self.bad("tls", "true when a CA is given (tls_ca_cert)", self.tls)

    def certificate_authority(self) -> ClusterCA | None:
        """The run's CA: the user's (``tls_ca_cert``, ``tls_ca_key``), else a new one; None
        without TLS."""
        if not self.tls:
            return None
        if self.tls_ca_cert is not None:
            return ClusterCA.load(self.tls_ca_cert, self.tls_ca_key)
        return ClusterCA.generate()


class HopLatency:
    """The injected latency of a request from ``src`` to ``dst`` (``LivePartition``'s
    ``latency_us``): hops of the uniform topology times ``per_hop_us``. A sender the topology
    does not know (a hostile or misdirected request) is not delayed; the service refuses it."""

    def __init__(self, names: list[str], hops: int, per_hop_us: float):
        self.topology = Topology.uniform(names, hops=hops)
        self.per_hop_us = float(per_hop_us)

    def __call__(self, src: str, dst: str) -> float:
        try:
            return self.topology.hops(src, dst) * self.per_hop_us
        except UnknownPartition:
            return 0.0


class PartitionHost:
    """One partition in one process: a ``LivePartition`` built and served on the process's own
    event loop. A plain class; ``partition_actor_class`` makes it an async Ray actor."""

    def __init__(self, name: str, config: RayConfig):
        self.name = name
        self.config = config
        self.live: Any = None  # the LivePartition, from start() on

    def _require_live(self) -> Any:
        if self.live is None:
            raise RuntimeError(f"partition {self.name} was not started")
        return self.live

    async def start(self, bind_host: str | None, identity: PartitionIdentity | None) -> str:
        """Build the partition and serve it on ``bind_host`` (None: this node's IP address),
        port 0, with mutual TLS as ``identity`` (None: plaintext, loopback only); returns its
        address."""
        from cluster.live import LivePartition

        if self.live is not None:
            raise RuntimeError(f"partition {self.name} is already started at {self.live.address}")
        c = self.config
        latency = HopLatency(c.names, c.hops, c.hop_latency_us) if c.hop_latency_us > 0 else None
        self.live = LivePartition(
            self.name, identity=identity, nframes=c.nframes, cpus=c.cpus, srcu_scope=c.srcu_scope, jiffy_us=c.jiffy_us,
            fanout=c.fanout, expedited=c.srcu_expedited, deadline_us=c.deadline_us, latency_us=latency,
            callout_latency_us=c.callout_latency_us, gru_dropin=c.gru_dropin, transport=c.transport,
            semantics=c.semantics,  # the notifier core (it was not passed on: every ray run was v3.10)
        )
        if bind_host is None:
            import ray

            bind_host = ray.util.get_node_ip_address()
        return await self.live.start(bind_host, 0)

    async def connect(self, directory: dict[str, str]) -> None:
        self._require_live().connect(directory)

    async def node_id(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()

    async def run(self, fn: PartitionFn, *args: Any) -> Any:
        """``await fn(ctx, *args)`` with this partition as ``ctx``."""
        return await fn(self._require_live(), *args)

    async def probe(self, dst: str, count: int) -> dict[str, list[float]]:
        """The instrument's floor from here to ``dst`` (``GrpcInterconnect.probe``)."""
        return await self._require_live().interconnect.probe(self.name, dst, count)

    async def flush_reports(self) -> None:
        await self._require_live().flush_reports()

    async def report(self) -> dict[str, Any]:
        """The end of the run here: the final invariant sweep, the faults this partition saw as
        an owner, and oracle reports its secondaries could not deliver (failures of its tasks
        are raised by ``stop``). Call ``flush_reports`` on every partition first, so every report has arrived."""
        live = self._require_live()
        live.partition.check_invariants(final=True)
        problems = live.report_problems()
        return {
            "partition": self.name,
            "faults": [asdict(f) for f in live.owner_service.faults],
            "violations": [str(v) for v in live.partition.oracle.violations],
            "report_problems": problems,
        }

    async def stop(self) -> None:
        """Stop serving and join every task; the first failure of any task is raised."""
        if self.live is not None:
            await self.live.stop()


def partition_actor_class(max_concurrency: int = DEFAULT_MAX_CONCURRENCY) -> Any:
    """``PartitionHost`` as an async Ray actor class taking no Ray CPU."""
    import ray

    return ray.remote(num_cpus=ACTOR_CPUS, max_concurrency=max_concurrency, max_restarts=0)(PartitionHost)


# -- placement ----------------------------------------------------------------------------------


def alive_nodes() -> list[dict[str, Any]]:
    """The alive Ray nodes in a deterministic order: the driver's node first, then by address
    and node id. Nodes offering no CPU (a head kept free of work) are left out unless every
    node is like that."""
    import ray

    driver = ray.get_runtime_context().get_node_id()
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    working = [n for n in nodes if n.get("Resources", {}).get("CPU", 0) > 0]
    nodes = working or nodes
    return sorted(nodes, key=lambda n: (n["NodeID"] != driver, n.get("NodeManagerAddress", ""), n["NodeID"]))


def place(names: list[str], placement: str) -> dict[str, str]:
    """Partition name -> Ray node id: ``spread`` gives partition i node i mod n of
    ``alive_nodes()``; ``pack`` gives every partition the driver's node."""
    import ray

    if placement not in PLACEMENTS:
        raise ValueError(f"placement: expected one of {PLACEMENTS}, got {placement!r}")
    if placement == "pack":
        driver = ray.get_runtime_context().get_node_id()
        return {name: driver for name in names}
    nodes = alive_nodes()
    if not nodes:
        raise RuntimeError("the Ray cluster has no alive node to place partitions on")
    return {name: nodes[i % len(nodes)]["NodeID"] for i, name in enumerate(names)}


# -- the cluster a workload drives -------------------------------------------------------------


class RayCluster:
    """The partitions of one ray run: an actor each, on the nodes ``placement`` names."""

    def __init__(self, actors: dict[str, Any], placement: dict[str, str], addresses: dict[str, str]):
        self.actors = actors
        self.placement = placement
        self.addresses = addresses
        self.killed: list[str] = []
        # the driver's own tasks and time (a workload's concurrent streams), in real time
        self.runtime = Runtime(WallClock())

    @property
    def names(self) -> list[str]:
        return list(self.actors)

    def actor(self, name: str) -> Any:
        a = self.actors.get(name)
        if a is None:
            raise KeyError(f"no partition {name!r}; the cluster has {', '.join(self.actors)}")
        return a

    async def on(self, name: str, fn: PartitionFn, *args: Any) -> Any:
        """Run ``fn(ctx, *args)`` in partition ``name``'s actor and return its result. An error
        ``fn`` raises comes back as a Ray error that is also an instance of the original type."""
        return await self.actor(name).run.remote(fn, *args)

    def kill(self, name: str) -> None:
        """Fault injection: kill partition ``name``'s actor process at once (no restart). Its
        sockets close; calls in flight to it fail."""
        import ray

        ray.kill(self.actor(name), no_restart=True)
        self.killed.append(name)


@dataclass
class RayRun(Generic[T]):
    """The outcome of ``run_ray``."""

    result: T
    faults: list[Fault]  # partitions fenced by an owner, from every partition that reported
    violations: list[str]  # of every partition that reported, after its final sweep
    wall_time_us: float  # the workload, from its start to its end
    placement: dict[str, str]  # partition -> Ray node id
    addresses: dict[str, str]  # partition -> host:port of its gRPC server
    lost: list[str] = field(default_factory=list)  # partitions whose actor could not report
    report_problems: list[str] = field(default_factory=list)  # oracle reports lost or refused
    bringup_us: float = 0.0  # connect, place, start and wire the partitions, and probe the floor
    # the instrument's floor: per probed pair "src->dst", its round trips (``probe_floor``); empty without a probe
    overhead: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    backend: str = "ray"


# -- bring-up -----------------------------------------------------------------------------------


def probe_address(address: str, timeout_s: float) -> None:
    """Raise ``ConnectionError`` naming ``address`` unless a gRPC server (a Ray GCS or Ray
    Client server) answers there within ``timeout_s``. ``ray.init`` retries an address that
    does not answer for minutes; this fails in seconds."""
    import grpc

    parsed = _split_address(address)
    if parsed is None:
        raise _bad("address", "'host:port' or 'ray://host:port'", address)
    host, port = parsed
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            pass
    except OSError as e:
        raise ConnectionError(f"no Ray cluster at {address}: cannot connect to {host}:{port}: {e}") from None
    target = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    channel = grpc.insecure_channel(target)
    try:
        grpc.channel_ready_future(channel).result(timeout=timeout_s)
    except grpc.FutureTimeoutError:
        raise ConnectionError(
            f"no Ray cluster at {address}: {host}:{port} accepts connections but does not speak gRPC "
            f"within {timeout_s:g} s"
        ) from None
    finally:
        channel.close()


def _same_host(a: str, b: str) -> bool:
    local = {"localhost", "127.0.0.1", "::1"}
    return a == b or a in local or b in local


def ensure_ray(config: RayConfig) -> bool:
    """Make sure this process is connected to Ray as ``config`` says; True if it started or
    joined Ray here (and so must shut it down), False if it was already connected."""
    import ray

    if ray.is_initialized():
        parsed = _split_address(config.address) if config.address not in (None, "auto", "local") else None
        if parsed is not None and not config.address.startswith("ray://"):
            current = ray.get_runtime_context().gcs_address
            cur = _split_address(current) if current else None
            if cur is not None and (cur[1] != parsed[1] or not _same_host(cur[0], parsed[0])):
                raise ValueError(
                    f"ray config address {config.address!r}: this process is already connected to the Ray "
                    f"cluster at {current}; call ray.shutdown() first or leave address unset"
                )
        return False
    address = config.address if config.address is not None else (os.environ.get("RAY_ADDRESS") or "local")
    if address not in ("auto", "local"):
        probe_address(address, config.connect_timeout_s)
    ray.init(address=address)
    return True


async def _gather_settled(aws: list[Awaitable[Any]]) -> list[Any]:
    """Await all; errors are returned in place, not raised."""
    return await asyncio.gather(*aws, return_exceptions=True)


def plaintext_bind_host(bind_host: str | None, placement: dict[str, str]) -> str | None:
    """Where the servers of a plaintext run (``tls=False``) listen: loopback only
    (``nodes.rpc.server.check_bind_host``). ``bind_host`` if given; else each node's own
    address when every node of ``placement`` has a loopback one (a test cluster on 127.0.0.x),
    else 127.0.0.1 when every partition is on one node (a local Ray). Partitions spread over
    hosts cannot talk over loopback: ``ValueError``, naming the nodes' addresses."""
    import ipaddress

    import ray

    if bind_host is not None:
        return bind_host
    used = set(placement.values())
    addresses = sorted({n.get("NodeManagerAddress", "") for n in ray.nodes() if n["NodeID"] in used})

    def loopback(a: str) -> bool:
        try:
            return ipaddress.ip_address(a).is_loopback
        except ValueError:
            return a == "localhost"

    if all(loopback(a) for a in addresses):
        return None
    if len(used) == 1:
        return "127.0.0.1"
    raise ValueError(f"ray config tls: False runs in plaintext on loopback addresses only, but the partitions are "
                     f"placed on nodes at {', '.join(addresses)}; keep TLS on (or placement='pack' on one node)")


async def _bring_up(config: RayConfig, ca: ClusterCA | None) -> RayCluster:
    """Create, start and wire the actors, each with its identity issued by ``ca`` (None:
    plaintext). On failure, every actor made is ended."""
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    names = config.names
    identities = ca.issue_all(names) if ca is not None else dict.fromkeys(names)
    placement = place(names, config.placement)
    cls = partition_actor_class(config.max_concurrency)
    actors = {
        name: cls.options(scheduling_strategy=NodeAffinitySchedulingStrategy(placement[name], soft=False)).remote(name, config)
        for name in names
    }
    cluster = RayCluster(actors, placement, {})
    try:
        bind_host = config.bind_host if ca is not None else plaintext_bind_host(config.bind_host, placement)
        addresses = await asyncio.gather(*(a.start.remote(bind_host, identities[n]) for n, a in actors.items()))
        cluster.addresses = dict(zip(names, addresses))
        await asyncio.gather(*(a.connect.remote(cluster.addresses) for a in actors.values()))
        nodes = await asyncio.gather(*(a.node_id.remote() for a in actors.values()))
        wrong = {n: (placement[n], got) for n, got in zip(names, nodes) if got != placement[n]}
        if wrong:  # a hard affinity that did not hold is a Ray bug, but the runs would lie
            raise RuntimeError(f"partitions not on the node they were placed on (placed, actual): {wrong}")
    except BaseException:
        await _tear_down(cluster)
        raise
    return cluster


async def probe_floor(cluster: RayCluster, pairs: list[tuple[str, str]], count: int) -> dict[str, dict[str, Any]]:
    """The instrument's own floor, before the workload: for each (src, dst) of ``pairs``,
    ``count`` null RPCs and ``count`` null callouts from src to dst (``GrpcInterconnect.probe``),
    one pair at a time so that no probe waits behind another's. Returns their round trips,
    ``{"src->dst": {"rpc_us": [...], "model_us": [...]}}`` (``workloads.harness.floor_stats``
    sums one up). What a ray figure measures is the modelled system plus this floor; the
    floor is reported beside it, never subtracted."""
    overhead = {}
    for src, dst in pairs:
        overhead[f"{src}->{dst}"] = await cluster.actor(src).probe.remote(dst, count)
    return overhead


async def _collect(cluster: RayCluster) -> tuple[list[dict[str, Any]], list[str]]:
    """Flush every partition's oracle reports, then take every report. Returns the reports and
    the partitions that could not give one (their actor died)."""
    import ray

    names = cluster.names
    flushed = await _gather_settled([cluster.actors[n].flush_reports.remote() for n in names])
    reports = await _gather_settled([cluster.actors[n].report.remote() for n in names])
    got, lost = [], []
    for name, f, r in zip(names, flushed, reports):
        for outcome in (f, r):
            if isinstance(outcome, BaseException) and not isinstance(outcome, ray.exceptions.RayActorError):
                raise outcome
        if isinstance(r, BaseException) or isinstance(f, BaseException):
            lost.append(name)
        else:
            got.append(r)
    return got, lost


async def _awaited(ref: Any) -> Any:
    return await ref


async def _tear_down(cluster: RayCluster) -> None:
    """Stop every partition whose actor lives (servers closed, tasks joined), then end every
    actor and wait for its end: ``__ray_terminate__`` (Ray's graceful exit) answers with the
    actor's death once its process is gone. ``ray.kill`` alone is asynchronous: a call made
    just after it may still run. An actor that does not end within ``STOP_TIMEOUT_S`` is
    killed by force. The first failure of a stop is raised after every actor is dealt with."""
    import ray

    alive = [n for n in cluster.names if n not in cluster.killed]
    stopped = await _gather_settled(
        [asyncio.wait_for(_awaited(cluster.actors[n].stop.remote()), STOP_TIMEOUT_S) for n in alive])
    ended = await _gather_settled(
        [asyncio.wait_for(_awaited(a.__ray_terminate__.remote()), STOP_TIMEOUT_S) for a in cluster.actors.values()])
    for actor, outcome in zip(cluster.actors.values(), ended):
        if not isinstance(outcome, ray.exceptions.RayActorError):
            ray.kill(actor, no_restart=True)
    for name, outcome in zip(alive, stopped):
        if isinstance(outcome, BaseException) and not isinstance(outcome, ray.exceptions.RayActorError):
            raise RuntimeError(f"partition {name} failed while stopping: {outcome!r}") from outcome


async def _run(config: RayConfig, workload: Callable[[RayCluster], Awaitable[T]], ca: ClusterCA | None) -> RayRun[T]:
    t0 = time.monotonic()
    cluster = await _bring_up(config, ca)
    try:
        overhead: dict[str, dict[str, list[float]]] = {}
        if config.probe_count:
            pairs = config.probe_pairs if config.probe_pairs is not None else [
                (a, b) for a in config.names for b in config.names if a != b]
            overhead = await probe_floor(cluster, pairs, config.probe_count)
        t1 = time.monotonic()
        result = await workload(cluster)
        await cluster.runtime.join()  # the workload's own tasks: a failure is raised, not dropped
        t2 = time.monotonic()
        reports, lost = await _collect(cluster)
    except BaseException as e:
        try:
            await _tear_down(cluster)
        except Exception as stop_error:  # the workload's error is the one raised; this rides along
            if hasattr(e, "add_note"):
                e.add_note(f"and then, tearing the partitions down: {stop_error!r}")
        raise
    await _tear_down(cluster)
    return RayRun(
        result=result,
        faults=[Fault(**f) for r in reports for f in r["faults"]],
        violations=[v for r in reports for v in r["violations"]],
        wall_time_us=(t2 - t1) * 1e6,
        placement=dict(cluster.placement),
        addresses=dict(cluster.addresses),
        lost=lost,
        report_problems=[p for r in reports for p in r["report_problems"]],
        bringup_us=(t1 - t0) * 1e6,
        overhead=overhead,
    )


def run_ray(config: RayConfig, workload: Callable[[RayCluster], Awaitable[T]]) -> RayRun[T]:
    """Bring up the partitions of ``config`` as Ray actors, run ``workload(cluster)`` on this
    process's event loop (``asyncio.run``: call from synchronous code), collect every
    partition's report, and stop the partitions, also when the workload raises. Ray is shut down
    only if it was started (or joined) here. An address that does not answer raises
    ``ConnectionError`` naming it; a CA of the user's that cannot be used, ``IdentityError``
    naming its file (both before Ray is touched)."""
    import ray

    ca = config.certificate_authority()
    started = ensure_ray(config)
    try:
        return asyncio.run(_run(config, workload, ca))
    finally:
        if started:
            ray.shutdown()
