"""In-memory wiring of the message use cases for unit tests (no mocks of our own code)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.db import create_all, create_engine
from services.common.errors import NotFound
from services.common.ids import new_id
from services.common.push import Push
from services.message import app
from services.message.adapters.memory import (
    MemoryEventLog,
    MemoryInbox,
    MemoryMessageStore,
    MemoryTimeline,
)
from services.message.ports import Conversation, Record
from services.message.service import MessageService


class Conversations:
    def __init__(self) -> None:
        self.by_id: dict[str, Conversation] = {}

    def add(self, *members: str, large: bool = False, admins: Collection[str] = ()) -> str:
        cid = new_id()
        roles = {m: ("admin" if m in admins else "member") for m in members}
        self.by_id[cid] = Conversation(cid, roles, large)
        return cid

    async def get(self, conversation_id: str) -> Conversation | None:
        return self.by_id.get(conversation_id)

    async def conversation_ids(self, user_id: str) -> list[str]:
        return [cid for cid, c in self.by_id.items() if user_id in c.roles]


class Files:
    def __init__(self) -> None:
        self.files: dict[str, dict[str, Any]] = {}
        self.attached: list[tuple[str, str, str]] = []

    async def attach(self, file_id: str, conversation_id: str, user_id: str) -> dict[str, Any]:
        if file_id not in self.files:
            raise NotFound("no such file")
        self.attached.append((file_id, conversation_id, user_id))
        return self.files[file_id]


@dataclass
class Pushed:
    user_ids: list[str]
    frame: Mapping[str, Any]
    tracked: bool
    skip_device: tuple[str, str] | None


@dataclass
class RecordingPusher:
    pushed: list[Pushed] = field(default_factory=list)

    async def push(
        self,
        user_ids: Collection[str],
        frame: Mapping[str, Any],
        *,
        tracked: bool = False,
        skip_device: tuple[str, str] | None = None,
    ) -> None:
        self.pushed.append(Pushed(list(user_ids), frame, tracked, skip_device))

    async def push_many(self, pushes: Sequence[Push]) -> None:
        for p in pushes:
            await self.push(p.user_ids, p.frame, tracked=p.tracked, skip_device=p.skip_device)

    async def push_frames(self, user_ids: Collection[str], frames: Sequence[Mapping[str, Any]]) -> None:
        for frame in frames:
            await self.push(user_ids, frame)


@dataclass
class World:
    store: MemoryMessageStore
    conversations: Conversations
    files: Files
    pusher: RecordingPusher
    service: MessageService
    log: MemoryEventLog

    @property
    def deps(self) -> app.MessageDeps:
        return self.service.deps

    async def send(
        self, cid: str, sender: str, text: str = "hi", *, client_msg_id: str | None = None, device: str = "d1"
    ) -> app.Sent:
        return await self.service.send(
            app.SendMessage(cid, sender, device, client_msg_id or new_id(), {"type": "text", "text": text})
        )


@pytest.fixture
def world() -> World:
    store, conversations, files = MemoryMessageStore(), Conversations(), Files()
    pusher = RecordingPusher()
    deps = app.MessageDeps(
        store=store,
        conversations=conversations,
        files=files,
        locks=app.ConversationLocks(),
        limits=app.Limits(max_text_length=100, recall_window_s=120, edit_window_s=3600),
    )
    service = MessageService(deps, MemoryInbox(), MemoryTimeline(), pusher)
    return World(store, conversations, files, pusher, service, MemoryEventLog())


class SwitchableLog(MemoryEventLog):
    """An event log that refuses every publish while ``down``."""

    down = False

    async def publish(self, records: Sequence[Record]) -> None:
        if self.down:
            raise ConnectionError("broker down")
        await super().publish(records)


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    """A SQLite database with Courier's tables, for the SQL store's tests."""
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'messages.db'}")
    await create_all(engine)
    try:
        yield engine
    finally:
        await engine.dispose()
