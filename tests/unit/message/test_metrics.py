"""The message pipeline's Prometheus metrics, read from the process registry before and after an action."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from services.common.clock import utcnow
from services.common.ids import new_id
from services.message.adapters.memory import MemoryEventLog
from services.message.domain import encode_event
from services.message.ports import Record
from services.message.workers import (
    DLQ_TOPIC,
    MESSAGES_TOPIC,
    FanoutWorker,
    OutboxRelay,
    RetryPolicy,
    prime_metrics,
    sample_log,
    sample_outbox,
)
from tests.unit.message.conftest import World


def value(name: str, **labels: str) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


async def _no_sleep(_: float) -> None:
    return None


def test_priming_shows_every_labelled_series_at_zero_before_traffic() -> None:
    group = f"g-{new_id()}"
    prime_metrics(group=group)
    assert REGISTRY.get_sample_value("courier_messages_sent_total", {"content_type": "call"}) is not None
    assert REGISTRY.get_sample_value("courier_consumer_records_total", {"group": group, "topic": MESSAGES_TOPIC}) == 0
    assert REGISTRY.get_sample_value("courier_consumer_failures_total", {"group": group, "topic": MESSAGES_TOPIC}) == 0
    assert REGISTRY.get_sample_value("courier_fanout_duration_seconds_count", {"diffusion": "timeline"}) is not None


async def test_a_new_message_is_counted_once_by_content_type_and_a_resend_is_not(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    before = value("courier_messages_sent_total", content_type="text")
    first = await world.send(cid, "alice", client_msg_id="m-1")
    again = await world.send(cid, "alice", client_msg_id="m-1")
    assert first.created and not again.created
    assert value("courier_messages_sent_total", content_type="text") == before + 1


async def test_the_relay_counts_the_rows_it_published(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    for _ in range(3):
        await world.send(cid, "alice")
    before = value("courier_outbox_published_total")
    await OutboxRelay(world.store, world.log, delete_after_s=0).relay_once()
    assert value("courier_outbox_published_total") == before + 3


async def test_outbox_gauges_show_the_backlog_and_the_age_of_its_oldest_row(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice")
    await world.send(cid, "alice")
    await sample_outbox(world.store, now=lambda: utcnow() + timedelta(seconds=42))
    assert value("courier_outbox_backlog") == 2
    assert 41 <= value("courier_outbox_oldest_age_seconds") <= 60

    await OutboxRelay(world.store, world.log, delete_after_s=0).relay_once()
    await sample_outbox(world.store)
    assert value("courier_outbox_backlog") == 0
    assert value("courier_outbox_oldest_age_seconds") == 0


async def test_the_fanout_worker_counts_records_failed_attempts_and_dead_letters() -> None:
    log, group = MemoryEventLog(), f"g-{new_id()}"
    await log.publish([Record(MESSAGES_TOPIC, "c", b"poison"), Record(MESSAGES_TOPIC, "c", b"fine")])

    async def handle(record: Record) -> None:
        if record.value == b"poison":
            raise ValueError("cannot decode")

    labels = {"group": group, "topic": MESSAGES_TOPIC}
    dead_before = value("courier_dlq_records_total", topic=MESSAGES_TOPIC)
    worker = FanoutWorker(
        log.consumer(MESSAGES_TOPIC, group), log, handle, retry=RetryPolicy(attempts=3), sleep=_no_sleep, group=group
    )
    await worker.run_once(timeout_s=0.1)
    assert value("courier_consumer_records_total", **labels) == 1
    assert value("courier_consumer_failures_total", **labels) == 3
    assert value("courier_dlq_records_total", topic=MESSAGES_TOPIC) == dead_before + 1


async def test_lag_and_dlq_size_come_from_the_in_process_log_offsets() -> None:
    log, group, topic = MemoryEventLog(), f"g-{new_id()}", f"t-{new_id()}"
    await log.publish([Record(topic, "c", b"1"), Record(topic, "c", b"2"), Record(DLQ_TOPIC, "c", b"x")])
    await sample_log(log, group=group, topic=topic)
    assert value("courier_kafka_consumer_lag", group=group, topic=topic, partition="0") == 2
    assert value("courier_dlq_size") == await log.held(DLQ_TOPIC) >= 1

    consumer = log.consumer(topic, group)
    await consumer.poll(max_records=1, timeout_s=0.1)
    await consumer.commit()
    await sample_log(log, group=group, topic=topic)
    assert value("courier_kafka_consumer_lag", group=group, topic=topic, partition="0") == 1


async def test_fanout_of_a_small_conversation_is_timed_as_inbox_diffusion(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    sent = await world.send(cid, "alice")
    before = value("courier_fanout_duration_seconds_count", diffusion="inbox")
    await world.service.handle_record(Record(MESSAGES_TOPIC, cid, encode_event(sent.message)))
    assert value("courier_fanout_duration_seconds_count", diffusion="inbox") == before + 1
