"""The Redis client every Courier process shares, and the one translation of Redis failures."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import hiredis
from redis.asyncio import BlockingConnectionPool, Connection, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, NoScriptError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.batching import Batcher
from services.common.errors import Unavailable


def reply_text(value: bytes | str) -> str:
    """A reply as text: replies are bytes unless the client decodes them, so either is accepted."""
    return value.decode() if isinstance(value, bytes) else value


class PackedConnection(Connection):
    """redis-py's asyncio connection packs every command in Python, argument by argument (its blocking one
    uses hiredis when installed): in a delivery node fanning out a 10,000-member group that packing was a
    seventh of its CPU, every device's script call carrying a dozen arguments. hiredis's C packer makes the
    same bytes. A command name of several words (``SCRIPT LOAD``), which redis-py splits first, and an
    argument hiredis does not take (``None``, a bool) go to redis-py's own packer, which refuses such an
    argument with ``DataError`` as before."""

    def pack_command(self, *args: Any) -> list[bytes]:
        name = args[0]
        if (b" " if isinstance(name, bytes) else " ") not in name:
            try:
                return [hiredis.pack_command(args)]
            except TypeError:
                pass
        return super().pack_command(*args)


def connect(url: str, *, max_connections: int = 200, timeout_s: float = 5.0) -> Redis:
    """The one client a process's Redis adapters share (the gateway's and presence's too); close it with
    ``await client.aclose()``.

    A blocking pool waits up to ``timeout_s`` for a free connection where redis-py's default pool fails at
    once past 100; socket timeouts turn a hung server into ``Unavailable``; a command whose connection
    broke is retried twice, which every script here is written to survive. Commands are
    packed by ``PackedConnection`` (a ``rediss://`` or ``unix://`` URL keeps redis-py's connection class).
    """
    pool = BlockingConnectionPool.from_url(
        url,
        connection_class=PackedConnection,
        max_connections=max_connections,
        timeout=timeout_s,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        health_check_interval=30,
        retry=Retry(ExponentialBackoff(cap=0.5, base=0.05), 2),
    )
    return Redis.from_pool(pool)


@contextmanager
def unavailable(what: str) -> Iterator[None]:
    """Any Redis failure becomes ``Unavailable``: a redis exception type never reaches a use case."""
    try:
        yield
    except MaxConnectionsError as exc:
        raise Unavailable(f"redis connection pool is exhausted ({what})") from exc
    except (RedisConnectionError, RedisTimeoutError) as exc:
        raise Unavailable(f"redis is unreachable ({what})") from exc
    except RedisError as exc:
        raise Unavailable(f"redis refused {what}: {exc}") from exc


class ScriptBatcher:
    """Calls of one Lua script made at the same time (every device a push reaches, every frame of a
    burst) sent together in one pipeline (``Batcher``): each caller gets its own reply, and a Redis
    failure is ``Unavailable`` for every call of that pipeline.

    The pipeline is one round trip: each call is an EVALSHA of the script's digest. A pipeline handed the
    script itself (redis-py's ``script(..., client=pipeline)``) first asks ``SCRIPT EXISTS``, a second round
    trip for every batch; a server that lost its scripts (restarted, ``SCRIPT FLUSH``) answers NOSCRIPT
    instead, and those calls run again once the script is loaded."""

    def __init__(self, client: Redis, script: AsyncScript, what: str, *, max_batch: int = 256) -> None:
        self._client = client
        self._script = script
        self._what = what
        self._max_batch = max_batch
        self._calls: Batcher[tuple[list[Any], list[Any]], Any] = Batcher(self._run, max_batch=max_batch)

    async def __call__(self, *, keys: Sequence[Any] = (), args: Sequence[Any] = ()) -> Any:
        return await self._calls.submit((list(keys), list(args)))

    async def call_many(self, calls: Sequence[tuple[list[Any], list[Any]]]) -> list[Any]:
        """Many calls the caller already has together (``(keys, args)`` each; every device a push reaches):
        sent in pipelines of ``max_batch`` one after the other, without a queued item and a future per call.
        Raises ``Unavailable`` at the first pipeline that fails; the calls before it were made."""
        replies: list[Any] = []
        for start in range(0, len(calls), self._max_batch):
            replies += await self._run(list(calls[start : start + self._max_batch]))
        return replies

    async def _run(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        with unavailable(self._what):
            replies = await self._evalsha(calls)
            lost = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if lost:
                self._script.sha = await self._client.script_load(self._script.script)
                for i, reply in zip(lost, await self._evalsha([calls[i] for i in lost]), strict=True):
                    replies[i] = reply
            for reply in replies:
                if isinstance(reply, Exception):
                    raise reply
            return replies

    async def _evalsha(self, calls: list[tuple[list[Any], list[Any]]]) -> list[Any]:
        async with self._client.pipeline(transaction=False) as pipe:
            for keys, args in calls:
                pipe.evalsha(self._script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
