"""The in-process event log's retention: `courier dev` runs for weeks, so its log must not hold every record
it ever carried, and must never drop one a consumer group has yet to commit."""

from __future__ import annotations

from services.message.adapters.memory import MemoryConsumer, MemoryEventLog
from services.message.ports import Record

TOPIC = "courier.messages.v1"


def _records(start: int, count: int, *, topic: str = TOPIC) -> list[Record]:
    return [Record(topic, f"c{i % 3}", str(i).encode()) for i in range(start, start + count)]


async def _read_all(consumer: MemoryConsumer, *, max_records: int = 7) -> list[bytes]:
    values = []
    while batch := await consumer.poll(max_records=max_records, timeout_s=0):
        values += [record.value for record in batch]
    return values


async def test_a_group_that_commits_as_it_reads_gets_every_record_once_from_a_bounded_log() -> None:
    log = MemoryEventLog(retained=5)
    consumer = log.consumer(TOPIC, "fanout")
    read: list[bytes] = []
    for start in range(0, 200, 4):
        await log.publish(_records(start, 4))
        read += await _read_all(consumer)
        await consumer.commit()
        assert await log.held(TOPIC) < 2 * 5 + 4
    assert read == [str(i).encode() for i in range(200)]
    assert log.size(TOPIC) == 200
    assert await log.lag("fanout", TOPIC) == {0: 0}


async def test_nothing_a_group_has_not_committed_is_dropped() -> None:
    log = MemoryEventLog(retained=5)
    consumer = log.consumer(TOPIC, "fanout")
    await log.publish(_records(0, 3))
    assert len(await _read_all(consumer)) == 3
    await consumer.commit()
    await log.publish(_records(3, 50))  # read by nobody yet
    assert await log.held(TOPIC) == 50
    assert await log.lag("fanout", TOPIC) == {0: 50}

    # A crash before the commit: the group's next member starts at its last commit and misses nothing.
    await _read_all(consumer)
    await consumer.rewind()
    assert await _read_all(consumer) == [str(i).encode() for i in range(3, 53)]
    await consumer.commit()
    await log.publish(_records(53, 1))
    assert await log.held(TOPIC) == 5


async def test_a_topic_no_group_reads_keeps_its_newest_records() -> None:
    log = MemoryEventLog(retained=5)
    await log.publish(_records(0, 40, topic="courier.messages.dlq.v1"))
    held = log.records("courier.messages.dlq.v1")
    assert [record.value for record in held] == [str(i).encode() for i in range(35, 40)]
    assert log.size("courier.messages.dlq.v1") == 40


async def test_a_group_that_joins_late_starts_at_the_oldest_record_held() -> None:
    log = MemoryEventLog(retained=5)
    await log.publish(_records(0, 12))
    assert log.size(TOPIC) == 12
    assert await log.lag("late", TOPIC) == {0: 5}  # nobody read the topic: its newest 5 were kept
    consumer = log.consumer(TOPIC, "late")
    assert await _read_all(consumer) == [str(i).encode() for i in range(7, 12)]
