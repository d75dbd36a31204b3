"""The BucketStore contract (tests/unit/gateway/bucket_store_contract.py) over the harness's real Redis
and over memory side by side, plus what only Redis has: buckets shared by gateway replicas, and expiry."""

from __future__ import annotations

import asyncio
import time
from uuid import uuid4

import pytest
from redis.asyncio import Redis

from services.common.errors import RateLimited
from services.common.settings import Bucket, LimitSettings
from services.gateway.ratelimit import BucketStore, FrameTokens, MemoryBucketStore, RateLimiter
from services.gateway.redis_buckets import RedisBucketStore
from services.message.adapters.redis import connect

# The contract's test functions, collected here again over this module's ``store`` fixture.
from tests.unit.gateway.bucket_store_contract import *  # noqa: F403
from tests.unit.gateway.bucket_store_contract import BUCKET, NOW


@pytest.fixture(params=["memory", "redis"])
def store(request: pytest.FixtureRequest, redis_client: Redis, unique_prefix: str) -> BucketStore:
    if request.param == "memory":
        return MemoryBucketStore()
    return RedisBucketStore(redis_client, prefix=unique_prefix)


async def test_replicas_draw_from_the_same_bucket(redis_url: str, unique_prefix: str) -> None:
    clients = [connect(redis_url) for _ in range(3)]
    stores = [RedisBucketStore(client, prefix=unique_prefix) for client in clients]
    try:
        waits = await asyncio.gather(*(stores[i % 3].take("ip:198.51.100.7", BUCKET, now=NOW) for i in range(12)))
    finally:
        for client in clients:
            await client.aclose()

    assert sorted(waits)[:5] == [0.0] * 5
    assert all(wait > 0 for wait in sorted(waits)[5:])


async def test_limiter_of_two_gateways_with_wall_clocks_shares_the_user_limit(
    redis_client: Redis, unique_prefix: str
) -> None:
    limits = LimitSettings.model_validate(
        {"global": Bucket(rate=1000, burst=2000), "ip": Bucket(rate=1000, burst=2000), "user": Bucket(rate=1, burst=3)}
    )
    gateways = [RateLimiter(limits, RedisBucketStore(redis_client, prefix=unique_prefix), time.time) for _ in "ab"]
    user = f"u-{uuid4().hex}"

    for i in range(3):
        await gateways[i % 2].check(ip=f"203.0.113.{i}", user_id=user)

    with pytest.raises(RateLimited, match="user rate limit exceeded") as refused:
        await gateways[1].check(ip="203.0.113.9", user_id=user)
    assert 0 < refused.value.retry_after <= 1.0


async def test_bucket_expires_once_it_would_be_full_again(redis_client: Redis, unique_prefix: str) -> None:
    store, bucket = RedisBucketStore(redis_client, prefix=unique_prefix), Bucket(rate=2, burst=5)

    for _ in range(3):
        await store.take("user:alice", bucket, now=NOW)

    # Three tokens short at two per second: full again 1.5 s later, so nothing is kept past that.
    assert 0 < await redis_client.pttl(f"{unique_prefix}bucket:user:alice") <= 1500
    assert await redis_client.hget(f"{unique_prefix}bucket:user:alice", "at") is not None


async def test_wall_clock_times_are_kept_to_the_last_bit(redis_client: Redis, unique_prefix: str) -> None:
    store, bucket = RedisBucketStore(redis_client, prefix=unique_prefix), Bucket(rate=3, burst=7)
    now = 1_790_000_000.123456

    await store.take("k", bucket, now=now, cost=6.9)
    tokens, at = await redis_client.hmget(f"{unique_prefix}bucket:k", ["tokens", "at"])

    assert tokens is not None and at is not None
    assert (float(tokens), float(at)) == (7 - 6.9, now)


async def test_an_address_over_its_limit_leaves_the_shared_global_bucket_to_everyone_else(
    redis_client: Redis, unique_prefix: str
) -> None:
    # A token back every 100 s: however slowly this runs, no refill blurs the counts.
    limits = LimitSettings.model_validate(
        {"global": Bucket(rate=0.01, burst=5), "ip": Bucket(rate=0.01, burst=2), "user": Bucket(rate=1000, burst=2000)}
    )
    gateways = [RateLimiter(limits, RedisBucketStore(redis_client, prefix=unique_prefix), time.time) for _ in "ab"]

    async def check(gateway: RateLimiter, ip: str) -> str:
        try:
            await gateway.check(ip=ip, user_id=None)
        except RateLimited as exc:
            return exc.message
        return "ok"

    burst = await asyncio.gather(*(check(gateways[i % 2], "203.0.113.66") for i in range(40)))

    assert sorted(burst) == ["ip rate limit exceeded"] * 38 + ["ok"] * 2
    others = [await check(gateways[i % 2], f"198.51.100.{i}") for i in range(4)]
    assert others == ["ok", "ok", "ok", "global rate limit exceeded"]


async def test_a_refused_take_leaves_every_bucket_as_it_was(redis_client: Redis, unique_prefix: str) -> None:
    store = RedisBucketStore(redis_client, prefix=unique_prefix)
    roomy, tight = Bucket(rate=1, burst=10), Bucket(rate=1, burst=2)
    await store.take_each([("global", roomy), ("ip:a", tight)], now=NOW)
    await store.take_each([("global", roomy), ("ip:a", tight)], now=NOW)
    before = {k: await redis_client.hgetall(f"{unique_prefix}bucket:{k}") for k in ("global", "ip:a")}

    refused = await store.take_each([("global", roomy), ("ip:a", tight), ("user:u", roomy)], now=NOW)

    assert refused == (1, pytest.approx(1.0))
    assert {k: await redis_client.hgetall(f"{unique_prefix}bucket:{k}") for k in ("global", "ip:a")} == before
    assert not await redis_client.exists(f"{unique_prefix}bucket:user:u")


async def test_the_sockets_of_one_user_on_two_nodes_share_the_users_burst(
    redis_client: Redis, unique_prefix: str
) -> None:
    limits = LimitSettings.model_validate(
        {
            "global": Bucket(rate=1000, burst=2000),
            "ip": Bucket(rate=1000, burst=2000),
            "user": Bucket(rate=0.001, burst=200),
        }
    )
    nodes = [RateLimiter(limits, RedisBucketStore(redis_client, prefix=unique_prefix), time.time) for _ in "ab"]
    user = f"u-{uuid4().hex}"
    sockets = [nodes[i % 2].frames(ip=f"203.0.113.{i}", user_id=user) for i in range(4)]

    async def send_until_refused(frames: FrameTokens) -> tuple[int, str]:
        count = 0
        while True:
            try:
                await frames.check()
            except RateLimited as exc:
                return count, exc.message
            count += 1

    results = await asyncio.gather(*(send_until_refused(frames) for frames in sockets))

    # Taken ahead up to 25 at a time, yet every token spent once: the sockets together pass the burst exactly.
    assert sum(count for count, _ in results) == 200
    assert {message for _, message in results} == {"user rate limit exceeded"}
    assert all(count > 0 for count, _ in results)
