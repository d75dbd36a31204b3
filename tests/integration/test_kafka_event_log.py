"""The event log contract over the harness's real Kafka, plus what only Kafka has: partitions shared by the
members of a group, topic creation, and outages surfacing as ``Unavailable``."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiokafka.partitioner import murmur2  # type: ignore[import-untyped]

from services.common.errors import Unavailable
from services.common.ids import new_id
from services.common.settings import KafkaSettings
from services.message.adapters.kafka import (
    KafkaConsumer,
    KafkaEventLog,
    KafkaRecord,
    KafkaTopicReader,
    create_topics,
    describe_partitions,
    ensure_topics,
)
from services.message.dlq import list_dlq, replay_dlq
from services.message.ports import Consumer, EventLog, Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC
from tests.harness.infra import ensure_infra
from tests.unit.message.test_event_log_contract import (
    drain,
    nothing_more,
    test_a_failing_record_is_dead_lettered_listed_and_replayed_once_to_a_fixed_handler,
    test_commit_covers_only_what_poll_returned,
    test_commit_first_covers_only_the_first_records_polled,
    test_commit_with_nothing_polled_is_harmless,
    test_committed_records_are_not_delivered_again_to_the_group,
    test_every_group_receives_every_record,
    test_key_value_and_headers_round_trip_unchanged,
    test_listing_an_empty_dead_letter_topic_finds_nothing,
    test_publishing_nothing_is_a_no_op,
    test_records_of_one_key_come_back_in_the_order_they_were_published,
    test_records_polled_but_not_committed_go_to_the_next_member_of_the_group,
    test_replay_stops_at_the_limit_and_resumes_where_it_stopped,
)

CONTRACT = (
    test_a_failing_record_is_dead_lettered_listed_and_replayed_once_to_a_fixed_handler,
    test_commit_covers_only_what_poll_returned,
    test_commit_first_covers_only_the_first_records_polled,
    test_commit_with_nothing_polled_is_harmless,
    test_committed_records_are_not_delivered_again_to_the_group,
    test_every_group_receives_every_record,
    test_key_value_and_headers_round_trip_unchanged,
    test_listing_an_empty_dead_letter_topic_finds_nothing,
    test_publishing_nothing_is_a_no_op,
    test_records_of_one_key_come_back_in_the_order_they_were_published,
    test_records_polled_but_not_committed_go_to_the_next_member_of_the_group,
    test_replay_stops_at_the_limit_and_resumes_where_it_stopped,
)

# Nothing listens on port 1 of loopback: the connection is refused at once.
NO_BROKER = KafkaSettings(bootstrap="127.0.0.1:1")


@pytest.fixture(scope="session")
def kafka() -> KafkaSettings:
    infra: dict[str, Any] = ensure_infra(("kafka",))
    return KafkaSettings(bootstrap=infra["env"]["COURIER_TEST_KAFKA"], client_id="courier-tests")


class KafkaBackend:
    """The contract's LogBackend on Kafka: a topic per test, every client stopped at the end."""

    quiet_s = 2.0
    read_timeout_s = 30.0

    def __init__(self, settings: KafkaSettings) -> None:
        self.settings = settings
        self.kafka_log = KafkaEventLog(settings)
        self.log: EventLog = self.kafka_log
        self._clients: list[KafkaConsumer | KafkaTopicReader] = []

    async def topic(self, *, partitions: int = 3) -> str:
        name = f"test.{new_id()}"
        await create_topics(self.settings, {name: partitions})
        return name

    async def consumer(self, topic: str, group: str) -> Consumer:
        consumer = KafkaConsumer(self.settings, topic, group, session_timeout_ms=6_000, heartbeat_interval_ms=1_000)
        self._clients.append(consumer)
        await consumer.start()
        return consumer

    async def reader(self, topic: str, *, group: str | None = None) -> Consumer:
        reader = KafkaTopicReader(self.settings, topic, group=group)
        self._clients.append(reader)
        await reader.start()
        return reader

    async def close(self, consumer: Consumer) -> None:
        assert isinstance(consumer, KafkaConsumer | KafkaTopicReader)
        await consumer.stop()

    async def aclose(self) -> None:
        for client in self._clients:
            await client.stop()
        await self.kafka_log.stop()


