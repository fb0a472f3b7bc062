"""The store's lease and fence (corral.store.lease), on SQLite and PostgreSQL."""

from __future__ import annotations

import asyncio

import pytest

from corral.errors import NotLeader
from corral.store import open_store


async def test_the_lease_is_taken_once_expired_and_its_epoch_only_grows(store_url: str) -> None:
    async with await open_store(store_url) as store:
        first = await store.lease.acquire("a", "http://a", 30.0)
        assert (first.holder, first.epoch, first.address) == ("a", 1, "http://a")
        held = await store.lease.acquire("b", "http://b", 30.0)
        assert held.holder == "a" and held.epoch == 1  # not expired: b stays a standby
        assert await store.lease.renew("a", 1, 0.0)  # expires now (by the database's clock)
        taken = await store.lease.acquire("b", "http://b", 30.0)
        assert (taken.holder, taken.epoch) == ("b", 2)
        assert not await store.lease.renew("a", 1, 30.0)  # a was deposed
        # A restore: nodes have seen epoch 9; b gives the lease up there, the next is 10.
        assert not await store.lease.abdicate("a", 1, 9)
        assert await store.lease.abdicate("b", 2, 9)
        assert (await store.lease.acquire("c", "http://c", 30.0)).epoch == 10


async def test_a_deposed_leaders_write_is_refused_whole_and_reported(store_url: str) -> None:
    async with await open_store(store_url) as store:
        mine = await store.lease.acquire("a", "http://a", 0.0)
        fenced: list[NotLeader] = []
        store.set_fence("a", mine.epoch, fenced.append)
        await store.set_meta("k", "by a")  # a leads: it lands
        await store.lease.acquire("b", "http://b", 30.0)  # a's lease had expired: b takes it
        if store.backend == "sqlite":
            return  # one controller per SQLite file (its OS lock); no check per commit
        with pytest.raises(NotLeader, match="deposed") as refused:
            await store.set_meta("k", "by a, deposed")
        assert refused.value.leader == "http://b"
        await asyncio.sleep(0)  # the hook is called on the loop
        assert len(fenced) == 1
        assert await store.get_meta("k") == "by a"


async def test_a_standby_writes_nothing(store_url: str) -> None:
    async with await open_store(store_url) as store:
        store.set_fence("s", -1, None)
        with pytest.raises(NotLeader, match="does not lead"):
            await store.set_meta("k", "v")
        assert await store.get_meta("k") is None
