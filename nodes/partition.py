"""One partition: its frames, its mms, its SRCU domain(s), its notifier core, its oracle, and
XPMEM's source side for its mms.

A plain class (Ray wraps it at the edge, in ``cluster/``). The SRCU scope is a parameter:
``global`` (one domain for every mm of the partition, as the kernel does: the source of the
exit/unregister hang) or ``per_mm`` (one domain per mm, the alternative the kernel did not take,
for comparison).
"""

from __future__ import annotations

from nodes.errors import NotFound
from nodes.memory import FrameTable
from nodes.mm import Mm
from nodes.notifier import NotifierCore
from nodes.oracle import Oracle, Violation
from nodes.runtime import Runtime
from nodes.secondary.xpmem import XpmemSegments
from nodes.srcu import DEFAULT_JIFFY_US, Srcu

SRCU_SCOPES = ("global", "per_mm")


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
    ):
        if srcu_scope not in SRCU_SCOPES:
            raise ValueError(f"srcu_scope must be one of {SRCU_SCOPES}, got {srcu_scope!r}")
        self.runtime = runtime
        self.name = name
        self.ncpus = ncpus
        self.srcu_scope = srcu_scope
        self.jiffy_us = jiffy_us
        self.frames = FrameTable(nframes)
        self.oracle = Oracle(self.frames, runtime.now, name)
        self.srcu = Srcu(runtime, ncpus, name=f"{name}.srcu", jiffy_us=jiffy_us)
        self._mm_srcu: dict[int, Srcu] = {}
        self.core = NotifierCore(runtime, self.srcu_for, self.oracle, fanout=fanout, expedited=expedited)
        self.mms: dict[int, Mm] = {}
        self._next_mm_id = 1
        self.xpmem = XpmemSegments(self)  # XPMEM's source side: segments made from these mms

    def __repr__(self) -> str:
        return f"Partition({self.name}, {len(self.mms)} mms, {self.frames.nfree}/{self.frames.nframes} frames free)"

    def srcu_for(self, mm: Mm) -> Srcu:
        """The SRCU domain protecting ``mm``'s notifier list."""
        if self.srcu_scope == "global":
            return self.srcu
        srcu = self._mm_srcu.get(mm.id)
        if srcu is None:
            srcu = Srcu(self.runtime, self.ncpus, name=f"{mm.name}.srcu", jiffy_us=self.jiffy_us)
            self._mm_srcu[mm.id] = srcu
        return srcu

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
