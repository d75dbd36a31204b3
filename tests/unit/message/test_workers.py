"""The outbox relay and the fan-out worker: order, commit after processing, retries, dead letters."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

import pytest

from services.message.adapters.memory import MemoryEventLog
from services.message.domain import decode_event
from services.message.ports import OutboxRecord, Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC, FanoutWorker, OutboxRelay, RetryPolicy
from tests.unit.message.conftest import SwitchableLog, World


async def test_relay_publishes_outbox_rows_in_order_keyed_by_conversation_and_deletes_them(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    for _ in range(3):
        await world.send(cid, "alice")
    relay = OutboxRelay(world.store, world.log, delete_after_s=0)
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


def seqs_of(log: MemoryEventLog) -> list[int]:
    return [decode_event(record.value)[0].seq for record in log.records(MESSAGES_TOPIC)]


async def relay_until_idle(relay: OutboxRelay) -> None:
    while await relay.relay_once():
        pass


async def test_rows_handed_over_on_commit_go_out_in_commit_order_without_a_sweep(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    relay = OutboxRelay(world.store, world.log, idle_poll_s=3600, delete_after_s=0)
    world.store.publish_on_commit(relay)
    for _ in range(3):
        await world.send(cid, "alice")
    claims = world.store.claim_outbox
    world.store.claim_outbox = None  # type: ignore[assignment]  # a sweep now would fail the test

    assert await relay.relay_once() == 3

    world.store.claim_outbox = claims  # type: ignore[method-assign]
    assert seqs_of(world.log) == [1, 2, 3]
    assert await world.store.outbox_stats() == (0, None)


async def test_when_the_log_refuses_handed_rows_the_sweep_publishes_them_and_later_ones_once_in_order(
    world: World,
) -> None:
    cid = world.conversations.add("alice", "bob")
    log = SwitchableLog()
    relay = OutboxRelay(world.store, log, idle_poll_s=0, delete_after_s=0)
    world.store.publish_on_commit(relay)
    for _ in range(3):
        await world.send(cid, "alice")
    log.down = True
    with pytest.raises(ConnectionError):
        await relay.relay_once()
    for _ in range(2):  # committed after the publisher gave up: left to the sweep behind the first three
        await world.send(cid, "alice")
    log.down = False

    await relay_until_idle(relay)
    await world.send(cid, "alice")  # the conversation's outbox is empty again: handed over on commit
    await relay_until_idle(relay)

    assert seqs_of(log) == [1, 2, 3, 4, 5, 6]
    assert await world.store.outbox_stats() == (0, None)


async def test_a_row_committed_under_the_token_the_relay_gave_up_is_swept_not_handed_out(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    log = SwitchableLog()
    relay = OutboxRelay(world.store, log, idle_poll_s=0, delete_after_s=0)
    world.store.publish_on_commit(relay)
    await world.send(cid, "alice")
    late = Late(relay)
    world.store.publish_on_commit(late)
    await world.send(cid, "alice")  # its commit hands the row over late, under the token of now
    log.down = True
    with pytest.raises(ConnectionError):
        await relay.relay_once()  # publishing seq 1 fails: the relay gives up its rows and its token
    log.down = False
    relay.committed(late.rows, lease_token=late.lease_token, swept=False)

    await relay_until_idle(relay)

    assert seqs_of(log) == [1, 2]
    assert await world.store.outbox_stats() == (0, None)


class Late:
    """A publisher that keeps what commits hand it, to hand it on later."""

    def __init__(self, relay: OutboxRelay) -> None:
        self.lease_token, self.lease_s, self.keeps_rows = relay.lease_token, relay.lease_s, True
        self.rows: list[OutboxRecord] = []

    def committed(self, rows: Sequence[OutboxRecord], *, lease_token: str, swept: bool) -> None:
        self.rows += rows

    async def publish_committed(self, events: Sequence[OutboxRecord]) -> None:
        raise AssertionError("a publisher that keeps rows is handed rows, not events")


async def test_rows_of_a_publisher_that_died_are_swept_in_order_with_the_rows_after_them(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    dead = OutboxRelay(world.store, world.log, lease_s=0.05)
    world.store.publish_on_commit(dead)
    for _ in range(2):
        await world.send(cid, "alice")  # handed to a relay that never runs
    survivor = OutboxRelay(world.store, world.log, idle_poll_s=0)
    world.store.publish_on_commit(survivor)
    for _ in range(2):
        await world.send(cid, "alice")  # behind another relay's rows: left to the sweep

    await until(lambda: len(world.log.records(MESSAGES_TOPIC)) == 4, step=lambda: relay_until_idle(survivor))

    assert seqs_of(world.log) == [1, 2, 3, 4]


async def test_handed_rows_whose_publish_stalled_for_half_a_lease_are_left_to_the_sweep(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    relay = OutboxRelay(world.store, world.log, lease_s=0.05, idle_poll_s=0, delete_after_s=0)
    world.store.publish_on_commit(relay)
    token, stale_at = relay.lease_token, asyncio.get_running_loop().time() + relay.lease_s / 2
    await world.send(cid, "alice")
    await until(lambda: asyncio.get_running_loop().time() > stale_at)

    await relay_until_idle(relay)

    assert relay.lease_token != token, "the relay gave its rows up"
    assert seqs_of(world.log) == [1]
    assert await world.store.outbox_stats() == (0, None)


async def test_published_rows_are_deleted_together_and_when_the_relay_stops(world: World) -> None:
    cid = world.conversations.add("alice", "bob")
    relay = OutboxRelay(world.store, world.log, idle_poll_s=3600, delete_after_s=3600)
    world.store.publish_on_commit(relay)
    running = asyncio.create_task(relay.run())
    for _ in range(3):
        await world.send(cid, "alice")
    await until(lambda: relay.published == 3)
    assert (await world.store.outbox_stats())[0] == 3, "kept until the delete is due"
    running.cancel()
    with pytest.raises(asyncio.CancelledError):
        await running
    assert seqs_of(world.log) == [1, 2, 3]
    assert await world.store.outbox_stats() == (0, None)


async def until(
    done: Callable[[], bool], *, step: Callable[[], Awaitable[object]] | None = None, deadline_s: float = 30
) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + deadline_s
    while not done():
        assert loop.time() < end, "condition not met in time"
        if step is not None:
            await step()
        await asyncio.sleep(0.01)


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
