"""Token-bucket rate limits of the gateway: one bucket for everyone, one per client IP, one per user.

The bucket arithmetic is a pure function over a bucket's state ``(tokens, updated_at)``. A
``BucketStore`` keeps that state per key: in process here, in Redis (one Lua script per take) when
several gateways must share it. ``RateLimiter`` takes from every bucket a request draws from, or from none.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import RateLimited
from services.common.metrics import RATE_LIMIT_REJECTIONS
from services.common.settings import Bucket, LimitSettings

# Float refills land a hair short of a whole token; without the tolerance a client that waited
# exactly retry_after seconds would be refused again with a retry_after of a few nanoseconds.
_EPSILON = 1e-9
LIMITS = ("global", "ip", "user")


@dataclass(frozen=True)
class BucketState:
    tokens: float
    updated_at: float


def take_tokens(
    state: BucketState | None, bucket: Bucket, *, now: float, cost: float = 1.0
) -> tuple[BucketState, float]:
    """Refill ``state`` up to ``now`` and take ``cost`` tokens from it.

    Returns the new state and 0.0 when the tokens were taken, else the refilled state and the seconds
    until ``cost`` tokens will be there. No state means a key never seen: a full bucket.
    """
    if not 0 < cost <= bucket.burst:
        raise ValueError(f"cost must be in (0, {bucket.burst}], got {cost}")
    if state is None:
        tokens, updated_at = bucket.burst, now
    else:
        # A clock read behind updated_at (another process's clock) refills nothing and keeps the
        # later time, so that stretch is not refilled twice.
        elapsed = max(0.0, now - state.updated_at)
        tokens = min(bucket.burst, state.tokens + elapsed * bucket.rate)
        updated_at = max(now, state.updated_at)
    if tokens + _EPSILON >= cost:
        return BucketState(max(0.0, tokens - cost), updated_at), 0.0
    return BucketState(tokens, updated_at), (cost - tokens) / bucket.rate


def is_full(state: BucketState, bucket: Bucket, *, now: float) -> bool:
    """A full bucket is the same as no state at all, so its key can be forgotten."""
    return state.tokens + max(0.0, now - state.updated_at) * bucket.rate >= bucket.burst


class BucketStore(Protocol):
    async def take(self, key: str, bucket: Bucket, *, now: float, cost: float = 1.0) -> float:
        """Take ``cost`` tokens from the bucket of ``key``: 0.0 if taken, else seconds to wait."""
        ...

    async def take_each(
        self, buckets: Sequence[tuple[str, Bucket]], *, now: float, cost: float = 1.0
    ) -> tuple[int, float]:
        """Take ``cost`` tokens from every bucket, or from none: ``(-1, 0.0)`` when every bucket gave
        its tokens, else ``(index, seconds to wait)`` of the refusing bucket that refills last, and no
        bucket changed. One round trip for a store that has them."""
        ...


class MemoryBucketStore:
    """Buckets of one process, bounded: keys whose bucket refilled completely are forgotten (that
    loses nothing), and past ``max_keys`` the least recently used key is forgotten too."""

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[BucketState, Bucket]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, bucket: Bucket, *, now: float, cost: float = 1.0) -> float:
        return (await self.take_each([(key, bucket)], now=now, cost=cost))[1]

    async def take_each(
        self, buckets: Sequence[tuple[str, Bucket]], *, now: float, cost: float = 1.0
    ) -> tuple[int, float]:
        states: list[BucketState] = []
        refused, longest = -1, 0.0
        for index, (key, bucket) in enumerate(buckets):
            previous = self._buckets.get(key)
            state, wait = take_tokens(previous[0] if previous else None, bucket, now=now, cost=cost)
            states.append(state)
            if wait > longest:  # the refusing bucket that refills last decides when the request can pass
                refused, longest = index, wait
        for (key, bucket), state in zip(buckets, states, strict=True):
            if refused < 0:
                self._buckets[key] = (state, bucket)
            if key in self._buckets:
                # Last is most recently used, refused or not: a key hammered while empty is the one to remember.
                self._buckets.move_to_end(key)
        self._forget_idle(now)
        return refused, longest

    def _forget_idle(self, now: float) -> None:
        # Only the front is looked at, so each take costs amortized O(1); full buckets further back
        # are dropped when they reach the front.
        while self._buckets:
            key, (state, bucket) = next(iter(self._buckets.items()))
            if len(self._buckets) <= self._max_keys and not is_full(state, bucket, now=now):
                return
            del self._buckets[key]


class RateLimiter:
    """Takes a token from the global bucket, the client IP's and the user's (for authenticated callers),
    or from none of them: a request one bucket refuses costs the others nothing, so an address that
    exhausts its own bucket cannot drain the global one for everybody else.

    ``clock`` must be shared by everything taking from the same store: monotonic in one process.
    """

    def __init__(self, limits: LimitSettings, store: BucketStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._limits = limits
        self._store = store
        self._clock = clock
        for limit in LIMITS:  # every limit's series exists from start-up, at 0
            RATE_LIMIT_REJECTIONS.labels(limit)

    async def check(self, *, ip: str, user_id: str | None) -> None:
        now = self._clock()
        checks = [("global", "global", self._limits.global_), ("ip", f"ip:{ip}", self._limits.ip)]
        if user_id is not None:
            checks.append(("user", f"user:{user_id}", self._limits.user))
        refused, wait = await self._store.take_each([(key, bucket) for _, key, bucket in checks], now=now)
        if refused >= 0:
            which = checks[refused][0]
            RATE_LIMIT_REJECTIONS.labels(which).inc()
            raise RateLimited(f"{which} rate limit exceeded", retry_after=wait)
