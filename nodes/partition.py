"""One partition: its frames, its mms, its SRCU domain(s), its notifier core, its oracle, and
XPMEM's source side for its mms.

A plain class (Ray wraps it at the edge, in ``cluster/``). The SRCU scope is a parameter:
``global`` (one domain for every mm of the partition, as the kernel does: the source of the
exit/unregister hang) or ``per_mm`` (one domain per mm, the alternative the kernel did not take,
for comparison). So is the SRCU algorithm (``SrcuOptions.algorithm``): ``classic``, the v3.10
two-index SRCU (``nodes/srcu.py``), or ``tree``, Tree SRCU of v5.10 (``nodes/srcu_tree.py``),
with the delay policy of v5.10, v5.19-rc1 or v6.6 (``SrcuOptions.tree_version``); the algorithm
is orthogonal to the notifier core's semantics.
"""

from __future__ import annotations

from dataclasses import dataclass

from nodes.errors import NotFound
from nodes.memory import FrameTable
from nodes.migrate_device import DevPagemaps
from nodes.mm import Mm
from nodes.notifier import NotifierCore
from nodes.oracle import Oracle, Violation
from nodes.runtime import Runtime
from nodes.secondary.xpmem import XpmemSegments
from nodes.srcu import DEFAULT_JIFFY_US, Srcu
from nodes.srcu_base import SrcuBase
from nodes.srcu_tree import (
    CONFIG_RCU_FANOUT,
    CONFIG_RCU_FANOUT_LEAF,
    DEFAULT_SRCU_EXP_HOLDOFF_US,
    DEFAULT_TREE_VERSION,
    TreeSrcu,
    check_tree_version,
)

SRCU_SCOPES = ("global", "per_mm")
#: srcu.algorithm: the SRCU a partition builds its domains with
SRCU_ALGORITHMS: dict[str, type[SrcuBase]] = {"classic": Srcu, "tree": TreeSrcu}


@dataclass(frozen=True)
class SrcuOptions:
    """How a partition builds its SRCU domains: the algorithm, and Tree SRCU's shape, holdoff
    and the kernel version of its delay policy (the kernel's defaults; ``classic`` has no use
    for them)."""

    algorithm: str = "classic"
    fanout_leaf: int = CONFIG_RCU_FANOUT_LEAF  # CPUs per srcu_node leaf, at most
    fanout: int = CONFIG_RCU_FANOUT  # children per inner srcu_node, at most
    exp_holdoff_us: float = DEFAULT_SRCU_EXP_HOLDOFF_US  # srcu_might_be_idle()'s exp_holdoff
    tree_version: str = DEFAULT_TREE_VERSION  # srcu_get_delay()'s policy (nodes.srcu_tree.TREE_VERSIONS)

    def __post_init__(self) -> None:
        if self.algorithm not in SRCU_ALGORITHMS:
            raise ValueError(f"srcu algorithm must be one of {tuple(SRCU_ALGORITHMS)}, got {self.algorithm!r}")
        check_tree_version(self.tree_version)


def make_srcu(runtime: Runtime, ncpus: int, options: SrcuOptions, *, name: str,
              jiffy_us: float = DEFAULT_JIFFY_US) -> SrcuBase:
    """One SRCU domain of the algorithm ``options`` name."""
    if options.algorithm == "tree":
        return TreeSrcu(runtime, ncpus, name=name, jiffy_us=jiffy_us, exp_holdoff_us=options.exp_holdoff_us,
                        fanout_leaf=options.fanout_leaf, fanout=options.fanout, tree_version=options.tree_version)
    return Srcu(runtime, ncpus, name=name, jiffy_us=jiffy_us)


class Partition:
    """The simulated kernel of one SGI UV / Altix partition."""

    def __init__(
        self,
        runtime: Runtime,
        *,
        name: str = "p0",
        nframes: int = 65536,
        ncpus: int = 4,
        srcu_scope: str = "global",
        jiffy_us: float = DEFAULT_JIFFY_US,
        fanout: str = "sequential",
        expedited: bool = False,
        semantics: str = "v3.10",
        reclaim_watermark: float = 0.0,
        srcu: SrcuOptions = SrcuOptions(),
    ):
        if srcu_scope not in SRCU_SCOPES:
            raise ValueError(f"srcu_scope must be one of {SRCU_SCOPES}, got {srcu_scope!r}")
        self.runtime = runtime
        self.name = name
        self.ncpus = ncpus
        self.srcu_scope = srcu_scope
        self.jiffy_us = jiffy_us
        self.srcu_options = srcu
        self.frames = FrameTable(nframes)
        self.oracle = Oracle(self.frames, runtime.now, name)
        self.srcu = make_srcu(runtime, ncpus, srcu, name=f"{name}.srcu", jiffy_us=jiffy_us)
        self._mm_srcu: dict[int, SrcuBase] = {}
        self.core = NotifierCore(runtime, self.srcu_for, self.oracle, fanout=fanout, expedited=expedited,
                                 semantics=semantics)
        # kmalloc's direct reclaim: below this fraction of free frames an allocation reclaims
        self.reclaim_watermark = reclaim_watermark
        self.core.direct_reclaim = self.direct_reclaim
        self.mms: dict[int, Mm] = {}
        self._next_mm_id = 1
        self.xpmem = XpmemSegments(self)  # XPMEM's source side: segments made from these mms
        self.pgmaps = DevPagemaps()  # device-private memory its ptes may point at (HMM migration)

    def __repr__(self) -> str:
        return f"Partition({self.name}, {len(self.mms)} mms, {self.frames.nfree}/{self.frames.nframes} frames free)"

    def srcu_for(self, mm: Mm) -> SrcuBase:
        """The SRCU domain protecting ``mm``'s notifier list."""
        if self.srcu_scope == "global":
            return self.srcu
        srcu = self._mm_srcu.get(mm.id)
        if srcu is None:
            srcu = make_srcu(self.runtime, self.ncpus, self.srcu_options, name=f"{mm.name}.srcu",
                             jiffy_us=self.jiffy_us)
            self._mm_srcu[mm.id] = srcu
        return srcu

    async def direct_reclaim(self) -> None:
        """An allocation under memory pressure (free frames below ``reclaim_watermark`` of the
        partition) enters direct reclaim: shrink_page_list() unmaps pages of the mm with the
        most resident pages, taking its anon_vma locks (``vmops.reclaim``)."""
        if self.frames.nfree >= self.reclaim_watermark * self.frames.nframes:
            return
        from nodes import vmops  # vmops builds on the partition's parts

        live = [mm for mm in self.mms.values() if not mm.exited and mm.vmas]
        if not live:
            return
        victim = max(live, key=lambda m: len(m.mapped_pfns()))
        vma = victim.vmas[0]
        self.runtime.trace("reclaim", f"direct reclaim of {victim.name} (free frames {self.frames.nfree})")
        await vmops.reclaim(self, victim, vma.start, min(vma.end - vma.start, 16 * 4096))

    def create_mm(self) -> Mm:
        mm = Mm(self._next_mm_id, self.name)
        self._next_mm_id += 1
        self.mms[mm.id] = mm
        return mm

    def mm(self, mm_id: int) -> Mm:
        """The live mm ``mm_id``; ``NotFound`` naming it otherwise."""
        mm = self.mms.get(mm_id)
        if mm is None or mm.exited:
            raise NotFound(f"no live mm {mm_id} on partition {self.name}")
        return mm

    def check_invariants(self, *, final: bool = False) -> list[Violation]:
        """The oracle's sweep over every mm of the partition (see ``nodes.oracle``)."""
        return self.oracle.check_invariants(self.mms.values(), final=final)
