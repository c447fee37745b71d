"""What every secondary MMU of this package shares: an owner port, an mm id, registration.

A secondary MMU lives (in this project) on another partition than the mm it maps. It reaches
the owning partition only through an ``OwnerPort`` (``nodes.owner``): get_user_pages, unpin,
register/unregister its notifier, report the translations it installs and drops, and read
through them (remote DMA). It never touches the owner's frames or page tables itself, so the
same class runs unchanged when the port is an RPC client.

``SecondaryMmu`` adds nothing to the notifier ops: the core calls an op only if the subclass
overrides it (``nodes.notifier.has_op``), exactly as the kernel calls ``mn->ops->op`` only if
the driver filled it in.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Collection

from nodes.mm import PAGE_SHIFT, PAGE_SIZE
from nodes.notifier import MmuNotifier, TeardownTiming, has_op
from nodes.owner import MmRef
from nodes.runtime import Runtime, call_maybe_async

if TYPE_CHECKING:
    from nodes.owner import OwnerPort
    from nodes.runtime import TaskSignals


def page_align(address: int) -> int:
    """The page containing ``address`` (PAGE_MASK)."""
    return address & ~(PAGE_SIZE - 1)


def vpn_span(start: int, end: int) -> tuple[int, int]:
    """The virtual page numbers [first, last] an address range [start, end) touches (the range
    of an exported invalidate need not be page aligned)."""
    return start >> PAGE_SHIFT, (end - 1) >> PAGE_SHIFT


def keys_in_span(entries: Collection[int], first: int, last: int) -> list[int]:
    """The keys of ``entries`` (a dict or set keyed by page number) within [first, last], found
    by walking whichever is smaller: the span or the entries. An invalidation of a huge range
    (an exported invalidate up to TASK_SIZE) then costs O(entries), not O(pages in range)."""
    if last - first + 1 <= len(entries):
        return [k for k in range(first, last + 1) if k in entries]
    return [k for k in entries if first <= k <= last]


class SecondaryMmu(MmuNotifier):
    """A secondary MMU's notifier bound to one mm of an owning partition, reached via a port.

    Subclasses override the ops their kernel driver implements and nothing else.
    """

    def __init__(self, runtime: Runtime, owner: "OwnerPort", mm_id: int, name: str):
        super().__init__(name)
        self.runtime = runtime
        self.owner = owner
        self.mm_id = mm_id

    async def register(self, current: "TaskSignals | None" = None) -> None:
        """mmu_notifier_register() of this notifier on the owner's mm ``mm_id``."""
        await self.owner.register(self, self.mm_id, current)

    async def unregister(self) -> TeardownTiming:
        """mmu_notifier_unregister(): returns once no method of this notifier can run."""
        return await self.owner.unregister(self, self.mm_id)

    async def put(self) -> TeardownTiming:
        """The driver is done with the mm: it tears its own state down (its ->release, run by
        itself rather than called by the core), then mmu_notifier_put() (Linux 5.4), which
        returns without waiting for callouts in flight; see ``NotifierCore.put``."""
        if has_op(self, "release"):
            await call_maybe_async(self.release, MmRef(self.mm_id, f"mm{self.mm_id}"))
        return await self.owner.put(self, self.mm_id)
