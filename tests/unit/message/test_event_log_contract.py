"""The event log contract (EventLog + Consumer) and the DLQ tool over it, run here over the in-process log and
by tests/integration/test_kafka_event_log.py over Kafka (which imports these tests with its own ``backend``)."""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Mapping, Sequence
from typing import Any, Protocol

import pytest

from services.common.ids import new_id
from services.message.adapters.memory import MemoryEventLog
from services.message.dlq import read_dead_letters, replay_dead_letters
from services.message.ports import Consumer, EventLog, Record
from services.message.workers import DLQ_TOPIC, FanoutWorker, RetryPolicy


class LogBackend(Protocol):
    """What a contract test needs of an event log implementation."""

    log: EventLog
    quiet_s: float  # how long an empty poll must stay empty to count as "nothing more"
    read_timeout_s: float  # the DLQ tool's poll timeout: ends at the topic's end, however long that takes

    async def topic(self, *, partitions: int = 3) -> str:
        """A fresh topic no other test uses."""
        ...

    async def consumer(self, topic: str, group: str) -> Consumer:
        """A member of ``group`` on ``topic``; closed by ``close`` or at the end of the test."""
        ...

    async def reader(self, topic: str, *, group: str | None = None) -> Consumer:
        """What the DLQ tool reads with: the whole topic, from ``group``'s offsets or the beginning."""
        ...

    async def close(self, consumer: Consumer) -> None:
        """Stop as a crashed or stopped process would: nothing committed on the way out."""
        ...


class MemoryBackend:
    quiet_s = read_timeout_s = 0.05

    def __init__(self) -> None:
        self.memory = MemoryEventLog()
        self.log: EventLog = self.memory

    async def topic(self, *, partitions: int = 3) -> str:
        return f"test.{new_id()}"

    async def consumer(self, topic: str, group: str) -> Consumer:
        return self.memory.consumer(topic, group)

    async def reader(self, topic: str, *, group: str | None = None) -> Consumer:
        return self.memory.consumer(topic, group or f"lister-{new_id()}")

    async def close(self, consumer: Consumer) -> None:
        return None


@pytest.fixture
def backend() -> LogBackend:
    return MemoryBackend()


class Redirect:
    """An EventLog writing to other topics than asked: the worker's fixed DLQ topic becomes one per test."""

    def __init__(self, log: EventLog, topics: Mapping[str, str]) -> None:
        self._log, self._topics = log, topics

    async def publish(self, records: Sequence[Record]) -> None:
        await self._log.publish(
            [Record(self._topics.get(r.topic, r.topic), r.key, r.value, r.headers) for r in records]
        )


async def drain(consumer: Consumer, count: int, *, deadline_s: float = 60.0) -> list[Record]:
    """Poll until ``count`` records came back (never asking for more), or fail after ``deadline_s``."""
    got: list[Record] = []
    async with asyncio.timeout(deadline_s):
        while len(got) < count:
            got.extend(await consumer.poll(max_records=count - len(got), timeout_s=0.5))
    assert len(got) == count
    return got


async def nothing_more(backend: LogBackend, consumer: Consumer) -> None:
    assert await consumer.poll(max_records=100, timeout_s=backend.quiet_s) == []


def values(records: Sequence[Record]) -> list[bytes]:
    return [r.value for r in records]


def by_key(records: Sequence[Record]) -> dict[str, list[bytes]]:
    grouped: dict[str, list[bytes]] = defaultdict(list)
    for record in records:
        grouped[record.key].append(record.value)
    return dict(grouped)


async def listed(backend: LogBackend, topic: str) -> list[dict[str, Any]]:
    return await read_dead_letters(await backend.reader(topic), limit=10, timeout_s=backend.read_timeout_s)


async def replayed(backend: LogBackend, topic: str, *, group: str, limit: int | None = None) -> int:
    reader = await backend.reader(topic, group=group)
    return await replay_dead_letters(reader, backend.log, limit=limit, timeout_s=backend.read_timeout_s)


