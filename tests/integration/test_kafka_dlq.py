"""A record that always fails the fan-out lands in Kafka's dead-letter topic after the configured attempts, with
its reason; ``courier dlq list`` shows it and ``courier dlq replay`` puts it back so the fixed handler runs once."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.common.ids import new_id
from services.common.settings import KafkaSettings
from services.message.adapters.kafka import KafkaConsumer, KafkaEventLog, create_topics
from services.message.dlq import list_dlq, replay_dlq
from services.message.ports import EventLog, Record
from services.message.workers import DLQ_TOPIC, FanoutWorker, RetryPolicy
from tests.harness.infra import ensure_infra


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    infra: dict[str, Any] = ensure_infra(("kafka",))
    return KafkaSettings(bootstrap=infra["env"]["COURIER_TEST_KAFKA"], client_id="courier-tests")


@pytest.fixture
async def producer(kafka: KafkaSettings) -> AsyncIterator[KafkaEventLog]:
    log = KafkaEventLog(kafka)
    yield log
    await log.stop()


@pytest.fixture
async def topics(kafka: KafkaSettings) -> tuple[str, str]:
    """A source topic and a dead-letter topic of this test only (the worker's DLQ_TOPIC is redirected)."""
    source, dead = f"test.{new_id()}", f"test.dlq.{new_id()}"
    await create_topics(kafka, {source: 3, dead: 2})
    return source, dead


class Redirect:
    def __init__(self, log: EventLog, topics: Mapping[str, str]) -> None:
        self._log, self._topics = log, topics

    async def publish(self, records: Sequence[Record]) -> None:
        await self._log.publish(
            [Record(self._topics.get(r.topic, r.topic), r.key, r.value, r.headers) for r in records]
        )


async def test_a_poison_record_is_dead_lettered_listed_and_replayed_once_the_handler_is_fixed(
    kafka: KafkaSettings, producer: KafkaEventLog, topics: tuple[str, str]
) -> None:
    source, dead = topics
    conversation = f"conv-{new_id()}"
    await producer.publish([Record(source, conversation, b'{"seq": 1}'), Record(source, conversation, b'{"seq": 2}')])
    calls: dict[bytes, int] = {}
    fixed = False

    async def handle(record: Record) -> None:
        calls[record.value] = calls.get(record.value, 0) + 1
        if record.value == b'{"seq": 1}' and not fixed:
            raise RuntimeError("inbox schema mismatch")

    delays: list[float] = []

    async def record_delay(delay: float) -> None:
        delays.append(delay)

    consumer = KafkaConsumer(kafka, source, f"fanout-{new_id()}")
    worker = FanoutWorker(
        consumer, Redirect(producer, {DLQ_TOPIC: dead}), handle, retry=RetryPolicy(attempts=4), sleep=record_delay
    )
    try:
        async with asyncio.timeout(60):
            while worker.processed + worker.dead_lettered < 2:
                await worker.run_once(timeout_s=0.5)
        assert calls == {b'{"seq": 1}': 4, b'{"seq": 2}': 1}
        assert (worker.dead_lettered, delays) == (1, [0.1, 0.2, 0.4])

        [letter] = await list_dlq(kafka, topic=dead)
        assert letter["key"] == conversation and letter["source_topic"] == source
        assert letter["attempts"] == 4 and "inbox schema mismatch" in letter["reason"]
        assert letter["value_preview"] == '{"seq": 1}' and letter["partition"] in (0, 1) and letter["offset"] == 0
        stamped = datetime.fromisoformat(letter["timestamp"])
        assert abs(datetime.now(UTC) - stamped) < timedelta(minutes=5)

        fixed = True
        assert await replay_dlq(kafka, topic=dead) == 1
        assert await replay_dlq(kafka, topic=dead) == 0, "the replay group remembers what went back"
        async with asyncio.timeout(60):
            while worker.processed < 2:
                await worker.run_once(timeout_s=0.5)
        assert calls == {b'{"seq": 1}': 5, b'{"seq": 2}': 1}
        assert worker.dead_lettered == 1
        assert await list_dlq(kafka, topic=dead) == [letter], "listing never consumes"
    finally:
        await consumer.stop()


async def test_replay_with_a_limit_sends_back_that_many_and_the_rest_later(
    kafka: KafkaSettings, producer: KafkaEventLog, topics: tuple[str, str]
) -> None:
    source, dead = topics
    letters = [
        Record(dead, f"conv-{n}", f"v{n}".encode(), {"courier-source-topic": source.encode(), "courier-error": b"e"})
        for n in range(5)
    ]
    await producer.publish(letters)
    assert len(await list_dlq(kafka, topic=dead, limit=3)) == 3

    assert await replay_dlq(kafka, topic=dead, limit=2) == 2
    assert await replay_dlq(kafka, topic=dead) == 3
    assert await replay_dlq(kafka, topic=dead) == 0

    consumer = KafkaConsumer(kafka, source, f"g-{new_id()}")
    try:
        back: list[Record] = []
        async with asyncio.timeout(60):
            while len(back) < 5:
                back.extend(await consumer.poll(max_records=5 - len(back), timeout_s=0.5))
        assert sorted(r.value for r in back) == [f"v{n}".encode() for n in range(5)]
        assert {r.headers["courier-replays"] for r in back} == {b"1"}
    finally:
        await consumer.stop()
