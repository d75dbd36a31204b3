"""Per-device pending-ACK sets kept outside the delivery node, so a device's unacknowledged pushes
survive its node: the node it reconnects to retransmits them at once instead of waiting for ``sync``.

Each device has what its ``AckWindow`` has: the tracked frames by ``(conversation_id, ack_seq)`` and
its acked seq per conversation. In one process there is one node, so there is no store.

Redis layout, under ``pending:{<len(user)>:<user>:<device>}`` (one hash slot per device; the length
keeps ``a:b``/``c`` and ``a``/``b:c`` apart), every key expiring ``ttl_s`` after the last write:
``:frames`` hash field -> frame JSON; ``:order`` zset (all scores 0) of the fields, which are
``<conversation_id>\\0<seq padded to 20 digits>`` so lexicographic order is ``(conversation, seq)``
order and one conversation's frames up to a seq are one ``ZRANGEBYLEX``; ``:age`` zset field ->
insertion number, to drop the oldest beyond the capacity; ``:acked`` hash conversation -> seq.
"""

from __future__ import annotations

import logging
from collections.abc import Collection, Mapping, Sequence
from typing import Any, NamedTuple, Protocol

import orjson
from redis.asyncio import Redis

from services.common.push import ack_seq
from services.common.redis import ScriptBatcher, reply_text, unavailable

log = logging.getLogger("courier.delivery.pending")

CAPACITY = 10_000
"""Frames kept per device, as ``AckWindow.capacity``; the oldest go first."""

Key = tuple[str, int]


class Pending(NamedTuple):
    frames: list[dict[str, Any]]
    """Unacked frames in ``(conversation_id, ack_seq)`` order."""
    acked: dict[str, int]
    """The device's acked seq per conversation."""


Device = tuple[str, str]
"""``(user_id, device_id)``."""


class PendingStore(Protocol):
    async def add(self, user_id: str, device_id: str, frames: Sequence[Mapping[str, Any]]) -> None:
        """Track frames pushed to the device, except those at or below its acked seq of their conversation."""
        ...

    async def add_many(self, frames_by_device: Mapping[Device, Sequence[Mapping[str, Any]]]) -> None:
        """``add`` for every device of one push at once (all members of a group). Raises ``Unavailable``
        when the store failed; the frames of some of the devices may have been recorded."""
        ...

    async def ack(self, user_id: str, device_id: str, conversation_id: str, seq: int) -> int:
        """Cumulative: the acked seq becomes at least ``seq`` and the conversation's frames up to it are
        dropped; returns how many were dropped."""
        ...

    async def load(self, user_id: str, device_id: str) -> Pending: ...

    async def forget(self, user_id: str, device_id: str, keys: Collection[Key]) -> None:
        """Drop frames the device's window gave up on (the device will ``sync`` them)."""
        ...


class MemoryPendingStore:
    """For tests: one process's dicts, standing in for Redis shared by several hubs. Nothing expires."""

    def __init__(self, *, capacity: int = CAPACITY) -> None:
        self._capacity = capacity
        self._frames: dict[tuple[str, str], dict[Key, dict[str, Any]]] = {}
        self._acked: dict[tuple[str, str], dict[str, int]] = {}

    async def add(self, user_id: str, device_id: str, frames: Sequence[Mapping[str, Any]]) -> None:
        device = (user_id, device_id)
        pending = self._frames.setdefault(device, {})
        acked = self._acked.get(device, {})
        for frame in frames:
            key = (frame["conversation_id"], ack_seq(frame))
            if key[1] <= acked.get(key[0], 0):
                continue
            pending[key] = dict(frame)  # a known key keeps its age, as in the window
        while len(pending) > self._capacity:
            del pending[next(iter(pending))]

    async def add_many(self, frames_by_device: Mapping[Device, Sequence[Mapping[str, Any]]]) -> None:
        for (user_id, device_id), frames in frames_by_device.items():
            await self.add(user_id, device_id, frames)

    async def ack(self, user_id: str, device_id: str, conversation_id: str, seq: int) -> int:
        device = (user_id, device_id)
        acked = self._acked.setdefault(device, {})
        acked[conversation_id] = max(acked.get(conversation_id, 0), seq)
        pending = self._frames.get(device, {})
        done = [key for key in pending if key[0] == conversation_id and key[1] <= seq]
        for key in done:
            del pending[key]
        return len(done)

    async def load(self, user_id: str, device_id: str) -> Pending:
        pending = self._frames.get((user_id, device_id), {})
        return Pending([dict(pending[key]) for key in sorted(pending)], dict(self._acked.get((user_id, device_id), {})))

    async def forget(self, user_id: str, device_id: str, keys: Collection[Key]) -> None:
        pending = self._frames.get((user_id, device_id), {})
        for key in keys:
            pending.pop(key, None)


# KEYS: frames, order, age, acked. ARGV: ttl, capacity, then (conversation, seq, field, json) per frame.
_ADD = """
local ttl, capacity = tonumber(ARGV[1]), tonumber(ARGV[2])
local top = redis.call('ZREVRANGE', KEYS[3], 0, 0, 'WITHSCORES')
local n = tonumber(top[2] or '0')
local added = 0
for i = 3, #ARGV, 4 do
  local field = ARGV[i + 2]
  if tonumber(ARGV[i + 1]) > tonumber(redis.call('HGET', KEYS[4], ARGV[i]) or '0') then
    redis.call('HSET', KEYS[1], field, ARGV[i + 3])
    if not redis.call('ZSCORE', KEYS[3], field) then
      n = n + 1
      redis.call('ZADD', KEYS[3], n, field)
      redis.call('ZADD', KEYS[2], 0, field)
      added = added + 1
    end
  end
end
local over = redis.call('ZCARD', KEYS[3]) - capacity
if over > 0 then
  local oldest = redis.call('ZPOPMIN', KEYS[3], over)
  for j = 1, #oldest, 2 do
    redis.call('ZREM', KEYS[2], oldest[j])
    redis.call('HDEL', KEYS[1], oldest[j])
  end
end
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ttl) end
return added
"""

