"""The PendingStore contract (tests/unit/delivery/test_pending_contract.py) over the harness's real Redis
and over memory side by side, plus what only Redis has: expiry, several nodes writing one device's set at
once, two hubs sharing it, and an outage becoming ``Unavailable``."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import orjson
import pytest
from redis.asyncio import Redis

from services.common.errors import Unavailable
from services.delivery.hub import Connection, Hub
from services.delivery.pending import MemoryPendingStore, PendingStore, RedisPendingStore
from services.delivery.protocol import AckWindow
from services.message.adapters.redis import connect

# The contract's test functions, collected here again over this module's ``new_store`` fixture.
from tests.unit.delivery.test_pending_contract import *  # noqa: F403
from tests.unit.delivery.test_pending_contract import message, uid
from tests.unit.delivery.test_pending_hub import Clock


# Replaces the contract's memory-only fixture of the same name.
@pytest.fixture(params=["memory", "redis"])  # type: ignore[no-redef]
def new_store(request: pytest.FixtureRequest, redis_client: Redis, unique_prefix: str) -> Callable[..., PendingStore]:
    if request.param == "memory":
        return MemoryPendingStore
    return partial(RedisPendingStore, redis_client, ttl_s=3600, prefix=unique_prefix)


async def test_every_key_expires_after_the_ttl_and_writes_refresh_it(redis_client: Redis, unique_prefix: str) -> None:
    store, u, c = RedisPendingStore(redis_client, ttl_s=100, prefix=unique_prefix), uid("u"), uid("c")
    await store.ack(u, "d", c, 1)
    await store.add(u, "d", [message(c, 2), message(c, 3)])
    keys = await redis_client.keys(f"{unique_prefix}*")
    assert len(keys) == 4
    assert all(0 < ttl <= 100 for ttl in [await redis_client.ttl(key) for key in keys])

    for key in keys:
        await redis_client.expire(key, 5)
    await store.ack(u, "d", c, 2)
    assert all(50 < ttl <= 100 for ttl in [await redis_client.ttl(key) for key in keys])

    for key in keys:
        await redis_client.expire(key, 5)
    await store.forget(u, "d", [(c, 3)])
    remaining = await redis_client.keys(f"{unique_prefix}*")
    assert remaining, "the acked seqs stay"
    assert all(50 < ttl <= 100 for ttl in [await redis_client.ttl(key) for key in remaining])


async def test_nothing_is_left_behind_once_everything_is_acked_except_the_acked_seqs(
    redis_client: Redis, unique_prefix: str
) -> None:
    store, u, c = RedisPendingStore(redis_client, prefix=unique_prefix), uid("u"), uid("c")
    await store.add(u, "d", [message(c, seq) for seq in range(1, 6)])
    await store.ack(u, "d", c, 5)

    keys = await redis_client.keys(f"{unique_prefix}*")

    assert keys == [f"{unique_prefix}pending:{{{len(u)}:{u}:d}}:acked".encode()]


async def test_several_nodes_adding_and_acking_one_device_at_once_stay_consistent(
    redis_url: str, unique_prefix: str
) -> None:
    clients = [connect(redis_url) for _ in range(3)]
    stores = [RedisPendingStore(client, prefix=unique_prefix) for client in clients]
    u, c = uid("u"), uid("c")
    try:
        adds = [stores[seq % 3].add(u, "d", [message(c, seq)]) for seq in range(1, 101)]
        acks = [stores[seq % 3].ack(u, "d", c, seq) for seq in range(5, 51, 5)]
        await asyncio.gather(*adds, *acks)
        pending = await stores[0].load(u, "d")
    finally:
        for client in clients:
            await client.aclose()

    assert pending.acked == {c: 50}
    assert [f["seq"] for f in pending.frames] == list(range(51, 101)), "whatever order they ran in"


async def test_a_device_reconnecting_to_another_node_gets_its_unacked_frames_over_redis(
    redis_url: str, unique_prefix: str
) -> None:
    first_client, second_client = connect(redis_url), connect(redis_url)
    clock = Clock()
    first_node = Hub(pending=RedisPendingStore(first_client, prefix=unique_prefix), clock=clock)
    second_node = Hub(pending=RedisPendingStore(second_client, prefix=unique_prefix))
    u, c = uid("u"), uid("c")
    try:
        before = _connect(first_node, u)
        for seq in (1, 2, 3):
            await first_node.push([u], message(c, seq), tracked=True)
        await first_node.ack(before, c, 1)
        clock.now = 1.0
        await first_node.write_behind(1.0)  # the first node's tick; it dies after it

        after = _connect(second_node, u)
        assert await second_node.restore(after) == 2
        redelivered = [await after.next_outgoing() for _ in range(after.queued)]
    finally:
        await first_client.aclose()
        await second_client.aclose()

    assert [_decode(f) for f in redelivered] == [
        {**message(c, 2), "redelivered": True},
        {**message(c, 3), "redelivered": True},
    ]


async def test_of_a_ticks_frames_only_the_unacked_one_reaches_redis_with_the_acked_seq(
    redis_client: Redis, unique_prefix: str
) -> None:
    clock, u, c = Clock(), uid("u"), uid("c")
    hub = Hub(pending=RedisPendingStore(redis_client, prefix=unique_prefix), clock=clock)
    conn = _connect(hub, u)
    for seq in range(1, 21):
        await hub.push([u], message(c, seq), tracked=True)
        await hub.ack(conn, c, seq)
    await hub.push([u], message(c, 21), tracked=True)  # never acked
    clock.now = 1.0

    await hub.write_behind(1.0)

    assert await redis_client.hlen(next(iter(await redis_client.keys(f"{unique_prefix}*:frames")))) == 1
    restored = await RedisPendingStore(redis_client, prefix=unique_prefix).load(u, "phone")
    assert [frame["seq"] for frame in restored.frames] == [21]
    assert restored.acked == {c: 20}


async def test_a_large_batch_and_a_full_set_stay_within_the_capacity(redis_client: Redis, unique_prefix: str) -> None:
    store, u, c = RedisPendingStore(redis_client, prefix=unique_prefix, capacity=1000), uid("u"), uid("c")
    await store.add(u, "d", [message(c, seq) for seq in range(1, 3001)])

    pending = await store.load(u, "d")

    assert [f["seq"] for f in pending.frames] == list(range(2001, 3001))
    assert await redis_client.zcard(f"{unique_prefix}pending:{{{len(u)}:{u}:d}}:age") == 1000


async def test_unreachable_redis_is_unavailable() -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    client = connect(f"redis://127.0.0.1:{port}/0", timeout_s=2)
    store = RedisPendingStore(client)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: store.add("u", "d", [message("c", 1)]),
            lambda: store.ack("u", "d", "c", 1),
            lambda: store.load("u", "d"),
            lambda: store.forget("u", "d", [("c", 1)]),
        ]
        for call in calls:
            with pytest.raises(Unavailable, match="redis is unreachable"):
                await call()
    finally:
        await client.aclose()


def _connect(hub: Hub, user: str) -> Connection:
    conn = Connection(user, "phone", queue_size=64, window=AckWindow(timeout_s=30, max_redeliveries=3))
    hub.attach(conn)
    return conn


def _decode(item: Any) -> Any:
    assert isinstance(item, str)
    return orjson.loads(item)
