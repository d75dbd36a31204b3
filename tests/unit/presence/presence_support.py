"""Helpers of the presence tests: a settable clock, a recording pusher, a sleep that stops the loop."""

from __future__ import annotations

import asyncio
from collections.abc import Collection, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.ids import new_id
from services.common.push import Frame

T0 = 1_790_000_000.0  # 2026-09-21T14:13:20Z


def uid(name: str) -> str:
    return f"{name}-{new_id()}"


class FakeClock:
    def __init__(self, now: float = T0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class RecordingPusher:
    pushes: list[tuple[frozenset[str], dict[str, Any]]] = field(default_factory=list)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Frame,
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        assert tracked is False, "presence frames are transient"
        self.pushes.append((frozenset(user_ids), dict(frame)))

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Frame]) -> None:
        for frame in frames:
            await self.push(user_ids, frame)


class StoppingSleep:
    """Records each pause of a loop and cancels the loop at the ``stop_after``-th one."""

    def __init__(self, stop_after: int, clock: FakeClock | None = None) -> None:
        self.stop_after = stop_after
        self.clock = clock
        self.pauses: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.pauses.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        if len(self.pauses) >= self.stop_after:
            raise asyncio.CancelledError
