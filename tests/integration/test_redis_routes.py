"""The route table contract over the in-memory adapter and the real Redis, plus expiry."""

from __future__ import annotations

import pytest
from redis.asyncio import Redis

from services.common.ids import new_id
from services.delivery.routes import MemoryRouteTable, RedisRouteTable, RouteTable
from tests.unit.delivery.route_table_contract import *  # noqa: F403 - the contract's tests, run over the fixture below


@pytest.fixture(params=["memory", "redis"])
def routes(request: pytest.FixtureRequest, redis_client: Redis, unique_prefix: str) -> RouteTable:
    if request.param == "memory":
        return MemoryRouteTable()
    return RedisRouteTable(redis_client, ttl_s=60, prefix=unique_prefix)


async def test_routes_expire_unless_refreshed(redis_client: Redis, unique_prefix: str) -> None:
    table = RedisRouteTable(redis_client, ttl_s=60, prefix=unique_prefix)
    user = new_id()
    await table.attach(user, "phone", "delivery-0")
    assert 0 < await redis_client.ttl(f"{unique_prefix}route:{user}") <= 60
    await redis_client.expire(f"{unique_prefix}route:{user}", 1000)
    await table.refresh([user])
    assert await redis_client.ttl(f"{unique_prefix}route:{user}") <= 60
