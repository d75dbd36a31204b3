"""Token buckets in Redis, shared by every gateway replica: one Lua script per check, however many
buckets it draws from.

The script is ``take_tokens`` of ``ratelimit.py`` transcribed operation for operation (Lua numbers are the
same IEEE doubles as Python floats), so a Redis bucket refuses and refills exactly like an in-process one.
Each bucket is a hash ``{prefix}bucket:{key}`` of ``tokens`` and ``at`` that expires once it would be full
again: a missing bucket is a full one, so nothing is lost and idle keys cost no memory.

``now`` comes from the caller and is compared across replicas, so give the ``RateLimiter`` a wall clock
(``time.time``) when it uses this store; ``time.monotonic`` differs from one process to the next.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.asyncio import Redis

from services.common.redis import ScriptBatcher
from services.common.settings import Bucket

DEFAULT_PREFIX = "courier:"

# KEYS: the buckets, in order. ARGV: now, cost, epsilon, then burst and rate of each bucket. Refills every
# bucket and checks that each can give ``cost``; only then takes from them all. A refusal writes nothing and
# returns {1-based index of the refusing bucket that refills last, its wait} (as MemoryBucketStore does);
# {0, "0"} means every bucket gave its tokens. The wait is a string: Redis truncates a Lua number reply to
# an integer. Stored numbers use %.17g, which gives back the very same double.
_TAKE_EACH = """
local now, cost, eps = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local tokens, ats = {}, {}
local refused, longest = 0, 0.0
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local state = redis.call('HMGET', key, 'tokens', 'at')
  if not state[1] or not state[2] then
    tokens[i], ats[i] = burst, now
  else
    local stored_tokens, stored_at = tonumber(state[1]), tonumber(state[2])
    tokens[i] = math.min(burst, stored_tokens + math.max(0.0, now - stored_at) * rate)
    ats[i] = math.max(now, stored_at)
  end
  if tokens[i] + eps < cost then
    local wait = (cost - tokens[i]) / rate
    if wait > longest then
      refused, longest = i, wait
    end
  end
end
if refused > 0 then
  return {refused, string.format('%.17g', longest)}
end
for i, key in ipairs(KEYS) do
  local burst, rate = tonumber(ARGV[2 + 2 * i]), tonumber(ARGV[3 + 2 * i])
  local left, at = math.max(0.0, tokens[i] - cost), ats[i]
  redis.call('HSET', key, 'tokens', string.format('%.17g', left), 'at', string.format('%.17g', at))
  local refill_ms = math.ceil(((burst - left) / rate + math.max(0.0, at - now)) * 1000)
  redis.call('PEXPIRE', key, math.max(1, refill_ms))
end
return {0, '0'}
"""

# The tolerance of ratelimit.take_tokens: a client waiting exactly retry_after is let through.
_EPSILON = 1e-9


class RedisBucketStore:
    """A ``BucketStore`` whose buckets live in Redis (see the module docstring for the clock)."""

    def __init__(self, client: Redis, *, prefix: str = DEFAULT_PREFIX) -> None:
        self._client = client
        self._prefix = prefix
        # The checks of every frame and request arriving at the same time share one pipeline.
        self._take_each = ScriptBatcher(client, client.register_script(_TAKE_EACH), "rate limit")

    async def take(self, key: str, bucket: Bucket, *, now: float, cost: float = 1.0) -> float:
        return (await self.take_each([(key, bucket)], now=now, cost=cost))[1]

    async def take_each(
        self, buckets: Sequence[tuple[str, Bucket]], *, now: float, cost: float = 1.0
    ) -> tuple[int, float]:
        args = [repr(now), repr(cost), repr(_EPSILON)]
        for _, bucket in buckets:
            if not 0 < cost <= bucket.burst:
                raise ValueError(f"cost must be in (0, {bucket.burst}], got {cost}")
            args += [repr(bucket.burst), repr(bucket.rate)]
        keys = [f"{self._prefix}bucket:{key}" for key, _ in buckets]
        index, wait = await self._take_each(keys=keys, args=args)
        return int(index) - 1, float(wait)
