"""Token-bucket rate limits of the gateway: one bucket for everyone, one per client IP, one per user.

The bucket arithmetic is a pure function over a bucket's state ``(tokens, updated_at)``. A
``BucketStore`` keeps that state per key: in process here, in Redis (one Lua script per take) when
several gateways must share it. ``RateLimiter`` takes from every bucket a request draws from, or from none;
a socket's frames take their tokens a few at a time (``FrameTokens``).
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import NamedTuple, Protocol

from services.common.errors import RateLimited
from services.common.metrics import RATE_LIMIT_REJECTIONS
from services.common.settings import Bucket, LimitSettings

# Float refills land a hair short of a whole token; without the tolerance a client that waited
# exactly retry_after seconds would be refused again with a retry_after of a few nanoseconds.
_EPSILON = 1e-9
LIMITS = ("global", "ip", "user")
"""The limits in the order ``RateLimiter`` takes from their buckets."""
SWEEP_EVERY_S = 1.0
"""How often ``MemoryBucketStore`` looks for refilled buckets to forget."""
AHEAD_MOST = 64
"""The most tokens a socket takes ahead of its frames; fewer for small buckets (``FrameTokens``)."""
AHEAD_FOR_S = 1.0
"""How long tokens taken ahead of a socket's frames stay usable: the unused ones are dropped then."""


class BucketState(NamedTuple):
    """A tuple rather than a dataclass: one is made per bucket and frame, and a tuple costs a fraction."""

    tokens: float
    updated_at: float


def take_tokens(
    state: BucketState | None, bucket: Bucket, *, now: float, cost: float = 1.0
) -> tuple[BucketState, float]:
    """Refill ``state`` up to ``now`` and take ``cost`` tokens from it.

    Returns the new state and 0.0 when the tokens were taken, else the refilled state and the seconds
    until ``cost`` tokens will be there. No state means a key never seen: a full bucket.
    """
    burst = bucket.burst
    if not 0 < cost <= burst:
        raise ValueError(f"cost must be in (0, {burst}], got {cost}")
    # Comparisons rather than min() and max(): this runs for every bucket of every frame.
    if state is None:
        tokens, updated_at = burst, now
    else:
        tokens, updated_at = state
        # A clock read behind updated_at (another process's clock) refills nothing and keeps the
        # later time, so that stretch is not refilled twice.
        if now > updated_at:
            tokens += (now - updated_at) * bucket.rate
            updated_at = now
        if tokens > burst:
            tokens = burst
    if tokens + _EPSILON >= cost:
        left = tokens - cost
        return BucketState(left if left > 0.0 else 0.0, updated_at), 0.0
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
    """Buckets of one process, bounded: past ``max_keys`` the least recently used key is forgotten, and
    keys whose bucket refilled completely are forgotten too (that loses nothing), looked for at most every
    ``SWEEP_EVERY_S`` of the clock so that a take does not pay for the look."""

    def __init__(self, max_keys: int = 100_000) -> None:
        if max_keys < 1:
            raise ValueError("max_keys must be at least 1")
        self._max_keys = max_keys
        self._buckets: OrderedDict[str, tuple[BucketState, Bucket]] = OrderedDict()
        self._sweep_at = float("-inf")

    def __len__(self) -> int:
        return len(self._buckets)

    async def take(self, key: str, bucket: Bucket, *, now: float, cost: float = 1.0) -> float:
        return (await self.take_each([(key, bucket)], now=now, cost=cost))[1]

    async def take_each(
        self, buckets: Sequence[tuple[str, Bucket]], *, now: float, cost: float = 1.0
    ) -> tuple[int, float]:
        held = self._buckets
        states = []
        refused, longest = -1, 0.0
        for index, (key, bucket) in enumerate(buckets):
            previous = held.get(key)
            state, wait = take_tokens(previous[0] if previous else None, bucket, now=now, cost=cost)
            states.append(state)
            if wait > longest:  # the refusing bucket that refills last decides when the request can pass
                refused, longest = index, wait
        for (key, bucket), state in zip(buckets, states, strict=True):
            if refused < 0:
                held[key] = (state, bucket)
            if key in held:
                # Last is most recently used, refused or not: a key hammered while empty is the one to remember.
                held.move_to_end(key)
        while len(held) > self._max_keys:
            held.popitem(last=False)
        if now >= self._sweep_at:
            self._sweep_at = now + SWEEP_EVERY_S
            self._forget_refilled(now)
        return refused, longest

    def _forget_refilled(self, now: float) -> None:
        # From the least recently used end, up to the first bucket still short of tokens: the ones behind it
        # were used later and are dropped by a later sweep once they reach the front.
        held = self._buckets
        while held:
            key, (state, bucket) = next(iter(held.items()))
            if not is_full(state, bucket, now=now):
                return
            del held[key]


