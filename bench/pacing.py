"""Open-loop rate pacing: events are due on a fixed schedule whatever the server's answers do.

A closed loop (send, wait for the answer, send again) slows down with the server and hides its
stalls ("coordinated omission"); here event ``k`` is due at ``start + k / rate``, and when the
client itself falls behind it catches up in bounded bursts and counts what it had to give up.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable


class Pacer:
    """The schedule of one stream of events at ``rate`` per second from ``start``.

    ``due(now)`` says how many events to fire now. When more than ``max_lag_s`` worth of events are
    overdue (the client could not keep up), the oldest are skipped and counted in ``skipped``: the
    offered rate then honestly shows what was attempted.
    """

    def __init__(self, rate: float, *, start: float, max_lag_s: float = 1.0) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = rate
        self.start = start
        self.max_lag_s = max_lag_s
        self.fired = 0
        self.skipped = 0

    def _at(self, index: int) -> float:
        return self.start + index / self.rate

    def next_at(self) -> float:
        """When the next event is due."""
        return self._at(self.fired + self.skipped)

    def due(self, now: float) -> int:
        """How many events are due at ``now``; they count as fired."""
        done = self.fired + self.skipped
        if now < self._at(done):
            return 0
        # Events 0..due_through-1 are due. Event `done` is due by the test above, even where rounding puts
        # (now - start) * rate a hair below `done`: without the max, nothing would fire and next_at would stay
        # in the past, and a caller that fires until next_at is ahead of now would spin forever.
        due_through = max(int((now - self.start) * self.rate) + 1, done + 1)
        overdue = due_through - done
        allowed = max(1, int(self.max_lag_s * self.rate))
        if overdue > allowed:
            self.skipped += overdue - allowed
            overdue = allowed
        self.fired += overdue
        return overdue


async def run_paced(
    pacer: Pacer,
    fire: Callable[[int], Awaitable[None]],
    *,
    until: float,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
) -> None:
    """Fire ``fire(n)`` (n events due at once) on ``pacer``'s schedule until the clock reaches ``until``."""
    while True:
        now = clock()
        if now >= until:
            return
        count = pacer.due(now)
        if count:
            await fire(count)
        await sleep(max(0.0, min(pacer.next_at(), until) - clock()))
