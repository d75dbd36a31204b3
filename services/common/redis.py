"""The Redis client every Courier process shares, and the one translation of Redis failures."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from redis.asyncio import BlockingConnectionPool, Redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import MaxConnectionsError, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from services.common.errors import Unavailable


def connect(url: str, *, max_connections: int = 200, timeout_s: float = 5.0) -> Redis:
    """The one client a process's Redis adapters share (the gateway's and presence's too); close it with
    ``await client.aclose()``.

    A blocking pool waits up to ``timeout_s`` for a free connection where redis-py's default pool fails at
    once past 100; socket timeouts turn a hung server into ``Unavailable``; a command whose connection
    broke is retried twice, which every script here is written to survive (see ``_DRAW``).
    """
    pool = BlockingConnectionPool.from_url(
        url,
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
