"""The outbox relay and the fan-out worker: order, commit after processing, retries, dead letters."""

from __future__ import annotations

import pytest

from services.message.adapters.memory import MemoryEventLog
from services.message.ports import Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC, FanoutWorker, OutboxRelay, RetryPolicy
from tests.unit.message.conftest import World


async def test_relay_publishes_outbox_rows_in_order_keyed_by_conversation_and_deletes_them(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    for _ in range(3):
        await world.send(cid, "alice")
    relay = OutboxRelay(world.store, world.log)
    assert await relay.relay_once() == 3
    records = world.log.records(MESSAGES_TOPIC)
    assert [r.key for r in records] == [cid] * 3
    assert await world.store.outbox_stats() == (0, None)


async def test_relay_keeps_rows_when_the_log_refuses_them(world: World) -> None:
    class DownLog:
        async def publish(self, records: object) -> None:
            raise ConnectionError("broker down")

    cid = world.conversations.add("alice", "bob")
    await world.send(cid, "alice")
    relay = OutboxRelay(world.store, DownLog(), lease_s=0)
    with pytest.raises(ConnectionError):
        await relay.relay_once()
    assert (await world.store.outbox_stats())[0] == 1


async def _no_sleep(_: float) -> None:
    return None


async def test_a_record_that_always_fails_lands_in_the_dlq_after_the_configured_attempts() -> None:
    log = MemoryEventLog()
    await log.publish([Record(MESSAGES_TOPIC, "c1", b"poison"), Record(MESSAGES_TOPIC, "c1", b"fine")])
    handled: list[bytes] = []
    attempts = 0

    async def handle(record: Record) -> None:
        nonlocal attempts
        if record.value == b"poison":
            attempts += 1
            raise ValueError("cannot decode")
        handled.append(record.value)

    worker = FanoutWorker(
        log.consumer(MESSAGES_TOPIC, "g"), log, handle, retry=RetryPolicy(attempts=3), sleep=_no_sleep
    )
    assert await worker.run_once(timeout_s=0.1) == 2
    assert attempts == 3 and handled == [b"fine"]
    [dead] = log.records(DLQ_TOPIC)
    assert dead.value == b"poison" and dead.headers["courier-attempts"] == b"3"
    assert b"cannot decode" in dead.headers["courier-error"]


async def test_offsets_are_committed_only_after_processing() -> None:
    log = MemoryEventLog()
    await log.publish([Record(MESSAGES_TOPIC, "c1", b"a")])

    class ProcessDied(BaseException):
        """Not an Exception: nothing in the worker may swallow it, like a kill mid-record."""

    async def crash(_: Record) -> None:
        raise ProcessDied

    consumer = log.consumer(MESSAGES_TOPIC, "g")
    worker = FanoutWorker(consumer, log, crash, sleep=_no_sleep)
    with pytest.raises(ProcessDied):
        await worker.run_once(timeout_s=0.1)
    restarted = log.consumer(MESSAGES_TOPIC, "g")
    assert [r.value for r in await restarted.poll(max_records=10, timeout_s=0.1)] == [b"a"]


async def test_a_batch_whose_dead_letter_cannot_be_written_is_polled_again() -> None:
    log = MemoryEventLog()
    await log.publish([Record(MESSAGES_TOPIC, "c1", b"poison"), Record(MESSAGES_TOPIC, "c1", b"next")])

    class DownDlq:
        async def publish(self, records: object) -> None:
            raise ConnectionError("broker down")

    async def always_fails(_: Record) -> None:
        raise ValueError("bad record")

    consumer = log.consumer(MESSAGES_TOPIC, "g")
    worker = FanoutWorker(consumer, DownDlq(), always_fails, retry=RetryPolicy(attempts=1), sleep=_no_sleep)
    assert not await worker.step()
    handled: list[bytes] = []

    async def fixed(record: Record) -> None:
        handled.append(record.value)

    retry = FanoutWorker(consumer, log, fixed, sleep=_no_sleep)
    await retry.run_once(timeout_s=0.1)
    assert handled == [b"poison", b"next"]
