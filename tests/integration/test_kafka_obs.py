"""The Kafka LogMonitor behind the lag and dead-letter gauges, on the harness's real Kafka: per-partition lag
of a consumer group from end and committed offsets, and the records a topic holds."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from services.common.ids import new_id
from services.common.settings import KafkaSettings
from services.message.adapters.kafka import KafkaConsumer, KafkaEventLog, KafkaLogMonitor, create_topics
from services.message.ports import Record
from tests.integration.test_kafka_event_log import kafka  # noqa: F401 - the session fixture


@pytest.fixture
async def monitor(kafka: KafkaSettings) -> AsyncIterator[KafkaLogMonitor]:  # noqa: F811
    found = KafkaLogMonitor(kafka)
    yield found
    await found.stop()


async def test_lag_is_per_partition_and_falls_as_the_group_commits(
    kafka: KafkaSettings,  # noqa: F811
    monitor: KafkaLogMonitor,
) -> None:
    topic, group = f"courier.test.lag.{new_id()}", f"g-{new_id()}"
    await create_topics(kafka, {topic: 2})
    log = KafkaEventLog(kafka)
    consumer = KafkaConsumer(kafka, topic, group)
    try:
        await log.publish([Record(topic, f"k{i}", b"v") for i in range(6)])
        lag = await monitor.lag(group, topic)
        assert set(lag) == {0, 1} and sum(lag.values()) == 6  # never committed: everything held is lag
        assert await monitor.held(topic) == 6

        polled = 0
        for _ in range(30):
            polled += len(await consumer.poll(max_records=100, timeout_s=1.0))
            if polled == 6:
                break
        await consumer.commit()

        assert await monitor.lag(group, topic) == {0: 0, 1: 0}
        assert await monitor.held(topic) == 6
    finally:
        await consumer.stop()
        await log.stop()


async def test_a_topic_that_does_not_exist_has_no_lag_and_holds_nothing(monitor: KafkaLogMonitor) -> None:
    topic = f"courier.test.absent.{new_id()}"
    assert await monitor.lag("nobody", topic) == {}
    assert await monitor.held(topic) == 0