@pytest.fixture
async def backend(kafka: KafkaSettings) -> AsyncIterator[KafkaBackend]:
    kafka_backend = KafkaBackend(kafka)
    yield kafka_backend
    await kafka_backend.aclose()


def keys_covering(partitions: int) -> list[str]:
    """Keys that hash (Kafka's murmur2, as the producer does) to every one of ``partitions``, two each."""
    keys: dict[int, list[str]] = {p: [] for p in range(partitions)}
    while any(len(found) < 2 for found in keys.values()):
        key = f"conv-{new_id()}"
        keys[(murmur2(key.encode()) & 0x7FFFFFFF) % partitions].append(key)
    return [key for found in keys.values() for key in found[:2]]


async def test_records_of_a_key_share_one_partition_in_offset_order(backend: KafkaBackend) -> None:
    topic = await backend.topic(partitions=4)
    keys = keys_covering(4)
    await backend.log.publish([Record(topic, key, f"{key}:{n}".encode()) for n in range(5) for key in keys])

    got = await drain(await backend.consumer(topic, f"g-{new_id()}"), 5 * len(keys))
    places: dict[str, list[tuple[int, int]]] = {}
    for record in got:
        assert isinstance(record, KafkaRecord) and record.timestamp_ms is not None
        places.setdefault(record.key, []).append((record.partition, record.offset))
    assert {len({p for p, _ in spots}) for spots in places.values()} == {1}
    assert all(spots == sorted(spots) for spots in places.values())
    assert {spots[0][0] for spots in places.values()} == {0, 1, 2, 3}


async def test_members_of_a_group_split_the_partitions_and_see_each_record_once(backend: KafkaBackend) -> None:
    topic, group = await backend.topic(partitions=4), f"g-{new_id()}"
    first, second = await backend.consumer(topic, group), await backend.consumer(topic, group)
    assert isinstance(first, KafkaConsumer) and isinstance(second, KafkaConsumer)

    def settled() -> bool:
        mine, theirs = first.assignment(), second.assignment()
        return bool(mine and theirs and not mine & theirs and len(mine | theirs) == 4)

    async with asyncio.timeout(60):
        while not settled():  # the group rebalances while its members poll
            await asyncio.gather(*(c.poll(max_records=1, timeout_s=0.2) for c in (first, second)))

    keys = keys_covering(4)
    sent = [Record(topic, key, f"{key}:{n}".encode()) for n in range(3) for key in keys]
    await backend.log.publish(sent)
    seen: dict[KafkaConsumer, list[Record]] = {first: [], second: []}
    async with asyncio.timeout(60):
        while sum(map(len, seen.values())) < len(sent):
            for member, records in zip(
                seen, await asyncio.gather(*(c.poll(max_records=100, timeout_s=0.5) for c in seen)), strict=True
            ):
                seen[member].extend(records)
                await member.commit()

    for member, records in seen.items():
        assert records, "every member owns partitions that received records"
        assert {(r.topic, r.partition) for r in records if isinstance(r, KafkaRecord)} <= member.assignment()
    everything = seen[first] + seen[second]
    assert sorted(r.value for r in everything) == sorted(r.value for r in sent)
    await backend.close(first)
    await backend.close(second)
    await nothing_more(backend, await backend.consumer(topic, group))


