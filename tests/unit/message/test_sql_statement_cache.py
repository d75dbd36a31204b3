"""The group commit compiles each of its statements once per shape, whatever the batch size: under load
batches of every size from 1 to 64 follow each other, and a statement compiled again for each (SQLAlchemy's
compiled cache missed multi-row inserts) was a fifth of the message path's CPU in a profile. Its statements
run prepared on the driver's cursor (``services.common.prepared``), compiled on the first batch of a size."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from sqlalchemy import event
from sqlalchemy.engine.default import CACHE_MISS
from sqlalchemy.ext.asyncio import AsyncEngine

from services.common import telemetry
from services.common.clock import utcnow
from services.common.db import statement_engines
from services.common.ids import new_id
from services.common.prepared import Prepared
from services.message.adapters import sql
from services.message.adapters.sql import SqlMessageStore
from services.message.domain import Message
from services.message.ports import Draft, OutboxRecord


async def test_batches_of_forty_sizes_compile_each_shape_once(
    engine: AsyncEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    prepared: list[str] = []

    class Counted(Prepared):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            prepared.append(self.sql)

    monkeypatch.setattr(sql, "Prepared", Counted)
    through_core: list[str] = []

    def note(conn: Any, cursor: Any, statement: str, parameters: Any, context: Any, executemany: bool) -> None:
        if getattr(context, "cache_hit", None) == CACHE_MISS and "message_" in statement:
            through_core.append(statement)

    for statements in statement_engines(engine):  # the group commit runs on SQLite's synchronous twin
        event.listen(statements, "before_cursor_execute", note)

    store = SqlMessageStore(engine)
    published = Publisher()
    store.publish_on_commit(published)
    conversations = [new_id() for _ in range(64)]
    sizes = [1 + (round_ * 7) % 64 for round_ in range(1, 41)]

    async def forty_batches() -> None:
        for size in sizes:
            await asyncio.gather(*(store.append(Draft(cid, text_from(cid))) for cid in conversations[:size]))

    await forty_batches()
    first = len(prepared)
    # The three fixed statements, the seq check per power of two up to 64, the outbox insert per batch size.
    assert 3 < first <= 3 + 7 + len(set(sizes)), "\n".join(s.split("\n")[0][:100] for s in prepared)

    await forty_batches()
    assert len(prepared) == first, "the same batch sizes compiled statements again"
    assert through_core == [], "a group commit statement went through Core's compiled cache"
    assert len(published.rows) == 2 * sum(sizes)
    assert [r.conversation_id for r in published.rows[: sizes[0]]] == conversations[: sizes[0]]


class Publisher:
    lease_token, lease_s, keeps_rows = "publisher", 30.0, True

    def __init__(self) -> None:
        self.rows: list[OutboxRecord] = []

    def committed(self, rows: Sequence[OutboxRecord], *, lease_token: str, swept: bool) -> None:
        self.rows += rows

    async def publish_committed(self, events: Sequence[OutboxRecord]) -> None:
        raise AssertionError("a publisher that keeps rows is handed rows, not events")


def text_from(conversation_id: str) -> Callable[[int], Message]:
    def build(seq: int) -> Message:
        return Message(
            new_id(), conversation_id, seq, "alice", "phone", new_id(), {"type": "text", "text": "hi"}, utcnow()
        )

    return build


async def test_a_group_commit_is_one_span_of_the_senders_trace(engine: AsyncEngine) -> None:
    """Its statements run on the driver's cursor, unseen by the SQLAlchemy instrumentation: the commit is
    traced as a whole, in the trace of the send."""
    exporter = InMemorySpanExporter()
    telemetry.reset()
    telemetry.configure("message-test", exporter=exporter)
    try:
        store = SqlMessageStore(engine)
        cid = new_id()
        with telemetry.tracer("test").start_as_current_span("send"):
            await store.append(Draft(cid, text_from(cid)))
        spans = {span.name: span for span in exporter.get_finished_spans()}
    finally:
        telemetry.reset()
    send, commit = spans["send"], spans["message commit"]
    assert commit.parent is not None and commit.parent.span_id == send.context.span_id
    assert commit.attributes is not None and commit.attributes["db.system"] == "sqlite"
    assert commit.attributes["courier.messages"] == 1
