"""What workload code sees of one partition, on either backend, and how it gets there.

A workload (the harness's, a test's, a user's) is a coroutine given a cluster. It runs code *on*
a partition with ``await cluster.on(name, fn, *args)``: ``fn(ctx, *args)`` is awaited where
that partition lives (in this process on the sim backend, in the partition's actor on the ray
backend) and its result comes back. ``fn`` must be a plain module-level or closure-free
coroutine function and its arguments and result plain data, because on the ray backend they
are pickled across processes.

``ctx`` is a ``PartitionContext``: the partition (``ctx.partition``, the model of
``nodes/``), its runtime, secondaries made on it (``ctx.gru``, ``ctx.xpmem``: mapping an mm of
any partition, across the interconnect when it is another), and ``ctx.objects``, a place to keep
them between calls by name.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Awaitable, Callable, Protocol

from nodes.secondary.gru import GruMmu
from nodes.secondary.hmm import HmmMirror
from nodes.secondary.kvm import KvmMmu
from nodes.secondary.odp import OdpMr
from nodes.secondary.xpmem import XpmemCred, XpmemDriver

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.partition import Partition
    from nodes.runtime import Runtime


class PartitionContext(Protocol):
    """One partition, as workload code running on it sees it."""

    name: str
    partition: "Partition"
    runtime: "Runtime"
    objects: dict[str, Any]  # what workload code keeps here between calls, by name

    async def gru(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "GruMmu":
        """A GRU on this partition mapping mm ``mm_id`` of ``owner``, registered there; kept
        in ``objects`` under its name."""

    async def kvm(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "KvmMmu":
        """A KVM-style shadow MMU on this partition for mm ``mm_id`` of ``owner``; kept in
        ``objects``."""

    async def xpmem(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "XpmemDriver":
        """An XPMEM driver on this partition for source mm ``mm_id`` of ``owner``, its notifier
        registered; kept in ``objects`` under its name."""

    async def odp(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "OdpMr":
        """An RDMA ODP memory region registered by a NIC on this partition over
        ``config["start"]``, ``config["length"]`` of mm ``mm_id`` of ``owner`` (its interval
        notifier inserted there); kept in ``objects``."""

    async def hmm(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "HmmMirror":
        """An HMM device mirror (a GPU) on this partition of mm ``mm_id`` of ``owner``, its
        interval notifier inserted there (the modern modes only); kept in ``objects``."""

    # The sim backend's context also has ``sva(owner, mm_id, name, **config)``: an IOMMU SVA
    # device here bound to mm ``mm_id`` of ``owner`` (nodes/secondary/sva.py), not in the ray
    # backend's (its services are not on the wire).

    async def flush_reports(self) -> None:
        """Wait until the oracle reports of secondaries here have reached their owners."""


PartitionFn = Callable[..., Awaitable[Any]]  # fn(ctx, *args)


class SecondaryFactory:
    """The ``gru``/``kvm``/``odp``/``hmm``/``xpmem`` of a ``PartitionContext``, for any class that has ``name``,
    ``runtime``, ``objects`` and ``owner_port(owner)`` (the sim backend's context and the live
    partition): each secondary is made with this partition's port to ``owner``, registered, and
    kept in ``objects`` under its name (by default ``KIND@HOST:OWNER/mmID``)."""

    name: str
    runtime: "Runtime"
    objects: dict[str, Any]
    gru_dropin: str = "guarded"  # the default ``dropin`` of GRUs made here (nodes.secondary.gru.GRU_DROPINS)

    def owner_port(self, owner: str) -> "OwnerPort":
        raise NotImplementedError

    def _default_name(self, kind: str, owner: str, mm_id: int) -> str:
        return f"{kind}@{self.name}:{owner}/mm{mm_id}"

    async def gru(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "GruMmu":
        """A GRU here mapping mm ``mm_id`` of ``owner``, registered there; its ``dropin`` is
        this partition's ``gru_dropin`` unless ``config`` names one."""
        config.setdefault("dropin", self.gru_dropin)
        gru = GruMmu(self.runtime, self.owner_port(owner), mm_id, name or self._default_name("gru", owner, mm_id), **config)
        await gru.register()
        self.objects[gru.name] = gru
        return gru

    async def kvm(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "KvmMmu":
        """A KVM-style shadow MMU here for mm ``mm_id`` of ``owner``, registered there."""
        kvm = KvmMmu(self.runtime, self.owner_port(owner), mm_id, name or self._default_name("kvm", owner, mm_id), **config)
        await kvm.register()
        self.objects[kvm.name] = kvm
        return kvm

    async def odp(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "OdpMr":
        """An ODP MR here over ``start``, ``length`` (keyword arguments, required) of mm ``mm_id``
        of ``owner``, registered there (the modern modes only: its interval notifier)."""
        mr = OdpMr(self.runtime, self.owner_port(owner), mm_id, name or self._default_name("odp", owner, mm_id), **config)
        await mr.register()
        self.objects[mr.name] = mr
        return mr

    async def xpmem(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "XpmemDriver":
        """An XPMEM driver here for source mm ``mm_id`` of ``owner``, its notifier registered;
        ``cred`` (the source process) defaults to tgid ``mm_id``, uid and gid 1000."""
        cred = config.pop("cred", XpmemCred(tgid=mm_id, uid=1000, gid=1000))
        drv = XpmemDriver(self.runtime, self.owner_port(owner), mm_id, name or self._default_name("xpmem", owner, mm_id),
                          cred=cred, **config)
        await drv.register()
        self.objects[drv.name] = drv
        return drv

    async def hmm(self, owner: str, mm_id: int, name: str | None = None, **config: Any) -> "HmmMirror":
        """An HMM device mirror here of mm ``mm_id`` of ``owner``, its notifier inserted there."""
        part = getattr(self, "partition", None)  # the device memory's oracle: this partition's
        config.setdefault("oracle", part.oracle if part is not None else None)
        dev = HmmMirror(self.runtime, self.owner_port(owner), mm_id, name or self._default_name("hmm", owner, mm_id),
                        **config)
        await dev.register()
        self.objects[dev.name] = dev
        return dev


class Cluster(Protocol):
    """The partitions of one run, as a workload drives them."""

    names: list[str]
    runtime: "Runtime"  # the workload's own time and tasks (virtual on the sim backend, real on ray)

    async def on(self, name: str, fn: PartitionFn, *args: Any) -> Any:
        """Run ``fn(ctx, *args)`` on partition ``name`` and return its result."""