async def publish_numbered(backend: LogBackend, topic: str, keys: Sequence[str], per_key: int) -> None:
    """``per_key`` records for every key, interleaved across keys, in a few publish calls."""
    batch = [Record(topic, key, f"{key}:{n}".encode()) for n in range(per_key) for key in keys]
    for start in range(0, len(batch), 7):
        await backend.log.publish(batch[start : start + 7])


def expected(keys: Sequence[str], per_key: int) -> dict[str, list[bytes]]:
    return {key: [f"{key}:{n}".encode() for n in range(per_key)] for key in keys}


async def test_records_of_one_key_come_back_in_the_order_they_were_published(backend: LogBackend) -> None:
    topic = await backend.topic()
    keys = [f"conv-{new_id()}" for _ in range(5)]
    await publish_numbered(backend, topic, keys, per_key=20)

    consumer = await backend.consumer(topic, f"g-{new_id()}")
    assert by_key(await drain(consumer, 100)) == expected(keys, 20)


async def test_key_value_and_headers_round_trip_unchanged(backend: LogBackend) -> None:
    topic = await backend.topic()
    sent = [
        Record(topic, "conv-ü-1", b"\x00\xff binary \n", {"traceparent": b"00-abc-01", "empty": b""}),
        Record(topic, "conv-2", b"{}", {}),
    ]
    await backend.log.publish(sent)

    got = await drain(await backend.consumer(topic, f"g-{new_id()}"), 2)
    assert sorted((r.topic, r.key, r.value, dict(r.headers)) for r in got) == sorted(
        (r.topic, r.key, r.value, dict(r.headers)) for r in sent
    )


async def test_publishing_nothing_is_a_no_op(backend: LogBackend) -> None:
    topic = await backend.topic()
    await backend.log.publish([])
    await backend.log.publish([Record(topic, "k", b"only")])
    consumer = await backend.consumer(topic, f"g-{new_id()}")
    assert values(await drain(consumer, 1)) == [b"only"]
    await nothing_more(backend, consumer)


