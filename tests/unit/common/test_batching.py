"""Batcher: what arrives while a batch is out leaves together next, in order, each caller gets its own answer."""

from __future__ import annotations

import asyncio

import pytest

from services.common.batching import Batcher


class Gate:
    """A flush that records its batches and answers only when released."""

    def __init__(self, answer: dict[int, BaseException] | None = None) -> None:
        self.batches: list[list[int]] = []
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self._answer = answer or {}

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append(items)
        self.entered.set()
        await self.release.wait()
        return [self._answer.get(i, i * 10) for i in items]


async def _started(batcher: Batcher[int, int], items: list[int]) -> list[asyncio.Task[int]]:
    tasks = []
    for item in items:
        tasks.append(asyncio.create_task(batcher.submit(item)))
        await asyncio.sleep(0)  # each submission reaches the queue before the next
    return tasks


async def test_an_idle_batcher_sends_a_lone_item_at_once() -> None:
    gate = Gate()
    gate.release.set()
    batcher: Batcher[int, int] = Batcher(gate)
    assert await batcher.submit(7) == 70
    assert gate.batches == [[7]]


async def test_items_arriving_during_a_flight_leave_together_in_their_order() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate)
    first = await _started(batcher, [1])
    await asyncio.wait_for(gate.entered.wait(), 10)
    rest = await _started(batcher, [2, 3, 4])
    gate.release.set()
    assert await asyncio.wait_for(asyncio.gather(*first, *rest), 10) == [10, 20, 30, 40]
    assert gate.batches == [[1], [2, 3, 4]]
    assert (batcher.batches, batcher.items) == (2, 4)


async def test_batches_are_cut_at_max_batch() -> None:
    gate = Gate()
    gate.release.set()
    batcher: Batcher[int, int] = Batcher(gate, max_batch=2)
    tasks = [asyncio.create_task(batcher.submit(i)) for i in range(5)]
    assert await asyncio.wait_for(asyncio.gather(*tasks), 10) == [0, 10, 20, 30, 40]
    assert gate.batches == [[0, 1], [2, 3], [4]]


async def test_an_item_that_failed_raises_to_its_own_caller_only() -> None:
    gate = Gate({2: ValueError("two is bad")})
    gate.release.set()
    batcher: Batcher[int, int] = Batcher(gate)
    outcomes = await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)), return_exceptions=True)
    assert outcomes[0] == 10 and outcomes[2] == 30
    assert isinstance(outcomes[1], ValueError)


async def test_a_failed_flush_fails_its_batch_and_the_next_batch_still_goes() -> None:
    calls = 0

    async def flaky(items: list[int]) -> list[int | BaseException]:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise ConnectionError("peer went away")
        return items

    batcher: Batcher[int, int] = Batcher(flaky)
    with pytest.raises(ConnectionError):
        await batcher.submit(1)
    assert await batcher.submit(2) == 2


async def test_a_flush_answering_the_wrong_number_of_results_fails_the_batch() -> None:
    async def short(items: list[int]) -> list[int | BaseException]:
        return items[:-1]

    batcher: Batcher[int, int] = Batcher(short)
    with pytest.raises(RuntimeError, match="2 results for 3 items"):
        await asyncio.gather(*(batcher.submit(i) for i in (1, 2, 3)))


async def test_a_caller_that_gives_up_does_not_disturb_the_others() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate)
    leaving, staying = await _started(batcher, [1, 2])
    await asyncio.wait_for(gate.entered.wait(), 10)
    leaving.cancel()
    gate.release.set()
    assert await asyncio.wait_for(staying, 10) == 20
    assert leaving.cancelled()


async def test_close_cancels_the_callers_still_waiting() -> None:
    gate = Gate()
    batcher: Batcher[int, int] = Batcher(gate)
    in_flight = await _started(batcher, [1])
    await asyncio.wait_for(gate.entered.wait(), 10)
    queued = await _started(batcher, [2])
    await batcher.close()
    for task in (*in_flight, *queued):
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)


def test_max_batch_must_be_positive() -> None:
    async def echo(items: list[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="at least 1"):
        Batcher(echo, max_batch=0)
