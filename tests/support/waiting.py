"""Waiting on a condition in async tests: polled often, with a generous deadline, never a fixed sleep."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def wait_for(condition: Callable[[], bool], what: str, deadline_s: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    until = loop.time() + deadline_s
    while not condition():
        if loop.time() > until:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)
