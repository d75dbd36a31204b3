"""Revision 0002 on SQLite, MariaDB and PostgreSQL: a 0001 database gains the outbox's trace context column,
keeps the rows waiting in its outbox, and the store then carries a send's trace context to the relay."""

from __future__ import annotations

from pathlib import Path

import pytest
from sqlalchemy import inspect

from services.common.clock import utcnow
from services.common.db import create_all, create_engine
from services.common.ids import new_id
from services.message.adapters.sql import SqlMessageStore, outbox_rows
from services.message.domain import Message
from services.message.ports import Draft
from services.migrate import BASELINE, current_revision, downgrade, head_revision, upgrade
from tests.integration.test_sql_support import SQL_BACKENDS, empty_database

each_backend = pytest.mark.parametrize("backend", SQL_BACKENDS)


def _message(seq: int = 1) -> Message:
    return Message(new_id(), new_id(), seq, new_id(), "d1", new_id(), {"type": "text", "text": "hi"}, utcnow())


async def _outbox_columns(engine: object) -> set[str]:
    async with engine.connect() as conn:  # type: ignore[attr-defined]
        return await conn.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("message_outbox")})


@each_backend
async def test_upgrading_a_0001_database_adds_the_trace_context_and_keeps_waiting_outbox_rows(
    backend: str, tmp_path: Path
) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await upgrade(engine, BASELINE)
            assert "trace_context" not in await _outbox_columns(engine)
            async with engine.begin() as conn:
                now = utcnow()
                await conn.execute(
                    outbox_rows.insert().values(
                        conversation_id="c-old", payload=b"{}", created_at=now, leased_until=now
                    )
                )

            await upgrade(engine)

            assert await current_revision(engine) == head_revision()
            assert "trace_context" in await _outbox_columns(engine)
            store = SqlMessageStore(engine)
            [old] = await store.claim_outbox(limit=10, lease_s=30)
            assert (old.conversation_id, old.trace_context) == ("c-old", None)

            context = '{"traceparent":"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}'
            event = _message()
            await store.append(Draft(event.conversation_id, lambda seq: event, trace_context=context))
            [new] = await store.claim_outbox(limit=10, lease_s=30)
            assert new.trace_context == context

            await downgrade(engine, BASELINE)
            assert "trace_context" not in await _outbox_columns(engine)
        finally:
            await engine.dispose()


@each_backend
async def test_a_create_all_database_adopted_as_0001_upgrades_without_adding_the_column_twice(
    backend: str, tmp_path: Path
) -> None:
    with empty_database(backend, tmp_path) as url:
        engine = create_engine(url)
        try:
            await create_all(engine)

            await upgrade(engine)

            assert await current_revision(engine) == head_revision()
            assert "trace_context" in await _outbox_columns(engine)
        finally:
            await engine.dispose()
