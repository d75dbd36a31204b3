"""Fixtures of the presence tests: the clock, the pusher, and a store of every adapter."""

from __future__ import annotations

import pytest
from presence_support import FakeClock, RecordingPusher

from services.presence.adapters.memory import MemoryPresenceStore
from services.presence.ports import PresenceStore


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def pusher() -> RecordingPusher:
    return RecordingPusher()


# Memory only here; tests/integration/test_redis_presence.py runs the same contract over Redis too.
@pytest.fixture(params=["memory"])
def store(request: pytest.FixtureRequest) -> PresenceStore:
    assert request.param == "memory"
    return MemoryPresenceStore()
