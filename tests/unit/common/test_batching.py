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


class Gates:
    """A flush whose every call waits for its own release: ``released(n)`` lets the n-th call answer."""

    def __init__(self) -> None:
        self.batches: list[list[tuple[str, int]]] = []
        self.entered = asyncio.Condition()
        self._releases: list[asyncio.Event] = []

    async def __call__(self, items: list[tuple[str, int]]) -> list[int | BaseException]:
        release = asyncio.Event()
        async with self.entered:
            self.batches.append(items)
            self._releases.append(release)
            self.entered.notify_all()
        await release.wait()
        return [n for _, n in items]

    async def wait_calls(self, count: int) -> None:
        async with self.entered:
            await asyncio.wait_for(self.entered.wait_for(lambda: len(self.batches) >= count), 10)

    def release(self, index: int) -> None:
        self._releases[index].set()


async def _submitted(batcher: Batcher[tuple[str, int], int], items: list[tuple[str, int]]) -> list[asyncio.Task[int]]:
    tasks = []
    for item in items:
        tasks.append(asyncio.create_task(batcher.submit(item)))
        await asyncio.sleep(0)
    return tasks


async def test_with_more_flights_a_slow_batch_does_not_hold_back_what_arrives_behind_it() -> None:
    gates = Gates()
    batcher: Batcher[tuple[str, int], int] = Batcher(gates, in_flight=2)
    slow = await _submitted(batcher, [("a", 1)])
    await gates.wait_calls(1)
    quick = [asyncio.create_task(batcher.submit(item)) for item in (("b", 2), ("c", 3))]  # in one turn of the loop
    await gates.wait_calls(2)
    gates.release(1)
    assert await asyncio.wait_for(asyncio.gather(*quick), 10) == [2, 3]
    assert not slow[0].done()
    gates.release(0)
    assert await asyncio.wait_for(slow[0], 10) == 1
    assert gates.batches == [[("a", 1)], [("b", 2), ("c", 3)]]


async def test_no_more_than_in_flight_batches_are_out_at_once() -> None:
    gates = Gates()
    batcher: Batcher[tuple[str, int], int] = Batcher(gates, in_flight=2)
    first = await _submitted(batcher, [("a", 1)])
    await gates.wait_calls(1)
    second = await _submitted(batcher, [("b", 2)])
    await gates.wait_calls(2)
    third = [asyncio.create_task(batcher.submit(item)) for item in (("c", 3), ("d", 4))]
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(gates.batches) == 2  # both slots taken: the others wait
    gates.release(0)
    await gates.wait_calls(3)
    assert gates.batches[2] == [("c", 3), ("d", 4)]
    gates.release(1)
    gates.release(2)
    assert await asyncio.wait_for(asyncio.gather(*first, *second, *third), 10) == [1, 2, 3, 4]


async def test_a_key_in_flight_waits_for_its_batch_while_other_keys_go_ahead() -> None:
    gates = Gates()
    batcher: Batcher[tuple[str, int], int] = Batcher(gates, in_flight=4, key=lambda item: item[0])
    await _submitted(batcher, [("a", 1)])
    await gates.wait_calls(1)
    later = [asyncio.create_task(batcher.submit(item)) for item in (("a", 2), ("b", 3), ("a", 4), ("c", 5))]
    await gates.wait_calls(2)
    for _ in range(20):
        await asyncio.sleep(0)
    # "a" is out: its later items wait, in their order; "b" and "c" leave together at once.
    assert gates.batches == [[("a", 1)], [("b", 3), ("c", 5)]]
    gates.release(0)
    await gates.wait_calls(3)
    assert gates.batches[2] == [("a", 2), ("a", 4)]
    gates.release(1)
    gates.release(2)
    assert await asyncio.wait_for(asyncio.gather(*later), 10) == [2, 3, 4, 5]


def test_in_flight_must_be_positive() -> None:
    async def echo(items: list[int]) -> list[int | BaseException]:
        return list(items)

    with pytest.raises(ValueError, match="in_flight"):
        Batcher(echo, in_flight=0)


class Clocked:
    """A flush that answers at once and records each batch with the loop's time it left at."""

    def __init__(self) -> None:
        self.batches: list[tuple[float, list[int]]] = []

    async def __call__(self, items: list[int]) -> list[int | BaseException]:
        self.batches.append((asyncio.get_running_loop().time(), items))
        return [i * 10 for i in items]


async def test_with_an_interval_an_idle_batcher_still_sends_at_once() -> None:
    clocked = Clocked()
    batcher: Batcher[int, int] = Batcher(clocked, interval_s=3600)
    assert await asyncio.wait_for(batcher.submit(7), 10) == 70  # an hour's wait would time out


