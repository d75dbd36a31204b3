"""The message cache contract (tests/unit/message/cache_contract.py) over the harness's real Redis and
over memory side by side, plus what only Redis has: one hash per inbox, trimming and expiry."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.common.ids import new_id
from services.message.adapters.memory import MemoryInbox, MemoryTimeline
from services.message.adapters.redis import RedisInbox, RedisTimeline
from services.message.ports import Inbox, Timeline

# The contract's test functions, collected here again over this module's fixtures.
from tests.unit.message.cache_contract import *  # noqa: F403
from tests.unit.message.cache_contract import T0, TIMELINE_KEEP, LoseCache, message

DEADLINE_S = 30.0


@pytest.fixture(params=["memory", "redis"])
def adapter(request: pytest.FixtureRequest) -> str:
    kind: str = request.param
    return kind


@pytest.fixture
def inbox(adapter: str, redis_client: Redis, unique_prefix: str) -> Inbox:
    if adapter == "memory":
        return MemoryInbox()
    return RedisInbox(redis_client, prefix=unique_prefix)


@pytest.fixture
def timeline(adapter: str, redis_client: Redis, unique_prefix: str) -> Timeline:
    if adapter == "memory":
        return MemoryTimeline(keep=TIMELINE_KEEP)
    return RedisTimeline(redis_client, prefix=unique_prefix, keep=TIMELINE_KEEP, ttl_s=3600)


@pytest.fixture
def lose_cache(inbox: Inbox, redis_client: Redis, unique_prefix: str) -> LoseCache:
    """Memory forgets; Redis loses every key of this test, which is what a FLUSHALL does to it without
    wiping the keys of the other tests sharing the server."""

    async def lose() -> None:
        if isinstance(inbox, MemoryInbox):
            inbox.forget()
            return
        keys = [key async for key in redis_client.scan_iter(match=f"{unique_prefix}*", count=1000)]
        if keys:
            await redis_client.delete(*keys)

    return lose


# --- inbox and timeline ----------------------------------------------------------------------------


async def test_inbox_keeps_one_hash_per_user_that_expires_when_idle(redis_client: Redis, unique_prefix: str) -> None:
    inbox, a, b, bob = RedisInbox(redis_client, prefix=unique_prefix, idle_ttl_s=900), new_id(), new_id(), new_id()

    await inbox.bump([bob], a, seq=1, last_message=message(1), at=T0, reader_id=None)
    await inbox.bump([bob], b, seq=4, last_message=message(4), at=T0, reader_id=bob)

    key = f"{unique_prefix}inbox:{bob}"
    assert await redis_client.keys(f"{unique_prefix}*") == [key.encode()]
    assert await redis_client.hget(key, f"max:{b}") == b"4"
    assert 0 < await redis_client.ttl(key) <= 900


async def test_timeline_keeps_the_newest_events_and_expires_when_idle(redis_client: Redis, unique_prefix: str) -> None:
    timeline, cid = RedisTimeline(redis_client, prefix=unique_prefix, keep=5, ttl_s=1200), new_id()

    for seq in range(1, 13):
        await timeline.append(cid, seq=seq, message=message(seq), at=T0)

    key = f"{unique_prefix}timeline:{cid}"
    kept = await redis_client.zrange(key, 0, -1, withscores=True)
    assert [int(entry[1]) for entry in kept] == [8, 9, 10, 11, 12]
    assert 0 < await redis_client.ttl(key) <= 1200


async def test_bump_of_more_members_than_one_script_call_takes_reaches_them_all(
    redis_client: Redis, unique_prefix: str
) -> None:
    inbox, cid = RedisInbox(redis_client, prefix=unique_prefix), new_id()
    members = [new_id() for _ in range(1201)]

    await inbox.bump(members, cid, seq=3, last_message=message(3), at=T0, reader_id=members[600])

    entries = [found[cid] for found in await asyncio.gather(*(inbox.entries(user, [cid]) for user in members))]
    assert {entry.max_seq for entry in entries} == {3}
    assert [i for i, entry in enumerate(entries) if entry.unread == 0] == [600]
