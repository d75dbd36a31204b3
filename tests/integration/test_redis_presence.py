"""The PresenceStore contract (tests/unit/presence/test_presence_store_contract.py) over the harness's real
Redis and over memory side by side, plus what only Redis has: several presence processes racing over the
same users, sweeps bigger than one script call, and the keys it leaves behind."""

from __future__ import annotations

import asyncio

import pytest
from redis.asyncio import Redis

from services.message.adapters.redis import connect
from services.presence.adapters.memory import MemoryPresenceStore
from services.presence.adapters.redis import RedisPresenceStore
from services.presence.domain import PresenceStatus
from services.presence.ports import PresenceStore
from tests.unit.presence.presence_support import T0, uid

# The contract's test functions, collected here again over this module's ``store`` fixture.
from tests.unit.presence.test_presence_store_contract import *  # noqa: F403
from tests.unit.presence.test_presence_store_contract import TTL


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_client: Redis, unique_prefix: str) -> PresenceStore:
    if request.param == "memory":
        return MemoryPresenceStore()
    return RedisPresenceStore(redis_client, prefix=unique_prefix)


async def test_each_transition_is_reported_by_exactly_one_of_several_processes(
    redis_url: str, unique_prefix: str
) -> None:
    clients = [connect(redis_url) for _ in range(3)]
    stores = [RedisPresenceStore(client, prefix=unique_prefix) for client in clients]
    users = [uid("u") for _ in range(20)]
    try:
        online = await asyncio.gather(
            *(stores[i % 3].set_device(u, f"d{i}", now=T0, expires_at=T0 + TTL) for u in users for i in range(3))
        )
        offline = await asyncio.gather(*(s.sweep(T0 + TTL) for s in stores))
    finally:
        for client in clients:
            await client.aclose()

    assert sorted(change.user_id for change in online if change is not None) == sorted(users)
    swept = [change for changes in offline for change in changes]
    assert sorted(change.user_id for change in swept) == sorted(users)
    assert all(change == PresenceStatus(change.user_id, online=False, last_seen=T0) for change in swept)


async def test_sweep_larger_than_one_script_call_takes_everyone_offline(
    redis_client: Redis, unique_prefix: str
) -> None:
    store = RedisPresenceStore(redis_client, prefix=unique_prefix, sweep_batch=7)
    users = [uid("u") for _ in range(30)]
    for u in users:
        for device in ("phone", "laptop"):
            await store.set_device(u, device, now=T0, expires_at=T0 + TTL)

    swept = await store.sweep(T0 + TTL)

    assert sorted(change.user_id for change in swept) == sorted(users)
    assert [s.online for s in await store.status(users, now=T0 + TTL)] == [False] * len(users)


async def test_ids_with_separators_do_not_collide(redis_client: Redis, unique_prefix: str) -> None:
    store = RedisPresenceStore(redis_client, prefix=unique_prefix)
    tag = uid("x")
    first, second = f"{tag}:a", f"{tag}:a:b"
    await store.set_device(first, "b:c", now=T0, expires_at=T0 + TTL)
    await store.set_device(second, "c", now=T0, expires_at=T0 + 2 * TTL)

    swept = await store.sweep(T0 + TTL)

    assert swept == [PresenceStatus(first, online=False, last_seen=T0)]
    assert [s.online for s in await store.status([first, second], now=T0 + TTL)] == [False, True]


async def test_offline_users_leave_only_their_last_seen_behind(redis_client: Redis, unique_prefix: str) -> None:
    store, u, watcher = RedisPresenceStore(redis_client, prefix=unique_prefix), uid("u"), uid("w")
    await store.subscribe(watcher, [u], limit=10)
    await store.set_device(u, "d1", now=T0, expires_at=T0 + TTL)
    await store.set_device(u, "d2", now=T0, expires_at=T0 + TTL)
    await store.remove_device(u, "d1", now=T0 + 1)
    await store.sweep(T0 + TTL)
    await store.unsubscribe_all(watcher)

    keys = await redis_client.keys(f"{unique_prefix}*")

    assert keys == [f"{unique_prefix}presence:seen".encode()]
    assert await redis_client.hget(f"{unique_prefix}presence:seen", u) == repr(T0 + 1).encode()
