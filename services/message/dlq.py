"""The dead-letter tool behind ``courier dlq list|replay``: show what the fan-out worker parked, and put it back
on its source topic once the cause is fixed. Works over any Consumer/EventLog pair; Kafka wrappers below.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from typing import Any

from services.common.clock import rfc3339
from services.common.settings import KafkaSettings
from services.message.adapters.kafka import KafkaEventLog, KafkaRecord, KafkaTopicReader
from services.message.ports import Consumer, EventLog, Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC

log = logging.getLogger("courier.message.dlq")

REPLAY_GROUP = "courier-dlq-replay"
ERROR_HEADER = "courier-error"
ATTEMPTS_HEADER = "courier-attempts"
SOURCE_HEADER = "courier-source-topic"
REPLAYS_HEADER = "courier-replays"
PREVIEW_CHARS = 200


def _text(value: bytes | None) -> str | None:
    return value.decode("utf-8", errors="replace") if value is not None else None


def _int(value: bytes | None) -> int | None:
    try:
        return int(value) if value is not None else None
    except ValueError:
        return None


def describe(record: Record, *, index: int) -> dict[str, Any]:
    """One dead letter as the CLI prints it. ``index`` stands in for the offset of a log without offsets."""
    partition, offset, timestamp = 0, index, None
    if isinstance(record, KafkaRecord):
        partition, offset = record.partition, record.offset
        if record.timestamp_ms is not None:
            timestamp = rfc3339(datetime.fromtimestamp(record.timestamp_ms / 1000, UTC))
    preview = record.value.decode("utf-8", errors="replace")
    return {
        "partition": partition,
        "offset": offset,
        "key": record.key,
        "reason": _text(record.headers.get(ERROR_HEADER)),
        "attempts": _int(record.headers.get(ATTEMPTS_HEADER)),
        "source_topic": _text(record.headers.get(SOURCE_HEADER)),
        "replays": _int(record.headers.get(REPLAYS_HEADER)) or 0,
        "timestamp": timestamp,
        "size": len(record.value),
        "value_preview": preview[:PREVIEW_CHARS] + ("…" if len(preview) > PREVIEW_CHARS else ""),
    }


async def read_dead_letters(consumer: Consumer, *, limit: int, timeout_s: float = 1.0) -> list[dict[str, Any]]:
    """The first ``limit`` records ``consumer`` yields, described; it is never committed, so nothing moves."""
    found: list[dict[str, Any]] = []
    while len(found) < limit:
        records = await consumer.poll(max_records=limit - len(found), timeout_s=timeout_s)
        if not records:
            break
        found.extend(describe(record, index=len(found) + i) for i, record in enumerate(records))
    return found


def revive(record: Record) -> Record:
    """The dead letter as it goes back to its source topic: failure headers dropped, replays counted."""
    source = _text(record.headers.get(SOURCE_HEADER))
    if not source:
        log.warning("dead letter of %s has no %s header; replaying it to %s", record.key, SOURCE_HEADER, MESSAGES_TOPIC)
        source = MESSAGES_TOPIC
    headers = {
        name: value
        for name, value in record.headers.items()
        if name not in (ERROR_HEADER, ATTEMPTS_HEADER, SOURCE_HEADER)
    }
    headers[REPLAYS_HEADER] = str((_int(record.headers.get(REPLAYS_HEADER)) or 0) + 1).encode()
    return Record(source, record.key, record.value, headers)


async def replay_dead_letters(
    consumer: Consumer, target: EventLog, *, limit: int | None = None, batch: int = 100, timeout_s: float = 1.0
) -> int:
    """Republish what ``consumer`` yields to each record's source topic, committing after every published
    batch (a crash in between replays that batch twice: consumers dedup by seq). Returns the count."""
    replayed = 0
    while limit is None or replayed < limit:
        want = batch if limit is None else min(batch, limit - replayed)
        records = await consumer.poll(max_records=want, timeout_s=timeout_s)
        if not records:
            break
        await target.publish([revive(record) for record in records])
        await consumer.commit()
        replayed += len(records)
    return replayed


async def list_dlq(
    settings: KafkaSettings, *, limit: int = 100, topic: str = DLQ_TOPIC, timeout_s: float = 30.0
) -> list[dict[str, Any]]:
    """``courier dlq list``: the DLQ topic from its beginning, read without any consumer group."""
    reader = KafkaTopicReader(settings, topic)
    try:
        return await read_dead_letters(reader, limit=limit, timeout_s=timeout_s)
    finally:
        await reader.stop()


async def replay_dlq(
    settings: KafkaSettings,
    *,
    limit: int | None = None,
    topic: str = DLQ_TOPIC,
    group: str = REPLAY_GROUP,
    timeout_s: float = 30.0,
) -> int:
    """``courier dlq replay``: republish the dead letters not replayed yet (``group`` remembers where replay
    stopped) up to the DLQ's end when called; returns how many went back."""
    reader = KafkaTopicReader(settings, topic, group=group)
    target = KafkaEventLog(settings)
    try:
        return await replay_dead_letters(reader, target, limit=limit, timeout_s=timeout_s)
    finally:
        await reader.stop()
        await target.stop()
