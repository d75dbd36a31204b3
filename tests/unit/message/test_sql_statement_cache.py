"""The group commit's statements come from SQLAlchemy's compiled cache, whatever the batch size: under load
batches of every size from 1 to 64 follow each other, and a statement whose shape follows the size is
compiled again for each (that compilation was a fifth of the message path's CPU in a profile)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Sequence
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlalchemy.engine.default import CACHE_MISS
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common.clock import utcnow
from services.common.db import create_engine, metadata, statement_engines
from services.common.ids import new_id
from services.message.adapters.sql import SqlMessageStore
from services.message.domain import Message
from services.message.ports import Draft, OutboxRecord


@pytest.fixture
async def engine(tmp_path: Path) -> AsyncIterator[AsyncEngine]:
    engine = create_engine(f"sqlite+aiosqlite:///{tmp_path / 'messages.db'}")
    async with engine.begin() as conn:
        await conn.run_sync(metadata.create_all)
    yield engine
    await engine.dispose()


async def test_batches_of_forty_sizes_compile_a_handful_of_statements(engine: AsyncEngine) -> None:
    compiled: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        executed.append(statement)
        if getattr(context, "cache_hit", None) == CACHE_MISS:
            compiled.append(statement)

    executed: list[str] = []
    for statements in statement_engines(engine):  # the group commit runs on SQLite's synchronous twin
        event.listen(statements, "before_cursor_execute", note)

    store = SqlMessageStore(engine)
    published = Publisher()
    store.publish_on_commit(published)
    conversations = [new_id() for _ in range(64)]
    for round_ in range(1, 41):
        drafts = [Draft(cid, text_from(cid)) for cid in conversations[: 1 + (round_ * 7) % 64]]
        await asyncio.gather(*(store.append(draft) for draft in drafts))

    assert len(published.rows) == sum(1 + (r * 7) % 64 for r in range(1, 41))
    assert sum("INSERT INTO message_messages" in statement for statement in executed) >= 40
    # One shape per statement, and for the seq check one per power of two up to 64: at most a dozen.
    assert len(compiled) <= 12, "\n".join(s.split("\n")[0][:100] for s in compiled)


class Publisher:
    lease_token, lease_s = "publisher", 30.0

    def __init__(self) -> None:
        self.rows: list[OutboxRecord] = []

    def committed(self, rows: Sequence[OutboxRecord], *, lease_token: str, swept: bool) -> None:
        self.rows += rows


def text_from(conversation_id: str) -> Callable[[int], Message]:
    def build(seq: int) -> Message:
        return Message(
            new_id(), conversation_id, seq, "alice", "phone", new_id(), {"type": "text", "text": "hi"}, utcnow()
        )

    return build
