"""Redis adapters of the message service: the inbox (write-diffusion) and the timeline (read-diffusion),
each read-modify-write one Lua script so every message-service replica can share them.

Keys, all under the constructor's ``prefix`` (default ``courier:``):

    inbox:{user_id}              hash  per conversation: max:{cid} read:{cid} msg:{cid} (JSON) at:{cid}
    timeline:{conversation_id}   zset  score = seq, member = JSON {"at", "message"}; newest ``keep``

Redis is a cache here: SQL is the source of truth, and everything above can be lost (FLUSHALL, eviction,
expiry) and is rebuilt from SQL. The inbox is one hash per user so that a user's conversation list is one
HMGET; a whole idle inbox expires at once and is rebuilt on the next read.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from services.common.redis import ScriptBatcher, reply_text, unavailable
from services.common.redis import connect as connect
from services.message.ports import InboxEntry, TimelineHead

DEFAULT_PREFIX = "courier:"
# Each member of a bump is one key of the script; batching bounds the arguments of one call.
BUMP_BATCH = 500


# --- inbox ------------------------------------------------------------------------------------------

# KEYS: the members' inbox hashes. ARGV: cid, seq, last message JSON, at, the reader's key (or ''), ttl.
_BUMP = """
local cid, seq, ttl = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[6])
local fmax, fread = 'max:' .. cid, 'read:' .. cid
for _, key in ipairs(KEYS) do
  local max = redis.call('HGET', key, fmax)
  if not max or seq >= tonumber(max) then
    redis.call('HSET', key, fmax, ARGV[2], 'msg:' .. cid, ARGV[3], 'at:' .. cid, ARGV[4])
  end
  if key == ARGV[5] then
    local read = redis.call('HGET', key, fread)
    if not read or seq > tonumber(read) then redis.call('HSET', key, fread, ARGV[2]) end
  end
  if ttl > 0 then redis.call('EXPIRE', key, ttl) end
end
return #KEYS
"""

# An entry exists once it has a max field; reading a conversation one has no entry for changes nothing.
_MARK_READ = """
local cid, seq = ARGV[1], tonumber(ARGV[2])
if redis.call('HEXISTS', KEYS[1], 'max:' .. cid) == 0 then return 0 end
local read = redis.call('HGET', KEYS[1], 'read:' .. cid)
if not read or seq > tonumber(read) then redis.call('HSET', KEYS[1], 'read:' .. cid, ARGV[2]) end
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return 1
"""

# ARGV: cid, max, read, msg JSON or '', at or '', ttl. Only fills a missing entry: a bump that raced
# ahead of the rebuild from the store is newer and wins.
_PUT = """
local cid = ARGV[1]
if redis.call('HEXISTS', KEYS[1], 'max:' .. cid) == 1 then return 0 end
redis.call('HSET', KEYS[1], 'max:' .. cid, ARGV[2], 'read:' .. cid, ARGV[3])
for i, kind in ipairs({'msg:', 'at:'}) do
  if ARGV[3 + i] ~= '' then redis.call('HSET', KEYS[1], kind .. cid, ARGV[3 + i])
  else redis.call('HDEL', KEYS[1], kind .. cid) end
