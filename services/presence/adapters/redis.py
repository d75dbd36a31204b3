"""The presence store in Redis, shared by every presence process; each method is one Lua script (or one
MULTI for the read-only status), so each online/offline transition is reported by exactly one caller.

Keys, all under the constructor's ``prefix`` (default ``courier:``):

    presence:devices:{user}     zset  device -> expires_at
    presence:deadlines          zset  "{len(user)}:{user}{device}" -> expires_at, what the sweep walks
    presence:seen               hash  user -> last seen (Unix seconds)
    presence:announced          set   users last reported online
    presence:watchers:{user}    set   subscribers watching the user
    presence:watching:{sub}     set   users the subscriber watches

A device's deadline member always carries the device's current expiry (both are written together), so
the sweep needs no staleness check. Scripts derive some key names from the prefix, which a standalone
Redis (or Sentinel) allows; this layout is not meant for Redis Cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Any

from redis.asyncio import Redis

from services.common.redis import ScriptBatcher, reply_text, unavailable
from services.presence.domain import PresenceStatus

DEFAULT_PREFIX = "courier:"
# Deadlines handled per sweep script call: bounds how long one call blocks Redis.
SWEEP_BATCH = 500


# Shared by the scripts that change devices. ARGV[1] is always the prefix. ``settle`` drops the user's
# expired devices and reports a change from what was last announced, as {user, online, last_seen}.
_COMMON = """
local prefix = ARGV[1]
local deadlines = prefix .. 'presence:deadlines'
local announced = prefix .. 'presence:announced'
local seen = prefix .. 'presence:seen'
local function devices_key(user) return prefix .. 'presence:devices:' .. user end
local function member(user, device) return string.len(user) .. ':' .. user .. device end
local function settle(user, now)
  local key = devices_key(user)
  for _, device in ipairs(redis.call('ZRANGEBYSCORE', key, '-inf', now)) do
    redis.call('ZREM', deadlines, member(user, device))
  end
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now)
  local online = redis.call('ZCARD', key) > 0
  if online == (redis.call('SISMEMBER', announced, user) == 1) then return nil end
  if online then redis.call('SADD', announced, user) else redis.call('SREM', announced, user) end
  return {user, online and 1 or 0, redis.call('HGET', seen, user)}
end
"""

# ARGV: prefix, user, device, now, expires_at.
_SET_DEVICE = (
    _COMMON
    + """
local user, device, now = ARGV[2], ARGV[3], ARGV[4]
redis.call('ZADD', devices_key(user), ARGV[5], device)
redis.call('ZADD', deadlines, ARGV[5], member(user, device))
redis.call('HSET', seen, user, now)
return settle(user, now)
"""
)

# ARGV: prefix, user, device, now. A device that had already expired was last seen at its last
# heartbeat, not now.
_REMOVE_DEVICE = (
    _COMMON
    + """
local user, device, now = ARGV[2], ARGV[3], ARGV[4]
local expires_at = redis.call('ZSCORE', devices_key(user), device)
if expires_at then
  redis.call('ZREM', devices_key(user), device)
  redis.call('ZREM', deadlines, member(user, device))
  if tonumber(expires_at) > tonumber(now) then redis.call('HSET', seen, user, now) end
end
return settle(user, now)
"""
)

# ARGV: prefix, now, batch. Returns {deadlines handled, change, change, ...}.
_SWEEP = (
    _COMMON
    + """
local now = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', deadlines, '-inf', now, 'LIMIT', 0, tonumber(ARGV[3]))
local touched, order = {}, {}
for _, m in ipairs(due) do
  redis.call('ZREM', deadlines, m)
  local colon = string.find(m, ':', 1, true)
  local length = tonumber(string.sub(m, 1, colon - 1))
  local user = string.sub(m, colon + 1, colon + length)
  redis.call('ZREM', devices_key(user), string.sub(m, colon + length + 1))
  if not touched[user] then
    touched[user] = true
    table.insert(order, user)
  end
