"""The message cache contract (cache_contract.py) over the in-memory adapters."""

from __future__ import annotations

import pytest

from services.message.adapters.memory import MemoryInbox, MemoryTimeline
from tests.unit.message.cache_contract import *  # noqa: F403 - the contract's tests, run over the fixtures below
from tests.unit.message.cache_contract import TIMELINE_KEEP, LoseCache


@pytest.fixture
def inbox() -> MemoryInbox:
    return MemoryInbox()


@pytest.fixture
def timeline() -> MemoryTimeline:
    return MemoryTimeline(keep=TIMELINE_KEEP)


@pytest.fixture
def lose_cache(inbox: MemoryInbox) -> LoseCache:
    async def lose() -> None:
        inbox.forget()

    return lose
