"""The revocation contract over the in-process adapter and real Redis, and what only the Redis stream does:
reaching a process that starts later, and outliving the stream's own expiry."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import pytest
from redis.asyncio import Redis

from services.common.ids import new_id
from services.common.revocation import MemoryRevocations, RedisRevocations
from services.common.tokens import RevokedSessions
from tests.support.waiting import wait_for
from tests.unit.common.revocation_contract import *  # noqa: F403 - the contract's tests, run over the fixture below
from tests.unit.common.revocation_contract import TTL_S, EpochClock, RevocationWorld


@contextlib.asynccontextmanager
async def following(follower: RedisRevocations) -> AsyncIterator[None]:
    task = asyncio.create_task(follower.run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def process(redis: Redis, prefix: str, clock: EpochClock | None = None) -> RedisRevocations:
    """The revocation list of one process: its own revoked set, the shared stream."""
    clock = clock or EpochClock()
    return RedisRevocations(redis, RevokedSessions(clock), ttl_s=TTL_S, prefix=prefix, poll_s=0.05, clock=clock)


async def redis_ms(redis: Redis) -> int:
    seconds, micros = await redis.time()
    return int(seconds) * 1000 + int(micros) // 1000


@pytest.fixture(params=["memory", "redis"])
async def world(
    request: pytest.FixtureRequest, redis_client: Redis, unique_prefix: str
) -> AsyncIterator[RevocationWorld]:
    clock = EpochClock()
    if request.param == "memory":
        revoked = RevokedSessions(clock)
        yield RevocationWorld(MemoryRevocations(revoked, ttl_s=TTL_S, clock=clock), revoked, clock)
        return
    identity, gateway = process(redis_client, unique_prefix, clock), process(redis_client, unique_prefix, clock)
    async with following(gateway):
        yield RevocationWorld(identity, gateway.revoked, clock)


async def test_a_process_started_after_a_revocation_knows_it_before_serving(
    redis_client: Redis, unique_prefix: str
) -> None:
    session_id = new_id()
    await process(redis_client, unique_prefix).revoke(session_id)

    late = process(redis_client, unique_prefix)
    await late.start()

    assert session_id in late.revoked


async def test_following_goes_on_after_the_stream_was_lost(redis_client: Redis, unique_prefix: str) -> None:
    identity, gateway = process(redis_client, unique_prefix), process(redis_client, unique_prefix)
    async with following(gateway):
        first = new_id()
        await identity.revoke(first)
        await wait_for(lambda: first in gateway.revoked, "the first revocation")
        key = f"{unique_prefix}revoked-sessions"
        last_ms = int((await redis_client.xrange(key))[-1][0].split(b"-")[0])
        await redis_client.delete(key)  # expired, evicted or flushed
        # Entry ids are Redis's milliseconds: a stream made again within the millisecond of the last entry
        # read would reuse ids at or below it (a case too rare to pay for), and expiry takes a TTL anyway.
        while await redis_ms(redis_client) <= last_ms:
            pass

        second = new_id()
        await identity.revoke(second)
        await wait_for(lambda: second in gateway.revoked, "a revocation made after the stream was lost")
    assert first in gateway.revoked  # what a process learnt stays until it expires


async def test_the_stream_expires_once_its_revocations_could_no_longer_matter(
    redis_client: Redis, unique_prefix: str
) -> None:
    await process(redis_client, unique_prefix).revoke(new_id())
    assert 0 < await redis_client.pttl(f"{unique_prefix}revoked-sessions") <= TTL_S * 1000
