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


async def test_take_each_takes_from_every_bucket_in_order_and_stops_at_the_first_refusal(store: BucketStore) -> None:
    wide, narrow, last = key(), key(), key()
    big, small = Bucket(rate=5, burst=10), Bucket(rate=2, burst=3)
    buckets = [(wide, big), (narrow, small), (last, big)]
    answers = [await store.take_each(buckets, now=NOW) for _ in range(4)]
    assert answers[:3] == [(-1, 0.0)] * 3
    assert answers[3][0] == 1 and answers[3][1] == pytest.approx(0.5)
    # The wide bucket gave four tokens; the last, behind the refusal, only three.
    assert [await store.take(wide, big, now=NOW) for _ in range(6)] == [0.0] * 6
    assert await store.take(wide, big, now=NOW) > 0
    assert [await store.take(last, big, now=NOW) for _ in range(7)] == [0.0] * 7
    assert await store.take(last, big, now=NOW) > 0


async def test_take_each_of_one_bucket_answers_like_take(store: BucketStore) -> None:
    k = key()
    waits = [await store.take_each([(k, BUCKET)], now=NOW) for _ in range(6)]
    assert waits[:5] == [(-1, 0.0)] * 5
    assert waits[5][0] == 0 and waits[5][1] == pytest.approx(0.5)
