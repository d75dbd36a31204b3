"""The gateway's token buckets: arithmetic, the in-memory store's bounds, and the three-level limiter.

What every BucketStore must do is in bucket_store_contract.py."""

from __future__ import annotations

from collections.abc import Sequence
from uuid import uuid4

import pytest

from services.common.errors import RateLimited
from services.common.settings import Bucket, LimitSettings
from services.gateway.ratelimit import (
    AHEAD_FOR_S,
    AHEAD_MOST,
    SWEEP_EVERY_S,
    BucketState,
    FrameTokens,
    MemoryBucketStore,
    RateLimiter,
    is_full,
    take_tokens,
)

BUCKET = Bucket(rate=2, burst=5)


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def key() -> str:
    return f"k-{uuid4().hex}"


def limits(global_: Bucket | None = None, ip: Bucket | None = None, user: Bucket | None = None) -> LimitSettings:
    big = Bucket(rate=1000, burst=2000)
    return LimitSettings.model_validate({"global": global_ or big, "ip": ip or big, "user": user or big})


def test_unseen_key_starts_with_a_full_bucket() -> None:
    state, wait = take_tokens(None, BUCKET, now=10.0)
    assert wait == 0.0
    assert state == BucketState(tokens=4.0, updated_at=10.0)


def test_empty_bucket_reports_time_until_the_cost_is_refilled() -> None:
    state, wait = take_tokens(BucketState(0.5, 10.0), BUCKET, now=10.0, cost=2.0)
    assert wait == pytest.approx(0.75)
    assert state == BucketState(0.5, 10.0)


def test_refill_is_capped_at_the_burst() -> None:
    state, wait = take_tokens(BucketState(0.0, 0.0), BUCKET, now=1_000.0)
    assert wait == 0.0
    assert state.tokens == 4.0


def test_a_clock_behind_the_state_refills_nothing() -> None:
    state, wait = take_tokens(BucketState(1.0, 10.0), BUCKET, now=9.0)
    assert wait == 0.0
    assert state == BucketState(0.0, 10.0)


def test_cost_beyond_the_burst_is_a_programming_error() -> None:
    with pytest.raises(ValueError, match="cost"):
        take_tokens(None, BUCKET, now=0.0, cost=6.0)


def test_is_full_once_refilled_to_burst() -> None:
    assert not is_full(BucketState(3.0, 0.0), BUCKET, now=0.5)
    assert is_full(BucketState(3.0, 0.0), BUCKET, now=1.0)


async def test_store_forgets_keys_whose_bucket_refilled() -> None:
    store = MemoryBucketStore()
    for _ in range(3):
        await store.take(key(), BUCKET, now=0.0)
    assert len(store) == 3
    await store.take(key(), BUCKET, now=10.0)
    assert len(store) == 1


async def test_store_looks_for_refilled_buckets_once_per_sweep_interval_not_on_every_take() -> None:
    store = MemoryBucketStore()
    first, second, third = key(), key(), key()
    await store.take(first, BUCKET, now=0.0)  # refilled at 0.5 s
    await store.take(second, BUCKET, now=SWEEP_EVERY_S - 0.1)
    assert len(store) == 2  # first is full, but no sweep is due yet
    await store.take(third, BUCKET, now=SWEEP_EVERY_S)
    assert len(store) == 2  # first forgotten; second is still short of its burst
    # second kept its state (4 tokens at 0.9 s, 4.2 at the sweep), so its fifth take is refused
    waits = [await store.take(second, BUCKET, now=SWEEP_EVERY_S) for _ in range(5)]
    assert waits[:4] == [0.0] * 4
    assert waits[4] > 0


async def test_store_keeps_at_most_max_keys_dropping_the_least_recently_used() -> None:
    store = MemoryBucketStore(max_keys=2)
    first, second, third = key(), key(), key()
    for k in (first, second, first, third):
        for _ in range(5):
            await store.take(k, BUCKET, now=0.0)
    assert len(store) == 2
    assert await store.take(first, BUCKET, now=0.0) > 0  # still remembered: used more recently
    # second was the least recently used when third came, so it was forgotten and starts full again
    assert await store.take(second, BUCKET, now=0.0) == 0.0
    assert len(store) == 2