end
local result = {#due}
for _, user in ipairs(order) do
  local change = settle(user, now)
  if change then table.insert(result, change) end
end
return result
"""
)

# KEYS: the subscriber's watching set, then one watchers set per user. ARGV: subscriber, limit, users.
_SUBSCRIBE = """
local watching, subscriber, limit = KEYS[1], ARGV[1], tonumber(ARGV[2])
local size = redis.call('SCARD', watching)
for i = 3, #ARGV do
  if redis.call('SISMEMBER', watching, ARGV[i]) == 0 then size = size + 1 end
end
if size > limit then return 0 end
for i = 3, #ARGV do
  redis.call('SADD', watching, ARGV[i])
  redis.call('SADD', KEYS[i - 1], subscriber)
end
return 1
"""

# KEYS: the subscriber's watching set. ARGV: prefix, subscriber.
_UNSUBSCRIBE_ALL = """
for _, user in ipairs(redis.call('SMEMBERS', KEYS[1])) do
  redis.call('SREM', ARGV[1] .. 'presence:watchers:' .. user, ARGV[2])
end
redis.call('DEL', KEYS[1])
return 1
"""


def _change(reply: Any) -> PresenceStatus | None:
    if reply is None:
        return None
    user_id, online, last_seen = reply
    return PresenceStatus(
        user_id=reply_text(user_id), online=bool(online), last_seen=float(last_seen) if last_seen is not None else None
    )


class RedisPresenceStore:
    """The ``PresenceStore`` of several presence processes (see the module docstring for the keys)."""

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX, sweep_batch: int = SWEEP_BATCH) -> None:
        if sweep_batch < 1:
            raise ValueError("sweep_batch must be at least 1")
        self._client = client
        self._prefix = prefix
        self._sweep_batch = sweep_batch
        # The heartbeats of a delivery node's keep-alive round share one pipeline.
        self._set_device = ScriptBatcher(client, client.register_script(_SET_DEVICE), "recording a device")
        self._remove_device = client.register_script(_REMOVE_DEVICE)
        self._sweep = client.register_script(_SWEEP)
        self._subscribe = client.register_script(_SUBSCRIBE)
        self._unsubscribe_all = client.register_script(_UNSUBSCRIBE_ALL)

    def _key(self, *parts: str) -> str:
        return self._prefix + "presence:" + ":".join(parts)

    async def set_device(self, user_id: str, device_id: str, *, now: float, expires_at: float) -> PresenceStatus | None:
        # repr() of a float reads back as the very same double, in Lua as in Python.
        args = [self._prefix, user_id, device_id, repr(now), repr(expires_at)]
        return _change(await self._set_device(args=args))

    async def remove_device(self, user_id: str, device_id: str, *, now: float) -> PresenceStatus | None:
        with unavailable("removing a device"):
            return _change(await self._remove_device(args=[self._prefix, user_id, device_id, repr(now)]))

    async def sweep(self, now: float) -> list[PresenceStatus]:
        changes: list[PresenceStatus] = []
        with unavailable("sweeping expired devices"):
            while True:
                handled, *replies = await self._sweep(args=[self._prefix, repr(now), self._sweep_batch])
                changes.extend(change for reply in replies if (change := _change(reply)) is not None)
                if handled < self._sweep_batch:
                    return changes

    async def status(self, user_ids: Sequence[str], *, now: float) -> list[PresenceStatus]:
        if not user_ids:
            return []
        with unavailable("reading presence"):
            async with self._client.pipeline(transaction=True) as pipe:
                for user_id in user_ids:
                    pipe.zcount(self._key("devices", user_id), f"({now!r}", "+inf")
                pipe.hmget(self._key("seen"), list(user_ids))
                *alive, seen = await pipe.execute()
        return [
            PresenceStatus(user_id=user_id, online=count > 0, last_seen=float(last) if last is not None else None)
            for user_id, count, last in zip(user_ids, alive, seen, strict=True)
        ]

    async def subscribe(self, subscriber_id: str, user_ids: Collection[str], *, limit: int) -> bool:
        users = list(dict.fromkeys(user_ids))
        keys = [self._key("watching", subscriber_id), *(self._key("watchers", user_id) for user_id in users)]
        with unavailable("subscribing to presence"):
            return bool(await self._subscribe(keys=keys, args=[subscriber_id, limit, *users]))

    async def subscribers(self, user_id: str) -> set[str]:
        with unavailable("reading presence subscribers"):
            members = await self._client.smembers(self._key("watchers", user_id))
        return {reply_text(member) for member in members}

    async def unsubscribe_all(self, subscriber_id: str) -> None:
        with unavailable("unsubscribing from presence"):
            await self._unsubscribe_all(keys=[self._key("watching", subscriber_id)], args=[self._prefix, subscriber_id])
