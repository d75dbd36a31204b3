"""Redis adapters of the message service: the seq counter, the inbox (write-diffusion) and the timeline
(read-diffusion), each read-modify-write one Lua script so every message-service replica can share them.

Keys, all under the constructor's ``prefix`` (default ``courier:``):

    seq:{conversation_id}        hash  n = last seq handed out, t = token of the draw that set it
    inbox:{user_id}              hash  per conversation: max:{cid} read:{cid} msg:{cid} (JSON) at:{cid}
    timeline:{conversation_id}   zset  score = seq, member = JSON {"at", "message"}; newest ``keep``

Redis is a cache here: SQL is the source of truth, and everything above can be lost (FLUSHALL, eviction,
expiry) and is rebuilt from SQL. The inbox is one hash per user so that a user's conversation list is one
HMGET; a whole idle inbox expires at once and is rebuilt on the next read.
"""

from __future__ import annotations

import uuid
from collections.abc import Awaitable, Callable, Collection, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC, datetime
from typing import Any

import orjson
from redis.asyncio import Redis

from services.common.errors import Unavailable
from services.common.redis import ScriptBatcher, unavailable
from services.common.redis import connect as connect
from services.message.ports import InboxEntry, TimelineHead

DEFAULT_PREFIX = "courier:"
# Each member of a bump is one key of the script; batching bounds the arguments of one call.
BUMP_BATCH = 500


def _text(value: bytes | str) -> str:
    """Replies are bytes unless the client decodes them; accept both."""
    return value.decode() if isinstance(value, bytes) else value


# --- seq counter ------------------------------------------------------------------------------------

# The token makes a draw idempotent: redis-py retries a command whose connection broke, and a draw that
# already ran must return its seq again instead of taking (and skipping) another one.
_DRAW = """
local n = redis.call('HGET', KEYS[1], 'n')
if not n then return false end
if redis.call('HGET', KEYS[1], 't') == ARGV[1] then return tonumber(n) end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 't', ARGV[1])
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return seq
"""

# Seeded concurrently by every caller that found no counter: the larger of what is there and the
# store's high-water mark wins, so none of them reuses a seq another one already drew.
_SEED = """
local n = redis.call('HGET', KEYS[1], 'n')
if n and redis.call('HGET', KEYS[1], 't') == ARGV[2] then return tonumber(n) end
if not n or tonumber(n) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'n', ARGV[1]) end
local seq = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 't', ARGV[2])
if tonumber(ARGV[3]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[3]) end
return seq
"""

_RESEED = """
redis.call('HSET', KEYS[1], 'n', ARGV[1], 't', '')
if tonumber(ARGV[2]) > 0 then redis.call('EXPIRE', KEYS[1], ARGV[2]) end
return 1
"""


# Forward only: a counter behind the store jumps to it; one ahead (seqs in flight) is left alone.
_ADVANCE = """
local n = redis.call('HGET', KEYS[1], 'n')
if n and tonumber(n) < tonumber(ARGV[1]) then redis.call('HSET', KEYS[1], 'n', ARGV[1]) end
return 1
"""


class RedisSeqCounter:
    """Per-conversation seq counters seeded from the store's high-water mark when missing.

    A counter lost with Redis (FLUSHALL, expiry) is seeded again from SQL, so no committed seq is reused
    and none is skipped. When a call fails without telling whether Redis applied it, the counter may be
    ahead of what was handed out; it is then dropped before the next draw (``_suspect``), which re-seeds
    it from the store instead of leaving a gap.
    """

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX, idle_ttl_s: int = 30 * 24 * 3600) -> None:
        self._client = client
        self._prefix = prefix
        # An idle counter may expire: seeding it again costs one indexed SQL query.
        self._ttl = idle_ttl_s
        self._draw = client.register_script(_DRAW)
        self._seed = client.register_script(_SEED)
        self._reseed = client.register_script(_RESEED)
        self._advance = client.register_script(_ADVANCE)
        self._suspect: set[str] = set()

    def _key(self, conversation_id: str) -> str:
        return f"{self._prefix}seq:{conversation_id}"

    @contextmanager
    def _guard(self, conversation_id: str, what: str) -> Iterator[None]:
        try:
            with unavailable(what):
                yield
        except Unavailable:
            self._suspect.add(conversation_id)
            raise

    async def next(self, conversation_id: str, *, seed: Callable[[], Awaitable[int]]) -> int:
        if conversation_id in self._suspect:
            await self.invalidate(conversation_id)
        key, token = self._key(conversation_id), uuid.uuid4().hex
        with self._guard(conversation_id, "drawing a seq"):
            seq = await self._draw(keys=[key], args=[token, self._ttl])
        if seq is None:
            high_water = await seed()
            with self._guard(conversation_id, "seeding a seq counter"):
                seq = await self._seed(keys=[key], args=[high_water, token, self._ttl])
        return int(seq)

    async def reseed(self, conversation_id: str, high_water: int) -> None:
        with self._guard(conversation_id, "re-seeding a seq counter"):
            await self._reseed(keys=[self._key(conversation_id)], args=[high_water, self._ttl])
        self._suspect.discard(conversation_id)

    async def advance(self, conversation_id: str, high_water: int) -> None:
        with self._guard(conversation_id, "advancing a seq counter"):
            await self._advance(keys=[self._key(conversation_id)], args=[high_water])

    async def invalidate(self, conversation_id: str) -> None:
        with self._guard(conversation_id, "dropping a seq counter"):
            await self._client.delete(self._key(conversation_id))
        self._suspect.discard(conversation_id)


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
                last_activity_at=datetime.fromisoformat(_text(at)) if at is not None else None,
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
