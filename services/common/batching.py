"""Micro-batching of calls to another process: whatever callers submit while one batch is in
flight leaves together in the next one.

Idle, a submission leaves at once (a batch of one, no added wait); under load the batches grow by
themselves to what arrived during one round trip, so the cost per item of the round trip falls as
the rate rises. One batch is in flight at a time per ``Batcher``: items leave in the order they
were submitted, and a caller that awaits its own item before submitting the next keeps its order.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Sequence
from typing import Generic, TypeVar

T = TypeVar("T")
R = TypeVar("R")

Flush = Callable[[list[T]], Awaitable[Sequence[R | BaseException]]]


class Batcher(Generic[T, R]):
    """``submit(item)`` resolves to ``flush``'s answer for that item. ``flush`` gets up to
    ``max_batch`` items and answers one result per item, in order; a result that is an exception
    is raised to that item's caller alone. When ``flush`` itself raises, every caller of that batch
    gets the exception."""

    def __init__(self, flush: Flush[T, R], *, max_batch: int = 256) -> None:
        if max_batch < 1:
            raise ValueError("max_batch must be at least 1")
        self._flush = flush
        self._max_batch = max_batch
        self._queue: list[tuple[T, asyncio.Future[R]]] = []
        self._sender: asyncio.Task[None] | None = None
        self.batches = 0
        self.items = 0

    async def submit(self, item: T) -> R:
        done: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, done))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all())
        return await done

    async def _send_all(self) -> None:
        try:
            while self._queue:
                batch = self._queue[: self._max_batch]
                del self._queue[: self._max_batch]
                await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[tuple[T, asyncio.Future[R]]]) -> None:
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
        sender, self._sender = self._sender, None
        if sender is not None:
            sender.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await sender
        queued, self._queue = self._queue, []
        _fail(queued, asyncio.CancelledError())


def _fail(batch: list[tuple[T, asyncio.Future[R]]], exc: BaseException) -> None:
    for _, done in batch:
        if done.done():
            continue
        if isinstance(exc, asyncio.CancelledError):
            done.cancel()
        else:
            done.set_exception(exc)