async def test_with_an_interval_what_arrives_soon_after_a_batch_waits_and_leaves_together() -> None:
    interval = 1.0
    clocked = Clocked()
    batcher: Batcher[int, int] = Batcher(clocked, interval_s=interval)
    assert await asyncio.wait_for(batcher.submit(1), 10) == 10
    second = asyncio.create_task(batcher.submit(2))
    for _ in range(20):
        await asyncio.sleep(0)  # turns of the loop in which, without an interval, 2 would leave alone
    third = asyncio.create_task(batcher.submit(3))
    assert await asyncio.wait_for(asyncio.gather(second, third), 10) == [20, 30]
    assert [items for _, items in clocked.batches] == [[1], [2, 3]]
    (first_at, _), (next_at, _) = clocked.batches
    assert next_at - first_at >= interval * 0.9  # the interval's wait, counted from the first batch's turn


async def test_with_an_interval_and_a_key_one_keys_items_alone_do_not_wait() -> None:
    clocked = Clocked()
    batcher: Batcher[int, int] = Batcher(clocked, interval_s=3600, key=lambda _: "one conversation")
    for i in range(5):  # one sender, each item submitted once the one before was answered
        assert await asyncio.wait_for(batcher.submit(i), 10) == i * 10  # an hour's wait would time out
    assert [items for _, items in clocked.batches] == [[0], [1], [2], [3], [4]]


async def test_with_an_interval_and_a_key_a_batch_leaves_once_the_keys_of_the_one_before_are_back() -> None:
    clocked = Clocked()
    batcher: Batcher[int, int] = Batcher(clocked, interval_s=3600, key=lambda i: i % 2)
    assert await asyncio.wait_for(batcher.submit(1), 10) == 10
    second = asyncio.create_task(batcher.submit(2))  # another key than the batch before: waits for key 1
    for _ in range(20):
        await asyncio.sleep(0)
    assert clocked.batches[1:] == []
    third = asyncio.create_task(batcher.submit(3))  # key 1 is back: the batch leaves, an hour early
    assert await asyncio.wait_for(asyncio.gather(second, third), 10) == [20, 30]
    assert [items for _, items in clocked.batches] == [[1], [2, 3]]


async def test_with_an_interval_and_a_key_a_key_that_does_not_come_back_costs_the_interval() -> None:
    interval = 1.0
    clocked = Clocked()
    batcher: Batcher[int, int] = Batcher(clocked, interval_s=interval, key=lambda i: i % 2)
    assert await asyncio.wait_for(batcher.submit(1), 10) == 10
    assert await asyncio.wait_for(batcher.submit(2), 10) == 20  # key 1 never comes back
    (first_at, _), (next_at, _) = clocked.batches
    assert next_at - first_at >= interval * 0.9


async def test_with_an_interval_and_more_flights_a_batch_that_does_not_come_back_holds_its_slot_not_the_turns() -> None:
    interval = 0.2
    gates = Gates()
    batcher: Batcher[tuple[str, int], int] = Batcher(gates, in_flight=2, interval_s=interval, key=lambda item: item[0])
    loop = asyncio.get_running_loop()
    stuck = await _submitted(batcher, [("a", 1)])  # a transaction waiting on a lock, say
    await gates.wait_calls(1)
    first_at = loop.time()
    later = await _submitted(batcher, [("b", 2)])
    await gates.wait_calls(2)  # "a" did not come back: "b" waited out the interval, then left in the other slot
    assert loop.time() - first_at >= interval * 0.9
    later += await _submitted(batcher, [("a", 3)])
    for _ in range(20):
        await asyncio.sleep(0)
    assert gates.batches == [[("a", 1)], [("b", 2)]]
    gates.release(1)
    assert await asyncio.wait_for(later[0], 10) == 2
    assert not stuck[0].done() and not later[1].done()  # "a" stays in order behind its batch
    gates.release(0)
    await gates.wait_calls(3)
    assert gates.batches[2] == [("a", 3)]
    gates.release(2)
    assert await asyncio.wait_for(asyncio.gather(stuck[0], later[1]), 10) == [1, 3]


async def test_with_an_interval_and_more_flights_the_turns_still_come_one_interval_apart() -> None:
    interval = 0.2
    gates = Gates()
    batcher: Batcher[tuple[str, int], int] = Batcher(gates, in_flight=4, interval_s=interval)
    loop = asyncio.get_running_loop()
    first = await _submitted(batcher, [("a", 1)])
    await gates.wait_calls(1)
    first_at = loop.time()
    rest = await _submitted(batcher, [("b", 2), ("c", 3)])
    for _ in range(20):
        await asyncio.sleep(0)
    assert len(gates.batches) == 1  # a slot is free, but the next turn is an interval away
    await gates.wait_calls(2)
    assert loop.time() - first_at >= interval * 0.9
    assert gates.batches == [[("a", 1)], [("b", 2), ("c", 3)]]
    gates.release(0)
    gates.release(1)
    assert await asyncio.wait_for(asyncio.gather(*first, *rest), 10) == [1, 2, 3]


def test_interval_must_not_be_negative() -> None:
    with pytest.raises(ValueError, match="interval_s"):
        Batcher(Clocked(), interval_s=-1)