class RateLimiter:
    """Takes a token from the global bucket, the client IP's and the user's (for authenticated callers),
    or from none of them: a request one bucket refuses costs the others nothing, so an address that
    exhausts its own bucket cannot drain the global one for everybody else.

    ``clock`` must be shared by everything taking from the same store: monotonic in one process.
    """

    def __init__(self, limits: LimitSettings, store: BucketStore, clock: Callable[[], float] = time.monotonic) -> None:
        self._store = store
        self._clock = clock
        self._global = ("global", limits.global_)
        self._ip, self._user = limits.ip, limits.user
        # Bound once; every limit's series exists from start-up, at 0.
        self._rejections = [RATE_LIMIT_REJECTIONS.labels(limit) for limit in LIMITS]

    async def check(self, *, ip: str, user_id: str | None) -> None:
        await self._take(self._buckets(ip, user_id))

    def frames(self, *, ip: str, user_id: str | None) -> FrameTokens:
        """The tokens of one socket's frames (one per frame, taken a few at a time)."""
        buckets = self._buckets(ip, user_id)
        most = min(AHEAD_MOST, int(min(bucket.burst for _, bucket in buckets) // 8))
        return FrameTokens(self, buckets, most=max(1, most), clock=self._clock)

    def _buckets(self, ip: str, user_id: str | None) -> list[tuple[str, Bucket]]:
        buckets = [self._global, (f"ip:{ip}", self._ip)]
        if user_id is not None:
            buckets.append((f"user:{user_id}", self._user))
        return buckets

    async def _take(self, buckets: Sequence[tuple[str, Bucket]]) -> None:
        """Take a token from every bucket, or raise ``RateLimited`` (counted) and take none."""
        refused, wait = await self._store.take_each(buckets, now=self._clock())
        if refused >= 0:
            self._rejections[refused].inc()
            raise RateLimited(f"{LIMITS[refused]} rate limit exceeded", retry_after=wait)

    async def take_ahead(self, buckets: Sequence[tuple[str, Bucket]], tokens: int) -> int:
        """Take ``tokens`` from every bucket if they all have that many, else one; returns how many were
        taken. Raises ``RateLimited`` when not even one is there."""
        if tokens > 1:
            refused, _ = await self._store.take_each(buckets, now=self._clock(), cost=float(tokens))
            if refused < 0:
                return tokens
        await self._take(buckets)
        return 1


class FrameTokens:
    """The tokens of one socket's frames. Each frame costs one token of every bucket, as a request does, but
    a round trip to a shared store per frame would cost more than most frames' work: the socket takes
    tokens ahead and spends them locally.

    It starts with one token per take and doubles the take each time the tokens ran out while still
    usable, up to ``most`` (``AHEAD_MOST``, or an eighth of the smallest burst). Tokens unused
    ``AHEAD_FOR_S`` after their take are dropped, never given back, and the next take is as large as the
    number used. When a bucket has fewer tokens than a take asks for, one is taken, so a socket is
    refused only once it spent what it took and some bucket has not even one token left. The buckets
    never let through more than with one take per frame. They can let through less: tokens a socket
    holds are not there for the user's other sockets and calls, and a socket that stops sending wastes
    what it held (at most ``most - 1``).

    Frames of one socket are checked one after another (the reader's loop), never concurrently.
    """

    def __init__(
        self,
        limiter: RateLimiter,
        buckets: Sequence[tuple[str, Bucket]],
        *,
        most: int,
        clock: Callable[[], float],
    ) -> None:
        self._limiter = limiter
        self._buckets = buckets
        self._most = most
        self._clock = clock
        self._taken = 0
        """Tokens of the last take."""
        self._left = 0
        self._until = float("-inf")
        """When the tokens of the last take stop being usable."""

    async def check(self) -> None:
        """Spend a token on this frame; raises ``RateLimited`` when a bucket is empty."""
        now = self._clock()
        if now < self._until:
            if self._left > 0:
                self._left -= 1
                return
            ask = min(self._taken * 2, self._most)  # all used in time: take more
        else:
            ask = max(1, self._taken - self._left)  # as many as were used before they ran out of time
        self._taken = await self._limiter.take_ahead(self._buckets, ask)
        self._left = self._taken - 1
        self._until = now + AHEAD_FOR_S
