"""Test doubles shared by the unit tests of the secondary MMUs."""

from __future__ import annotations

from nodes.owner import LocalOwner
from nodes.partition import Partition


class DelayedOwner(LocalOwner):
    """``LocalOwner`` behind a network: get_user_pages and put_user_pages cost ``one_way_us``
    each way, so a secondary's lookup can race an invalidation on the owner."""

    def __init__(self, partition: Partition, one_way_us: float):
        super().__init__(partition)
        self.one_way_us = one_way_us

    async def get_user_pages(self, mm_id, address, npages, *, write, pin):  # type: ignore[no-untyped-def]
        await self.part.runtime.sleep(self.one_way_us)
        try:
            return await super().get_user_pages(mm_id, address, npages, write=write, pin=pin)
        finally:
            await self.part.runtime.sleep(self.one_way_us)

    async def put_user_pages(self, mm_id, pfns):  # type: ignore[no-untyped-def]
        await self.part.runtime.sleep(self.one_way_us)
        await super().put_user_pages(mm_id, pfns)
        await self.part.runtime.sleep(self.one_way_us)
