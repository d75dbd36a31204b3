"""The fan-out worker's pipeline (``FanoutWorker.run``): it polls while records are processed, keeps each
key's order, fans out a key's queued records together, and commits only the processed prefix."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

import pytest

from services.message.adapters.memory import MemoryEventLog
from services.message.ports import Record
from services.message.workers import DLQ_TOPIC, MESSAGES_TOPIC, FanoutWorker, RetryPolicy

DEADLINE_S = 20.0


async def _no_sleep(_: float) -> None:
    return None


async def _until(condition: Callable[[], bool]) -> None:
    async with asyncio.timeout(DEADLINE_S):
        while not condition():
            await asyncio.sleep(0.01)


@contextlib.asynccontextmanager
async def _running(worker: FanoutWorker) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(worker.pipeline(busy_poll_s=0.01, idle_poll_s=0.05))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


def _records(*pairs: tuple[str, str]) -> list[Record]:
    return [Record(MESSAGES_TOPIC, key, value.encode()) for key, value in pairs]


def _worker(
    log: MemoryEventLog,
    handle: Callable[[Record], Awaitable[None]],
    *,
    handle_many: Callable[[Sequence[Record]], Awaitable[None]] | None = None,
    dlq: object = None,
) -> FanoutWorker:
    return FanoutWorker(
        log.consumer(MESSAGES_TOPIC, "g"),
        log if dlq is None else dlq,  # type: ignore[arg-type]
        handle,
        handle_many=handle_many,
        retry=RetryPolicy(attempts=2),
        sleep=_no_sleep,
        commit_every_s=0.01,
    )


async def test_a_slow_conversation_holds_neither_the_others_nor_its_own_order() -> None:
    log = MemoryEventLog()
    slow = asyncio.Event()
    handled: list[tuple[str, str]] = []

    async def handle(record: Record) -> None:
        if record.value == b"a1":
            await slow.wait()
        handled.append((record.key, record.value.decode()))

    worker = _worker(log, handle)
    await log.publish(_records(("a", "a1"), ("b", "b1")))
    async with _running(worker):
        await _until(lambda: ("b", "b1") in handled)
        # Polled after the slow record, while it is still in hand: the other conversation goes on.
        await log.publish(_records(("a", "a2"), ("b", "b2")))
        await _until(lambda: ("b", "b2") in handled)
        assert ("a", "a2") not in handled
        slow.set()
        await _until(lambda: len(handled) == 4)
    assert [v for k, v in handled if k == "a"] == ["a1", "a2"]


async def test_only_the_processed_prefix_is_committed_so_a_kill_redelivers_the_rest() -> None:
    log = MemoryEventLog()
    slow = asyncio.Event()
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"a1":
            await slow.wait()
        handled.append(record.value)

    await log.publish(_records(("b", "b1"), ("a", "a1"), ("b", "b2")))
    async with _running(_worker(log, handle)):
        await _until(lambda: b"b2" in handled and log._committed[(MESSAGES_TOPIC, "g")] == 1)
        assert await log.lag("g", MESSAGES_TOPIC) == {0: 2}  # b1 committed; a1 and b2 (after it) not
        slow.set()
        await _until(lambda: b"a1" in handled)
        await _until(lambda: log._committed[(MESSAGES_TOPIC, "g")] == 3)


async def test_a_conversations_queued_records_are_fanned_out_together_in_order() -> None:
    log = MemoryEventLog()
    started, first = asyncio.Event(), asyncio.Event()
    groups: list[list[str]] = []

    async def handle(record: Record) -> None:
        started.set()
        await first.wait()
        groups.append([record.value.decode()])

    async def handle_many(records: Sequence[Record]) -> None:
        groups.append([r.value.decode() for r in records])

    await log.publish(_records(("a", "1")))
    async with _running(_worker(log, handle, handle_many=handle_many)):
        await started.wait()  # "1" is in hand; what comes for its conversation queues behind it
        await log.publish(_records(("a", "2"), ("a", "3"), ("a", "4")))
        first.set()
        await _until(lambda: sum(len(g) for g in groups) == 4)
    assert groups == [["1"], ["2", "3", "4"]]


async def test_a_group_that_fails_is_retried_one_by_one_and_only_the_poison_record_is_parked() -> None:
    log = MemoryEventLog()
    started, gate = asyncio.Event(), asyncio.Event()
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        if record.value == b"first":
            started.set()
            await gate.wait()
        if record.value == b"poison":
            raise ValueError("cannot decode")
        handled.append(record.value)

    async def handle_many(records: Sequence[Record]) -> None:
        for record in records:
            await handle(record)

    await log.publish(_records(("a", "first")))
    async with _running(_worker(log, handle, handle_many=handle_many)):
        await started.wait()
        await log.publish(_records(("a", "fine"), ("a", "poison"), ("a", "last")))
        gate.set()
        await _until(lambda: log.size(DLQ_TOPIC) == 1 and b"last" in handled)
    [dead] = log.records(DLQ_TOPIC)
    assert dead.value == b"poison"
    assert handled == [b"first", b"fine", b"fine", b"last"]  # "fine" again: the group's try, then its own


async def test_when_a_record_can_be_neither_processed_nor_parked_the_pipeline_stops_and_it_is_polled_again() -> None:
    log = MemoryEventLog()

    class DownDlq:
        async def publish(self, records: object) -> None:
            raise ConnectionError("broker down")

    async def always_fails(_: Record) -> None:
        raise ValueError("bad record")

    await log.publish(_records(("a", "poison"), ("b", "other")))
    consumer = log.consumer(MESSAGES_TOPIC, "g")
    broken = FanoutWorker(consumer, DownDlq(), always_fails, retry=RetryPolicy(attempts=1), sleep=_no_sleep)  # type: ignore[arg-type]
    with pytest.raises(ConnectionError):
        async with asyncio.timeout(DEADLINE_S):
            await broken.pipeline(busy_poll_s=0.01)
    await consumer.rewind()
    handled: list[bytes] = []

    async def fixed(record: Record) -> None:
        handled.append(record.value)

    async with _running(FanoutWorker(consumer, log, fixed, commit_every_s=0.01)):
        await _until(lambda: log._committed[(MESSAGES_TOPIC, "g")] == 2)
    assert sorted(handled) == [b"other", b"poison"]


async def test_stopping_commits_what_was_processed() -> None:
    log = MemoryEventLog()
    handled: list[bytes] = []

    async def handle(record: Record) -> None:
        handled.append(record.value)

    await log.publish(_records(("a", "1"), ("b", "2")))
    worker = FanoutWorker(log.consumer(MESSAGES_TOPIC, "g"), log, handle, commit_every_s=3600)
    async with _running(worker):
        await _until(lambda: len(handled) == 2)
    assert log._committed[(MESSAGES_TOPIC, "g")] == 2
