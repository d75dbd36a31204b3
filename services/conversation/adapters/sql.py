"""The conversation store on SQL (SQLite embedded, MySQL/MariaDB or PostgreSQL distributed).

Membership changes lock the conversation row (``SELECT ... FOR UPDATE``; SQLite transactions are
``BEGIN IMMEDIATE`` already), so concurrent changes to one conversation apply one after the other.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractAsyncContextManager
from typing import Any

from sqlalchemy import Boolean, Column, ForeignKey, Integer, Row, String, Table, delete, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from services.common import db
from services.common.db import UtcDateTime, metadata
from services.common.errors import Unavailable
from services.conversation.domain import (
    MAX_ID_LENGTH,
    MAX_TITLE_LENGTH,
    Conversation,
    ConversationType,
    Role,
    not_found,
    pair_key,
)

# Tables collate byte-wise on MySQL too (as on PostgreSQL and SQLite): its default *_ci collations take "Ab" for "ab".
conversations_table = Table(
    "conversation_conversations",
    metadata,
    Column("conversation_id", String(MAX_ID_LENGTH), primary_key=True),
    Column("type", String(16), nullable=False),
    Column("title", String(MAX_TITLE_LENGTH), nullable=True),
    # sha256 of the sorted pair for direct conversations, NULL for groups: the database itself keeps
    # one direct conversation per pair, whatever concurrent requests do.
    Column("direct_key", String(64), nullable=True, unique=True),
    Column("large", Boolean, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)

members_table = Table(
    "conversation_members",
    metadata,
    Column(
        "conversation_id",
        String(MAX_ID_LENGTH),
        ForeignKey("conversation_conversations.conversation_id", ondelete="CASCADE"),
        primary_key=True,
    ),
    Column("user_id", String(MAX_ID_LENGTH), primary_key=True, index=True),
    Column("role", String(16), nullable=False),
    # Seniority within the conversation; ownership passes down this order.
    Column("ordinal", Integer, nullable=False),
    mysql_charset="utf8mb4",
    mysql_collate="utf8mb4_bin",
)


def _conversation(row: Row[Any], member_rows: Iterable[Row[Any]]) -> Conversation:
    return Conversation(
        conversation_id=row.conversation_id,
        type=ConversationType(row.type),
        title=row.title,
        members={m.user_id: Role(m.role) for m in member_rows},
        created_at=row.created_at,
        large=row.large,
    )


def _member_rows(conversation_id: str, members: Iterable[tuple[str, Role]], first: int) -> list[dict[str, Any]]:
    return [
        {"conversation_id": conversation_id, "user_id": user_id, "role": role.value, "ordinal": ordinal}
        for ordinal, (user_id, role) in enumerate(members, start=first)
    ]


class SqlConversationStore:
    def __init__(self, sessions: async_sessionmaker[AsyncSession]) -> None:
        self._sessions = sessions

    def _transaction(self) -> AbstractAsyncContextManager[AsyncSession]:
        return db.transaction(self._sessions, "conversation")

    def _reading(self) -> AbstractAsyncContextManager[AsyncSession]:
        return db.read_session(self._sessions, "conversation")

    async def create(self, conversation: Conversation) -> tuple[Conversation, bool]:
        key = pair_key(conversation)
        try:
            async with self._transaction() as session:
                if key is not None:
                    existing = await self._by_key(session, key)
                    if existing is not None:
                        return existing, False
                await session.execute(
                    insert(conversations_table).values(
                        conversation_id=conversation.conversation_id,
                        type=conversation.type.value,
                        title=conversation.title,
                        direct_key=key,
                        large=conversation.large,
                        created_at=conversation.created_at,
                    )
                )
                await session.execute(
                    insert(members_table),
                    _member_rows(conversation.conversation_id, conversation.members.items(), 1),
                )
        except IntegrityError as exc:
            # Another request created the same pair between our read and our insert.
            if key is not None:
                async with self._reading() as session:
                    existing = await self._by_key(session, key)
                if existing is not None:
                    return existing, False
            raise Unavailable("could not store the conversation, try again") from exc
        return conversation, True

    async def get(self, conversation_id: str) -> Conversation | None:
        async with self._reading() as session:
            row = (
                await session.execute(
                    select(conversations_table).where(conversations_table.c.conversation_id == conversation_id)
                )
            ).one_or_none()
            if row is None:
                return None
            return _conversation(row, await self._members(session, conversation_id))

    async def list_for_user(self, user_id: str) -> list[Conversation]:
        mine = select(members_table.c.conversation_id).where(members_table.c.user_id == user_id)
        async with self._reading() as session:
            rows = (
                await session.execute(
                    select(conversations_table)
                    .where(conversations_table.c.conversation_id.in_(mine))
                    .order_by(conversations_table.c.conversation_id)
                )
            ).all()
            member_rows = (
                await session.execute(
                    select(members_table)
                    .where(members_table.c.conversation_id.in_(mine))
                    .order_by(members_table.c.conversation_id, members_table.c.ordinal)
                )
            ).all()
        by_conversation: dict[str, list[Row[Any]]] = {}
        for member in member_rows:
            by_conversation.setdefault(member.conversation_id, []).append(member)
        return [_conversation(row, by_conversation.get(row.conversation_id, ())) for row in rows]

    async def conversation_ids(self, user_id: str) -> list[str]:
        async with self._reading() as session:
            result = await session.execute(
                select(members_table.c.conversation_id)
                .where(members_table.c.user_id == user_id)
                .order_by(members_table.c.conversation_id)
            )
            return list(result.scalars())

    async def update(
        self, conversation_id: str, change: Callable[[Conversation], Conversation]
    ) -> tuple[Conversation, Conversation]:
        async with self._transaction() as session:
            row = (
                await session.execute(
                    select(conversations_table)
                    .where(conversations_table.c.conversation_id == conversation_id)
                    .with_for_update()
                )
            ).one_or_none()
            if row is None:
                raise not_found(conversation_id)
            member_rows = await self._members(session, conversation_id)
            before = _conversation(row, member_rows)
            after = change(before)
            await self._write_changes(
                session, before, after, next_ordinal=1 + max((m.ordinal for m in member_rows), default=0)
            )
        return before, after

    async def _write_changes(
        self, session: AsyncSession, before: Conversation, after: Conversation, *, next_ordinal: int
    ) -> None:
        cid = before.conversation_id
        if (after.title, after.large) != (before.title, before.large):
            await session.execute(
                update(conversations_table)
                .where(conversations_table.c.conversation_id == cid)
                .values(title=after.title, large=after.large)
            )
        gone = [user_id for user_id in before.members if user_id not in after.members]
        if gone:
            await session.execute(
                delete(members_table).where(members_table.c.conversation_id == cid, members_table.c.user_id.in_(gone))
            )
        for user_id, role in after.members.items():
            if user_id in before.members and before.members[user_id] is not role:
                await session.execute(
                    update(members_table)
                    .where(members_table.c.conversation_id == cid, members_table.c.user_id == user_id)
                    .values(role=role.value)
                )
        joined = [(user_id, role) for user_id, role in after.members.items() if user_id not in before.members]
        if joined:
            await session.execute(insert(members_table), _member_rows(cid, joined, next_ordinal))

    async def _members(self, session: AsyncSession, conversation_id: str) -> Sequence[Row[Any]]:
        result = await session.execute(
            select(members_table)
            .where(members_table.c.conversation_id == conversation_id)
            .order_by(members_table.c.ordinal)
        )
        return result.all()

    async def _by_key(self, session: AsyncSession, key: str) -> Conversation | None:
        row = (
            await session.execute(select(conversations_table).where(conversations_table.c.direct_key == key))
        ).one_or_none()
        if row is None:
            return None
        return _conversation(row, await self._members(session, row.conversation_id))
