"""Micro-batching of calls to another process: whatever callers submit while a batch is in flight
leaves together in a next one.

Idle, a submission leaves at once (a batch of one, no added wait); under load the batches grow by
themselves to what arrived during one round trip, so the cost per item of the round trip falls as
the rate rises. By default one batch is in flight at a time per ``Batcher``: items leave in the
order they were submitted, and a caller that awaits its own item before submitting the next keeps
its order.

With ``in_flight=n`` up to n batches are out at once, each taken when a slot frees up, so one slow
round trip no longer holds back everything that arrived behind it. Batches may then complete in
any order; with a ``key``, the items of one key are never in two batches at once, so they are still
flushed in their order, one batch after the other, while other keys use the other slots.

With ``interval_s`` batches leave at most that often: a batch due sooner after the one before waits
out the rest of the interval, and what arrives meanwhile joins it. A flush whose cost is mostly fixed
(a transaction's begin and commit) then runs fewer times under load, for at most ``interval_s`` of
added wait; idle, a submission still leaves at once, as the previous batch left long before. With a
``key``, the wait ends early once every key of the batch before has an item queued again: its caller,
most often one that submits its next item when the last was answered, is back. One key's items alone
therefore leave at once, one batch after the other, and under full load a batch leaves as soon as its
callers are all back instead of holding each to one item per interval. With ``in_flight=n`` as well, the
senders take their turns one after the other, each ``interval_s`` after the one before (or sooner, as
above), and a batch that does not come back (a transaction waiting on a lock) holds a slot, not the turns.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]
Queued = tuple[T, "asyncio.Future[R]"]


class Batcher(Generic[T, R]):
    """``submit(item)`` resolves to ``flush``'s answer for that item. ``flush`` gets up to
    ``max_batch`` items and answers one result per item, in order; a result that is an exception
    is raised to that item's caller alone. When ``flush`` itself raises, every caller of that batch
    gets the exception."""

    def __init__(
        self,
        flush: Flush[T, R],
        *,
        max_batch: int = 256,
        in_flight: int = 1,
        key: Callable[[T], Hashable] | None = None,
        interval_s: float = 0.0,
    ) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        if in_flight < 1:
            raise ValueError("in_flight must be at least 1")
        if interval_s < 0:
            raise ValueError("interval_s must not be negative")
        self._flush = flush
        self._max_batch = max_batch
        self._in_flight = in_flight
        self._key = key
        self._queue: list[Queued[T, R]] = []
        self._senders: set[asyncio.Task[None]] = set()
        self._running = 0  # senders started and not ended
        self._starting = False  # a sender was started and has not taken its first batch yet
        self._busy: set[Hashable] = set()  # the keys of the batches in flight
        self._interval_s = interval_s
        self._next_at = 0.0  # the loop's time of the next batch's turn to leave (interval_s)
        self._last_keys: set[Hashable] = set()  # the keys of the batch taken last (interval_s with a key)
        self._awaited: set[Hashable] = set()  # of those, the keys a waiting batch waits for to be queued again
        self._back = asyncio.Event()  # set when the wait is over: its turn came, or every awaited key is back
        self._turn = asyncio.Lock()  # held by the sender waiting for the next turn (interval_s)
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._awaited and self._key is not None:
            self._awaited.discard(self._key(item))
            if not self._awaited:
                self._back.set()
        if not self._starting and self._running < self._in_flight:
            # Started, not run: what is submitted before it runs (the same turn of the loop) joins its batch.
            self._starting = True
            self._running += 1
            sender = asyncio.create_task(self._send_all())
            self._senders.add(sender)
            sender.add_done_callback(self._senders.discard)
        return await done

    async def _send_all(self) -> None:
        first = True
        try:
            while batch := await self._next_batch():
                if first:
                    self._starting, first = False, False
                keys = self._hold(batch)
                try:
                    await self._send(batch)
                finally:
                    self._busy.difference_update(keys)
        finally:
            if first:
                self._starting = False
            # Counted out as it ends, not in a done callback that runs later: a caller woken by its answer
            # may submit again before that callback and must find a free slot.
            self._running -= 1

    async def _next_batch(self) -> list[Queued[T, R]]:
        """The next batch to leave; with ``interval_s``, once its turn has come (the turns of the senders
        are taken in order, each ``interval_s`` after the one before) or, with a key, once every key of the
        batch before has an item queued again."""
        if not self._interval_s:
            return self._take()
        async with self._turn:
            return await self._next_turn()

    async def _next_turn(self) -> list[Queued[T, R]]:
        loop = asyncio.get_running_loop()
        now = loop.time()
        if self._queue and self._next_at > now:
            if self._key is not None:
                self._awaited = self._last_keys - {self._key(item) for item, _ in self._queue}
            if self._key is None or self._awaited:
                timer = loop.call_later(self._next_at - now, self._back.set)
                try:
                    await self._back.wait()
                finally:
                    timer.cancel()
                    self._back.clear()
                    self._awaited = set()
        batch = self._take()
        if batch:  # a turn that found only keys in flight leaves nothing and takes no interval
            self._next_at = loop.time() + self._interval_s
            if self._key is not None:
                self._last_keys = {self._key(item) for item, _ in batch}
        return batch

    def _take(self) -> list[Queued[T, R]]:
        """The oldest items that may leave now: the first ``max_batch``, or with a key, the first
        ``max_batch`` whose key is in no batch in flight (the rest keep their place)."""
        if self._key is None:
            batch = self._queue[: self._max_batch]
            del self._queue[: self._max_batch]
            return batch
        batch, rest = [], []
        for queued in self._queue:
            if len(batch) < self._max_batch and self._key(queued[0]) not in self._busy:
                batch.append(queued)
            else:
                rest.append(queued)
        self._queue = rest
        return batch

    def _hold(self, batch: list[Queued[T, R]]) -> set[Hashable]:
        if self._key is None:
            return set()
        keys = {self._key(item) for item, _ in batch}
        self._busy.update(keys)
        return keys

    async def _send(self, batch: list[Queued[T, R]]) -> None:
        self.batches += 1
        self.items += len(batch)
        try:
            results = await self._flush([item for item, _ in batch])
            if len(results) != len(batch):
                raise RuntimeError(f"flush answered {len(results)} results for {len(batch)} items")
        except asyncio.CancelledError:
            _fail(batch, asyncio.CancelledError())
            raise
        except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
            _fail(batch, exc)
            return
        for (_, done), result in zip(batch, results, strict=True):
            if done.done():
                continue  # its caller gave up waiting
            if isinstance(result, BaseException):
                done.set_exception(result)
            else:
                done.set_result(result)

    async def close(self) -> None:
        """Stop sending; callers still waiting get ``CancelledError``."""
        senders, self._senders = list(self._senders), set()
        for sender in senders:
            sender.cancel()
        for sender in senders:
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        self._starting = False
        self._busy.clear()
        queued, self._queue = self._queue, []
        _fail(queued, asyncio.CancelledError())


def _fail(batch: list[Queued[T, R]], exc: BaseException) -> None:
    for _, done in batch:
        if done.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(exc)
