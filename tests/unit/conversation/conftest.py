"""Fixtures of the conversation tests: a store of either adapter, and the recording fakes."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from conversation_support import FakeActivity, FakeUsers, RecordingPusher

from services.common.db import create_all, create_engine, sessionmaker
from services.conversation.adapters.memory import MemoryConversationStore
from services.conversation.adapters.sql import SqlConversationStore
from services.conversation.ports import ConversationStore


@pytest.fixture(params=["memory", "sql"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ConversationStore]:
    if request.param == "memory":
        yield MemoryConversationStore()
        return
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'conversation.db'}")
    await create_all(engine)
    try:
        yield SqlConversationStore(sessionmaker(engine))
    finally:
        await engine.dispose()


@pytest.fixture
def users() -> FakeUsers:
    return FakeUsers()


@pytest.fixture
def activity() -> FakeActivity:
    return FakeActivity()


@pytest.fixture
def pusher() -> RecordingPusher:
    return RecordingPusher()