async def test_records_polled_but_not_committed_go_to_the_next_member_of_the_group(backend: LogBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    keys = [f"conv-{new_id()}" for _ in range(3)]
    await publish_numbered(backend, topic, keys, per_key=4)

    crashed = await backend.consumer(topic, group)
    assert len(await drain(crashed, 12)) == 12
    await backend.close(crashed)  # processed nothing durable: no commit

    successor = await backend.consumer(topic, group)
    assert by_key(await drain(successor, 12)) == expected(keys, 4)


async def test_committed_records_are_not_delivered_again_to_the_group(backend: LogBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    await backend.log.publish([Record(topic, f"k{n}", f"old{n}".encode()) for n in range(6)])

    first = await backend.consumer(topic, group)
    await drain(first, 6)
    await first.commit()
    await backend.close(first)
    await backend.log.publish([Record(topic, "k0", b"new")])

    second = await backend.consumer(topic, group)
    assert values(await drain(second, 1)) == [b"new"]
    await nothing_more(backend, second)


async def test_commit_covers_only_what_poll_returned(backend: LogBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    sent = [Record(topic, f"k{n % 4}", f"v{n}".encode()) for n in range(10)]
    await backend.log.publish(sent)

    first = await backend.consumer(topic, group)
    processed = await drain(first, 4)
    await first.commit()
    await backend.close(first)

    second = await backend.consumer(topic, group)
    rest = await drain(second, 6)
    await nothing_more(backend, second)
    assert sorted(values(processed) + values(rest)) == sorted(values(sent))


async def test_commit_first_covers_only_the_first_records_polled(backend: LogBackend) -> None:
    """What the pipelined fan-out commits: the processed prefix of what it polled, not what it still holds."""
    topic, group = await backend.topic(), f"g-{new_id()}"
    sent = [Record(topic, f"k{n % 4}", f"v{n}".encode()) for n in range(10)]
    await backend.log.publish(sent)

    first = await backend.consumer(topic, group)
    polled = await drain(first, 6)
    await first.commit_first(2)  # type: ignore[attr-defined]
    await backend.close(first)

    second = await backend.consumer(topic, group)
    rest = await drain(second, 8)
    await nothing_more(backend, second)
    assert sorted(values(polled[:2]) + values(rest)) == sorted(values(sent))


async def test_commit_with_nothing_polled_is_harmless(backend: LogBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    consumer = await backend.consumer(topic, group)
    await consumer.commit()
    await backend.log.publish([Record(topic, "k", b"v")])
    assert values(await drain(consumer, 1)) == [b"v"]


async def test_every_group_receives_every_record(backend: LogBackend) -> None:
    topic = await backend.topic()
    keys = [f"conv-{new_id()}" for _ in range(3)]
    await publish_numbered(backend, topic, keys, per_key=3)

    for group in (f"fanout-{new_id()}", f"audit-{new_id()}"):
        consumer = await backend.consumer(topic, group)
        assert by_key(await drain(consumer, 9)) == expected(keys, 3)
        await consumer.commit()


async def _no_sleep(_: float) -> None:
    return None


async def test_a_failing_record_is_dead_lettered_listed_and_replayed_once_to_a_fixed_handler(
    backend: LogBackend,
) -> None:
    source, dead = await backend.topic(), await backend.topic(partitions=2)
    group = f"fanout-{new_id()}"
    poison = Record(source, f"conv-{new_id()}", b'{"seq": 7}', {"traceparent": b"t-1"})
    await backend.log.publish([poison, Record(source, f"conv-{new_id()}", b"fine")])
    broken = True
    handled: list[Record] = []

    async def handle(record: Record) -> None:
        if broken and record.value == poison.value:
            raise ValueError("inbox schema mismatch")
        handled.append(record)

    worker = FanoutWorker(
        await backend.consumer(source, group),
        Redirect(backend.log, {DLQ_TOPIC: dead}),
        handle,
        retry=RetryPolicy(attempts=3),
        sleep=_no_sleep,
    )
    async with asyncio.timeout(60):
        while worker.processed + worker.dead_lettered < 2:
            await worker.run_once(timeout_s=0.5)
    assert (worker.processed, worker.dead_lettered) == (1, 1)

    [letter] = await listed(backend, dead)
    assert letter["key"] == poison.key and letter["source_topic"] == source
    assert letter["attempts"] == 3 and "inbox schema mismatch" in letter["reason"]
    assert letter["value_preview"] == '{"seq": 7}' and letter["replays"] == 0
    assert await listed(backend, dead) == [letter]

    broken = False
    replay_group = f"replay-{new_id()}"
    assert await replayed(backend, dead, group=replay_group) == 1
    assert await replayed(backend, dead, group=replay_group) == 0

    async with asyncio.timeout(60):
        while worker.processed < 2:
            await worker.run_once(timeout_s=0.5)
    assert [r.value for r in handled].count(poison.value) == 1
    revived = next(r for r in handled if r.value == poison.value)
    assert revived.key == poison.key and revived.headers["traceparent"] == b"t-1"
    assert revived.headers["courier-replays"] == b"1" and "courier-error" not in revived.headers
    await nothing_more(backend, await backend.reader(dead, group=replay_group))


async def test_replay_stops_at_the_limit_and_resumes_where_it_stopped(backend: LogBackend) -> None:
    source, dead = await backend.topic(), await backend.topic(partitions=2)
    letters = [
        Record(dead, f"conv-{n}", f"v{n}".encode(), {"courier-source-topic": source.encode(), "courier-error": b"x"})
        for n in range(5)
    ]
    await backend.log.publish(letters)
    group = f"replay-{new_id()}"

    assert await replayed(backend, dead, group=group, limit=2) == 2
    assert await replayed(backend, dead, group=group) == 3

    back = await drain(await backend.consumer(source, f"g-{new_id()}"), 5)
    assert sorted(values(back)) == sorted(values(letters))
    assert all(r.topic == source and "courier-error" not in r.headers for r in back)


async def test_listing_an_empty_dead_letter_topic_finds_nothing(backend: LogBackend) -> None:
    dead = await backend.topic(partitions=2)
    assert await listed(backend, dead) == []