end
if tonumber(ARGV[6]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[6]) end
return 1
"""


def _encode_at(at: datetime) -> str:
    return (at if at.tzinfo is not None else at.replace(tzinfo=UTC)).isoformat()


def _json(message: Mapping[str, Any]) -> bytes:
    return orjson.dumps(dict(message))


class RedisInbox:
    """Write-diffusion inboxes: one hash per user, four fields per conversation (see the module doc)."""

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX, idle_ttl_s: int = 30 * 24 * 3600) -> None:
        self._client = client
        self._prefix = prefix
        # Every write refreshes the whole user's inbox; one idle that long is rebuilt from the store.
        self._ttl = idle_ttl_s
        # The bumps of every conversation being fanned out at the same time share one pipeline.
        self._bump = ScriptBatcher(client, client.register_script(_BUMP), "updating inboxes", max_batch=64)
        self._mark_read = client.register_script(_MARK_READ)
        self._put = client.register_script(_PUT)

    def _key(self, user_id: str) -> str:
        return f"{self._prefix}inbox:{user_id}"

    async def bump(
        self,
        user_ids: Collection[str],
        conversation_id: str,
        *,
        seq: int,
        last_message: Mapping[str, Any],
        at: datetime,
        reader_id: str | None,
    ) -> None:
        keys = [self._key(user_id) for user_id in dict.fromkeys(user_ids)]
        reader = self._key(reader_id) if reader_id is not None else ""
        args: list[str | int | bytes] = [conversation_id, seq, _json(last_message), _encode_at(at), reader, self._ttl]
        for start in range(0, len(keys), BUMP_BATCH):
            await self._bump(keys=keys[start : start + BUMP_BATCH], args=args)

    async def mark_read(self, user_id: str, conversation_id: str, seq: int) -> None:
        with unavailable("marking an inbox read"):
            await self._mark_read(keys=[self._key(user_id)], args=[conversation_id, seq, self._ttl])

    async def entries(self, user_id: str, conversation_ids: Collection[str]) -> dict[str, InboxEntry]:
        cids = list(dict.fromkeys(conversation_ids))
        if not cids:
            return {}
        fields = [f"{kind}:{cid}" for cid in cids for kind in ("max", "read", "msg", "at")]
        with unavailable("reading an inbox"):
            values = await self._client.hmget(self._key(user_id), fields)
        found: dict[str, InboxEntry] = {}
        for i, cid in enumerate(cids):
            max_seq, read_seq, message, at = values[4 * i : 4 * i + 4]
            if max_seq is None:
                continue
            found[cid] = InboxEntry(
                max_seq=int(max_seq),
                read_seq=int(read_seq) if read_seq is not None else 0,
                last_message=orjson.loads(message) if message is not None else None,
                last_activity_at=datetime.fromisoformat(reply_text(at)) if at is not None else None,
            )
        return found

    async def put(self, user_id: str, conversation_id: str, entry: InboxEntry) -> None:
        message = _json(entry.last_message) if entry.last_message is not None else b""
        at = _encode_at(entry.last_activity_at) if entry.last_activity_at is not None else ""
        args: list[str | int | bytes] = [conversation_id, entry.max_seq, entry.read_seq, message, at, self._ttl]
        with unavailable("seeding an inbox entry"):
            await self._put(keys=[self._key(user_id)], args=args)


# --- timeline ---------------------------------------------------------------------------------------

# ARGV: seq, member, keep, ttl. One event per seq: a replay of the same event replaces it.
_APPEND = """
redis.call('ZREMRANGEBYSCORE', KEYS[1], ARGV[1], ARGV[1])
redis.call('ZADD', KEYS[1], ARGV[1], ARGV[2])
redis.call('ZREMRANGEBYRANK', KEYS[1], 0, -(tonumber(ARGV[3]) + 1))
redis.call('EXPIRE', KEYS[1], ARGV[4])
return 1
"""


class RedisTimeline:
    """Read-diffusion timelines: a zset per conversation holding its newest ``keep`` events, expiring
    ``ttl_s`` after the last append (settings.redis.timeline_keep / timeline_ttl_s)."""

    def __init__(
        self, client: Redis, *, prefix: str = DEFAULT_PREFIX, keep: int = 100, ttl_s: int = 7 * 24 * 3600
    ) -> None:
        if keep < 1 or ttl_s < 1:
            raise ValueError("keep and ttl_s must be at least 1")
        self._client = client
        self._prefix = prefix
        self._keep = keep
        self._ttl = ttl_s
        self._append = client.register_script(_APPEND)

    def _key(self, conversation_id: str) -> str:
        return f"{self._prefix}timeline:{conversation_id}"

    async def append(self, conversation_id: str, *, seq: int, message: Mapping[str, Any], at: datetime) -> None:
        member = orjson.dumps({"at": _encode_at(at), "message": dict(message)})
        with unavailable("appending to a timeline"):
            await self._append(keys=[self._key(conversation_id)], args=[seq, member, self._keep, self._ttl])

    async def heads(self, conversation_ids: Collection[str]) -> dict[str, TimelineHead]:
        cids = list(dict.fromkeys(conversation_ids))
        if not cids:
            return {}
        with unavailable("reading timelines"):
            async with self._client.pipeline(transaction=False) as pipe:
                for cid in cids:
                    pipe.zrange(self._key(cid), -1, -1, withscores=True)
                tops: list[list[tuple[bytes | str, float]]] = await pipe.execute()
        heads: dict[str, TimelineHead] = {}
        for cid, top in zip(cids, tops, strict=True):
            if not top:
                continue
            member, score = top[0]
            event = orjson.loads(member)
            heads[cid] = TimelineHead(
                max_seq=int(score),
                last_message=event["message"],
                last_activity_at=datetime.fromisoformat(event["at"]),
            )
        return heads
