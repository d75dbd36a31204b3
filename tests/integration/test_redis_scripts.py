"""``ScriptBatcher`` on the harness's real Redis: the calls made at once go in one round trip, each gets its
own reply, and a server that lost its scripts does not lose the calls."""

from __future__ import annotations

import asyncio

from redis.asyncio import Redis

from services.common.redis import ScriptBatcher

# Adds ARGV[1] to the counter KEYS[1]; answers the new value.
ADD = "return redis.call('INCRBY', KEYS[1], ARGV[1])"


async def script_exists_calls(client: Redis) -> int:
    stats = await client.info("commandstats")
    return int(stats.get("cmdstat_script|exists", {}).get("calls", 0))


async def test_calls_made_at_once_get_their_own_replies_without_asking_whether_the_script_exists(
    redis_client: Redis, unique_prefix: str
) -> None:
    add = ScriptBatcher(redis_client, redis_client.register_script(ADD), "adding")
    keys = [f"{unique_prefix}{i % 3}" for i in range(30)]
    await redis_client.script_load(ADD)
    asked_before = await script_exists_calls(redis_client)

    replies = await asyncio.gather(*(add(keys=[key], args=[1]) for key in keys))

    # Each of the three counters counted its ten calls, in the order they were made.
    assert [replies[i::3] for i in range(3)] == [list(range(1, 11))] * 3
    # One EVALSHA per call: redis-py's pipeline of the script itself asks SCRIPT EXISTS first, every batch.
    assert await script_exists_calls(redis_client) == asked_before


async def test_calls_go_on_after_the_server_lost_its_scripts(redis_client: Redis, unique_prefix: str) -> None:
    add = ScriptBatcher(redis_client, redis_client.register_script(ADD), "adding")
    key = f"{unique_prefix}n"
    assert await add(keys=[key], args=[5]) == 5

    await redis_client.script_flush()  # as a restarted server, or an operator's SCRIPT FLUSH

    assert await asyncio.gather(*(add(keys=[key], args=[1]) for _ in range(4))) == [6, 7, 8, 9]
    assert int(await redis_client.get(key)) == 9  # every call ran once: none lost, none run twice