# KEYS: frames, order, age, acked. ARGV: ttl, conversation, seq, lowest field, highest field (ZRANGEBYLEX bounds).
_ACK = """
if tonumber(ARGV[3]) > tonumber(redis.call('HGET', KEYS[4], ARGV[2]) or '0') then
  redis.call('HSET', KEYS[4], ARGV[2], ARGV[3])
end
local done = redis.call('ZRANGEBYLEX', KEYS[2], ARGV[4], ARGV[5])
for i = 1, #done do
  redis.call('ZREM', KEYS[3], done[i])
  redis.call('HDEL', KEYS[1], done[i])
end
if #done > 0 then redis.call('ZREMRANGEBYLEX', KEYS[2], ARGV[4], ARGV[5]) end
for k = 1, 4 do redis.call('EXPIRE', KEYS[k], ARGV[1]) end
return #done
"""


def _field(conversation_id: str, seq: int) -> str:
    return f"{conversation_id}\0{seq:020d}"


class RedisPendingStore:
    """Shared by every delivery node: one Lua script per ``add`` or ``ack``, atomic per device. The
    scripts of the devices a push or a burst of acks reaches at the same time share one pipeline."""

    def __init__(self, client: Redis, *, ttl_s: int = 3600, prefix: str = "courier:", capacity: int = CAPACITY) -> None:
        self._client = client
        self._ttl_s = ttl_s
        self._prefix = prefix
        self._capacity = capacity
        self._add = ScriptBatcher(client, client.register_script(_ADD), "recording pending frames")
        self._ack = ScriptBatcher(client, client.register_script(_ACK), "acknowledging pending frames")

    def _keys(self, user_id: str, device_id: str) -> list[str]:
        base = f"{self._prefix}pending:{{{len(user_id)}:{user_id}:{device_id}}}"
        return [f"{base}:frames", f"{base}:order", f"{base}:age", f"{base}:acked"]

    async def add(self, user_id: str, device_id: str, frames: Sequence[Mapping[str, Any]]) -> None:
        if frames:
            await self._add(keys=self._keys(user_id, device_id), args=self._add_args(frames, {}))

    async def add_many(self, frames_by_device: Mapping[Device, Sequence[Mapping[str, Any]]]) -> None:
        """One script call per device as ``add``, sent together without a future each, and every frame
        serialized once however many devices it reaches (a group's push is one frame for all of them)."""
        texts: dict[int, str] = {}
        calls = [
            (self._keys(user_id, device_id), self._add_args(frames, texts))
            for (user_id, device_id), frames in frames_by_device.items()
            if frames
        ]
        await self._add.call_many(calls)

    def _add_args(self, frames: Sequence[Mapping[str, Any]], texts: dict[int, str]) -> list[Any]:
        """``texts`` keeps each frame's JSON by the frame's ``id``, valid while the caller holds the frames."""
        args: list[Any] = [self._ttl_s, self._capacity]
        for frame in frames:
            text = texts.get(id(frame))
            if text is None:
                text = texts[id(frame)] = orjson.dumps(frame).decode()
            conversation_id, seq = str(frame["conversation_id"]), ack_seq(frame)
            args += [conversation_id, seq, _field(conversation_id, seq), text]
        return args

    async def ack(self, user_id: str, device_id: str, conversation_id: str, seq: int) -> int:
        low, high = f"[{conversation_id}\0", f"[{_field(conversation_id, seq)}"
        args: list[str | int] = [self._ttl_s, conversation_id, seq, low, high]
        return int(await self._ack(keys=self._keys(user_id, device_id), args=args))

    async def load(self, user_id: str, device_id: str) -> Pending:
        frames_key, order_key, _, acked_key = self._keys(user_id, device_id)
        with unavailable("loading pending frames"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrange(order_key, 0, -1)
                pipe.hgetall(frames_key)
                pipe.hgetall(acked_key)
                order, stored, acked = await pipe.execute()
        frames: list[dict[str, Any]] = []
        for field in order:
            raw = stored.get(field)
            if raw is None:
                continue
            try:
                frames.append(orjson.loads(raw))
            except orjson.JSONDecodeError:  # never let one bad entry stop a device from connecting
                log.warning("skipping an undecodable pending frame of %s/%s", user_id, device_id)
        return Pending(frames, {reply_text(cid): int(seq) for cid, seq in acked.items()})

    async def forget(self, user_id: str, device_id: str, keys: Collection[Key]) -> None:
        if not keys:
            return
        fields = [_field(conversation_id, seq) for conversation_id, seq in keys]
        all_keys = self._keys(user_id, device_id)
        frames_key, order_key, age_key, _ = all_keys
        with unavailable("forgetting pending frames"):
            async with self._client.pipeline(transaction=True) as pipe:
                pipe.zrem(order_key, *fields)
                pipe.zrem(age_key, *fields)
                pipe.hdel(frames_key, *fields)
                for key in all_keys:
                    pipe.expire(key, self._ttl_s)
                await pipe.execute()
