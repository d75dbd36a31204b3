"""The route table: which delivery node holds each device's socket right now.

The ring says where a user's sockets SHOULD be; during a ring change (or a reconnect that has not
happened yet) they are still where they were. Pushes go to the recorded nodes first and fall back
to the ring for users with no record. In one process there is one node, so there is no table.

Redis layout: ``route:{user_id}`` hash device -> node, expiring unless refreshed by heartbeats.
"""

from __future__ import annotations

from collections.abc import Collection
from typing import Protocol

from redis.asyncio import Redis

from services.common.batching import Batcher
from services.common.redis import reply_text, unavailable


class RouteTable(Protocol):
    async def attach(self, user_id: str, device_id: str, node: str) -> None: ...

    async def detach(self, user_id: str, device_id: str, node: str) -> None:
        """Forget the device, unless another node has taken it over since."""
        ...

    async def refresh(self, user_ids: Collection[str]) -> None: ...

    async def devices_of(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        """Each user's devices and the node holding each; users without a record are absent."""
        ...


class MemoryRouteTable:
    """For tests and a single process: a plain dict."""

    def __init__(self) -> None:
        self._routes: dict[str, dict[str, str]] = {}

    async def attach(self, user_id: str, device_id: str, node: str) -> None:
        self._routes.setdefault(user_id, {})[device_id] = node

    async def detach(self, user_id: str, device_id: str, node: str) -> None:
        devices = self._routes.get(user_id, {})
        if devices.get(device_id) == node:
            del devices[device_id]
            if not devices:
                del self._routes[user_id]

    async def refresh(self, user_ids: Collection[str]) -> None:
        return None

    async def devices_of(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        return {u: dict(self._routes[u]) for u in user_ids if self._routes.get(u)}


_DETACH = """
if redis.call('HGET', KEYS[1], ARGV[1]) == ARGV[2] then
  redis.call('HDEL', KEYS[1], ARGV[1])
end
return 0
"""


class RedisRouteTable:
    def __init__(self, client: Redis, *, ttl_s: int, prefix: str = "courier:") -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._detach = client.register_script(_DETACH)
        self._lookups: Batcher[list[str], dict[str, dict[str, str]]] = Batcher(self._devices_of_each, max_batch=64)

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}route:{user_id}"

    async def attach(self, user_id: str, device_id: str, node: str) -> None:
        with unavailable("recording a route"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.hset(self._key(user_id), device_id, node)
                pipe.expire(self._key(user_id), self._ttl_s)
                await pipe.execute()

    async def detach(self, user_id: str, device_id: str, node: str) -> None:
        with unavailable("removing a route"):
            await self._detach(keys=[self._key(user_id)], args=[device_id, node])

    async def refresh(self, user_ids: Collection[str]) -> None:
        if not user_ids:
            return
        with unavailable("refreshing routes"):
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id in user_ids:
                    pipe.expire(self._key(user_id), self._ttl_s)
                await pipe.execute()

    async def devices_of(self, user_ids: Collection[str]) -> dict[str, dict[str, str]]:
        """Every push asks this; the questions asked while one pipeline is out share the next one."""
        users = list(user_ids)
        if not users:
            return {}
        return await self._lookups.submit(users)

    async def _devices_of_each(self, asked: list[list[str]]) -> list[dict[str, dict[str, str]]]:
        users = list(dict.fromkeys(user for users in asked for user in users))
        with unavailable("reading routes"):
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id in users:
                    pipe.hgetall(self._key(user_id))
                answers = await pipe.execute()
        found = {
            user: {reply_text(device): reply_text(node) for device, node in devices.items()}
            for user, devices in zip(users, answers, strict=True)
            if devices
        }
        return [{user: found[user] for user in users if user in found} for users in asked]