async def test_limiter_rejects_per_ip_with_retry_after_and_isolates_ips() -> None:
    clock = FakeClock()
    limiter = RateLimiter(limits(ip=Bucket(rate=1, burst=2)), MemoryBucketStore(), clock)
    ip = f"10.0.{uuid4().int % 250}.1"
    await limiter.check(ip=ip, user_id=None)
    await limiter.check(ip=ip, user_id=None)
    with pytest.raises(RateLimited, match="ip rate limit exceeded") as exc:
        await limiter.check(ip=ip, user_id=None)
    assert exc.value.retry_after == pytest.approx(1.0)
    await limiter.check(ip="192.0.2.7", user_id=None)
    clock.now += 1.0
    await limiter.check(ip=ip, user_id=None)


async def test_limiter_rejects_per_user_across_ips() -> None:
    limiter = RateLimiter(limits(user=Bucket(rate=1, burst=3)), MemoryBucketStore(), FakeClock())
    user = f"u-{uuid4().hex}"
    for i in range(3):
        await limiter.check(ip=f"198.51.100.{i}", user_id=user)
    with pytest.raises(RateLimited, match="user rate limit exceeded"):
        await limiter.check(ip="198.51.100.9", user_id=user)
    await limiter.check(ip="198.51.100.9", user_id=None)  # anonymous from that IP still passes
    await limiter.check(ip="198.51.100.9", user_id=f"u-{uuid4().hex}")


async def test_limiter_checks_the_global_bucket_first() -> None:
    limiter = RateLimiter(
        limits(global_=Bucket(rate=1, burst=2), ip=Bucket(rate=1, burst=2)), MemoryBucketStore(), FakeClock()
    )
    await limiter.check(ip="203.0.113.1", user_id=None)
    await limiter.check(ip="203.0.113.2", user_id=None)
    with pytest.raises(RateLimited, match="global rate limit exceeded") as exc:
        await limiter.check(ip="203.0.113.3", user_id="someone")
    assert exc.value.retry_after == pytest.approx(1.0)


async def refusals(limiter: RateLimiter, count: int, *, ip: str, user_id: str | None = None) -> list[str]:
    """The messages of the refusals among ``count`` checks."""
    refused = []
    for _ in range(count):
        try:
            await limiter.check(ip=ip, user_id=user_id)
        except RateLimited as exc:
            refused.append(exc.message)
    return refused


async def test_an_address_over_its_own_limit_leaves_the_global_bucket_to_everyone_else() -> None:
    limiter = RateLimiter(
        limits(global_=Bucket(rate=1, burst=5), ip=Bucket(rate=1, burst=2)), MemoryBucketStore(), FakeClock()
    )

    assert await refusals(limiter, 50, ip="203.0.113.66") == ["ip rate limit exceeded"] * 48

    for i in range(3):  # the five global tokens less the two the burst got through
        await limiter.check(ip=f"198.51.100.{i}", user_id=None)
    with pytest.raises(RateLimited, match="global rate limit exceeded"):
        await limiter.check(ip="198.51.100.9", user_id=None)


async def test_a_user_over_their_limit_leaves_their_address_and_the_global_bucket_untouched() -> None:
    limiter = RateLimiter(
        limits(global_=Bucket(rate=1, burst=8), ip=Bucket(rate=1, burst=5), user=Bucket(rate=1, burst=2)),
        MemoryBucketStore(),
        FakeClock(),
    )
    shared_address = "192.0.2.10"  # behind one NAT, say

    assert await refusals(limiter, 30, ip=shared_address, user_id="greedy") == ["user rate limit exceeded"] * 28

    for i in range(3):  # the address has three of its five tokens left, the global bucket six of eight
        await limiter.check(ip=shared_address, user_id=f"neighbour-{i}")


