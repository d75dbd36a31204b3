"""The BucketStore contract: test functions that a runner module imports and feeds with its ``store``
fixture. Runners: test_bucket_store_contract.py (memory), tests/integration/test_redis_buckets.py (memory
and Redis)."""

from __future__ import annotations

from uuid import uuid4

import pytest

from services.common.settings import Bucket
from services.gateway.ratelimit import BucketStore

BUCKET = Bucket(rate=2, burst=5)
NOW = 1_790_000_000.25  # a wall-clock time: Redis stores must keep every bit of it


def key() -> str:
    return f"k-{uuid4().hex}"


async def test_store_allows_a_burst_then_rejects(store: BucketStore) -> None:
    k = key()
    waits = [await store.take(k, BUCKET, now=NOW) for _ in range(6)]
    assert waits[:5] == [0.0] * 5
    assert waits[5] == pytest.approx(0.5)


async def test_store_refills_over_time_at_the_rate(store: BucketStore) -> None:
    k = key()
    for _ in range(5):
        await store.take(k, BUCKET, now=NOW)
    assert await store.take(k, BUCKET, now=NOW + 1.0) == 0.0  # 2 tokens back after one second
    assert await store.take(k, BUCKET, now=NOW + 1.0) == 0.0
    assert await store.take(k, BUCKET, now=NOW + 1.0) > 0


async def test_waiting_exactly_retry_after_is_enough(store: BucketStore) -> None:
    bucket = Bucket(rate=3, burst=7)
    # Near zero on purpose: at wall-clock magnitudes a float sum of waits drifts by ~1e-7 s, more than
    # ratelimit._EPSILON forgives (reported to the gateway's owner).
    k, now = key(), 0.1
    while (wait := await store.take(k, bucket, now=now)) == 0.0:
        pass
    for _ in range(20):
        now += wait
        assert await store.take(k, bucket, now=now) == 0.0
        wait = await store.take(k, bucket, now=now)
        assert wait == pytest.approx(1 / 3)


async def test_store_keys_are_isolated(store: BucketStore) -> None:
    a, b = key(), key()
    for _ in range(5):
        await store.take(a, BUCKET, now=NOW)
    assert await store.take(a, BUCKET, now=NOW) > 0
    assert await store.take(b, BUCKET, now=NOW) == 0.0


async def test_refused_take_costs_nothing(store: BucketStore) -> None:
    k = key()
    await store.take(k, BUCKET, now=NOW, cost=4.5)

    refused = await store.take(k, BUCKET, now=NOW, cost=1.0)
    taken = await store.take(k, BUCKET, now=NOW, cost=0.5)

    assert refused == pytest.approx(0.25)
    assert taken == 0.0


async def test_a_clock_behind_the_bucket_refills_nothing_twice(store: BucketStore) -> None:
    k = key()
    for _ in range(5):
        await store.take(k, BUCKET, now=NOW)

    behind = await store.take(k, BUCKET, now=NOW - 10.0)  # another replica's clock, 10 s late
    caught_up = await store.take(k, BUCKET, now=NOW + 0.5)

    assert behind == pytest.approx(0.5)
    assert caught_up == 0.0


async def test_cost_beyond_the_burst_is_a_programming_error(store: BucketStore) -> None:
    with pytest.raises(ValueError, match="cost"):
        await store.take(key(), BUCKET, now=NOW, cost=6.0)


async def test_take_each_takes_from_every_bucket_while_all_can_give(store: BucketStore) -> None:
    wide, narrow = key(), key()
    big, small = Bucket(rate=5, burst=10), Bucket(rate=2, burst=3)
    answers = [await store.take_each([(wide, big), (narrow, small)], now=NOW) for _ in range(3)]
    assert answers == [(-1, 0.0)] * 3
    assert [await store.take(wide, big, now=NOW) for _ in range(7)] == [0.0] * 7
    assert await store.take(wide, big, now=NOW) > 0
    assert await store.take(narrow, small, now=NOW) > 0


async def test_take_each_refused_by_one_bucket_takes_from_none(store: BucketStore) -> None:
    wide, narrow, last = key(), key(), key()
    big, small = Bucket(rate=5, burst=10), Bucket(rate=2, burst=3)
    for _ in range(3):
        await store.take(narrow, small, now=NOW)
    buckets = [(wide, big), (narrow, small), (last, big)]

    answers = [await store.take_each(buckets, now=NOW) for _ in range(20)]

    assert {index for index, _ in answers} == {1}
    assert all(wait == pytest.approx(0.5) for _, wait in answers)
    # Twenty refusals later the buckets around the refusing one are still full.
    for k in (wide, last):
        assert [await store.take(k, big, now=NOW) for _ in range(10)] == [0.0] * 10, k
        assert await store.take(k, big, now=NOW) > 0


async def test_take_each_refused_by_several_buckets_names_the_one_that_refills_last(store: BucketStore) -> None:
    quick, slow, full = key(), key(), key()
    fast_refill, slow_refill = Bucket(rate=10, burst=20), Bucket(rate=1, burst=2)
    for _ in range(20):
        await store.take(quick, fast_refill, now=NOW)
    for _ in range(2):
        await store.take(slow, slow_refill, now=NOW)

    index, wait = await store.take_each([(quick, fast_refill), (full, fast_refill), (slow, slow_refill)], now=NOW)

    assert index == 2
    assert wait == pytest.approx(1.0)  # when every bucket can give again, not just the first empty one
    assert await store.take_each([(quick, fast_refill), (full, fast_refill), (slow, slow_refill)], now=NOW + wait) == (
        -1,
        0.0,
    )


async def test_take_each_of_one_bucket_answers_like_take(store: BucketStore) -> None:
    k = key()
    waits = [await store.take_each([(k, BUCKET)], now=NOW) for _ in range(6)]
    assert waits[:5] == [(-1, 0.0)] * 5
    assert waits[5][0] == 0 and waits[5][1] == pytest.approx(0.5)
