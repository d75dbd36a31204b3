"""History and cursor queries are served by indexes: EXPLAIN, on MariaDB and PostgreSQL, of the exact statements
the SQL adapters send (captured from the engine), over enough rows that a full scan would be the planner's
choice if no index fitted."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import delete, event, insert, text
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from services.common.clock import utcnow
from services.common.db import create_engine, sessionmaker, statement_engines
from services.conversation.adapters.sql import SqlConversationStore, conversations_table, members_table
from services.identity.adapters.sql import SqlSessionStore, rotated_tokens_table, sessions_table, users_table
from services.message.adapters.sql import SqlMessageStore, messages, read_cursors
from tests.integration.test_sql_support import SERVER_BACKENDS, migrated_database, run_async

CONVERSATIONS = 60
MESSAGES_PER_CONVERSATION = 80
USERS = 40
DEVICES_PER_USER = 50
ROTATIONS_PER_SESSION = 3


def conversation_id(n: int) -> str:
    return f"c{n:04d}"


def user_id(n: int) -> str:
    return f"u{n:04d}"


async def populate(url: str) -> None:
    """Thousands of messages, cursors and memberships, then fresh planner statistics."""
    engine = create_engine(url)
    now = utcnow()
    try:
        async with engine.begin() as conn:
            await conn.execute(
                insert(conversations_table),
                [
                    {
                        "conversation_id": conversation_id(c),
                        "type": "group",
                        "title": None,
                        "direct_key": None,
                        "large": False,
                        "created_at": now,
                    }
                    for c in range(CONVERSATIONS)
                ],
            )
            await conn.execute(
                insert(members_table),
                [
                    {"conversation_id": conversation_id(c), "user_id": user_id(u), "role": "member", "ordinal": u}
                    for c in range(CONVERSATIONS)
                    for u in range(USERS)
                ],
            )
            await conn.execute(
                insert(messages),
                [
                    {
                        "message_id": f"m{c:04d}{seq:05d}",
                        "conversation_id": conversation_id(c),
                        "seq": seq,
                        "sender_id": user_id(seq % USERS),
                        "sender_device_id": "phone",
                        "client_msg_id": f"cm{c:04d}{seq:05d}",
                        "content": '{"type":"text","text":"hello"}',
                        "created_at": now + timedelta(milliseconds=seq),
                        "recalled": False,
                        "edited": False,
                    }
                    for c in range(CONVERSATIONS)
                    for seq in range(1, MESSAGES_PER_CONVERSATION + 1)
                ],
            )
            await conn.execute(
                insert(read_cursors),
                [
                    {"conversation_id": conversation_id(c), "user_id": user_id(u), "read_seq": u}
                    for c in range(CONVERSATIONS)
                    for u in range(USERS)
                ],
            )
            await populate_identity(conn, now)
        async with engine.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execute(text("ANALYZE"))
            else:
                tables = (
                    "message_messages, message_read_cursors, conversation_members, conversation_conversations, "
                    "identity_users, identity_sessions, identity_rotated_tokens"
                )
                await conn.exec_driver_sql(f"ANALYZE TABLE {tables}")
            await conn.commit()
    finally:
        await engine.dispose()


async def populate_identity(conn: AsyncConnection, now: datetime) -> None:
    """Every user signed in on many devices, each session refreshed a few times: logins must not scan them."""
    await conn.execute(
        insert(users_table),
        [
            {
                "user_id": user_id(u),
                "username": f"user{u}",
                "display_name": f"User {u}",
                "password_hash": "x",
                "created_at": now,
            }
            for u in range(USERS)
        ],
    )
    sessions = [(user_id(u), f"device{d}", f"s{u:04d}{d:03d}") for u in range(USERS) for d in range(DEVICES_PER_USER)]
    await conn.execute(
        insert(sessions_table),
        [
            {
                "session_id": session_id,
                "user_id": user,
                "device_id": device,
                "device_name": None,
                "refresh_hash": f"h{session_id}",
                "refresh_expires_at": now + timedelta(days=1 if device != "device0" else -1),
                "created_at": now,
            }
            for user, device, session_id in sessions
        ],
    )
    await conn.execute(
        insert(rotated_tokens_table),
        [
            {"token_hash": f"t{session_id}{r}", "session_id": session_id, "expires_at": now + timedelta(days=1)}
            for _, _, session_id in sessions
            for r in range(ROTATIONS_PER_SESSION)
        ],
    )


@pytest.fixture(scope="module", params=SERVER_BACKENDS)
def database(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    with migrated_database(request.param, tmp_path_factory.mktemp("indexes")) as url:
        run_async(lambda: populate(url))
        yield url


@dataclass
class Captured:
    """The statements an adapter sent, with their driver-level parameters."""

    engine: AsyncEngine
    statements: list[tuple[str, Any]] = field(default_factory=list)

    async def sent_by(
        self, call: Callable[[], Awaitable[object]], kinds: tuple[str, ...] = ("SELECT",)
    ) -> list[tuple[str, Any]]:
        self.statements.clear()
        await call()
        return [(sql, params) for sql, params in self.statements if sql.lstrip().upper().startswith(kinds)]

    async def plan(self, statement: str, params: Any) -> list[Any]:
        async with self.engine.connect() as conn:
            return list((await conn.exec_driver_sql("EXPLAIN " + statement, params)).all())


@pytest.fixture
async def captured(database: str) -> AsyncIterator[Captured]:
    engine = create_engine(database)
    seen = Captured(engine)

    def record(_conn: Any, _cursor: Any, statement: str, parameters: Any, _context: Any, _many: bool) -> None:
        if not statement.lstrip().upper().startswith("EXPLAIN"):
            seen.statements.append((statement, parameters))

    for statements in statement_engines(engine):
        event.listen(statements, "before_cursor_execute", record)

    try:
        yield seen
    finally:
        await engine.dispose()


async def assert_served_by_index(
    captured: Captured,
    call: Callable[[], Awaitable[object]],
    *,
    key: set[str],
    in_index_order: bool = True,
    kinds: tuple[str, ...] = ("SELECT",),
) -> None:
    """Every SELECT (or statement of ``kinds``) ``call`` sends reads its table through one of the indexes ``key``,
    with no full scan; and with ``in_index_order``, no sort either (the index yields the rows in the order asked)."""
    statements = await captured.sent_by(call, kinds)
    assert statements, f"the call sent no {' or '.join(kinds)}"
    for statement, params in statements:
        await assert_plan_uses_index(captured, statement, params, key=key, in_index_order=in_index_order)


async def assert_plan_uses_index(
    captured: Captured, statement: str, params: Any, *, key: set[str], in_index_order: bool
) -> None:
    plan = await captured.plan(statement, params)
    if captured.engine.dialect.name == "postgresql":
        lines = "\n".join(row[0] for row in plan)
        assert "Seq Scan" not in lines, lines
        assert any(f"using {name}" in lines or f"on {name}" in lines for name in key), lines
        if in_index_order:
            assert "Sort Key" not in lines, lines
    else:
        columns = ("id", "select_type", "table", "type", "possible_keys", "key", "key_len", "ref", "rows", "extra")
        rows = [dict(zip(columns, row, strict=True)) for row in plan]
        for row in rows:
            assert row["type"] != "ALL", rows
            assert row["key"] in key, rows
            if in_index_order:
                assert "filesort" not in (row["extra"] or ""), rows


HISTORY = {"uq_message_messages_conversation_id_seq"}
CURSORS = {"ix_message_read_cursors_user", "pk_message_read_cursors", "PRIMARY"}


async def test_newest_history_page_reads_the_conversation_seq_index_backwards(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)

    await assert_served_by_index(
        captured, lambda: store.page(conversation_id(7), after_seq=None, before_seq=None, limit=20), key=HISTORY
    )


async def test_older_history_page_reads_the_conversation_seq_index(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)

    await assert_served_by_index(
        captured, lambda: store.page(conversation_id(7), after_seq=None, before_seq=40, limit=20), key=HISTORY
    )


async def test_sync_page_after_a_seq_reads_the_conversation_seq_index(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)

    await assert_served_by_index(
        captured, lambda: store.page(conversation_id(7), after_seq=10, before_seq=None, limit=20), key=HISTORY
    )


async def test_high_water_marks_read_one_index_entry_per_conversation(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)
    wanted = [conversation_id(c) for c in range(0, CONVERSATIONS, 5)]

    ((statement, params),) = await captured.sent_by(lambda: store.max_seqs(wanted))
    plan = await captured.plan(statement, params)

    # Each max(seq) is the last entry of the conversation's range in the (conversation_id, seq) index,
    # not an aggregate over all of the conversation's messages. The statement asks for a power of two of
    # them (the last id repeated, so few statement shapes are ever compiled): 12 conversations, 16 lookups.
    padded = 1 << (len(wanted) - 1).bit_length()
    if captured.engine.dialect.name == "postgresql":
        lines = "\n".join(row[0] for row in plan)
        assert lines.count("Index Only Scan Backward using uq_message_messages_conversation_id_seq") == padded
        assert "Seq Scan" not in lines and "Bitmap" not in lines and "Aggregate" not in lines, lines
    else:
        lookups = [row for row in plan if row[1] == "SUBQUERY"]
        assert len(lookups) == padded, plan
        assert all(row[-1] == "Select tables optimized away" for row in lookups), plan


async def test_last_messages_are_fetched_by_their_conversation_and_seq(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)
    wanted = [conversation_id(c) for c in range(0, CONVERSATIONS, 20)]

    # The first statement finds the heads (the test above); the second fetches exactly those rows by key.
    _heads, (statement, params) = await captured.sent_by(lambda: store.last_messages(wanted))

    await assert_plan_uses_index(captured, statement, params, key=HISTORY, in_index_order=False)


async def test_read_cursors_of_a_user_are_read_through_an_index(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)
    wanted = [conversation_id(c) for c in range(0, CONVERSATIONS, 3)]

    await assert_served_by_index(captured, lambda: store.read_seqs(user_id(5), wanted), key=CURSORS)


async def test_idempotency_lookup_reads_the_sender_client_msg_id_index(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)

    await assert_served_by_index(
        captured,
        lambda: store.find_by_client_id(user_id(3), "cm000700003"),
        key={"uq_message_messages_sender_id_client_msg_id"},
    )


async def test_a_batch_of_idempotency_lookups_reads_the_same_index(captured: Captured) -> None:
    store = SqlMessageStore(captured.engine)
    keys = [(user_id(u), f"cm{u:04d}{u + 1:05d}") for u in range(12)]

    async def burst() -> None:
        await asyncio.gather(*(store.find_by_client_id(sender, client_msg_id) for sender, client_msg_id in keys))

    statements = await captured.sent_by(burst)
    assert len(statements) < len(keys)  # the burst shared statements
    for statement, params in statements:
        await assert_plan_uses_index(
            captured, statement, params, key={"uq_message_messages_sender_id_client_msg_id"}, in_index_order=False
        )


async def test_a_users_conversations_are_found_through_the_members_user_index(captured: Captured) -> None:
    store = SqlConversationStore(sessionmaker(captured.engine))

    # Ordering a user's few conversations by id may take a sort; finding them must not take a scan.
    await assert_served_by_index(
        captured,
        lambda: store.conversation_ids(user_id(9)),
        key={"ix_conversation_members_user_id"},
        in_index_order=False,
    )


@asynccontextmanager
async def _restored(engine: AsyncEngine, user: str) -> AsyncIterator[None]:
    """Whatever the block deletes of ``user``'s sessions and tokens is put back after it, so the statements it sent
    can be explained on the rows they found."""
    async with engine.connect() as conn:
        of_user = sessions_table.select().where(sessions_table.c.user_id == user)
        sessions = [r._asdict() for r in await conn.execute(of_user)]
        ids = [row["session_id"] for row in sessions]
        tokens = [
            r._asdict()
            for r in await conn.execute(rotated_tokens_table.select().where(rotated_tokens_table.c.session_id.in_(ids)))
        ]
    yield
    async with engine.begin() as conn:
        await conn.execute(delete(rotated_tokens_table).where(rotated_tokens_table.c.session_id.in_(ids)))
        await conn.execute(delete(sessions_table).where(sessions_table.c.user_id == user))
        await conn.execute(insert(sessions_table), sessions)
        await conn.execute(insert(rotated_tokens_table), tokens)


async def test_a_login_deletes_expired_sessions_and_their_tokens_through_indexes(captured: Captured) -> None:
    # A login first deletes its user's expired sessions (read, locked by id, then deleted with their tokens): each
    # statement finds its rows through an index, however many sessions and rotated tokens other users have (a scan
    # of the tokens under lock deadlocked logins).
    store = SqlSessionStore(sessionmaker(captured.engine))
    user_sessions = {"uq_identity_sessions_user_id_device_id", "fk_identity_sessions_user_id_identity_users"}
    by_id = {"PRIMARY", "pk_identity_sessions", "ix_identity_rotated_tokens_session_id"}

    async with _restored(captured.engine, user_id(11)):
        statements = await captured.sent_by(
            lambda: store.delete_expired(user_id(11), now=utcnow()), ("SELECT", "DELETE")
        )

    for statement, params in statements:
        await assert_plan_uses_index(captured, statement, params, key=user_sessions | by_id, in_index_order=False)
    assert [sql.lstrip().split()[0].upper() for sql, _ in statements] == ["SELECT", "SELECT", "DELETE", "DELETE"]