async def test_a_refusal_reports_the_wait_until_every_bucket_can_give() -> None:
    clock = FakeClock()
    limiter = RateLimiter(
        limits(global_=Bucket(rate=10, burst=20), ip=Bucket(rate=0.5, burst=1)), MemoryBucketStore(), clock
    )
    await limiter.check(ip="203.0.113.5", user_id=None)
    for i in range(19):
        await limiter.check(ip=f"198.51.100.{i}", user_id=None)

    with pytest.raises(RateLimited, match="ip rate limit exceeded") as refused:
        await limiter.check(ip="203.0.113.5", user_id=None)

    assert refused.value.retry_after == pytest.approx(2.0)  # not the global bucket's 0.1 s
    clock.now += refused.value.retry_after
    await limiter.check(ip="203.0.113.5", user_id=None)


class CountingStore(MemoryBucketStore):
    """Notes the cost of every take: one round trip each, for a store in Redis."""

    def __init__(self) -> None:
        super().__init__()
        self.costs: list[float] = []

    async def take_each(
        self, buckets: Sequence[tuple[str, Bucket]], *, now: float, cost: float = 1.0
    ) -> tuple[int, float]:
        self.costs.append(cost)
        return await super().take_each(buckets, now=now, cost=cost)


async def passed(frames: FrameTokens, count: int) -> int:
    """How many of ``count`` frames in a row pass before the first refusal."""
    for done in range(count):
        try:
            await frames.check()
        except RateLimited:
            return done
    return count


async def test_a_sockets_frames_take_their_tokens_a_few_at_a_time() -> None:
    store = CountingStore()
    limiter = RateLimiter(limits(), store, FakeClock())
    frames = limiter.frames(ip="203.0.113.20", user_id="u")

    assert await passed(frames, 200) == 200

    # Doubling while they run out in time, up to the most: 9 round trips instead of 200.
    assert store.costs == [1, 2, 4, 8, 16, 32, AHEAD_MOST, AHEAD_MOST, AHEAD_MOST]


async def test_frames_pass_until_a_bucket_is_empty_as_with_one_take_per_frame() -> None:
    clock = FakeClock()
    user = Bucket(rate=0.5, burst=100)
    limiter = RateLimiter(limits(user=user), MemoryBucketStore(), clock)
    frames = limiter.frames(ip="203.0.113.21", user_id="u")

    # Takes of up to 12 (an eighth of the burst); the last ones, short of what they ask, take one token.
    assert await passed(frames, 150) == 100
    with pytest.raises(RateLimited, match="user rate limit exceeded") as refused:
        await frames.check()
    assert refused.value.retry_after == pytest.approx(2.0)
    clock.now += 2.0
    assert await passed(frames, 5) == 1


async def test_tokens_unused_in_time_are_dropped_and_the_next_take_is_what_was_used() -> None:
    clock = FakeClock()
    store = CountingStore()
    limiter = RateLimiter(limits(user=Bucket(rate=0.001, burst=40)), store, clock)
    frames = limiter.frames(ip="203.0.113.22", user_id="u")

    assert await passed(frames, 4) == 4  # takes of 1, 2 and 4: three of the last are left
    clock.now += AHEAD_FOR_S
    assert await passed(frames, 1) == 1  # they were dropped: a take of the one used
    assert store.costs == [1, 2, 4, 1]

    # The bucket lost the three: 40 - 8 taken, so 32 more frames pass.
    assert await passed(frames, 50) == 32


async def test_small_buckets_are_taken_from_one_token_per_frame() -> None:
    store = CountingStore()
    limiter = RateLimiter(limits(user=Bucket(rate=1, burst=10)), store, FakeClock())
    frames = limiter.frames(ip="203.0.113.23", user_id="u")

    assert await passed(frames, 20) == 10
    assert set(store.costs) == {1}


async def test_the_sockets_of_one_user_share_the_users_burst() -> None:
    limiter = RateLimiter(limits(user=Bucket(rate=0.001, burst=64)), MemoryBucketStore(), FakeClock())
    sockets = [limiter.frames(ip=f"198.51.100.{i}", user_id="u") for i in range(3)]
    open_sockets, total = list(sockets), 0
    while open_sockets:  # the sockets send in turn; a refused one is closed
        for frames in list(open_sockets):
            try:
                await frames.check()
                total += 1
            except RateLimited:
                open_sockets.remove(frames)

    # Exactly the burst: a socket is refused only once it spent what it took ahead and the bucket has none.
    assert total == 64
