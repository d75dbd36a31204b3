"""Every Redis adapter turns an outage into ``Unavailable``: no redis exception type reaches a use case."""

from __future__ import annotations

import socket
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime

import pytest
from redis.asyncio import Redis

from services.common.errors import Unavailable
from services.common.settings import Bucket
from services.gateway.redis_buckets import RedisBucketStore
from services.message.adapters.redis import RedisInbox, RedisTimeline, connect
from services.message.ports import InboxEntry
from services.presence.adapters.redis import RedisPresenceStore

AT = datetime(2026, 11, 26, tzinfo=UTC)


CALLS: dict[str, Callable[[Redis], Awaitable[object]]] = {
    "inbox bump": lambda r: RedisInbox(r).bump(["u"], "c", seq=1, last_message={}, at=AT, reader_id=None),
    "inbox mark_read": lambda r: RedisInbox(r).mark_read("u", "c", 1),
    "inbox entries": lambda r: RedisInbox(r).entries("u", ["c"]),
    "inbox put": lambda r: RedisInbox(r).put("u", "c", InboxEntry()),
    "timeline append": lambda r: RedisTimeline(r).append("c", seq=1, message={}, at=AT),
    "timeline heads": lambda r: RedisTimeline(r).heads(["c"]),
    "bucket take": lambda r: RedisBucketStore(r).take("k", Bucket(rate=1, burst=2), now=0.0),
    "presence set_device": lambda r: RedisPresenceStore(r).set_device("u", "d", now=0.0, expires_at=1.0),
    "presence remove_device": lambda r: RedisPresenceStore(r).remove_device("u", "d", now=0.0),
    "presence sweep": lambda r: RedisPresenceStore(r).sweep(0.0),
    "presence status": lambda r: RedisPresenceStore(r).status(["u"], now=0.0),
    "presence subscribe": lambda r: RedisPresenceStore(r).subscribe("s", ["u"], limit=5),
    "presence subscribers": lambda r: RedisPresenceStore(r).subscribers("u"),
    "presence unsubscribe_all": lambda r: RedisPresenceStore(r).unsubscribe_all("s"),
}


@pytest.fixture
async def dead_redis() -> AsyncIterator[Redis]:
    """A client of a loopback port nobody listens on."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    yield client
    await client.aclose()


@pytest.mark.parametrize("call", CALLS.values(), ids=CALLS.keys())
async def test_unreachable_redis_is_unavailable(dead_redis: Redis, call: Callable[[Redis], Awaitable[object]]) -> None:
    with pytest.raises(Unavailable, match="redis is unreachable"):
        await call(dead_redis)


async def test_a_refused_command_is_unavailable_too(redis_client: Redis, unique_prefix: str) -> None:
    await redis_client.set(f"{unique_prefix}inbox:u", "not a hash")

    with pytest.raises(Unavailable, match="redis refused"):
        await RedisInbox(redis_client, prefix=unique_prefix).entries("u", ["c"])
