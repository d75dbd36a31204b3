"""``ScriptBatcher`` on the harness's real Redis: the calls made at once go in one round trip, each gets its
own reply, and a server that lost its scripts does not lose the calls; the client's own packing of commands
(``PackedConnection``) sends every kind of argument the services send intact."""

from __future__ import annotations

import asyncio
import hashlib

import pytest
from redis.asyncio import Redis
from redis.exceptions import DataError

from services.common.redis import PackedConnection, ScriptBatcher

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


async def test_arguments_of_every_kind_reach_the_server_intact(redis_client: Redis, unique_prefix: str) -> None:
    assert redis_client.connection_pool.connection_class is PackedConnection  # what the services' clients use
    key = f"{unique_prefix}h"
    values = {"text": "ñ ✓ \x00 end", "bytes": b"\xff\x00raw", "int": -(2**62), "big": 2**70, "float": 0.1, "exp": 1e20}

    await redis_client.hset(key, mapping=values)  # type: ignore[arg-type]

    assert await redis_client.hgetall(key) == {
        b"text": "ñ ✓ \x00 end".encode(),
        b"bytes": b"\xff\x00raw",
        b"int": str(-(2**62)).encode(),
        b"big": str(2**70).encode(),
        b"float": b"0.1",
        b"exp": b"1e+20",
    }
    # A command name of two words, which redis-py splits, and an argument it refuses, refused as before.
    assert await redis_client.script_load(ADD) == hashlib.sha1(ADD.encode()).hexdigest()
    with pytest.raises(DataError):
        await redis_client.set(f"{unique_prefix}none", None)  # type: ignore[arg-type]
    assert await redis_client.exists(f"{unique_prefix}none") == 0