async def test_publish_and_consume_survive_stop_and_restart_of_the_clients(backend: KafkaBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    producer = backend.kafka_log
    await producer.start()
    await producer.start()
    await producer.publish([Record(topic, "k", b"one")])
    await producer.stop()
    await producer.stop()
    await producer.publish([Record(topic, "k", b"two")])  # starts again by itself

    consumer = await backend.consumer(topic, group)
    assert isinstance(consumer, KafkaConsumer)
    await consumer.start()
    assert [r.value for r in await drain(consumer, 2)] == [b"one", b"two"]
    await consumer.commit()
    await consumer.stop()
    await consumer.stop()
    await producer.publish([Record(topic, "k", b"three")])
    assert [r.value for r in await drain(consumer, 1)] == [b"three"]


async def test_rewind_fetches_again_what_was_polled_since_the_last_commit(backend: KafkaBackend) -> None:
    topic, group = await backend.topic(), f"g-{new_id()}"
    consumer = await backend.consumer(topic, group)
    assert isinstance(consumer, KafkaConsumer)
    await backend.log.publish([Record(topic, f"k{n}", f"done{n}".encode()) for n in range(6)])
    await drain(consumer, 6)
    await consumer.commit()

    failed = [Record(topic, f"k{n}", f"failed{n}".encode()) for n in range(4)]
    await backend.log.publish(failed)
    first_try = await drain(consumer, 4)
    await consumer.rewind()
    second_try = await drain(consumer, 4)
    assert sorted(r.value for r in first_try) == sorted(r.value for r in second_try) == sorted(r.value for r in failed)
    await consumer.commit()
    await nothing_more(backend, consumer)
    await backend.close(consumer)
    await nothing_more(backend, await backend.consumer(topic, group))


async def test_create_topics_makes_the_partitions_asked_for_and_leaves_existing_topics_alone(
    kafka: KafkaSettings, caplog: pytest.LogCaptureFixture
) -> None:
    one, two = f"test.{new_id()}", f"test.{new_id()}"
    await create_topics(kafka, {one: 5, two: 2})
    assert await describe_partitions(kafka, [one, two]) == {one: 5, two: 2}

    with caplog.at_level(logging.WARNING, logger="courier.message.kafka"):
        await create_topics(kafka, {one: 7})
    assert await describe_partitions(kafka, [one]) == {one: 5}
    assert f"topic {one} has 5 partitions, settings ask for 7" in caplog.text


async def test_a_topic_the_cluster_cannot_hold_is_refused_with_the_reason(kafka: KafkaSettings) -> None:
    three_copies = kafka.model_copy(update={"replication_factor": 3})  # the harness runs one broker
    name = f"test.{new_id()}"
    with pytest.raises(Unavailable, match=f"refused to create {name}"):
        await create_topics(three_copies, {name: 1})
    assert await describe_partitions(kafka, [name]) == {}


async def test_ensure_topics_creates_the_message_and_dead_letter_topics_idempotently(kafka: KafkaSettings) -> None:
    await ensure_topics(kafka)
    await ensure_topics(kafka)
    found = await describe_partitions(kafka, [MESSAGES_TOPIC, DLQ_TOPIC])
    assert set(found) == {MESSAGES_TOPIC, DLQ_TOPIC}
    assert all(count >= 1 for count in found.values())


async def test_describing_a_missing_topic_does_not_create_it(kafka: KafkaSettings) -> None:
    missing = f"test.{new_id()}"
    assert await describe_partitions(kafka, [missing]) == {}
    assert await list_dlq(kafka, topic=missing) == []
    assert await describe_partitions(kafka, [missing]) == {}


async def test_an_unreachable_broker_is_reported_as_unavailable() -> None:
    log = KafkaEventLog(NO_BROKER)
    with pytest.raises(Unavailable):
        await log.publish([Record("any", "k", b"v")])
    await log.stop()
    consumer = KafkaConsumer(NO_BROKER, "any", "g")
    with pytest.raises(Unavailable):
        await consumer.poll(max_records=1, timeout_s=0.1)
    await consumer.stop()
    with pytest.raises(Unavailable):
        await ensure_topics(NO_BROKER)
    with pytest.raises(Unavailable):
        await list_dlq(NO_BROKER)
    with pytest.raises(Unavailable):
        await replay_dlq(NO_BROKER)


async def test_kafka_without_a_bootstrap_address_says_how_to_configure_it() -> None:
    with pytest.raises(Unavailable, match="COURIER_KAFKA__BOOTSTRAP"):
        await KafkaEventLog(KafkaSettings()).publish([Record("any", "k", b"v")])
